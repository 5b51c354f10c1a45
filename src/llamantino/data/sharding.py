"""Array jobs for the data stages (`clean`, `translate`): which part of the input a task
takes, where it writes, and `llamantino manifest merge`, which combines the parts.

Task I of N (`--num-shards N --shard-index I`; when not given, a SLURM array task takes
them from SLURM_ARRAY_TASK_COUNT and SLURM_ARRAY_TASK_ID) processes a deterministic 1/N
of the input into `OUTPUT/shard-0000I-of-0000N/`, a complete output folder with its own
manifest, and resumes after a kill like the unsharded stage. Which records a task takes
depends on the inputs and N alone, never on worker counts or on which node runs it:

* at least N local files (a folder of shards): whole files, in N contiguous runs of the
  sorted file list, balanced by size (the largest run as small as possible);
* fewer files than tasks, or a `hub:` dataset: every source is cut into N pieces and task
  I takes piece I of each. JSON lines are cut by byte ranges of the uncompressed text, a
  line belonging to the range in which it starts: plain files are entered with a seek,
  gzipped ones are decompressed once to measure them and then read up to the range's end.
  Parquet files are cut by row ranges. A hub dataset uses `datasets`' own sharding:
  `IterableDataset.shard` (contiguous data files) when it has at least N files, else
  `split_dataset_by_node` (each task keeps one record in N; every task reads the stream).

The union of the N parts holds exactly the records of the unsharded run, none twice and
none lost. `llamantino manifest merge OUTPUT` checks that every part exists, is finished,
and has the same stage, settings, inputs and N, then writes `OUTPUT/manifest.json` with
the statistics summed and every part's files listed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import json
import logging
import os
import re
import zlib
from pathlib import Path

from llamantino.core.config import differing_settings, setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import (HUB_PREFIX, MAX_LINE_BYTES, LineStats, atomic_write_json, is_temporary,
                                    parse_json_object, read_json_object, read_line, safe_join)

log = logging.getLogger(__name__)

MAX_SHARDS = 99999
PART_NAME = "shard-{:05d}-of-{:05d}"
PART_RE = re.compile(r"shard-(\d{5})-of-(\d{5})")
MERGED = "sharded"  # key of a merged manifest (parts carry "shard")
BLOCK = 1 << 20


def num_shards_setting():
    return setting(None, "split the input into this many parts for an array job; task shard_index writes "
                         "OUTPUT/shard-I-of-N/ (empty: SLURM_ARRAY_TASK_COUNT in a SLURM array job, else 1: "
                         "no split)", minimum=1, maximum=MAX_SHARDS)


def shard_index_setting():
    # The part's folder is named after its index, so the index does not enter the fingerprint:
    # every part of a split has the same one, which is what `manifest merge` compares.
    return setting(None, "which part this task processes, 0 to num_shards-1 (empty: from SLURM_ARRAY_TASK_ID)",
                   minimum=0, maximum=MAX_SHARDS - 1, fingerprint=False)


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def name(self) -> str:
        return PART_NAME.format(self.index, self.count)

    def describe(self) -> dict:
        return {"index": self.index, "count": self.count}


# ---------------------------------------------------------------------------------------
# Which task this is


def resolve(cfg, environ=None):
    """(settings with num_shards and shard_index filled in, Shard or None when unsharded).

    Neither given: a SLURM array task is part (ID - MIN) / STEP of SLURM_ARRAY_TASK_COUNT,
    anything else does the whole input. num_shards given without shard_index: the SLURM
    array ids are the indexes (submit --array=0-N-1; a failed task resubmitted alone,
    --array=7, is still part 7).
    """
    environ = os.environ if environ is None else environ
    count, index = cfg.num_shards, cfg.shard_index
    if count is None:
        if index is not None:
            raise LlamantinoError(f"setting 'shard_index' is {index} but 'num_shards' is not set")
        count, index = _from_slurm(environ)
    elif index is None:
        if count > 1 and "SLURM_ARRAY_TASK_ID" not in environ:
            raise LlamantinoError(f"setting 'num_shards' is {count}: give 'shard_index' (0 to {count - 1}), "
                                  "or run as a SLURM array task")
        index = _slurm_int(environ, "SLURM_ARRAY_TASK_ID") if count > 1 else 0
        if not 0 <= index < count:
            raise LlamantinoError(f"SLURM_ARRAY_TASK_ID is {index}; with num_shards {count} it must be between 0 "
                                  f"and {count - 1}: submit the array as --array=0-{count - 1}")
    if not 0 <= index < count:
        raise LlamantinoError(f"setting 'shard_index' is {index}; with num_shards {count} it must be "
                              f"between 0 and {count - 1}")
    cfg = dataclasses.replace(cfg, num_shards=count, shard_index=index)
    return cfg, (Shard(index, count) if count > 1 else None)


def _from_slurm(environ) -> tuple[int, int]:
    if "SLURM_ARRAY_TASK_COUNT" not in environ:
        return 1, 0
    task = _slurm_int(environ, "SLURM_ARRAY_TASK_ID")
    low = _slurm_int(environ, "SLURM_ARRAY_TASK_MIN", task)
    high = _slurm_int(environ, "SLURM_ARRAY_TASK_MAX", task)
    step = _slurm_int(environ, "SLURM_ARRAY_TASK_STEP", 1) or 1
    count = _slurm_int(environ, "SLURM_ARRAY_TASK_COUNT")
    if (task - low) % step or (high - low) // step + 1 != count:
        raise LlamantinoError(f"SLURM array ids {low}-{high} (step {step}, {count} tasks) are not a "
                              "contiguous range: pass --num-shards and --shard-index")
    index = (task - low) // step
    if count > 1:
        log.info("array task %d of %d (from SLURM_ARRAY_TASK_ID=%d); pass --num-shards 1 to process the whole "
                 "input in every task", index, count, task)
    return count, index


def _slurm_int(environ, name, default=None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise LlamantinoError(f"{name} is not set; pass --num-shards and --shard-index")
        return default
    try:
        return int(value)
    except ValueError:
        raise LlamantinoError(f"{name}={value!r} is not a number") from None


# ---------------------------------------------------------------------------------------
# Which records a task takes


@dataclasses.dataclass(frozen=True)
class Piece:
    """Piece `part` of `parts` of one source (parts == 1: the whole source)."""

    source: str
    index: int = 0  # the source's place in the input list
    part: int = 0
    parts: int = 1

    def describe(self) -> str:
        if self.parts == 1:
            return self.source
        if self.source.startswith(HUB_PREFIX):
            return f"{self.source}: datasets shard {self.part} of {self.parts}"
        unit = "rows" if self.source.endswith(".parquet") else "bytes of text"
        return f"{self.source}: {unit} piece {self.part} of {self.parts}"


def plan(sources: list[str], shard: Shard | None) -> list[Piece]:
    """The pieces of `sources` this task reads, in input order."""
    if shard is None:
        return [Piece(s, i) for i, s in enumerate(sources)]
    if len(sources) >= shard.count and not any(s.startswith(HUB_PREFIX) for s in sources):
        groups = contiguous_groups([os.path.getsize(s) for s in sources], shard.count)
        return [Piece(sources[i], i) for i in groups[shard.index]]
    return [Piece(s, i, shard.index, shard.count) for i, s in enumerate(sources)]


def contiguous_groups(sizes: list[int], n: int) -> list[list[int]]:
    """Indexes 0..len(sizes)-1 in `n` contiguous non-empty groups (n <= len(sizes)), the
    largest group as small as possible: the least capacity that greedy filling fits into n
    groups, then the heaviest groups split further until there are n."""
    low, high = max(sizes), sum(sizes)
    while low < high:
        middle = (low + high) // 2
        if len(_fill(sizes, middle)) <= n:
            high = middle
        else:
            low = middle + 1
    groups = _fill(sizes, low)
    while len(groups) < n:
        weight = [sum(sizes[i] for i in g) if len(g) > 1 else -1 for g in groups]
        k = weight.index(max(weight))
        groups[k:k + 1] = _halves(groups[k], sizes)
    return groups


def _fill(sizes, capacity) -> list[list[int]]:
    groups, load = [[]], 0
    for i, size in enumerate(sizes):
        if groups[-1] and load + size > capacity:
            groups.append([])
            load = 0
        groups[-1].append(i)
        load += size
    return groups


def _halves(group, sizes) -> list[list[int]]:
    total, best, cut, left = sum(sizes[i] for i in group), None, 1, 0
    for k in range(1, len(group)):
        left += sizes[group[k - 1]]
        gap = abs(total - 2 * left)
        if best is None or gap < best:
            best, cut = gap, k
    return [group[:cut], group[cut:]]


# ---------------------------------------------------------------------------------------
# Reading a piece of JSON lines


def uncompressed_size(path) -> int:
    """Bytes of text in a file: its size, or for gzip one decompression pass."""
    if not str(path).endswith(".gz"):
        return os.path.getsize(path)
    total = 0
    with _gzip_errors(path), gzip.open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            total += len(block)
    return total


def byte_range(path, piece: Piece) -> tuple[int, int]:
    size = uncompressed_size(path)
    return piece.part * size // piece.parts, (piece.part + 1) * size // piece.parts


class _gzip_errors:
    """Unreadable gzip data as one LlamantinoError naming the file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, (gzip.BadGzipFile, EOFError, zlib.error)):
            raise LlamantinoError(f"{self.path}: unreadable gzip file ({exc})") from None
        return False


