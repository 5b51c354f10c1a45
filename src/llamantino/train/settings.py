"""Settings of the training stages, in one vocabulary, importing no torch.

`adapt`, `sft` (QLoRA) and `instruct` (full fine-tuning) share the names below, so a recipe
reads the same whatever the stage:

* batch: `batch_size` sequences per device in one micro-batch, `gradient_accumulation`
  micro-batches per optimizer step, `effective_batch_size` sequences per optimizer step
  over all devices. Give the effective batch and the accumulation is derived from the
  number of processes (the instruction recipes keep 128 on any cluster); give the
  accumulation and the effective batch follows from it (the adaptation recipes: 8 per GPU).
* precision: `compute_dtype` (auto, float32, bfloat16, float16).

Listing and validating settings (`llamantino config show`, `--help`) stays instant.
"""

from __future__ import annotations

import dataclasses
import logging

from llamantino.core.config import Settings, override, setting
from llamantino.core.errors import LlamantinoError
from llamantino.models.modeling import ATTENTION, DTYPES

log = logging.getLogger(__name__)

COMPUTE_DTYPES = ("auto",) + DTYPES
SCHEDULES = ("linear", "cosine", "constant")
OPTIMIZERS = ("paged_adamw_32bit", "adamw_torch", "adamw_8bit")
# Speed paths (see llamantino.train.speed): each `auto` resolves on the machine at hand.
CHECKPOINTING = ("auto", "full", "selective", "offload", "none")
COMPILE = ("auto", "none", "blocks")
KERNELS = ("auto", "torch", "liger")
FUSED_LOSS = ("auto", "chunked", "liger")


@dataclasses.dataclass
class CoreSettings(Settings):
    """What is trained, on which batches, how it is optimised."""

    model: str = setting("", "model to train: local folder or hub name", path_input=True)
    output: str = setting("", "run folder: result, checkpoints, logs, manifest.json")
    max_length: int = setting(1024, "tokens per sequence", minimum=1)
    batch_size: int = setting(8, "sequences per device in one micro-batch", minimum=1)
    gradient_accumulation: int = setting(1, "micro-batches per optimizer step (0: derived from "
                                            "effective_batch_size and the number of processes)", minimum=0)
    effective_batch_size: int = setting(0, "sequences per optimizer step over all devices (0: batch_size x "
                                           "gradient_accumulation x processes)", minimum=0)
    max_steps: int = setting(1000, "optimizer steps", minimum=0)
    learning_rate: float = setting(2e-4, "peak learning rate", minimum=0)
    lr_scheduler: str = setting("linear", "learning-rate decay after warmup", choices=SCHEDULES)
    warmup_ratio: float = setting(0.03, "share of the steps with a linear warmup", minimum=0, maximum=0.999)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    max_grad_norm: float = setting(1.0, "gradient clipping by global norm (0: off)", minimum=0)
    optimizer: str = setting("adamw_torch", "optimizer (paged and 8-bit variants need a CUDA device)",
                             choices=OPTIMIZERS)
    compute_dtype: str = setting("auto", "compute dtype: float32, bfloat16, float16, or auto = bfloat16 on a GPU "
                                         "that has it (float16 on one that has not), float32 on CPU",
                                 choices=COMPUTE_DTYPES)


