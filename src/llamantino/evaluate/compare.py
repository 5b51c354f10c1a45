"""`llamantino report compare`: several runs side by side, as a markdown table and a bar chart.

    llamantino report compare base=eval/base adapted=eval/adapted tuned=eval/tuned --output report/
    llamantino report compare base=runs/demo/bpb_base_it base=runs/demo/bpb_base_en \\
        adapted=runs/demo/bpb_adapted_it adapted=runs/demo/bpb_adapted_en --output report/

Each run is LABEL=FOLDER: a stage output folder (its manifest.json), a folder of stage
outputs (every manifest one level down), or the JSON file `eval bpb --output FILE.json`
writes. A label may be given several times, or with FOLDER,FOLDER,..., to gather the
metrics of one model from several folders. The metrics read:

* `eval bpb`: bits per byte, keyed by the names of the files scored (lower is better);
* `eval lm-eval`: every metric of every task and group, with lm-eval's direction, and
  the suites' averages;
* `eval evalita`: each task's primary metric, with its direction;
* `adapt`, `sft`, `instruct`: the final training loss (lower is better);
* `prefer`: its held-out figures at the end, or before its first step from the
  `heldout_before.json` it writes: bits per byte of each text set (in the same rows as `eval
  bpb`'s, by file name) and, of each set of pairs, reward accuracy and margin and the share of
  pairs whose chosen answer the model finds more likely (higher is better).

The table has one row per metric every run has, the first run's value and, for each
other run, its value and the change from the first in percent, marked better or worse.
`compare.md`, `compare.png` and `manifest.json` go to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError

KIND = "compare"
TRAINING_KINDS = ("adapt", "sft", "instruct")


@dataclasses.dataclass
class Config:
    runs: list[str] = setting([], "LABEL=FOLDER (stage output, folder of stage outputs, or eval bpb JSON); "
                              "the first is the reference", path_input=True)
    title: str = setting("Comparison", "heading of the report")
    output: str = setting("", "folder for compare.md, compare.png and manifest.json")

    def validate(self, source):
        if len(self.runs) < 2:
            raise LlamantinoError(f"{source}: give at least two runs to compare (LABEL=FOLDER ...)")


@dataclasses.dataclass
class Metric:
    value: float
    higher_is_better: bool | None
    source: str


def parse_run(run: str) -> tuple[str, list[Path]]:
    """LABEL=FOLDER[,FOLDER...] (or a bare FOLDER, labelled with its name)."""
    label, sep, rest = run.partition("=")
    if not sep or "/" in label:
        label, rest = Path(run.rstrip("/")).name, run
    folders = [Path(f) for f in rest.split(",") if f]
    if not label or not folders:
        raise LlamantinoError(f"run {run!r}: expected LABEL=FOLDER")
    return label, folders


def manifests_in(path: Path) -> list[tuple[Path, dict]]:
    """(where, manifest) for a stage folder, a folder of stage folders, or an eval bpb JSON file."""
    from llamantino.core.manifest import read_manifest

    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LlamantinoError(f"{path}: not a JSON result ({exc})") from None
        if not isinstance(data, dict) or "stage" not in data:
            raise LlamantinoError(f"{path}: not a llamantino result (no 'stage')")
        return [(path, {"stage": data["stage"], "settings": data.get("settings", {}), "metrics": data})]
    if not path.is_dir():
        raise LlamantinoError(f"{path}: no such folder")
    own = read_manifest(path)
    if own is not None:
        return [(path / "manifest.json", own)]
    found = [(sub / "manifest.json", m) for sub in sorted(path.iterdir()) if sub.is_dir()
             for m in [read_manifest(sub)] if m is not None]
    if not found:
        raise LlamantinoError(f"{path}: no manifest.json in it or in its subfolders (has the stage run?)")
    return found


def metrics_of(manifest: dict, where: str) -> dict[str, Metric]:
    """The comparable figures of one stage's manifest, by metric name."""
    kind, m = manifest.get("stage"), manifest.get("metrics") or {}
    try:
        if kind == "bpb":
            if m.get("by_data"):  # one figure per data file (per language)
                return {f"bits per byte ({name})": Metric(float(r["bits_per_byte"]), False, where)
                        for name, r in m["by_data"].items()}
            data = ", ".join(Path(d).name for d in (manifest.get("settings") or {}).get("data", []))
            return {f"bits per byte ({data})": Metric(float(m["bits_per_byte"]), False, where)}
        if kind == "lm_eval":
            found = {f"{task} {name}": Metric(float(value), r["higher_is_better"].get(name.split(",")[0]), where)
                     for task, r in m["results"].items() for name, value in r["metrics"].items()
                     if not name.split(",")[0].endswith("_stderr")}
            found.update({f"{suite} average": Metric(float(s["average"]), True, where)
                          for suite, s in m.get("suites", {}).items()})
            return found
        if kind == "evalita_eval":
            return {f"EVALITA {task} {r['primary_metric']}":
                    Metric(float(r["metrics"][r["primary_metric"]]), r["primary_metric"] not in r["lower_is_better"],
                           where)
                    for task, r in m.items() if isinstance(r["metrics"].get(r["primary_metric"]), (int, float))}
        if kind in TRAINING_KINDS:
            return {f"{kind} final training loss": Metric(float(m["final_loss"]), False, where)}
        if kind == "prefer":
            return prefer_metrics(manifest, where)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LlamantinoError(f"{where}: unexpected '{kind}' metrics ({type(exc).__name__}: {exc})") from None
    return {}


