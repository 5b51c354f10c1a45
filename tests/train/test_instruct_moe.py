"""Full fine-tuning of a mixture of experts (`instruct`): the router's load-balancing loss added to
the chunked output-layer loss, equal to the model's own `outputs.loss`, logged as its own column,
and FSDP's units covering the experts."""

import csv

import pytest
import torch

from llamantino.core.runner import config_for
from llamantino.models.loss import IGNORE, router_loss
from llamantino.models.modeling import decoder_blocks, load_causal_lm
from llamantino.train import instruct

from helpers.instruct import write_dolly
from helpers.moe_families import EXPERTS

pytestmark = pytest.mark.usefixtures("one_thread")


def padded_batch(vocab):
    """Two rows, the second right-padded, prompts without targets: the attention mask matters to
    the router's loss (padding is left out of it)."""
    torch.manual_seed(0)
    ids = torch.randint(10, vocab, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    labels = ids.clone()
    labels[:, :4] = IGNORE
    labels[mask == 0] = IGNORE
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [7, 0])
def test_loss_with_the_routers_loss_equals_the_models_own(tiny_moe_family, chunk):
    family, folder = tiny_moe_family
    model = load_causal_lm(str(folder), dtype="float32", device="cpu", attn_implementation="eager")
    model.router_aux_loss_coef = 0.5  # large enough that the router's loss moves loss and gradients
    model.train()
    batch = padded_batch(model.config.vocab_size)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())

    model.zero_grad()
    own = model(**batch, output_router_logits=True, use_cache=False)
    own.loss.backward()
    own_grads = grads(model)

    router = router_loss(model)
    assert router is not None and router.coef == 0.5
    model.zero_grad()
    ce, aux = instruct.batch_losses(model, batch, chunk=chunk, router=router)
    total = ce / n + router.coef * aux
    total.backward()
    mine = grads(model)

    assert torch.allclose(total, own.loss, rtol=1e-6, atol=2e-5), (total, own.loss)
    assert torch.allclose(aux, own.aux_loss, rtol=1e-6, atol=1e-6)
    assert own_grads.keys() == mine.keys()
    for key in own_grads:
        scale = float(own_grads[key].abs().max())
        assert float((mine[key] - own_grads[key]).abs().max()) <= 1e-4 * scale + 1e-7, key
    # Negative control: the cross-entropy alone misses the router's share of the loss and gradients.
    model.zero_grad()
    (instruct.batch_losses(model, batch, chunk=chunk)[0] / n).backward()
    routers = [k for k in own_grads if ".gate." in k or ".router." in k]
    assert routers and abs(float((total - ce / n).detach())) > 1e-3
    assert any(float((model.get_parameter(k).grad - own_grads[k]).abs().max())
               > 1e-2 * float(own_grads[k].abs().max()) for k in routers)


def test_dense_model_has_no_routers_loss(tiny_model_dir):
    assert router_loss(load_causal_lm(str(tiny_model_dir), dtype="float32", device="cpu")) is None


def test_fsdp_units_are_the_decoder_blocks_with_their_experts(tiny_moe_family):
    family, folder = tiny_moe_family
    model = load_causal_lm(str(folder), dtype="float32", device="cpu")
    units = instruct.shard_units(model)
    assert units == decoder_blocks(model)
    for block in units:
        experts = block.get_submodule(EXPERTS[family.name])
        assert any(experts is m for m in block.modules())


def test_instruct_logs_the_routers_loss(tmp_path, moe_family_dirs):
    folder = moe_family_dirs("qwen3_moe")
    data = write_dolly(tmp_path / "dolly.jsonl", 8)
    cfg = config_for("instruct", model=str(folder), data=[str(data)], output=str(tmp_path / "out"), max_length=256,
                     batch_size=2, effective_batch_size=4, max_steps=2, learning_rate=1e-3, logging_steps=1,
                     save_steps=0)
    result = instruct.run(cfg)
    assert result["status"] == "done"
    with open(tmp_path / "out" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    # 4 experts, 2 per token: a perfectly balanced router gives 1 x top_k
    assert all(0.5 < float(row["router_aux_loss"]) < 4 for row in rows)
