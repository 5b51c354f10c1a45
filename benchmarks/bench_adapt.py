"""Language adaptation throughput and memory: `llamantino adapt` against plain TRL.

Both runs train the same randomly initialised LLaMA-shaped model, loaded from the same
folder in 4-bit NF4 with double quantisation, with the same LoRA settings (r=64,
alpha=16, dropout 0.1, every linear layer of the decoder blocks), optimizer, learning
rate, batch (8 sequences) and max length, on the same synthetic corpus whose document
lengths follow a web-like (log-normal) distribution. The baseline is TRL's SFTTrainer
with its defaults otherwise (no packing: each batch is padded to its longest document).

Reported: real (non-padding) tokens per second after warm-up steps, and peak memory
(GPU: torch.cuda.max_memory_allocated; CPU: peak RSS). Each run is its own process.

    python benchmarks/bench_adapt.py                       # CPU, tiny model
    python benchmarks/bench_adapt.py --device cuda --hidden-size 4096 --layers 32 \\
        --intermediate-size 11008 --heads 32 --vocab-size 32000 --seq-length 1024 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "llamantino" / "data" / "demo"


def build_model(folder: Path, args) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamantino.demo_base import build_tokenizer, read_paragraphs

    texts = read_paragraphs([DATA / "en_train.txt", DATA / "it_train.txt"])
    tokenizer = build_tokenizer(texts, vocab_size=min(args.vocab_size, 4096))
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=max(4096, args.seq_length), tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model


def build_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    """Documents of log-normally distributed length (median ~2,000 characters), like web pages."""
    from llamantino.demo_base import read_paragraphs

    paragraphs = read_paragraphs([DATA / "it_train.txt"])
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(n_docs):
            target = min(20000, int(rng.lognormvariate(math.log(2000), 0.9)))
            parts, size = [], 0
            while size < target:
                parts.append(rng.choice(paragraphs))
                size += len(parts[-1])
            handle.write(json.dumps({"text": "\n".join(parts)}, ensure_ascii=False) + "\n")


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(args) -> dict:
    from llamantino.adapt import Config, run
    from llamantino.config import build_config

    cfg = build_config(Config, {
        "model": args.model_dir, "data": [args.corpus], "output": args.out, "max_length": args.seq_length,
        "batch_size": args.batch_size // args.accumulation, "gradient_accumulation": args.accumulation,
        "max_steps": args.steps, "compute_dtype": args.compute_dtype,
        "logging_steps": 1, "save_steps": 10**9, "gradient_checkpointing": args.gradient_checkpointing,
        "loss_chunk_tokens": args.loss_chunk_tokens}, "benchmark")
    run(cfg, overwrite=True)
    rows = [line.split(",") for line in (Path(args.out) / "metrics.csv").read_text().splitlines()[1:]]
    # columns: step, loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s (every row: logging_steps=1)
    by_step = {int(r[0]): r for r in rows}
    t0, tok0 = float(by_step[args.warmup_steps][6]), int(by_step[args.warmup_steps][4])
    t1, tok1 = float(by_step[args.steps][6]), int(by_step[args.steps][4])
    manifest = json.loads((Path(args.out) / "manifest.json").read_text())["metrics"]
    return {"tokens_per_s": (tok1 - tok0) / (t1 - t0), "peak_memory_mb": manifest["peak_memory_mb"],
            "real_tokens_per_step": (tok1 - tok0) / (args.steps - args.warmup_steps),
            "real_token_share": manifest["real_token_share"], "final_loss": manifest["final_loss"]}


def child_trl(args) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from llamantino.modeling import lora_targets

    compute = getattr(torch, args.compute_dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=compute, device_map={"": args.device} if args.device == "cuda" else "cpu",
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute))
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                      target_modules=lora_targets(model))
    dataset = load_dataset("json", data_files=args.corpus, split="train")
    on_gpu = args.device == "cuda"
    config = SFTConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_length=args.seq_length, learning_rate=2e-4, weight_decay=0.001,
        max_grad_norm=0.3, warmup_steps=0.03, optim="paged_adamw_32bit" if on_gpu else "adamw_torch",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=not on_gpu,
        bf16=on_gpu and args.compute_dtype == "bfloat16", fp16=on_gpu and args.compute_dtype == "float16",
        dataloader_num_workers=0)
    state = {"tokens": 0, "t0": None, "tok0": 0}

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            state["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    class Clock(TrainerCallback):
        def on_step_end(self, a, s, c, **kw):
            if s.global_step == args.warmup_steps:
                if on_gpu:
                    torch.cuda.synchronize()
                state["t0"], state["tok0"] = time.time(), state["tokens"]

    trainer = Counting(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=lora, callbacks=[Clock()])
    trainer.train()
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.time() - state["t0"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_s": (state["tokens"] - state["tok0"]) / elapsed, "peak_memory_mb": peak_memory_mb(args.device),
            "real_tokens_per_step": (state["tokens"] - state["tok0"]) / (args.steps - args.warmup_steps),
            "gradient_checkpointing": config.gradient_checkpointing, "final_loss": losses[-1] if losses else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=688)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup-steps", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--docs", type=int, default=600)
    parser.add_argument("--compute-dtype", default=None, help="default: float16 on GPU (the paper), float32 on CPU")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="for llamantino adapt (TRL keeps its default)")
    parser.add_argument("--loss-chunk-tokens", type=int, default=1024)
    parser.add_argument("--accumulation", type=int, default=1,
                        help="llamantino adapt only: process each batch in this many micro-batches "
                             "(same sequences per optimizer step, same gradient, less memory)")
    parser.add_argument("--only", choices=("ours", "trl"), help="run one side only")
    parser.add_argument("--child", choices=("ours", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.compute_dtype = args.compute_dtype or ("float16" if args.device == "cuda" else "float32")
    if args.child:
        result = child_ours(args) if args.child == "ours" else child_trl(args)
        print("RESULT " + json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        build_model(tmp / "model", args)
        build_corpus(tmp / "corpus.jsonl", args.docs)
        print(f"model and corpus built in {time.time() - t0:.0f} s", flush=True)
        results = {}
        for side in ("ours", "trl"):
            if args.only and side != args.only:
                continue
            cmd = [sys.executable, __file__, "--child", side, "--model-dir", str(tmp / "model"),
                   "--corpus", str(tmp / "corpus.jsonl"), "--out", str(tmp / f"run-{side}")]
            for key in ("device", "seq_length", "batch_size", "steps", "warmup_steps", "compute_dtype",
                        "loss_chunk_tokens", "accumulation"):
                cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
            cmd += ["--gradient-checkpointing" if args.gradient_checkpointing else "--no-gradient-checkpointing"]
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
                raise SystemExit(f"{side} run failed")
            results[side] = json.loads(lines[-1][len("RESULT "):])
            print(f"{side}: {results[side]} ({time.time() - t0:.0f} s)", flush=True)
    shape = (f"LLaMA hidden {args.hidden_size}, {args.layers} layers, vocab {args.vocab_size}; "
             f"{args.batch_size} x {args.seq_length} tokens; compute {args.compute_dtype} on {args.device}")
    print(f"\n{shape}")
    print(f"{'':22s}{'tokens/s':>12s}{'peak MiB':>12s}{'tokens/step':>13s}")
    for side, name in (("ours", "llamantino adapt"), ("trl", "TRL SFTTrainer")):
        if side in results:
            r = results[side]
            print(f"{name:22s}{r['tokens_per_s']:12.0f}{r['peak_memory_mb']:12.0f}{r['real_tokens_per_step']:13.0f}")
    if len(results) == 2:
        speed = results["ours"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
        memory = results["ours"]["peak_memory_mb"] / results["trl"]["peak_memory_mb"]
        print(f"{'ratio (ours / TRL)':22s}{speed:11.2f}x{memory:11.2f}x")
        for figure, key in (("real tokens/s", "tokens_per_s"), ("peak memory (MiB)", "peak_memory_mb")):
            print("RESULT " + json.dumps({"benchmark": "adapt", "figure": figure, "ours": results["ours"][key],
                                          "baseline": results["trl"][key],
                                          "baseline_name": "TRL SFTTrainer defaults"}))


if __name__ == "__main__":
    main()
