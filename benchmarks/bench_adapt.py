"""Language adaptation throughput and memory: `llamantino adapt` and its speed paths against TRL
(with packing, as the paper used it, and with its defaults) and unsloth.

Every run trains the same randomly initialised LLaMA-shaped model, loaded from the same folder
in 4-bit NF4 with double quantisation, with the same LoRA settings (r=64, alpha=16, dropout 0.1,
every linear layer of the decoder blocks), learning rate, batch (8 sequences of --seq-length
tokens) on the same synthetic corpus, whose document lengths follow a web-like (log-normal)
distribution. Each run is its own process.

Variants (llamantino settings; `auto` resolves to what this machine has, the table says what):
  defaults          every setting at its default
  paper             the paths the paper recipes pin or had: sdpa attention, full activation
                    checkpointing, chunked loss, nothing compiled, torch kernels
  flash             paper + attention auto (FlashAttention 3/2 where installed, on one flattened
                    varlen row with its document boundaries computed once a batch)
  flex              paper + flex attention (block-sparse document mask; GPU only)
  compile           flash + every decoder block compiled
  liger             compile + Liger's RMSNorm/SwiGLU/RoPE kernels and fused linear cross-entropy
  selective         compile + kernels and loss auto + selective activation checkpointing (matmul
                    and attention outputs kept, cheap ops recomputed)
  no-checkpointing  compile + kernels and loss auto, no activation checkpointing
  ckpt-every-2      compile + kernels and loss auto, every second decoder block checkpointed
  offload           compile + kernels and loss auto, full checkpointing with the blocks' inputs in
                    pinned host memory (GPU only)
  defaults-batch16  defaults with 16 sequences a micro-batch (what the memory saved buys)
  no-ckpt-4x2       no-checkpointing with 4-sequence micro-batches x 2 (same step, less memory)
Baselines:
  trl-packing       TRL SFTTrainer, packing=True (TRL 1.x: best-fit-decreasing, padding-free)
  trl-tuned         trl-packing with Liger's kernels (use_liger_kernel) and the same activation
                    checkpointing as ours (full, non-reentrant); GPU with liger-kernel only
  trl-defaults      TRL SFTTrainer defaults (no packing: batches padded to their longest document)
  unsloth           unsloth's FastLanguageModel + TRL SFTTrainer with packing (when importable)

Reported: real (non-padding) tokens/s over the steps after --warmup-steps, peak memory over those
steps (GPU: torch.cuda.max_memory_allocated, reset after the warm-up; CPU: peak RSS), model FLOPs
utilisation (GPU; see `flops_per_token`) and each run's ratio to every baseline that ran.
`--deadline` (seconds since the epoch) bounds the whole benchmark: a run that would start after it
is listed as not run, one still running then is stopped.

    python benchmarks/bench_adapt.py                  # CPU, tiny model: defaults and both TRL baselines
    python benchmarks/bench_adapt.py --variants defaults paper no-checkpointing trl-packing trl-defaults
    python benchmarks/bench_gpu.py                    # every variant on one GPU, 7B-shaped (see there)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "llamantino" / "assets" / "demo"

PAPER = {"attn_implementation": "sdpa", "activation_checkpointing": "full", "compile": "none", "kernels": "torch",
         "fused_loss": "chunked"}
FLASH = {**PAPER, "attn_implementation": "auto"}
COMPILE = {**FLASH, "compile": "blocks"}
LIGER = {**COMPILE, "kernels": "liger", "fused_loss": "liger"}
AUTO_KERNELS = {**COMPILE, "kernels": "auto", "fused_loss": "auto"}
VARIANTS = {
    "defaults": {},
    "paper": PAPER,
    "flash": FLASH,
    "flex": {**PAPER, "attn_implementation": "flex_attention"},
    "compile": COMPILE,
    "liger": LIGER,
    "selective": {**AUTO_KERNELS, "activation_checkpointing": "selective"},
    "no-checkpointing": {**AUTO_KERNELS, "activation_checkpointing": "none"},
    "ckpt-every-2": {**AUTO_KERNELS, "activation_checkpointing": "full", "checkpoint_every": 2},
    "offload": {**AUTO_KERNELS, "activation_checkpointing": "offload"},
    "defaults-batch16": {"batch_size": 16},
    "no-ckpt-4x2": {**AUTO_KERNELS, "activation_checkpointing": "none", "batch_size": 4, "gradient_accumulation": 2},
}
BASELINES = {"trl-packing": "TRL SFTTrainer, packing", "trl-tuned": "TRL SFTTrainer, packing, Liger, full ckpt",
             "trl-defaults": "TRL SFTTrainer defaults", "unsloth": "unsloth + TRL, packing"}
CPU_RUN = ["defaults", "trl-packing", "trl-defaults"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(folder: Path, args, *, in_4bit: bool = False) -> None:
    """A random LLaMA of the given shape and the demo tokenizer; with `in_4bit`, saved already
    quantised (NF4, double quantisation) so every run loads a quarter of the bytes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from llamantino.demo.demo_base import build_tokenizer, read_paragraphs

    texts = read_paragraphs([DATA / "en_train.txt", DATA / "it_train.txt"])
    tokenizer = build_tokenizer(texts, vocab_size=min(args.vocab_size, 4096))
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                         intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.heads,
                         max_position_embeddings=max(4096, args.seq_length), tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Built beside its final name, renamed when complete: an interrupted build is never reused. The
    # full-precision copy that is quantised goes to memory (/dev/shm) when it fits there: a 7B
    # model's 13 GB are written and read back in seconds instead of a minute.
    full, partial = folder.with_name(folder.name + ".full"), folder.with_name(folder.name + ".partial")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if in_4bit and Path("/dev/shm").is_dir() and shutil.disk_usage("/dev/shm").free > 1.5 * size:
        full = Path(tempfile.mkdtemp(prefix="bench-adapt-full-", dir="/dev/shm")) / "full"
    for stale in (full, partial):
        shutil.rmtree(stale, ignore_errors=True)
    model.save_pretrained(full if in_4bit else partial)
    tokenizer.save_pretrained(full if in_4bit else partial)
    del model
    if in_4bit:
        from llamantino.models.modeling import quantization_config

        quantized = AutoModelForCausalLM.from_pretrained(
            full, dtype=dtype, device_map={"": args.device} if args.device == "cuda" else "cpu",
            quantization_config=quantization_config("bfloat16" if args.device == "cuda" else "float32"))
        quantized.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        del quantized
        shutil.rmtree(full.parent if full.parent.name.startswith("bench-adapt-full-") else full)
    partial.rename(folder)