def _check_line_ends(path, line: bytes, offset: int) -> None:
    # Text-mode readers also end a line at a lone carriage return; sharding counts line
    # feeds. Files where the two differ would not split into the records of the whole run.
    cr = line.find(b"\r")
    if cr != -1 and line[cr:] != b"\r\n":
        raise LlamantinoError(f"{path}: a carriage return without a line feed at byte {offset + cr}; "
                              "sharding splits lines at line feeds only: convert the file's line ends")


def piece_lines(path, piece: Piece, after: int = 0, max_line_bytes: int = MAX_LINE_BYTES):
    """(offset after the line, line number or None, offset of the line, raw line) of every
    line that starts in the piece's byte range, after offset `after` (a resume point).
    Line numbers are known when counting them costs nothing (gzip, or a plain file read
    from its start). A line over `max_line_bytes` is an error (`fileio.read_line`)."""
    start, end = byte_range(path, piece)
    if str(path).endswith(".gz"):
        yield from _gzip_piece_lines(path, max(start, after), end, max_line_bytes)
    else:
        yield from _plain_piece_lines(path, start, end, after, max_line_bytes)


def _plain_piece_lines(path, start, end, after, limit):
    with open(path, "rb") as handle:
        if after:
            handle.seek(after)  # a resume point is always a line start
        elif start:
            handle.seek(start - 1)
            if handle.read(1) != b"\n":
                # the rest of a line that started before the range (its own piece reads it), in
                # pieces of at most `limit` bytes
                while (rest := handle.readline(limit + 1)) and not rest.endswith(b"\n"):
                    pass
        offset = handle.tell()
        number = 0 if offset == 0 else None
        while offset < end:
            line = read_line(handle, path, number + 1 if number is not None else None, offset, limit)
            if not line:
                return
            _check_line_ends(path, line, offset)
            number = number + 1 if number is not None else None
            yield offset + len(line), number, offset, line
            offset += len(line)


