"""DisCoTex: discourse coherence, task 1 (does the sentence follow?) and task 2 (score).

Released files are tab-separated with a header and CSV quoting (paragraphs hold newlines):
task 1 `ID PROMPT TARGET CLASS` (CLASS 1: TARGET follows PROMPT; empty in blind test
files), task 2 `ID TEXT SCORE` (mean human rating, 1 to 5; an earlier release names the
column `MEAN`, so both are accepted). Gold is the test file with CLASS / SCORE filled in.

The submission format is not documented; what was produced in 2023 is a headerless TSV
`ID<TAB>CLASS` or `ID<TAB>SCORE` (a header line naming ID is accepted too). Metrics: task
1 accuracy; task 2 Pearson and Spearman correlation with the gold means (which one
ranked is not documented; Pearson is reported as primary here).

Official scorer: not published (davidecolla/DisCoTex holds the data and two baselines,
which compute accuracy as hits / records and scipy's pearsonr / spearmanr). So these are
decisions, not checked against organisers' code: rows are matched by ID, not by line,
and missing, extra or repeated IDs are refused; an empty task 1 cell is a wrong answer;
an empty task 2 cell is scored as the middle of the scale (3.0) and counted in
`unparsed`, since a correlation needs a number for every text; a class other than 0/1,
or a score outside 1-5, is refused. A constant prediction has no correlation (NaN,
printed as null), as scipy returns.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, check_alignment, check_unique, normalize, parse_label,
                                              read_table, require_columns, require_file)

NUMBER = re.compile(r"(?<![\d.,])\d+(?:[.,]\d+)?")
# An unreadable score is taken as the middle of the 1-5 scale (and counted in "unparsed"):
# a correlation needs a number for every item.
MIDPOINT = 3.0


def _flat(text: str) -> str:
    """Paragraphs hold newlines and tabs; the model sees them as single spaces."""
    return re.sub(r"\s+", " ", text).strip()


def _format_score(value: float) -> str:
    return repr(float(value))


def _read_submission(path, value_column: str, parse) -> dict:
    """Headerless `ID<TAB>value` lines (a first line naming ID is taken as a header)."""
    path = require_file(path)
    pred, seen = {}, set()
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise LlamantinoError(f"{path}:{number}: expected 2 tab-separated fields (ID, {value_column}), "
                                  f"got {len(fields)}")
        if number == 1 and fields[0].strip().upper() == "ID":
            if fields[1].strip().upper() != value_column:
                raise LlamantinoError(f"{path}: missing column '{value_column}' (columns: {', '.join(fields)})")
            continue
        item_id = fields[0].strip()
        check_unique(seen, item_id, path, number)
        value = fields[1].strip()
        pred[item_id] = None if value == "" else parse(value, path, number)
    return pred


def _write_submission(items, predictions, path, task: str, fmt) -> None:
    if len(items) != len(predictions):
        raise LlamantinoError(f"{task}: {len(items)} items but {len(predictions)} predictions")
    with atomic_open(path) as handle:
        for item, value in zip(items, predictions):
            handle.write(f"{item.id}\t{'' if value is None else fmt(value)}\n")


class Discotex1(Task):
    name = "discotex-1"
    official = "DisCoTex task 1 (last sentence classification)"
    labels = (0, 1)
    primary_metric = "accuracy"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path, delimiter="\t")
            cols = require_columns(header, ["ID", "PROMPT", "TARGET"], path)
            has_class = "CLASS" in header
            for line, fields in rows:
                item_id = fields[cols["ID"]].strip()
                check_unique(seen, item_id, path, line)
                value = fields[header.index("CLASS")].strip() if has_class else ""
                # Blind test files leave CLASS empty.
                gold = None if value == "" else parse_label(value, {"0": 0, "1": 1}, path, line, "CLASS")
                text = f"{_flat(fields[cols['PROMPT']])} [SEP] {_flat(fields[cols['TARGET']])}"
                items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                                  input=text, output="" if gold is None else self.target(gold), gold=gold))
        return items

    def target(self, label, item=None) -> str:
        return {1: "Coerente", 0: "Incoerente"}[label]

    def decode(self, answer, item=None):
        words = normalize(answer).replace("_", " ").split()
        for i, word in enumerate(words):
            if word in ("incoerente", "incoerenti"):
                return 0
            if word in ("coerente", "coerenti"):
                # "non coerente", "non e coerente"
                return 0 if "non" in words[max(0, i - 2):i] else 1
        return None

    def read_predictions(self, path) -> dict:
        def parse(value, p, line):
            return parse_label(value, {"0": 0, "1": 1}, p, line, "CLASS")

        return _read_submission(path, "CLASS", parse)

    def write_predictions(self, items, predictions, path) -> None:
        _write_submission(items, predictions, path, self.name, str)

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        ids = list(gold)
        return {"accuracy": metrics.accuracy([gold[k] for k in ids], [pred[k] for k in ids])}


class Discotex2(Task):
    name = "discotex-2"
    official = "DisCoTex task 2 (human coherence score)"
    primary_metric = "pearson"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path, delimiter="\t")
            cols = require_columns(header, ["ID", "TEXT"], path)
            score_col = next((c for c in ("SCORE", "MEAN") if c in header), None)
            for line, fields in rows:
                item_id = fields[cols["ID"]].strip()
                check_unique(seen, item_id, path, line)
                value = fields[header.index(score_col)].strip() if score_col else ""
                gold = None if value == "" else self._parse(value, path, line, score_col)
                items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                                  input=_flat(fields[cols["TEXT"]]),
                                  output="" if gold is None else self.target(gold), gold=gold))
        return items

    @staticmethod
    def _parse(value, path, line, column) -> float:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not 1 <= score <= 5:
            raise LlamantinoError(f"{path}:{line}: column '{column}' has {value!r}; valid: a number from 1 to 5")
        return score

    def target(self, label, item=None) -> str:
        # The shortest text that reads back as the very same float.
        return _format_score(label)

    def decode(self, answer, item=None):
        match = NUMBER.search(str(answer))
        if not match:
            return None
        value = float(match.group(0).replace(",", "."))
        return value if 1 <= value <= 5 else None

    def read_predictions(self, path) -> dict:
        def parse(value, p, line):
            return self._parse(value, p, line, "SCORE")

        return _read_submission(path, "SCORE", parse)

    def write_predictions(self, items, predictions, path) -> None:
        _write_submission(items, predictions, path, self.name, _format_score)

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        ids = list(gold)
        g = [gold[k] for k in ids]
        p = [MIDPOINT if pred[k] is None else pred[k] for k in ids]
        return {"pearson": metrics.pearson(g, p), "spearman": metrics.spearman(g, p),
                "unparsed": sum(1 for k in ids if pred[k] is None)}


TASKS = {"discotex-1": Discotex1(), "discotex-2": Discotex2()}
