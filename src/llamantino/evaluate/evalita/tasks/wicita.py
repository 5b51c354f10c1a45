"""WiC-ITA (Word in Context, Italian), subtask 1: is the word used with the same meaning?

Released files are JSON Lines (binary/train.jsonl, binary/dev.jsonl, gold_truth/binary/
test.jsonl) with id, lemma, sentence1, sentence2, start1, end1, start2, end2 and label
(1: same meaning); offsets count characters, end exclusive. A file without label gives
unlabelled items.

The instruction's {word} is the lemma: the target word is often inflected differently in
the two sentences (bomba / bombe), and the lemma is the one word that names both. The
input is `sentence1 [SEP] sentence2` with each target occurrence wrapped in `**`, because
the lemma may occur more than once, or in another form, and the mark says which
occurrence is meant. Target: si/no.

Submission: `binary.jsonl` with one `{"id": ..., "label": 0|1}` per line (zipped with a
description.txt for upload).

Metric, as the official evaluation.py (wic-ita/data) computes it: sklearn
precision_recall_fscore_support with labels [0, 1] (undefined values count 0), and the
unweighted mean of the two classes' F1 (the script calls it "weighted"). Predictions are
looked up by id for every gold id, so their order does not matter. Differences, on
purpose:
* A missing id makes the script drop the file's result with a warning; here it is an
  error naming the id. An id that is not in the gold is ignored by the script; here it
  is refused (naming it), as is an id given twice (the script keeps the last).
* A label other than 0 and 1 (e.g. 2) is scored by the script as a miss of the gold
  class; here it is refused, naming file and line.
* A null label stops the script (int(None)); here it is an answer that could not be
  decoded, scored wrong: what `write_predictions` writes for one. Replace nulls with a
  label before uploading.
Only subtask 1 (binary, it-it) is read; the ranking subtask and the it-en files are not.
"""

from __future__ import annotations

import json
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open, iter_jsonl
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import Item, YesNoTask, check_alignment, check_unique, require_file, require_gold

FIELDS = ("id", "lemma", "sentence1", "sentence2", "start1", "end1", "start2", "end2")
MARK = "**"


def binary_label(value, path, line: int):
    """0/1 as the official script's int(): ints, or the strings "0"/"1"."""
    if isinstance(value, bool) or value not in (0, 1, "0", "1"):
        raise LlamantinoError(f"{path}:{line}: field 'label' has {value!r}; valid: 0, 1")
    return int(value)


def marked(sentence: str, start, end, path, line: int, which: str) -> str:
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(sentence)):
        raise LlamantinoError(f"{path}:{line}: fields 'start{which}'/'end{which}' ({start!r}, {end!r}) are not "
                              f"a span of sentence{which} ({len(sentence)} characters)")
    return f"{sentence[:start]}{MARK}{sentence[start:end]}{MARK}{sentence[end:]}"


class WicIta(YesNoTask):
    name = "wic-ita"
    official = "WiC-ITA subtask 1 (binary, it-it)"
    primary_metric = "macro_f1"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            for line, record in iter_jsonl(require_file(path)):
                for name in FIELDS:
                    if name not in record:
                        raise LlamantinoError(f"{path}:{line}: missing field '{name}'")
                for name in ("id", "lemma", "sentence1", "sentence2"):
                    if not isinstance(record[name], str) or not record[name].strip():
                        raise LlamantinoError(f"{path}:{line}: field '{name}' must be a non-empty string")
                item_id = record["id"]
                check_unique(seen, item_id, path, line)
                gold = binary_label(record["label"], path, line) if "label" in record else None
                first = marked(record["sentence1"], record["start1"], record["end1"], path, line, "1")
                second = marked(record["sentence2"], record["start2"], record["end2"], path, line, "2")
                items.append(Item(id=item_id, task=self.name,
                                  instruction=evalita_instruction(self.name, word=record["lemma"]),
                                  input=f"{first} [SEP] {second}",
                                  output="" if gold is None else self.target(gold), gold=gold))
        return items

    def read_predictions(self, path) -> dict:
        path = require_file(path)
        pred, seen = {}, set()
        for line, record in iter_jsonl(path):
            for name in ("id", "label"):
                if name not in record:
                    raise LlamantinoError(f"{path}:{line}: missing field '{name}'")
            check_unique(seen, record["id"], path, line)
            # null is an answer that could not be decoded: scored wrong.
            label = record["label"]
            pred[record["id"]] = None if label is None else binary_label(label, path, line)
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        with atomic_open(path) as handle:
            for item, label in zip(items, predictions):
                handle.write(json.dumps({"id": item.id, "label": label}, ensure_ascii=False) + "\n")

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        ids = list(gold)
        g, p = [gold[k] for k in ids], [pred[k] for k in ids]
        table = metrics.per_class(g, p, self.labels)
        out = {}
        for label in self.labels:
            for key in ("precision", "recall", "f1"):
                out[f"{key}_{label}"] = table[label][key]
        out["macro_f1"] = metrics.macro_f1(g, p, self.labels)
        out["accuracy"] = metrics.accuracy(g, p)
        return out


TASKS = {"wic-ita": WicIta()}
