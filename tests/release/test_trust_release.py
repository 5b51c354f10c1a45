"""Trust: weight differences, builds and releases that strangers' files cannot abuse.

Each test is an attack or an accident, as a crafted file: a manifest entry that climbs out
of its folder, an absolute path, a symbolic link planted in a difference or a base folder,
an index naming `../x`, a manifest missing a key, an --overwrite aimed at an input or at a
user's folder, a release without its checksum list. Each is refused with one line, and
nothing is written anywhere (the whole test folder is compared byte for byte)."""

import json
import shutil
from pathlib import Path

import pytest

from llamantino import cli
from llamantino.core.errors import LlamantinoError
from llamantino.release.weightdiff import apply_diff, make_diff, tensor_hashes

from helpers.trust_release import cli_refuses, made, rename_target_file, snapshot
from helpers.weightdiff import random_tensors, write_checkpoint


def edit_manifest(diff: Path, change) -> None:
    path = diff / "weight_diff.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def apply_refuses(capsys, made, match, base=None, output=None, extra=()):
    return cli_refuses(capsys, ["diff", "apply", "--base", base or made / "base", "--diff", made / "diff",
                                "--output", output or made / "out", *extra], match, made)


# ---------------------------------------------------------------------------------------
# Names in weight_diff.json: plain names inside their folder, or refused before anything opens


def test_a_target_file_climbing_out_of_the_output_is_refused(made, capsys):
    # before: the rebuilt shard was written to victim/precious.safetensors (exit 0)
    edit_manifest(made / "diff", lambda m: rename_target_file(m, 0, "../victim/precious.safetensors"))
    apply_refuses(capsys, made, "target.files[0]: file: '../victim/precious.safetensors' is not a plain")


def test_an_absolute_target_file_is_refused(made, capsys):
    victim = str(made / "victim/precious.safetensors")
    edit_manifest(made / "diff", lambda m: rename_target_file(m, 1, victim))
    apply_refuses(capsys, made, f"target.files[1]: file: '{victim}' is not a plain")


def test_side_files_and_diff_files_outside_their_folder_are_refused(made, capsys):
    shutil.copy(made / "diff/weight_diff.json", made / "good.json")
    from llamantino.core.fileio import sha256_file

    notes = sha256_file(made / "victim/notes.txt")
    edit_manifest(made / "diff", lambda m: m["side_files"][0].update(name="../victim/notes.txt", sha256=notes))
    apply_refuses(capsys, made, "side_files[0]: name: '../victim/notes.txt' is not a plain")
    shutil.copy(made / "good.json", made / "diff/weight_diff.json")
    edit_manifest(made / "diff", lambda m: m["side_files"][0].update(name="README.md"))
    apply_refuses(capsys, made, "side_files[0]: name 'README.md' is not one of the side files")
    shutil.copy(made / "good.json", made / "diff/weight_diff.json")

    def read_the_base(m):
        m["target"]["files"][0]["diff_file"] = "../base/model-00001-of-00002.safetensors"
        for entry in m["tensors"]:
            if entry["file"] == m["target"]["files"][0]["file"]:
                entry["diff_file"] = "../base/model-00001-of-00002.safetensors"

    edit_manifest(made / "diff", read_the_base)
    apply_refuses(capsys, made, "diff_file: '../base/model-00001-of-00002.safetensors' is not a plain")


