"""Every speed path of llamantino on one GPU, against TRL (with packing and with its defaults) and
unsloth, in one table: the GPU measurements of the project in one command.

    python benchmarks/bench_gpu.py                  # the GPU run (about 12 minutes on one H200, estimated)
    python benchmarks/bench_gpu.py --cpu-check      # the same script at tiny sizes on CPU: every code path runs

In order:
  1. the GPU tests of the fast paths (`pytest -m gpu tests/test_speed.py`): FlashAttention 2/3 and
     flex attention on packed documents, compiled 4-bit blocks, selective checkpointing, Liger's
     kernels and fused loss, each against the plain path's loss and gradients;
  2. the cost of bitsandbytes' 4-bit dequantisation for each LoRA-wrapped linear layer of a 7B
     LLaMA, against the bf16 matmul it feeds (8 x 1024 tokens);
  3. adapt: a 7B-shaped LLaMA (random weights, saved once in 4-bit NF4 with double quantisation),
     LoRA r=64 on every linear layer, 8 x 1024 tokens a step, bf16 compute: the variants of
     bench_adapt.py, TRL SFTTrainer with packing (as the paper) and with its defaults, unsloth;
  4. instruct: a 1.36B LLaMA (hidden 2048, 24 layers), 8 x 1024 tokens, bf16 autocast on float32
     weights, one GPU: the variants of bench_instruct.py, with MFU against the GPU's peak;
then prints one table, also written to --output (default gpu-speed.txt) with the raw figures
next to it (gpu-speed.json). A variant that cannot run (a package missing) is listed as skipped.

What to install is the runner's choice; each piece is skipped with a note when absent:
    pip install -e ".[bench,speed]"                 # TRL (the baselines) and liger-kernel
    pip install flash-attn --no-build-isolation     # FlashAttention 2 (on Hopper, FlashAttention 3:
                                                    #   pip install "flash-attn-3" or build hopper/ of flash-attention)
    pip install unsloth unsloth_zoo                 # unsloth; it pins its own torch/transformers versions:
                                                    #   if it would move yours, use a second environment
                                                    #   and run this script there with --adapt unsloth
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "src")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))

import bench_adapt  # noqa: E402
import bench_instruct  # noqa: E402

# `defaults` takes Liger where it is installed; `liger`, `flex`, `selective`, `ckpt-every-2` and the
# others run when asked for (--adapt ... / --instruct ...).
ADAPT_GPU = ["paper", "flash", "compile", "no-checkpointing", "offload", "defaults", "defaults-batch16",
             "trl-packing", "trl-defaults", "unsloth"]
INSTRUCT_GPU = ["plain", "compile", "no-checkpointing", "defaults"]
SIZES = {
    "gpu": {"adapt": ["--device", "cuda", "--hidden-size", "4096", "--layers", "32", "--intermediate-size", "11008",
                      "--heads", "32", "--vocab-size", "32000", "--seq-length", "1024", "--batch-size", "8",
                      "--steps", "10", "--warmup-steps", "3", "--docs", "1500"],
            "instruct": ["--device", "cuda", "--hidden-size", "2048", "--layers", "24", "--intermediate-size", "5632",
                         "--heads", "16", "--vocab-size", "32000", "--seq-length", "1024", "--batch-size", "8",
                         "--steps", "10"],
            "dequant": {"hidden": 4096, "intermediate": 11008, "tokens": 8 * 1024}},
    "cpu": {"adapt": ["--device", "cpu", "--hidden-size", "64", "--layers", "2", "--intermediate-size", "128",
                      "--heads", "4", "--vocab-size", "512", "--seq-length", "64", "--batch-size", "4",
                      "--steps", "3", "--warmup-steps", "1", "--docs", "40"],
            "instruct": ["--device", "cpu", "--hidden-size", "64", "--layers", "2", "--intermediate-size", "128",
                         "--heads", "4", "--vocab-size", "512", "--seq-length", "64", "--batch-size", "2",
                         "--steps", "2"],
            "dequant": {"hidden": 64, "intermediate": 128, "tokens": 256}},
}
GOALS = "goals: adapt >= 2.0x TRL's tokens/s at <= 0.6x its peak memory, >= 1.0x unsloth's; instruct >= 40% MFU"


def gpu_tests(cpu_check: bool) -> str:
    if cpu_check:
        return "GPU tests: not run (no GPU in --cpu-check; they are skipped without CUDA)"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-s",
                           str(ROOT / "tests" / "test_speed.py")], capture_output=True, text=True, cwd=ROOT)
    figures = [line.strip() for line in proc.stdout.splitlines() if " vs " in line and "largest" in line]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return "\n".join([f"GPU tests (pytest -m gpu tests/test_speed.py): {summary}", *failures, *figures])


def dequantisation(sizes: dict, device: str) -> list[str]:
    """Time of bitsandbytes' NF4 dequantisation of each LLaMA projection against the matmul it feeds.
    Per training step a frozen 4-bit layer dequantises once in the forward, once for the input
    gradient, and once more when its block is recomputed (full checkpointing)."""
    import torch
    import bitsandbytes.functional as bnbf

    h, i, n = sizes["hidden"], sizes["intermediate"], sizes["tokens"]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = {"q/k/v/o_proj": (h, h), "gate/up_proj": (i, h), "down_proj": (h, i)}
    per_layer = {"q/k/v/o_proj": 4, "gate/up_proj": 2, "down_proj": 1}

    def timed(fn, repeat=20):
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / repeat * 1e3

    lines = [f"4-bit dequantisation per linear layer ({n} tokens, {dtype}, {device})",
             f"{'layer (out x in)':28s}{'dequantise ms':>14s}{'matmul ms':>11s}{'dequant share':>15s}"]
    total_dq = total_mm = 0.0
    for name, (out, inp) in shapes.items():
        weight = torch.randn(out, inp, device=device, dtype=dtype) * 0.02
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4", compress_statistics=True)
        x = torch.randn(n, inp, device=device, dtype=dtype)
        dq = timed(lambda: bnbf.dequantize_4bit(packed, state))
        w = bnbf.dequantize_4bit(packed, state).to(dtype)
        mm = timed(lambda: x @ w.t())
        total_dq += dq * per_layer[name]
        total_mm += mm * per_layer[name]
        lines.append(f"{f'{name} ({out} x {inp})':28s}{dq:14.3f}{mm:11.3f}{100 * dq / (dq + mm):14.1f}%")
    share = 100 * total_dq / (total_dq + total_mm)
    lines.append(f"{'one decoder block':28s}{total_dq:14.3f}{total_mm:11.3f}{share:14.1f}%"
                 "   (x3 per step with full checkpointing: forward, recompute, input gradient)")
    return lines


def combined_table(adapt: dict, instruct: dict, *, adapt_flops: float, peak: float, instruct_batch: str) -> list[str]:
    """Both stages in one table: variant, paths, tokens/s, peak memory, MFU (`adapt_flops` per
    token against `peak`), ratios to each baseline."""
    baselines = {name: adapt[name] for name in ("trl-packing", "trl-defaults", "unsloth")
                 if "tokens_per_s" in adapt.get(name, {})}
    head = ["stage", "variant", "attention", "ckpt", "compile", "kernels", "loss", "batch", "tokens/s", "peak GiB",
            "MFU", "vs TRL packing", "vs TRL defaults", "vs unsloth", "vs plain"]
    rows, notes = [head], []

    def ratio(r, base):
        return f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x/{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}x"

    for name, r in adapt.items():
        if "tokens_per_s" not in r:
            notes.append(f"adapt {name}: " + (f"skipped ({r['skipped']})" if "skipped" in r
                                              else f"FAILED: {r['failed']}"))
            continue
        mfu = f"{100 * adapt_flops * r['tokens_per_s'] / peak:.1f}%" if peak else "-"
        rows.append(["adapt", name, r["attention"], r["checkpointing"], r["compile"], r["kernels"], r["loss"],
                     r["batch"], f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_mb'] / 1024:.1f}", mfu,
                     *(ratio(r, baselines[b]) if b in baselines else "-"
                       for b in ("trl-packing", "trl-defaults", "unsloth")), "-"])
    plain = instruct.get("plain", {})
    for name, r in instruct.items():
        if "tokens_per_s" not in r:
            notes.append(f"instruct {name}: " + (f"skipped ({r['skipped']})" if "skipped" in r
                                                 else f"FAILED: {r['failed']}"))
            continue
        rows.append(["instruct", name, r["attention"], r["checkpointing"], r["compile"], r["kernels"], r["loss"],
                     instruct_batch, f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_mb'] / 1024:.1f}",
                     f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-", "-", "-", "-",
                     ratio(r, plain) if "tokens_per_s" in plain else "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 8 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines + ["ratios: tokens/s / peak memory, each against the baseline in the same run", *notes]


def goals(adapt: dict, instruct: dict) -> list[str]:
    """Which variants meet the goals (the fastest one of each stage that does)."""
    out = [GOALS]
    ours = {k: v for k, v in adapt.items() if "tokens_per_s" in v and k not in bench_adapt.BASELINES}
    for base in ("trl-packing", "trl-defaults"):
        b = adapt.get(base, {})
        if "tokens_per_s" not in b or not ours:
            continue
        fitting = {k: v for k, v in ours.items() if v["peak_memory_mb"] <= 0.6 * b["peak_memory_mb"]}
        best = max(fitting or ours, key=lambda k: ours[k]["tokens_per_s"])
        r = ours[best]
        met = r["tokens_per_s"] >= 2 * b["tokens_per_s"] and r["peak_memory_mb"] <= 0.6 * b["peak_memory_mb"]
        speed, memory = r["tokens_per_s"] / b["tokens_per_s"], r["peak_memory_mb"] / b["peak_memory_mb"]
        out.append(f"  vs {base}: best {'within 0.6x memory' if fitting else '(none within 0.6x memory)'}: {best}, "
                   f"{speed:.2f}x tokens/s at {memory:.2f}x memory: {'met' if met else 'NOT met'}")
    u = adapt.get("unsloth", {})
    if "tokens_per_s" in u and ours:
        best = max(ours, key=lambda k: ours[k]["tokens_per_s"])
        speedup = ours[best]["tokens_per_s"] / u["tokens_per_s"]
        out.append(f"  vs unsloth: {best} at {speedup:.2f}x: {'met' if speedup >= 1 else 'NOT met'}")
    done = {k: v for k, v in instruct.items() if v.get("mfu")}
    if done:
        best = max(done, key=lambda k: done[k]["mfu"])
        out.append(f"  instruct MFU: best {best}, {100 * done[best]['mfu']:.1f}%: "
                   f"{'met' if done[best]['mfu'] >= 0.40 else 'NOT met'}")
    return out


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-check", action="store_true", help="tiny sizes on CPU: check that every path runs")
    parser.add_argument("--adapt", nargs="*", choices=[*bench_adapt.VARIANTS, *bench_adapt.BASELINES],
                        help=f"adapt variants (default: {' '.join(ADAPT_GPU)}; none: skip the stage)")
    parser.add_argument("--instruct", nargs="*", choices=list(bench_instruct.VARIANTS),
                        help=f"instruct variants (default: {' '.join(INSTRUCT_GPU)}; none: skip the stage)")
    parser.add_argument("--workdir", default=str(ROOT / ".bench" / "gpu"),
                        help="the 7B model and corpus are built here once and reused")
    parser.add_argument("--output", default="gpu-speed.txt", help="the table goes here too (and .json beside it)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests first")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        sys.exit("no CUDA device visible: run on a GPU, or use --cpu-check")
    mode = "cpu" if args.cpu_check else "gpu"
    if mode == "cpu":
        os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: one thread each, no spinning on a busy machine
    started = time.time()
    work = Path(args.workdir) / mode
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sections = [f"llamantino speed on {torch.cuda.get_device_name(0) if mode == 'gpu' else 'CPU (check mode)'}, "
                f"torch {torch.__version__}"]
    if not args.skip_tests:
        sections.append(gpu_tests(args.cpu_check))
        print(sections[-1], flush=True)
    sections.append("\n".join(dequantisation(SIZES[mode]["dequant"], "cuda" if mode == "gpu" else "cpu")))
    print(sections[-1], flush=True)

    peak = 0.0 if mode == "cpu" else bench_instruct.device_peak_flops("cuda")
    adapt_variants = ADAPT_GPU if args.adapt is None else args.adapt
    adapt, adapt_flops = {}, 0.0
    if adapt_variants:
        sizes = SIZES[mode]["adapt"]
        adapt = bench_adapt.main([*sizes, "--workdir", str(work / "adapt"), "--variants", *adapt_variants,
                                  "--peak-flops", str(peak), "--table-file", str(output.with_suffix(".adapt.txt"))])
        config = json.loads((work / "adapt" / "model" / "config.json").read_text())
        adapt_flops = bench_adapt.flops_per_token(config, 64, int(option(sizes, "--seq-length")))
    instruct_variants = INSTRUCT_GPU if args.instruct is None else args.instruct
    instruct = {}
    if instruct_variants:
        sizes = SIZES[mode]["instruct"]
        instruct = bench_instruct.main([*sizes, "--variants", *instruct_variants, "--peak-flops", str(peak)])
    sections.append("\n".join(combined_table(adapt, instruct, adapt_flops=adapt_flops, peak=peak,
                                             instruct_batch=f"{option(SIZES[mode]['instruct'], '--batch-size')}x1")))
    sections.append("\n".join(goals(adapt, instruct)))
    sections.append(f"total time {time.time() - started:.0f} s; command: python benchmarks/bench_gpu.py "
                    f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    text = "\n\n".join(sections)
    print("\n" + text)
    output.write_text(text + "\n")
    output.with_suffix(".json").write_text(json.dumps({"adapt": adapt, "instruct": instruct}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
