"""Language adaptation: QLoRA continued pretraining on cleaned target-language text.

The heart of the paper (SPEC section 1, first rows): LLaMA 2 (base or chat) in 4-bit NF4,
LoRA r=64 / alpha=16 / dropout=0.1 on every linear layer of the decoder blocks, trained on
clean_mc4_it streamed and packed on the fly. The result is a PEFT adapter that
`PeftModel.from_pretrained` loads.

    llamantino adapt --model meta-llama/Llama-2-7b-hf --data hub:gsarti/clean_mc4_it?config=medium \
        --output runs/7b-ita
    llamantino adapt --recipe LLaMAntino-2-7b-hf-ITA --max-steps 100 --output runs/try
"""

from __future__ import annotations

import dataclasses

from llamantino.config import setting
from llamantino.errors import LlamantinoError
from llamantino.packing import RowSource
from llamantino.train_settings import QLoraSettings

KIND = "adapt"
RESUMABLE = True  # the command takes --resume


@dataclasses.dataclass
class Config(QLoraSettings):
    data: list[str] = setting([], "cleaned text: JSON lines / folders / parquet / .txt, or hub:NAME?config=C&split=S", path_input=True)
    text_field: str = setting("text", "field holding the document text")
    skip_bad_lines: bool = setting(False, "count and skip malformed JSON lines instead of stopping")
    document_end: str = setting("auto", "token that ends each document; auto: the base model's end of text "
                                        "(<|end_of_text|>, <|endoftext|>, </s>, <eos>; not an Instruct tokenizer's "
                                        "end-of-turn EOS)")

    def validate(self, source):
        self.check_common(source)
        if not self.data:
            raise LlamantinoError(f"{source}: no data given (setting 'data')")


class DocumentRows(RowSource):
    """Documents of one rank, packed into full rows (see packing.DocumentPacker)."""

    def __init__(self, stream, packer):
        self.stream, self.packer = stream, packer
        self.documents = iter(stream)

    def next_row(self):
        return self.packer.next_row(self.documents)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.packer.load_state_dict(state["packer"])
        self.documents = iter(self.stream)

    def metrics(self) -> dict:
        return {"documents_read": self.stream.count, "data_epochs": self.stream.epoch}


def check_inputs(cfg: Config):
    """Everything that can be checked before a single file is written."""
    from llamantino.modeling import check_max_length, load_config, load_tokenizer

    config = load_config(cfg.model)
    check_max_length(config, cfg.max_length, cfg.model)
    tokenizer = load_tokenizer(cfg.model, tokenizer=cfg.tokenizer)
    end = getattr(cfg, "document_end", "auto")
    if end != "auto" and tokenizer.convert_tokens_to_ids(end) in (None, tokenizer.unk_token_id):
        raise LlamantinoError(f"document_end {end}: not a token of {cfg.tokenizer or cfg.model}'s tokenizer")
    return tokenizer


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.packing import DocumentPacker
    from llamantino.streaming import DocumentStream, expand_sources

    tokenizer = check_inputs(cfg)
    sources = expand_sources(cfg.data)

    def make_source(rank, world):
        stream = DocumentStream(sources, text_field=cfg.text_field, rank=rank, world=world,
                                skip_bad_lines=cfg.skip_bad_lines)
        end = None if cfg.document_end == "auto" else cfg.document_end
        rows = DocumentRows(stream, DocumentPacker(tokenizer, cfg.max_length, end))
        _check_yields_tokens(rows, sources)
        return rows

    from llamantino.qlora import train

    return train(KIND, cfg, make_source, overwrite=overwrite, resume=resume, tokenizer=tokenizer, inputs=sources)


def _check_yields_tokens(rows: DocumentRows, sources) -> None:
    """Fail early on a corpus with no text, without consuming it (a fresh stream is peeked)."""
    from llamantino.streaming import DocumentStream

    probe = DocumentStream(sources, text_field=rows.stream.text_field, rank=rows.stream.rank,
                           world=rows.stream.world, skip_bad_lines=rows.stream.skip_bad_lines)
    for n, text in enumerate(probe):
        if text.strip():
            return
        if n > 10000:
            break
    raise LlamantinoError(f"{', '.join(sources)}: the corpus yields no tokens (all documents are empty)")
