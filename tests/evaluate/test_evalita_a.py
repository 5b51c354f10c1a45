"""EVALITA 2023 tasks ACTI, CLinkaRT, DisCoTex, EMit, GeoLingIt: readers on the bundled
samples, answers (target <-> decode), official submission files, metrics worked out by hand,
and bad input."""

import math

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import TABLE_1

MY_TASKS = ("acti-a", "acti-b", "clinkart", "discotex-1", "discotex-2", "emit", "geolingit")
SAMPLE_COUNTS = {"acti-a": (24, 10), "acti-b": (20, 8), "clinkart": (20, 8), "discotex-1": (20, 10),
                 "discotex-2": (20, 10), "emit": (24, 10), "geolingit": (20, 10)}


def test_table_1_with_the_papers_examples_filled_in():
    from llamantino.data.prompts import evalita_instruction

    assert evalita_instruction("wic-ita", word="affare") == TABLE_1["wic-ita"]
    # the paper's example stops at "Amici:" (its figure is cut off in the table)
    contextual = evalita_instruction("haspeede3-contextual", date="2018-08-11", retweets="0.0", likes="6.0",
                                     created="2018-04-01", posts="554.0", followers="748.0", friends="301.0")
    assert contextual == TABLE_1["haspeede3-contextual"] + " 301.0"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# All tasks: samples, instructions, round trips, submissions


@pytest.mark.parametrize("name", MY_TASKS)
def test_samples_read_with_the_papers_instruction(name):
    task = get_task(name)
    for split, expected in zip(("train", "test"), SAMPLE_COUNTS[name]):
        items = task.read(sample_files(name, split))
        assert len(items) == expected
        assert len({it.id for it in items}) == expected
        for it in items:
            assert it.task == name
            assert it.instruction == TABLE_1[name]
            assert it.input.strip() and it.output.strip()
            assert it.gold is not None
            assert set(it.record()) == {"id", "task", "instruction", "input", "output"}


@pytest.mark.parametrize("name", MY_TASKS)
def test_every_sample_target_decodes_to_its_label(name):
    task = get_task(name)
    for split in ("train", "test"):
        for it in task.read(sample_files(name, split)):
            assert it.output == task.target(it.gold, it)
            assert task.decode(it.output, it) == it.gold, it.id


@pytest.mark.parametrize("name", MY_TASKS)
def test_submission_written_and_read_back_scores_perfectly(name, tmp_path):
    task = get_task(name)
    items = task.read(sample_files(name, "test"))
    gold = task.read_gold(sample_files(name, "test"))
    assert gold == {it.id: it.gold for it in items}
    path = tmp_path / ("team.standard.a.1" if name == "geolingit" else "submission")
    task.write_predictions(items, [it.gold for it in items], path)
    pred = task.read_predictions(path)
    assert list(pred) == list(gold)
    scores = task.score(gold, pred)
    # GeoLingIt A averages over the 13 dev regions; the sample holds 10 of them
    perfect = {"acti-a": 1.0, "acti-b": 1.0, "clinkart": 1.0, "discotex-1": 1.0, "discotex-2": 1.0,
               "emit": 1.0, "geolingit": 10 / 13}[name]
    assert scores[task.primary_metric] == pytest.approx(perfect)


@pytest.mark.parametrize("name", MY_TASKS)
def test_garbage_answers_decode_to_none(name):
    task = get_task(name)
    item = task.read(sample_files(name, "test"))[0]
    for answer in ("", "   ", "boh", "Non saprei proprio.", "###", "[INST]"):
        assert task.decode(answer, item) is None, answer


@pytest.mark.parametrize("name", MY_TASKS)
def test_predictions_must_line_up_with_the_gold(name):
    task = get_task(name)
    items = task.read(sample_files(name, "test"))
    gold = {it.id: it.gold for it in items}
    pred = {it.id: it.gold for it in items[1:]}
    pred["nope"] = items[0].gold
    with pytest.raises(LlamantinoError, match="1 gold id.*no prediction.*1 prediction id.*nope"):
        task.score(gold, pred)


def test_every_task_has_bundled_sample_files():
    from llamantino.evaluate.evalita import TASK_NAMES

    for name in TASK_NAMES:
        for split in ("train", "test"):
            files = sample_files(name, split)
            assert files and all(p.is_file() for p in files), (name, split)
    with pytest.raises(LlamantinoError, match="unknown EVALITA task 'emitt'"):
        sample_files("emitt", "train")
    with pytest.raises(LlamantinoError, match="unknown sample split 'dev'"):
        sample_files("emit", "dev")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(LlamantinoError, match="missing.csv: no such file"):
        get_task("acti-a").read([tmp_path / "missing.csv"])


