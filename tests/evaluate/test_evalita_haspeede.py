"""EVALITA 2023 HaSpeeDe3 (hate speech, textual and contextual subtask A):
what this task does that the others do not."""

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import item_by_id, read_file, read_items, write


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


HEADER = '"anonymized_tweet_id","anonymized_text","label","dataset"\n'
BAD_FILES = [  # (reader, file, text, the error)
    ("read", "training_textual.csv", HEADER + '"1","ciao","2","training_politics"\n',
     r"training_textual.csv:2: column 'label' has '2'"),
    ("read", "no_text.csv", '"anonymized_tweet_id","text","label","dataset"\n"1","x","0","training_politics"\n',
     r"no_text.csv: missing column 'anonymized_text'"),
    ("read", "odd.csv", HEADER + '"1","ciao","0","training_sports"\n',
     r"odd.csv:2: column 'dataset' has 'training_sports'"),
    ("read_predictions", "sub.csv", "anonymized_tweet_id,label\n1,si\n", r"sub.csv:2: column 'label' has 'si'"),
    ("read_predictions", "sub2.csv", "id,label\n1,1\n", r"sub2.csv: missing column 'anonymized_tweet_id'"),
]


@pytest.mark.parametrize("method, file, text, error", BAD_FILES)
def test_haspeede_bad_files_are_refused(method, file, text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file("haspeede3", method, tmp_path / file, text)


def test_haspeede_metadata_only_in_the_contextual_task(tmp_path):
    # the contextual task needs every tweet's metadata; the textual one takes no metadata
    textual = write(tmp_path / "t.csv",
                    HEADER + '"1","ciao","0","training_politics"\n"2","hey","1","training_politics"\n')
    context = sample_files("haspeede3-contextual", "train")[1]
    with pytest.raises(LlamantinoError, match=r"tweet '1' has no row in the contextual"):
        get_task("haspeede3-contextual").read([textual, context])
    with pytest.raises(LlamantinoError, match="use haspeede3-contextual"):
        get_task("haspeede3").read([textual, context])


def test_haspeede_scoring_decisions(tmp_path):
    # no official code was published: (F1 hate + F1 non-hate) / 2, by hand
    task = get_task("haspeede3")
    gold_path = write(tmp_path / "test_textual_gold.csv", HEADER + '"1","a","1","test_politics"\n'
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
