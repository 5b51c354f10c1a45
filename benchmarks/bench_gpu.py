"""The GPU measurements of the project in four parts, each under 7 minutes on one H200 with its
model building, so each fits the time a GPU is lent for:

    python benchmarks/bench_gpu.py --part 1   # the headline: adapt with its defaults against TRL
    python benchmarks/bench_gpu.py --part 2   # instruct: the training step's speed paths and MFU
    python benchmarks/bench_gpu.py --part 3   # the `gpu` tests, llamantino doctor (--smoke), 4-bit costs
    python benchmarks/bench_gpu.py --part 4   # prefer's DPO step against TRL; MoE experts in 4-bit or not
    python benchmarks/bench_gpu.py --cpu-check [--part N]   # every part at tiny sizes on CPU: plumbing only

Part 1: a 7B-shaped LLaMA (random weights, saved once in 4-bit NF4 with double quantisation),
LoRA r=64 on every linear layer, 8 x 1024 tokens a step, bf16 compute, 4 warm-up steps then 20
timed ones, peak memory reset after the warm-up. Rows: `defaults` (the headline: `llamantino
adapt` with every setting at its default, whatever `auto` picks there), TRL SFTTrainer with packing
(the paper's setting), TRL tuned (packing, Liger's kernels, the same full non-reentrant
checkpointing), unsloth where installed. Then the measurement `auto` waits for before it takes flex
attention for packed rows: two decoder layers of the 7B shape on packed rows (document lengths
as in the corpus), forward + backward, SDPA with transformers' dense block-diagonal mask against
flex attention with its document block mask (compiled on its own), and what that makes of a
32-layer step.
Part 2: the instruct training step on one GPU (1.36B LLaMA, 8 x 1024, bf16 autocast on float32
weights): `defaults`, `plain` and the speed paths, with MFU against the GPU's peak.
Part 3: `pytest -m gpu` (FlashAttention 2/3 and flex attention on packed documents, compiled
blocks, selective checkpointing, Liger, each against the plain path), `llamantino doctor` and
`doctor --smoke`, and the cost of 4-bit dequantisation per LoRA-wrapped layer.
Part 4: the new stages' steps, each beside its baseline, tokens/s and peak memory
(max_memory_allocated after the warm-up), each run in a process of its own. One DPO step of
`llamantino prefer` (bench_prefer.py's step: LoRA r=16, checkpointing, 4 pairs of 1024 tokens) on
part 1's 7B 4-bit model (built here when part 1 has not run), with and without the reference
log-probabilities precomputed, against TRL's DPOTrainer on the same model and batch. Then
bench_moe.py's QLoRA step on a Qwen3-MoE of 0.7B weights (64 experts a layer, 8 routed per token,
4 x 1024 tokens): experts in 4-bit against experts left in bf16.

Each part prints its table and writes it to --output (default gpu-speed-partN.txt, with the raw
figures in a .json beside it). A part stops starting runs when --budget-s is spent; what did not
run is listed with the reason, as is every run that could not happen (a package missing).

What to install is the runner's choice; each piece is skipped with a note when absent:
    pip install -e ".[bench,speed]"                 # TRL (the baselines) and liger-kernel
    pip install flash-attn --no-build-isolation     # FlashAttention 2: a source build (tens of minutes;
                                                    #   the package index has no wheel for recent torch)
    pip install unsloth unsloth_zoo                 # unsloth; it pins its own torch/transformers versions:
                                                    #   if it would move yours, use a second environment
                                                    #   and run part 1 there with --adapt unsloth
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
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
import bench_moe  # noqa: E402
import bench_prefer  # noqa: E402

PART1 = ["defaults", "trl-packing", "trl-tuned", "unsloth"]  # the headline row first
PART2 = ["defaults", "plain", "compile", "liger", "no-checkpointing"]
PART4_PREFER = ["prefer", "prefer-cached", "trl-dpo"]  # ours first, TRL the baseline
PART4_MOE = ["moe-4bit-experts", "moe-full-experts"]  # the second the baseline
BUDGET_S = 400  # per part, model building included: under 7 minutes with the report
SIZES = {
    "gpu": {"adapt": ["--device", "cuda", "--hidden-size", "4096", "--layers", "32", "--intermediate-size", "11008",
                      "--heads", "32", "--vocab-size", "32000", "--seq-length", "1024", "--batch-size", "8",
                      "--steps", "24", "--warmup-steps", "4", "--docs", "600"],
            "attention": {"hidden": 4096, "heads": 32, "intermediate": 11008, "layers": 2, "rows": 8, "length": 1024,
                          "median_tokens": 500, "steps": 10},
            "instruct": ["--device", "cuda", "--hidden-size", "2048", "--layers", "24", "--intermediate-size", "5632",
                         "--heads", "16", "--vocab-size", "32000", "--seq-length", "1024", "--batch-size", "8",
                         "--steps", "20", "--warmup-steps", "3"],
            "dequant": {"hidden": 4096, "intermediate": 11008, "tokens": 8 * 1024},
            # 4 pairs: 8 rows of 1024 tokens (prompt 512, answers 512 and 384) on part 1's 7B model
            "prefer": ["--device", "cuda", "--pairs", "4", "--prompt-length", "512", "--answer-length", "512",
                       "--steps", "4", "--warmup-steps", "1"],
            # Qwen3-MoE: 0.70B weights, 86% of them in 64 experts a layer, 8 routed per token
            "moe": {"shape": {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16,
                              "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 32000},
                    "experts": {"num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 256,
                                "intermediate_size": 256},
                    "seq_length": 1024, "steps": 3}},
    "cpu": {"adapt": ["--device", "cpu", "--hidden-size", "64", "--layers", "2", "--intermediate-size", "128",
                      "--heads", "4", "--vocab-size", "512", "--seq-length", "64", "--batch-size", "4",
                      "--steps", "3", "--warmup-steps", "1", "--docs", "40"],
            "attention": {"hidden": 64, "heads": 4, "intermediate": 128, "layers": 2, "rows": 2, "length": 64,
                          "median_tokens": 20, "steps": 2},
            "instruct": ["--device", "cpu", "--hidden-size", "64", "--layers", "2", "--intermediate-size", "128",
                         "--heads", "4", "--vocab-size", "512", "--seq-length", "64", "--batch-size", "2",
                         "--steps", "2", "--warmup-steps", "1"],
            "dequant": {"hidden": 64, "intermediate": 128, "tokens": 256},
            "prefer": ["--device", "cpu", "--pairs", "2", "--prompt-length", "16", "--answer-length", "16",
                       "--steps", "1", "--warmup-steps", "1", "--chunk", "64"],
            "moe": {"shape": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512},
                    "experts": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                                "intermediate_size": 64},
                    "seq_length": 32, "steps": 1}},
}
GOALS = "goals: adapt >= 2.0x TRL's tokens/s at <= 0.6x its peak memory, >= 1.0x unsloth's; instruct >= 40% MFU"


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# ---------------------------------------------------------------------------------------
# Part 1: adapt with its defaults against TRL and unsloth; flex against SDPA on packed rows


def part1(mode: str, args, deadline: float) -> tuple[list[str], dict]:
    sizes = SIZES[mode]["adapt"]
    work = Path(args.workdir) / mode / "adapt"
    peak = 0.0 if mode == "cpu" else bench_instruct.device_peak_flops("cuda")
    variants = PART1 if args.adapt is None else args.adapt
    # unsloth (rarely installable next to our torch) after the flex-vs-sdpa measurement, which matters more
    first, last = [v for v in variants if v != "unsloth"], [v for v in variants if v == "unsloth"]

    def adapt_runs(names):
        return bench_adapt.main([*sizes, "--workdir", str(work), "--variants", *names, "--peak-flops", str(peak),
                                 "--deadline", str(deadline)]) if names else {}

    adapt = adapt_runs(first)
    attention = run_child("packed-attention", mode, deadline) if not args.skip_attention else {}
    adapt.update(adapt_runs(last))
    flops = 0.0
    if (work / "model" / "config.json").is_file():
        config = json.loads((work / "model" / "config.json").read_text())
        flops = bench_adapt.flops_per_token(config, 64, int(option(sizes, "--seq-length")))
    steps = int(option(sizes, "--steps")) - int(option(sizes, "--warmup-steps"))
    lines = [f"adapt, LLaMA hidden {option(sizes, '--hidden-size')} x {option(sizes, '--layers')} layers in 4-bit NF4 "
             f"+ LoRA r=64, {option(sizes, '--batch-size')} x {option(sizes, '--seq-length')} tokens a step, "
             f"{steps} timed steps after {option(sizes, '--warmup-steps')} warm-up steps (peak memory from then)",
             *adapt_table(adapt, flops, peak), "", *attention_lines(attention, adapt)]
    return lines, {"adapt": adapt, "attention": attention}


def adapt_table(adapt: dict, flops: float, peak: float) -> list[str]:
    """The defaults row first (the headline), then the baselines, with ratios to each baseline."""
    baselines = [b for b in ("trl-packing", "trl-tuned", "unsloth") if "tokens_per_s" in adapt.get(b, {})]
    head = ["variant", "attention", "ckpt", "compile", "kernels", "loss", "tokens/s", "peak GiB", "MFU"]
    head += [f"vs {b} (tok/s, mem)" for b in baselines]
    rows, notes = [head], []
    order = ["defaults"] + [k for k in adapt if k != "defaults"]
    for name in order:
        r = adapt.get(name)
        if r is None:
            continue
        if "tokens_per_s" not in r:
            notes.append(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED: {r['failed']}"))
            continue
        mfu = f"{100 * flops * r['tokens_per_s'] / peak:.1f}%" if peak and flops else "-"
        row = [name + (" (headline)" if name == "defaults" else ""), r["attention"], r["checkpointing"], r["compile"],
               r["kernels"], r["loss"], f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_mb'] / 1024:.2f}", mfu]
        for b in baselines:
            base = adapt[b]
            row.append(f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x, "
                       f"{r['peak_memory_mb'] / base['peak_memory_mb']:.2f}x")
        rows.append(row)
    return table(rows, left=6) + notes


def table(rows: list[list[str]], left: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def packed_positions(rows: int, length: int, median: int, seed: int = 0) -> list[list[int]]:
    """Position ids of rows packed as DocumentPacker packs a web corpus: log-normal document
    lengths (in tokens), a document that does not fit continuing at the start of the next row."""
    rng = random.Random(seed)
    out, row, left = [], [], 0
    while len(out) < rows:
        if left == 0:
            left = max(2, min(8 * median, int(rng.lognormvariate(math.log(median), 0.9))))
        take = min(left, length - len(row))
        row += list(range(take))
        left -= take
        if len(row) == length:
            out.append(row)
            row = []
    return out


def child_packed_attention(mode: str) -> dict:
    """Forward + backward of a few decoder layers of the measured shape on packed rows, the weights
    frozen (gradients flow to the input, as with a 4-bit base): SDPA with transformers' dense
    block-diagonal mask against flex attention with its document block mask, timed after warm-up."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    s = SIZES[mode]["attention"]
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    dtype = torch.bfloat16 if mode == "gpu" else torch.float32
    positions = torch.tensor(packed_positions(s["rows"], s["length"], s["median_tokens"]), device=device)
    config = LlamaConfig(vocab_size=32000, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                         num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                         max_position_embeddings=4096)
    out = {"layers": s["layers"], "rows": s["rows"], "length": s["length"],
           "documents_per_row": float((positions == 0).sum()) / s["rows"]}
    for attention in ("sdpa", "flex_attention"):
        if attention == "flex_attention" and device.type == "cpu":
            out["flex_attention"] = {"skipped": "flex attention has no backward pass on CPU (torch 2.13)"}
            continue
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
        model.requires_grad_(False)
        model.train()
        embeds = torch.randn(s["rows"], s["length"], s["hidden"], device=device, dtype=dtype) * 0.02

        def step():
            x = embeds.clone().requires_grad_()
            hidden = model.model(inputs_embeds=x, position_ids=positions, use_cache=False).last_hidden_state
            hidden.float().square().mean().backward()

        for _ in range(3):  # warm-up: flex attention compiles here
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(s["steps"]):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[attention] = {"ms": 1e3 * (time.perf_counter() - t0) / s["steps"],
                          "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0}
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def attention_lines(result: dict, adapt: dict) -> list[str]:
    if not result:
        return ["packed rows, flex vs SDPA: not run"]
    if "failed" in result or "skipped" in result:
        return [f"packed rows, flex vs SDPA: {result.get('failed') or result.get('skipped')}"]
    head = (f"packed rows, {result['layers']} decoder layers of that shape, {result['rows']} x {result['length']} "
            f"tokens ({result['documents_per_row']:.1f} document starts a row), forward + backward, weights frozen:")
    sdpa, flex = result["sdpa"], result["flex_attention"]
    lines = [head, f"  sdpa (dense block-diagonal mask): {sdpa['ms']:.1f} ms, peak {sdpa['peak_memory_mb']:,.0f} MiB"]
    if "ms" not in flex:
        return lines + [f"  flex_attention: skipped ({flex.get('skipped') or flex.get('failed')})"]
    lines.append(f"  flex_attention (document block mask, compiled alone): {flex['ms']:.1f} ms, "
                 f"peak {flex['peak_memory_mb']:,.0f} MiB")
    defaults = adapt.get("defaults", {})
    layers = 32
    saved = (sdpa["ms"] - flex["ms"]) * layers / result["layers"]
    if "tokens_per_s" in defaults:
        step_ms = 1e3 * defaults["real_tokens_per_step"] / defaults["tokens_per_s"]
        lines.append(f"  over {layers} layers flex would save {saved:.0f} ms of the defaults' {step_ms:.0f} ms step "
                     f"({100 * saved / step_ms:+.1f}%; the backward pass under full checkpointing runs the forward "
                     "again, so the real gain is larger by about half)")
    verdict = "take flex_attention for packed rows" if flex["ms"] < 0.95 * sdpa["ms"] else "keep sdpa"
    lines.append(f"  measured choice for `attn_implementation: auto` without FlashAttention: {verdict} "
                 "(auto stays sdpa until this is read and the default changed)")
    return lines


# ---------------------------------------------------------------------------------------
# Part 2: instruct MFU


def part2(mode: str, args, deadline: float) -> tuple[list[str], dict]:
    sizes = SIZES[mode]["instruct"]
    variants = PART2 if args.instruct is None else args.instruct
    peak = 0.0 if mode == "cpu" else bench_instruct.device_peak_flops("cuda")
    instruct = bench_instruct.main([*sizes, "--variants", *variants, "--peak-flops", str(peak),
                                    "--deadline", str(deadline)]) if variants else {}
    lines = bench_instruct.variants_table(instruct, bench_instruct.parse_args([*sizes, "--variants", *variants]))
    return lines, {"instruct": instruct}


# ---------------------------------------------------------------------------------------
# Part 3: the gpu tests, doctor, dequantisation


def part3(mode: str, args, deadline: float) -> tuple[list[str], dict]:
    lines, raw = [], {}
    if mode == "cpu":
        lines.append("GPU tests: not run (no GPU in --cpu-check; they are skipped without CUDA)")
    else:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-s",
                               str(ROOT / "tests" / "train" / "test_speed.py")], capture_output=True, text=True, cwd=ROOT,
                              timeout=max(30, deadline - time.time() - 90))
        figures = [line.strip() for line in proc.stdout.splitlines() if " vs " in line and "largest" in line]
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
        failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        lines += [f"GPU tests (pytest -m gpu tests/train/test_speed.py): {summary}", *failures, *figures]
        raw["gpu_tests"] = {"summary": summary, "failures": failures, "figures": figures}
    # The report and, after it, one line per path auto picks here.
    proc = subprocess.run([sys.executable, "-m", "llamantino", "doctor", "--smoke"], capture_output=True, text=True,
                          timeout=max(30, deadline - time.time()), env={**os.environ, "LLAMANTINO_LOG": "WARNING"})
    lines += ["", f"llamantino doctor --smoke (exit {proc.returncode}):", *proc.stdout.rstrip().splitlines()]
    raw["doctor"] = {"exit": proc.returncode, "output": proc.stdout}
    if proc.returncode and proc.stderr:
        lines += proc.stderr.rstrip().splitlines()[-5:]
    lines += ["", *dequantisation(SIZES[mode]["dequant"], "cuda" if mode == "gpu" else "cpu")]
    return lines, raw


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


