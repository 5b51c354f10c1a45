"""4-bit experts (models/moe4bit.py) on tiny Mixtral, Qwen3-MoE and gpt-oss: what is held in 4 bits,
the 4-bit forward and backward against the dequantized reference, LoRA on the experts in PEFT's
format, one QLoRA step per family, and an adapter trained on 4-bit experts loading on the
full-precision model."""

import pytest
import torch

from llamantino.models import moe4bit
from llamantino.models.modeling import decoder_blocks, load_causal_lm, lora_targets

from helpers.moe_families import EXPERTS

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERT_TARGETS = ["gate_up_proj", "down_proj"]


def four_bit_numel(param) -> int:
    """Weights a parameter holds: its count in 4 bits, or None when it is not 4-bit."""
    if hasattr(param, "llamantino_4bit_numel"):
        return param.llamantino_4bit_numel
    if getattr(param, "quant_state", None) is not None:
        return param.quant_state.shape.numel()
    return None


def load_4bit(folder):
    return load_causal_lm(str(folder), load_in_4bit=True, compute_dtype="float32", device="cpu",
                          attn_implementation="eager")


def test_experts_are_held_in_4bit(tiny_moe_family):
    family, folder = tiny_moe_family
    full = load_causal_lm(str(folder), dtype="float32", device="cpu")
    model = load_4bit(folder)
    total = sum(four_bit_numel(p) or p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in full.parameters())
    # The decoder blocks are what QLoRA quantizes (embeddings and output layer stay in full
    # precision, as for dense models; on these tiny models they are ~30% of the weights, on
    # Qwen3-30B-A3B 2%).
    blocks = [p for block in decoder_blocks(model) for p in block.parameters()]
    in_4bit = sum(four_bit_numel(p) or 0 for p in blocks)
    in_blocks = sum(four_bit_numel(p) or p.numel() for p in blocks)
    print(f"\n{family.name}: {in_4bit / in_blocks:.1%} of the decoder blocks' {in_blocks} weights in 4-bit, "
          f"{in_4bit / total:.1%} of the model's {total}")
    assert in_4bit / in_blocks >= 0.9
    for block, full_block in zip(decoder_blocks(model), decoder_blocks(full)):
        experts, original = block.get_submodule(EXPERTS[family.name]), full_block.get_submodule(EXPERTS[family.name])
        assert isinstance(experts, moe4bit.Experts4bit) and isinstance(experts, type(original))
        for name in moe4bit.EXPERT_PARAMETERS:
            stored = getattr(experts, name)
            assert stored.dtype == torch.uint8 and not stored.requires_grad
            weights = getattr(original, name)
            assert stored.numel() == weights.numel() // 2
            # NF4 rounds each weight to one of 16 levels of its block's largest magnitude: at most
            # about 0.14 of it away (a block layout read wrongly is off by the whole weight)
            error = (experts.dequantized_stack(name) - weights).abs().amax(dim=(1, 2))
            assert (error <= 0.15 * weights.abs().amax(dim=(1, 2))).all(), error
        assert moe4bit.stored_bytes(experts) < 0.2 * moe4bit.full_precision_bytes(experts)


def reference_and_4bit(folder, family):
    """(the 4-bit experts of the first block, the same module in full precision holding their
    dequantized weights)."""
    four = decoder_blocks(load_4bit(folder))[0].get_submodule(EXPERTS[family.name])
    reference = decoder_blocks(load_causal_lm(str(folder), dtype="float32", device="cpu"))[0] \
        .get_submodule(EXPERTS[family.name])
    with torch.no_grad():
        for name in moe4bit.EXPERT_PARAMETERS:
            getattr(reference, name).copy_(four.dequantized_stack(name))
    reference.config._experts_implementation = "eager"
    return four, reference


def routing(tokens, hidden, experts=4, top_k=2):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, hidden, generator=generator)
    logits = torch.randn(tokens, experts, generator=generator)
    weights, index = torch.topk(logits.softmax(-1), top_k, dim=-1)
    index[0] = torch.tensor([0, 1])  # at least two experts hit, one of them twice
    return x, index, weights


