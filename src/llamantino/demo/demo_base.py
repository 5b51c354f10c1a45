"""A small stand-in for LLaMA 2 that the demo and the tests can build offline.

It is a real `LlamaForCausalLM` with a byte-level BPE tokenizer, trained briefly on
English text, saved with `save_pretrained`: every later stage loads it exactly as it
would load `meta-llama/Llama-2-7b-hf`. Like LLaMA 2, its tokenizer is learnt on English,
has `<unk>`, `<s>`, `</s>` and no padding token, and adds `<s>` in front of every text.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).parents[1] / "assets"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


KIND = "demo_base"

@dataclasses.dataclass
class Config:
    output: str = setting("", "folder to save the model and tokenizer in")
    train_text: list[str] = setting([str(ASSETS_DIR / "demo" / "en_train.txt")],
                                    "English text files (blank-line-separated paragraphs) to train on", path_input=True)
    tokenizer_text: list[str] = setting([], "text files to learn the tokenizer from (default: train_text)", path_input=True)
    vocab_size: int = setting(4096, "BPE vocabulary size", minimum=256)
    hidden_size: int = setting(256, "model width", minimum=8)
    intermediate_size: int = setting(688, "MLP width", minimum=1)
    num_layers: int = setting(4, "decoder layers", minimum=1)
    num_heads: int = setting(4, "attention heads", minimum=1)
    max_position_embeddings: int = setting(1024, "context length", minimum=2)
    seq_length: int = setting(128, "training sequence length", minimum=2)
    batch_size: int = setting(8, "sequences per step", minimum=1)
    steps: int = setting(150, "optimizer steps", minimum=1)
    learning_rate: float = setting(3e-3, "peak learning rate (cosine decay, 10% warmup)", minimum=0)
    seed: int = setting(0, "random seed", minimum=0)
    threads: int = setting(0, "torch CPU threads (0: torch's default)", fingerprint=False, minimum=0)

    def validate(self, source):
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if self.hidden_size % self.num_heads:
            raise LlamantinoError(f"{source}: hidden_size must be a multiple of num_heads")


def read_paragraphs(paths) -> list[str]:
    from llamantino.data.records import iter_documents

    return [text for _, text in iter_documents(paths)]


def build_tokenizer(texts: list[str], vocab_size: int):
    """A LLaMA-like byte-level BPE tokenizer (fast), learnt on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=1 << 30, clean_up_tokenization_spaces=False)


def build_model(tokenizer, *, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4,
                max_position_embeddings=1024, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def train_lm(model, tokenizer, texts: list[str], *, seq_length: int, batch_size: int, steps: int,
             learning_rate: float, seed: int) -> list[float]:
    """Plain next-token training on the concatenated texts (documents joined by </s>)."""
    import torch

    ids: list[int] = []
    for text in texts:
        ids.extend([tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
                   + [tokenizer.eos_token_id])
    n_seq = len(ids) // seq_length
    if n_seq < 1:
        raise LlamantinoError(f"training text too short: {len(ids)} tokens for sequences of {seq_length}")
    data = torch.tensor(ids[: n_seq * seq_length]).view(n_seq, seq_length)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, steps // 10)

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses = []
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(n_seq))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch = data[order[:batch_size]]
        del order[:batch_size]
        out = model(input_ids=batch, labels=batch, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
        if step % 25 == 0 or step == steps - 1:
            log.info("demo base step %d/%d loss %.3f", step + 1, steps, losses[-1])
    model.eval()
    return losses


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    import torch

    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    texts = read_paragraphs(cfg.train_text)
    tok_texts = read_paragraphs(cfg.tokenizer_text) if cfg.tokenizer_text else texts
    tokenizer = build_tokenizer(tok_texts, cfg.vocab_size)
    model = build_model(tokenizer, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                        num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                        max_position_embeddings=cfg.max_position_embeddings, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("demo base: %.1fM parameters, vocabulary %d", n_params / 1e6, len(tokenizer))
    losses = train_lm(model, tokenizer, texts, seq_length=cfg.seq_length, batch_size=cfg.batch_size,
                      steps=cfg.steps, learning_rate=cfg.learning_rate, seed=cfg.seed)
    metrics = {"parameters": n_params, "vocab_size": len(tokenizer), "first_loss": losses[0],
               "final_loss": sum(losses[-10:]) / len(losses[-10:]), "seconds": round(time.time() - t0, 1)}
    with atomic_dir(cfg.output) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs(cfg.train_text), metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"params_M": round(metrics["parameters"] / 1e6, 2),
                         "train_loss": round(metrics["final_loss"], 3)}, "metrics": metrics}
