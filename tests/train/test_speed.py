"""The speed paths give the plain path's losses and gradients: activation checkpointing (full,
selective, none), compiled decoder blocks, flex attention over packed documents, FlashAttention's
boundaries computed once a batch, the chunked loss of full fine-tuning, fused AdamW; `auto`
resolves to what the machine has, GPU-only paths are guarded, and the GPU benchmark runs on CPU.

Tests marked `gpu` check the kernels that exist on CUDA only (FlashAttention, flex attention's
backward pass, Liger, compiled 4-bit blocks with Triton); they are skipped without a GPU.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for
from llamantino.data.supervised import IGNORE
from llamantino.models.modeling import decoder_blocks
from llamantino.train import common, speed

from helpers.speed import broken_backend
from helpers.training_shape import ADAPT_LOSSES, INSTRUCT_LOSSES, logged


ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


pytestmark = pytest.mark.usefixtures("one_thread")


def qlora_model(folder, *, dropout=0.1, device="cpu", compute="float32", attention="sdpa", in_4bit=True):
    """A (4-bit) tiny LLaMA with LoRA on every decoder linear layer, B non-zero, in training mode."""
    from peft import LoraConfig, get_peft_model

    from llamantino.models.modeling import load_causal_lm

    base = load_causal_lm(str(folder), dtype=compute, load_in_4bit=in_4bit, compute_dtype=compute, device=device,
                          attn_implementation=attention)
    for p in base.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)  # the same adapters (A drawn by PEFT, B here) in every model built
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=dropout))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    model.train()
    return model


def packed_batch(vocab=500, rows=2, length=48, device="cpu"):
    """Rows of three packed documents each, with a prompt without targets in the first row."""
    torch.manual_seed(0)
    ids = torch.randint(3, vocab, (rows, length))
    labels = ids.clone()
    labels[:, 0] = IGNORE
    labels[0, :5] = IGNORE
    positions = torch.cat([torch.arange(14), torch.arange(20), torch.arange(length - 34)]).repeat(rows, 1)
    labels[:, 14] = labels[:, 34] = IGNORE  # a document's first token is no target of the previous one
    return ids.to(device), positions.to(device), labels.to(device)


def loss_and_grads(model, batch, *, chunk=7, fused="chunked", flatten=None, seed=5):
    from llamantino.train.qlora import CausalLMLoss

    ids, positions, labels = batch
    loss_fn = CausalLMLoss(model, chunk, fused=fused)
    if flatten is not None:
        loss_fn.flatten = flatten
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout draws in every run
    loss = loss_fn(ids, positions, labels, (labels[:, 1:] != IGNORE).sum())
    loss.backward()
    grads = {k: p.grad.float().clone() for k, p in model.named_parameters() if p.requires_grad}
    return float(loss), grads


def assert_same(reference, other, *, loss_tol=1e-6, grad_tol=1e-5, name=""):
    """Same loss, and gradients equal to `grad_tol` of the largest; prints the figures (pytest -s)."""
    (loss0, grads0), (loss1, grads1) = reference, other
    worst = max(float((grads1[k] - grads0[k]).abs().max()) / max(float(grads0[k].abs().max()), 1e-12)
                for k in grads0)
    print(f"\n{name}: loss {loss0:.6f} vs {loss1:.6f} (|diff| {abs(loss1 - loss0):.1e}), "
          f"largest gradient difference {worst:.1e} of the largest gradient")
    assert abs(loss1 - loss0) <= loss_tol * max(1.0, abs(loss0)), (loss0, loss1)
    assert worst <= grad_tol, worst
    assert all(float(g.abs().max()) > 0 for g in grads0.values())  # every adapter takes part


BF16 = {"loss_tol": 2e-2, "grad_tol": 8e-2}  # bfloat16 compute: rounding of 3 significant digits


def not_separated(batch):
    """The packed documents of each row as one: positions that never restart."""
    ids, positions, labels = batch
    return ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids), labels


def labels_shifted(batch):
    """Every target one position off (each token trained to predict the one after next)."""
    ids, positions, labels = batch
    return ids, positions, labels.roll(-1, dims=1)


def assert_controls_rejected(reference, model, batch, tolerances, name, **options):
    """Negative controls: the model on its documents not kept apart, and on labels shifted by one,
    must fail the comparison at `tolerances`, or the comparison could not fail."""
    for control, bad in (("documents not separated", not_separated(batch)), ("labels shifted", labels_shifted(batch))):
        with pytest.raises(AssertionError, match=r"^[(\d]"):  # the loss or the gradients differ, beyond tolerance
            assert_same(reference, loss_and_grads(model, bad, **options), **tolerances, name=f"{name}, {control}")


# ---------------------------------------------------------------------------------------
# Activation checkpointing: full, selective, none


def test_the_selective_policy_keeps_projections_and_attention_and_recomputes_the_rest():
    from torch.utils.checkpoint import CheckpointPolicy

    policy = speed.selective_policy(lora_rank=4)
    x, w, a, b = torch.zeros(6, 64), torch.zeros(64, 128), torch.zeros(64, 4), torch.zeros(4, 128)
    save, recompute = CheckpointPolicy.MUST_SAVE, CheckpointPolicy.PREFER_RECOMPUTE
    assert policy(None, torch.ops.aten.mm.default, x, w) == save             # a projection
    assert policy(None, torch.ops.aten.mm.default, x, a) == save             # LoRA A: rank-wide output
    assert policy(None, torch.ops.aten.mm.default, torch.zeros(6, 4), b) == recompute  # LoRA B: rank-deep
    assert policy(None, torch.ops.aten.addmm.default, torch.zeros(128), x, w) == save
    assert policy(None, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default) == save
    for op in (torch.ops.aten.mul.Tensor, torch.ops.aten.silu.default, torch.ops.aten.rsqrt.default,
               torch.ops.aten.native_dropout.default):
        assert policy(None, op) == recompute
    assert speed.selective_policy(0)(None, torch.ops.aten.mm.default, torch.zeros(6, 4), b) == save  # no LoRA


def test_checkpointing_modes_give_the_same_loss_and_gradients(tiny_model_dir, monkeypatch):
    """4-bit base, LoRA with dropout 0.1 (recomputation must draw the same dropout masks)."""
    from torch.utils.checkpoint import CheckpointPolicy

    decisions = []
    plain_policy = speed.selective_policy

    def recording_policy(lora_rank=0):
        policy = plain_policy(lora_rank)

        def record(ctx, op, *args, **kwargs):
            decisions.append(policy(ctx, op, *args, **kwargs))
            return decisions[-1]
        return record

    monkeypatch.setattr(speed, "selective_policy", recording_policy)
    model = qlora_model(tiny_model_dir)
    batch = packed_batch()
    speed.set_checkpointing(model.get_base_model(), "none")
    reference = loss_and_grads(model, batch)
    layers = model.get_base_model().model.layers
    assert not any(layer.gradient_checkpointing for layer in layers)
    for mode, every in (("full", 1), ("selective", 1), ("full", 2)):
        speed.set_checkpointing(model.get_base_model(), mode, lora_rank=4, every=every)
        assert sum(layer.gradient_checkpointing for layer in layers) == len(layers) // every
        assert_same(reference, loss_and_grads(model, batch), loss_tol=0, grad_tol=1e-6,
                    name=f"{mode}, every {every} vs none")
    # selective kept the 4-bit projections, LoRA A and attention, and recomputed the rest
    assert decisions.count(CheckpointPolicy.MUST_SAVE) >= 2 * (7 + 7 + 1)
    assert decisions.count(CheckpointPolicy.PREFER_RECOMPUTE) > decisions.count(CheckpointPolicy.MUST_SAVE)


def test_activation_checkpointing_settings_and_their_old_switch():
    cfg = config_for("adapt", model="m", data=["d"], output="o")
    assert (cfg.activation_checkpointing, cfg.compile, cfg.kernels, cfg.fused_loss) == ("auto",) * 4
    assert cfg.checkpointing() == "full"
    off = config_for("adapt", model="m", data=["d"], output="o", gradient_checkpointing=False)
    assert off.checkpointing() == "none"
    assert config_for("instruct", model="m", data=["d"], output="o",
                      activation_checkpointing="selective").checkpointing() == "selective"
    with pytest.raises(LlamantinoError, match="gradient_checkpointing is false but activation_checkpointing is "
                                              "selective"):
        config_for("sft", model="m", data=["d"], output="o", gradient_checkpointing=False,
                   activation_checkpointing="selective")
    with pytest.raises(LlamantinoError, match="setting 'compile' is 'graph'; valid: auto, none, blocks"):
        config_for("adapt", model="m", data=["d"], output="o", compile="graph")
    offload = config_for("adapt", model="m", data=["d"], output="o", activation_checkpointing="offload")
    with pytest.raises(LlamantinoError, match="offload: it moves activations from a GPU to host memory, and on CPU "
                                              "they are there already; use full"):
        speed.resolve(offload, torch.device("cpu"), "llama")


def test_the_paper_recipes_gain_speed_settings_and_keep_their_values(capsys):
    from llamantino.cli import main

    assert main(["config", "show", "LLaMAntino-2-7b-hf-ITA", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    settings = shown["stages"]["adapt"]
    assert settings["attn_implementation"] == "sdpa" and settings["gradient_checkpointing"] is True
    assert settings["loss_chunk_tokens"] == 1024 and settings["compute_dtype"] == "float16"
    for key in ("activation_checkpointing", "compile", "kernels", "fused_loss"):
        assert settings[key] == "auto", key


# ---------------------------------------------------------------------------------------
# Compiled decoder blocks


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_model_dir):
    """torch.compile (inductor's C++ backend on CPU) of every 4-bit LoRA block, inside full and
    selective checkpointing (compiled without checkpointing: the GPU test); one graph for both blocks."""
    torch._dynamo.reset()
    model = qlora_model(tiny_model_dir, dropout=0.0)  # inductor draws its own dropout masks
    batch = packed_batch()
    causal_lm = model.get_base_model()
    speed.set_checkpointing(causal_lm, "none")
    reference = loss_and_grads(model, batch)
    assert speed.compile_blocks(causal_lm) == 2
    for mode in ("full", "selective"):
        speed.set_checkpointing(causal_lm, mode, lora_rank=4)
        assert_same(reference, loss_and_grads(model, batch), grad_tol=1e-5, name=f"compiled blocks, {mode}")
    assert all(block._compiled_call_impl is not None for block in causal_lm.model.layers)
    names = {k for k, _ in model.named_parameters()}
    assert not any("_orig_mod" in k for k in names)  # adapters save under their usual names


# ---------------------------------------------------------------------------------------
# A compile error in the first steps: the run continues eagerly


def counting_backend(calls):
    """A backend that compiles nothing (runs the traced graph) and records the grad mode it was asked in."""
    def backend(gm, example_inputs):
        calls.append(torch.is_grad_enabled())
        return gm.forward
    return backend


def compile_with(monkeypatch, backend):
    def compile_blocks(causal_lm):
        for block in decoder_blocks(causal_lm):
            block.compile(backend=backend)
    monkeypatch.setattr(speed, "compile_blocks", compile_blocks)


def test_the_compile_guard_reruns_a_failed_step_eagerly_and_stays_eager(caplog):
    torch._dynamo.reset()
    calls = []
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.nn.functional.silu(self.linear(x)) * 2

    layer = Block()
    layer.compile(backend=broken_backend(calls))
    x = torch.arange(8.0).view(2, 4)
    undone = []

    def step():
        layer.zero_grad(set_to_none=True)
        layer(x).square().sum().backward()
        return layer.linear.weight.grad.clone()

    guard = speed.CompileGuard(compiled=True)
    grad = guard.run(step, lambda: undone.append(True))
    assert calls and undone == [True]
    assert guard.fell_back.startswith("BackendCompilerFailed") and "Failed to find C compiler" in guard.fell_back
    assert caplog.text.count("torch.compile failed") == 1
    with torch.compiler.set_stance("force_eager"):
        assert torch.equal(grad, step())
    n = len(calls)
    for _ in range(3):  # later steps run eagerly: no compilation tried again, no more lines
        assert torch.equal(guard.run(step, lambda: undone.append(True)), grad)
    assert len(calls) == n and undone == [True] and caplog.text.count("torch.compile failed") == 1

    def real_error():
        raise ValueError("a real error")

    with pytest.raises(ValueError, match="a real error"):  # one that recurs eagerly is raised
        speed.CompileGuard(compiled=True).run(real_error, lambda: None)
    with pytest.raises(LlamantinoError):  # our own refusals are never retried
        speed.CompileGuard(compiled=True).run(lambda: (_ for _ in ()).throw(LlamantinoError("no")), None)
    plain = speed.CompileGuard(compiled=False)
    with pytest.raises(ValueError):
        plain.run(real_error, lambda: None)
    assert not plain.fell_back


def test_adapt_whose_blocks_fail_to_compile_trains_the_pinned_losses_eagerly(tmp_path, tiny_model_dir, monkeypatch,
                                                                             caplog):
    from llamantino.cli import main

    torch._dynamo.reset()
    calls = []
    compile_with(monkeypatch, broken_backend(calls))
    assert main(adapt_cmd(tiny_model_dir, tmp_path, "--compile", "blocks")) == 0
    assert calls  # compilation was tried
    assert logged(tmp_path / "run", "loss") == pytest.approx(ADAPT_LOSSES, rel=1e-5)
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]
    assert metrics["compile"] == "none" and "Failed to find C compiler" in metrics["compile_error"]
    assert caplog.text.count("torch.compile failed") == 1


def test_instruct_whose_blocks_fail_to_compile_trains_the_pinned_losses_eagerly(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    from helpers.instruct import settings, write_dolly

    from llamantino.train import instruct

    torch._dynamo.reset()
    calls = []
    compile_with(monkeypatch, broken_backend(calls))
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    result = instruct.run(settings(tiny_model_dir, data, tmp_path / "run", compile="blocks"))
    assert calls
    assert logged(tmp_path / "run", "loss") == pytest.approx(INSTRUCT_LOSSES, rel=1e-4)
    assert result["metrics"]["compile"] == "none" and "C compiler" in result["metrics"]["compile_error"]


def test_heldout_evaluation_never_compiles(tmp_path, tiny_model_dir, monkeypatch):
    """Compiled blocks run held-out evaluation eagerly: no graphs for its no-grad mode and shapes."""
    from helpers.heldout import EN

    from llamantino.cli import main

    torch._dynamo.reset()
    calls = []
    compile_with(monkeypatch, counting_backend(calls))
    heldout = tmp_path / "en.txt"
    heldout.write_text("\n\n".join(EN) + "\n", encoding="utf-8")
    assert main(adapt_cmd(tiny_model_dir, tmp_path, "--no-load-in-4bit", "--compute-dtype", "float32", "--compile",
                          "blocks", "--eval-data", f"en={heldout}", "--eval-steps", "2")) == 0
    rows = [r for r in logged_rows(tmp_path / "run") if r["eval_en_bpb"]]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert calls and all(calls)  # compiled for training (grad mode) only
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]
    assert metrics["compile"] == "blocks" and "compile_error" not in metrics


def logged_rows(run_dir):
    import csv

    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------
# Attention over packed documents


def test_flex_attention_keeps_packed_documents_apart_on_cpu(tiny_model_dir):
    """Flex attention with transformers' block mask from the restarting position ids gives the
    logits of SDPA's dense block-diagonal mask (which tests/models/test_families.py shows equal to the
    documents run one by one); forward only: torch 2.13 has no flex backward pass on CPU."""
    from llamantino.models.modeling import load_causal_lm

    ids, positions, _ = packed_batch(rows=1)
    logits = {}
    for attention in ("sdpa", "flex_attention"):
        model = load_causal_lm(str(tiny_model_dir), dtype="float32", device="cpu", attn_implementation=attention)
        model.eval()
        assert model.config._attn_implementation == attention
        with torch.no_grad():
            logits[attention] = model(input_ids=ids, position_ids=positions, use_cache=False).logits
            if attention == "sdpa":
                leaky = model(input_ids=ids, use_cache=False).logits
    error = float((logits["flex_attention"] - logits["sdpa"]).abs().max())
    print(f"\nflex vs sdpa on packed documents: largest logit difference {error:.1e}")
    assert error < 1e-4
    assert float((leaky - logits["sdpa"]).abs().max()) > 1e-3  # the documents' masks matter here


def test_auto_takes_flash_attention_only_once_its_kernel_ran_here(tiny_model_dir, monkeypatch, caplog):
    """transformers' availability check reads package metadata; a wheel built for another torch
    passes it and fails at the first step. `auto` takes FlashAttention only after the probe, else
    SDPA with one line saying why."""
    import transformers.utils

    from llamantino.models import modeling

    config = modeling.load_config(str(tiny_model_dir))
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setattr(modeling, "_is_hopper", lambda device: False)
    tried = []

    def broken(impl, device, dtype):
        tried.append((impl, device, dtype))
        return False, "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEa"

    monkeypatch.setattr(modeling, "probe_flash_attention", broken)
    caplog.set_level("INFO", logger="llamantino.models.modeling")
    assert modeling.resolve_attention("auto", config, "cuda:0", "bfloat16") == "sdpa"
    assert tried == [("flash_attention_2", "cuda:0", "bfloat16")]
    lines = [r.getMessage() for r in caplog.records if r.name == "llamantino.models.modeling"]
    assert lines == ["attention auto: sdpa (flash_attention_2 is installed but does not run here (ImportError: "
                     "flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEa))"]
    assert modeling.resolve_attention("sdpa", config, "cuda:0", "bfloat16") == "sdpa"
    assert len(tried) == 1  # an explicit choice probes nothing
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert modeling.attention_choice(config, "cuda:0", "bfloat16") == ("sdpa", "flash-attn not installed")
    assert modeling.attention_choice(config, "cpu", "float32") == ("sdpa", "CPU")
    assert len(tried) == 1  # nothing installed: nothing imported


def test_the_flash_attention_probe_runs_the_kernel_against_sdpa_per_document(monkeypatch):
    """The probe's own test, on CPU: a stand-in for the FlashAttention kernel registered where
    transformers looks it up. One that keeps the documents apart passes; one that lets them see
    each other is caught; a kernel module that does not import is reported, not raised."""
    import types

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from llamantino.models import modeling

    assert modeling.probe_flash_attention("flash_attention_2", "cpu", "bfloat16") == (
        False, "ModuleNotFoundError: No module named 'flash_attn'")

    def stand_in(separate):
        def attention(module, q, k, v, mask, scaling=None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
            assert module.config._attn_implementation == "flash_attention_2" and max_length_q >= 15
            bounds = cu_seq_lens_q.tolist() if separate else [0, q.shape[2]]
            parts = [torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                                      is_causal=True, scale=scaling)
                     for a, b in zip(bounds, bounds[1:])]
            return torch.cat(parts, dim=2).transpose(1, 2), None
        return attention

    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    for separate, expected in ((True, True), (False, False)):
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flash_attention_2", stand_in(separate))
        monkeypatch.setattr(modeling, "_PROBED", {})
        works, problem = modeling.probe_flash_attention("flash_attention_2", "cpu", "float32")
        assert works is expected, problem
        assert problem == "" if expected else problem.startswith("its output differs from SDPA's by")


def test_flex_attention_through_the_loss_of_packed_rows_equals_sdpa_on_cpu(tiny_model_dir):
    """Rows as the packer makes them (documents, a continuation, padding as a document of its own)
    through the QLoRA loss: flex attention's document mask, built by transformers from the
    restarting position ids, gives SDPA's loss. Forward only (no flex backward on CPU in torch
    2.13); the GPU test compares gradients."""
    from llamantino.data.packing import Row, collate

    torch.manual_seed(3)
    rows = []
    for lengths in ((17, 9, 20), (30, 11)):  # the second row ends in 7 padding positions
        row = Row()
        for n in lengths:
            ids = torch.randint(3, 500, (n,)).tolist()
            row.add(ids, ids)
        rows.append(row)
    batch = collate(rows, 48, pad_id=0)
    losses = {}
    for attention in ("sdpa", "flex_attention"):
        model = qlora_model(tiny_model_dir, dropout=0.0, in_4bit=False, attention=attention)
        with torch.no_grad():
            from llamantino.train.qlora import CausalLMLoss

            loss = CausalLMLoss(model, 7)
            assert not loss.flatten
            losses[attention] = float(loss(batch.input_ids, batch.position_ids, batch.labels, batch.target_tokens))
    print(f"\nflex vs sdpa, packed rows through the loss: {losses}")
    assert losses["flex_attention"] == pytest.approx(losses["sdpa"], rel=1e-6)


def test_varlen_boundaries_are_transformers_own_with_the_row_length_as_their_bound():
    """The boundaries transformers would derive from the position ids; the longest document given
    as the row length, a constant upper bound: the same Python int for every batch (no
    recompilation of compiled blocks, no read of a GPU tensor)."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    from llamantino.train.qlora import varlen_kwargs

    _, positions, _ = packed_batch(rows=3)
    flat = positions.reshape(1, -1)
    mine = varlen_kwargs(positions, positions.shape[1])
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(flat)
    assert torch.equal(mine["cu_seq_lens_q"], cu_q) and torch.equal(mine["cu_seq_lens_k"], cu_k)
    assert mine["max_length_q"] == mine["max_length_k"] == 48 >= int(max_q) == 20
    assert type(mine["max_length_q"]) is int and mine["cu_seq_lens_q"].dtype == torch.int32
    other = varlen_kwargs(torch.cat([torch.arange(30), torch.arange(18)]).repeat(3, 1), 48)
    assert other["max_length_q"] == mine["max_length_q"]  # another batch, the same bound