# ---------------------------------------------------------------------------------------
# ACTI


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
    path = write(tmp_path, "subtaskA_train.csv",
                 'Id,comment_text,conspiratorial\n0,"Primo, con virgola",0\n'
                 '1,"Su due\nrighe, e ""virgolette""",1\n2,terzo,2\n')
    with pytest.raises(LlamantinoError, match=r"subtaskA_train.csv:5: column 'conspiratorial' has '2'"):
        task.read([path])
    path.write_text(path.read_text().replace("2,terzo,2", "2,terzo,1"))
    items = task.read([path])
    assert items[1].input == 'Su due\nrighe, e "virgolette"'
    assert [it.gold for it in items] == [0, 1, 1]


def test_acti_wrong_columns_and_topic_mismatch(tmp_path):
    path = write(tmp_path, "subtaskA_train.csv", "Id,text,conspiratorial\n0,ciao,0\n")
    with pytest.raises(LlamantinoError, match="subtaskA_train.csv: missing column 'comment_text'"):
        get_task("acti-a").read([path])
    path = write(tmp_path, "subtaskB_train.csv", "Id,comment_text,topic,conspiracy\n0,ciao,Russia,3\n")
    with pytest.raises(LlamantinoError, match="subtaskB_train.csv:2: topic 'Russia' does not match conspiracy code 3"):
        get_task("acti-b").read([path])
    path = write(tmp_path, "subtaskB_test.csv", "Id,comment_text,topic\n0,ciao,Marte\n")
    with pytest.raises(LlamantinoError, match="subtaskB_test.csv:2: column 'topic' has 'Marte'"):
        get_task("acti-b").read([path])


def test_acti_unlabelled_test_file(tmp_path):
    path = write(tmp_path, "subtaskA_test.csv", "Id,comment_text\n0,uno\n1,due\n")
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
        task.read_predictions(write(tmp_path, "sub.csv", "Id,Predicted\n0,1\n"))
    with pytest.raises(LlamantinoError, match=r"sub.csv:3: column 'Expected' has '7'"):
        task.read_predictions(write(tmp_path, "sub.csv", "Id,Expected\n0,1\n1,7\n"))
    with pytest.raises(LlamantinoError, match=r"sub.csv:3: id '0' appears twice"):
        task.read_predictions(write(tmp_path, "sub.csv", "Id,Expected\n0,1\n0,2\n"))


def test_acti_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gold = [0, 1, 2, 3, 3, 2, 1, 0, 0]
    pred = [0, 1, 3, 3, 2, 2, 0, 0, 1]
    ours = get_task("acti-b").score(dict(enumerate(gold)), dict(enumerate(pred)))["macro_f1"]
    assert ours == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro"))


# ---------------------------------------------------------------------------------------
# CLinkaRT


def clinkart_item(tmp_path, text, rels=""):
    return get_task("clinkart").read([write(tmp_path, "training.txt", f"9|t|{text}\n{rels}")])[0]


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
    short = write(tmp_path, "short.txt", "7|t|Sodio 131 mEq/l.\n7\tREL\t6-15\t0-5\n")
    assert task.read_predictions(short) == {"7": frozenset({((6, 15), (0, 5))})}


def test_clinkart_bad_input(tmp_path):
    task = get_task("clinkart")
    with pytest.raises(LlamantinoError, match=r"t.txt:2: RML text '9 g/d' is not text\[11:17\] '9 g/dl'"):
        task.read([write(tmp_path, "t.txt", "1|t|Emoglobina 9 g/dl.\n1\tREL\t11-17\t0-10\t9 g/d\tEmoglobina\n")])
    with pytest.raises(LlamantinoError, match=r"t.txt:2: EVENT span 0-99 is outside"):
        task.read([write(tmp_path, "t.txt", "1|t|Emoglobina 9 g/dl.\n1\tREL\t11-17\t0-99\n")])
    with pytest.raises(LlamantinoError, match=r"t.txt:2: RML offsets 'x' are not 'start-end'"):
        task.read([write(tmp_path, "t.txt", "1|t|Emoglobina 9 g/dl.\n1\tREL\tx\t0-10\n")])
    with pytest.raises(LlamantinoError, match=r"t.txt:3: REL line for document '2' does not follow"):
        task.read([write(tmp_path, "t.txt", "1|t|Emoglobina 9 g/dl.\n\n2\tREL\t11-17\t0-10\n")])
    with pytest.raises(LlamantinoError, match=r"t.txt:1: expected '<docid>\|t\|<text>' or a REL line"):
        task.read([write(tmp_path, "t.txt", "solo testo\n")])
    with pytest.raises(LlamantinoError, match=r"t.txt:3: document '1' appears twice"):
        task.read([write(tmp_path, "t.txt", "1|t|uno\n\n1|t|due\n")])


