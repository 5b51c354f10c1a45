"""Tiny random mixture-of-experts models of Mixtral, Qwen3-MoE and gpt-oss, built offline from
their transformers config classes, with a family tokenizer and chat template from
`helpers.families`, saved with `save_pretrained` so every stage loads them as the real checkpoints.

In transformers 5 the experts of all three are fused 3-D parameters of one `mlp.experts` module:
`gate_up_proj` and `down_proj`, stored (experts, out, in) by Mixtral and Qwen3-MoE and transposed,
(experts, in, out), with biases (`gate_up_proj_bias`, `down_proj_bias`) by gpt-oss, whose gate and
up halves are interleaved rather than concatenated. The router is `mlp.gate` (Mixtral, Qwen3-MoE)
or `mlp.router` (gpt-oss, with a bias), a module with a 2-D `weight`, not an `nn.Linear`.

* mixtral: Mistral's tokenizer and template (no system role), a sliding window.
* qwen3_moe: Qwen3's tokenizer and template, `moe_intermediate_size` unlike the hidden size.
* gpt_oss: Qwen2.5's ChatML tokenizer and template (the harmony format is not needed to exercise
  the stages), alternating sliding / full attention layers, attention sinks, YaRN rope scaling.

Sizes: hidden 32, 4 experts, 2 routed per token, 2 layers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from helpers.families import FAMILIES, Family, build_model, read_template, save_built

MOE = dict(num_experts_per_tok=2)


@dataclasses.dataclass
class MoeFamily(Family):
    template_name: str = ""      # the dense family whose tokenizer and template it borrows

    @property
    def template(self) -> str:
        return read_template(self.template_name)

    @property
    def marked(self) -> str:
        return read_template(f"{self.template_name}.marked")


def _moe(name: str, model_type: str, like: str, config: dict) -> MoeFamily:
    fields = {f.name: getattr(FAMILIES[like], f.name) for f in dataclasses.fields(Family)}
    fields.update(name=name, model_type=model_type, config=config)
    return MoeFamily(**fields, template_name=like)


MOE_FAMILIES = {
    "mixtral": _moe("mixtral", "mixtral", "mistral",
                    dict(num_key_value_heads=2, sliding_window=8, num_local_experts=4, **MOE)),
    "qwen3_moe": _moe("qwen3_moe", "qwen3_moe", "qwen3",
                      dict(num_key_value_heads=2, head_dim=8, num_experts=4, moe_intermediate_size=48,
                           norm_topk_prob=True, **MOE)),
    "gpt_oss": _moe("gpt_oss", "gpt_oss", "qwen2",
                    dict(num_key_value_heads=2, head_dim=8, num_local_experts=4, sliding_window=8,
                         layer_types=["sliding_attention", "full_attention"],
                         rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 8.0,
                                          "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                                          "original_max_position_embeddings": 32}, **MOE)),
}

# Where each family keeps its experts and router, relative to a decoder block.
EXPERTS = {"mixtral": "mlp.experts", "qwen3_moe": "mlp.experts", "gpt_oss": "mlp.experts"}
ROUTER = {"mixtral": "mlp.gate", "qwen3_moe": "mlp.gate", "gpt_oss": "mlp.router"}


def build_moe_model(family: MoeFamily, tokenizer, seed: int = 0):
    """The tiny random model; gpt-oss's expert biases start at zero, so they are filled at random
    (a merge or a diff that dropped them would otherwise go unnoticed)."""
    import torch

    model = build_model(family, tokenizer, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("_proj_bias") or name.endswith("router.bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return model


def save_moe_family(name: str, folder: Path) -> Path:
    return save_built(MOE_FAMILIES[name], build_moe_model, folder)