def test_an_index_naming_a_file_outside_is_refused(made, capsys):
    def escape(m):
        index = json.loads(m["target"]["index"])
        index["weight_map"]["model.norm.weight"] = "../x.safetensors"
        m["target"]["index"] = json.dumps(index)

    edit_manifest(made / "diff", escape)
    apply_refuses(capsys, made, "target.index: weight_map: '../x.safetensors' is not a plain")
    # the base's own index, likewise
    (made / "diff/weight_diff.json").unlink()
    make_diff(made / "base", made / "target", made / "diff2")
    index = json.loads((made / "base/model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "../victim/precious.safetensors"
    (made / "base/model.safetensors.index.json").write_text(json.dumps(index))
    cli_refuses(capsys, ["diff", "apply", "--base", made / "base", "--diff", made / "diff2", "--output",
                         made / "out"], "weight_map: '../victim/precious.safetensors' is not a plain", made)
    cli_refuses(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output",
                         made / "d3"], "weight_map: '../victim/precious.safetensors' is not a plain", made)


@pytest.mark.parametrize("planted", ["diff/diff-00001-of-00002.safetensors", "diff/config.json",
                                     "diff/weight_diff.json", "base/model-00002-of-00002.safetensors",
                                     "base/config.json"])
def test_a_symbolic_link_leading_out_of_a_diff_or_base_folder_is_refused(made, capsys, planted):
    real = made / planted
    outside = made / "victim" / real.name
    shutil.move(real, outside)  # the very same bytes: only the link's place is wrong
    real.symlink_to(outside)
    apply_refuses(capsys, made, f"'{real.name}' resolves outside")


def test_a_manifest_missing_a_key_is_one_line(made, capsys):
    shutil.copy(made / "diff/weight_diff.json", made / "good.json")
    cases = [(lambda m: m["tensors"][3].pop("sha256"), "tensors[3]: missing key 'sha256'"),
             (lambda m: m.pop("target"), "weight_diff.json: missing key 'target'"),
             (lambda m: m["tensors"][0]["base"].pop("name"),
              "tensors[0] (model.embed_tokens.weight): base: missing key 'name'"),
             (lambda m: m["tensors"][1].update(shape="16x16"), "shape: expected a list of sizes, got str"),
             (lambda m: m["target"]["files"].append(m["target"]["files"][0]), "is listed twice"),
             (lambda m: m.pop("side_files"), "missing key 'side_files'")]
    for change, match in cases:
        shutil.copy(made / "good.json", made / "diff/weight_diff.json")
        edit_manifest(made / "diff", change)
        apply_refuses(capsys, made, match)


def test_a_stored_header_with_other_offsets_is_refused(made, capsys):
    def shift(m):
        header = json.loads(m["target"]["files"][0]["header"])
        name = next(n for n in header if n != "__metadata__")
        header[name]["data_offsets"] = [1 << 40, (1 << 40) + 4]
        m["target"]["files"][0]["header"] = json.dumps(header)

    edit_manifest(made / "diff", shift)
    apply_refuses(capsys, made, "does not follow the previous tensor")


# ---------------------------------------------------------------------------------------
# Outputs: never an input, never a user's folder, the old one intact until the new one is verified


def test_overwrite_never_deletes_the_base(made, capsys):
    models = made / "models"
    shutil.copytree(made / "base", models / "x")
    # before: the base was deleted and the command exited 0
    apply_refuses(capsys, made, "holds the input", base=models / "x", output=models, extra=["--overwrite"])
    apply_refuses(capsys, made, "lies inside the input", output=made / "diff/out", extra=["--overwrite"])
    apply_refuses(capsys, made, "must differ from --diff", output=made / "diff", extra=["--overwrite"])
    cli_refuses(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output", made,
                         "--overwrite"], "holds the input", made)


def test_overwrite_replaces_only_llamantino_outputs(made, capsys):
    cli_refuses(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output",
                         made / "victim", "--overwrite"], "no llamantino run wrote", made)
    # a previous difference is recognised by its manifest.json, and replaced
    assert json.loads((made / "diff/manifest.json").read_text())["stage"] == "diff make"
    assert cli.main(["diff", "make", "--base", str(made / "base"), "--target", str(made / "target"),
                     "--output", str(made / "diff"), "--overwrite"]) == 0
    (made / "diff/my-notes.txt").write_text("mine")
    cli_refuses(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output",
                         made / "diff", "--overwrite"], "no llamantino run wrote (e.g. my-notes.txt)", made)


