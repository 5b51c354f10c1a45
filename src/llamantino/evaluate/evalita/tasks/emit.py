"""EMit subtask A: the emotions of a text (multi-label), or none (Neutral).

Released files are comma-separated CSV with a header and standard quoting:
`id,text,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust`, each
label 0/1; test files are `id,text`. Gold is a test file with the label columns filled in.
The submission is CSV `id,<the ten label columns in that order>`.

Metric, as the official evaluate.py (oaraque/emit) computes it: sklearn f1_score with
average="macro" over the ten label columns of the indicator matrix, i.e. the mean of the
ten per-column binary F1s; a column with no positive in gold nor predictions scores 0
(zero_division) and still counts in the mean. Agreement with evaluate.py on the rest:
* rows are paired by position and the ids must be the gold's in the gold's order
  (evaluate.py asserts it); here a file with missing, extra, repeated or reordered ids is
  refused, naming them;
* the header must be `id` and the ten columns in this order (evaluate.py asserts it);
* a cell other than 0/1, or an empty one, is refused (evaluate.py stops on both: sklearn
  rejects NaN and non-binary indicator values).
Only subtask A, in-domain or out-of-domain (the gold file given says which), is read.

Answer: the Italian names of the active labels, in the order the instruction lists them
(rabbia, anticipazione, disgusto, paura, gioia, tristezza, sorpresa, fiducia, amore),
comma-separated; `neutrale` for Neutral.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, check_alignment, check_unique, normalize, parse_label,
                                              read_table, require_columns)

COLUMNS = ("Anger", "Anticipation", "Disgust", "Fear", "Joy", "Love", "Neutral", "Sadness", "Surprise", "Trust")
ITALIAN = {"Anger": "rabbia", "Anticipation": "anticipazione", "Disgust": "disgusto", "Fear": "paura",
           "Joy": "gioia", "Sadness": "tristezza", "Surprise": "sorpresa", "Trust": "fiducia", "Love": "amore",
           "Neutral": "neutrale"}
ANSWER_ORDER = tuple(ITALIAN)  # the instruction's order, neutral last
# Words an answer may use for each label, on normalized text (Italian forms and English names).
PATTERNS = {
    "Anger": r"rabbia|arrabbiat[oaie]|ira|collera|anger",
    "Anticipation": r"anticipazion[ei]|aspettativ[ae]|anticipation",
    "Disgust": r"disgust[oaie]?|disgustat[oaie]",
    "Fear": r"paur[ae]|timor[ei]|fear",
    "Joy": r"gioia|gioios[oaie]|felicita|allegria|joy",
    "Love": r"amore|love",
    "Neutral": r"neutral[ei]?|neutr[oaie]|nessuna emozione|assenza di emozioni",
    "Sadness": r"tristezza|trist[ei]|sadness",
    "Surprise": r"sorpres[oaie]|stupore|surprise",
    "Trust": r"fiducia|trust",
}
MATCHERS = {col: re.compile(rf"\b(?:{pattern})\b") for col, pattern in PATTERNS.items()}


class Emit(Task):
    name = "emit"
    official = "EMit subtask A (categorical emotion detection)"
    labels = COLUMNS
    primary_metric = "macro_f1"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path)
            cols = require_columns(header, ["id", "text"], path)
            labelled = any(c in header for c in COLUMNS)
            if labelled:
                cols.update(require_columns(header, list(COLUMNS), path))
            for line, fields in rows:
                item_id = fields[cols["id"]].strip()
                check_unique(seen, item_id, path, line)
                gold = None
                if labelled:
                    gold = tuple(parse_label(fields[cols[c]], {"0": 0, "1": 1}, path, line, c) for c in COLUMNS)
                    if not any(gold):
                        # Neutral stands for "no emotion"; a row with nothing set has no answer.
                        raise LlamantinoError(f"{path}:{line}: no label set (not even Neutral)")
                items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                                  input=fields[cols["text"]],
                                  output="" if gold is None else self.target(gold), gold=gold))
        return items

    def target(self, label, item=None) -> str:
        active = {c for c, v in zip(COLUMNS, label) if v}
        return ", ".join(ITALIAN[c] for c in ANSWER_ORDER if c in active)

    def decode(self, answer, item=None):
        text = normalize(answer)
        row = tuple(1 if MATCHERS[c].search(text) else 0 for c in COLUMNS)
        return row if any(row) else None

    # --- official files ------------------------------------------------------------
    def read_predictions(self, path) -> dict:
        path = Path(path)
        header, rows = read_table(path)
        expected = ["id", *COLUMNS]
        require_columns(header, expected, path)
        if header != expected:
            raise LlamantinoError(f"{path}: columns must be exactly {','.join(expected)} in this order "
                                  f"(got {','.join(header)})")
        pred, seen = {}, set()
        for line, fields in rows:
            check_unique(seen, fields[0].strip(), path, line)
            pred[fields[0].strip()] = tuple(parse_label(v, {"0": 0, "1": 1}, path, line, c)
                                            for c, v in zip(COLUMNS, fields[1:]))
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        with atomic_open(path) as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["id", *COLUMNS])
            for item, row in zip(items, predictions):
                # An undecodable answer predicts no label at all.
                writer.writerow([item.id, *(row or (0,) * len(COLUMNS))])

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        if list(pred) != list(gold):
            raise LlamantinoError(f"{self.name}: prediction ids are not in the gold's order "
                                  "(the official scorer pairs rows by position)")
        g = [gold[k] for k in gold]
        p = [pred[k] or (0,) * len(COLUMNS) for k in gold]
        out = {"macro_f1": metrics.multilabel_macro_f1(g, p)}
        for j, col in enumerate(COLUMNS):
            out[f"f1_{col.lower()}"] = metrics.multilabel_macro_f1([[r[j]] for r in g], [[r[j]] for r in p])
        return out


TASKS = {"emit": Emit()}