def _gzip_piece_lines(path, first, end, limit):
    offset = number = 0
    with _gzip_errors(path), gzip.open(path, "rb") as handle:
        while line := read_line(handle, path, number + 1, offset, limit, "of the decompressed text"):
            number += 1
            if offset >= end:
                return
            if offset >= first:
                _check_line_ends(path, line, offset)
                yield offset + len(line), number, offset, line
            offset += len(line)


def iter_jsonl_piece(path, piece: Piece, after: int = 0, *, skip_bad_lines: bool = False,
                     stats: LineStats | None = None, max_line_bytes: int = MAX_LINE_BYTES):
    """(resume point, where, record) of the JSON objects of a piece, with the errors of
    `fileio.iter_jsonl`: malformed lines name file and line (or byte, when the line number
    is not known), or are counted in `stats.bad` with `skip_bad_lines`."""
    stats = stats or LineStats()
    for resume, number, offset, raw in piece_lines(path, piece, after, max_line_bytes):
        where = f"{path}:{number}" if number else f"{path}: line at byte {offset}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LlamantinoError(f"{where}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})") from None
        if not line.strip():
            continue
        record = parse_json_object(line, where, stats, skip_bad_lines=skip_bad_lines)
        if record is not None:
            yield resume, where, record


def line_ranges(files, shard: Shard | None) -> list[list[int | None]] | None:
    """For stages that read files by line number: per file, [lines to skip, last line to
    read or None for all] of this task's records; None when unsharded. A line belongs to
    the piece where it starts, as for `piece_lines`."""
    if shard is None:
        return None
    sources = [str(f) for f in files]
    pieces = plan(sources, shard)
    if pieces[0].parts > 1:  # every file cut in N: this task's piece of each
        return [list(lines_before(p.source, byte_range(p.source, p))) for p in pieces]
    whole = {p.index for p in pieces}
    return [[0, None] if i in whole else [0, 0] for i in range(len(sources))]


