"""Packing token sequences into full rows without cross-document attention.

Each row is `max_length` tokens holding several documents (or conversations) back to
back. Position ids restart at 0 at every document start; transformers reads that as
packed sequences and gives each document a block-diagonal causal mask (with `use_cache=False`),
so no document attends to its neighbours. The token after a boundary is never a target
(label `IGNORE`), so no document is asked to predict the next one's first token.

Two packers:
* `DocumentPacker` (continued pretraining): documents as `<s> text </s>`, rows filled
  completely; a document longer than the room left continues at the start of the next
  row (its continuation restarts positions at 0). Nothing is dropped, nothing padded.
  The boundary tokens are the base model's: its BOS when its tokenizer adds one (none for
  Qwen), and its end-of-text token (`modeling.document_end_token`: <|end_of_text|> for
  Llama 3, <|endoftext|> for Qwen and Phi-3, </s>, <eos>), which for Instruct tokenizers is
  not their `eos_token` (the end-of-turn token, <|eot_id|> or <|im_end|>).
* `ExamplePacker` (supervised): examples with their own loss masks are never split; a
  row is closed (padded) when the next example does not fit. Examples longer than a row
  are truncated by the encoder before they arrive here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llamantino.models.loss import IGNORE

if TYPE_CHECKING:  # torch loads when rows are collated, not when settings are listed
    import torch


class RowSource:
    """What a training stage feeds the QLoRA loop: packed rows with a resumable position,
    and the figures about its data that go into the run's manifest."""

    def next_row(self) -> "Row | None":  # None: the data are exhausted for good
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def metrics(self) -> dict:
        return {}


@dataclass
class Row:
    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)

    def add(self, ids, labels, start_position: int = 0, first_is_target: bool = False):
        self.input_ids.extend(ids)
        lab = list(labels)
        if lab and not first_is_target:
            lab[0] = IGNORE  # nothing before it in this segment predicts it
        self.labels.extend(lab)
        self.position_ids.extend(range(start_position, start_position + len(ids)))

    def __len__(self):
        return len(self.input_ids)


@dataclass
class Batch:
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    real_tokens: int       # positions holding data (not padding)
    target_tokens: int     # positions with a loss target

    @property
    def positions(self) -> int:
        return self.input_ids.numel()


def collate(rows: list[Row], max_length: int, pad_id: int) -> Batch:
    import torch

    n = len(rows)
    input_ids = torch.full((n, max_length), pad_id, dtype=torch.long)
    labels = torch.full((n, max_length), IGNORE, dtype=torch.long)
    # Padding gets its own restarting positions, so it forms a separate "document".
    position_ids = torch.arange(max_length).repeat(n, 1)
    real = 0
    for i, row in enumerate(rows):
        k = len(row)
        input_ids[i, :k] = torch.tensor(row.input_ids)
        labels[i, :k] = torch.tensor(row.labels)
        position_ids[i, :k] = torch.tensor(row.position_ids)
        if k < max_length:
            position_ids[i, k:] = torch.arange(max_length - k)
        real += k
    return Batch(input_ids, labels, position_ids, real, int((labels != IGNORE).sum()))


class DocumentPacker:
    """Documents -> full rows of `max_length` tokens (continued pretraining)."""

    def __init__(self, tokenizer, max_length: int, end_token: str | None = None):
        from llamantino.models.modeling import adds_bos, document_end_token

        self.tokenizer = tokenizer
        self.max_length = max_length
        self.bos = tokenizer.bos_token_id if adds_bos(tokenizer) else None
        self.eos = tokenizer.convert_tokens_to_ids(end_token or document_end_token(tokenizer))
        # Tokens of the current document not yet placed in a row (saved in checkpoints).
        self.pending: list[int] = []
        self.pending_position = 0

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        head = [self.bos] if self.bos is not None else []
        return head + ids + [self.eos]

    def state_dict(self) -> dict:
        return {"pending": list(self.pending), "pending_position": self.pending_position}

    def load_state_dict(self, state: dict) -> None:
        self.pending = list(state["pending"])
        self.pending_position = int(state["pending_position"])

    def next_row(self, documents) -> Row | None:
        """Fill one row from pending tokens, then from the `documents` iterator."""
        row = Row()
        while len(row) < self.max_length:
            if not self.pending:
                text = next(documents, None)
                if text is None:
                    break
                self.pending = self.encode(text)
                self.pending_position = 0
                if len(self.pending) <= (2 if self.bos is not None else 1):
                    self.pending = []  # empty document: only <s></s>
                    continue
            room = self.max_length - len(row)
            piece, self.pending = self.pending[:room], self.pending[room:]
            # A fresh document starts with <s>, which is never a target. A continuation at
            # the start of a row has nothing before it: its first token is not a target either.
            row.add(piece, piece, start_position=0)
            self.pending_position += len(piece)
        return row if len(row) else None


class ExamplePacker:
    """Supervised examples (ids + labels) -> rows; an example is never split."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.pending = None  # an example that did not fit in the previous row

    def state_dict(self) -> dict:
        return {"pending": None if self.pending is None else [self.pending.input_ids, self.pending.labels]}

    def load_state_dict(self, state: dict) -> None:
        from llamantino.data.supervised import Example

        self.pending = None if state["pending"] is None else Example(*state["pending"])

    def next_row(self, examples) -> Row | None:
        row = Row()
        while True:
            example = self.pending if self.pending is not None else next(examples, None)
            self.pending = None
            if example is None:
                break
            if len(row) + len(example.input_ids) > self.max_length:
                self.pending = example
                break
            # Supervised labels already mark the first token (<s>) as no target.
            row.add(example.input_ids, example.labels, first_is_target=True)
        return row if len(row) else None
