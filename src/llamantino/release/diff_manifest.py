"""The manifest of a weight difference (`weight_diff.json`, see `llamantino.release.weightdiff`):
its format, and every field `diff apply` and `build` read checked, with its type, before
anything is opened. A difference is a stranger's file: every file name in it must be a plain
name inside its folder, every tensor and header must agree with the others."""

from __future__ import annotations

import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import check_member_name, read_json_object, safe_join
from llamantino.models.merge import LEGACY_MERGE_METHOD, MERGE_METHOD
from llamantino.models.weight_files import (DTYPE_BYTES, SINGLE_FILE, is_shape, parse_header, read_weight_map,
                                            weight_file_name)

FORMAT = "llamantino-weight-diff"
FORMAT_VERSION = 1
DIFF_MANIFEST = "weight_diff.json"
ENCODING = ("xor: each stored tensor holds the raw bits of the target tensor XOR those of its base "
            "tensor (zero-extended when rows were added; a tensor without base is stored as it is)")

BITS_DTYPE = {1: "U8", 2: "U16", 4: "U32", 8: "U64"}
SHA256 = re.compile(r"[0-9a-f]{64}")

# Files of the target that travel with the difference (the weights never do). A difference
# naming any other side file is refused.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
              "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")


def rows_added_only(base_shape: list[int], shape: list[int]) -> bool:
    """The same shape, or rows added along the first dimension (a grown vocabulary)."""
    return base_shape == shape or (len(base_shape) == len(shape) >= 1 and base_shape[1:] == shape[1:]
                                   and base_shape[0] < shape[0])


# ---------------------------------------------------------------------------------------
# The manifest of a difference, checked field by field before anything is opened


