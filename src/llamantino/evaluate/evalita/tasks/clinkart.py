"""CLinkaRT: link laboratory tests and measurements (EVENT) to their results (RML).

Released file (`training.txt`) is PubTator-like, one document per block, blocks separated
by a blank line:

    <docid>|t|<text>
    <docid><TAB>REL<TAB><rmlStart>-<rmlEnd><TAB><eventStart>-<eventEnd>[<TAB>RML text<TAB>EVENT text]

Offsets are character offsets into the text, read as start-inclusive and end-exclusive
(as Python slices); where the span texts are given they must match the slices. The
submission is the same file with the predicted REL lines. A relation is the ordered pair
(RML span, EVENT span); the gold of a document is the set of its relations.

Metric: precision, recall and F1 over all relations of all documents (micro), a relation
counting when both spans match exactly. Official scorer: not published, so this could
not be checked: whether overlapping spans earn credit, and whether end offsets are
exclusive, are not known (exact match may be stricter than the official figure).
Documents are matched by docid: a gold document missing from the predictions, or an
extra one, is refused; a document without REL lines predicts no relation; a predicted
relation repeated in a document counts once.

Answer: `[BREL] <result> [SEP] <test> [EREL]` per relation, in order of result offset, or
`[NOREL]`. Decoding finds the strings again in the text (ignoring case and spacing): each
result at or after the previous one, paired with the nearest mention of its test. Strings
not in the text are dropped; an answer with neither markers nor "no relation" is None.
"""

from __future__ import annotations

import re
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import Item, Task, check_alignment, require_file

TITLE = re.compile(r"^([^|\t]+)\|t\|(.*)$")
SPAN = re.compile(r"^(\d+)-(\d+)$")
BREL = re.compile(r"\[\s*brel\s*\]", re.I)
SEP = re.compile(r"\[\s*sep\s*\]", re.I)
EREL = re.compile(r"\[\s*erel\s*\]", re.I)
NOREL = re.compile(r"\[\s*norel\s*\]|\bnorel\b|nessuna relazione|non ci sono relazioni", re.I)
QUOTES = " \t\n'\"«»`“”"


def read_pubtator(path) -> list[tuple[str, str, frozenset, int]]:
    """[(docid, text, relations, line of the title)] from a PubTator-like file."""
    path = require_file(path)
    docs: list[list] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise LlamantinoError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    current = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            current = None
            continue
        title = TITLE.match(line)
        if title:
            current = [title.group(1).strip(), title.group(2), set(), number]
            docs.append(current)
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] != "REL":
            raise LlamantinoError(f"{path}:{number}: expected '<docid>|t|<text>' or a REL line, got {line[:60]!r}")
        if len(fields) not in (4, 6):
            raise LlamantinoError(f"{path}:{number}: a REL line has 4 or 6 tab-separated fields, got {len(fields)}")
        if current is None or fields[0].strip() != current[0]:
            raise LlamantinoError(f"{path}:{number}: REL line for document '{fields[0]}' does not follow "
                                  f"that document's '|t|' line")
        text = current[1]
        spans = []
        for name, raw, shown in (("RML", fields[2], fields[4] if len(fields) == 6 else None),
                                 ("EVENT", fields[3], fields[5] if len(fields) == 6 else None)):
            match = SPAN.match(raw.strip())
            if not match:
                raise LlamantinoError(f"{path}:{number}: {name} offsets {raw!r} are not 'start-end'")
            start, end = int(match.group(1)), int(match.group(2))
            if not start < end <= len(text):
                raise LlamantinoError(f"{path}:{number}: {name} span {start}-{end} is outside the "
                                      f"{len(text)}-character text")
            if shown is not None and text[start:end] != shown:
                raise LlamantinoError(f"{path}:{number}: {name} text {shown!r} is not text[{start}:{end}] "
                                      f"{text[start:end]!r} (end offsets are read as exclusive)")
            spans.append((start, end))
        current[2].add(tuple(spans))
    seen = {}
    for docid, _, _, number in docs:
        if docid in seen:
            raise LlamantinoError(f"{path}:{number}: document '{docid}' appears twice (first at line {seen[docid]})")
        seen[docid] = number
    return [(d, t, frozenset(r), n) for d, t, r, n in docs]


