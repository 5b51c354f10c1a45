"""Reference log-probabilities computed once, before the first step (`prefer`'s `precompute_reference`).

One pass over the training pairs and every held-out set of pairs with the reference model (the
model before any step, with its adapter off) writes each pair's summed answer log-probabilities
(chosen, rejected; float32) into the run folder:

* `reference_logps.safetensors`: `NAME.chosen` and `NAME.rejected` for every set (`train`, and
  each held-out set by its name), in the order the sets were loaded;
* `reference_logps.json`: what they were computed on (each set's pair count and fingerprint),
  from which reference (model, adapter, precision), and the sha256 of the safetensors file.

The pass writes numbered parts (`reference-parts/`, committed with `data.parts.Parts`), so a pass
killed midway continues with the first part it had not committed. Read back, the file is checked
against the recorded sha256 and the recorded pairs and reference against the run's: a mismatch is
refused in one line, never silently computed again (the numbers could differ).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_write_bytes, atomic_write_json, read_json_object, sha256_file

log = logging.getLogger(__name__)

FILE = "reference_logps.safetensors"
INFO = "reference_logps.json"
WORK = "reference-parts"
OUTPUTS = (FILE, INFO, WORK + "/")
PART_PAIRS = 512  # pairs per committed part of the pass


def _save(tensors: dict, path: Path) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def precompute(run_dir, sets: list[tuple[str, list, str]], identity: dict,
               compute: Callable[[list], tuple], batch_size: int) -> tuple[dict, dict]:
    """The reference log-probabilities of `sets` ([(name, pairs, fingerprint)]): read from the run
    folder when a complete pass is there, else computed with `compute(pairs) -> (chosen, rejected)`
    (float32 tensors, one value per pair), `batch_size` pairs at a time, continuing an interrupted
    pass. Returns ({name: (chosen, rejected)}, the JSON record)."""
    import torch

    from llamantino.data.parts import Parts

    run_dir = Path(run_dir)
    expected = {"sets": {name: {"pairs": len(pairs), "sha256": fingerprint} for name, pairs, fingerprint in sets},
                "reference": identity}
    if (run_dir / INFO).is_file():
        return load(run_dir, expected)
    flat = [pair for _, pairs, _ in sets for pair in pairs]
    (run_dir / WORK).mkdir(exist_ok=True)
    parts = Parts(run_dir / WORK, width=5, suffix=".safetensors")
    progress = parts.read_progress()
    if progress is not None and progress.get("expected") != expected:
        raise LlamantinoError(f"{parts.progress}: an interrupted reference pass over other pairs or with another "
                              "reference model; start again with --overwrite")
    hashes = list(progress["parts"]) if progress else []
    parts.remove_stale(len(hashes))
    total = -(-len(flat) // PART_PAIRS)
    if hashes:
        log.info("reference pass: resuming at part %d of %d", len(hashes) + 1, total)
    for index in range(len(hashes), total):
        chunk = flat[index * PART_PAIRS:(index + 1) * PART_PAIRS]
        found = [compute(chunk[start:start + batch_size]) for start in range(0, len(chunk), batch_size)]
        chosen = torch.cat([c.detach().float().cpu() for c, _ in found])
        rejected = torch.cat([r.detach().float().cpu() for _, r in found])
        write_part({"chosen": chosen, "rejected": rejected}, parts.path(index))
        hashes.append(sha256_file(parts.path(index)))
        parts.commit({"expected": expected, "parts": hashes})  # the commit point of this part
    values = _join(parts, hashes, len(flat))
    tensors, start = {}, 0
    for name, pairs, _ in sets:
        for side in ("chosen", "rejected"):
            tensors[f"{name}.{side}"] = values[side][start:start + len(pairs)].clone()
        start += len(pairs)
    _save(tensors, run_dir / FILE)
    atomic_write_json(run_dir / INFO, {**expected, "file": FILE, "dtype": "float32",
                                       "sha256": sha256_file(run_dir / FILE)})
    shutil.rmtree(run_dir / WORK)
    return load(run_dir, expected)


def write_part(tensors: dict, path: Path) -> None:
    """One committed part of the pass (a function of its own: the test of an interrupted pass stops here)."""
    _save(tensors, path)


def _join(parts, hashes: list[str], count: int) -> dict:
    import torch
    from safetensors.torch import load_file

    read = []
    for index, recorded in enumerate(hashes):
        path = parts.path(index)
        if not path.is_file() or sha256_file(path) != recorded:
            raise LlamantinoError(f"{path}: part of the reference pass changed since it was written (sha256 differs "
                                  "from the recorded one); start again with --overwrite")
        read.append(load_file(str(path)))
    values = {side: torch.cat([part[side] for part in read]) for side in ("chosen", "rejected")}
    if any(v.numel() != count for v in values.values()):
        raise LlamantinoError(f"{parts.out}: the reference pass's parts hold {values['chosen'].numel()} pairs, "
                              f"not {count}; start again with --overwrite")
    return values


def load(run_dir, expected: dict) -> tuple[dict, dict]:
    """The recorded reference log-probabilities, after checking the file's sha256 and that they
    were computed on these pairs with this reference."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    record = read_json_object(run_dir / INFO, "reference record")
    path = run_dir / FILE
    if not path.is_file():
        raise LlamantinoError(f"{path}: missing, but {INFO} records it; start again with --overwrite")
    found = sha256_file(path)
    if found != record.get("sha256"):
        raise LlamantinoError(f"{path}: sha256 {found[:12]} is not the {str(record.get('sha256'))[:12]} recorded in "
                              f"{INFO}: the file changed since it was written; refusing it (start again with "
                              "--overwrite)")
    for key in ("sets", "reference"):
        if record.get(key) != expected[key]:
            what = "other pairs" if key == "sets" else "another reference model"
            raise LlamantinoError(f"{run_dir / INFO}: the reference log-probabilities were computed on {what} "
                                  f"than this run's ({key} differ); start again with --overwrite")
    tensors = load_file(str(path))
    values = {}
    for name, described in expected["sets"].items():
        pair = tuple(tensors.get(f"{name}.{side}") for side in ("chosen", "rejected"))
        if any(t is None or t.ndim != 1 or t.numel() != described["pairs"] or str(t.dtype) != "torch.float32"
               for t in pair):
            raise LlamantinoError(f"{path}: no float32 values for the {described['pairs']} pairs of set '{name}'")
        values[name] = pair
    return values, record
