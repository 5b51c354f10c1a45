"""Full-parameter instruction tuning: throughput and memory, FSDP2 against one process, and the
speed paths of the training step.

CPU (the default): `llamantino instruct` on a small LLaMA and the bundled Italian Dolly
sample, run by torchrun on 2 ranks (FSDP2, gloo) and as 1 process without sharding, with
the same data, settings and number of cores; prints tokens/s and each rank's peak
resident memory side by side.

    python benchmarks/bench_instruct.py
    python benchmarks/bench_instruct.py --hidden-size 512 --layers 8 --steps 8

Variants (`--device cuda`, or `--variants ...` on CPU): the instruct training step on one device
(`instruct.prepare_model` with the speed paths, `instruct.summed_loss`, AdamW, clipping), a
LLaMA-shaped model of the size you give with random weights (built from a LlamaConfig, nothing
downloaded), bf16 autocast on float32 master weights, each variant in its own process; prints
tokens/s, peak memory and model FLOPs utilisation against the device's peak (dense bf16: 989e12
for an H100/H200 SXM, 312e12 for an A100; --peak-flops to give another):

  plain             sdpa, full activation checkpointing, the model's own loss (all logits), AdamW
                    (foreach), nothing compiled, torch kernels
  flash             plain + attention auto (FlashAttention 3/2 where installed)
  compile           flash + every decoder block compiled
  chunked-loss      compile + the chunked loss (output layer on response positions, 1024 at a time)
  liger             compile + Liger's kernels and fused linear cross-entropy
  fused-adamw       compile + kernels and loss auto + AdamW's fused kernel
  selective         fused-adamw + selective activation checkpointing
  no-checkpointing  fused-adamw without activation checkpointing
  offload           fused-adamw with the checkpointed blocks' inputs in pinned host memory
  defaults          what `llamantino instruct` does by default on this machine

    python benchmarks/bench_instruct.py --device cuda --hidden-size 2048 --layers 24 \\
        --intermediate-size 5632 --heads 16 --batch-size 8 --seq-length 1024
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "llamantino" / "assets" / "demo"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--hidden-size", type=int, help="model width (CPU default 384, GPU default 2048)")
    p.add_argument("--layers", type=int, help="decoder layers (CPU default 6, GPU default 24)")
    p.add_argument("--intermediate-size", type=int, help="MLP width (default: LLaMA's 8/3 x hidden, rounded to 256)")
    p.add_argument("--heads", type=int, help="attention heads (default hidden / 128 on GPU, hidden / 64 on CPU)")
    p.add_argument("--vocab-size", type=int, default=32000, help="GPU only: LLaMA 2's 32000 (CPU: the tokenizer's)")
    p.add_argument("--batch-size", type=int, help="examples per micro-batch (CPU default 2, GPU default 8)")
    p.add_argument("--seq-length", type=int, default=1024, help="GPU only: tokens per example")
    p.add_argument("--steps", type=int, help="timed optimizer steps (CPU default 6, GPU default 10)")
    p.add_argument("--warmup-steps", type=int, default=3, help="variants: steps before the timing (and the memory "
                                                               "peak) starts")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="CPU only: cores for each configuration (split between the 2 ranks)")
    p.add_argument("--peak-flops", type=float, default=0.0,
                   help="peak dense bf16 FLOP/s of the device (default: known for H100/H200/A100/L40S/...)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="CPU FSDP comparison only")
    p.add_argument("--workdir", default=str(ROOT / ".bench" / "instruct"), help="CPU only: model and runs go here")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   help="training-step variants to run (default with --device cuda: all)")
    p.add_argument("--table-file", help="also write the variants table to this file")
    p.add_argument("--deadline", type=float, default=0.0,
                   help="variants: start none after this time, stop one still running then (seconds since the epoch)")
    p.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def llama_sizes(args, hidden, layers, heads_per):
    hidden = args.hidden_size or hidden
    layers = args.layers or layers
    inter = args.intermediate_size or 256 * ((int(hidden * 8 / 3) + 255) // 256)
    heads = args.heads or max(1, hidden // heads_per)
    return hidden, layers, inter, heads


# ---------------------------------------------------------------------------------------
# CPU: the real command, FSDP2 on 2 ranks against 1 process


def bench_cpu(args):
    from llamantino.demo.demo_base import build_model, build_tokenizer, read_paragraphs

    hidden, layers, inter, heads = llama_sizes(args, 384, 6, 64)
    batch, steps = args.batch_size or 2, args.steps or 6
    work = Path(args.workdir)
    model_dir = work / f"model-h{hidden}-l{layers}"
    if not (model_dir / "config.json").is_file():
        texts = read_paragraphs([DEMO / "it_train.txt", DEMO / "en_train.txt"])
        tok = build_tokenizer(texts, 4096)
        model = build_model(tok, hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                            max_position_embeddings=1024, seed=0)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    effective = 4 * batch  # 1 process: accumulation 4; 2 ranks: accumulation 2
    common = ["instruct", "--model", str(model_dir), "--data", str(DEMO / "dolly_it_sample.jsonl"),
              "--max-length", "512", "--batch-size", str(batch), "--effective-batch-size", str(effective),
              "--max-steps", str(steps), "--learning-rate", "1e-4", "--save-steps", "0",
              "--gradient-checkpointing" if not args.no_gradient_checkpointing else "--no-gradient-checkpointing"]
    runs = {
        "1 process": ([sys.executable, "-m", "llamantino"], 1, args.threads),
        "FSDP2, 2 ranks": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "llamantino"], 2, max(1, args.threads // 2)),
    }
    results = {}
    for name, (launcher, ranks, threads) in runs.items():
        out = work / ("single" if ranks == 1 else "fsdp2")
        shutil.rmtree(out, ignore_errors=True)  # a finished run would be skipped, not timed
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "LLAMANTINO_LOG": "WARNING"}
        t0 = time.time()
        proc = subprocess.run(launcher + common + ["--output", str(out)], env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results[name] = {**json.loads((out / "manifest.json").read_text())["metrics"], "wall_s": time.time() - t0,
                         "threads": threads}

    first = next(iter(results.values()))
    print(f"\nllamantino instruct on CPU: LLaMA {first['parameters'] / 1e6:.1f}M parameters (hidden {hidden}, "
          f"{layers} layers), {first['examples']} Dolly-IT examples, {steps} steps of {effective} examples, "
          f"max length 512, float32\n")
    rows = [("", *results)]
    rows.append(("ranks x threads", *(f"{r['world_size']} x {r['threads']}" for r in results.values())))
    rows.append(("gradient accumulation", *(str(r["gradient_accumulation"]) for r in results.values())))
    rows.append(("training tokens/s", *(f"{r['tokens_per_s']:,.0f}" for r in results.values())))
    rows.append(("final loss", *(f"{r['final_loss']:.4f}" for r in results.values())))
    for rank in range(2):
        rows.append((f"rank {rank}: parameters held",
                     *(f"{r['ranks'][rank]['parameters'] / 1e6:.2f}M" if rank < len(r["ranks"]) else "-"
                       for r in results.values())))
        rows.append((f"rank {rank}: weights + AdamW (MiB)",
                     *(f"{r['ranks'][rank]['state_bytes'] / 2**20:,.0f}" if rank < len(r["ranks"]) else "-"
                       for r in results.values())))
        rows.append((f"rank {rank}: peak RSS (MiB)",
                     *(f"{r['ranks'][rank]['peak_memory_bytes'] / 2**20:,.0f}" if rank < len(r["ranks"]) else "-"
                       for r in results.values())))
    rows.append(("wall time with start-up (s)", *(f"{r['wall_s']:.1f}" for r in results.values())))
    width = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, width))))
    print("\nPeak RSS includes the ~0.4 GB every Python process with torch and transformers holds; what FSDP\n"
          "shards is the weights, gradients and AdamW moments (16 bytes per parameter in float32).")
    sharded = [r for r in results.values() if r["world_size"] > 1]
    single = [r for r in results.values() if r["world_size"] == 1]
    if sharded and single:
        for figure, key in (("training tokens/s", "tokens_per_s"),):
            print("RESULT " + json.dumps({"benchmark": "instruct", "figure": figure, "ours": sharded[0][key],
                                          "baseline": single[0][key], "baseline_name": "1 process, no sharding"}))
        print("RESULT " + json.dumps({"benchmark": "instruct", "figure": "weights + AdamW on rank 0 (MiB)",
                                      "ours": sharded[0]["ranks"][0]["state_bytes"] / 2**20,
                                      "baseline": single[0]["ranks"][0]["state_bytes"] / 2**20,
                                      "baseline_name": "1 process, no sharding"}))


# ---------------------------------------------------------------------------------------
# Variants: the instruct training step on one device, random LLaMA-shaped weights

PLAIN = {"attention": "sdpa", "checkpointing": "full", "compile": "none", "kernels": "torch", "loss": "own",
         "fused_adamw": False}
FLASH = {**PLAIN, "attention": "auto"}
COMPILE = {**FLASH, "compile": "blocks"}
FUSED = {**COMPILE, "kernels": "auto", "loss": "auto", "fused_adamw": True}
VARIANTS = {
    "plain": PLAIN,
    "flash": FLASH,
    "compile": COMPILE,
    "chunked-loss": {**COMPILE, "loss": "chunked"},
    "liger": {**COMPILE, "kernels": "liger", "loss": "liger"},
    "fused-adamw": FUSED,
    "selective": {**FUSED, "checkpointing": "selective"},
    "no-checkpointing": {**FUSED, "checkpointing": "none"},
    "offload": {**FUSED, "checkpointing": "offload"},
    "defaults": {"attention": "auto", "checkpointing": "auto", "compile": "auto", "kernels": "auto", "loss": "auto",
                 "fused_adamw": "auto"},
}
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "B200": 2250e12,
              "A100": 312e12, "A800": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


def device_peak_flops(device) -> float:
    """Dense bf16 peak of a known data-centre GPU (0 when unknown: no MFU column)."""
    import torch

    if torch.device(device).type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name and not (key == "H100" and "PCIe" in name):
            return PEAK_FLOPS[key]
    return 756e12 if "H100" in name else 0.0


def child_variant(args) -> dict:
    """One variant's training step, timed (and its memory peak taken) after the warm-up steps."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llamantino.models.loss import liger_loss
    from llamantino.models.modeling import resolve_attention
    from llamantino.train import common, instruct, speed
    from llamantino.train.settings import TrainSettings

    options = VARIANTS[args.child]
    hidden, layers, inter, heads = llama_sizes(args, 2048, 24, 128)
    batch, steps, seq = args.batch_size or 8, args.steps or 10, args.seq_length
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    compute = "bfloat16" if device.type == "cuda" else "float32"
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max(4096, seq), tie_word_embeddings=False)
    attention = resolve_attention(options["attention"], config, str(device), compute)
    torch.manual_seed(0)
    with torch.device(device):  # float32 master weights, as instruct trains
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention)
    n_params = sum(p.numel() for p in model.parameters())
    n_flop_params = n_params - model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    settings = TrainSettings(activation_checkpointing=options["checkpointing"], compile=options["compile"], kernels=options["kernels"],
                             fused_loss="chunked" if options["loss"] in ("own", "chunked") else options["loss"])
    paths = speed.resolve(settings, device, config.model_type, compute)
    chunk = 0 if options["loss"] == "own" else 1024
    fused = liger_loss(model) if chunk and paths.fused_loss == "liger" else None
    model, autocast = instruct.prepare_model(model, world=1, device=device, compute_dtype=compute, paths=paths)
    model.train()
    optimizer, _ = common.make_optimizer(model.parameters(), "adamw_torch", 1e-5, 0.0, device)
    fused_adamw = options["fused_adamw"] if options["fused_adamw"] != "auto" else device.type == "cuda"
    if fused_adamw:
        optimizer = common.fuse_adamw(optimizer)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (batch, seq), device=device, generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step():
        ce = instruct.summed_loss(model, data, autocast, chunk=chunk, fused=fused)
        (ce / (batch * (seq - 1))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return ce

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup_steps):  # warm-up: compilation, kernels chosen, AdamW state allocated
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    tokens_per_s = batch * seq * steps / seconds
    # torchtitan's count: 6 FLOPs per parameter per token (forward + backward) plus attention
    # scores and values, 12 x layers x hidden x sequence; recomputation is not counted.
    flops_per_token = 6 * n_flop_params + 12 * layers * hidden * seq
    peak = args.peak_flops or device_peak_flops(device)
    memory = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
              else common.peak_memory_bytes(device))
    return {"tokens_per_s": tokens_per_s, "step_s": seconds / steps, "mfu": flops_per_token * tokens_per_s / peak
            if peak else None, "peak_memory_mb": memory / 2**20, "parameters": n_params,
            "attention": model.config._attn_implementation, "checkpointing": paths.checkpointing,
            "compile": paths.compile,
            "kernels": paths.kernels, "loss": "own" if not chunk else "liger" if fused else "chunked",
            "fused_adamw": bool(fused_adamw), "final_loss": float(loss) / (batch * (seq - 1)),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "peak_flops": peak}


