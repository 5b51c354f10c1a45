"""`llamantino translate`: machine-translate chat and instruction data, as the paper did
with UltraChat (512,837 dialogues, English -> Italian, Argos Translate).

Reads UltraChat (`{"id", "data": [user, assistant, ...]}`), ultrachat_200k (`messages`,
`prompt`), Dolly (`instruction`, `context`, `response`) and Alpaca (`instruction`,
`input`, `output`) records and writes `translated.jsonl`: each record keeps its shape,
ids, roles and turn order, with every turn or field translated on its own, plus an
`original` field holding the source values of the translated fields.

What never reaches the model: role tags, fenced code blocks, inline code, URLs, e-mail
addresses, placeholders (`{name}`, `{{x}}`, `%(n)s`, `%s`, `${x}`), HTML tags, markdown
markers (headings, list items, quotes, check boxes, `**`, `~~`, table pipes), text
without letters, and whitespace. Text is cut AROUND these spans, each piece is
translated, and the spans are put back byte for byte: a placeholder cannot be lost or
altered by the model because the model never sees it.

Two engines, one model format (CTranslate2 + SentencePiece, what Argos packages hold):

* `batched` (default): the sentences of many records at once go through one
  `ctranslate2.Translator.translate_batch` call, tokenised with the model's own
  SentencePiece model and split with its own MiniSBD sentence splitter;
* `argos`: `argostranslate.translate.translate()` once per piece of text, the reference
  path (and the benchmark's baseline).

Devices: `--device cpu` (intra-op `threads` x parallel `workers`, one per core by default) or
`--device cuda --device-index 0 1 ...`: CTranslate2 keeps one model copy per GPU and runs
the batches of a call on all of them at once. Batches are cut by source tokens
(`max_batch_size`, `batch_type`), as CTranslate2's performance guide advises.

Resuming: records are translated in chunks; each chunk is written as a numbered part file
(atomically), then `progress.json` (atomically) records how far the input has been
consumed. A run killed at any moment and started again with the same settings continues
from the last committed chunk: a part written but not yet counted is simply written
again under the same name, so no record is lost or doubled. The final file is assembled
from the parts (atomically), then the manifest is written.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import ClassVar

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import MAX_LINE_BYTES, iter_jsonl, max_line_bytes_setting, read_json_object
from llamantino.data import sharding
from llamantino.data.parts import PROGRESS, Parts

log = logging.getLogger(__name__)

KIND = "translate"
FORMATS = ("ultrachat", "ultrachat_200k", "dolly", "alpaca")
# Fields holding text to translate, per format; `original` holds their source values.
TEXT_FIELDS = {
    "ultrachat": ("data",),
    "ultrachat_200k": ("prompt", "messages"),
    "dolly": ("instruction", "context", "response"),
    "alpaca": ("instruction", "input", "output"),
}
OUTPUT_FILE = "translated.jsonl"
PARTS_DIR = ".parts"  # the committed chunks, part-000000.jsonl...: the names runs have always had
MAX_EXAMPLES = 20  # skipped records quoted in the manifest
# Decoding as argostranslate does it, so both engines give the same translations.
LENGTH_PENALTY = 0.2
DEVICES = ("cpu", "cuda")
COMPUTE_TYPES = ("auto", "default", "float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16")
AUTO_BATCH_TOKENS = {"cpu": 1024, "cuda": 8192}  # max_batch_size 0, per device


@dataclasses.dataclass
class Config:
    # Before batches were counted in tokens, `batch_size` was sentences per batch.
    RENAMED: ClassVar[dict] = {"batch_size": ("max_batch_size", None, {"batch_type": "examples"})}

    inputs: list[str] = setting([], "JSON-lines files (or folders of them) to translate", path_input=True)
    output: str = setting("", "output folder")
    model: str = setting("", "a CTranslate2 model folder, an Argos package folder or an .argosmodel file; "
                             "empty: the Argos package installed for src -> tgt", path_input=True)
    max_line_bytes: int = max_line_bytes_setting()
    src: str = setting("en", "source language code")
    tgt: str = setting("it", "target language code")
    format: str = setting("", f"source format: {', '.join(FORMATS)}; empty: detected from each file's "
                              "first record", choices=("",) + FORMATS)
    engine: str = setting("batched", "batched: many records' sentences per CTranslate2 call; "
                                     "argos: argostranslate.translate.translate() per piece of text",
                          choices=("batched", "argos"))
    splitter: str = setting("model", "sentence splitter of the batched engine: 'model' (the MiniSBD model "
                                     "the package or folder carries in minisbd/), 'rules' (a sentence ends at "
                                     ". ! ? or ... before a space) or a MiniSBD .onnx file")
    beam_size: int = setting(4, "beam size (argostranslate's default)", minimum=1, maximum=64)
    device: str = setting("cpu", "where CTranslate2 runs: cpu, or cuda (the GPUs of --device-index)",
                          choices=DEVICES)
    device_index: list[int] = setting([0], "GPUs to translate on with --device cuda: one model copy per GPU, "
                                           "batches spread over them (CTranslate2's data parallelism)",
                                      minimum=0, maximum=1023, fingerprint=False)
    compute_type: str = setting("auto", "CTranslate2 compute type (argostranslate's default: auto, the fastest "
                                        "the device supports, int8 on CPU; on GPUs e.g. int8_float16 or float16)",
                                choices=COMPUTE_TYPES)
    argos_packages_dir: str = setting("", "folder of installed Argos packages (ARGOS_PACKAGES_DIR); an "
                                          ".argosmodel is installed there for the argos engine; "
                                          "empty: argostranslate's own", fingerprint=False, path_input=True)
    threads: int = setting(1, "CTranslate2 threads per translation (intra_threads, ARGOS_INTRA_THREADS); 0 lets "
                              "CTranslate2 choose, argostranslate's default, 20-50x slower per call on 2 cores",
                           fingerprint=False, minimum=0, maximum=1024)
    workers: int = setting(0, "CTranslate2 batches translated in parallel (inter_threads, ARGOS_INTER_THREADS), "
                              "per GPU on cuda; 0: on CPU one per core (cores / threads), on cuda one per GPU",
                           fingerprint=False, minimum=0, maximum=1024)
    max_batch_size: int = setting(0, "most tokens (or sentences, with --batch-type examples) per CTranslate2 "
                                     f"batch (batched engine); 0: {AUTO_BATCH_TOKENS['cpu']:,} tokens on CPU, "
                                     f"{AUTO_BATCH_TOKENS['cuda']:,} on CUDA (64 sentences with examples)",
                                  fingerprint=False, minimum=0, maximum=10_000_000)
    batch_type: str = setting("tokens", "what max_batch_size counts: source tokens (CTranslate2's advice: "
                                        "batches of even cost) or sentences", choices=("tokens", "examples"),
                              fingerprint=False)
    chunk_records: int = setting(256, "records translated and committed together: the unit of resuming",
                                 fingerprint=False, minimum=1, maximum=10_000_000)
    strict: bool = setting(False, "stop at the first record that cannot be translated instead of "
                                  "skipping and counting it")
    num_shards: int | None = sharding.num_shards_setting()
    shard_index: int | None = sharding.shard_index_setting()

    def validate(self, source):
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if not self.inputs:
            raise LlamantinoError(f"{source}: no input files given")
        if self.src == self.tgt:
            raise LlamantinoError(f"{source}: src and tgt are both '{self.src}'")
        if self.splitter not in ("model", "rules") and not self.splitter.endswith(".onnx"):
            raise LlamantinoError(f"{source}: setting 'splitter' is {self.splitter!r}; valid: model, rules "
                                  "or a MiniSBD .onnx file")
        if self.engine == "argos" and self.splitter != "model":
            raise LlamantinoError(f"{source}: the argos engine always splits with the package's own "
                                  "splitter; leave 'splitter' at 'model'")
        if not self.device_index or len(set(self.device_index)) != len(self.device_index):
            raise LlamantinoError(f"{source}: setting 'device_index' must list distinct GPU numbers, got "
                                  f"{self.device_index}")
        if self.device == "cpu" and self.device_index != [0]:
            raise LlamantinoError(f"{source}: setting 'device_index' chooses GPUs; it needs --device cuda")
        if self.engine == "argos" and self.device_index != [0]:
            raise LlamantinoError(f"{source}: the argos engine runs on one GPU (argostranslate has no device "
                                  "index); use the batched engine for several, or CUDA_VISIBLE_DEVICES")
        if self.workers == 0:  # CTranslate2's advice: inter x intra threads no more than the cores
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            self.workers = max(1, cores // max(self.threads, 1)) if self.device == "cpu" else 1
        if self.max_batch_size == 0:
            self.max_batch_size = AUTO_BATCH_TOKENS[self.device] if self.batch_type == "tokens" else 64


# ---------------------------------------------------------------------------------------
# Protecting what must not be translated

_FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
# Markdown block markers at the start of a line: headings, quotes, list items, check boxes.
_MARKERS = re.compile(r"[ \t]*(?:(?:#{1,6}|>|[-*+]|\d{1,9}[.)]|\[[ xX]\])(?=[ \t]|$)[ \t]*)*")
_PROTECTED = re.compile("|".join([
    r"(?P<link>(?P<open>!?\[)(?P<label>[^\[\]\n]*)(?P<close>\]\([^()\s]*(?:\([^()\s]*\)[^()\s]*)*\)))",
    r"(?P<code>(?P<ticks>`+)[^`].*?(?P=ticks))",
    r"(?P<url>(?:https?|ftp)://[^\s<>\"'`]+|www\.[A-Za-z0-9-]+\.[^\s<>\"'`]+)",
    r"(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)",
    r"(?P<placeholder>\{\{.*?\}\}|\{[^{}\s]{0,40}\}|%\(\w+\)[sdifr]|%[sd]|\$\{\w+\})",
    r"(?P<tag></?[A-Za-z][\w-]*(?:\s[^<>\n]*)?/?>)",
    r"(?P<mark>\*\*|~~|\|)",
]))
# Separators peeled off the ends of a piece of text (kept, not translated).
_LEADING = re.compile(r"[\s,;:.!?)\]}»”’\-–—/]+")
_TRAILING = re.compile(r"[\s(\[{«“‘\-–—/]+$")
_URL_TAIL = ".,;:!?'\""


def segment_text(text: str) -> list[tuple[bool, str]]:
    """Cut a text into (translate?, piece); the pieces joined give back `text` exactly."""
    out: list[tuple[bool, str]] = []
    fence = None  # opening marker of the fenced code block we are in
    lines = text.split("\n")
    for number, line in enumerate(lines):
        opening = _FENCE.match(line)
        if fence is not None:
            out.append((False, line))
            if (opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence)
                    and not line[opening.end():].strip()):
                fence = None
        elif opening:
            fence = opening.group(1)
            out.append((False, line))
        else:
            marker = _MARKERS.match(line).end()
            out.append((False, line[:marker]))
            _scan(line[marker:], out)
        if number < len(lines) - 1:
            out.append((False, "\n"))
    merged: list[tuple[bool, str]] = []
    for translate, piece in out:
        if not piece:
            continue
        if merged and not translate and not merged[-1][0]:
            merged[-1] = (False, merged[-1][1] + piece)
        else:
            merged.append((translate, piece))
    return merged


def _scan(text: str, out: list) -> None:
    """Protected spans of one line kept as they are; the text between them added as pieces."""
    pos = 0
    while True:
        match = _PROTECTED.search(text, pos)
        if match is None:
            _add_text(text[pos:], out)
            return
        start, end = match.span()
        if match.group("url"):
            url = match.group("url")
            # Sentence punctuation and unbalanced closing brackets after a URL are text.
            while url and (url[-1] in _URL_TAIL or (url[-1] == ")" and url.count(")") > url.count("("))):
                url = url[:-1]
            end = start + len(url)
        _add_text(text[pos:start], out)
        if match.group("link"):  # [label](target): the label is text, the rest is kept
            out.append((False, match.group("open")))
            _scan(match.group("label"), out)
            out.append((False, match.group("close")))
        else:
            out.append((False, text[start:end]))
        pos = end


def _add_text(piece: str, out: list) -> None:
    lead = _LEADING.match(piece)
    start = lead.end() if lead else 0
    trail = _TRAILING.search(piece, start)
    end = trail.start() if trail else len(piece)
    core = piece[start:end]
    if any(ch.isalpha() for ch in core):
        out += [(False, piece[:start]), (True, core), (False, piece[end:])]
    else:
        out.append((False, piece))


def translate_texts(texts: list[str], engine) -> list[str]:
    """Translate whole turns or fields: only their translatable pieces reach the engine."""
    plans = [segment_text(text) for text in texts]
    pieces = list(dict.fromkeys(piece for plan in plans for translate, piece in plan if translate))
    done = dict(zip(pieces, engine.translate(pieces))) if pieces else {}
    return ["".join(done[piece] if translate else piece for translate, piece in plan) for plan in plans]


# ---------------------------------------------------------------------------------------
# Records


class Skip(Exception):
    """A record this stage cannot translate: skipped and counted, or an error with --strict."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _turn(value, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise Skip("not_text", f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise Skip("empty_turn", f"{where}: field '{field}' is empty")
    return value


