"""Model folders and safetensors files as others wrote them: headers checked against the file,
index weight maps, links that lead outside, JSON read in one line, output folders checked
before anything is written."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from llamantino import __version__
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_write_json, check_member_name, link_root, read_json_object, safe_join

# The dtypes llamantino loads, merges, evaluates and saves models in (torch's names).
DTYPES = ("float32", "bfloat16", "float16")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
               "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

# Config keys that identify an architecture: a diff made for one refuses another.
ARCH_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "vocab_size")


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: list[int]
    path: Path
    start: int  # absolute byte offset in the file
    nbytes: int


def is_shape(shape) -> bool:
    return isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)


def _offsets(entry) -> tuple[int, int]:
    try:
        begin, stop = entry["data_offsets"]
        return int(begin), int(stop)
    except (KeyError, TypeError, ValueError):
        return -1, -1


def parse_header(header_text: str, where) -> tuple[dict | None, list[tuple[str, str, list[int], int, int]]]:
    """(metadata, [(name, dtype, shape, begin, stop)] in byte order) of a safetensors header,
    refused unless the tensors follow one another and each range fits its shape."""
    try:
        header = json.loads(header_text)
    except (json.JSONDecodeError, RecursionError) as exc:  # nesting beyond the parser is a RecursionError
        raise LlamantinoError(f"{where}: unreadable safetensors header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise LlamantinoError(f"{where}: safetensors header is not a mapping")
    metadata = header.pop("__metadata__", None)
    tensors, end = [], 0
    for name, entry in sorted(header.items(), key=lambda kv: _offsets(kv[1])[0]):
        dtype, shape = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else (None, None)
        if dtype not in DTYPE_BYTES or not is_shape(shape):
            raise LlamantinoError(f"{where}: tensor {name}: unsupported dtype {dtype!r} or bad shape")
        begin, stop = _offsets(entry)
        if begin != end or stop - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise LlamantinoError(f"{where}: tensor {name}: byte range {begin}-{stop} does not "
                                  "follow the previous tensor or does not fit its shape")
        tensors.append((name, dtype, list(shape), begin, stop))
        end = stop
    return metadata, tensors


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
        except FileNotFoundError:
            raise LlamantinoError(f"{self.path}: missing file") from None
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            raise LlamantinoError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.metadata, tensors = parse_header(self.header_text, self.path)
        data_start = 8 + length
        self.tensors = {name: TensorInfo(name, dtype, shape, self.path, data_start + begin, stop - begin)
                        for name, dtype, shape, begin, stop in tensors}
        end = tensors[-1][4] if tensors else 0
        if data_start + end != size:
            raise LlamantinoError(f"{self.path}: truncated or damaged: {size} bytes where the header "
                                  f"announces {data_start + end}")


def weight_file_name(name, what: str) -> str:
    """A weight file name read from data: a plain `.safetensors` name, no folders."""
    check_member_name(name, what)
    if "/" in name or not name.endswith(".safetensors"):
        raise LlamantinoError(f"{what}: {name!r} is not a plain .safetensors file name")
    return name


class ModelFolder:
    """A model folder's config and safetensors weights (one file, or shards and an index).
    Every file is found through `safe_join`: names from the index, and links, stay inside."""

    def __init__(self, folder, what: str = "model"):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise LlamantinoError(f"{self.folder}: no such {what} folder")
        config_path = safe_join(self.folder, "config.json", f"{what} folder {self.folder}")
        if not config_path.is_file():
            raise LlamantinoError(f"{self.folder}: no config.json: not a model folder")
        self.config = read_json_object(config_path, "config")
        self.index_text = None
        index_path = safe_join(self.folder, INDEX_FILE, f"{what} folder {self.folder}")
        if index_path.is_file():
            try:
                self.index_text = index_path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise LlamantinoError(f"{index_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            weight_map = read_weight_map(self.index_text, index_path)
            names = sorted(set(weight_map.values()))
        elif safe_join(self.folder, SINGLE_FILE, f"{what} folder {self.folder}").is_file():
            weight_map, names = None, [SINGLE_FILE]
        else:
            other = "; it holds .bin weights: convert them to safetensors first" if any(
                self.folder.glob("*.bin")) else ""
            raise LlamantinoError(f"{self.folder}: no {SINGLE_FILE} or {INDEX_FILE}{other}")
        paths = {n: safe_join(self.folder, n, f"{index_path}: weight_map" if weight_map else str(self.folder))
                 for n in names}
        missing = [n for n, p in paths.items() if not p.is_file()]
        if missing:
            raise LlamantinoError(f"{self.folder}: missing weight file(s) {', '.join(missing)} "
                                  f"(listed in {INDEX_FILE})")
        self.files = {n: WeightFile(p) for n, p in paths.items()}
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


def read_weight_map(index_text: str, where) -> dict[str, str]:
    """The `weight_map` of a safetensors index (tensor -> file), checked to be a mapping of names."""
    try:
        weight_map = json.loads(index_text)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
        raise LlamantinoError(f"{where}: unreadable index ({type(exc).__name__}: {exc})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise LlamantinoError(f"{where}: weight_map is not a mapping of tensor names to file names")
    return weight_map


def links_outside(folder) -> list[Path]:
    """Symbolic links anywhere in `folder` that lead out of it (a stranger's folder may use
    them to make a tool read, or publish, a file elsewhere). A hub-cache snapshot's links into
    its repository's `blobs/` stay inside (`fileio.link_root`)."""
    root = link_root(folder)
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            target = path.resolve()
            if target != root and root not in target.parents:
                found.append(path)
    return found