def bench_variants(args):
    names = args.variants or list(VARIANTS)
    results = {}
    from bench_adapt import unavailable

    for name in names:
        reason = unavailable(name, VARIANTS[name], args.device)
        left = args.deadline - time.time() if args.deadline else None
        if not reason and left is not None and left < 30:
            reason = "not run: the time budget was spent"
        if reason:
            results[name] = {"skipped": reason}
            continue
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--vocab-size",
               str(args.vocab_size), "--seq-length", str(args.seq_length), "--peak-flops", str(args.peak_flops),
               "--warmup-steps", str(args.warmup_steps)]
        for key in ("hidden_size", "layers", "intermediate_size", "heads", "batch_size", "steps"):
            if getattr(args, key):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
        except subprocess.TimeoutExpired:
            results[name] = {"failed": f"stopped after {time.time() - t0:.0f} s: the time budget was spent"}
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            tail = (proc.stdout + proc.stderr).strip().splitlines()
            if any("liger-kernel is not installed" in x or "Triton kernels need a CUDA" in x for x in tail):
                results[name] = {"skipped": "liger-kernel not installed, or no GPU"}
            else:
                print(f"{name} failed:\n" + "\n".join(tail[-40:]), file=sys.stderr, flush=True)
                results[name] = {"failed": next((x for x in reversed(tail) if "Error" in x), tail[-1] if tail
                                                else "")[:160]}
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
        print(f"{name}: {results[name]} ({time.time() - t0:.0f} s)", flush=True)
    lines = variants_table(results, args)
    text = "\n".join(lines)
    print("\n" + text)
    if args.table_file:
        Path(args.table_file).write_text(text + "\n")
    if all("tokens_per_s" in results.get(k, {}) for k in ("plain", "defaults")):
        print("RESULT " + json.dumps({"benchmark": "instruct", "figure": f"training tokens/s ({args.device})",
                                      "ours": results["defaults"]["tokens_per_s"],
                                      "baseline": results["plain"]["tokens_per_s"],
                                      "baseline_name": "plain step (sdpa, full checkpointing, all logits)"}))
    return results


