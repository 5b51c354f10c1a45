"""EVALITA task modules: HaSpeeDe3, HODI, LangLearn, NERMuD, PoliticIT, WiC-ITA.

For each task: the reader on the bundled samples, target/decode round trips, decoder
tolerance, the official metric on small cases worked out by hand, the official submission
format, and errors for bad input.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.base import Item
from llamantino.evaluate.evalita.samples import sample_files
from llamantino.evaluate.evalita.tasks.hodi import Rationales, post_f1
from llamantino.evaluate.evalita.tasks.nermud import official_label
from llamantino.evaluate.evalita.tasks.politicit import chunks, vote

from helpers.evalita import TABLE_1


COUNTS = {  # items in (train, test)
    "haspeede3": (20, 10),             # the 2 religious test tweets belong to subtask B
    "haspeede3-contextual": (20, 10),
    "hodi-a": (22, 10),
    "hodi-b": (22, 10),
    "langlearn": (28, 10),             # 14 training pairs, each also swapped
    "nermud": (24, 10),
    "politicit": (20, 8),              # one chunk per sample cluster
    "wic-ita": (20, 10),
}
TASK_NAMES = list(COUNTS)


def files(task, split):
    return sample_files(task, split)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_items(task, split):
    return get_task(task).read(files(task, split))


def item_by_id(items, item_id):
    return next(it for it in items if it.id == item_id)


# ---------------------------------------------------------------------------------------
# Shared checks on the samples


@pytest.mark.parametrize("name", TASK_NAMES)
def test_samples_read_with_counts_round_trip_and_perfect_score(name, tmp_path):
    task = get_task(name)
    assert task.name == name
    for split, count in zip(("train", "test"), COUNTS[name]):
        items = read_items(name, split)
        assert len(items) == count
        assert len({it.id for it in items}) == count
        for item in items:
            assert item.task == name and item.input and item.output
            assert item.gold is not None
            assert task.target(item.gold, item) == item.output
            assert task.decode(item.output, item) == item.gold      # every label survives its target
    # gold answers written in the official format and read back score perfectly
    items = read_items(name, "test")
    pred_path = tmp_path / "submission"
    task.write_predictions(items, [task.decode(it.output, it) for it in items], pred_path)
    result = task.score(task.read_gold(files(name, "test")), task.read_predictions(pred_path))
    assert result[task.primary_metric] == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["haspeede3", "hodi-a", "hodi-b", "langlearn", "nermud", "politicit"])
def test_instruction_is_table_1_verbatim(name):
    for item in read_items(name, "train"):
        assert item.instruction == TABLE_1[name]


def test_both_answers_occur_in_binary_training_samples():
    for name in ("haspeede3", "hodi-a", "langlearn", "wic-ita"):
        assert {it.output for it in read_items(name, "train")} == {"si", "no"}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_predictions_misaligned_with_items_or_gold_are_refused(name, tmp_path):
    task = get_task(name)
    items = read_items(name, "test")
    answers = [task.decode(it.output, it) for it in items]
    with pytest.raises(LlamantinoError, match="items but"):
        task.write_predictions(items, answers[:-1], tmp_path / "short")
    gold = task.read_gold(files(name, "test"))
    pred = dict(gold)
    missing = next(iter(pred))
    del pred[missing]
    with pytest.raises(LlamantinoError, match="no prediction"):
        task.score(gold, pred)
    with pytest.raises(LlamantinoError, match="not in the gold"):
        task.score(gold, {**gold, "extra-id": next(iter(gold.values()))})


@pytest.mark.parametrize("name", ["haspeede3", "hodi-a", "langlearn", "wic-ita"])
def test_yes_no_decoders_are_tolerant_and_garbage_is_none(name):
    task = get_task(name)
    for answer, label in [("si", 1), ("Sì.", 1), ("SI!", 1), ("sì, il testo lo contiene", 1),
                          ("no", 0), ("No.", 0), ("  NO  ", 0), ("no, non direi", 0)]:
        assert task.decode(answer) == label
    for garbage in ["", "forse", "non saprei", "###", None]:
        assert task.decode(garbage) is None
    assert task.target(1) == "si" and task.target(0) == "no"
    with pytest.raises(LlamantinoError):
        task.target(2)


# ---------------------------------------------------------------------------------------
# HaSpeeDe3


def test_haspeede_contextual_fills_the_account_statistics():
    items = read_items("haspeede3-contextual", "test")
    first = item_by_id(items, "91001")
    # test_contextual.csv row of tweet 91001
    assert first.instruction == (
        "Stabilisci se il tweet in input contiene discorsi che incitano all'odio considerando anche il contesto "
        "relativo alle statistiche dell'account. Rispondi con si o no. Contesto: Data: 2020-11-14 14:30:30 "
        "Numero di retweet: 3 Numero di mi piace: 0 Data creazione account: 2010-04-10 09:30:00 Numero di post: "
        "120 Follower: 210 Amici: 80")
    assert "{" not in first.instruction
    assert first.input == "Ladri e corrotti, dovete andarvene tutti a casa subito"
    assert (first.gold, first.output) == (1, "si")
    # the same tweets as the textual task, religious ones (subtask B) left out
    textual = read_items("haspeede3", "test")
    assert [it.id for it in items] == [it.id for it in textual]
    assert not {"95001", "95002"} & {it.id for it in items}


def test_haspeede_metric_by_hand(tmp_path):
    task = get_task("haspeede3")
    gold = {"a": 1, "b": 1, "c": 0, "d": 0}
    pred = {"a": 1, "b": 0, "c": 0, "d": None}
    # hate (1): tp=1 (a), fp=0, fn=1 (b) -> P=1, R=1/2, F1=2/3
    # non-hate (0): tp=1 (c), fp=1 (b), fn=1 (d, undecodable) -> P=1/2, R=1/2, F1=1/2
    # macro = (2/3 + 1/2) / 2 = 7/12; accuracy 2/4
    result = task.score(gold, pred)
    assert result["f1_hate"] == pytest.approx(2 / 3)
    assert result["f1_non_hate"] == pytest.approx(1 / 2)
    assert result["macro_f1"] == pytest.approx(7 / 12)
    assert result["accuracy"] == pytest.approx(0.5)


def test_haspeede_submission_format(tmp_path):
    task = get_task("haspeede3")
    items = read_items("haspeede3", "test")[:3]
    path = tmp_path / "TEAM_taskA_textual_run_1.csv"
    task.write_predictions(items, [1, None, 0], path)
    assert path.read_text() == "anonymized_tweet_id,label\n91001,1\n91002,\n91003,0\n"
    assert task.read_predictions(path) == {"91001": 1, "91002": None, "91003": 0}


def test_haspeede_bad_inputs(tmp_path):
    task = get_task("haspeede3")
    header = '"anonymized_tweet_id","anonymized_text","label","dataset"\n'
    bad_label = write(tmp_path / "training_textual.csv", header + '"1","ciao","2","training_politics"\n')
    with pytest.raises(LlamantinoError, match=r"training_textual.csv:2: column 'label' has '2'"):
        task.read([bad_label])
    no_text = write(tmp_path / "no_text.csv",
                    '"anonymized_tweet_id","text","label","dataset"\n"1","x","0","training_politics"\n')
    with pytest.raises(LlamantinoError, match=r"no_text.csv: missing column 'anonymized_text'"):
        task.read([no_text])
    other_dataset = write(tmp_path / "odd.csv", header + '"1","ciao","0","training_sports"\n')
    with pytest.raises(LlamantinoError, match=r"odd.csv:2: column 'dataset' has 'training_sports'"):
        task.read([other_dataset])
    # the contextual task needs every tweet's metadata; the textual one takes no metadata
    textual = write(tmp_path / "t.csv",
                    header + '"1","ciao","0","training_politics"\n"2","hey","1","training_politics"\n')
    context = files("haspeede3-contextual", "train")[1]
    with pytest.raises(LlamantinoError, match=r"tweet '1' has no row in the contextual"):
        get_task("haspeede3-contextual").read([textual, context])
    with pytest.raises(LlamantinoError, match="use haspeede3-contextual"):
        task.read([textual, context])
    sub = write(tmp_path / "sub.csv", "anonymized_tweet_id,label\n1,si\n")
    with pytest.raises(LlamantinoError, match=r"sub.csv:2: column 'label' has 'si'"):
        task.read_predictions(sub)
    sub = write(tmp_path / "sub2.csv", "id,label\n1,1\n")
    with pytest.raises(LlamantinoError, match=r"sub2.csv: missing column 'anonymized_tweet_id'"):
        task.read_predictions(sub)


# ---------------------------------------------------------------------------------------
# HODI


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


def test_hodi_bad_inputs(tmp_path):
    bad = write(tmp_path / "b.tsv", "id\ttext\trationales\n1\tciao\t[1, x]\n")
    with pytest.raises(LlamantinoError, match=r"b.tsv:2: column 'rationales' has '\[1, x\]'"):
        get_task("hodi-b").read([bad])
    far = write(tmp_path / "far.tsv", "id\ttext\trationales\n1\tciao\t[2, 9]\n")
    with pytest.raises(LlamantinoError, match=r"far.tsv:2: .*index 9 but the text has 4 characters"):
        get_task("hodi-b").read([far])
    label = write(tmp_path / "a.tsv", "id\ttext\thomotransphobic\n1\tciao\t0\n2\tciao\tyes\n")
    with pytest.raises(LlamantinoError, match=r"a.tsv:3: column 'homotransphobic' has 'yes'"):
        get_task("hodi-a").read([label])
    no_text = write(tmp_path / "c.tsv", "id\ttesto\thomotransphobic\n1\tciao\t0\n")
    with pytest.raises(LlamantinoError, match=r"c.tsv: missing column 'text'"):
        get_task("hodi-a").read([no_text])
    dup = write(tmp_path / "d.tsv", "id\ttext\thomotransphobic\n1\tciao\t0\n1\tciao\t1\n")
    with pytest.raises(LlamantinoError, match=r"d.tsv:3: id '1' appears twice"):
        get_task("hodi-a").read([dup])


# ---------------------------------------------------------------------------------------
# LangLearn


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


def test_langlearn_bad_inputs(tmp_path):
    task = get_task("langlearn")
    xml = write(tmp_path / "Essays_CItA.xml",
                '<dataset><doc id="1">Primo tema.</doc><doc id="2">Secondo.</doc></dataset>')
    no_order = write(tmp_path / "Training_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\n1\t2\t1_1\n")
    with pytest.raises(LlamantinoError, match=r"Training_CItA.tsv: missing column 'Order_2'"):
        task.read([no_order, xml])
    bad_code = write(tmp_path / "Training_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n1\t2\t1_1\tQ3\n")
    with pytest.raises(LlamantinoError, match=r"Training_CItA.tsv:2: column 'Order_2' has 'Q3'"):
        task.read([bad_code, xml])
    missing_essay = write(tmp_path / "Training_CItA.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\n1\t7\t1_1\t1_2\n")
    with pytest.raises(LlamantinoError, match=r"Training_CItA.tsv:2: column 'Essay_2' has essay id '7'"):
        task.read([missing_essay, xml])
    broken_xml = write(tmp_path / "Essays_CItA.xml", '<dataset><doc id="1">Primo</dataset>')
    with pytest.raises(LlamantinoError, match=r"Essays_CItA.xml:1: malformed XML"):
        task.read([missing_essay, broken_xml])
    pred = write(tmp_path / "pred.tsv", "Essay_1\tEssay_2\tOrder_1\tOrder_2\tPred\n1\t2\t1_1\t1_2\tsi\n")
    with pytest.raises(LlamantinoError, match=r"pred.tsv:2: column 'Pred' has 'si'"):
        task.read_predictions(pred)


# ---------------------------------------------------------------------------------------
# NERMuD


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


def test_nermud_bad_inputs(tmp_path):
    task = get_task("nermud")
    bad_label = write(tmp_path / "WN_train.tsv", "Mario\tB-PER\nRossi\tB-MISC\n")
    with pytest.raises(LlamantinoError, match=r"WN_train.tsv:2: label 'B-MISC'"):
        task.read([bad_label])
    three = write(tmp_path / "three.tsv", "Mario\tB-PER\textra\n")
    with pytest.raises(LlamantinoError, match=r"three.tsv:1: expected token<TAB>label, found 3"):
        task.read([three])
    mixed = write(tmp_path / "mixed.tsv", "Mario\tB-PER\nRossi\n")
    with pytest.raises(LlamantinoError, match=r"mixed.tsv:2: line has 1 field"):
        task.read([mixed])
    unlabelled = task.read([write(tmp_path / "WN_test_nolabel.tsv", "Mario\nRossi\n\nCiao\n")])
    assert [it.gold for it in unlabelled] == [None, None]
    pred = write(tmp_path / "pred.tsv", "Mario\tB-PERSON\n")
    with pytest.raises(LlamantinoError, match=r"pred.tsv:1: label 'B-PERSON'"):
        task.read_predictions(pred)


# ---------------------------------------------------------------------------------------
# PoliticIT


def test_politicit_items_are_chunks_of_clusters():
    items = read_items("politicit", "train")
    first = items[0]
    assert first.id.endswith("#1") and len(first.id.split("#")[0]) == 32
    assert first.input == ("Oggi in aula per difendere la sanità pubblica, un diritto di tutti @user\n"
                           "Servono più asili nido e congedi paritari: la parità parte da qui")
    assert first.gold == ("female", "left", "moderate_left")
    assert first.output == "donna sinistra centrosinistra"
    assert {it.output for it in items} >= {"uomo destra destra", "donna destra centrodestra", "uomo sinistra sinistra"}
    gold = get_task("politicit").read_gold(files("politicit", "test"))
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


def test_politicit_bad_inputs(tmp_path):
    task = get_task("politicit")
    header = "label,gender,ideology_binary,ideology_multiclass,tweet\n"
    other = write(tmp_path / "g.csv", header + "abc,other,left,left,ciao\n")
    with pytest.raises(LlamantinoError, match=r"g.csv:2: column 'gender' has 'other'"):
        task.read([other])
    mismatch = write(tmp_path / "m.csv", header + "abc,male,right,moderate_left,ciao\n")
    with pytest.raises(LlamantinoError, match=r"m.csv:2: ideology_binary 'right' does not match"):
        task.read([mismatch])
    split = write(tmp_path / "s.csv", header + "abc,male,left,left,ciao\nabc,female,left,left,ciao\n")
    with pytest.raises(LlamantinoError, match=r"s.csv:3: cluster 'abc' has labels"):
        task.read([split])
    missing = write(tmp_path / "x.csv", "label,gender,ideology_multiclass,tweet\nabc,male,left,ciao\n")
    with pytest.raises(LlamantinoError, match=r"x.csv: missing column 'ideology_binary'"):
        task.read([missing])
    blind = task.read([write(tmp_path / "blind.csv", "label,tweet\nabc,ciao\nabc,ciao ancora\n")])
    assert [(it.id, it.gold) for it in blind] == [("abc#1", None)]


# ---------------------------------------------------------------------------------------
# WiC-ITA


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


# ---------------------------------------------------------------------------------------
# Agreement with the organisers' scorers. Small files go through llamantino (reader,
# submission reader, score); the figures the organisers' own scripts print on the very same
# files are pinned beside the hand derivation, with the repository and commit of the script
# that printed them (run outside this project, with the library versions named); the edge
# cases pin where llamantino deliberately differs (see each task module's notes).
#
# HODI: HODI-EVALITA/HODI_2023 compute_metrics.py + evaluation_utils.py at
#   e087e2ed28c31b094ccf03efde2a23b54a05cc7d, with its requirements.txt pins (pandas 2.0.3,
#   scikit-learn 1.2.2, numpy 1.24.4, scipy 1.10.1): `python compute_metrics.py --submission_path
#   team.zip --gold_path_raw gold.tsv --task a|b`, the run files zipped.
# NERMuD: dhfbk/KIND evalita-2023/scripts/get-results.py at a2ad139171ef7fde0dff0f8ea94d18356340ada9,
#   with scikit-learn 1.2.2: `python get-results.py GOLD PRED` (a table with 2 digits).
# WiC-ITA: wic-ita/data evaluation.py at 3a9ba283a905ca878c41f4349ebc15541946dc60, with
#   scikit-learn 1.2.2: `python evaluation.py --gt_bin_path binary --gt_rank_path ranking
#   --submission sub.zip` (the gold as binary/test.jsonl; the zip holds binary.jsonl).


HODI_GOLD = ("id\ttext\thomotransphobic\trationales\n1\tciao a tutti\t1\t[0, 1, 6]\n2\tciao\t0\t\n"
             "3\tciao\t0\t[]\n4\tciao a voi\t1\t[5, 6]\n5\tsalve\t0\t\n")


def test_hodi_a_agrees_with_the_official_scorer(tmp_path):
    task = get_task("hodi-a")
    gold_path = write(tmp_path / "gold.tsv", HODI_GOLD)
    # rows in another order: the official scorer joins on id, so does this one
    pred_path = write(tmp_path / "team.A.run1", "id\thomotransphobic\n5\t0\n4\t1\n3\t1\n2\t0\n1\t0\n")
    # class 1: gold {1, 4}, predicted {4, 3}: F1 1/2; class 0: gold {2, 3, 5}, predicted
    # {5, 2, 1}: F1 2/3 -> 7/12. The official scorer prints "run1 0.5833333333333333".
    result = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    assert result["macro_f1"] == pytest.approx(7 / 12)
    assert result["macro_f1"] == pytest.approx(0.5833333333333333, rel=1e-12)
    # a gold with one class: the macro average runs over the classes present, as sklearn's;
    # the official scorer prints "run2 1.0"
    one_class = write(tmp_path / "one.tsv", "id\ttext\thomotransphobic\n1\tuno\t0\n2\tdue\t0\n")
    all_zero = write(tmp_path / "team.A.run2", "id\thomotransphobic\n1\t0\n2\t0\n")
    assert task.score(task.read_gold([one_class]), task.read_predictions(all_zero))["macro_f1"] == 1.0
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
    result = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    assert result["f1"] == pytest.approx(47 / 105)
    assert result["f1"] == pytest.approx(0.44761904761904764, rel=1e-12)


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
    result = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
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
        task.score(task.read_gold([gold_path]), task.read_predictions(merged))
    # a line without two fields: the script skips it (shifting the pairing); here it is an error
    with pytest.raises(LlamantinoError, match=r"short.tsv:2: expected token<TAB>label, found 1"):
        task.read_predictions(write(tmp_path / "short.tsv", "Mario\tB-PER\nRossi\t\n"))


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


def test_haspeede_scoring_decisions(tmp_path):
    # no official code was published: (F1 hate + F1 non-hate) / 2, by hand
    task = get_task("haspeede3")
    header = '"anonymized_tweet_id","anonymized_text","label","dataset"\n'
    gold_path = write(tmp_path / "test_textual_gold.csv", header + '"1","a","1","test_politics"\n'
                      '"2","b","1","test_politics"\n"3","c","0","test_politics"\n"4","d","1","test_religious"\n')
    # the religious tweet belongs to subtask B: subtask A neither needs nor takes it
    gold = task.read_gold([gold_path])
    assert list(gold) == ["1", "2", "3"]
    # rows matched by id; an empty cell is a wrong answer
    pred = task.read_predictions(write(tmp_path / "run.csv", "anonymized_tweet_id,label\n3,1\n2,\n1,1\n"))
    # hate: tp 1, fp 1, fn 1 -> 1/2; non-hate: gold {3}, predicted nothing -> 0 -> 1/4
    assert task.score(gold, pred)["macro_f1"] == pytest.approx(1 / 4)
    with pytest.raises(LlamantinoError, match=r"1 prediction id\(s\) are not in the gold \(e.g. 4\)"):
        task.score(gold, {**pred, "4": 1})


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
