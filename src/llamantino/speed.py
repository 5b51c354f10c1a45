"""Fast training paths shared by the QLoRA stages (`adapt`, `sft`) and full fine-tuning (`instruct`).

Each path is a setting whose `auto` resolves on the machine at hand, and each gives the plain
path's losses and gradients within float tolerance (tests/test_speed.py):

* activation checkpointing: `full` (every decoder block recomputed in the backward pass),
  `selective` (a block keeps its matmul and attention outputs and recomputes only cheap ops),
  `offload` (full, with the blocks' inputs in pinned host memory), `none`;
* `compile: blocks`: every decoder block goes through torch.compile (regional compilation: the
  blocks share one graph, so a 32-layer model compiles once);
* `kernels: liger`: Liger's Triton RMSNorm, SwiGLU and RoPE kernels (GPU only);
* `fused_loss: liger`: Liger's fused output layer + cross-entropy in place of our chunked loss.

The GPU-only paths are chosen by `auto` only where they can run (CUDA, and the package
installed); asked for explicitly where they cannot, they fail with one line saying why.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch

from llamantino.errors import LlamantinoError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Speed:
    """The resolved speed paths of a run (what the manifest reports)."""

    checkpointing: str = "full"   # full, selective, offload, none
    compile: str = "none"         # none, blocks
    kernels: str = "torch"        # torch, liger
    fused_loss: str = "chunked"   # chunked, liger
    checkpoint_every: int = 1     # every N-th decoder block checkpointed


def has_liger() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def has_triton() -> bool:
    from torch.utils._triton import has_triton as triton_available

    return triton_available()


def liger_supports(model_type: str) -> bool:
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


def resolve(cfg, device: torch.device, model_type: str, compute_dtype: str = "bfloat16") -> Speed:
    """The paths `cfg` asks for, `auto` resolved for `device`; an explicit path that cannot run
    here is an error naming the setting. `auto` takes Liger's kernels with bfloat16 compute only
    (the precision they are tested in here; float16 runs keep their norms in float32)."""
    gpu = torch.device(device).type == "cuda"
    liger = has_liger()

    def need_liger(setting: str) -> None:
        if not liger:
            raise LlamantinoError(f"setting '{setting}' is liger but liger-kernel is not installed "
                                  "(pip install 'llamantino[speed]')")
        if not gpu:
            raise LlamantinoError(f"setting '{setting}' is liger: Liger's Triton kernels need a CUDA device")
        if not liger_supports(model_type):
            raise LlamantinoError(f"setting '{setting}' is liger: Liger has no kernels for model type '{model_type}'")

    speed = Speed(checkpointing=cfg.checkpointing(), checkpoint_every=cfg.checkpoint_every)
    if speed.checkpointing == "offload" and not gpu:
        raise LlamantinoError("setting 'activation_checkpointing' is offload: it moves activations from a GPU to "
                              "host memory, and on CPU they are there already; use full")
    if cfg.compile == "auto":
        speed.compile = "blocks" if gpu and has_triton() else "none"
    else:
        speed.compile = cfg.compile
    if cfg.kernels == "liger":
        need_liger("kernels")
    if cfg.fused_loss == "liger":
        need_liger("fused_loss")
    auto_liger = gpu and compute_dtype == "bfloat16" and liger and liger_supports(model_type)
    speed.kernels = "liger" if cfg.kernels == "liger" or (cfg.kernels == "auto" and auto_liger) else "torch"
    speed.fused_loss = "liger" if cfg.fused_loss == "liger" or (cfg.fused_loss == "auto" and auto_liger) else "chunked"
    return speed


# ---------------------------------------------------------------------------------------
# Activation checkpointing


def selective_policy(lora_rank: int = 0):
    """torch's selective-checkpoint policy: keep the outputs of attention kernels and of matmuls
    whose inner dimension exceeds `lora_rank` (every projection of the model, and LoRA's A, whose
    output is rank-wide and cheap to keep); recompute everything else: norms, RoPE, SiLU x up,
    dropout, LoRA's B (rank-deep, as big as the projection's output) and 4-bit dequantisation
    (a whole weight matrix: never kept)."""
    from torch.utils.checkpoint import CheckpointPolicy

    matmuls = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
    matmul_names = ("gemm_4bit",)  # bitsandbytes' fused 4-bit matmul (its CPU path)

    def policy(ctx, op, *args, **kwargs):
        name = str(op)
        if "attention" in name or "flash_attn" in name:
            return CheckpointPolicy.MUST_SAVE
        if op in matmuls:
            inner = args[1].shape[-2] if op is not torch.ops.aten.addmm.default else args[2].shape[-2]
            return CheckpointPolicy.MUST_SAVE if inner > lora_rank else CheckpointPolicy.PREFER_RECOMPUTE
        if any(part in name for part in matmul_names):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def set_checkpointing(causal_lm, mode: str, lora_rank: int = 0, every: int = 1) -> None:
    """Apply `mode` (full, selective, offload, none) to every `every`-th decoder block through
    transformers' own switch; non-reentrant checkpointing (composes with FSDP2, DDP and compiled
    blocks). `offload` is transformers' own: the saved block inputs go to pinned host memory."""
    if mode == "none":
        disable = getattr(causal_lm, "activation_checkpointing_disable", None) or \
            causal_lm.gradient_checkpointing_disable
        disable()
        return
    kwargs = {"use_reentrant": False}
    if mode == "selective":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        policy = selective_policy(lora_rank)
        kwargs["context_fn"] = lambda: create_selective_checkpoint_contexts(policy)
    enable = getattr(causal_lm, "activation_checkpointing_enable", None)
    if enable is not None:  # the name since transformers 5.2x
        enable(kwargs, every_n_layers=every, offload=mode == "offload")
    elif every == 1 and mode != "offload":
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise LlamantinoError("checkpoint_every > 1 and activation_checkpointing offload need a transformers "
                              "version with activation_checkpointing_enable")