def lines_before(path, offsets: tuple[int, int]) -> tuple[int, int]:
    """How many lines start before each of two offsets of the (uncompressed) text."""
    out, count, seen, previous = [], 0, 0, b""
    opener = gzip.open if str(path).endswith(".gz") else open
    with _gzip_errors(path), opener(path, "rb") as handle:
        for target in offsets:
            # Lines starting before `target`: the first line, plus one per line feed before target - 1.
            while seen < target - 1:
                block = handle.read(min(BLOCK, target - 1 - seen))
                if not block:
                    break
                _check_block_line_ends(path, previous + block, seen - len(previous))
                count += block.count(b"\n")
                seen += len(block)
                previous = block[-1:]
            out.append(0 if target == 0 else count + 1)
    return out[0], out[1]


def _check_block_line_ends(path, data: bytes, base: int) -> None:
    position = data.find(b"\r")
    while position != -1:
        if position + 1 < len(data) and data[position + 1:position + 2] != b"\n":
            raise LlamantinoError(f"{path}: a carriage return without a line feed at byte {base + position}; "
                                  "sharding splits lines at line feeds only: convert the file's line ends")
        position = data.find(b"\r", position + 1)


# ---------------------------------------------------------------------------------------
# Reading a piece of a parquet file or of a hub dataset


def parquet_piece_records(path: str, piece: Piece, after: int = 0):
    """(row number, where, record) of the piece's rows [part * R / parts, (part + 1) * R / parts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llamantino.data.streaming import parquet_records

    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise LlamantinoError(f"{path}: unreadable parquet file ({exc})".replace("\n", " ")) from None
    first, end = piece.part * rows // piece.parts, (piece.part + 1) * rows // piece.parts
    for number, where, record in parquet_records(path, max(first, after)):
        if number > end:
            return
        yield number, where, record


def hub_piece_records(spec: str, piece: Piece, after: int = 0):
    """(records read, where, record) of this task's share of a streamed dataset, after the
    first `after` of them. `skip()` is not used: on a dataset split by examples it counts
    records of the whole stream, not of this task's share."""
    import itertools

    from datasets.distributed import split_dataset_by_node

    from llamantino.data.streaming import open_hub

    stream = open_hub(spec)
    if stream.num_shards >= piece.parts:
        stream = stream.shard(num_shards=piece.parts, index=piece.part, contiguous=True)
    else:
        stream = split_dataset_by_node(stream, rank=piece.part, world_size=piece.parts)
    for number, record in enumerate(itertools.islice(stream, after, None), start=after + 1):
        yield number, f"{spec} (shard {piece.part} of {piece.parts}): record {number}", record


# ---------------------------------------------------------------------------------------
# The task's output folder


def prepare(cfg, shard: Shard | None, kind: str, *, overwrite: bool = False) -> tuple[Path, str]:
    """(the task's output folder, `manifest.prepare_output`'s verdict on it). A part goes
    into OUTPUT/shard-I-of-N/; OUTPUT may hold only parts of the same split and their
    merged manifest, which is removed when a part is (re)done since it no longer holds."""
    from llamantino.core.manifest import prepare_output

    root = Path(cfg.output)
    if shard is None:
        parts = sorted(p.name for p in root.iterdir() if PART_RE.fullmatch(p.name)) if root.is_dir() else []
        if parts and not (root / "manifest.json").is_file():
            raise LlamantinoError(f"{root}: holds parts of a sharded run ({parts[0]}); pass --num-shards and "
                                  "--shard-index to run one of its tasks, or choose another output")
        return root, prepare_output(root, kind, cfg, overwrite=overwrite)
    check_root(root, shard)
    out = root / shard.name
    state = prepare_output(out, kind, cfg, overwrite=overwrite)
    if state != "complete":
        drop_merged_manifest(root)
    return out, state


def part_folder(cfg, shard: Shard | None) -> Path:
    return Path(cfg.output) / shard.name if shard else Path(cfg.output)


