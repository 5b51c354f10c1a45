"""Reading inputs and writing outputs safely.

* JSON lines, gzipped or not, with errors that name the file and line;
* atomic writes: a file appears under its final name only when complete;
* output folders that refuse to mix two different runs.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

from llamantino.core.errors import LlamantinoError, shown

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
# The longest line a reader takes, in bytes (a stage's `max_line_bytes` setting where it has
# one): a file without line endings is refused at this size, not read whole into memory.
MAX_LINE_BYTES = 8 << 20


def max_line_bytes_setting():
    """The `max_line_bytes` setting of a stage that reads JSON lines."""
    from llamantino.core.config import setting

    return setting(MAX_LINE_BYTES, "longest input line, in bytes: a longer one is an error naming the file, line and "
                                   "byte offset (a file without line ends is never read whole)", fingerprint=False,
                   minimum=1024, maximum=1 << 31)


def is_gzip(path: Path) -> bool:
    return str(path).endswith(".gz")


def open_text(path, mode: str = "rt"):
    """Open a text file, transparently gunzipping `.gz` files."""
    path = Path(path)
    if is_gzip(path):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class LineStats:
    """What a reader of JSON lines or paragraphs has done: lines read and skipped, and where
    it stands (`line`: lines read so far; `byte`: offset just after them in the file, or in
    the decompressed text of a `.gz` file), the place to resume from."""

    def __init__(self):
        self.read = 0
        self.bad = 0
        self.line = 0
        self.byte = 0


def _split_line_endings(raw: bytes) -> list[bytes]:
    """One `\n`-terminated chunk -> its lines as Python's text mode sees them (a lone `\r`
    also ends a line), each with its own ending, so byte offsets stay exact."""
    pieces = [part + b"\r" for part in raw.split(b"\r")]
    last = pieces.pop()[:-1]
    if last == b"\n":  # "\r\n" is one ending
        pieces[-1] += last
    elif last:
        pieces.append(last)
    return pieces


def read_line(handle, path, number: int | None, offset: int, limit: int, where: str = "of the file") -> bytes:
    """The next line of a binary file (b"" at the end), at most `limit` bytes before its `\n`:
    a longer one is an error naming the file, the line (when its number is known) and the
    byte offset where it starts, read no further than `limit` bytes."""
    line = handle.readline(limit + 1)
    if len(line) > limit and not line.endswith(b"\n"):  # limit + 1 bytes and still no line end
        at = f"{path}:{number}: line" if number is not None else f"{path}: the line"
        raise LlamantinoError(f"{at} starting at byte {offset} {where} is longer than {limit} bytes; a longer "
                              "line is refused, not read into memory: raise max_line_bytes if the file is right")
    return line


def iter_text_lines(path, *, start_byte: int = 0, start_line: int = 0, stats: LineStats | None = None,
                    max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (gunzipped if `.gz`), endings
    turned into `\n` as in text mode. Reading starts at `start_byte`, the start of line
    `start_line + 1`; `stats.line` / `stats.byte` follow the lines read. Bad bytes, damaged
    gzip data and a line over `max_line_bytes` are errors naming the file, the line and the
    byte offset."""
    path = Path(path)
    stats = stats or LineStats()
    stats.line, stats.byte = start_line, start_byte
    where = "of the decompressed text" if is_gzip(path) else "of the file"
    with (gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")) as raw_handle:
        handle = _GzipReader(raw_handle, path, stats, where) if is_gzip(path) else raw_handle
        _seek_to_line_start(handle, path, start_byte)
        while chunk := read_line(handle, path, stats.line + 1, stats.byte, max_line_bytes, where):
            for piece in _split_line_endings(chunk) if b"\r" in chunk else (chunk,):
                try:
                    text = piece.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise LlamantinoError(f"{path}:{stats.line + 1}: not UTF-8 text ({exc.reason} at byte "
                                          f"{stats.byte + exc.start} {where})") from None
                stats.line += 1
                stats.byte += len(piece)
                if text.endswith("\r\n"):
                    text = text[:-2] + "\n"
                elif text.endswith("\r"):
                    text = text[:-1] + "\n"
                yield stats.line, text


class _GzipReader:
    """A gzip file read by lines, whose damaged data is an error naming the file, the line
    and the offset. (A class, not a generator: no exception handler sits around a `yield`.)"""

    def __init__(self, handle, path: Path, stats: LineStats, where: str):
        self.handle, self.path, self.stats, self.where = handle, path, stats, where

    def readline(self, size: int = -1) -> bytes:
        return self._guard(self.handle.readline, size)

    def seek(self, offset: int):
        return self._guard(self.handle.seek, offset)

    def read(self, size: int) -> bytes:
        return self._guard(self.handle.read, size)

    def _guard(self, call, *args):
        try:
            return call(*args)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise LlamantinoError(f"{self.path}: unreadable gzip file ({exc}) at line {self.stats.line + 1}, "
                                  f"byte {self.stats.byte} {self.where}") from None


def _seek_to_line_start(handle, path: Path, offset: int) -> None:
    """Move to `offset`, which must follow a line ending (a gzip stream is decompressed up to
    it, not parsed): a file changed since the offset was taken is refused, not misread."""
    if offset <= 0:
        return
    handle.seek(offset - 1)
    before = handle.read(1)
    if before in (b"\n", b"\r") or (before and not handle.read(1)):  # a line start, or the very end
        return
    raise LlamantinoError(f"{path}: byte {offset} is not the start of a line; the file changed since "
                          "the position was saved (resume with the same data)")


def iter_jsonl(path, *, skip_bad_lines: bool = False, stats: LineStats | None = None,
               start_line: int = 0, start_byte: int = 0, skip_option: bool = False,
               max_line_bytes: int = MAX_LINE_BYTES,
               on_bad_line: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) for each non-empty line; 1-based line numbers.

    A malformed line is an error naming file and line, unless `skip_bad_lines`, in which
    case it is counted in `stats.bad` and passed, with its number and what is wrong with it,
    to `on_bad_line` (a caller that reports each skipped line); `skip_option` says the caller
    has a `--skip-bad-lines` option to suggest. Resume: with `start_byte`, reading starts there, at the start of line
    `start_line + 1`; without it, the first `start_line` lines are passed over unparsed.
    `stats.line` / `stats.byte` give the position after the last record yielded.
    """
    path = Path(path)
    stats = stats or LineStats()
    skip_lines = 0 if start_byte else start_line
    for number, line in iter_text_lines(path, start_byte=start_byte, start_line=start_line if start_byte else 0,
                                        stats=stats, max_line_bytes=max_line_bytes):
        if number <= skip_lines or not line.strip():
            continue
        record = parse_json_object(line, f"{path}:{number}", stats, skip_bad_lines=skip_bad_lines,
                                   skip_option=skip_option,
                                   on_bad_line=on_bad_line and (lambda problem: on_bad_line(number, problem)))
        if record is not None:
            yield number, record


def parse_json_object(line: str, where: str, stats: LineStats, *, skip_bad_lines: bool = False,
                      skip_option: bool = True, on_bad_line: Callable[[str], None] | None = None) -> dict | None:
    """The JSON object on one non-blank line (counted in `stats.read`). A malformed line or
    another JSON value is one error naming `where`, or with `skip_bad_lines` None, counted
    in `stats.bad` and what is wrong with it passed to `on_bad_line`."""
    stats.read += 1
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        # Some messages end in "at" ("Unterminated string starting at").
        place = f"column {exc.colno}" if exc.msg.endswith(" at") else f"at column {exc.colno}"
        problem = f"malformed JSON ({exc.msg} {place})"
        hint = "; fix the line or pass --skip-bad-lines" if skip_option else "; fix the line"
    else:
        if isinstance(record, dict):
            return record
        problem, hint = f"expected a JSON object, got {type(record).__name__}", ""
    if not skip_bad_lines:
        raise LlamantinoError(f"{where}: {problem}{hint}")
    stats.bad += 1
    if on_bad_line is not None:
        on_bad_line(problem)
    return None


def read_json_object(path, what: str = "JSON file") -> dict:
    """The JSON object in a file someone else may have written (a config, a manifest, a
    progress file): one line naming the file and `what` it should be when it cannot be read,
    is not JSON, is nested beyond the parser or holds another JSON value."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise LlamantinoError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise LlamantinoError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data


def iter_paragraphs(path, *, start_byte: int = 0, start_line: int = 0, stats: LineStats | None = None,
                    max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each blank-line-separated paragraph of a text file.

    Resume: reading starts at `start_byte`, the start of line `start_line + 1`; after each
    paragraph, `stats.line` / `stats.byte` give the position just after it (after the blank
    line that ends it).
    """
    stats = stats or LineStats()
    block: list[str] = []
    start = 1
    for number, line in iter_text_lines(path, start_byte=start_byte, start_line=start_line, stats=stats,
                                        max_line_bytes=max_line_bytes):
        if line.strip():
            if not block:
                start = number
            block.append(line.rstrip("\n"))
        elif block:
            yield start, "\n".join(block)
            block = []
    if block:
        yield start, "\n".join(block)


# An input setting may name a hub data set instead of local files (streamed by `datasets`).
HUB_PREFIX = "hub:"
HUB_OPTIONS = ("config", "split", "revision", "data_dir", "data_files")


def parse_hub_spec(spec: str) -> dict:
    """`hub:NAME?config=C&split=S&revision=R&data_dir=D&data_files=F` -> load_dataset arguments."""
    from urllib.parse import parse_qs

    from llamantino.core.config import closest

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


def expand_inputs(paths, suffixes=JSONL_SUFFIXES, what: str = "input") -> list[Path]:
    """Files and folders of shards -> sorted list of files. Missing or empty is an error."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            # In a folder, plain `.json` files are metadata (manifest.json, configs), not shards.
            found = sorted(p for p in path.rglob("*") if p.is_file() and str(p).endswith(tuple(suffixes))
                           and not p.name.startswith(".") and p.suffix != ".json")
            if not found:
                raise LlamantinoError(f"{path}: folder holds no {what} files ({', '.join(suffixes)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LlamantinoError(f"{path}: no such file or folder")
    if not files:
        raise LlamantinoError(f"no {what} given")
    return files


# ---------------------------------------------------------------------------------------
# Names that come from data (manifests, indexes, archives, releases)


NAME_MAX = 255  # bytes in one file or folder name on the usual file systems (ext4, XFS, Btrfs, APFS)


def check_member_name(name, what: str) -> str:
    """A file name read from a file someone else wrote must be a plain relative name: no
    absolute path, no `..`, no drive or backslash tricks, nothing empty, no part longer than
    a file system allows. Returns it."""
    text = str(name) if isinstance(name, str) else None
    if not text or "\x00" in text or "\\" in text:
        raise LlamantinoError(f"{what}: {shown(name)} is not a plain relative file name")
    parts = text.split("/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or any(p in ("", ".", "..") for p in parts):
        raise LlamantinoError(f"{what}: {shown(name)} is not a plain relative file name (it could point outside "
                              "its folder)")
    longest = max(len(p.encode("utf-8")) for p in parts)
    if longest > NAME_MAX:
        raise LlamantinoError(f"{what}: {shown(name)} has a name of {longest} bytes; file systems allow "
                              f"{NAME_MAX}")
    return text


def link_root(folder) -> Path:
    """The folder whose inside symbolic links of `folder` may lead to: the folder itself, or,
    for a snapshot in the Hugging Face hub cache (`models--ORG--NAME/snapshots/REV`, whose
    files are links into `models--ORG--NAME/blobs/`), the repository's cache folder."""
    folder = Path(folder)
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--")) \
            and (folder.parent.parent / "blobs").is_dir():
        return folder.parent.parent.resolve()
    return folder.resolve()


def safe_join(folder, name, what: str) -> Path:
    """`folder / name` for a `name` taken from data, refused unless it stays inside `folder`
    once symbolic links are followed (see `link_root` for the hub cache). `what` names the
    entry in the error (file and field)."""
    check_member_name(name, what)
    root = link_root(folder)
    path = Path(folder) / name
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise LlamantinoError(f"{what}: {name!r} resolves outside {folder} (through a symbolic link)")
    return path


# ---------------------------------------------------------------------------------------
# Atomic writes

# Every work file or folder llamantino makes starts with this prefix, and only such names
# count as its temporaries (a user's `.tmp/` or `.notes.tmp` is never taken for one).
TMP_PREFIX = ".llamantino-tmp-"


def is_temporary(rel) -> bool:
    """A path (relative to an output folder) inside or at a work file llamantino makes."""
    return any(part.startswith(TMP_PREFIX) for part in Path(rel).parts)


def temporary_name(path, tag: str = "") -> Path:
    """A work name next to `path`, unique to this process: `.llamantino-tmp-[TAG-]PID-NAME`."""
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{tag + '-' if tag else ''}{os.getpid()}-{path.name}")


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():  # a failed write (full disk) leaves no half file behind
            tmp.unlink()


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_open(path, mode: str = "wt", gz: bool | None = None):
    """Write a file under a temporary name, renamed into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    gz = is_gzip(path) if gz is None else gz
    try:
        if gz:
            # mtime=0 and no file name in the header: identical input gives identical bytes.
            raw = open(tmp, "wb")
            handle = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            if "t" in mode:
                handle = io.TextIOWrapper(handle, encoding="utf-8", newline="\n")
            try:
                yield handle
            finally:
                handle.close()
                raw.close()
        else:
            with open(tmp, "w" + ("b" if "b" in mode else ""),
                      **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as handle:
                yield handle
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path):
    """Build a folder under a temporary name next to `path`; rename it into place on success.

    An existing `path` is replaced only when the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); outputs get the usual mode
    try:
        yield tmp
        if path.exists():
            old = temporary_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
