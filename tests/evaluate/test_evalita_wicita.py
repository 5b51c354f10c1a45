"""EVALITA 2023 WiC-ITA (is a word used with the same meaning in two sentences):
what this task does that the others do not."""

import json

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task

from helpers.evalita import TABLE_1, item_by_id, read_items, write

# Agreement with the organisers' scorer (how it is checked: helpers.evalita.score_files):
# WiC-ITA: wic-ita/data evaluation.py at 3a9ba283a905ca878c41f4349ebc15541946dc60, with
#   scikit-learn 1.2.2: `python evaluation.py --gt_bin_path binary --gt_rank_path ranking
#   --submission sub.zip` (the gold as binary/test.jsonl; the zip holds binary.jsonl).


def test_wic_items_mark_the_targets_and_name_the_lemma():
    items = read_items("wic-ita", "train")
    bomba = item_by_id(items, "bomba.noun.2")
    assert bomba.instruction == TABLE_1["wic-ita"].replace("'affare'", "'bomba'")
    assert bomba.input == ("Durante la guerra una **bomba** colpì la stazione . [SEP] "
                           "Presentava ferite da schegge di **bombe** .")
    assert (bomba.gold, bomba.output) == (1, "si")


def test_wic_metric_by_hand():
    task = get_task("wic-ita")
    gold = {"a": 1, "b": 0, "c": 1, "d": 0}
    pred = {"a": 1, "b": 1, "c": None, "d": 0}
    # class 1: tp=1, fp=1, fn=1 -> P=1/2, R=1/2, F1=1/2
    # class 0: tp=1, fp=0, fn=1 -> P=1, R=1/2, F1=2/3; mean F1 = (1/2 + 2/3) / 2 = 7/12
    r = task.score(gold, pred)
    assert (r["precision_1"], r["recall_1"], r["f1_1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (r["precision_0"], r["recall_0"], r["f1_0"]) == pytest.approx((1, 0.5, 2 / 3))
    assert r["macro_f1"] == pytest.approx(7 / 12)
    with pytest.raises(LlamantinoError, match="1 gold id"):
        task.score(gold, {k: v for k, v in pred.items() if k != "d"})


def test_wic_submission_format(tmp_path):
    task = get_task("wic-ita")
    items = read_items("wic-ita", "test")[:3]
    path = tmp_path / "binary.jsonl"
    task.write_predictions(items, [0, 1, None], path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"id": "regina.noun.0", "label": 0}, {"id": "regina.noun.1", "label": 1}, {"id": "tempo.noun.2", "label": None}]
    assert task.read_predictions(path) == {"regina.noun.0": 0, "regina.noun.1": 1, "tempo.noun.2": None}


def test_wic_bad_inputs(tmp_path):
    task = get_task("wic-ita")
    good = {"id": "x.noun.1", "lemma": "x", "sentence1": "un x qui .", "sentence2": "x la .",
            "start1": 3, "end1": 4, "start2": 0, "end2": 1, "label": 1}
    ok = task.read([write(tmp_path / "ok.jsonl", json.dumps(good) + "\n")])
    assert ok[0].input == "un **x** qui . [SEP] **x** la ."
    no_start = {k: v for k, v in good.items() if k != "start2"}
    with pytest.raises(LlamantinoError, match=r"a.jsonl:1: missing field 'start2'"):
        task.read([write(tmp_path / "a.jsonl", json.dumps(no_start) + "\n")])
    with pytest.raises(LlamantinoError, match=r"b.jsonl:2: field 'label' has 2"):
        lines = json.dumps(good) + "\n" + json.dumps({**good, "id": "y", "label": 2}) + "\n"
        task.read([write(tmp_path / "b.jsonl", lines)])
    with pytest.raises(LlamantinoError, match=r"c.jsonl:1: fields 'start1'/'end1' \(3, 40\)"):
        task.read([write(tmp_path / "c.jsonl", json.dumps({**good, "end1": 40}) + "\n")])
    with pytest.raises(LlamantinoError, match=r"d.jsonl:1: missing field 'label'"):
        task.read_predictions(write(tmp_path / "d.jsonl", '{"id": "x"}\n'))


def test_wic_agrees_with_evaluation_py(tmp_path):
    task = get_task("wic-ita")
    good = {"lemma": "x", "sentence1": "un x qui .", "sentence2": "x la .", "start1": 3, "end1": 4,
            "start2": 0, "end2": 1}
    gold_path = write(tmp_path / "test.jsonl", "".join(json.dumps({**good, "id": f"g{i}", "label": label}) + "\n"
                                                       for i, label in enumerate([1, 1, 1, 0, 0, 0], start=1)))

    def preds(name, pairs):
        return write(tmp_path / name, "".join(json.dumps({"id": i, "label": label}) + "\n" for i, label in pairs))

    # in another order than the gold (looked up by id); g2 answered 2, outside the labels
    outside = preds("outside.jsonl", [("g6", 0), ("g1", 1), ("g2", 2), ("g3", 1), ("g4", 1), ("g5", 0)])
    # class 1: tp 2 (g1, g3), fp 1 (g4), fn 1 (g2): 2/3; class 0: tp 2 (g5, g6), fn 1 (g4):
    # P 1 R 2/3 F1 4/5 -> (2/3 + 4/5) / 2 = 11/15. evaluation.py writes class 0 f1 0.8, class 1
    # f1 0.6666666666666666 and "weighted" f1 0.7333333333333334 for this file.
    # a label outside 0/1 is refused here, naming the line ...
    with pytest.raises(LlamantinoError, match=r"outside.jsonl:3: field 'label' has 2"):
        task.read_predictions(outside)
    # ... while an answer that could not be decoded (null) scores as evaluation.py scores the 2
    null = preds("binary.jsonl", [("g6", 0), ("g1", 1), ("g2", None), ("g3", 1), ("g4", 1), ("g5", 0)])
    gold = task.read_gold([gold_path])
    result = task.score(gold, task.read_predictions(null))
    assert (result["f1_0"], result["f1_1"], result["macro_f1"]) == \
        pytest.approx((0.8, 0.6666666666666666, 0.7333333333333334), rel=1e-12)
    assert result["macro_f1"] == pytest.approx(11 / 15)
    # an id the gold lacks is ignored by evaluation.py (it writes f1 0.6666666666666666 for
    # this file: each class tp 2 fp 1 fn 1, as the same file without "zz" scores here); here
    # it is refused
    extra = preds("extra.jsonl", [("g6", 0), ("g1", 1), ("g2", 0), ("g3", 1), ("g4", 1), ("g5", 0), ("zz", 1)])
    without = {k: v for k, v in task.read_predictions(extra).items() if k != "zz"}
    assert task.score(gold, without)["macro_f1"] == pytest.approx(0.6666666666666666, rel=1e-12)
    with pytest.raises(LlamantinoError, match=r"1 prediction id\(s\) are not in the gold \(e.g. zz\)"):
        task.score(gold, task.read_predictions(extra))
