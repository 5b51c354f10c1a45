"""`llamantino instruct`: loss mask, FSDP2 sharding on 2 ranks against one process,
checkpoint/resume, the derived gradient accumulation and the errors users meet."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamantino import cli
from llamantino.core import distributed
from llamantino.core.errors import LlamantinoError
from llamantino.core.manifest import read_manifest
from llamantino.data.prompts import ALPACA_IT_HEADER
from llamantino.data.supervised import IGNORE
from llamantino.train import checkpoint, common, instruct

from helpers.instruct import settings, write_dolly


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """Tests train on CPU in float32, also on a machine with a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="module")
def dolly(tmp_path_factory):
    return write_dolly(tmp_path_factory.mktemp("data") / "dolly-it.jsonl", 16)


def weights(folder):
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no safetensors in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


# ---------------------------------------------------------------------------------------
# Loss mask and batching


def test_loss_mask_covers_exactly_the_response(tmp_path, tiny_model_dir, tiny_tokenizer):
    data = tmp_path / "alpaca.jsonl"
    records = [{"instruction": "Traduci in inglese.", "input": "Il gatto dorme.", "output": "The cat sleeps."},
               {"instruction": "Nomina una città italiana.", "input": "", "output": "Roma"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    cfg = settings(tiny_model_dir, data, tmp_path / "out")
    examples, counts = instruct.load_examples(cfg, tiny_tokenizer)
    assert counts == {"records": 2, "truncated": 0, "dropped_no_response": 0}
    for ex, record in zip(examples, records):
        trained = [t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE]
        prompt = [t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE]
        # The trained tokens are one contiguous run at the end: the response and its EOS.
        first = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE)
        assert all(lab != IGNORE for lab in ex.labels[first:])
        assert tiny_tokenizer.decode(trained) == record["output"] + "</s>"
        text = tiny_tokenizer.decode(prompt, skip_special_tokens=True)
        assert text.startswith(ALPACA_IT_HEADER) and text.endswith("### Risposta:\n")
        assert ("### Input:" in text) == bool(record["input"])
    # Truncated examples are kept and counted; those left without a response are dropped.
    short = len(examples[1].input_ids) - 2
    cut = settings(tiny_model_dir, data, tmp_path / "out", max_length=short)
    kept, counts = instruct.load_examples(cut, tiny_tokenizer)
    assert counts["truncated"] + counts["dropped_no_response"] == 2 and all(len(e.input_ids) <= short for e in kept)
    prompt_only = next(i for i, lab in enumerate(examples[0].labels) if lab != IGNORE)
    none_left = settings(tiny_model_dir, data, tmp_path / "out", max_length=min(prompt_only, 20))
    with pytest.raises(LlamantinoError, match="no example with a response token"):
        instruct.load_examples(none_left, tiny_tokenizer)


def left_padded(batch: dict) -> dict:
    """The same rows with their padding moved in front (the layout of generation batches)."""
    out = {key: value.clone() for key, value in batch.items()}
    for row, n in enumerate(batch["attention_mask"].sum(dim=1).tolist()):
        for key in out:
            out[key][row] = batch[key][row].roll(batch[key].shape[1] - n)
    return out


def test_padded_batch_loss_equals_the_examples_alone(tmp_path, tiny_model_dir, tiny_tokenizer, dolly):
    """Padding leaves the summed response loss unchanged: right padding (what `collate` does)
    by construction, since causal attention never looks ahead; padding in front of the tokens
    only because the attention mask hides it, which the negative control shows."""
    from transformers import AutoModelForCausalLM

    examples, _ = instruct.load_examples(settings(tiny_model_dir, dolly, tmp_path), tiny_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = examples[:4]
    assert len({len(e.input_ids) for e in batch}) > 1  # really padded
    right = instruct.collate(batch, 0, "cpu")
    assert right["attention_mask"][:, 0].all() and not right["attention_mask"][:, -1].all()  # pads at the end
    left = left_padded(right)
    assert not left["attention_mask"][:, 0].all() and left["attention_mask"][:, -1].all()    # pads in front

    def loss(b):
        with torch.no_grad():
            return instruct.summed_loss(model, b, instruct.contextlib.nullcontext)

    alone = sum(loss(instruct.collate([e], 0, "cpu")) for e in batch)
    assert torch.allclose(loss(right), alone, rtol=1e-5)
    # the rotary positions of a left-padded row are shifted, and attention depends only on their
    # differences; the mask keeps the padding out
    assert torch.allclose(loss(left), alone, rtol=1e-5)
    # the negative control: without the mask the padding is attended to, and the loss moves by
    # far more than the tolerance above (about 0.4 of 528 on this model, 80 times it)
    unmasked = dict(left, attention_mask=torch.ones_like(left["attention_mask"]))
    assert abs(float(loss(unmasked) - alone)) > 10 * 1e-5 * float(alone)
    # The sum runs over exactly the trained (response) tokens.
    n = sum(instruct.trained_tokens(e) for e in batch)
    assert n == sum(sum(1 for lab in e.labels[1:] if lab != IGNORE) for e in batch) and n > 0


def test_global_batch_split_covers_every_example_once():
    examples = [instruct.Example(list(range(k + 2)), [IGNORE] + list(range(k + 1))) for k in range(40)]
    epoch, index, ids = instruct.global_batch(12, 40, 8, seed=3)
    assert (epoch, index) == (2, 16)  # 5 steps per epoch and len(set(ids)) == 8
    for world in (1, 2, 4):
        split = [instruct.micro_batches(ids, examples, 2, world, r) for r in range(world)]
        assert all(len(s) == 8 // (2 * world) for s in split)
        assert sorted(i for s in split for chunk in s for i in chunk) == sorted(ids)


# ---------------------------------------------------------------------------------------
# Gradient accumulation is derived from the number of processes


def test_gradient_accumulation_is_derived_from_world_size(tmp_path, tiny_model_dir, dolly, monkeypatch):
    # The run refuses a cluster size that cannot keep the effective batch, before touching the output.
    monkeypatch.setattr(distributed, "init_distributed", lambda: (0, 3, torch.device("cpu")))
    with pytest.raises(LlamantinoError, match="batch size 2 x 3 process"):
        instruct.run(settings(tiny_model_dir, dolly, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(LlamantinoError, match="not a multiple of batch_size 3"):
        settings(tiny_model_dir, dolly, tmp_path / "out", batch_size=3)


def test_a_stopped_run_exits_3_under_its_own_command(tmp_path, tiny_model_dir, dolly, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    args = ["instruct", "--model", str(tiny_model_dir), "--data", str(dolly), "--output", str(out),
            "--max-length", "256", "--batch-size", "2", "--effective-batch-size", "4", "--max-steps", "4",
            "--save-steps", "2"]
    assert cli.main(args + ["--stop-after-steps", "2"]) == 3  # a job script requeues on it
    assert '"status": "stopped at step 2"' in capsys.readouterr().out
    assert cli.main(args + ["--resume"]) == 0
    assert read_manifest(out)["metrics"]["steps"] == 4
    # Full fine-tuning: every weight of the base, in full precision, trains.
    from transformers import AutoModelForCausalLM

    whole = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert read_manifest(out)["metrics"]["parameters"] == {"base_4bit": 0, "base_full_precision": whole,
                                                           "trainable": whole}


# ---------------------------------------------------------------------------------------
# Real FSDP2 on two processes against one process


@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_fsdp_two_ranks_shard_and_match_one_process(tmp_path, tiny_model_dir, dolly):
    out2, out1 = tmp_path / "fsdp2", tmp_path / "single"
    args = ["--model", str(tiny_model_dir), "--data", str(dolly), "--output", str(out2), "--max-length", "256",
            "--batch-size", "2", "--effective-batch-size", "4", "--max-steps", "4", "--learning-rate", "1e-3",
            "--save-steps", "2", "--logging-steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "llamantino", "instruct", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    manifest = read_manifest(out2)
    m = manifest["metrics"]
    assert m["world_size"] == 2 and m["fsdp"] and m["gradient_accumulation"] == 1
    # (a) each rank held only its shard: about half of the parameters, together all of them.
    held, whole = [r["parameters"] for r in m["ranks"]], m["parameters"]["base_full_precision"]
    assert sum(held) == whole and all(0.4 < h / whole < 0.6 for h in held), held
    assert m["parameters"] == {"base_4bit": 0, "base_full_precision": whole, "trainable": whole}
    # ... and wrote only its shard of the checkpoint.
    assert len(list(checkpoint.checkpoint_path(out2, 2).glob("*.distcp"))) == 2

    # (b) the same data on one process (accumulation 2, no sharding) gives the same weights.
    single = instruct.run(settings(tiny_model_dir, dolly, out1))["metrics"]
    assert single["world_size"] == 1 and single["gradient_accumulation"] == 2 and not single["fsdp"]
    assert single["final_loss"] == pytest.approx(m["final_loss"], rel=1e-6)
    a, b, base = weights(out1), weights(out2), weights(tiny_model_dir)
    assert a.keys() == b.keys() == base.keys()
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 1e-4  # training moved the weights
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out2)  # the consolidated result loads as a plain model
    assert torch.equal(model.state_dict()["lm_head.weight"], b["lm_head.weight"])

    # The 2-rank sharded checkpoint resumes on one process (torch.distributed.checkpoint reshards):
    # the folder as a crash after step 2 would have left it.
    done = out2.rename(tmp_path / "fsdp2-done")
    out2.mkdir()
    shutil.copy(done / "run.json", out2 / "run.json")
    shutil.copytree(checkpoint.checkpoint_path(done, 2), checkpoint.checkpoint_path(out2, 2))
    resumed = instruct.run(settings(tiny_model_dir, dolly, out2), resume=True)["metrics"]
    assert resumed["resumed_from_step"] == 2 and resumed["world_size"] == 1
    c = weights(out2)
    assert max((c[k] - b[k]).abs().max().item() for k in c) < 1e-6


# ---------------------------------------------------------------------------------------
# Interrupted and resumed == uninterrupted


def test_interrupted_and_resumed_run_ends_bitwise_equal(tmp_path, tiny_model_dir, dolly, monkeypatch):
    straight = instruct.run(settings(tiny_model_dir, dolly, tmp_path / "straight"))
    assert straight["status"] == "done" and (tmp_path / "straight" / "loss.png").is_file()

    out = tmp_path / "interrupted"
    save = instruct.save_checkpoint

    def save_then_crash(*args, **kwargs):
        save(*args, **kwargs)
        raise RuntimeError("simulated crash after the step-2 checkpoint")

    monkeypatch.setattr(instruct, "save_checkpoint", save_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        instruct.run(settings(tiny_model_dir, dolly, out))
    monkeypatch.setattr(instruct, "save_checkpoint", save)
    assert read_manifest(out) is None and checkpoint.latest(out)[0] == 2

    with pytest.raises(LlamantinoError, match="interrupted run .* --resume"):
        instruct.run(settings(tiny_model_dir, dolly, out))
    with pytest.raises(LlamantinoError, match=r"settings differ: learning_rate"):
        instruct.run(settings(tiny_model_dir, dolly, out, learning_rate=5e-4), resume=True)
    resumed = instruct.run(settings(tiny_model_dir, dolly, out), resume=True)
    assert resumed["metrics"]["resumed_from_step"] == 2
    # Bitwise: same process, same kernels, and the checkpoint restores every float exactly
    # (weights, AdamW moments and step, scheduler position, data position).
    a, b = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["tokens_seen"] == straight["metrics"]["tokens_seen"]
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]
    # Done means done: the same settings again skip.
    assert instruct.run(settings(tiny_model_dir, dolly, out))["status"].startswith("skipped")


# ---------------------------------------------------------------------------------------
# Bad input: one line naming the file, the line and the field


def test_bad_input_is_refused_before_the_output_is_claimed(tmp_path, tiny_model_dir, dolly):
    out = tmp_path / "out"
    with pytest.raises(LlamantinoError, match="setting 'format' is 'sharegpt'; valid: auto, dolly, alpaca, evalita"):
        settings(tiny_model_dir, dolly, out, format="sharegpt")

    wrong = tmp_path / "qa.jsonl"
    wrong.write_text(json.dumps({"question": "Chi?", "answer": "Io"}) + "\n", encoding="utf-8")
    with pytest.raises(LlamantinoError, match=r"qa\.jsonl:1: cannot tell the format from the fields \(answer, question"):
        instruct.run(settings(tiny_model_dir, wrong, out))

    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Saluta", "input": "", "output": "Ciao"}) + "\n", encoding="utf-8")
    with pytest.raises(LlamantinoError, match=r"alpaca\.jsonl:1: missing field 'context' for format dolly"):
        instruct.run(settings(tiny_model_dir, alpaca, out, format="dolly"))

    text = tmp_path / "corpus.jsonl"
    text.write_text(json.dumps({"text": "Un documento."}) + "\n", encoding="utf-8")
    with pytest.raises(LlamantinoError, match=r"corpus\.jsonl:1: format text is not an instruction record"):
        instruct.run(settings(tiny_model_dir, text, out))

    with pytest.raises(LlamantinoError, match="max_length 1024 exceeds the model's context of 512 tokens"):
        instruct.run(settings(tiny_model_dir, dolly, out, max_length=1024))

    with pytest.raises(LlamantinoError, match="16 usable examples, fewer than one effective batch of 32"):
        instruct.run(settings(tiny_model_dir, dolly, out, effective_batch_size=32))
    assert not out.exists()  # nothing was claimed or written

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(LlamantinoError, match=r"holds no llamantino run \(notes.txt\); llamantino replaces only its own outputs"):
        instruct.run(settings(tiny_model_dir, dolly, foreign))


def test_command_line_reports_one_line(tmp_path, tiny_model_dir, dolly, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["instruct", "--help"])
    assert exit_.value.code == 0 and "--effective-batch-size" in capsys.readouterr().out
    code = cli.main(["instruct", "--model", str(tiny_model_dir), "--data", str(dolly), "--output",
                     str(tmp_path / "out"), "--max-length", "2048"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: ") and "2048 exceeds" in err


def test_settings_load_without_torch():
    """`config show` and `instruct --help` import the module; torch loads only when a run starts."""
    code = "import sys, llamantino.train.instruct; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    assert instruct.Config.__dataclass_fields__["lr_scheduler"].metadata["choices"] == common.SCHEDULES


def test_dolly_recipes_carry_table_2():
    from llamantino.core.recipes import load_recipe

    for name, lr, epochs in (("LLaMAntino-2-7b-hf-dolly-ITA", 2e-5, 3), ("LLaMAntino-2-13b-hf-dolly-ITA", 1e-5, 5)):
        recipe = load_recipe(name)
        cfg = recipe.first_of_kind("instruct").config
        assert (cfg.learning_rate, cfg.epochs) == (lr, epochs)
        assert (cfg.batch_size, cfg.effective_batch_size, cfg.max_length, cfg.weight_decay) == (16, 128, 1024, 0.0)
        assert cfg.model.endswith("-hf-dolly-ITA/base") and cfg.format == "dolly"
