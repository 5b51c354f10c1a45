"""`llamantino evalita score`: a task's official metric(s) on a submission file.

    llamantino evalita score --task acti-a --gold subtaskA_test_gold.csv --pred submission.csv

Gold is read in the task's own gold format, predictions in its official submission format
(see each module of `llamantino.evaluate.evalita.tasks`); the result is printed as one JSON object.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llamantino.core.errors import LlamantinoError


def score_files(task_name: str, gold_paths, pred_path) -> dict:
    """{task, items, primary_metric, higher_is_better, lower_is_better, metrics} for a submission."""
    from llamantino.evaluate.evalita import get_task
    from llamantino.evaluate.evalita.base import require_file

    task = get_task(task_name)
    gold_paths = [Path(p) for p in gold_paths]
    pred_path = Path(pred_path)
    for path in [*gold_paths, pred_path]:
        require_file(path)
    gold = task.read_gold(gold_paths)
    if not gold:
        raise LlamantinoError(f"{', '.join(map(str, gold_paths))}: no gold items")
    unlabelled = [k for k, v in gold.items() if v is None]
    if unlabelled:
        raise LlamantinoError(f"{', '.join(map(str, gold_paths))}: {len(unlabelled)} item(s) have no gold label "
                              f"(e.g. {', '.join(unlabelled[:3])}); pass the files with the labels filled in")
    pred = task.read_predictions(pred_path)
    if not pred:
        raise LlamantinoError(f"{pred_path}: no predictions")
    metrics = task.score(gold, pred)
    return {"task": task.name, "items": len(gold), "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better, "lower_is_better": list(task.lower_is_better),
            "metrics": metrics}


def _json_safe(value):
    """NaN (an undefined correlation) as null: the output stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def add_arguments(parser):
    parser.add_argument("--task", required=True, help="EVALITA task name, e.g. acti-a, emit, geolingit")
    parser.add_argument("--gold", nargs="+", required=True, help="gold file(s) in the task's own format")
    parser.add_argument("--pred", required=True, help="predictions in the task's official submission format")


def main(args) -> int:
    result = score_files(args.task, args.gold, args.pred)
    print(json.dumps(_json_safe(result), indent=2, ensure_ascii=False))
    return 0