def build_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    """Documents of log-normally distributed length (median ~2,000 characters), like web pages."""
    from llamantino.demo.demo_base import read_paragraphs

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


def flops_per_token(config: dict, lora_r: int, seq_length: int) -> float:
    """Model FLOPs per trained token of QLoRA: the frozen base runs forward (2 per weight) and
    passes gradients back to its input (2 more), the LoRA weights also get their own gradients
    (6 per weight in all), and attention adds 12 x layers x hidden x sequence (torchtitan's count,
    every position attending to the whole row). Embedding lookups and recomputation are not counted."""
    h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h * config.get("num_key_value_heads", config["num_attention_heads"]) // config["num_attention_heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    frozen = layers * sum(a * b for a, b in shapes) + config["vocab_size"] * h
    lora = layers * sum(lora_r * (a + b) for a, b in shapes)
    return 4 * frozen + 6 * lora + 12 * layers * h * seq_length


# ---------------------------------------------------------------------------------------
# Runs, one process each


def child_ours(args) -> dict:
    from llamantino.core.config import build_config
    from llamantino.train import qlora
    from llamantino.train.adapt import Config, run

    step = qlora.train_step

    def step_then_reset_peak(t):
        # The benchmark's hook on our own loop: the peak memory of the timed steps only.
        done = step(t)
        if t.step == args.warmup_steps and t.device.type == "cuda":
            import torch

            torch.cuda.synchronize(t.device)
            torch.cuda.reset_peak_memory_stats(t.device)
        return done

    qlora.train_step = step_then_reset_peak

    settings = json.loads(args.settings)
    batch = settings.pop("batch_size", args.batch_size)
    accumulation = settings.pop("gradient_accumulation", 1)
    cfg = build_config(Config, {
        "model": args.model_dir, "data": [args.corpus], "output": args.out, "max_length": args.seq_length,
        "batch_size": batch, "gradient_accumulation": accumulation, "max_steps": args.steps,
        "compute_dtype": args.compute_dtype, "lora_dropout": args.lora_dropout, "logging_steps": 1,
        "save_steps": 0, **settings}, "benchmark")
    run(cfg, overwrite=True)
    rows = [line.split(",") for line in (Path(args.out) / "metrics.csv").read_text().splitlines()[1:]]
    # columns: step, loss, lr, grad_norm, tokens, tokens_per_s, elapsed_s (every row: logging_steps=1)
    by_step = {int(r[0]): r for r in rows if r[1]}
    t0, tok0 = float(by_step[args.warmup_steps][6]), int(by_step[args.warmup_steps][4])
    t1, tok1 = float(by_step[args.steps][6]), int(by_step[args.steps][4])
    manifest = json.loads((Path(args.out) / "manifest.json").read_text())["metrics"]
    return {"tokens_per_s": (tok1 - tok0) / (t1 - t0), "peak_memory_mb": manifest["peak_memory_mb"],
            "real_tokens_per_step": (tok1 - tok0) / (args.steps - args.warmup_steps),
            "final_loss": manifest["final_loss"], "attention": manifest["attention"],
            "checkpointing": manifest["checkpointing"], "compile": manifest["compile"],
            "kernels": manifest["kernels"], "loss": manifest["fused_loss"], "batch": f"{batch}x{accumulation}"}


