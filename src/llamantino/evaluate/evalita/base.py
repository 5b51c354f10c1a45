"""The contract every EVALITA 2023 task implements.

A task module reads the task's own released files into `Item`s (instruction of Table 1,
input text, target answer, structured gold), decodes a generated answer back into the
task's label or structure, reads and writes the official submission format, and scores
predictions with the official metric. `TASKS` (in `llamantino.evaluate.evalita`) maps each task
name to its `Task` instance.

Rules shared by all tasks:
* `decode` never raises: an answer it cannot parse becomes `None` (or an empty
  structure where the task has a natural empty answer), which the scorer counts wrong;
* `score` takes gold and predictions as {id: label} mappings and refuses predictions that
  do not line up with the gold ids (missing or extra ids are named);
* readers raise `LlamantinoError` naming file, line and column for bad input.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamantino.core.errors import LlamantinoError


@dataclass
class Item:
    id: str                 # the record's id in the task's files (what predictions are keyed by)
    task: str               # task name, e.g. "acti-a"
    instruction: str        # Table 1 instruction, placeholders filled
    input: str              # the input text shown to the model
    output: str             # the target answer the model is trained to produce
    gold: Any = None        # structured gold label (None for unlabelled test data)
    meta: dict = field(default_factory=dict)  # whatever is needed to write the official files back

    def record(self) -> dict:
        """The prepared instruction record (`llamantino evalita prepare` writes these)."""
        return {"id": self.id, "task": self.task, "instruction": self.instruction,
                "input": self.input, "output": self.output}


class Task:
    name: str = ""              # e.g. "acti-a"
    official: str = ""          # e.g. "ACTI subtask A"
    labels: tuple = ()          # the closed label set, where there is one
    primary_metric: str = ""    # key of score()'s result used in summary tables
    higher_is_better: bool = True
    lower_is_better: tuple = ()  # other keys of score()'s result where lower is better (e.g. km)

    # --- data ------------------------------------------------------------------------
    def read(self, paths: list[Path]) -> list[Item]:
        """Read the task's released data files (train, or test with gold) into items."""
        raise NotImplementedError

    # --- answers ---------------------------------------------------------------------
    def decode(self, answer: str, item: Item | None = None) -> Any:
        """A generated answer -> the task's label or structure; None when unparseable."""
        raise NotImplementedError

    def target(self, label: Any, item: Item | None = None) -> str:
        """The answer string for a label (inverse of decode on clean answers)."""
        raise NotImplementedError

    # --- official files --------------------------------------------------------------
    def read_gold(self, paths: list[Path]) -> dict:
        """{id: gold label} from the task's gold files."""
        return {it.id: it.gold for it in self.read(paths)}

    def read_predictions(self, path: Path) -> dict:
        """{id: predicted label} from a file in the official submission format."""
        raise NotImplementedError

    def write_predictions(self, items: list[Item], predictions: list, path: Path) -> None:
        """Write predictions (aligned with items) in the official submission format."""
        raise NotImplementedError

    # --- metric ----------------------------------------------------------------------
    def score(self, gold: dict, pred: dict) -> dict:
        """The official metric(s) as a flat {name: value} mapping."""
        raise NotImplementedError


class YesNoTask(Task):
    """A binary task answered "si" (1) or "no" (0), as Table 1's instructions ask."""

    labels = (0, 1)

    def target(self, label, item: Item | None = None) -> str:
        if label not in self.labels:
            raise LlamantinoError(f"{self.name}: label {label!r} is not 0 or 1")
        return "si" if label == 1 else "no"

    def decode(self, answer: str, item: Item | None = None):
        return decode_yes_no(answer)


# ---------------------------------------------------------------------------------------
# Helpers shared by task modules


def normalize(text: str) -> str:
    """Lower-case, strip accents and punctuation, squeeze spaces: 'Sì!' -> 'si'."""
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^\w\s\[\]]", " ", text.lower())
    return re.sub(r"\s+", " ", text).strip()


YES = {"si", "yes", "vero", "true", "1"}
NO = {"no", "falso", "false", "0"}


def decode_yes_no(answer: str):
    """'Sì.', 'si, contiene...', 'No' -> 1 / 0; the first yes/no word wins; else None."""
    for word in normalize(answer).split():
        if word in YES:
            return 1
        if word in NO:
            return 0
    return None


