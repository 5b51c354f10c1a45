"""Documents read lazily from local files or hub datasets, with a position to resume from.

Sources: JSON lines (gzipped or not), folders of shards, parquet, plain text (one
document per blank-line paragraph), and hub datasets streamed through `datasets`:

    hub:gsarti/clean_mc4_it?config=medium&split=train
    hub:json?data_files=shards/*.json.gz           (datasets' packaged builders, local files)

Nothing is read ahead: the first document is available at once, whatever the corpus
size. With several ranks, rank r takes documents r, r+W, r+2W... of the same stream, so
ranks see different data without any pre-sharding. `state_dict()` is the position
(source, records consumed, epoch) saved in every checkpoint.
"""

from __future__ import annotations

from typing import Iterator

from llamantino.errors import LlamantinoError
from llamantino.fileio import expand_inputs, iter_jsonl, iter_paragraphs

LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz", ".parquet", ".txt", ".txt.gz")
HUB_PREFIX = "hub:"
HUB_OPTIONS = ("config", "split", "revision", "data_dir", "data_files")


def parse_hub_spec(spec: str) -> dict:
    """`hub:NAME?config=C&split=S&revision=R&data_dir=D&data_files=F` -> load_dataset arguments."""
    from urllib.parse import parse_qs

    from llamantino.config import closest

    body = spec[len(HUB_PREFIX):]
    name, _, query = body.partition("?")
    if not name:
        raise LlamantinoError(f"{spec}: no dataset name; expected hub:NAME?config=C&split=S")
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    for key in options:
        if key not in HUB_OPTIONS:
            raise LlamantinoError(f"{spec}: unknown option '{key}'{closest(key, HUB_OPTIONS)}; "
                                  f"valid: {', '.join(HUB_OPTIONS)}")
    args = {"path": name, "name": None, "split": "train", "streaming": True}
    for key, values in options.items():
        if key == "data_files":
            args["data_files"] = [f for v in values for f in v.split(",") if f]
        elif len(values) > 1:
            raise LlamantinoError(f"{spec}: option '{key}' given {len(values)} times")
        else:
            args["name" if key == "config" else key] = values[0]
    return args


def hub_records(spec: str, start: int = 0):
    """(number, where, record) of a dataset streamed record by record, after the first `start`:
    a corpus of any size is never held or copied."""
    import datasets

    args = parse_hub_spec(spec)
    try:
        stream = datasets.load_dataset(**args)
    except Exception as exc:  # the library raises many kinds; the user needs one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LlamantinoError(f"{spec}: cannot open dataset ({type(exc).__name__}: {message})") from None
    if start:
        stream = stream.skip(start)
    for number, record in enumerate(stream, start=start + 1):
        yield number, f"{spec}: record {number}", record


def parquet_records(path: str, start: int = 0):
    """(number, where, record) of a parquet file's rows after the first `start`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        number = 0
        for batch in handle.iter_batches(batch_size=1024):
            if number + batch.num_rows <= start:
                number += batch.num_rows
                continue
            for record in batch.to_pylist():
                number += 1
                if number > start:
                    yield number, f"{path}: row {number}", record
    except (pa.ArrowException, OSError) as exc:
        raise LlamantinoError(f"{path}: unreadable parquet file ({exc})".replace("\n", " ")) from None


def expand_sources(sources) -> list[str]:
    """Local paths expanded to files (sorted); hub specs kept as they are."""
    out: list[str] = []
    for src in sources:
        if str(src).startswith(HUB_PREFIX):
            parse_hub_spec(str(src))
            out.append(str(src))
        else:
            out.extend(str(p) for p in expand_inputs([src], suffixes=LOCAL_SUFFIXES, what="text"))
    if not out:
        raise LlamantinoError("no data sources given")
    return out


def _records(source: str, text_field: str | None, skip: int, skip_bad_lines: bool):
    """Yield (where, value) for one source after skipping its first `skip` records: the
    `text_field` of each record, or the whole record when `text_field` is None."""
    if source.startswith(HUB_PREFIX) or source.endswith(".parquet"):
        rows = hub_records(source, skip) if source.startswith(HUB_PREFIX) else parquet_records(source, skip)
        for _, where, row in rows:
            if text_field is None:
                yield where, row
            elif text_field not in row:
                raise LlamantinoError(f"{where}: missing field '{text_field}'")
            else:
                yield where, row[text_field]
    elif source.endswith((".txt", ".txt.gz")):
        if text_field is None:
            raise LlamantinoError(f"{source}: plain text holds documents, not records")
        for i, (_, text) in enumerate(iter_paragraphs(source)):
            if i >= skip:
                yield f"{source}: paragraph {i + 1}", text
    else:
        # Records are counted by non-empty line, so skipping needs no JSON parsing.
        seen = 0
        for number, record in iter_jsonl(source, skip_bad_lines=skip_bad_lines):
            if seen >= skip:
                where = f"{source}:{number}"
                if text_field is None:
                    yield where, record
                elif text_field not in record:
                    raise LlamantinoError(f"{where}: missing field '{text_field}'")
                else:
                    yield where, record[text_field]
            seen += 1


class DocumentStream:
    """Iterate the documents of this rank, forever (epochs), with a resumable position.

    Yields the `text_field` of each record, or whole records when `text_field` is None;
    `where` names the file and line of the last one yielded (for error messages).
    """

    def __init__(self, sources, *, text_field: str | None = "text", rank: int = 0, world: int = 1,
                 skip_bad_lines: bool = False):
        self.sources = expand_sources(sources)
        self.text_field = text_field
        self.rank, self.world = rank, world
        self.skip_bad_lines = skip_bad_lines
        # Position: current source, records of it consumed, global document counter, epoch.
        self.source_index = 0
        self.offset = 0
        self.count = 0
        self.epoch = 0
        self.where = ""

    def state_dict(self) -> dict:
        return {"source_index": self.source_index, "offset": self.offset, "count": self.count,
                "epoch": self.epoch, "sources": self.sources, "rank": self.rank, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sources") != self.sources:
            raise LlamantinoError("the checkpoint was made on other data sources; resume with the same data")
        if state.get("world") != self.world:
            raise LlamantinoError(f"the checkpoint was made with {state.get('world')} ranks, this run has "
                                  f"{self.world}; resume with the same number of processes")
        self.source_index, self.offset = state["source_index"], state["offset"]
        self.count, self.epoch = state["count"], state["epoch"]

    def __iter__(self) -> Iterator[str]:
        while True:
            full_pass = self.source_index == 0 and self.offset == 0
            produced_this_epoch = False
            while self.source_index < len(self.sources):
                source = self.sources[self.source_index]
                for where, value in _records(source, self.text_field, self.offset, self.skip_bad_lines):
                    index = self.count
                    self.offset += 1
                    self.count += 1
                    if index % self.world != self.rank:
                        continue
                    if self.text_field is not None and not isinstance(value, str):
                        raise LlamantinoError(f"{where}: field '{self.text_field}' is not a string")
                    self.where = where
                    produced_this_epoch = True
                    yield value
                self.source_index += 1
                self.offset = 0
            if full_pass and not produced_this_epoch:
                raise LlamantinoError(f"{', '.join(self.sources)}: the corpus holds no documents for rank "
                                      f"{self.rank} of {self.world}")
            self.epoch += 1
            self.source_index = 0
