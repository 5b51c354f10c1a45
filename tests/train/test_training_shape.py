"""The training stages' shared shape: pinned numbers, the chunked loss against the model's
own, checkpoints that load no pickle and refuse planted files, one vocabulary of settings,
settings that load without torch."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamantino import cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for
from llamantino.train.checkpoint import Checkpoints, flatten, latest, unflatten

from helpers.adapt import adapt_args, corpus
from helpers.instruct import settings as instruct_settings, write_dolly
from helpers.training_shape import ADAPT_LOSSES, ADAPT_LR, INSTRUCT_LOSSES, INSTRUCT_LR, logged


# ---------------------------------------------------------------------------------------
# Numbers pinned (torch 2.13 on CPU, float32): a change in warmup rounding, loss
# normalisation or the order random numbers are drawn shows here, where invariants do not.


def test_tiny_adapt_run_gives_the_pinned_losses(tmp_path, tiny_model_dir):
    assert cli.main(adapt_args(tiny_model_dir, corpus(tmp_path), tmp_path / "run")) == 0
    assert logged(tmp_path / "run", "loss") == pytest.approx(ADAPT_LOSSES, rel=1e-4)
    assert logged(tmp_path / "run", "lr") == pytest.approx(ADAPT_LR, rel=1e-6)


def test_tiny_instruct_run_gives_the_pinned_losses(tmp_path, tiny_model_dir, monkeypatch):
    from llamantino.train import instruct

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    instruct.run(instruct_settings(tiny_model_dir, data, tmp_path / "run"))
    assert logged(tmp_path / "run", "loss") == pytest.approx(INSTRUCT_LOSSES, rel=1e-4)
    assert logged(tmp_path / "run", "lr") == pytest.approx(INSTRUCT_LR, rel=1e-6)


# ---------------------------------------------------------------------------------------
# The chunked loss is the model's own loss, with the same gradients


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir, chunk):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llamantino.train.qlora import CausalLMLoss

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0))
    for name, p in model.named_parameters():  # non-zero B: the LoRA path takes part in the loss
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    ids = torch.randint(3, 500, (2, 24))
    labels = ids.clone()
    labels[0, :5] = -100                       # a prompt without targets
    positions = torch.cat([torch.arange(10), torch.arange(14)]).repeat(2, 1)  # two packed documents
    n = (labels[:, 1:] != -100).sum()

    def loss_and_grads(chunk_size):
        model.zero_grad()
        loss = CausalLMLoss(model, chunk_size)(ids, positions, labels, n)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    own_loss, own_grads = loss_and_grads(0)
    loss, grads = loss_and_grads(chunk)
    assert torch.allclose(loss, own_loss, rtol=1e-6, atol=1e-6)
    for key in own_grads:
        assert torch.allclose(grads[key], own_grads[key], rtol=1e-4, atol=1e-7), key


# ---------------------------------------------------------------------------------------
# Checkpoints: no pickle, nothing loaded that the run did not write


def test_state_round_trips_without_pickle():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-3, betas=(0.9, 0.95))
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    state = {"opt": optimizer.state_dict(), "ints": {1: "a", 2: (3, 4.5)}, "np": __import__("numpy").arange(3)}
    tensors = {}
    tree = json.loads(json.dumps(flatten(state, tensors)))
    back = unflatten(tree, tensors)
    assert back["ints"] == {1: "a", 2: (3, 4.5)} and back["np"].tolist() == [0, 1, 2]
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


class Planted:
    """Unpickling this creates a file: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant_everywhere(folder: Path, marker: Path) -> list[str]:
    payload = pickle.dumps(Planted(marker))
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    for name in names:
        (folder / name).write_bytes(payload)
    return names


def test_a_planted_pickle_in_an_adapt_checkpoint_never_runs(tmp_path, tiny_model_dir, capsys):
    data, out = corpus(tmp_path), tmp_path / "run"
    assert cli.main(adapt_args(tiny_model_dir, data, out, "--stop-after-steps", "3")) == 3
    step, folder = latest(out)
    files = {p.name for p in folder.iterdir()}
    assert {"adapter_model.safetensors", "optimizer.json", "optimizer.safetensors", "scheduler.json",
            "trainer.json", "data-rank0.json", "rng-rank0.json", "rng-rank0.safetensors"} <= files
    assert not any(name.endswith((".pt", ".bin", ".pkl")) for name in files)
    marker = tmp_path / "pwned"
    planted = plant_everywhere(folder, marker)
    assert len(planted) == len(files)
    capsys.readouterr()
    assert cli.main(adapt_args(tiny_model_dir, data, out, "--resume")) == 2
    assert "differ from what the run wrote" in capsys.readouterr().err
    assert not marker.exists()


