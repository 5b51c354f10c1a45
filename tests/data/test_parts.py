"""Numbered parts and the progress file of the resumable stages (clean, translate)."""

import json
import re

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import TMP_PREFIX
from llamantino.core.manifest import start_run
from llamantino.core.runner import config_for
from llamantino.data import clean, sharding, translate

from helpers.clean import demo_records, write_jsonl


def test_each_stage_keeps_the_part_names_its_runs_have_always_had(tmp_path):
    # A run interrupted by an earlier version resumes only if these names stay as they are.
    assert clean.output_parts(tmp_path).path(3) == tmp_path / "part-00003.jsonl.gz"
    assert translate.work_parts(tmp_path).path(12) == tmp_path / ".parts" / "part-000012.jsonl"
    assert clean.output_parts(tmp_path).progress == translate.work_parts(tmp_path).progress \
        == tmp_path / "progress.json"


def test_resume_removes_uncommitted_parts_and_temporaries_and_nothing_else(tmp_path):
    parts = translate.work_parts(tmp_path)
    parts.folder.mkdir()
    names = [parts.name(i) for i in range(4)] + ["part-1.jsonl", "notes.txt", f"{TMP_PREFIX}1-part-000004.jsonl"]
    for name in names:
        (parts.folder / name).write_text("x")
    (tmp_path / f"{TMP_PREFIX}1-progress.json").write_text("x")
    (tmp_path / "part-000009.jsonl").write_text("x")  # not in the parts folder: not a part
    parts.commit({"parts": 2})
    parts.remove_stale(parts.read_progress()["parts"])
    assert sorted(p.name for p in parts.folder.iterdir()) == ["notes.txt", "part-000000.jsonl",
                                                              "part-000001.jsonl", "part-1.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".parts", "part-000009.jsonl", "progress.json"]
    parts.remove_work()
    assert sorted(p.name for p in parts.folder.iterdir()) == ["notes.txt", "part-1.jsonl"]
    assert not parts.progress.exists()


@pytest.mark.parametrize("text, problem", [("{\"position\": [0,", "unreadable progress file (JSONDecodeError"),
                                           ("[1, 2]", "a JSON list, not an object")])
def test_a_damaged_progress_file_is_one_line_and_loses_nothing(tmp_path, text, problem):
    source = write_jsonl(tmp_path / "in.jsonl", demo_records(copies=1), gz=False)
    cfg = config_for("clean", inputs=[str(source)], output=str(tmp_path / "out"), workers=1)
    start_run(tmp_path / "out", "clean", sharding.resolve(cfg)[0], outputs=["progress.json"])  # interrupted
    (tmp_path / "out" / "progress.json").write_text(text)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(LlamantinoError, match=re.escape(f"progress.json: {problem}")) as info:
        clean.run(cfg)
    assert "\n" not in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_progress_is_committed_as_json(tmp_path):
    parts = clean.output_parts(tmp_path)
    assert parts.read_progress() is None
    parts.commit({"shards": 1, "position": [0, 7]})
    assert json.loads(parts.progress.read_text()) == parts.read_progress() == {"shards": 1, "position": [0, 7]}
