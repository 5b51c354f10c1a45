"""Recipes and the command line: validation, overrides, references, the paper's settings."""

import argparse
import json
import subprocess
import sys

import pytest

from llamantino.cli import main
from llamantino.core.errors import LlamantinoError
from llamantino.core.recipes import list_recipes, load_recipe, read_release

PAPER_MODELS = [
    "LLaMAntino-2-7b-hf-ITA", "LLaMAntino-2-13b-hf-ITA", "LLaMAntino-2-chat-7b-hf-ITA",
    "LLaMAntino-2-chat-13b-hf-ITA", "LLaMAntino-2-chat-7b-hf-UltraChat-ITA",
    "LLaMAntino-2-chat-13b-hf-UltraChat-ITA", "LLaMAntino-2-7b-hf-dolly-ITA", "LLaMAntino-2-13b-hf-dolly-ITA",
    "LLaMAntino-2-7b-hf-evalita-ITA", "LLaMAntino-2-13b-hf-evalita-ITA",
]


def test_every_bundled_recipe_loads():
    assert set(PAPER_MODELS + ["demo"]) <= set(list_recipes())
    for name in list_recipes():
        recipe = load_recipe(name)
        assert recipe.stages and recipe.name == name


def show(name, capsys):
    assert main(["config", "show", name, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name,base", [
    ("LLaMAntino-2-7b-hf-ITA", "meta-llama/Llama-2-7b-hf"), ("LLaMAntino-2-13b-hf-ITA", "meta-llama/Llama-2-13b-hf"),
    ("LLaMAntino-2-chat-7b-hf-ITA", "meta-llama/Llama-2-7b-chat-hf"),
    ("LLaMAntino-2-chat-13b-hf-ITA", "meta-llama/Llama-2-13b-chat-hf")])
def test_config_show_gives_the_papers_adaptation_settings(name, base, capsys):
    adapt = show(name, capsys)["stages"]["adapt"]
    assert adapt["model"] == base
    assert adapt["data"] == ["hub:gsarti/clean_mc4_it?config=medium&split=train"]
    expected = {"max_length": 1024, "batch_size": 8, "gradient_accumulation": 1, "optimizer": "paged_adamw_32bit",
                "learning_rate": 2e-4, "max_grad_norm": 0.3, "weight_decay": 0.001, "warmup_ratio": 0.03,
                "max_steps": 25000, "lora_r": 64, "lora_alpha": 16, "lora_dropout": 0.1, "load_in_4bit": True,
                "double_quant": True, "compute_dtype": "float16"}
    assert {k: adapt[k] for k in expected} == expected


@pytest.mark.parametrize("name,lr,epochs", [("LLaMAntino-2-7b-hf-dolly-ITA", 2e-5, 3),
                                            ("LLaMAntino-2-13b-hf-dolly-ITA", 1e-5, 5),
                                            ("LLaMAntino-2-7b-hf-evalita-ITA", 2e-5, 3),
                                            ("LLaMAntino-2-13b-hf-evalita-ITA", 1e-5, 5)])
def test_config_show_gives_table_2(name, lr, epochs, capsys):
    stages = show(name, capsys)["stages"]
    instruct = stages["instruct"]
    assert (instruct["batch_size"], instruct["effective_batch_size"], instruct["max_length"],
            instruct["weight_decay"], instruct["learning_rate"], instruct["epochs"]) == (16, 128, 1024, 0.0, lr, epochs)
    assert instruct["model"] == stages["base"]["output"]
    assert stages["base"]["kind"] == "build" and stages["base"]["name"].endswith("-hf-ITA")


def test_chat_recipes_use_the_language_adapter_and_the_chat_settings(capsys):
    stages = show("LLaMAntino-2-chat-7b-hf-UltraChat-ITA", capsys)["stages"]
    sft = stages["sft"]
    assert sft["model"] == "meta-llama/Llama-2-7b-chat-hf" and sft["adapter"].endswith("LLaMAntino-2-chat-7b-hf-ITA/adapt")
    assert (sft["max_length"], sft["max_steps"], sft["learning_rate"], sft["lora_r"]) == (2048, 15000, 2e-4, 64)
    assert sft["data"] == [stages["translate"]["output"] + "/translated.jsonl"]


def test_release_sections_describe_the_ten_chains():
    for name in PAPER_MODELS:
        release = read_release(name)
        assert release.hub_repo == f"swap-uniba/{name}"
    assert read_release("LLaMAntino-2-7b-hf-dolly-ITA").released_as == "weight-diff"
    assert read_release("LLaMAntino-2-chat-7b-hf-UltraChat-ITA").parent == "LLaMAntino-2-chat-7b-hf-ITA"


