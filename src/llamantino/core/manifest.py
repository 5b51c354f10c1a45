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
import os
import shutil
from pathlib import Path

from llamantino import __version__
from llamantino.core.config import differing_settings, fingerprint, input_paths, to_dict
from llamantino.core.errors import LlamantinoError, shown
from llamantino.core.fileio import atomic_write_json, is_temporary, read_json_object, sha256_file

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


def _known_stages() -> set[str]:
    from llamantino.core.registry import STAGE_MODULES

    return {*STAGE_MODULES, "diff make", "diff apply"}


def load_record(path: Path) -> dict | str:
    """A manifest.json or run.json as llamantino writes it (a JSON object naming a stage of
    llamantino and the llamantino version that wrote it), or, as text, why it is not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # bad JSON, bad bytes, nesting beyond the parser
        return f"unreadable JSON ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    if "stage" not in record:
        return "no llamantino stage in it"
    if not isinstance(record["stage"], str) or record["stage"] not in _known_stages():
        return f"its stage {shown(record['stage'])} is none of llamantino's"
    if isinstance(record.get("llamantino"), str):
        return record
    if path.name == RUN_INFO and isinstance(record.get("fingerprint"), str) and isinstance(record.get("settings"), dict):
        return record  # written when runs did not record their version (nor their files) yet
    return "no llamantino version in it"


def read_manifest(folder) -> dict | None:
    """The manifest of a finished llamantino stage in `folder`; None when there is none, one
    line when the folder's manifest.json is not one llamantino wrote."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    record = load_record(path)
    if isinstance(record, str):
        raise LlamantinoError(f"{folder}: its {MANIFEST} is not one llamantino writes ({record})")
    return record


def run_identity(kind: str, cfg) -> dict:
    return {"stage": kind, "fingerprint": fingerprint(kind, cfg), "settings": to_dict(cfg)}


def same_run(record: dict | None, kind: str, cfg) -> bool:
    """Whether a run record (manifest, run.json, result file) is this stage with these settings,
    including a record written before settings at their default were added."""
    if not isinstance(record, dict) or record.get("stage") != kind:
        return False
    return record.get("fingerprint") in (fingerprint(kind, cfg),
                                         fingerprint(kind, cfg, known=set(record.get("settings") or {})))


def check_output_location(output, cfg=None, inputs=()) -> Path:
    """Refuse an output that is a symbolic link, or that is, holds or lies inside one of the
    stage's inputs (its `path_input` settings and `inputs`), including any file or folder a
    symbolic link inside an input folder leads to: writing it would destroy or re-read the input."""
    output = Path(output)
    if output.is_symlink():
        raise LlamantinoError(f"{output}: the output is a symbolic link (to {os.readlink(output)}); "
                              "give the folder itself or another output")
    target = output.resolve()
    for raw in [*(input_paths(cfg) + _hub_local_paths(cfg) if cfg is not None else []), *inputs]:
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
        if source.is_dir():
            for link, reached in _links_followed(source):
                if reached == target or target in reached.parents:
                    raise LlamantinoError(f"{output}: the input {raw} reaches into the output through the symbolic "
                                          f"link {link}; choose another output")
                if reached.is_dir() and reached in target.parents:
                    raise LlamantinoError(f"{output}: the output lies inside {reached}, which the input {raw} "
                                          f"reaches through the symbolic link {link}; choose another output")
    return output


def _hub_local_paths(cfg) -> list[str]:
    """Local files and folders that `hub:` inputs read through datasets' packaged builders
    (`hub:json?data_files=shards/*.json.gz`, `data_dir=`)."""
    import dataclasses
    import glob

    from llamantino.core.fileio import HUB_PREFIX, parse_hub_spec

    out = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name) if f.metadata.get("path_input") else []
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.startswith(HUB_PREFIX):
                args = parse_hub_spec(item)
                for pattern in [*args.get("data_files", []), *([args["data_dir"]] if args.get("data_dir") else [])]:
                    out += glob.glob(pattern, recursive=True)
    return out


def _links_followed(root: Path):
    """(link, the path it leads to) for every symbolic link inside the folder `root` and
    inside the folders such links lead to (each folder once, so a loop ends)."""
    seen, stack = set(), [root]
    while stack:
        folder = stack.pop()
        if folder in seen:
            continue
        seen.add(folder)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_symlink():
                reached = path.resolve()
                yield path, reached
                if reached.is_dir():
                    stack.append(reached)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(path)


def _links_inside(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_symlink()]


class OwnFiles:
    """The files a llamantino run in a folder recorded as its own: a finished run's manifest
    lists them; an unfinished run's run.json names them (files, or folders ending in `/`) as
    they are written, and its checkpoint files with their hashes. Work files llamantino names
    (`fileio.is_temporary`) are its own too."""

    def __init__(self, names, folders=()):
        self.names = {MANIFEST, RUN_INFO, *names}
        self.folders = tuple(folders)

    def __contains__(self, rel: str) -> bool:
        return rel in self.names or rel.startswith(self.folders) or is_temporary(rel)

    @classmethod
    def of_run(cls, info: dict) -> "OwnFiles":
        entries = [e for e in info.get("outputs", []) if isinstance(e, str)]
        # checkpoint.py records each checkpoint's files (checkpoints/step-N/...) with their hashes.
        checkpoints = info.get("checkpoints") if isinstance(info.get("checkpoints"), dict) else {}
        files = [f"checkpoints/{step}/{rel}" for step, hashes in checkpoints.items() if isinstance(hashes, dict)
                 for rel in hashes]
        return cls([e for e in entries if not e.endswith("/")] + files, [e for e in entries if e.endswith("/")])


