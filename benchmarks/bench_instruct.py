"""Full-parameter instruction tuning: throughput and memory, FSDP2 against one process.

CPU (the default): `llamantino instruct` on a small LLaMA and the bundled Italian Dolly
sample, run by torchrun on 2 ranks (FSDP2, gloo) and as 1 process without sharding, with
the same data, settings and number of cores; prints tokens/s and each rank's peak
resident memory side by side.

    python benchmarks/bench_instruct.py
    python benchmarks/bench_instruct.py --hidden-size 512 --layers 8 --steps 8

GPU: the same training step (`instruct.prepare_model` + `instruct.summed_loss`, AdamW,
clipping) on one device, a LLaMA-shaped model of the size you give with random weights
(built from a LlamaConfig, nothing downloaded), bf16 compute on float32 master weights;
prints tokens/s, peak memory and model FLOPs utilisation against the peak you pass
(dense bf16: 989e12 for an H100/H200 SXM, 312e12 for an A100).

    python benchmarks/bench_instruct.py --device cuda --hidden-size 2048 --layers 24 \\
        --intermediate-size 5632 --heads 16 --batch-size 8 --seq-length 1024 --peak-flops 989e12
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
DEMO = ROOT / "src" / "llamantino" / "data" / "demo"


def parse_args():
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
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                   help="CPU only: cores for each configuration (split between the 2 ranks)")
    p.add_argument("--peak-flops", type=float, default=989e12, help="GPU only: peak dense bf16 FLOP/s of the device")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--workdir", default=str(ROOT / ".bench" / "instruct"), help="CPU only: model and runs go here")
    return p.parse_args()


def llama_sizes(args, hidden, layers, heads_per):
    hidden = args.hidden_size or hidden
    layers = args.layers or layers
    inter = args.intermediate_size or 256 * ((int(hidden * 8 / 3) + 255) // 256)
    heads = args.heads or max(1, hidden // heads_per)
    return hidden, layers, inter, heads


# ---------------------------------------------------------------------------------------
# CPU: the real command, FSDP2 on 2 ranks against 1 process


def bench_cpu(args):
    from llamantino.demo_base import build_model, build_tokenizer, read_paragraphs

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
# GPU: the instruct training step on one device, random LLaMA-shaped weights


def bench_gpu(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamantino import instruct, training

    if not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    hidden, layers, inter, heads = llama_sizes(args, 2048, 24, 128)
    batch, steps, seq = args.batch_size or 8, args.steps or 10, args.seq_length
    device = torch.device("cuda", 0)
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=max(4096, seq), tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # float32 master weights, as instruct trains
    n_params = sum(p.numel() for p in model.parameters())
    n_flop_params = n_params - model.get_input_embeddings().weight.numel()  # a lookup, not a matmul
    model, autocast = instruct.prepare_model(model, world=1, device=device, compute_dtype="bfloat16",
                                             gradient_checkpointing=not args.no_gradient_checkpointing)
    model.train()
    optimizer, _ = training.make_optimizer(model.parameters(), "adamw_torch", 1e-5, 0.0, device)
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(0, args.vocab_size, (batch, seq), device=device, generator=g)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    def step():
        ce = instruct.summed_loss(model, data, autocast)
        (ce / (batch * (seq - 1))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels chosen, AdamW state allocated
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens_per_s = batch * seq * steps / seconds
    # torchtitan's count: 6 FLOPs per parameter per token (forward + backward) plus attention
    # scores and values, 12 x layers x hidden x sequence; recomputation is not counted.
    flops_per_token = 6 * n_flop_params + 12 * layers * hidden * seq
    mfu = flops_per_token * tokens_per_s / args.peak_flops
    print(f"\nllamantino instruct step on {torch.cuda.get_device_name(device)}: LLaMA {n_params / 1e9:.2f}B "
          f"(hidden {hidden}, {layers} layers, {heads} heads, MLP {inter}, vocab {args.vocab_size}), "
          f"bf16 autocast on float32 weights, AdamW, activation checkpointing "
          f"{'off' if args.no_gradient_checkpointing else 'on'}, batch {batch} x {seq} tokens, {steps} steps\n")
    print(f"tokens/s                 {tokens_per_s:,.0f}")
    print(f"step time (s)            {seconds / steps:.3f}")
    print(f"model TFLOP/s            {flops_per_token * tokens_per_s / 1e12:.1f}")
    print(f"MFU                      {100 * mfu:.1f}% of {args.peak_flops / 1e12:.0f} TFLOP/s")
    print(f"peak memory allocated    {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def main():
    args = parse_args()
    sys.path.insert(0, str(ROOT / "src"))  # runnable from a plain checkout too
    if args.device == "cuda":
        bench_gpu(args)
    else:
        bench_cpu(args)


if __name__ == "__main__":
    main()