# ---------------------------------------------------------------------------------------
# DisCoTex


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
    with_header = write(tmp_path, "h.tsv", "ID\tCLASS\na\t1\n")
    assert task.read_predictions(with_header) == {"a": 1}
    with pytest.raises(LlamantinoError, match=r"h.tsv:2: column 'CLASS' has 'si'"):
        task.read_predictions(write(tmp_path, "h.tsv", "a\t1\nb\tsi\n"))
    with pytest.raises(LlamantinoError, match=r"h.tsv:1: expected 2 tab-separated fields"):
        task.read_predictions(write(tmp_path, "h.tsv", "a\t1\t0\n"))


def test_discotex_bad_input(tmp_path):
    with pytest.raises(LlamantinoError, match="d1.tsv: missing column 'TARGET'"):
        get_task("discotex-1").read([write(tmp_path, "d1.tsv", "ID\tPROMPT\tCLASS\nx\ty\t1\n")])
    # the record after a two-line one starts on line 4
    with pytest.raises(LlamantinoError, match=r"d1.tsv:4: column 'CLASS' has '2'"):
        get_task("discotex-1").read([write(tmp_path, "d1.tsv", 'ID\tPROMPT\tTARGET\tCLASS\n'
                                                              'x\t"a\nb"\tc\t1\ny\tp\tt\t2\n')])
    with pytest.raises(LlamantinoError, match=r"d2.tsv:2: column 'SCORE' has '7'"):
        get_task("discotex-2").read([write(tmp_path, "d2.tsv", "ID\tTEXT\tSCORE\nx\ttesto\t7\n")])


def test_discotex_1_blind_test_file(tmp_path):
    items = get_task("discotex-1").read([write(tmp_path, "blind.tsv", "ID\tPROMPT\tTARGET\tCLASS\nx\tp\tt\t\n")])
    assert (items[0].gold, items[0].output) == (None, "")


def test_discotex_2_reads_mean_column_and_decodes_numbers(tmp_path):
    task = get_task("discotex-2")
    items = task.read([write(tmp_path, "old.tsv", "ID\tTEXT\tMEAN\tSTDEV\nx\tUn testo.\t3.6666666\t0.47\n")])
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


# ---------------------------------------------------------------------------------------
# EMit

EMIT_HEADER = "id,text,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust"


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
    swapped = write(tmp_path, "s.csv", "id,Anticipation,Anger,Disgust,Fear,Joy,Love,Neutral,Sadness,Surprise,Trust\n")
    with pytest.raises(LlamantinoError, match="s.csv: columns must be exactly id,Anger,Anticipation"):
        task.read_predictions(swapped)
    with pytest.raises(LlamantinoError, match="s.csv: missing column 'Trust'"):
        task.read_predictions(write(tmp_path, "s.csv", "id,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,"
                                                        "Sadness,Surprise\n"))
    with pytest.raises(LlamantinoError, match=r"s.csv:2: column 'Joy' has '2'"):
        task.read_predictions(write(tmp_path, "s.csv", "id,Anger,Anticipation,Disgust,Fear,Joy,Love,Neutral,"
                                                        "Sadness,Surprise,Trust\nx,0,0,0,0,2,0,0,0,0,0\n"))
    gold = {it.id: it.gold for it in items}
    reordered = dict(reversed(list(gold.items())))
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        task.score(gold, reordered)


