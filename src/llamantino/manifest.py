"""`manifest.json`: what a stage read, with which settings and libraries, and what it measured.

Every stage writes one into its output folder, last, so a folder with a manifest is a
finished stage. `prepare_output` reads it back to decide whether a folder holds this very
run (skip), an interrupted run (resume), or a different run (refuse unless overwrite).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import shutil
from pathlib import Path

from llamantino import __version__
from llamantino.config import differing_settings, fingerprint, input_paths, to_dict
from llamantino.errors import LlamantinoError
from llamantino.fileio import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_INFO = "run.json"  # written when a stage starts; identifies an unfinished run

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets",
             "safetensors", "tokenizers", "trl", "langdetect", "py3langid", "argostranslate",
             "ctranslate2", "sentencepiece")


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def describe_inputs(paths) -> list[dict]:
    """Local files with size and sha256; anything else (hub names) by name."""
    out = []
    for raw in paths:
        path = Path(str(raw))
        if path.is_file():
            out.append({"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            out.append({"path": str(path), "files": len(files),
                        "bytes": sum(p.stat().st_size for p in files)})
        else:
            out.append({"name": str(raw)})
    return out


# ---------------------------------------------------------------------------------------
# The state of a stage's inputs: is a finished (or interrupted) run still about these inputs?

# Files up to this size are compared by sha256 at every check (a few hundredths of a second
# each, nothing next to the stage): an edit that keeps size and modification time is still
# seen. Larger files (model weights) are compared by size and modification time.
HASH_LIMIT = 64 << 20


def _file_state(path: Path, rel: str) -> list:
    stat = path.stat()
    digest = sha256_file(path) if stat.st_size <= HASH_LIMIT else None
    return [rel, stat.st_size, stat.st_mtime_ns, digest]


def input_state(cfg) -> list[dict]:
    """Size, modification time and (for files up to HASH_LIMIT) sha256 of every local file
    the stage's input settings name; folders file by file. Recorded in run.json and the manifest."""
    out = []
    for raw in input_paths(cfg):
        path = Path(raw)
        if path.is_file():
            out.append({"path": raw, "files": [_file_state(path, "")]})
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            out.append({"path": raw, "files": [_file_state(p, str(p.relative_to(path))) for p in files]})
    return out


def changed_inputs(recorded: list[dict] | None) -> list[str]:
    """Inputs whose files differ from a recorded `input_state`: added, removed or modified
    files; a file's content by its sha256 when one was recorded (files up to HASH_LIMIT),
    whatever its modification time says, else by size and time. Nothing recorded (older
    runs): none."""
    changed = []
    for entry in recorded or []:
        path = Path(entry["path"])
        before = {rel: (size, mtime, digest) for rel, size, mtime, digest in entry["files"]}
        if path.is_file():
            now = {"": path}
        elif path.is_dir():
            now = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")}
        else:
            changed.append(f"{path} (gone)")
            continue
        if set(now) != set(before):
            changed.append(f"{path} (files added or removed)")
            continue
        for rel, file in now.items():
            size, mtime, digest = before[rel]
            stat = file.stat()
            same = stat.st_size == size and (sha256_file(file) == digest if digest else stat.st_mtime_ns == mtime)
            if not same:
                changed.append(str(path / rel) if rel else str(path))
                break
    return changed


def read_manifest(folder) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlamantinoError(f"{path}: unreadable manifest ({exc})") from None


def run_identity(kind: str, cfg) -> dict:
    return {"stage": kind, "fingerprint": fingerprint(kind, cfg), "settings": to_dict(cfg)}


def check_output_location(output, cfg=None, inputs=()) -> Path:
    """Refuse an output that is, holds or lies inside one of the stage's inputs (its
    `path_input` settings and `inputs`): writing it would destroy or re-read the input."""
    output = Path(output)
    target = output.resolve()
    for raw in [*(input_paths(cfg) if cfg is not None else []), *inputs]:
        if not raw:
            continue
        source = Path(raw)
        if not source.exists():
            continue
        source = source.resolve()
        if target == source:
            raise LlamantinoError(f"{output}: the output is also an input ({raw}); choose another output")
        if source in target.parents:
            raise LlamantinoError(f"{output}: the output lies inside the input {raw}; choose an output outside it")
        if target in source.parents:
            raise LlamantinoError(f"{output}: the output holds the input {raw}; choose another output")
    return output


def _links_inside(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink()]


def _is_temporary(rel: str) -> bool:
    # Work files of an atomic write (`.NAME.tmp-PID`, `.step-N.tmp`) left by a killed process.
    return any(part.startswith(".") and ".tmp" in part for part in Path(rel).parts)


def foreign_files(folder: Path) -> list[str]:
    """Files of `folder` that no llamantino run wrote: everything when it holds no run;
    with a manifest that lists its outputs, what is not listed. A folder with only run.json
    (an interrupted run) is the run's own."""
    manifest = read_manifest(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())
    if manifest is None:
        return [] if (folder / RUN_INFO).is_file() else files
    listed = manifest.get("outputs")
    if listed is None:  # a manifest written before outputs were listed
        return []
    known = set(listed) | {MANIFEST, RUN_INFO}
    return [f for f in files if f not in known and not _is_temporary(f)]


