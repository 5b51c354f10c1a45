"""Trust, round two: what `--overwrite` may delete, and files a run rewrites.

Each test is an attack or an accident that an earlier version lost data to: a user's folder
holding a `run.json` or a web app's `manifest.json` taken for a llamantino run and deleted;
a file added to an unfinished run's folder deleted with it; the input deleted because it was
reached through a symbolic link inside an input folder; a hard-linked snapshot of a run
(`cp -al`) changed by `--resume`; a user's `.tmp/` folder taken for a temporary and deleted."""

import errno
import json
import os
import subprocess

import pytest

from llamantino.cli import main as cli

from helpers.adapt import corpus
from helpers.clean import page, write_jsonl
from helpers.trust_overwrite import shards
from helpers.trust_release import snapshot


def clean(capsys, *args) -> tuple[int, str]:
    code = cli(["clean", *map(str, args), "--workers", "1"])
    return code, capsys.readouterr().err


def refused(capsys, args, match, root) -> str:
    """`clean ARGS` exits 2 with one `error:` line holding `match`; nothing under `root` changed."""
    before = snapshot(root)
    code, err = clean(capsys, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(root) == before, err
    assert match in err, err
    return err


def interrupted_clean(capsys, monkeypatch, shards, out):
    """A clean run stopped by a full disk part way (as a killed one would be): an unfinished
    run folder holding run.json, progress.json and finished shards."""
    from llamantino.data import clean as clean_module

    real_write, written = clean_module.ShardWriter.write, []

    def full_disk(self, line):
        written.append(line)
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, line)

    monkeypatch.setattr(clean_module.ShardWriter, "write", full_disk)
    assert clean(capsys, shards, "--output", out, "--shard-docs", "2")[0] == 2
    monkeypatch.setattr(clean_module.ShardWriter, "write", real_write)
    assert (out / "run.json").is_file() and not (out / "manifest.json").exists()


# ---------------------------------------------------------------------------------------
# 1. A folder is a llamantino output only when its run.json / manifest.json is llamantino's


@pytest.mark.parametrize("name, text", [
    ("run.json", "{}"),
    ("manifest.json", json.dumps({"name": "My app", "start_url": "/", "display": "standalone"})),  # a web app's
    ("manifest.json", json.dumps({"stage": "clean", "outputs": ["thesis.tex"]})),  # a stage, but no version
    ("run.json", json.dumps({"stage": "nonsense", "fingerprint": "0" * 16, "settings": {}})),
])
def test_a_folder_with_a_run_file_llamantino_did_not_write_is_never_replaced(tmp_path, shards, capsys, name, text):
    # before: exit 0 and thesis.tex gone
    mine = tmp_path / "v"
    mine.mkdir()
    (mine / "thesis.tex").write_text("thesis")
    (mine / name).write_text(text)
    for extra in (["--overwrite"], []):
        refused(capsys, [shards, "--output", mine, *extra], f"its {name} is not one llamantino writes", tmp_path)
    # The same through diff make / diff apply, which check their output folders on their own.
    from helpers.weightdiff import random_tensors, write_checkpoint

    write_checkpoint(tmp_path / "base", random_tensors(1))
    write_checkpoint(tmp_path / "target", random_tensors(2))
    before = snapshot(tmp_path)
    assert cli(["diff", "make", "--base", str(tmp_path / "base"), "--target", str(tmp_path / "target"),
                "--output", str(mine), "--overwrite"]) == 2
    assert "no llamantino run wrote" in capsys.readouterr().err and snapshot(tmp_path) == before


