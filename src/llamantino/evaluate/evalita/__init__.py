"""EVALITA 2023 tasks: readers of each task's released files, the paper's instructions
(Table 1), answer decoders and the official metrics.

`TASKS` maps a task name (e.g. "acti-a") to its `Task`; `get_task` looks one up with a
helpful error. Task modules live in `llamantino.evaluate.evalita.tasks`.
"""

from __future__ import annotations

import importlib

from llamantino.core.errors import LlamantinoError

# task name -> module under llamantino.evaluate.evalita.tasks defining it
TASK_MODULES = {
    "acti-a": "acti", "acti-b": "acti",
    "clinkart": "clinkart",
    "discotex-1": "discotex", "discotex-2": "discotex",
    "emit": "emit",
    "geolingit": "geolingit",
    "haspeede3": "haspeede", "haspeede3-contextual": "haspeede",
    "hodi-a": "hodi", "hodi-b": "hodi",
    "langlearn": "langlearn",
    "nermud": "nermud",
    "politicit": "politicit",
    "wic-ita": "wicita",
}
TASK_NAMES = tuple(TASK_MODULES)


def get_task(name: str):
    """The Task instance for `name`; an unknown name lists the valid ones."""
    if name not in TASK_MODULES:
        from llamantino.core.config import closest

        raise LlamantinoError(f"unknown EVALITA task '{name}'{closest(name, TASK_MODULES)}; "
                              f"valid: {', '.join(TASK_NAMES)}")
    module = importlib.import_module(f"llamantino.evaluate.evalita.tasks.{TASK_MODULES[name]}")
    return module.TASKS[name]
