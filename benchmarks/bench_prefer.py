"""Preference tuning step: memory against an sft step, speed against TRL's DPOTrainer.

One LLaMA-shaped model (random weights, --vocab-size tokens, so the output layer weighs as in a
real model), LoRA on every linear layer of the decoder blocks, one batch of --pairs synthetic
pairs (prompt --prompt-length tokens, answers --answer-length and 3/4 of it), each run in a
process of its own:

  prefer     `llamantino prefer`'s step: chosen and rejected rows in one forward, the reference
             (adapter off, no gradient) first, per-answer log-probabilities through the chunked
             output layer, DPO loss, backward, AdamW step
  prefer-cached  the same step with the reference log-probabilities precomputed
             (`precompute_reference`: one pass before the steps, not timed): no reference forward
  sft        the same model trained with sft's loss on the same pairs' chosen rows (prompt +
             chosen answer, loss on the answer): the memory target is prefer <= 1.3 x sft
  trl-dpo    TRL 1.16 DPOTrainer's compute_loss on the same model (its own PEFT wrapping, same
             LoRA), the same batch (chosen rows then rejected rows), backward, AdamW step

Reported: answer + prompt tokens/s over the steps after --warmup-steps (rows x length of the
batch's real tokens), and peak memory of those steps (GPU: max_memory_allocated after a reset;
CPU: peak RSS growth over the process's size before the first step).

    python benchmarks/bench_prefer.py                  # CPU, small model
    python benchmarks/bench_prefer.py --hidden 2048 --layers 8 --vocab-size 128256 --pairs 8   # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("prefer", "prefer-cached", "sft", "trl-dpo")


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         max_position_embeddings=4096, tie_word_embeddings=False)
    return LlamaForCausalLM(config).to(args.device)


def pairs(args):
    import random
    from types import SimpleNamespace

    rng = random.Random(0)
    words = lambda n: [rng.randrange(3, args.vocab_size) for _ in range(n)]  # noqa: E731
    return [SimpleNamespace(prompt=[1] + words(args.prompt_length - 1), chosen=words(args.answer_length),
                            rejected=words(args.answer_length * 3 // 4)) for _ in range(args.pairs)]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def measure(args, step, tokens: int) -> dict:
    import torch

    cuda = args.device == "cuda"
    for _ in range(args.warmup_steps):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    # Peak of the whole process (weights included, as a run's), and what the steps added to it.
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base = torch.cuda.memory_allocated() / 2**20 if cuda else before
    return {"tokens_per_s": tokens * args.steps / seconds, "peak_mb": peak, "step_mb": peak - base,
            "s_per_step": seconds / args.steps}


def child(args, model=None) -> dict:
    """One variant's steps on `model` (default: a random full-precision LLaMA of the args' shape)."""
    import torch
    from peft import get_peft_model

    from llamantino.train.prefer import Config, collate_pairs, make_loss

    batch = collate_pairs(pairs(args), 0)
    model = build(args) if model is None else model
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n = batch.pairs
    if args.child == "trl-dpo":
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = DPOTrainer(model=model, args=DPOConfig(output_dir=tempfile.mkdtemp(), beta=0.1, report_to=[],
                                                             use_cpu=args.device == "cpu", bf16=False,
                                                             gradient_checkpointing=args.checkpointing),
                                 train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}),
                                 peft_config=lora_config(), processing_class=_tokenizer(args))
        peft_model = trainer.model
        lengths = torch.tensor([int((row != -100).nonzero().max()) + 1 for row in batch.labels])
        mask = (torch.arange(batch.input_ids.shape[1])[None] < lengths[:, None]).long()
        inputs = {"input_ids": batch.input_ids.to(args.device), "attention_mask": mask.to(args.device),
                  "completion_mask": (batch.labels != -100).long().to(args.device)}
        optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)

        def step():
            trainer.compute_loss(peft_model, inputs).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return measure(args, step, batch.real_tokens)
    peft_model = get_peft_model(model, lora_config())
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-5)
    if args.child in ("prefer", "prefer-cached"):
        loss = make_loss(Config(model="m", output="o", beta=0.1))(peft_model, args.chunk)
        ids, labels = batch.input_ids.to(args.device), batch.labels.to(args.device)
        ref = loss.reference_logps(ids, labels) if args.child == "prefer-cached" else None

        def step():
            value, _ = loss(ids, labels, float(n), float(batch.chosen_tokens), None, ref)
            value.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return measure(args, step, batch.real_tokens)
    from llamantino.train.qlora import CausalLMLoss

    loss = CausalLMLoss(peft_model, args.chunk)
    ids, labels = batch.input_ids[:n].to(args.device), batch.labels[:n].to(args.device)
    positions = torch.arange(ids.shape[1], device=args.device).expand_as(ids)
    chosen_tokens = sum(len(p.prompt) + len(p.chosen) for p in pairs(args))

    def step():
        loss(ids, positions, labels, torch.tensor(float(batch.chosen_tokens), device=args.device)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return measure(args, step, chosen_tokens)


def _tokenizer(args):
    """TRL wants a tokenizer object; the batch is given as ids, so any with a pad token will do."""
    from llamantino.demo.demo_base import build_tokenizer

    tokenizer = build_tokenizer(["a b c d e f g"] * 4, vocab_size=64)
    return tokenizer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--answer-length", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=1024, help="loss_chunk_tokens of ours")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="activation checkpointing (every run's default)")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return {}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = {}
    for name in args.variants:
        cmd = [sys.executable, __file__, "--child", name] + [a for a in (argv or sys.argv[1:])
                                                              if a not in VARIANTS and a != "--variants"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(lines[-1][len("RESULT "):])
    print(f"\nprefer step vs sft step and TRL DPOTrainer ({args.device}; hidden {args.hidden}, {args.layers} layers, "
          f"vocabulary {args.vocab_size}; {args.pairs} pairs, prompt {args.prompt_length}, answers "
          f"{args.answer_length}/{args.answer_length * 3 // 4})\n")
    print(f"{'variant':14} {'tokens/s':>10} {'s/step':>8} {'peak MB':>9} {'of which steps':>15}")
    for name, r in results.items():
        print(f"{name:14} {r['tokens_per_s']:10.0f} {r['s_per_step']:8.3f} {r['peak_mb']:9.1f} {r['step_mb']:15.1f}")
    if "prefer" in results and "sft" in results:
        ratio = results["prefer"]["peak_mb"] / max(1e-9, results["sft"]["peak_mb"])
        print(f"\nprefer / sft peak memory: {ratio:.2f}x (target <= 1.3x)")
        print("RESULT " + json.dumps({"benchmark": "prefer", "figure": "peak memory (MiB) vs an sft step",
                                      "ours": results["prefer"]["peak_mb"], "baseline": results["sft"]["peak_mb"],
                                      "baseline_name": "sft step on the chosen rows"}))
    if "prefer" in results and "prefer-cached" in results:
        cached, plain = results["prefer-cached"]["s_per_step"], results["prefer"]["s_per_step"]
        print(f"prefer step with / without precomputed reference: {cached:.3f} / {plain:.3f} s ({plain / cached:.2f}x)")
        print("RESULT " + json.dumps({"benchmark": "prefer", "figure": "s/step, precomputed reference",
                                      "ours": cached, "baseline": plain,
                                      "baseline_name": "reference forward at every step"}))
    if "prefer" in results and "trl-dpo" in results:
        speed = results["prefer"]["tokens_per_s"] / results["trl-dpo"]["tokens_per_s"]
        memory = results["prefer"]["peak_mb"] / max(1e-9, results["trl-dpo"]["peak_mb"])
        print(f"prefer / TRL DPOTrainer: {speed:.2f}x tokens/s, {memory:.2f}x peak memory")
        for figure, key in (("tokens/s", "tokens_per_s"), ("peak memory (MiB)", "peak_mb")):
            print("RESULT " + json.dumps({"benchmark": "prefer", "figure": figure, "ours": results["prefer"][key],
                                          "baseline": results["trl-dpo"][key], "baseline_name": "TRL DPOTrainer"}))
    return results


if __name__ == "__main__":
    main()