def test_an_unfinished_run_owns_only_the_files_it_recorded(tmp_path, shards, capsys, monkeypatch):
    out = tmp_path / "out"
    interrupted_clean(capsys, monkeypatch, shards, out)
    # before: a folder with a run.json was all the run's own, and --overwrite deleted thesis.tex
    (out / "thesis.tex").write_text("mine")
    refused(capsys, [shards, "--output", out, "--min-chars", "400", "--overwrite"],
            "no llamantino run wrote (e.g. thesis.tex)", tmp_path)
    info = json.loads((out / "run.json").read_text())
    assert info["llamantino"] and info["outputs"] == ["progress.json", "part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    # Resumed to the end, the run's manifest lists its own files, not the one added meanwhile.
    assert clean(capsys, shards, "--output", out, "--shard-docs", "2")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "thesis.tex" not in manifest["outputs"] and "part-00005.jsonl.gz" in manifest["outputs"]
    refused(capsys, [shards, "--output", out, "--min-chars", "400", "--overwrite"],
            "no llamantino run wrote (e.g. thesis.tex)", tmp_path)
    (out / "thesis.tex").unlink()
    assert clean(capsys, shards, "--output", out, "--min-chars", "400", "--overwrite")[0] == 0


def test_runs_that_recorded_no_files_are_refused_with_a_way_forward(tmp_path, shards, capsys, monkeypatch):
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["outputs"]  # as written before manifests listed their files
    (out / "manifest.json").write_text(json.dumps(manifest))
    # before: taken as all the run's own, and replaced
    refused(capsys, [shards, "--output", out, "--min-chars", "400", "--overwrite"],
            "did not record its files, so --overwrite cannot tell them from yours: delete the folder yourself",
            tmp_path)

    # An unfinished run of that version (run.json without version and files) still resumes.
    unfinished = tmp_path / "unfinished"
    interrupted_clean(capsys, monkeypatch, shards, unfinished)
    info = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({k: v for k, v in info.items()
                                                     if k not in ("llamantino", "outputs")}))
    refused(capsys, [shards, "--output", unfinished, "--min-chars", "400", "--overwrite"],
            "finish it with --resume, or delete the folder yourself", tmp_path)
    assert clean(capsys, shards, "--output", unfinished, "--shard-docs", "2")[0] == 0


