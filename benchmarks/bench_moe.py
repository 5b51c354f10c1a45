"""QLoRA on a mixture of experts: memory and speed of one training step with the experts in 4-bit
(models/moe4bit.py) against the same model with its experts left in the compute dtype (what
bitsandbytes alone does: it quantizes nn.Linear layers only), and against the dense model of the
same total parameter count in 4-bit.

Models (random weights, built on the fly from transformers' Qwen3 config classes into a temporary
folder, each variant loaded and trained in a process of its own):
  moe      Qwen3-MoE: hidden 512, 8 layers, 32 experts of intermediate 256, 4 routed per token
           (114M weights, 460 MB in float32; the experts 88% of them)
  dense    Qwen3 with the same hidden size, layers and attention, its MLP as large as all the
           experts together (intermediate 8192): the same total count
Variants:
  moe-4bit-experts     moe, load_in_4bit, experts in NF4 (double quantization), LoRA on attention
                       and on every expert (PEFT target_parameters, per-expert rank)
  moe-full-experts     the same with the experts left in the compute dtype (`experts_4bit` off)
  dense-4bit           dense, load_in_4bit, LoRA on every linear layer of the decoder blocks
LoRA r 16, alpha 32, no dropout, full activation checkpointing, chunked loss, AdamW; a batch of 4
rows of --seq-length tokens; one warm-up step, then --steps measured ones.

Reported: peak memory of the training steps (GPU: torch.cuda.max_memory_allocated, reset after
loading; CPU: the peak resident set size, reset after loading through /proc/self/clear_refs,
less the process's resident size before loading, the libraries' share),
the peak while loading, the bytes the model holds (weights, scales, adapters), and tokens/s.

    python benchmarks/bench_moe.py                 # CPU: float32; GPU: bfloat16
    python benchmarks/bench_moe.py --seq-length 128 --steps 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             vocab_size=8192, max_position_embeddings=4096, tie_word_embeddings=False)
MOE = dict(num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256, intermediate_size=256,
           norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])
DENSE = dict(intermediate_size=32 * 256)
VARIANTS = {"moe-4bit-experts": ("moe", True), "moe-full-experts": ("moe", False), "dense-4bit": ("dense", True)}


def build(kind: str, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_moe" if kind == "moe" else "qwen3", **SHAPE, **(MOE if kind == "moe" else DENSE))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder / kind)
    return folder / kind


def resident(field: str = "VmHWM") -> int:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_resident_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def held_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def worker(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from llamantino.models import moe4bit
    from llamantino.models.modeling import load_causal_lm
    from llamantino.train.common import parameter_record
    from llamantino.train.qlora import CausalLMLoss, adapter_targets, prepare_for_training

    kind, experts_4bit = VARIANTS[args.worker]
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    dtype = "bfloat16" if gpu else "float32"
    if args.threads:
        torch.set_num_threads(args.threads)
    before = 0 if gpu else resident("VmRSS")  # the libraries' share, left out of the CPU figures
    t0 = time.time()
    model = load_causal_lm(str(Path(args.folder) / kind), load_in_4bit=True, compute_dtype=dtype, device=device,
                           attn_implementation="sdpa", experts_4bit=experts_4bit)
    prepare_for_training(model, True, dtype)
    targets, parameters, _ = adapter_targets(model, [], False, kind)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                      target_parameters=parameters or None, task_type="CAUSAL_LM")
    model = get_peft_model(model, moe4bit.lora_config(lora, model) if parameters else lora)
    load_seconds = time.time() - t0
    load_peak = torch.cuda.max_memory_allocated() if gpu else resident() - before
    record = parameter_record(model)
    held = held_bytes(model)
    loss_fn = CausalLMLoss(model, 1024)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    rows = 4
    ids = torch.randint(10, SHAPE["vocab_size"], (rows, args.seq_length), generator=generator).to(device)
    positions = torch.arange(args.seq_length).repeat(rows, 1).to(device)

    def step():
        loss = loss_fn(ids, positions, ids, ids.numel() - rows)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    model.train()
    step()  # warm-up: optimizer state allocated, kernels chosen
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_resident_peak()
    t0 = time.time()
    for _ in range(args.steps):
        loss = step()
    if gpu:
        torch.cuda.synchronize()
    seconds = time.time() - t0
    peak = torch.cuda.max_memory_allocated() if gpu else resident() - before
    return {"variant": args.worker, "device": torch.cuda.get_device_name() if gpu else "cpu", "dtype": dtype,
            "step_peak_bytes": peak, "load_peak_bytes": load_peak, "held_bytes": held,
            "tokens_per_s": round(rows * args.seq_length * args.steps / seconds, 1), "load_seconds": round(load_seconds, 1),
            "loss": round(loss, 4), **record}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("WORKER " + json.dumps(worker(args)))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-moe-") as tmp:
        for kind in sorted({VARIANTS[v][0] for v in args.variants}):
            subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
                            f"from bench_moe import build; from pathlib import Path; build({kind!r}, Path({tmp!r}))"],
                           check=True)
        for variant in args.variants:
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--folder", tmp, "--seq-length",
                                   str(args.seq_length), "--steps", str(args.steps), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("WORKER ")]
            if proc.returncode or not lines:
                print(f"{variant}: failed ({proc.returncode})\n{proc.stderr[-2000:]}")
                continue
            results.append(json.loads(lines[-1][len("WORKER "):]))
    mib = 2 ** 20
    print(f"\n{'variant':<18} {'step peak MiB':>13} {'load peak MiB':>13} {'model MiB':>10} {'tokens/s':>9} "
          f"{'4-bit weights':>14} {'full-precision':>15} {'trainable':>10}")
    for r in results:
        print(f"{r['variant']:<18} {r['step_peak_bytes'] / mib:>13.0f} {r['load_peak_bytes'] / mib:>13.0f} "
              f"{r['held_bytes'] / mib:>10.0f} {r['tokens_per_s']:>9.1f} {r['base_4bit']:>14,} "
              f"{r['base_full_precision']:>15,} {r['trainable']:>10,}")
    by = {r["variant"]: r for r in results}
    if results:
        print(f"device {results[0]['device']}, compute {results[0]['dtype']}, {args.seq_length} tokens x 4 rows")
    four, full, dense = (by.get(v) for v in VARIANTS)
    if four and full:
        print("RESULT " + json.dumps({"benchmark": "moe", "figure": "QLoRA step peak memory (MiB)",
                                      "ours": round(four["step_peak_bytes"] / mib), "baseline":
                                      round(full["step_peak_bytes"] / mib), "baseline_name": "experts unquantized"}))
        print("RESULT " + json.dumps({"benchmark": "moe", "figure": "QLoRA tokens/s", "ours": four["tokens_per_s"],
                                      "baseline": full["tokens_per_s"], "baseline_name": "experts unquantized"}))
    if four and dense:
        print("RESULT " + json.dumps({"benchmark": "moe", "figure": "QLoRA step peak memory (MiB) vs dense 4-bit",
                                      "ours": round(four["step_peak_bytes"] / mib),
                                      "baseline": round(dense["step_peak_bytes"] / mib),
                                      "baseline_name": "dense model of the same size in 4-bit",
                                      "ratio": round(four["step_peak_bytes"] / dense["step_peak_bytes"], 2)}))
    return 0 if len(results) == len(args.variants) else 1


if __name__ == "__main__":
    sys.exit(main())
