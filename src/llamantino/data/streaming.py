"""Documents read lazily from local files or hub datasets, with a position to resume from.

Sources: JSON lines (gzipped or not), folders of shards, parquet, plain text (one
document per blank-line paragraph), and hub datasets streamed through `datasets`:

    hub:gsarti/clean_mc4_it?config=medium&split=train
    hub:json?data_files=shards/*.json.gz           (datasets' packaged builders, local files)

Nothing is read ahead: the first document is available at once, whatever the corpus
size. With several ranks, rank r takes documents r, r+W, r+2W... of the same stream, so
ranks see different data without any pre-sharding.

`state_dict()` is the position saved in every checkpoint, and resuming reads nothing
twice: JSON lines and text resume at a byte offset (a seek; in a `.gz` file the bytes
before it are decompressed but not parsed), parquet at a row (whole row groups before it
are not read), hub datasets through `IterableDataset.state_dict()` (whole shards before
it are not read).

`MixtureStream` draws documents from several such streams so that each one's share of
the tokens follows its weight; `CorpusCheck` reads the local files of a corpus once in a
background process, so that a bad byte found far ahead stops a run early.
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Iterator

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import HUB_PREFIX, LineStats, expand_inputs, iter_jsonl, iter_paragraphs, parse_hub_spec

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz", ".parquet", ".txt", ".txt.gz")
TEXT_SUFFIXES = (".txt", ".txt.gz")
STATE_FORMAT = 2  # layout of the saved positions (1: records counted from the start of a source)


def open_hub(spec: str):
    """The `datasets.IterableDataset` of a hub spec, streamed (nothing downloaded ahead)."""
    import datasets

    args = parse_hub_spec(spec)
    try:
        return datasets.load_dataset(**args)
    except Exception as exc:  # the library raises many kinds; the user needs one line
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise LlamantinoError(f"{spec}: cannot open dataset ({type(exc).__name__}: {message})") from None


def hub_records(spec: str, start: int = 0):
    """(number, where, record) of a dataset streamed record by record, after the first `start`:
    a corpus of any size is never held or copied."""
    stream = open_hub(spec)
    if start:
        stream = stream.skip(start)
    for number, record in enumerate(stream, start=start + 1):
        yield number, f"{spec}: record {number}", record


def parquet_records(path: str, start: int = 0):
    """(number, where, record) of a parquet file's rows after the first `start`; the row
    groups before `start` are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        number, first_group = 0, 0
        while (first_group < handle.num_row_groups
               and number + handle.metadata.row_group(first_group).num_rows <= start):
            number += handle.metadata.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, handle.num_row_groups))
        for batch in handle.iter_batches(batch_size=1024, row_groups=groups) if groups else ():
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


# ---------------------------------------------------------------------------------------
# One source (file or hub dataset), read from a saved position


class _LocalText:
    """Records of a JSON-lines file, or paragraphs of a text file, from a byte offset."""

    def __init__(self, path: str, position: dict, skip_bad_lines: bool):
        self.path, self.skip_bad_lines = path, skip_bad_lines
        self.stats = LineStats()
        self.stats.line, self.stats.byte = int(position.get("line", 0)), int(position.get("byte", 0))

    def position(self) -> dict:
        return {"line": self.stats.line, "byte": self.stats.byte}

    def __iter__(self):
        start = {"start_line": self.stats.line, "start_byte": self.stats.byte, "stats": self.stats}
        if self.path.endswith(TEXT_SUFFIXES):
            for line, text in iter_paragraphs(self.path, **start):
                yield f"{self.path}:{line}", text
        else:
            for number, record in iter_jsonl(self.path, skip_bad_lines=self.skip_bad_lines, skip_option=True,
                                             **start):
                yield f"{self.path}:{number}", record


class _Parquet:
    """Rows of a parquet file from a row number."""

    def __init__(self, path: str, position: dict):
        self.path, self.rows = path, int(position.get("row", 0))

    def position(self) -> dict:
        return {"row": self.rows}

    def __iter__(self):
        for number, where, record in parquet_records(self.path, self.rows):
            self.rows = number
            yield where, record


