"""The merge gives the same bits on every machine: merges run in subprocesses under other
CPU kernel sets (an older CPU's, AVX2, no SIMD at all) and one thread, and every tensor of
every merged model is compared bit for bit, in float32, float16 and bfloat16. The merged
model still behaves as PEFT's merge; its method is recorded, and a weight difference made
against another method's merge is refused."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llamantino.core.errors import LlamantinoError
from llamantino.models.merge import MERGE_METHOD, merge_adapter, merged_weight, round_once

from helpers.kernel_sets import DTYPES, KERNEL_SETS, KERNEL_VARIABLES

MERGE_ALL = """
import sys
from llamantino.models.merge import merge_adapter
base, adapter, out = sys.argv[1:4]
for dtype in ("float32", "float16", "bfloat16"):
    merge_adapter(base, adapter, f"{out}/{dtype}", dtype=dtype)
"""


@pytest.fixture(scope="module")
def numpy_adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter on every linear layer and the output layer of the tiny LLaMA, r=8, with
    factors drawn by numpy (torch's random numbers depend on the kernel set) and saved to disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("numpy-adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                            "down_proj", "lm_head"]))
    rng = np.random.default_rng(22)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.from_numpy(rng.standard_normal(tuple(param.shape), dtype=np.float32) * 0.05))
    model.save_pretrained(folder)
    return folder


def tensor_bits(folder) -> dict[str, str]:
    """sha256 of every tensor's raw bytes in a model folder's safetensors files."""
    out = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                out[key] = hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def merge_under_kernel_sets(base, adapter, root: Path, src: str | None = None) -> dict[str, Path]:
    """Merge in float32, float16 and bfloat16 in one subprocess per kernel set, run side by side
    (`src`: the llamantino sources the subprocesses import, by default these)."""
    src = src or str(Path(__import__("llamantino").__file__).parents[1])
    jobs = {}
    for name, variables in KERNEL_SETS.items():
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
        env.update(variables, PYTHONPATH=src + os.pathsep + env.get("PYTHONPATH", ""))
        jobs[name] = subprocess.Popen([sys.executable, "-c", MERGE_ALL, str(base), str(adapter), str(root / name)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, job in jobs.items():
        output = job.communicate(timeout=600)[0]
        assert job.returncode == 0, f"{name}: {output[-2000:]}"
    return {name: root / name for name in KERNEL_SETS}


def differing_tensors(folders: dict[str, Path]) -> dict[tuple[str, str], list[str]]:
    """(dtype, kernel set) -> the tensors whose bits differ from the default kernel set's merge."""
    differing = {}
    for dtype in DTYPES:
        reference = tensor_bits(folders["default"] / dtype)
        for name, folder in folders.items():
            bits = tensor_bits(folder / dtype)
            assert bits.keys() == reference.keys()
            differing[(dtype, name)] = sorted(k for k in reference if bits[k] != reference[k])
    return differing


@pytest.mark.slow  # five processes, each loading torch, transformers and peft (~45 s on 2 busy cores)
def test_a_merge_is_the_same_bits_under_every_kernel_set(tmp_path, tiny_model_dir, numpy_adapter):
    folders = merge_under_kernel_sets(tiny_model_dir, numpy_adapter, tmp_path)
    assert len(tensor_bits(folders["default"] / "float32")) == 21  # 2 layers x 9, norm, embeddings, output
    differing = differing_tensors(folders)
    assert all(not tensors for tensors in differing.values()), differing
    manifest = json.loads((folders["sse4_2"] / "bfloat16" / "manifest.json").read_text())
    assert manifest["metrics"]["merge_method"] == MERGE_METHOD


def test_the_merge_equals_peft_merge_and_unload(tmp_path, tiny_model_dir, numpy_adapter):
    """Same model as PEFT's merge, to float32 rounding: the arithmetic changed, not the result."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merge_adapter(tiny_model_dir, numpy_adapter, tmp_path / "merged", dtype="float32")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    theirs = PeftModel.from_pretrained(base, numpy_adapter).merge_and_unload().state_dict()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).state_dict()
    assert ours.keys() == theirs.keys()
    worst = max((ours[k] - theirs[k]).abs().max().item() / max(1.0, theirs[k].abs().max().item()) for k in ours)
    assert worst < 1e-6
    changed = sum(not torch.equal(ours[k], base.state_dict()[k]) for k in ours)
    assert changed == 15  # 2 layers x 7 linear layers, and the output layer


def _bfloat16(x: float) -> float:
    """x rounded to bfloat16's 8 significant bits, to nearest with ties to even (normal range)."""
    mantissa, exponent = math.frexp(x)
    return round(mantissa * 2 ** 8) * 2.0 ** (exponent - 8)


def test_16_bit_results_are_rounded_once():
    """Values just above a tie of the 16-bit grid: float64 -> float32 -> 16 bit rounds them to
    the tie and then to even (wrong); rounding to odd through float32 keeps them above it."""
    cases = [1 + 2 ** -11 + 2 ** -40, 1 + 2 ** -8 + 2 ** -40, -(3 + 2 ** -10 + 2 ** -45), 0.1, -7.3e-3, 3e-7]
    rng = np.random.default_rng(5)
    cases += list(rng.standard_normal(2000) * 0.05)
    values = torch.tensor(cases, dtype=torch.float64)
    references = {torch.float16: np.array(cases).astype(np.float16).astype(np.float64),  # numpy: one rounding
                  torch.bfloat16: np.array([_bfloat16(x) for x in cases])}
    for dtype, expected in references.items():
        expected = torch.from_numpy(expected)
        assert torch.equal(round_once(values, dtype).to(torch.float64), expected), dtype
        twice = values.to(torch.float32).to(dtype).to(torch.float64)
        assert not torch.equal(twice, expected)  # the cases above do catch a double rounding
    assert torch.equal(round_once(values, torch.float32), values.to(torch.float32))


