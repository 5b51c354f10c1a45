"""The loss on a causal LM's output layer: cross-entropy summed over the positions with a target.

Training (`adapt`, `sft`, `instruct`) and bits per byte take it from the body's last hidden
states: the output layer runs on positions with a target only, `chunk` positions at a time,
each chunk recomputed in the backward pass, so the full (batch x length x vocabulary) logits
never exist (about 2 GB per 8x1024 batch at a 32k vocabulary, 4 GB for one 8k window at a
128k vocabulary) and the prompt positions of chat data cost nothing. `loss_path` picks, once
per model, how the loss computes (`LossPath.name`):

* `chunked`: the model's own output head (`output_head`: its output layer, bias and adapter
  included, then the logit scaling or soft-capping of its family), in chunks;
* `liger`: Liger's fused output layer + cross-entropy (GPU; plain linear output layers only);
* `own`: the model's full logits, when no chunk is asked for, or when its logits are not what
  `output_head` computes (`head_matches_model`, checked once; the log says so).

Labels are the input ids with `IGNORE` where no loss is taken; position i predicts label i + 1.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

log = logging.getLogger(__name__)

IGNORE = -100  # a label without a target (transformers' and torch's ignore index)


def output_head(causal_lm):
    """Last hidden states -> the logits the model's own forward returns: its output layer (bias
    and any adapter on it included), then what some families do after it: Cohere's logit_scale,
    Granite's logits_scaling, Gemma 2's final-logit soft-capping."""
    text = causal_lm.config.get_text_config(decoder=True)
    layer = causal_lm.get_output_embeddings()
    scale = getattr(text, "logit_scale", None)          # Cohere: logits x scale
    divisor = getattr(text, "logits_scaling", None)     # Granite: logits / scaling
    cap = getattr(text, "final_logit_softcapping", None)  # Gemma 2: cap x tanh(logits / cap)

    def head(hidden):
        import torch

        logits = layer(hidden)
        if scale is not None:
            logits = logits * scale
        if divisor is not None:
            logits = logits / divisor
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return head


def head_matches_model(causal_lm, head) -> tuple[bool, float]:
    """Whether `head` on the body's hidden states gives the model's own logits, on 16 tokens in
    eval mode: a family that does something else after its output layer shows here.
    Returns (matches, largest difference relative to the largest logit)."""
    import torch

    vocab = causal_lm.get_output_embeddings().weight.shape[0]
    device = causal_lm.get_output_embeddings().weight.device
    ids = (torch.arange(16, device=device) * 7919 % vocab).unsqueeze(0)
    training = causal_lm.training
    causal_lm.eval()
    try:
        with torch.no_grad():
            own = causal_lm(input_ids=ids, use_cache=False).logits.float()
            mine = head(causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state).float()
    finally:
        causal_lm.train(training)
    scale = max(1.0, float(own.abs().max()))
    error = float((own - mine).abs().max()) / scale
    # Same kernels on the same inputs: float32 agrees to rounding, 16-bit to its precision.
    tolerance = 1e-5 if causal_lm.get_output_embeddings().weight.dtype == torch.float32 else 1e-2
    return error <= tolerance, error


def liger_loss(causal_lm):
    """Liger's fused output layer + summed cross-entropy as `fn(hidden, targets)`, for an output
    layer that is a plain linear one (bias and Gemma 2's soft-capping included); None for any
    other (logit scaling, an adapter on the head), which keeps the chunked loss."""
    import torch

    layer = causal_lm.get_output_embeddings()
    text = causal_lm.config.get_text_config(decoder=True)
    if type(layer) is not torch.nn.Linear or getattr(text, "logit_scale", None) is not None \
            or getattr(text, "logits_scaling", None) not in (None, 1, 1.0):
        return None
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=getattr(text, "final_logit_softcapping", None))

    def loss(hidden, targets):
        return fused(layer.weight, hidden, targets, layer.bias)

    return loss


@dataclasses.dataclass(frozen=True)
class LossPath:
    """How a model's loss computes: from its own full logits (`chunk` 0), in chunks through
    `head`, or in `fused` (Liger's kernel) when given."""

    chunk: int = 0
    head: Callable | None = None
    fused: Callable | None = None

    @property
    def name(self) -> str:
        """What the manifest reports as `fused_loss`: liger, chunked or own."""
        return "liger" if self.fused is not None else "chunked" if self.chunk else "own"


def loss_path(causal_lm, chunk: int, fused: str = "chunked") -> LossPath:
    """The loss path of `causal_lm` (a transformers causal LM; a PEFT model's base): `chunk` > 0
    asks for the chunked loss and `fused` = "liger" (the resolved `fused_loss` setting) for
    Liger's kernel in its place. A head whose logits differ from the model's falls back to the
    model's own loss, with a warning; an output layer Liger cannot fuse keeps the chunks."""
    if not chunk:
        return LossPath()
    head = output_head(causal_lm)
    matches, error = head_matches_model(causal_lm, head)
    if not matches:
        log.warning("%s: the logits of its forward differ from those of its output layer (by %.2g of the largest): "
                    "it does something after that layer that the chunked loss does not know, so the model's own "
                    "loss is used (all logits held at once)", type(causal_lm).__name__, error)
        return LossPath()
    kernel = liger_loss(causal_lm) if fused == "liger" else None
    if fused == "liger" and kernel is None:
        log.info("%s: its output layer is not a plain linear one; the chunked loss is used instead of Liger's "
                 "fused one", type(causal_lm).__name__)
    return LossPath(chunk, head, kernel)


@dataclasses.dataclass(frozen=True)
class RouterLoss:
    """The load-balancing loss a mixture-of-experts causal LM adds to its own loss when asked for
    its router logits (`output_router_logits`): its family's `load_balancing_loss_func` on every
    layer's router logits, padding left out by the attention mask, times `coef`
    (`router_aux_loss_coef`)."""

    function: Callable
    coef: float
    num_experts: int
    top_k: int

    def __call__(self, router_logits, attention_mask=None):
        """The loss before `coef`, as the model's `aux_loss` output."""
        return self.function(router_logits, self.num_experts, self.top_k, attention_mask)


def router_loss(causal_lm) -> RouterLoss | None:
    """The router's auxiliary loss of `causal_lm` (a transformers causal LM, sharded or not), as its
    family's forward computes it; None for a model without one (dense, or a coefficient of 0)."""
    import sys

    coef = getattr(causal_lm, "router_aux_loss_coef", None)
    function = next((getattr(sys.modules.get(cls.__module__), "load_balancing_loss_func", None)
                     for cls in type(causal_lm).__mro__
                     if hasattr(sys.modules.get(cls.__module__), "load_balancing_loss_func")), None)
    if function is None or not coef:
        return None
    return RouterLoss(function, float(coef), int(causal_lm.num_experts), int(causal_lm.num_experts_per_tok))


def target_positions(hidden, labels):
    """(hidden states, targets) of the positions that have a target, flattened: position i of a
    row predicts label i + 1, and `IGNORE` labels are left out."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep]


def chunk_sums(hidden, targets, head, chunk: int):
    """The summed cross-entropy (float32) of each `chunk` of target positions, `head` giving the
    logits; with gradients on, each chunk is recomputed in the backward pass, so only one
    chunk's logits exist at a time."""
    import torch
    import torch.utils.checkpoint

    for start in range(0, targets.numel(), chunk):
        end = start + chunk
        if torch.is_grad_enabled():
            yield torch.utils.checkpoint.checkpoint(_cross_entropy_sum, head, hidden[start:end], targets[start:end],
                                                    use_reentrant=False)
        else:
            yield _cross_entropy_sum(head, hidden[start:end], targets[start:end])


def summed_target_loss(hidden, labels, head, chunk: int, fused=None):
    """Cross-entropy summed over the positions with a target (float32) from the body's last
    hidden states: the output layer runs on those positions only, `chunk` at a time
    (`chunk_sums`), or in `fused` (Liger's fused linear cross-entropy) when given."""
    import torch

    hidden, targets = target_positions(hidden, labels)
    if fused is not None:
        return fused(hidden, targets).float()
    total = hidden.new_zeros((), dtype=torch.float32)
    for part in chunk_sums(hidden, targets, head, chunk):
        total = total + part
    return total


def full_logits_loss(logits, labels):
    """The same sum from the model's full (batch x length x vocabulary) logits, `IGNORE` labels
    given to the cross-entropy: the plain loss the chunked one equals."""
    import torch

    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE, reduction="sum")


def summed_cross_entropy(logits, targets):
    """Cross-entropy (float32) summed over rows of logits that all have a target
    (`target_positions`)."""
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")


def _cross_entropy_sum(head, hidden, targets):
    return summed_cross_entropy(head(hidden), targets)


def row_target_logps(hidden, labels, head, chunk: int):
    """Per row: the summed log-probability (float32) of its target tokens and how many there are,
    from the body's last hidden states, the output layer run on target positions only, `chunk`
    at a time (recomputed in the backward pass, as `chunk_sums`). What preference losses need:
    one figure per answer, never the full logits of the batch."""
    import torch
    import torch.utils.checkpoint

    targets = labels[:, 1:]
    keep = targets != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(targets)[keep]
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    total = hidden.new_zeros(labels.shape[0], dtype=torch.float32)
    for start in range(0, targets.numel(), chunk):
        end = start + chunk
        if torch.is_grad_enabled():
            part = torch.utils.checkpoint.checkpoint(_token_logps, head, hidden[start:end], targets[start:end],
                                                     use_reentrant=False)
        else:
            part = _token_logps(head, hidden[start:end], targets[start:end])
        total = total.index_add(0, rows[start:end], part)
    return total, keep.sum(dim=1)


def row_target_logps_from_logits(logits, labels):
    """The same per-row sums and counts from the model's full logits (the `own` loss path)."""
    import torch

    targets = labels[:, 1:]
    keep = targets != IGNORE
    logps = -torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                               ignore_index=IGNORE, reduction="none").view_as(targets)
    return (logps * keep).sum(dim=1), keep.sum(dim=1)


def _token_logps(head, hidden, targets):
    import torch

    return -torch.nn.functional.cross_entropy(head(hidden).float(), targets, reduction="none")