def write_recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_and_mistyped_keys_are_named_with_a_suggestion(tmp_path):
    bad_top = write_recipe(tmp_path, "name: x\nstagse: {}\n")
    with pytest.raises(LlamantinoError, match=r"unknown key 'stagse' \(did you mean 'stages'\?\)"):
        load_recipe(str(bad_top))
    bad_setting = write_recipe(tmp_path, "name: x\nstages:\n  adapt:\n    model: m\n    data: [d]\n"
                                         "    learnign_rate: 1.0e-4\n")
    with pytest.raises(LlamantinoError, match=r"stage 'adapt': unknown setting 'learnign_rate' \(did you mean "
                                              r"'learning_rate'\?\)"):
        load_recipe(str(bad_setting))
    bad_type = write_recipe(tmp_path, "name: x\nstages:\n  adapt:\n    model: m\n    data: [d]\n    max_steps: many\n")
    with pytest.raises(LlamantinoError, match="setting 'max_steps': 'many' is not valid"):
        load_recipe(str(bad_type))
    bad_choice = write_recipe(tmp_path, "name: x\nstages:\n  adapt:\n    model: m\n    data: [d]\n    optimizer: sgd\n")
    with pytest.raises(LlamantinoError, match="setting 'optimizer' is 'sgd'; valid: paged_adamw_32bit"):
        load_recipe(str(bad_choice))
    bad_kind = write_recipe(tmp_path, "name: x\nstages:\n  a:\n    kind: adpat\n")
    with pytest.raises(LlamantinoError, match=r"unknown stage kind 'adpat' \(did you mean 'adapt'\?\)"):
        load_recipe(str(bad_kind))


def test_overrides_and_references(tmp_path):
    path = write_recipe(tmp_path, "name: x\nrun_dir: ${name}-runs\nstages:\n"
                                  "  adapt:\n    model: base\n    data: [a.jsonl]\n"
                                  "  bpb_after:\n    kind: bpb\n    model: base\n    adapter: ${adapt.output}\n"
                                  "    data: ['${assets_dir}/demo/it_heldout.txt']\n")
    recipe = load_recipe(str(path), {"adapt": {"max_steps": "10", "lora_targets": "q_proj,v_proj"}})
    adapt, bpb = recipe.stage("adapt").config, recipe.stage("bpb_after").config
    assert adapt.max_steps == 10 and adapt.lora_targets == ["q_proj", "v_proj"]
    assert adapt.output == "x-runs/adapt" and bpb.adapter == "x-runs/adapt"
    assert bpb.data[0].endswith("assets/demo/it_heldout.txt")
    with pytest.raises(LlamantinoError, match="override for unknown stage 'adpt'"):
        load_recipe(str(path), {"adpt": {"max_steps": "1"}})
    broken = write_recipe(tmp_path, "name: x\nstages:\n  bpb:\n    model: ${adapt.output}\n    data: [d]\n")
    with pytest.raises(LlamantinoError, match="refers to no earlier stage named 'adapt'"):
        load_recipe(str(broken))


def test_stage_commands_take_recipe_then_set_then_options():
    from llamantino.core.runner import add_stage_arguments, stage_config
    from llamantino.train import adapt

    parser = argparse.ArgumentParser()
    add_stage_arguments(parser, "adapt", resume=True)
    args = parser.parse_args(["--recipe", "LLaMAntino-2-7b-hf-ITA", "--set", "max_steps=7", "--set",
                              "learning_rate=1e-4", "--learning-rate", "3e-4", "--output", "o"])
    cfg = stage_config("adapt", args)
    assert isinstance(cfg, adapt.Config)
    assert (cfg.max_steps, cfg.learning_rate, cfg.output, cfg.lora_r) == (7, 3e-4, "o", 64)


def test_cli_help_and_errors(capsys):
    assert main(["--help"]) == 0
    assert "adapt" in capsys.readouterr().out
    assert main(["adpat"]) == 2
    assert "did you mean 'adapt'" in capsys.readouterr().err
    assert main(["config"]) == 2
    assert "needs a sub-command: show, list" in capsys.readouterr().err
    assert main(["config", "show", "LLaMAntino-2-7b-hf-IT"]) == 2
    assert "did you mean 'LLaMAntino-2-7b-hf-ITA'" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "llamantino", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "llamantino" in proc.stdout