# ---------------------------------------------------------------------------------------
# Part 4: prefer's DPO step against TRL's DPOTrainer; MoE experts in 4-bit against unquantized


def part4(mode: str, args, deadline: float) -> tuple[list[str], dict]:
    def measure(name: str) -> dict:
        if mode == "gpu":  # a process each: a clean GPU and its own peak memory
            return run_child(name, mode, deadline, ["--workdir", args.workdir])
        try:  # check mode: in this process, as the tiny runs' imports would cost more than their steps
            return child_part4(name, mode, args.workdir)
        except Exception as error:  # noqa: BLE001  (reported in the table, as a child's failure is)
            return {"failed": f"{type(error).__name__}: {error}"[:200]}

    prefer, moe = {}, {}
    built = measure("prefer-model")
    for name in PART4_PREFER:
        prefer[name] = measure(f"prefer:{name}") if "failed" not in built else {"skipped": "model not built"}
    built = measure("moe-model")
    for name in PART4_MOE:
        moe[name] = measure(f"moe:{name}") if "failed" not in built else {"skipped": "model not built"}
    a = bench_prefer.parse_args(SIZES[mode]["prefer"])
    sizes = SIZES[mode]["adapt"]
    lines = [f"prefer (DPO, LoRA r=16 on every linear layer, checkpointing) on part 1's model: LLaMA hidden "
             f"{option(sizes, '--hidden-size')} x {option(sizes, '--layers')} layers in 4-bit NF4, {a.pairs} pairs "
             f"(prompt {a.prompt_length}, answers {a.answer_length}/{a.answer_length * 3 // 4}), {a.steps} timed "
             f"steps after {a.warmup_steps} warm-up (peak memory from then)",
             *figures_table(prefer, "trl-dpo", [("tokens/s", "tokens_per_s", 1), ("s/step", "s_per_step", 0),
                                                ("peak GiB", "peak_mb", 2**10)]), ""]
    s = SIZES[mode]["moe"]
    shape = {**bench_moe.SHAPE, **s["shape"], **s["experts"]}
    lines += [f"MoE QLoRA step (Qwen3-MoE hidden {shape['hidden_size']} x {shape['num_hidden_layers']} layers, "
              f"{shape['num_experts']} experts of {shape['moe_intermediate_size']}, {shape['num_experts_per_tok']} "
              f"a token; LoRA on attention and every expert), 4 x {s['seq_length']} tokens, {s['steps']} timed "
              "steps after 1 warm-up",
              *figures_table(moe, "moe-full-experts", [("tokens/s", "tokens_per_s", 1),
                                                       ("step peak GiB", "step_peak_bytes", 2**30),
                                                       ("load peak GiB", "load_peak_bytes", 2**30),
                                                       ("model GiB", "held_bytes", 2**30)])]
    return lines, {"prefer": prefer, "moe": moe}