def translatable(record: dict, fmt: str, where: str) -> list[tuple[tuple, str]]:
    """(path, text) of every turn or field to translate, in order. Raises Skip."""
    from llamantino.data.records import FORMAT_FIELDS

    for field in FORMAT_FIELDS[fmt]:
        if field not in record:
            raise Skip("missing_field", f"{where}: field '{field}' missing (format {fmt})")
    if "original" in record:
        raise Skip("has_original", f"{where}: field 'original' already present (translated before?)")
    if fmt == "ultrachat":
        turns = record["data"]
        if not isinstance(turns, list) or not turns:
            raise Skip("no_turns", f"{where}: field 'data' must be a non-empty list of turns")
        if len(turns) % 2:
            raise Skip("odd_turns", f"{where}: field 'data' has {len(turns)} turns; the last user turn "
                                    "has no answer")
        return [(("data", i), _turn(t, where, f"data[{i}]")) for i, t in enumerate(turns)]
    if fmt == "ultrachat_200k":
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise Skip("no_turns", f"{where}: field 'messages' must be a non-empty list")
        out = []
        if "prompt" in record:
            out.append((("prompt",), _turn(record["prompt"], where, "prompt")))
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise Skip("missing_field", f"{where}: field 'messages[{i}]' needs 'role' and 'content'")
            out.append((("messages", i, "content"), _turn(message["content"], where, f"messages[{i}].content")))
        roles = [m["role"] for m in messages]
        body = roles[1:] if roles[0] == "system" else roles
        if not body or len(body) % 2 or body != ["user", "assistant"] * (len(body) // 2):
            raise Skip("roles_out_of_order", f"{where}: field 'messages' has roles {', '.join(map(str, roles))}; "
                                             "expected user and assistant alternating, user first and "
                                             "assistant last")
        return out
    out = []
    for field in TEXT_FIELDS[fmt]:
        value = record[field]
        if field in ("context", "input") and value in ("", None):
            continue  # an empty optional input stays empty
        out.append(((field,), _turn(value, where, field)))
    return out


def translated_record(record: dict, fmt: str, fields, translations: list[str]) -> dict:
    out = copy.deepcopy(record)
    for (path, _), text in zip(fields, translations):
        node = out
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = text
    out["original"] = {name: copy.deepcopy(record[name]) for name in TEXT_FIELDS[fmt] if name in record}
    return out


def _detect(record: dict, where: str) -> str:
    from llamantino.data.records import detect_format

    fmt = detect_format(record, where)
    if fmt not in FORMATS:
        raise LlamantinoError(f"{where}: records of format {fmt} are not translated (supported: "
                              f"{', '.join(FORMATS)}); pass --format if the detection is wrong")
    return fmt


def file_formats(files, fmt: str, max_line_bytes: int = MAX_LINE_BYTES) -> list[str | None]:
    """The format of each file: the one given, or detected from its first JSON object."""
    if fmt:
        return [fmt] * len(files)
    out = []
    for path in files:
        first = next(iter_jsonl(path, skip_bad_lines=True, max_line_bytes=max_line_bytes), None)
        out.append(_detect(first[1], f"{path}:{first[0]}") if first else None)
    return out


def _count_records(files, max_line_bytes: int = MAX_LINE_BYTES) -> int:
    """Non-empty lines of all inputs (for the progress bar's ETA), in a fast pass over the bytes
    that also finds, before anything is written, a truncated gzip file, an over-long line or an
    empty input."""
    import gzip
    import zlib

    from llamantino.core.fileio import read_line

    total = 0
    for path in files:
        count = number = offset = 0
        where = "of the decompressed text" if str(path).endswith(".gz") else "of the file"
        try:
            with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as handle:
                while line := read_line(handle, path, number + 1, offset, max_line_bytes, where):
                    number, offset = number + 1, offset + len(line)
                    count += bool(line.strip())
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise LlamantinoError(f"{path}: unreadable gzip file ({exc}); nothing was translated") from None
        if count == 0:
            raise LlamantinoError(f"{path}: empty input (no records)")
        total += count
    return total


# ---------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class Model:
    """A checked translation model; nothing is extracted or installed yet."""

    kind: str                 # ctranslate2 | argos-package | argosmodel | argos-installed
    path: Path
    from_code: str | None
    to_code: str | None
    stand_in: bool
    metadata: dict

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "from": self.from_code, "to": self.to_code,
                "stand_in": self.stand_in}