def test_emit_bad_input(tmp_path):
    task = get_task("emit")
    with pytest.raises(LlamantinoError, match="e.csv: missing column 'Neutral'"):
        task.read([write(tmp_path, "e.csv", "id,text,Anger,Anticipation,Disgust,Fear,Joy,Love,Sadness,Surprise,"
                                            "Trust\nx,t,0,0,0,0,0,0,0,0,1\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:2: column 'Fear' has 'x'"):
        task.read([write(tmp_path, "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,x,0,0,0,0,0,0\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:2: no label set"):
        task.read([write(tmp_path, "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,0,0,0,0,0,0,0\n")])
    with pytest.raises(LlamantinoError, match=r"e.csv:3: 11 fields, expected 12"):
        task.read([write(tmp_path, "e.csv", f"{EMIT_HEADER}\nab,t,0,0,0,0,0,0,1,0,0,0\ncd,t,0,0,0,0,0,0,1,0,0\n")])
    items = task.read([write(tmp_path, "emit_test_nolabel.csv", 'id,text\nab,"Ciao, mondo"\n')])
    assert (items[0].input, items[0].gold) == ("Ciao, mondo", None)


def test_emit_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    gold = [(0, 0, 0, 0, 1, 1, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 1, 0, 0, 1)]
    pred = [(0, 0, 0, 0, 1, 0, 0, 0, 0, 0), (1, 0, 1, 0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 1, 0, 0, 0)]
    ours = get_task("emit").score(dict(enumerate(gold)), dict(enumerate(pred)))["macro_f1"]
    assert ours == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0))


# ---------------------------------------------------------------------------------------
# GeoLingIt


def test_geolingit_joins_a_and_b_by_id(tmp_path):
    from llamantino.evaluate.evalita.tasks.geolingit import GeoLabel

    task = get_task("geolingit")
    items = task.read(sample_files("geolingit", "test"))
    assert items[0].id == "13001" and items[0].input == "[USER] daje che stasera se vince"
    assert items[0].gold == GeoLabel("Lazio", 41.8902, 12.4922)
    assert items[0].output == "[regione] Lazio [geo] 41.8902 12.4922"
    only_a = task.read([sample_files("geolingit", "test")[0]])
    assert only_a[0].gold == GeoLabel("Lazio") and only_a[0].output == "[regione] Lazio"
    # quotes are text: the files are read with quoting disabled
    path = write(tmp_path, "dev_a.tsv", 'id\ttext\tregion\n1\t"virgolette aperte\tLazio\n')
    assert task.read([path])[0].input == '"virgolette aperte'


def test_geolingit_decoder_tolerance():
    from llamantino.evaluate.evalita.tasks.geolingit import GeoLabel

    task = get_task("geolingit")
    assert task.decode("[REGIONE] lazio [GEO] 41,89 12,54") == GeoLabel("Lazio", 41.89, 12.54)
    assert task.decode("Emilia-Romagna") == GeoLabel("Emilia Romagna")
    assert task.decode("friuli venezia giulia, 46.07, 13.23") == GeoLabel("Friuli-Venezia Giulia", 46.07, 13.23)
    assert task.decode("Trentino Alto Adige") == GeoLabel("Trentino-Alto Adige")
    assert task.decode("Regione: Sicilia, latitudine 38.1 e longitudine 13.3.") == GeoLabel("Sicilia", 38.1, 13.3)
    assert task.decode("[geo] 41.9 12.5") == GeoLabel(None, 41.9, 12.5)
    assert task.decode("L'autore è della Valle d’Aosta") == GeoLabel("Valle d'Aosta")
    assert task.decode("[regione] Puglia [geo] 200 300") == GeoLabel("Puglia")  # out of range: no point
    assert task.decode("[geo] 200 300") is None


def test_geolingit_region_macro_f1_by_hand():
    from llamantino.evaluate.evalita.tasks.geolingit import GeoLabel

    task = get_task("geolingit")
    gold = dict(enumerate(GeoLabel(r) for r in ["Lazio", "Lazio", "Sicilia", "Veneto", "Veneto", "Veneto"]))
    pred = dict(enumerate([GeoLabel("Lazio"), GeoLabel("Sicilia"), GeoLabel("Sicilia"), GeoLabel("Veneto"),
                           GeoLabel("Toscana"), None]))
    # every gold region is a dev region: the 13 dev regions count
    # Lazio tp 1 fn 1: F1 2/3; Sicilia tp 1 fp 1: F1 2/3; Veneto tp 1 fn 2: P 1 R 1/3 F1 1/2;
    # Toscana fp 1: F1 0; the 9 other dev regions: F1 0 -> macro = (2/3 + 2/3 + 1/2) / 13 = 11/78
    scores = task.score(gold, pred)
    assert scores["a_macro_f1"] == pytest.approx(11 / 78)
    assert scores["a_accuracy"] == pytest.approx(3 / 6)
    assert scores["a_regions"] == 13
    assert "b_mean_km" not in scores
    # the same run scored with the test set's 17 regions
    assert task.score(gold, pred, split="test")["a_macro_f1"] == pytest.approx(11 / 102)


def test_geolingit_mean_distance_by_hand():
    from llamantino.evaluate.evalita.tasks.geolingit import GeoLabel

    task = get_task("geolingit")
    assert task.lower_is_better == ("b_mean_km",)
    one_degree = 2 * math.pi * 6371.0088 / 360    # along the equator: 111.195 km
    gold = {"a": GeoLabel("Lazio", 0.0, 0.0), "b": GeoLabel("Lazio", 10.0, 20.0)}
    pred = {"a": GeoLabel("Lazio", 0.0, 1.0), "b": GeoLabel("Sicilia", 10.0, 20.0)}
    scores = task.score(gold, pred)
    assert scores["b_mean_km"] == pytest.approx(one_degree / 2)
    # Lazio is the only gold region: tp 1, fn 1 -> P 1, R 1/2, F1 2/3; over the 13 dev regions 2/39
    assert scores["a_macro_f1"] == pytest.approx(2 / 39)


def test_geolingit_submission_files(tmp_path):
    from llamantino.evaluate.evalita.tasks.geolingit import CENTRE, GeoLabel

    task = get_task("geolingit")
    items = task.read(sample_files("geolingit", "test"))
    gold = task.read_gold(sample_files("geolingit", "test"))
    preds = [it.gold for it in items]
    preds[1] = None
    a, b = tmp_path / "team.standard.a.1", tmp_path / "team.standard.b.1"
    task.write_predictions(items, preds, a)
    task.write_predictions(items, preds, b)
    assert a.read_text().splitlines()[:3] == ["id\ttext\tregion", "13001\t[USER] daje che stasera se vince\tLazio",
                                              "13002\t[USER] stamm' bbuon', nun te preoccupà\t"]
    assert b.read_text().splitlines()[1] == "13001\t[USER] daje che stasera se vince\t41.8902\t12.4922"
    pred_a = task.read_predictions(a)
    assert pred_a["13001"] == GeoLabel("Lazio") and pred_a["13002"] == GeoLabel()
    scores_a = task.score(gold, pred_a)                   # a subtask A file scores subtask A only
    assert set(scores_a) == {"a_macro_f1", "a_accuracy", "a_regions"}
    scores_b = task.score(gold, task.read_predictions(b))
    assert set(scores_b) == {"b_mean_km", "b_unparsed"} and scores_b["b_unparsed"] == 1
    from llamantino.evaluate.evalita.metrics import haversine_km
    g = items[1].gold
    assert scores_b["b_mean_km"] == pytest.approx(haversine_km(g.latitude, g.longitude, *CENTRE) / len(items))
    with pytest.raises(LlamantinoError, match="name the submission TEAM.<track>.a.<run>"):
        task.write_predictions(items, preds, tmp_path / "predictions.tsv")


def test_geolingit_bad_input(tmp_path):
    task = get_task("geolingit")
    with pytest.raises(LlamantinoError, match=r"a.tsv:3: column 'region' has 'Atlantide'"):
        task.read([write(tmp_path, "a.tsv", "id\ttext\tregion\n1\tuno\tLazio\n2\tdue\tAtlantide\n")])
    with pytest.raises(LlamantinoError, match=r"b.tsv:2: column 'latitude' has '95.0'"):
        task.read([write(tmp_path, "b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t95.0\t12\n")])
    with pytest.raises(LlamantinoError, match="b.tsv: missing column 'longitude'"):
        task.read([write(tmp_path, "b.tsv", "id\ttext\tlatitude\n1\tuno\t45.0\n")])
    a = write(tmp_path, "a.tsv", "id\ttext\tregion\n1\tuno\tLazio\n")
    b = write(tmp_path, "b.tsv", "id\ttext\tlatitude\tlongitude\n1\taltro\t41.9\t12.5\n")
    with pytest.raises(LlamantinoError, match=r"b.tsv:2: id '1' has another text"):
        task.read([a, b])
    with pytest.raises(LlamantinoError, match="s.tsv: missing column 'region'.*or 'latitude' and 'longitude'"):
        task.read_predictions(write(tmp_path, "s.tsv", "id\ttext\tregione\n1\tuno\tLazio\n"))


# ---------------------------------------------------------------------------------------
# Agreement with the organisers' scorers. Small files go through llamantino (reader,
# submission reader, score); the figures the organisers' own scripts print on the very same
# files are pinned beside the hand derivation, with the repository and commit of the script
# that printed them (run outside this project, with the library versions it names); the
# edge cases pin where llamantino deliberately differs (see each task module's notes).
#
# GeoLingIt: dhfbk/geolingit-evalita2023 eval.py at 30655245a39937be334492752b7d602855feeb85,
# run with scikit-learn 1.2.2 and haversine 2.8.0 (`python eval.py -S a|b -G GOLD -P PRED -D dev|test`).
# EMit: oaraque/emit evaluate.py at ace9b430805c135b2585fc00cdda9a7d996569d6, with pandas 2.0.3 and
# scikit-learn 1.2.2 (`python evaluate.py PRED A`, the gold as data/emit_test.csv).


GEO_GOLD = ("id\ttext\tregion\n1\tuno\tLazio\n2\tdue\tLazio\n3\ttre\tSicilia\n4\tquattro\tVeneto\n"
            "5\tcinque\tVeneto\n6\tsei\tVeneto\n7\tsette\tCampania\n")
# a region outside the list ("Atlantide") and an empty cell are wrong answers
GEO_PRED = ("id\ttext\tregion\n1\t\tLazio\n2\t\tSicilia\n3\t\tSicilia\n4\t\tVeneto\n5\t\tToscana\n"
            "6\t\tAtlantide\n7\t\t\n")
FOUR_DIGITS = 5e-5  # eval.py prints classification_report with digits=4


def test_geolingit_a_agrees_with_eval_py_over_the_fixed_region_list(tmp_path):
    task = get_task("geolingit")
    gold_path, pred_path = write(tmp_path, "dev_a.tsv", GEO_GOLD), write(tmp_path, "team.standard.a.1", GEO_PRED)
    scores = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    # Lazio tp 1 fn 1: F1 2/3; Sicilia tp 1 fp 1: 2/3; Veneto tp 1 fn 2 ("Atlantide" costs its
    # recall only): 1/2; Toscana (predicted, never gold), Campania (empty prediction) and the
    # 8 other dev regions: 0. Every gold region is a dev region, so the 13 dev regions count:
    # (2/3 + 2/3 + 1/2) / 13 = 11/78 (averaging over the 4 regions of the gold would give 11/24).
    # eval.py -D dev prints "macro avg 0.1923 0.1410 0.1410 7".
    assert scores["a_macro_f1"] == pytest.approx(11 / 78)
    assert scores["a_macro_f1"] == pytest.approx(0.1410, abs=FOUR_DIGITS)
    assert scores["a_regions"] == 13
    assert scores["a_accuracy"] == pytest.approx(3 / 7)
    # the same rows over the test split's 17 regions: 11/102; eval.py -D test prints
    # "macro avg 0.1471 0.1078 0.1078 7"
    test_split = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path), split="test")
    assert test_split["a_macro_f1"] == pytest.approx(11 / 102)
    assert test_split["a_macro_f1"] == pytest.approx(0.1078, abs=FOUR_DIGITS)
    # a test-only region in the gold makes it a test gold: Abruzzo right -> (11/6 + 1) / 17 = 1/6;
    # eval.py -D test prints "macro avg 0.2059 0.1667 0.1667 8"
    gold_test = write(tmp_path, "test_a.tsv", GEO_GOLD + "8\totto\tAbruzzo\n")
    pred_test = write(tmp_path, "team.standard.a.2", GEO_PRED + "8\t\tAbruzzo\n")
    scores = task.score(task.read_gold([gold_test]), task.read_predictions(pred_test))
    assert scores["a_regions"] == 17 and scores["a_macro_f1"] == pytest.approx(1 / 6)
    assert scores["a_macro_f1"] == pytest.approx(0.1667, abs=FOUR_DIGITS)


