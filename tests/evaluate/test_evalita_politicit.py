"""EVALITA 2023 PoliticIT (an author's gender and political leaning from their tweets):
what this task does that the others do not."""

import dataclasses

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files
from llamantino.evaluate.evalita.tasks.politicit import chunks, vote

from helpers.evalita import read_file, read_items, write


def test_politicit_items_are_chunks_of_clusters():
    items = read_items("politicit", "train")
    first = items[0]
    assert first.id.endswith("#1") and len(first.id.split("#")[0]) == 32
    assert first.input == ("Oggi in aula per difendere la sanità pubblica, un diritto di tutti @user\n"
                           "Servono più asili nido e congedi paritari: la parità parte da qui")
    assert first.gold == ("female", "left", "moderate_left")
    assert first.output == "donna sinistra centrosinistra"
    assert {it.output for it in items} >= {"uomo destra destra", "donna destra centrodestra", "uomo sinistra sinistra"}
    gold = get_task("politicit").read_gold(sample_files("politicit", "test"))
    assert len(gold) == 8 and all("#" not in k for k in gold)
    # chunks hold whole tweets, at most the limit, in order
    assert chunks(["a" * 5, "b" * 5, "c" * 5], limit=11) == ["aaaaa\nbbbbb", "ccccc"]
    assert chunks(["x" * 30], limit=11) == ["x" * 30]


def test_politicit_decoder_tolerance():
    task = get_task("politicit")
    assert task.decode("Donna, centro-sinistra.") == ("female", "left", "moderate_left")
    assert task.decode("UOMO destra destra") == ("male", "right", "right")
    assert task.decode("L'autore è un uomo di centrodestra") == ("male", "right", "moderate_right")
    assert task.decode("donna") == ("female", None, None)
    assert task.decode("sinistra") == (None, "left", "left")
    assert task.decode("non saprei") is None
    assert task.decode("") is None


def test_politicit_metric_by_hand_and_cluster_vote():
    task = get_task("politicit")
    gold = {"c1": ("female", "left", "moderate_left"), "c2": ("male", "right", "right"),
            "c3": ("male", "left", "left")}
    pred = {"c1": ("female", "left", "moderate_left"), "c2": ("female", "right", "right"), "c3": None}
    # gender: gold F M M, pred F F - ; female P=1/2 R=1 F1=2/3, male F1=0 -> 1/3
    # binary: gold L R L, pred L R - ; left P=1 R=1/2 F1=2/3, right F1=1 -> 5/6
    # multiclass: gold ml r l, pred ml r - ; ml 1, r 1, left 0 -> 2/3
    # mean = (1/3 + 5/6 + 2/3) / 3 = 11/18
    r = task.score(gold, pred)
    assert r["gender_macro_f1"] == pytest.approx(1 / 3)
    assert r["ideology_binary_macro_f1"] == pytest.approx(5 / 6)
    assert r["ideology_multiclass_macro_f1"] == pytest.approx(2 / 3)
    assert r["macro_f1"] == pytest.approx(11 / 18)
    # chunk-level mappings are voted into clusters, trait by trait, ties to the first seen
    assert vote([("female", "left", "moderate_left"), ("male", "right", "right"),
                 ("female", "left", "left"), None]) == ("female", "left", "moderate_left")
    assert vote([None, None]) is None
    chunk_gold = {f"{c}#{n}": g for c, g in gold.items() for n in (1, 2)}
    chunk_pred = {"c1#1": pred["c1"], "c1#2": None, "c2#1": pred["c2"], "c2#2": ("female", None, None),
                  "c3#1": None, "c3#2": None}
    assert task.score(chunk_gold, chunk_pred) == r


def test_politicit_submission_is_one_voted_row_per_cluster(tmp_path):
    task = get_task("politicit")
    items = read_items("politicit", "test")
    two = [items[0], dataclasses.replace(items[0], id=items[0].id[:-1] + "2"), items[1]]
    answers = ["donna sinistra centrosinistra", "uomo", "uomo destra destra"]
    path = tmp_path / "submission.csv"
    task.write_predictions(two, [task.decode(a) for a in answers], path)
    c1, c2 = items[0].meta["cluster"], items[1].meta["cluster"]
    assert path.read_text() == ("label,gender,ideology_binary,ideology_multiclass\n"
                                f"{c1},female,left,moderate_left\n{c2},male,right,right\n")
    assert task.read_predictions(path) == {c1: ("female", "left", "moderate_left"), c2: ("male", "right", "right")}


HEADER = "label,gender,ideology_binary,ideology_multiclass,tweet\n"
BAD_FILES = [  # (file, text, the error)
    ("g.csv", HEADER + "abc,other,left,left,ciao\n", r"g.csv:2: column 'gender' has 'other'"),
    ("m.csv", HEADER + "abc,male,right,moderate_left,ciao\n", r"m.csv:2: ideology_binary 'right' does not match"),
    ("s.csv", HEADER + "abc,male,left,left,ciao\nabc,female,left,left,ciao\n", r"s.csv:3: cluster 'abc' has labels"),
    ("x.csv", "label,gender,ideology_multiclass,tweet\nabc,male,left,ciao\n",
     r"x.csv: missing column 'ideology_binary'"),
]


@pytest.mark.parametrize("file, text, error", BAD_FILES)
def test_politicit_bad_files_are_refused(file, text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file("politicit", "read", tmp_path / file, text)


def test_politicit_blind_file_is_read_unlabelled(tmp_path):
    blind = read_file("politicit", "read", tmp_path / "blind.csv", "label,tweet\nabc,ciao\nabc,ciao ancora\n")
    assert [(it.id, it.gold) for it in blind] == [("abc#1", None)]


def test_politicit_scoring_decisions(tmp_path):
    # no official code was found; sklearn macro-F1 per trait over the values present, by hand
    task = get_task("politicit")
    gold = {"c1": ("female", "left", "left"), "c2": ("male", "left", "left"), "c3": ("male", "right", "right")}
    pred = task.read_predictions(write(tmp_path / "run.csv", "label,gender,ideology_binary,ideology_multiclass\n"
                                       "c3,male,right,moderate_right\nc2,,left,left\nc1,female,left,left\n"))
    # rows matched by cluster id; an empty gender cell is a wrong answer, not a value of its own
    # gender: female 1, male tp 1 fn 1 -> 2/3: (1 + 2/3) / 2 = 5/6; binary: 1;
    # multiclass: moderate_right is predicted though no gold has it, so it counts:
    # left 1, right 0 (missed), moderate_right 0 (false positive) -> 1/3
    result = task.score(gold, pred)
    assert result["gender_macro_f1"] == pytest.approx(5 / 6)
    assert result["ideology_binary_macro_f1"] == 1.0
    assert result["ideology_multiclass_macro_f1"] == pytest.approx(1 / 3)
    assert result["macro_f1"] == pytest.approx((5 / 6 + 1 + 1 / 3) / 3)