def figures_table(results: dict, baseline: str, columns: list[tuple[str, str, int]]) -> list[str]:
    """One row a run, the figures in `columns` (title, key, divisor: 1 whole numbers, 0 three
    decimals, else GiB), then the ratio of tokens/s and of the first memory column to `baseline`."""
    base = results.get(baseline, {})
    memory = next(key for _, key, divisor in columns if divisor > 1)
    rows, notes = [["variant", *(title for title, _, _ in columns), f"vs {baseline} (tok/s, mem)"]], []
    for name, r in results.items():
        if "tokens_per_s" not in r:
            notes.append(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED: {r['failed']}"))
            continue
        cells = [f"{r[key]:,.0f}" if divisor == 1 else f"{r[key]:.3f}" if divisor == 0 else f"{r[key] / divisor:.2f}"
                 for _, key, divisor in columns]
        ratio = (f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x, {r[memory] / base[memory]:.2f}x"
                 if "tokens_per_s" in base and base[memory] else "-")
        rows.append([name, *cells, ratio])
    return table(rows, left=1) + notes


def child_part4(name: str, mode: str, workdir: str) -> dict:
    """prefer-model / moe-model: build the model once (prefer's is part 1's, reused when there);
    prefer:VARIANT / moe:VARIANT: bench_prefer's and bench_moe's own step on it."""
    if name.startswith("prefer"):
        from llamantino.models.modeling import load_causal_lm
        from llamantino.train.qlora import prepare_for_training

        shape = bench_adapt.parse_args(SIZES[mode]["adapt"])
        folder = Path(workdir) / mode / "adapt" / "model"  # where part 1 builds it
        if name == "prefer-model":
            if not (folder / "config.json").is_file():
                folder.parent.mkdir(parents=True, exist_ok=True)
                bench_adapt.build_model(folder, shape, in_4bit=mode == "gpu")
            return {"model": str(folder)}
        variant = name.split(":", 1)[1]
        args = bench_prefer.parse_args([*SIZES[mode]["prefer"], "--vocab-size", str(shape.vocab_size),
                                        "--child", variant])
        compute = "bfloat16" if mode == "gpu" else "float32"
        model = load_causal_lm(str(folder), load_in_4bit=True, compute_dtype=compute, device=args.device,
                               attn_implementation="sdpa")
        if variant != "trl-dpo":  # as the prefer stage does; TRL prepares a 4-bit model its own way
            prepare_for_training(model, False, compute)
        return bench_prefer.child(args, model)
    s = SIZES[mode]["moe"]
    # bench_moe takes its model's shape from these dicts: this part's size replaces its default
    bench_moe.SHAPE.update(s["shape"])
    bench_moe.MOE.update(s["experts"])
    folder = Path(workdir) / mode / "moe"
    if name == "moe-model":
        if not (folder / "moe" / "config.json").is_file():
            partial = folder.with_name("moe.partial")  # renamed when complete: a broken build is never reused
            shutil.rmtree(partial, ignore_errors=True)
            bench_moe.build("moe", partial)
            folder.mkdir(parents=True, exist_ok=True)
            (partial / "moe").rename(folder / "moe")
            shutil.rmtree(partial)
        return {"model": str(folder / "moe")}
    from types import SimpleNamespace

    return bench_moe.worker(SimpleNamespace(worker=name.split(":", 1)[1], folder=str(folder),
                                            seq_length=s["seq_length"], steps=s["steps"], threads=0))


# ---------------------------------------------------------------------------------------


def run_child(name: str, mode: str, deadline: float, extra: list[str] = ()) -> dict:
    """A measurement in a process of its own (a clean GPU, compilation caches of its own)."""
    left = deadline - time.time()
    if left < 30:
        return {"skipped": "not run: the time budget was spent"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--mode", mode, *extra], capture_output=True,
                              text=True, timeout=left, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"failed": "stopped: the time budget was spent"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        print(f"{name} failed:\n" + "\n".join(tail[-30:]), file=sys.stderr, flush=True)
        return {"failed": next((x for x in reversed(tail) if "Error" in x), tail[-1] if tail else "")[:200]}
    return json.loads(lines[-1][len("RESULT "):])


PARTS = {1: part1, 2: part2, 3: part3, 4: part4}
CHILDREN = ["packed-attention", "prefer-model", *(f"prefer:{v}" for v in PART4_PREFER), "moe-model",
            *(f"moe:{v}" for v in PART4_MOE)]


def goals(raw: dict) -> list[str]:
    out = [GOALS]
    adapt, ours = raw.get("adapt", {}), raw.get("adapt", {}).get("defaults", {})
    if "tokens_per_s" in ours:
        for base in ("trl-packing", "trl-tuned", "unsloth"):
            b = adapt.get(base, {})
            if "tokens_per_s" in b:
                speed, memory = ours["tokens_per_s"] / b["tokens_per_s"], ours["peak_memory_mb"] / b["peak_memory_mb"]
                met = speed >= (1.0 if base == "unsloth" else 2.0) and (base == "unsloth" or memory <= 0.6)
                out.append(f"  defaults vs {base}: {speed:.2f}x tokens/s at {memory:.2f}x memory: "
                           f"{'met' if met else 'NOT met'}")
    done = {k: v for k, v in raw.get("instruct", {}).items() if v.get("mfu")}
    if done:
        best = max(done, key=lambda k: done[k]["mfu"])
        mfu = done.get("defaults", {}).get("mfu")
        out.append(f"  instruct MFU: defaults {100 * mfu:.1f}%, best {best} {100 * done[best]['mfu']:.1f}%: "
                   f"{'met' if (mfu or 0) >= 0.40 else 'NOT met'}" if mfu else
                   f"  instruct MFU: best {best} {100 * done[best]['mfu']:.1f}% (defaults did not run)")
    return out if len(out) > 1 else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", type=int, choices=sorted(PARTS), help="the part to run (default: 1; "
                                                                         "--cpu-check: all four)")
    parser.add_argument("--cpu-check", action="store_true", help="tiny sizes on CPU: check that every path runs")
    parser.add_argument("--adapt", nargs="*", choices=[*bench_adapt.VARIANTS, *bench_adapt.BASELINES],
                        help=f"part 1's adapt runs (default: {' '.join(PART1)}; none: skip them)")
    parser.add_argument("--instruct", nargs="*", choices=list(bench_instruct.VARIANTS),
                        help=f"part 2's instruct variants (default: {' '.join(PART2)})")
    parser.add_argument("--skip-attention", action="store_true", help="part 1 without the flex-vs-sdpa measurement")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S,
                        help=f"seconds a part may take, model building included (default {BUDGET_S})")
    parser.add_argument("--workdir", default=str(ROOT / ".bench" / "gpu"),
                        help="the 7B model and corpus are built here once and reused")
    parser.add_argument("--output", default="", help="the table goes here too, the raw figures in a .json beside it "
                                                     "(default gpu-speed-partN.txt)")
    parser.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["gpu", "cpu"], default="gpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (child_packed_attention(args.mode) if args.child == "packed-attention"
                  else child_part4(args.child, args.mode, args.workdir))
        print("RESULT " + json.dumps(result))
        return 0
    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        sys.exit("no CUDA device visible: run on a GPU, or use --cpu-check")
    mode = "cpu" if args.cpu_check else "gpu"
    if mode == "cpu":
        os.environ["OMP_NUM_THREADS"] = "1"  # tiny models: one thread each, no spinning on a busy machine
    parts = [args.part] if args.part else ([1, 2, 3, 4] if mode == "cpu" else [1])
    device = torch.cuda.get_device_name(0) if mode == "gpu" else "CPU (check mode: plumbing, no figures)"
    sections, raw = [f"llamantino speed on {device}, torch {torch.__version__}"], {}
    for part in parts:
        started = time.time()
        lines, figures = PARTS[part](mode, args, started + args.budget_s)
        raw.update(figures)
        sections.append("\n".join([f"== part {part}", *lines, f"(part {part} took {time.time() - started:.0f} s)"]))
        print("\n" + sections[-1], flush=True)
    sections += ["\n".join(goals(raw))] if mode == "gpu" and goals(raw) else []
    sections.append(f"command: python benchmarks/bench_gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    text = "\n\n".join(sections)
    print("\n" + text)
    output = Path(args.output or f"gpu-speed-part{''.join(map(str, parts))}.txt")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    output.with_suffix(".json").write_text(json.dumps(raw, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