def trl_train(args, model, tokenizer, *, packing: bool, peft_config, tuned: bool = False) -> dict:
    """TRL's SFTTrainer on the corpus, timed (and its peak memory taken) after the warm-up steps;
    `tuned`: Liger's kernels and our activation checkpointing (full, non-reentrant)."""
    import torch
    from datasets import load_dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=args.corpus, split="train")
    on_gpu = args.device == "cuda"
    config = SFTConfig(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, max_length=args.seq_length, packing=packing, learning_rate=2e-4,
        weight_decay=0.001, max_grad_norm=0.3, warmup_steps=0.03,
        optim="paged_adamw_32bit" if on_gpu else "adamw_torch",
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=not on_gpu,
        bf16=on_gpu and args.compute_dtype == "bfloat16", fp16=on_gpu and args.compute_dtype == "float16",
        dataloader_num_workers=0, gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False} if tuned else None, use_liger_kernel=tuned)
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
                    torch.cuda.reset_peak_memory_stats()
                state["t0"], state["tok0"] = time.time(), state["tokens"]

    trainer = Counting(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                       peft_config=peft_config, callbacks=[Clock()])
    trainer.train()
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.time() - state["t0"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    checkpointing = "full" if config.gradient_checkpointing else "none"
    return {"tokens_per_s": (state["tokens"] - state["tok0"]) / elapsed, "peak_memory_mb": peak_memory_mb(args.device),
            "real_tokens_per_step": (state["tokens"] - state["tok0"]) / (args.steps - args.warmup_steps),
            "final_loss": losses[-1] if losses else None, "checkpointing": checkpointing,
            "attention": model.config._attn_implementation, "compile": "none",
            "kernels": "liger" if tuned else "-", "loss": "liger" if tuned else "-", "batch": f"{args.batch_size}x1"}


def child_trl(args) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino.models.modeling import quantization_config

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=getattr(torch, args.compute_dtype), attn_implementation=args.trl_attention,
        device_map={"": args.device} if args.device == "cuda" else "cpu",
        quantization_config=quantization_config(args.compute_dtype))
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=args.lora_dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS)
    return trl_train(args, model, tokenizer, packing=args.child in ("trl-packing", "trl-tuned"), peft_config=lora,
                     tuned=args.child == "trl-tuned")