@dataclasses.dataclass
class SpeedSettings(Settings):
    """The speed paths (see llamantino.train.speed): the time and memory a step takes, not what is trained, so
    none of them is in the fingerprint."""

    gradient_checkpointing: bool = setting(True, "recompute activations in the backward pass (less memory, "
                                                 "about a third more compute)", fingerprint=False)
    activation_checkpointing: str = setting(
        "auto", "what the decoder blocks keep for the backward pass: full (recompute every block: little memory), "
        "selective (keep matmul and attention outputs, recompute norms, activations, RoPE, dropout, LoRA's B "
        "products and 4-bit dequantisation), offload (full, each block's input kept in pinned host memory: least "
        "GPU memory, GPU only), none (keep everything: fastest, most memory); auto: full, or none when "
        "gradient_checkpointing is false", choices=CHECKPOINTING, fingerprint=False)
    checkpoint_every: int = setting(1, "with full or selective checkpointing, checkpoint every N-th decoder block "
                                       "only; the others keep their activations (memory back for speed)",
                                    minimum=1, maximum=1000, fingerprint=False)
    compile: str = setting("auto", "torch.compile: blocks (each decoder block compiled, one graph for all) or none; "
                                   "auto: blocks on a GPU with Triton, none on CPU (compiling takes longer than a "
                                   "short CPU run saves)", choices=COMPILE, fingerprint=False)
    kernels: str = setting("auto", "RMSNorm, SwiGLU and RoPE kernels: torch, or liger (Liger's Triton kernels, GPU "
                                   "only, the `speed` extra); auto: liger when installed, on a GPU with bfloat16 "
                                   "compute, for a family it supports, else torch", choices=KERNELS, fingerprint=False)
    fused_loss: str = setting("auto", "output layer + cross-entropy: chunked (ours, any device) or liger (Liger's "
                                      "fused linear cross-entropy, GPU only); auto: liger when installed, on a GPU "
                                      "with bfloat16 compute, for a plain output layer, else chunked",
                              choices=FUSED_LOSS, fingerprint=False)


@dataclasses.dataclass
class RunSettings(Settings):
    """Seed, checkpoints, logs and threads of a run."""

    seed: int = setting(42, "random seed", minimum=0)
    save_steps: int = setting(500, "write a resumable checkpoint every N steps (0: never)", fingerprint=False,
                              minimum=0)
    save_total_limit: int = setting(2, "how many of the latest checkpoints to keep", fingerprint=False, minimum=1)
    logging_steps: int = setting(10, "write metrics every N steps", fingerprint=False, minimum=1)
    stop_after_steps: int = setting(0, "stop after N steps in this invocation, with a checkpoint (for job time "
                                       "limits); continue with --resume", fingerprint=False, minimum=0)
    threads: int = setting(0, "torch CPU threads (0: torch's default)", fingerprint=False, minimum=0)