def test_a_failed_apply_leaves_the_previous_output_as_it_was(made, capsys):
    apply_diff(made / "base", made / "diff", made / "out")
    # damage two tensors of the difference: the rebuild fails and names both
    for shard in ("diff-00001-of-00002.safetensors", "diff-00002-of-00002.safetensors"):
        data = bytearray((made / "diff" / shard).read_bytes())
        data[-1] ^= 0xFF
        (made / "diff" / shard).write_bytes(bytes(data))
    err = apply_refuses(capsys, made, "2 rebuilt tensor(s) do not match", extra=["--overwrite"])
    assert "diff-00001-of-00002.safetensors)" in err and "diff-00002-of-00002.safetensors)" in err
    assert tensor_hashes(made / "out") == tensor_hashes(made / "target")


def test_a_wrong_base_and_a_damaged_tensor_are_both_named(made):
    tensors = random_tensors(1)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 1
    write_checkpoint(made / "other", tensors, shards=2)
    path = made / "diff/diff-00002-of-00002.safetensors"  # its last tensor: model.layers.1.self_attn.q_proj
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LlamantinoError) as info:
        apply_diff(made / "other", made / "diff", made / "out")
    message = str(info.value)
    assert "1 of 7 base tensor(s) differ" in message and "model.norm.weight" in message
    assert "1 rebuilt tensor(s) do not match" in message and "\n" not in message
    assert not (made / "out").exists()


# ---------------------------------------------------------------------------------------
# build: released folders checked against a SHA256SUMS that lists every file


def release_of(diff: Path, folder: Path) -> Path:
    """A released weight difference: the diff's files and a SHA256SUMS listing them."""
    from llamantino.release.release import write_checksums

    shutil.copytree(diff, folder)
    (folder / "manifest.json").unlink()
    write_checksums(folder)
    return folder


def build_refuses(made, match, release, **kwargs):
    from llamantino.release.build import build_chain

    before = snapshot(made)
    with pytest.raises(LlamantinoError, match=match) as info:
        build_chain(made / "base", [f"diff:{release}"], made / "built", **kwargs)
    assert "\n" not in str(info.value) and snapshot(made) == before
    return str(info.value)


def test_build_checks_the_release_and_refuses_one_without_checksums(made, capsys):
    from llamantino.release.build import build_chain

    release = release_of(made / "diff", made / "rel")
    build_chain(made / "base", [f"diff:{release}"], made / "built")
    assert tensor_hashes(made / "built") == tensor_hashes(made / "target")
    shutil.rmtree(made / "built")
    (release / "SHA256SUMS").unlink()
    # before: a release whose SHA256SUMS was deleted was built without a word
    build_refuses(made, "no SHA256SUMS, so its files cannot be checked; pass --no-verify", release)
    report = build_chain(made / "base", [f"diff:{release}"], made / "built", verify=False)
    assert "files not checked (--no-verify)" in report["checks"][0]
    command = ["build", "--base", made / "base", "--diff", release, "--output", made / "by-cli"]
    cli_refuses(capsys, command, "no SHA256SUMS, so its files cannot be checked", made)
    assert cli.main([str(a) for a in command] + ["--no-verify"]) == 0
    assert tensor_hashes(made / "by-cli") == tensor_hashes(made / "target")


