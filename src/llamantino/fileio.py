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
from typing import Iterator

from llamantino.errors import LlamantinoError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")


def is_gzip(path: Path) -> bool:
    return str(path).endswith(".gz")


def open_text(path, mode: str = "rt"):
    """Open a text file, transparently gunzipping `.gz` files."""
    path = Path(path)
    if is_gzip(path):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


class LineStats:
    """Counts of lines read and skipped while reading JSON lines."""

    def __init__(self):
        self.read = 0
        self.bad = 0


def iter_jsonl(path, *, skip_bad_lines: bool = False, stats: LineStats | None = None,
               start_line: int = 0) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) for each non-empty line; 1-based line numbers.

    A malformed line is an error naming file and line, unless `skip_bad_lines`, in which
    case it is counted in `stats.bad`. `start_line` skips the first lines (resume).
    """
    path = Path(path)
    stats = stats or LineStats()
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if number <= start_line:
                    continue
                if not line.strip():
                    continue
                stats.read += 1
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    if skip_bad_lines:
                        stats.bad += 1
                        continue
                    raise LlamantinoError(
                        f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                        "fix the line or pass --skip-bad-lines") from None
                if not isinstance(record, dict):
                    if skip_bad_lines:
                        stats.bad += 1
                        continue
                    raise LlamantinoError(
                        f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise LlamantinoError(f"{path}: unreadable gzip file ({exc})") from None
    except UnicodeDecodeError as exc:
        raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def iter_paragraphs(path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each blank-line-separated paragraph of a text file."""
    with open_text(path) as handle:
        block: list[str] = []
        start = 1
        for number, line in enumerate(handle, start=1):
            if line.strip():
                if not block:
                    start = number
                block.append(line.rstrip("\n"))
            elif block:
                yield start, "\n".join(block)
                block = []
        if block:
            yield start, "\n".join(block)


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


def check_member_name(name, what: str) -> str:
    """A file name read from a file someone else wrote must be a plain relative name: no
    absolute path, no `..`, no drive or backslash tricks, nothing empty. Returns it."""
    text = str(name) if isinstance(name, str) else None
    if not text or "\x00" in text or "\\" in text:
        raise LlamantinoError(f"{what}: {name!r} is not a plain relative file name")
    parts = text.split("/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":") or any(p in ("", ".", "..") for p in parts):
        raise LlamantinoError(f"{what}: {name!r} is not a plain relative file name (it could point outside its folder)")
    return text


def safe_join(folder, name, what: str) -> Path:
    """`folder / name` for a `name` taken from data, refused unless it stays inside `folder`
    once symbolic links are followed. `what` names the entry in the error (file and field)."""
    check_member_name(name, what)
    root = Path(folder).resolve()
    path = Path(folder) / name
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise LlamantinoError(f"{what}: {name!r} resolves outside {folder} (through a symbolic link)")
    return path


# ---------------------------------------------------------------------------------------
# Atomic writes


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_open(path, mode: str = "wt", gz: bool | None = None):
    """Write a file under a temporary name, renamed into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700); outputs get the usual mode
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
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