def _splitter_files(names) -> list[str]:
    return sorted(n for n in names if re.search(r"(^|/)minisbd/[^/]+\.onnx$", n))


def inspect_model(cfg: Config) -> Model:
    """Find and check the model before anything is written; one clear error if it is unusable."""
    if not cfg.model:
        return _installed_package(cfg)
    path = Path(cfg.model)
    if path.suffix == ".argosmodel":
        if not path.is_file():
            raise LlamantinoError(f"{path}: no such .argosmodel file")
        model = _inspect_argosmodel(path, cfg)
    elif path.is_dir() and (path / "metadata.json").is_file():
        metadata = read_json_object(path / "metadata.json", "package metadata")
        names = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]
        _check_package(path, metadata, names, cfg)
        model = Model("argos-package", path, metadata.get("from_code"), metadata.get("to_code"),
                      bool(metadata.get("stand_in")), metadata)
    elif path.is_dir() and (path / "model.bin").is_file():
        info = read_json_object(path / "model_info.json", "model info") if (path / "model_info.json").is_file() \
            else {}
        if cfg.engine == "argos":
            raise LlamantinoError(f"{path}: the argos engine needs an Argos package (.argosmodel or an "
                                  "installed package), not a CTranslate2 folder")
        if not (path / "sentencepiece.model").is_file() and not (
                (path / "source.spm").is_file() and (path / "target.spm").is_file()):
            raise LlamantinoError(f"{path}: no SentencePiece model (sentencepiece.model, or source.spm and "
                                  "target.spm) in the CTranslate2 folder")
        if cfg.splitter == "model" and not _splitter_files(str(p.relative_to(path)) for p in path.rglob("*.onnx")):
            raise LlamantinoError(f"{path}: the folder carries no sentence splitter (minisbd/*.onnx); pass "
                                  "--splitter rules or --splitter FILE.onnx")
        model = Model("ctranslate2", path, info.get("from_code"), info.get("to_code"),
                      bool(info.get("stand_in")), info)
    elif path.exists():
        raise LlamantinoError(f"{path}: neither a CTranslate2 model folder (model.bin), an Argos package folder "
                              "(metadata.json) nor an .argosmodel file")
    else:
        raise LlamantinoError(f"{path}: no such model folder")
    if model.from_code and model.to_code and (model.from_code, model.to_code) != (cfg.src, cfg.tgt):
        raise LlamantinoError(f"{path}: the model translates {model.from_code} -> {model.to_code}, not "
                              f"{cfg.src} -> {cfg.tgt}")
    if cfg.splitter.endswith(".onnx") and not Path(cfg.splitter).is_file():
        raise LlamantinoError(f"{cfg.splitter}: no such MiniSBD model file")
    return model


