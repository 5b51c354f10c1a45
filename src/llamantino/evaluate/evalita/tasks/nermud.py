"""NERMuD (Named-Entity Recognition on Multi-Domain documents).

Released files (WN_train.tsv, WN_dev.tsv, WN_test.tsv, and the same for FIC and ADG) hold
one `token<TAB>label` per line, IOB2 labels over PER, LOC and ORG, a blank line between
sentences, no header and no ids; the *_test_nolabel.tsv files hold tokens only. One item
per sentence; items are numbered "1", "2", ... across the files read, in order, because
the official scorer pairs gold and prediction by position.

Target: the entities in order of appearance, each as `[TYPE] tokens`, e.g.
`[PER] Mario Rossi [LOC] Trento`, or 'Nessuna menzione' as the instruction says. `decode`
finds each mention among the sentence's tokens again (in order, from the end of the
previous one; spacing and case may differ) and returns one IOB2 label per token; an answer
with no mention found gives all `O`.

Submission: the same two-column file, the sentence's tokens with predicted labels.

Metric, as the official scripts/get-results.py (dhfbk/KIND, evalita-2023) computes it:
per token, not per entity. Labels are stripped, upper-cased, every `X-` prefix and
anything after `|` removed, then sklearn classification_report over PER, LOC and ORG (O
excluded) with zero_division=0: per-class, micro, macro and support-weighted precision,
recall and F1; supports count tokens (the reports of the 2023 runs show them). Which
average ranked the official results is not verified; `micro_f1` is the primary metric
here (the figure NER results are usually compared on).

Differences from get-results.py, on purpose:
* The script pairs the labels of all non-blank lines by position, ignoring sentence
  breaks, and stops when the two files have different numbers of labelled lines. Here
  the files are paired sentence by sentence: a prediction file that splits sentences
  otherwise, or whose sentence has another number of tokens than the gold's, is refused
  (naming the sentence), even where the script would pair the same tokens.
* The script skips a line without exactly two tab-separated fields, printing "ERROR!",
  which shifts the pairing of every later line (or stops it); here such a line is an
  error naming file and line. An empty label cell is such a line in both.
* A label that is not O, PER, LOC or ORG once normalised stops the script (KeyError);
  here it is an error naming file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import Item, Task, check_alignment, require_file, require_gold

TYPES = ("PER", "LOC", "ORG")
LABELS = ("O",) + tuple(f"{p}-{t}" for t in TYPES for p in "BI")
NONE_ANSWER = "Nessuna menzione"
TAG_RE = re.compile(r"\[\s*(PER|LOC|ORG)\s*\]", re.IGNORECASE)
EDGE_PUNCT = " \t\n\"'“”«».:!?()"

# get-results.py normalization
PREFIX_RE = re.compile(r"[A-Z]-")
PIPE_RE = re.compile(r"\|.*")


def official_label(label: str) -> str:
    return PIPE_RE.sub("", PREFIX_RE.sub("", label.upper().strip()))


def read_sentences(path: Path, *, labelled_only: bool) -> list[tuple[int, list[str], list[str] | None]]:
    """[(first line, tokens, labels or None)] of a token<TAB>label file."""
    sentences, tokens, labels, start, has_labels = [], [], [], 0, None
    require_file(path)
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise LlamantinoError(f"{path}: unreadable ({exc.strerror})") from None
    with handle:
        try:
            lines = handle.read().splitlines()
        except UnicodeDecodeError as exc:
            raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines + [""], start=1):
        if not line.strip():
            if tokens:
                sentences.append((start, tokens, labels if has_labels else None))
            tokens, labels = [], []
            continue
        parts = line.strip().split("\t")
        labelled = len(parts) == 2
        if len(parts) > 2 or (labelled_only and not labelled):
            raise LlamantinoError(f"{path}:{number}: expected token<TAB>label, found {len(parts)} field(s)")
        if has_labels is None:
            has_labels = labelled
        elif has_labels != labelled:
            raise LlamantinoError(f"{path}:{number}: line has {len(parts)} field(s) but earlier lines have "
                                  f"{2 if has_labels else 1}")
        if not tokens:
            start = number
        tokens.append(parts[0])
        if labelled:
            labels.append(parts[1].strip())
    if not sentences:
        raise LlamantinoError(f"{path}: no sentences")
    return sentences


def entities(labels) -> list[tuple[str, int, int]]:
    """IOB labels -> [(type, start, end)]; an I- that does not continue its type starts an entity."""
    spans = []
    for i, label in enumerate(labels):
        if label == "O":
            continue
        prefix, kind = label.split("-", 1)
        if prefix == "I" and spans and spans[-1][0] == kind and spans[-1][2] == i:
            spans[-1][2] = i + 1
        else:
            spans.append([kind, i, i + 1])
    return [tuple(s) for s in spans]


def find_tokens(tokens: list[str], mention: str, start: int):
    """Token span [i, j) whose concatenation equals the mention with spaces removed
    (ignoring case); searched from `start`, then from the beginning. None when absent."""
    key = re.sub(r"\s+", "", mention).casefold()
    if not key:
        return None
    folded = [t.casefold() for t in tokens]
    for origin in (start, 0):
        for i in range(origin, len(tokens)):
            joined = ""
            for j in range(i, len(tokens)):
                joined += folded[j]
                if joined == key:
                    return i, j + 1
                if not key.startswith(joined):
                    break
    return None


class NERMuD(Task):
    name = "nermud"
    official = "NERMuD (named entities: PER, LOC, ORG)"
    labels = LABELS
    primary_metric = "micro_f1"

    def read(self, paths) -> list[Item]:
        items = []
        instruction = evalita_instruction(self.name)
        for path in map(Path, paths):
            for line, tokens, labels in read_sentences(path, labelled_only=False):
                if labels is not None:
                    for offset, label in enumerate(labels):
                        if label not in LABELS:
                            raise LlamantinoError(f"{path}:{line + offset}: label {label!r} is not one of "
                                                  f"{', '.join(LABELS)}")
                item = Item(id=str(len(items) + 1), task=self.name, instruction=instruction,
                            input=" ".join(tokens), output="",
                            gold=None if labels is None else tuple(labels),
                            meta={"file": path.name, "line": line, "tokens": tokens})
                if labels is not None:
                    item.output = self.target(item.gold, item)
                items.append(item)
        return items

    def target(self, label, item=None) -> str:
        if item is None:
            raise LlamantinoError(f"{self.name}: the target needs the item's tokens")
        tokens = item.meta["tokens"]
        spans = entities(label)
        if not spans:
            return NONE_ANSWER
        return " ".join(f"[{kind}] {' '.join(tokens[a:b])}" for kind, a, b in spans)

    def decode(self, answer, item=None):
        """Mentions -> one IOB2 label per token of the item; None only without the item."""
        if item is None:
            return None
        tokens = item.meta["tokens"]
        labels = ["O"] * len(tokens)
        parts = TAG_RE.split(str(answer))
        cursor = 0
        # parts: [before, TYPE, mention, TYPE, mention, ...]
        for kind, mention in zip(parts[1::2], parts[2::2]):
            mention = mention.strip().rstrip(",;").strip()
            # Punctuation closing the answer ("[LOC] Trento.") is not part of the mention,
            # unless only the full text matches a token ("S.p.A.").
            span = find_tokens(tokens, mention.strip(EDGE_PUNCT), cursor)
            if span is None:
                span = find_tokens(tokens, mention, cursor)
            if span is None or any(labels[i] != "O" for i in range(*span)):
                continue
            a, b = span
            labels[a] = f"B-{kind.upper()}"
            for i in range(a + 1, b):
                labels[i] = f"I-{kind.upper()}"
            cursor = b
        return tuple(labels)

    def read_predictions(self, path) -> dict:
        path = Path(path)
        pred = {}
        for number, (line, _tokens, labels) in enumerate(read_sentences(path, labelled_only=True), start=1):
            for offset, label in enumerate(labels):
                if official_label(label) not in ("O",) + TYPES:
                    raise LlamantinoError(f"{path}:{line + offset}: label {label!r} is not O or "
                                          "a PER, LOC, ORG label")
            pred[str(number)] = tuple(labels)
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        with atomic_open(path) as handle:
            for item, labels in zip(items, predictions):
                tokens = item.meta["tokens"]
                labels = ("O",) * len(tokens) if labels is None else labels
                if len(labels) != len(tokens):
                    raise LlamantinoError(f"{self.name}: sentence {item.id} has {len(tokens)} tokens but "
                                          f"{len(labels)} predicted labels")
                for token, label in zip(tokens, labels):
                    handle.write(f"{token}\t{label}\n")
                handle.write("\n")

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        g, p = [], []
        for key, gold_labels in gold.items():
            # An answer that could not be decoded predicts no entity.
            pred_labels = pred[key] if pred[key] is not None else ("O",) * len(gold_labels)
            if len(pred_labels) != len(gold_labels):
                raise LlamantinoError(f"{self.name}: sentence {key} has {len(gold_labels)} gold tokens but "
                                      f"{len(pred_labels)} predicted labels")
            g.extend(official_label(x) for x in gold_labels)
            p.extend(official_label(x) for x in pred_labels)
        table = metrics.per_class(g, p, TYPES)
        out = {}
        for kind in TYPES:
            for key in ("precision", "recall", "f1", "support"):
                out[f"{kind}_{key}"] = table[kind][key]
        out["micro_precision"], out["micro_recall"], out["micro_f1"] = metrics.micro_prf(g, p, TYPES)
        total = sum(table[k]["support"] for k in TYPES)
        for key in ("precision", "recall", "f1"):
            out[f"macro_{key}"] = sum(table[k][key] for k in TYPES) / len(TYPES)
            out[f"weighted_{key}"] = (sum(table[k][key] * table[k]["support"] for k in TYPES) / total
                                      if total else 0.0)
        return out


TASKS = {"nermud": NERMuD()}
