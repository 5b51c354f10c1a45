"""Preference tuning: the losses equal TRL 1.16's (loss, gradients, log-probabilities), the step
starts at ln 2, and the stage resumes bit for bit."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from llamantino.core.errors import LlamantinoError
from llamantino.train.prefer import Config, PairLogps, collate_pairs, make_loss, pair_losses

TARGETS = ["q_proj", "v_proj", "up_proj"]
# Hand-made pairs (token ids of the tiny tokenizer): different prompt and answer lengths, so
# padding, masking and per-answer sums are all exercised.
PAIRS = [SimpleNamespace(prompt=[1, 5, 6, 7], chosen=[8, 9, 10, 2], rejected=[11, 12, 2]),
         SimpleNamespace(prompt=[1, 20, 21], chosen=[30, 31, 32, 33, 34, 2], rejected=[40, 2]),
         SimpleNamespace(prompt=[1, 50, 51, 52, 53], chosen=[60, 2], rejected=[61, 62, 63, 64, 2])]


def tiny_base(tokenizer):
    from llamantino.demo.demo_base import build_model

    return build_model(tokenizer, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                       max_position_embeddings=512, seed=0)


def lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")


def randomize_adapter(model, seed=1):
    """A trained-looking adapter (B != 0), so policy and reference differ."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * 0.1