class _Hub:
    """Records of a hub dataset, resumed through `IterableDataset.load_state_dict`."""

    def __init__(self, spec: str, position: dict):
        self.spec = spec
        self.records = int(position.get("records", 0))
        self.saved = position.get("hub")  # the library's state, until a record moves it on
        self.dataset = None

    def position(self) -> dict:
        moved = self.dataset is not None and self.saved is None and self.records
        return {"records": self.records, "hub": self.dataset.state_dict() if moved else self.saved}

    def __iter__(self):
        self.dataset = open_hub(self.spec)
        if self.saved is not None:
            self.dataset.load_state_dict(self.saved)
        for record in self.dataset:
            self.records += 1
            self.saved = None
            yield f"{self.spec}: record {self.records}", record


def _open_source(source: str, position: dict, skip_bad_lines: bool):
    if source.startswith(HUB_PREFIX):
        return _Hub(source, position)
    if source.endswith(".parquet"):
        return _Parquet(source, position)
    return _LocalText(source, position, skip_bad_lines)


def _field(record, where: str, text_field: str | None, source: str):
    """The document of a record: its `text_field`, or the whole record when that is None."""
    if isinstance(record, str):  # a paragraph of plain text
        if text_field is None:
            raise LlamantinoError(f"{source}: plain text holds documents, not records")
        return record
    if text_field is None:
        return record
    if text_field not in record:
        raise LlamantinoError(f"{where}: missing field '{text_field}'")
    value = record[text_field]
    if not isinstance(value, str):
        raise LlamantinoError(f"{where}: field '{text_field}' is not a string")
    return value


# ---------------------------------------------------------------------------------------
# A stream of documents over several sources, in order, pass after pass