class Holder(torch.nn.Module):
    """A model of one experts module, for PEFT."""

    def __init__(self, experts):
        super().__init__()
        self.experts = experts

    def forward(self, x, index, weights):
        return self.experts(x, index, weights)


def with_lora(module, register):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=EXPERT_TARGETS, lora_dropout=0.0)
    if register:
        moe4bit.lora_config(config)
    return get_peft_model(Holder(module), config)


def outputs_and_grads(model, x, index, weights, cotangent):
    x = x.clone().requires_grad_()
    model.zero_grad()
    out = model(x, index, weights)
    (out * cotangent).sum().backward()
    return out.detach(), x.grad, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def test_4bit_forward_and_gradients_equal_the_dequantized_reference(tiny_moe_family):
    family, folder = tiny_moe_family
    four, reference = reference_and_4bit(folder, family)
    x, index, weights = routing(12, x_dim := 32)
    cotangent = torch.randn(12, x_dim, generator=torch.Generator().manual_seed(1))

    out, grad_x, _ = outputs_and_grads(Holder(four), x, index, weights, cotangent)
    ref_out, ref_grad_x, _ = outputs_and_grads(Holder(reference), x, index, weights, cotangent)
    assert (out - ref_out).abs().max() <= 1e-5 and (grad_x - ref_grad_x).abs().max() <= 1e-5
    assert ref_out.abs().max() > 1e-3  # not a comparison of zeros

    # LoRA on the experts: PEFT's ParamWrapper on the reference, the 4-bit wrapper here, same keys
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    ref_model, model = with_lora(reference, register=False), with_lora(four, register=True)
    torch.manual_seed(3)
    for name, p in ref_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # non-zero: the adapters take part
    state = get_peft_model_state_dict(ref_model)
    assert set(state) == set(get_peft_model_state_dict(model)) and len(state) == 4
    set_peft_model_state_dict(model, state)
    out, grad_x, grads = outputs_and_grads(model, x, index, weights, cotangent)
    ref_out, ref_grad_x, ref_grads = outputs_and_grads(ref_model, x, index, weights, cotangent)
    assert (out - ref_out).abs().max() <= 1e-5 and (grad_x - ref_grad_x).abs().max() <= 1e-5
    assert grads.keys() == ref_grads.keys() and len(grads) == 4
    for key in grads:
        scale = float(ref_grads[key].abs().max())
        assert scale > 0 and float((grads[key] - ref_grads[key]).abs().max()) <= 1e-5 * max(1.0, scale), key
    # the delta takes part: without LoRA the output is another one
    with model.disable_adapter():
        assert (model(x, index, weights) - out).abs().max() > 1e-3


def test_backward_keeps_no_dequantized_weight(moe_family_dirs):
    """Saved for the backward pass: nothing of the size of an expert's matrix (it is
    dequantized again there)."""
    four = decoder_blocks(load_4bit(moe_family_dirs("qwen3_moe")))[0].mlp.experts
    x, index, weights = routing(12, 32)
    x.requires_grad_()
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = four(x, index, weights)
    expert_numel = min(s[1] * s[2] for s in four._4bit["shapes"].values())
    assert sizes and max(sizes) < expert_numel, (sizes, expert_numel)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0


def qlora_model(folder):
    from peft import LoraConfig, get_peft_model

    from llamantino.train.qlora import prepare_for_training

    model = load_4bit(folder)
    prepare_for_training(model, False, "float32")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=lora_targets(model),
                        target_parameters=EXPERT_TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, moe4bit.lora_config(config, model))