def test_a_legacy_or_unrecorded_checkpoint_is_refused(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run / "checkpoints" / "step-0000002" / "optimizer.pt").write_bytes(pickle.dumps(Planted(tmp_path / "m")))
    ckpt = Checkpoints(run)
    with pytest.raises(LlamantinoError, match="earlier llamantino layout"):
        ckpt.load(latest(run)[1], {"trainer": {}})
    (run / "checkpoints" / "step-0000002" / "optimizer.pt").unlink()
    (run / "checkpoints" / "step-0000002" / "trainer.json").write_text("{}")
    with pytest.raises(LlamantinoError, match="recorded no checksums"):
        ckpt.load(latest(run)[1], {"trainer": {}})
    assert not (tmp_path / "m").exists()


def test_a_planted_pickle_in_a_sharded_checkpoint_never_runs(tmp_path, tiny_model_dir, monkeypatch):
    from llamantino.train import instruct

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    out = tmp_path / "run"
    result = instruct.run(instruct_settings(tiny_model_dir, data, out, stop_after_steps=2))
    assert result["status"] == "stopped at step 2"
    step, folder = latest(out)
    names = {p.name for p in folder.iterdir()}
    assert ".metadata" in names and any(n.endswith(".distcp") for n in names) and "scheduler.json" in names
    marker = tmp_path / "pwned"
    plant_everywhere(folder, marker)
    with pytest.raises(LlamantinoError, match="differ from what the run wrote"):
        instruct.run(instruct_settings(tiny_model_dir, data, out), resume=True)
    assert not marker.exists()


def test_save_steps_zero_trains_to_the_end(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    args = adapt_args(tiny_model_dir, corpus(tmp_path), out)
    args[args.index("--save-steps") + 1] = "0"
    assert cli.main(args) == 0
    assert (out / "adapter_model.safetensors").is_file() and latest(out) is None


# ---------------------------------------------------------------------------------------
# One vocabulary of settings


def test_old_setting_names_still_work(caplog):
    cfg = config_for("instruct", model="m", data=["d"], output="o", mixed_precision="bf16")
    assert cfg.compute_dtype == "bfloat16"
    assert "setting 'mixed_precision' is now 'compute_dtype'" in caplog.text
    with pytest.raises(LlamantinoError, match="'mixed_precision' .* and 'compute_dtype' disagree"):
        config_for("instruct", model="m", data=["d"], output="o", mixed_precision="no", compute_dtype="bfloat16")
    with pytest.raises(LlamantinoError, match="setting 'mixed_precision' is 'fp8'"):
        config_for("instruct", model="m", data=["d"], output="o", mixed_precision="fp8")


def test_translate_batch_size_of_sentences_still_means_sentences(caplog):
    # Before batches were counted in tokens, translate's `batch_size` counted sentences.
    cfg = config_for("translate", inputs=["d"], output="o", batch_size="64")
    assert (cfg.max_batch_size, cfg.batch_type) == (64, "examples")
    assert "'batch_size' is now 'max_batch_size' (max_batch_size: 64, batch_type: examples)" in caplog.text
    with pytest.raises(LlamantinoError, match="'batch_size' .* means batch_type: examples, but batch_type is 'tokens'"):
        config_for("translate", inputs=["d"], output="o", batch_size="64", batch_type="tokens")


def test_the_training_stages_share_one_vocabulary():
    from llamantino.train import adapt, instruct, sft

    shared = ("batch_size", "gradient_accumulation", "effective_batch_size", "compute_dtype", "learning_rate",
              "lr_scheduler", "warmup_ratio", "max_grad_norm", "weight_decay", "optimizer", "save_steps",
              "stop_after_steps", "gradient_checkpointing", "max_length", "seed")
    for module in (adapt, sft, instruct):
        fields = module.Config.__dataclass_fields__
        assert all(name in fields for name in shared), module.__name__
    with pytest.raises(LlamantinoError, match="disagrees with effective_batch_size 16"):
        from llamantino.train.settings import accumulation

        accumulation(config_for("adapt", model="m", data=["d"], output="o", batch_size=2, gradient_accumulation=3,
                                effective_batch_size=16), world=2)


def test_settings_of_every_stage_load_without_torch():
    code = ("import importlib, sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers', 'peft'):\n"
            "            raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from llamantino.core.recipes import load_recipe\n"
            "from llamantino.core.registry import STAGE_MODULES\n"
            "for module in STAGE_MODULES.values():\n"
            "    importlib.import_module(module)\n"
            "for name in ('LLaMAntino-2-7b-hf-ITA', 'LLaMAntino-2-chat-7b-hf-UltraChat-ITA', 'demo'):\n"
            "    load_recipe(name)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