class DocumentStream:
    """Iterate the documents of this rank, pass after pass (epochs), with a resumable position.

    Yields the `text_field` of each record, or whole records when `text_field` is None;
    `where` names the file and line of the last one yielded (for error messages). With
    `cycle` off the stream ends after one pass.
    """

    def __init__(self, sources, *, text_field: str | None = "text", rank: int = 0, world: int = 1,
                 skip_bad_lines: bool = False, cycle: bool = True, name: str = ""):
        self.sources = expand_sources(sources)
        self.text_field = text_field
        self.rank, self.world = rank, world
        self.skip_bad_lines = skip_bad_lines
        self.cycle = cycle
        self.name = name or (self.sources[0] if len(self.sources) == 1
                             else f"{self.sources[0]} and {len(self.sources) - 1} more")
        # Position: current source, where in it, global document counter, epoch.
        self.source_index = 0
        self.position: dict | None = None  # None: the start of the current source
        self.count = 0
        self.epoch = 0
        self.where = ""
        self._reader = None  # the current source while a pass is under way

    def fresh(self) -> "DocumentStream":
        """The same stream at its very start, reading one pass."""
        return DocumentStream(self.sources, text_field=self.text_field, rank=self.rank, world=self.world,
                              skip_bad_lines=self.skip_bad_lines, cycle=False, name=self.name)

    def state_dict(self) -> dict:
        position = self._reader.position() if self._reader is not None else self.position
        return {"format": STATE_FORMAT, "sources": self.sources, "rank": self.rank, "world": self.world,
                "source_index": self.source_index, "position": position, "count": self.count,
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("sources") != self.sources:
            raise LlamantinoError("the checkpoint was made on other data sources; resume with the same data")
        if state.get("world") != self.world:
            raise LlamantinoError(f"the checkpoint was made with {state.get('world')} ranks, this run has "
                                  f"{self.world}; resume with the same number of processes")
        if state.get("format") == STATE_FORMAT:
            self.position = state["position"]
        elif "format" not in state and "offset" in state:
            # Format 1 counted the records read in the current source: skip them again.
            self.position = {"skip": int(state["offset"])} if state["offset"] else None
        else:
            raise LlamantinoError(f"the checkpoint's data position has format {state.get('format')}, which this "
                                  f"version cannot read (it reads {STATE_FORMAT} and the older layout)")
        self.source_index, self.count, self.epoch = state["source_index"], state["count"], state["epoch"]
        self._reader = None

    def __iter__(self) -> Iterator:
        while True:
            full_pass = self.source_index == 0 and self.position is None
            produced_this_epoch = False
            while self.source_index < len(self.sources):
                for where, value in self._read_current_source():
                    index = self.count
                    self.count += 1
                    if index % self.world != self.rank:
                        continue
                    self.where = where
                    produced_this_epoch = True
                    yield value
                self.source_index += 1
                self.position, self._reader = None, None
            if full_pass and not produced_this_epoch:
                raise LlamantinoError(f"{', '.join(self.sources)}: the corpus holds no documents for rank "
                                      f"{self.rank} of {self.world}")
            if not self.cycle:
                return
            self.epoch += 1
            self.source_index = 0
            log.info("%s: end of the data after pass %d; reading it again", self.name, self.epoch)

    def _read_current_source(self):
        source = self.sources[self.source_index]
        position = dict(self.position or {})
        skip = int(position.pop("skip", 0))
        self._reader = _open_source(source, position, self.skip_bad_lines)
        for number, (where, record) in enumerate(self._reader):
            if number >= skip:
                yield where, _field(record, where, self.text_field, source)


def check_yields_text(stream: DocumentStream, what: str, limit: int = 10000) -> None:
    """Fail early on a stream with no text, without consuming it (a fresh copy is read until
    its first non-blank document, at most `limit` documents)."""
    for n, text in enumerate(stream.fresh()):
        if text.strip():
            return
        if n >= limit:
            break
    raise LlamantinoError(f"{what}: the corpus yields no tokens (all documents are empty)")


# ---------------------------------------------------------------------------------------
# Weighted mixtures


class MixtureStream:
    """Documents drawn from several streams so that each one's share of the tokens follows
    its weight.

    The next document comes from the source furthest behind its share: the largest
    `weight × tokens so far − tokens from the source` (the smooth weighted round robin of
    load balancers, counted in tokens). No source is ever more than one document ahead of
    its share, and the order depends only on the documents and the seed (which breaks ties,
    as at the start). `tokens_placed()` gives the tokens of the last document drawn that went
    into rows (the packer's count): it is asked when the next one is drawn, when the last
    one is placed whole. Each rank mixes its own stripe of every source. A source that runs
    out starts again (its own stream cycles), or, with `cycle` off, leaves the mixture.
    """

    def __init__(self, streams: list[DocumentStream], weights, *, names, seed: int, rank: int = 0,
                 tokens_placed: Callable[[], int]):
        if len(streams) != len(weights) or len(names) != len(weights):
            raise LlamantinoError(f"{len(weights)} weights for {len(streams)} data sources")
        total = float(sum(weights))
        if any(w < 0 for w in weights) or total <= 0:
            raise LlamantinoError("data weights must be zero or more and sum to more than zero")
        self.streams, self.names = streams, list(names)
        self.weights = [float(w) for w in weights]
        self.shares = [w / total for w in self.weights]
        self.seed, self.rank = seed, rank
        self.tokens_placed = tokens_placed
        n = len(streams)
        self.tokens = [0] * n        # tokens of finished documents, per source
        self.documents = [0] * n     # documents drawn, per source
        self.active = [w > 0 for w in self.weights]
        self.current: int | None = None  # source of the document being placed
        self.draws = 0

    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "mixture": self.names, "weights": self.weights, "seed": self.seed,
                "rank": self.rank, "draws": self.draws, "tokens": self.tokens, "documents": self.documents,
                "active": self.active, "current": self.current,
                "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        if "mixture" not in state:
            raise LlamantinoError("the checkpoint reads its data as one stream, this run mixes weighted sources; "
                                  "resume with the same data settings")
        if state["mixture"] != self.names or state["weights"] != self.weights or state["seed"] != self.seed:
            raise LlamantinoError("the checkpoint was made with another data mixture (sources, weights or seed); "
                                  "resume with the same data settings")
        for stream, saved in zip(self.streams, state["streams"]):
            stream.load_state_dict(saved)
        self.draws, self.current = state["draws"], state["current"]
        self.tokens, self.documents = list(state["tokens"]), list(state["documents"])
        self.active = list(state["active"])

    def tokens_per_source(self) -> list[int]:
        """Tokens placed in rows from each source, the current document's so far included."""
        out = list(self.tokens)
        if self.current is not None:
            out[self.current] += self.tokens_placed()
        return out

    def __iter__(self) -> Iterator:
        documents = [iter(s) for s in self.streams]
        while True:
            if self.current is not None:
                self.tokens[self.current] += self.tokens_placed()
                self.current = None
            source = self._pick()
            if source is None:
                return
            text = next(documents[source], None)
            if text is None:  # only when cycling is off
                self.active[source] = False
                log.info("%s: ran out after %d documents on rank %d; the mixture goes on without it",
                         self.names[source], self.documents[source], self.rank)
                continue
            self.current = source
            self.documents[source] += 1
            self.draws += 1
            yield text

    def _pick(self) -> int | None:
        total = sum(self.tokens)
        deficits = {i: self.shares[i] * total - self.tokens[i] for i in range(len(self.streams)) if self.active[i]}
        if not deficits:
            return None
        top = max(deficits.values())
        tied = [i for i, d in deficits.items() if d == top]
        if len(tied) == 1:
            return tied[0]
        return random.Random(f"{self.seed}:{self.rank}:{self.draws}").choice(tied)


# ---------------------------------------------------------------------------------------
# Reading the whole corpus ahead, in the background


def _check_main() -> None:
    """The check process: a request on stdin, `[outcome, message]` on stdout (JSON)."""
    import json
    import sys

    request = json.loads(sys.stdin.read())
    try:
        for _ in DocumentStream(request["sources"], text_field=request["text_field"],
                                skip_bad_lines=request["skip_bad_lines"], cycle=False):
            pass
        result = ["ok", ""]
    except LlamantinoError as exc:
        result = ["error", str(exc)]
    except Exception as exc:  # a fault of the check itself must not stop training
        result = ["failed", f"{type(exc).__name__}: {exc}"]
    sys.stdout.write(json.dumps(result))


class CorpusCheck:
    """Reads the local files of a corpus once, in a background process (sharing no lock with
    training), with the same reader as training: a bad byte, a truncated gzip file or a
    malformed record anywhere stops the run at its next row rather than when training
    reaches it, and a run never finishes on a corpus it has not checked whole. Hub datasets
    are left to the reader. The process is a fresh interpreter (not a fork of one holding
    threads, nor a re-import of the caller's script) and is stopped when this one exits."""

    def __init__(self, sources, *, text_field: str | None, skip_bad_lines: bool):
        import json
        import os
        import subprocess
        import sys
        import weakref
        from pathlib import Path

        local = [s for s in sources if not s.startswith(HUB_PREFIX)]
        self.result: tuple[str, str] | None = None if local else ("ok", "")
        if not local:
            return
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from llamantino.data.streaming import _check_main; _check_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": path})
        self._process.stdin.write(json.dumps({"sources": local, "text_field": text_field,
                                              "skip_bad_lines": skip_bad_lines}))
        self._process.stdin.close()
        weakref.finalize(self, _stop_process, self._process)

    def done(self) -> bool:
        return self.result is not None

    def raise_if_failed(self, wait: bool = False) -> None:
        """Raise the error found, if any; with `wait`, first let the check finish."""
        import json

        if self.result is None and (wait or self._process.poll() is not None):
            output = self._process.stdout.read()
            self._process.wait()
            try:
                self.result = tuple(json.loads(output))
            except ValueError:  # killed, or out of memory: the reader still checks what it reads
                self.result = ("failed", f"the check process ended without a result (exit {self._process.returncode})")
            if self.result[0] == "failed":
                log.warning("the corpus check could not finish (%s)", self.result[1])
        if self.result is not None and self.result[0] == "error":
            raise LlamantinoError(self.result[1])


def _stop_process(process) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()