def test_flattened_rows_with_their_boundaries_give_the_same_loss(tiny_model_dir):
    """The FlashAttention path (rows flattened, boundaries handed to every layer) run with SDPA:
    the extra arguments reach the layers harmlessly and the loss and gradients do not move."""
    model = qlora_model(tiny_model_dir, dropout=0.0)
    batch = packed_batch()
    for chunk in (0, 7):
        assert_same(loss_and_grads(model, batch, chunk=chunk), loss_and_grads(model, batch, chunk=chunk, flatten=True),
                    loss_tol=1e-6, grad_tol=1e-5, name=f"flattened, chunk {chunk}")


# ---------------------------------------------------------------------------------------
# What `auto` picks, and the guards of the GPU-only paths


def gpu_machine(monkeypatch, *, liger=True, triton=True, cc="/usr/bin/gcc"):
    """The probes of a GPU machine, as `resolve` sees them (the device itself is only a name there)."""
    monkeypatch.setattr(speed, "has_liger", lambda: liger)
    monkeypatch.setattr(speed, "has_triton", lambda: triton)
    monkeypatch.setattr(speed, "c_compiler", lambda: cc)
    monkeypatch.setattr(speed, "liger_supports", lambda model_type: model_type == "llama")


def test_auto_picks_the_plain_paths_on_cpu_and_the_gpu_paths_where_they_run(monkeypatch):
    adapt = config_for("adapt", model="m", data=["d"], output="o")  # 4-bit + LoRA
    full = config_for("instruct", model="m", data=["d"], output="o")  # full precision
    cpu = torch.device("cpu")
    assert speed.resolve(adapt, cpu, "llama") == speed.Speed("full", "none", "torch", "chunked")
    gpu_machine(monkeypatch)
    assert speed.resolve(adapt, cpu, "llama") == speed.Speed("full", "none", "torch", "chunked")
    cuda = torch.device("cuda", 0)
    # 4-bit + LoRA is never compiled by auto; Liger's kernels are never compiled into blocks
    paths = speed.resolve(adapt, cuda, "llama")
    assert paths == speed.Speed("full", "none", "liger", "liger")
    assert "4-bit + LoRA" in paths.why["compile"]
    assert speed.resolve(full, cuda, "llama") == speed.Speed("full", "none", "liger", "liger")
    assert speed.resolve(full, cuda, "cohere") == speed.Speed("full", "blocks", "torch", "chunked")
    assert speed.resolve(adapt, cuda, "cohere") == speed.Speed("full", "none", "torch", "chunked")
    assert speed.resolve(full, cuda, "llama", "float16") == speed.Speed("full", "blocks", "torch", "chunked")
    explicit = config_for("adapt", model="m", data=["d"], output="o", compile="none", kernels="torch",
                          fused_loss="chunked", activation_checkpointing="selective")
    assert speed.resolve(explicit, cuda, "llama") == speed.Speed("selective", "none", "torch", "chunked")
    with pytest.raises(LlamantinoError, match="setting 'kernels' is liger: Liger's Triton kernels need a CUDA device"):
        speed.resolve(config_for("adapt", model="m", data=["d"], output="o", kernels="liger"), cpu, "llama")
    with pytest.raises(LlamantinoError, match="Liger has no kernels for model type 'cohere'"):
        speed.resolve(config_for("adapt", model="m", data=["d"], output="o", fused_loss="liger"), cuda, "cohere")
    monkeypatch.setattr(speed, "has_liger", lambda: False)
    with pytest.raises(LlamantinoError, match=r"liger-kernel is not installed \(pip install 'llamantino\[speed\]'\)"):
        speed.resolve(config_for("adapt", model="m", data=["d"], output="o", fused_loss="liger"), cuda, "llama")
    assert speed.resolve(full, cuda, "llama") == speed.Speed("full", "blocks", "torch", "chunked")