def child_unsloth(args) -> dict:
    import unsloth  # noqa: F401  (first: it patches transformers and TRL as they load)
    import torch
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(model_name=args.model_dir, max_seq_length=args.seq_length,
                                                         dtype=getattr(torch, args.compute_dtype), load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=64, lora_alpha=16, lora_dropout=args.lora_dropout,
                                             target_modules=LORA_TARGETS, bias="none",
                                             use_gradient_checkpointing="unsloth", random_state=0)
    result = trl_train(args, model, tokenizer, packing=True, peft_config=None)
    return {**result, "checkpointing": "unsloth", "kernels": "unsloth", "loss": "unsloth"}


# ---------------------------------------------------------------------------------------
# The table


def unavailable(name: str, settings: dict, device: str) -> str:
    """Why a run cannot happen on this machine ('' when it can): checked before a process starts."""
    import importlib.util

    if name == "unsloth" and importlib.util.find_spec("unsloth") is None:
        return "unsloth not installed"
    if name.startswith("trl") and importlib.util.find_spec("trl") is None:
        return "trl not installed"
    if name == "trl-tuned" and (importlib.util.find_spec("liger_kernel") is None or device != "cuda"):
        return "liger-kernel not installed, or no GPU"
    if "liger" in (settings.get("kernels"), settings.get("fused_loss"), settings.get("loss")):
        if importlib.util.find_spec("liger_kernel") is None or device != "cuda":
            return "liger-kernel not installed, or no GPU"
    if settings.get("attn_implementation", settings.get("attention")) == "flex_attention" and device == "cpu":
        return "flex attention has no backward pass on CPU (torch 2.13)"
    if settings.get("activation_checkpointing", settings.get("checkpointing")) == "offload" and device == "cpu":
        return "activation offloading moves GPU memory to the host"
    return ""


def run_variant(name: str, args, model_dir: Path, corpus: Path, out: Path) -> dict:
    """One run in its own process; a failure is a row saying why, not the end of the benchmark."""
    reason = unavailable(name, VARIANTS.get(name, {}), args.device)
    if reason:
        return {"skipped": reason}
    left = args.deadline - time.time() if args.deadline else None
    if left is not None and left < 30:
        return {"skipped": "not run: the time budget was spent"}
    cmd = [sys.executable, __file__, "--child", name, "--model-dir", str(model_dir), "--corpus", str(corpus),
           "--out", str(out)]
    for key in ("device", "seq_length", "batch_size", "steps", "warmup_steps", "compute_dtype", "lora_dropout",
                "trl_attention"):  # --deadline stays with the parent
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if name in VARIANTS:
        cmd += ["--settings", json.dumps(VARIANTS[name])]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "UNSLOTH_DISABLE_STATISTICS": "1"}
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=left)
    except subprocess.TimeoutExpired:
        return {"failed": f"stopped after {time.time() - t0:.0f} s: the time budget was spent"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        if name == "unsloth" and any("No module named 'unsloth'" in line for line in tail):
            return {"skipped": "unsloth not installed"}
        if any("liger-kernel is not installed" in line or "Triton kernels need a CUDA" in line for line in tail):
            return {"skipped": "liger-kernel not installed, or no GPU"}
        error = next((line for line in reversed(tail) if "Error" in line or "error" in line), tail[-1] if tail else "")
        print(f"{name} failed:\n" + "\n".join(tail[-40:]), file=sys.stderr, flush=True)
        return {"failed": error[:160]}
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"{name}: {result} ({time.time() - t0:.0f} s)", flush=True)
    return result


