"""Array jobs for `clean` and `translate`: which records each task takes (a folder of files,
one plain file, one gzipped file, parquet, a hub dataset), that the union of the parts is
the unsharded output, the merged manifest, resuming a task, and the refusals."""

import json
import sys
from pathlib import Path

import pytest

from llamantino.cli import main as cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for
from llamantino.data import clean, sharding, translate

from helpers.clean import demo_records, read_shards, shard_bytes, write_jsonl


def run_clean(inputs, out, overwrite=False, **settings):
    settings = {"workers": 1, "shard_docs": 4, **settings}
    cfg = config_for("clean", inputs=[str(i) for i in inputs], output=str(out), **settings)
    return clean.run(cfg, overwrite=overwrite)


def run_parts(inputs, out, count, **settings):
    for index in range(count):
        summary = run_clean(inputs, out, num_shards=count, shard_index=index, **settings)
        assert summary["status"].startswith(f"done (part {index} of {count}")
    return [out / sharding.PART_NAME.format(i, count) for i in range(count)]


def urls(records):
    return [r["url"] for r in records]


def parts_records(parts):
    return [r for part in parts for r in read_shards(part)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The unsharded output of 70 demo pages (two copies, distinct urls) and its manifest."""
    base = tmp_path_factory.mktemp("reference")
    source = write_jsonl(base / "in.jsonl", demo_records(copies=2), gz=False)
    run_clean([source], base / "out")
    return read_shards(base / "out"), json.loads((base / "out" / "manifest.json").read_text())


# ---------------------------------------------------------------------------------------
# Which task this is


@pytest.mark.parametrize("settings, environ, expected", [
    ({}, {}, (1, 0)),
    ({"num_shards": 4, "shard_index": 3}, {}, (4, 3)),
    ({"num_shards": 1}, {}, (1, 0)),
    # An array --array=0-7: count and index from SLURM.
    ({}, {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0",
          "SLURM_ARRAY_TASK_MAX": "7"}, (8, 5)),
    # --array=1-8: the index counts from the first id.
    ({}, {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1",
          "SLURM_ARRAY_TASK_MAX": "8"}, (8, 0)),
    # --num-shards given: the array ids are the indexes, so a task resubmitted alone keeps its part.
    ({"num_shards": 16}, {"SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "7",
                          "SLURM_ARRAY_TASK_MAX": "7"}, (16, 7)),
    ({"num_shards": 1}, {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "5"}, (1, 0)),
])
def test_which_task(settings, environ, expected):
    cfg = config_for("clean", inputs=["x"], output="y", **settings)
    resolved, shard = sharding.resolve(cfg, environ)
    assert (resolved.num_shards, resolved.shard_index) == expected
    assert (shard is None) == (expected[0] == 1)


@pytest.mark.parametrize("settings, environ, message", [
    ({"num_shards": 4, "shard_index": 4}, {}, "setting 'shard_index' is 4; with num_shards 4 it must be between 0 and 3"),
    ({"num_shards": 4}, {}, "give 'shard_index' (0 to 3), or run as a SLURM array task"),
    ({"shard_index": 2}, {}, "'shard_index' is 2 but 'num_shards' is not set"),
    ({"num_shards": 4}, {"SLURM_ARRAY_TASK_ID": "4"}, "SLURM_ARRAY_TASK_ID is 4; with num_shards 4"),
    ({}, {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
          "SLURM_ARRAY_TASK_MAX": "7"}, "are not a contiguous range"),
])
def test_which_task_errors(settings, environ, message):
    cfg = config_for("clean", inputs=["x"], output="y", **settings)
    with pytest.raises(LlamantinoError) as info:
        sharding.resolve(cfg, environ)
    assert message in str(info.value)


def test_shard_index_out_of_range_writes_nothing(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl.gz", demo_records())
    code = cli(["clean", str(source), "--output", str(tmp_path / "out"), "--num-shards", "4", "--shard-index", "4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "shard_index" in err and "\n" not in err
    assert cli(["clean", str(source), "--output", str(tmp_path / "out"), "--num-shards", "0"]) == 2
    assert "setting 'num_shards' is 0; it must be between 1 and 99999" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_contiguous_groups_are_balanced_and_cover_everything():
    import itertools

    for sizes, n in (([5, 1, 1, 1, 9, 2, 2], 3), ([3] * 10, 4), ([100, 1, 1, 1, 1], 2), ([0, 0, 7], 3),
                     ([4, 8, 15, 16, 23, 42], 6), ([10, 1, 1, 1, 1, 1, 1, 10], 4)):
        groups = sharding.contiguous_groups(sizes, n)
        assert [i for g in groups for i in g] == list(range(len(sizes))) and all(groups) and len(groups) == n
        best = min(max(sum(sizes[a:b]) for a, b in zip((0, *cuts), (*cuts, len(sizes))))
                   for cuts in itertools.combinations(range(1, len(sizes)), n - 1))
        assert max(sum(sizes[i] for i in g) for g in groups) == best, (sizes, n, groups)
    assert sharding.contiguous_groups([5, 1, 1, 1, 9, 2, 2], 3) == [[0, 1, 2, 3], [4], [5, 6]]


# ---------------------------------------------------------------------------------------
# The union of the parts is the unsharded run, whatever the input


def test_folder_of_files_is_split_by_whole_files(tmp_path, reference):
    records, manifest = reference
    folder = tmp_path / "shards"
    folder.mkdir()
    pages = demo_records(copies=2)
    for i, start in enumerate(range(0, 70, 14)):  # 5 files
        write_jsonl(folder / f"c4-it.{i:05d}.json.gz", pages[start:start + 14])
    parts = run_parts([folder], tmp_path / "out", 3)
    assert parts_records(parts) == records  # contiguous runs of files: even the order is the same
    covers = [json.loads((p / "manifest.json").read_text())["shard"]["covers"] for p in parts]
    assert sorted(Path(c).name for cover in covers for c in cover) == sorted(p.name for p in folder.iterdir())
    assert all(covers) and all(": " not in c for cover in covers for c in cover)  # whole files, not pieces

    code = cli(["manifest", "merge", str(tmp_path / "out")])
    assert code == 0
    merged = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for key in ("documents", "lines", "characters"):
        assert merged["metrics"][key] == manifest["metrics"][key], key
    assert merged["metrics"]["shards"] == sum(len(list(p.glob("part-*"))) for p in parts)
    assert merged["metrics"]["workers"] == 1 and len(merged["metrics"]["seconds"]) == 3
    assert merged["sharded"]["count"] == 3 and merged["settings"]["num_shards"] == 3
    assert merged["stage"] == "clean" and merged["badwords"] == manifest["badwords"]
    assert all((tmp_path / "out" / f).is_file() for f in merged["outputs"])
    assert "shard-00001-of-00003/part-00000.jsonl.gz" in merged["outputs"]


@pytest.mark.parametrize("gz", [False, True])
def test_single_file_is_split_by_byte_ranges(tmp_path, reference, gz):
    records, manifest = reference
    source = write_jsonl(tmp_path / ("in.jsonl.gz" if gz else "in.jsonl"), demo_records(copies=2), gz=gz)
    parts = run_parts([source], tmp_path / "out", 4)
    assert parts_records(parts) == records
    covers = json.loads((parts[2] / "manifest.json").read_text())["shard"]["covers"]
    assert covers == [f"{source}: bytes of text piece 2 of 4"]
    read = [json.loads((p / "manifest.json").read_text())["metrics"]["documents"]["read"] for p in parts]
    # Every page read by exactly one task; pieces are equal in bytes (two pages of the demo
    # are over 50,000 characters, so the pieces are not equal in pages).
    assert sum(read) == 70 and sorted(read) == [0, 1, 34, 35]


def test_byte_ranges_take_each_line_once(tmp_path):
    # Lines of every length around the cut points, and blank lines: each one in one piece.
    lines = [json.dumps({"n": i, "text": "x" * (i * 7 % 50)}) for i in range(200)]
    plain = tmp_path / "a.jsonl"
    plain.write_text("\n".join(lines[:100]) + "\n\n" + "\n".join(lines[100:]) + "\n")
    for count in (1, 2, 3, 7, 64):
        seen = []
        for part in range(count):
            piece = sharding.Piece(str(plain), 0, part, count)
            seen += [r["n"] for _, _, r in sharding.iter_jsonl_piece(plain, piece)]
        assert seen == list(range(200)), count
        # The line-number form used by translate agrees.
        ranges = [sharding.lines_before(plain, sharding.byte_range(plain, sharding.Piece(str(plain), 0, p, count)))
                  for p in range(count)]
        assert [r[0] for r in ranges] == [0] + [r[1] for r in ranges[:-1]] and ranges[-1][1] == 201
    # Resuming inside a piece from the offset it reported.
    piece = sharding.Piece(str(plain), 0, 1, 3)
    rows = list(sharding.iter_jsonl_piece(plain, piece))
    resumed = list(sharding.iter_jsonl_piece(plain, piece, rows[5][0]))
    assert [r for _, _, r in resumed] == [r for _, _, r in rows[6:]]
    assert rows[0][1].startswith(f"{plain}: line at byte ")  # a line number would need the whole prefix read


@pytest.mark.parametrize("gz", [False, True])
def test_a_malformed_line_in_a_piece_is_named(tmp_path, gz):
    records = [json.dumps({"text": f"riga {i}"}) + "\n" for i in range(30)]
    records[20] = '{"text": "rotto\n'
    source = write_jsonl(tmp_path / ("in.jsonl.gz" if gz else "in.jsonl"), records, gz=gz)
    offset = sum(len(r) for r in records[:20])
    piece = sharding.Piece(str(source), 0, 1, 2)
    with pytest.raises(LlamantinoError) as info:
        list(sharding.iter_jsonl_piece(source, piece))
    # gzip is read from its start, so the line number is known; a plain file is entered with a seek.
    where = f"{source}:21" if gz else f"{source}: line at byte {offset}"
    assert str(info.value).startswith(f"{where}: malformed JSON (")
    stats = sharding.LineStats()
    rows = list(sharding.iter_jsonl_piece(source, piece, skip_bad_lines=True, stats=stats))
    assert stats.bad == 1 and len(rows) + stats.bad == stats.read


def test_a_lone_carriage_return_is_refused(tmp_path):
    path = tmp_path / "mac.jsonl"
    path.write_bytes(b'{"text": "a"}\r{"text": "b"}\n' * 20)
    with pytest.raises(LlamantinoError, match="carriage return without a line feed"):
        list(sharding.iter_jsonl_piece(path, sharding.Piece(str(path), 0, 0, 2)))
    with pytest.raises(LlamantinoError, match="carriage return without a line feed"):
        sharding.line_ranges([path], sharding.Shard(1, 2))
    crlf = tmp_path / "dos.jsonl"
    crlf.write_bytes(b'{"text": "a"}\r\n' * 20)
    assert sum(len(list(sharding.iter_jsonl_piece(crlf, sharding.Piece(str(crlf), 0, p, 3)))) for p in range(3)) == 20


def test_parquet_and_hub_datasets(tmp_path, reference):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records, _ = reference
    pages = demo_records(copies=2)
    pq.write_table(pa.Table.from_pylist(pages), tmp_path / "in.parquet", row_group_size=16)
    parts = run_parts([tmp_path / "in.parquet"], tmp_path / "parquet", 3)
    assert parts_records(parts) == records
    files = [write_jsonl(tmp_path / f"h{i}.jsonl", pages[i * 35:(i + 1) * 35], gz=False) for i in range(2)]
    spec = f"hub:json?data_files={files[0]},{files[1]}&split=train"
    # Two data files in two tasks: datasets gives each task whole files (IterableDataset.shard).
    parts = run_parts([spec], tmp_path / "hub2", 2)
    assert parts_records(parts) == records
    assert urls(read_shards(parts[0])) == [u for u in urls(records) if "copy=1" not in u]
    # Three tasks for two files: each task keeps one record in three (split_dataset_by_node).
    parts = run_parts([spec], tmp_path / "hub3", 3)
    assert sorted(urls(parts_records(parts))) == sorted(urls(records))
    assert len(set(urls(parts_records(parts)))) == len(records)


# ---------------------------------------------------------------------------------------
# Resuming a task, and what is refused


def test_a_killed_task_resumes_to_the_same_part(tmp_path):
    import os
    import signal
    import subprocess
    import time

    source = write_jsonl(tmp_path / "in.jsonl", demo_records(copies=8), gz=False)
    out = tmp_path / "out"
    part = out / "shard-00001-of-00002"
    command = [sys.executable, "-m", "llamantino", "clean", str(source), "--output", str(out), "--num-shards", "2",
               "--shard-index", "1", "--langid", "langdetect", "--shard-docs", "4", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (part / "progress.json").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (part / "manifest.json").exists(), "the task ended before it could be killed"
    assert json.loads((part / "progress.json").read_text())["shard"]["index"] == 1

    settings = {"langid": "langdetect", "num_shards": 2, "shard_index": 1}
    assert run_clean([source], out, **settings)["status"].startswith("done (part 1 of 2")
    reference = run_parts([source], tmp_path / "reference", 2, langid="langdetect")[1]
    assert shard_bytes(part) == shard_bytes(reference) and len(shard_bytes(part)) > 4
    assert sorted(p.name for p in part.iterdir() if not p.name.startswith("part-")) == ["manifest.json"]
    # Resumed with another number of shards: refused, nothing written.
    (part / "manifest.json").unlink()
    with pytest.raises(LlamantinoError, match=r"holds parts of a split into 2 \(shard-00001-of-00002\), this task "
                                              "splits into 3"):
        run_clean([source], out, num_shards=3, shard_index=1)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00001-of-00002"]


def test_merge_refuses_missing_unfinished_and_different_parts(tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl.gz", demo_records())
    out = tmp_path / "out"
    run_clean([source], out, num_shards=3, shard_index=0)
    run_clean([source], out, num_shards=3, shard_index=2)

    def merge_error():
        code = cli(["manifest", "merge", str(out)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and not (out / "manifest.json").exists()
        return err

    assert "1 of 3 parts missing (shard-00001-of-00003)" in merge_error()
    (out / "shard-00001-of-00003").mkdir()
    (out / "shard-00001-of-00003" / "run.json").write_text("{}")
    assert "1 of 3 parts unfinished (shard-00001-of-00003, no manifest.json)" in merge_error()
    (out / "shard-00001-of-00003" / "run.json").unlink()
    run_clean([source], out, num_shards=3, shard_index=1, min_chars=400)
    err = merge_error()
    assert "shard-00001-of-00003: made with other settings than shard-00000-of-00003 (differ: min_chars)" in err
    run_clean([source], out, num_shards=3, shard_index=1, overwrite=True)
    assert cli(["manifest", "merge", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "merged"
    # A part redone with other settings removes the merged manifest, which no longer holds.
    run_clean([source], out, num_shards=3, shard_index=2, min_chars=400, overwrite=True)
    assert not (out / "manifest.json").exists()
    run_clean([source], out, num_shards=3, shard_index=2, overwrite=True)
    # A part of another split, planted by hand: refused by the merge and by every task.
    (out / "shard-00000-of-00002").mkdir()
    assert "parts of splits into different numbers of shards" in merge_error()
    with pytest.raises(LlamantinoError, match="holds parts of a split into 2"):
        run_clean([source], out, num_shards=3, shard_index=0)
    (out / "shard-00000-of-00002").rmdir()
    # A part's manifest that is another part's, or that names files outside its folder.
    part = out / "shard-00002-of-00003"
    manifest = json.loads((part / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps({**manifest, "shard": {"index": 1, "count": 3}}))
    assert "its manifest is not that of part 2 of 3" in merge_error()
    (part / "manifest.json").write_text(json.dumps({**manifest, "outputs": ["../../in.jsonl.gz"]}))
    assert "not a plain relative file name" in merge_error()


def test_outputs_that_mix_sharded_and_unsharded_runs_are_refused(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl.gz", demo_records())
    whole = tmp_path / "whole"
    run_clean([source], whole)
    with pytest.raises(LlamantinoError, match="holds an unsharded run"):
        run_clean([source], whole, num_shards=2, shard_index=0)
    parts = tmp_path / "parts"
    run_clean([source], parts, num_shards=2, shard_index=0)
    with pytest.raises(LlamantinoError, match="holds parts of a sharded run"):
        run_clean([source], parts)
    # Merged, the sharded run is one llamantino output: an unsharded run replaces it only with --overwrite.
    run_clean([source], parts, num_shards=2, shard_index=1)
    sharding.merge(parts)
    with pytest.raises(LlamantinoError, match=r"settings differ: num_shards, shard_index"):
        run_clean([source], parts)
    assert run_clean([source], parts, overwrite=True)["status"] == "done"
    assert shard_bytes(parts) == shard_bytes(whole) and not list(parts.glob("shard-*"))


# ---------------------------------------------------------------------------------------
# translate: the same parts, on chat records


class TaggingEngine:
    """A deterministic stand-in translator: marks each text, enough to follow every record."""

    def __init__(self, stop_after=None):
        self.calls, self.stop_after = 0, stop_after
        self.segments = 0  # the counters translate reads from its engines (as the argos engine keeps them)
        self.sentences = self.long_inputs = self.length_limited = None

    def translate(self, texts):
        self.calls += 1
        self.segments += len(texts)
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        return [f"<it>{t}</it>" for t in texts]


@pytest.fixture
def stand_in_engine(monkeypatch, tmp_path):
    engines = []
    model = translate.Model("ctranslate2", tmp_path / "model", "en", "it", True, {})
    monkeypatch.setattr(translate, "inspect_model", lambda cfg: model)
    monkeypatch.setattr(translate, "open_engine", lambda cfg, model, stack: engines[-1])
    return engines


def run_translate(inputs, out, **settings):
    cfg = config_for("translate", inputs=[str(i) for i in inputs], output=str(out), chunk_records=3, **settings)
    return translate.run(cfg)


def chats(first, count):
    return [{"id": f"c{i}", "data": [f"Question number {i}?", f"Answer number {i}."]} for i in range(first, first + count)]


@pytest.mark.parametrize("layout", ["one file", "folder"])
def test_translated_parts_are_the_whole_translation(tmp_path, stand_in_engine, layout):
    inputs = tmp_path / "in"
    inputs.mkdir()
    if layout == "one file":
        write_jsonl(inputs / "ultrachat.jsonl", chats(0, 40) + ['{"broken'] + chats(40, 9), gz=False)
    else:
        for i in range(5):
            write_jsonl(inputs / f"ultrachat-{i}.jsonl.gz", chats(10 * i, 10), gz=True)
    stand_in_engine.append(TaggingEngine())
    run_translate([inputs], tmp_path / "whole")
    whole = (tmp_path / "whole" / "translated.jsonl").read_text().splitlines()
    for index in range(3):
        stand_in_engine.append(TaggingEngine(stop_after=2 if index == 1 else None))
        if index == 1:  # killed after its first chunk, then resumed
            with pytest.raises(KeyboardInterrupt):
                run_translate([inputs], tmp_path / "parts", num_shards=3, shard_index=1)
            stand_in_engine.append(TaggingEngine())
        run_translate([inputs], tmp_path / "parts", num_shards=3, shard_index=index)
    parts = [tmp_path / "parts" / sharding.PART_NAME.format(i, 3) for i in range(3)]
    lines = [line for p in parts for line in (p / "translated.jsonl").read_text().splitlines()]
    assert lines == whole and all((p / "translated.jsonl").stat().st_size for p in parts)
    merged = sharding.merge(tmp_path / "parts")
    single = json.loads((tmp_path / "whole" / "manifest.json").read_text())["metrics"]
    for key in ("records_read", "records_translated", "records_skipped", "skipped_by_reason", "fields_translated"):
        assert merged["metrics"][key] == single[key], key
    assert merged["output_file"] == "translated.jsonl" and merged["stage"] == "translate"
    assert "shard-00002-of-00003/translated.jsonl" in merged["outputs"]


# ---------------------------------------------------------------------------------------
# The SLURM example: submitted with a stand-in sbatch, its tasks and merge run here


def test_the_slurm_example_runs_the_array_and_the_merge(tmp_path, reference):
    import os
    import shlex
    import subprocess

    script = Path(__file__).resolve().parents[2] / "examples" / "slurm" / "clean.sbatch"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/bash\nprintf "%s\\n" "$*" >> "$SBATCH_LOG"\necho 4242\n')
    (bin_dir / "llamantino").write_text(f'#!/bin/bash\nexec {shlex.quote(sys.executable)} -m llamantino "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text("")
    source = write_jsonl(tmp_path / "in.jsonl", demo_records(copies=2), gz=False)
    out = tmp_path / "out dir"  # a space, to check the quoting
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "sbatch.log"),
           "SHARDS": "2", "PYTHONPATH": src, "LLAMANTINO_LOG": "WARNING"}
    args = ["bash", str(script), str(source), str(out), "--shard-docs", "4"]
    subprocess.run(args, env=env, cwd=tmp_path, check=True, capture_output=True)
    array, merge = (tmp_path / "sbatch.log").read_text().splitlines()
    assert array == f"--parsable --array=0-1 --export=ALL,SHARDS=2 {script} {source} {out} --shard-docs 4"
    assert merge.startswith("--dependency=afterok:4242 ")
    wrapped = merge.split("--wrap ", 1)[1]
    assert shlex.split(wrapped) == ["source", ".venv/bin/activate", "&&", "llamantino", "manifest", "merge", str(out)]
    for task in ("1", "0"):
        task_env = {**env, "SLURM_ARRAY_TASK_ID": task, "SLURM_CPUS_PER_TASK": "1"}
        subprocess.run(args, env=task_env, cwd=tmp_path, check=True, capture_output=True)
    subprocess.run(["bash", "-c", wrapped], env=env, cwd=tmp_path, check=True, capture_output=True)
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["metrics"]["documents"] == reference[1]["metrics"]["documents"]
    assert parts_records(sorted(out.glob("shard-*"))) == reference[0]