def _occurrences(needle: str, text: str) -> list[tuple[int, int]]:
    """Spans of `needle` in `text`, ignoring case and differences in whitespace."""
    words = needle.split()
    if not words:
        return []
    pattern = r"\s+".join(map(re.escape, words))
    return [(m.start(), m.end()) for m in re.finditer(pattern, text, re.I)]


def _find(needle: str, text: str) -> list[tuple[int, int]]:
    needle = needle.strip(QUOTES)
    found = _occurrences(needle, text)
    if not found and needle.rstrip(".,;:") != needle:  # a sentence's full stop caught in the answer
        found = _occurrences(needle.rstrip(".,;:"), text)
    return found


def _gap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, b[0] - a[1], a[0] - b[1])


class Clinkart(Task):
    name = "clinkart"
    official = "CLinkaRT (test-result relations in clinical text)"
    primary_metric = "f1"

    def read(self, paths) -> list[Item]:
        items, seen = [], {}
        for path in map(Path, paths):
            for docid, text, relations, number in read_pubtator(path):
                if docid in seen:
                    raise LlamantinoError(f"{path}:{number}: document '{docid}' also in {seen[docid]}")
                seen[docid] = path
                item = Item(id=docid, task=self.name, instruction=evalita_instruction(self.name),
                            input=text, output="", gold=relations)
                item.output = self.target(relations, item)
                items.append(item)
        return items

    def target(self, label, item=None) -> str:
        if not label:
            return "[NOREL]"
        if item is None:
            raise LlamantinoError("clinkart: writing an answer needs the item's text")
        text = item.input
        return " ".join(f"[BREL] {text[r[0]:r[1]]} [SEP] {text[e[0]:e[1]]} [EREL]" for r, e in sorted(label))

    def decode(self, answer, item=None):
        answer = str(answer)
        parts = BREL.split(answer)[1:]
        if not parts:
            return frozenset() if NOREL.search(answer) else None
        if item is None:
            return None
        text = item.input
        relations: set = set()
        cursor = 0
        for part in parts:
            part = EREL.split(part)[0]
            pieces = SEP.split(part, maxsplit=1)
            if len(pieces) != 2:
                continue
            results, tests = _find(pieces[0], text), _find(pieces[1], text)
            if not results or not tests:
                continue
            # Relations come in order of result offset: look for this result at or after the
            # last one, then take the closest (result, test) pair not decoded yet.
            candidates = [r for r in results if r[0] >= cursor] or results
            pairs = sorted(((_gap(r, t), r, t) for r in candidates for t in tests))
            chosen = next(((r, t) for _, r, t in pairs if (r, t) not in relations), pairs[0][1:])
            relations.add(chosen)
            cursor = chosen[0][0]
        return frozenset(relations)

    # --- official files ------------------------------------------------------------
    def read_predictions(self, path) -> dict:
        return {docid: relations for docid, _, relations, _ in read_pubtator(path)}

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        blocks = []
        for item, relations in zip(items, predictions):
            text = item.input
            lines = [f"{item.id}|t|{text}"]
            for r, e in sorted(relations or ()):
                lines.append("\t".join([item.id, "REL", f"{r[0]}-{r[1]}", f"{e[0]}-{e[1]}",
                                        text[r[0]:r[1]], text[e[0]:e[1]]]))
            blocks.append("\n".join(lines))
        with atomic_open(path) as handle:
            handle.write("\n\n".join(blocks) + "\n")

    def score(self, gold: dict, pred: dict) -> dict:
        # Exact span match: whether the official scorer also credits overlapping spans is
        # not known, so this may be stricter than the official figure.
        check_alignment(gold, pred, self.name)
        tp = fp = fn = 0
        for docid, relations in gold.items():
            predicted = pred[docid] or frozenset()
            tp += len(relations & predicted)
            fp += len(predicted - relations)
            fn += len(relations - predicted)
        p, r, f = metrics.prf(tp, fp, fn)
        return {"precision": p, "recall": r, "f1": f, "gold_relations": tp + fn, "predicted_relations": tp + fp}


TASKS = {"clinkart": Clinkart()}
