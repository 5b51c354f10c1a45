"""EVALITA 2023 HODI (homotransphobia: subtask A a yes/no, subtask B the rationale words):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.base import Item
from llamantino.evaluate.evalita.tasks.hodi import Rationales, post_f1

from helpers.evalita import item_by_id, read_file, read_items, score_files, write

# Agreement with the organisers' scorer (how it is checked: helpers.evalita.score_files):
# HODI: HODI-EVALITA/HODI_2023 compute_metrics.py + evaluation_utils.py at
#   e087e2ed28c31b094ccf03efde2a23b54a05cc7d, with its requirements.txt pins (pandas 2.0.3,
#   scikit-learn 1.2.2, numpy 1.24.4, scipy 1.10.1): `python compute_metrics.py --submission_path
#   team.zip --gold_path_raw gold.tsv --task a|b`, the run files zipped.


def test_hodi_b_targets_are_the_rationale_words():
    items = read_items("hodi-b", "train")
    first = item_by_id(items, "1001")
    assert first.input == "@user quelli come lui sono malati e vanno curati"
    assert first.gold == tuple(range(27, 33)) + tuple(range(36, 48))
    assert first.output == "malati [SEP] vanno curati"
    assert item_by_id(items, "1002").output == "Non omotransfobico"     # [] in the file
    # the same posts, labelled in subtask A
    a = {it.id: it.gold for it in read_items("hodi-a", "train")}
    assert all(a[it.id] == (1 if it.gold else 0) for it in items)
    # an empty gold cell (test file) and `[]` (train file) are told apart
    test = read_items("hodi-b", "test")
    assert item_by_id(test, "2002").gold.empty_cell
    assert not item_by_id(items, "1002").gold.empty_cell


def test_hodi_b_decoder_tolerance():
    task = get_task("hodi-b")
    item = item_by_id(read_items("hodi-b", "train"), "1001")   # "... sono malati e vanno curati"
    malati, curati = set(range(27, 33)), set(range(36, 48))
    assert set(task.decode("MALATI [sep] vanno curati.", item)) == malati | curati     # case, punctuation
    assert set(task.decode("vanno curati [SEP] malati", item)) == malati | curati      # any order
    assert set(task.decode("«malati» [SEP] parole inventate", item)) == malati         # quotes; unknown piece dropped
    assert task.decode("Non omotransfobico.", item) == ()
    assert task.decode("non omotransfobico", item) == ()
    assert task.decode("risposta senza senso", item) == ()                            # nothing found
    assert task.decode("", item) == ()
    assert task.decode("malati", None) is None                                        # needs the post
    # a repeated word: pieces are matched in order, from where the previous one ended
    repeated = Item(id="x", task="hodi-b", instruction="", input="malato e ancora malato", output="")
    assert task.decode("malato [SEP] malato", repeated) == tuple(range(0, 6)) + tuple(range(16, 22))
    assert task.target(Rationales([0, 1, 2, 3, 4, 5, 16, 17, 18, 19, 20, 21]), repeated) == "malato [SEP] malato"


def test_hodi_b_metric_with_the_official_empty_cases():
    # the official doctest: f1([0, 1, 4, 5], [0, 1, 6]) = 2*2 / (4+3) = 4/7
    assert post_f1([0, 1, 4, 5], Rationales([0, 1, 6])) == pytest.approx(0.5714285714285714)
    empty_cell, empty_list = Rationales(empty_cell=True), Rationales([])
    assert post_f1(Rationales(), empty_cell) == 1.0        # empty gold cell, nothing predicted
    assert post_f1(Rationales([3]), empty_cell) == 0.0     # empty gold cell, something predicted
    assert post_f1(Rationales(), empty_list) == 0.0        # quirk: a gold cell reading [] is not empty
    assert post_f1(Rationales([3]), empty_list) == 0.0     # ... and shares no offset with anything
    assert post_f1(Rationales(), Rationales([1, 2])) == 0.0
    assert post_f1(None, empty_cell) == 0.0                # undecodable answer
    task = get_task("hodi-b")
    gold = {"a": Rationales([0, 1, 6]), "b": empty_cell, "c": empty_list, "d": Rationales([5, 6])}
    pred = {"a": Rationales([0, 1, 4, 5]), "b": Rationales(), "c": Rationales(), "d": Rationales([5, 6, 7, 8])}
    # a: 4/7; b: 1; c: 0 (quirk); d: 2*2/(4+2) = 2/3 -> mean (4/7 + 1 + 0 + 2/3) / 4 = 47/84
    assert task.score(gold, pred)["f1"] == pytest.approx((4 / 7 + 1 + 0 + 2 / 3) / 4)
    assert task.score(gold, pred)["f1"] == pytest.approx(47 / 84)


def test_hodi_b_reads_the_quirky_gold_from_files(tmp_path):
    task = get_task("hodi-b")
    gold_path = write(tmp_path / "gold.tsv", "id\ttext\trationales\n1\tciao\t\n2\tciao\t[]\n")
    gold = task.read_gold([gold_path])
    pred_path = tmp_path / "team.B.run1"
    items = task.read([gold_path])
    task.write_predictions(items, [Rationales(), Rationales()], pred_path)
    assert pred_path.read_text() == "id\trationales\n1\t[]\n2\t[]\n"
    # post 1 (empty cell): 1; post 2 ([] cell): 0 -> 1/2
    assert task.score(gold, task.read_predictions(pred_path)) == {"f1": 0.5}


def test_hodi_a_metric_by_hand_and_gold_values_check():
    task = get_task("hodi-a")
    gold = {"1": 1, "2": 0, "3": 0}
    pred = {"1": 1, "2": 1, "3": 0}
    # class 1: tp=1, fp=1, fn=0 -> P=1/2, R=1, F1=2/3; class 0: tp=1, fp=0, fn=1 -> P=1, R=1/2, F1=2/3
    result = task.score(gold, pred)
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["f1_0"] == pytest.approx(2 / 3) and result["f1_1"] == pytest.approx(2 / 3)
    with pytest.raises(LlamantinoError, match=r"predicted value\(s\) \[1\] do not occur in the gold"):
        task.score({"1": 0, "2": 0}, {"1": 1, "2": 0})


def test_hodi_submission_formats(tmp_path):
    items = read_items("hodi-b", "test")[:3]
    path = tmp_path / "team.B.run1"
    get_task("hodi-b").write_predictions(items, [Rationales([7, 8, 9]), Rationales(), None], path)
    assert path.read_text() == "id\trationales\n2001\t[7, 8, 9]\n2002\t[]\n2003\t\n"
    assert get_task("hodi-b").read_predictions(path) == {"2001": (7, 8, 9), "2002": (), "2003": None}
    path = tmp_path / "team.A.run1"
    get_task("hodi-a").write_predictions(read_items("hodi-a", "test")[:2], [1, 0], path)
    assert path.read_text() == "id\thomotransphobic\n2001\t1\n2002\t0\n"


BAD_FILES = [  # (task, reader, file, text, the error)
    ("hodi-b", "read", "b.tsv", "id\ttext\trationales\n1\tciao\t[1, x]\n",
     r"b.tsv:2: column 'rationales' has '\[1, x\]'"),
    ("hodi-b", "read", "far.tsv", "id\ttext\trationales\n1\tciao\t[2, 9]\n",
     r"far.tsv:2: .*index 9 but the text has 4 characters"),
    ("hodi-a", "read", "a.tsv", "id\ttext\thomotransphobic\n1\tciao\t0\n2\tciao\tyes\n",
     r"a.tsv:3: column 'homotransphobic' has 'yes'"),
    ("hodi-a", "read", "c.tsv", "id\ttesto\thomotransphobic\n1\tciao\t0\n", r"c.tsv: missing column 'text'"),
    ("hodi-a", "read", "d.tsv", "id\ttext\thomotransphobic\n1\tciao\t0\n1\tciao\t1\n",
     r"d.tsv:3: id '1' appears twice"),
]


@pytest.mark.parametrize("name, method, file, text, error", BAD_FILES)
def test_hodi_bad_files_are_refused(name, method, file, text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file(name, method, tmp_path / file, text)


HODI_GOLD = ("id\ttext\thomotransphobic\trationales\n1\tciao a tutti\t1\t[0, 1, 6]\n2\tciao\t0\t\n"
             "3\tciao\t0\t[]\n4\tciao a voi\t1\t[5, 6]\n5\tsalve\t0\t\n")


def test_hodi_a_agrees_with_the_official_scorer(tmp_path):
    task = get_task("hodi-a")
    gold_path = write(tmp_path / "gold.tsv", HODI_GOLD)
    # rows in another order: the official scorer joins on id, so does this one
    pred_path = write(tmp_path / "team.A.run1", "id\thomotransphobic\n5\t0\n4\t1\n3\t1\n2\t0\n1\t0\n")
    # class 1: gold {1, 4}, predicted {4, 3}: F1 1/2; class 0: gold {2, 3, 5}, predicted
    # {5, 2, 1}: F1 2/3 -> 7/12. The official scorer prints "run1 0.5833333333333333".
    result = score_files(task, gold_path, pred_path)
    assert result["macro_f1"] == pytest.approx(7 / 12)
    assert result["macro_f1"] == pytest.approx(0.5833333333333333, rel=1e-12)
    # a gold with one class: the macro average runs over the classes present, as sklearn's;
    # the official scorer prints "run2 1.0"
    one_class = write(tmp_path / "one.tsv", "id\ttext\thomotransphobic\n1\tuno\t0\n2\tdue\t0\n")
    all_zero = write(tmp_path / "team.A.run2", "id\thomotransphobic\n1\t0\n2\t0\n")
    assert score_files(task, one_class, all_zero)["macro_f1"] == 1.0
    # a predicted value the gold never has is refused, as by the official scorer
    with pytest.raises(LlamantinoError, match=r"predicted value\(s\) \[1\] do not occur in the gold"):
        task.score(task.read_gold([one_class]), {"1": 1, "2": 0})
    # differences on purpose: an id given twice in place of a missing one passes the
    # official checks (same row count, same join size: the official scorer prints
    # 0.7619047619047619 for this file); here it is refused
    with pytest.raises(LlamantinoError, match=r"team.A.run3:6: id '2' appears twice"):
        task.read_predictions(write(tmp_path / "team.A.run3", "id\thomotransphobic\n5\t0\n4\t1\n3\t1\n2\t0\n2\t0\n"))
    # ... and an empty cell, which makes the official scorer refuse the file ("Exception: error
    # in raw prediction file format."), is a wrong answer
    empty = task.read_predictions(write(tmp_path / "team.A.run4", "id\thomotransphobic\n5\t0\n4\t\n3\t1\n2\t0\n1\t0\n"))
    # class 1: gold {1, 4}, predicted {3}: 0; class 0: gold {2, 3, 5}, predicted {5, 2, 1}: 2/3 -> 1/3
    assert task.score(task.read_gold([gold_path]), empty)["macro_f1"] == pytest.approx(1 / 3)


def test_hodi_b_agrees_with_the_official_scorer(tmp_path):
    task = get_task("hodi-b")
    gold_path = write(tmp_path / "gold.tsv", HODI_GOLD)
    pred_path = write(tmp_path / "team.B.run1", "id\trationales\n1\t[0, 1, 4, 5]\n2\t[]\n3\t[]\n4\t[5, 6, 7, 8]\n"
                                                "5\t[2]\n")
    # 1: 2*2/(4+3) = 4/7; 2: empty gold cell, nothing predicted: 1; 3: gold cell "[]" (not
    # empty text): 0 whatever is predicted; 4: 2*2/(4+2) = 2/3; 5: empty gold cell, something
    # predicted: 0 -> (4/7 + 1 + 0 + 2/3 + 0) / 5 = 47/105. The official scorer prints
    # "run1 0.44761904761904764".
    result = score_files(task, gold_path, pred_path)
    assert result["f1"] == pytest.approx(47 / 105)
    assert result["f1"] == pytest.approx(0.44761904761904764, rel=1e-12)
