"""QLoRA on mixtures of experts (tiny Mixtral, Qwen3-MoE and gpt-oss): adapt with the defaults puts
LoRA on every expert (PEFT target_parameters) and leaves the router frozen or trains it whole; the
manifest's parameter record; merge, eval bpb, diff and chat on the result."""

import json
import re
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llamantino.cli import main
from llamantino.models.modeling import load_causal_lm
from llamantino.train.common import FOUR_BIT_NUMEL, parameter_record

from helpers.family_runs import DIALOGUES, SMALL, write_jsonl
from helpers.moe_families import ROUTER

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Il gatto dorme sul divano.", "Domani andremo al mare.", "Roma e Napoli sono città italiane."]


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def manifest(folder):
    return json.loads((Path(folder) / "manifest.json").read_text())


def expected_parameters(folder, r: int, router: bool = False) -> dict:
    """Counted on the full-precision model: the linear layers' weights and the fused experts in the
    decoder blocks in 4-bit (models.moe4bit), the rest (routers, expert biases) in full precision;
    trained: r * (in + out) per linear layer, r * (in + out) per expert of each fused weight, and the
    routers whole when they train."""
    model = load_causal_lm(str(folder), dtype="float32", device="cpu")
    linear = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    fused = [p for n, p in model.named_parameters() if ".experts." in n and p.ndim == 3]
    routers = [p for n, p in model.named_parameters() if any(f".{r}." in n for r in ("gate", "router"))
               and ".experts." not in n]
    four_bit = sum(m.weight.numel() for m in linear) + sum(p.numel() for p in fused)
    trainable = sum(r * (m.in_features + m.out_features) for m in linear)
    trainable += sum(r * p.shape[0] * (p.shape[1] + p.shape[2]) for p in fused)
    return {"base_4bit": four_bit, "base_full_precision": sum(p.numel() for p in model.parameters()) - four_bit,
            "trainable": trainable + (sum(p.numel() for p in routers) if router else 0)}