def test_liger_never_goes_into_compiled_blocks_nor_under_selective_checkpointing(monkeypatch):
    """Liger's kernels fail under torch.compile, and its RoPE rotates q and k in place, which
    selective checkpointing's kept projections would see twice on recompute: an explicit ask is
    refused in one line, `auto` takes the other path."""
    gpu_machine(monkeypatch)
    cuda = torch.device("cuda", 0)
    with pytest.raises(LlamantinoError, match="^activation_checkpointing selective with kernels liger: Liger's RoPE "
                                              "rotates q and k in place"):
        speed.resolve(config_for("instruct", model="m", data=["d"], output="o", kernels="liger",
                                 activation_checkpointing="selective"), cuda, "llama")
    with pytest.raises(LlamantinoError, match="^compile blocks with kernels liger: Liger's kernels are not compiled"):
        speed.resolve(config_for("instruct", model="m", data=["d"], output="o", kernels="liger", compile="blocks"),
                      cuda, "llama")
    selective = speed.resolve(config_for("instruct", model="m", data=["d"], output="o",
                                         activation_checkpointing="selective"), cuda, "llama")
    assert (selective.kernels, selective.fused_loss, selective.compile) == ("torch", "liger", "blocks")
    assert "in-place RoPE" in selective.why["kernels"]
    compiled = speed.resolve(config_for("instruct", model="m", data=["d"], output="o", compile="blocks"), cuda,
                             "llama")
    assert (compiled.kernels, compiled.compile) == ("torch", "blocks")
    asked = speed.resolve(config_for("instruct", model="m", data=["d"], output="o", kernels="liger"), cuda, "llama")
    assert (asked.kernels, asked.compile) == ("liger", "none")
    with pytest.raises(LlamantinoError, match="^compile blocks with kernels liger"):  # the last guard, at apply
        speed.apply(torch.nn.Module(), speed.Speed(kernels="liger", compile="blocks"))