def _inspect_argosmodel(path: Path, cfg: Config) -> Model:
    if not zipfile.is_zipfile(path):
        raise LlamantinoError(f"{path}: not an Argos package (an .argosmodel is a zip archive)")
    with zipfile.ZipFile(path) as zf:
        names = archive_members(path, zf)
        roots = {n.split("/")[0] for n in names}
        if len(roots) != 1 or f"{min(roots)}/metadata.json" not in names:
            raise LlamantinoError(f"{path}: an .argosmodel holds one folder with metadata.json at its top")
        root = min(roots)
        try:
            metadata = json.loads(zf.read(f"{root}/metadata.json").decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise LlamantinoError(f"{path}: {root}/metadata.json is not valid JSON ({exc})") from None
        if not isinstance(metadata, dict):
            raise LlamantinoError(f"{path}: {root}/metadata.json is a JSON {type(metadata).__name__}, not an object")
    _check_package(path, metadata, [n[len(root) + 1:] for n in names], cfg)
    return Model("argosmodel", path, metadata.get("from_code"), metadata.get("to_code"),
                 bool(metadata.get("stand_in")), metadata)


# An .argosmodel is a stranger's zip: what it may unpack to. Argos models compress about 1x to
# 3x (int8 weights, SentencePiece models); a zip bomb compresses zeros a thousandfold.
MAX_ARGOSMODEL_BYTES = 4 << 30
MAX_ARGOSMODEL_RATIO = 100  # unpacked / packed size of any member over 1 MiB


def archive_members(path: Path, zf: zipfile.ZipFile) -> list[str]:
    """Names of the files in an .argosmodel (a zip from anyone), each checked to be a plain relative
    name that stays inside the folder it is extracted to; links and special files refused; the
    sizes the archive announces within MAX_ARGOSMODEL_BYTES and MAX_ARGOSMODEL_RATIO."""
    import stat

    from llamantino.core.fileio import check_member_name

    names, total = [], 0
    for info in zf.infolist():
        mode = info.external_attr >> 16  # Unix permission and type bits, when a Unix tool wrote the zip
        what = f"{path}: member {info.filename!r}"
        if stat.S_ISLNK(mode) or (stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
            raise LlamantinoError(f"{what} is a {'symbolic link' if stat.S_ISLNK(mode) else 'special file'}; "
                                  "an .argosmodel holds plain files only")
        check_member_name(info.filename[:-1] if info.is_dir() else info.filename, what)
        if info.is_dir():
            continue
        names.append(info.filename)
        total += info.file_size
        if info.file_size > 1 << 20 and info.file_size > MAX_ARGOSMODEL_RATIO * max(1, info.compress_size):
            raise LlamantinoError(f"{what} unpacks to {info.file_size} bytes from {info.compress_size}, more than "
                                  f"{MAX_ARGOSMODEL_RATIO} times its packed size: refused as a zip bomb")
    if total > MAX_ARGOSMODEL_BYTES:
        raise LlamantinoError(f"{path}: unpacks to {total} bytes; an .argosmodel may unpack to at most "
                              f"{MAX_ARGOSMODEL_BYTES} bytes")
    # A name that is both a file and a folder of other members cannot be extracted.
    folders = {name.rsplit("/", 1)[0] for name in names if "/" in name}
    folders |= {folder.rsplit("/", i)[0] for folder in folders for i in range(1, folder.count("/") + 1)}
    clash = sorted(set(names) & folders)
    if clash:
        raise LlamantinoError(f"{path}: member {clash[0]!r} is both a file and a folder of other members")
    return names


def extract_argosmodel(path: Path, folder: Path) -> Path:
    """Unpack a checked .argosmodel into the new folder `folder`, each member through safe_join,
    counting the bytes as they come (an archive may announce sizes it does not keep); its root
    folder. A damaged archive is one line; the caller removes `folder`."""
    import zlib

    from llamantino.core.fileio import safe_join

    written = 0
    try:
        with zipfile.ZipFile(path) as zf:
            names = archive_members(path, zf)
            for name in names:
                target = safe_join(folder, name, f"{path}: member")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as source, open(target, "xb") as handle:
                    while block := source.read(1 << 20):
                        written += len(block)
                        if written > MAX_ARGOSMODEL_BYTES:
                            raise LlamantinoError(f"{path}: unpacks to more than {MAX_ARGOSMODEL_BYTES} bytes")
                        handle.write(block)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise LlamantinoError(f"{path}: damaged archive ({exc}); nothing installed") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise LlamantinoError(f"{path}: members whose names clash (a file and a folder, or a name twice)") from None
    return folder / names[0].split("/")[0]


def install_argosmodel(path: Path, packages: Path) -> Path:
    """Install an .argosmodel into the packages folder as argostranslate would, but unpacked
    into a temporary folder there and moved into place only when complete: a failed extraction
    installs nothing, and an installed package is never written over (the same package
    installed again is used as it is; another one under the same name is refused)."""
    import filecmp

    packages.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".llamantino-install-", dir=packages))  # argos lists no hidden folder
    try:
        root = extract_argosmodel(path, tmp)
        target = packages / root.name
        if not target.exists():
            try:
                os.rename(root, target)  # fails if another process installed it meanwhile
                return target
            except OSError:
                if not target.exists():
                    raise
        new = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        old = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
        if new != old or not all(filecmp.cmp(root / n, target / n, shallow=False) for n in new):
            raise LlamantinoError(f"{target}: an installed package of that name differs from {path}; it is left as "
                                  "it is: remove it, or set --argos-packages-dir to another folder")
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_package(path, metadata: dict, names: list[str], cfg: Config) -> None:
    """An Argos package: metadata.json, model/, a tokenizer and, to stay offline, minisbd/*.onnx."""
    pair = (metadata.get("from_code"), metadata.get("to_code"))
    if pair != (cfg.src, cfg.tgt):
        raise LlamantinoError(f"{path}: the package translates {pair[0]} -> {pair[1]}, not {cfg.src} -> {cfg.tgt}")
    if "model/model.bin" not in names:
        raise LlamantinoError(f"{path}: the package has no CTranslate2 model (model/model.bin)")
    if cfg.engine == "batched" and "sentencepiece.model" not in names:
        raise LlamantinoError(f"{path}: the package has no sentencepiece.model; the batched engine needs one "
                              "(use --engine argos for BPE packages)")
    if (cfg.engine == "argos" or cfg.splitter == "model") and not _splitter_files(names):
        raise LlamantinoError(f"{path}: the package carries no MiniSBD sentence splitter (minisbd/*.onnx), so "
                              "argostranslate would download one; use --engine batched --splitter rules")


