"""Exact weight differences: `llamantino diff make` and `llamantino diff apply`.

The LLaMA 2 licence forbids shipping weights, so a fully fine-tuned model is published as
its difference against the model it was tuned from. Here the difference is the XOR of the
raw bits of each tensor: `target = base XOR diff`, bit for bit, for every dtype and
every value (NaN, infinities, signed zeros and subnormals included). A subtraction taken
in the checkpoint's own dtype, or in float32, does not give the target back exactly.

A difference is a folder:

    weight_diff.json                   the manifest (below)
    diff-00001-of-0000N.safetensors    one per target weight file, same tensor names,
                                       shapes and byte layout; unsigned-integer bits
    config.json, generation_config.json, tokenizer files   of the target

The manifest records, per tensor: name, dtype, shape, the target file it belongs to, the
sha256 of the target tensor and of the base tensor it is built from (or null for a
tensor only in the target), and the rows added when the vocabulary grew (32000 -> 32001
with `<pad>`: the base tensor is zero-extended, so the extra rows travel as they are).
It also keeps each target file's safetensors header and index, so a rebuild writes the
very same files, byte for byte. The sha256 of a tensor is that of its raw little-endian
bytes in row-major order, as stored in safetensors.

Both commands stream each tensor in 4 MiB chunks with positional reads (no memory map,
whose pages would stay resident) and writes at the tensor's place in the output file, the
sha256 computed as the bytes pass; a few tensors go through at once on worker threads,
largest first. Memory stays at a few chunks per thread whatever the size of the model or
of its largest tensor, so a 70B model rebuilds on a machine with far less RAM than the model.

`diff apply` hashes each rebuilt tensor as it is written. XOR with a fixed difference is
one-to-one, so a rebuilt tensor matches its recorded sha256 only if its base tensor is the
recorded one too: on success the result's checksum vouches for the base as well. Only when
a result fails are the base tensors of the failed results hashed, to tell a wrong base from
a damaged difference and to name each one. One sha256 pass instead of two is what lets a
rebuild keep up with a plain copy.

A difference is a stranger's file. Every file name read from `weight_diff.json` or from an
index must be a plain name inside its folder (`fileio.safe_join`): `../x`, `/abs/path` and
symbolic links that lead out of the folder are refused before anything is opened (the
manifest's fields are checked in `llamantino.release.diff_manifest`). The
rebuilt model is written into a new temporary folder next to the output (files created,
never truncated) and renamed into place only when every checksum matched; with
`--overwrite` the previous output stays as it was until then, and only a folder that holds
nothing but a llamantino output may be replaced. Both commands leave a `manifest.json`
listing their files, so a later `--overwrite` recognises their outputs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_dir, safe_join, sha256_file
from llamantino.models.merge import merge_method_of
from llamantino.models.weight_files import (ARCH_KEYS, DTYPE_BYTES, INDEX_FILE, ModelFolder, TensorInfo, WeightFile,
                                            check_output, data_offsets, safetensors_header, weight_file_name,
                                            write_marker)
from llamantino.release.diff_manifest import (BITS_DTYPE, DIFF_MANIFEST, ENCODING, FORMAT, FORMAT_VERSION,
                                              SIDE_FILES, check_merge_method, read_diff_manifest, rows_added_only)

CHUNK = 4 << 20  # bytes of a tensor read, XORed, hashed and written at a time
WRITE_CHUNK = 1 << 20
# Tensors processed at once: one sha256 stream runs on one core, so several tensors in
# parallel is what lets a rebuild keep up with the disk.
WORKERS = max(1, min(8, os.cpu_count() or 1))

# LLaMA-family names of the tied input/output embeddings: with tie_word_embeddings the
# checkpoint holds only the first, and it stands for the second too.
TIED_EMBEDDINGS = {"lm_head.weight": "model.embed_tokens.weight"}


# ---------------------------------------------------------------------------------------
# Chunked reads and writes


def read_range(fd: int, info: TensorInfo, offset: int, out: np.ndarray) -> np.ndarray:
    """Bytes [offset, offset + len(out)) of a tensor into `out` (positional reads: threads
    share one descriptor per file; no memory map, whose pages would stay resident)."""
    view, done = memoryview(out), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], info.start + offset + done)
        if not got:
            raise LlamantinoError(f"{info.path}: ends inside tensor {info.name} (truncated file)")
        done += got
    return out


def write_at(fd: int, data: np.ndarray, position: int, path: Path) -> None:
    # 1 MiB at a time: single writes of tens of MB ran ~10x slower on our Linux machines
    view, done = memoryview(data), 0
    try:
        while done < len(view):
            done += os.pwrite(fd, view[done:done + WRITE_CHUNK], position + done)
    except OSError as exc:
        raise LlamantinoError(f"{path}: cannot write ({exc.strerror})") from None


class OpenFiles:
    """One read descriptor per input file and one write descriptor per output file."""

    def __init__(self):
        self.fds: dict[Path, int] = {}

    def reading(self, path: Path) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):  # a larger read-ahead when the file is not cached
                os.posix_fadvise(self.fds[path], 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return self.fds[path]

    def writing(self, path: Path, header_text: str) -> tuple[int, int]:
        """A new safetensors file with its header written; returns (fd, where data starts).
        The file must not exist: nothing is ever truncated (nor written through a link)."""
        data = header_text.encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            raise LlamantinoError(f"{path}: already exists; refusing to write over it") from None
        self.fds[path] = fd
        write_at(fd, np.frombuffer(struct.pack("<Q", len(data)) + data, np.uint8), 0, path)
        return fd, 8 + len(data)

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


_local = threading.local()


def chunk_buffers(count: int) -> list[np.ndarray]:
    """This thread's reusable chunk buffers (memory: threads x buffers x CHUNK)."""
    buffers = [b for b in getattr(_local, "buffers", []) if len(b) == CHUNK]
    while len(buffers) < count:
        buffers.append(np.empty(CHUNK, np.uint8))
    _local.buffers = buffers
    return buffers[:count]