def test_checksum_entries_outside_the_release_are_refused(made):
    release = release_of(made / "diff", made / "rel")
    listed = (release / "SHA256SUMS").read_text()
    digest = "0" * 64
    for name, match in (("../victim/notes.txt", "SHA256SUMS:1: '../victim/notes.txt' is not a plain"),
                        (str(made / "victim/notes.txt"), "SHA256SUMS:1: '/"),
                        ("weight_diff.json", "SHA256SUMS:6: weight_diff.json is listed twice")):
        first = f"{digest}  {name}\n" if name != "weight_diff.json" else listed.splitlines(True)[-1]
        (release / "SHA256SUMS").write_text(first + listed)
        build_refuses(made, match, release)
    (release / "SHA256SUMS").write_text("not a checksum line\n" + listed)
    build_refuses(made, "SHA256SUMS:1: not a '<sha256>  <file name>' line", release)
    (release / "SHA256SUMS").write_text(listed)
    (release / "extra.json").write_text("{}")
    build_refuses(made, "not listed in SHA256SUMS, so not checkable: extra.json", release)


def test_build_refuses_a_release_holding_a_link_out(made):
    release = release_of(made / "diff", made / "rel")
    (release / "tokenizer.json").symlink_to(made / "victim/notes.txt")
    build_refuses(made, "tokenizer.json is a symbolic link that leads outside", release)


def test_build_output_is_never_an_input(made):
    from llamantino.release.build import build_chain

    release = release_of(made / "diff", made / "rel")
    before = snapshot(made)
    for output, match in ((made, "holds the input"), (release / "x", "lies inside the input"),
                          (made / "victim", "no llamantino run wrote")):
        with pytest.raises(LlamantinoError, match=match):
            build_chain(made / "base", [f"diff:{release}"], output, overwrite=True)
    assert snapshot(made) == before


def test_downloads_with_names_or_links_leading_out_are_refused(tmp_path, monkeypatch):
    import huggingface_hub

    import llamantino.release.build as build

    fetched = []

    def fake_snapshot_download(repo_id, local_dir, allow_patterns, revision):
        fetched.append(repo_id)
        Path(local_dir).mkdir(parents=True)
        (Path(local_dir) / "config.json").write_text("{}")
        (Path(local_dir) / "tokenizer.json").symlink_to("/etc/hostname")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    models = tmp_path / "models"
    monkeypatch.setattr(build, "_repo_listing", lambda repo_id: ("0" * 40, ["config.json", "../../evil.json"]))
    with pytest.raises(LlamantinoError, match="file: '../../evil.json' is not a plain"):
        build.resolve("someone/model", models, download=True)
    assert fetched == []  # refused before anything was fetched
    monkeypatch.setattr(build, "_repo_listing", lambda repo_id: ("0" * 40, ["config.json", "tokenizer.json"]))
    with pytest.raises(LlamantinoError, match="unexpected file or link tokenizer.json; nothing kept"):
        build.resolve("someone/model", models, download=True)
    assert fetched == ["someone/model"] and [p for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()] == []
    for name in ("../../etc", "someone/..", "/abs/path"):
        with pytest.raises(LlamantinoError, match="not a hub repository name|not a plain relative"):
            build.resolve(name, models, download=True)


# ---------------------------------------------------------------------------------------
# release: a link in the run folder never publishes a file from elsewhere


def test_release_refuses_to_publish_a_file_a_link_points_to(tmp_path):
    from llamantino.core.runner import config_for
    from llamantino.release.release import run as release_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (run / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "manifest.json").write_text(json.dumps({"llamantino": "0.1.0", "stage": "adapt", "settings": {},
                                                   "metrics": {}}))
    (tmp_path / "secret.txt").write_text("private key")
    (run / "tokenizer.json").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(LlamantinoError, match="'tokenizer.json' resolves outside"):
        release_run(config_for("release", run=str(run), output=str(tmp_path / "rel")))
    assert not (tmp_path / "rel").exists()


