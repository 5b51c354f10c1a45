"""ACTI (Automatic Conspiracy Theory Identification), subtasks A and B.

Released files are comma-separated CSV with a header and standard quoting (comments hold
newlines): subtask A `Id,comment_text,conspiratorial` (0/1), subtask B
`Id,comment_text,topic,conspiracy` (topic name and its code). Test files have
`Id,comment_text` only. Gold is a test file with the label column(s) filled in, the
layout of the training files. Submissions are CSV `Id,Expected` (0/1 for A, the topic
code for B). Metric: macro-F1 over the 2 (A) or 4 (B) classes.

Official scorer: not found. The runs were scored by two Kaggle in-class competitions
(acti-subtask-a, acti-subtask-b) whose metric code is not published; participants report
macro-F1. What is done here, and could not be checked against the official code:
* every class counts, so in B a topic that neither the gold nor the predictions hold
  scores F1 0 (sklearn's f1_score without `labels` would leave it out; the real test set
  holds all four topics, where both agree);
* rows are matched by Id, not by line; missing, extra and repeated Ids are refused;
* an empty Expected cell is an answer that could not be decoded, scored wrong (it is
  a miss of the gold class and a prediction of none); a value outside the classes is
  refused, naming file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, YesNoTask, check_alignment, check_unique, normalize,
                                              parse_label, read_label_submission, read_table, require_columns,
                                              write_label_submission)

# Subtask B topic codes as the released files pair them (topic column <-> conspiracy column).
TOPICS = {"Covid": 0, "Qanon": 1, "Russia": 2, "Terra Piatta": 3}
TOPIC_NAMES = {code: name for name, code in TOPICS.items()}

# Patterns on normalized answers (lower case, no accents or punctuation); the earliest wins.
TOPIC_PATTERNS = {
    0: r"\bcovid\w*|\bcoronavirus\b|\bsars ?cov",
    1: r"\bq ?anon\b",
    2: r"\bruss(?:ia|i|o|a|e)\b",
    3: r"\bterra ?piatt\w*|\bterrapiatt\w*",
}


class _Acti(Task):
    submission_columns = ("Id", "Expected")

    def _labels_of(self, header, fields, path, line):
        raise NotImplementedError

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path)
            cols = require_columns(header, ["Id", "comment_text"], path)
            for line, fields in rows:
                item_id = fields[cols["Id"]].strip()
                check_unique(seen, item_id, path, line)
                gold = self._labels_of(header, fields, path, line)
                text = fields[cols["comment_text"]]
                items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                                  input=text, output="" if gold is None else self.target(gold), gold=gold))
        return items

    def read_predictions(self, path) -> dict:
        valid = {str(label): label for label in self.labels}
        return read_label_submission(path, *self.submission_columns, valid)

    def write_predictions(self, items, predictions, path) -> None:
        write_label_submission(self.name, items, predictions, path, self.submission_columns)

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        ids = list(gold)
        g, p = [gold[k] for k in ids], [pred[k] for k in ids]
        table = metrics.per_class(g, p, self.labels)
        out = {"macro_f1": metrics.macro_f1(g, p, self.labels), "accuracy": metrics.accuracy(g, p)}
        for label in self.labels:
            out[f"f1_{self.label_name(label)}"] = table[label]["f1"]
        return out

    def label_name(self, label) -> str:
        return str(label)


class ActiA(YesNoTask, _Acti):
    name = "acti-a"
    official = "ACTI subtask A (conspiratorial content)"
    primary_metric = "macro_f1"

    def _labels_of(self, header, fields, path, line):
        if "conspiratorial" not in header:
            return None
        value = fields[header.index("conspiratorial")]
        return parse_label(value, {"0": 0, "1": 1}, path, line, "conspiratorial")



class ActiB(_Acti):
    name = "acti-b"
    official = "ACTI subtask B (conspiracy topic)"
    labels = (0, 1, 2, 3)
    primary_metric = "macro_f1"

    def _labels_of(self, header, fields, path, line):
        code = topic = None
        if "conspiracy" in header:
            code = parse_label(fields[header.index("conspiracy")], {str(c): c for c in TOPIC_NAMES},
                               path, line, "conspiracy")
        if "topic" in header:
            topic = parse_label(fields[header.index("topic")], TOPICS, path, line, "topic")
        if code is not None and topic is not None and code != topic:
            raise LlamantinoError(f"{path}:{line}: topic '{TOPIC_NAMES[topic]}' does not match "
                                  f"conspiracy code {code} (expected {topic})")
        return code if code is not None else topic

    def target(self, label, item=None) -> str:
        return TOPIC_NAMES[label]

    def decode(self, answer, item=None):
        text = normalize(answer)
        found = [(m.start(), code) for code, pattern in TOPIC_PATTERNS.items()
                 if (m := re.search(pattern, text))]
        return min(found)[1] if found else None

    def label_name(self, label) -> str:
        return TOPIC_NAMES[label].lower().replace(" ", "_")


TASKS = {"acti-a": ActiA(), "acti-b": ActiB()}
