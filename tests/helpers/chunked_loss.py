"""The training loss's check against each model's own loss, shared by tests/models/test_families.py
(today's families), tests/models/test_moe_layout.py (mixtures of experts) and tests/models/test_loss.py
(logit scaling, output bias, unknown heads)."""

import torch

from llamantino.models.loss import IGNORE
from llamantino.models.modeling import lora_targets, moe_layout


def loss_and_grads(model, chunk, ids, positions, labels):
    from llamantino.train.qlora import CausalLMLoss

    model.zero_grad()
    n = (labels[:, 1:] != IGNORE).sum()
    loss = CausalLMLoss(model, chunk)(ids, positions, labels, n)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def lora_model(base):
    from peft import LoraConfig, get_peft_model

    with torch.no_grad():  # logits of realistic size (tens), where soft-capping and scaling matter
        base.get_output_embeddings().weight.mul_(60)
    experts = moe_layout(base)["parameters"] or None  # a mixture of experts: LoRA on every expert too
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=lora_targets(base), lora_dropout=0.0,
                                            target_parameters=experts))
    torch.manual_seed(1)
    for name, p in model.named_parameters():  # non-zero B: the adapters take part in the loss
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def packed_batch(vocab):
    torch.manual_seed(0)
    ids = torch.randint(10, vocab, (2, 24))
    labels = ids.clone()
    labels[0, :5] = IGNORE
    positions = torch.cat([torch.arange(10), torch.arange(14)]).repeat(2, 1)
    return ids, positions, labels


def other_family(tmp_path, model_type, tokenizer, **extra):
    """A tiny Cohere (logit_scale), Granite (logits_scaling) or Phi (biased output layer) model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / model_type)
    return tmp_path / model_type


def assert_same_loss(model, vocab, name):
    """Chunked loss and gradients against the model's own; prints the figures (pytest -s)."""
    ids, positions, labels = packed_batch(vocab)
    own_loss, own_grads = loss_and_grads(model, 0, ids, positions, labels)
    loss, grads = loss_and_grads(model, 7, ids, positions, labels)
    assert torch.allclose(loss, own_loss, rtol=1e-6, atol=2e-5), (loss, own_loss)
    assert all(float(g.abs().max()) > 0 for g in own_grads.values())  # every adapter takes part
    worst = 0.0
    for key in own_grads:
        scale = float(own_grads[key].abs().max())
        error = float((grads[key] - own_grads[key]).abs().max())
        assert error <= 1e-4 * scale + 1e-7, key
        worst = max(worst, error / max(scale, 1e-12))
    print(f"\n{name}: loss {float(own_loss):.4f}, |chunked - own| loss {abs(float(loss - own_loss)):.1e}, "
          f"gradients {max(float((grads[k] - own_grads[k]).abs().max()) for k in own_grads):.1e} "
          f"({worst:.1e} of the largest)")
    return own_loss