def test_push_takes_released_names_literally(tmp_path):
    from llamantino.release.release import push_release, write_checksums

    folder = tmp_path / "rel"
    folder.mkdir()
    (folder / "a[1].json").write_text("{}")
    (folder / "a1.json").write_text("{}")
    write_checksums(folder)
    (folder / "SHA256SUMS").write_text("".join(line for line in (folder / "SHA256SUMS").read_text().splitlines(True)
                                               if "a[1]" in line))
    (folder / "a1.json").unlink()
    calls = []

    class Api:
        def create_repo(self, **kwargs):
            pass

        def upload_folder(self, **kwargs):
            calls.append(kwargs["allow_patterns"])
            return "done"

    push_release(folder, "me/x", api=Api())
    from fnmatch import fnmatch

    (patterns,) = calls
    assert [p for p in patterns if fnmatch("a[1].json", p)] and not [p for p in patterns if fnmatch("a1.json", p)]


def test_a_hub_cache_snapshot_may_link_into_its_own_blobs_only(made, capsys):
    """The hub cache keeps files in `blobs/` and links to them from `snapshots/REV/`: such a
    base is used as it is; a link from the snapshot to anywhere else is still refused."""
    repo = made / "hub" / "models--org--base"
    snap = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, path in enumerate(sorted((made / "base").iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(path, blob)
        (snap / path.name).symlink_to(Path("../../blobs") / blob.name)
    out = made / "rebuilt"
    apply_diff(snap, made / "diff", out)
    assert tensor_hashes(out) == tensor_hashes(made / "target")
    (snap / "config.json").unlink()
    (snap / "config.json").symlink_to(made / "victim" / "notes.txt")
    with pytest.raises(LlamantinoError, match="leads outside the folder|resolves outside"):
        apply_diff(snap, made / "diff", made / "rebuilt2")


# ---------------------------------------------------------------------------------------
# Pickles: weights are read from safetensors only


def test_pickled_adapters_and_models_are_refused_in_one_line(tmp_path, tiny_model_dir, make_random_adapter, capsys,
                                                             monkeypatch):
    """An adapter_model.bin or a pytorch_model.bin (pickles) is refused by merge, build and eval
    bpb, naming the file and how to convert it; nothing parses it (torch.load is never called)."""
    import torch
    from safetensors.torch import load_file

    adapter = make_random_adapter(tmp_path / "adapter", seed=3)
    pickled_adapter = tmp_path / "adapter-bin"
    shutil.copytree(adapter, pickled_adapter)
    torch.save(load_file(pickled_adapter / "adapter_model.safetensors"), pickled_adapter / "adapter_model.bin")
    (pickled_adapter / "adapter_model.safetensors").unlink()
    pickled_model = tmp_path / "model-bin"
    shutil.copytree(tiny_model_dir, pickled_model)
    torch.save(load_file(pickled_model / "model.safetensors"), pickled_model / "pytorch_model.bin")
    (pickled_model / "model.safetensors").unlink()
    (tmp_path / "text.txt").write_text("Il gatto dorme sul divano.\n\nLa pioggia cade sulla città.\n")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was parsed"))
    capsys.readouterr()  # what making the adapter printed

    adapter_line = f"{pickled_adapter / 'adapter_model.bin'}: a pickle; llamantino reads adapter weights from " \
                   "safetensors files only"
    model_line = f"{pickled_model / 'pytorch_model.bin'}: a pickle; llamantino reads model weights from safetensors"
    out = tmp_path / "out"
    for args, match in (
            (["merge", "--base", tiny_model_dir, "--adapter", pickled_adapter, "--output", out], adapter_line),
            (["merge", "--base", pickled_model, "--adapter", adapter, "--output", out], model_line),
            (["build", "--base", tiny_model_dir, "--adapters", pickled_adapter, "--output", out, "--no-verify"],
             adapter_line),
            (["build", "--base", pickled_model, "--adapters", adapter, "--output", out, "--no-verify"], model_line),
            (["eval", "bpb", "--model", pickled_model, tmp_path / "text.txt"], model_line),
            (["eval", "bpb", "--model", tiny_model_dir, "--adapter", pickled_adapter, tmp_path / "text.txt"],
             adapter_line)):
        err = cli_refuses(capsys, args, match, tmp_path)
        assert "save_pretrained()" in err
