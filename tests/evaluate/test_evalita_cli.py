"""`llamantino evalita prepare` and `llamantino evalita score` on the bundled samples."""

import json

import pytest

from llamantino.cli import main
from llamantino.evaluate.evalita import get_task
from llamantino.evaluate.evalita.samples import sample_files


# Table 1 of the paper, ACTI subtask A
ACTI_A = "Stabilisci se il seguente testo contiene una teoria del complotto o cospirazione. Rispondi con si o no."


def records(folder):
    lines = (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------
# prepare


def test_prepare_one_task(tmp_path, capsys):
    out = tmp_path / "acti"
    train = sample_files("acti-a", "train")
    code, stdout, _ = run_cli(capsys, "evalita", "prepare", "--task", "acti-a", "--data", str(train[0]),
                              "--output", str(out))
    assert code == 0
    assert json.loads(stdout)["headline"] == {"records": 24, "tasks": 1}
    rows = records(out)
    assert len(rows) == 24
    assert rows[0] == {"id": "0", "task": "acti-a", "instruction": ACTI_A,
                       "input": "Il 5G serve a controllarci tutti, aprite gli occhi", "output": "si"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "evalita_prepare"
    assert manifest["metrics"]["tasks"] == {"acti-a": {"items": 24, "kept": 24, "labelled": 24}}
    assert manifest["inputs"][0]["sha256"]
    # the same run again is skipped; another run into the same folder is refused
    code, stdout, _ = run_cli(capsys, "evalita", "prepare", "--task", "acti-a", "--data", str(train[0]),
                              "--output", str(out))
    assert code == 0 and json.loads(stdout)["status"] == "skipped (done)"
    code, _, err = run_cli(capsys, "evalita", "prepare", "--task", "acti-a", "--data", str(train[0]),
                           "--max-per-task", "5", "--output", str(out))
    assert code == 2 and "settings differ: max_per_task" in err and "--overwrite" in err
    code, _, _ = run_cli(capsys, "evalita", "prepare", "--task", "acti-a", "--data", str(train[0]),
                         "--max-per-task", "5", "--output", str(out), "--overwrite")
    assert code == 0 and len(records(out)) == 5


def mixture_args(out, *extra):
    data = [f"acti-a={sample_files('acti-a', 'train')[0]}", f"emit={sample_files('emit', 'train')[0]}",
            *(f"geolingit={p}" for p in sample_files("geolingit", "train")),
            f"clinkart={sample_files('clinkart', 'train')[0]}"]
    return ["evalita", "prepare", "--data", *data, "--output", str(out), *extra]


def test_prepare_mixture_with_cap_and_seeded_shuffle(tmp_path, capsys):
    code, _, _ = run_cli(capsys, *mixture_args(tmp_path / "plain"))
    assert code == 0
    plain = records(tmp_path / "plain")
    # tasks in the order first named; GeoLingIt's A and B files joined into 20 tweets
    assert [r["task"] for r in plain] == ["acti-a"] * 24 + ["emit"] * 24 + ["geolingit"] * 20 + ["clinkart"] * 20
    assert plain[48]["output"] == "[regione] Lazio [geo] 41.9028 12.4964"

    args = ("--max-per-task", "6", "--shuffle", "--seed", "3")
    assert run_cli(capsys, *mixture_args(tmp_path / "mix1", *args))[0] == 0
    assert run_cli(capsys, *mixture_args(tmp_path / "mix2", *args))[0] == 0
    mix = records(tmp_path / "mix1")
    assert mix == records(tmp_path / "mix2")               # same seed, same records
    assert len(mix) == 24
    assert {t: sum(r["task"] == t for r in mix) for t in ("acti-a", "emit", "geolingit", "clinkart")} == \
        {"acti-a": 6, "emit": 6, "geolingit": 6, "clinkart": 6}
    assert [r["task"] for r in mix] != sorted(r["task"] for r in mix)
    assert all(r in plain for r in mix)
    counts = json.loads((tmp_path / "mix1" / "manifest.json").read_text())["metrics"]["tasks"]
    assert counts["emit"] == {"items": 24, "kept": 6, "labelled": 6}


def test_prepare_from_python_settings(tmp_path):
    from llamantino.core.runner import config_for
    from llamantino.evaluate.evalita.prepare import run

    files = [str(p) for p in sample_files("discotex-1", "test")]
    cfg = config_for("evalita_prepare", task="discotex-1", data=files, output=str(tmp_path / "out"))
    summary = run(cfg)
    assert summary["metrics"]["tasks"]["discotex-1"]["items"] == 10


def test_prepare_errors(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evalita", "prepare", "--task", "acti-c", "--data", "x.csv",
                           "--output", str(tmp_path / "o"))
    assert code == 2
    assert "unknown EVALITA task 'acti-c' (did you mean" in err and "valid: acti-a, acti-b" in err
    code, _, err = run_cli(capsys, "evalita", "prepare", "--data", "emitt=x.csv", "--output", str(tmp_path / "o"))
    assert code == 2 and "unknown EVALITA task 'emitt' (did you mean 'emit'?)" in err
    code, _, err = run_cli(capsys, "evalita", "prepare", "--data", "x.csv", "--output", str(tmp_path / "o"))
    assert code == 2 and "names no task" in err
    code, _, err = run_cli(capsys, "evalita", "prepare", "--task", "emit", "--data", str(tmp_path / "none.csv"),
                           "--output", str(tmp_path / "o"))
    assert code == 2 and "none.csv: no such file" in err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "emit_train_A.csv"
    bad.write_text("id,testo\n1,ciao\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "evalita", "prepare", "--task", "emit", "--data", str(bad),
                           "--output", str(tmp_path / "o"))
    assert code == 2 and "emit_train_A.csv: missing column 'text'" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# score


def submission(tmp_path, name, change=None, filename="submission"):
    """The gold of the task's test sample written as a submission, optionally changed."""
    task = get_task(name)
    items = task.read(sample_files(name, "test"))
    preds = [it.gold for it in items]
    if change:
        preds = change(preds)
    path = tmp_path / filename
    task.write_predictions(items, preds, path)
    return path


def score(capsys, name, pred, gold=None):
    gold = gold or [str(p) for p in sample_files(name, "test")]
    return run_cli(capsys, "evalita", "score", "--task", name, "--gold", *gold, "--pred", str(pred))


@pytest.mark.parametrize("name", ["acti-a", "acti-b", "clinkart", "discotex-1", "discotex-2", "emit"])
def test_score_a_perfect_submission(tmp_path, capsys, name):
    code, out, _ = score(capsys, name, submission(tmp_path, name))
    assert code == 0
    result = json.loads(out)
    task = get_task(name)
    assert result["task"] == name and result["primary_metric"] == task.primary_metric
    assert result["metrics"][task.primary_metric] == pytest.approx(1.0)


def test_score_acti_a_by_hand(tmp_path, capsys):
    # gold of the sample: 1 0 1 0 1 0 1 0 1 0; predict 1 everywhere
    path = submission(tmp_path, "acti-a", lambda preds: [1] * len(preds))
    code, out, _ = score(capsys, "acti-a", path)
    assert code == 0
    # class 1: P 5/10, R 1, F1 2/3; class 0: nothing predicted, F1 0 -> macro 1/3
    assert json.loads(out)["metrics"]["macro_f1"] == pytest.approx(1 / 3)


def test_score_geolingit_each_subtask(tmp_path, capsys):
    a = submission(tmp_path, "geolingit", filename="team.standard.a.1")
    b = submission(tmp_path, "geolingit", filename="team.standard.b.1")
    dev_a, dev_b = (str(p) for p in sample_files("geolingit", "test"))
    code, out, _ = score(capsys, "geolingit", a, gold=[dev_a])
    # a perfect run on the 10 regions of the sample, averaged over the 13 dev regions
    assert code == 0 and json.loads(out)["metrics"] == {"a_macro_f1": pytest.approx(10 / 13), "a_accuracy": 1.0,
                                                        "a_regions": 13}
    code, out, _ = score(capsys, "geolingit", b, gold=[dev_a, dev_b])
    result = json.loads(out)
    assert code == 0 and result["metrics"] == {"b_mean_km": 0.0, "b_unparsed": 0}
    assert result["lower_is_better"] == ["b_mean_km"]


def test_score_errors(tmp_path, capsys):
    good = submission(tmp_path, "acti-a")
    code, _, err = score(capsys, "acti", good, gold=["x"])
    assert code == 2 and "unknown EVALITA task 'acti'" in err and "valid: acti-a, acti-b, clinkart" in err

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("Id,Label\n0,1\n", encoding="utf-8")
    code, _, err = score(capsys, "acti-a", wrong)
    assert code == 2 and "wrong.csv: missing column 'Expected'" in err

    outside = tmp_path / "outside.csv"
    outside.write_text("Id,Expected\n0,1\n1,si\n", encoding="utf-8")
    code, _, err = score(capsys, "acti-a", outside)
    assert code == 2 and "outside.csv:3: column 'Expected' has 'si'" in err

    empty = tmp_path / "empty.csv"
    empty.write_text("Id,Expected\n", encoding="utf-8")
    code, _, err = score(capsys, "acti-a", empty)
    assert code == 2 and "empty.csv: no predictions" in err

    short = tmp_path / "short.csv"
    short.write_text("Id,Expected\n0,1\n1,0\n99,1\n", encoding="utf-8")
    code, _, err = score(capsys, "acti-a", short)
    assert code == 2
    assert "predictions do not line up with the gold: 8 gold id(s) have no prediction (e.g. 2, 3, 4)" in err
    assert "1 prediction id(s) are not in the gold (e.g. 99)" in err

    blind = tmp_path / "subtaskA_test.csv"
    blind.write_text("Id,comment_text\n0,uno\n", encoding="utf-8")
    code, _, err = score(capsys, "acti-a", good, gold=[str(blind)])
    assert code == 2 and "have no gold label" in err

    code, _, err = score(capsys, "acti-a", tmp_path / "missing.csv")
    assert code == 2 and "missing.csv: no such file" in err

    # a folder given for a file is named as one, with the files it holds
    gold_dir = sample_files("acti-a", "test")[0].parent
    code, _, err = score(capsys, "acti-a", good, gold=[str(gold_dir)])
    assert code == 2 and f"{gold_dir}: is a folder, not a file; give the file(s) inside it " \
                         "(it holds: subtaskA_test.csv, subtaskB_test.csv)" in err
    code, _, err = score(capsys, "acti-a", tmp_path)
    assert code == 2 and f"{tmp_path}: is a folder, not a file" in err
    (tmp_path / "nothing").mkdir()
    code, _, err = run_cli(capsys, "eval", "evalita", "--model", "m", "--data", f"acti-a={tmp_path / 'nothing'}")
    assert code == 2 and "nothing: is a folder, not a file; give the file(s) inside it (it holds no files)" in err


def test_score_emit_checks_order_and_columns(tmp_path, capsys):
    path = submission(tmp_path, "emit")
    lines = path.read_text().splitlines()
    reordered = tmp_path / "reordered.csv"
    reordered.write_text("\n".join([lines[0], *lines[:0:-1]]) + "\n", encoding="utf-8")
    code, _, err = score(capsys, "emit", reordered)
    assert code == 2 and "not in the gold's order" in err
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("\n".join([lines[0].replace("Trust", "Fiducia"), *lines[1:]]) + "\n", encoding="utf-8")
    code, _, err = score(capsys, "emit", renamed)
    assert code == 2 and "renamed.csv: missing column 'Trust'" in err
