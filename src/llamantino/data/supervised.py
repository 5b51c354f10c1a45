"""Supervised examples: records -> rendered prompt -> token ids with a loss mask.

Shared by chat fine-tuning (`sft`), instruction tuning (`instruct`) and `preview`, so
what the preview shows is exactly what the trainer computes its loss on.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import Rendered
from llamantino.data.records import CONVERSATION_DATA_FORMATS, INSTRUCTION_DATA_FORMATS, to_conversation, to_instruction
from llamantino.models.loss import IGNORE


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render_record(record: dict, fmt: str, prompt, where: str) -> Rendered:
    """Render one source record in a resolved prompt format (`prompts.prompt_format`): a
    conversation with a chat format, an instruction with an instruction or chat format."""
    if fmt in INSTRUCTION_DATA_FORMATS:
        ins = to_instruction(record, fmt, where)
        return prompt.render_instruction(ins["instruction"], ins["input"], ins["output"], where=where)
    if prompt.chat_template is None:
        raise LlamantinoError(f"{where}: format {fmt} is not an instruction record; {prompt.name} needs "
                              f"{', '.join(INSTRUCTION_DATA_FORMATS)}")
    if fmt in CONVERSATION_DATA_FORMATS:
        return prompt.render_conversation(to_conversation(record, fmt, where), where=where)
    raise LlamantinoError(f"{where}: format {fmt} is not a conversation; {prompt.name} needs "
                          f"{' or '.join(CONVERSATION_DATA_FORMATS)} (or an instruction record)")


def encode(tokenizer, rendered: Rendered, max_length: int | None = None) -> Example:
    """Tokenize the rendered text as one string; a token carries loss when it starts inside
    a trained span. A plain-text prompt (Alpaca) gets the tokenizer's BOS in front when the
    tokenizer adds one itself; chat formats keep exactly the BOS their template writes.
    """
    from llamantino.models.modeling import adds_bos

    text = rendered.text
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = tokenizer.bos_token_id
    if rendered.add_bos and adds_bos(tokenizer) and not (ids and ids[0] == bos):
        ids.insert(0, bos)
        # The inserted BOS covers no characters: it is never trained.
        offsets.insert(0, (-1, -1))
    labels = []
    spans = rendered.trained
    for tok, (start, end) in zip(ids, offsets):
        inside = start >= 0 and any(s <= start < e for s, e in spans)
        labels.append(tok if inside else IGNORE)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    return Example(ids, labels, truncated)


def trained_char_spans(tokenizer, example: Example) -> list[tuple[str, bool]]:
    """(token text, trained?) pieces for display, joined runs of equal status."""
    pieces: list[tuple[str, bool]] = []
    for tok, lab in zip(example.input_ids, example.labels):
        piece = tokenizer.decode([tok], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        flag = lab != IGNORE
        if pieces and pieces[-1][1] == flag:
            pieces[-1] = (pieces[-1][0] + piece, flag)
        else:
            pieces.append((piece, flag))
    return pieces
