"""Corpus cleaning: the rules that built clean_mc4_it, on all cores, deterministically.

`llamantino clean INPUT... --output DIR` reads mC4-style documents (`text`, `timestamp`,
`url`) and keeps those that survive the rules of gsarti/clean_mc4_it, itself the
t5-base-dutch cleaner (c4nlpreproc) adapted to Italian, which follows C4's `clean_page`:

* a document holding a word of the Italian or English bad-words lists is dropped
  (whole words, case-insensitive, checked on the text as read);
* each line ("sentence" in the dataset card: mC4 keeps one paragraph per line) is
  dropped when it has a word longer than 1,000 characters, does not end in `.`, `?`,
  `!` or `"` (or ends in `...`), has fewer than 3 words, or contains "lorem ipsum",
  javascript markers ("javascript", `{`) or cookie/privacy-policy boilerplate in Italian
  or English; Wikipedia-style citations (`[1]`, `[edit]`) are removed from lines first;
* what is left is dropped when it has fewer than 5 sentences, fewer than 500 or more
  than 50,000 characters, or is not mostly the target language (`--lang`).

Inputs are JSON lines (gzipped or not), folders of shards, parquet files, or datasets
read with `datasets` in streaming mode: `hub:NAME?config=C&split=S` (also the packaged
builders: `hub:json?data_files=shard.jsonl.gz`). Kept documents keep every field, with
`text` replaced by the cleaned text, in gzipped JSON-lines shards of `shard_docs`
documents in input order, so the output bytes do not depend on the number of workers.
A killed run resumes from its last finished shard; a run that fails on bad input leaves
nothing behind; a full disk stops the run with one line and keeps the finished shards.

Other languages: `--lang xx` takes the bad-word and policy-phrase lists bundled for xx
(`assets/badwords_xx.txt`, `assets/policy_xx.txt`) with the English ones, as clean_mc4_it took
Italian and English; scripts with their own sentence marks (。！？, ।, ؟...) or without
spaces between words get their own defaults for the line rules. `--num-shards N
--shard-index I` cleans part I of N of the input (see `llamantino.data.sharding`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import logging
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Iterator

from llamantino.core.config import closest, setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import (JSONL_SUFFIXES, LineStats, atomic_open, expand_inputs, iter_jsonl,
                                    max_line_bytes_setting)
from llamantino.core.fileio import HUB_PREFIX, parse_hub_spec
from llamantino.data import sharding
from llamantino.data.langid import DETECTORS
from llamantino.data.parts import PROGRESS, Parts
from llamantino.data.streaming import hub_records, parquet_records

log = logging.getLogger(__name__)

KIND = "clean"
ASSETS_DIR = Path(__file__).parents[1] / "assets"
# Lists bundled per language: data/badwords_xx.txt, data/policy_xx.txt.
BUNDLED_BADWORDS = {p.stem.split("_", 1)[1]: p for p in sorted(ASSETS_DIR.glob("badwords_*.txt"))}
BUNDLED_POLICY = {p.stem.split("_", 1)[1]: p for p in sorted(ASSETS_DIR.glob("policy_*.txt"))}
NO_LIST = "none"
SHARD_WIDTH, SHARD_SUFFIX = 5, ".jsonl.gz"  # part-00000.jsonl.gz: the names runs have always had
CHUNK_DOCS = 128  # documents per task sent to a worker; does not change the output

# Why a line is dropped, in the order the rules are tried (C4's order).
LINE_RULES = ("word_too_long", "no_end_punctuation", "too_few_words", "lorem_ipsum", "javascript", "policy")
# Why a document is dropped, in the order the rules are tried: the cheap ones first.
DOC_RULES = ("bad_words", "too_few_sentences", "too_short", "too_long", "wrong_language")

# C4's citation pattern, removed from every line before the line rules apply.
CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
ELLIPSIS = "..."
JAVASCRIPT_MARKERS = ("javascript", "{")
# A sentence ends at . ! ? or … (or the full stops and question marks of Devanagari,
# Arabic, Urdu, Armenian, Ethiopic and Burmese), plus closing quotes or brackets, followed
# by a space and a capital letter, a digit or a letter of a script without case: punkt's
# main cue, without its abbreviation model (nothing to download).
SENTENCE_BREAK = re.compile(r"[.!?\u2026\u0964\u0965\u061f\u06d4\u0589\u1362\u1367\u104b]+"
                            r"[\"'\u201d\u2019\u00bb)\]]*\s+[\"'\u201c\u2018\u00ab(\[]?(\w)")
# Chinese and Japanese full stops need no space after them.
WIDE_BREAK = re.compile(r"[\u3002\uff01\uff1f]+[\u300d\u300f\u201d\u2019\uff09]*(?=\S)")
WORD = re.compile(r"\w+")
# Line-rule defaults by language. Chinese, Japanese, Thai, Lao, Khmer, Burmese and Tibetan
# put no spaces between words: a line is one "word" to str.split(), so the word rules
# fall back to one word of any length (up to max_chars).
NO_SPACES = ("zh", "ja", "th", "lo", "km", "my", "bo")
LATIN_END_MARKS = [".", "?", "!", '"']
OWN_END_MARKS = {  # sentence-final marks of scripts that have their own, besides . ? ! "
    "zh": ["\u3002", "\uff01", "\uff1f", "\u300d", "\u300f", "\u201d"],   # 。！？」』”
    "ja": ["\u3002", "\uff01", "\uff1f", "\u300d", "\u300f"],             # 。！？」』
    **{lang: ["\u0964", "\u0965"] for lang in ("hi", "mr", "ne", "sa", "bn", "pa")},  # । ॥
    **{lang: ["\u061f"] for lang in ("ar", "fa", "ps")},                      # ؟
    "ur": ["\u061f", "\u06d4"],                                              # ؟ ۔
    "hy": ["\u0589"], "am": ["\u1362", "\u1367"], "my": ["\u104b"],         # ։ ። ፧ ။
    "km": ["\u17d4"], "bo": ["\u0f0d"], "el": [";", "\u037e"],                # ។ ། ; (Greek question mark)
}
DEFAULT_MIN_WORDS = 3
DEFAULT_MAX_WORD_LENGTH = 1000
# The language is identified on the start of the cleaned text only: langdetect (the
# paper's tool) reads no more than this, and more text does not change the answer.
LANGID_CHARS = 10_000


@dataclasses.dataclass
class Config:
    inputs: list[str] = setting([], "JSON-lines files (gzipped or not), folders of shards, parquet files, "
                                    "or datasets streamed from the hub: hub:NAME?config=C&split=S", path_input=True)
    output: str = setting("", "output folder")
    lang: str = setting("it", "keep documents mostly in this language (ISO 639-1 code)")
    langid: str = setting("py3langid", "language detector: py3langid (fast) or langdetect (the one "
                                       "clean_mc4_it used)", choices=tuple(DETECTORS))
    badwords: list[str] = setting([], "bad-word lists: bundled ones by language code "
                                      f"({', '.join(BUNDLED_BADWORDS)}) or files with one word or phrase per "
                                      "line; empty: the bundled lists of --lang and English; none: no list",
                                  path_input=True)
    policy: list[str] = setting([], "cookie/privacy-policy phrase lists: bundled ones by language code "
                                    f"({', '.join(BUNDLED_POLICY)}) or files with one phrase per line; empty: "
                                    "the bundled lists of --lang and English; none: no list", path_input=True)
    min_words: int | None = setting(None, "drop lines with fewer words (empty: 3, or 1 for languages written "
                                          "without spaces)", minimum=0, maximum=1_000_000)
    max_word_length: int | None = setting(None, "drop lines with a longer word, in characters (empty: 1000, "
                                                "or no limit below max_chars for languages written without "
                                                "spaces)", minimum=1, maximum=100_000_000)
    end_marks: list[str] = setting([], "keep only lines ending in one of these (empty: . ? ! \" and the "
                                       "language's own marks, e.g. 。！？ for zh and ja)")
    min_sentences: int = setting(5, "drop documents with fewer sentences after line filtering",
                                 minimum=0, maximum=1_000_000)
    min_chars: int = setting(500, "drop documents shorter than this after line filtering",
                             minimum=0, maximum=100_000_000)
    max_chars: int = setting(50000, "drop documents longer than this after line filtering",
                             minimum=1, maximum=100_000_000)
    text_field: str = setting("text", "field holding the text")
    shard_docs: int = setting(100000, "kept documents per output shard", minimum=1, maximum=100_000_000)
    skip_bad_lines: bool = setting(False, "count and skip malformed lines instead of stopping")
    max_line_bytes: int = max_line_bytes_setting()
    num_shards: int | None = sharding.num_shards_setting()
    shard_index: int | None = sharding.shard_index_setting()
    workers: int = setting(0, "processes (0: all cores)", fingerprint=False, minimum=0, maximum=4096)

    def validate(self, source):
        if not self.inputs:
            raise LlamantinoError(f"{source}: no inputs given")
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if self.min_chars > self.max_chars:
            raise LlamantinoError(f"{source}: min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        if any(not m for m in self.end_marks):
            raise LlamantinoError(f"{source}: setting 'end_marks' holds an empty mark")
        for name in ("badwords", "policy"):
            if NO_LIST in getattr(self, name) and len(getattr(self, name)) > 1:
                raise LlamantinoError(f"{source}: setting '{name}' is 'none' or a list of lists, not both")


def list_specs(cfg: Config, kind: str) -> list[str]:
    """The bad-word ("badwords") or policy-phrase ("policy") lists a run uses."""
    given, bundled = (cfg.badwords, BUNDLED_BADWORDS) if kind == "badwords" else (cfg.policy, BUNDLED_POLICY)
    if given == [NO_LIST]:
        return []
    return list(given) or [code for code in dict.fromkeys([cfg.lang, "en"]) if code in bundled]


def line_rule_settings(cfg: Config) -> dict:
    """min_words, max_word_length and end_marks, with the language's defaults where not given."""
    spaced = cfg.lang not in NO_SPACES
    return {
        "min_words": cfg.min_words if cfg.min_words is not None else (DEFAULT_MIN_WORDS if spaced else 1),
        "max_word_length": (cfg.max_word_length if cfg.max_word_length is not None
                            else DEFAULT_MAX_WORD_LENGTH if spaced else cfg.max_chars),
        "end_marks": list(cfg.end_marks) or LATIN_END_MARKS + OWN_END_MARKS.get(cfg.lang, []),
    }


