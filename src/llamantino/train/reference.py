"""Reference log-probabilities computed once, before the first step (`prefer`'s `precompute_reference`).

One pass over the training pairs and every held-out set of pairs with the reference model (the
model before any step, with its adapter off) writes each pair's summed answer log-probabilities
(chosen, rejected; float32) into the run folder:

* `reference_logps.safetensors`: `NAME.chosen` and `NAME.rejected` for every set (`train`, and
  each held-out set by its name), in the order the sets were loaded;
* `reference_logps.json`: what they were computed on (each set's pair count and fingerprint),
  from which reference (model, adapter, precision), and the sha256 of the safetensors file.

The pass (`Pass`) writes numbered parts (`reference-parts/`, committed with `data.parts.Parts`), so a pass
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


class Pass:
    """The reference pass of one run folder over `sets` ([(name, pairs, fingerprint)]) with the
    reference `identity`. Rank 0 calls `begin`, `commit` and `finish` (it alone writes); every rank
    computes parts (`compute_part`), so on several processes each computes its share."""

    def __init__(self, run_dir, sets: list[tuple[str, list, str]], identity: dict):
        from llamantino.data.parts import Parts

        self.run_dir = Path(run_dir)
        self.sets = sets
        self.expected = {"sets": {name: {"pairs": len(pairs), "sha256": fingerprint}
                                  for name, pairs, fingerprint in sets}, "reference": identity}
        self.flat = [pair for _, pairs, _ in sets for pair in pairs]
        self.total = -(-len(self.flat) // PART_PAIRS)
        self.parts = Parts(self.run_dir / WORK, width=5, suffix=".safetensors")
        self.hashes: list[str] = []

    def begin(self) -> int | None:
        """Parts already committed by an interrupted pass (0: none), or None when a complete pass is
        there (read it with `load`)."""
        if (self.run_dir / INFO).is_file():
            return None
        (self.run_dir / WORK).mkdir(exist_ok=True)
        progress = self.parts.read_progress()
        if progress is not None and progress.get("expected") != self.expected:
            raise LlamantinoError(f"{self.parts.progress}: an interrupted reference pass over other pairs or with "
                                  "another reference model; start again with --overwrite")
        self.hashes = list(progress["parts"]) if progress else []
        self.parts.remove_stale(len(self.hashes))
        if self.hashes:
            log.info("reference pass: resuming at part %d of %d", len(self.hashes) + 1, self.total)
        return len(self.hashes)

    def compute_part(self, index: int, compute: Callable[[list], tuple], batch_size: int) -> dict:
        """Part `index`: {chosen, rejected} of its pairs, `compute(pairs) -> (chosen, rejected)`
        `batch_size` pairs at a time, float32 on the CPU."""
        import torch

        chunk = self.flat[index * PART_PAIRS:(index + 1) * PART_PAIRS]
        found = [compute(chunk[start:start + batch_size]) for start in range(0, len(chunk), batch_size)]
        return {"chosen": torch.cat([c.detach().float().cpu() for c, _ in found]),
                "rejected": torch.cat([r.detach().float().cpu() for _, r in found])}

    def commit(self, index: int, tensors: dict) -> None:
        """Write part `index` (the next one) and record it in the progress file: the commit point."""
        if index != len(self.hashes):
            raise RuntimeError(f"reference part {index} committed out of order (next: {len(self.hashes)})")
        write_part(tensors, self.parts.path(index))
        self.hashes.append(sha256_file(self.parts.path(index)))
        self.parts.commit({"expected": self.expected, "parts": self.hashes})

    def finish(self) -> dict:
        """Join the parts (each checked against its recorded sha256) into the file and its record."""
        values = _join(self.parts, self.hashes, len(self.flat))
        tensors, start = {}, 0
        for name, pairs, _ in self.sets:
            for side in ("chosen", "rejected"):
                tensors[f"{name}.{side}"] = values[side][start:start + len(pairs)].clone()
            start += len(pairs)
        _save(tensors, self.run_dir / FILE)
        record = {**self.expected, "file": FILE, "dtype": "float32", "sha256": sha256_file(self.run_dir / FILE)}
        atomic_write_json(self.run_dir / INFO, record)
        shutil.rmtree(self.run_dir / WORK)
        return record


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