def _field(obj: dict, key: str, kinds, where: str, what: str):
    """obj[key], refused in one line (file and field) when missing or of another type."""
    if key not in obj:
        raise LlamantinoError(f"{where}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kinds):
        raise LlamantinoError(f"{where}: {key}: expected {what}, got {type(value).__name__}")
    return value


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise LlamantinoError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _checked_tensor(value, where: str) -> dict:
    """One `tensors` entry (or its `base`): name, dtype, shape and sha256, typed."""
    entry = _object(value, where)
    _field(entry, "name", str, where, "a tensor name")
    if _field(entry, "dtype", str, where, "a dtype") not in DTYPE_BYTES:
        raise LlamantinoError(f"{where}: dtype: unsupported {entry['dtype']!r}")
    if not is_shape(_field(entry, "shape", list, where, "a list of sizes")):
        raise LlamantinoError(f"{where}: shape: {entry['shape']!r} is not a list of sizes")
    if not SHA256.fullmatch(_field(entry, "sha256", str, where, "a sha256")):
        raise LlamantinoError(f"{where}: sha256: {entry['sha256']!r} is not a sha256 in hex")
    return entry


def _check_file_specs(files: list, where: str) -> dict[str, dict]:
    """target.files: unique plain .safetensors names (written into the output: never a path)."""
    specs, diff_files = {}, set()
    for i, value in enumerate(files):
        at = f"{where}: target.files[{i}]"
        spec = _object(value, at)
        name = weight_file_name(_field(spec, "file", str, at, "a file name"), f"{at}: file")
        diff_file = weight_file_name(_field(spec, "diff_file", str, at, "a file name"), f"{at}: diff_file")
        _field(spec, "header", str, at, "a safetensors header")
        if name in specs or diff_file in diff_files:
            raise LlamantinoError(f"{at}: file {name!r} or diff_file {diff_file!r} is listed twice")
        specs[name] = spec
        diff_files.add(diff_file)
    return specs


def _check_tensors(tensors: list, specs: dict, where: str) -> None:
    names = set()
    for i, value in enumerate(tensors):
        at = f"{where}: tensors[{i}]"
        entry = _checked_tensor(value, at)
        at = f"{where}: tensors[{i}] ({entry['name']})"
        spec = specs.get(_field(entry, "file", str, at, "a file name"))
        if spec is None:
            raise LlamantinoError(f"{at}: file {entry['file']!r} is not one of target.files")
        if _field(entry, "diff_file", str, at, "a file name") != spec["diff_file"]:
            raise LlamantinoError(f"{at}: diff_file {entry['diff_file']!r} is not the one of its file "
                                  f"({spec['diff_file']})")
        if entry["name"] in names:
            raise LlamantinoError(f"{at}: tensor listed twice")
        names.add(entry["name"])
        if _field(entry, "base", (dict, type(None)), at, "an object or null") is not None:
            base = _checked_tensor(entry["base"], f"{at}: base")
            if base["dtype"] != entry["dtype"] or not rows_added_only(base["shape"], entry["shape"]):
                raise LlamantinoError(f"{at}: base {base['dtype']} {base['shape']} cannot make "
                                      f"{entry['dtype']} {entry['shape']}")


def _check_headers(specs: dict, tensors: list, where: str) -> None:
    """Each stored header (written as it is into the rebuilt file) describes its tensors."""
    for name, spec in specs.items():
        _, described = parse_header(spec["header"], f"{where}: header of {name}")
        mine = sorted((e["name"], e["dtype"], e["shape"]) for e in tensors if e["file"] == name)
        if sorted((n, dtype, shape) for n, dtype, shape, _, _ in described) != mine:
            raise LlamantinoError(f"{where}: header of {name} does not match its tensors")


def _check_index(index_text: str, specs: dict, tensors: list, where: str) -> None:
    """The target index (written into the rebuilt model) maps each tensor to its file."""
    weight_map = read_weight_map(index_text, f"{where}: target.index")
    for file in sorted(set(weight_map.values())):
        weight_file_name(file, f"{where}: target.index: weight_map")
    files = {e["name"]: e["file"] for e in tensors}
    wrong = [t for t, f in weight_map.items() if files.get(t) != f]
    if wrong:
        raise LlamantinoError(f"{where}: target.index: weight_map puts tensor(s) in another file than "
                              f"target.files: {', '.join(wrong)}")


def _check_side_files(sides: list, where: str) -> None:
    names = set()
    for i, value in enumerate(sides):
        at = f"{where}: side_files[{i}]"
        side = _object(value, at)
        name = check_member_name(_field(side, "name", str, at, "a file name"), f"{at}: name")
        if name not in SIDE_FILES or name in names:
            raise LlamantinoError(f"{at}: name {name!r} is not one of the side files a difference carries "
                                  f"({', '.join(SIDE_FILES)}), or is listed twice")
        if not SHA256.fullmatch(_field(side, "sha256", str, at, "a sha256")):
            raise LlamantinoError(f"{at}: sha256: {side['sha256']!r} is not a sha256 in hex")
        names.add(name)
    if "config.json" not in names:
        raise LlamantinoError(f"{where}: side_files: no config.json")


def check_diff_manifest(manifest, where) -> dict:
    """Every key `diff apply` and `build` read, with its type; every file name plain."""
    where = str(where)
    _object(manifest, where)
    base = _object(_field(manifest, "base", dict, where, "an object"), f"{where}: base")
    _field(base, "name", str, f"{where}: base", "a name")
    _field(base, "architecture", dict, f"{where}: base", "an object")
    if "merge_method" in base:  # differences made before merge methods were recorded lack it
        _field(base, "merge_method", (str, type(None)), f"{where}: base", "a merge method name or null")
    target = _field(manifest, "target", dict, where, "an object")
    _field(target, "architecture", dict, f"{where}: target", "an object")
    specs = _check_file_specs(_field(target, "files", list, f"{where}: target", "a list"), where)
    tensors = _field(manifest, "tensors", list, where, "a list")
    _check_tensors(tensors, specs, where)
    _check_headers(specs, tensors, where)
    if _field(target, "index", (str, type(None)), f"{where}: target", "the index text or null") is not None:
        _check_index(target["index"], specs, tensors, where)
    elif len(specs) != 1 or SINGLE_FILE not in specs:
        raise LlamantinoError(f"{where}: target.index is null but the files are not one {SINGLE_FILE}")
    _check_side_files(_field(manifest, "side_files", list, where, "a list"), where)
    return manifest


def read_diff_manifest(diff) -> dict:
    if not Path(diff).is_dir():
        raise LlamantinoError(f"{diff}: no such weight difference folder")
    path = safe_join(diff, DIFF_MANIFEST, f"weight difference {diff}")
    if not path.is_file():
        raise LlamantinoError(f"{diff}: not a weight difference (no {DIFF_MANIFEST})")
    manifest = read_json_object(path, "weight difference manifest")
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise LlamantinoError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                              f"this llamantino reads {FORMAT} version {FORMAT_VERSION}")
    return check_diff_manifest(manifest, path)


def base_dtypes(diff) -> set[str]:
    """The dtypes the difference expects its base tensors in (build merges in this dtype)."""
    manifest = read_diff_manifest(diff)
    return {e["base"]["dtype"] for e in manifest["tensors"] if e["base"] is not None}


def check_merge_method(manifest: dict, base_method: str | None, label: str, diff) -> None:
    """A difference made against a merge applies only to a merge by the same method (another
    method gives other bits); refused in one line saying which method made each. A base whose
    method is not known (no llamantino manifest) is left to the tensors' checksums."""
    made = manifest["base"].get("merge_method")
    if base_method is None or made == base_method:
        return
    if made is None:
        made_by = ("records no merge method: it was made against a model that is no merge, or against a merge "
                   f"by an older llamantino ({LEGACY_MERGE_METHOD}, whose bits depend on the machine)")
    else:
        made_by = f"was made against a merge by method {made}"
    raise LlamantinoError(f"{diff}: this difference {made_by}, but {label} is a merge by method {base_method} "
                          f"(this llamantino merges with {MERGE_METHOD}): its tensors cannot match; use a "
                          f"difference made against a {base_method} merge")
