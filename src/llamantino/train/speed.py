"""Fast training paths shared by the QLoRA stages (`adapt`, `sft`) and full fine-tuning (`instruct`).

Each path is a setting whose `auto` resolves on the machine at hand, and each gives the plain
path's losses and gradients within float tolerance (tests/train/test_speed.py):

* activation checkpointing: `full` (every decoder block recomputed in the backward pass),
  `selective` (a block keeps its matmul and attention outputs and recomputes only cheap ops),
  `offload` (full, with the blocks' inputs in pinned host memory), `none`;
* `compile: blocks`: every decoder block goes through torch.compile (regional compilation: the
  blocks share one graph, so a 32-layer model compiles once);
* `kernels: liger`: Liger's Triton RMSNorm, SwiGLU and RoPE kernels (GPU only);
* `fused_loss: liger`: Liger's fused output layer + cross-entropy in place of our chunked loss
  (`models.loss`, which takes it for a plain output layer only).

The GPU-only paths are chosen by `auto` only where they can run (CUDA, the package installed,
a C compiler for Triton); asked for explicitly where they cannot, they fail with one line saying
why. None of them has been measured on a GPU here yet, so `auto` stays conservative where a
path is known to fail upstream: no compilation of 4-bit + LoRA models (PEFT's own test of
bitsandbytes + LoRA + torch.compile is an expected failure), Liger's kernels never inside
compiled blocks, and a compile error in the first steps makes the run continue eagerly
(`CompileGuard`) instead of stopping it. Held-out evaluation never compiles.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

import torch

from llamantino.core.errors import LlamantinoError, first_line
from llamantino.models.modeling import c_compiler  # tests replace it here

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Speed:
    """The resolved speed paths of a run (what the manifest reports)."""

    checkpointing: str = "full"   # full, selective, offload, none
    compile: str = "none"         # none, blocks
    kernels: str = "torch"        # torch, liger
    fused_loss: str = "chunked"   # chunked, liger
    checkpoint_every: int = 1     # every N-th decoder block checkpointed
    # Why `auto` picked what it did, per setting (logged and shown by `llamantino doctor`).
    why: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def settings(self) -> dict:
        """The paths as the manifest reports them (without the reasons)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "why"}


def has_liger() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def has_triton() -> bool:
    from torch.utils._triton import has_triton as triton_available

    return triton_available()


def liger_supports(model_type: str) -> bool:
    """Whether Liger has kernels for this family; False (logged) when Liger does not even import
    here (a build for another torch or Triton): an optional kernel never stops a run by itself."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception as exc:  # noqa: BLE001  (any import failure of an optional package)
        log.warning("liger-kernel is installed but does not import (%s); using torch's kernels", first_line(exc))
        return False
    return model_type in MODEL_TYPE_TO_APPLY_LIGER_FN


SELECTIVE_LIGER = ("activation_checkpointing selective with kernels liger: Liger's RoPE rotates q and k in place, "
                   "so the projections selective checkpointing keeps would be rotated twice when a block is "
                   "recomputed (wrong gradients, no error); use activation_checkpointing full, or kernels torch")
COMPILED_LIGER = ("compile blocks with kernels liger: Liger's kernels are not compiled into blocks (they fail "
                  "under torch.compile); choose one of them")


def resolve(cfg, device: torch.device, model_type: str, compute_dtype: str = "bfloat16") -> Speed:
    """The paths `cfg` asks for, `auto` resolved for `device`, with the reason for each `auto`
    choice in `Speed.why`; an explicit path that cannot run here is an error naming the setting.

    `auto` takes Liger's kernels with bfloat16 compute only (the precision they are tested in
    here; float16 runs keep their norms in float32), never with selective checkpointing (Liger's
    in-place RoPE) or explicitly compiled blocks; it compiles blocks only for full-precision
    models on a GPU with Triton and a C compiler, and not where Liger's kernels are taken."""
    gpu = torch.device(device).type == "cuda"
    liger = has_liger()
    cc = c_compiler() if gpu else None
    quantized = bool(getattr(cfg, "load_in_4bit", False))
    why = {}

    def need_liger(setting: str) -> None:
        if not liger:
            raise LlamantinoError(f"setting '{setting}' is liger but liger-kernel is not installed "
                                  "(pip install 'llamantino[speed]')")
        if not gpu:
            raise LlamantinoError(f"setting '{setting}' is liger: Liger's Triton kernels need a CUDA device")
        if cc is None:
            raise LlamantinoError(f"setting '{setting}' is liger: Liger's Triton kernels need a C compiler (gcc or "
                                  "clang, or set CC) and none is on PATH")
        if not liger_supports(model_type):
            raise LlamantinoError(f"setting '{setting}' is liger: Liger has no kernels for model type '{model_type}'")

    speed = Speed(checkpointing=cfg.checkpointing(), checkpoint_every=cfg.checkpoint_every, why=why)
    if speed.checkpointing == "offload" and not gpu:
        raise LlamantinoError("setting 'activation_checkpointing' is offload: it moves activations from a GPU to "
                              "host memory, and on CPU they are there already; use full")
    if cfg.kernels == "liger":
        need_liger("kernels")
        if speed.checkpointing == "selective":
            raise LlamantinoError(SELECTIVE_LIGER)
        if cfg.compile == "blocks":
            raise LlamantinoError(COMPILED_LIGER)
    if cfg.fused_loss == "liger":
        need_liger("fused_loss")

    def liger_here() -> str:
        """'' when `auto` may take Liger here, else why not."""
        if not gpu:
            return "no CUDA device"
        if not liger:
            return "liger-kernel not installed (the `speed` extra)"
        if compute_dtype != "bfloat16":
            return f"{compute_dtype} compute (Liger is taken with bfloat16 only)"
        if cc is None:
            return "no C compiler for Triton (gcc or clang, or set CC)"
        if not liger_supports(model_type):
            return f"Liger has no kernels for model type '{model_type}' (or does not import)"
        return ""

    no_liger = liger_here() if "auto" in (cfg.kernels, cfg.fused_loss) else ""
    if cfg.kernels == "auto":
        if no_liger:
            why["kernels"] = no_liger
        elif speed.checkpointing == "selective":
            why["kernels"] = "selective checkpointing: Liger's in-place RoPE would be rotated twice on recompute"
        elif cfg.compile == "blocks":
            why["kernels"] = "compile blocks asked for: Liger's kernels are not compiled into blocks"
        else:
            speed.kernels = "liger"
            why["kernels"] = "Liger installed, bfloat16 compute on a GPU, supported family (not measured here yet)"
    else:
        speed.kernels = cfg.kernels
    if cfg.fused_loss == "auto":
        speed.fused_loss = "chunked" if no_liger else "liger"
        why["fused_loss"] = no_liger or "Liger installed, bfloat16 compute on a GPU (not measured here yet)"
    else:
        speed.fused_loss = cfg.fused_loss
    if cfg.compile == "auto":
        if not gpu:
            reason = "CPU: compiling takes longer than a short CPU run saves"
        elif quantized:
            reason = ("4-bit + LoRA: bitsandbytes' 4-bit layers under torch.compile fail upstream (PEFT's own test "
                      "is an expected failure); not measured here yet")
        elif not has_triton():
            reason = "no Triton (torch.compile's GPU code generator)"
        elif cc is None:
            reason = "no C compiler for Triton (gcc or clang, or set CC)"
        elif speed.kernels == "liger":
            reason = "Liger's kernels are taken, and they are not compiled into blocks"
        else:
            reason = ""
        speed.compile = "none" if reason else "blocks"
        why["compile"] = reason or ("full-precision model on a GPU with Triton; a compile error in the first "
                                    "steps continues eagerly")
    else:
        speed.compile = cfg.compile
    return speed


