"""A `report` stage: one metric from several stage outputs, side by side, with the change.

    bpb_report:
      kind: report
      title: Bits per byte on held-out text (lower is better)
      metric: bits_per_byte
      columns: [base, adapted]
      rows: ["Italian=${bpb_base_it.output},${bpb_adapted_it.output}",
             "English=${bpb_base_en.output},${bpb_adapted_en.output}"]

Each cell reads `metrics[metric]` from the manifest of the folder named; the last column
is the relative change from the first to the last.
"""

from __future__ import annotations

import dataclasses

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

KIND = "report"


@dataclasses.dataclass
class Config:
    title: str = setting("", "heading of the table")
    metric: str = setting("", "metric to read from each folder's manifest.json")
    columns: list[str] = setting([], "column names, one per folder in a row")
    rows: list[str] = setting([], "LABEL=FOLDER,FOLDER,... (stage output folders)", path_input=True)
    output: str = setting("", "folder for the report (manifest.json)")

    def validate(self, source):
        if not self.metric or not self.rows:
            raise LlamantinoError(f"{source}: settings 'metric' and 'rows' are required")


def parse_row(row: str) -> tuple[str, list[str]]:
    label, sep, folders = row.partition("=")
    if not sep or not folders:
        raise LlamantinoError(f"report row {row!r}: expected LABEL=FOLDER,FOLDER,...")
    return label, folders.split(",")


def build_table(cfg: Config) -> tuple[str, dict]:
    from llamantino.core.manifest import read_manifest

    values: dict[str, list[float]] = {}
    for row in cfg.rows:
        label, folders = parse_row(row)
        if cfg.columns and len(folders) != len(cfg.columns):
            raise LlamantinoError(f"report row {label}: {len(folders)} folders for {len(cfg.columns)} columns")
        cells = []
        for folder in folders:
            manifest = read_manifest(folder)
            if manifest is None:
                raise LlamantinoError(f"{folder}: no manifest.json (has the stage run?)")
            if cfg.metric not in manifest.get("metrics", {}):
                raise LlamantinoError(f"{folder}/manifest.json: no metric '{cfg.metric}'")
            cells.append(float(manifest["metrics"][cfg.metric]))
        values[label] = cells
    columns = cfg.columns or [f"#{i + 1}" for i in range(len(next(iter(values.values()))))]
    header = ["", *columns, "change"]
    lines = [header]
    for label, cells in values.items():
        change = (cells[-1] - cells[0]) / cells[0] * 100 if cells[0] else float("nan")
        lines.append([label, *(f"{c:.4f}" for c in cells), f"{change:+.1f}%"])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in lines)
    return (f"{cfg.title}\n{text}" if cfg.title else text), values


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import check_rewritable, write_manifest

    text, values = build_table(cfg)
    print(text)
    if cfg.output:
        check_rewritable(cfg.output, KIND, cfg, overwrite=overwrite)
        # Always rewritten: a report is cheap and must reflect the folders as they are now.
        with atomic_dir(cfg.output) as tmp:
            write_manifest(tmp, KIND, cfg, metrics={"table": values, "text": text})
    changes = {label: f"{(c[-1] - c[0]) / c[0] * 100:+.1f}%" for label, c in values.items() if c[0]}
    return {"status": "done", "headline": changes, "metrics": {"table": values}, "display": text}
