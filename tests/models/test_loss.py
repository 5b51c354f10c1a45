"""The output-layer loss (llamantino.models.loss): the chunked loss is the plain cross-entropy of the
full logits, in value and gradients, for any chunk size; `IGNORE` labels take no loss and no
output layer; the head gives each family's logits (scaling, output bias; soft-capping is checked
per family in test_families.py); a head that does something unknown falls back to the model's own
loss, with the one warning every user of the loss logs."""

import logging
import types

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llamantino.models.loss import (IGNORE, LossPath, full_logits_loss, loss_path, output_head,
                                    summed_target_loss)
from llamantino.models.modeling import load_causal_lm, load_tokenizer

from helpers.chunked_loss import assert_same_loss, lora_model, other_family, packed_batch

pytestmark = pytest.mark.usefixtures("one_thread")

FALLBACK = "the model's own loss is used"


def tokenizer_of(folder):
    return load_tokenizer(str(folder))


class Doubled(LlamaForCausalLM):  # does something after its output layer no one told us about
    def forward(self, *args, labels=None, num_items_in_batch=None, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2
        if labels is not None:
            out.loss = self.loss_function(out.logits, labels, self.vocab_size,
                                          num_items_in_batch=num_items_in_batch)
        return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def batch(vocab):
    """Two rows of 24 tokens, 37 of whose 46 positions have a target (a prime: most chunk sizes
    leave a last, shorter chunk)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (2, 24), generator=gen)
    labels = ids.clone()
    labels[0, :5] = IGNORE        # a prompt
    labels[1, [3, 9, 10, 17, 20]] = IGNORE  # document starts, and more
    labels[1, 0] = IGNORE         # the first label is never a target anyway
    assert int((labels[:, 1:] != IGNORE).sum()) == 37
    return ids, labels


def grads_of(model, loss):
    model.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


# ---------------------------------------------------------------------------------------
# The chunked loss is the plain full-logits cross-entropy


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 37, 1000])
def test_chunked_loss_equals_the_full_logits_cross_entropy_and_its_gradients(tiny, chunk):
    ids, labels = batch(tiny.config.vocab_size)
    plain = full_logits_loss(tiny(input_ids=ids, use_cache=False).logits, labels)
    plain_grads = grads_of(tiny, plain)
    hidden = tiny.model(input_ids=ids, use_cache=False).last_hidden_state
    chunked = summed_target_loss(hidden, labels, output_head(tiny), chunk)
    grads = grads_of(tiny, chunked)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    for key, expected in plain_grads.items():  # embeddings, every block, the output layer
        scale = float(expected.abs().max())
        assert scale > 0 and float((grads[key] - expected).abs().max()) <= 1e-5 * scale, key
    # Without gradients (bits per byte) the chunks run without recomputation: the same bits.
    with torch.no_grad():
        hidden = tiny.model(input_ids=ids, use_cache=False).last_hidden_state
        assert torch.equal(summed_target_loss(hidden, labels, output_head(tiny), chunk), chunked.detach())


@pytest.mark.parametrize("chunk", [5, 7, 1000])
def test_the_output_layer_runs_on_target_positions_only_in_chunks(tiny, chunk):
    ids, labels = batch(tiny.config.vocab_size)
    head, rows = output_head(tiny), []

    def counting(hidden):
        rows.append(hidden.shape[0])
        return head(hidden)

    hidden = tiny.model(input_ids=ids, use_cache=False).last_hidden_state
    with torch.no_grad():
        summed_target_loss(hidden, labels, counting, chunk)
    assert sum(rows) == 37 and max(rows) <= chunk and len(rows) == -(-37 // chunk)


def test_ignored_positions_take_no_loss(tiny):
    ids, labels = batch(tiny.config.vocab_size)
    hidden = tiny.model(input_ids=ids, use_cache=False).last_hidden_state.detach().requires_grad_()
    loss = summed_target_loss(hidden, labels, output_head(tiny), 5)
    # An independent sum: the log-probability of each kept target, from the full logits.
    logp = torch.log_softmax(tiny.lm_head(hidden[:, :-1]).float(), dim=-1)
    keep = labels[:, 1:] != IGNORE
    expected = -logp.gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)[keep].sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
    # A position whose next label is IGNORE gets no gradient; every other one does.
    (grad,) = torch.autograd.grad(loss, hidden)
    assert torch.all(grad[:, :-1][~keep] == 0) and torch.all(grad[:, -1] == 0)
    assert torch.all(grad[:, :-1][keep].abs().amax(-1) > 0)
    # The negative control: counting those positions (their real tokens as targets) changes the loss.
    counted = summed_target_loss(hidden, ids, output_head(tiny), 5)
    assert float(counted.detach() - loss.detach()) > 1.0
    assert float(full_logits_loss(tiny(input_ids=ids, use_cache=False).logits, ids)) == pytest.approx(
        float(counted), rel=1e-5)


def test_the_loss_path_names_what_the_manifest_reports(tiny):
    assert loss_path(tiny, 0).name == "own" and loss_path(tiny, 0).head is None  # no chunk: no check either
    path = loss_path(tiny, 16)
    assert (path.name, path.chunk, path.fused) == ("chunked", 16, None) and path.head is not None
    assert LossPath(16, path.head, fused=lambda hidden, targets: hidden.sum()).name == "liger"


# ---------------------------------------------------------------------------------------
# The head is the family's: logit scaling, output bias, and what it cannot know


@pytest.mark.parametrize("model_type,extra", [("cohere", {"logit_scale": 0.0625}),
                                              ("granite", {"logits_scaling": 8.0}),
                                              ("phi", {})])  # Phi-2: an output layer with a bias
def test_chunked_loss_applies_logit_scaling_and_output_bias(tmp_path, family_dirs, model_type, extra):
    tokenizer = tokenizer_of(family_dirs("llama3"))
    base = load_causal_lm(str(other_family(tmp_path, model_type, tokenizer, **extra)), dtype="float32", device="cpu")
    if model_type == "phi":
        head = base.get_output_embeddings()
        assert head.bias is not None
        # transformers starts the bias at zero, where a loss that drops it still agrees
        torch.manual_seed(2)
        with torch.no_grad():
            head.bias.normal_(std=3.0)
    model = lora_model(base)
    from llamantino.train.qlora import CausalLMLoss

    # the chunked path itself, not its fallback to the model's own loss
    assert CausalLMLoss(model, 7).chunk == 7
    own = assert_same_loss(model, len(tokenizer), model_type)
    # The negative control: the output layer's weight alone (no bias, no scaling) gives a loss
    # far outside the tolerance the chunked loss is held to.
    ids, positions, labels = packed_batch(len(tokenizer))
    causal = model.get_base_model()
    with torch.no_grad():
        hidden = causal.model(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state
        logits = torch.nn.functional.linear(hidden, causal.get_output_embeddings().weight)[:, :-1]
        plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
    assert abs(float(plain) - float(own)) > 0.1, (float(plain), float(own))


def test_liger_asked_for_a_head_it_cannot_fuse_keeps_the_chunks(tmp_path, family_dirs, caplog):
    tokenizer = tokenizer_of(family_dirs("llama3"))
    granite = load_causal_lm(str(other_family(tmp_path, "granite", tokenizer, logits_scaling=8.0)), dtype="float32",
                             device="cpu")
    with caplog.at_level(logging.INFO):
        path = loss_path(granite, 7, "liger")  # Liger's kernel knows no logits_scaling
    assert (path.name, path.chunk) == ("chunked", 7) and "instead of Liger's fused one" in caplog.text


def test_unknown_post_processing_falls_back_to_the_models_own_loss(family_dirs, caplog):
    from peft import LoraConfig, get_peft_model

    from llamantino.train.qlora import CausalLMLoss

    base = Doubled.from_pretrained(family_dirs("llama3"), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
    with caplog.at_level(logging.WARNING):
        loss = CausalLMLoss(model, 1024)
    assert loss.chunk == 0 and FALLBACK in caplog.text
    ids, positions, labels = packed_batch(300)
    own = model(input_ids=ids, position_ids=positions, labels=labels, use_cache=False).loss
    assert torch.allclose(loss(ids, positions, labels, (labels[:, 1:] != IGNORE).sum()), own)


def test_every_user_of_the_loss_takes_the_one_head_check(family_dirs, caplog):
    """Training (adapt/sft, instruct) and bits per byte fall back alike, with the same warning."""
    from peft import LoraConfig, get_peft_model

    from llamantino.evaluate.bpb import NllSum
    from llamantino.train import instruct
    from llamantino.train.qlora import CausalLMLoss

    base = Doubled.from_pretrained(family_dirs("llama3"), dtype=torch.float32)
    with caplog.at_level(logging.WARNING):
        _, name = instruct.training_loss(base, instruct.contextlib.nullcontext,
                                         types.SimpleNamespace(loss_chunk_tokens=16), 1, "chunked")
        nll = NllSum(base, 8)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], lora_dropout=0.0))
        qlora = CausalLMLoss(model, 16)
    assert (name, nll.head, qlora.chunk) == ("own", None, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all(FALLBACK in w and w.startswith("Doubled:") for w in warnings), warnings
    # Bits per byte from the model's own logits: the targets' summed negative log-likelihood.
    ids, _, labels = packed_batch(300)
    with torch.no_grad():
        logits = base(input_ids=ids, use_cache=False).logits
        expected = float(full_logits_loss(logits, labels))
        assert nll(ids, torch.ones_like(ids), labels) == pytest.approx(expected, rel=1e-6)
