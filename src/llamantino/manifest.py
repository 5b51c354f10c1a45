"""`manifest.json`: what a stage read, with which settings and libraries, and what it measured.

Every stage writes one into its output folder, last, so a folder with a manifest is a
finished stage. `prepare_output` reads it back to decide whether a folder holds this very
run (skip), an interrupted run (resume), or a different run (refuse unless overwrite).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import shutil
from pathlib import Path

from llamantino import __version__
from llamantino.config import differing_settings, fingerprint, to_dict
from llamantino.errors import LlamantinoError
from llamantino.fileio import atomic_write_json, sha256_file

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


def prepare_output(folder, kind: str, cfg, *, overwrite: bool = False) -> str:
    """Decide what to do with an output folder before a stage writes anything.

    Returns "complete" (same stage and settings already finished: nothing to do),
    "resume" (same run, unfinished) or "fresh" (empty or replaced). A folder holding a
    different run is refused unless `overwrite`.
    """
    folder = Path(folder)
    ident = run_identity(kind, cfg)
    if not folder.exists() or not any(folder.iterdir()):
        return "fresh"
    info_path = folder / RUN_INFO
    other = read_manifest(folder)
    if other is None and info_path.is_file():
        other = json.loads(info_path.read_text(encoding="utf-8"))
    if other is not None and other.get("stage") == kind and other.get("fingerprint") == ident["fingerprint"]:
        return "complete" if (folder / MANIFEST).is_file() else "resume"
    if not overwrite:
        if other is None:
            why = "is not empty and holds no llamantino run"
        elif other.get("stage") != kind:
            why = f"holds a '{other.get('stage')}' run, not '{kind}'"
        else:
            changed = differing_settings(other.get("settings", {}), ident["settings"])
            why = f"holds a different '{kind}' run (settings differ: {', '.join(changed) or 'version'})"
        raise LlamantinoError(f"{folder}: output folder {why}; pass --overwrite to replace it")
    shutil.rmtree(folder)
    return "fresh"


def start_run(folder, kind: str, cfg) -> None:
    """Mark a folder as holding an unfinished run of this stage and settings."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RUN_INFO, run_identity(kind, cfg))


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
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest
