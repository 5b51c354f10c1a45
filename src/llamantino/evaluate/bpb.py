"""Bits per byte: the tokenizer-independent measure of how well a model knows a language.

For each document: prepend BOS (for a tokenizer that adds none, such as Qwen's, the end-of-text
token that separates documents), sum the negative log-likelihood (natural log) of every
document token given the tokens before it. Documents longer than the context are scored
in overlapping windows: each window covers `max_length` tokens, advances by `stride`,
and scores only the tokens the previous window did not, so every token is scored once
with at least `max_length - stride` tokens of context.

    bits_per_byte = sum(NLL) / (ln 2 * sum of UTF-8 bytes of the documents)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.models.weight_files import DTYPES

KIND = "bpb"
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder, hub name or .gguf file", path_input=True)
    adapter: str = setting("", "PEFT adapter to apply on top of the model", path_input=True)
    data: list[str] = setting([], "JSON lines with `text`, or .txt files (one document per blank-line paragraph)", path_input=True)
    output: str = setting("", "where to write the result: a .json file, or a folder (gets manifest.json)")
    max_length: int = setting(0, "window length in tokens (0: the model's context length)", minimum=0)
    stride: int = setting(0, "window advance for long documents (0: half the window)", minimum=0)
    batch_size: int = setting(8, "windows per forward pass", fingerprint=False, minimum=1)
    chunk_tokens: int = setting(1024, "the output layer and log-softmax run on this many positions at a time "
                                      "(never a whole window's full-vocabulary logits)", fingerprint=False, minimum=1)
    dtype: str = setting("float32", "dtype to run the model in", choices=DTYPES)
    max_documents: int = setting(0, "score only the first N documents (0: all)", minimum=0)
    progress: bool = setting(True, "show a progress bar", fingerprint=False)

    def validate(self, source):
        if not self.model:
            raise LlamantinoError(f"{source}: setting 'model' is required")
        if not self.data:
            raise LlamantinoError(f"{source}: no data given")


def windows(n_tokens: int, max_length: int, stride: int):
    """(begin, end, first_scored) of each window over n_tokens positions (BOS at 0).

    Positions first_scored..end-1 are scored, each predicted from the positions before it.
    """
    begin, prev_end = 0, 1
    while prev_end < n_tokens:
        end = min(begin + max_length, n_tokens)
        yield begin, end, prev_end
        prev_end = end
        begin += stride


def compute_bpb(model, tokenizer, texts: list[str], *, max_length: int, stride: int, batch_size: int = 8,
                progress: bool = False, chunk_tokens: int = 1024, rank: int = 0, world: int = 1) -> dict:
    """The bits-per-byte report of `model` on `texts` (see module docstring). With `world` > 1
    (torchrun) each rank scores every world-th batch and the sums are added up."""
    import torch
    from tqdm.auto import tqdm

    from llamantino.models.loss import IGNORE

    if stride <= 0 or stride > max_length - 1:
        raise LlamantinoError(f"stride must be between 1 and max_length - 1 ({max_length - 1}), got {stride}")
    start_id = document_start_id(tokenizer)
    device = next(model.parameters()).device
    jobs = []  # (input ids of the window, index of the first scored position within it)
    total_tokens = total_bytes = 0
    for text in texts:
        ids = [start_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        total_tokens += len(ids) - 1
        total_bytes += len(text.encode("utf-8"))
        for begin, end, first in windows(len(ids), max_length, stride):
            jobs.append((ids[begin:end], first - begin))
    # Longest windows first: batches pad less.
    order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][0]))
    total_nll = 0.0
    model.eval()
    nll_sum = NllSum(model, chunk_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.no_grad():
        for b in tqdm(range(rank * batch_size, len(order), batch_size * world), disable=not progress, desc="bpb",
                      unit="batch"):
            batch = [jobs[i] for i in order[b: b + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            for row, (ids, first) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                targets[row, first: len(ids)] = torch.tensor(ids[first:])
            total_nll += nll_sum(input_ids.to(device), attention.to(device), targets.to(device))
    if world > 1:
        from llamantino.core.distributed import all_reduce_sum

        total_nll = all_reduce_sum(total_nll, device)
    if total_bytes == 0 or total_tokens == 0:
        raise LlamantinoError("no text to score: the documents are empty")
    return {
        "bits_per_byte": total_nll / (math.log(2) * total_bytes),
        "nll_per_token": total_nll / total_tokens,
        "perplexity": math.exp(total_nll / total_tokens),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "documents": len(texts),
        "max_length": max_length,
        "stride": stride,
        "windows": len(jobs),
    }


def document_start_id(tokenizer) -> int:
    """What a document is scored after: the tokenizer's BOS when it adds one, else the token that
    ends the previous document."""
    from llamantino.models.modeling import adds_bos, document_end_token

    if adds_bos(tokenizer):
        return tokenizer.bos_token_id
    return tokenizer.convert_tokens_to_ids(document_end_token(tokenizer))


class NllSum:
    """Summed negative log-likelihood of the targets (`IGNORE`: none) of a padded batch, the output
    layer and log-softmax taken `chunk` positions at a time on positions with a target only: a
    window of 8k tokens with a 128k vocabulary never holds its 4 GB of float32 logits at once.
    A model whose logits are not its output layer's (`models.loss.loss_path`) is scored from its
    own logits, and the log says so."""

    def __init__(self, model, chunk: int):
        from llamantino.models.loss import loss_path

        self.model = model
        self.causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.path = loss_path(self.causal_lm, chunk)

    @property
    def head(self):
        """The output head the chunks go through; None: the model's own logits."""
        return self.path.head

    def __call__(self, input_ids, attention, targets) -> float:
        from llamantino.models.loss import chunk_sums, summed_cross_entropy, target_positions

        if self.head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            return float(summed_cross_entropy(*target_positions(logits, targets)).double())
        hidden = self.causal_lm.model(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
        # Each chunk's float32 sum is added in double precision.
        return sum(float(part.double()) for part in chunk_sums(*target_positions(hidden, targets), self.head,
                                                                 self.path.chunk))


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_write_json
    from llamantino.core.manifest import (check_output_location, describe_inputs, prepare_output, read_manifest,
                                          run_identity, same_run, write_manifest)
    from llamantino.data.records import iter_documents
    from llamantino.models.modeling import context_length, load_config, load_tokenizer, load_with_adapter

    to_file = cfg.output.endswith(".json")
    if cfg.output and not to_file:
        if prepare_output(cfg.output, KIND, cfg, overwrite=overwrite) == "complete":
            metrics = read_manifest(cfg.output)["metrics"]
            return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics}
    elif to_file:
        check_output_location(cfg.output, cfg)
    if to_file and Path(cfg.output).exists():
        old = _own_result(Path(cfg.output))
        if same_run(old, KIND, cfg):
            return {"status": "skipped (done)", "headline": _headline(old), "metrics": old}
        if not overwrite:
            raise LlamantinoError(f"{cfg.output}: holds a different result; pass --overwrite to replace it")
    # Documents with the data entry they come from (several entries: a figure for each too).
    found = [(entry, text) for entry in cfg.data for _, text in iter_documents([entry])]
    if cfg.max_documents:
        found = found[: cfg.max_documents]
    texts = [text for _, text in found]
    if not texts:
        raise LlamantinoError(f"{', '.join(cfg.data)}: no documents")
    config = load_config(cfg.model)
    context = context_length(config) or 2048
    max_length = cfg.max_length or context
    if max_length > context:
        raise LlamantinoError(f"{cfg.model}: max_length {max_length} exceeds the model's context of {context}")
    stride = cfg.stride or max(1, max_length // 2)
    tokenizer = load_tokenizer(cfg.model)
    model = load_with_adapter(cfg.model, cfg.adapter, dtype=cfg.dtype)
    score = dict(max_length=max_length, stride=stride, batch_size=cfg.batch_size,
                 progress=cfg.progress and sys.stderr.isatty(), chunk_tokens=cfg.chunk_tokens)
    entries = list(dict.fromkeys(entry for entry, _ in found))
    if len(entries) == 1:
        result = compute_bpb(model, tokenizer, texts, **score)
    else:
        by_entry = {entry: compute_bpb(model, tokenizer, [t for e, t in found if e == entry], **score)
                    for entry in entries}
        result = combined(list(by_entry.values()))
        result["by_data"] = {Path(entry).name: {k: r[k] for k in ("bits_per_byte", "tokens", "bytes", "documents")}
                             for entry, r in by_entry.items()}
    result.update({"model": cfg.model, "adapter": cfg.adapter, "data": list(cfg.data)})
    if to_file:
        atomic_write_json(cfg.output, {**result, **run_identity(KIND, cfg)})
    elif cfg.output:
        write_manifest(cfg.output, KIND, cfg, inputs=describe_inputs(cfg.data), metrics=result)
    return {"status": "done", "headline": _headline(result), "metrics": result}


def _own_result(path: Path) -> dict:
    """A result file this stage wrote (a JSON object naming this stage, its fingerprint and
    settings); anything else is the user's file, never replaced."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        old = exc
    if not (isinstance(old, dict) and old.get("stage") == KIND and isinstance(old.get("fingerprint"), str)
            and isinstance(old.get("settings"), dict)):
        raise LlamantinoError(f"{path}: exists and is not a result of llamantino eval bpb; it is never replaced: "
                              "choose another output")
    return old


def combined(results: list[dict]) -> dict:
    """The report of several sets scored apart, as if scored together (sums of NLL, tokens, bytes)."""
    nll = sum(r["nll_per_token"] * r["tokens"] for r in results)
    tokens, nbytes = sum(r["tokens"] for r in results), sum(r["bytes"] for r in results)
    return {**results[0], "bits_per_byte": nll / (math.log(2) * nbytes), "nll_per_token": nll / tokens,
            "perplexity": math.exp(nll / tokens), "tokens": tokens, "bytes": nbytes,
            "documents": sum(r["documents"] for r in results), "windows": sum(r["windows"] for r in results)}


def _headline(m: dict) -> dict:
    if m.get("by_data"):
        return {f"bpb {name}": round(r["bits_per_byte"], 4) for name, r in m["by_data"].items()}
    return {"bits_per_byte": round(m["bits_per_byte"], 4), "tokens": m["tokens"]}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"data": {"nargs": "*", "metavar": "DATA",
                                                           "help": "text to score (JSON lines or .txt)"}})


def main(args) -> int:
    from llamantino.core.runner import stage_config

    cfg = stage_config(KIND, args, positional=("data",))
    result = run(cfg, overwrite=args.overwrite)
    print(json.dumps(result["metrics"], indent=2, ensure_ascii=False))
    return 0