def own_files(folder: Path) -> OwnFiles | None:
    """What the llamantino run in `folder` recorded as its own; None when the folder holds no
    llamantino run. A run that recorded no list of its files (written by an earlier version)
    is one line: its files cannot be told from anyone else's."""
    folder = Path(folder)
    records = {name: load_record(folder / name) for name in (MANIFEST, RUN_INFO) if (folder / name).is_file()}
    finished, started = records.get(MANIFEST), records.get(RUN_INFO)
    record = finished if finished is not None else started
    if record is None or isinstance(record, str):
        return None
    if not isinstance(record.get("outputs"), list):
        how = "finish it with --resume, or delete the folder yourself" if finished is None else \
            "delete the folder yourself"
        raise LlamantinoError(f"{folder}: holds a '{record['stage']}' run of an earlier llamantino, which did not "
                              f"record its files, so --overwrite cannot tell them from yours: {how}, or choose "
                              "another output")
    return OwnFiles(record["outputs"]) if finished is not None else OwnFiles.of_run(record)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def foreign_files(folder: Path) -> list[str]:
    """Files of `folder` that no llamantino run wrote: every file when it holds no llamantino
    run (no manifest.json or run.json of llamantino's own), else those its run did not record."""
    own = own_files(folder)
    files = _files(folder)
    return files if own is None else [f for f in files if f not in own]


def replace_output(folder: Path) -> None:
    """Delete a previous llamantino run's output folder (--overwrite), but only when every
    file in it is one that run recorded as its own."""
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
    whatever `overwrite` says: an output that is a symbolic link or is, holds or lies inside
    an input; a folder holding symbolic links, or a manifest.json or run.json llamantino did
    not write; files that its run did not record as its own. Refused unless `overwrite`:
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
    records = {name: load_record(folder / name) for name in (MANIFEST, RUN_INFO) if (folder / name).is_file()}
    strange = [(name, why) for name, why in records.items() if isinstance(why, str)]
    if strange:
        name, why = strange[0]
        raise LlamantinoError(f"{folder}: its {name} is not one llamantino writes ({why}); llamantino replaces "
                              "only its own outputs: choose an empty or new folder")
    finished = records.get(MANIFEST)
    other = finished if finished is not None else records.get(RUN_INFO)
    if other is None:
        entries = sorted(p.name for p in folder.iterdir())
        listed = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise LlamantinoError(f"{folder}: output folder is not empty and holds no llamantino run ({listed}); "
                              "llamantino replaces only its own outputs: choose an empty or new folder")
    same = same_run(other, kind, cfg)
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


def check_rewritable(folder, kind: str, cfg, *, overwrite: bool = False) -> Path:
    """For a stage that builds its whole output anew every time (reports, with `atomic_dir`):
    refuse, before anything is written, what `prepare_output` refuses (an output that is a
    link or an input, a folder holding links or files no llamantino run wrote) and, unless
    `overwrite`, the output of another stage."""
    folder = check_output_location(folder, cfg)
    if folder.exists() and not folder.is_dir():
        raise LlamantinoError(f"{folder}: exists and is not a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return folder
    links = _links_inside(folder)
    if links:
        raise LlamantinoError(f"{folder}: holds a symbolic link ({links[0]}); llamantino outputs never do, "
                              "refusing to replace it")
    previous = read_manifest(folder)
    if previous is None:
        raise LlamantinoError(f"{folder}: output folder is not empty and holds no finished llamantino run; "
                              "llamantino replaces only its own outputs: choose an empty or new folder")
    if previous["stage"] != kind and not overwrite:
        raise LlamantinoError(f"{folder}: output folder holds a '{previous['stage']}' run, not '{kind}'; "
                              "pass --overwrite to replace it")
    foreign = foreign_files(folder)
    if foreign:
        replace_output(folder)  # refuses, naming the foreign file
    return folder


def start_run(folder, kind: str, cfg, outputs=()) -> None:
    """Mark a folder as holding an unfinished run of this stage, settings and inputs; `outputs`
    names what the run will write there (files, or folders ending in `/`; `record_outputs`
    adds more), so that --overwrite removes nothing else."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_INFO, {"llamantino": __version__, **run_identity(kind, cfg),
                                          "input_state": input_state(cfg), "outputs": list(dict.fromkeys(outputs))})


def record_outputs(folder, *names: str) -> None:
    """Add files (or folders, ending in `/`) to the run's own in run.json, before they are
    written. A folder without run.json (a stage built under a temporary name) or with one
    that lists no files (a run started by an earlier version) records nothing."""
    path = Path(folder) / RUN_INFO
    if not path.is_file():
        return
    info = read_json_object(path, "run file")
    listed = info.get("outputs")
    if not isinstance(listed, list):
        return
    new = [name for name in dict.fromkeys(names) if name not in listed]
    if new:
        atomic_write_json(path, {**info, "outputs": listed + new})


def list_outputs(folder) -> list[str]:
    """The files of a finished output folder, relative to it, for its manifest (so --overwrite
    can tell the run's own files from anything added later): those its run.json recorded, or,
    in a folder built under a temporary name (no run.json), every file."""
    folder = Path(folder)
    files = [f for f in _files(folder) if f not in (MANIFEST, RUN_INFO) and not is_temporary(f)]
    info = read_json_object(folder / RUN_INFO, "run file") if (folder / RUN_INFO).is_file() else {}
    if not isinstance(info.get("outputs"), list):
        return files
    own = OwnFiles.of_run(info)
    return [f for f in files if f in own]


def _started_with(folder) -> list | None:
    path = Path(folder) / RUN_INFO
    return read_json_object(path, "run file").get("input_state") if path.is_file() else None


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