def _installed_package(cfg: Config) -> Model:
    settings = import_argos(cfg)
    from argostranslate import package

    found = [p for p in package.get_installed_packages()
             if p.type == "translate" and (p.from_code, p.to_code) == (cfg.src, cfg.tgt)]
    if len(found) != 1:
        what = "no package" if not found else f"{len(found)} packages ({', '.join(str(p.package_path) for p in found)})"
        raise LlamantinoError(f"{settings.package_data_dir}: {what} installed for {cfg.src} -> {cfg.tgt}; "
                              "pass --model with a package, an .argosmodel or a CTranslate2 folder")
    pkg = found[0]
    metadata = read_json_object(pkg.package_path / "metadata.json", "package metadata")
    names = [str(p.relative_to(pkg.package_path)) for p in pkg.package_path.rglob("*") if p.is_file()]
    _check_package(pkg.package_path, metadata, names, cfg)
    return Model("argos-installed", pkg.package_path, pkg.from_code, pkg.to_code, bool(metadata.get("stand_in")),
                 metadata)


def check_device(cfg: Config) -> None:
    """The device and compute type asked for exist here; one line naming what does otherwise."""
    import ctranslate2

    if cfg.device == "cuda":
        count = ctranslate2.get_cuda_device_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
        if count == 0:
            raise LlamantinoError(f"--device cuda --device-index {' '.join(map(str, cfg.device_index))}: "
                                  f"CTranslate2 finds no CUDA device on this machine{seen}; available: cpu "
                                  "(--device cpu)")
        missing = [i for i in cfg.device_index if i >= count]
        if missing:
            raise LlamantinoError(f"--device-index {' '.join(map(str, cfg.device_index))}: no GPU {missing[0]}; "
                                  f"CTranslate2 finds {count} CUDA device(s){seen}: "
                                  f"{' '.join(map(str, range(count)))}")
    if cfg.compute_type not in ("auto", "default"):
        for index in cfg.device_index if cfg.device == "cuda" else [0]:
            supported = ctranslate2.get_supported_compute_types(cfg.device, index)
            if cfg.compute_type not in supported:
                where = f"GPU {index}" if cfg.device == "cuda" else "this CPU"
                raise LlamantinoError(f"--compute-type {cfg.compute_type}: not supported on {where}; supported: "
                                      f"{', '.join(sorted(supported))}, auto")


def import_argos(cfg: Config, *, translating: bool = False):
    """Import argostranslate with our settings: it reads them from the environment once, at import."""
    wanted = {"ARGOS_DEVICE_TYPE": cfg.device, "ARGOS_INTRA_THREADS": str(cfg.threads),
              "ARGOS_INTER_THREADS": str(cfg.workers), "ARGOS_BEAM_SIZE": str(cfg.beam_size),
              "ARGOS_COMPUTE_TYPE": cfg.compute_type}
    if cfg.argos_packages_dir:
        wanted["ARGOS_PACKAGES_DIR"] = str(Path(cfg.argos_packages_dir).resolve())
    if "argostranslate.settings" not in sys.modules:
        os.environ.update(wanted)
    elif not translating:  # only the packages folder matters for finding a package
        wanted = {k: v for k, v in wanted.items() if k == "ARGOS_PACKAGES_DIR"}
    from argostranslate import settings

    actual = {"ARGOS_PACKAGES_DIR": str(Path(settings.package_data_dir).resolve()),
              "ARGOS_DEVICE_TYPE": settings.device, "ARGOS_INTRA_THREADS": str(settings.intra_threads),
              "ARGOS_INTER_THREADS": str(settings.inter_threads), "ARGOS_BEAM_SIZE": str(settings.beam_size),
              "ARGOS_COMPUTE_TYPE": settings.compute_type}
    differ = [f"{k}={actual[k]} (wanted {v})" for k, v in wanted.items() if actual[k] != v]
    if differ:
        raise LlamantinoError("argostranslate was imported earlier in this process with other settings: "
                              f"{', '.join(differ)}; run the translation in a fresh process")
    # Other chunk types (Stanza, spaCy) and providers download models or call remote services.
    if settings.model_provider != settings.ModelProvider.OPENNMT or settings.chunk_type not in (
            settings.ChunkType.ARGOSTRANSLATE, settings.ChunkType.MINISBD):
        raise LlamantinoError("argostranslate is set to use a remote provider or a downloading sentence "
                              "splitter (ARGOS_MODEL_PROVIDER / ARGOS_CHUNK_TYPE); unset them")
    return settings


# ---------------------------------------------------------------------------------------
# Sentence splitting and the two engines

_SENTENCE_GAP = re.compile(r"(?<=[.!?…])\s+")


def rule_sentences(text: str) -> list[str]:
    """A sentence ends at . ! ? or … followed by whitespace (the stand-in's MiniSBD rule too)."""
    return [s for s in _SENTENCE_GAP.split(text) if s]


def with_gaps(text: str, sentences: list[str]) -> list[tuple[bool, str]]:
    """(is sentence?, piece) covering `text` exactly: the splitter's sentences and what lies between."""
    out, pos = [], 0
    for sentence in sentences:
        sentence = sentence.strip()
        if not sentence:
            continue
        start = text.find(sentence, pos)
        if start < 0:
            raise RuntimeError(f"sentence splitter returned text not found in the input: {sentence!r}")
        out += [(False, text[pos:start]), (True, sentence)]
        pos = start + len(sentence)
    out.append((False, text[pos:]))
    return [(is_sentence and any(ch.isalpha() for ch in piece), piece) for is_sentence, piece in out if piece]


class BatchedEngine:
    """Sentences of many records through one `Translator.translate_batch` call."""

    def __init__(self, root: Path, layout: str, cfg: Config, target_prefix: str = ""):
        import ctranslate2
        import sentencepiece as spm

        if layout == "argos":
            ct2_dir, source_spm, target_spm, self.source_eos = root / "model", root / "sentencepiece.model", None, []
        elif (root / "sentencepiece.model").is_file():
            ct2_dir, source_spm, target_spm, self.source_eos = root, root / "sentencepiece.model", None, []
        else:
            # A converted opus-mt folder: tokenise as MarianTokenizer does, source ending in </s>.
            ct2_dir, source_spm, target_spm, self.source_eos = root, root / "source.spm", root / "target.spm", ["</s>"]
        # On several GPUs CTranslate2 keeps one model copy per GPU and runs the sub-batches of one
        # translate_batch call (cut by max_batch_size) on all of them at once.
        try:
            self.translator = ctranslate2.Translator(str(ct2_dir), device=cfg.device, device_index=cfg.device_index,
                                                     compute_type=cfg.compute_type, inter_threads=cfg.workers,
                                                     intra_threads=cfg.threads)
        except (RuntimeError, ValueError, IndexError, KeyError) as exc:  # a damaged or foreign model.bin, say
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlamantinoError(f"{ct2_dir / 'model.bin'}: CTranslate2 cannot load the model ({why})") from None
        try:
            self.sp_source = spm.SentencePieceProcessor(model_file=str(source_spm))
            self.sp_target = (spm.SentencePieceProcessor(model_file=str(target_spm)) if target_spm
                              else self.sp_source)
        except (RuntimeError, OSError) as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LlamantinoError(f"{ct2_dir}: a SentencePiece model that does not load ({why})") from None
        if cfg.splitter == "rules":
            self.split = rule_sentences
        else:
            from minisbd import SBDetect

            onnx = Path(cfg.splitter) if cfg.splitter.endswith(".onnx") else (
                root / _splitter_files(str(p.relative_to(root)) for p in root.rglob("*.onnx"))[0])
            # A path (not a language code) makes MiniSBD load the file instead of downloading.
            self.split = SBDetect(str(onnx.resolve()), use_gpu=False, max_threads=1).sentences
        self.target_prefix = target_prefix
        self.beam_size, self.max_batch_size, self.batch_type = cfg.beam_size, cfg.max_batch_size, cfg.batch_type
        self.segments = self.sentences = self.long_inputs = self.length_limited = 0

    def translate(self, texts: list[str]) -> list[str]:
        self.segments += len(texts)
        plans, order, index = [], [], {}
        for text in texts:
            plan = []
            for is_sentence, piece in with_gaps(text, self.split(text)):
                if is_sentence:
                    if piece not in index:
                        index[piece] = len(order)
                        order.append(piece)
                    plan.append(index[piece])
                else:
                    plan.append(piece)
            plans.append(plan)
        done = self.translate_sentences(order)
        return ["".join(done[p] if isinstance(p, int) else p for p in plan) for plan in plans]

    def translate_sentences(self, sentences: list[str]) -> list[str]:
        if not sentences:
            return []
        tokens = [self.sp_source.encode(s, out_type=str) + self.source_eos for s in sentences]
        self.sentences += len(tokens)
        self.long_inputs += sum(len(t) > 1024 for t in tokens)  # CTranslate2's max_input_length cuts them
        results = self.translator.translate_batch(
            tokens, max_batch_size=self.max_batch_size, batch_type=self.batch_type, beam_size=self.beam_size,
            num_hypotheses=1, length_penalty=LENGTH_PENALTY, replace_unknowns=True,
            target_prefix=[[self.target_prefix]] * len(tokens) if self.target_prefix else None)
        out = []
        for result in results:
            pieces = result.hypotheses[0]
            self.length_limited += len(pieces) >= 256  # CTranslate2's max_decoding_length
            if self.target_prefix and pieces[:1] == [self.target_prefix]:
                pieces = pieces[1:]
            out.append(self.sp_target.decode(pieces).strip())
        return out