def check_alignment(gold: dict, pred: dict, task: str) -> None:
    """Predictions must cover exactly the gold ids."""
    missing = [k for k in gold if k not in pred]
    extra = [k for k in pred if k not in gold]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} gold id(s) have no prediction (e.g. {', '.join(map(str, missing[:3]))})")
        if extra:
            parts.append(f"{len(extra)} prediction id(s) are not in the gold (e.g. {', '.join(map(str, extra[:3]))})")
        raise LlamantinoError(f"{task}: predictions do not line up with the gold: " + "; ".join(parts))
    if not pred:
        raise LlamantinoError(f"{task}: no predictions")


def require_columns(header, required, path, *, alternatives: dict | None = None) -> dict:
    """Map required column names to their index in `header`; name the missing one and file."""
    index = {name: i for i, name in enumerate(header)}
    out = {}
    for name in required:
        options = [name] + list((alternatives or {}).get(name, ()))
        found = next((o for o in options if o in index), None)
        if found is None:
            raise LlamantinoError(f"{path}: missing column '{name}' (columns: {', '.join(header) or 'none'})")
        out[name] = index[found]
    return out


def require_file(path) -> Path:
    """`path` must be a file: a folder is named as such, with the files it holds."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())
        hint = f" (it holds: {', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''})" if inside else \
            " (it holds no files)"
        raise LlamantinoError(f"{path}: is a folder, not a file; give the file(s) inside it{hint}")
    if not path.is_file():
        raise LlamantinoError(f"{path}: no such file")
    return path


def read_table(path, *, delimiter: str = ",", quoting: bool = True) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A delimited text file with a header line -> (header, [(line number, fields), ...]).

    `quoting=True` follows the CSV rules (quoted fields may hold delimiters and newlines);
    `quoting=False` takes every character literally, for files released unquoted. The line
    number is where the record starts; blank lines are skipped; a record with another
    number of fields than the header is an error naming file and line.
    """
    path = require_file(path)
    rows: list[tuple[int, list[str]]] = []
    header = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter,
                                quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise LlamantinoError(f"{path}:{start}: unreadable record ({exc})") from None
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue
                if header is None:
                    header = [name.strip() for name in fields]
                    continue
                if len(fields) != len(header):
                    raise LlamantinoError(f"{path}:{start}: {len(fields)} fields, expected {len(header)} "
                                          f"({', '.join(header)})")
                rows.append((start, fields))
    except UnicodeDecodeError as exc:
        raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if header is None:
        raise LlamantinoError(f"{path}: empty file (no header line)")
    return header, rows


def parse_label(value: str, valid: dict, path, line: int, column: str):
    """`valid` maps the strings a file may hold to labels; anything else names file, line and value."""
    key = value.strip()
    if key not in valid:
        raise LlamantinoError(f"{path}:{line}: column '{column}' has {value!r}; valid: {', '.join(map(str, valid))}")
    return valid[key]


def check_unique(ids_seen: set, item_id: str, path, line: int) -> None:
    """Ids key gold and predictions, so a repeated id is an error naming where it repeats."""
    if item_id in ids_seen:
        raise LlamantinoError(f"{path}:{line}: id '{item_id}' appears twice")
    ids_seen.add(item_id)


def require_gold(gold: dict, task: str) -> None:
    """Scoring needs gold labels: an unlabelled (blind test) item is an error naming one."""
    unlabelled = [k for k, v in gold.items() if v is None]
    if unlabelled:
        raise LlamantinoError(f"{task}: {len(unlabelled)} gold item(s) have no label (e.g. {unlabelled[0]}); "
                              "score against files with gold labels")


def read_label_submission(path, id_column: str, label_column: str, valid: dict, *, delimiter: str = ",") -> dict:
    """{id: label} from a submission of one id and one label column. An empty cell is an
    answer that could not be decoded: it reads as None, which is scored wrong."""
    path = Path(path)
    header, rows = read_table(path, delimiter=delimiter)
    cols = require_columns(header, [id_column, label_column], path)
    pred, seen = {}, set()
    for line, fields in rows:
        item_id = fields[cols[id_column]].strip()
        check_unique(seen, item_id, path, line)
        value = fields[cols[label_column]].strip()
        pred[item_id] = None if value == "" else parse_label(value, valid, path, line, label_column)
    return pred


def write_label_submission(task: str, items, predictions, path, header, *, delimiter: str = ",") -> None:
    """One row per item: its id and its label (empty where the answer was not decodable)."""
    from llamantino.core.fileio import atomic_open

    if len(items) != len(predictions):
        raise LlamantinoError(f"{task}: {len(items)} items but {len(predictions)} predictions")
    with atomic_open(path) as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        for item, label in zip(items, predictions):
            writer.writerow([item.id, "" if label is None else label])
