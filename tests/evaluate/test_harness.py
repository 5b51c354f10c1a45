"""`llamantino eval lm-eval`: the same figures as lm-eval's own command line, bits per byte
equal to `eval bpb`, the Open Ita LLM Leaderboard suite offline on the bundled sample, and
one-line errors that leave nothing behind."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

from llamantino.cli import main  # noqa: E402
from llamantino.core.runner import config_for  # noqa: E402
from llamantino.evaluate import harness  # noqa: E402

# A tiny Italian multiple-choice task: answers at every position, choices of unequal length
# (so acc and acc_norm can differ).
MC_ITEMS = [
    ("Qual è la capitale d'Italia?", ["Roma", "Milano", "Napoli", "Torino"], 0),
    ("Il gatto dorme sul", ["mare", "divano", "cielo", "treno"], 1),
    ("Domani andremo al", ["gatto", "numero", "mare", "divano"], 2),
    ("La pioggia cade sulla", ["pasta", "luna", "sedia", "città"], 3),
    ("I modelli linguistici predicono la parola", ["successiva", "rossa", "lenta", "antica"], 0),
    ("Roma, Milano, Napoli e Torino sono città", ["inglesi", "italiane", "piccolissime", "di mare"], 1),
    ("Sei un assistente disponibile, rispettoso e", ["verde", "lento", "onesto", "pesante"], 2),
    ("Rispondi sempre nel modo più", ["rosso", "caldo", "alto", "utile"], 3),
    ("London and Paris are European", ["capitals", "rivers", "numbers", "cats"], 0),
    ("The quick brown fox jumps over the lazy", ["river", "dog", "number", "sky"], 1),
]

MC_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Domanda: {{{{question}}}}\\nRisposta:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

BPB_YAML = """task: tiny_bpb
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    data = write_jsonl(folder / "mc.jsonl", [{"question": q, "choices": c, "answer": a} for q, c, a in MC_ITEMS])
    (folder / "tiny_mc.yaml").write_text(MC_YAML.format(data=data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, make_random_adapter):
    """A LoRA adapter with random (non-zero) weights: the adapted model differs from the base."""
    return make_random_adapter(tmp_path_factory.mktemp("adapter"), seed=1)


@pytest.fixture(scope="module", autouse=True)
def lm_eval_cli(tmp_path_factory, tiny_model_dir, adapter_dir, tasks_dir):
    """lm-eval's own command line on the tiny task, started in the background when this file's
    tests start (it parses all of lm-eval's ~14k task files first) and read by the last test:
    the base with the adapter, float32, on CPU."""
    out = tmp_path_factory.mktemp("lm-eval-cli")
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={tiny_model_dir},peft={adapter_dir},dtype=float32",
               "--device", "cpu", "--tasks", "tiny_mc", "--include_path", str(tasks_dir), "--batch_size", "4",
               "--log_samples", "--output_path", str(out / "results.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(out / "log.txt", "w") as log:  # a file, not a pipe nobody reads until the end
        process = subprocess.Popen(command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
    yield process, out
    if process.poll() is None:
        process.kill()
        process.wait()


def read_lm_eval_output(folder, task):
    (results,) = folder.glob("results_*.json")
    (samples,) = folder.glob(f"samples_{task}_*.jsonl")
    lines = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    return json.loads(results.read_text(encoding="utf-8")), {s["doc_id"]: s["resps"] for s in lines}


def test_bits_per_byte_through_lm_eval_equals_eval_bpb(tmp_path, tiny_model_dir):
    docs = ["Il gatto dorme sul divano mentre la pioggia cade sulla città.",
            "Language models predict the next token; città, perché, così.",
            "Roma, Milano, Napoli e Torino sono città italiane. Domani andremo al mare."]
    data = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_bpb.yaml").write_text(BPB_YAML.format(data=data), encoding="utf-8")
    assert main(["eval", "bpb", "--model", str(tiny_model_dir), str(data), "--output", str(tmp_path / "bpb.json")]) == 0
    exact = json.loads((tmp_path / "bpb.json").read_text())["bits_per_byte"]
    args = ["eval", "lm-eval", "--model", str(tiny_model_dir), "--tasks", "tiny_bpb", "--include-path", str(tasks)]
    assert main([*args, "--output", str(tmp_path / "once")]) == 0
    assert main([*args, "--no-single-bos", "--output", str(tmp_path / "twice")]) == 0
    once, twice = (json.loads((tmp_path / f / "manifest.json").read_text())["metrics"] for f in ("once", "twice"))
    assert once["results"]["tiny_bpb"]["metrics"]["bits_per_byte"] == pytest.approx(exact, abs=1e-6)
    assert once["passes"][0]["add_bos_token"] is False and twice["passes"][0]["add_bos_token"] is None
    # lm-eval's default puts <s> in twice with this LLaMA-style tokenizer: a different, higher figure.
    assert twice["results"]["tiny_bpb"]["metrics"]["bits_per_byte"] > exact + 1e-3
    (rolling_file,) = (tmp_path / "once").glob("results_rolling_*.json")
    assert json.loads(rolling_file.read_text())["results"]["tiny_bpb"]["bits_per_byte,none"] == pytest.approx(exact,
                                                                                                             abs=1e-6)
    # A 4-bit NF4 base, as QLoRA trains it: close to float32, not equal, and recorded as such.
    assert main([*args, "--load-in-4bit", "--output", str(tmp_path / "nf4")]) == 0
    nf4 = json.loads((tmp_path / "nf4" / "manifest.json").read_text())["metrics"]
    assert 1e-6 < abs(nf4["results"]["tiny_bpb"]["metrics"]["bits_per_byte"] - exact) < 0.01 * exact
    (nf4_file,) = (tmp_path / "nf4").glob("results_rolling_*.json")
    assert json.loads(nf4_file.read_text())["config"]["model_args"]["load_in_4bit"] is True


def test_leaderboard_it_runs_offline_on_the_bundled_sample(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "leaderboard"
    assert main(["eval", "lm-eval", "--model", str(tiny_model_dir), "--tasks", "leaderboard-it", "--samples",
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "|arc_it" in printed and "|m_mmlu_it" in printed and "leaderboard-it average" in printed
    (results_file,) = out.glob("results_*.json")
    results = json.loads(results_file.read_text())  # lm-eval's own file
    assert results["n-shot"] == {"arc_it": 0, "hellaswag_it": 0, "m_mmlu_it": 5}
    assert {t: results["n-samples"][t]["effective"] for t in results["n-shot"]} == {
        "arc_it": 20, "hellaswag_it": 20, "m_mmlu_it": 20}
    for task in ("arc_it", "hellaswag_it", "m_mmlu_it"):
        assert results["configs"][task]["dataset_path"] == "json"  # pointed at the sample, not the hub
    # The originals' prompts are kept (the overrides only `include:` them).
    assert results["configs"]["arc_it"]["doc_to_text"] == "query"
    assert results["configs"]["m_mmlu_it"]["doc_to_text"].startswith("{{instruction.strip()}}\nA. ")
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    primary = [metrics["results"]["arc_it"]["metrics"]["acc_norm"],
               metrics["results"]["hellaswag_it"]["metrics"]["acc_norm"],
               metrics["results"]["m_mmlu_it"]["metrics"]["acc"]]
    assert metrics["suites"]["leaderboard-it"]["average"] == pytest.approx(sum(primary) / 3)
    assert sorted(p.name for p in (out / "task_overrides").iterdir()) == ["arc_it.yaml", "hellaswag_it.yaml",
                                                                         "m_mmlu_it.yaml"]
    again = harness.run(config_for("lm_eval", model=str(tiny_model_dir), tasks=["leaderboard-it"], samples=True,
                                   output=str(out)))
    assert again["status"] == "skipped (done)" and again["metrics"] == metrics
    # Settings the user gives win over the suite's shots; --limit keeps the first documents.
    short = harness.run(config_for("lm_eval", model=str(tiny_model_dir), tasks=["leaderboard-it"], samples=True,
                                   num_fewshot=1, limit=3))
    assert {t: (r["n_shot"], r["samples"]) for t, r in short["metrics"]["results"].items()} == {
        "arc_it": (1, 3), "hellaswag_it": (1, 3), "m_mmlu_it": (1, 3)}


def test_data_from_a_hub_layout_folder_and_from_the_hub_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A copy whose README declares its files (as on the hub), and a dataset in the hub cache."""
    import huggingface_hub.constants

    sample = harness.SAMPLE_DIR / "alexandrainst"
    copy = tmp_path / "copies" / "alexandrainst" / "m_arc"
    (copy / "files").mkdir(parents=True)
    (copy / "files" / "arc-it-dev.jsonl").write_text((sample / "m_arc/data/it/train.jsonl").read_text())
    (copy / "files" / "arc-it-eval.jsonl").write_text((sample / "m_arc/data/it/test.jsonl").read_text())
    (copy / "README.md").write_text("---\nconfigs:\n- config_name: en\n  data_files: nothing/*.jsonl\n"
                                    "- config_name: it\n  data_files:\n  - split: train\n    path: files/*-dev.jsonl\n"
                                    "  - split: test\n    path: files/*-eval.jsonl\n---\n# m_arc (a copy)\n")
    cache = tmp_path / "hub-cache"
    snapshot = cache / "datasets--alexandrainst--m_hellaswag" / "snapshots" / "0123abcd"
    (snapshot / "data" / "it").mkdir(parents=True)
    (snapshot / "data" / "it" / "val.jsonl").write_text((sample / "m_hellaswag/data/it/val.jsonl").read_text())
    (cache / "datasets--alexandrainst--m_hellaswag" / "refs").mkdir()
    (cache / "datasets--alexandrainst--m_hellaswag" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    result = harness.run(config_for("lm_eval", model=str(tiny_model_dir), tasks=["arc_it", "hellaswag_it"],
                                    data_dir=str(tmp_path / "copies"), limit=4, output=str(tmp_path / "out")))
    assert {t: r["samples"] for t, r in result["metrics"]["results"].items()} == {"arc_it": 4, "hellaswag_it": 4}
    inputs = [i["path"] for i in json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]]
    assert inputs == [str(copy / "files" / "arc-it-eval.jsonl"), str(copy / "files" / "arc-it-dev.jsonl"),
                      str(snapshot / "data" / "it" / "val.jsonl")]


def test_a_group_member_whose_code_needs_the_network_is_skipped(tmp_path, tiny_model_dir, tasks_dir, capsys):
    """As the EVALITA-LLM summarisation tasks (`evaluate.load("rouge")` at import): reported, not crashed on.
    The member sits in a tag inside a group inside a group, as in lm-eval's evalita-mp."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "net_utils.py").write_text("raise ConnectionError('Couldn\\'t reach the Hugging Face Hub')\n"
                                         "def process_docs(dataset):\n    return dataset\n")
    mc = (tasks_dir / "tiny_mc.yaml").read_text()
    (folder / "net_task.yaml").write_text(mc.replace("task: tiny_mc", "task: tiny_net\ntag: tiny_tag")
                                          + "process_docs: !function net_utils.process_docs\n")
    (folder / "tagged_task.yaml").write_text(mc.replace("task: tiny_mc", "task: tiny_tagged\ntag: tiny_tag"))
    (folder / "inner.yaml").write_text("group: tiny_inner\ntask:\n  - tiny_tag\n")
    (folder / "suite.yaml").write_text("group: tiny_suite\ntask:\n  - tiny_inner\n  - tiny_mc\n"
                                       "aggregate_metric_list:\n  - metric: acc\n")
    (folder / "net_only.yaml").write_text("group: tiny_net_only\ntask:\n  - tiny_net\n")
    args = ["eval", "lm-eval", "--model", str(tiny_model_dir), "--include-path", str(tasks_dir), str(folder),
            "--limit", "3"]
    out = tmp_path / "out"
    assert main([*args, "--tasks", "tiny_suite", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped tiny_net: its code failed to import (ConnectionError: Couldn't reach the Hugging Face Hub)" \
        in printed
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert set(metrics["results"]) == {"tiny_suite", "tiny_inner", "tiny_tagged", "tiny_mc"}
    assert metrics["results"]["tiny_suite"]["group"] and list(metrics["skipped"]) == ["tiny_net"]
    # Only the group that lost a member is overridden: its tag became the names left.
    assert [p.name for p in (out / "task_overrides").iterdir()] == ["tiny_inner.yaml"]
    assert "- tiny_tagged\n" in (out / "task_overrides" / "tiny_inner.yaml").read_text()
    # A tag asked for directly runs as the tasks left in it.
    tag = harness.run(config_for("lm_eval", model=str(tiny_model_dir), tasks=["tiny_tag"], limit=3,
                                 include_path=[str(folder)]))
    assert list(tag["metrics"]["results"]) == ["tiny_tagged"] and list(tag["metrics"]["skipped"]) == ["tiny_net"]
    assert main([*args, "--tasks", "tiny_net_only", "--output", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: tiny_net_only: nothing left to run (1 task(s) skipped; tiny_net: its code failed")
    assert "pass --allow-download" in err and not (tmp_path / "none").exists()


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_model_dir, tasks_dir, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    out = tmp_path / "out"
    base = ["eval", "lm-eval", "--model", str(tiny_model_dir), "--output", str(out)]

    def error(*args):
        assert main([*base, *args]) == 2
        text = capsys.readouterr().err.strip().splitlines()[-1]  # after the libraries' progress bars
        assert text.startswith("error: ") and not out.exists(), text
        return text

    empty = tmp_path / "copies"
    empty.mkdir()
    text = error("--tasks", "leaderboard-it", "--data-dir", str(empty))
    assert "task arc_it: dataset alexandrainst/m_arc (config it) is not available offline" in text
    assert "data/it/test.jsonl" in text and "data/it/train.jsonl" in text and f"{empty}/alexandrainst/m_arc/" in text
    assert text.endswith("; also missing: alexandrainst/m_hellaswag, alexandrainst/m_mmlu")
    assert "include path is not a folder" in error("--tasks", "tiny_mc", "--include-path", str(tmp_path / "nope"))
    hostile = tmp_path / "hostile" / "alexandrainst" / "m_arc"
    hostile.mkdir(parents=True)
    (hostile / "README.md").write_text("---\nconfigs:\n- config_name: it\n  data_files:\n"
                                       "  - split: test\n    path: ../../../secrets/*.jsonl\n---\n")
    text = error("--tasks", "arc_it", "--data-dir", str(tmp_path / "hostile"))
    assert "README.md: configs data_files: '../../../secrets/*.jsonl' is not a plain relative file name" in text
    assert "exceeds the model's context of 512" in error("--tasks", "tiny_mc", "--include-path", str(tasks_dir),
                                                         "--max-length", "1024")
    other = tmp_path / "other-base"
    _adapter_for_another_base(other)
    text = error("--tasks", "tiny_mc", "--include-path", str(tasks_dir), "--adapter", str(other / "adapter"))
    assert f"{other / 'adapter'}: this adapter does not fit the model {tiny_model_dir}" in text
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert "pip install 'llamantino[eval]'" in error("--tasks", "tiny_mc")


def test_unknown_task_names_close_matches(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "lm-eval", "--model", str(tiny_model_dir), "--tasks", "arc_itt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: unknown lm-eval task 'arc_itt'; close matches: ") and "arc_it" in err


def test_figures_equal_lm_evals_own_command_line(tmp_path, lm_eval_cli, tiny_model_dir, adapter_dir, tasks_dir,
                                                 capsys):
    process, cli_out = lm_eval_cli
    ours = tmp_path / "ours"
    assert main(["eval", "lm-eval", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir),
                 "--tasks", "tiny_mc", "--include-path", str(tasks_dir), "--batch-size", "4", "--log-samples",
                 "--output", str(ours)]) == 0
    printed = capsys.readouterr().out
    assert "|tiny_mc|" in printed and "acc_norm" in printed  # lm-eval's own table
    assert process.wait(timeout=300) == 0, (cli_out / "log.txt").read_text()[-3000:]
    theirs, their_samples = read_lm_eval_output(cli_out, "tiny_mc")
    mine, my_samples = read_lm_eval_output(ours, "tiny_mc")
    assert mine["results"]["tiny_mc"] == theirs["results"]["tiny_mc"]
    assert {"acc,none", "acc_norm,none"} <= set(mine["results"]["tiny_mc"])
    assert my_samples == their_samples and len(my_samples) == len(MC_ITEMS)  # every log-likelihood, bit for bit
    manifest = json.loads((ours / "manifest.json").read_text())
    figures = manifest["metrics"]["results"]["tiny_mc"]["metrics"]
    assert figures["acc"] == theirs["results"]["tiny_mc"]["acc,none"]
    assert figures["acc_norm"] == theirs["results"]["tiny_mc"]["acc_norm,none"]
    assert mine["config"]["model_args"] == theirs["config"]["model_args"]
    # Negative control: without the adapter, the log-likelihoods are not lm-eval's.
    base = tmp_path / "base"
    assert main(["eval", "lm-eval", "--model", str(tiny_model_dir), "--tasks", "tiny_mc", "--include-path",
                 str(tasks_dir), "--batch-size", "4", "--log-samples", "--output", str(base)]) == 0
    _, base_samples = read_lm_eval_output(base, "tiny_mc")
    assert all(base_samples[i] != their_samples[i] for i in their_samples)


def _adapter_for_another_base(folder):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder / "adapter")


def test_an_included_task_folder_with_python_is_announced_before_it_runs(tmp_path, tiny_model_dir, tasks_dir,
                                                                         capsys):
    """A task YAML with `!function utils.pick` makes lm-eval import utils.py (its design): one
    line says so, naming the file, before the import happens; a folder without one prints none."""
    folder = tmp_path / "code-tasks"
    folder.mkdir()
    (folder / "tiny_fn.yaml").write_text((tasks_dir / "tiny_mc.yaml").read_text().replace("tiny_mc", "tiny_fn")
                                         + "process_docs: !function utils.pick\n", encoding="utf-8")
    (folder / "utils.py").write_text("import sys\nprint('IMPORTED utils.py', file=sys.stderr)\n"
                                     "def pick(dataset):\n    return dataset\n", encoding="utf-8")
    base = ["eval", "lm-eval", "--model", str(tiny_model_dir), "--max-length", "1024"]  # stops after planning
    assert main([*base, "--tasks", "tiny_fn", "--include-path", str(folder)]) == 2
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "`!function utils.pick`" in notes[0] and str(folder / "utils.py") in notes[0]
    assert err.index("note: ") < err.index("IMPORTED utils.py")  # said before lm-eval imports it
    assert main([*base, "--tasks", "tiny_mc", "--include-path", str(tasks_dir)]) == 2
    assert "note: " not in capsys.readouterr().err