def test_geolingit_a_perfect_run_on_the_sample_scores_10_of_13():
    task = get_task("geolingit")
    dev_a = sample_files("geolingit", "test")[0]
    gold = task.read_gold([dev_a])
    assert len({g.region for g in gold.values()}) == 10
    # 10 regions right, the other 3 dev regions 0: 0.769, not 1.0. eval.py -D dev, the sample
    # file as gold and as prediction, prints "macro avg 0.7692 0.7692 0.7692 10".
    assert task.score(gold, dict(gold))["a_macro_f1"] == pytest.approx(10 / 13)
    assert task.score(gold, dict(gold))["a_macro_f1"] == pytest.approx(0.7692, abs=FOUR_DIGITS)


def test_geolingit_b_agrees_with_eval_py(tmp_path):
    task = get_task("geolingit")
    gold_path = write(tmp_path, "dev_b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t0.0\t0.0\n"
                                             "2\tdue\t45.46\t9.19\n3\ttre\t38.12\t13.36\n")
    pred_path = write(tmp_path, "team.standard.b.1", "id\ttext\tlatitude\tlongitude\n1\t\t0.0\t1.0\n"
                                                     "2\t\t45.46\t9.19\n3\t\t41.9\t12.5\n")
    scores = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    # row 1: one degree along the equator, 2 pi 6371.0088 / 360 = 111.195 km (eval.py on row 1
    # alone prints "Avg distance: 111.1950802335329 km"); row 2: 0; row 3: Rome to Palermo,
    # 426.644 km -> mean 179.280 km. eval.py -S b prints "Avg distance: 179.2797932386293 km".
    assert 2 * math.pi * 6371.0088 / 360 == pytest.approx(111.1950802335329, rel=1e-12)
    assert scores["b_mean_km"] == pytest.approx(179.2797932386293, rel=1e-12)
    assert scores["b_unparsed"] == 0


