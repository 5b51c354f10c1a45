"""Trust: what --overwrite may delete, when a finished stage may be skipped, runs that stop,
settings out of range, disks that fill up, and code patterns that must never appear.

Each test is an attack or an accident that a user reported against an earlier version:
the input deleted by --overwrite, a user's own file deleted with an output folder, a
symbolic link planted in an output folder, a stale output reported as done after its input
changed, a chain that went on after a stage stopped, a NaN learning rate accepted."""

import ast
import errno
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from llamantino.cli import main as cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for

from helpers.adapt import corpus
from helpers.clean import mc4_shard_folder, page, write_jsonl


SRC = Path(__file__).parent.parent / "src" / "llamantino"


@pytest.fixture
def shards(tmp_path):
    return mc4_shard_folder(tmp_path, 6)


def clean(capsys, *args):
    code = cli(["clean", *map(str, args), "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.err.strip()


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------
# --overwrite never deletes inputs or files that no llamantino run wrote


def test_overwrite_never_deletes_an_input(tmp_path, shards, capsys):
    before = snapshot(shards)
    code, err = clean(capsys, shards, "--output", shards, "--overwrite")
    assert code == 2 and "the output is also an input" in err
    code, err = clean(capsys, shards, "--output", shards / "out")
    assert code == 2 and "lies inside the input" in err
    code, err = clean(capsys, shards / "c4-it.tfrecord-00000-of-01024.json.gz", "--output", shards, "--overwrite")
    assert code == 2 and "holds the input" in err
    assert snapshot(shards) == before and not (shards / "out").exists()


def test_overwrite_keeps_files_no_run_wrote(tmp_path, shards, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("my notes")
    code, err = clean(capsys, shards, "--output", foreign, "--overwrite")
    assert code == 2 and "holds no llamantino run" in err and (foreign / "notes.txt").read_text() == "my notes"

    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    (out / "README.txt").write_text("added by hand")
    code, err = clean(capsys, shards, "--output", out, "--min-chars", "400", "--overwrite")
    assert code == 2 and "no llamantino run wrote (e.g. README.txt)" in err
    assert (out / "README.txt").is_file() and (out / "manifest.json").is_file()
    (out / "README.txt").unlink()
    assert clean(capsys, shards, "--output", out, "--min-chars", "400", "--overwrite")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["settings"]["min_chars"] == 400


def test_symbolic_link_in_an_output_folder_is_refused(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    (out / "checkpoints").symlink_to(victim)
    for extra in ([], ["--overwrite", "--min-chars", "400"]):
        code, err = clean(capsys, shards, "--output", out, *extra)
        assert code == 2 and "holds a symbolic link" in err
    assert (victim / "precious.txt").read_text() == "keep me"


def test_output_folders_get_the_usual_permissions(tmp_path):
    from llamantino.core.fileio import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "made") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755


# ---------------------------------------------------------------------------------------
# A finished stage is skipped only when its inputs are unchanged


def test_a_changed_input_is_not_reported_as_done(tmp_path, shards, capsys):
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    shard = next(shards.iterdir())
    # Touched but identical: still the same input, the finished run is recognised.
    os.utime(shard, ns=(1, 1))
    assert cli(["clean", str(shards), "--output", str(out), "--workers", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "skipped (done)"
    records = [{"text": page(f"Una pagina diversa, numero {i}, scritta dopo la prima esecuzione."),
                "url": f"https://example.it/{i}", "timestamp": "2021-01-01"} for i in range(4)]
    write_jsonl(shard, records)
    code, err = clean(capsys, shards, "--output", out)
    assert code == 2 and "its input changed since" in err and str(shard) in err
    assert clean(capsys, shards, "--output", out, "--overwrite")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["metrics"]["documents"]["read"] == 4
    # A file added to an input folder is a change too.
    write_jsonl(shards / "c4-it.tfrecord-00001-of-01024.json.gz", records)
    code, err = clean(capsys, shards, "--output", out)
    assert code == 2 and "files added or removed" in err


def test_an_edit_that_keeps_size_and_time_is_a_change(tmp_path, shards, capsys):
    """Same size, modification time put back (`touch -r`): the content still decides."""
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    shard = next(shards.iterdir())
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the compressed text: same size
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert shard.stat().st_size == before.st_size and shard.stat().st_mtime_ns == before.st_mtime_ns
    code, err = clean(capsys, shards, "--output", out)
    assert code == 2 and "its input changed since" in err and str(shard) in err


def test_a_changed_model_makes_a_later_stage_stale(tmp_path, tiny_model_dir, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    text = tmp_path / "held-out.txt"
    text.write_text("Il gatto dorme sul divano.\n\nLa pioggia cade sulla città.\n", encoding="utf-8")
    args = ["eval", "bpb", str(text), "--model", str(model), "--output", str(tmp_path / "bpb")]
    assert cli(args) == 0
    capsys.readouterr()
    config = json.loads((model / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (model / "config.json").write_text(json.dumps(config))
    assert cli(args) == 2
    assert "input changed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Runs that stop are never taken for finished


def test_a_stopped_stage_stops_the_chain_and_overwrite_starts_afresh(tmp_path, tiny_model_dir, capsys):
    data = corpus(tmp_path)
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(f"""
name: chain
run_dir: {tmp_path / 'runs'}
stages:
  adapt:
    model: {tiny_model_dir}
    data: [{data}]
    max_length: 64
    batch_size: 2
    max_steps: 4
    save_steps: 2
    stop_after_steps: 2
  bpb_after:
    kind: bpb
    model: {tiny_model_dir}
    adapter: ${{adapt.output}}
    data: [{data}]
    max_documents: 4
""", encoding="utf-8")
    assert cli(["run", str(recipe)]) == 3
    out = capsys.readouterr().out
    assert "stopped at step 2" in out and "run the same command again to resume" in out
    assert not (tmp_path / "runs" / "bpb_after").exists()
    # A stage command with --overwrite on the interrupted run of the same settings starts afresh.
    adapt = ["adapt", "--recipe", str(recipe), "--stop-after-steps", "0"]
    assert cli(adapt) == 2 and "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert cli(adapt + ["--overwrite"]) == 0
    manifest = json.loads((tmp_path / "runs" / "adapt" / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 4


# ---------------------------------------------------------------------------------------
# Recipes: every malformed one is one line


@pytest.mark.parametrize("text, message", [
    (b"name: x\nstages:\n  adapt: [1, 2]\n", "stage 'adapt': expected a mapping of settings, got list"),
    (b"name: x\nstages:\n  adapt: hello\n", "stage 'adapt': expected a mapping of settings, got str"),
    (b"name: x\nrun_dir: ${run_dir}/x\nstages:\n  bpb: {model: m, data: [d]}\n", "run_dir refers to itself"),
    (b"name: x\nstages:\n  ..: {kind: bpb, model: m, data: [d]}\n", "stage name '..': use letters, digits and _"),
    (b"name: x\ndescription: caf\xe9\nstages:\n  bpb: {model: m, data: [d]}\n", ":2: not UTF-8 text (byte 24"),
])
def test_malformed_recipes_are_one_line(tmp_path, capsys, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text)
    assert cli(["config", "show", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


@pytest.mark.parametrize("override, message", [("adapt=5", "'adapt' is a section"),
                                               ("release=x", "'release' is a section")])
def test_set_of_a_whole_section_is_one_line(capsys, override, message):
    assert cli(["config", "show", "demo", "--set", override]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Settings out of range fail up front


@pytest.mark.parametrize("value, message", [("nan", "finite"), ("-1e-4", "at least 0"), ("inf", "finite")])
def test_numbers_out_of_range_are_refused(tmp_path, value, message):
    with pytest.raises(LlamantinoError, match=f"setting 'learning_rate'.*{message}"):
        config_for("demo_base", output=str(tmp_path / "x"), learning_rate=value)
    with pytest.raises(LlamantinoError, match="setting 'top_p' is 1.5; it must be between 0 and 1"):
        config_for("chat", model="m", top_p=1.5)


# ---------------------------------------------------------------------------------------
# A full or read-only disk: one line, and what was finished stays


def test_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    from llamantino.evaluate import bpb

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "part"))

    monkeypatch.setattr(bpb, "run", full)
    code = cli(["eval", "bpb", "x.txt", "--model", "m"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: {tmp_path / 'out' / 'part'}: No space left on device; finished work is kept")


# ---------------------------------------------------------------------------------------
# A line without an end is refused at the cap, never read whole


def test_a_2_gb_file_without_line_ends_is_one_line_in_little_memory(tmp_path):
    """A sparse 2 GB file (no disk used) with no newline: `clean` stops at the first 8 MiB with
    one line naming file, line and byte offset, under a 2 GiB address-space limit."""
    import resource
    import subprocess

    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / "huge.jsonl", "wb") as handle:
        handle.truncate(2 << 30)
    # The peak resident memory of this process image (VmHWM; ru_maxrss would count the forked
    # pytest process before exec).
    code = ("import re, sys\nfrom llamantino.cli import main\ncode = main(sys.argv[1:])\n"
            "status = open('/proc/self/status').read()\n"
            "print('peak', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\nsys.exit(code)")
    env = dict(os.environ, PYTHONPATH=str(SRC.parent))
    result = subprocess.run([sys.executable, "-c", code, "clean", str(folder), "--output", str(tmp_path / "out"),
                             "--workers", "1"], env=env, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.splitlines()[0]
    assert error == (f"error: {folder / 'huge.jsonl'}:1: line starting at byte 0 of the file is longer than "
                     "8388608 bytes; a longer line is refused, not read into memory: raise max_line_bytes if "
                     "the file is right")
    peak_kb = int(result.stderr.splitlines()[1].split()[1])
    assert peak_kb < 400_000  # the Python process and its libraries (~140 MB): no line was held
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_every_line_reader_stops_at_the_cap(tmp_path, capsys):
    """clean (whole files, gzip, and pieces of an array job), translate and the streamed readers
    of the training stages name the file, the line and its first byte."""
    import gzip

    from llamantino.data import translate
    from llamantino.data.records import iter_documents
    from llamantino.data.streaming import DocumentStream

    good = (json.dumps({"text": page("Una pagina breve.")}) + "\n").encode()
    long = json.dumps({"text": "a" * 5000}).encode() + b"\n"
    plain = tmp_path / "plain" / "part.jsonl"
    plain.parent.mkdir()
    plain.write_bytes(good + long + good)
    packed = tmp_path / "packed" / "part.jsonl.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(good + long + good))
    head = f"line starting at byte {len(good)}"
    for folder, where in ((plain.parent, "of the file"), (packed.parent, "of the decompressed text")):
        path = next(folder.iterdir())
        message = f"{path}:2: {head} {where} is longer than 4096 bytes"
        code, err = clean(capsys, folder, "--output", tmp_path / "out", "--max-line-bytes", "4096")
        assert code == 2 and message in err and err.count("\n") == 0, err
        with pytest.raises(LlamantinoError, match=message):
            translate.run(config_for("translate", inputs=[str(path)], output=str(tmp_path / "t"), format="dolly",
                                     model=str(tmp_path / "no-model"), max_line_bytes=4096))
    # An array job cuts the file in two byte ranges: the long line starts in the first (which
    # stops on it); the second skips the rest of it, a piece at a time, and reads the last line.
    code, err = clean(capsys, plain.parent, "--output", tmp_path / "piece0", "--max-line-bytes", "4096",
                      "--num-shards", "2", "--shard-index", "0")
    assert code == 2 and f"{plain}:2: {head} of the file is longer than 4096 bytes" in err, err
    code, err = clean(capsys, plain.parent, "--output", tmp_path / "piece1", "--max-line-bytes", "4096",
                      "--num-shards", "2", "--shard-index", "1")
    assert code == 0, err
    huge = tmp_path / "huge.jsonl"
    huge.write_bytes(good + b'{"text": "' + b"a" * (9 << 20) + b'"}\n')  # over the default 8 MiB
    with pytest.raises(LlamantinoError, match=f"{huge}:2: {head} of the file is longer than 8388608 bytes"):
        list(iter_documents([str(huge)]))
    with pytest.raises(LlamantinoError, match=f"{huge}:2: {head} of the file is longer than 8388608 bytes"):
        list(DocumentStream([str(huge)], text_field="text", cycle=False))
    assert not (tmp_path / "out").exists() and not (tmp_path / "t").exists()


# ---------------------------------------------------------------------------------------
# Patterns that must never appear in the package: code run from data


# Modules whose loading runs code from the bytes they read.
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "dill", "shelve", "cloudpickle", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def dotted(node, aliases: dict) -> str:
    """`np.load` -> "numpy.load", through the file's import aliases; "" for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def keyword(call: ast.Call, name: str):
    """The value of keyword `name` of a call: the node, or None when not given."""
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_literal(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def code_that_runs_data(source: str) -> list[tuple[int, str]]:
    """(line, what) for each way the syntax tree of `source` could run code read from data:
    an import of an unpickling module, yaml loading without a safe loader, np.load with
    pickles allowed, torch.load without weights_only=True, trust_remote_code, eval/exec,
    a shell command line."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[(alias.asname or alias.name).split(".")[0]] = alias.name if alias.asname else \
                    alias.name.split(".")[0]
                if alias.name.split(".")[0] in UNPICKLING_MODULES:
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES:
                found.append((node.lineno, f"from {node.module} import ..."))
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func, aliases)
        if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile", "builtins.compile"):
            found.append((node.lineno, f"{name}()"))
        elif name in ("__import__", "importlib.import_module") and node.args and \
                isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in UNPICKLING_MODULES:
            found.append((node.lineno, f"{name}({node.args[0].value!r})"))
        elif name in ("yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"):
            found.append((node.lineno, name))
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keyword(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if dotted(loader, aliases).split(".")[-1] not in SAFE_YAML_LOADERS:
                found.append((node.lineno, f"{name} without a safe Loader"))
        elif name == "numpy.load" and not is_literal(keyword(node, "allow_pickle"), False) and \
                keyword(node, "allow_pickle") is not None:
            found.append((node.lineno, "numpy.load with allow_pickle"))
        elif name == "torch.load" and not is_literal(keyword(node, "weights_only"), True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if keyword(node, "trust_remote_code") is not None and not is_literal(keyword(node, "trust_remote_code"), False):
            found.append((node.lineno, "trust_remote_code"))
        if keyword(node, "shell") is not None and not is_literal(keyword(node, "shell"), False):
            found.append((node.lineno, "a shell command line"))
    return sorted(found)


def test_no_code_runs_from_data():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, what in code_that_runs_data(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(SRC)}:{number}: {what}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import pickle as p",
    "import marshal",
    "import dill",
    "import shelve",
    "import joblib.numpy_pickle",
    "from pickle import loads",
    "from _pickle import Unpickler as U",
    "from dill import *",
    "m = __import__('pickle')",
    "import importlib\nm = importlib.import_module('pickle')",
    "import yaml\nyaml.unsafe_load(text)",
    "import yaml\nyaml.full_load(text)",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load(text, yaml.UnsafeLoader)",
    "import yaml\nyaml.load_all(text, Loader=yaml.FullLoader)",
    "from yaml import load\nload(text)",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "import numpy\nnumpy.load(path, allow_pickle=flag)",
    "from numpy import load as l\nl(path, allow_pickle=True)",
    "import torch\ntorch.load(path)",
    "import torch\ntorch.load(path, weights_only=False)",
    "import torch\ntorch.load(path, map_location='cpu', weights_only=flag)",
    "from torch import load\nload(path)",
    "import torch as t\nt.load(path)",
    "AutoModel.from_pretrained(name, trust_remote_code=True)",
    "AutoTokenizer.from_pretrained(name, trust_remote_code=setting)",
    "load_dataset(name, trust_remote_code=True)",
    "x = eval(s)",
    "exec(code)",
    "import builtins\nbuiltins.eval(s)",
    "code = compile(text, 'f', 'exec')",
    "import subprocess\nsubprocess.run(cmd, shell=True)",
])
def test_the_forbidden_spellings_are_caught(snippet):
    assert code_that_runs_data(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "model.eval()",
    '"""eval(x) and import pickle in a docstring"""',
    "x = 1  # exec(y) in a comment",
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "from yaml import load, CSafeLoader\nload(text, CSafeLoader)",
    "import numpy as np\nnp.load(path)",
    "import numpy as np\nnp.load(path, allow_pickle=False)",
    "import torch\ntorch.load(path, weights_only=True)",
    "import torch\ntorch.load(path, map_location='cpu', weights_only=True)",
    "from safetensors.torch import load_file\nload_file(path)",
    "AutoModel.from_pretrained(name, trust_remote_code=False)",
    "import subprocess\nsubprocess.run([cmd, arg], shell=False)",
    "evaluate(x)",
    "pickled = 'pickle'",
])
def test_safe_spellings_pass(snippet):
    assert code_that_runs_data(snippet) == [], snippet


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tmp_path, shards, capsys):
    """Stages that build their output in a temporary folder replace the old one only at the end:
    a failed --overwrite run leaves the previous output as it was."""
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import prepare_output

    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    before = snapshot(out)
    cfg = config_for("clean", inputs=[str(shards)], output=str(out), min_chars=400)
    assert prepare_output(out, "clean", cfg, overwrite=True, replace_later=True) == "fresh"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half written")
            raise RuntimeError("the new run fails")
    assert snapshot(out) == before
    (out / "mine.txt").write_text("added by hand")
    with pytest.raises(LlamantinoError, match="no llamantino run wrote"):
        prepare_output(out, "clean", cfg, overwrite=True, replace_later=True)


def test_an_adapter_for_another_base_is_one_line(tmp_path, tiny_model_dir, family_dirs, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = get_peft_model(AutoModelForCausalLM.from_pretrained(family_dirs("qwen2")),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    other.save_pretrained(tmp_path / "adapter")
    text = tmp_path / "t.txt"
    text.write_text("Il gatto dorme.\n", encoding="utf-8")
    assert cli(["eval", "bpb", str(text), "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "this adapter does not fit the model" in last and "size mismatch" in last


def _old_fingerprint(kind: str, settings: dict, missing: str) -> str:
    """The fingerprint a version of llamantino without the setting `missing` wrote for a run
    whose manifest records `settings`."""
    import dataclasses
    import hashlib

    from llamantino.core.recipes import stage_module

    fields = dataclasses.fields(stage_module(kind).Config)
    data = {f.name: settings[f.name] for f in fields if f.metadata.get("fingerprint", True) and f.name != missing}
    blob = json.dumps({"stage": kind, "settings": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_a_run_made_before_a_setting_was_added_is_still_the_same_run(tmp_path, shards, capsys):
    """An upgrade that adds a setting (at a default that keeps the old behaviour) leaves finished
    runs finished: a chain does not stop on 'settings differ' for every stage made before it.
    A run whose new setting is not at its default is a different run."""
    out = tmp_path / "out"
    assert clean(capsys, shards, "--output", out)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"] == _old_fingerprint("clean", manifest["settings"], "")  # the rule as written
    manifest["fingerprint"] = _old_fingerprint("clean", manifest["settings"], "max_chars")
    del manifest["settings"]["max_chars"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(out)
    code, err = clean(capsys, shards, "--output", out)
    assert code == 0, err
    assert snapshot(out) == before
    code, err = clean(capsys, shards, "--output", out, "--max-chars", 40000)
    assert code == 2 and "settings differ: max_chars)" in err, err
