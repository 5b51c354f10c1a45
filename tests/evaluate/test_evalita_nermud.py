"""EVALITA 2023 NERMuD (named entities: persons, places, organisations):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.base import Item
from llamantino.evaluate.evalita.tasks.nermud import official_label

from helpers.evalita import item_by_id, read_file, read_items, score_files, write

# Agreement with the organisers' scorer (how it is checked: helpers.evalita.score_files):
# NERMuD: dhfbk/KIND evalita-2023/scripts/get-results.py at a2ad139171ef7fde0dff0f8ea94d18356340ada9,
#   with scikit-learn 1.2.2: `python get-results.py GOLD PRED` (a table with 2 digits).


def test_nermud_items_targets_and_ids():
    items = read_items("nermud", "train")
    first = items[0]
    assert first.id == "1" and items[-1].id == "24"
    assert first.input.startswith("Il presidente Sergio Mattarella ha ricevuto al Quirinale")
    assert first.output == "[PER] Sergio Mattarella [LOC] Quirinale [ORG] ONU"
    assert first.gold[:4] == ("O", "O", "B-PER", "I-PER")
    assert item_by_id(items, "5").output == "Nessuna menzione"
    assert item_by_id(items, "21").output == "[ORG] Banca d' Italia"


def test_nermud_decoder_tolerance():
    task = get_task("nermud")
    item = read_items("nermud", "train")[0]  # Il presidente Sergio Mattarella ha ricevuto al Quirinale ... dell' ONU .
    labels = task.decode("[per] sergio mattarella, [Loc] Quirinale; [ORG] ONU.", item)
    assert labels == item.gold                                   # case, separators, final full stop
    assert task.decode("[PER] Sergio Mattarella [PER] Mario Rossi", item)[2:4] == ("B-PER", "I-PER")
    assert task.decode("Nessuna menzione", item) == ("O",) * len(item.gold)
    assert task.decode("non lo so", item) == ("O",) * len(item.gold)
    assert task.decode("[LOC]", item) == ("O",) * len(item.gold)
    assert task.decode("[PER] Mattarella", None) is None
    banca = item_by_id(read_items("nermud", "train"), "21")      # tokens: Banca d' Italia
    assert "B-ORG" in task.decode("[ORG] Banca d'Italia", banca)  # spacing may differ
    # a mention already taken is not labelled twice
    assert task.decode("[LOC] Quirinale [ORG] Quirinale", item).count("B-ORG") == 0
    # closing punctuation is dropped unless it belongs to a token
    fiat = Item(id="x", task="nermud", instruction="", input="", output="",
                meta={"tokens": ["La", "Fiat", "S.p.A.", "cresce", "a", "Torino", "."]})
    assert task.decode("[ORG] Fiat S.p.A. [LOC] Torino.", fiat) == ("O", "B-ORG", "I-ORG", "O", "O", "B-LOC", "O")


def test_nermud_metric_by_hand():
    task = get_task("nermud")
    gold = {"1": ("B-PER", "I-PER", "O", "B-LOC"), "2": ("B-ORG", "O")}
    pred = {"1": ("B-PER", "O", "O", "B-ORG"), "2": ("B-ORG", "B-LOC")}
    # tokens: gold PER PER O LOC | ORG O ; pred PER O O ORG | ORG LOC
    # PER: tp=1, fp=0, fn=1 -> P=1, R=1/2, F1=2/3, support 2
    # LOC: tp=0, fp=1, fn=1 -> 0, 0, 0, support 1
    # ORG: tp=1, fp=1, fn=0 -> P=1/2, R=1, F1=2/3, support 1
    # micro: tp=2, fp=2, fn=2 -> 1/2, 1/2, 1/2
    # macro: P=(1+0+1/2)/3=1/2, R=(1/2+0+1)/3=1/2, F1=(2/3+0+2/3)/3=4/9
    # weighted F1 = (2/3*2 + 0*1 + 2/3*1) / 4 = 1/2
    r = task.score(gold, pred)
    assert (r["PER_precision"], r["PER_recall"], r["PER_f1"], r["PER_support"]) == pytest.approx((1, 0.5, 2 / 3, 2))
    assert (r["LOC_f1"], r["LOC_support"]) == (0.0, 1)
    assert (r["ORG_precision"], r["ORG_recall"], r["ORG_f1"]) == pytest.approx((0.5, 1, 2 / 3))
    assert (r["micro_precision"], r["micro_recall"], r["micro_f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == pytest.approx((0.5, 0.5, 4 / 9))
    assert r["weighted_f1"] == pytest.approx(0.5)
    # an undecodable sentence predicts no entity: sentence 2 all O -> ORG tp=0, fn=1
    assert task.score(gold, {**pred, "2": None})["ORG_f1"] == 0.0
    with pytest.raises(LlamantinoError, match="sentence 2 has 2 gold tokens but 3 predicted labels"):
        task.score(gold, {**pred, "2": ("O", "O", "O")})


def test_nermud_official_label_normalization():
    assert official_label("B-PER") == "PER"
    assert official_label("i-loc") == "LOC"
    assert official_label("B-ORG|B-LOC") == "ORG"
    assert official_label("O") == "O"


def test_nermud_submission_format(tmp_path):
    task = get_task("nermud")
    items = read_items("nermud", "test")[:2]
    path = tmp_path / "DAC_WN_run1.tsv"
    task.write_predictions(items, [task.decode("[PER] Mario Draghi", items[0]), None], path)
    lines = path.read_text().split("\n")
    assert lines[:5] == ["Il\tO", "premier\tO", "Mario\tB-PER", "Draghi\tI-PER", "ha\tO"]
    assert lines[len(items[0].gold)] == ""                       # blank line between sentences
    pred = task.read_predictions(path)
    assert list(pred) == ["1", "2"]
    assert pred["2"] == ("O",) * len(items[1].gold)


BAD_FILES = [  # (reader, file, text, the error)
    ("read", "WN_train.tsv", "Mario\tB-PER\nRossi\tB-MISC\n", r"WN_train.tsv:2: label 'B-MISC'"),
    ("read", "three.tsv", "Mario\tB-PER\textra\n", r"three.tsv:1: expected token<TAB>label, found 3"),
    ("read", "mixed.tsv", "Mario\tB-PER\nRossi\n", r"mixed.tsv:2: line has 1 field"),
    ("read_predictions", "pred.tsv", "Mario\tB-PERSON\n", r"pred.tsv:1: label 'B-PERSON'"),
]


@pytest.mark.parametrize("method, file, text, error", BAD_FILES)
def test_nermud_bad_files_are_refused(method, file, text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file("nermud", method, tmp_path / file, text)


def test_nermud_file_without_labels_is_read_unlabelled(tmp_path):
    unlabelled = read_file("nermud", "read", tmp_path / "WN_test_nolabel.tsv", "Mario\nRossi\n\nCiao\n")
    assert [it.gold for it in unlabelled] == [None, None]


def test_nermud_agrees_with_get_results(tmp_path):
    task = get_task("nermud")
    gold_path = write(tmp_path / "WN_test.tsv", "Mario\tB-PER\nRossi\tI-PER\nvisitò\tO\nTrento\tB-LOC\n\n"
                                                "La\tO\nFIAT\tB-ORG\ndi\tO\nTorino\tB-LOC\n")
    # lower case and a `|` suffix are normalised away, as by the script
    pred_path = write(tmp_path / "DAC_WN_run1.tsv", "Mario\tB-PER\nRossi\tO\nvisitò\tO\nTrento\tB-ORG\n\n"
                                                    "La\tO\nFIAT\tb-org\ndi\tO\nTorino\tB-LOC|x\n")
    # tokens: gold PER PER O LOC | O ORG O LOC; pred PER O O ORG | O ORG O LOC
    # PER P 1 R 1/2, LOC P 1 R 1/2, ORG P 1/2 R 1: each F1 2/3; micro tp 3 fp 1 fn 2: P 3/4,
    # R 3/5, F1 2/3; macro P (1 + 1 + 1/2) / 3, R 2/3; weighted P (1*2 + 1*2 + 1/2*1) / 5 = 0.9.
    # get-results.py prints (2 digits):
    #           precision recall f1-score support
    #   PER          1.00   0.50     0.67       2
    #   LOC          1.00   0.50     0.67       2
    #   ORG          0.50   1.00     0.67       1
    #   micro avg    0.75   0.60     0.67       5
    #   macro avg    0.83   0.67     0.67       5
    #   weighted avg 0.90   0.60     0.67       5
    result = score_files(task, gold_path, pred_path)
    printed = {"PER": (1.00, 0.50, 0.67, 2), "LOC": (1.00, 0.50, 0.67, 2), "ORG": (0.50, 1.00, 0.67, 1),
               "micro": (0.75, 0.60, 0.67), "macro": (0.83, 0.67, 0.67), "weighted": (0.90, 0.60, 0.67)}
    for row, figures in printed.items():
        for key, value in zip(("precision", "recall", "f1", "support"), figures):
            assert result[f"{row}_{key}"] == pytest.approx(value, abs=0.005), (row, key)
    assert (result["micro_f1"], result["macro_precision"], result["weighted_precision"]) == \
        pytest.approx((2 / 3, 5 / 6, 0.9))
    # differences on purpose: sentences are paired one by one. The same labels split into
    # other sentences score the same in get-results.py (it prints the very same table for
    # this file); here the file is refused.
    merged = write(tmp_path / "merged.tsv", pred_path.read_text().replace("\n\n", "\n"))
    with pytest.raises(LlamantinoError, match="1 gold id.*no prediction"):
        score_files(task, gold_path, merged)
    # a line without two fields: the script skips it (shifting the pairing); here it is an error
    with pytest.raises(LlamantinoError, match=r"short.tsv:2: expected token<TAB>label, found 1"):
        task.read_predictions(write(tmp_path / "short.tsv", "Mario\tB-PER\nRossi\t\n"))
