"""`llamantino eval evalita`: generate, decode, score, and write official submission files
that the official-format scorer (`evalita score`) reads back to the same figures."""

import json

import pytest

from llamantino.cli import main
from llamantino.evalita.evaluate import prompt_for, submission_name
from llamantino.evalita.samples import sample_files

TASKS = ["acti-a", "wic-ita", "emit", "nermud", "geolingit"]


def test_eval_evalita_report_matches_scoring_its_own_submission_files(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "report"
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--samples", "test", "--tasks", *TASKS,
                 "--max-new-tokens", "6", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "task" in printed and "undecodable" in printed and "acti-a" in printed
    report = json.loads((out / "report.json").read_text())
    assert list(report) == TASKS
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {g["task"] for g in generations} == set(TASKS)
    assert sum(r["items"] for r in report.values()) == len(generations)
    for task in TASKS:
        pred = out / "predictions" / submission_name(task)
        assert pred.is_file(), task
        assert main(["evalita", "score", "--task", task, "--gold", *map(str, sample_files(task, "test")),
                     "--pred", str(pred)]) == 0
        scored = json.loads(capsys.readouterr().out)
        for key, value in report[task]["metrics"].items():
            if isinstance(value, float):
                assert scored["metrics"][key] == pytest.approx(value, abs=1e-9), (task, key)


def test_prompts_use_the_italian_alpaca_format_without_a_response():
    from llamantino.evalita import get_task

    task = get_task("acti-a")
    item = task.read(sample_files("acti-a", "test"))[0]
    prompt = prompt_for(item, 1200)
    assert prompt.startswith("Di seguito è riportata un'istruzione che descrive un'attività")
    assert "### Istruzione:\nStabilisci se il seguente testo contiene una teoria del complotto o cospirazione. " \
           "Rispondi con si o no.\n\n### Input:\n" in prompt
    assert prompt.endswith("### Risposta:\n")
    assert len(prompt_for(item, 10)) < len(prompt)


def test_eval_evalita_errors(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--samples", "test", "--tasks", "acti-c"]) == 2
    assert "unknown EVALITA task 'acti-c'" in capsys.readouterr().err
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--data", "acti-a"]) == 2
    assert "expected TASK=PATH" in capsys.readouterr().err
    blind = tmp_path / "test.csv"
    blind.write_text("Id,comment_text\n0,un testo senza etichetta\n")
    assert main(["eval", "evalita", "--model", str(tiny_model_dir), "--data", f"acti-a={blind}"]) == 2
    assert "test.csv: 1 item(s) without gold" in capsys.readouterr().err