def replace_output(folder: Path) -> None:
    """Delete a previous llamantino run's output folder (--overwrite), but only when every
    file in it is that run's own."""
    foreign = foreign_files(folder)
    if foreign:
        raise LlamantinoError(f"{folder}: holds {len(foreign)} file(s) no llamantino run wrote (e.g. {foreign[0]}); "
                              "--overwrite replaces only llamantino outputs: move them or choose another folder")
    shutil.rmtree(folder)


def prepare_output(folder, kind: str, cfg, *, overwrite: bool = False, resume: bool = True,
                   replace_later: bool = False) -> str:
    """Decide what to do with an output folder before a stage writes anything.

    Returns "complete" (same stage, settings and inputs already finished: nothing to do),
    "resume" (same run, unfinished, and `resume`) or "fresh" (empty or replaced). Refused,
    whatever `overwrite` says: an output that is, holds or lies inside an input; a folder
    holding symbolic links; files that no llamantino run wrote. Refused unless `overwrite`:
    a different run, a finished run whose inputs changed, an unfinished run without `resume`.
    `replace_later`: the stage builds its whole output with `fileio.atomic_dir`, which swaps
    the old folder out only once the new one is complete; it is checked here, not deleted.
    """
    folder = check_output_location(folder, cfg)
    ident = run_identity(kind, cfg)
    if folder.exists() and not folder.is_dir():
        raise LlamantinoError(f"{folder}: exists and is not a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return "fresh"
    links = _links_inside(folder)
    if links:
        raise LlamantinoError(f"{folder}: holds a symbolic link ({links[0]}); llamantino outputs never do, "
                              "refusing to write through it")
    info_path = folder / RUN_INFO
    finished = read_manifest(folder)
    other = finished
    if other is None and info_path.is_file():
        other = _read_run_info(info_path)
    if other is None:
        entries = sorted(p.name for p in folder.iterdir())
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise LlamantinoError(f"{folder}: output folder is not empty and holds no llamantino run ({shown}); "
                              "llamantino replaces only its own outputs: choose an empty or new folder")
    same = other.get("stage") == kind and other.get("fingerprint") == ident["fingerprint"]
    if same and finished is not None:
        changed = changed_inputs(other.get("input_state"))
        if not changed:
            return "complete"
        if not overwrite:
            raise LlamantinoError(f"{folder}: holds a finished '{kind}' run, but its input changed since "
                                  f"({changed[0]}); pass --overwrite to redo it")
    elif same:
        if resume:
            changed = changed_inputs(other.get("input_state"))
            if changed:
                # A fixed input (a bad byte far ahead, say) must not stop the resume; the stage
                # checks that the part it already consumed is unchanged.
                log.warning("%s: input changed since the interrupted run started (%s); resuming", folder, changed[0])
                atomic_write_json(info_path, {**other, "input_state": input_state(cfg)})
            return "resume"
        if not overwrite:
            raise LlamantinoError(f"{folder}: holds an interrupted run of these settings; pass --resume to continue "
                                  "it or --overwrite to start again")
    elif not overwrite:
        if other.get("stage") != kind:
            why = f"holds a '{other.get('stage')}' run, not '{kind}'"
        else:
            changed = differing_settings(other.get("settings", {}), ident["settings"])
            why = f"holds a different '{kind}' run (settings differ: {', '.join(changed) or 'version'})"
        raise LlamantinoError(f"{folder}: output folder {why}; pass --overwrite to replace it")
    if replace_later:
        foreign = foreign_files(folder)
        if foreign:
            replace_output(folder)  # refuses, naming the foreign file
    else:
        replace_output(folder)
    return "fresh"


def _read_run_info(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlamantinoError(f"{path}: unreadable run file ({exc})") from None
    if not isinstance(info, dict):
        raise LlamantinoError(f"{path}: unreadable run file (not a mapping)")
    return info


def start_run(folder, kind: str, cfg) -> None:
    """Mark a folder as holding an unfinished run of this stage, settings and inputs."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_INFO, {**run_identity(kind, cfg), "input_state": input_state(cfg)})


def list_outputs(folder) -> list[str]:
    """Every file of a finished output folder, relative to it (the manifest lists them, so
    --overwrite can tell the run's own files from anything added later)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if not p.is_dir() and p.name not in (MANIFEST, RUN_INFO) and not _is_temporary(str(p.relative_to(folder))))


def _started_with(folder) -> list | None:
    path = Path(folder) / RUN_INFO
    return _read_run_info(path).get("input_state") if path.is_file() else None


def write_manifest(folder, kind: str, cfg, *, inputs=(), metrics: dict | None = None,
                   extra: dict | None = None) -> dict:
    """Write the manifest (last, atomically): this marks the stage as finished."""
    manifest = {
        "llamantino": __version__,
        **run_identity(kind, cfg),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": list(inputs),
        "libraries": library_versions(),
        "metrics": metrics or {},
        # The inputs as they were when the run started (a change during the run is a change).
        "input_state": _started_with(folder) or input_state(cfg),
        "outputs": list_outputs(folder),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest
