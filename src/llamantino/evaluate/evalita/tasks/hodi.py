"""HODI (Homotransphobia Detection in Italian), subtasks A and B.

Released files are tab-separated with a header (read with standard CSV quoting, as the
official scorer's pandas does):
  HODI_2023_train_subtaskA.tsv  id, text, homotransphobic (0/1)
  HODI_2023_train_subtaskB.tsv  id, text, rationales: a list literal of 0-based character
                                indices into text, e.g. [33, 34, 35]; `[]` when none
A test file without the label column gives unlabelled items; a gold file holding both
label columns serves both subtasks (its exact layout is not verified; columns are found
by name).

Subtask B target: the rationale characters, each maximal run of consecutive indices as one
piece, pieces joined with " [SEP] " as the instruction asks, or 'Non omotransfobico' when
there are none. `decode` finds each piece in the post again (in order, from where the
previous one ended) and returns the character offsets it covers.

Submissions: TSV with header `id<TAB>homotransphobic` (0/1) or `id<TAB>rationales` (a list
literal, `[]` for none). The guidelines say "no header", but the scorer reads line 1 as the
header and joins on a column named `id`, so the header is written.

Metrics, as the official scorer (compute_metrics.py and evaluation_utils.py of
HODI-EVALITA/HODI_2023, version of June 2023, run with its pinned pandas 2.0) computes them:
* A: sklearn macro-F1 over the classes present in gold or predictions, after an inner
  join on id; the row counts must match the gold, every gold id must join, and every
  predicted value must be one of the values found in the gold.
* B: mean over gold posts of the Dice/F1 of predicted and gold offset sets,
  2|P & G| / (|P| + |G|). The scorer reads the gold cell as text and parses it (eval)
  only when it is not empty, which gives its empty cases: when the gold cell is empty, an
  empty prediction scores 1 and any other scores 0; otherwise an empty prediction scores
  0. So a gold cell that reads `[]` (not empty text, but no offsets) scores 0 whatever is
  predicted: kept on purpose. `Rationales.empty_cell` carries the raw-cell fact from the
  gold file to `score`. (Under pandas 3 an empty gold cell reads as NaN and the scorer
  stops; the pinned pandas reads it as an empty string.)

Differences from the official scorer, on purpose:
* An empty prediction cell makes the official scorer refuse the whole file (int('') in
  A, Python evaluation of the empty text in B). Here it is an answer that could not be
  decoded and scores 0 (A: a miss of the gold class, never a class of its own). Decoding never leaves a post of
  subtask B without an answer, so `eval evalita` writes `[]`, not an empty cell, there.
* Repeated ids are refused. The official scorer only compares row counts and the size of
  the join, so one id given twice in place of a missing one passes there.
* Ids are compared after removing surrounding whitespace (the official scorer compares
  them verbatim).
"""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, Task, YesNoTask, check_alignment, check_unique, normalize,
                                              parse_label, read_label_submission, read_table, require_columns,
                                              require_gold, write_label_submission)

BINARY = {"0": 0, "1": 1}
NONE_ANSWER = "Non omotransfobico"
SEP = " [SEP] "
SEP_RE = re.compile(r"\s*\[\s*sep\s*\]\s*", re.IGNORECASE)
EDGE_PUNCT = " \t\n\"'“”‘’«».,;:!?()"


class Rationales(tuple):
    """Sorted, distinct character offsets of a post.

    `empty_cell` is True only for a gold cell that was empty in the file (not `[]`): the
    official scorer tests emptiness on the raw cell. Equality ignores it.
    """

    def __new__(cls, offsets=(), empty_cell: bool = False):
        obj = super().__new__(cls, sorted(set(offsets)))
        obj.empty_cell = empty_cell
        return obj

    def __repr__(self):
        return f"Rationales({list(self)}{', empty_cell=True' if self.empty_cell else ''})"


def parse_rationales(value: str, path, line: int, text: str | None = None) -> Rationales:
    """A list literal of character indices -> Rationales; an empty cell is kept as such."""
    raw = value.strip()
    if raw == "":
        return Rationales(empty_cell=True)
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                         and i >= 0 for i in parsed):
        raise LlamantinoError(f"{path}:{line}: column 'rationales' has {value!r}; "
                              "expected a list of character indices such as [] or [3, 4, 5]")
    if text is not None and parsed and max(parsed) >= len(text):
        raise LlamantinoError(f"{path}:{line}: column 'rationales' has index {max(parsed)} but the text "
                              f"has {len(text)} characters")
    return Rationales(parsed)


def runs(offsets) -> list[tuple[int, int]]:
    """Sorted offsets -> maximal runs of consecutive indices as [start, end) spans."""
    spans = []
    for i in sorted(set(offsets)):
        if spans and spans[-1][1] == i:
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [tuple(s) for s in spans]


def find_piece(text: str, piece: str, start: int):
    """Where `piece` occurs in `text`: first from `start`, then anywhere; exact, then ignoring
    case, then with quotes and punctuation trimmed from its edges. (start, end) or None."""
    candidates = [piece]
    trimmed = piece.strip(EDGE_PUNCT)
    if trimmed and trimmed != piece:
        candidates.append(trimmed)
    lowered = text.lower()
    for candidate in candidates:
        for haystack, needle in ((text, candidate), (lowered, candidate.lower())):
            if len(haystack) != len(text):  # lower() changed lengths: offsets would not line up
                continue
            for origin in (start, 0):
                at = haystack.find(needle, origin)
                if at >= 0:
                    return at, at + len(needle)
    return None


class HodiA(YesNoTask):
    name = "hodi-a"
    official = "HODI subtask A (homotransphobic or not)"
    primary_metric = "macro_f1"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path, delimiter="\t")
            cols = require_columns(header, ["id", "text"], path)
            for line, fields in rows:
                item_id = fields[cols["id"]].strip()
                check_unique(seen, item_id, path, line)
                gold = parse_label(fields[header.index("homotransphobic")], BINARY, path, line,
                                   "homotransphobic") if "homotransphobic" in header else None
                items.append(Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                                  input=fields[cols["text"]],
                                  output="" if gold is None else self.target(gold), gold=gold))
        return items

    def read_predictions(self, path) -> dict:
        return read_label_submission(path, "id", "homotransphobic", BINARY, delimiter="	")

    def write_predictions(self, items, predictions, path) -> None:
        write_label_submission(self.name, items, predictions, path, ["id", "homotransphobic"], delimiter="	")

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        ids = list(gold)
        g, p = [gold[k] for k in ids], [pred[k] for k in ids]
        # The official scorer refuses predicted values that never occur in the gold.
        allowed = set(g)
        strange = sorted({v for v in p if v is not None and v not in allowed})
        if strange:
            raise LlamantinoError(f"{self.name}: predicted value(s) {strange} do not occur in the gold "
                                  f"(gold values: {sorted(allowed)})")
        labels = metrics.default_labels(g, p)
        table = metrics.per_class(g, p, labels)
        out = {"macro_f1": metrics.macro_f1(g, p), "accuracy": metrics.accuracy(g, p)}
        for label in labels:
            out[f"f1_{label}"] = table[label]["f1"]
        return out


class HodiB(Task):
    name = "hodi-b"
    official = "HODI subtask B (rationales)"
    primary_metric = "f1"

    def read(self, paths) -> list[Item]:
        items, seen = [], set()
        for path in map(Path, paths):
            header, rows = read_table(path, delimiter="\t")
            cols = require_columns(header, ["id", "text"], path)
            for line, fields in rows:
                item_id = fields[cols["id"]].strip()
                check_unique(seen, item_id, path, line)
                text = fields[cols["text"]]
                gold = parse_rationales(fields[header.index("rationales")], path, line, text) \
                    if "rationales" in header else None
                item = Item(id=item_id, task=self.name, instruction=evalita_instruction(self.name),
                            input=text, output="", gold=gold)
                if gold is not None:
                    item.output = self.target(gold, item)
                items.append(item)
        return items

    def target(self, label, item=None) -> str:
        if not label:
            return NONE_ANSWER
        if item is None:
            raise LlamantinoError(f"{self.name}: the target of rationales needs the item's text")
        return SEP.join(item.input[a:b] for a, b in runs(label))

    def decode(self, answer, item=None):
        """Pieces found in the post -> their offsets; 'Non omotransfobico', or nothing found,
        -> no offsets (the natural empty answer). None only without the item's text."""
        if item is None:
            return None
        answer = str(answer).strip()
        if normalize(answer).startswith(normalize(NONE_ANSWER)):
            return Rationales()
        text, offsets, cursor = item.input, set(), 0
        for piece in SEP_RE.split(answer):
            piece = piece.strip()
            if not piece:
                continue
            found = find_piece(text, piece, cursor)
            if found is None:
                continue
            offsets.update(range(*found))
            cursor = found[1]
        return Rationales(offsets)

    def read_predictions(self, path) -> dict:
        path = Path(path)
        header, rows = read_table(path, delimiter="\t")
        cols = require_columns(header, ["id", "rationales"], path)
        pred, seen = {}, set()
        for line, fields in rows:
            item_id = fields[cols["id"]].strip()
            check_unique(seen, item_id, path, line)
            value = fields[cols["rationales"]]
            # An empty cell is an answer that could not be decoded: scored wrong.
            pred[item_id] = None if value.strip() == "" else parse_rationales(value, path, line)
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        with atomic_open(path) as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["id", "rationales"])
            for item, offsets in zip(items, predictions):
                cell = "" if offsets is None else "[" + ", ".join(str(i) for i in sorted(set(offsets))) + "]"
                writer.writerow([item.id, cell])

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        scores = [post_f1(pred[k], gold[k]) for k in gold]
        return {"f1": sum(scores) / len(scores)}


def post_f1(pred, gold) -> float:
    """One post's score with the official scorer's empty cases (see the module notes)."""
    if pred is None:  # an answer that could not be decoded is wrong
        return 0.0
    if getattr(gold, "empty_cell", False):
        return 1.0 if len(pred) == 0 else 0.0
    if len(pred) == 0:
        return 0.0
    p, g = set(pred), set(gold)
    return 2 * len(p & g) / (len(p) + len(g))


TASKS = {"hodi-a": HodiA(), "hodi-b": HodiB()}