def variants_table(results: dict, args) -> list[str]:
    first = next((r for r in results.values() if "tokens_per_s" in r), None)
    hidden, layers, _, _ = llama_sizes(args, 2048, 24, 128)
    if first is None:
        title = "instruct step: no variant ran"
    else:
        title = (f"instruct step, LLaMA {first['parameters'] / 1e9:.2f}B (hidden {hidden}, {layers} layers), "
                 f"{args.batch_size or 8} x {args.seq_length} tokens, {first['device_name']}")
        if first["peak_flops"]:
            title += f", MFU against {first['peak_flops'] / 1e12:.0f} TFLOP/s"
    head = ["variant", "attention", "ckpt", "compile", "kernels", "loss", "fused AdamW", "tokens/s", "peak MiB", "MFU",
            "x plain"]
    rows, notes = [head], []
    plain = results.get("plain", {}).get("tokens_per_s")
    for name, r in results.items():
        if "tokens_per_s" not in r:
            notes.append(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED: {r['failed']}"))
            continue
        rows.append([name, r["attention"], r["checkpointing"], r["compile"], r["kernels"], r["loss"],
                     "yes" if r["fused_adamw"] else "no", f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_mb']:,.0f}",
                     f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-",
                     f"{r['tokens_per_s'] / plain:.2f}x" if plain else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 7 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return [title, *lines, *notes]


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # runnable from a plain checkout too
    if args.child:
        print("RESULT " + json.dumps(child_variant(args)))
    elif args.device == "cuda" or args.variants:
        return bench_variants(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
