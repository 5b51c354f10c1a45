"""EVALITA 2023 GeoLingIt (the author's region, subtask A, and place, subtask B):
what this task does that the others do not."""

import math

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files

from helpers.evalita import read_file, score_files, write

# Agreement with the organisers' scorer (how it is checked: helpers.evalita.score_files):
# GeoLingIt: dhfbk/geolingit-evalita2023 eval.py at 30655245a39937be334492752b7d602855feeb85,
# run with scikit-learn 1.2.2 and haversine 2.8.0 (`python eval.py -S a|b -G GOLD -P PRED -D dev|test`).


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
    path = write(tmp_path / "dev_a.tsv", 'id\ttext\tregion\n1\t"virgolette aperte\tLazio\n')
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


BAD_FILES = [  # (reader, file, text, the error)
    ("read", "a.tsv", "id\ttext\tregion\n1\tuno\tLazio\n2\tdue\tAtlantide\n",
     r"a.tsv:3: column 'region' has 'Atlantide'"),
    ("read", "b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t95.0\t12\n", r"b.tsv:2: column 'latitude' has '95.0'"),
    ("read", "b.tsv", "id\ttext\tlatitude\n1\tuno\t45.0\n", "b.tsv: missing column 'longitude'"),
    ("read_predictions", "s.tsv", "id\ttext\tregione\n1\tuno\tLazio\n",
     "s.tsv: missing column 'region'.*or 'latitude' and 'longitude'"),
]


@pytest.mark.parametrize("method, file, text, error", BAD_FILES)
def test_geolingit_bad_files_are_refused(method, file, text, error, tmp_path):
    with pytest.raises(LlamantinoError, match=error):
        read_file("geolingit", method, tmp_path / file, text)


def test_geolingit_a_and_b_must_agree_on_the_text(tmp_path):
    a = write(tmp_path / "a.tsv", "id\ttext\tregion\n1\tuno\tLazio\n")
    b = write(tmp_path / "b.tsv", "id\ttext\tlatitude\tlongitude\n1\taltro\t41.9\t12.5\n")
    with pytest.raises(LlamantinoError, match=r"b.tsv:2: id '1' has another text"):
        get_task("geolingit").read([a, b])


GEO_GOLD = ("id\ttext\tregion\n1\tuno\tLazio\n2\tdue\tLazio\n3\ttre\tSicilia\n4\tquattro\tVeneto\n"
            "5\tcinque\tVeneto\n6\tsei\tVeneto\n7\tsette\tCampania\n")


# a region outside the list ("Atlantide") and an empty cell are wrong answers
GEO_PRED = ("id\ttext\tregion\n1\t\tLazio\n2\t\tSicilia\n3\t\tSicilia\n4\t\tVeneto\n5\t\tToscana\n"
            "6\t\tAtlantide\n7\t\t\n")


FOUR_DIGITS = 5e-5  # eval.py prints classification_report with digits=4


