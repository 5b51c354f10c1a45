"""Bad input is one line, never a traceback, and loses nothing.

Each case printed a traceback in an earlier version: a manifest.json that is a list or a
string; an output that is a symbolic link, with --overwrite; a SHA256SUMS or an index that
is not UTF-8; a weight_diff.json nested too deep; weight file names longer than a file
system allows; .argosmodel members that clash, or a metadata.json that is a list; a bad
CTranslate2 model.bin; an adapter_config.json that is a list; a damaged adapter weights
file; a malformed metrics.csv on resume; `config show | head -1`; a recipe named `../../x`."""

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from llamantino.cli import main as cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for

from helpers.translate import FORMAT_RECORDS, crafted_argosmodel, stand_in, write_jsonl  # noqa: E402,F401
from helpers.trust_overwrite import shards  # noqa: E402,F401
from helpers.trust_release import cli_refuses, made, rename_target_file, snapshot  # noqa: E402,F401


def one_line(capsys, args, match, root) -> str:
    """The command exits 2 with one `error:` line holding `match`; nothing under `root` changed."""
    return cli_refuses(capsys, args, match, root)


def clean_args(shards, out, *extra):
    return [str(a) for a in ("clean", shards, "--output", out, "--workers", "1", *extra)]


@pytest.mark.parametrize("text, kind", [("[1, 2]", "list"), ('"hello"', "str")])
def test_a_manifest_that_is_not_an_object(tmp_path, shards, capsys, text, kind):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "manifest.json").write_text(text)
    for extra in ([], ["--overwrite"]):
        one_line(capsys, clean_args(shards, folder, *extra),
                 f"its manifest.json is not one llamantino writes (a JSON {kind}, not an object)", tmp_path)
    one_line(capsys, ["report", "compare", f"a={folder}", f"b={folder}", "--output", tmp_path / "cmp"],
             f"a JSON {kind}, not an object", tmp_path)


def test_an_output_that_is_a_symbolic_link(tmp_path, shards, capsys, made):
    assert cli(clean_args(shards, tmp_path / "B")) == 0
    (tmp_path / "link").symlink_to("B")
    # before: OSError "Cannot call rmtree on a symbolic link"
    one_line(capsys, clean_args(shards, tmp_path / "link", "--min-chars", "400", "--overwrite"),
             "the output is a symbolic link (to B)", tmp_path)
    # before: diff make replaced the link and left a stray `.d_link.old-PID` next to it
    assert cli(["diff", "make", "--base", str(made / "base"), "--target", str(made / "target"),
                "--output", str(made / "d")]) == 0
    (made / "d_link").symlink_to("d")
    one_line(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output",
                      made / "d_link", "--overwrite"], "the output is a symbolic link", made)


def test_checksums_and_indexes_that_are_not_utf8(made, capsys):
    from llamantino.release.build import read_checksums

    release = made / "release"
    release.mkdir()
    (release / "SHA256SUMS").write_bytes(b"0" * 64 + b"  config.json\n" + b"0" * 64 + b"  caf\xe9.bin\n")
    with pytest.raises(LlamantinoError, match=r"SHA256SUMS:2: not UTF-8 text \(invalid continuation byte"):
        read_checksums(release)
    (made / "target" / "model.safetensors.index.json").write_bytes(b'{"weight_map": {"caf\xe9": "x"}}')
    one_line(capsys, ["diff", "make", "--base", made / "base", "--target", made / "target", "--output",
                      made / "out"], "model.safetensors.index.json: not UTF-8 text", made)


def test_a_weight_diff_json_nested_too_deep(made, capsys):
    (made / "diff" / "weight_diff.json").write_text("[" * 100_000 + "]" * 100_000)
    one_line(capsys, ["diff", "apply", "--base", made / "base", "--diff", made / "diff", "--output", made / "out"],
             "unreadable weight difference manifest (RecursionError", made)


def test_weight_file_names_longer_than_a_file_system_allows(made, capsys):
    # A name given on the command line, too long for the file system.
    one_line(capsys, ["diff", "apply", "--base", made / "base", "--diff", made / "diff", "--output",
                      made / ("b" * 300)], "longer than the file system allows", made)
    path = made / "diff" / "weight_diff.json"
    manifest = json.loads(path.read_text())
    rename_target_file(manifest, 0, "a" * 300 + ".safetensors")
    path.write_text(json.dumps(manifest))
    # before: OSError ENAMETOOLONG once the rebuild started writing
    err = one_line(capsys, ["diff", "apply", "--base", made / "base", "--diff", made / "diff", "--output",
                            made / "out"], "has a name of 312 bytes; file systems allow 255", made)
    assert "... (314 characters)" in err  # the name is cut in the message


def _argosmodel_with(tmp_path, good, name, replace):
    """The stand-in package with members replaced (name -> bytes)."""
    path = tmp_path / f"{name}.argosmodel"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as zf:
        for info in source.infolist():
            zf.writestr(info, replace.get(info.filename, source.read(info)))
    return path