def ours(model, cfg, pairs=PAIRS, chunk=3):
    """Our loss, gradients and per-pair log-probabilities on `pairs`, as one micro-batch."""
    batch = collate_pairs(pairs, 0, prompt_nll=cfg.loss_type == "orpo")
    module = make_loss(cfg)(model, chunk)
    model.zero_grad()
    loss, figures = module(batch.input_ids, batch.labels, float(batch.pairs), float(batch.chosen_tokens),
                           batch.prompt_labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        lp, _ = module.pair_logps(batch.input_ids, batch.labels)
    model.zero_grad()
    return loss.detach(), grads, lp, figures


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def trl_trainer(kind, tokenizer, tmp_path, **options):
    from datasets import Dataset

    data = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    common = {"output_dir": str(tmp_path / kind), "use_cpu": True, "bf16": False, "report_to": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dpo":
            from trl import DPOConfig, DPOTrainer

            return DPOTrainer(model=tiny_base(tokenizer), args=DPOConfig(**common, **options), train_dataset=data,
                              processing_class=tokenizer, peft_config=lora())
        if kind == "cpo":
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            return CPOTrainer(model=tiny_base(tokenizer), args=CPOConfig(**common, **options), train_dataset=data,
                              processing_class=tokenizer, peft_config=lora())
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer(model=tiny_base(tokenizer), args=ORPOConfig(**common, **options), train_dataset=data,
                           processing_class=tokenizer, peft_config=lora())


def trl_dpo_inputs(pairs):
    batch = collate_pairs(pairs, 0)
    lengths = [len(p.prompt) + len(p.chosen) for p in pairs] + [len(p.prompt) + len(p.rejected) for p in pairs]
    mask = (torch.arange(batch.input_ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": batch.input_ids, "attention_mask": mask, "completion_mask": (batch.labels != -100).long()}


def trl_pair_batch(pairs):
    """The tokenized batch CPO and ORPO read: chosen and rejected rows apart, prompts masked."""
    out = {}
    for side in ("chosen", "rejected"):
        rows = [p.prompt + getattr(p, side) for p in pairs]
        length = max(map(len, rows))
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (row, p) in enumerate(zip(rows, pairs)):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
            labels[i, len(p.prompt):len(row)] = torch.tensor(row[len(p.prompt):])
        out.update({f"{side}_input_ids": ids, f"{side}_attention_mask": mask, f"{side}_labels": labels})
    return out


def trl_loss_and_grads(trainer, kind, pairs):
    model = trainer.model
    model.zero_grad()
    if kind == "dpo":
        loss = trainer.compute_loss(model, trl_dpo_inputs(pairs))
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    else:
        loss, metrics = trainer.get_batch_loss_metrics(model, trl_pair_batch(pairs))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads, metrics


CASES = [
    ("dpo", "dpo", {"beta": 0.1, "loss_type": "sigmoid"}, {"beta": 0.1}),
    ("dpo", "dpo", {"beta": 0.5, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7]},
     {"beta": 0.5, "sft_weight": 0.7}),
    ("dpo", "ipo", {"beta": 0.2, "loss_type": "ipo"}, {"beta": 0.2}),
    ("cpo", "simpo", {"beta": 2.0, "loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": 0.4},
     {"beta": 2.0, "simpo_gamma": 0.4}),
    ("cpo", "simpo", {"beta": 2.0, "loss_type": "simpo", "cpo_alpha": 0.3, "simpo_gamma": 0.4,
                      "label_smoothing": 0.1}, {"beta": 2.0, "simpo_gamma": 0.4, "sft_weight": 0.3,
                                                "label_smoothing": 0.1}),
    ("cpo", "orpo", {"beta": 0.25}, {"orpo_alpha": 0.25}),
]


@pytest.mark.parametrize("trainer_kind,loss_type,trl_options,settings", CASES,
                         ids=["dpo", "dpo+sft", "ipo", "simpo", "simpo+nll+smoothing", "orpo"])
def test_loss_gradients_and_logps_equal_trl(tmp_path, tiny_tokenizer, trainer_kind, loss_type, trl_options,
                                            settings):
    if loss_type == "orpo":
        trainer_kind = "orpo"
    trainer = trl_trainer(trainer_kind, tiny_tokenizer, tmp_path, **trl_options)
    randomize_adapter(trainer.model)
    cfg = Config(model="m", output="o", loss_type=loss_type, **settings)
    loss, grads, lp, figures = ours(trainer.model, cfg)
    trl_loss, trl_grads, metrics = trl_loss_and_grads(trainer, trainer_kind, PAIRS)
    assert abs(float(loss) - float(trl_loss)) <= 1e-5 * abs(float(trl_loss))
    assert grads.keys() == trl_grads.keys() and len(grads) == 2 * len(TARGETS) * 2  # A and B, 2 layers
    for name in grads:
        assert relative(grads[name], trl_grads[name]) <= 1e-5, name
    # The same per-pair log-probabilities and rewards (TRL logs their means).
    _, chosen_rewards, rejected_rewards, chosen, rejected = pair_losses(cfg, lp)
    for key, value in (("logps/chosen", chosen), ("logps/rejected", rejected), ("rewards/chosen", chosen_rewards),
                       ("rewards/rejected", rejected_rewards),
                       ("rewards/margins", chosen_rewards - rejected_rewards)):
        # Rewards are differences of sums near -30 (float32: 2e-6 apart), scaled by beta.
        assert float(value.mean()) == pytest.approx(float(metrics[key]), rel=1e-5, abs=1e-5), key
    assert float(figures[0]) / len(PAIRS) == pytest.approx(float(metrics["rewards/chosen"]), rel=1e-5, abs=1e-5)


def test_per_pair_logps_equal_trl_row_by_row(tmp_path, tiny_tokenizer):
    """Not only the means: each answer's summed log-probability, one pair at a time through TRL."""
    trainer = trl_trainer("dpo", tiny_tokenizer, tmp_path, beta=0.1)
    randomize_adapter(trainer.model)
    cfg = Config(model="m", output="o")
    _, _, lp, _ = ours(trainer.model, cfg)
    for i, pair in enumerate(PAIRS):
        trl_trainer_metrics = trl_loss_and_grads(trainer, "dpo", [pair])[2]
        assert float(lp.chosen[i]) == pytest.approx(trl_trainer_metrics["logps/chosen"], rel=1e-6)
        assert float(lp.rejected[i]) == pytest.approx(trl_trainer_metrics["logps/rejected"], rel=1e-6)
        assert float(lp.ref_chosen[i]) != pytest.approx(float(lp.chosen[i]), rel=1e-6)  # the adapter is off


def test_step_zero_with_a_fresh_adapter_is_ln2_with_zero_margins(tiny_tokenizer):
    from peft import get_peft_model

    model = get_peft_model(tiny_base(tiny_tokenizer), lora())  # B = 0: policy = reference
    loss, grads, lp, figures = ours(model, Config(model="m", output="o"))
    assert abs(float(loss) - math.log(2)) <= 1e-6
    assert float(figures[3]) == 0.0  # margins
    assert float(figures[2]) == 0.0  # accuracies: no pair's reward is above its rejected one's
    assert torch.equal(lp.chosen, lp.ref_chosen) and torch.equal(lp.rejected, lp.ref_rejected)
    assert any(float(g.abs().max()) > 0 for g in grads.values())  # and the step still moves


def test_chunked_answer_logps_equal_the_full_logits(tiny_tokenizer):
    """The chunked per-row sums (any chunk size) are the sums of the model's own log-softmax."""
    from peft import get_peft_model

    model = get_peft_model(tiny_base(tiny_tokenizer), lora())
    randomize_adapter(model)
    cfg = Config(model="m", output="o")
    reference = ours(model, cfg, chunk=0)
    for chunk in (1, 5, 1024):
        loss, grads, lp, _ = ours(model, cfg, chunk=chunk)
        assert torch.allclose(lp.chosen, reference[2].chosen, rtol=1e-6)
        assert torch.allclose(lp.rejected, reference[2].rejected, rtol=1e-6)
        assert float(loss) == pytest.approx(float(reference[0]), rel=1e-6)
        for name in grads:
            assert relative(grads[name], reference[1][name]) <= 1e-5


def test_label_smoothing_is_conservative_dpo():
    lp = PairLogps(torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([2, 3]), torch.tensor([3, 1]),
                   torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5]))
    cfg = Config(model="m", output="o", beta=0.3, label_smoothing=0.2)
    losses = pair_losses(cfg, lp)[0]
    z = 0.3 * torch.tensor([(-3.0 + 3.5) - (-4.0 + 3.0), (-5.0 + 4.0) - (-2.0 + 2.5)])
    expected = -0.8 * torch.nn.functional.logsigmoid(z) - 0.2 * torch.nn.functional.logsigmoid(-z)
    assert torch.allclose(losses, expected)


@pytest.mark.parametrize("loss_type", ["dpo", "ipo", "simpo", "orpo"])
def test_float16_compute_gives_finite_losses(loss_type):
    """Log-probabilities that arrive in float16 (extreme ones included) give finite float32 losses."""
    half = torch.tensor([-0.0, -60000.0, -1e-4], dtype=torch.float16)
    lp = PairLogps(half, torch.tensor([-65000.0, -0.0, -3.0], dtype=torch.float16), torch.tensor([1, 500, 1]),
                   torch.tensor([700, 1, 2]), half.flip(0), torch.tensor([-1.0, -2.0, -0.0], dtype=torch.float16))
    cfg = Config(model="m", output="o", loss_type=loss_type)
    losses, chosen_rewards, rejected_rewards, chosen, rejected = pair_losses(cfg, lp)
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    assert torch.isfinite(chosen_rewards).all() and torch.isfinite(rejected_rewards).all()


@pytest.mark.parametrize("settings,message", [
    ({"loss_type": "orpo", "sft_weight": 0.5}, "sft_weight is not used with orpo"),
    ({"max_prompt_length": 1024, "max_length": 1024}, "leaves no room for an answer"),
    ({"train_embeddings": "all"}, "LoRA adapter only"),
    ({"data": []}, "no data given"),
])
def test_bad_settings_are_one_line(settings, message):
    cfg = Config(model="m", output="o", data=["pairs.jsonl"])
    for key, value in settings.items():
        setattr(cfg, key, value)
    with pytest.raises(LlamantinoError, match=message) as info:
        cfg.validate("recipe.yaml")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------
# The stage


def pair_rows(n=10):
    """Chat-form pairs: an Italian answer chosen over an English one."""
    return [{"prompt": [{"role": "user", "content": f"Domanda numero {i}?"}],
             "chosen": [{"role": "assistant", "content": f"Risposta italiana {i}."}],
             "rejected": [{"role": "assistant", "content": f"An English answer {i}."}]} for i in range(n)]


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def prefer_args(model, data, out, *extra):
    return ["prefer", "--model", str(model), "--data", str(data), "--output", str(out), "--max-length", "512",
            "--max-prompt-length", "448", "--batch-size", "2", "--gradient-accumulation", "2", "--max-steps", "6",
            "--learning-rate", "1e-2", "--logging-steps", "1", "--no-load-in-4bit", "--compute-dtype", "float32",
            "--lora-r", "4", "--lora-dropout", "0.1", "--save-steps", "2", *extra]


def metrics_rows(run):
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_prefer_runs_logs_trl_figures_and_resumes_bit_for_bit(tmp_path, tiny_model_dir, capsys):
    import json

    from safetensors.torch import load_file

    from llamantino.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    held = write_jsonl(tmp_path / "held.jsonl", pair_rows(4))
    text = tmp_path / "it.txt"
    text.write_text("Il gatto dorme sul divano mentre la pioggia cade sulla città.\n", encoding="utf-8")
    evals = ["--eval-data", f"pairs={held}", f"it={text}", "--eval-steps", "3"]
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(prefer_args(tiny_model_dir, data, full, *evals)) == 0
    assert main(prefer_args(tiny_model_dir, data, parts, *evals, "--stop-after-steps", "3")) == 3
    # Other pairs in the same file: the checkpoint's position is refused, in one line.
    original = data.read_text(encoding="utf-8")
    write_jsonl(data, pair_rows()[::-1])
    capsys.readouterr()
    assert main(prefer_args(tiny_model_dir, data, parts, *evals, "--resume")) == 2
    assert "the checkpoint was made on other pairs" in capsys.readouterr().err
    data.write_text(original, encoding="utf-8")
    assert main(prefer_args(tiny_model_dir, data, parts, *evals, "--resume")) == 0
    a, b = (load_file(str(run / "adapter_model.safetensors")) for run in (full, parts))
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows, resumed = metrics_rows(full), metrics_rows(parts)
    train = [r for r in rows if r["loss"]]
    assert [int(r["step"]) for r in train] == list(range(1, 7))
    # Step 1: a fresh adapter, policy = reference: loss ln 2 and no margin; then rewards move.
    assert float(train[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(train[0]["rewards/margins"]) == 0.0
    assert float(train[-1]["rewards/margins"]) > 0 and float(train[-1]["rewards/accuracies"]) > 0.5
    # The resumed run logged the same figures, step for step (dropout draws included).
    for mine, theirs in zip(train, [r for r in resumed if r["loss"]]):
        assert mine["loss"] == theirs["loss"] and mine["rewards/margins"] == theirs["rewards/margins"]
    # Held-out: before training (step 0) and every 3 steps, pairs and text.
    evaluated = [r for r in rows if r["eval_pairs_rewards/accuracies"]]
    assert [int(r["step"]) for r in evaluated] == [0, 3, 6]
    assert float(evaluated[0]["eval_pairs_rewards/accuracies"]) == 0.0  # no reward yet
    assert all(r["eval_it_bpb"] for r in evaluated)
    manifest = json.loads((full / "manifest.json").read_text())["metrics"]
    assert manifest["loss_type"] == "dpo" and manifest["reference"].startswith("the model with the adapter off")
    assert manifest["pairs"] == 10 and manifest["pairs_cut"] == 0 and manifest["pairs_skipped"] == 0
    assert manifest["before_eval_it_bpb"] > 0 and manifest["eval_pairs_rewards/accuracies"] > 0.5
    assert (full / "loss.png").is_file()
    # Before and after, side by side: the held-out figures of the model tuned from, and of the result.
    before = json.loads((full / "heldout_before.json").read_text())
    assert before["eval_pairs_rewards/accuracies"] == 0.0 and before["eval_it_bpb"] == manifest["before_eval_it_bpb"]
    assert main(["report", "compare", f"before={full / 'heldout_before.json'}", f"after={full}", "--output",
                 str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "compare.md").read_text()
    for row in ("reward accuracy (held.jsonl)", "chosen answer more likely (held.jsonl)", "bits per byte (it.txt)"):
        assert f"| {row} |" in table, table
    # Released as an adapter, as an sft run is.
    assert main(["release", str(full), "--output", str(tmp_path / "release")]) == 0
    assert (tmp_path / "release" / "adapter_model.safetensors").is_file()
    assert "Stage `prefer`" in (tmp_path / "release" / "README.md").read_text()


@pytest.mark.distributed
@pytest.mark.parametrize("extra", [[], ["--precompute-reference"]], ids=["reference-forward", "precomputed"])
def test_two_ranks_make_the_step_of_one_process_with_both_batches(tmp_path, tiny_model_dir, extra, monkeypatch):
    """DDP: rank r takes every other pair of the epoch's order, so 2 ranks x 2 pairs see the pairs
    1 process x 4 pairs sees, and the step (loss, rewards, adapter) is the same. Precomputed, each
    rank computes a share of the reference pass's parts (parts of 4, 4 and 2 pairs: a round of two,
    then one) and the file equals one process's."""
    import csv
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    common = ["-m", "llamantino", *prefer_args(tiny_model_dir, data, "OUT", "--lora-dropout", "0", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if extra:  # parts of 4 pairs (a module constant, set in the child processes through a startup hook)
        hook = tmp_path / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text("import llamantino.train.reference as r\nr.PART_PAIRS = 4\n")
        env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
    runs = {}
    for name, launcher, batch in (("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "1"),
                                  ("one", [], "2")):
        args = [a if a != "OUT" else str(tmp_path / name) for a in common]
        args[args.index("--batch-size") + 1] = batch
        args[args.index("--max-steps") + 1] = "3"
        proc = subprocess.run([sys.executable, *launcher, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        with open(tmp_path / name / "metrics.csv", newline="") as handle:
            runs[name] = [r for r in csv.DictReader(handle) if r["loss"]]
    for mine, theirs in zip(runs["ddp"], runs["one"]):
        for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
            assert float(mine[key]) == pytest.approx(float(theirs[key]), rel=1e-4, abs=1e-6), key
    a, b = (load_file(str(tmp_path / name / "adapter_model.safetensors")) for name in ("ddp", "one"))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-6), key
    if extra:
        ddp, one = (load_file(str(tmp_path / name / "reference_logps.safetensors")) for name in ("ddp", "one"))
        for key in one:
            assert torch.allclose(ddp[key], one[key], rtol=1e-6), key


# ---------------------------------------------------------------------------------------
# Precomputed reference log-probabilities, full fine-tuning


def adapter_or_model(run):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (run / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(str(run / name))


def test_precomputed_reference_run_equals_the_uncached_run(tmp_path, tiny_model_dir):
    import json

    from safetensors.torch import load_file

    from llamantino.cli import main
    from llamantino.core.fileio import sha256_file

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    held = write_jsonl(tmp_path / "held.jsonl", pair_rows(4))
    evals = ["--eval-data", f"pairs={held}", "--eval-steps", "3"]
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    assert main(prefer_args(tiny_model_dir, data, plain, *evals)) == 0
    assert main(prefer_args(tiny_model_dir, data, cached, *evals, "--precompute-reference")) == 0
    a, b = adapter_or_model(plain), adapter_or_model(cached)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for mine, theirs in zip(metrics_rows(plain), metrics_rows(cached)):
        for key in ("loss", "rewards/margins", "eval_pairs_rewards/margins"):
            if mine[key]:
                assert float(mine[key]) == pytest.approx(float(theirs[key]), rel=1e-5, abs=1e-7), key
    # The file holds every training and held-out pair's reference log-probabilities, as recorded.
    record = json.loads((cached / "reference_logps.json").read_text())
    assert record["sha256"] == sha256_file(cached / "reference_logps.safetensors")
    assert record["sets"]["train"]["pairs"] == 10 and record["sets"]["eval_pairs"]["pairs"] == 4
    values = load_file(str(cached / "reference_logps.safetensors"))
    assert values["train.chosen"].dtype == torch.float32 and values["eval_pairs.rejected"].shape == (4,)
    assert not (cached / "reference-parts").exists()
    manifest = json.loads((cached / "manifest.json").read_text())["metrics"]
    assert "precomputed" in manifest["reference"] and manifest["reference_logps_sha256"] == record["sha256"]
    assert "precomputed" not in json.loads((plain / "manifest.json").read_text())["metrics"]["reference"]


def test_an_interrupted_reference_pass_resumes_where_it_stopped(tmp_path, tiny_model_dir, monkeypatch):
    from llamantino.cli import main
    from llamantino.train import reference

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    monkeypatch.setattr(reference, "PART_PAIRS", 3)  # 10 pairs: 4 parts
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    args = ["--precompute-reference", "--max-steps", "2"]
    assert main(prefer_args(tiny_model_dir, data, whole, *args)) == 0
    written = []
    real = reference.write_part

    def killed_after_two(tensors, path):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed in the middle of the pass
        written.append(path.name)
        real(tensors, path)

    monkeypatch.setattr(reference, "write_part", killed_after_two)
    assert main(prefer_args(tiny_model_dir, data, parts, *args)) == 130  # Ctrl-C
    assert sorted(p.name for p in (parts / "reference-parts").glob("part-*")) == written
    written.clear()
    monkeypatch.setattr(reference, "write_part", lambda tensors, path: (written.append(path.name),
                                                                        real(tensors, path)))
    assert main(prefer_args(tiny_model_dir, data, parts, *args, "--resume")) == 0
    assert written == ["part-00002.safetensors", "part-00003.safetensors"]  # the first two were kept
    assert (whole / "reference_logps.safetensors").read_bytes() == (parts / "reference_logps.safetensors").read_bytes()
    a, b = adapter_or_model(whole), adapter_or_model(parts)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_changed_reference_file_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys):
    from safetensors.torch import load_file, save_file

    from llamantino.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    run = tmp_path / "run"
    assert main(prefer_args(tiny_model_dir, data, run, "--precompute-reference", "--stop-after-steps", "2")) == 2 + 1
    values = load_file(str(run / "reference_logps.safetensors"))
    values["train.chosen"][0] += 1.0
    save_file(values, str(run / "reference_logps.safetensors"))
    capsys.readouterr()
    assert main(prefer_args(tiny_model_dir, data, run, "--precompute-reference", "--resume")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in err, errors  # one line
    assert "reference_logps.safetensors: sha256" in errors[0] and "changed since it was written" in errors[0]


def test_full_finetuning_starts_at_ln2_and_resumes_bit_for_bit(tmp_path, tiny_model_dir):
    import json

    from llamantino.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    held = write_jsonl(tmp_path / "held.jsonl", pair_rows(4))
    args = ["--finetuning", "full", "--precompute-reference", "--learning-rate", "1e-3", "--eval-data",
            f"pairs={held}"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(prefer_args(tiny_model_dir, data, whole, *args)) == 0
    assert main(prefer_args(tiny_model_dir, data, parts, *args, "--stop-after-steps", "3")) == 3
    assert main(prefer_args(tiny_model_dir, data, parts, *args, "--resume")) == 0
    assert not (whole / "adapter_model.safetensors").exists()
    a, b = adapter_or_model(whole), adapter_or_model(parts)
    assert a.keys() == b.keys() and len(a) > 10  # every weight of the model
    for key in a:
        assert torch.equal(a[key], b[key]), key
    train = [r for r in metrics_rows(whole) if r["loss"]]
    assert float(train[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 0
    assert float(train[0]["rewards/margins"]) == 0.0
    assert float(train[-1]["rewards/margins"]) > 0
    assert [r["loss"] for r in train] == [r["loss"] for r in metrics_rows(parts) if r["loss"]]
    manifest = json.loads((whole / "manifest.json").read_text())["metrics"]
    assert manifest["finetuning"] == "full" and manifest["reference"].startswith("the model before the first step")
    assert manifest["parameters"]["trainable"] == manifest["parameters"]["base_full_precision"]
    assert manifest["eval_pairs_rewards/accuracies"] > 0.5
    # Released as the whole model's exact difference from the model it was tuned from, as instruct is.
    assert main(["release", str(whole), "--output", str(tmp_path / "release")]) == 0
    assert json.loads((tmp_path / "release" / "manifest.json").read_text())["metrics"]["released_as"] == "weight-diff"


def perturb(model, seed=3):
    """Policy weights moved away from the reference's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)


@pytest.mark.parametrize("precompute", [False, True], ids=["ref_model", "precompute_ref_log_probs"])
@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_full_finetuning_loss_and_gradients_equal_trl(tmp_path, tiny_tokenizer, precompute, loss_type):
    """A model trained whole against a frozen reference: ours (reference precomputed by the same
    module) = TRL's DPOTrainer with ref_model, or with the reference log-probabilities in the batch."""
    import copy

    from trl import DPOConfig, DPOTrainer

    from datasets import Dataset

    reference_model = tiny_base(tiny_tokenizer)
    policy = copy.deepcopy(reference_model)
    perturb(policy)
    cfg = Config(model="m", output="o", loss_type=loss_type, beta=0.2, finetuning="full", precompute_reference=True,
                 load_in_4bit=False)
    batch = collate_pairs(PAIRS, 0)
    ref = make_loss(cfg)(reference_model, 3).reference_logps(batch.input_ids, batch.labels)
    module = make_loss(cfg)(policy, 3)
    loss, _ = module(batch.input_ids, batch.labels, float(batch.pairs), float(batch.chosen_tokens), None, ref)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters()}

    options = {"output_dir": str(tmp_path / "trl"), "use_cpu": True, "bf16": False, "report_to": [], "beta": 0.2,
               "loss_type": "sigmoid" if loss_type == "dpo" else "ipo", "precompute_ref_log_probs": precompute}
    trl_policy = copy.deepcopy(policy)
    trl_policy.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
        trainer = DPOTrainer(model=trl_policy, ref_model=None if precompute else copy.deepcopy(reference_model),
                             args=DPOConfig(**options), train_dataset=data, processing_class=tiny_tokenizer)
    inputs = trl_dpo_inputs(PAIRS)
    if precompute:
        inputs.update(ref_chosen_logps=ref[:len(PAIRS)], ref_rejected_logps=ref[len(PAIRS):])
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    assert abs(float(loss) - float(trl_loss)) <= 1e-5 * abs(float(trl_loss))
    trl_grads = {n: p.grad for n, p in trainer.model.named_parameters()}
    assert grads.keys() == trl_grads.keys()
    for name in grads:
        assert relative(grads[name], trl_grads[name]) <= 1e-5, name


def test_full_finetuning_step_zero_is_ln2(tiny_tokenizer):
    cfg = Config(model="m", output="o", finetuning="full", precompute_reference=True, load_in_4bit=False)
    model = tiny_base(tiny_tokenizer)
    batch = collate_pairs(PAIRS, 0)
    module = make_loss(cfg)(model, 3)
    ref = module.reference_logps(batch.input_ids, batch.labels)  # the model before its first step
    loss, figures = module(batch.input_ids, batch.labels, float(batch.pairs), float(batch.chosen_tokens), None, ref)
    assert abs(float(loss) - math.log(2)) <= 1e-6 and float(figures[3]) == 0.0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every weight trains


@pytest.mark.parametrize("settings,message", [
    ({"finetuning": "full", "load_in_4bit": False}, "needs precompute_reference"),
    ({"finetuning": "full", "precompute_reference": True}, "set load_in_4bit false"),
    ({"loss_type": "simpo", "precompute_reference": True}, "there is no reference to precompute"),
])
def test_bad_reference_settings_are_one_line(settings, message):
    test_bad_settings_are_one_line(settings, message)


def test_precomputed_reference_skips_the_reference_forward(tiny_tokenizer):
    """Given the rows' reference log-probabilities, the step takes them and runs no reference forward."""
    from peft import get_peft_model

    model = get_peft_model(tiny_base(tiny_tokenizer), lora())
    randomize_adapter(model)
    cfg = Config(model="m", output="o", precompute_reference=True)
    batch = collate_pairs(PAIRS, 0)
    args = (batch.input_ids, batch.labels, float(batch.pairs), float(batch.chosen_tokens), None)
    expected, _ = make_loss(cfg)(model, 3)(*args)
    module = make_loss(cfg)(model, 3)
    ref = module.reference_logps(batch.input_ids, batch.labels)
    module.reference_logps = lambda *a: pytest.fail("reference forward with precomputed values")
    loss, _ = module(*args, ref)
    assert torch.equal(loss, expected)
    shifted, _ = module(*args, ref + torch.tensor([1.0] * len(PAIRS) + [0.0] * len(PAIRS)))
    assert float(shifted) != pytest.approx(float(expected))  # the values given are the ones used


def test_full_finetuning_under_torchrun_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from llamantino.cli import main

    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before any process group is joined
    assert main(prefer_args(tiny_model_dir, data, tmp_path / "run", "--finetuning", "full",
                            "--precompute-reference")) == 2
    assert "finetuning full trains on one process (2 started)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_full_finetuning_from_a_starting_adapter_trains_the_merged_model(tmp_path, tiny_model_dir, tiny_tokenizer):
    """With --adapter the adapter is merged first: the merged model is both the reference and the
    start of the policy (step 1 at ln 2), and the result is a whole model."""
    import json

    from peft import get_peft_model

    from llamantino.cli import main

    adapter = get_peft_model(tiny_base(tiny_tokenizer), lora())
    randomize_adapter(adapter)
    adapter.save_pretrained(tmp_path / "sft")
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_rows())
    run = tmp_path / "run"
    assert main(prefer_args(tiny_model_dir, data, run, "--adapter", str(tmp_path / "sft"), "--finetuning", "full",
                            "--precompute-reference", "--max-steps", "2")) == 0
    train = [r for r in metrics_rows(run) if r["loss"]]
    assert float(train[0]["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["metrics"]["starting_adapter"] == "merged into the base; the whole model trained"
    assert "starting adapter merged in" in manifest["metrics"]["reference"]
    assert json.loads((run / "reference_logps.json").read_text())["reference"]["adapter"]["path"] == \
        str(tmp_path / "sft")
    assert (run / "model.safetensors").is_file() and not (run / "merged-base").exists()