def test_geolingit_pairs_by_id_and_refuses_what_eval_py_would_mis_pair(tmp_path):
    task = get_task("geolingit")
    gold = task.read_gold([write(tmp_path, "dev_a.tsv", GEO_GOLD)])
    lines = GEO_PRED.splitlines()
    # rows in another order: eval.py would pair them with the wrong tweets
    reordered = write(tmp_path, "t.standard.a.1", "\n".join([lines[0], *lines[:0:-1]]) + "\n")
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        task.score(gold, task.read_predictions(reordered))
    # a missing last row: eval.py would zip 6 rows and score them; here the id is named
    short = write(tmp_path, "t.standard.a.2", "\n".join(lines[:-1]) + "\n")
    with pytest.raises(LlamantinoError, match=r"1 gold id\(s\) have no prediction \(e.g. 7\)"):
        task.score(gold, task.read_predictions(short))
    extra = write(tmp_path, "t.standard.a.3", GEO_PRED + "99\t\tLazio\n")
    with pytest.raises(LlamantinoError, match=r"1 prediction id\(s\) are not in the gold \(e.g. 99\)"):
        task.score(gold, task.read_predictions(extra))
    # no header: eval.py would skip the first prediction as one; here the file is refused
    with pytest.raises(LlamantinoError, match="missing column"):
        task.read_predictions(write(tmp_path, "t.standard.a.4", "\n".join(lines[1:]) + "\n"))
    # the region list comes from the whole gold file: its first three tweets alone hold dev
    # regions only, but scored from a test gold they still count over the 17 test regions
    test_gold = task.read_gold([write(tmp_path, "test_a.tsv", GEO_GOLD + "8\totto\tAbruzzo\n")])
    first = dict(list(test_gold.items())[:3])
    assert task.score(first, dict(first))["a_regions"] == 17
    # surrounding spaces are removed here (eval.py would compare "Lazio " as it is)
    spaced = write(tmp_path, "t.standard.a.5", GEO_PRED.replace("1\t\tLazio", "1\t\tLazio "))
    assert task.read_predictions(spaced)["1"].region == "Lazio"
    # an empty coordinate cell: eval.py stops (float('')); here it is an unparsed answer
    b_gold = task.read_gold([write(tmp_path, "dev_b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t41.9\t12.5\n")])
    b_pred = task.read_predictions(write(tmp_path, "t.standard.b.1", "id\ttext\tlatitude\tlongitude\n1\t\t\t\n"))
    assert task.score(b_gold, b_pred)["b_unparsed"] == 1


