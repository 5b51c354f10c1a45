"""EVALITA 2023 DisCoTex (coherence: subtask 1 a yes/no, subtask 2 a mean human score):
what this task does that the others do not."""

import math

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import write


def test_discotex_1_reader_joins_prompt_and_target():
    items = get_task("discotex-1").read(sample_files("discotex-1", "test"))
    assert items[0].id == "task_1_wiki_test_0"
    assert items[0].input == ("La biblioteca fu fondata nel Seicento. Conserva oltre centomila volumi. [SEP] "
                              "Una sala è dedicata ai manoscritti medievali.")
    # a paragraph with a newline inside its quoted field becomes one line
    assert items[3].input.startswith("La regina salì al trono giovanissima. Regnò per oltre")
    assert [it.output for it in items[:2]] == ["Coerente", "Incoerente"]


def test_discotex_1_decoder_tolerance():
    task = get_task("discotex-1")
    for answer in ("Coerente", "coerente.", "La frase è COERENTE con il paragrafo."):
        assert task.decode(answer) == 1, answer
    for answer in ("Incoerente", "incoerente!", "Non è coerente", "non coerente", "non_coerente"):
        assert task.decode(answer) == 0, answer


def test_discotex_1_accuracy_and_submission(tmp_path):
    task = get_task("discotex-1")
    gold = {"a": 1, "b": 0, "c": 1, "d": 0, "e": 1}
    pred = {"a": 1, "b": 1, "c": None, "d": 0, "e": 1}
    assert task.score(gold, pred) == {"accuracy": pytest.approx(3 / 5)}  # a, d, e right
    items = [type("I", (), {"id": k})() for k in pred]
    path = tmp_path / "TEAM.subtask1.run1.tsv"
    task.write_predictions(items, list(pred.values()), path)
    assert path.read_text() == "a\t1\nb\t1\nc\t\nd\t0\ne\t1\n"
    assert task.read_predictions(path) == pred
    with_header = write(tmp_path / "h.tsv", "ID\tCLASS\na\t1\n")
    assert task.read_predictions(with_header) == {"a": 1}
    with pytest.raises(LlamantinoError, match=r"h.tsv:2: column 'CLASS' has 'si'"):
        task.read_predictions(write(tmp_path / "h.tsv", "a\t1\nb\tsi\n"))
    with pytest.raises(LlamantinoError, match=r"h.tsv:1: expected 2 tab-separated fields"):
        task.read_predictions(write(tmp_path / "h.tsv", "a\t1\t0\n"))


def test_discotex_bad_input(tmp_path):
    with pytest.raises(LlamantinoError, match="d1.tsv: missing column 'TARGET'"):
        get_task("discotex-1").read([write(tmp_path / "d1.tsv", "ID\tPROMPT\tCLASS\nx\ty\t1\n")])
    # the record after a two-line one starts on line 4
    with pytest.raises(LlamantinoError, match=r"d1.tsv:4: column 'CLASS' has '2'"):
        get_task("discotex-1").read([write(tmp_path / "d1.tsv", 'ID\tPROMPT\tTARGET\tCLASS\n'
                                                              'x\t"a\nb"\tc\t1\ny\tp\tt\t2\n')])
    with pytest.raises(LlamantinoError, match=r"d2.tsv:2: column 'SCORE' has '7'"):
        get_task("discotex-2").read([write(tmp_path / "d2.tsv", "ID\tTEXT\tSCORE\nx\ttesto\t7\n")])


def test_discotex_1_blind_test_file(tmp_path):
    items = get_task("discotex-1").read([write(tmp_path / "blind.tsv", "ID\tPROMPT\tTARGET\tCLASS\nx\tp\tt\t\n")])
    assert (items[0].gold, items[0].output) == (None, "")


def test_discotex_2_reads_mean_column_and_decodes_numbers(tmp_path):
    task = get_task("discotex-2")
    items = task.read([write(tmp_path / "old.tsv", "ID\tTEXT\tMEAN\tSTDEV\nx\tUn testo.\t3.6666666\t0.47\n")])
    assert items[0].gold == 3.6666666 and items[0].output == "3.6666666"
    assert task.decode("3,5") == 3.5
    assert task.decode("Punteggio: 4.2 su 5") == 4.2
    assert task.decode("5") == 5.0
    assert task.decode("7") is None
    assert task.decode("0.5") is None


def test_discotex_2_correlations_by_hand(tmp_path):
    task = get_task("discotex-2")
    gold = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    pred = {"a": 2.0, "b": 3.5, "c": 5.0, "d": 3.0}
    # deviations: gold -1.5 -.5 .5 1.5; pred (mean 3.375) -1.375 .125 1.625 -.375
    # sxy = 2.0625 - .0625 + .8125 - .5625 = 2.25; sxx = 5; syy = 4.6875
    # Spearman: pred ranks 1 3 4 2 -> deviations -1.5 .5 1.5 -.5 -> sxy 2, sxx = syy = 5 -> 0.4
    scores = task.score(gold, pred)
    assert scores["pearson"] == pytest.approx(2.25 / math.sqrt(5 * 4.6875))
    assert scores["spearman"] == pytest.approx(0.4)
    assert scores["unparsed"] == 0
    # an unreadable answer stands at the middle of the scale, and is counted
    scores = task.score({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0},
                        {"a": 1.0, "b": 2.0, "c": None, "d": 4.0, "e": 5.0})
    assert scores["pearson"] == pytest.approx(1.0) and scores["unparsed"] == 1
    items = [type("I", (), {"id": k})() for k in pred]
    path = tmp_path / "TEAM.subtask2.run1.tsv"
    task.write_predictions(items, list(pred.values()), path)
    assert path.read_text().splitlines()[1] == "b\t3.5"
    assert task.read_predictions(path) == pred


def test_discotex_scoring_decisions(tmp_path):
    # no official code was published: accuracy (hits / records) and Pearson / Spearman, by hand
    gold_1 = get_task("discotex-1").read_gold([write(tmp_path / "g1.tsv", "ID\tPROMPT\tTARGET\tCLASS\n"
                                                                         "a\tp\tt\t1\nb\tp\tt\t0\nc\tp\tt\t1\n")])
    pred_1 = get_task("discotex-1").read_predictions(write(tmp_path / "p1.tsv", "c\t1\nb\t\na\t1\n"))
    assert get_task("discotex-1").score(gold_1, pred_1) == {"accuracy": pytest.approx(2 / 3)}  # empty cell wrong
    task = get_task("discotex-2")
    gold_2 = {"a": 1.0, "b": 2.0, "c": 3.0}
    # a constant prediction has no correlation: NaN, as scipy's pearsonr gives
    assert math.isnan(task.score(gold_2, {"a": 2.0, "b": 2.0, "c": 2.0})["pearson"])
    # an empty cell stands at 3.0 (and is counted): pred 1, 3, 3 -> Pearson sqrt(3)/2
    pred_2 = task.read_predictions(write(tmp_path / "p2.tsv", "ID\tSCORE\na\t1\nb\t\nc\t3\n"))
    scores = task.score(gold_2, pred_2)
    assert scores["pearson"] == pytest.approx(math.sqrt(3) / 2) and scores["unparsed"] == 1
