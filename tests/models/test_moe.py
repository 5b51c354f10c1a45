"""Mixtures of experts (tiny Mixtral, Qwen3-MoE and gpt-oss, tests/helpers/moe_families.py)."""

import pytest
import torch

from llamantino.models.modeling import decoder_blocks, load_causal_lm, load_tokenizer

from helpers.moe_families import EXPERTS, ROUTER

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_moe_models_have_fused_experts_and_their_family_template(tiny_moe_family):
    family, folder = tiny_moe_family
    model = load_causal_lm(str(folder), dtype="float32", device="cpu")
    block = decoder_blocks(model)[0]
    experts = block.get_submodule(EXPERTS[family.name])
    assert experts.gate_up_proj.dim() == 3 and experts.gate_up_proj.shape[0] == 4
    assert experts.down_proj.dim() == 3
    assert not isinstance(block.get_submodule(ROUTER[family.name]), torch.nn.Linear)
    tokenizer = load_tokenizer(str(folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Ciao"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "Ciao" in text