# A held-out figure of a prefer run -> (row name, higher is better).
PREFER_FIGURES = {"bpb": ("bits per byte", False), "rewards/accuracies": ("reward accuracy", True),
                  "rewards/margins": ("reward margin", True), "logps/accuracies": ("chosen answer more likely", True)}


def prefer_metrics(manifest: dict, where: str) -> dict[str, Metric]:
    """`eval_<NAME>_<figure>` of a prefer run, each named by the file its set came from."""
    m = manifest.get("metrics") or {}
    sets = [str(spec).partition("=") for spec in (manifest.get("settings") or {}).get("eval_data", [])]
    found = {}
    for name, _, path in sets:
        for figure, (row, higher) in PREFER_FIGURES.items():
            value = m.get(f"eval_{name}_{figure}")
            if isinstance(value, (int, float)):
                found[f"{row} ({Path(path).name})"] = Metric(float(value), higher, where)
    return found


def gather(cfg: Config) -> dict[str, dict[str, Metric]]:
    """label -> metric name -> figure, from every folder given for the label."""
    runs: dict[str, dict[str, Metric]] = {}
    for run in cfg.runs:
        label, folders = parse_run(run)
        found = runs.setdefault(label, {})
        for folder in folders:
            kinds, count = [], 0
            for where, manifest in manifests_in(folder):
                kinds.append(str(manifest.get("stage")))
                metrics = metrics_of(manifest, str(where))
                count += len(metrics)
                for name, metric in metrics.items():
                    if name in found and found[name].value != metric.value:
                        raise LlamantinoError(f"run {label}: '{name}' is in both {found[name].source} and {where}; "
                                              "give them separate labels")
                    found[name] = metric
            if not count:
                raise LlamantinoError(f"{folder}: nothing to compare in it (stages: {', '.join(kinds)})")
    if len(runs) < 2:
        raise LlamantinoError(f"give at least two different labels to compare (got {', '.join(runs)})")
    return runs


def change(value: float, reference: float) -> float | None:
    """Percent change from the reference (None when the reference is 0)."""
    return (value - reference) / abs(reference) * 100 if reference else None


def verdict(delta: float | None, higher_is_better: bool | None) -> str:
    if higher_is_better is None or not delta:
        return ""
    return "better" if (delta > 0) == higher_is_better else "worse"