def test_an_interrupted_training_run_records_what_it_writes(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "adapt"
    args = ["adapt", "--data", str(corpus(tmp_path)), "--model", str(tiny_model_dir), "--output", str(out),
            "--max-length", "64", "--batch-size", "2", "--max-steps", "4", "--save-steps", "2"]
    assert cli(args + ["--stop-after-steps", "2"]) == 3
    capsys.readouterr()
    (out / "tb" / "notes.txt").write_text("mine, in the run's own folder")  # a recorded folder is the run's
    (out / "checkpoints" / "mine.txt").write_text("mine")
    assert cli(args + ["--overwrite"]) == 2  # before: exit 0, mine.txt deleted with the run
    assert "no llamantino run wrote (e.g. checkpoints/mine.txt)" in capsys.readouterr().err
    assert (out / "checkpoints" / "mine.txt").is_file()
    info = json.loads((out / "run.json").read_text())
    assert {"metrics.csv", "tb/"} <= set(info["outputs"]) and list(info["checkpoints"]) == ["step-0000002"]
    (out / "checkpoints" / "mine.txt").unlink()
    assert cli(args + ["--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.csv", "loss.png"} <= set(manifest["outputs"])
    assert not [f for f in manifest["outputs"] if f.startswith(".")]


# ---------------------------------------------------------------------------------------
# 2. Every input file is resolved, links inside input folders followed


def test_overwrite_never_deletes_input_reached_through_a_link(tmp_path, shards, capsys):
    a = tmp_path / "A"
    assert clean(capsys, shards, "--output", a)[0] == 0
    mix = tmp_path / "mix"
    mix.mkdir()
    (mix / "own.json.gz").write_bytes(next(shards.iterdir()).read_bytes())
    (mix / "a.jsonl.gz").symlink_to("../A/part-00000.jsonl.gz")
    # before: A deleted (the input's data), then a FileNotFoundError traceback
    refused(capsys, [mix, "--output", a, "--overwrite"], "the input " + str(mix) + " reaches into the output "
            "through the symbolic link " + str(mix / "a.jsonl.gz"), tmp_path)
    (mix / "a.jsonl.gz").unlink()
    (mix / "deeper").mkdir()
    (mix / "deeper" / "all").symlink_to(a)  # a link to the whole folder, one level down
    refused(capsys, [mix, "--output", a, "--overwrite"], "reaches into the output", tmp_path)
    (mix / "deeper" / "all").unlink()
    (mix / "up").symlink_to(tmp_path)  # a link to a folder that holds the output (and a loop)
    refused(capsys, [mix, "--output", a, "--overwrite"], "the output lies inside", tmp_path)


# ---------------------------------------------------------------------------------------
# 3. Files a run rewrites are replaced, never written through


def test_metrics_log_never_writes_through_a_hard_link(tmp_path):
    from llamantino.train.common import MetricsLog

    run = tmp_path / "run"
    run.mkdir()
    rows = "".join(f"{step},{1 / step},0.1,,,,\n" for step in range(1, 5))
    (run / "metrics.csv").write_text("step,loss,lr,grad_norm,tokens,tokens_per_s,elapsed_s\n" + rows)
    os.link(run / "metrics.csv", tmp_path / "snapshot.csv")
    before = (tmp_path / "snapshot.csv").read_bytes()
    log = MetricsLog(run, resume_step=2)  # before: rows 3 and 4 dropped from the snapshot too
    log.log(3, loss=0.3)
    assert (tmp_path / "snapshot.csv").read_bytes() == before
    os.link(run / "metrics.csv", tmp_path / "later.csv")  # a snapshot taken while the run goes on
    later = (tmp_path / "later.csv").read_bytes()
    log.log(4, loss=0.25)
    log.close()
    assert (tmp_path / "later.csv").read_bytes() == later
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == \
        ["step", "1", "2", "3", "4"]


def test_a_hard_linked_snapshot_of_a_run_is_not_changed_by_resume(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "adapt"
    args = ["adapt", "--data", str(corpus(tmp_path)), "--model", str(tiny_model_dir), "--output", str(out),
            "--max-length", "64", "--batch-size", "2", "--max-steps", "4", "--save-steps", "2"]
    assert cli(args + ["--stop-after-steps", "2"]) == 3
    subprocess.run(["cp", "-al", str(out), str(tmp_path / "snap")], check=True)
    before = snapshot(tmp_path / "snap")
    assert cli(args + ["--resume"]) == 0
    assert (out / "manifest.json").is_file()
    assert snapshot(tmp_path / "snap") == before


# ---------------------------------------------------------------------------------------
# 4. Only names llamantino makes are its temporaries


def test_overwrite_keeps_the_users_dot_tmp_files(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    (out / ".tmp").mkdir()
    (out / ".tmp" / "cache.bin").write_text("mine")
    # before: both deleted as if they were llamantino's temporaries
    refused(capsys, [shards, "--output", out, "--min-chars", "400", "--overwrite"],
            "holds 1 file(s) no llamantino run wrote (e.g. .tmp/cache.bin)", tmp_path)
    (out / ".tmp" / "cache.bin").unlink()
    (out / ".tmp").rmdir()
    (out / ".notes.tmp-1").write_text("mine")
    refused(capsys, [shards, "--output", out, "--min-chars", "400", "--overwrite"],
            "(e.g. .notes.tmp-1)", tmp_path)
    (out / ".notes.tmp-1").unlink()
    # A work file llamantino names, left by a killed process, goes with the run.
    (out / ".llamantino-tmp-12345-part-00001.jsonl.gz").write_bytes(b"half a shard")
    assert clean(capsys, shards, "--output", out, "--min-chars", "400", "--overwrite")[0] == 0
    assert not (out / ".llamantino-tmp-12345-part-00001.jsonl.gz").exists()


def test_reports_rewritten_every_time_replace_only_their_own_folders(tmp_path, capsys):
    from llamantino.core.manifest import write_manifest
    from llamantino.core.runner import config_for

    runs = []
    for name, loss in (("a", 2.0), ("b", 1.5)):
        write_manifest(tmp_path / name, "adapt", config_for("bpb", model="m", data=["x.txt"]),
                       metrics={"final_loss": loss})
        runs.append(f"{name}={tmp_path / name}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("someone's file")
    for extra in (["--overwrite"], []):  # before: --overwrite replaced the folder, keep.txt with it
        assert cli(["report", "compare", *runs, "--output", str(mine), *extra]) == 2
        assert "holds no finished llamantino run" in capsys.readouterr().err
    assert (mine / "keep.txt").read_text() == "someone's file"
    assert cli(["report", "compare", *runs, "--output", str(tmp_path / "cmp")]) == 0
    (tmp_path / "cmp" / "notes.txt").write_text("mine")
    assert cli(["report", "compare", *runs, "--output", str(tmp_path / "cmp")]) == 2
    assert "no llamantino run wrote (e.g. notes.txt)" in capsys.readouterr().err


def test_overwrite_never_deletes_local_files_of_a_hub_input(tmp_path, shards, capsys, monkeypatch):
    a = tmp_path / "A"
    assert clean(capsys, shards, "--output", a)[0] == 0
    monkeypatch.chdir(tmp_path)
    # before: A deleted; datasets' json builder reads A/part-00000.jsonl.gz
    refused(capsys, ["hub:json?data_files=A/part-*.jsonl.gz", "--output", a, "--overwrite"],
            "the output holds the input A/part-00000.jsonl.gz", tmp_path)