class ArgosEngine:
    """`argostranslate.translate.translate()` once per piece of text: the reference path."""

    def __init__(self, model: Model, cfg: Config):
        settings = import_argos(cfg, translating=True)
        from argostranslate import package, translate

        if model.kind == "argosmodel":
            # What package.install_from_path does (unzip into the packages folder, offline), with
            # every member name and size checked first, and moved into place once complete.
            install_argosmodel(model.path, Path(settings.package_data_dir))
            translate.get_installed_languages.cache_clear()
        elif model.kind == "argos-package" and model.path.resolve().parent != Path(settings.package_data_dir).resolve():
            raise LlamantinoError(f"{model.path}: the argos engine translates only with installed packages; give "
                                  "the .argosmodel file, or set --argos-packages-dir to the folder holding this one")
        found = [p for p in package.get_installed_packages()
                 if p.type == "translate" and (p.from_code, p.to_code) == (cfg.src, cfg.tgt)]
        if len(found) != 1:
            raise LlamantinoError(f"{settings.package_data_dir}: {len(found)} packages installed for "
                                  f"{cfg.src} -> {cfg.tgt}; exactly one is needed")
        if not _splitter_files(str(p.relative_to(found[0].package_path)) for p in found[0].package_path.rglob("*")):
            raise LlamantinoError(f"{found[0].package_path}: the installed package carries no minisbd/*.onnx; "
                                  "argostranslate would download a sentence splitter")
        self.translate_one = translate.translate
        self.src, self.tgt = cfg.src, cfg.tgt
        self.segments = 0
        self.sentences = self.long_inputs = self.length_limited = None

    def translate(self, texts: list[str]) -> list[str]:
        self.segments += len(texts)
        return [self.translate_one(text, self.src, self.tgt) for text in texts]


def open_engine(cfg: Config, model: Model, stack: contextlib.ExitStack):
    if cfg.engine == "argos":
        return ArgosEngine(model, cfg)
    if model.kind == "ctranslate2":
        return BatchedEngine(model.path, "ctranslate2", cfg)
    root = model.path
    if model.kind == "argosmodel":
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llamantino-argosmodel-")))
        root = extract_argosmodel(model.path, tmp)
    return BatchedEngine(root, "argos", cfg, target_prefix=model.metadata.get("target_prefix", ""))


# ---------------------------------------------------------------------------------------
# The stage


def _input_signature(files) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _new_progress(files) -> dict:
    return {"inputs": _input_signature(files), "position": [0, 0], "parts": 0,
            "read": 0, "translated": 0, "skipped": {}, "examples": [], "fields": 0, "characters": 0,
            "segments": 0, "sentences": 0, "long_inputs": 0, "length_limited": 0, "seconds": 0.0}


def work_parts(out: Path) -> Parts:
    """The committed chunks and the progress file that commits them."""
    return Parts(out, width=6, suffix=".jsonl", folder=PARTS_DIR)


