"""LangLearn (Language Learning Development): which of two essays by the same student came first.

Two corpora, each released as a pair file and an essay file:
  Training_CItA.tsv / Train_COWS-L2H.tsv / Test_*.tsv  header Essay_1, Essay_2, Order_1, Order_2
  Essays_CItA.xml / Essays_COWS-L2H.xml / Essays_Test_*.xml  <dataset><doc id="4705">text</doc>...
Order codes tell the corpus: CItA uses `year_n` (1_4 = fourth essay of the first year),
COWS-L2H uses term + year (F17; terms W, S, SU, F in that order within a year). Each pair
file is matched with the essay file of its corpus (and of its split, when train and test
essay files are both given), by the corpus name in the file names; one pair file with one
essay file needs no names.

Item input: `essay1 [SEP] essay2`, as the instruction's "Documento 1 [SEP] Documeto 2";
target `si` when document 1 was written before document 2, else `no`.

Gold: Order_1 and Order_2 are read as the times of Essay_1 and Essay_2, as in the training
files, so the answer is whether Order_1 comes before Order_2. Training pairs (pair files
whose name starts with "train") are all in chronological order, so each also gives the
swapped pair, answer `no`, so that both answers occur in training.

The blind test files the organisers released (Test_CItA.tsv, Test_COWS-L2H.tsv) have the
same header but another meaning: the essay ids come in random order while Order_1 and
Order_2 are the earlier and the later time of the pair, so Order_1 comes first on every
row and says nothing about which essay is the earlier one. Such a file is read as
unlabelled items (ready for predictions) and refused as gold: a pair file that is not a
training file and has no row whose Order_1 is later than its Order_2 is taken to be in
that layout. A gold file must give each essay's own time, as the training files do; a
random order puts the later essay first on about half the rows, so a real gold file is
never mistaken for a blind one (a hand-made gold whose pairs are all listed earlier essay
first is: list at least one pair the other way round). The layout of the organisers' own
test gold was not published.

Submission: the test pair file with a `Pred` column added: 0 means Essay_1 was written
first, 1 means Essay_2 was, so Pred = 0 for `si` and 1 for `no`. Rows of both corpora may
share one file: each row's order codes tell its corpus. Rows are matched with the gold by
corpus and essay ids, not by line; missing, extra or repeated pairs are refused. An empty
Pred cell is an answer that could not be decoded, scored wrong; any value other than
0 and 1 is refused.

Metric: macro-F1 over the two answers, per corpus; the ranking uses the mean of the
corpora's macro-F1 (sites.google.com/view/langlearn2023). No official scorer was
published, so none of this could be checked against one.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_open
from llamantino.data.prompts import evalita_instruction
from llamantino.evaluate.evalita import metrics
from llamantino.evaluate.evalita.base import (Item, YesNoTask, check_alignment, check_unique, parse_label, read_table,
                                              require_columns, require_file, require_gold)

CORPORA = ("CItA", "COWS-L2H")
COLUMNS = ["Essay_1", "Essay_2", "Order_1", "Order_2"]
CITA_RE = re.compile(r"^(\d+)_(\d+)$")
COWS_RE = re.compile(r"^(SU|W|S|F)(\d{2})$")
TERMS = {"W": 0, "S": 1, "SU": 2, "F": 3}  # January-March, April-June, July-September, October-December


def order_time(code: str, path, line: int, column: str) -> tuple[str, tuple[int, int]]:
    """An order code -> (corpus, sortable time)."""
    code = code.strip()
    if m := CITA_RE.match(code):
        return "CItA", (int(m.group(1)), int(m.group(2)))
    if m := COWS_RE.match(code):
        return "COWS-L2H", (int(m.group(2)), TERMS[m.group(1)])
    raise LlamantinoError(f"{path}:{line}: column '{column}' has {code!r}; expected a CItA code "
                          "such as 1_4 or a COWS-L2H code such as F17")


def pair_corpus(fields, cols, path, line) -> tuple[str, tuple, tuple]:
    corpus1, time1 = order_time(fields[cols["Order_1"]], path, line, "Order_1")
    corpus2, time2 = order_time(fields[cols["Order_2"]], path, line, "Order_2")
    if corpus1 != corpus2:
        raise LlamantinoError(f"{path}:{line}: Order_1 and Order_2 belong to different corpora")
    return corpus1, time1, time2


def read_essays(path: Path) -> dict:
    require_file(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise LlamantinoError(f"{path}:{exc.position[0]}: malformed XML ({exc})") from None
    except OSError as exc:
        raise LlamantinoError(f"{path}: unreadable ({exc.strerror})") from None
    essays = {}
    for doc in root.iter("doc"):
        doc_id = (doc.get("id") or "").strip()
        if not doc_id:
            raise LlamantinoError(f"{path}: a <doc> element has no id")
        if doc_id in essays:
            raise LlamantinoError(f"{path}: doc id '{doc_id}' appears twice")
        essays[doc_id] = "".join(doc.itertext()).strip()
    return essays


def is_test(path: Path) -> bool:
    return "test" in path.name.lower()


def is_blind(path: Path, times: list[tuple]) -> bool:
    """A test pair file in the released blind layout: the earlier time first on every row."""
    if path.name.lower().startswith("train"):
        return False
    return bool(times) and all(time1 < time2 for time1, time2 in times)


def essay_file_for(pairs: Path, corpus: str, xmls: list[Path]) -> Path:
    """The essay file of a pair file: the only one, else the one of its corpus and split."""
    if len(xmls) == 1:
        return xmls[0]
    candidates = [x for x in xmls if corpus.lower() in x.name.lower()]
    if len(candidates) > 1:
        candidates = [x for x in candidates if is_test(x) == is_test(pairs)]
    if len(candidates) != 1:
        found = ", ".join(x.name for x in candidates) or "none"
        raise LlamantinoError(f"{pairs}: cannot tell which essay file holds its {corpus} essays "
                              f"(matching: {found}); name essay files after their corpus and split")
    return candidates[0]


class LangLearn(YesNoTask):
    name = "langlearn"
    official = "LangLearn (essay order)"
    # label 1: document 1 was written first
    primary_metric = "macro_f1"

    def read(self, paths) -> list[Item]:
        paths = [Path(p) for p in paths]
        tsvs = [p for p in paths if p.suffix.lower() == ".tsv"]
        xmls = [p for p in paths if p.suffix.lower() == ".xml"]
        others = [p for p in paths if p not in tsvs and p not in xmls]
        if others:
            raise LlamantinoError(f"{others[0]}: expected a pair file (.tsv) or an essay file (.xml)")
        if not tsvs or not xmls:
            raise LlamantinoError(f"{self.name}: needs pair files (.tsv) and essay files (.xml), got "
                                  f"{', '.join(map(str, paths)) or 'none'}")
        essays_cache = {}
        instruction = evalita_instruction(self.name)
        items, seen = [], set()
        for path in tsvs:
            header, rows = read_table(path, delimiter="\t")
            cols = require_columns(header, COLUMNS, path)
            training = path.name.lower().startswith("train")
            pairs = []
            for line, fields in rows:
                corpus, time1, time2 = pair_corpus(fields, cols, path, line)
                if time1 == time2:
                    raise LlamantinoError(f"{path}:{line}: Order_1 and Order_2 are the same time; "
                                          "the pair has no order")
                pairs.append((line, fields, corpus, time1, time2))
            blind = is_blind(path, [(t1, t2) for _, _, _, t1, t2 in pairs])
            for line, fields, corpus, time1, time2 in pairs:
                xml = essay_file_for(path, corpus, xmls)
                if xml not in essays_cache:
                    essays_cache[xml] = read_essays(xml)
                texts = []
                for column in ("Essay_1", "Essay_2"):
                    essay_id = fields[cols[column]].strip()
                    if essay_id not in essays_cache[xml]:
                        raise LlamantinoError(f"{path}:{line}: column '{column}' has essay id '{essay_id}', "
                                              f"which is not in {xml}")
                    texts.append(essays_cache[xml][essay_id])
                pair = {"corpus": corpus, "essay_1": fields[cols["Essay_1"]].strip(),
                        "essay_2": fields[cols["Essay_2"]].strip(), "order_1": fields[cols["Order_1"]].strip(),
                        "order_2": fields[cols["Order_2"]].strip()}
                variants = [(pair, texts, None if blind else 1 if time1 < time2 else 0)]
                if training:
                    swapped = {"corpus": corpus, "essay_1": pair["essay_2"], "essay_2": pair["essay_1"],
                               "order_1": pair["order_2"], "order_2": pair["order_1"]}
                    variants.append((swapped, texts[::-1], 0 if time1 < time2 else 1))
                for meta, (text1, text2), gold in variants:
                    item_id = f"{corpus}:{meta['essay_1']}-{meta['essay_2']}"
                    check_unique(seen, item_id, path, line)
                    items.append(Item(id=item_id, task=self.name, instruction=instruction,
                                      input=f"{text1} [SEP] {text2}",
                                      output="" if gold is None else self.target(gold),
                                      gold=gold, meta=dict(meta, pair_file=str(path), blind_layout=blind)))
        return items

    def read_gold(self, paths) -> dict:
        items = self.read(paths)
        blind = next((it.meta["pair_file"] for it in items if it.meta["blind_layout"]), None)
        if blind:
            raise LlamantinoError(f"{blind}: the released blind test layout (Order_1 is the earlier time on every "
                                  "row, whichever essay it belongs to), which holds no gold; give a gold file "
                                  "where Order_1 and Order_2 are the times of Essay_1 and Essay_2")
        return {it.id: it.gold for it in items}

    def read_predictions(self, path) -> dict:
        path = Path(path)
        header, rows = read_table(path, delimiter="\t")
        cols = require_columns(header, COLUMNS + ["Pred"], path)
        pred, seen = {}, set()
        for line, fields in rows:
            corpus, _, _ = pair_corpus(fields, cols, path, line)
            item_id = f"{corpus}:{fields[cols['Essay_1']].strip()}-{fields[cols['Essay_2']].strip()}"
            check_unique(seen, item_id, path, line)
            value = fields[cols["Pred"]].strip()
            # Pred 0: Essay_1 came first (answer si, label 1). An empty cell is an answer that
            # could not be decoded: scored wrong.
            pred[item_id] = None if value == "" else parse_label(value, {"0": 1, "1": 0}, path, line, "Pred")
        return pred

    def write_predictions(self, items, predictions, path) -> None:
        if len(items) != len(predictions):
            raise LlamantinoError(f"{self.name}: {len(items)} items but {len(predictions)} predictions")
        with atomic_open(path) as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(COLUMNS + ["Pred"])
            for item, label in zip(items, predictions):
                m = item.meta
                pred = "" if label is None else 1 - label
                writer.writerow([m["essay_1"], m["essay_2"], m["order_1"], m["order_2"], pred])

    def score(self, gold: dict, pred: dict) -> dict:
        check_alignment(gold, pred, self.name)
        require_gold(gold, self.name)
        by_corpus: dict[str, list[str]] = {}
        for key in gold:
            corpus = str(key).split(":", 1)[0]
            if corpus not in CORPORA:
                raise LlamantinoError(f"{self.name}: id '{key}' does not start with a corpus "
                                      f"({', '.join(CORPORA)})")
            by_corpus.setdefault(corpus, []).append(key)
        out = {}
        for corpus, keys in by_corpus.items():
            g, p = [gold[k] for k in keys], [pred[k] for k in keys]
            out[f"{corpus}_macro_f1"] = metrics.macro_f1(g, p, self.labels)
            out[f"{corpus}_accuracy"] = metrics.accuracy(g, p)
        out["macro_f1"] = sum(out[f"{c}_macro_f1"] for c in by_corpus) / len(by_corpus)
        return out


TASKS = {"langlearn": LangLearn()}
