"""Held-out bits per byte while training: logged every N steps and at the end, equal to
`eval bpb` of the saved adapter, drawn on the loss plot; bad held-out sets fail up front."""

import csv
import json

import pytest

from llamantino.cli import main

from helpers.adapt import adapt_args, corpus
from helpers.heldout import EN, IT


@pytest.fixture
def heldout(tmp_path):
    it, en = tmp_path / "it.txt", tmp_path / "en.jsonl"
    it.write_text("\n\n".join(IT) + "\n", encoding="utf-8")
    en.write_text("".join(json.dumps({"text": t}) + "\n" for t in EN), encoding="utf-8")
    return it, en


def test_heldout_bpb_is_logged_and_equals_eval_bpb_of_the_adapter(tmp_path, tiny_model_dir, heldout, capsys):
    it, en = heldout
    out = tmp_path / "run"
    args = adapt_args(tiny_model_dir, corpus(tmp_path), out, "--no-load-in-4bit", "--compute-dtype", "float32",
                      "--eval-data", f"it={it}", f"en={en}", "--eval-steps", "4")
    assert main(args) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    evaluated = [(int(r["step"]), r["eval_it_bpb"], r["eval_en_bpb"]) for r in rows if r["eval_it_bpb"]]
    assert [step for step, _, _ in evaluated] == [4, 6]  # every 4 steps and at the end
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["eval_it_bpb"] == pytest.approx(float(evaluated[-1][1]), rel=1e-9)
    assert metrics["eval_seconds"] > 0  # evaluation time is reported, and kept out of tokens_per_s
    capsys.readouterr()
    assert main(["eval", "bpb", str(it), "--model", str(tiny_model_dir), "--adapter", str(out),
                 "--max-length", "64"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["bits_per_byte"] == pytest.approx(metrics["eval_it_bpb"], abs=1e-6)
    assert (out / "loss.png").is_file() and list((out / "tb").iterdir())


@pytest.mark.parametrize("spec, message", [("it", "expected NAME=PATH"), ("i t=x.txt", "expected NAME=PATH"),
                                           ("it={empty}", "held-out set 'it'")])
def test_bad_heldout_sets_fail_before_anything_is_written(tmp_path, tiny_model_dir, spec, message, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    out = tmp_path / "run"
    args = adapt_args(tiny_model_dir, corpus(tmp_path), out, "--eval-data", spec.format(empty=empty))
    assert main(args) == 2
    assert message in capsys.readouterr().err and not out.exists()
