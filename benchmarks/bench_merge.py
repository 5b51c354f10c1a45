"""Is a merge the same bits on another machine? `llamantino merge` against PEFT's
`merge_and_unload` (what `merge` did before), under five CPU kernel sets, in float32,
float16 and bfloat16; and what the fixed-order float64 arithmetic costs.

    python benchmarks/bench_merge.py              # demo-shaped model, 5 kernel sets, ~2 minutes on 2 cores
    python benchmarks/bench_merge.py --no-speed   # the bit comparison only

A model shaped like the demo's base (LLaMA, hidden 256, MLP 688, 4 layers: 39 tensors) and
an adapter like the demo's (LoRA r=16 on every linear layer, embeddings trained whole) are
made with numpy (torch's random numbers depend on the kernel set) and saved once. Each
kernel set runs in its own process, which merges with both methods in the three dtypes:

    default      this CPU's own kernels
    sse4_2       MKL_ENABLE_INSTRUCTIONS=SSE4_2 (what an older CPU runs)
    avx2         MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
    no_simd      MKL_ENABLE_INSTRUCTIONS=SSE4_2 ATEN_CPU_CAPABILITY=default (torch's scalar kernels)
    one_thread   OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

and every tensor's bits are compared with the default kernel set's merge by the same method.
The speed part times one 7B-shaped MLP weight (11008 x 4096, LoRA r=64): `B @ A` added in
the weight's dtype (PEFT) against `merged_weight` (fixed-order float64 rank-one sums).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

# The kernel sets are the merge test's own (tests/helpers/kernel_sets.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.kernel_sets import DTYPES, KERNEL_SETS, KERNEL_VARIABLES  # noqa: E402

TEXT = ["Il gatto dorme sul divano mentre la pioggia cade sulla città. Domani andremo al mare.",
        "The quick brown fox jumps over the lazy dog. Language models predict the next token."] * 20

MERGE_BOTH = textwrap.dedent("""
    import json, sys, time
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from llamantino.models.merge import merge_adapter

    base, adapter, out = sys.argv[1:4]
    seconds = {}
    for dtype in ("float32", "float16", "bfloat16"):
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(f"{out}/peft/{dtype}")
        seconds[f"peft {dtype}"] = time.time() - t0
        t0 = time.time()
        merge_adapter(base, adapter, f"{out}/llamantino/{dtype}", dtype=dtype)
        seconds[f"llamantino {dtype}"] = time.time() - t0
    print("SECONDS " + json.dumps(seconds))
""")


def make_inputs(root: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamantino.demo.demo_base import build_tokenizer

    tokenizer = build_tokenizer(TEXT, vocab_size=512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    rng = np.random.default_rng(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            param.copy_(torch.from_numpy(rng.standard_normal(tuple(param.shape), dtype=np.float32) * 0.02))
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    peft_model = get_peft_model(model, LoraConfig(
        r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"], modules_to_save=["embed_tokens", "lm_head"]))
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(torch.from_numpy(rng.standard_normal(tuple(param.shape), dtype=np.float32) * 0.05))
    peft_model.save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def tensor_bits(folder: Path) -> dict[str, str]:
    import torch
    from safetensors import safe_open

    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                raw = handle.get_tensor(key).contiguous().view(torch.uint8).numpy().tobytes()
                out[key] = hashlib.sha256(raw).hexdigest()
    return out


def bit_comparison(root: Path) -> tuple[dict, dict]:
    base, adapter = make_inputs(root)
    src = str(Path(__file__).resolve().parents[1] / "src")
    seconds = {}
    for name, variables in KERNEL_SETS.items():  # one at a time: timings stay comparable
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_VARIABLES}
        env.update(variables, PYTHONPATH=src + os.pathsep + env.get("PYTHONPATH", ""))
        result = subprocess.run([sys.executable, "-c", MERGE_BOTH, str(base), str(adapter), str(root / name)],
                                env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{name}: {result.stderr[-3000:]}")
        line = next(x for x in result.stdout.splitlines() if x.startswith("SECONDS "))
        seconds[name] = json.loads(line[len("SECONDS "):])
    differing = {}
    for method in ("peft", "llamantino"):
        for dtype in DTYPES:
            reference = tensor_bits(root / "default" / method / dtype)
            for name in KERNEL_SETS:
                bits = tensor_bits(root / name / method / dtype)
                differing[(method, dtype, name)] = (sum(bits[k] != reference[k] for k in reference), len(reference))
    return differing, seconds


def speed() -> dict:
    import torch

    from llamantino.models.merge import merged_weight

    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((64, 4096), dtype=np.float32) * 0.01)
    b = torch.from_numpy(rng.standard_normal((11008, 64), dtype=np.float32) * 0.01)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.from_numpy(rng.standard_normal((11008, 4096), dtype=np.float32) * 0.02).to(dtype)
        t0 = time.perf_counter()
        peft = weight + ((b @ a) * 2.0).to(dtype)
        t1 = time.perf_counter()
        ours = merged_weight(weight, b, a, 2.0)
        t2 = time.perf_counter()
        name = str(dtype).removeprefix("torch.")
        out[name] = {"peft_s": round(t1 - t0, 3), "llamantino_s": round(t2 - t1, 3),
                     "max_abs_difference": float((peft.float() - ours.float()).abs().max())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-speed", action="store_true", help="skip the timing of one 7B-shaped weight")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        differing, seconds = bit_comparison(Path(tmp))
    width = max(map(len, KERNEL_SETS))
    print("\ntensors whose bits differ from the default kernel set's merge (same method, same dtype)")
    print(f"{'kernel set'.ljust(width)}  " + "  ".join(f"{m} {d}".rjust(20) for m in ("peft", "llamantino")
                                                     for d in DTYPES))
    for name in KERNEL_SETS:
        cells = [f"{differing[(m, d, name)][0]} of {differing[(m, d, name)][1]}".rjust(20)
                 for m in ("peft", "llamantino") for d in DTYPES]
        print(f"{name.ljust(width)}  " + "  ".join(cells))
    print("\nseconds per merge (load, merge, save), default kernel set: "
          + ", ".join(f"{k} {v:.1f}" for k, v in seconds["default"].items()))
    for (method, dtype, name), (count, total) in differing.items():
        print("RESULT " + json.dumps({"bench": "merge_bits", "method": method, "dtype": dtype, "kernel_set": name,
                                      "tensors_differing": count, "tensors": total}))
    if not args.no_speed:
        figures = speed()
        print("\none 11008 x 4096 weight, LoRA r=64: " + "; ".join(
            f"{d}: PEFT {f['peft_s']} s, llamantino {f['llamantino_s']} s "
            f"({f['llamantino_s'] / max(f['peft_s'], 1e-9):.1f}x), largest difference {f['max_abs_difference']:.2e}"
            for d, f in figures.items()))
        print("RESULT " + json.dumps({"bench": "merge_speed", **figures}))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
