"""Merge, release, build and verify on tiny models: merged logits equal unmerged ones, a
release folder holds what the paper published, and every chain rebuilds bit for bit."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from llamantino import cli
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import sha256_file
from llamantino.core.runner import config_for
from llamantino.models.merge import merge_adapter
from llamantino.release.build import build_chain, check_chain, list_text, parse_step, release_chain
from llamantino.release.verify import compare_models
from llamantino.release.weightdiff import apply_diff, read_diff_manifest, tensor_hashes

TEN = ["LLaMAntino-2-7b-hf-ITA", "LLaMAntino-2-13b-hf-ITA", "LLaMAntino-2-chat-7b-hf-ITA",
       "LLaMAntino-2-chat-13b-hf-ITA", "LLaMAntino-2-chat-7b-hf-UltraChat-ITA",
       "LLaMAntino-2-chat-13b-hf-UltraChat-ITA", "LLaMAntino-2-7b-hf-dolly-ITA", "LLaMAntino-2-13b-hf-dolly-ITA",
       "LLaMAntino-2-7b-hf-evalita-ITA", "LLaMAntino-2-13b-hf-evalita-ITA"]
IDS = torch.tensor([[1, 17, 42, 99, 256, 300, 7]])


def write_run_manifest(folder, stage, settings, metrics):
    (folder / "manifest.json").write_text(json.dumps(
        {"llamantino": "0.1.0", "stage": stage, "fingerprint": "0" * 16, "settings": settings,
         "metrics": metrics, "inputs": []}))


def load_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def adapter_run(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    """An `adapt` run folder: a LoRA adapter with random (non-zero) weights, tokenizer, manifest."""
    from peft import LoraConfig, get_peft_model

    run = tmp_path_factory.mktemp("adapt-run")
    torch.manual_seed(1)
    model = get_peft_model(load_model(tiny_model_dir), LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(run)
    tiny_tokenizer.save_pretrained(run)
    (run / "loss.png").write_bytes(b"not released")
    write_run_manifest(run, "adapt", {"model": str(tiny_model_dir), "data": ["/data/clean_mc4_it/shard-0.json.gz"],
                                      "lora_r": 4, "learning_rate": 2e-4, "max_steps": 100},
                       {"final_loss": 2.345678, "bpb": {"it": 1.25, "en": 1.5}})
    return run


@pytest.fixture(scope="session")
def merged_dir(tmp_path_factory, tiny_model_dir, adapter_run):
    out = tmp_path_factory.mktemp("merged") / "model"
    merge_adapter(tiny_model_dir, adapter_run, out, dtype="float32")
    return out


@pytest.fixture(scope="session")
def instruct_run(tmp_path_factory, merged_dir):
    """An `instruct` run: every weight of the merged model moved, and `<pad>` added (512 -> 513)."""
    from transformers import AutoTokenizer

    run = tmp_path_factory.mktemp("instruct-run")
    model = load_model(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(2)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(run, max_shard_size="300KB")
    tokenizer.save_pretrained(run)
    write_run_manifest(run, "instruct", {"model": str(merged_dir), "learning_rate": 2e-5, "epochs": 3},
                       {"final_loss": 1.1, "evalita": {"haspeede3": 0.71}})
    return run


@pytest.fixture(scope="session")
def releases(tmp_path_factory, adapter_run, instruct_run):
    from llamantino.release.release import run as release_run

    root = tmp_path_factory.mktemp("releases")
    release_run(config_for("release", run=str(adapter_run), output=str(root / "adapter"),
                           release_recipe="LLaMAntino-2-7b-hf-ITA"))
    release_run(config_for("release", run=str(instruct_run), output=str(root / "diff"),
                           release_recipe="LLaMAntino-2-7b-hf-dolly-ITA"))
    return root


# ---------------------------------------------------------------------------------------
# merge


def test_merged_logits_match_the_unmerged_model(tiny_model_dir, adapter_run, merged_dir):
    from peft import PeftModel

    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(load_model(tiny_model_dir), adapter_run).eval()(IDS).logits
        merged = load_model(merged_dir)(IDS).logits
        base = load_model(tiny_model_dir)(IDS).logits
    assert (merged - unmerged).abs().max().item() < 1e-5
    assert (merged - base).abs().max().item() > 1e-3  # the adapter does change the model
    assert (merged_dir / "generation_config.json").is_file() and (merged_dir / "tokenizer.json").is_file()


def test_merge_is_deterministic_and_sharded(tmp_path, tiny_model_dir, adapter_run):
    from llamantino.models.merge import run as merge_run

    cfg = config_for("merge", base=str(tiny_model_dir), adapter=str(adapter_run),
                     output=str(tmp_path / "a"), max_shard_size="200KB")
    assert merge_run(cfg)["status"] == "done"
    assert merge_run(cfg)["status"] == "skipped (done)"
    assert cli.main(["merge", "--base", str(tiny_model_dir), "--adapter", str(adapter_run),
                     "--output", str(tmp_path / "b"), "--max-shard-size", "200KB", "--dtype", "float32"]) == 0
    outputs = [tmp_path / "a", tmp_path / "b"]
    files = sorted(p.name for p in outputs[0].iterdir() if p.name != "manifest.json")
    assert "model.safetensors.index.json" in files and len([f for f in files if f.endswith(".safetensors")]) > 1
    for name in files:
        assert sha256_file(outputs[0] / name) == sha256_file(outputs[1] / name), name


def test_merge_refuses_a_quantized_base(tmp_path, tiny_model_dir, adapter_run):
    shutil.copytree(tiny_model_dir, tmp_path / "q")
    config = json.loads((tmp_path / "q/config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "q/config.json").write_text(json.dumps(config))
    with pytest.raises(LlamantinoError, match="bitsandbytes \\(quantized\\) model; merging into it is lossy"):
        merge_adapter(tmp_path / "q", adapter_run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# release


def read_card(folder):
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def check_sums(folder):
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ")[1]: line.split("  ")[0] for line in lines}
    on_disk = {p.name for p in folder.iterdir()} - {"SHA256SUMS", "manifest.json"}
    assert set(listed) == on_disk
    for name, digest in listed.items():
        assert sha256_file(folder / name) == digest, name
    return set(listed)


def test_adapter_release(releases, tiny_model_dir):
    folder = releases / "adapter"
    files = check_sums(folder)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= files
    assert "loss.png" not in files and not any(f.endswith(".json") and "manifest" in f for f in files)
    front, body = read_card(folder)
    assert front["base_model"] == "meta-llama/Llama-2-7b-hf" and front["license"] == "llama2"
    assert front["language"] == ["it"] and front["datasets"] == ["gsarti/clean_mc4_it"]
    assert "lora" in front["tags"] and front["library_name"] == "peft"
    assert "Llama 2 Community License" in body and "PeftModel.from_pretrained" in body
    assert "| final_loss | 2.346 |" in body and "| bpb.it | 1.25 |" in body
    assert "| lora_r | 4 |" in body and "shard-0.json.gz" in body
    assert str(tiny_model_dir) not in body and "/data/" not in body  # no local paths on a public card
    assert "None: a language model" in body
    assert "llamantino build LLaMAntino-2-7b-hf-ITA" in body
    assert json.loads((folder / "manifest.json").read_text())["stage"] == "release"


def test_a_release_publishes_names_not_local_paths(tmp_path, adapter_run, instruct_run, merged_dir):
    """Every file a release writes names the base by its hub id and files without their
    folders: no trace of where the runs, the data or the models lived."""
    from llamantino.release.release import run as release_run

    secret = tmp_path / "home" / "someone" / "secret_project"
    shutil.copytree(adapter_run, secret / "adapt")
    shutil.copytree(instruct_run, secret / "instruct")
    shutil.copytree(merged_dir, secret / "merged")
    config = json.loads((secret / "adapt/adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()  # as PEFT saved it: the local base folder
    write_run_manifest(secret / "adapt", "adapt",
                       {"model": str(secret / "merged"), "data": [str(secret / "corpus.jsonl")],
                        "eval_data": [f"it={secret / 'held-out/it.jsonl'}", "en=./data/en.jsonl"],
                        "output": str(secret / "adapt"), "lora_r": 4},
                       {"final_loss": 2.3, "adapter_trained_on": str(secret / "merged"),
                        "bpb": {"it": 1.2, "file": str(secret / "held-out/it.jsonl")}})
    manifest = json.loads((secret / "instruct/manifest.json").read_text())
    manifest["settings"]["model"] = str(secret / "merged")
    (secret / "instruct/manifest.json").write_text(json.dumps(manifest))
    release_run(config_for("release", run=str(secret / "adapt"), output=str(tmp_path / "rel-adapter"),
                           release_recipe="LLaMAntino-2-7b-hf-ITA"))
    release_run(config_for("release", run=str(secret / "instruct"), output=str(tmp_path / "rel-diff"),
                           release_recipe="LLaMAntino-2-7b-hf-dolly-ITA"))
    for folder in (tmp_path / "rel-adapter", tmp_path / "rel-diff"):
        for name in check_sums(folder):  # every published file
            text = (folder / name).read_bytes().decode("utf-8", errors="replace")
            for trace in ("secret_project", "someone", str(tmp_path), "./data"):
                assert trace not in text, (name, trace)
    config = json.loads((tmp_path / "rel-adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    body = read_card(tmp_path / "rel-adapter")[1]
    assert "| eval_data | it=it.jsonl, en=en.jsonl |" in body and "| data | corpus.jsonl |" in body
    assert "| adapter_trained_on | merged |" in body
    assert read_diff_manifest(tmp_path / "rel-diff")["base"]["name"] == "swap-uniba/LLaMAntino-2-7b-hf-ITA"
    from llamantino.release.release import hub_id

    assert hub_id("/home/u/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/0a1b2c") == \
        "meta-llama/Llama-2-7b-hf"  # a base loaded from the hub cache: named by its hub id


def test_release_command_line_gives_the_same_files(tmp_path, releases, instruct_run, merged_dir):
    assert cli.main(["release", str(instruct_run), "--output", str(tmp_path / "rel"), "--base", str(merged_dir),
                     "--release-recipe", "LLaMAntino-2-7b-hf-dolly-ITA"]) == 0
    assert (tmp_path / "rel/SHA256SUMS").read_text() == (releases / "diff/SHA256SUMS").read_text()


def test_weight_diff_release(releases, instruct_run, merged_dir):
    folder = releases / "diff"
    files = check_sums(folder)
    assert "weight_diff.json" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.startswith("model") for f in files)  # no weights are shipped
    front, body = read_card(folder)
    assert front["base_model"] == "swap-uniba/LLaMAntino-2-7b-hf-ITA" and "weight-diff" in front["tags"]
    assert "datasets" not in front  # "databricks/databricks-dolly-15k (Italian)" is no hub id: body only
    assert "databricks-dolly-15k (Italian)" in body
    assert "### Istruzione:\nRiassumi il testo in una frase.\n\n### Input:\n" in body
    assert "llamantino diff apply" in body and "| evalita.haspeede3 | 0.71 |" in body
    manifest = read_diff_manifest(folder)
    assert manifest["rows_added"] == {"model.embed_tokens.weight": 1, "lm_head.weight": 1}
    apply_diff(merged_dir, folder, folder.parent / "rebuilt-diff")
    assert compare_models(folder.parent / "rebuilt-diff", instruct_run)["identical"]


def test_chat_release_card_shows_the_italian_chat_prompt(tmp_path, adapter_run):
    from llamantino.data.prompts import ITALIAN_SYSTEM_PROMPT
    from llamantino.release.release import run as release_run

    shutil.copytree(adapter_run, tmp_path / "sft")
    manifest = json.loads((tmp_path / "sft/manifest.json").read_text())
    manifest["stage"], manifest["settings"]["adapter"] = "sft", "/runs/chat-7b-ITA/adapt"
    (tmp_path / "sft/manifest.json").write_text(json.dumps(manifest))
    release_run(config_for("release", run=str(tmp_path / "sft"), output=str(tmp_path / "rel"),
                           release_recipe="LLaMAntino-2-chat-7b-hf-UltraChat-ITA"))
    front, body = read_card(tmp_path / "rel")
    assert front["base_model"] == "swap-uniba/LLaMAntino-2-chat-7b-hf-ITA"
    assert f"<s>[INST] <<SYS>>\n{ITALIAN_SYSTEM_PROMPT}\n<</SYS>>\n\nQual è la capitale d'Italia? [/INST]" in body
    assert "with the adapter `adapt` merged into it" in body


def test_release_refuses_a_run_the_recipe_does_not_describe(tmp_path, adapter_run):
    from llamantino.release.release import run as release_run

    with pytest.raises(LlamantinoError, match="releases the model as weight-diff, but run .* holds an adapter"):
        release_run(config_for("release", run=str(adapter_run), output=str(tmp_path / "r"),
                               release_recipe="LLaMAntino-2-7b-hf-dolly-ITA"))
    assert not (tmp_path / "r").exists()
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(LlamantinoError, match="no manifest.json"):
        release_run(config_for("release", run=str(tmp_path / "not-a-run"), output=str(tmp_path / "r")))


class FakeHfApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()


def test_push_uploads_exactly_the_released_files(tmp_path, releases, adapter_run, monkeypatch):
    import llamantino.release.release as release

    api = FakeHfApi()
    monkeypatch.setattr(release, "_hub_api", lambda: api)
    # the same settings as the release made before: the stage is complete, only the push runs
    summary = release.run(config_for("release", run=str(adapter_run), output=str(releases / "adapter"),
                                     release_recipe="LLaMAntino-2-7b-hf-ITA", push="me/LLaMAntino-test", private=True))
    assert summary["status"] == "skipped (done)"
    assert summary["pushed"] == "https://huggingface.co/me/LLaMAntino-test/commit/abc"
    (name1, create), (name2, upload) = api.calls
    assert name1 == "create_repo" and create["repo_id"] == "me/LLaMAntino-test" and create["private"] is True
    shutil.copytree(releases / "adapter", tmp_path / "rel")
    released = {line.split("  ")[1] for line in (tmp_path / "rel/SHA256SUMS").read_text().splitlines()}
    assert name2 == "upload_folder" and set(upload["allow_patterns"]) == released | {"SHA256SUMS"}
    assert "manifest.json" not in upload["allow_patterns"]
    # a file changed after the release is caught before anything is uploaded
    (tmp_path / "rel/README.md").write_text("edited")
    with pytest.raises(LlamantinoError, match="README.md \\(sha256 differs\\)"):
        release.push_release(tmp_path / "rel", "me/x", api=FakeHfApi())


def test_push_without_a_token_says_so(monkeypatch, releases):
    import huggingface_hub

    from llamantino.release.release import push_release

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(LlamantinoError, match="needs a Hugging Face token"):
        push_release(releases / "adapter", "me/x")


# ---------------------------------------------------------------------------------------
# build and verify


def test_build_list_shows_the_ten_models_and_their_chains(capsys):
    assert cli.main(["build", "--list"]) == 0
    out = capsys.readouterr().out
    chains = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert set(TEN) <= set(chains) and not any("invalid" in c for c in chains.values())
    assert ("meta-llama/Llama-2-7b-hf -> +adapter swap-uniba/LLaMAntino-2-7b-hf-ITA -> merge -> "
            "+diff swap-uniba/LLaMAntino-2-7b-hf-dolly-ITA") in out
    assert ("meta-llama/Llama-2-13b-chat-hf -> +adapter swap-uniba/LLaMAntino-2-chat-13b-hf-ITA -> merge -> "
            "+adapter swap-uniba/LLaMAntino-2-chat-13b-hf-UltraChat-ITA -> merge") in out
    assert release_chain("LLaMAntino-2-chat-7b-hf-ITA")[0] == "meta-llama/Llama-2-7b-chat-hf"


def test_explicit_chain_rebuilds_bit_for_bit(tmp_path, tiny_model_dir, releases, merged_dir, instruct_run):
    report = build_chain(tiny_model_dir, [f"adapter:{releases / 'adapter'}", "merge"], tmp_path / "merged")
    assert compare_models(tmp_path / "merged", merged_dir)["identical"]
    assert report["dtype"] == "float32" and "files match SHA256SUMS" in report["checks"][0]
    report = build_chain(tiny_model_dir, [f"adapter:{releases / 'adapter'}", "merge", f"diff:{releases / 'diff'}"],
                         tmp_path / "dolly")
    assert compare_models(tmp_path / "dolly", instruct_run)["identical"]
    assert tensor_hashes(tmp_path / "dolly") == tensor_hashes(instruct_run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dolly", "merged"]  # no intermediate left


def test_build_a_released_model_from_base_dir(tmp_path, tiny_model_dir, releases, instruct_run, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "meta-llama/Llama-2-7b-hf")
    shutil.copytree(releases / "adapter", models / "swap-uniba/LLaMAntino-2-7b-hf-ITA")
    shutil.copytree(releases / "diff", models / "swap-uniba/LLaMAntino-2-7b-hf-dolly-ITA")
    out = tmp_path / "dolly"
    assert cli.main(["build", "LLaMAntino-2-7b-hf-dolly-ITA", "--base-dir", str(models),
                     "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["headline"] == {"steps": 2, "dtype": "float32"}
    assert json.loads((out / "manifest.json").read_text())["stage"] == "build"
    # the verify stage prints the check
    from llamantino.release.verify import run as verify_run

    summary = verify_run(config_for("verify", model=str(out), reference=str(instruct_run),
                                    output=str(tmp_path / "check")))
    assert summary["headline"] == {"tensors": len(tensor_hashes(instruct_run)), "bit_identical": True}
    assert "bit-identical" in summary["display"]
    # an input that is not there: named, with the way to get it
    assert cli.main(["build", "LLaMAntino-2-13b-hf-ITA", "--base-dir", str(models),
                     "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "models/meta-llama/Llama-2-13b-hf: missing" in err and "--download" in err
    assert not (tmp_path / "x").exists()


def test_build_downloads_missing_inputs_only_when_asked(tmp_path, tiny_model_dir, releases, merged_dir,
                                                       monkeypatch):
    import huggingface_hub

    from llamantino.release.build import run as build_run

    import llamantino.release.build as build

    calls = []

    def source(repo_id):
        return tiny_model_dir if repo_id.startswith("meta-llama/") else releases / "adapter"

    def fake_snapshot_download(repo_id, local_dir, allow_patterns, revision):
        calls.append((repo_id, allow_patterns))
        shutil.copytree(source(repo_id), local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    # the repository's file names are listed (and checked) before anything is fetched
    monkeypatch.setattr(build, "_repo_listing", lambda repo_id: (
        "0" * 40, [p.name for p in source(repo_id).iterdir()]))
    settings = {"name": "LLaMAntino-2-7b-hf-ITA", "base_dir": str(tmp_path / "models"), "output": str(tmp_path / "o")}
    with pytest.raises(LlamantinoError, match="pass --download"):
        build_run(config_for("build", **settings))
    assert calls == []
    build_run(config_for("build", **settings, download=True))
    assert [c[0] for c in calls] == ["meta-llama/Llama-2-7b-hf", "swap-uniba/LLaMAntino-2-7b-hf-ITA"]
    assert "*.safetensors" in calls[0][1] and "*.bin" not in calls[0][1]
    assert compare_models(tmp_path / "o", merged_dir)["identical"]


def test_build_refuses_a_tampered_release(tmp_path, tiny_model_dir, releases):
    shutil.copytree(releases / "adapter", tmp_path / "adapter")
    path = tmp_path / "adapter/adapter_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LlamantinoError, match="adapter_model.safetensors \\(sha256 differs\\)"):
        build_chain(tiny_model_dir, [f"adapter:{tmp_path / 'adapter'}", "merge"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def disk_dtypes(folder) -> set[str]:
    """The dtypes of the tensors a model folder stores, as safetensors names them."""
    from safetensors import safe_open

    found = set()
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            found |= {handle.get_slice(k).get_dtype() for k in handle.keys()}
    return found


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_16_bit_chain_rebuilds_bit_for_bit(tmp_path, tiny_model_dir, releases, dtype):
    """The chain of the paper's 16-bit releases end to end: `merge` the released adapter in 16
    bits, tune the merged model (every weight nudged in 16 bits, `<pad>` added), release it as a
    weight difference, then `build` it from the base and the two releases: the same bits as the
    tuned model, in that dtype; `diff apply` on the merged model too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamantino.release.release import run as release_run

    merged = tmp_path / "merged"
    assert cli.main(["merge", "--base", str(tiny_model_dir), "--adapter", str(releases / "adapter"),
                     "--output", str(merged), "--dtype", dtype]) == 0
    stored = {"float16": {"F16"}, "bfloat16": {"BF16"}}[dtype]
    assert disk_dtypes(merged) == stored
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=getattr(torch, dtype))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype)).state_dict()
    assert not torch.equal(model.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the adapter is in the merge
    tuned = tmp_path / "tuned"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    model.save_pretrained(tuned, max_shard_size="300KB")
    tokenizer.save_pretrained(tuned)
    write_run_manifest(tuned, "instruct", {"model": str(merged), "learning_rate": 2e-5, "epochs": 3},
                       {"final_loss": 1.1})
    release_run(config_for("release", run=str(tuned), output=str(tmp_path / "diff"),
                           release_recipe="LLaMAntino-2-7b-hf-dolly-ITA"))

    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / "meta-llama/Llama-2-7b-hf")
    shutil.copytree(releases / "adapter", models / "swap-uniba/LLaMAntino-2-7b-hf-ITA")
    shutil.copytree(tmp_path / "diff", models / "swap-uniba/LLaMAntino-2-7b-hf-dolly-ITA")
    built = tmp_path / "built"
    assert cli.main(["build", "LLaMAntino-2-7b-hf-dolly-ITA", "--base-dir", str(models),
                     "--output", str(built)]) == 0
    assert json.loads((built / "manifest.json").read_text())["metrics"]["dtype"] == dtype  # chosen by the diff
    expected = tensor_hashes(tuned)
    assert tensor_hashes(built) == expected and compare_models(built, tuned)["identical"]
    assert disk_dtypes(built) == stored
    assert cli.main(["diff", "apply", "--base", str(merged), "--diff", str(tmp_path / "diff"),
                     "--output", str(tmp_path / "applied")]) == 0
    assert tensor_hashes(tmp_path / "applied") == expected