def warn_missing_lists(cfg: Config) -> None:
    """One warning line when --lang has no bundled list and none was given."""
    missing = [what for what, given, bundled in (("bad-word", cfg.badwords, BUNDLED_BADWORDS),
                                                 ("policy-phrase", cfg.policy, BUNDLED_POLICY))
               if not given and cfg.lang not in bundled]
    if missing:
        log.warning("clean: no %s list is bundled for '%s' (bundled: %s), only the English one applies; pass your "
                    "own with --badwords FILE en / --policy FILE en", " or ".join(missing), cfg.lang,
                    ", ".join(sorted(set(BUNDLED_BADWORDS) & set(BUNDLED_POLICY))))


# ---------------------------------------------------------------------------------------
# The rules


def read_list(spec: str, kind: str = "badwords") -> list[str]:
    """Entries of a bundled list (by language code) or of a file: one per line, '#' comments;
    lower-cased, and policy phrases with typographic apostrophes made plain."""
    bundled, what = (BUNDLED_BADWORDS, "bad-words") if kind == "badwords" else (BUNDLED_POLICY, "policy-phrases")
    path = bundled.get(spec, Path(spec))
    if not path.is_file():
        raise LlamantinoError(f"{spec}: no such {what} file (bundled lists: {', '.join(bundled)})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    entries = [w.strip().lower() for w in lines if w.strip() and not w.lstrip().startswith("#")]
    return [e.replace("\u2019", "'") for e in entries] if kind == "policy" else entries


def read_lists(cfg: Config) -> tuple[list[str], list[str]]:
    """(bad words, policy phrases) of a run, read before any work starts."""
    badwords, policy = ([e for spec in list_specs(cfg, kind) for e in read_list(spec, kind)]
                        for kind in ("badwords", "policy"))
    return badwords, policy


class BadWords:
    """Whole-word, case-insensitive matching of a word list, as C4's `(?:\\W|^)(...)(?:\\W|$)`.

    The text is split into words once; single words are looked up in a set and phrases
    ("porco dio") as words in a row, so the cost does not grow with the list. Entries
    with other characters (user lists may have "a$$") go through C4's regular expression.
    """

    def __init__(self, entries):
        self.words: set[str] = set()
        self.phrases: dict[str, list[tuple[str, ...]]] = {}  # first word -> phrases
        others = []
        for entry in entries:
            tokens = entry.split()
            if tokens and all(WORD.fullmatch(t) for t in tokens):
                if len(tokens) == 1:
                    self.words.add(tokens[0])
                else:
                    self.phrases.setdefault(tokens[0], []).append(tuple(tokens))
            else:
                others.append(entry)
        others = sorted(set(others), key=len, reverse=True)
        self.pattern = (re.compile(r"(?:\W|^)(?:{})(?:\W|$)".format("|".join(map(re.escape, others))))
                        if others else None)

    def find(self, text: str) -> str | None:
        """The first bad word or phrase in `text`, or None."""
        low = text.lower()
        tokens = WORD.findall(low)
        hits = self.words.intersection(tokens)
        if hits:
            return min(hits)
        if self.phrases and not self.phrases.keys().isdisjoint(tokens):
            for i, token in enumerate(tokens):
                for phrase in self.phrases.get(token, ()):
                    if tuple(tokens[i:i + len(phrase)]) == phrase:
                        return " ".join(phrase)
        if self.pattern:
            match = self.pattern.search(low)
            if match:
                return match.group(0).strip()
        return None


def count_sentences(line: str) -> int:
    breaks = sum(1 for m in SENTENCE_BREAK.finditer(line) if _starts_sentence(m.group(1)))
    if "\u3002" in line or "\uff01" in line or "\uff1f" in line:  # 。！？
        breaks += len(WIDE_BREAK.findall(line))
    return breaks + 1


def _starts_sentence(char: str) -> bool:
    """A capital, a digit, or a letter of a script without case (neither capital nor small)."""
    return char.isupper() or char.isdigit() or (char.isalpha() and not char.islower())


class Cleaner:
    """The clean_mc4_it rules for one document; built once per worker process."""

    def __init__(self, cfg: Config, lists: tuple[list[str], list[str]] | None = None):
        from llamantino.data.langid import make_detector

        self.cfg = cfg
        rules = line_rule_settings(cfg)
        self.min_words, self.max_word_length = rules["min_words"], rules["max_word_length"]
        self.end_marks = tuple(rules["end_marks"])
        badwords, policy = lists if lists is not None else read_lists(cfg)
        self.badwords = BadWords(badwords)
        self.policy = tuple(policy)
        self.detector = make_detector(cfg.langid)

    def line_rule(self, line: str) -> tuple[str | None, str]:
        """(rule that drops the line or None, the line without citations)."""
        longest = self.max_word_length
        if len(line) > longest and any(len(word) > longest for word in line.split()):
            return "word_too_long", line
        if "[" in line:
            line = CITATION.sub("", line).strip()
        if not line.endswith(self.end_marks) or line.endswith(ELLIPSIS):
            return "no_end_punctuation", line
        if len(line.split()) < self.min_words:
            return "too_few_words", line
        low = line.lower()
        if "lorem ipsum" in low:
            return "lorem_ipsum", line
        if any(marker in low for marker in JAVASCRIPT_MARKERS):
            return "javascript", line
        low = low.replace("\u2019", "'")  # d’uso and d'uso alike
        if any(phrase in low for phrase in self.policy):
            return "policy", line
        return None, line

    def clean(self, text: str) -> tuple[str | None, str | None, dict[str, int]]:
        """(cleaned text or None, rule that dropped the document, number of lines by fate)."""
        lines = [line for line in map(str.strip, text.splitlines()) if line]
        if self.badwords.find(text):
            return None, "bad_words", {"read": len(lines), "in_dropped_documents": len(lines)}
        counts = dict.fromkeys(LINE_RULES, 0)
        kept, sentences = [], 0
        for line in lines:
            rule, line = self.line_rule(line)
            if rule:
                counts[rule] += 1
            else:
                kept.append(line)
                sentences += count_sentences(line)
        result = "\n".join(kept)
        reason = None
        if sentences < self.cfg.min_sentences:
            reason = "too_few_sentences"
        elif len(result) < self.cfg.min_chars:
            reason = "too_short"
        elif len(result) > self.cfg.max_chars:
            reason = "too_long"
        elif self.detector.detect(result[:LANGID_CHARS]) != self.cfg.lang:
            reason = "wrong_language"
        counts["read"] = len(lines)
        counts["in_dropped_documents" if reason else "kept"] = len(kept)
        return (None if reason else result), reason, counts


# ---------------------------------------------------------------------------------------
# Inputs: each yields (position, where, record); a position is (input index, line or row)


def _check_text(record: dict, where: str, field: str) -> str | None:
    """The problem with a record's text field, or None."""
    if field not in record:
        return f"{where}: missing field '{field}'"
    if not isinstance(record[field], str):
        return f"{where}: field '{field}' must be a string, got {type(record[field]).__name__}"
    return None


class Reader:
    """All inputs (or a task's pieces of them) in order, resumable after a position,
    counting the lines it skips."""

    def __init__(self, cfg: Config, shard: sharding.Shard | None = None):
        self.cfg = cfg
        self.sources: list[str] = []
        for raw in cfg.inputs:
            if raw.startswith(HUB_PREFIX):
                parse_hub_spec(raw)  # fail on a bad spec before any work
                self.sources.append(raw)
            else:
                self.sources += [str(p) for p in expand_inputs([raw], JSONL_SUFFIXES + (".parquet",))]
        self.pieces = sharding.plan(self.sources, shard)  # whole sources when unsharded
        self.bad = 0  # lines skipped so far (skip_bad_lines)

    def identity(self) -> list:
        """What the inputs are, to tell on resume whether they changed."""
        out = []
        for src in self.sources:
            if src.startswith(HUB_PREFIX):
                out.append([src])
            else:
                st = os.stat(src)
                out.append([src, st.st_size, st.st_mtime_ns])
        return out

    def records(self, after: tuple[int, int] = (0, 0)) -> Iterator[tuple[tuple[int, int], str, dict, int]]:
        """Yield (position, where, record, lines skipped so far) for records after `after`."""
        for index, piece in enumerate(self.pieces):
            if index < after[0]:
                continue
            start = after[1] if index == after[0] else 0
            found = False
            for number, where, record in self._items(piece, start):
                found = True
                problem = _check_text(record, where, self.cfg.text_field)
                if problem:
                    if not self.cfg.skip_bad_lines:
                        raise LlamantinoError(problem)
                    self.bad += 1
                    continue
                yield (index, number), where, record, self.bad
            if not found and start == 0 and piece.parts == 1:  # a piece of a source may be empty
                raise LlamantinoError(f"{piece.source}: empty input (no documents)")

    def _items(self, piece: sharding.Piece, start: int):
        """(number, where, record) of a piece after `start`: a line or row number, records
        read from a stream, or for a piece of JSON lines a byte offset."""
        src = piece.source
        if piece.parts > 1:
            return self._piece_records(piece, start)
        if src.startswith(HUB_PREFIX):
            return hub_records(src, start)
        if src.endswith(".parquet"):
            return parquet_records(src, start)
        return self._jsonl_records(src, start)

    def _jsonl_records(self, path: str, start: int):
        stats = LineStats()
        counted = 0
        for number, record in iter_jsonl(path, skip_bad_lines=self.cfg.skip_bad_lines, stats=stats,
                                         start_line=start, skip_option=True, max_line_bytes=self.cfg.max_line_bytes):
            self.bad += stats.bad - counted
            counted = stats.bad
            yield number, f"{path}:{number}", record
        self.bad += stats.bad - counted

    def _piece_records(self, piece: sharding.Piece, start: int):
        """A task's piece of a source (`llamantino.data.sharding`)."""
        src = piece.source
        if src.startswith(HUB_PREFIX):
            yield from sharding.hub_piece_records(src, piece, start)
            return
        if src.endswith(".parquet"):
            yield from sharding.parquet_piece_records(src, piece, start)
            return
        stats = LineStats()
        counted = 0
        for resume, where, record in sharding.iter_jsonl_piece(src, piece, start, stats=stats,
                                                               skip_bad_lines=self.cfg.skip_bad_lines,
                                                               max_line_bytes=self.cfg.max_line_bytes):
            self.bad += stats.bad - counted
            counted = stats.bad
            yield resume, where, record
        self.bad += stats.bad - counted


# ---------------------------------------------------------------------------------------
# Workers


def available_cores() -> int:
    """Cores this process may run on (a CPU set or `taskset` may allow fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # platforms without CPU affinity (macOS, Windows)


_CLEANER: Cleaner | None = None
_INIT_ERROR: BaseException | None = None


def _init_worker(cfg: Config, lists: tuple[list[str], list[str]]) -> None:
    global _CLEANER, _INIT_ERROR
    _CLEANER, _INIT_ERROR = None, None
    try:
        _CLEANER = Cleaner(cfg, lists)
    except Exception as exc:  # raised from a pool initializer it would restart the worker forever
        _INIT_ERROR = exc


def _worker_languages() -> set[str]:
    if _INIT_ERROR:
        raise _INIT_ERROR
    return _CLEANER.detector.languages()


def _clean_chunk(chunk: list[tuple[tuple[int, int], dict]]) -> list[tuple]:
    """Clean a list of (position, record): (position, output line or None, reason, line counts, chars)."""
    if _INIT_ERROR:
        raise _INIT_ERROR
    out = []
    field = _CLEANER.cfg.text_field
    for position, record in chunk:
        text = record[field]
        cleaned, reason, counts = _CLEANER.clean(text)
        line = None
        if cleaned is not None:
            record = dict(record)
            record[field] = cleaned
            line = json.dumps(record, ensure_ascii=False, default=_json_default) + "\n"
        out.append((position, line, reason, counts, len(text), len(cleaned or "")))
    return out


def _json_default(value):
    """JSON for the values parquet files and `datasets` builders give that JSON lacks.

    pyarrow (behind the json and parquet builders) reads mC4's "2020-02-22T22:24:31Z" as a
    UTC timestamp without a zone: it is written back in the same ISO 8601 form.
    """
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() == datetime.timedelta(0):
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _chunks(items, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Workers:
    """Cleaning processes (this process alone for one worker) giving results in input order.

    They start at once and load their language models while the caller does other work.
    """

    def __init__(self, count: int, cfg: Config, lists: tuple[list[str], list[str]]):
        self.count = count
        self.pool = None
        if count == 1:
            _init_worker(cfg, lists)
        else:
            # spawn: workers start clean on every platform (no inherited locks or threads).
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(count, initializer=_init_worker, initargs=(cfg, lists))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def languages(self) -> set[str]:
        """The codes the detector can answer with (asked of a worker: this process loads no model)."""
        return self.pool.apply(_worker_languages) if self.pool else _worker_languages()

    def map(self, chunks):
        """_clean_chunk over chunks, in order, with only a few chunks in flight."""
        if self.pool is None:
            for chunk in chunks:
                yield _clean_chunk(chunk)
            return
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(_clean_chunk, (chunk,)))
            if len(pending) >= 4 * self.count:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ---------------------------------------------------------------------------------------
# Output


class Stats:
    def __init__(self, data: dict | None = None):
        data = data or {}
        self.docs = collections.Counter(data.get("docs", {}))
        self.lines = collections.Counter(data.get("lines", {}))
        self.chars = collections.Counter(data.get("chars", {}))
        self.bad_lines = data.get("bad_lines", 0)

    def to_dict(self) -> dict:
        return {"docs": dict(self.docs), "lines": dict(self.lines), "chars": dict(self.chars),
                "bad_lines": self.bad_lines}

    def metrics(self) -> dict:
        docs, lines = self.docs, self.lines
        return {
            "documents": {"read": docs["read"], "kept": docs["kept"],
                          "dropped": {rule: docs[rule] for rule in DOC_RULES}},
            "lines": {"read": lines["read"], "kept": lines["kept"],
                      "dropped": {rule: lines[rule] for rule in LINE_RULES},
                      "in_dropped_documents": lines["in_dropped_documents"]},
            "characters": {"read": self.chars["read"], "kept": self.chars["kept"]},
            "bad_lines_skipped": self.bad_lines,
        }


def output_parts(out: Path) -> Parts:
    """The output shards and the progress file that commits them."""
    return Parts(out, width=SHARD_WIDTH, suffix=SHARD_SUFFIX)


class ShardWriter:
    """Gzipped JSON-lines shards of `size` documents, each renamed into place when full."""

    def __init__(self, parts: Parts, size: int, first: int):
        self.parts, self.size, self.index = parts, size, first
        self.count = 0
        self._context = self._handle = None

    def write(self, line: str) -> bool:
        """Write one document; True when it completed a shard."""
        if self._handle is None:
            from llamantino.core.manifest import record_outputs

            record_outputs(self.parts.folder, self.parts.name(self.index))  # the run's own before it exists
            self._context = atomic_open(self.parts.path(self.index))     # (--overwrite removes it)
            self._handle = self._context.__enter__()
        self._handle.write(line)
        self.count += 1
        if self.count == self.size:
            self.close()
            return True
        return False

    def close(self) -> None:
        if self._handle is not None:
            self._context.__exit__(None, None, None)
            self._context = self._handle = None
            self.index += 1
            self.count = 0

    def abort(self) -> None:
        if self._handle is not None:
            try:
                self._context.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass
            self._context = self._handle = None


def _describe_lists(cfg: Config) -> dict:
    """Which bad-word and policy lists were used, with their content hashes (a list file may
    change), and the line-rule settings as applied."""
    from llamantino.core.fileio import sha256_file

    out = {}
    for kind, bundled in (("badwords", BUNDLED_BADWORDS), ("policy", BUNDLED_POLICY)):
        out[kind] = [{"list": spec, "entries": len(read_list(spec, kind)),
                      "sha256": sha256_file(bundled.get(spec, Path(spec)))} for spec in list_specs(cfg, kind)]
    out["line_rules"] = line_rule_settings(cfg)
    return out


def _remove_run_files(parts: Parts) -> None:
    """Remove what this stage writes (after an error): the folder is left as it was found."""
    from llamantino.core.manifest import RUN_INFO

    parts.remove_work()
    (parts.out / RUN_INFO).unlink(missing_ok=True)
    if parts.out.is_dir() and not any(parts.out.iterdir()):
        parts.out.rmdir()


def _kept(progress: dict | None) -> str:
    """What a run stopped by a full disk keeps, from its last committed progress."""
    shards, docs = (progress["shards"], progress["stats"]["docs"].get("read", 0)) if progress else (0, 0)
    return f"{shards} finished shard(s) ({docs} documents read)"


# ---------------------------------------------------------------------------------------
# The stage


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Clean `cfg.inputs` (or part shard_index of num_shards of them) into `cfg.output`.
    An interrupted run always resumes (`resume` is accepted for the stage contract)."""
    from llamantino.core.manifest import (RUN_INFO, describe_inputs, read_manifest, same_run,
                                          start_run, write_manifest)

    # Everything that can be checked before work starts is checked before the folder is touched.
    cfg, shard = sharding.resolve(cfg)
    out = sharding.part_folder(cfg, shard)
    if shard:
        sharding.check_root(Path(cfg.output), shard)
    reader = Reader(cfg, shard)
    lists = read_lists(cfg)
    done = read_manifest(out) if out.is_dir() else None
    if same_run(done, KIND, cfg):
        # The same run finished: skipped, unless its inputs changed (then refused or, with
        # --overwrite, replaced) or the folder is unsafe to use.
        if sharding.prepare(cfg, shard, KIND, overwrite=overwrite)[1] == "complete":
            return {"status": "skipped (done)", **_summary(done["metrics"])}

    with Workers(cfg.workers or available_cores(), cfg, lists) as workers:
        languages = workers.languages()
        if cfg.lang not in languages:
            raise LlamantinoError(f"lang '{cfg.lang}': not a language {cfg.langid} identifies"
                                  f"{closest(cfg.lang, languages)}")
        warn_missing_lists(cfg)
        out, state = sharding.prepare(cfg, shard, KIND, overwrite=overwrite)
        if state == "complete":  # finished by another process since the check above
            return {"status": "skipped (done)", **_summary(read_manifest(out)["metrics"])}
        parts = output_parts(out)
        progress = None
        if state == "resume":
            progress = parts.read_progress()
            if progress and progress["inputs"] != reader.identity():
                raise LlamantinoError(f"{out}: the inputs changed since the interrupted run; "
                                      "pass --overwrite to start again")
            if progress and progress.get("shard") != sharding.manifest_entry(shard, reader.pieces).get("shard"):
                raise LlamantinoError(f"{out}: the interrupted run cleaned another part of the inputs; "
                                      "pass --overwrite to start again")
        else:
            start_run(out, KIND, cfg, outputs=[PROGRESS])
        def failed():  # a failed run vanishes (an interrupted one resumes)
            _remove_run_files(parts)
            sharding.remove_empty_root(cfg, shard)

        with parts.guard(_kept, on_failure=failed):
            metrics = _clean_all(cfg, reader, workers, parts, progress, shard)
            write_manifest(out, KIND, cfg, inputs=describe_inputs(cfg.inputs), metrics=metrics,
                           extra={**_describe_lists(cfg), **sharding.manifest_entry(shard, reader.pieces)})
    for path in (parts.progress, out / RUN_INFO):
        path.unlink(missing_ok=True)
    status = f"done (part {shard.index} of {shard.count}: merge with `llamantino manifest merge " \
             f"{cfg.output}` when all parts are done)" if shard else "done"
    return {"status": status, **_summary(metrics)}


def _clean_all(cfg: Config, reader: Reader, workers: Workers, parts: Parts, progress: dict | None,
               shard: sharding.Shard | None = None) -> dict:
    stats = Stats(progress["stats"] if progress else None)
    position = tuple(progress["position"]) if progress else (0, 0)
    shards = progress["shards"] if progress else 0
    parts.remove_stale(shards)
    if progress:
        log.info("resuming after %d documents (%d shards written)", stats.docs["read"], shards)
    reader.bad = stats.bad_lines
    writer = ShardWriter(parts, cfg.shard_docs, shards)
    t0 = time.time()
    read_at_start = stats.docs["read"]

    def items():
        for pos, _where, record, bad in reader.records(after=position):
            yield (pos, bad), record

    try:
        for results in workers.map(_chunks(items(), CHUNK_DOCS)):
            for (pos, bad), line, reason, counts, chars_in, chars_out in results:
                stats.docs["read"] += 1
                stats.docs[reason or "kept"] += 1
                stats.lines.update(counts)
                stats.chars["read"] += chars_in
                stats.chars["kept"] += chars_out
                stats.bad_lines = bad
                if line is not None and writer.write(line):
                    parts.commit({"position": list(pos), "shards": writer.index, "stats": stats.to_dict(),
                                  "inputs": reader.identity(), **sharding.manifest_entry(shard, reader.pieces)})
                    rate = (stats.docs["read"] - read_at_start) / max(time.time() - t0, 1e-9)
                    log.info("%d documents read, %d kept, %d shards (%.0f documents/s)",
                             stats.docs["read"], stats.docs["kept"], writer.index, rate)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    stats.bad_lines = reader.bad
    seconds = time.time() - t0
    metrics = stats.metrics()
    metrics.update({"shards": writer.index, "workers": workers.count, "seconds": round(seconds, 2),
                    "documents_per_second": round((stats.docs["read"] - read_at_start) / max(seconds, 1e-9), 1)})
    return metrics


def _summary(metrics: dict) -> dict:
    docs = metrics["documents"]
    return {"headline": {"docs_read": docs["read"], "docs_kept": docs["kept"],
                         "kept_pct": round(100 * docs["kept"] / max(docs["read"], 1), 1),
                         "shards": metrics["shards"]},
            "metrics": metrics}


POSITIONAL = {"inputs": {"nargs": "+", "metavar": "INPUT",
                         "help": "JSON-lines files or folders of shards (.jsonl, .json, gzipped or not), "
                                 ".parquet files, or hub:NAME?config=C&split=S (streamed with datasets)"}}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional=POSITIONAL)


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    return run_stage_command(KIND, args, positional=POSITIONAL)