def xor(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """out = a ^ b on equal-length byte arrays, in the widest word the length allows (speed)."""
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8) if len(a) % np.dtype(w).itemsize == 0)
    np.bitwise_xor(a.view(word), b.view(word), out=out.view(word))


def _hash_tensor(files: OpenFiles, info: TensorInfo) -> str:
    digest, buffer = hashlib.sha256(), chunk_buffers(1)[0]
    fd = files.reading(info.path)
    for offset in range(0, info.nbytes, CHUNK):
        digest.update(read_range(fd, info, offset, buffer[: min(CHUNK, info.nbytes - offset)]))
    return digest.hexdigest()


def tensor_hashes(folder) -> dict[str, str]:
    """sha256 of every tensor of a model folder, read chunk by chunk."""
    model = ModelFolder(folder)
    files = OpenFiles()
    try:
        return {name: _hash_tensor(files, info) for name, info in sorted(model.tensors.items())}
    finally:
        files.close()


@contextlib.contextmanager
def _cancel_on_error(jobs: list, stop: threading.Event | None = None):
    """On an error, drop the jobs not started yet (and stop the running ones from writing),
    so that the error reaches the user without waiting for the whole model."""
    try:
        yield
    except BaseException:
        if stop is not None:
            stop.set()
        for _, job in jobs:
            job.cancel()
        raise


# ---------------------------------------------------------------------------------------
# Output folders


def _copy_checked(source: Path, dest: Path) -> dict:
    """Copy one side file (into a new file of the temporary output) with its sha256."""
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(dest, "xb") as writer:
        while block := reader.read(CHUNK):
            digest.update(block)
            writer.write(block)
    return {"name": dest.name, "sha256": digest.hexdigest(), "bytes": source.stat().st_size}


# ---------------------------------------------------------------------------------------
# diff make