def test_build_refuses_the_wrong_merge_dtype(tmp_path, tiny_model_dir, releases):
    with pytest.raises(LlamantinoError, match="dtype mismatch.*\\(BF16, expected F32\\)"):
        build_chain(tiny_model_dir, [f"adapter:{releases / 'adapter'}", "merge", f"diff:{releases / 'diff'}"],
                    tmp_path / "out", dtype="bfloat16")
    assert list(tmp_path.iterdir()) == []


def test_a_difference_made_against_another_merge_method_is_refused(tmp_path, tiny_model_dir, releases, merged_dir,
                                                                   capsys, monkeypatch):
    """The merge method is recorded with the merged model and with every difference made against
    it; `diff apply` and `build` refuse, in one line and before any work, a difference made
    against another method's merge, or one made before methods were recorded."""
    from llamantino.models import merge
    from llamantino.models.merge import MERGE_METHOD, merge_method_of

    assert merge_method_of(merged_dir) == MERGE_METHOD
    assert read_diff_manifest(releases / "diff")["base"]["merge_method"] == MERGE_METHOD
    monkeypatch.setattr(merge, "merge_into", lambda *a, **k: pytest.fail("merged before refusing"))
    for recorded, said in (("peft-merge_and_unload", "was made against a merge by method peft-merge_and_unload"),
                           (None, "records no merge method")):
        diff = tmp_path / f"diff-{recorded}"
        shutil.copytree(releases / "diff", diff)
        manifest = json.loads((diff / "weight_diff.json").read_text())
        if recorded is None:
            del manifest["base"]["merge_method"]  # as differences made before methods were recorded
        else:
            manifest["base"]["merge_method"] = recorded
        (diff / "weight_diff.json").write_text(json.dumps(manifest))
        (diff / "SHA256SUMS").unlink()  # no longer matches the edited manifest; built with verify=False
        assert cli.main(["diff", "apply", "--base", str(merged_dir), "--diff", str(diff),
                         "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert said in err and f"is a merge by method {MERGE_METHOD}" in err and err.count("\n") == 1
        with pytest.raises(LlamantinoError, match=said):
            build_chain(tiny_model_dir, [f"adapter:{releases / 'adapter'}", "merge", f"diff:{diff}"],
                        tmp_path / "built", verify=False)
        assert not (tmp_path / "out").exists() and not (tmp_path / "built").exists()


def test_chain_steps_are_checked():
    assert parse_step("adapter:a/b") .path == "a/b" and parse_step("merge").kind == "merge"
    for bad in ("merge:x", "diff", "lora:x"):
        with pytest.raises(LlamantinoError, match="expected 'adapter:PATH', 'merge' or 'diff:PATH'"):
            parse_step(bad)
    for steps, match in (([], "empty chain"), (["merge"], "must follow an 'adapter'"),
                         (["adapter:a", "diff:d"], "must be merged first"), (["adapter:a"], "ends with an adapter")):
        with pytest.raises(LlamantinoError, match=match):
            check_chain([parse_step(s) for s in steps])
    assert "LLaMAntino-2-7b-hf-ITA" in list_text()


def nudged_copy(model_dir, copy, amount: float):
    """A copy of a model folder whose model.norm.weight[0] is off by `amount`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, copy)
    for path in copy.glob("*.safetensors"):
        tensors = load_file(path)
        if "model.norm.weight" in tensors:
            tensors["model.norm.weight"][0] += amount
            save_file(tensors, path, metadata={"format": "pt"})


def test_verify_names_the_differing_tensor(tmp_path, merged_dir):
    from llamantino.release.verify import run as verify_run

    nudged_copy(merged_dir, tmp_path / "copy", 1e-6)
    with pytest.raises(LlamantinoError, match="not bit-identical.*tensors differing: model.norm.weight$"):
        verify_run(config_for("verify", model=str(tmp_path / "copy"), reference=str(merged_dir),
                              output=str(tmp_path / "check")))
    assert not (tmp_path / "check").exists()


def test_build_with_a_wrong_base_names_the_users_base(tmp_path, tiny_model_dir, releases):
    nudged_copy(tiny_model_dir, tmp_path / "other", 1e-3)
    with pytest.raises(LlamantinoError) as info:
        build_chain(tmp_path / "other", [f"adapter:{releases / 'adapter'}", "merge", f"diff:{releases / 'diff'}"],
                    tmp_path / "out")
    message = str(info.value)
    # not the temporary folder the merge went to (deleted by then), but the user's base and the chain so far
    assert message.startswith(f"{tmp_path / 'other'} -> +adapter {releases / 'adapter'} -> merge (float32): "
                              "1 of "), message
    assert "base tensor(s) differ" in message and message.endswith(": model.norm.weight")
    assert ".chain-" not in message and sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_card_of_a_run_beyond_llama2_takes_licence_language_and_format_from_the_run(tmp_path, family_dirs):
    """A Qwen chat run released without a recipe: the licence is the base model's (its card),
    the language that of the training data, the prompt the saved chat template's."""
    import yaml

    from llamantino.release.release import run as release_run
    from helpers.family_runs import BRIEF, DIALOGUES, SMALL, write_jsonl

    base = tmp_path / "qwen"
    shutil.copytree(family_dirs("qwen2"), base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a tiny Qwen\n", encoding="utf-8")
    dialogues = write_jsonl(tmp_path / "chat.jsonl", DIALOGUES)
    sft = tmp_path / "sft"
    assert cli.main(["sft", "--model", str(base), "--data", str(dialogues), "--output", str(sft), "--max-steps", "1",
                     "--system-prompt", BRIEF, *SMALL, "--max-length", "200"]) == 0
    release_run(config_for("release", run=str(sft), output=str(tmp_path / "release")))
    card = (tmp_path / "release" / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "apache-2.0" and front["language"] == ["it"]
    assert "llama-2" not in front["tags"] and "Llama 2" not in card
    assert "<|im_start|>user\nQual è la capitale d'Italia?<|im_end|>" in card
    assert "released under the Apache License 2.0" in card


def test_a_moe_chain_rebuilds_bit_for_bit(tmp_path, tiny_moe_family):
    """A mixture of experts through the paper's chain: an adapter with LoRA on every expert (PEFT
    target_parameters) and the router trained whole, released; the merged model tuned in full
    (every weight nudged) and released as a weight difference; `build` from the base and the two
    releases gives the merged model and the tuned one bit for bit."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from llamantino.release.release import run as release_run
    from helpers.moe_families import EXPERTS, ROUTER

    family, base = tiny_moe_family
    run = tmp_path / "adapt"
    torch.manual_seed(4)
    experts = [f"{EXPERTS[family.name]}.gate_up_proj", f"{EXPERTS[family.name]}.down_proj"]
    model = get_peft_model(load_model(base), LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], target_parameters=experts,
        modules_to_save=[ROUTER[family.name]], init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(run)
    write_run_manifest(run, "adapt", {"model": str(base), "lora_r": 2}, {"final_loss": 2.0})
    merged = tmp_path / "merged"
    merge_adapter(base, run, merged)
    before, after = tensor_hashes(base), tensor_hashes(merged)
    changed = {name for name in before if before[name] != after[name]}
    assert any(".experts." in name for name in changed) and any(".gate." in name or ".router." in name
                                                                  for name in changed)

    tuned = tmp_path / "tuned"
    model = load_model(merged)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1e-3 * torch.randn_like(param))
    model.save_pretrained(tuned)
    shutil.copy(base / "tokenizer.json", tuned / "tokenizer.json")
    shutil.copy(base / "tokenizer_config.json", tuned / "tokenizer_config.json")
    write_run_manifest(tuned, "instruct", {"model": str(merged)}, {"final_loss": 1.0})
    release_run(config_for("release", run=str(run), output=str(tmp_path / "release-adapter")))
    release_run(config_for("release", run=str(tuned), output=str(tmp_path / "release-diff")))

    adapter = f"adapter:{tmp_path / 'release-adapter'}"
    build_chain(base, [adapter, "merge"], tmp_path / "built-merged")
    assert tensor_hashes(tmp_path / "built-merged") == after
    with torch.no_grad():  # and the rebuilt merge computes what the base with the adapter computes
        unmerged = PeftModel.from_pretrained(load_model(base), tmp_path / "release-adapter").eval()(IDS).logits
        rebuilt = load_model(tmp_path / "built-merged")(IDS).logits
    assert torch.allclose(rebuilt, unmerged, rtol=1e-5, atol=1e-5)
    report = build_chain(base, [adapter, "merge", f"diff:{tmp_path / 'release-diff'}"], tmp_path / "built")
    assert tensor_hashes(tmp_path / "built") == tensor_hashes(tuned)
    assert compare_models(tmp_path / "built", tuned)["identical"] and report["dtype"] == "float32"
