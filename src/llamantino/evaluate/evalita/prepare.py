"""`llamantino evalita prepare`: EVALITA 2023 task files -> instruction records.

Each task's own files are read by its reader (`llamantino.evaluate.evalita.tasks`) into records
`{id, task, instruction, input, output}` (Table 1's instruction; the target answer) and
written as JSON lines to `OUTPUT/records.jsonl`, with `manifest.json` counting items per
task. One task:

    llamantino evalita prepare --task acti-a --data subtaskA_train.csv --output prepared/

A training mixture names each file's task (a task may have several files, e.g. the
GeoLingIt A and B files, which are read together):

    llamantino evalita prepare --data acti-a=subtaskA_train.csv emit=emit_train_A.csv \\
        geolingit=train_a.tsv geolingit=train_b.tsv --max-per-task 500 --shuffle --output mix/

Tasks are written in the order they are first named, each in its files' order, unless
`--shuffle`; `--max-per-task` keeps a seeded random sample of each task (in file order).
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

KIND = "evalita_prepare"
RECORDS = "records.jsonl"


@dataclasses.dataclass
class Config:
    output: str = setting("", "output folder")
    data: list[str] = setting([], "task files: PATH (all of --task) or TASK=PATH (a mixture); several allowed", path_input=True)
    task: str = setting("", "the EVALITA task of every --data file given without TASK=")
    max_per_task: int = setting(0, "keep at most this many items of each task, a seeded random sample (0: all)",
                                minimum=0)
    shuffle: bool = setting(False, "shuffle the records of all tasks together (seeded)")
    seed: int = setting(0, "random seed of --max-per-task and --shuffle", minimum=0)
    samples: str = setting("", "use the bundled sample files of this split instead of --data",
                           choices=("", "train", "test"))
    tasks: list[str] = setting([], "with --samples: which tasks (default: all)")

    def validate(self, source):
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if not self.data and not self.samples:
            raise LlamantinoError(f"{source}: setting 'data' is required (task files, PATH or TASK=PATH), "
                                  "or 'samples'")
        task_files(self)  # names every unknown task before anything is read


def task_files(cfg: Config) -> dict[str, list[Path]]:
    """{task: [files]} from `data`, in the order tasks are first named."""
    from llamantino.evaluate.evalita import TASK_MODULES, TASK_NAMES, get_task

    out: dict[str, list[Path]] = {}
    if cfg.samples:
        from llamantino.evaluate.evalita.samples import sample_files

        for name in cfg.tasks or TASK_NAMES:
            out[name] = sample_files(name, cfg.samples)
    for entry in cfg.data:
        name, sep, path = entry.partition("=")
        if sep and (name in TASK_MODULES or not cfg.task):
            get_task(name)  # an unknown name lists the valid ones
        elif cfg.task:
            name, path = cfg.task, entry
            get_task(name)
        else:
            raise LlamantinoError(f"data file '{entry}' names no task: give --task TASK or write TASK=PATH")
        if not path:
            raise LlamantinoError(f"data entry '{entry}' names no file")
        out.setdefault(name, []).append(Path(path))
    return out


def build_records(cfg: Config) -> tuple[list[dict], dict]:
    """The records to write and {task: {"items", "kept", "labelled"}}."""
    from llamantino.evaluate.evalita import get_task

    rng = random.Random(cfg.seed)
    records, counts = [], {}
    for name, paths in task_files(cfg).items():
        items = get_task(name).read(paths)
        if not items:
            raise LlamantinoError(f"{name}: no items in {', '.join(map(str, paths))}")
        kept = items
        if cfg.max_per_task and len(items) > cfg.max_per_task:
            chosen = sorted(rng.sample(range(len(items)), cfg.max_per_task))
            kept = [items[i] for i in chosen]
        counts[name] = {"items": len(items), "kept": len(kept), "labelled": sum(1 for it in kept if it.output)}
        records.extend(item.record() for item in kept)
    if cfg.shuffle:
        rng.shuffle(records)
    return records, counts


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    records, counts = build_records(cfg)
    metrics = {"records": len(records), "tasks": counts}
    paths = [p for files in task_files(cfg).values() for p in files]
    with atomic_dir(cfg.output) as tmp:
        with open(Path(tmp) / RECORDS, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs(paths), metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"records": metrics["records"], "tasks": len(metrics["tasks"])}, "metrics": metrics}
