"""EVALITA 2023 ACTI (conspiracy theories, subtasks A and B):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task

from helpers.evalita import score_files, write


def test_acti_a_decoder_tolerance():
    task = get_task("acti-a")
    assert task.target(1) == "si" and task.target(0) == "no"
    for answer in ("si", "Sì", "SI.", "Sì, il testo contiene una teoria del complotto.", "  sì!"):
        assert task.decode(answer) == 1, answer
    for answer in ("no", "No.", "NO, non contiene teorie del complotto", "no!!"):
        assert task.decode(answer) == 0, answer


def test_acti_b_decoder_tolerance():
    task = get_task("acti-b")
    assert [task.target(c) for c in (0, 1, 2, 3)] == ["Covid", "Qanon", "Russia", "Terra Piatta"]
    assert task.decode("La categoria è: TERRA PIATTA.") == 3
    assert task.decode("terrapiattisti") == 3
    assert task.decode("Q-Anon") == 1
    assert task.decode("QAnon") == 1
    assert task.decode("covid-19") == 0
    assert task.decode("Teorie russe sulla guerra") == 2
    assert task.decode("Russia (ma si parla anche di Covid)") == 2  # the first named wins
    assert task.decode("Prussiano") is None


def test_acti_reads_quoted_csv_with_newlines_and_names_bad_lines(tmp_path):
    task = get_task("acti-a")
    path = write(tmp_path / "subtaskA_train.csv",
                 'Id,comment_text,conspiratorial\n0,"Primo, con virgola",0\n'
                 '1,"Su due\nrighe, e ""virgolette""",1\n2,terzo,2\n')
    with pytest.raises(LlamantinoError, match=r"subtaskA_train.csv:5: column 'conspiratorial' has '2'"):
        task.read([path])
    path.write_text(path.read_text().replace("2,terzo,2", "2,terzo,1"))
    items = task.read([path])
    assert items[1].input == 'Su due\nrighe, e "virgolette"'
    assert [it.gold for it in items] == [0, 1, 1]


def test_acti_wrong_columns_and_topic_mismatch(tmp_path):
    path = write(tmp_path / "subtaskA_train.csv", "Id,text,conspiratorial\n0,ciao,0\n")
    with pytest.raises(LlamantinoError, match="subtaskA_train.csv: missing column 'comment_text'"):
        get_task("acti-a").read([path])
    path = write(tmp_path / "subtaskB_train.csv", "Id,comment_text,topic,conspiracy\n0,ciao,Russia,3\n")
    with pytest.raises(LlamantinoError, match="subtaskB_train.csv:2: topic 'Russia' does not match conspiracy code 3"):
        get_task("acti-b").read([path])
    path = write(tmp_path / "subtaskB_test.csv", "Id,comment_text,topic\n0,ciao,Marte\n")
    with pytest.raises(LlamantinoError, match="subtaskB_test.csv:2: column 'topic' has 'Marte'"):
        get_task("acti-b").read([path])


def test_acti_unlabelled_test_file(tmp_path):
    path = write(tmp_path / "subtaskA_test.csv", "Id,comment_text\n0,uno\n1,due\n")
    items = get_task("acti-a").read([path])
    assert [(it.id, it.gold, it.output) for it in items] == [("0", None, ""), ("1", None, "")]


def test_acti_a_macro_f1_by_hand(tmp_path):
    task = get_task("acti-a")
    gold = {"1": 1, "2": 1, "3": 1, "4": 1, "5": 0, "6": 0}
    pred = {"1": 1, "2": 1, "3": 0, "4": None, "5": 0, "6": 1}
    # class 1: tp 2 (1,2), fp 1 (6), fn 2 (3,4): P 2/3, R 1/2, F1 = (2/3)/(7/6) = 4/7
    # class 0: tp 1 (5), fp 1 (3), fn 1 (6): F1 1/2.  macro = (4/7 + 1/2) / 2 = 15/28
    scores = task.score(gold, pred)
    assert scores["macro_f1"] == pytest.approx(15 / 28)
    assert scores["f1_1"] == pytest.approx(4 / 7)
    assert scores["accuracy"] == pytest.approx(3 / 6)
    # the same through the official files: Id,Expected with an empty cell for the None
    items = [type("I", (), {"id": k})() for k in pred]
    path = tmp_path / "submission.csv"
    task.write_predictions(items, list(pred.values()), path)
    assert path.read_text().splitlines()[:5] == ["Id,Expected", "1,1", "2,1", "3,0", "4,"]
    assert task.read_predictions(path) == pred


def test_acti_b_macro_f1_by_hand():
    gold = dict(enumerate([0, 1, 2, 3, 3, 2]))
    pred = dict(enumerate([0, 1, 3, 3, 2, 2]))
    # Covid 1, Qanon 1; Russia tp 1 fp 1 fn 1 -> 1/2; Terra Piatta the same -> 1/2; mean 3/4
    assert get_task("acti-b").score(gold, pred)["macro_f1"] == pytest.approx(0.75)


def test_acti_submission_errors(tmp_path):
    task = get_task("acti-b")
    with pytest.raises(LlamantinoError, match="sub.csv: missing column 'Expected'"):
        task.read_predictions(write(tmp_path / "sub.csv", "Id,Predicted\n0,1\n"))
    with pytest.raises(LlamantinoError, match=r"sub.csv:3: column 'Expected' has '7'"):
        task.read_predictions(write(tmp_path / "sub.csv", "Id,Expected\n0,1\n1,7\n"))
    with pytest.raises(LlamantinoError, match=r"sub.csv:3: id '0' appears twice"):
        task.read_predictions(write(tmp_path / "sub.csv", "Id,Expected\n0,1\n0,2\n"))


def test_acti_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gold = [0, 1, 2, 3, 3, 2, 1, 0, 0]
    pred = [0, 1, 3, 3, 2, 2, 0, 0, 1]
    ours = get_task("acti-b").score(dict(enumerate(gold)), dict(enumerate(pred)))["macro_f1"]
    assert ours == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro"))


def test_acti_scoring_decisions(tmp_path):
    # no official code was published (Kaggle); macro-F1 over the fixed classes, by hand
    task = get_task("acti-b")
    gold_path = write(tmp_path / "subtaskB_test.csv", "Id,comment_text,topic,conspiracy\n0,a,Covid,0\n"
                                                     "1,b,Covid,0\n2,c,Qanon,1\n3,d,Russia,2\n")
    # rows matched by Id (this file lists them backwards); an empty cell is a wrong answer
    pred_path = write(tmp_path / "sub.csv", "Id,Expected\n3,\n2,1\n1,1\n0,0\n")
    # Covid tp 1 fn 1: 2/3; Qanon tp 1 fp 1: 2/3; Russia (empty answer): 0; Terra Piatta, in
    # neither gold nor predictions: 0, and it counts -> (2/3 + 2/3) / 4 = 1/3
    scores = score_files(task, gold_path, pred_path)
    assert scores["macro_f1"] == pytest.approx(1 / 3)
    with pytest.raises(LlamantinoError, match=r"sub.csv:2: column 'Expected' has '4'"):
        task.read_predictions(write(tmp_path / "sub.csv", "Id,Expected\n3,4\n"))
