"""Helpers first written for test_trust_release.py that other test modules use too: cli_refuses,
made, rename_target_file, snapshot."""

import json
import os
from pathlib import Path

import pytest

from llamantino import cli
from llamantino.release.weightdiff import make_diff

from helpers.weightdiff import random_tensors, write_checkpoint


def snapshot(root: Path) -> dict:
    """Every file, folder and link under `root` (links not followed), with contents."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "folder"
    return out


@pytest.fixture
def made(tmp_path):
    """base and target (two shards each), their difference, and a victim folder outside."""
    write_checkpoint(tmp_path / "base", random_tensors(1), shards=2)
    write_checkpoint(tmp_path / "target", random_tensors(2), shards=2)
    make_diff(tmp_path / "base", tmp_path / "target", tmp_path / "diff")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim/precious.safetensors").write_bytes(b"the user's own file")
    (tmp_path / "victim/notes.txt").write_text("keep me")
    return tmp_path


def rename_target_file(manifest: dict, i: int, name: str) -> None:
    """What an attacker writes: target file i renamed everywhere (files, tensors, index)."""
    old = manifest["target"]["files"][i]["file"]
    manifest["target"]["files"][i]["file"] = name
    for entry in manifest["tensors"]:
        if entry["file"] == old:
            entry["file"] = name
    index = json.loads(manifest["target"]["index"])
    index["weight_map"] = {t: name if f == old else f for t, f in index["weight_map"].items()}
    manifest["target"]["index"] = json.dumps(index)


def cli_refuses(capsys, args, match, root) -> str:
    """The command exits 2 with one `error:` line matching `match`; nothing under `root` changed."""
    before = snapshot(root)
    capsys.readouterr()  # what the test printed while setting up is not the command's
    code = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert snapshot(root) == before
    return err