def table(results: dict, args) -> list[str]:
    """One row per variant: what it ran, tokens/s, peak memory, MFU, ratios to each baseline."""
    config = json.loads((Path(args.model_dir_used) / "config.json").read_text())
    per_token = flops_per_token(config, 64, args.seq_length)
    baselines = [b for b in BASELINES if "tokens_per_s" in results.get(b, {})]
    head = ["variant", "attention", "ckpt", "compile", "kernels", "loss", "batch", "tokens/s", "peak MiB", "MFU"]
    head += [f"x {b} (tok/s, mem)" for b in baselines]
    rows, notes = [head], []
    for name, r in results.items():
        if "tokens_per_s" not in r:
            notes.append(f"{name}: " + (f"skipped ({r['skipped']})" if "skipped" in r else f"FAILED: {r['failed']}"))
            continue
        mfu = f"{100 * per_token * r['tokens_per_s'] / args.peak_flops:.1f}%" if args.peak_flops else "-"
        row = [name, r["attention"], r["checkpointing"], r["compile"], r["kernels"], r["loss"], r["batch"],
               f"{r['tokens_per_s']:,.0f}", f"{r['peak_memory_mb']:,.0f}", mfu]
        for b in baselines:
            base = results[b]
            speed, memory = r["tokens_per_s"] / base["tokens_per_s"], r["peak_memory_mb"] / base["peak_memory_mb"]
            row.append(f"{speed:.2f}x, {memory:.2f}x")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) if i < 7 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines + notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    parser.add_argument("--compute-dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--lora-dropout", type=float, default=0.1, help="for every run (the paper: 0.1)")
    parser.add_argument("--trl-attention", default=None,
                        help="attention of the TRL and unsloth runs (default: what llamantino's auto picks here)")
    parser.add_argument("--variants", nargs="+", default=None, choices=[*VARIANTS, *BASELINES],
                        help=f"runs, in order (default on CPU: {' '.join(CPU_RUN)})")
    parser.add_argument("--peak-flops", type=float, default=0.0, help="device peak FLOP/s for the MFU column")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of every run (0: torch's default; 1 is fairer on a busy machine)")
    parser.add_argument("--workdir", help="keep the model and corpus here (reused when present); default: a temp dir")
    parser.add_argument("--table-file", help="also write the table to this file")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="stop starting runs after this time (seconds since the epoch; 0: none)")
    parser.add_argument("--child", choices=[*VARIANTS, *BASELINES], help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.compute_dtype = args.compute_dtype or ("bfloat16" if args.device == "cuda" else "float32")
    return args


def auto_attention(model_dir: Path, device: str, compute_dtype: str) -> str:
    from llamantino.models.modeling import load_config, resolve_attention

    return resolve_attention("auto", load_config(str(model_dir)), device, compute_dtype)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        runner = {"trl-packing": child_trl, "trl-tuned": child_trl, "trl-defaults": child_trl,
                  "unsloth": child_unsloth}.get(args.child, child_ours)
        print("RESULT " + json.dumps(runner(args)))
        return {}
    variants = args.variants or CPU_RUN
    with tempfile.TemporaryDirectory(prefix="bench-adapt-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir, corpus = work / "model", work / "corpus.jsonl"
        t0 = time.time()
        if not (model_dir / "config.json").is_file():
            build_model(model_dir, args, in_4bit=args.device == "cuda")
        if not corpus.is_file():
            build_corpus(corpus.with_suffix(".partial"), args.docs)
            corpus.with_suffix(".partial").rename(corpus)
        print(f"model and corpus ready in {time.time() - t0:.0f} s", flush=True)
        args.trl_attention = args.trl_attention or auto_attention(model_dir, args.device, args.compute_dtype)
        args.model_dir_used = model_dir
        results = {name: run_variant(name, args, model_dir, corpus, work / f"run-{name}") for name in variants}
        lines = table(results, args)
    shape = (f"LLaMA hidden {args.hidden_size}, {args.layers} layers, vocab {args.vocab_size}, 4-bit NF4 + LoRA r=64; "
             f"{args.batch_size} x {args.seq_length} tokens a step; compute {args.compute_dtype} on {args.device}")
    text = "\n".join([shape, *lines])
    print("\n" + text)
    if args.table_file:
        Path(args.table_file).write_text(text + "\n")
    for base in ("trl-packing", "trl-defaults"):
        if "tokens_per_s" in results.get(base, {}) and "tokens_per_s" in results.get("defaults", {}):
            for figure, key in (("real tokens/s", "tokens_per_s"), ("peak memory (MiB)", "peak_memory_mb")):
                print("RESULT " + json.dumps({"benchmark": "adapt", "figure": figure,
                                              "ours": results["defaults"][key], "baseline": results[base][key],
                                              "baseline_name": BASELINES[base]}))
    return results


if __name__ == "__main__":
    main()
