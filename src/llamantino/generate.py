"""Text generation shared by `chat` and evaluation: batched, greedy or sampled, stopping at EOS."""

from __future__ import annotations

import torch

from llamantino.errors import LlamantinoError


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a rendered prompt; `<s>` is added unless the prompt starts with it."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, batch_size: int = 8, max_prompt_tokens: int = 0,
             streamer=None, seed: int | None = None) -> list[str]:
    """Answers to `prompts` (rendered text), in order. Greedy unless `do_sample`.

    Prompts are left-padded in batches; generation stops at EOS. `max_prompt_tokens`
    keeps the last N tokens of over-long prompts (0: the model's context minus the new
    tokens). A `streamer` (transformers TextStreamer) needs batch_size 1.
    """
    if streamer is not None and batch_size != 1:
        raise LlamantinoError("streaming generation works one prompt at a time (batch_size 1)")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", 0) or 4096
    limit = max_prompt_tokens or max(1, context - max_new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_prompt(tokenizer, p)[-limit:] for p in prompts]
    answers: list[str] = [""] * len(prompts)
    # Similar lengths together: less padding.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = encoded[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id, streamer=streamer)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        for row, i in enumerate(chunk):
            new = out[row, width:]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return answers
