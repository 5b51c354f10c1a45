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
sha256 computed as the bytes pass; a few tensors go through at once on worker threads.
Memory stays at a few chunks per thread whatever the size of the model or of its largest
tensor, so a 70B model rebuilds on a machine with far less RAM than the model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llamantino.errors import LlamantinoError
from llamantino.fileio import atomic_dir, sha256_file

FORMAT = "llamantino-weight-diff"
FORMAT_VERSION = 1
DIFF_MANIFEST = "weight_diff.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ENCODING = ("xor: each stored tensor holds the raw bits of the target tensor XOR those of its base "
            "tensor (zero-extended when rows were added; a tensor without base is stored as it is)")

DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
BITS_DTYPE = {1: "U8", 2: "U16", 4: "U32", 8: "U64"}

CHUNK = 4 << 20  # bytes of a tensor read, XORed, hashed and written at a time
WRITE_CHUNK = 1 << 20
# Tensors processed at once: one sha256 stream runs on one core, so several tensors in
# parallel is what lets a rebuild keep up with the disk.
WORKERS = max(1, min(8, os.cpu_count() or 1))

# Config keys that identify an architecture: a diff made for one refuses another.
ARCH_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "vocab_size")

# Files of the target that travel with the difference (the weights never do).
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")

# LLaMA-family names of the tied input/output embeddings: with tie_word_embeddings the
# checkpoint holds only the first, and it stands for the second too.
TIED_EMBEDDINGS = {"lm_head.weight": "model.embed_tokens.weight"}


# ---------------------------------------------------------------------------------------
# Reading safetensors files and model folders


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    path: Path
    start: int  # absolute byte offset in the file
    nbytes: int


class WeightFile:
    """A safetensors file's header, checked against the file's size (catches truncation)."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                head = handle.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than a safetensors header")
                (length,) = struct.unpack("<Q", head)
                if length > min(size - 8, 1 << 28):
                    raise ValueError(f"header length {length} does not fit the file")
                self.header_text = handle.read(length).decode("utf-8")
            header = json.loads(self.header_text)
            if not isinstance(header, dict):
                raise ValueError("header is not a mapping")
        except FileNotFoundError:
            raise LlamantinoError(f"{self.path}: missing file") from None
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise LlamantinoError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.metadata = header.pop("__metadata__", None)
        data_start = 8 + length
        self.tensors: dict[str, TensorInfo] = {}
        end = 0
        for name, entry in sorted(header.items(), key=lambda kv: _offsets(kv[1])[0]):
            dtype, shape = entry.get("dtype"), entry.get("shape")
            begin, stop = _offsets(entry)
            if dtype not in DTYPE_BYTES or not isinstance(shape, list):
                raise LlamantinoError(f"{self.path}: tensor {name}: unsupported dtype {dtype!r} or bad shape")
            nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
            if begin != end or stop - begin != nbytes:
                raise LlamantinoError(f"{self.path}: tensor {name}: byte range {begin}-{stop} does not "
                                      "follow the previous tensor or does not fit its shape")
            self.tensors[name] = TensorInfo(name, dtype, list(shape), self.path, data_start + begin, nbytes)
            end = stop
        if data_start + end != size:
            raise LlamantinoError(f"{self.path}: truncated or damaged: {size} bytes where the header "
                                  f"announces {data_start + end}")


def _offsets(entry) -> tuple[int, int]:
    try:
        begin, stop = entry["data_offsets"]
        return int(begin), int(stop)
    except (KeyError, TypeError, ValueError):
        return -1, -1


class ModelFolder:
    """A model folder's config and safetensors weights (one file, or shards and an index)."""

    def __init__(self, folder, what: str = "model"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LlamantinoError(f"{self.folder}: no such {what} folder")
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise LlamantinoError(f"{self.folder}: no config.json: not a model folder")
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LlamantinoError(f"{config_path}: unreadable ({exc})") from None
        self.index_text = None
        index_path = self.folder / INDEX_FILE
        if index_path.is_file():
            self.index_text = index_path.read_text(encoding="utf-8")
            try:
                weight_map = json.loads(self.index_text)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise LlamantinoError(f"{index_path}: unreadable index ({exc})") from None
            names = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE_FILE).is_file():
            weight_map, names = None, [SINGLE_FILE]
        else:
            other = "; it holds .bin weights: convert them to safetensors first" if any(
                self.folder.glob("*.bin")) else ""
            raise LlamantinoError(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}{other}")
        missing = [n for n in names if not (self.folder / n).is_file()]
        if missing:
            raise LlamantinoError(f"{self.folder}: missing weight file(s) {', '.join(missing)} "
                                  f"(listed in {INDEX_FILE})")
        self.files = {n: WeightFile(self.folder / n) for n in names}
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files.values():
            self.tensors.update(file.tensors)
        if weight_map is not None:
            lost = [t for t, f in weight_map.items() if t not in self.files[f].tensors]
            if lost:
                raise LlamantinoError(f"{index_path}: tensor(s) not in their listed file: {', '.join(lost)}")

    def architecture(self) -> dict:
        return {key: self.config.get(key) for key in ARCH_KEYS}

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


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
        return self.fds[path]

    def writing(self, path: Path, header_text: str) -> tuple[int, int]:
        """A new safetensors file with its header written; returns (fd, where data starts)."""
        data = header_text.encode("utf-8")
        fd = self.fds[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def safetensors_header(entries: list[tuple[str, str, list[int]]], metadata: dict | None = None) -> str:
    """The header of a file holding `entries` (name, dtype, shape) in this order, padded
    with spaces to a multiple of 8 bytes as the safetensors writer does."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"))
    return text + " " * (-len(text.encode("utf-8")) % 8)


def data_offsets(header_text: str) -> dict[str, int]:
    """Where each tensor's bytes start, relative to the data section."""
    header = json.loads(header_text)
    header.pop("__metadata__", None)
    return {name: _offsets(entry)[0] for name, entry in header.items()}


def xor(out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """out = a ^ b on equal-length byte arrays, in the widest word the length allows (speed)."""
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8) if len(a) % np.dtype(w).itemsize == 0)
    np.bitwise_xor(a.view(word), b.view(word), out=out.view(word))


def tensor_hashes(folder) -> dict[str, str]:
    """sha256 of every tensor of a model folder, read chunk by chunk."""
    model = ModelFolder(folder)
    files, buffer, out = OpenFiles(), np.empty(CHUNK, np.uint8), {}
    try:
        for name, info in sorted(model.tensors.items()):
            digest, fd = hashlib.sha256(), files.reading(info.path)
            for offset in range(0, info.nbytes, CHUNK):
                digest.update(read_range(fd, info, offset, buffer[: min(CHUNK, info.nbytes - offset)]))
            out[name] = digest.hexdigest()
    finally:
        files.close()
    return out


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


def _check_output(output, inputs: dict, overwrite: bool) -> Path:
    """Refuse an output that is one of the inputs, or a non-empty folder without overwrite."""
    output = Path(output)
    for what, path in inputs.items():
        if output.resolve() == Path(path).resolve():
            raise LlamantinoError(f"{output}: the output folder must differ from --{what}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise LlamantinoError(f"{output}: output folder exists and is not empty; pass --overwrite to replace it")
    return output


def _copy_side_files(source: Path, dest: Path, required=("config.json",)) -> list[dict]:
    out = []
    for name in SIDE_FILES:
        path = source / name
        if path.is_file():
            shutil.copyfile(path, dest / name)
            out.append({"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
        elif name in required:
            raise LlamantinoError(f"{source}: no {name}")
    return out


# ---------------------------------------------------------------------------------------
# diff make


def _plan(base: ModelFolder, target: ModelFolder) -> tuple[list[dict], list[str]]:
    """Pair every target tensor with its base tensor; refuse what cannot be paired exactly."""
    entries, used = [], set()
    dtype_bad, shape_bad = [], []
    for file_name, file in target.files.items():
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
                elif b.shape != info.shape and not (
                        len(b.shape) == len(info.shape) >= 1 and b.shape[1:] == info.shape[1:]
                        and b.shape[0] < info.shape[0]):
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


def make_diff(base, target, output, *, base_name: str = "", overwrite: bool = False) -> dict:
    """Write the exact difference `target XOR base` into `output`; returns a summary."""
    output = _check_output(output, {"base": base, "target": target}, overwrite)
    with atomic_dir(output) as tmp:
        summary = make_into(base, target, tmp, base_name=base_name)
    return summary


def make_into(base, target, folder, *, base_name: str = "") -> dict:
    """`make_diff` writing into an existing empty folder (the caller makes it atomic)."""
    t0 = time.time()
    folder = Path(folder)
    base_model, target_model = ModelFolder(base, "base"), ModelFolder(target, "target")
    base_arch, target_arch = base_model.architecture(), target_model.architecture()
    changed = [k for k in ARCH_KEYS if k != "vocab_size" and base_arch[k] != target_arch[k]]
    if changed:
        raise LlamantinoError(f"target {target} is another architecture than base {base}: "
                              + ", ".join(f"{k} {base_arch[k]} vs {target_arch[k]}" for k in changed))
    entries, base_only = _plan(base_model, target_model)
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
                    base_info = base_model.tensors[entry["base"]["name"]] if entry["base"] else None
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
        "base": {"name": base_name or base_model.folder.name, "architecture": base_arch},
        "target": {"architecture": target_arch, "files": files_meta, "index": target_model.index_text},
        "tensors": entries,
        "base_only": base_only,
        "rows_added": {e["name"]: e["rows_added"] for e in entries if e.get("rows_added")},
        "target_only": [e["name"] for e in entries if e["base"] is None],
        "side_files": side,
    }
    (folder / DIFF_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    total = sum(math.prod(e["shape"]) * DTYPE_BYTES[e["dtype"]] for e in entries)
    return {"status": "done", "tensors": len(entries), "bytes": total, "rows_added": manifest["rows_added"],
            "target_only": manifest["target_only"], "base_only": base_only,
            "seconds": round(time.time() - t0, 2)}


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


def read_diff_manifest(diff) -> dict:
    path = Path(diff) / DIFF_MANIFEST
    if not Path(diff).is_dir():
        raise LlamantinoError(f"{diff}: no such weight difference folder")
    if not path.is_file():
        raise LlamantinoError(f"{diff}: not a weight difference (no {DIFF_MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlamantinoError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise LlamantinoError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                              f"this llamantino reads {FORMAT} version {FORMAT_VERSION}")
    return manifest


def base_dtypes(diff) -> set[str]:
    """The dtypes the difference expects its base tensors in (build merges in this dtype)."""
    manifest = read_diff_manifest(diff)
    return {e["base"]["dtype"] for e in manifest["tensors"] if e["base"] is not None}


def _check_diff_files(diff: Path, manifest: dict) -> dict[str, WeightFile]:
    names = [f["diff_file"] for f in manifest["target"]["files"]]
    missing = [n for n in names if not (diff / n).is_file()]
    if missing:
        raise LlamantinoError(f"{diff}: missing difference file(s) {', '.join(missing)}")
    files = {n: WeightFile(diff / n) for n in names}
    for entry in manifest["tensors"]:
        info = files[entry["diff_file"]].tensors.get(entry["name"])
        if info is None or info.shape != entry["shape"] or \
                info.dtype != BITS_DTYPE[DTYPE_BYTES[entry["dtype"]]]:
            raise LlamantinoError(f"{diff / entry['diff_file']}: tensor {entry['name']} is missing or does "
                                  f"not match {DIFF_MANIFEST}")
    for spec in manifest["target"]["files"]:  # the stored header must describe the same tensors
        mine = [e for e in manifest["tensors"] if e["file"] == spec["file"]]
        header = json.loads(spec["header"])
        header.pop("__metadata__", None)
        described = sorted((n, h["dtype"], h["shape"]) for n, h in header.items())
        if described != sorted((e["name"], e["dtype"], e["shape"]) for e in mine):
            raise LlamantinoError(f"{diff / DIFF_MANIFEST}: header of {spec['file']} does not match its tensors")
    return files


def _check_base(base: ModelFolder, manifest: dict) -> None:
    """Names, shapes, dtypes and architecture, from headers only: fails fast, reads no data."""
    expected = manifest["base"]["architecture"]
    actual = base.architecture()
    changed = [k for k in ARCH_KEYS if expected.get(k) != actual.get(k)]
    if changed:
        raise LlamantinoError(
            f"{base.folder}: this difference was made for another architecture ({manifest['base']['name']}): "
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
        raise LlamantinoError(f"{base.folder}: base lacks tensor(s) the difference needs: {', '.join(missing)}")
    if dtype_bad:
        raise LlamantinoError(f"{base.folder}: dtype mismatch, the difference expects another dtype for: "
                              f"{', '.join(dtype_bad)}")
    if shape_bad:
        raise LlamantinoError(f"{base.folder}: shape mismatch for: {', '.join(shape_bad)}")


def apply_diff(base, diff, output, *, overwrite: bool = False) -> dict:
    """Rebuild the target of `diff` from `base` into `output`, checking every checksum."""
    output = _check_output(output, {"base": base, "diff": diff}, overwrite)
    with atomic_dir(output) as tmp:
        summary = apply_into(base, diff, tmp)
    return summary


def apply_into(base, diff, folder) -> dict:
    """`apply_diff` writing into an existing empty folder (the caller makes it atomic)."""
    t0 = time.time()
    diff, folder = Path(diff), Path(folder)
    manifest = read_diff_manifest(diff)
    diff_files = _check_diff_files(diff, manifest)
    base_model = ModelFolder(base, "base")
    _check_base(base_model, manifest)
    entries = manifest["tensors"]
    stop = threading.Event()  # set at the first failed check: nothing more is written
    wrong_base, wrong_result = [], []
    files, jobs = OpenFiles(), []
    total = 0
    try:
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool, _cancel_on_error(jobs, stop):
            for spec in manifest["target"]["files"]:
                path = folder / spec["file"]
                fd, start = files.writing(path, spec["header"])
                offsets = data_offsets(spec["header"])
                for entry in (e for e in entries if e["file"] == spec["file"]):
                    payload = diff_files[entry["diff_file"]].tensors[entry["name"]]
                    source = base_model.tensors[entry["base"]["name"]] if entry["base"] else None
                    for info in (payload, source):
                        if info is not None:
                            files.reading(info.path)
                    jobs.append((entry, pool.submit(_apply_tensor, files, (fd, start + offsets[entry["name"]], path),
                                                    payload, source, stop)))
                    total += payload.nbytes
            for entry, job in jobs:  # in order, while later tensors are still being rebuilt
                base_digest, result_digest = job.result()
                if base_digest is not None and base_digest != entry["base"]["sha256"]:
                    wrong_base.append(entry["base"]["name"])
                    stop.set()
                elif result_digest is not None and result_digest != entry["sha256"]:
                    wrong_result.append(f"{entry['name']} ({entry['diff_file']})")
                    stop.set()
    finally:
        files.close()
    if wrong_base:
        raise LlamantinoError(
            f"{base_model.folder}: {len(wrong_base)} of {sum(e['base'] is not None for e in entries)} base "
            f"tensor(s) differ from the ones this difference was made from ({manifest['base']['name']}): "
            f"{', '.join(wrong_base)}")
    if wrong_result:
        raise LlamantinoError(f"{diff}: rebuilt tensor(s) do not match their recorded sha256 (damaged "
                              f"difference file?): {', '.join(wrong_result)}")
    if manifest["target"]["index"] is not None:
        (folder / INDEX_FILE).write_text(manifest["target"]["index"], encoding="utf-8")
    for side in manifest["side_files"]:
        source = diff / side["name"]
        if not source.is_file() or sha256_file(source) != side["sha256"]:
            raise LlamantinoError(f"{source}: missing or not the file the difference was made with")
        shutil.copyfile(source, folder / side["name"])
    seconds = time.time() - t0
    return {"status": "done", "tensors": len(entries), "bytes": total, "seconds": round(seconds, 2),
            "GB_per_s": round(total / max(seconds, 1e-9) / 1e9, 3)}


def _apply_tensor(files: OpenFiles, out, payload: TensorInfo, base: TensorInfo | None, stop: threading.Event):
    """Write payload XOR base (zero-extended) chunk by chunk at its place in the output file;
    returns the sha256 of the base tensor and of the result. Once `stop` is set, only the
    base is hashed (to name every wrong one) and the result's digest is None."""
    out_fd, position, path = out
    base_hash, result_hash = hashlib.sha256() if base else None, hashlib.sha256()
    base_bytes = base.nbytes if base else 0
    d_buf, b_buf = chunk_buffers(2)
    for offset in range(0, payload.nbytes, CHUNK):
        n = min(CHUNK, payload.nbytes - offset)
        k = max(0, min(n, base_bytes - offset))  # bytes of this chunk that have a base
        if k:
            b = read_range(files.fds[base.path], base, offset, b_buf[:k])
            base_hash.update(b)
        if stop.is_set():
            result_hash = None
            if not k:
                break
            continue
        d = read_range(files.fds[payload.path], payload, offset, d_buf[:n])
        if k:
            xor(d[:k], d[:k], b)
        result_hash.update(d)
        write_at(out_fd, d, position + offset, path)
    return (base_hash.hexdigest() if base else None,
            result_hash.hexdigest() if result_hash is not None and not stop.is_set() else None)


# ---------------------------------------------------------------------------------------
# Command line


def add_make_arguments(parser):
    parser.add_argument("--base", required=True, help="model folder the target was tuned from")
    parser.add_argument("--target", required=True, help="the tuned model folder")
    parser.add_argument("--output", required=True, help="folder to write the difference into")
    parser.add_argument("--base-name", default="", help="name of the base shown in errors (default: folder name)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def make_main(args) -> int:
    summary = make_diff(args.base, args.target, args.output, base_name=args.base_name, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def add_apply_arguments(parser):
    parser.add_argument("--base", required=True, help="model folder the difference was made against")
    parser.add_argument("--diff", required=True, help="weight difference folder")
    parser.add_argument("--output", required=True, help="folder to write the rebuilt model into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def apply_main(args) -> int:
    summary = apply_diff(args.base, args.diff, args.output, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0
