"""`llamantino doctor`: the report a bug needs, every machine-dependent `auto` with its choice and
reason, and `--smoke`: a tiny model through each path `auto` picks, against the plain path."""

import time

import pytest
import torch

from llamantino import doctor
from llamantino.cli import main
from llamantino.models.modeling import decoder_blocks
from llamantino.train import speed

from helpers.speed import broken_backend


pytestmark = pytest.mark.usefixtures("one_thread")

AUTO_SETTINGS = ("compute_dtype", "attn_implementation", "activation_checkpointing", "compile", "kernels",
                 "fused_loss", "optimizer", "fused_optimizer", "compute_type")
PATHS = ("4-bit + LoRA", "attention", "compile", "liger", "fused AdamW", "CTranslate2")


def test_doctor_prints_what_a_bug_report_needs(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    labels = {line.split("  ")[0].strip() for line in out.splitlines() if line and not line.startswith(" ")}
    for label in ("llamantino", "python", "torch", "CPU", "CPU flags", "transformers", "peft", "accelerate",
                  "bitsandbytes", "flash-attn", "flash-attn 3", "liger-kernel", "triton", "lm-eval", "ctranslate2",
                  "C compiler"):
        assert label in labels, (label, out)
    assert "GPUs" in labels or "GPU 0" in labels
    for flag in ("avx512_bf16", "amx_bf16", "torch CPU capability"):
        assert flag in out
    assert "CUDA build" in out and "CUDA devices it sees:" in out and "AVX512-BF16 4-bit CPU path:" in out
    table = out[out.index("auto settings on this machine"):]
    for setting in AUTO_SETTINGS:
        row = next((line for line in table.splitlines() if line.split()[:1] == [setting]), None)
        assert row is not None and len(row.split()) >= 4, (setting, table)  # a choice and a reason
    if not torch.cuda.is_available():
        assert "compile                   all training  none" in table and "CPU: compiling" in table


def verdicts(lines):
    return {line.path: line.verdict for line in lines}


def test_doctor_smoke_runs_every_path_on_cpu_in_under_a_minute(capsys):
    started = time.time()
    code = main(["doctor", "--smoke"])
    seconds = time.time() - started
    out = capsys.readouterr().out
    rows = {line[:14].strip(): line[36:] for line in out[out.index("smoke test:"):].splitlines()[1:-1]}
    assert set(rows) == set(PATHS), out
    assert all(verdict.startswith("ok") for verdict in rows.values()), out
    assert rows["4-bit + LoRA"].startswith("ok (loss ") and "gradients within" in rows["4-bit + LoRA"]
    assert rows["CTranslate2"].startswith("ok (log-probabilities within cpu")
    assert code == 0
    assert seconds < 60, seconds


def test_doctor_smoke_says_when_a_path_fell_back_or_fails(monkeypatch, capsys):
    """Forced choices: compiled blocks whose compilation fails (the run would continue eagerly) and a
    CTranslate2 conversion that raises; the exit status says a path failed."""
    import ctranslate2

    resolve = speed.resolve

    def compiling(cfg, device, model_type, compute_dtype="bfloat16"):
        paths = resolve(cfg, device, model_type, compute_dtype)
        paths.compile = "blocks"
        return paths

    def compile_blocks(causal_lm):
        for block in decoder_blocks(causal_lm):
            block.compile(backend=broken_backend([]))

    class Broken:
        def __init__(self, folder):
            raise ValueError("unsupported model type")

    torch._dynamo.reset()
    monkeypatch.setattr(speed, "resolve", compiling)
    monkeypatch.setattr(speed, "compile_blocks", compile_blocks)
    monkeypatch.setattr(ctranslate2.converters, "TransformersConverter", Broken)
    lines = verdicts(doctor.smoke())
    assert lines["compile"] == ("fell back: eager after BackendCompilerFailed: RuntimeError: Failed to find C "
                                "compiler. Please specify via CC environment variable.")
    assert lines["CTranslate2"] == "fails: ValueError: unsupported model type"
    assert main(["doctor", "--smoke"]) == 1
    capsys.readouterr()


def test_a_path_whose_numbers_move_differs():
    grads = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    same = doctor.compare((2.0, grads), (2.0, {k: v.clone() for k, v in grads.items()}), loss_tol=1e-5,
                          grad_tol=1e-4)
    assert same == "ok (loss 2.000000 vs 2.000000, gradients within 0.0e+00 of the largest)"
    moved = doctor.compare((2.0, grads), (2.0, {"a": grads["a"], "b": torch.tensor([0.6])}), loss_tol=1e-5,
                           grad_tol=1e-4)
    assert moved == "differs: loss 2.000000 vs 2.000000, gradients off by up to 2.0e-01 of the largest"
    dead = doctor.compare((2.0, grads), (2.0, {"a": grads["a"], "b": torch.zeros(1)}), loss_tol=1, grad_tol=1)
    assert dead.startswith("differs")  # an adapter that gets no gradient at all
    assert doctor.compare((2.0, grads), (2.1, grads), loss_tol=1e-5, grad_tol=1e-4).startswith("differs: loss 2.1")