def build_rows(runs: dict[str, dict[str, Metric]]) -> tuple[list[dict], dict[str, list[str]]]:
    """One row per metric the first run and at least one other have (in the first run's order;
    a run without it shows a blank); the others, by name, with the labels that have them."""
    labels = list(runs)
    first = runs[labels[0]]
    rows = []
    for name, metric in first.items():
        have = [label for label in labels[1:] if name in runs[label]]
        if have:
            values = {label: runs[label][name].value for label in [labels[0], *have]}
            rows.append({"metric": name, "higher_is_better": metric.higher_is_better, "values": values,
                         "change_percent": {label: change(values[label], metric.value) for label in have}})
    shown = {row["metric"] for row in rows}
    names = dict.fromkeys(n for label in labels for n in runs[label])
    unshared = {n: [label for label in labels if n in runs[label]] for n in names if n not in shown}
    return rows, unshared


def markdown(title: str, labels: list[str], rows: list[dict], unshared: dict) -> str:
    head = ["metric", "better", labels[0]]
    for label in labels[1:]:
        head += [label, f"Δ {label}"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        hib = row["higher_is_better"]
        cells = [row["metric"], {True: "↑ higher", False: "↓ lower"}.get(hib, "?"), _fmt(row["values"][labels[0]])]
        for label in labels[1:]:
            if label not in row["values"]:
                cells += ["—", ""]  # this run has no such figure
                continue
            delta = row["change_percent"][label]
            note = verdict(delta, hib)
            cells += [_fmt(row["values"][label]), ("n/a" if delta is None else f"{delta:+.1f}%")
                      + (f" {note}" if note else "")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Δ: change from {labels[0]}, in percent of its value."]
    if unshared:
        lines += ["", "Not compared (the first run, or every other, lacks it): "
                  + "; ".join(f"{name} ({', '.join(have)})" for name, have in unshared.items())]
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def bar_chart(path: Path, title: str, labels: list[str], rows: list[dict]) -> None:
    """One small panel per metric (scales differ), one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    colours = [f"C{i}" for i in range(len(labels))]
    for ax, row in zip(axes.flat, rows):
        present = [i for i, label in enumerate(labels) if label in row["values"]]  # runs with this figure
        bars = ax.bar(present, [row["values"][labels[i]] for i in present], color=[colours[i] for i in present])
        ax.bar_label(bars, fmt="%.4g", fontsize=7)
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        arrow = {True: " ↑", False: " ↓"}.get(row["higher_is_better"], "")
        ax.set_title(_wrap(row["metric"]) + arrow, fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(title + "  (↑ higher is better, ↓ lower is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text: str, width: int = 40) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import check_rewritable, describe_inputs, write_manifest

    runs = gather(cfg)
    labels = list(runs)
    rows, unshared = build_rows(runs)
    if not rows:
        raise LlamantinoError(f"the runs share no metric ({', '.join(labels)}); "
                              f"each has: {'; '.join(f'{k}: {len(v)}' for k, v in runs.items())}")
    text = markdown(cfg.title, labels, rows, unshared)
    if cfg.output:
        out = check_rewritable(cfg.output, KIND, cfg, overwrite=overwrite)
        # Always rewritten: a report is cheap and must reflect the folders as they are now.
        with atomic_dir(out) as tmp:
            (tmp / "compare.md").write_text(text + "\n", encoding="utf-8")
            bar_chart(tmp / "compare.png", cfg.title, labels, rows)
            sources = sorted({m.source for metrics in runs.values() for m in metrics.values()})
            write_manifest(tmp, KIND, cfg, inputs=describe_inputs(sources),
                           metrics={"labels": labels, "rows": rows, "not_shared": unshared})
    headline = {f"{row['metric']} {label}": f"{row['change_percent'][label]:+.1f}%"
                for row in rows[:3] for label in labels[1:] if row["change_percent"].get(label) is not None}
    return {"status": "done", "headline": headline, "metrics": {"labels": labels, "rows": rows},
            "display": text}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"runs": {"nargs": "*", "metavar": "LABEL=FOLDER",
                                                           "help": "runs to compare; the first is the reference"}})


def main(args) -> int:
    from llamantino.core.runner import stage_config

    cfg = stage_config(KIND, args, positional=("runs",))
    print(run(cfg, overwrite=args.overwrite)["display"])
    return 0
