"""Text generation shared by `chat` and evaluation: batched, greedy or sampled, stopping at the
end of an answer.

A model stops on any of its generation config's EOS ids (Llama 3 Instruct: <|end_of_text|>,
<|eom_id|>, <|eot_id|>; Gemma: <eos>, <end_of_turn>; Phi-3: <|endoftext|>, <|end|>, ...), the
tokenizer's EOS and the prompt format's end-of-turn token: a Llama 3 base tokenizer's EOS is
<|end_of_text|>, but a model trained on its chat template ends its answers with <|eot_id|>.
"""

from __future__ import annotations

import torch

from llamantino.core.errors import LlamantinoError


def encode_prompt(tokenizer, prompt: str, add_bos: bool = True) -> list[int]:
    """Token ids of a rendered prompt. A plain-text prompt (`add_bos`) gets the tokenizer's BOS in
    front when the tokenizer adds one itself; a chat template's prompt carries its own."""
    from llamantino.models.modeling import adds_bos

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if add_bos and adds_bos(tokenizer) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def stop_token_ids(model, tokenizer, stop_tokens=()) -> list[int]:
    """The union of the model's generation-config EOS ids, the tokenizer's EOS and `stop_tokens`."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    ids.append(tokenizer.eos_token_id)
    for token in stop_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise LlamantinoError(f"stop token {token!r} is not a token of the tokenizer")
        ids.append(token_id)
    return sorted({i for i in ids if i is not None})


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256, do_sample: bool = False,
             temperature: float = 0.7, top_p: float = 0.9, batch_size: int = 8, max_prompt_tokens: int = 0,
             streamer=None, seed: int | None = None, add_bos: bool = True, stop_tokens=()) -> list[str]:
    """Answers to `prompts` (rendered text), in order. Greedy unless `do_sample`.

    Prompts are left-padded in batches; generation stops at any of `stop_token_ids`.
    `max_prompt_tokens` keeps the last N tokens of over-long prompts (0: the model's context
    minus the new tokens). A `streamer` (transformers TextStreamer) needs batch_size 1.
    `add_bos`: False for prompts a chat template rendered (they carry their own BOS).
    """
    from llamantino.models.modeling import context_length

    if streamer is not None and batch_size != 1:
        raise LlamantinoError("streaming generation works one prompt at a time (batch_size 1)")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    context = context_length(model.config) or 4096
    limit = max_prompt_tokens or max(1, context - max_new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(model, tokenizer, stop_tokens)
    encoded = [encode_prompt(tokenizer, p, add_bos)[-limit:] for p in prompts]
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
                      eos_token_id=stops, streamer=streamer)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        for row, i in enumerate(chunk):
            new = out[row, width:]
            answers[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return answers