EMIT_COLUMNS = ("Anger", "Anticipation", "Disgust", "Fear", "Joy", "Love", "Neutral", "Sadness", "Surprise", "Trust")


def emit_row(item_id, active, text=None):
    cells = ["1" if c in active else "0" for c in EMIT_COLUMNS]
    return ",".join([item_id] + ([text] if text is not None else []) + cells)


def test_emit_agrees_with_evaluate_py(tmp_path):
    task = get_task("emit")
    gold_path = write(tmp_path, "emit_test.csv", "\n".join([
        EMIT_HEADER, emit_row("a", {"Anger", "Joy"}, "uno"), emit_row("b", {"Neutral"}, "due"),
        emit_row("c", {"Joy", "Trust"}, "tre"), emit_row("d", {"Sadness"}, "quattro")]) + "\n")
    header = ",".join(["id", *EMIT_COLUMNS])
    pred_rows = [emit_row("a", {"Anger"}), emit_row("b", {"Neutral", "Joy"}), emit_row("c", {"Joy"}),
                 emit_row("d", {"Fear"})]
    pred_path = write(tmp_path, "Team_SubtaskA_in-domain_run1.csv", "\n".join([header, *pred_rows]) + "\n")
    # Anger 1; Joy tp 1 fp 1 fn 1: 1/2; Neutral 1; Fear (false positive), Sadness, Trust (misses): 0;
    # Anticipation, Disgust, Love, Surprise set nowhere: undefined, 0, and still counted
    # -> (1 + 1/2 + 1) / 10 = 1/4. evaluate.py (gold as data/emit_test.csv) prints "F1-macro: 0.25"
    # and the per-column F1s "1.0 0.0 0.0 0.0 0.5 0.0 1.0 0.0 0.0 0.0".
    scores = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    assert scores["macro_f1"] == 0.25
    assert [scores[f"f1_{c.lower()}"] for c in EMIT_COLUMNS] == [1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0]
    # what evaluate.py refuses is refused: rows out of the gold's order, an empty or non-0/1 cell
    reordered = write(tmp_path, "r.csv", "\n".join([header, *pred_rows[::-1]]) + "\n")
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        task.score(task.read_gold([gold_path]), task.read_predictions(reordered))
    with pytest.raises(LlamantinoError, match=r"e.csv:5: column 'Trust' has ''"):
        task.read_predictions(write(tmp_path, "e.csv", "\n".join([header, *pred_rows[:3], "d" + ",0" * 9 + ","])))


