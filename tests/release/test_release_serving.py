"""What a release says about serving it: vLLM's LoRA line (or why not, and the merged model
instead), and with --gguf the GGUF file and Modelfile, inside SHA256SUMS."""

import json

import pytest
import torch

from llamantino.core.errors import LlamantinoError
from llamantino.release.build import verify_checksums
from llamantino.release.release import Config, release_into, run, vllm_lora


def _adapter_run(folder, base, *, r=4, modules_to_save=None, stage="sft", settings=None, tokenizer=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                             modules_to_save=modules_to_save, init_lora_weights=False))
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    (folder / "manifest.json").write_text(json.dumps(
        {"llamantino": "0.1.0", "stage": stage, "fingerprint": "0" * 16, "inputs": [], "metrics": {},
         "settings": {"model": str(base), "max_length": 128, **(settings or {})}}))
    return folder


def _card(folder) -> str:
    return (folder / "README.md").read_text(encoding="utf-8")


def _config(folder, **values) -> dict:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))
    return config


def test_a_lora_adapter_gets_the_exact_vllm_line(tmp_path, tiny_model_dir, tiny_tokenizer):
    adapter = _adapter_run(tmp_path / "sft", tiny_model_dir, r=12, tokenizer=tiny_tokenizer)
    out = tmp_path / "release"
    summary = run(Config(run=str(adapter), output=str(out), name="Demo-chat", base_model="org/base"))
    metrics = summary["metrics"]
    assert metrics["vllm_lora"] is True and metrics["max_lora_rank"] == 16  # 12 -> the next value vLLM takes
    assert ("vllm serve org/base --enable-lora --lora-modules Demo-chat=./release --max-lora-rank 16"
            in _card(out))
    assert "vLLM cannot serve" not in _card(out) and ".gguf" not in _card(out)


def test_an_adapter_with_trained_embeddings_is_offered_merged(tmp_path, tiny_model_dir, tiny_tokenizer, caplog):
    adapter = _adapter_run(tmp_path / "sft", tiny_model_dir, modules_to_save=["embed_tokens"],
                           tokenizer=tiny_tokenizer)
    out = tmp_path / "release"
    metrics = run(Config(run=str(adapter), output=str(out), name="Demo-chat"))["metrics"]
    assert metrics["vllm_lora"] is False
    line = "vLLM cannot serve this adapter as a LoRA: it trains whole modules (embed_tokens: modules_to_save)"
    assert metrics["vllm_reason"] == line
    card = _card(out)
    assert line in card and "vllm serve MERGED" in card and "--enable-lora" not in card
    assert line in caplog.text  # said once on the console too


@pytest.mark.parametrize("values, rank, reason", [
    ({"r": 8}, 8, ""), ({"r": 1}, 8, ""), ({"r": 17}, 32, ""), ({"r": 300}, 320, ""), ({"r": 512}, 512, ""),
    ({"r": 8, "rank_pattern": {"q_proj": 64}}, 64, ""),
    ({"r": 600}, 0, "its rank 600 is above vLLM's largest --max-lora-rank (512)"),
    ({"trainable_token_indices": [3, 4]}, 8, "it trains rows of the embeddings (trainable_token_indices)"),
    ({"use_dora": True}, 8, "it is a DoRA adapter"),
    ({"target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}, 8,
     "it adapts weights that are not linear layers (mlp.experts.gate_up_proj, mlp.experts.down_proj: "
     "target_parameters, a mixture of experts' fused experts)"),
])
def test_vllm_lora_check(tmp_path_factory, tiny_model_dir, values, rank, reason):
    folder = _adapter_run(tmp_path_factory.mktemp("a"), tiny_model_dir, r=8)
    _config(folder, **values)
    check = vllm_lora(folder)
    assert check.max_lora_rank == rank
    assert check.servable == (not reason)
    assert check.reason == (f"vLLM cannot serve this adapter as a LoRA: {reason}" if reason else "")


def test_whole_tensors_the_config_does_not_name_are_found(tmp_path, tiny_model_dir):
    folder = _adapter_run(tmp_path / "a", tiny_model_dir, modules_to_save=["lm_head"])
    _config(folder, modules_to_save=None)  # the weights still hold the trained output layer
    check = vllm_lora(folder)
    assert not check.servable and "whole tensors besides the LoRA factors" in check.reason


def test_release_gguf_adds_the_file_and_modelfile_to_the_checksums(family_dirs, tmp_path):
    from transformers import AutoTokenizer

    from llamantino.data.prompts import prompt_format

    base = family_dirs("llama3")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = prompt_format("llama2-chat", tokenizer, "auto").chat_template  # as sft saves it
    adapter = _adapter_run(tmp_path / "sft", base, tokenizer=tokenizer,
                           settings={"prompt_format": "llama2-chat", "system_prompt": "auto"})
    out = tmp_path / "release"
    metrics = run(Config(run=str(adapter), output=str(out), name="Demo-Chat-ITA", gguf="q8_0"))["metrics"]
    name = "demo-chat-ita"
    assert {f"{name}.gguf", f"{name}.gguf.sha256", "Modelfile"} <= set(metrics["files"])
    listed = (out / "SHA256SUMS").read_text()
    assert f"  {name}.gguf\n" in listed and "  Modelfile\n" in listed
    verify_checksums(out)  # release's own check: every file listed, every sha256 right
    card = _card(out)
    assert f"llama-cli -m {name}.gguf -cnv" in card and f"ollama create {name} -f Modelfile" in card
    assert f"`{name}.gguf` holds the whole model's weights" in card
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{name}.gguf" in modelfile and "Sei un assistente disponibile" in modelfile
    assert 'PARAMETER stop "<|eot_id|>"' in modelfile and "PARAMETER num_ctx 128" in modelfile
    with open(out / f"{name}.gguf", "r+b") as handle:  # a damaged download is caught
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(LlamantinoError, match=f"{name}.gguf"):
        verify_checksums(out)


def test_release_gguf_needs_the_merged_model_of_a_chained_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    adapter = _adapter_run(tmp_path / "sft", tiny_model_dir, tokenizer=tiny_tokenizer,
                           settings={"adapter": str(tmp_path / "adapt")})
    out = tmp_path / "release"
    out.mkdir()
    with pytest.raises(LlamantinoError, match="pass --base MERGED_FOLDER"):
        release_into(out, Config(run=str(adapter), output=str(out), gguf="q8_0"))
