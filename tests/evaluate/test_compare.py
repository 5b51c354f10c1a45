"""`llamantino report compare`: the table and chart of what several runs share, from the
manifests that `eval bpb`, `eval lm-eval`, `eval evalita` and the training stages write."""

import json

import pytest

from llamantino.cli import main
from llamantino.core.manifest import write_manifest
from llamantino.core.runner import config_for
from llamantino.evaluate import compare

IT = ["Il gatto dorme sul divano mentre la pioggia cade sulla città.",
      "Roma, Milano, Napoli e Torino sono città italiane. Domani andremo al mare."]
EN = ["The quick brown fox jumps over the lazy dog.", "Language models predict the next token."]


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, make_random_adapter):
    """A LoRA adapter with random (non-zero) weights: the adapted model differs from the base."""
    return make_random_adapter(tmp_path_factory.mktemp("adapter"), seed=3)


@pytest.fixture(scope="module")
def bpb_runs(tmp_path_factory, tiny_model_dir, adapter_dir):
    """`eval bpb` outputs on Italian and English text, base and adapted: {(label, lang): folder}."""
    root = tmp_path_factory.mktemp("bpb-runs")
    runs = {}
    for lang, docs in (("it", IT), ("en", EN)):
        data = root / f"{lang}_heldout.txt"
        data.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        for label, extra in (("base", []), ("adapted", ["--adapter", str(adapter_dir)])):
            out = root / f"{label}_{lang}"
            assert main(["eval", "bpb", "--model", str(tiny_model_dir), *extra, str(data), "--output", str(out)]) == 0
            runs[label, lang] = out
    return runs


def bpb(folder):
    return json.loads((folder / "manifest.json").read_text())["metrics"]["bits_per_byte"]