# ---------------------------------------------------------------------------------------
# Compilation and kernels


def decoder_blocks(causal_lm) -> list[torch.nn.Module]:
    from llamantino.modeling import language_model

    layers = getattr(language_model(causal_lm), "layers", None)
    if layers is None:
        raise LlamantinoError(f"{type(causal_lm).__name__}: no decoder blocks ('layers') to compile")
    return list(layers)


def compile_blocks(causal_lm) -> int:
    """torch.compile every decoder block in place (parameter names and state dicts unchanged).
    transformers checkpoints a block's `forward`, so the checkpoint is compiled with it (the
    compiler plans the recomputation); FSDP2's hooks stay outside. Returns the number of blocks."""
    blocks = decoder_blocks(causal_lm)
    for block in blocks:
        block.compile()
    return len(blocks)


def apply_liger_kernels(causal_lm) -> None:
    """Liger's RMSNorm, SwiGLU (or GeGLU) and RoPE kernels on this model (its own functions for
    the model type; the output layer and loss are left to `fused_loss`)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(causal_lm, rope=True, rms_norm=True, swiglu=True, geglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=False)


def liger_loss(causal_lm):
    """Liger's fused output layer + summed cross-entropy as `fn(hidden, targets)`, for an output
    layer that is a plain linear one (bias and Gemma 2's soft-capping included); None for any
    other (logit scaling, an adapter on the head), which keeps the chunked loss."""
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


def apply(causal_lm, speed: Speed, *, lora_rank: int = 0) -> None:
    """Kernels first (they replace forwards), then checkpointing, then compilation (which traces
    the forwards as they now are)."""
    if speed.kernels == "liger":
        apply_liger_kernels(causal_lm)
    set_checkpointing(causal_lm, speed.checkpointing, lora_rank, speed.checkpoint_every)
    if speed.compile == "blocks":
        compile_blocks(causal_lm)