def refuse_links_outside(folder, what: str) -> None:
    if Path(folder).is_dir():
        links = links_outside(folder)
        if links:
            raise LlamantinoError(f"{what} {folder}: {links[0].relative_to(folder)} is a symbolic link that "
                                  "leads outside the folder; copy the real file in its place")


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


def check_output(output, inputs, overwrite: bool) -> Path:
    """Refuse, before anything is written, an output that is, holds or lies inside one of
    `inputs` ((what, path) pairs or a mapping), and a non-empty folder unless `overwrite`
    and everything in it is a llamantino output. Nothing is deleted here: `atomic_dir`
    replaces the folder only once the new one is complete."""
    from llamantino.core.manifest import check_output_location, foreign_files

    output = Path(output)
    pairs = list(inputs.items() if isinstance(inputs, dict) else inputs)
    for what, path in pairs:
        if path and output.resolve() == Path(path).resolve():
            raise LlamantinoError(f"{output}: the output folder must differ from --{what}")
    check_output_location(output, inputs=[str(path) for _, path in pairs if path])
    if output.exists() and not output.is_dir():
        raise LlamantinoError(f"{output}: exists and is not a folder")
    if not output.exists() or not any(output.iterdir()):
        return output
    if not overwrite:
        raise LlamantinoError(f"{output}: output folder exists and is not empty; pass --overwrite to replace it")
    links = [p for p in output.rglob("*") if p.is_symlink()]
    if links:
        raise LlamantinoError(f"{output}: holds a symbolic link ({links[0]}); llamantino outputs never do, "
                              "refusing to replace it")
    foreign = foreign_files(output)
    if foreign:
        raise LlamantinoError(f"{output}: holds {len(foreign)} file(s) no llamantino run wrote (e.g. {foreign[0]}); "
                              "--overwrite replaces only llamantino outputs: move them or choose another folder")
    return output


def write_marker(folder, stage: str, metrics: dict | None = None) -> None:
    """A manifest.json listing the folder's files: a later --overwrite can tell this output
    (and only its files) from anything else; `metrics` as a stage's manifest keeps them (a
    merge's method). Deterministic: same inputs, same bytes."""
    from llamantino.core.manifest import MANIFEST, list_outputs

    record = {"llamantino": __version__, "stage": stage, "outputs": list_outputs(folder)}
    if metrics:
        record["metrics"] = metrics
    atomic_write_json(Path(folder) / MANIFEST, record)


# Weight files that are pickles (PyTorch's .bin and its kin): parsing one, even with
# weights_only=True, runs a pickle reader over a stranger's bytes.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = {
    "model": "load it where you trust it and save it with transformers' save_pretrained(), which writes "
             "model.safetensors",
    "adapter": "load it where you trust it with peft's PeftModel.from_pretrained() and save it with "
               "save_pretrained(), which writes adapter_model.safetensors",
}


def require_safetensors(folder, what: str = "model") -> None:
    """A local model (`what`: model) or adapter (`what`: adapter) folder whose weights are only
    pickles is refused, naming the file and how to convert it: llamantino reads safetensors."""
    folder = Path(folder)
    if what == "adapter":
        if (folder / "adapter_model.safetensors").is_file():
            return
        pickles = [p.name for p in sorted(folder.iterdir()) if p.name.startswith("adapter_model")
                   and p.name.endswith(PICKLE_SUFFIXES)]
        if not pickles:
            raise LlamantinoError(f"{folder}: no adapter_model.safetensors: not a LoRA adapter folder")
    else:
        if any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            return
        pickles = [p.name for p in sorted(folder.iterdir())
                   if p.is_file() and (p.name.endswith(PICKLE_SUFFIXES) or p.name.endswith(".bin.index.json"))]
        if not pickles:
            return  # no weights at all: from_pretrained says so
    raise LlamantinoError(f"{folder / pickles[0]}: a pickle; llamantino reads {what} weights from safetensors "
                          f"files only, never unpickling: {CONVERT_HINT[what]}")
