"""Language adaptation: packing without cross-document attention, streaming, resume, errors."""

import json
import shutil

import torch
from safetensors.torch import load_file

from llamantino.cli import main
from llamantino.data.packing import DocumentPacker, collate

from helpers.adapt import DOCS, adapt_args, corpus, write_jsonl


def per_token_nll(model, input_ids, labels, position_ids=None):
    logits = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1)
    tgt = labels[:, 1:]
    nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll, tgt != -100


def test_packed_batch_gives_the_same_per_token_losses_as_separate_runs(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    packer = DocumentPacker(tiny_tokenizer, max_length=96)
    docs = iter(DOCS)
    row = packer.next_row(docs)
    assert row is not None and len(row) == sum(len(packer.encode(d)) for d in DOCS) <= 96
    batch = collate([row], 96, tiny_tokenizer.pad_token_id or 0)
    with torch.no_grad():
        packed, mask = per_token_nll(model, batch.input_ids, batch.labels, batch.position_ids)
        # The same row without restarting positions: documents see each other.
        leaky, _ = per_token_nll(model, batch.input_ids, batch.labels, None)
    packed_losses, leaky_losses = packed[mask].tolist(), leaky[mask].tolist()
    separate = []
    with torch.no_grad():
        for doc in DOCS:
            ids = torch.tensor([packer.encode(doc)])
            labels = ids.clone()
            labels[0, 0] = -100
            nll, m = per_token_nll(model, ids, labels)
            separate += nll[m].tolist()
    assert len(packed_losses) == len(separate)
    assert max(abs(a - b) for a, b in zip(packed_losses, separate)) < 1e-4
    # The check can fail: without document boundaries the losses differ.
    assert max(abs(a - b) for a, b in zip(leaky_losses, separate)) > 1e-3
    # <s> of each following document is never a target (no cross-document prediction).
    bos_positions = [i for i, t in enumerate(row.input_ids) if t == tiny_tokenizer.bos_token_id]
    assert len(bos_positions) == len(DOCS)
    assert all(row.labels[i] == -100 for i in bos_positions)


def test_long_documents_continue_in_the_next_row_and_nothing_is_padded(tiny_tokenizer):
    packer = DocumentPacker(tiny_tokenizer, max_length=16)
    docs = iter(DOCS * 3)
    rows = []
    while (row := packer.next_row(docs)) is not None:
        rows.append(row)
    total = sum(len(packer.encode(d)) for d in DOCS * 3)
    assert sum(len(r) for r in rows) == total
    assert all(len(r) == 16 for r in rows[:-1])
    assert all(r.position_ids[0] == 0 for r in rows)


def test_adapt_writes_a_loadable_adapter_and_logs(tmp_path, tiny_model_dir, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(adapt_args(tiny_model_dir, corpus(tmp_path), out)) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "manifest.json",
                 "metrics.csv", "loss.png"):
        assert (out / name).is_file(), name
    assert list((out / "tb").iterdir())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "adapt" and manifest["metrics"]["steps"] == 6
    assert manifest["metrics"]["real_token_share"] == 1.0
    assert set(manifest["metrics"]["lora_targets"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"}
    assert manifest["settings"]["lora_r"] == 64 and manifest["settings"]["lora_alpha"] == 16
    assert manifest["metrics"]["parameters"] == expected_parameters(tiny_model_dir, r=64)
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out)
    assert model.peft_config["default"].r == 64
    # A finished run is skipped when asked again with the same settings: it says so, and not
    # a byte nor a modification time in its folder changes (no step ran, nothing was rewritten).
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert main(adapt_args(tiny_model_dir, corpus(tmp_path), out)) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped (done)"
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*")) if p.is_file()} == files


def expected_parameters(folder, r: int) -> dict:
    """The QLoRA parameter record, counted on the full-precision model: every linear layer's
    weight inside the decoder blocks in 4-bit (their biases stay in full precision), the rest in
    full precision; LoRA's r * (in + out) per linear layer trained."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    linear = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    four_bit = sum(m.weight.numel() for m in linear)
    return {"base_4bit": four_bit, "base_full_precision": sum(p.numel() for p in model.parameters()) - four_bit,
            "trainable": sum(r * (m.in_features + m.out_features) for m in linear)}


def test_interrupted_and_resumed_run_ends_with_the_same_adapter(tmp_path, tiny_model_dir):
    data = corpus(tmp_path)
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(adapt_args(tiny_model_dir, data, full)) == 0
    assert main(adapt_args(tiny_model_dir, data, parts, "--stop-after-steps", "3")) == 3
    assert not (parts / "manifest.json").exists()
    assert (parts / "checkpoints" / "step-0000003").is_dir()
    state = json.loads((parts / "checkpoints" / "step-0000003" / "data-rank0.json").read_text())
    assert state["stream"]["count"] > 0
    # Without --resume the unfinished run is not silently restarted or continued.
    assert main(adapt_args(tiny_model_dir, data, parts)) == 2
    assert main(adapt_args(tiny_model_dir, data, parts, "--resume")) == 0
    a = load_file(str(full / "adapter_model.safetensors"))
    b = load_file(str(parts / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The CSV holds each step once.
    steps = [line.split(",")[0] for line in (parts / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [str(i) for i in range(1, 7)]


def test_resume_with_other_settings_is_refused(tmp_path, tiny_model_dir, capsys):
    data = corpus(tmp_path)
    out = tmp_path / "run"
    assert main(adapt_args(tiny_model_dir, data, out, "--stop-after-steps", "3")) == 3
    assert main(adapt_args(tiny_model_dir, data, out, "--resume", "--learning-rate", "5e-4")) == 2
    err = capsys.readouterr().err
    assert "different 'adapt' run" in err and "learning_rate" in err


def test_adapt_streams_from_hub_style_sources(tmp_path, tiny_model_dir):
    # datasets' packaged json builder, streamed: the same code path as a hub corpus.
    data = corpus(tmp_path)
    out = tmp_path / "run"
    assert main(["adapt", "--model", str(tiny_model_dir), "--data", f"hub:json?data_files={data}",
                 "--output", str(out), "--max-length", "64", "--batch-size", "2", "--max-steps", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["metrics"]["documents_read"] > 0


def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys):
    data = corpus(tmp_path)
    no_config = tmp_path / "empty-model"
    no_config.mkdir()
    out = tmp_path / "out"
    assert main(adapt_args(no_config, data, out)) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(adapt_args(tiny_model_dir, data, out, "--max-length", "4096")) == 2
    assert "exceeds the model's context of 512" in capsys.readouterr().err
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    assert main(adapt_args(tiny_model_dir, empty, out)) == 2
    assert "yields no tokens" in capsys.readouterr().err
    assert main(adapt_args(tiny_model_dir, tmp_path / "missing.jsonl", out)) == 2
    assert "no such file" in capsys.readouterr().err
    # A tokenizer without an end-of-sequence token.
    no_eos = tmp_path / "no-eos"
    shutil.copytree(tiny_model_dir, no_eos)
    cfg = json.loads((no_eos / "tokenizer_config.json").read_text())
    cfg["eos_token"] = None
    (no_eos / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert main(adapt_args(no_eos, data, out)) == 2
    assert "no end-of-sequence" in capsys.readouterr().err
    assert not out.exists()


def test_sigterm_writes_a_checkpoint_and_the_run_resumes(tmp_path, tiny_model_dir):
    """What SLURM does before a time limit: SIGTERM, then the job is resumed later."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data, out = corpus(tmp_path), tmp_path / "run"
    args = adapt_args(tiny_model_dir, data, out)
    args[args.index("--max-steps") + 1] = "400"
    args[args.index("--save-steps") + 1] = "1000"
    proc = subprocess.Popen([sys.executable, "-m", "llamantino", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr[-2000:]  # stopped: a job script requeues
    assert '"status": "stopped at step' in stdout
    checkpoints = list((out / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and not (out / "manifest.json").exists()
    stopped_at = int(checkpoints[0].name.split("-")[1])
    resumed = adapt_args(tiny_model_dir, data, out, "--resume", "--stop-after-steps", "2")
    resumed[resumed.index("--max-steps") + 1] = "400"
    resumed[resumed.index("--save-steps") + 1] = "1000"
    assert main(resumed) == 3
    assert training_step(out) == stopped_at + 2


def training_step(run_dir):
    from llamantino.train.checkpoint import latest

    return latest(run_dir)[0]


def test_varlen_boundaries_of_collated_rows_by_hand():
    """Rows as the packer collates them (documents restarting at position 0, a continuation
    starting a row, padding as a document of its own), flattened as the FlashAttention path
    flattens them: every document, padding run and row starts a segment of its own."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    from llamantino.data.packing import Row, collate
    from llamantino.train.qlora import varlen_kwargs

    rows = [Row(), Row(), Row()]
    rows[0].add([5] * 3, [5] * 3)
    rows[0].add([6] * 5, [6] * 5)                       # 8 tokens, then 2 of padding
    rows[1].add([7] * 4, [7] * 4, first_is_target=True)  # the rest of a document cut at a row's end
    rows[1].add([8] * 6, [8] * 6)
    rows[2].add([9], [9])                               # a one-token document
    rows[2].add([4] * 9, [4] * 9)
    batch = collate(rows, 10, 0)
    flat = batch.position_ids.reshape(1, -1)
    # segments: [0, 3) [3, 8) padding [8, 10) | [10, 14) [14, 20) | [20, 21) [21, 30)
    expected = torch.tensor([0, 3, 8, 10, 14, 20, 21, 30], dtype=torch.int32)
    mine = varlen_kwargs(flat, row_length=10)
    assert torch.equal(mine["cu_seq_lens_q"], expected) and torch.equal(mine["cu_seq_lens_k"], expected)
    # The row length bounds every segment (a constant: no recompilation, no host sync) ...
    assert mine["max_length_q"] == mine["max_length_k"] == 10
    # ... and transformers' own function finds the same segments, the longest of 9 tokens.
    (cu_q, _), (max_q, _) = prepare_fa_kwargs_from_position_ids(flat)
    assert torch.equal(cu_q, expected) and int(max_q) == 9