def test_one_qlora_step_per_family(tiny_moe_family, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    from llamantino.train.qlora import CausalLMLoss

    family, folder = tiny_moe_family
    model = qlora_model(folder)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert any(".experts.lora_A." in k for k in trainable) and any(".experts.base_layer.lora_B." in k
                                                                    for k in trainable)
    assert all("lora_" in k for k in trainable)
    torch.manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (2, 16))
    positions = torch.arange(16).repeat(2, 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    loss = CausalLMLoss(model, 7)(ids, positions, ids, (ids.numel() - 2))
    loss.backward()
    expert_grads = [p.grad for k, p in model.named_parameters() if ".experts." in k and "lora_B" in k]
    assert all(g is not None and g.abs().max() > 0 for g in expert_grads)  # B starts at 0: A gets no gradient yet
    optimizer.step()
    after = get_peft_model_state_dict(model)
    assert torch.isfinite(loss) and any(not torch.equal(before[k], after[k]) for k in after if ".experts." in k)

    # An adapter trained on 4-bit experts loads on the full-precision model: same keys, same weights.
    model.save_pretrained(tmp_path / "adapter")
    full = PeftModel.from_pretrained(load_causal_lm(str(folder), dtype="float32", device="cpu"),
                                     str(tmp_path / "adapter"))
    loaded = get_peft_model_state_dict(full)
    assert loaded.keys() == after.keys()
    assert all(torch.equal(loaded[k], after[k]) for k in after)
    # ... and on a 4-bit base again (lm-eval's --load-in-4bit --adapter): the trained model's logits
    again = load_4bit(folder)
    again = PeftModel.from_pretrained(again, str(tmp_path / "adapter"),
                                      config=moe4bit.adapter_config(again, tmp_path / "adapter"))
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


def test_experts_it_cannot_quantize_are_named_before_loading(caplog):
    """Nemotron-H's experts have no gate: one line, before any weight is read, with their memory;
    Granite MoE's gated experts are quantized, without a word."""
    from transformers import AutoConfig, AutoModelForCausalLM

    small = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    nemotron = AutoConfig.for_model("nemotron_h", **small, hybrid_override_pattern="*E", n_routed_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=16, head_dim=8,
                                    mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8, n_groups=1,
                                    moe_shared_expert_intermediate_size=16)
    granite = AutoConfig.for_model("granitemoe", **small, num_local_experts=4, num_experts_per_tok=2,
                                   intermediate_size=16)
    def check(config):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return moe4bit.check_expert_layout(model, config.model_type, torch.bfloat16)

    with caplog.at_level("WARNING", logger="llamantino.models.moe4bit"):
        assert check(nemotron) == {"quantized": 0, "full_precision": 4096}
        assert check(granite) == {"quantized": 12288, "full_precision": 0}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "nemotron_h" in lines[0] and "NemotronHExperts" in lines[0] and "4,096 weights stay in bfloat16, 0.0 MiB" \
        in lines[0]


def test_a_model_with_4bit_experts_is_never_saved_nor_merged_into(moe_family_dirs, tmp_path):
    """save_pretrained on a model whose experts are packed in 4-bit would write bytes without their
    scales (a folder no loader reads back): refused in one line, nothing written, the model keeps its
    class's name; `merge`'s fold on such a model refused too. Its adapter saves, and merges into the
    full-precision model, as before."""
    from llamantino.core.errors import LlamantinoError
    from llamantino.models.merge import fold_lora

    folder = moe_family_dirs("qwen3_moe")
    model = load_4bit(folder)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"
    with pytest.raises(LlamantinoError, match="experts are held packed in 4-bit") as err:
        model.save_pretrained(tmp_path / "saved")
    assert "\n" not in str(err.value) and not (tmp_path / "saved").exists()
    peft = qlora_model(folder)
    peft.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    with pytest.raises(LlamantinoError, match="cannot merge the adapter into 4-bit experts") as err:
        fold_lora(peft, tmp_path / "adapter")
    assert "\n" not in str(err.value)
    with pytest.raises(LlamantinoError, match="experts are held packed in 4-bit"):
        peft.get_base_model().save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    from peft import PeftModel

    full = PeftModel.from_pretrained(load_causal_lm(str(folder), dtype="float32", device="cpu"),
                                     str(tmp_path / "adapter"))
    fold_lora(full, tmp_path / "adapter")[0].save_pretrained(tmp_path / "merged")
    assert load_causal_lm(str(tmp_path / "merged"), dtype="float32", device="cpu") is not None
