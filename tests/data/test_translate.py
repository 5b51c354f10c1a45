"""`llamantino translate`: structure, protected spans, both backends, devices and batching, resuming,
bad input, failing disks and unsafe packages.

The stand-in translator (tiny MarianMT + SentencePiece + MiniSBD splitter, built once per
session) translates into nonsense, which is enough: the tests check everything around
the model, and that the two engines agree.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from llamantino.core.errors import LlamantinoError
from llamantino.core.runner import config_for
from llamantino.data import translate

from helpers.translate import FORMAT_RECORDS, SENTENCES, crafted_argosmodel, stand_in, write_jsonl

RICH = (
    "## How to greet {name}\n"
    "Say hello to {name}, then write to help.desk@example.org today.\n\n"
    "- Install it with `pip install llamantino` first.\n"
    "- Read https://example.org/docs/index.html. It explains %(count)s options.\n"
    "  1. Nested step with a [useful link](https://example.org/a_(b)) inside.\n"
    "> Quoted line with **bold words** and {{ jinja }} and ${HOME}.\n"
    "```python\n"
    "print('Do not translate me.')  # a comment\n"
    "```\n"
    "| Name | Value |\n"
    "|---|---|\n"
    "Done <br> now.\r\n"
    "Trailing spaces stay.   "
)
PROTECTED = ["{name}", "help.desk@example.org", "`pip install llamantino`", "https://example.org/docs/index.html",
             "%(count)s", "](https://example.org/a_(b))", "**", "{{ jinja }}", "${HOME}",
             "```python\nprint('Do not translate me.')  # a comment\n```\n", "<br>", "|---|---|\n"]


@pytest.fixture(scope="module")
def argos_dir(tmp_path_factory):
    """argostranslate creates its folders at import: keep them (and its packages) in a temporary place.
    The environment (which the translate stage also sets for argostranslate) is restored afterwards."""
    saved = dict(os.environ)
    base = tmp_path_factory.mktemp("argos")
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        os.environ[name] = str(base / name.lower())
    yield base / "packages"
    os.environ.clear()
    os.environ.update(saved)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def translate_records(tmp_path, records, model, name="out", **settings):
    source = write_jsonl(tmp_path / f"{name}.jsonl", records)
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / name), model=str(model), **settings)
    summary = translate.run(cfg)
    return read_jsonl(tmp_path / name / "translated.jsonl"), summary


class RecordingEngine:
    """An identity "model" that brackets what it was given, so the output shows what reached it."""

    def __init__(self):
        self.seen = []

    def translate(self, texts):
        self.seen += texts
        return [f"⟦{t}⟧" for t in texts]


# ---------------------------------------------------------------------------------------
# Protection


def test_protected_spans_never_reach_the_model_and_come_back_byte_for_byte():
    engine = RecordingEngine()
    (out,) = translate.translate_texts([RICH], engine)
    assert out.replace("⟦", "").replace("⟧", "") == RICH
    for span in PROTECTED:
        assert span in out
        assert not any(span in seen for seen in engine.seen), span
    for seen in engine.seen:
        assert "\n" not in seen and seen == seen.strip()
        assert not re.match(r"(#+|-|>|\d+\.|\|)\s", seen)  # no markdown marker
    assert out.split("\n")[0] == "## ⟦How to greet⟧ {name}"
    assert "\n- ⟦Install it with⟧ `pip install llamantino` ⟦first.⟧\n" in out
    assert "\n  1. ⟦Nested step with a⟧ [⟦useful link⟧](https://example.org/a_(b)) ⟦inside.⟧\n" in out
    assert "\n> ⟦Quoted line with⟧ **⟦bold words⟧** ⟦and⟧ {{ jinja }} ⟦and⟧ ${HOME}.\n" in out
    assert "\n| ⟦Name⟧ | ⟦Value⟧ |\n" in out
    assert out.endswith("⟦Done⟧ <br> ⟦now.⟧\r\n⟦Trailing spaces stay.⟧   ")


def test_segments_always_rebuild_the_text():
    texts = [RICH, "", "\n\n", "```\nunclosed fence\nstill code", "3.14 + 2 = 5.14", "a", "`a` `b`",
             "Mail x@y.io, or see www.example.com/page).", "  - [ ] a task\n  - [x] done"]
    for text in texts:
        assert "".join(piece for _, piece in translate.segment_text(text)) == text
    assert [p for t, p in translate.segment_text("```\nunclosed fence\nstill code") if t] == []
    assert [p for t, p in translate.segment_text("Mail x@y.io, or see www.example.com/page).") if t] == \
        ["Mail", "or see"]


def test_stand_in_keeps_spans_markers_and_line_breaks(tmp_path, stand_in):
    (record,), _ = translate_records(tmp_path, [{"id": "r", "data": [RICH, "Fine, thanks."]}], stand_in["ct2"])
    out = record["data"][0]
    for span in PROTECTED:
        assert span in out
    assert out.count("\n") == RICH.count("\n")
    for before, after in zip(RICH.split("\n"), out.split("\n")):
        marker = re.match(r"[ \t]*(?:#{1,6}|>|[-*+]|\d+[.)]|\|)?[ \t]*", before).group(0)
        assert after.startswith(marker)
    assert out.endswith("   ")
    assert record["original"] == {"data": [RICH, "Fine, thanks."]}


# ---------------------------------------------------------------------------------------
# Structure of each format


@pytest.mark.parametrize("fmt", list(FORMAT_RECORDS))
def test_each_format_keeps_its_structure(tmp_path, stand_in, fmt):
    records = FORMAT_RECORDS[fmt]
    out, summary = translate_records(tmp_path, records, stand_in["ct2"])
    assert summary["headline"]["translated"] == len(records) and summary["headline"]["skipped"] == 0
    assert len(out) == len(records)
    for source, result in zip(records, out):
        fields = translate.TEXT_FIELDS[fmt]
        assert list(result) == list(source) + ["original"]  # same keys, same order
        assert result["original"] == {k: source[k] for k in fields if k in source}
        for key in source:
            if key not in fields:
                assert result[key] == source[key]  # ids, categories untouched
        if fmt == "ultrachat":
            assert len(result["data"]) == len(source["data"])
            assert all(t and t != s for t, s in zip(result["data"], source["data"]))
        elif fmt == "ultrachat_200k":
            assert [m["role"] for m in result["messages"]] == [m["role"] for m in source["messages"]]
            assert all(m["content"] and m["content"] != s["content"]
                       for m, s in zip(result["messages"], source["messages"]))
            assert result["prompt"] == result["messages"][1]["content"]  # the same text, translated once
        else:
            optional = "context" if fmt == "dolly" else "input"
            assert (result[optional] == "") == (source[optional] == "")
            assert all(result[k] != source[k] for k in fields if source[k])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stand_in"] is True and manifest["model"]["kind"] == "ctranslate2"
    assert manifest["metrics"]["sentences"] > 0 and manifest["metrics"]["sentences_per_s"] > 0


def test_format_can_be_given(tmp_path, stand_in):
    records = [{"instruction": SENTENCES[0], "input": "", "output": SENTENCES[1], "task": "x"}]
    with pytest.raises(LlamantinoError, match="records of format evalita are not translated"):
        translate_records(tmp_path, records, stand_in["ct2"], name="detected")
    assert not (tmp_path / "detected").exists()
    out, _ = translate_records(tmp_path, records, stand_in["ct2"], name="given", format="alpaca")
    assert out[0]["task"] == "x" and out[0]["original"]["output"] == SENTENCES[1]


# ---------------------------------------------------------------------------------------
# Backends


def test_backends_agree(tmp_path, stand_in, argos_dir, monkeypatch):
    def no_network(*args):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    records = [{"id": str(i), "data": [a, b]} for i, (a, b) in enumerate(zip(SENTENCES[::2], SENTENCES[1::2]))]
    folder, _ = translate_records(tmp_path, records, stand_in["ct2"], name="ct2")
    package, _ = translate_records(tmp_path, records, stand_in["argosmodel"], name="package")
    argos, summary = translate_records(tmp_path, records, stand_in["argosmodel"], name="argos", engine="argos",
                                       argos_packages_dir=str(argos_dir))
    # One sentence per turn: the same model decoding the same way gives the same words.
    assert folder == package == argos
    assert summary["metrics"]["engine"] == "argos" and summary["headline"]["translated"] == len(records)
    assert (argos_dir / "translate-en_it-stand_in" / "minisbd" / "en.onnx").is_file()  # installed offline
    import argostranslate.translate

    assert argostranslate.translate.translate(SENTENCES[0], "en", "it") == folder[0]["data"][0]


def test_rules_splitter_for_a_folder_without_minisbd(tmp_path, stand_in):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(stand_in["ct2"], bare, ignore=shutil.ignore_patterns("minisbd"))
    with pytest.raises(LlamantinoError, match="no sentence splitter"):
        translate_records(tmp_path, FORMAT_RECORDS["ultrachat"], bare, name="refused")
    assert not (tmp_path / "refused").exists()
    out, summary = translate_records(tmp_path, FORMAT_RECORDS["ultrachat"], bare, name="rules", splitter="rules")
    model, _ = translate_records(tmp_path, FORMAT_RECORDS["ultrachat"], stand_in["ct2"], name="model")
    assert out == model  # the stand-in's MiniSBD model applies the same rule
    assert summary["metrics"]["splitter"] == "rules"


def test_stand_in_splitter_is_a_valid_minisbd_model(stand_in):
    from minisbd import SBDetect

    detector = SBDetect(str(stand_in["ct2"] / "minisbd" / "en.onnx"), use_gpu=False)
    assert detector.sentences("Pi is 3.14 here. Really? Yes!  Fine… ok") == \
        ["Pi is 3.14 here.", "Really?", "Yes!", "Fine…", "ok"]


# ---------------------------------------------------------------------------------------
# Bad input


BAD = [
    {"id": "ok1", "data": SENTENCES[:2]},
    {"id": "odd", "data": SENTENCES[:3]},
    {"id": "empty", "data": [SENTENCES[0], "   "]},
    "{not json",
    {"id": "notext", "data": [SENTENCES[0], 42]},
    {"id": "ok2", "data": SENTENCES[2:4]},
]


def test_bad_records_are_skipped_and_counted(tmp_path, stand_in):
    out, summary = translate_records(tmp_path, BAD, stand_in["ct2"])
    assert [r["id"] for r in out] == ["ok1", "ok2"]
    metrics = summary["metrics"]
    assert metrics["records_read"] == 6 and metrics["records_skipped"] == 4
    assert metrics["skipped_by_reason"] == {"odd_turns": 1, "empty_turn": 1, "malformed_json": 1, "not_text": 1}
    assert any(":3: field 'data[1]' is empty" in e for e in metrics["skipped_examples"])


def test_a_skipped_line_is_described_as_the_other_readers_describe_it(tmp_path, stand_in):
    # Read with fileio.iter_jsonl: the words of clean's and the other readers' errors.
    records = [{"id": "ok1", "data": SENTENCES[:2]}, '{"id": "cut', "[1, 2]"]
    _, summary = translate_records(tmp_path, records, stand_in["ct2"])
    source = tmp_path / "out.jsonl"
    assert summary["metrics"]["skipped_examples"] == [
        f"{source}:2: malformed JSON (Invalid control character at column 12)",  # the line end, in the string
        f"{source}:3: expected a JSON object, got list"]
    assert summary["metrics"]["skipped_by_reason"] == {"malformed_json": 2}


def test_roles_out_of_order_are_skipped(tmp_path, stand_in):
    records = [{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]},
               {"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Hello."}]},
               {"messages": [{"role": "user", "content": "Hi."}]}]
    out, summary = translate_records(tmp_path, records, stand_in["ct2"])
    assert len(out) == 1 and summary["metrics"]["skipped_by_reason"] == {"roles_out_of_order": 2}


def test_strict_stops_with_file_line_and_field(tmp_path, stand_in):
    with pytest.raises(LlamantinoError) as info:
        translate_records(tmp_path, BAD, stand_in["ct2"], strict=True)
    message = str(info.value)
    assert re.search(r"out\.jsonl:2: field 'data' has 3 turns", message) and "\n" not in message
    assert not (tmp_path / "out" / "translated.jsonl").exists()


def test_wrong_language_pair_and_missing_model_write_nothing(tmp_path, stand_in):
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    cases = [({"model": str(stand_in["argosmodel"]), "tgt": "de"}, "translates en -> it, not en -> de"),
             ({"model": str(stand_in["ct2"]), "src": "fr"}, "translates en -> it, not fr -> it"),
             ({"model": str(tmp_path / "no-such-model")}, "no such model folder")]
    for settings, message in cases:
        cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), **settings)
        with pytest.raises(LlamantinoError, match=message):
            translate.run(cfg)
        assert not (tmp_path / "out").exists()


def test_finished_run_is_skipped(tmp_path, stand_in):
    translate_records(tmp_path, FORMAT_RECORDS["alpaca"], stand_in["ct2"])
    _, summary = translate_records(tmp_path, FORMAT_RECORDS["alpaca"], stand_in["ct2"])
    assert summary["status"] == "skipped (done)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "run.json", "translated.jsonl"]


# ---------------------------------------------------------------------------------------
# Resuming after SIGKILL


def test_resume_after_kill_translates_every_record_once_in_order(tmp_path, stand_in):
    words = " ".join(SENTENCES).split()
    records = [{"id": f"r{i}", "data": [f"Question {i}: {' '.join(words[i % 30:i % 30 + 8])}?",
                                        f"Answer {i}. {' '.join(words[i % 25:i % 25 + 12])}."]}
               for i in range(1500)]
    records.insert(700, {"id": "odd", "data": ["no answer"]})
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "llamantino", "translate", str(source), "--output", str(out),
               "--model", str(stand_in["ct2"]), "--chunk-records", "10"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLAMANTINO_LOG": "WARNING"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    progress = out / "progress.json"
    while time.time() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["parts"] >= 5:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists() and progress.is_file()
    done = json.loads(progress.read_text())["translated"]
    assert 0 < done < 1500

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    translated = read_jsonl(out / "translated.jsonl")
    assert [r["id"] for r in translated] == [r["id"] for r in records if r["id"] != "odd"]
    assert all(r["original"]["data"] == records[i + (i >= 700)]["data"] for i, r in enumerate(translated))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["records_translated"] == 1500
    assert manifest["metrics"]["skipped_by_reason"] == {"odd_turns": 1}
    assert not (out / ".parts").exists() and not progress.exists()


# ---------------------------------------------------------------------------------------
# Devices, batching, settings


def test_batching_by_tokens_or_sentences_gives_the_same_translations(tmp_path, stand_in):
    records = [{"id": str(i), "data": [f"{a} {b}", b]} for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:]))]
    default, summary = translate_records(tmp_path, records, stand_in["ct2"], name="default")
    assert summary["metrics"]["batch_type"] == "tokens"
    assert summary["metrics"]["max_batch_size"] == translate.AUTO_BATCH_TOKENS["cpu"]
    small, _ = translate_records(tmp_path, records, stand_in["ct2"], name="small", max_batch_size=12)
    examples, _ = translate_records(tmp_path, records, stand_in["ct2"], name="examples", batch_type="examples",
                                    max_batch_size=3, threads=2, workers=1)
    assert default == small == examples


def test_cpu_threads_default_to_one_worker_per_core():
    cores = len(os.sched_getaffinity(0))
    cfg = config_for("translate", inputs=["x"], output="out")
    assert (cfg.threads, cfg.workers) == (1, cores)
    assert config_for("translate", inputs=["x"], output="out", threads=2).workers == max(1, cores // 2)


def test_every_numeric_setting_has_a_range():
    import dataclasses

    from llamantino.demo import tiny_translator

    numeric = {}
    for cls in (translate.Config, tiny_translator.Config):
        for field in dataclasses.fields(cls):
            if field.type in ("int", "float", "list[int]"):
                numeric[field.name] = (field.metadata["minimum"], field.metadata["maximum"])
    assert {"beam_size", "device_index", "threads", "workers", "max_batch_size", "chunk_records", "d_model",
            "learning_rate", "train_layers", "model_vocab"} <= set(numeric)
    assert [name for name, bounds in numeric.items() if None in bounds] == []
    for bad, message in [({"beam_size": 0}, "'beam_size' is 0; it must be between 1 and 64"),
                         ({"chunk_records": 0}, "'chunk_records' is 0"),
                         ({"device_index": [-1]}, "'device_index' is -1"),
                         ({"device_index": [1]}, "'device_index' chooses GPUs; it needs --device cuda"),
                         ({"device": "cuda", "device_index": [0, 0]}, "distinct GPU numbers"),
                         ({"compute_type": "int4"}, "valid: auto, default")]:
        with pytest.raises(LlamantinoError, match=re.escape(message)):
            config_for("translate", inputs=["x"], output="out", **bad)
    with pytest.raises(LlamantinoError, match="'d_model' \\(100\\) must be a multiple of 'heads'"):
        config_for("tiny_translator", output="x", d_model=100, heads=8)


@pytest.mark.skipif(__import__("ctranslate2").get_cuda_device_count() > 0, reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_one_line_and_writes_nothing(tmp_path, stand_in):
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    command = [sys.executable, "-m", "llamantino", "translate", str(source), "--output", str(tmp_path / "out"),
               "--model", str(stand_in["ct2"]), "--device", "cuda", "--device-index", "0", "1"]
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={**env, "LLAMANTINO_LOG": "WARNING"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --device cuda --device-index 0 1: CTranslate2 finds no CUDA device on this machine; "
        "available: cpu (--device cpu)"]
    assert not (tmp_path / "out").exists()


def test_missing_gpu_and_unsupported_compute_type_are_named(tmp_path, stand_in, monkeypatch):
    import ctranslate2

    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 2)
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(stand_in["ct2"]),
                     device="cuda", device_index=[0, 3])
    with pytest.raises(LlamantinoError, match=r"^--device-index 0 3: no GPU 3; CTranslate2 finds 2 CUDA "
                                              r"device\(s\): 0 1$"):
        translate.run(cfg)
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(stand_in["ct2"]),
                     compute_type="float16")
    with pytest.raises(LlamantinoError, match=r"^--compute-type float16: not supported on this CPU; "
                                              r"supported: .*float32"):
        translate.run(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(__import__("ctranslate2").get_cuda_device_count() == 0, reason="needs a CUDA device")
def test_cuda_translates_like_the_cpu(tmp_path, stand_in):
    import ctranslate2

    gpus = list(range(ctranslate2.get_cuda_device_count()))
    records = FORMAT_RECORDS["ultrachat"] * 20
    cpu, _ = translate_records(tmp_path, records, stand_in["ct2"], name="cpu", compute_type="float32")
    cuda, summary = translate_records(tmp_path, records, stand_in["ct2"], name="cuda", compute_type="float32",
                                      device="cuda", device_index=gpus, max_batch_size=64)
    assert summary["metrics"]["device"] == "cuda" and summary["metrics"]["device_index"] == gpus
    assert cuda == cpu
    # Negative controls: the outputs are translations (not the inputs passed through), and the
    # comparison tells apart a run that decodes otherwise (int8 weights on the CPU).
    assert all(t != r for t, r in zip(cuda, records))
    int8, _ = translate_records(tmp_path, records, stand_in["ct2"], name="int8", compute_type="int8")
    assert int8 != cpu


# ---------------------------------------------------------------------------------------
# Inputs and disks that fail


def test_truncated_gzip_is_one_line_writes_nothing_and_the_fixed_file_runs(tmp_path, stand_in):
    import gzip

    records = [{"id": str(i), "data": [SENTENCES[i % 8], SENTENCES[(i + 1) % 8]]} for i in range(400)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())
    source = tmp_path / "in.jsonl.gz"
    source.write_bytes(whole[: len(whole) * 2 // 3])
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(stand_in["ct2"]),
                     chunk_records=50)
    with pytest.raises(LlamantinoError) as info:
        translate.run(cfg)
    assert str(info.value).startswith(f"{source}: unreadable gzip file (Compressed file ended") and \
        "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    source.write_bytes(whole)  # the user fixes the file
    assert translate.run(cfg)["headline"]["translated"] == 400


def test_empty_input_is_refused(tmp_path, stand_in):
    for name, text in (("empty.jsonl", ""), ("blank.jsonl", "\n  \n")):
        source = tmp_path / name
        source.write_text(text)
        cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(stand_in["ct2"]))
        with pytest.raises(LlamantinoError, match=f"^{re.escape(str(source))}: empty input \\(no records\\)$"):
            translate.run(cfg)
        assert not (tmp_path / "out").exists()


def test_full_disk_keeps_finished_chunks_and_resumes(tmp_path, stand_in, monkeypatch):
    import errno

    from llamantino.core import fileio

    records = [{"id": str(i), "data": [SENTENCES[i % 8], SENTENCES[(i + 3) % 8]]} for i in range(60)]
    reference, _ = translate_records(tmp_path, records, stand_in["ct2"], name="reference", chunk_records=10)
    real_write, parts = fileio.atomic_write_text, []

    def disk_fills_at_the_third_part(path, text):
        if path.name.startswith("part-"):
            parts.append(path.name)
            if len(parts) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, text)

    monkeypatch.setattr(fileio, "atomic_write_text", disk_fills_at_the_third_part)
    out = tmp_path / "out"
    cfg = config_for("translate", inputs=[str(tmp_path / "reference.jsonl")], output=str(out),
                     model=str(stand_in["ct2"]), chunk_records=10)
    with pytest.raises(LlamantinoError) as info:
        translate.run(cfg)
    assert str(info.value) == (f"{out}: cannot write (No space left on device); 2 finished chunk(s) (20 records) "
                               f"kept in {out}: free space or fix the permissions, then run the same command again "
                               "to resume")
    assert sorted(p.name for p in (out / ".parts").iterdir()) == ["part-000000.jsonl", "part-000001.jsonl"]
    monkeypatch.setattr(fileio, "atomic_write_text", real_write)  # space freed
    summary = translate.run(cfg)
    assert read_jsonl(out / "translated.jsonl") == reference and summary["metrics"]["records_read"] == 60
    assert not (out / ".parts").exists()


def test_file_size_limit_is_one_line_and_the_rerun_resumes(tmp_path, stand_in):
    """A real write error from the kernel (EFBIG under RLIMIT_FSIZE) while assembling the output."""
    import resource

    records = [{"id": str(i), "data": [SENTENCES[i % 8], SENTENCES[(i + 5) % 8]]} for i in range(80)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "llamantino", "translate", str(source), "--output", str(out),
               "--model", str(stand_in["ct2"]), "--chunk-records", "20"]
    env = {**os.environ, "LLAMANTINO_LOG": "WARNING", "PYTHONDONTWRITEBYTECODE": "1"}

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].endswith("cannot write (File too large); 4 finished chunk(s) (80 records) kept in "
                             f"{out}: free space or fix the permissions, then run the same command again to resume")
    assert len(list((out / ".parts").glob("part-*.jsonl"))) == 4 and not (out / "translated.jsonl").exists()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["id"] for r in read_jsonl(out / "translated.jsonl")] == [r["id"] for r in records]


# ---------------------------------------------------------------------------------------
# .argosmodel archives from strangers


def _symlink_member(zf):
    import stat
    import zipfile

    info = zipfile.ZipInfo("translate-en_it-stand_in/model/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, "../../../outside")


ARCHIVE_ATTACKS = {
    "dotdot": (lambda zf: zf.writestr("translate-en_it-stand_in/../../escaped.txt", "x"), "is not a plain relative"),
    "absolute": (lambda zf: zf.writestr("/tmp/escaped.txt", "x"), "is not a plain relative"),
    "symlink": (_symlink_member, "is a symbolic link"),
}


@pytest.mark.parametrize("attack", list(ARCHIVE_ATTACKS))
@pytest.mark.parametrize("engine", ["batched", "argos"])
def test_argosmodel_with_unsafe_members_is_refused_before_extraction(tmp_path, stand_in, argos_dir, attack, engine):
    add, message = ARCHIVE_ATTACKS[attack]
    package = crafted_argosmodel(tmp_path, stand_in["argosmodel"], attack, add)
    import zipfile

    with zipfile.ZipFile(package) as zf:
        assert len(zf.namelist()) == len(zipfile.ZipFile(stand_in["argosmodel"]).namelist()) + 1
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    packages = tmp_path / "packages"
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(package),
                     engine=engine, argos_packages_dir=str(packages))
    with pytest.raises(LlamantinoError, match=f"^{re.escape(str(package))}: member .*{message}"):
        translate.run(cfg)
    assert not (tmp_path / "out").exists() and not packages.exists()
    assert not list(tmp_path.rglob("escaped.txt")) and not (tmp_path / "outside").exists()


def test_argosmodel_is_extracted_member_by_member(tmp_path, stand_in):
    import zipfile

    root = translate.extract_argosmodel(stand_in["argosmodel"], tmp_path)
    with zipfile.ZipFile(stand_in["argosmodel"]) as zf:
        for name in zf.namelist():
            assert (tmp_path / name).read_bytes() == zf.read(name)
    assert root == tmp_path / "translate-en_it-stand_in"


def _zeros_member(zf):
    import zipfile

    zf.writestr("translate-en_it-stand_in/padding.bin", bytes(20 << 20), compress_type=zipfile.ZIP_DEFLATED)


def _damaged_copy(good, path, member: str):
    """The archive with one byte flipped in the middle of `member`'s packed data."""
    import shutil
    import struct
    import zipfile

    shutil.copyfile(good, path)
    info = zipfile.ZipFile(path).getinfo(member)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("engine", ["batched", "argos"])
