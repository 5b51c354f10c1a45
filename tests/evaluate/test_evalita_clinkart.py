"""EVALITA 2023 CLinkaRT (test results linked to their tests in clinical text):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import read_file, write


def clinkart_item(tmp_path, text, rels=""):
    return get_task("clinkart").read([write(tmp_path / "training.txt", f"9|t|{text}\n{rels}")])[0]


def test_clinkart_reader_and_target(tmp_path):
    items = get_task("clinkart").read(sample_files("clinkart", "train"))
    first = items[0]
    assert first.id == "100001" and first.input == "Emoglobina 9 g/dl. Temperatura 38,5 °C."
    assert first.gold == frozenset({((11, 17), (0, 10)), ((31, 38), (19, 30))})
    assert first.output == "[BREL] 9 g/dl [SEP] Emoglobina [EREL] [BREL] 38,5 °C [SEP] Temperatura [EREL]"
    assert items[2].gold == frozenset() and items[2].output == "[NOREL]"


def test_clinkart_decoder_finds_repeated_strings(tmp_path):
    task = get_task("clinkart")
    # the same result string twice, and one test linked to two results
    item = clinkart_item(tmp_path, "Troponina nella norma, creatinina nella norma. PCR 48 mg/l; PCR 12 mg/l.")
    answer = ("[BREL] nella norma [SEP] Troponina [EREL] [BREL] nella norma [SEP] creatinina [EREL] "
              "[BREL] 48 mg/l [SEP] PCR [EREL] [BREL] 12 mg/l [SEP] PCR [EREL]")
    assert task.decode(answer, item) == frozenset({((10, 21), (0, 9)), ((34, 45), (23, 33)),
                                                    ((51, 58), (47, 50)), ((64, 71), (60, 63))})


def test_clinkart_decoder_tolerance(tmp_path):
    task = get_task("clinkart")
    item = task.read(sample_files("clinkart", "train"))[0]
    gold = item.gold
    for answer in ("[brel] 9 G/DL [sep] emoglobina [erel] [BREL]38,5 °C[SEP]Temperatura[EREL]",
                   "Ecco le relazioni: [BREL] '9 g/dl' [SEP] Emoglobina [EREL]\n[BREL] 38,5  °C [SEP] Temperatura.",
                   "[BREL] 38,5 °C [SEP] Temperatura [EREL] [BREL] 9 g/dl [SEP] Emoglobina [EREL]"):
        assert task.decode(answer, item) == gold, answer
    assert task.decode("[NOREL]", item) == frozenset()
    assert task.decode("[norel] non ci sono relazioni", item) == frozenset()
    assert task.decode("Nessuna relazione.", item) == frozenset()
    # markers but strings that are not in the text: nothing found, nothing predicted
    assert task.decode("[BREL] 12 mg [SEP] Sodio [EREL]", item) == frozenset()
    assert task.decode("[BREL] solo un pezzo", item) == frozenset()


def test_clinkart_relation_f1_by_hand():
    task = get_task("clinkart")
    r = [((i, i + 1), (i + 10, i + 11)) for i in range(6)]
    gold = {"A": frozenset({r[0], r[1]}), "B": frozenset(), "C": frozenset({r[4], r[5]})}
    pred = {"A": frozenset({r[0], r[2]}), "B": frozenset({r[3]}), "C": None}
    # tp 1 (r0); fp 2 (r2, r3); fn 3 (r1, r4, r5): P 1/3, R 1/4, F1 = (2/12)/(7/12) = 2/7
    scores = task.score(gold, pred)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 4)
    assert scores["f1"] == pytest.approx(2 / 7)


def test_clinkart_submission_file(tmp_path):
    task = get_task("clinkart")
    items = task.read(sample_files("clinkart", "test"))
    preds = [it.gold for it in items]
    preds[0] = frozenset(list(preds[0])[:1])
    path = tmp_path / "run1.txt"
    task.write_predictions(items, preds, path)
    assert path.read_text().startswith("200001|t|Emoglobina 11,2 g/dl, ematocrito 34%.\n200001\tREL\t")
    assert task.read_predictions(path) == {it.id: p for it, p in zip(items, preds)}
    # span texts are optional in submissions
    short = write(tmp_path / "short.txt", "7|t|Sodio 131 mEq/l.\n7\tREL\t6-15\t0-5\n")
    assert task.read_predictions(short) == {"7": frozenset({((6, 15), (0, 5))})}


BAD_FILES = [  # (text of t.txt, the error)
    ("1|t|Emoglobina 9 g/dl.\n1\tREL\t11-17\t0-10\t9 g/d\tEmoglobina\n",
     r"t.txt:2: RML text '9 g/d' is not text\[11:17\] '9 g/dl'"),
    ("1|t|Emoglobina 9 g/dl.\n1\tREL\t11-17\t0-99\n", r"t.txt:2: EVENT span 0-99 is outside"),
    ("1|t|Emoglobina 9 g/dl.\n1\tREL\tx\t0-10\n", r"t.txt:2: RML offsets 'x' are not 'start-end'"),
    ("1|t|Emoglobina 9 g/dl.\n\n2\tREL\t11-17\t0-10\n", r"t.txt:3: REL line for document '2' does not follow"),
    ("solo testo\n", r"t.txt:1: expected '<docid>\|t\|<text>' or a REL line"),
    ("1|t|uno\n\n1|t|due\n", r"t.txt:3: document '1' appears twice"),
]


@pytest.mark.parametrize("text, error", BAD_FILES)
def test_clinkart_bad_files_are_refused(text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file("clinkart", "read", tmp_path / "t.txt", text)


def test_clinkart_scoring_decisions(tmp_path):
    # no official code was published: micro P/R/F1 over exact (RML span, EVENT span) pairs
    task = get_task("clinkart")
    text = "Emoglobina 9 g/dl. Sodio 131 mEq/l."
    gold = task.read_gold([write(tmp_path / "gold.txt", f"1|t|{text}\n1\tREL\t11-17\t0-10\n1\tREL\t25-34\t19-24\n\n"
                                                       "2|t|Nessun esame.\n")])
    # doc 1: one exact relation, the same one repeated (counts once), one whose RML span
    # overlaps the gold's without matching it (not credited); doc 2: no REL line, no relation
    pred_path = write(tmp_path / "run.txt", f"1|t|{text}\n1\tREL\t11-17\t0-10\n1\tREL\t11-17\t0-10\n"
                                           "1\tREL\t25-28\t19-24\n\n2|t|Nessun esame.\n")
    scores = task.score(gold, task.read_predictions(pred_path))
    # tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(LlamantinoError, match=r"1 gold id\(s\) have no prediction \(e.g. 2\)"):
        task.score(gold, task.read_predictions(write(tmp_path / "one.txt", f"1|t|{text}\n")))