def test_adapt_with_defaults_adapts_every_expert_and_merge_bpb_diff_chat_follow(tiny_moe_family, tmp_path, caplog):
    from llamantino.release.weightdiff import apply_diff, make_diff, tensor_hashes

    family, folder = tiny_moe_family
    texts = write_jsonl(tmp_path / "it.jsonl", [{"text": f"{TEXTS[i % 3]} Numero {i}."} for i in range(16)])
    adapter = tmp_path / "adapt"
    with caplog.at_level(logging.INFO, logger="llamantino"):
        assert main(["adapt", "--model", str(folder), "--data", str(texts), "--output", str(adapter),
                     "--max-steps", "2", "--lora-r", "4", "--learning-rate", "1e-2", *SMALL]) == 0
    m = manifest(adapter)["metrics"]
    assert m["lora_targets"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert m["lora_target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert m["routers_trained"] == [] and manifest(adapter)["settings"]["lora_dropout"] == 0.1
    assert m["lora_dropout"] == 0.0  # PEFT's expert LoRA has none: said, and recorded
    assert "lora_dropout 0.1 -> 0" in caplog.text
    assert re.search(r"LoRA \(r 4\) on modules .*q_proj.* and parameters \['mlp.experts.down_proj', "
                     r"'mlp.experts.gate_up_proj'\]: [\d,]+ trainable parameters; base [\d,]+ in 4-bit", caplog.text)
    assert m["parameters"] == expected_parameters(folder, r=4)
    assert m["trainable_parameters"] == m["parameters"]["trainable"]
    saved = load_file(adapter / "adapter_model.safetensors")
    experts = {k for k in saved if ".experts." in k}
    assert len(experts) == 2 * 2 * 2 and all(saved[k].abs().max() > 0 for k in experts)
    assert not any(f".{ROUTER[family.name]}." in k for k in saved)

    merged = tmp_path / "merged"
    assert main(["merge", "--base", str(folder), "--adapter", str(adapter), "--output", str(merged)]) == 0
    assert sorted(manifest(merged)["metrics"]["target_parameters"]) == m["lora_target_parameters"]
    base = load_causal_lm(str(folder), dtype="float32", device="cpu").state_dict()
    after = load_causal_lm(str(merged), dtype="float32", device="cpu").state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert {k for k in changed if ".experts." in k} == {f"model.layers.{i}.mlp.experts.{w}" for i in (0, 1)
                                                         for w in ("gate_up_proj", "down_proj")}
    assert not any(f".{ROUTER[family.name]}." in k for k in changed)  # the router stayed frozen

    # Bits per byte of base + adapter equal the merged model's.
    scores = []
    for args in (["--model", str(folder), "--adapter", str(adapter)], ["--model", str(merged)]):
        out = tmp_path / f"bpb{len(scores)}.json"
        assert main(["eval", "bpb", *args, str(texts), "--output", str(out), "--max-length", "64"]) == 0
        scores.append(json.loads(out.read_text())["bits_per_byte"])
    print(f"\n{family.name}: bpb base + adapter {scores[0]:.6f}, merged {scores[1]:.6f}")
    assert scores[0] == pytest.approx(scores[1], rel=1e-5)

    # An exact weight difference rebuilds the merged model; chat runs with the adapter.
    make_diff(folder, merged, tmp_path / "diff")
    apply_diff(folder, tmp_path / "diff", tmp_path / "rebuilt")
    assert tensor_hashes(tmp_path / "rebuilt") == tensor_hashes(merged)
    assert main(["chat", str(folder), "--adapter", str(adapter), "--prompt", "Ciao!", "--max-new-tokens", "2"]) == 0


def test_train_router_trains_it_whole_and_merge_copies_it_then_sft(moe_family_dirs, tmp_path):
    folder = moe_family_dirs("mixtral")
    texts = write_jsonl(tmp_path / "it.jsonl", [{"text": f"{TEXTS[i % 3]} Numero {i}."} for i in range(16)])
    adapter = tmp_path / "adapt"
    assert main(["adapt", "--model", str(folder), "--data", str(texts), "--output", str(adapter), "--max-steps", "2",
                 "--lora-r", "4", "--learning-rate", "1e-2", "--train-router", *SMALL]) == 0
    m = manifest(adapter)["metrics"]
    assert m["routers_trained"] == ["mlp.gate"]
    assert m["parameters"] == expected_parameters(folder, r=4, router=True)
    assert m["embedding_parameters"] == 0  # the router trains at the learning rate, not the embeddings'
    saved = load_file(adapter / "adapter_model.safetensors")
    routers = {k: v for k, v in saved.items() if ".mlp.gate." in k}
    assert len(routers) == 2
    merged = tmp_path / "merged"
    assert main(["merge", "--base", str(folder), "--adapter", str(adapter), "--output", str(merged)]) == 0
    base = load_causal_lm(str(folder), dtype="float32", device="cpu")
    after = load_causal_lm(str(merged), dtype="float32", device="cpu")
    for i in (0, 1):
        trained = next(v for k, v in routers.items() if f"layers.{i}.mlp.gate" in k)
        assert torch.equal(after.model.layers[i].mlp.gate.weight, trained)
        assert not torch.equal(base.model.layers[i].mlp.gate.weight, trained)
    # Chat fine-tuning takes the same path: experts adapted, the record in its manifest.
    dialogues = write_jsonl(tmp_path / "chat.jsonl", DIALOGUES)
    assert main(["sft", "--model", str(folder), "--data", str(dialogues), "--output", str(tmp_path / "sft"),
                 "--max-steps", "1", "--lora-r", "4", *SMALL, "--max-length", "200"]) == 0
    m = manifest(tmp_path / "sft")["metrics"]
    assert m["lora_target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    assert m["parameters"] == expected_parameters(folder, r=4)


def test_parameter_groups_put_trained_routers_at_the_learning_rate():
    from llamantino.train.qlora import parameter_groups

    class Named(torch.nn.Module):
        def named_parameters(self):
            for name in ("m.layers.0.mlp.gate.modules_to_save.default.weight",
                         "m.embed_tokens.modules_to_save.default.weight", "m.q_proj.lora_A.default.weight"):
                yield name, torch.nn.Parameter(torch.zeros(2))

    groups = parameter_groups(Named(), 1e-3, 0.0, ["mlp.gate"])
    assert [len(g["params"]) for g in groups] == [2, 1] and groups[1]["lr"] == 1e-4


def test_the_parameter_record_counts_4bit_tensors_by_their_weights():
    """A 4-bit tensor counts the weights it stands for, once: bitsandbytes' by its quant_state's
    shape, any other by its `llamantino_4bit_numel` (parameter or buffer); LoRA factors and trained
    copies are no part of the base."""
    import types

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            packed = torch.zeros(4 * 8 * 16 // 2, dtype=torch.uint8)  # two 4-bit weights a byte
            setattr(packed, FOUR_BIT_NUMEL, 4 * 8 * 16)
            self.register_buffer("gate_up_proj", packed)
            self.scales = torch.nn.Parameter(torch.zeros(4, 2), requires_grad=False)
            bnb = torch.nn.Parameter(torch.zeros(64, 1, dtype=torch.uint8), requires_grad=False)
            bnb.quant_state = types.SimpleNamespace(shape=torch.Size([8, 16]))
            self.down_proj = bnb
            self.lora_A = torch.nn.Linear(16, 2, bias=False)

    assert parameter_record(Experts()) == {"base_4bit": 4 * 8 * 16 + 8 * 16, "base_full_precision": 8,
                                           "trainable": 32}