def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, stand_in, argos_dir, engine, monkeypatch):
    bomb = crafted_argosmodel(tmp_path, stand_in["argosmodel"], "bomb", _zeros_member)
    assert bomb.stat().st_size < 1 << 20  # 20 MiB of zeros packed into a few KB
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    packages = tmp_path / "packages"
    settings = dict(inputs=[str(source)], output=str(tmp_path / "out"), engine=engine,
                    argos_packages_dir=str(packages))
    with pytest.raises(LlamantinoError, match=r"padding.bin' unpacks to 20971520 bytes from \d+, more than 100 times "
                                              r"its packed size: refused as a zip bomb"):
        translate.run(config_for("translate", model=str(bomb), **settings))
    monkeypatch.setattr(translate, "MAX_ARGOSMODEL_BYTES", 500_000)  # the stand-in unpacks to 757 KB
    with pytest.raises(LlamantinoError, match=r"unpacks to \d+ bytes; an .argosmodel may unpack to at most 500000"):
        translate.run(config_for("translate", model=str(stand_in["argosmodel"]), **settings))
    assert not (tmp_path / "out").exists() and not packages.exists()


def test_a_failed_install_installs_nothing_and_an_installed_package_is_never_written_over(tmp_path, stand_in,
                                                                                         argos_dir):
    good = stand_in["argosmodel"]
    damaged = _damaged_copy(good, tmp_path / "damaged.argosmodel", "translate-en_it-stand_in/minisbd/en.onnx")
    source = write_jsonl(tmp_path / "in.jsonl", FORMAT_RECORDS["ultrachat"])
    # argostranslate reads its packages folder once per process: the module's folder
    cfg = config_for("translate", inputs=[str(source)], output=str(tmp_path / "out"), model=str(damaged),
                     engine="argos", argos_packages_dir=str(argos_dir))
    before = sorted(argos_dir.rglob("*")) if argos_dir.exists() else []
    with pytest.raises(LlamantinoError, match=f"^{re.escape(str(damaged))}: damaged archive .*; nothing installed"):
        translate.run(cfg)
    assert sorted(argos_dir.rglob("*")) == before  # neither a half-installed package nor the temporary folder

    packages = tmp_path / "packages"
    installed = translate.install_argosmodel(good, packages)
    model_bin = installed / "model" / "model.bin"
    before = (model_bin.read_bytes(), model_bin.stat().st_ino)
    assert translate.install_argosmodel(good, packages) == installed  # the same package again: used as it is
    other = crafted_argosmodel(tmp_path, good, "other", lambda zf: None)
    import zipfile

    with zipfile.ZipFile(good) as source_zip, zipfile.ZipFile(other, "w") as zf:
        for info in source_zip.infolist():
            data = source_zip.read(info)
            zf.writestr(info, data[:-1] + bytes([data[-1] ^ 1]) if info.filename.endswith("model.bin") else data)
    with pytest.raises(LlamantinoError, match=f"{re.escape(str(installed))}: an installed package of that name "
                                              f"differs from {re.escape(str(other))}; it is left as it is"):
        translate.install_argosmodel(other, packages)
    assert (model_bin.read_bytes(), model_bin.stat().st_ino) == before
    assert sorted(p.name for p in packages.iterdir()) == [installed.name]