@dataclasses.dataclass
class TrainSettings(RunSettings, SpeedSettings, CoreSettings):
    """What every training stage has; each stage sets its own defaults (the paper's) with `override()`.
    (A dataclass lists the fields of its last base first: core, speed, then run settings.)"""

    def check_common(self, source: str) -> None:
        for name in ("model", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")
        if self.effective_batch_size and self.effective_batch_size % self.batch_size:
            raise LlamantinoError(f"{source}: effective_batch_size {self.effective_batch_size} is not a multiple "
                                  f"of batch_size {self.batch_size}")
        if not self.effective_batch_size and not self.gradient_accumulation:
            raise LlamantinoError(f"{source}: give gradient_accumulation or effective_batch_size")
        if not self.gradient_checkpointing and self.activation_checkpointing not in ("auto", "none"):
            raise LlamantinoError(f"{source}: gradient_checkpointing is false but activation_checkpointing is "
                                  f"{self.activation_checkpointing}; give only activation_checkpointing")

    def checkpointing(self) -> str:
        """full, selective or none: `activation_checkpointing`, with `gradient_checkpointing` as its old switch."""
        if self.activation_checkpointing != "auto":
            return self.activation_checkpointing
        return "full" if self.gradient_checkpointing else "none"


def accumulation(cfg: TrainSettings, world: int) -> int:
    """Micro-batches per optimizer step on `world` processes: from the effective batch when
    one is given (exactly: effective = batch_size x world x accumulation), else as set."""
    if not cfg.effective_batch_size:
        return cfg.gradient_accumulation
    per_step = cfg.batch_size * world
    if cfg.effective_batch_size < per_step or cfg.effective_batch_size % per_step:
        raise LlamantinoError(
            f"effective batch size {cfg.effective_batch_size} is not a multiple of batch size {cfg.batch_size} x "
            f"{world} process(es) = {per_step}; change batch_size or the number of processes")
    derived = cfg.effective_batch_size // per_step
    if cfg.gradient_accumulation and cfg.gradient_accumulation != derived:
        raise LlamantinoError(f"gradient_accumulation {cfg.gradient_accumulation} disagrees with effective_batch_size "
                              f"{cfg.effective_batch_size} on {world} process(es) (which needs {derived}); give one")
    return derived


@dataclasses.dataclass
class LoraSettings(Settings):
    """What the QLoRA stages load and train: tokenizer, 4-bit base, LoRA adapter, loss and attention kernels,
    embeddings."""

    tokenizer: str = setting("", "tokenizer folder or hub name (default: the model's)", path_input=True)
    lora_r: int = setting(64, "LoRA rank", minimum=1)
    lora_alpha: int = setting(16, "LoRA alpha", minimum=1)
    lora_dropout: float = setting(0.1, "LoRA dropout", minimum=0, maximum=0.999)
    lora_targets: list[str] = setting([], "LoRA target layers (default: every linear layer of the decoder blocks, "
                                          "and a mixture of experts' fused expert weights)")
    train_router: bool = setting(False, "mixture of experts: also train the routers, whole and unquantized "
                                        "(frozen otherwise)")
    load_in_4bit: bool = setting(True, "quantize the frozen base to 4-bit (QLoRA)")
    quant_type: str = setting("nf4", "4-bit data type: nf4 (the paper's, NormalFloat) or fp4",
                              choices=("nf4", "fp4"))
    double_quant: bool = setting(True, "quantize the quantization constants too")
    loss_chunk_tokens: int = setting(1024, "compute the output layer and loss on target positions only, this "
                                           "many at a time, never holding all logits (0: the model's own loss)",
                                     minimum=0)
    attn_implementation: str = setting("auto", "attention kernel; auto: the fastest the model supports that keeps "
                                               "packed documents apart (GPU: flash_attention_3 on Hopper or "
                                               "flash_attention_2 when installed, else sdpa, else flex_attention; "
                                               "CPU: sdpa, else eager)", choices=ATTENTION)
    train_embeddings: str = setting("none", "also train the embeddings: none (the paper), all (input and output "
                                            "matrices, whole), new (only the rows `llamantino vocab extend` added)",
                                    choices=("none", "all", "new"))
    embedding_learning_rate: float = setting(0.0, "learning rate of the embeddings (0: a tenth of learning_rate)",
                                             minimum=0)


@dataclasses.dataclass
class HeldoutSettings(Settings):
    """Held-out text scored in bits per byte while a QLoRA stage trains (see llamantino.train.heldout)."""

    eval_data: list[str] = setting([], "held-out text scored in bits per byte while training, as NAME=PATH (JSON "
                                       "lines, .txt, parquet, hub:), e.g. it=heldout_it.txt en=heldout_en.txt",
                                   path_input=True)
    eval_steps: int = setting(0, "score eval_data every N steps, and at the end (0: only at the end)", minimum=0)
    eval_max_documents: int = setting(0, "documents read from each held-out set (0: all)", minimum=0)
    eval_batch_size: int = setting(8, "windows per forward pass when scoring held-out text", fingerprint=False,
                                   minimum=1)


@dataclasses.dataclass
class QLoraSettings(HeldoutSettings, LoraSettings, TrainSettings):
    """The paper's QLoRA settings for language adaptation as defaults; sft changes its length and steps."""

    max_steps: int = override(25000, minimum=1)
    weight_decay: float = override(0.001)
    max_grad_norm: float = override(0.3)
    optimizer: str = override("paged_adamw_32bit")
    debug_rank_records: bool = setting(False, "write ranks/rankR.json with a hash of every batch each rank "
                                              "trained on and of its final adapter (checks data sharding)",
                                       fingerprint=False)