def test_merged_weight_is_the_product_summed_in_float64():
    rng = np.random.default_rng(0)
    weight = torch.from_numpy(rng.standard_normal((300, 70), dtype=np.float32))
    left = torch.from_numpy(rng.standard_normal((300, 6), dtype=np.float32))
    right = torch.from_numpy(rng.standard_normal((6, 70), dtype=np.float32))
    exact = weight.double() + 0.25 * (left.double() @ right.double())
    merged = merged_weight(weight, left, right, 0.25)
    assert merged.dtype == torch.float32
    assert (merged.double() - exact).abs().max().item() <= 1e-6 * exact.abs().max().item()
    with pytest.raises(ValueError, match="do not make a 300 x 70 weight"):
        merged_weight(weight, left, right[:, :69], 1.0)


def test_a_dora_adapter_is_refused_in_one_line(tmp_path, tiny_model_dir, numpy_adapter):
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(numpy_adapter, dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(LlamantinoError, match="a DoRA adapter") as caught:
        merge_adapter(tiny_model_dir, dora, tmp_path / "out")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_evaluation_merges_the_same_way(tmp_path, tiny_model_dir, numpy_adapter):
    """`load_with_adapter(merge=True)` (in-memory merge) gives the very tensors `merge` saves."""
    from transformers import AutoModelForCausalLM

    from llamantino.models.modeling import load_with_adapter

    merge_adapter(tiny_model_dir, numpy_adapter, tmp_path / "merged", dtype="float32")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).state_dict()
    in_memory = load_with_adapter(str(tiny_model_dir), str(numpy_adapter), device="cpu", merge=True).state_dict()
    assert saved.keys() == in_memory.keys()
    assert all(torch.equal(saved[k], in_memory[k]) for k in saved)


def merge_inputs():
    """Factors and a weight per dtype, large enough that a merge rounded otherwise shows in every dtype."""
    rng = np.random.default_rng(3)
    left = torch.from_numpy(rng.standard_normal((1000, 16), dtype=np.float32))
    right = torch.from_numpy(rng.standard_normal((16, 700), dtype=np.float32))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        yield left, right, torch.from_numpy(rng.standard_normal((1000, 700), dtype=np.float32)).to(dtype)


def plain_merge(weight, left, right, scaling):
    """The merge as float32 arithmetic does it (a float32 product, added, rounded again): the negative control."""
    return (weight.float() + scaling * (left @ right)).to(weight.dtype)


def same_bits(a, b) -> bool:
    return torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def test_the_bitwise_merge_comparison_rejects_a_float32_merge():
    """The negative control of the GPU test below, on CPU: on its inputs a float32 merge differs in
    bits from ours in every dtype, so the comparison can fail."""
    for left, right, weight in merge_inputs():
        ours = merged_weight(weight, left, right, 2.0)
        assert same_bits(ours, merged_weight(weight, left, right, 2.0))
        assert not same_bits(ours, plain_merge(weight, left, right, 2.0)), weight.dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_merges_the_same_bits_as_the_cpu():
    for left, right, weight in merge_inputs():
        cpu = merged_weight(weight, left, right, 2.0)
        gpu = merged_weight(weight.cuda(), left.cuda(), right.cuda(), 2.0).cpu()
        assert same_bits(cpu, gpu), weight.dtype
        # Negative control: the GPU's float32 merge is not the CPU's exact one.
        assert not same_bits(cpu, plain_merge(weight.cuda(), left.cuda(), right.cuda(), 2.0).cpu()), weight.dtype


EMBEDDING_ADAPTERS = {
    "lora on the tied embeddings": {"target_modules": ["q_proj", "embed_tokens"]},
    "new rows (trainable_token_indices)": {"target_modules": ["q_proj"], "ensure_weight_tying": True,
                                           "trainable_token_indices": {"embed_tokens": [3, 5, 60]}},
    "whole matrices (modules_to_save)": {"target_modules": ["q_proj", "v_proj"], "ensure_weight_tying": True,
                                         "modules_to_save": ["embed_tokens", "lm_head"]},
}


@pytest.mark.parametrize("kind", list(EMBEDDING_ADAPTERS))
def test_tied_and_trained_embeddings_merge_as_peft_does(tmp_path, kind):
    """A model whose output layer is its input embeddings: LoRA on them, new rows trained, or
    both matrices trained whole; the merged model is PEFT's, and stays tied."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    from llamantino.models.merge import fold_lora

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    rng = np.random.default_rng(4)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for _, param in model.named_parameters():
            param.copy_(torch.from_numpy(rng.standard_normal(tuple(param.shape), dtype=np.float32)))
    model.save_pretrained(tmp_path / "base")
    adapter = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, **EMBEDDING_ADAPTERS[kind]))
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if param.requires_grad:
                param.add_(torch.from_numpy(rng.standard_normal(tuple(param.shape), dtype=np.float32) * 0.1))
    adapter.save_pretrained(tmp_path / "adapter")

    def loaded():
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
        return PeftModel.from_pretrained(base, tmp_path / "adapter")

    theirs = loaded().merge_and_unload()
    ours, merged = fold_lora(loaded(), tmp_path / "adapter")
    assert merged == (2 if kind.startswith("lora") else len(EMBEDDING_ADAPTERS[kind]["target_modules"]))
    assert ours.get_input_embeddings().weight is ours.get_output_embeddings().weight  # still tied
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], base["model.embed_tokens.weight"])  # they did change