def describe(speed: Speed) -> str:
    """One line: the paths taken, and why `auto` declined the faster ones."""
    taken = ", ".join(f"{k} {v}" for k, v in speed.settings().items() if k != "checkpoint_every")
    declined = [f"{k}: {v}" for k, v in speed.why.items()
                if (k, getattr(speed, k)) in (("compile", "none"), ("kernels", "torch"), ("fused_loss", "chunked"))]
    return taken + (f" (auto: {'; '.join(declined)})" if declined else "")


# ---------------------------------------------------------------------------------------
# Compile errors fail soft


class CompileGuard:
    """Compiled blocks that fail to compile do not stop a run: an error while the first `steps`
    steps run compiled is logged in one line, and that step and every later one run eagerly
    (`torch.compiler.set_stance("force_eager")`: the compiled blocks call their plain forwards).
    The failed step is run again from its start (`reset` clears what it left: gradients, RNG), so
    the run trains what an eager run would. An error that recurs eagerly is raised; so is one after
    the first steps (a recompilation there is rare, and a real error must not be hidden)."""

    def __init__(self, compiled: bool, steps: int = 3):
        self.left = steps if compiled else 0
        self.fell_back = ""  # the compile error, once the run went eager

    def run(self, step, reset):
        """`step()` under the guard; `reset()` undoes a failed step's partial work."""
        if self.fell_back:
            with torch.compiler.set_stance("force_eager"):
                return step()
        if self.left <= 0:
            return step()
        try:
            result = step()
        except LlamantinoError:
            raise
        except Exception as exc:  # noqa: BLE001  (any compiler failure; rerun eagerly, which re-raises real errors)
            self.fell_back = first_line(exc)
            self.left = 0
            log.warning("torch.compile failed (%s); continuing without compiling", self.fell_back)
            reset()
            with torch.compiler.set_stance("force_eager"):
                return step()
        self.left -= 1
        return result


def eager():
    """A context in which compiled blocks run their plain forwards (held-out evaluation, checks):
    no compilation for shapes and modes that training never sees."""
    return torch.compiler.set_stance("force_eager")


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


def compile_blocks(causal_lm) -> int:
    """torch.compile every decoder block in place (parameter names and state dicts unchanged).
    transformers checkpoints a block's `forward`, so the checkpoint is compiled with it (the
    compiler plans the recomputation); FSDP2's hooks stay outside. Returns the number of blocks."""
    from llamantino.models.modeling import decoder_blocks

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


def apply(causal_lm, speed: Speed, *, lora_rank: int = 0) -> None:
    """Kernels (they replace forwards), then checkpointing, then compilation (which traces the
    forwards as they now are). `resolve` never gives Liger's kernels and compiled blocks together."""
    if speed.kernels == "liger" and speed.compile == "blocks":
        raise LlamantinoError(COMPILED_LIGER)
    if speed.kernels == "liger" and speed.checkpointing == "selective":
        raise LlamantinoError(SELECTIVE_LIGER)
    if speed.kernels == "liger":
        apply_liger_kernels(causal_lm)
    set_checkpointing(causal_lm, speed.checkpointing, lora_rank, speed.checkpoint_every)
    if speed.compile == "blocks":
        compile_blocks(causal_lm)
