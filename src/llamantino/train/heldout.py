"""Held-out bits per byte while a model trains: language gained and language forgotten.

`adapt --eval-data it=heldout_it.txt en=heldout_en.txt --eval-steps 100` scores every
set every 100 steps and at the end, with the computation of `eval bpb` (overlapping
windows of the run's max length, half a window apart), and logs `eval_<NAME>_bpb` to
metrics.csv, TensorBoard and the loss plot. Under torchrun each rank scores its share of
the windows and the sums are added up.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from llamantino.core.errors import LlamantinoError

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class HeldOutSet:
    name: str
    source: str
    texts: list[str]

    @property
    def column(self) -> str:
        return f"eval_{self.name}_bpb"


def parse_sets(specs: list[str], where: str = "setting 'eval_data'") -> list[tuple[str, str]]:
    """`NAME=PATH` entries -> [(name, path)], names plain words and unique."""
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path or not _NAME.match(name):
            raise LlamantinoError(f"{where}: {spec!r}: expected NAME=PATH, e.g. it=heldout_it.txt "
                                  "(NAME: letters, digits, _)")
        if name in (n for n, _ in out):
            raise LlamantinoError(f"{where}: the name '{name}' is given twice")
        out.append((name, path))
    return out


def load_sets(specs: list[str], *, text_field: str = "text", max_documents: int = 0) -> list[HeldOutSet]:
    """Read every held-out set once (they are small): local files, folders, parquet or hub:."""
    from llamantino.data.streaming import DocumentStream, expand_sources

    sets = []
    for name, path in parse_sets(specs):
        try:
            stream = DocumentStream(expand_sources([path]), text_field=text_field, cycle=False)
            texts = (text for text in stream if text.strip())
            texts = list(itertools.islice(texts, max_documents) if max_documents else texts)
        except LlamantinoError as exc:
            raise LlamantinoError(f"held-out set '{name}': {exc}") from None
        if not texts:
            raise LlamantinoError(f"{path}: held-out set '{name}' holds no text")
        sets.append(HeldOutSet(name, path, texts))
    return sets


def evaluate(model, tokenizer, sets: list[HeldOutSet], *, max_length: int, batch_size: int = 8,
             rank: int = 0, world: int = 1) -> dict:
    """{eval_<NAME>_bpb: value} for every set; the model is left in training mode."""
    from llamantino.evaluate.bpb import compute_bpb

    out = {}
    try:
        for held in sets:
            result = compute_bpb(model, tokenizer, held.texts, max_length=max_length, stride=max(1, max_length // 2),
                                 batch_size=batch_size, rank=rank, world=world)
            out[held.column] = result["bits_per_byte"]
    finally:
        model.train()
    return out
