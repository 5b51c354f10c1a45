"""One checkpoint helper for every training loop: `<run>/checkpoints/step-NNNNNNN`.

A checkpoint is one dict of stateful parts, saved with one call and loaded with one call
(as LitGPT does). Each part is written without pickle:

* an object with `state_dict()` / `load_state_dict()` (optimizer, scheduler, data source)
  or a plain dict (trainer counters) becomes `NAME.json` plus `NAME.safetensors` for its
  tensors; rank 0 writes the shared parts, every rank its `per_rank` parts as `NAME-rankR`;
* an object with `save_to(folder, rank)` / `load_from(folder, rank)` writes its own files
  on every rank (the LoRA adapter, FSDP shards through `torch.distributed.checkpoint`).

The folder is built under a temporary name and renamed when every rank has written its
files; the sha256 of every file is then recorded in the run's `run.json`. Before anything
is read back, every file is checked against that record: a file changed or planted after
the run wrote it is refused. `torch.distributed.checkpoint` keeps its metadata as a pickle,
so a checkpoint folder must be trusted like code; the hash check makes sure it is the very
one the run wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from llamantino.core import distributed
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import TMP_PREFIX, atomic_write_json, sha256_file
from llamantino.core.manifest import RUN_INFO
from llamantino.train import common

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
_STEP = re.compile(r"^step-(\d+)$")
# Files of the layout before checkpoints were written without pickle.
LEGACY_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.json")


# ---------------------------------------------------------------------------------------
# Any state dict <-> JSON tree + flat tensors (no pickle)


def flatten(value, tensors: dict, prefix: str = "t"):
    """A JSON-able tree for `value`; tensors and numpy arrays go to `tensors` by name."""
    if isinstance(value, torch.Tensor):
        name = f"{prefix}.{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous().clone()  # a copy: no memory shared between entries
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):  # stays readable JSON
            return {k: flatten(v, tensors, prefix) for k, v in value.items()}
        return {"__dict__": [[flatten(k, tensors, prefix), flatten(v, tensors, prefix)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix) for v in value]}
    if isinstance(value, list):
        return [flatten(v, tensors, prefix) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def unflatten(tree, tensors: dict):
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return np.array(tree["__ndarray__"], dtype=tree["dtype"])
        if "__tuple__" in tree:
            return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
        if "__dict__" in tree:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in tree["__dict__"]}
        if any(k.startswith("__") for k in tree):
            raise ValueError(f"unknown entry {sorted(tree)}")
        return {k: unflatten(v, tensors) for k, v in tree.items()}
    return tree


def write_state(folder: Path, name: str, state) -> None:
    from safetensors.torch import save_file

    tensors: dict = {}
    tree = flatten(state, tensors)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    atomic_write_json(folder / f"{name}.json", tree)


def read_state(folder: Path, name: str):
    from safetensors.torch import load_file

    path = folder / f"{name}.json"
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
        tensors = load_file(str(folder / f"{name}.safetensors")) if (folder / f"{name}.safetensors").is_file() else {}
        return unflatten(tree, tensors)
    except FileNotFoundError:
        raise LlamantinoError(f"{path}: missing from the checkpoint") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise LlamantinoError(f"{path}: unreadable checkpoint part ({exc})") from None


class RNG:
    """The random number generators of this process (python, numpy, torch, CUDA). Optional:
    a run resumed on more processes than wrote the checkpoint keeps its seed on the others."""

    optional = True

    @staticmethod
    def state_dict() -> dict:
        return common.rng_state()

    @staticmethod
    def load_state_dict(state: dict) -> None:
        common.set_rng_state(state)


# ---------------------------------------------------------------------------------------
# Checkpoint folders


def checkpoint_path(run_dir, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"step-{step:07d}"


def list_checkpoints(run_dir) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir())


def latest(run_dir) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _file_hashes(folder: Path, rank: int, world: int) -> dict[str, str]:
    """sha256 of every file of a checkpoint, the work split over the ranks."""
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    mine = {name: _hash(folder / name) for i, name in enumerate(files) if i % world == rank}
    merged: dict[str, str] = {}
    for part in distributed.all_gather_object(mine):
        merged.update(part)
    return merged


def _hash(path: Path) -> str:
    if path.is_symlink():
        return "symlink"  # never written by a run: fails every check
    return sha256_file(path)


def _record(run_dir: Path, name: str, hashes: dict | None) -> None:
    """Add (or with None, drop) a checkpoint's file hashes in run.json, atomically."""
    path = run_dir / RUN_INFO
    info = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    recorded = info.setdefault("checkpoints", {})
    if hashes is None:
        recorded.pop(name, None)
    else:
        recorded[name] = hashes
    atomic_write_json(path, info)


