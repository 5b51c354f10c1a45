"""Mixtures of experts (tiny Mixtral, Qwen3-MoE and gpt-oss, tests/helpers/moe_families.py): the
experts and routers found, the chunked loss against each model's own with LoRA on every expert,
and the merge of expert LoRA, expert by expert, against PEFT's own forward."""

import pytest
import torch

from llamantino.core.errors import LlamantinoError
from llamantino.models.modeling import decoder_blocks, load_causal_lm, load_tokenizer, lora_targets, moe_layout

from helpers.chunked_loss import assert_same_loss, lora_model
from helpers.moe_families import EXPERTS, ROUTER

pytestmark = pytest.mark.usefixtures("one_thread")


def load(folder):
    return load_causal_lm(str(folder), dtype="float32", device="cpu")


def test_tiny_moe_models_have_fused_experts_and_their_family_template(tiny_moe_family):
    family, folder = tiny_moe_family
    model = load(folder)
    block = decoder_blocks(model)[0]
    experts = block.get_submodule(EXPERTS[family.name])
    assert experts.gate_up_proj.dim() == 3 and experts.gate_up_proj.shape[0] == 4
    assert experts.down_proj.dim() == 3
    assert not isinstance(block.get_submodule(ROUTER[family.name]), torch.nn.Linear)
    tokenizer = load_tokenizer(str(folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Ciao"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "Ciao" in text


def test_the_layout_names_fused_experts_and_routers(tiny_moe_family, tiny_model_dir):
    family, folder = tiny_moe_family
    layout = moe_layout(load(folder))
    assert layout == {"parameters": ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"],
                      "routers": [ROUTER[family.name]], "unknown": []}
    assert set(lora_targets(load(folder))) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert moe_layout(load(tiny_model_dir)) == {"parameters": [], "routers": [], "unknown": []}  # dense


def test_a_linear_router_is_no_lora_target_and_unknown_experts_are_named(moe_family_dirs):
    """Families whose router is an nn.Linear (Qwen2-MoE, OLMoE) keep it out of the LoRA targets;
    experts that are neither fused weights nor linear layers are reported, not skipped."""
    from llamantino.train.qlora import adapter_targets

    model = load(moe_family_dirs("mixtral"))
    for block in decoder_blocks(model):
        block.mlp.gate = torch.nn.Linear(32, 4, bias=False)
    assert "gate" not in lora_targets(model)

    class Packed(torch.nn.Module):  # e.g. experts kept as one flat buffer of another library's layout
        def __init__(self):
            super().__init__()
            self.packed = torch.nn.Parameter(torch.zeros(4, 64))

    for block in decoder_blocks(model):
        block.mlp.experts = Packed()
    assert moe_layout(model)["unknown"] == ["mlp.experts (Packed)"]
    with pytest.raises(LlamantinoError, match=r"m: experts in a layout llamantino does not know \(mlp.experts "
                                              r"\(Packed\).*name lora_targets"):
        adapter_targets(model, [], False, "m")
    assert adapter_targets(model, ["q_proj"], False, "m") == (["q_proj"], [], [])


def test_lora_targets_named_by_hand_split_into_modules_and_expert_weights(moe_family_dirs, tiny_model_dir):
    from llamantino.train.qlora import adapter_targets

    model = load(moe_family_dirs("qwen3_moe"))
    assert adapter_targets(model, ["q_proj", "experts.down_proj"], True, "m") == \
        (["q_proj"], ["experts.down_proj"], ["mlp.gate"])
    assert adapter_targets(model, ["down_proj"], False, "m") == ([], ["down_proj"], [])
    decoder_blocks(model)[0].mlp.shared_expert = torch.nn.Module()  # a dense expert beside the fused ones
    decoder_blocks(model)[0].mlp.shared_expert.down_proj = torch.nn.Linear(48, 32)
    assert adapter_targets(model, ["down_proj"], False, "m") == (["down_proj"], ["down_proj"], [])
    with pytest.raises(LlamantinoError, match="m: train_router is set, but the model has no mixture-of-experts"):
        adapter_targets(load(tiny_model_dir), [], True, "m")


def test_chunked_loss_equals_the_models_own_loss_and_gradients_with_lora_on_every_expert(tiny_moe_family):
    family, folder = tiny_moe_family
    model = lora_model(load(folder))
    expert_lora = [n for n, p in model.named_parameters() if p.requires_grad and "experts" in n]
    assert len(expert_lora) == 2 * 2 * 2  # A and B of gate_up_proj and down_proj, in both blocks
    assert_same_loss(model, len(load_tokenizer(str(folder))), family.name)


def test_merged_expert_lora_gives_the_adapted_models_logits(tiny_moe_family, tmp_path):
    """PEFT's forward with LoRA on the fused experts against the merged model: the per-expert
    fold reads PEFT's factor layout (and gpt-oss's transposed weights) right, or the logits part."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from llamantino.models.merge import fold_lora

    family, folder = tiny_moe_family
    torch.manual_seed(3)
    adapted = get_peft_model(load(folder), LoraConfig(r=3, lora_alpha=8, target_modules=["q_proj"],
                                                      target_parameters=moe_layout(load(folder))["parameters"],
                                                      init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(10, 300, (1, 24))
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        base = load(folder)
        before = {n: p.clone() for n, p in base.named_parameters()}
        merged, count = fold_lora(PeftModel.from_pretrained(base, tmp_path / "adapter"), tmp_path / "adapter")
        got = merged(input_ids=ids).logits
    assert count == 2 * 3  # q_proj and the two expert weights, in both blocks
    changed = {n for n, p in merged.named_parameters() if not torch.equal(p, before[n])}
    assert {n for n in changed if "experts" in n} == {f"model.layers.{i}.mlp.experts.{w}" for i in (0, 1)
                                                      for w in ("gate_up_proj", "down_proj")}
    for name in changed:  # every expert of every stack changed
        assert all(not torch.equal(merged.get_parameter(name)[e], before[name][e]) for e in range(4)) \
            if "experts" in name else True
    error = float((got - expected).abs().max())
    print(f"\n{family.name}: merged - adapted logits {error:.1e}")
    assert error < 1e-5