def _plan(base: ModelFolder, target: ModelFolder) -> tuple[list[dict], list[str]]:
    """Pair every target tensor with its base tensor; refuse what cannot be paired exactly."""
    entries, used = [], set()
    dtype_bad, shape_bad = [], []
    for file_name, file in target.files.items():
        weight_file_name(file_name, f"target {target.folder}: weight file")  # apply reads it back
        for name, info in file.tensors.items():
            source = name if name in base.tensors else None
            if source is None and name in TIED_EMBEDDINGS and base.tied and TIED_EMBEDDINGS[name] in base.tensors:
                source = TIED_EMBEDDINGS[name]  # base ties lm_head to the input embeddings
            entry = {"name": name, "file": file_name, "dtype": info.dtype, "shape": info.shape, "base": None}
            if source is not None:
                b = base.tensors[source]
                used.add(source)
                if b.dtype != info.dtype:
                    dtype_bad.append(f"{name} ({b.dtype} in the base, {info.dtype} in the target)")
                elif not rows_added_only(b.shape, info.shape):
                    shape_bad.append(f"{name} ({b.shape} in the base, {info.shape} in the target)")
                entry["base"] = {"name": source, "dtype": b.dtype, "shape": b.shape}
                entry["rows_added"] = info.shape[0] - b.shape[0] if info.shape else 0
            entries.append(entry)
    if dtype_bad:
        raise LlamantinoError(f"dtype mismatch between base {base.folder} and target {target.folder}: "
                              f"{', '.join(dtype_bad)}; convert one to the other's dtype first")
    if shape_bad:
        raise LlamantinoError(f"shape mismatch between base {base.folder} and target {target.folder} "
                              f"(only rows added along the first dimension are supported): {', '.join(shape_bad)}")
    base_only = sorted(n for n in base.tensors if n not in used and n not in target.tensors)
    return entries, base_only


@dataclass
class MakePlan:
    """Base and target read and paired, tensor by tensor; nothing written yet."""

    base: ModelFolder
    target: ModelFolder
    entries: list[dict]
    base_only: list[str]


def plan_make(base, target) -> MakePlan:
    base_model, target_model = ModelFolder(base, "base"), ModelFolder(target, "target")
    base_arch, target_arch = base_model.architecture(), target_model.architecture()
    changed = [k for k in ARCH_KEYS if k != "vocab_size" and base_arch[k] != target_arch[k]]
    if changed:
        raise LlamantinoError(f"target {target} is another architecture than base {base}: "
                              + ", ".join(f"{k} {base_arch[k]} vs {target_arch[k]}" for k in changed))
    return MakePlan(base_model, target_model, *_plan(base_model, target_model))


def make_diff(base, target, output, *, base_name: str = "", overwrite: bool = False) -> dict:
    """Write the exact difference `target XOR base` into `output`; returns a summary."""
    plan = plan_make(base, target)
    output = check_output(output, {"base": base, "target": target}, overwrite)
    with atomic_dir(output) as tmp:
        summary = run_make(plan, tmp, base_name=base_name)
        write_marker(tmp, "diff make")
    return summary


def make_into(base, target, folder, *, base_name: str = "") -> dict:
    """`make_diff` writing into an existing empty folder (the caller makes it atomic)."""
    return run_make(plan_make(base, target), folder, base_name=base_name)


def run_make(plan: MakePlan, folder, *, base_name: str = "") -> dict:
    t0 = time.time()
    folder = Path(folder)
    entries, target_model = plan.entries, plan.target
    n_files = len(target_model.files)
    files_meta = [{"file": name, "diff_file": f"diff-{i:05d}-of-{n_files:05d}.safetensors",
                   "header": wf.header_text} for i, (name, wf) in enumerate(target_model.files.items(), start=1)]
    jobs = []
    files = OpenFiles()
    try:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool, _cancel_on_error(jobs):
            for spec in files_meta:
                source_file = target_model.files[spec["file"]]
                mine = [e for e in entries if e["file"] == spec["file"]]
                header = safetensors_header([(e["name"], BITS_DTYPE[DTYPE_BYTES[e["dtype"]]], e["shape"])
                                             for e in mine], {"format": FORMAT})
                path = folder / spec["diff_file"]
                fd, start = files.writing(path, header)
                offsets = data_offsets(header)
                for entry in mine:
                    entry["diff_file"] = spec["diff_file"]
                    target_info = source_file.tensors[entry["name"]]
                    base_info = plan.base.tensors[entry["base"]["name"]] if entry["base"] else None
                    for info in (target_info, base_info):
                        if info is not None:
                            files.reading(info.path)
                    jobs.append((entry, pool.submit(_make_tensor, files, (fd, start + offsets[entry["name"]], path),
                                                    target_info, base_info)))
            digests = [(entry, *job.result()) for entry, job in jobs]
    finally:
        files.close()
    for entry, target_digest, base_digest in digests:
        entry["sha256"] = target_digest
        if base_digest is not None:
            entry["base"]["sha256"] = base_digest
    side = _copy_side_files(target_model.folder, folder)
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "encoding": ENCODING,
        "base": {"name": base_name or plan.base.folder.name, "architecture": plan.base.architecture(),
                 "merge_method": merge_method_of(plan.base.folder)},
        "target": {"architecture": target_model.architecture(), "files": files_meta,
                   "index": target_model.index_text},
        "tensors": entries,
        "base_only": plan.base_only,
        "rows_added": {e["name"]: e["rows_added"] for e in entries if e.get("rows_added")},
        "target_only": [e["name"] for e in entries if e["base"] is None],
        "side_files": side,
    }
    with open(folder / DIFF_MANIFEST, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1) + "\n")
    total = sum(math.prod(e["shape"]) * DTYPE_BYTES[e["dtype"]] for e in entries)
    return {"status": "done", "tensors": len(entries), "bytes": total, "rows_added": manifest["rows_added"],
            "target_only": manifest["target_only"], "base_only": plan.base_only,
            "seconds": round(time.time() - t0, 2)}