def test_acti_scoring_decisions(tmp_path):
    # no official code was published (Kaggle); macro-F1 over the fixed classes, by hand
    task = get_task("acti-b")
    gold_path = write(tmp_path, "subtaskB_test.csv", "Id,comment_text,topic,conspiracy\n0,a,Covid,0\n"
                                                     "1,b,Covid,0\n2,c,Qanon,1\n3,d,Russia,2\n")
    # rows matched by Id (this file lists them backwards); an empty cell is a wrong answer
    pred_path = write(tmp_path, "sub.csv", "Id,Expected\n3,\n2,1\n1,1\n0,0\n")
    # Covid tp 1 fn 1: 2/3; Qanon tp 1 fp 1: 2/3; Russia (empty answer): 0; Terra Piatta, in
    # neither gold nor predictions: 0, and it counts -> (2/3 + 2/3) / 4 = 1/3
    scores = task.score(task.read_gold([gold_path]), task.read_predictions(pred_path))
    assert scores["macro_f1"] == pytest.approx(1 / 3)
    with pytest.raises(LlamantinoError, match=r"sub.csv:2: column 'Expected' has '4'"):
        task.read_predictions(write(tmp_path, "sub.csv", "Id,Expected\n3,4\n"))


def test_clinkart_scoring_decisions(tmp_path):
    # no official code was published: micro P/R/F1 over exact (RML span, EVENT span) pairs
    task = get_task("clinkart")
    text = "Emoglobina 9 g/dl. Sodio 131 mEq/l."
    gold = task.read_gold([write(tmp_path, "gold.txt", f"1|t|{text}\n1\tREL\t11-17\t0-10\n1\tREL\t25-34\t19-24\n\n"
                                                       "2|t|Nessun esame.\n")])
    # doc 1: one exact relation, the same one repeated (counts once), one whose RML span
    # overlaps the gold's without matching it (not credited); doc 2: no REL line, no relation
    pred_path = write(tmp_path, "run.txt", f"1|t|{text}\n1\tREL\t11-17\t0-10\n1\tREL\t11-17\t0-10\n"
                                           "1\tREL\t25-28\t19-24\n\n2|t|Nessun esame.\n")
    scores = task.score(gold, task.read_predictions(pred_path))
    # tp 1, fp 1, fn 1 -> P 1/2, R 1/2, F1 1/2
    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(LlamantinoError, match=r"1 gold id\(s\) have no prediction \(e.g. 2\)"):
        task.score(gold, task.read_predictions(write(tmp_path, "one.txt", f"1|t|{text}\n")))


def test_discotex_scoring_decisions(tmp_path):
    # no official code was published: accuracy (hits / records) and Pearson / Spearman, by hand
    gold_1 = get_task("discotex-1").read_gold([write(tmp_path, "g1.tsv", "ID\tPROMPT\tTARGET\tCLASS\n"
                                                                         "a\tp\tt\t1\nb\tp\tt\t0\nc\tp\tt\t1\n")])
    pred_1 = get_task("discotex-1").read_predictions(write(tmp_path, "p1.tsv", "c\t1\nb\t\na\t1\n"))
    assert get_task("discotex-1").score(gold_1, pred_1) == {"accuracy": pytest.approx(2 / 3)}  # empty cell wrong
    task = get_task("discotex-2")
    gold_2 = {"a": 1.0, "b": 2.0, "c": 3.0}
    # a constant prediction has no correlation: NaN, as scipy's pearsonr gives
    assert math.isnan(task.score(gold_2, {"a": 2.0, "b": 2.0, "c": 2.0})["pearson"])
    # an empty cell stands at 3.0 (and is counted): pred 1, 3, 3 -> Pearson sqrt(3)/2
    pred_2 = task.read_predictions(write(tmp_path, "p2.tsv", "ID\tSCORE\na\t1\nb\t\nc\t3\n"))
    scores = task.score(gold_2, pred_2)
    assert scores["pearson"] == pytest.approx(math.sqrt(3) / 2) and scores["unparsed"] == 1