class Checkpoints:
    """Save and load checkpoints of one run; prune to the newest `keep`."""

    def __init__(self, run_dir, *, rank: int = 0, world: int = 1, keep: int = 2):
        self.run_dir, self.rank, self.world, self.keep = Path(run_dir), rank, world, keep

    def latest(self) -> tuple[int, Path] | None:
        return latest(self.run_dir)

    def save(self, step: int, parts: dict, per_rank: dict | None = None) -> Path:
        final = checkpoint_path(self.run_dir, step)
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        for name, part in parts.items():
            if hasattr(part, "save_to"):
                part.save_to(tmp, self.rank)
            elif self.rank == 0:
                write_state(tmp, name, _state_of(part))
        for name, part in (per_rank or {}).items():
            write_state(tmp, f"{name}-rank{self.rank}", _state_of(part))
        distributed.barrier()  # every rank's files are in place before they are hashed
        hashes = _file_hashes(tmp, self.rank, self.world)
        if self.rank == 0:
            _record(self.run_dir, final.name, hashes)  # first: a folder that exists always has its record
            os.replace(tmp, final)
            self.prune()
        distributed.barrier()
        return final

    def load(self, path: Path, parts: dict, per_rank: dict | None = None) -> None:
        self.verify(path)
        # Every rank sees the same folder, so every rank refuses with the same line, before loading anything.
        for name, part in (per_rank or {}).items():
            written = len(list(path.glob(f"{name}-rank*.json")))
            if not getattr(part, "optional", False) and written != self.world:
                raise LlamantinoError(f"{path}: written by {written} process(es), this run has {self.world}; "
                                      f"resume with {written} (its {name} state is per process)")
        for name, part in parts.items():
            if hasattr(part, "load_from"):
                part.load_from(path, self.rank)
            else:
                _load_into(part, read_state(path, name))
        for name, part in (per_rank or {}).items():
            state_name = f"{name}-rank{self.rank}"
            if not (path / f"{state_name}.json").is_file():
                if getattr(part, "optional", False):
                    log.warning("%s: no %s state for rank %d; it keeps the run's seed", path, name, self.rank)
                    continue
                raise LlamantinoError(f"{path}: no {name} state for rank {self.rank}; resume with the number of "
                                      "processes that wrote the checkpoint")
            _load_into(part, read_state(path, state_name))

    def verify(self, path: Path) -> None:
        """Refuse a checkpoint unless every file is the one this run wrote (same sha256)."""
        path = Path(path)
        legacy = [name for name in LEGACY_FILES if (path / name).exists()]
        if legacy:
            raise LlamantinoError(f"{path}: a checkpoint of an earlier llamantino layout ({legacy[0]}: pickled "
                                  "state, never loaded); start the run again with --overwrite")
        info_path = self.run_dir / RUN_INFO
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        recorded = info.get("checkpoints", {}).get(path.name)
        if recorded is None:
            raise LlamantinoError(f"{path}: this run recorded no checksums for this checkpoint ({info_path}); "
                                  "it is not loaded")
        found = _file_hashes(path, self.rank, self.world)
        bad = sorted(name for name in set(found) | set(recorded) if found.get(name) != recorded.get(name))
        if bad:
            raise LlamantinoError(f"{path}: {len(bad)} file(s) differ from what the run wrote "
                                  f"(e.g. {bad[0]}); the checkpoint is not loaded")

    def prune(self) -> None:
        found = list_checkpoints(self.run_dir)
        for _, path in found[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)
            _record(self.run_dir, path.name, None)


def _state_of(part):
    return part if isinstance(part, dict) else part.state_dict()


def _load_into(part, state) -> None:
    if isinstance(part, dict):
        part.clear()
        part.update(state)
    else:
        part.load_state_dict(state)