def _copy_side_files(source: Path, dest: Path, required=("config.json",)) -> list[dict]:
    out = []
    for name in SIDE_FILES:
        path = safe_join(source, name, f"target folder {source}")
        if path.is_file():
            out.append(_copy_checked(path, dest / name))
        elif name in required:
            raise LlamantinoError(f"{source}: no {name}")
    return out


def _make_tensor(files: OpenFiles, out, target: TensorInfo, base: TensorInfo | None):
    """Write target XOR base (zero-extended) chunk by chunk at its place in the output file;
    returns the sha256 of the target tensor and of the base tensor."""
    out_fd, position, path = out
    target_hash, base_hash = hashlib.sha256(), hashlib.sha256() if base else None
    base_bytes = base.nbytes if base else 0
    t_buf, b_buf, out_buf = chunk_buffers(3)
    for offset in range(0, target.nbytes, CHUNK):
        n = min(CHUNK, target.nbytes - offset)
        k = max(0, min(n, base_bytes - offset))  # bytes of this chunk that have a base
        t = read_range(files.fds[target.path], target, offset, t_buf[:n])
        target_hash.update(t)
        payload = t
        if k:
            b = read_range(files.fds[base.path], base, offset, b_buf[:k])
            base_hash.update(b)
            payload = out_buf[:n]
            xor(payload[:k], t[:k], b)
            payload[k:] = t[k:]
        write_at(out_fd, payload, position + offset, path)
    return target_hash.hexdigest(), base_hash.hexdigest() if base else None


# ---------------------------------------------------------------------------------------
# diff apply


@dataclass
class ApplyPlan:
    """A difference and its base, every header and name checked; nothing written yet."""

    diff: Path
    manifest: dict
    diff_files: dict[str, WeightFile]
    side_files: dict[str, Path]  # name -> file of the difference, sha256 checked
    base: ModelFolder
    base_label: str  # how errors name the base (build: the user's base and what was merged into it)


def plan_apply(base, diff, *, base_label: str | None = None) -> ApplyPlan:
    diff = Path(diff)
    manifest = read_diff_manifest(diff)
    diff_files = _check_diff_files(diff, manifest)
    side_files = _check_side_files_present(diff, manifest)
    base_model = ModelFolder(base, "base")
    label = base_label or str(base_model.folder)
    check_merge_method(manifest, merge_method_of(base_model.folder), label, diff)
    _check_base(base_model, manifest, label)
    return ApplyPlan(diff, manifest, diff_files, side_files, base_model, label)


def _check_side_files_present(diff: Path, manifest: dict) -> dict[str, Path]:
    out = {}
    for side in manifest["side_files"]:
        source = safe_join(diff, side["name"], f"{diff / DIFF_MANIFEST}: side_files")
        if not source.is_file():
            raise LlamantinoError(f"{source}: missing; the difference lists it in side_files")
        if sha256_file(source) != side["sha256"]:
            raise LlamantinoError(f"{source}: not the file the difference was made with (sha256 differs)")
        out[side["name"]] = source
    return out


def _check_diff_files(diff: Path, manifest: dict) -> dict[str, WeightFile]:
    paths = {f["diff_file"]: safe_join(diff, f["diff_file"], f"{diff / DIFF_MANIFEST}: diff_file")
             for f in manifest["target"]["files"]}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise LlamantinoError(f"{diff}: missing difference file(s) {', '.join(missing)}")
    files = {n: WeightFile(p) for n, p in paths.items()}
    for entry in manifest["tensors"]:
        info = files[entry["diff_file"]].tensors.get(entry["name"])
        if info is None or info.shape != entry["shape"] or \
                info.dtype != BITS_DTYPE[DTYPE_BYTES[entry["dtype"]]]:
            raise LlamantinoError(f"{diff / entry['diff_file']}: tensor {entry['name']} is missing or does "
                                  f"not match {DIFF_MANIFEST}")
    return files


def _check_base(base: ModelFolder, manifest: dict, label: str) -> None:
    """Names, shapes, dtypes and architecture, from headers only: fails fast, reads no data."""
    expected = manifest["base"]["architecture"]
    actual = base.architecture()
    changed = [k for k in ARCH_KEYS if expected.get(k) != actual.get(k)]
    if changed:
        raise LlamantinoError(
            f"{label}: this difference was made for another architecture ({manifest['base']['name']}): "
            + ", ".join(f"{k} is {actual.get(k)}, expected {expected.get(k)}" for k in changed))
    missing, dtype_bad, shape_bad = [], [], []
    for entry in manifest["tensors"]:
        spec = entry["base"]
        if spec is None:
            continue
        info = base.tensors.get(spec["name"])
        if info is None:
            missing.append(spec["name"])
        elif info.dtype != spec["dtype"]:
            dtype_bad.append(f"{spec['name']} ({info.dtype}, expected {spec['dtype']})")
        elif info.shape != spec["shape"]:
            shape_bad.append(f"{spec['name']} ({info.shape}, expected {spec['shape']})")
    if missing:
        raise LlamantinoError(f"{label}: base lacks tensor(s) the difference needs: {', '.join(missing)}")
    if dtype_bad:
        raise LlamantinoError(f"{label}: dtype mismatch, the difference expects another dtype for: "
                              f"{', '.join(dtype_bad)}")
    if shape_bad:
        raise LlamantinoError(f"{label}: shape mismatch for: {', '.join(shape_bad)}")


def apply_diff(base, diff, output, *, overwrite: bool = False) -> dict:
    """Rebuild the target of `diff` from `base` into `output`, checking every checksum."""
    plan = plan_apply(base, diff)
    output = check_output(output, {"base": base, "diff": diff}, overwrite)
    with atomic_dir(output) as tmp:
        summary = run_apply(plan, tmp)
        write_marker(tmp, "diff apply")
    return summary


def apply_into(base, diff, folder, *, base_label: str | None = None) -> dict:
    """`apply_diff` writing into an existing empty folder (the caller makes it atomic)."""
    return run_apply(plan_apply(base, diff, base_label=base_label), folder)


def run_apply(plan: ApplyPlan, folder) -> dict:
    """Rebuild every tensor into `folder`, a new empty folder; refuse unless every result
    matches its recorded sha256, naming every wrong base tensor and every damaged one."""
    t0 = time.time()
    folder = Path(folder)
    entries = plan.manifest["tensors"]
    failed = _rebuild_tensors(plan, folder)
    if failed:
        raise LlamantinoError(_failure_message(plan, failed))
    if plan.manifest["target"]["index"] is not None:
        with open(folder / INDEX_FILE, "x", encoding="utf-8") as handle:
            handle.write(plan.manifest["target"]["index"])
    for side in plan.manifest["side_files"]:
        source = plan.side_files[side["name"]]
        if _copy_checked(source, safe_join(folder, side["name"], str(folder)))["sha256"] != side["sha256"]:
            raise LlamantinoError(f"{source}: changed while the model was rebuilt (sha256 differs)")
    seconds = time.time() - t0
    total = sum(plan.diff_files[e["diff_file"]].tensors[e["name"]].nbytes for e in entries)
    return {"status": "done", "tensors": len(entries), "bytes": total, "seconds": round(seconds, 2),
            "GB_per_s": round(total / max(seconds, 1e-9) / 1e9, 3)}