def check_root(root: Path, shard: Shard) -> None:
    """Refuse an OUTPUT that holds anything but parts of this split (and their merge)."""
    from llamantino.core.manifest import MANIFEST, RUN_INFO

    if not root.exists():
        return
    if not root.is_dir():
        raise LlamantinoError(f"{root}: exists and is not a folder")
    for entry in sorted(root.iterdir()):
        match = PART_RE.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            if int(match.group(2)) != shard.count:
                raise LlamantinoError(f"{root}: holds parts of a split into {int(match.group(2))} ({entry.name}), "
                                      f"this task splits into {shard.count}: use the same number of shards, "
                                      "or another output")
        elif entry.name == MANIFEST and MERGED in read_json_object(entry, "manifest"):
            continue
        elif is_temporary(entry.name):
            continue  # left by a process killed while writing the merged manifest
        elif entry.name in (MANIFEST, RUN_INFO):
            raise LlamantinoError(f"{root}: holds an unsharded run ({entry.name}); the parts of a sharded run "
                                  "go into an output folder of their own: choose another output")
        else:
            raise LlamantinoError(f"{root}: holds {entry.name}, which is no part of a sharded run; the parts go "
                                  "into an output folder of their own: choose another output")


def drop_merged_manifest(root: Path) -> None:
    from llamantino.core.manifest import MANIFEST

    path = root / MANIFEST
    if path.is_file() and MERGED in read_json_object(path, "manifest"):
        log.info("%s: a part is being redone; the merged manifest is removed (merge again when all parts are done)",
                 root)
        path.unlink(missing_ok=True)


def remove_empty_root(cfg, shard: Shard | None) -> None:
    """After a failed task removed its part: leave no empty OUTPUT behind either."""
    if shard is None:
        return
    try:
        Path(cfg.output).rmdir()
    except OSError:
        pass  # not empty (other parts), or gone


def manifest_entry(shard: Shard | None, pieces: list[Piece] | None = None) -> dict:
    """The "shard" entry of a part's manifest: which task of how many, and what it covers."""
    if shard is None:
        return {}
    entry = shard.describe()
    if pieces is not None:
        entry["covers"] = [p.describe() for p in pieces]
    return {"shard": entry}


# ---------------------------------------------------------------------------------------
# llamantino manifest merge

# Figures of one task that are not summed over the parts (rates, per-process counts): kept
# as one value when every part has the same, else as the list of the parts' values.
NOT_SUMMED = {"workers", "threads", "beam_size", "seconds", "seconds_translating"}
# Timings stay a list, one value per part, even when two parts happen to take as long.
PER_PART = {"seconds", "seconds_translating"}
STANDARD_KEYS = {"llamantino", "stage", "fingerprint", "settings", "created", "inputs", "libraries", "metrics",
                 "input_state", "outputs", "shard"}


def find_parts(root: Path) -> tuple[int, dict[int, Path]]:
    """(N, {index: folder}) of the parts in `root`; refused when none or of different N."""
    if not root.is_dir():
        raise LlamantinoError(f"{root}: no such output folder")
    found = {}
    for entry in sorted(root.iterdir()):
        match = PART_RE.fullmatch(entry.name)
        if match and entry.is_dir() and not entry.is_symlink():
            found[entry.name] = (int(match.group(1)), int(match.group(2)))
    if not found:
        raise LlamantinoError(f"{root}: holds no parts of a sharded run (shard-I-of-N folders)")
    counts = sorted({n for _, n in found.values()})
    if len(counts) > 1:
        examples = ", ".join(next(name for name, (_, n) in found.items() if n == c) for c in counts)
        raise LlamantinoError(f"{root}: holds parts of splits into different numbers of shards ({examples}); "
                              "remove the parts of the split you do not want")
    return counts[0], {i: root / name for name, (i, _) in found.items()}


def merge(output) -> dict:
    """Check every part of OUTPUT and write the combined OUTPUT/manifest.json (atomically)."""
    from llamantino.core.manifest import MANIFEST, read_manifest

    root = Path(output)
    count, parts = find_parts(root)
    names = [PART_NAME.format(i, count) for i in range(count)]
    missing = [names[i] for i in range(count) if i not in parts]
    if missing:
        raise LlamantinoError(f"{root}: {len(missing)} of {count} parts missing ({_first(missing)}): run "
                              "those tasks before merging")
    manifests = [read_manifest(parts[i]) for i in range(count)]
    unfinished = [names[i] for i, m in enumerate(manifests) if m is None]
    if unfinished:
        raise LlamantinoError(f"{root}: {len(unfinished)} of {count} parts unfinished ({_first(unfinished)}, no "
                              "manifest.json): run or resume those tasks before merging")
    for i, manifest in enumerate(manifests):
        _check_part(root, names[i], manifest, manifests[0], names[0], Shard(i, count))
    combined = _combine(root, names, manifests)
    atomic_write_json(root / MANIFEST, combined)
    return combined


def _first(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _check_part(root: Path, name: str, manifest: dict, first: dict, first_name: str, shard: Shard) -> None:
    where = f"{root / name}"
    entry = manifest.get("shard")
    if not isinstance(entry, dict) or (entry.get("index"), entry.get("count")) != (shard.index, shard.count):
        raise LlamantinoError(f"{where}: its manifest is not that of part {shard.index} of {shard.count} "
                              f"(shard: {entry!r})")
    if manifest.get("stage") != first.get("stage"):
        raise LlamantinoError(f"{where}: a '{manifest.get('stage')}' run, but {first_name} is a "
                              f"'{first.get('stage')}' run")
    if manifest.get("fingerprint") != first.get("fingerprint"):
        differ = [k for k in differing_settings(manifest.get("settings", {}), first.get("settings", {}))
                  if k != "shard_index"]
        raise LlamantinoError(f"{where}: made with other settings than {first_name} (differ: "
                              f"{', '.join(differ) or 'version'}); redo one of them with the settings of the other")
    if manifest.get("inputs") != first.get("inputs"):
        raise LlamantinoError(f"{where}: made from other inputs than {first_name} (an input changed between "
                              "the tasks); redo the parts made from the old inputs")
    for key in set(manifest) | set(first):
        if key not in STANDARD_KEYS and manifest.get(key) != first.get(key):
            raise LlamantinoError(f"{where}: its '{key}' differs from that of {first_name}")
    outputs = manifest.get("outputs")
    if not isinstance(outputs, list):
        raise LlamantinoError(f"{where}/manifest.json: field 'outputs' missing; redo this part")
    for file in outputs:
        safe_join(root / name, file, f"{where}/manifest.json: field 'outputs'")


def _combine(root: Path, names: list[str], manifests: list[dict]) -> dict:
    from llamantino import __version__
    from llamantino.core.manifest import MANIFEST, RUN_INFO

    first = manifests[0]
    outputs = []
    for name, manifest in zip(names, manifests):
        # A stage lists its work files too (progress.json), removed once the manifest is written.
        own = [*manifest["outputs"], MANIFEST, RUN_INFO]
        outputs += [f"{name}/{file}" for file in sorted(set(own)) if (root / name / file).is_file()]
    libraries = [m.get("libraries") for m in manifests]
    if any(lib != libraries[0] for lib in libraries):
        log.warning("%s: the parts ran with different library versions; the merged manifest lists each part's", root)
    combined = {
        "llamantino": __version__,
        "stage": first["stage"],
        "fingerprint": first["fingerprint"],
        "settings": {**first.get("settings", {}), "shard_index": None},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": first.get("inputs", []),
        "libraries": libraries[0] if all(lib == libraries[0] for lib in libraries) else libraries,
        "metrics": merge_metrics([m.get("metrics", {}) for m in manifests]),
        "input_state": first.get("input_state"),
        "outputs": outputs,
        MERGED: {"count": len(names), "parts": [{"folder": name, "covers": m["shard"].get("covers"),
                                                  "created": m.get("created")} for name, m in zip(names, manifests)]},
    }
    combined.update({k: v for k, v in first.items() if k not in STANDARD_KEYS})
    return combined


def merge_metrics(parts: list, key: str = "") -> object:
    """Counts summed over the parts (recursively in mappings); lists joined; other values
    kept when equal, else listed per part; per-task figures (rates, seconds, worker counts)
    are never summed."""
    if all(isinstance(p, dict) for p in parts):
        keys = list(dict.fromkeys(k for p in parts for k in p))
        return {k: merge_metrics([p[k] for p in parts if k in p], k) for k in keys}
    summable = all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in parts)
    if summable and key not in NOT_SUMMED and not key.endswith(("_per_s", "_per_second")):
        return sum(parts)
    if all(isinstance(p, list) for p in parts):
        return [item for p in parts for item in p]
    if key in PER_PART:
        return list(parts)
    return parts[0] if all(p == parts[0] for p in parts) else list(parts)


def add_merge_arguments(parser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the output folder of a sharded run (holding shard-I-of-N/)")


def merge_main(args) -> int:
    combined = merge(args.output)
    info = combined[MERGED]
    print(json.dumps({"status": "merged", "stage": combined["stage"], "parts": info["count"],
                      "output": str(Path(args.output) / "manifest.json"), "metrics": combined["metrics"]},
                     indent=2, ensure_ascii=False, default=str))
    return 0