def test_run_skips_finished_stages_and_refuses_a_different_run(tmp_path, capsys):
    path = write_recipe(tmp_path, f"name: x\nrun_dir: {tmp_path}/runs\nstages:\n"
                                  "  prep:\n    kind: evalita_prepare\n    samples: train\n    tasks: [acti-a]\n")
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prep" in out and "done" in out and "records=" in out
    assert main(["run", str(path)]) == 0
    assert "skipped (done)" in capsys.readouterr().out
    assert main(["run", str(path), "--set", "prep.tasks=acti-b"]) == 2
    assert "holds a different 'evalita_prepare' run (settings differ: tasks)" in capsys.readouterr().err
    assert main(["run", str(path), "--set", "prep.tasks=acti-b", "--overwrite"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["evalita", "prepare", "--samples", "train", "--tasks", "acti-a", "--output",
                 str(tmp_path / "other")]) == 2
    assert "holds no llamantino run" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_an_optional_stage_runs_only_when_named(tmp_path, capsys):
    path = write_recipe(tmp_path, f"name: x\nrun_dir: {tmp_path}/runs\nstages:\n"
                                  "  prep:\n    kind: evalita_prepare\n    samples: train\n    tasks: [acti-a]\n"
                                  "  extra:\n    kind: evalita_prepare\n    optional: true\n    samples: train\n"
                                  "    tasks: [acti-b]\n")
    assert load_recipe(str(path)).stage("extra").optional and not load_recipe(str(path)).stage("prep").optional
    assert main(["run", str(path)]) == 0
    assert "stage 'extra' is optional: run it with --only extra" in capsys.readouterr().out
    assert (tmp_path / "runs" / "prep").is_dir() and not (tmp_path / "runs" / "extra").exists()
    assert main(["run", str(path), "--only", "extra"]) == 0
    assert (tmp_path / "runs" / "extra" / "manifest.json").is_file()
    assert "optional: true" in subprocess.run([sys.executable, "-m", "llamantino", "config", "show", str(path)],
                                              capture_output=True, text=True).stdout
    assert load_recipe("Qwen2.5-7B-Instruct-UltraChat-ITA").stage("prefer").optional
    bad = write_recipe(tmp_path, "name: y\nstages:\n  prep:\n    kind: evalita_prepare\n    optional: maybe\n")
    with pytest.raises(LlamantinoError, match="optional 'maybe': give true or false"):
        load_recipe(str(bad))


# ---------------------------------------------------------------------------------------
# Recipes from strangers: small files cannot take the memory, the stack or the screen


def alias_bomb(levels: int) -> str:
    """A few hundred bytes that YAML expands to 10**levels strings."""
    lines = ["name: bomb", "stages:", "  bpb:", "    model: m", "    data:", "      - &x0 aaaaaaaaaa"]
    lines += [f"      - &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_yaml_aliases_are_refused_in_one_line(tmp_path):
    import time

    path = write_recipe(tmp_path, alias_bomb(9))
    assert path.stat().st_size < 800
    t0 = time.time()
    with pytest.raises(LlamantinoError) as caught:
        load_recipe(str(path))
    assert time.time() - t0 < 2
    message = str(caught.value)
    assert message.startswith(f"{path}:6: YAML anchor or alias (&x0): recipes reuse values with ${{stage.setting}}")
    assert "\n" not in message
    with pytest.raises(LlamantinoError, match="anchor or alias"):
        read_release(str(path))  # `build` reads recipes too


def test_deep_nesting_and_repeated_keys_are_one_line(tmp_path):
    deep = write_recipe(tmp_path, "name: x\nstages:\n  bpb:\n    model: m\n    data: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(LlamantinoError, match=r"r.yaml:5: nested more than 32 levels deep"):
        load_recipe(str(deep))
    deep_map = write_recipe(tmp_path, "name: x\nstages: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    with pytest.raises(LlamantinoError, match="nested more than 32 levels deep"):
        load_recipe(str(deep_map))
    twice = write_recipe(tmp_path, "name: x\nstages:\n  adapt:\n    model: m\n    data: [d]\n    max_steps: 10\n"
                                   "    max_steps: 20\n")
    with pytest.raises(LlamantinoError, match=r"r.yaml:7: key 'max_steps' given twice in one mapping"):
        load_recipe(str(twice))
    from llamantino.core.config import coerce

    with pytest.raises(LlamantinoError, match=r"'\[\[\[\[.*\(100002 characters\) is not valid \(nested too deeply\)"):
        coerce("[" * 100000, dict, "--set x.y")
    from llamantino.core.config import parse_set_options

    with pytest.raises(LlamantinoError, match=r"a key has at most 3 parts"):
        parse_set_options(["a" + ".a" * 5000 + "=1"])  # _merge would recurse once per part


def test_error_lines_show_values_cut_short(tmp_path):
    huge = "x" * 900_000
    path = write_recipe(tmp_path, f"name: x\nstages:\n  adapt:\n    model: m\n    data: [d]\n    max_steps: {huge}\n")
    with pytest.raises(LlamantinoError) as caught:
        load_recipe(str(path))
    message = str(caught.value)
    assert len(message) < len(str(path)) + 500 and "(900002 characters)" in message and "\n" not in message
    big = write_recipe(tmp_path, "name: x\n" + "a" * (2 << 20) + ": 1\n")
    with pytest.raises(LlamantinoError, match=r"bytes; a recipe is at most 1048576 bytes"):
        load_recipe(str(big))


def test_references_cannot_double_a_value_without_end(tmp_path):
    """Each stage may repeat an earlier stage's setting twice: 60 KB doubled 5 times is 2 MB."""
    lines = ["name: x", "stages:", "  s0:", "    kind: bpb", f"    model: {'m' * 60_000}", "    data: [d]"]
    for i in range(1, 7):
        lines += [f"  s{i}:", "    kind: bpb", f"    model: ${{s{i - 1}.model}}${{s{i - 1}.model}}", "    data: [d]"]
    path = write_recipe(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(LlamantinoError) as caught:
        load_recipe(str(path))
    message = str(caught.value)
    assert "stage 's5'" in message and "expands to 1920000 characters" in message and len(message) < 400
