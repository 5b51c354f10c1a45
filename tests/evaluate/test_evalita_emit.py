"""EVALITA 2023 EMit (emotions, subtask A):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import score_files, write

# Agreement with the organisers' scorer (how it is checked: helpers.evalita.score_files):
# EMit: oaraque/emit evaluate.py at ace9b430805c135b2585fc00cdda9a7d996569d6, with pandas 2.0.3 and
# scikit-learn 1.2.2 (`python evaluate.py PRED A`, the gold as data/emit_test.csv).


EMIT_HEADER = "id,text,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust"


EMIT_COLUMNS = ("Anger", "Anticipation", "Disgust", "Fear", "Joy", "Love", "Neutral", "Sadness", "Surprise", "Trust")


def test_emit_reader_and_targets():
    task = get_task("emit")
    items = task.read(sample_files("emit", "train"))
    assert len(items[0].id) == 32
    assert items[0].gold == (0, 1, 0, 0, 1, 0, 0, 0, 0, 0)   # Anticipation, Joy
    assert items[0].output == "anticipazione, gioia"          # in the instruction's order
    assert items[2].output == "neutrale"
    assert items[5].output == "gioia, amore"


def test_emit_decoder_tolerance():
    task = get_task("emit")
    row = dict.fromkeys(("Anger", "Anticipation", "Disgust", "Fear", "Joy", "Love", "Neutral", "Sadness",
                         "Surprise", "Trust"), 0)

    def labels(*names):
        return tuple(1 if c in names else 0 for c in row)

    assert task.decode("Gioia e AMORE!") == labels("Joy", "Love")
    assert task.decode("Il testo esprime tristezza, sorpresa.") == labels("Sadness", "Surprise")
    assert task.decode("Neutrale.") == labels("Neutral")
    assert task.decode("neutro") == labels("Neutral")
    assert task.decode("Emozioni: rabbia; disgusto; paura; fiducia; anticipazione") == \
        labels("Anger", "Disgust", "Fear", "Trust", "Anticipation")
    assert task.decode("anger, joy") == labels("Anger", "Joy")


def test_emit_macro_f1_by_hand():
    task = get_task("emit")
    #            Ang Ant Dis Fea Joy Lov Neu Sad Sur Tru
    gold = {"a": (0, 0, 0, 0, 1, 1, 0, 0, 0, 0),
            "b": (1, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            "c": (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)}
    pred = {"a": (0, 0, 0, 0, 1, 0, 0, 0, 0, 0),
            "b": (1, 0, 1, 0, 0, 0, 0, 0, 0, 0),
            "c": None}
    # Anger and Joy: F1 1; Disgust (one false positive), Love and Neutral (one miss each): 0;
    # the five columns never set: undefined, counted 0 -> macro = 2 / 10
    scores = task.score(gold, pred)
    assert scores["macro_f1"] == pytest.approx(0.2)
    assert scores["f1_joy"] == 1.0 and scores["f1_love"] == 0.0


def test_emit_submission_format_and_checks(tmp_path):
    task = get_task("emit")
    items = task.read(sample_files("emit", "test"))
    path = tmp_path / "Team_SubtaskA_in-domain_run1.csv"
    preds = [it.gold for it in items]
    preds[0] = None
    task.write_predictions(items, preds, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "id,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust"
    assert lines[1] == f"{items[0].id},0,0,0,0,0,0,0,0,0,0"
    pred = task.read_predictions(path)
    assert pred[items[0].id] == (0,) * 10 and pred[items[1].id] == items[1].gold
    swapped = write(tmp_path / "s.csv", "id,Anticipation,Anger,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust\n")
    with pytest.raises(LlamantinoError, match="s.csv: columns must be exactly id,Anger,Anticipation"):
        task.read_predictions(swapped)
    with pytest.raises(LlamantinoError, match="s.csv: missing column 'Trust'"):
        task.read_predictions(write(tmp_path / "s.csv", "id,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,"
                                                        "Sadness,Surprise\n"))
    with pytest.raises(LlamantinoError, match=r"s.csv:2: column 'Joy' has '2'"):
        task.read_predictions(write(tmp_path / "s.csv", "id,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,"
                                                        "Sadness,Surprise,Trust\nx,0,0,0,0,2,0,0,0,0,0\n"))
    gold = {it.id: it.gold for it in items}
    reordered = dict(reversed(list(gold.items())))
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        task.score(gold, reordered)


def test_emit_bad_input(tmp_path):
    task = get_task("emit")
    with pytest.raises(LlamantinoError, match="e.csv: missing column 'Neutral'"):
        task.read([write(tmp_path / "e.csv", "id,text,Anger,Anticipation,Disgust,Fear,Joy,Love,Sadness,Surprise,"
                                            "Trust\nx,t,0,0,0,0,0,0,0,0,1\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:2: column 'Fear' has 'x'"):
        task.read([write(tmp_path / "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,x,0,0,0,0,0,0\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:2: no label set"):
        task.read([write(tmp_path / "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,0,0,0,0,0,0,0\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:3: 11 fields, expected 12"):
        task.read([write(tmp_path / "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,0,0,0,1,0,0,0\ncd,t,0,0,0,0,0,0,1,0,0\n")])
    items = task.read([write(tmp_path / "emit_test_nolabel.csv", 'id,text\nab,"Ciao, mondo"\n')])
    assert (items[0].input, items[0].gold) == ("Ciao, mondo", None)


def test_emit_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gold = [(0, 0, 0, 0, 1, 1, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 1, 0, 0, 1)]
    pred = [(0, 0, 0, 0, 1, 0, 0, 0, 0, 0), (1, 0, 1, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)]
    ours = get_task("emit").score(dict(enumerate(gold)), dict(enumerate(pred)))["macro_f1"]
    assert ours == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0))


def emit_row(item_id, active, text=None):
    cells = ["1" if c in active else "0" for c in EMIT_COLUMNS]
    return ",".join([item_id] + ([text] if text is not None else []) + cells)


def test_emit_agrees_with_evaluate_py(tmp_path):
    task = get_task("emit")
    gold_path = write(tmp_path / "emit_test.csv", "\n".join([
        EMIT_HEADER, emit_row("a", {"Anger", "Joy"}, "uno"), emit_row("b", {"Neutral"}, "due"),
        emit_row("c", {"Joy", "Trust"}, "tre"), emit_row("d", {"Sadness"}, "quattro")]) + "\n")
    header = ",".join(["id", *EMIT_COLUMNS])
    pred_rows = [emit_row("a", {"Anger"}), emit_row("b", {"Neutral", "Joy"}), emit_row("c", {"Joy"}),
                 emit_row("d", {"Fear"})]
    pred_path = write(tmp_path / "Team_SubtaskA_in-domain_run1.csv", "\n".join([header, *pred_rows]) + "\n")
    # Anger 1; Joy tp 1 fp 1 fn 1: 1/2; Neutral 1; Fear (false positive), Sadness, Trust (misses): 0;
    # Anticipation, Disgust, Love, Surprise set nowhere: undefined, 0, and still counted
    # -> (1 + 1/2 + 1) / 10 = 1/4. evaluate.py (gold as data/emit_test.csv) prints "F1-macro: 0.25"
    # and the per-column F1s "1.0 0.0 0.0 0.0 0.5 0.0 1.0 0.0 0.0 0.0".
    scores = score_files(task, gold_path, pred_path)
    assert scores["macro_f1"] == 0.25
    assert [scores[f"f1_{c.lower()}"] for c in EMIT_COLUMNS] == [1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0]
    # what evaluate.py refuses is refused: rows out of the gold's order, an empty or non-0/1 cell
    reordered = write(tmp_path / "r.csv", "\n".join([header, *pred_rows[::-1]]) + "\n")
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        score_files(task, gold_path, reordered)
    with pytest.raises(LlamantinoError, match=r"e.csv:5: column 'Trust' has ''"):
        task.read_predictions(write(tmp_path / "e.csv", "\n".join([header, *pred_rows[:3], "d" + ",0" * 9 + ","])))
