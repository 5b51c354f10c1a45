"""EVALITA 2023 LangLearn (which of two essays by one student came first):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task

from helpers.evalita import item_by_id, read_file, read_items, write


def test_langlearn_pairs_swaps_and_gold():
    train = read_items("langlearn", "train")
    original, swapped = item_by_id(train, "CItA:4355-3375"), item_by_id(train, "CItA:3375-4355")
    assert original.input.startswith("Io mi chiamo Luca") and " [SEP] Durante le vacanze" in original.input
    assert (original.gold, original.output) == (1, "si")
    assert swapped.input.startswith("Durante le vacanze") and " [SEP] Io mi chiamo Luca" in swapped.input
    assert (swapped.gold, swapped.output) == (0, "no")
    assert item_by_id(train, "COWS-L2H:1707-4765").gold == 1
    test = read_items("langlearn", "test")
    # Test_CItA.tsv row 1: 4853 (1_5) before 5388 (1_1)? no -> label 0; row 2: 1_1 before 2_3 -> 1
    assert item_by_id(test, "CItA:4853-5388").gold == 0
    assert item_by_id(test, "CItA:5388-5358").gold == 1
    assert item_by_id(test, "COWS-L2H:1610-2685").gold == 0      # F19 after W19
    assert not any(it.id.endswith("5388-4853") for it in test)  # test pairs are not swapped


def test_langlearn_submission_maps_answers_to_pred(tmp_path):
    task = get_task("langlearn")
    items = read_items("langlearn", "test")[:2]        # gold 0 (Essay_2 first), gold 1 (Essay_1 first)
    path = tmp_path / "Test_CItA_pred.tsv"
    task.write_predictions(items, [task.decode("no"), task.decode("Sì")], path)
    # "no": document 1 was not written first -> Essay_2 first -> Pred 1; "si" -> Pred 0
    assert path.read_text() == ("Essay_1\tEssay_2\tOrder_1\tOrder_2\tPred\n"
                                "4853\t5388\t1_5\t1_1\t1\n5388\t5358\t1_1\t2_3\t0\n")
    assert task.read_predictions(path) == {"CItA:4853-5388": 0, "CItA:5388-5358": 1}


def test_langlearn_metric_per_corpus_and_mean():
    task = get_task("langlearn")
    gold = {"CItA:1-2": 1, "CItA:3-4": 0, "CItA:5-6": 1, "CItA:7-8": 0, "COWS-L2H:1-2": 1, "COWS-L2H:3-4": 0}
    pred = {"CItA:1-2": 1, "CItA:3-4": 1, "CItA:5-6": 1, "CItA:7-8": 0, "COWS-L2H:1-2": 0, "COWS-L2H:3-4": 1}
    # CItA class 1: tp=2, fp=1, fn=0 -> P=2/3, R=1, F1=4/5; class 0: tp=1, fp=0, fn=1 -> F1=2/3
    #   macro = (4/5 + 2/3) / 2 = 11/15
    # COWS-L2H: both wrong -> both F1 0 -> macro 0; mean of corpora = 11/30
    result = task.score(gold, pred)
    assert result["CItA_macro_f1"] == pytest.approx(11 / 15)
    assert result["COWS-L2H_macro_f1"] == 0.0
    assert result["macro_f1"] == pytest.approx(11 / 30)
    only_cita = {k: v for k, v in gold.items() if k.startswith("CItA")}
    assert task.score(only_cita, {k: pred[k] for k in only_cita})["macro_f1"] == pytest.approx(11 / 15)


ESSAYS = '<dataset><doc id="1">Primo tema.</doc><doc id="2">Secondo.</doc></dataset>'
BAD_PAIRS = [  # (pair file, the error), each read beside ESSAYS
    ("Essay_1\tEssay_2\tOrder_1\n1\t2\t1_1\n", r"Training_CItA.tsv: missing column 'Order_2'"),
    ("Essay_1\tEssay_2\tOrder_1\tOrder_2\n1\t2\t1_1\tQ3\n", r"Training_CItA.tsv:2: column 'Order_2' has 'Q3'"),
    ("Essay_1\tEssay_2\tOrder_1\tOrder_2\n1\t7\t1_1\t1_2\n", r"Training_CItA.tsv:2: column 'Essay_2' has essay id '7'"),
]


@pytest.mark.parametrize("text, error", BAD_PAIRS)
def test_langlearn_bad_pair_files_are_refused(text, error, tmp_path):
    essays = write(tmp_path / "Essays_CItA.xml", ESSAYS)
    with pytest.raises(LlamantinoError, match=error):
        read_file("langlearn", "read", tmp_path / "Training_CItA.tsv", text, essays)


def test_langlearn_bad_essays_and_predictions_are_refused(tmp_path):
    task = get_task("langlearn")
    pairs = write(tmp_path / "Training_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n1\t2\t1_1\t1_2\n")
    broken_xml = write(tmp_path / "Essays_CItA.xml", '<dataset><doc id="1">Primo</dataset>')
    with pytest.raises(LlamantinoError, match=r"Essays_CItA.xml:1: malformed XML"):
        task.read([pairs, broken_xml])
    pred = write(tmp_path / "pred.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\tPred\n1\t2\t1_1\t1_2\tsi\n")
    with pytest.raises(LlamantinoError, match=r"pred.tsv:2: column 'Pred' has 'si'"):
        task.read_predictions(pred)


LANGLEARN_ESSAYS = ('<dataset><doc id="11">Primo tema.</doc><doc id="12">Secondo tema.</doc>'
                    '<doc id="13">Terzo tema.</doc><doc id="14">Quarto tema.</doc></dataset>')


def test_langlearn_blind_test_layout_is_read_unlabelled_and_refused_as_gold(tmp_path, capsys):
    from llamantino.cli import main

    task = get_task("langlearn")
    essays = write(tmp_path / "Essays_Test_CItA.xml", LANGLEARN_ESSAYS)
    # the released layout: essay ids in random order, Order_1 the earlier time on every row
    blind = write(tmp_path / "Test_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n12\t11\t1_2\t2_1\n"
                                              "13\t14\t1_1\t1_3\n")
    items = task.read([blind, essays])
    assert [(it.id, it.gold, it.output) for it in items] == [("CItA:12-11", None, ""), ("CItA:13-14", None, "")]
    with pytest.raises(LlamantinoError, match=r"Test_CItA.tsv: the released blind test layout .* holds no gold"):
        task.read_gold([blind, essays])
    pred = write(tmp_path / "pred.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\tPred\n12\t11\t1_2\t2_1\t0\n"
                                        "13\t14\t1_1\t1_3\t0\n")
    assert main(["evalita", "score", "--task", "langlearn", "--gold", str(blind), str(essays),
                 "--pred", str(pred)]) == 2
    assert "blind test layout" in capsys.readouterr().err
    # a gold file gives each essay its own time: a pair whose Essay_1 is the later one tells it
    gold = write(tmp_path / "Test_CItA_gold.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n12\t11\t2_1\t1_2\n"
                                                  "13\t14\t1_1\t1_3\n")
    assert task.read_gold([gold, essays]) == {"CItA:12-11": 0, "CItA:13-14": 1}
    # Pred 0 (Essay_1 first) on both rows: right on 13-14 only -> class 1 F1 2/3, class 0 F1 0
    assert task.score(task.read_gold([gold, essays]), task.read_predictions(pred))["macro_f1"] == \
        pytest.approx(1 / 3)
    # training files are always chronological, and are gold
    train = write(tmp_path / "Training_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n11\t12\t1_2\t2_1\n")
    assert task.read_gold([train, essays]) == {"CItA:11-12": 1, "CItA:12-11": 0}