def translate_refuses(tmp_path, model, match, **settings):
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(model), **settings)
    before = snapshot(tmp_path)
    with pytest.raises(LlamantinoError, match=match) as info:
        from llamantino.data import translate

        translate.run(cfg)
    assert "\n" not in str(info.value) and snapshot(tmp_path) == before


def test_argosmodel_members_that_clash_and_metadata_that_is_a_list(tmp_path, stand_in):
    clash = crafted_argosmodel(tmp_path, stand_in["argosmodel"], "clash",
                               lambda zf: zf.writestr("translate-en_it-stand_in/model/model.bin/x", "x"))
    # before: NotADirectoryError while extracting
    translate_refuses(tmp_path, clash, "member 'translate-en_it-stand_in/model/model.bin' is both a file and a folder")
    listed = _argosmodel_with(tmp_path, stand_in["argosmodel"], "listed",
                              {"translate-en_it-stand_in/metadata.json": b"[1, 2]"})
    # before: AttributeError: 'list' object has no attribute 'get'
    translate_refuses(tmp_path, listed, "metadata.json is a JSON list, not an object")
    folder = tmp_path / "package"
    with zipfile.ZipFile(stand_in["argosmodel"]) as zf:
        zf.extractall(folder)
    (folder / "translate-en_it-stand_in" / "metadata.json").write_text('"a string"')
    translate_refuses(tmp_path, folder / "translate-en_it-stand_in", "a JSON str, not an object")


def test_a_bad_ctranslate2_model(tmp_path, stand_in):
    model = tmp_path / "ct2"
    shutil.copytree(stand_in["ct2"], model)
    (model / "model.bin").write_bytes(b"\x00" * 100)
    # before: RuntimeError from ctranslate2, and an unfinished run folder left behind
    translate_refuses(tmp_path, model, "model.bin: CTranslate2 cannot load the model")
    shutil.copy(stand_in["ct2"] / "model.bin", model / "model.bin")
    (model / "sentencepiece.model").write_bytes(b"garbage")
    translate_refuses(tmp_path, model, "a SentencePiece model that does not load")


def test_adapters_with_a_list_for_a_config_or_damaged_weights(tmp_path, tiny_model_dir, make_random_adapter, capsys):
    adapter = make_random_adapter(tmp_path / "adapter", seed=1)
    text = tmp_path / "held-out.txt"
    text.write_text("Il gatto dorme sul divano.\n", encoding="utf-8")
    bpb = ["eval", "bpb", text, "--model", tiny_model_dir, "--adapter", adapter, "--output", tmp_path / "bpb"]
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(weights[:-10])
    # before: a SafetensorError traceback
    one_line(capsys, bpb, "adapter_model.safetensors: truncated or damaged", tmp_path)
    merge = ["merge", "--base", tiny_model_dir, "--adapter", adapter, "--output", tmp_path / "merged"]
    one_line(capsys, merge, "adapter_model.safetensors: truncated or damaged", tmp_path)
    (adapter / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + weights[8:])
    one_line(capsys, bpb, "adapter_model.safetensors: not a readable safetensors file", tmp_path)
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    (adapter / "adapter_config.json").write_text("[1, 2]")
    # before: a TypeError traceback from peft
    one_line(capsys, bpb, "adapter_config.json: a JSON list, not an object", tmp_path)


def test_a_malformed_metrics_log_on_resume(tmp_path):
    from llamantino.train.common import MetricsLog

    (tmp_path / "metrics.csv").write_text("loss,lr\n0.5,0.1\n")
    before = (tmp_path / "metrics.csv").read_bytes()
    # before: KeyError: 'step'
    with pytest.raises(LlamantinoError, match=r"metrics.csv:2: field 'step' is None, not a step number") as info:
        MetricsLog(tmp_path, resume_step=2)
    assert "\n" not in str(info.value)
    (tmp_path / "metrics.csv").write_text("step,loss\n1,0.5\ntwo,0.4\n")
    with pytest.raises(LlamantinoError, match=r"metrics.csv:3: field 'step' is 'two'"):
        MetricsLog(tmp_path, resume_step=2)
    (tmp_path / "metrics.csv").write_bytes(b"step,loss\n1,0.5\n\xff\xfe,0.4\n")
    with pytest.raises(LlamantinoError, match=r"metrics.csv: unreadable metrics log"):
        MetricsLog(tmp_path, resume_step=2)
    (tmp_path / "metrics.csv").write_bytes(before)
    assert (tmp_path / "metrics.csv").read_bytes() == before


def test_output_piped_into_a_reader_that_stops():
    # `llamantino config show demo | head -1`: the reader is gone before the output is written.
    process = subprocess.Popen([sys.executable, "-m", "llamantino", "config", "show", "demo"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 0 and err == ""  # before: a BrokenPipeError traceback


def test_a_recipe_name_is_a_plain_name(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    for name in ("../../x", "/abs", ".hidden"):
        recipe.write_text(f"name: '{name}'\nstages:\n  bpb: {{model: m, data: [d]}}\n")
        one_line(capsys, ["config", "show", recipe], "a recipe's name is a plain name", tmp_path)