def test_geolingit_a_agrees_with_eval_py_over_the_fixed_region_list(tmp_path):
    task = get_task("geolingit")
    gold_path, pred_path = write(tmp_path / "dev_a.tsv", GEO_GOLD), write(tmp_path / "team.standard.a.1", GEO_PRED)
    scores = score_files(task, gold_path, pred_path)
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
    test_split = score_files(task, gold_path, pred_path, split="test")
    assert test_split["a_macro_f1"] == pytest.approx(11 / 102)
    assert test_split["a_macro_f1"] == pytest.approx(0.1078, abs=FOUR_DIGITS)
    # a test-only region in the gold makes it a test gold: Abruzzo right -> (11/6 + 1) / 17 = 1/6;
    # eval.py -D test prints "macro avg 0.2059 0.1667 0.1667 8"
    gold_test = write(tmp_path / "test_a.tsv", GEO_GOLD + "8\totto\tAbruzzo\n")
    pred_test = write(tmp_path / "team.standard.a.2", GEO_PRED + "8\t\tAbruzzo\n")
    scores = score_files(task, gold_test, pred_test)
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
    gold_path = write(tmp_path / "dev_b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t0.0\t0.0\n"
                                             "2\tdue\t45.46\t9.19\n3\ttre\t38.12\t13.36\n")
    pred_path = write(tmp_path / "team.standard.b.1", "id\ttext\tlatitude\tlongitude\n1\t\t0.0\t1.0\n"
                                                     "2\t\t45.46\t9.19\n3\t\t41.9\t12.5\n")
    scores = score_files(task, gold_path, pred_path)
    # row 1: one degree along the equator, 2 pi 6371.0088 / 360 = 111.195 km (eval.py on row 1
    # alone prints "Avg distance: 111.1950802335329 km"); row 2: 0; row 3: Rome to Palermo,
    # 426.644 km -> mean 179.280 km. eval.py -S b prints "Avg distance: 179.2797932386293 km".
    assert 2 * math.pi * 6371.0088 / 360 == pytest.approx(111.1950802335329, rel=1e-12)
    assert scores["b_mean_km"] == pytest.approx(179.2797932386293, rel=1e-12)
    assert scores["b_unparsed"] == 0


def test_geolingit_pairs_by_id_and_refuses_what_eval_py_would_mis_pair(tmp_path):
    task = get_task("geolingit")
    gold = task.read_gold([write(tmp_path / "dev_a.tsv", GEO_GOLD)])
    lines = GEO_PRED.splitlines()
    # rows in another order: eval.py would pair them with the wrong tweets
    reordered = write(tmp_path / "t.standard.a.1", "\n".join([lines[0], *lines[:0:-1]]) + "\n")
    with pytest.raises(LlamantinoError, match="not in the gold's order"):
        task.score(gold, task.read_predictions(reordered))
    # a missing last row: eval.py would zip 6 rows and score them; here the id is named
    short = write(tmp_path / "t.standard.a.2", "\n".join(lines[:-1]) + "\n")
    with pytest.raises(LlamantinoError, match=r"1 gold id\(s\) have no prediction \(e.g. 7\)"):
        task.score(gold, task.read_predictions(short))
    extra = write(tmp_path / "t.standard.a.3", GEO_PRED + "99\t\tLazio\n")
    with pytest.raises(LlamantinoError, match=r"1 prediction id\(s\) are not in the gold \(e.g. 99\)"):
        task.score(gold, task.read_predictions(extra))
    # no header: eval.py would skip the first prediction as one; here the file is refused
    with pytest.raises(LlamantinoError, match="missing column"):
        task.read_predictions(write(tmp_path / "t.standard.a.4", "\n".join(lines[1:]) + "\n"))
    # the region list comes from the whole gold file: its first three tweets alone hold dev
    # regions only, but scored from a test gold they still count over the 17 test regions
    test_gold = task.read_gold([write(tmp_path / "test_a.tsv", GEO_GOLD + "8\totto\tAbruzzo\n")])
    first = dict(list(test_gold.items())[:3])
    assert task.score(first, dict(first))["a_regions"] == 17
    # surrounding spaces are removed here (eval.py would compare "Lazio " as it is)
    spaced = write(tmp_path / "t.standard.a.5", GEO_PRED.replace("1\t\tLazio", "1\t\tLazio "))
    assert task.read_predictions(spaced)["1"].region == "Lazio"
    # an empty coordinate cell: eval.py stops (float('')); here it is an unparsed answer
    b_gold = task.read_gold([write(tmp_path / "dev_b.tsv", "id\ttext\tlatitude\tlongitude\n1\tuno\t41.9\t12.5\n")])
    b_pred = task.read_predictions(write(tmp_path / "t.standard.b.1", "id\ttext\tlatitude\tlongitude\n1\t\t\t\n"))
    assert task.score(b_gold, b_pred)["b_unparsed"] == 1
