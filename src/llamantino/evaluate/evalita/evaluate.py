"""`llamantino eval evalita`: generate answers to EVALITA 2023 items, decode them, score them.

    llamantino eval evalita --model runs/evalita-7b --tasks acti-a emit \\
        --data acti-a=subtaskA_test_gold.csv emit=emit_test_A_gold.csv --output report/
    llamantino eval evalita --model runs/demo/instruct --samples test --output report/

Each item is rendered with the Italian Alpaca prompt (Table 1's instruction, the input,
no response; `prompt_format` picks the format the model was instruction-tuned with),
answered greedily (stopping at the model's EOS ids and the format's end-of-turn token), decoded by the task's decoder and scored with the task's
official metric. The folder gets `report.json` (per-task metrics), `generations.jsonl`
(every answer and its decoded label) and the predictions in each task's official
submission format under `predictions/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.models.weight_files import DTYPES

KIND = "evalita_eval"


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder or hub name (an instruct run, or a merged model)", path_input=True)
    adapter: str = setting("", "PEFT adapter to apply on top of the model", path_input=True)
    tasks: list[str] = setting([], "tasks to evaluate (default: every task given data)")
    data: list[str] = setting([], "gold files as TASK=PATH (several per task allowed)", path_input=True)
    samples: str = setting("", "evaluate on the bundled sample files of this split", choices=("", "train", "test"))
    output: str = setting("", "report folder")
    max_new_tokens: int = setting(64, "tokens generated per answer (the 2023 systems used 256)",
                                  minimum=1)
    max_input_chars: int = setting(1200, "inputs are cut to this many characters, as the 2023 systems did",
                                   minimum=1)
    limit: int = setting(0, "evaluate at most N items per task (0: all)", minimum=0)
    batch_size: int = setting(8, "prompts per generation batch", fingerprint=False, minimum=1)
    dtype: str = setting("float32", "dtype to run the model in", choices=DTYPES)
    prompt_format: str = setting("alpaca-it", "prompt format the model was instruction-tuned with (as instruct's "
                                              "prompt_format)", path_input=True)
    system_prompt: str = setting("auto", "system prompt, with chat formats (as instruct's system_prompt)",
                                 path_input=True)

    def validate(self, source):
        if not self.model:
            raise LlamantinoError(f"{source}: setting 'model' is required")
        if not self.data and not self.samples:
            raise LlamantinoError(f"{source}: give gold files (data: TASK=PATH ...) or samples: test")


def task_files(cfg: Config) -> dict[str, list[Path]]:
    from llamantino.evaluate.evalita import TASK_NAMES, get_task

    files: dict[str, list[Path]] = {}
    for entry in cfg.data:
        name, sep, path = entry.partition("=")
        if not sep or not path:
            raise LlamantinoError(f"data entry '{entry}': expected TASK=PATH")
        get_task(name)
        files.setdefault(name, []).append(Path(path))
    if cfg.samples:
        from llamantino.evaluate.evalita.samples import sample_files

        for name in cfg.tasks or TASK_NAMES:
            files.setdefault(name, sample_files(name, cfg.samples))
    if cfg.tasks:
        for name in cfg.tasks:
            get_task(name)
            if name not in files:
                raise LlamantinoError(f"task {name}: no gold files given (data: {name}=PATH)")
        files = {name: files[name] for name in cfg.tasks}
    return files


def prompt_for(item, max_chars: int, prompt=None) -> str:
    from llamantino.data.prompts import prompt_format

    prompt = prompt or prompt_format("alpaca-it")
    return prompt.render_instruction(item.instruction, item.input[:max_chars]).text


def evaluate_task(task, items, model, tokenizer, cfg: Config) -> tuple[dict, list[dict], list]:
    from llamantino.data.prompts import prompt_format
    from llamantino.models.generate import generate

    prompt = prompt_format(cfg.prompt_format, tokenizer, cfg.system_prompt)
    prompts = [prompt_for(item, cfg.max_input_chars, prompt) for item in items]
    answers = generate(model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                       add_bos=prompt.add_bos, stop_tokens=[prompt.end_of_turn])
    predictions = [task.decode(answer, item) for answer, item in zip(answers, items)]
    gold = {item.id: item.gold for item in items}
    pred = {item.id: p for item, p in zip(items, predictions)}
    metrics = task.score(gold, pred)
    rows = [{"task": task.name, "id": item.id, "answer": answer, "decoded": _jsonable(p), "gold": _jsonable(item.gold)}
            for item, answer, p in zip(items, answers, predictions)]
    return metrics, rows, predictions


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest
    from llamantino.evaluate.evalita import get_task
    from llamantino.models.modeling import load_tokenizer, load_with_adapter

    files = task_files(cfg)
    # Read every task's gold before the model loads: bad files fail at once.
    tasks = {}
    for name, paths in files.items():
        task = get_task(name)
        items = task.read(paths)
        if cfg.limit:
            items = items[: cfg.limit]
        missing = [it.id for it in items if it.gold is None]
        if not items or missing:
            raise LlamantinoError(f"{name}: {', '.join(map(str, paths))}: "
                                  + ("no items" if not items else f"{len(missing)} item(s) without gold"))
        tasks[name] = (task, items)
    if cfg.output and prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True) == "complete":
        report = read_manifest(cfg.output)["metrics"]
        print(table(report))
        return {"status": "skipped (done)", "headline": _headline(report), "metrics": report, "display": table(report)}
    tokenizer = load_tokenizer(cfg.model)
    model = load_with_adapter(cfg.model, cfg.adapter, dtype=cfg.dtype)
    report, generations, per_task_predictions = {}, [], {}
    for name, (task, items) in tasks.items():
        t0 = time.time()
        metrics, rows, predictions = evaluate_task(task, items, model, tokenizer, cfg)
        unparsed = sum(1 for p in predictions if p is None)
        report[name] = {"items": len(items), "primary_metric": task.primary_metric,
                        "lower_is_better": list(getattr(task, "lower_is_better", ()))
                        or ([task.primary_metric] if not task.higher_is_better else []),
                        "metrics": _jsonable(metrics), "undecodable": unparsed,
                        "seconds": round(time.time() - t0, 1)}
        generations += rows
        per_task_predictions[name] = (task, items, predictions)
    print(table(report))
    if cfg.output:
        with atomic_dir(cfg.output) as tmp:
            (tmp / "predictions").mkdir()
            for name, (task, items, predictions) in per_task_predictions.items():
                task.write_predictions(items, predictions, tmp / "predictions" / submission_name(name))
            with open(tmp / "generations.jsonl", "w", encoding="utf-8") as handle:
                for row in generations:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            inputs = describe_inputs([p for paths in files.values() for p in paths])
            write_manifest(tmp, KIND, cfg, inputs=inputs, metrics=report)
    return {"status": "done", "headline": _headline(report), "metrics": report, "display": table(report)}


def submission_name(task: str) -> str:
    """File names in the shape each task's organisers asked for."""
    return {
        "acti-a": "llamantino_subtaskA.csv", "acti-b": "llamantino_subtaskB.csv",
        "clinkart": "llamantino_clinkart.txt", "discotex-1": "llamantino.subtask1.run1.tsv",
        "discotex-2": "llamantino.subtask2.run1.tsv", "emit": "llamantino_SubtaskA_in-domain_run1.csv",
        "geolingit": "llamantino.standard.a.1", "haspeede3": "llamantino_taskA_textual_run_1.csv",
        "haspeede3-contextual": "llamantino_taskA_contextual_run_1.csv", "hodi-a": "llamantino.A.run1",
        "hodi-b": "llamantino.B.run1", "langlearn": "llamantino_langlearn.tsv", "nermud": "llamantino_WN.tsv",
        "politicit": "llamantino_politicit.csv", "wic-ita": "binary.jsonl",
    }.get(task, f"{task}.txt")


def table(report: dict) -> str:
    rows = [("task", "items", "metric", "score", "undecodable")]
    for name, r in report.items():
        value = r["metrics"].get(r["primary_metric"])
        arrow = "↓" if r["primary_metric"] in r.get("lower_is_better", []) else "↑"
        rows.append((name, str(r["items"]), f"{r['primary_metric']} {arrow}", _fmt(value), str(r["undecodable"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _jsonable(value):
    """Labels and metrics as JSON: sets and tuples as lists, NaN as None, objects as dicts."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _headline(report: dict) -> dict:
    scores = [r["metrics"].get(r["primary_metric"]) for r in report.values()
              if r["primary_metric"] not in r.get("lower_is_better", [])]
    scores = [s for s in scores if isinstance(s, (int, float)) and not math.isnan(s)]
    return {"tasks": len(report), "mean_primary": round(sum(scores) / len(scores), 4) if scores else None}