def test_compare_two_runs_of_eval_bpb(tmp_path, bpb_runs, capsys):
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["report", "compare", f"base={bpb_runs['base', 'it']},{bpb_runs['base', 'en']}",
                 f"adapted={bpb_runs['adapted', 'it']}", f"adapted={bpb_runs['adapted', 'en']}",
                 "--title", "Bits per byte", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "compare.md").read_text()
    assert printed.strip() == table.strip() and table.startswith("# Bits per byte\n")
    assert "| metric | better | base | adapted | Δ adapted |" in table
    for lang in ("it", "en"):
        base, adapted = bpb(bpb_runs["base", lang]), bpb(bpb_runs["adapted", lang])
        assert base != adapted
        delta = (adapted - base) / base * 100
        word = "better" if delta < 0 else "worse"  # bits per byte: lower is better
        assert (f"| bits per byte ({lang}_heldout.txt) | ↓ lower | {base:.4f} | {adapted:.4f} | {delta:+.1f}% {word} |"
                in table)
    png = (out / "compare.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "compare" and manifest["metrics"]["labels"] == ["base", "adapted"]
    rows = {r["metric"]: r for r in manifest["metrics"]["rows"]}
    it = rows["bits per byte (it_heldout.txt)"]
    assert it["values"] == {"base": bpb(bpb_runs["base", "it"]), "adapted": bpb(bpb_runs["adapted", "it"])}
    assert it["higher_is_better"] is False
    assert len(manifest["inputs"]) == 4
    # A report folder is rewritten as the runs are now.
    assert main(["report", "compare", f"base={bpb_runs['base', 'it']}", f"adapted={bpb_runs['adapted', 'it']}",
                 "--output", str(out)]) == 0
    assert "en_heldout" not in (out / "compare.md").read_text()


def lm_eval_results(arc_acc_norm, mmlu_acc):
    """A results dict in lm-eval's own shape (the part the manifest keeps)."""
    return {
        "results": {"arc_it": {"alias": "arc_it", "acc,none": 0.3, "acc_stderr,none": 0.05,
                               "acc_norm,none": arc_acc_norm, "acc_norm_stderr,none": 0.05},
                    "m_mmlu_it": {"alias": "m_mmlu_it", "acc,none": mmlu_acc, "acc_stderr,none": 0.04}},
        "higher_is_better": {"arc_it": {"acc": True, "acc_norm": True}, "m_mmlu_it": {"acc": True}},
        "n-shot": {"arc_it": 0, "m_mmlu_it": 5},
        "n-samples": {"arc_it": {"original": 20, "effective": 20}, "m_mmlu_it": {"original": 20, "effective": 20}},
    }


def lm_eval_folder(folder, arc_acc_norm, mmlu_acc):
    from llamantino.evaluate import harness

    plan = harness.Plan(specs=["arc_it", "m_mmlu_it"])
    metrics = harness.summarise([{"results": lm_eval_results(arc_acc_norm, mmlu_acc), "file": "results.json",
                                  "add_bos_token": None}], plan, [])
    cfg = config_for("lm_eval", model="m", tasks=["leaderboard-it"])
    write_manifest(folder, "lm_eval", cfg, metrics=metrics)
    return folder


def evalita_folder(folder, acti_f1, geo_km):
    """An `eval evalita` report in the shape evalita.evaluate writes."""
    cfg = config_for("evalita_eval", model="m", samples="test")
    write_manifest(folder, "evalita_eval", cfg, metrics={
        "acti-a": {"items": 10, "primary_metric": "macro_f1", "lower_is_better": [],
                   "metrics": {"macro_f1": acti_f1, "accuracy": 0.5}, "undecodable": 0, "seconds": 1.0},
        "geolingit": {"items": 10, "primary_metric": "avg_km", "lower_is_better": ["avg_km"],
                      "metrics": {"avg_km": geo_km, "macro_f1": 0.1}, "undecodable": 1, "seconds": 1.0}})
    return folder


def test_every_kind_of_metric_with_its_direction(tmp_path, bpb_runs):
    base = tmp_path / "base"
    tuned = tmp_path / "tuned"
    for folder, arc, mmlu, f1, km in ((base, 0.25, 0.3, 0.4, 300.0), (tuned, 0.35, 0.3, 0.2, 150.0)):
        folder.mkdir()
        lm_eval_folder(folder / "lm_eval", arc, mmlu)
        evalita_folder(folder / "evalita", f1, km)
    (base / "notes.txt").write_text("not a stage")
    result = compare.run(config_for("compare", runs=[f"base={base}", f"tuned={tuned},{bpb_runs['adapted', 'it']}"]))
    table = result["display"]
    assert "| arc_it acc_norm | ↑ higher | 0.2500 | 0.3500 | +40.0% better |" in table
    assert "| m_mmlu_it acc | ↑ higher | 0.3000 | 0.3000 | +0.0% |" in table
    assert "| EVALITA acti-a macro_f1 | ↑ higher | 0.4000 | 0.2000 | -50.0% worse |" in table
    assert "| EVALITA geolingit avg_km | ↓ lower | 300.0000 | 150.0000 | -50.0% better |" in table
    assert "stderr" not in table
    assert "Not compared (the first run, or every other, lacks it): bits per byte (it_heldout.txt) (tuned)" in table
    # A figure the first run and some others have is a row; a run without it shows a blank.
    third = tmp_path / "third"
    third.mkdir()
    evalita_folder(third / "evalita", 0.3, 200.0)
    table = compare.run(config_for("compare", runs=[f"base={base}", f"tuned={tuned}", f"third={third}"],
                                   output=str(tmp_path / "three")))["display"]
    assert "| arc_it acc_norm | ↑ higher | 0.2500 | 0.3500 | +40.0% better | — |  |" in table
    assert (tmp_path / "three" / "compare.png").is_file()
    # A bare folder is labelled with its name; training runs compare their final loss.
    train_a, train_b = tmp_path / "adapt-a", tmp_path / "adapt-b"
    for folder, loss in ((train_a, 2.0), (train_b, 1.5)):
        write_manifest(folder, "adapt", config_for("bpb", model="m", data=["x.txt"]), metrics={"final_loss": loss})
    rows = compare.run(config_for("compare", runs=[str(train_a), str(train_b)]))["metrics"]["rows"]
    assert rows == [{"metric": "adapt final training loss", "higher_is_better": False,
                     "values": {"adapt-a": 2.0, "adapt-b": 1.5}, "change_percent": {"adapt-b": -25.0}}]


def test_bad_runs_are_one_line_errors(tmp_path, bpb_runs, capsys):
    def error(*args):
        assert main(["report", "compare", *args]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    it, en = bpb_runs["base", "it"], bpb_runs["base", "en"]
    assert "give at least two runs" in error(f"base={it}")
    assert "give at least two different labels" in error(f"a={it}", f"a={en}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no manifest.json in it or in its subfolders" in error(f"a={it}", f"b={empty}")
    assert "no such folder" in error(f"a={it}", f"b={tmp_path / 'missing'}")
    assert "the runs share no metric" in error(f"a={it}", f"b={en}")
    twice = tmp_path / "twice"
    for name, lang in (("x", "it"), ("y", "it")):
        (twice / name).mkdir(parents=True)
        (twice / name / "manifest.json").write_text((bpb_runs["base" if name == "x" else "adapted", lang]
                                                     / "manifest.json").read_text())
    assert "give them separate labels" in error(f"a={it}", f"b={twice}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("someone's file")
    for extra in (["--overwrite"], []):  # before: --overwrite deleted the folder and keep.txt with it
        assert "holds no finished llamantino run" in error(f"a={it}", f"b={bpb_runs['adapted', 'it']}",
                                                           "--output", str(other), *extra)
    assert (other / "keep.txt").read_text() == "someone's file"
