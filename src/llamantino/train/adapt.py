"""Language adaptation: QLoRA continued pretraining on cleaned target-language text.

The heart of the paper (its language-adapted models): LLaMA 2 (base or chat) in 4-bit NF4,
LoRA r=64 / alpha=16 / dropout=0.1 on every linear layer of the decoder blocks, trained on
clean_mc4_it streamed and packed on the fly. The result is a PEFT adapter that
`PeftModel.from_pretrained` loads.

    llamantino adapt --model meta-llama/Llama-2-7b-hf --data hub:gsarti/clean_mc4_it?config=medium \
        --output runs/7b-ita
    llamantino adapt --recipe LLaMAntino-2-7b-hf-ITA --max-steps 100 --output runs/try
"""

from __future__ import annotations

import dataclasses
import logging

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.packing import RowSource
from llamantino.train.settings import QLoraSettings

KIND = "adapt"
RESUMABLE = True  # the command takes --resume
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config(QLoraSettings):
    data: list[str | dict] = setting([], "cleaned text: JSON lines / folders / parquet / .txt, or hub:NAME?config=C&split=S "
                                     "(in a recipe also a list of {path, weight})", path_input=True)
    data_weights: list[float] = setting([], "weighted mixture: share of the training tokens from each 'data' entry, "
                                        "in order (default: the entries read one after the other)", minimum=0.0)
    cycle: bool = setting(True, "read a data source again when it runs out (off: a mixture goes on without it, "
                          "a single stream ends)")
    check_data: bool = setting(True, "read every local data file once in a background process, so that a bad byte "
                               "or record far ahead stops the run early", fingerprint=False)
    text_field: str = setting("text", "field holding the document text")
    skip_bad_lines: bool = setting(False, "count and skip malformed JSON lines instead of stopping")
    document_end: str = setting("auto", "token that ends each document; auto: the base model's end of text "
                                        "(<|end_of_text|>, <|endoftext|>, </s>, <eos>; not an Instruct tokenizer's "
                                        "end-of-turn EOS)")

    def validate(self, source):
        self.check_common(source)
        self._split_weighted_entries(source)
        if not self.data:
            raise LlamantinoError(f"{source}: no data given (setting 'data')")
        if self.data_weights:
            if len(self.data_weights) != len(self.data):
                raise LlamantinoError(f"{source}: {len(self.data_weights)} data_weights for {len(self.data)} data "
                                      "sources; give one weight per entry of 'data'")
            if sum(self.data_weights) <= 0:
                raise LlamantinoError(f"{source}: the data_weights sum to zero; give at least one source a weight")
            repeated = sorted({d for d in self.data if self.data.count(d) > 1})
            if repeated:
                raise LlamantinoError(f"{source}: data source {repeated[0]} is given twice; give it once, with the "
                                      "sum of the weights")

    def _split_weighted_entries(self, source):
        """A recipe's `data: [{path: P, weight: W}, ...]` -> `data` and `data_weights`."""
        if not any(isinstance(entry, dict) for entry in self.data):
            self.data = [str(entry) for entry in self.data]
            return
        if self.data_weights:
            raise LlamantinoError(f"{source}: weights given both in 'data' entries and in 'data_weights'; use one")
        paths, weights = [], []
        for number, entry in enumerate(self.data, start=1):
            where = f"{source}: setting 'data', entry {number}"
            if not isinstance(entry, dict) or set(entry) != {"path", "weight"}:
                raise LlamantinoError(f"{where}: expected {{path, weight}} like the other entries, got {entry!r}")
            weight = entry["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 \
                    or weight == float("inf"):
                raise LlamantinoError(f"{where}: weight {weight!r} must be a number, zero or more")
            paths.append(str(entry["path"]))
            weights.append(float(weight))
        self.data, self.data_weights = paths, weights


class DocumentRows(RowSource):
    """Documents of one rank, packed into full rows (see packing.DocumentPacker). A corpus
    check running ahead (streaming.CorpusCheck) stops the rows at the first error it finds."""

    def __init__(self, stream, packer, check=None):
        self.stream, self.packer, self.check = stream, packer, check
        self.documents = iter(stream)

    def next_row(self):
        if self.check is not None:
            self.check.raise_if_failed()
        return self.packer.next_row(self.documents)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.packer.load_state_dict(state["packer"])
        self.documents = iter(self.stream)

    def metrics(self) -> dict:
        """Figures for the manifest; called on every rank at the same point (they gather)."""
        from llamantino.core.distributed import all_gather_object
        from llamantino.data.streaming import MixtureStream

        if self.check is not None:
            if not self.check.done():
                log.info("waiting for the corpus check to read the rest of the data")
            self.check.raise_if_failed(wait=True)
        if not isinstance(self.stream, MixtureStream):
            return {"documents_read": self.stream.count, "data_epochs": self.stream.epoch}
        # Every rank mixes its own stripe: the counts add up over ranks.
        names = self.stream.names
        counts = all_gather_object([self.stream.tokens_per_source(), self.stream.documents])
        tokens = [sum(rank[0][i] for rank in counts) for i in range(len(names))]
        documents = [sum(rank[1][i] for rank in counts) for i in range(len(names))]
        return {"documents_read": sum(documents), "tokens_per_source": dict(zip(names, tokens)),
                "documents_per_source": dict(zip(names, documents)),
                "data_epochs_per_source": {name: s.epoch for name, s in zip(names, self.stream.streams)}}


def check_inputs(cfg: Config):
    """Everything that can be checked before a single file is written."""
    from llamantino.models.modeling import check_max_length, load_config, load_tokenizer

    config = load_config(cfg.model)
    check_max_length(config, cfg.max_length, cfg.model)
    tokenizer = load_tokenizer(cfg.model, tokenizer=cfg.tokenizer)
    end = getattr(cfg, "document_end", "auto")
    if end != "auto" and tokenizer.convert_tokens_to_ids(end) in (None, tokenizer.unk_token_id):
        raise LlamantinoError(f"document_end {end}: not a token of {cfg.tokenizer or cfg.model}'s tokenizer")
    return tokenizer


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.data.packing import DocumentPacker
    from llamantino.data.streaming import CorpusCheck, DocumentStream, MixtureStream, check_yields_text, expand_sources

    tokenizer = check_inputs(cfg)
    sources = expand_sources(cfg.data)
    parts = [expand_sources([entry]) for entry in cfg.data] if cfg.data_weights else []

    def make_source(rank, world):
        end = None if cfg.document_end == "auto" else cfg.document_end
        packer = DocumentPacker(tokenizer, cfg.max_length, end)
        options = {"text_field": cfg.text_field, "rank": rank, "world": world, "skip_bad_lines": cfg.skip_bad_lines,
                   "cycle": cfg.cycle}
        if cfg.data_weights:
            streams = [DocumentStream(part, name=entry, **options) for entry, part in zip(cfg.data, parts)]
            for stream, weight in zip(streams, cfg.data_weights):
                if weight > 0:
                    check_yields_text(stream, stream.name)
            stream = MixtureStream(streams, cfg.data_weights, names=cfg.data, seed=cfg.seed, rank=rank,
                                   tokens_placed=lambda: packer.pending_position)
        else:
            stream = DocumentStream(sources, **options)
            check_yields_text(stream, ", ".join(sources))
        check = CorpusCheck(sources, text_field=cfg.text_field, skip_bad_lines=cfg.skip_bad_lines) \
            if cfg.check_data and rank == 0 else None
        return DocumentRows(stream, packer, check)

    from llamantino.train.qlora import train

    return train(KIND, cfg, make_source, overwrite=overwrite, resume=resume, tokenizer=tokenizer, inputs=sources)