def _rebuild_tensors(plan: ApplyPlan, folder: Path) -> list[dict]:
    """Write every weight file of the target; returns the entries whose result is wrong.
    Largest tensors first, so that the last ones to finish are small (no idle core)."""
    stop = threading.Event()  # set at the first wrong result: nothing more is written
    files, jobs, tasks = OpenFiles(), [], []
    try:
        for spec in plan.manifest["target"]["files"]:
            path = safe_join(folder, spec["file"], str(folder))
            fd, start = files.writing(path, spec["header"])
            offsets = data_offsets(spec["header"])
            for entry in (e for e in plan.manifest["tensors"] if e["file"] == spec["file"]):
                payload = plan.diff_files[entry["diff_file"]].tensors[entry["name"]]
                source = plan.base.tensors[entry["base"]["name"]] if entry["base"] else None
                for info in (payload, source):
                    if info is not None:
                        files.reading(info.path)
                tasks.append((entry, (fd, start + offsets[entry["name"]], path), payload, source))
        tasks.sort(key=lambda task: -task[2].nbytes)
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool, _cancel_on_error(jobs, stop):
            for entry, out, payload, source in tasks:
                jobs.append((entry, pool.submit(_apply_tensor, files, out, payload, source, entry["sha256"], stop)))
            wrong = {id(entry) for entry, job in jobs if not job.result()}
    finally:
        files.close()
    return [e for e in plan.manifest["tensors"] if id(e) in wrong]  # in the manifest's order


def _apply_tensor(files: OpenFiles, out, payload: TensorInfo, base: TensorInfo | None, expected: str,
                  stop: threading.Event) -> bool:
    """Write payload XOR base (zero-extended) chunk by chunk at its place in the output file,
    hashing the result as it passes; True when it matches `expected`. Once `stop` is set
    (another tensor failed) nothing more is written, but the hash still runs to its end."""
    out_fd, position, path = out
    digest = hashlib.sha256()
    base_bytes = base.nbytes if base else 0
    d_buf, b_buf = chunk_buffers(2)
    for offset in range(0, payload.nbytes, CHUNK):
        n = min(CHUNK, payload.nbytes - offset)
        k = max(0, min(n, base_bytes - offset))  # bytes of this chunk that have a base
        d = read_range(files.fds[payload.path], payload, offset, d_buf[:n])
        if k:
            xor(d[:k], d[:k], read_range(files.fds[base.path], base, offset, b_buf[:k]))
        digest.update(d)
        if not stop.is_set():
            write_at(out_fd, d, position + offset, path)
    if digest.hexdigest() != expected:
        stop.set()
        return False
    return True


def _failure_message(plan: ApplyPlan, failed: list[dict]) -> str:
    """Hash the base tensors of the failed results: a wrong one explains its result; the
    others' results come from a damaged difference. One line naming each."""
    needed = {e["base"]["name"]: e["base"]["sha256"] for e in failed if e["base"] is not None}
    files = OpenFiles()
    try:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            actual = dict(zip(needed, pool.map(lambda n: _hash_tensor(files, plan.base.tensors[n]), needed)))
    finally:
        files.close()
    wrong_base = [n for n in needed if actual[n] != needed[n]]
    damaged = [f"{e['name']} ({e['diff_file']})" for e in failed
               if e["base"] is None or e["base"]["name"] not in wrong_base]
    parts = []
    if wrong_base:
        with_base = sum(e["base"] is not None for e in plan.manifest["tensors"])
        parts.append(f"{plan.base_label}: {len(wrong_base)} of {with_base} base tensor(s) differ from the ones "
                     f"this difference was made from ({plan.manifest['base']['name']}): {', '.join(wrong_base)}")
    if damaged:
        parts.append(f"{plan.diff}: {len(damaged)} rebuilt tensor(s) do not match their recorded sha256 "
                     f"(damaged difference file?): {', '.join(damaged)}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------
# Command line


def add_make_arguments(parser):
    parser.add_argument("--base", required=True, help="model folder the target was tuned from")
    parser.add_argument("--target", required=True, help="the tuned model folder")
    parser.add_argument("--output", required=True, help="folder to write the difference into")
    parser.add_argument("--base-name", default="", help="name of the base shown in errors (default: folder name)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds a previous llamantino output")


def make_main(args) -> int:
    summary = make_diff(args.base, args.target, args.output, base_name=args.base_name, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def add_apply_arguments(parser):
    parser.add_argument("--base", required=True, help="model folder the difference was made against")
    parser.add_argument("--diff", required=True, help="weight difference folder")
    parser.add_argument("--output", required=True, help="folder to write the rebuilt model into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds a previous llamantino output")


def apply_main(args) -> int:
    summary = apply_diff(args.base, args.diff, args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0