def test_triton_paths_need_a_c_compiler(monkeypatch):
    """Triton builds a C launcher for every kernel: without a compiler `auto` compiles nothing and
    takes no Liger; an explicit Liger is refused in one line."""
    gpu_machine(monkeypatch, cc=None)
    cuda = torch.device("cuda", 0)
    paths = speed.resolve(config_for("instruct", model="m", data=["d"], output="o"), cuda, "llama")
    assert paths == speed.Speed("full", "none", "torch", "chunked")
    assert "no C compiler" in paths.why["compile"] and "no C compiler" in paths.why["kernels"]
    with pytest.raises(LlamantinoError, match="setting 'kernels' is liger: Liger's Triton kernels need a C compiler"):
        speed.resolve(config_for("adapt", model="m", data=["d"], output="o", kernels="liger"), cuda, "llama")
    monkeypatch.undo()  # the real probe
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert speed.c_compiler() is None
    monkeypatch.setenv("CC", "sh")
    assert speed.c_compiler().endswith("/sh")


def test_an_optional_kernel_that_does_not_import_is_declined_not_fatal(monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("liger_kernel"):
            raise ImportError("undefined symbol: _ZN3c104cuda9SetDeviceEa")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert speed.liger_supports("llama") is False
    assert "liger-kernel is installed but does not import (ImportError: undefined symbol" in caplog.text


# ---------------------------------------------------------------------------------------
# Through the real commands: the pinned losses with other paths


def adapt_cmd(model_dir, tmp_path, *extra):
    from helpers.adapt import adapt_args, corpus

    return adapt_args(model_dir, corpus(tmp_path), tmp_path / "run", *extra)


def test_adapt_with_selective_checkpointing_gives_the_pinned_losses(tmp_path, tiny_model_dir):
    from llamantino.cli import main

    assert main(adapt_cmd(tiny_model_dir, tmp_path, "--activation-checkpointing", "selective")) == 0
    assert "liger_kernel" not in sys.modules  # the plain paths never import the GPU-only package
    assert logged(tmp_path / "run", "loss") == pytest.approx(ADAPT_LOSSES, rel=1e-5)
    metrics = json.loads((tmp_path / "run" / "manifest.json").read_text())["metrics"]
    assert {k: metrics[k] for k in ("attention", "checkpointing", "compile", "kernels", "fused_loss")} == {
        "attention": "sdpa", "checkpointing": "selective", "compile": "none", "kernels": "torch",
        "fused_loss": "chunked"}


def test_instruct_without_checkpointing_with_fused_adamw_gives_the_pinned_losses(tmp_path, tiny_model_dir,
                                                                                monkeypatch):
    from helpers.instruct import settings, write_dolly

    from llamantino.train import instruct

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    result = instruct.run(settings(tiny_model_dir, data, tmp_path / "run", activation_checkpointing="none",
                                   fused_optimizer="on"))
    assert logged(tmp_path / "run", "loss") == pytest.approx(INSTRUCT_LOSSES, rel=1e-4)
    metrics = result["metrics"]
    assert (metrics["checkpointing"], metrics["fused_loss"], metrics["fused_optimizer"]) == ("none", "chunked", True)


@pytest.mark.distributed
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_fsdp_without_resharding_and_with_selective_checkpointing_gives_the_pinned_losses(tmp_path, tiny_model_dir):
    """2 ranks (gloo), decoder blocks and root kept gathered after the forward pass, selective
    checkpointing: the losses of the plain single-process run."""
    import os

    from helpers.instruct import write_dolly

    data, out = write_dolly(tmp_path / "dolly.jsonl", 16), tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--data", str(data), "--output", str(out), "--max-length", "256",
            "--batch-size", "2", "--effective-batch-size", "4", "--max-steps", "4", "--learning-rate", "1e-3",
            "--save-steps", "0", "--logging-steps", "1", "--reshard-after-forward", "never",
            "--activation-checkpointing", "selective"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "llamantino", "instruct", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["fsdp"] and metrics["checkpointing"] == "selective" and metrics["fused_loss"] == "own"
    assert logged(out, "loss") == pytest.approx(INSTRUCT_LOSSES, rel=1e-5)


def test_the_chunked_loss_of_full_fine_tuning_is_the_models_own(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from llamantino.data.supervised import Example
    from llamantino.train.instruct import collate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    torch.manual_seed(0)
    examples = [Example(ids, [IGNORE] * 6 + ids[6:]) for ids in
                (torch.randint(3, 500, (n,)).tolist() for n in (20, 13, 17))]
    batch = collate(examples, 0, "cpu")  # right-padded, with an attention mask

    def run(chunk):
        from llamantino.train.instruct import summed_loss

        model.zero_grad(set_to_none=True)
        loss = summed_loss(model, batch, chunk=chunk)
        loss.backward()
        return float(loss), {k: p.grad.clone() for k, p in model.named_parameters()}

    assert_same(run(0), run(5), loss_tol=1e-6, grad_tol=1e-5, name="instruct chunked loss")


def instruct_examples():
    from llamantino.data.supervised import Example

    torch.manual_seed(0)
    return [Example(ids, [IGNORE] * 6 + ids[6:]) for ids in (torch.randint(3, 500, (n,)).tolist() for n in (20, 13, 17))]


def test_the_gpu_tolerances_reject_the_negative_controls_on_cpu(tiny_model_dir):
    """The GPU tests compare bfloat16 runs at loose tolerances (BF16). Their negative controls run
    here too, in float32 with SDPA: the comparison at those tolerances passes for the model against
    itself and rejects documents not kept apart and labels shifted by one, through the chunked loss
    and through the model's own."""
    model = qlora_model(tiny_model_dir, dropout=0.0)
    batch = packed_batch()
    for chunk in (7, 0):
        reference = loss_and_grads(model, batch, chunk=chunk)
        assert_same(reference, loss_and_grads(model, batch, chunk=chunk), **BF16, name=f"sdpa again, chunk {chunk}")
        assert_controls_rejected(reference, model, batch, BF16, f"sdpa (CPU), chunk {chunk}", chunk=chunk)


def instruct_controls(flat: dict) -> dict:
    """A flattened micro-batch spoilt two ways: one boundary for all its examples, or labels shifted by one."""
    whole = dict(flat)
    end = int(flat["cu_seq_lens_q"][-1])
    whole["cu_seq_lens_q"] = whole["cu_seq_lens_k"] = flat["cu_seq_lens_q"].new_tensor([0, end])
    whole["position_ids"] = torch.arange(end, device=flat["input_ids"].device).unsqueeze(0)
    shifted = dict(flat)
    shifted["labels"] = flat["labels"].roll(-1, dims=1)
    return {"examples not separated": whole, "labels shifted": shifted}


def test_instruct_micro_batches_flattened_padding_free_give_the_padded_loss(tiny_model_dir):
    """FlashAttention's way (examples back to back, positions restarting, boundaries computed once on
    the host) run with SDPA, whose block-diagonal mask from the positions keeps them apart: the loss
    and gradients of the right-padded batch with its attention mask."""
    from transformers import AutoModelForCausalLM

    from llamantino.train.instruct import collate, summed_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.train()
    examples = instruct_examples()
    padded, flat = collate(examples, 0, "cpu"), collate(examples, 0, "cpu", flat_length=64)
    assert flat["input_ids"].shape == (1, 50) and "attention_mask" not in flat
    assert flat["cu_seq_lens_q"].tolist() == [0, 20, 33, 50] and flat["max_length_q"] == 64
    assert flat["labels"][0, [0, 20, 33]].tolist() == [IGNORE] * 3  # no example predicts the next one's start

    def run(batch, chunk):
        model.zero_grad(set_to_none=True)
        loss = summed_loss(model, batch, chunk=chunk)
        loss.backward()
        return float(loss), {k: p.grad.clone() for k, p in model.named_parameters()}

    for chunk in (0, 5):
        reference = run(padded, chunk)
        assert_same(reference, run(flat, chunk), loss_tol=1e-6, grad_tol=1e-5,
                    name=f"instruct padding-free, chunk {chunk}")
        # The negative controls of the GPU test, rejected at its bfloat16 tolerances.
        for control, bad in instruct_controls(flat).items():
            with pytest.raises(AssertionError, match=r"^[(\d]"):
                assert_same(reference, run(bad, chunk), **BF16, name=f"instruct padding-free, {control}")


def test_instruct_padding_free_gives_the_pinned_losses(tmp_path, tiny_model_dir, monkeypatch):
    """The whole run with its micro-batches flattened (as with FlashAttention), through SDPA."""
    from helpers.instruct import settings, write_dolly

    from llamantino.train import instruct

    widths = []
    collate = instruct.collate

    def recording(batch, pad_id, device, *, flat_length=0):
        widths.append(flat_length)
        return collate(batch, pad_id, device, flat_length=flat_length)

    monkeypatch.setattr(instruct, "padding_free", lambda model: True)
    monkeypatch.setattr(instruct, "collate", recording)
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    instruct.run(settings(tiny_model_dir, data, tmp_path / "run"))
    assert widths and set(widths) == {256}  # every micro-batch flattened, bounded by max_length
    assert logged(tmp_path / "run", "loss") == pytest.approx(INSTRUCT_LOSSES, rel=1e-5)


def test_instruct_refuses_a_model_too_big_for_one_gpu_before_loading_it(tmp_path, tiny_model_dir, monkeypatch):
    """16 bytes per parameter (float32 weights, gradients, AdamW's two moments), counted on the meta
    device, against the GPU's free memory (here a stand-in for it: CPU memory is not checked)."""
    from transformers import AutoModelForCausalLM
    from helpers.instruct import settings, write_dolly

    from llamantino.models import modeling
    from llamantino.train import instruct

    assert instruct.free_memory(torch.device("cpu")) is None
    config = modeling.load_config(str(tiny_model_dir))
    trained = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    assert instruct.parameter_counts(config) == (trained, 0)
    loaded = []
    monkeypatch.setattr(modeling, "load_causal_lm", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(instruct, "free_memory", lambda device: 16 * trained - 1)  # one byte short
    data = write_dolly(tmp_path / "dolly.jsonl", 16)
    out = tmp_path / "run"
    with pytest.raises(LlamantinoError, match=rf"{trained / 1e9:.2f}B parameters to train need about .* GiB for "
                                              r"float32 weights, gradients and AdamW state \(16 bytes each\) and "
                                              r"this GPU has .* GiB free; shard them with FSDP over at least 2 GPUs "
                                              r"\(torchrun --nproc_per_node 2"):
        instruct.run(settings(tiny_model_dir, data, out))
    assert not loaded and not out.exists()  # refused before loading, the folder never claimed
    monkeypatch.setattr(instruct, "free_memory", lambda device: 16 * trained)  # just fits
    assert instruct.check_memory(settings(tiny_model_dir, data, out), config, torch.device("cpu"), 1) is None
    monkeypatch.setattr(instruct, "free_memory", lambda device: 1)
    assert instruct.check_memory(settings(tiny_model_dir, data, out), config, torch.device("cpu"), 2) is None  # FSDP


def test_fused_adamw_takes_adamws_steps():
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    copies = [torch.nn.Parameter(w.detach().clone()) for w in weights]
    plain, _ = common.make_optimizer(weights, "adamw_torch", 1e-2, 0.01, torch.device("cpu"))
    fused, _ = common.make_optimizer(copies, "adamw_torch", 1e-2, 0.01, torch.device("cpu"))
    fused = common.fuse_adamw(fused)
    assert fused.param_groups[0]["fused"] and fused.param_groups[0]["lr"] == 1e-2
    for step in range(3):
        for ws in (weights, copies):
            for w in ws:
                w.grad = torch.full_like(w, 0.1 * (step + 1)) + w.detach()
        plain.step()
        fused.step()
    for a, b in zip(weights, copies):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    sgd = torch.optim.SGD(weights, lr=0.1)
    assert common.fuse_adamw(sgd) is sgd


# ---------------------------------------------------------------------------------------
# The GPU benchmark's CPU mode: every code path of the script, tiny


def test_the_gpu_benchmarks_arguments_parse():
    """The GPU run's own argument lists (sizes, variant names) are valid for the scripts they go to,
    and part 1 times 20 steps after its warm-up."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_adapt
    import bench_gpu
    import bench_instruct
    import bench_moe
    import bench_prefer

    adapt = bench_adapt.parse_args([*bench_gpu.SIZES["gpu"]["adapt"], "--variants", *bench_gpu.PART1])
    assert (adapt.hidden_size, adapt.layers, adapt.seq_length, adapt.compute_dtype) == (4096, 32, 1024, "bfloat16")
    assert adapt.steps - adapt.warmup_steps >= 20 and bench_gpu.PART1[0] == "defaults"
    instruct = bench_instruct.parse_args([*bench_gpu.SIZES["gpu"]["instruct"], "--variants", *bench_gpu.PART2])
    assert (instruct.hidden_size, instruct.layers, instruct.device) == (2048, 24, "cuda")
    config = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "vocab_size": 32000}
    # 7B: 6.5G frozen weights in the blocks and the output layer, 160M LoRA weights at r=64
    assert bench_adapt.flops_per_token(config, 64, 1024) == pytest.approx(
        4 * 6.607e9 + 6 * 159.9e6 + 12 * 32 * 4096 * 1024, rel=2e-3)
    prefer = bench_prefer.parse_args([*bench_gpu.SIZES["gpu"]["prefer"], "--variants", *bench_gpu.PART4_PREFER])
    assert (prefer.device, prefer.pairs, prefer.prompt_length + prefer.answer_length) == ("cuda", 4, 1024)
    moe = bench_gpu.SIZES["gpu"]["moe"]  # replaces bench_moe's shape: the same keys, nothing new
    assert set(moe["shape"]) <= set(bench_moe.SHAPE) and set(moe["experts"]) <= set(bench_moe.MOE)
    assert set(bench_gpu.PART4_MOE) <= set(bench_moe.VARIANTS)
    rows = bench_gpu.packed_positions(8, 1024, 500)
    assert len(rows) == 8 and all(len(r) == 1024 for r in rows)
    assert sum(r.count(0) for r in rows) > 8  # documents packed back to back, positions restarting


@pytest.mark.slow
def test_the_gpu_benchmark_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "table.txt"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--cpu-check",
                           "--workdir", str(tmp_path / "work"), "--output", str(out),
                           "--adapt", "defaults", "liger", "trl-tuned", "unsloth", "trl-packing",
                           "--instruct", "defaults"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    text = out.read_text()
    for line in ("== part 1", "defaults (headline)", "trl-packing", "vs trl-packing", "sdpa (dense block-diagonal "
                 "mask)", "== part 2", "instruct step", "== part 3", "smoke test:", "CTranslate2", "dequantisation",
                 "== part 4", "vs trl-dpo", "prefer-cached", "moe-4bit-experts", "vs moe-full-experts"):
        assert line in text, (line, text)
    assert "FAILED" not in text, text
    assert "liger: skipped (liger-kernel not installed, or no GPU)" in text  # the guarded paths say why
    assert "trl-tuned: skipped (liger-kernel not installed, or no GPU)" in text
    assert text.index("defaults (headline)") < text.index("trl-packing  ")  # the headline row first
    raw = json.loads(out.with_suffix(".json").read_text())
    assert set(raw) >= {"adapt", "attention", "instruct", "doctor", "prefer", "moe"} and raw["doctor"]["exit"] == 0
    assert all("tokens_per_s" in r for r in [*raw["prefer"].values(), *raw["moe"].values()]), raw


# ---------------------------------------------------------------------------------------
# GPU: the kernels that exist on CUDA only


@pytest.fixture
def cuda_model(tiny_model_dir):
    def make(attention, *, in_4bit=True, dropout=0.0):
        return qlora_model(tiny_model_dir, dropout=dropout, device="cuda", compute="bfloat16", attention=attention,
                           in_4bit=in_4bit)
    return make


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_gpu_attention_paths_give_the_loss_and_gradients_of_sdpa(cuda_model, attention):
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    if attention == "flash_attention_2" and not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    if attention == "flash_attention_3" and not is_flash_attn_3_available():
        pytest.skip("flash-attn 3 is not installed")
    batch = packed_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = loss_and_grads(cuda_model("sdpa"), batch)
        model = cuda_model(attention)
        assert_same(reference, loss_and_grads(model, batch), **BF16, name=attention)
        assert_controls_rejected(reference, model, batch, BF16, attention)


@pytest.mark.gpu
@needs_cuda
def test_gpu_compiled_4bit_blocks_and_selective_checkpointing(cuda_model):
    torch._dynamo.reset()
    model = cuda_model("sdpa")
    batch = packed_batch(device="cuda")
    causal_lm = model.get_base_model()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        speed.set_checkpointing(causal_lm, "none")
        reference = loss_and_grads(model, batch)
        speed.set_checkpointing(causal_lm, "selective", lora_rank=4)
        assert_same(reference, loss_and_grads(model, batch), **BF16, name="selective (GPU)")
        speed.set_checkpointing(causal_lm, "offload")
        assert_same(reference, loss_and_grads(model, batch), **BF16, name="offload (GPU)")
        speed.compile_blocks(causal_lm)
        for mode in ("full", "none"):
            speed.set_checkpointing(causal_lm, mode)
            assert_same(reference, loss_and_grads(model, batch), **BF16, name=f"compiled, {mode} (GPU)")
        assert_controls_rejected(reference, model, batch, BF16, "compiled (GPU)")


@pytest.mark.gpu
@needs_cuda
def test_gpu_liger_kernels_and_fused_loss(cuda_model):
    pytest.importorskip("liger_kernel")
    batch = packed_batch(device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = loss_and_grads(cuda_model("sdpa"), batch)
        model = cuda_model("sdpa")
        assert_same(reference, loss_and_grads(model, batch, fused="liger"), **BF16, name="liger fused loss")
        speed.apply_liger_kernels(model.get_base_model())
        assert_same(reference, loss_and_grads(model, batch, fused="liger"), **BF16, name="liger kernels + loss")
        assert_controls_rejected(reference, model, batch, BF16, "liger kernels + loss", fused="liger")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("attention", ["flash_attention_2", "flash_attention_3"])
def test_gpu_the_flash_attention_probe_passes_where_the_kernel_works(attention):
    """Where flash-attn is installed and built for this torch, the probe `auto` relies on passes;
    what it reports otherwise is the reason the log gives."""
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    from llamantino.models import modeling

    installed = is_flash_attn_2_available() if attention == "flash_attention_2" else is_flash_attn_3_available()
    if not installed:
        pytest.skip(f"{attention} is not installed")
    works, problem = modeling.probe_flash_attention(attention, "cuda:0", "bfloat16")
    print(f"\n{attention} probe: {works} {problem}")
    assert works, problem


@pytest.mark.gpu
@needs_cuda
def test_gpu_instruct_padding_free_with_flash_attention_gives_the_padded_loss(tiny_model_dir):
    """FlashAttention 2 on flattened micro-batches (boundaries from the host, the row length as the
    bound) against SDPA on the padded batch with its mask: loss and gradients, bf16 tolerances."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import is_flash_attn_2_available

    from llamantino.train.instruct import collate, summed_loss

    if not is_flash_attn_2_available():
        pytest.skip("flash-attn is not installed")
    examples = instruct_examples()
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

    def run(attention, batch):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                     attn_implementation=attention).to("cuda")
        model.train()
        loss = summed_loss(model, batch, autocast, chunk=5)
        loss.backward()
        return float(loss), {k: p.grad.float().clone() for k, p in model.named_parameters()}

    reference = run("sdpa", collate(examples, 0, "cuda"))
    assert_same(reference, run("flash_attention_2", collate(examples, 0, "cuda", flat_length=64)), **BF16,
                name="instruct padding-free, flash_attention_2 vs padded sdpa")
    for control, bad in instruct_controls(collate(examples, 0, "cuda", flat_length=64)).items():
        with pytest.raises(AssertionError, match=r"^[(\d]"):
            assert_same(reference, run("flash_attention_2", bad), **BF16, name=f"instruct padding-free, {control}")