def _kept(progress: dict | None) -> str:
    """What a run stopped by a full disk keeps, from its last committed progress."""
    progress = progress or {"parts": 0, "read": 0}
    return f"{progress['parts']} finished chunk(s) ({progress['read']} records)"


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Translate `cfg.inputs` into `cfg.output`. An interrupted run with the same settings is
    always continued (committed chunks are final), whether or not `resume` is set."""
    from llamantino.core.fileio import expand_inputs

    files = expand_inputs(cfg.inputs)
    cfg, shard = sharding.resolve(cfg)  # an array task: part shard_index of num_shards, in its own folder
    ranges = sharding.line_ranges(files, shard)
    formats = file_formats(files, cfg.format, cfg.max_line_bytes)
    total = _count_records(files, cfg.max_line_bytes)  # reads every input: a truncated or empty one stops us here
    model = inspect_model(cfg)
    check_device(cfg)
    out, state = sharding.prepare(cfg, shard, KIND, overwrite=overwrite)
    parts = work_parts(out)
    with parts.guard(_kept):  # a full disk keeps the committed chunks: the same command resumes
        return _run(cfg, files, formats, total, model, parts, state, shard, ranges)


def _run(cfg: Config, files, formats, total: int, model: Model, parts: Parts, state: str, shard, ranges) -> dict:
    from llamantino.core.fileio import atomic_open
    from llamantino.core.manifest import describe_inputs, read_manifest, start_run, write_manifest

    out = parts.out
    if state == "complete":
        parts.remove_work()  # left behind by a run killed right after its manifest
        return {"status": "skipped (done)", **_summary(read_manifest(out)["metrics"])}
    progress = parts.read_progress() if state == "resume" else None
    if progress is not None:
        if progress["inputs"] != _input_signature(files) or progress.get("lines") != ranges:
            raise LlamantinoError(f"{out}: the input files changed since the interrupted run; pass --overwrite "
                                  "to start again")
        log.info("translate: resuming after %d records (%d parts)", progress["read"], progress["parts"])
    with contextlib.ExitStack() as stack:
        engine = open_engine(cfg, model, stack)  # a model that does not load fails before the folder is claimed
        if progress is None:
            start_run(out, KIND, cfg, outputs=[f"{PARTS_DIR}/", PROGRESS, OUTPUT_FILE])
            parts.remove_work()
            progress = {**_new_progress(files), "lines": ranges}  # ranges: this part's lines of each file
        else:
            parts.remove_stale(progress["parts"])
        _translate_all(cfg, files, formats, engine, progress, parts, total, ranges)
    with atomic_open(out / OUTPUT_FILE) as handle:
        for number in range(progress["parts"]):
            with open(parts.path(number), encoding="utf-8") as part:
                shutil.copyfileobj(part, handle)
    metrics = _metrics(progress, cfg)
    write_manifest(out, KIND, cfg, inputs=describe_inputs(files), metrics=metrics,
                   extra={"stand_in": model.stand_in, "model": model.describe(), "output_file": OUTPUT_FILE,
                          **sharding.manifest_entry(shard, sharding.plan([str(f) for f in files], shard))})
    parts.remove_work()
    if model.stand_in:
        log.warning("translate: the model is a stand-in; its translations are nonsense")
    return {"status": "done", **_summary(metrics)}


def _translate_all(cfg: Config, files, formats, engine, progress: dict, parts: Parts, total: int,
                   ranges=None) -> None:
    from tqdm import tqdm

    from llamantino.core.fileio import atomic_write_text

    parts.folder.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=total, initial=progress["read"], unit="rec", desc="translate",
               dynamic_ncols=True, mininterval=1.0)
    chunk: list = []  # (record, format, fields)
    position = list(progress["position"])

    def commit():
        if chunk:
            texts = [text for _, _, fields in chunk for _, text in fields]
            before = {k: getattr(engine, k) for k in ("segments", "sentences", "long_inputs", "length_limited")}
            t0 = time.perf_counter()
            translations = translate_texts(texts, engine)
            progress["seconds"] += time.perf_counter() - t0
            for key, value in before.items():
                if value is not None:
                    progress[key] += getattr(engine, key) - value
            lines, used = [], 0
            for record, fmt, fields in chunk:
                record_out = translated_record(record, fmt, fields, translations[used:used + len(fields)])
                lines.append(json.dumps(record_out, ensure_ascii=False))
                used += len(fields)
            atomic_write_text(parts.path(progress["parts"]), "\n".join(lines) + "\n")
            progress["parts"] += 1
            progress["translated"] += len(chunk)
            progress["fields"] += len(texts)
            progress["characters"] += sum(len(t) for t in texts)
        progress["position"] = position
        parts.commit(progress)  # the commit point
        bar.update(progress["read"] - bar.n)
        if progress["seconds"] > 0:
            rate = (progress["sentences"] or progress["segments"]) / progress["seconds"]
            bar.set_postfix_str(f"{rate:.0f} {'sent' if progress['sentences'] else 'seg'}/s", refresh=False)
        chunk.clear()

    def skipped(skip: Skip) -> None:
        if cfg.strict:
            raise LlamantinoError(f"{skip.message} (--strict)") from None
        progress["skipped"][skip.reason] = progress["skipped"].get(skip.reason, 0) + 1
        if len(progress["examples"]) < MAX_EXAMPLES:
            progress["examples"].append(skip.message)
            log.warning("skipped: %s", skip.message)

    for file_index, path in enumerate(files):
        if file_index < position[0]:
            continue
        skip, last = ranges[file_index] if ranges else (0, None)  # this part's lines of the file
        start_line = max(position[1] if file_index == position[0] else 0, skip)
        fmt = formats[file_index]

        def bad_line(number: int, problem: str, path=path, last=last) -> None:
            if last is None or number <= last:  # a line of this part: read, and skipped
                progress["read"] += 1
                skipped(Skip("malformed_json", f"{path}:{number}: {problem}"))

        for number, record in iter_jsonl(path, skip_bad_lines=True, start_line=start_line,
                                         max_line_bytes=cfg.max_line_bytes, on_bad_line=bad_line):
            if last is not None and number > last:
                break
            where = f"{path}:{number}"
            progress["read"] += 1
            try:
                chunk.append((record, fmt, translatable(record, fmt, where)))
            except Skip as skip:
                skipped(skip)
            position = [file_index, number]
            if len(chunk) >= cfg.chunk_records:
                commit()
        position = [file_index + 1, 0]
    commit()
    bar.close()
    if progress["skipped"]:
        log.warning("translate: skipped %d records (%s); the manifest quotes the first %d",
                    sum(progress["skipped"].values()),
                    ", ".join(f"{k}: {v}" for k, v in progress["skipped"].items()), MAX_EXAMPLES)


def _metrics(progress: dict, cfg: Config) -> dict:
    seconds = progress["seconds"]
    rate = lambda n: round(n / seconds, 1) if seconds and n is not None else None  # noqa: E731
    batched = cfg.engine == "batched"
    return {
        "records_read": progress["read"], "records_translated": progress["translated"],
        "records_skipped": sum(progress["skipped"].values()), "skipped_by_reason": progress["skipped"],
        "skipped_examples": progress["examples"], "fields_translated": progress["fields"],
        "characters": progress["characters"], "segments": progress["segments"],
        "sentences": progress["sentences"] if batched else None,
        "seconds_translating": round(seconds, 2), "records_per_s": rate(progress["translated"]),
        "segments_per_s": rate(progress["segments"]),
        "sentences_per_s": rate(progress["sentences"]) if batched else None,
        "inputs_over_1024_tokens": progress["long_inputs"] if batched else None,
        "outputs_at_256_tokens": progress["length_limited"] if batched else None,
        "engine": cfg.engine, "splitter": cfg.splitter if batched else "package (argostranslate)",
        "threads": cfg.threads, "workers": cfg.workers, "beam_size": cfg.beam_size,
        "device": cfg.device, "device_index": cfg.device_index if cfg.device == "cuda" else None,
        "compute_type": cfg.compute_type,
        "max_batch_size": cfg.max_batch_size if batched else None, "batch_type": cfg.batch_type if batched else None,
    }


def _summary(metrics: dict) -> dict:
    headline = {"translated": metrics["records_translated"], "skipped": metrics["records_skipped"]}
    if metrics.get("sentences_per_s") is not None:
        headline["sentences_per_s"] = metrics["sentences_per_s"]
    else:
        headline["segments_per_s"] = metrics["segments_per_s"]
    return {"headline": headline, "metrics": metrics}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"inputs": {
        "nargs": "*", "metavar": "INPUT",
        "help": "JSON-lines files or folders (UltraChat, ultrachat_200k, Dolly, Alpaca)"}})


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    return run_stage_command(KIND, args, positional=("inputs",))
