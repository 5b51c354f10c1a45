"""Full-parameter instruction tuning with PyTorch FSDP2 (the paper's Dolly and EVALITA models, Table 2).

    torchrun --nproc_per_node 8 -m llamantino instruct --model M --data dolly-it.jsonl --output OUT
    llamantino instruct --model M --data dolly-it.jsonl --output OUT          # one process

Records (Dolly, Alpaca or prepared EVALITA) are rendered with the Italian Alpaca prompt (the
paper's; `prompt_format` picks another: `alpaca` in English, an Alpaca template file, or a chat
format such as the model's own template) and trained on the response and its EOS (or
end-of-turn token) only. A vision-language checkpoint trains its language model only. Under torchrun every decoder layer, then
the root, is sharded with `fully_shard` (ZeRO-3: each rank holds 1/N of the weights,
gradients and AdamW state); a single process trains the same loop without sharding.

The recipe fixes the effective batch (128 in Table 2); gradient accumulation is derived
from the number of processes so that every cluster size trains the same optimizer steps,
and the loss is divided by the number of response tokens of the whole global batch, so
how the batch is split over micro-batches and ranks does not change the gradient.
Several nodes need an output folder on a filesystem every node sees (checkpoints are
written by all ranks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import warnings
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from llamantino.core.config import override, setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import SYSTEM_PROMPT_HELP
from llamantino.data.records import INSTRUCTION_DATA_FORMATS
from llamantino.data.supervised import Example
from llamantino.models.loss import IGNORE
from llamantino.models.modeling import ATTENTION, DTYPES
from llamantino.train.settings import TrainSettings

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads only when a run starts (fast --help and config show)
    import torch

KIND = "instruct"
RESUMABLE = True  # the command takes --resume


@dataclasses.dataclass
class Config(TrainSettings):
    """Table 2 of the paper (7B column) as defaults."""

    RENAMED: ClassVar[dict] = {"mixed_precision": ("compute_dtype", {"auto": "auto", "bf16": "bfloat16",
                                                                     "no": "float32"})}

    # The shared training settings with this stage's defaults and words.
    model: str = override("", "model to fine-tune (local folder or hub name), e.g. the merged language-adapted model")
    output: str = override("", "output folder: the fine-tuned model, checkpoints, metrics, manifest")
    max_length: int = override(1024, "tokens per example; longer examples are truncated")
    batch_size: int = override(16, "examples per device in one micro-batch")
    gradient_accumulation: int = override(0)
    effective_batch_size: int = override(128, "examples per optimizer step over all devices; gradient "
                                              "accumulation = this / (batch_size x processes)")
    learning_rate: float = override(2e-5)
    max_steps: int = override(0, "optimizer steps; 0: from epochs")
    weight_decay: float = override(0.0, "AdamW weight decay (applied to every parameter)")
    lr_scheduler: str = override("cosine")
    compute_dtype: str = override("auto", "float32, or bfloat16 compute on float32 master weights (float16 is not "
                                          "offered: it needs loss scaling); auto: bfloat16 on a GPU that has it, "
                                          "else float32", choices=("auto", "float32", "bfloat16"))

    data: list[str] = setting([], "instruction data: JSON-lines files or folders (Dolly, Alpaca, prepared EVALITA)",
                              path_input=True)
    format: str = setting("auto", "data format; auto: detected from each file's fields",
                          choices=("auto",) + INSTRUCTION_DATA_FORMATS)
    prompt_format: str = setting("alpaca-it", "instruction prompt: alpaca-it (the paper's), alpaca (English), a .json "
                                              "Alpaca template (prompt_input, prompt_no_input), or a chat format: "
                                              "auto (the model's chat template), llama2-chat, chatml, a Jinja file",
                                 path_input=True)
    system_prompt: str = setting("auto", SYSTEM_PROMPT_HELP + " (chat formats only)", path_input=True)
    epochs: int = setting(3, "passes over the data (the last incomplete effective batch of each is left out)",
                          minimum=0)
    save_dtype: str = setting("float32", "dtype of the saved weights", choices=DTYPES)
    attn_implementation: str = setting("auto", "attention kernel; auto: the fastest the model supports on the "
                                               "training device (GPU: flash_attention_3 on Hopper or "
                                               "flash_attention_2 when installed, with bfloat16 compute, else sdpa; "
                                               "CPU: sdpa, else eager)", choices=ATTENTION, fingerprint=False)
    loss_chunk_tokens: int = setting(1024, "one process: compute the output layer and loss on response positions "
                                           "only, this many at a time, never holding all logits (0: the model's "
                                           "own loss; under FSDP the model's own loss is used)", minimum=0,
                                     fingerprint=False)
    fused_optimizer: str = setting("auto", "AdamW's fused kernel (one kernel for all parameters); auto: on a GPU",
                                   choices=("auto", "on", "off"), fingerprint=False)
    reshard_after_forward: str = setting("auto", "FSDP2: free each decoder block's gathered weights after its "
                                                 "forward (always: least memory; never: no second all-gather in "
                                                 "the backward pass, more memory); auto: the blocks do, the root "
                                                 "(embeddings, output layer) does not",
                                         choices=("auto", "always", "never"), fingerprint=False)
    reduce_dtype: str = setting("float32", "FSDP2 with bfloat16 compute: dtype in which gradients are reduced "
                                           "across ranks (bfloat16 halves the traffic, rounds the sum)",
                                choices=("float32", "bfloat16"), fingerprint=False)

    def validate(self, source):
        self.check_common(source)
        if not self.data:
            raise LlamantinoError(f"{source}: setting 'data' is required (instruction JSON-lines files)")
        if not self.effective_batch_size:
            raise LlamantinoError(f"{source}: setting 'effective_batch_size' is required (the batch of Table 2)")
        if self.max_steps == 0 and self.epochs == 0:
            raise LlamantinoError(f"{source}: give a positive 'epochs' or 'max_steps'")
        if self.learning_rate <= 0:
            raise LlamantinoError(f"{source}: setting 'learning_rate' must be positive")


# ---------------------------------------------------------------------------------------
# Data: records -> the instruction prompt -> token ids with the loss on the response only


def instruction_prompt(cfg: Config, tokenizer):
    """The run's prompt format; with a chat format the saved tokenizer's chat template renders it."""
    from llamantino.data.prompts import prompt_format

    prompt = prompt_format(cfg.prompt_format, tokenizer, cfg.system_prompt)
    if prompt.chat_template is not None:
        tokenizer.chat_template = prompt.chat_template
    return prompt


def load_examples(cfg: Config, tokenizer) -> tuple[list[Example], dict]:
    from llamantino.data.records import iter_records
    from llamantino.data.supervised import encode, render_record

    prompt = instruction_prompt(cfg, tokenizer)
    examples, counts = [], {"records": 0, "truncated": 0, "dropped_no_response": 0}
    for where, fmt, record in iter_records(cfg.data, None if cfg.format == "auto" else cfg.format):
        counts["records"] += 1
        ex = encode(tokenizer, render_record(record, fmt, prompt, where), cfg.max_length)
        if trained_tokens(ex) == 0:  # the prompt alone fills max_length: nothing left to learn from
            counts["dropped_no_response"] += 1
            continue
        counts["truncated"] += ex.truncated
        examples.append(ex)
    if not examples:
        raise LlamantinoError(f"{', '.join(cfg.data)}: no example with a response token within "
                              f"max_length {cfg.max_length}")
    return examples, counts


def trained_tokens(ex: Example) -> int:
    # Position 0 is never a target: token t is predicted from the tokens before it.
    return sum(1 for x in ex.labels[1:] if x != IGNORE)


def data_digest(examples: list[Example]) -> str:
    """Hash of the token ids and loss masks: a resumed run must see the very same examples."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(array("q", ex.input_ids + ex.labels).tobytes())
    return digest.hexdigest()[:16]


def global_batch(step: int, n_examples: int, effective: int, seed: int) -> tuple[int, int, list[int]]:
    """(epoch, index, example ids) of an optimizer step: a slice of the epoch's seeded
    permutation, so the data position is just the step number."""
    import torch

    per_epoch = n_examples // effective
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch))
    return epoch, index * effective, order[index * effective:(index + 1) * effective].tolist()


def micro_batches(ids: list[int], examples: list[Example], batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches of a global batch. The gradient does not depend on the
    split (see the loss), so the batch is sorted by length first: micro-batches of similar
    lengths waste less padding, and ranks get neighbouring chunks, so they stay in step."""
    ids = sorted(ids, key=lambda i: len(examples[i].input_ids))
    chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    return chunks[rank::world]


def collate(batch: list[Example], pad_id: int, device, *, flat_length: int = 0) -> dict:
    """Right-padded to the longest example of the micro-batch, with an attention mask; or, with
    `flat_length` (the run's max length, for FlashAttention), padding-free: the examples back to
    back in one row, positions restarting at each, and the varlen boundaries computed once here,
    on the host (`qlora.varlen_kwargs`). An example's first token is no target of the one before."""
    import torch

    if flat_length:
        from llamantino.train.qlora import varlen_kwargs

        ids, labels, positions = [], [], []
        for ex in batch:
            ids += ex.input_ids
            labels += [IGNORE] + list(ex.labels[1:])
            positions += range(len(ex.input_ids))
        position_ids = torch.tensor([positions])
        return {"input_ids": torch.tensor([ids]).to(device), "position_ids": position_ids.to(device),
                "labels": torch.tensor([labels]).to(device), **varlen_kwargs(position_ids, flat_length, device)}
    width = max(len(ex.input_ids) for ex in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        n = len(ex.input_ids)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# ---------------------------------------------------------------------------------------
# Model: FSDP2 sharding, mixed precision, the loss


def mixed_precision_dtype(name: str, device: torch.device) -> str:
    """The compute dtype setting resolved for mixed precision on float32 master weights: float32 or bfloat16."""
    import torch

    from llamantino.train import common

    dtype = common.resolve_compute_dtype(name, device)
    if dtype == "float16":  # only `auto` on a GPU without bfloat16 gets here
        return "float32"
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlamantinoError("compute_dtype bfloat16: this GPU has no bfloat16 support; use float32")
    return dtype


def padding_free(model) -> bool:
    """Whether micro-batches go flattened, padding-free: with FlashAttention, whose varlen kernel
    takes the boundaries directly (SDPA and eager would need a dense mask over the whole row)."""
    return str(model.config._attn_implementation).startswith("flash")


def free_memory(device) -> int | None:
    """Bytes free on a GPU (None on CPU, where host memory is not checked)."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def parameter_counts(config) -> tuple[int, int]:
    """(trained, frozen) parameters of the model `config` describes, counted on the meta device
    (nothing allocated): a vision-language model's tower and projector stay frozen."""
    import torch

    from llamantino.models.modeling import auto_class, freeze_outside_language_model

    with torch.device("meta"):
        model = auto_class(config).from_config(config)
    frozen = freeze_outside_language_model(model)
    return sum(p.numel() for p in model.parameters()) - frozen, frozen


def check_memory(cfg: Config, config, device, world: int) -> None:
    """One process on a GPU: float32 master weights, their gradients and AdamW's two moments take
    16 bytes per trained parameter (4 per frozen one) before any activation. A model that cannot
    fit is refused before anything is loaded, saying what to do, instead of running out of memory
    at the first optimizer step."""
    import math

    free = free_memory(device)
    if world > 1 or free is None:
        return
    trained, frozen = parameter_counts(config)
    need = 16 * trained + 4 * frozen
    if need <= free:
        return
    ranks = max(2, math.ceil(need / max(free, 1)))
    raise LlamantinoError(
        f"{cfg.model}: {trained / 1e9:.2f}B parameters to train need about {need / 2**30:.1f} GiB for float32 "
        f"weights, gradients and AdamW state (16 bytes each) and this GPU has {free / 2**30:.1f} GiB free; shard "
        f"them with FSDP over at least {ranks} GPUs (torchrun --nproc_per_node {ranks} -m llamantino instruct ...), "
        "or fine-tune a smaller model, or adapt this one with QLoRA (llamantino sft); compute_dtype does not "
        "change this (the master weights stay float32)")


def shard_units(model) -> list[torch.nn.Module]:
    """What FSDP shards one by one before the root: every decoder block (modeling.decoder_blocks),
    and every other block transformers keeps whole on one device (a vision tower's layers)."""
    from llamantino.models.modeling import decoder_blocks

    blocks = decoder_blocks(model)
    ids = {id(block) for block in blocks}
    parts = {id(sub) for block in blocks for sub in block.modules()} - ids  # sharded with their block
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if id(m) in ids or (type(m).__name__ in names and id(m) not in parts)]


def prepare_model(model, *, world: int, device: torch.device, compute_dtype: str,
                  gradient_checkpointing: bool = True, paths=None, reshard_after_forward: str = "auto",
                  reduce_dtype: str = "float32"):
    """Apply the speed paths (`speed.Speed`; without them: checkpointing as `gradient_checkpointing`
    says, nothing else), then shard with FSDP2 on several processes (per decoder layer, then the
    root), or move to `device` on one. Returns the model and the autocast context of the forward."""
    import torch

    from llamantino.train import speed

    model.config.use_cache = False
    speed.apply(model, paths or speed.Speed(checkpointing="full" if gradient_checkpointing else "none"))
    bf16 = compute_dtype == "bfloat16"
    if world == 1:
        # No FSDP to cast the weights: autocast gives bf16 compute on float32 weights (as torchtitan).
        model.to(device)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        return model, autocast
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    # Weights are gathered in bf16 for compute; gradients are reduced in `reduce_dtype`, kept in float32.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=getattr(torch, reduce_dtype)) if bf16
          else MixedPrecisionPolicy())
    for layer in shard_units(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward != "never")
    # The root (embeddings, final norm, LM head) is needed again at once by the backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward == "always")
    return model, contextlib.nullcontext


def load_model(cfg: Config, config, *, rank: int, world: int, device: torch.device, compute_dtype: str,
               paths=None):
    """The model in float32 (the master weights), ready to train: (model, autocast).

    With several ranks only rank 0 reads the checkpoint; the others build the model on the
    meta device (no memory), shard it, and receive their shards from rank 0, so a node's
    host memory holds one copy of the weights, not one per process.
    """
    import torch

    from llamantino.models.modeling import auto_class, freeze_outside_language_model, load_causal_lm, resolve_attention

    # Resolved for the training device (the weights are read on the CPU first).
    attention = resolve_attention(cfg.attn_implementation, config, str(device), compute_dtype)
    if world == 1:
        model = load_causal_lm(cfg.model, dtype="float32", device="cpu", attn_implementation=attention)
        _report_frozen(freeze_outside_language_model(model))
        return prepare_model(model, world=1, device=device, compute_dtype=compute_dtype, paths=paths)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    source = load_causal_lm(cfg.model, dtype="float32", device="cpu", attn_implementation=attention) \
        if rank == 0 else None
    with torch.device("meta"):
        model = auto_class(config).from_config(config, dtype=torch.float32, attn_implementation=attention)
    _report_frozen(freeze_outside_language_model(model))
    model, autocast = prepare_model(model, world=world, device=device, compute_dtype=compute_dtype, paths=paths,
                                    reshard_after_forward=cfg.reshard_after_forward, reduce_dtype=cfg.reduce_dtype)
    model.to_empty(device=device)
    set_model_state_dict(model, source.state_dict() if rank == 0 else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers outside the state dict (the rotary frequencies) come from rank 0's model too.
    for name, buffer in model.named_buffers():
        if rank == 0:
            buffer.copy_(source.get_buffer(name))
        torch.distributed.broadcast(buffer, src=0)
    if rank == 0:
        model.generation_config = source.generation_config  # saved with the result
    return model, autocast


def _report_frozen(frozen: int) -> None:
    if frozen:
        log.info("vision-language model: %.1fM parameters outside the language model stay frozen", frozen / 1e6)


def summed_loss(model, batch: dict, autocast=contextlib.nullcontext, chunk: int = 0, fused=None) -> torch.Tensor:
    """Cross-entropy summed over the response tokens of a micro-batch (float32), padded or flattened
    (`collate`). With `chunk` > 0 (one process) the output layer runs on response positions only,
    `chunk` at a time, or in `fused` (Liger's fused linear cross-entropy): the full logits never exist."""
    return batch_losses(model, batch, autocast, chunk, fused)[0]


def batch_losses(model, batch: dict, autocast=contextlib.nullcontext, chunk: int = 0, fused=None,
                 router=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed cross-entropy as `summed_loss`, the router's auxiliary loss or None): with `router`
    (`loss.router_loss` of a mixture of experts) the forward also returns every layer's router
    logits, and the load-balancing loss is computed from them as the model's own forward does
    (padding left out through the batch's attention mask; a flattened batch has none)."""
    from llamantino.models.loss import full_logits_loss, output_head, summed_target_loss

    inputs = {k: v for k, v in batch.items() if k != "labels"}  # ids, and a mask or positions + boundaries
    if router is not None:
        inputs["output_router_logits"] = True
    with autocast():
        if chunk:
            out = model.model(**inputs, use_cache=False)
            ce = summed_target_loss(out.last_hidden_state, batch["labels"], output_head(model), chunk, fused)
            aux = router(out.router_logits, batch.get("attention_mask")) if router is not None else None
            return ce, aux
        out = model(**inputs, use_cache=False)
    return full_logits_loss(out.logits, batch["labels"]), out.aux_loss if router is not None else None


def training_loss(model, autocast, cfg: Config, world: int, fused_loss: str) -> tuple[functools.partial, str]:
    """(`loss(batch)`, the micro-batch's summed cross-entropy and, for a mixture of experts, its
    router's auxiliary loss (`batch_losses`); how it computes: liger, chunked or own): chunked (or Liger's fused one) on one process for a model whose output layer gives its
    own logits; the model's own loss under FSDP (whose root unshards the embeddings and output
    layer in the model's own forward only) or for an output head that does something unknown."""
    import torch

    from llamantino.models.loss import loss_path, router_loss

    # A 16-token check, not worth compiling blocks for; in the training precision (FlashAttention
    # takes no float32), where the model's own forward and ours run the same kernels.
    with torch.compiler.set_stance("force_eager"), autocast():
        path = loss_path(model, cfg.loss_chunk_tokens if world == 1 else 0, fused_loss)
    return functools.partial(batch_losses, model, autocast=autocast, chunk=path.chunk, fused=path.fused,
                             router=router_loss(model)), path.name


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_numel(model) -> tuple[int, int]:
    """(parameters held by this rank, parameters of the whole model)."""
    return sum(_local(p).numel() for p in model.parameters()), sum(p.numel() for p in model.parameters())


def state_bytes(model, optimizer) -> int:
    """Bytes of weights and AdamW moments held by this rank (its shards under FSDP)."""
    import torch

    moments = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    tensors = list(model.parameters()) + moments
    return sum(_local(t).numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------
# Checkpoints: model + optimizer sharded by torch.distributed.checkpoint (each rank writes
# its own shards; a different number of ranks can read them back), plus the scheduler,
# the counters and every rank's RNG state, through the shared checkpoint helper.


def _distributed() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _one_process_is_intended():
    # torch.distributed.checkpoint warns at every save and load without a process group.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class ShardedState:
    """Model and AdamW state as a checkpoint part: every rank writes and reads its shards.
    The metadata file of torch.distributed.checkpoint is a pickle: the checkpoint helper
    loads only files whose sha256 the run recorded when it wrote them."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer

    def save_to(self, folder: Path, rank: int) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        with _one_process_is_intended():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder))

    def load_from(self, folder: Path, rank: int) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        with _one_process_is_intended():
            dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def save_checkpoint(t: Trainer) -> Path:
    return t.checkpoints.save(t.counters["step"], *t.parts())


def save_model(output, model, tokenizer, cfg: Config, *, rank: int) -> None:
    """Gather the full weights to rank 0's CPU and save them as sharded safetensors that
    `from_pretrained` loads, with config, generation config and tokenizer."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from llamantino.train import common

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    dtype = getattr(torch, cfg.save_dtype)
    full = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
    model.config.use_cache = True

    def write(folder):
        model.save_pretrained(folder, state_dict=full, max_shard_size="5GB")
        model.config.dtype = cfg.save_dtype
        model.config.save_pretrained(folder)  # the dtype the weights are saved in, not the training one
        tokenizer.save_pretrained(folder)

    common.save_files(output, write)


# ---------------------------------------------------------------------------------------
# The run: set up, step, finish


@dataclasses.dataclass
class Trainer:
    """Everything the loop touches, made once by `setup`."""

    cfg: Config
    rank: int
    world: int
    device: torch.device
    output: Path
    tokenizer: object
    examples: list
    counts: dict            # records read, truncated, dropped
    model: object
    autocast: object
    optimizer: object
    scheduler: object
    checkpoints: object
    total: int              # optimizer steps of the run
    accumulation: int
    compute_dtype: str
    counters: dict          # step, epoch, index, tokens, world size, data digest: in every checkpoint
    loss: object = None     # batch -> (summed cross-entropy, router's auxiliary loss or None) (training_loss)
    router: object = None   # loss.RouterLoss of a mixture of experts, else None
    flat: bool = False      # micro-batches flattened padding-free (FlashAttention's varlen kernel)
    guard: object = None    # speed.CompileGuard: compile errors in the first steps continue eagerly
    speed: dict = dataclasses.field(default_factory=dict)  # the speed paths taken, for the manifest
    metrics_log: object = None
    progress: object = None
    start: int = 0
    recent: list = dataclasses.field(default_factory=list)
    tokens_this_run: int = 0
    started: float = dataclasses.field(default_factory=time.time)

    def parts(self) -> tuple[dict, dict]:
        from llamantino.train.checkpoint import RNG

        return ({"sharded": ShardedState(self.model, self.optimizer), "scheduler": self.scheduler,
                 "trainer": self.counters}, {"rng": RNG})


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict | None:
    from llamantino.core import distributed
    from llamantino.core.manifest import prepare_output, read_manifest
    from llamantino.train import common

    rank, world, device = distributed.init_distributed()
    if rank != 0:  # one rank reports
        from transformers.utils import logging as hf_logging

        log.setLevel(logging.WARNING)
        hf_logging.disable_progress_bar()
    output = Path(cfg.output)
    accumulation = _accumulation(cfg, world)
    state = distributed.on_rank0(lambda: prepare_output(output, KIND, cfg, overwrite=overwrite, resume=resume))
    if state == "complete":
        metrics = read_manifest(output)["metrics"] if rank == 0 else {}
        return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics} if rank == 0 else None
    t = setup(cfg, accumulation, resume_from=state == "resume", rank=rank, world=world, device=device)
    stop = common.StopRequest()
    for step in range(t.start, t.total):
        train_step(t, step)
        done = step + 1
        want_stop = stop.agreed(device) or 0 < cfg.stop_after_steps <= done - t.start
        if done < t.total and (want_stop or (cfg.save_steps and done % cfg.save_steps == 0)):
            save_checkpoint(t)
        if want_stop and done < t.total:
            return stopped(t)
    return finish(t)


def stopped(t: Trainer) -> dict:
    t.progress.close()
    t.metrics_log.close()
    step = t.counters["step"]
    if t.rank == 0:
        log.info("stopped at step %d with a checkpoint; continue with --resume", step)
    # On every rank: each process of the job exits with the stopped status (runner.STOPPED).
    return {"status": f"stopped at step {step}", "headline": {"step": step}, "metrics": {"step": step}}


def _accumulation(cfg: Config, world: int) -> int:
    from llamantino.train.settings import accumulation

    return accumulation(cfg, world)


def setup(cfg: Config, accumulation: int, *, resume_from: bool, rank: int, world: int, device) -> Trainer:
    """Examples, model, optimizer, schedule; everything that can fail on bad input fails
    here, on every rank alike, before the folder is claimed or anything trained."""
    from llamantino.core import distributed
    from llamantino.core.manifest import start_run
    from llamantino.models.modeling import check_max_length, load_config, load_tokenizer
    from llamantino.train import common, speed
    from llamantino.train.checkpoint import Checkpoints

    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    config = load_config(cfg.model)
    check_max_length(config, cfg.max_length, cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    examples, counts = load_examples(cfg, tokenizer)
    per_epoch = len(examples) // cfg.effective_batch_size
    if per_epoch == 0:
        raise LlamantinoError(f"{', '.join(cfg.data)}: {len(examples)} usable examples, fewer than one "
                              f"effective batch of {cfg.effective_batch_size}")
    total = cfg.max_steps or cfg.epochs * per_epoch
    compute_dtype = mixed_precision_dtype(cfg.compute_dtype, device)
    check_memory(cfg, config, device, world)
    if not resume_from:  # the folder is claimed once the input is known good
        distributed.on_rank0(lambda: start_run(cfg.output, KIND, cfg))
    common.seed_all(cfg.seed)
    paths = speed.resolve(cfg, device, config.model_type, compute_dtype)
    model, autocast = load_model(cfg, config, rank=rank, world=world, device=device, compute_dtype=compute_dtype,
                                 paths=paths)
    loss, loss_name = training_loss(model, autocast, cfg, world, paths.fused_loss)
    model.train()
    optimizer, _ = common.make_optimizer(model.parameters(), cfg.optimizer, cfg.learning_rate,
                                           cfg.weight_decay, device)
    fused_adamw = cfg.fused_optimizer == "on" or (cfg.fused_optimizer == "auto" and device.type == "cuda")
    if fused_adamw:
        optimizer = common.fuse_adamw(optimizer)
    scheduler = common.make_scheduler(optimizer, cfg.lr_scheduler, cfg.warmup_ratio, total)
    digest = data_digest(examples)
    t = Trainer(cfg=cfg, rank=rank, world=world, device=device, output=Path(cfg.output), tokenizer=tokenizer,
                examples=examples, counts=counts, model=model, autocast=autocast, optimizer=optimizer,
                scheduler=scheduler, checkpoints=Checkpoints(cfg.output, rank=rank, world=world,
                                                             keep=cfg.save_total_limit),
                total=total, accumulation=accumulation, compute_dtype=compute_dtype,
                counters={"step": 0, "epoch": 0, "index": 0, "tokens_seen": 0, "trained_tokens_seen": 0,
                          "world_size": world, "examples": len(examples), "data_digest": digest},
                loss=loss, router=loss.keywords["router"], speed={"attention": model.config._attn_implementation, **paths.settings(),
                                  "fused_loss": loss_name, "fused_optimizer": fused_adamw},
                flat=padding_free(model),
                guard=speed.CompileGuard(paths.compile == "blocks"))
    found = t.checkpoints.latest() if resume_from else None
    if found:
        shared, own = t.parts()
        t.checkpoints.load(found[1], shared, own)
        if t.counters["data_digest"] != digest:
            raise LlamantinoError(f"{found[1]}: the data differ from those this checkpoint was trained on "
                                  f"({t.counters['examples']} examples then, {len(examples)} now)")
        t.counters["world_size"] = world
        if isinstance(optimizer, torch.optim.AdamW):  # the checkpoint's groups say how it ran; this run decides
            for group in optimizer.param_groups:
                group.update(fused=fused_adamw or None, foreach=None)
        log.info("resuming from %s (step %d of %d)", found[1], t.counters["step"], total)
    t.start = t.counters["step"]
    local, n_params = local_numel(model)
    log.info("instruct: %d examples (%d truncated, %d dropped), %.1fM parameters (%.1fM on each of %d ranks), "
             "%d steps of %d examples (batch %d x %d ranks x %d accumulation), %s, compute %s",
             len(examples), counts["truncated"], counts["dropped_no_response"], n_params / 1e6, local / 1e6, world,
             total, cfg.effective_batch_size, cfg.batch_size, world, accumulation, device, compute_dtype)
    log.info("speed paths: attention %s, loss %s, fused AdamW %s, %s", t.speed["attention"], t.speed["fused_loss"],
             "on" if fused_adamw else "off", speed.describe(paths))
    if t.router is not None:
        log.info("mixture of experts: the router's load-balancing loss x %g is added to the loss (column "
                 "router_aux_loss)", t.router.coef)
    t.metrics_log = common.MetricsLog(cfg.output, resume_step=t.start, enabled=rank == 0,
                                      extra_fields=("router_aux_loss",) if t.router is not None else ())
    t.progress = common.Progress(total, initial=t.start, enabled=rank == 0, desc=KIND)
    return t


def train_step(t: Trainer, step: int) -> None:
    """One optimizer step on the global batch of `step`, this rank's micro-batches of it."""
    import torch

    from llamantino.core import distributed
    from llamantino.train import common

    cfg = t.cfg
    epoch, index, ids = global_batch(step, len(t.examples), cfg.effective_batch_size, cfg.seed)
    # Every rank holds all examples, so it knows the global batch's token counts without talking.
    n_trained = sum(trained_tokens(t.examples[i]) for i in ids)
    n_tokens = sum(len(t.examples[i].input_ids) for i in ids)
    # With FlashAttention the micro-batches go padding-free, boundaries computed on the host.
    flat_length = cfg.max_length if t.flat else 0
    batches = [collate([t.examples[i] for i in chunk], t.tokenizer.pad_token_id, t.device, flat_length=flat_length)
               for chunk in micro_batches(ids, t.examples, cfg.batch_size, t.world, t.rank)]
    rng = common.rng_state() if t.guard is not None and t.guard.left else None

    # The router's loss is a mean over its micro-batch's tokens: the global batch's is the mean over
    # all its micro-batches (one micro-batch: the model's own loss exactly).
    n_micro = -(-len(ids) // cfg.batch_size)
    aux_sum = torch.zeros((), device=t.device)

    def forward_backward():
        loss_sum = torch.zeros((), device=t.device)
        aux_sum.zero_()
        for batch in batches:
            ce, aux = t.loss(batch)
            # FSDP averages gradients over ranks: x world makes it the sum over the global batch.
            objective = ce * t.world / n_trained
            if aux is not None:
                objective = objective + t.router.coef * aux * t.world / n_micro
                aux_sum.add_(aux.detach())
            objective.backward()
            loss_sum += ce.detach()
        return loss_sum

    def undo() -> None:  # what a failed compiled step left behind
        t.optimizer.zero_grad(set_to_none=True)
        common.set_rng_state(rng)

    loss_sum = t.guard.run(forward_backward, undo) if t.guard is not None else forward_backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.max_grad_norm or float("inf"))
    lr = t.optimizer.param_groups[0]["lr"]  # the rate this step uses
    t.optimizer.step()
    t.scheduler.step()
    t.optimizer.zero_grad(set_to_none=True)

    loss = distributed.all_reduce_sum(loss_sum.item(), t.device) / n_trained
    extra = {}
    if t.router is not None:
        extra["router_aux_loss"] = distributed.all_reduce_sum(aux_sum.item(), t.device) / n_micro
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    t.recent = (t.recent + [loss])[-10:]
    t.tokens_this_run += n_tokens
    c = t.counters
    c.update(step=step + 1, epoch=epoch, index=index + cfg.effective_batch_size,
             tokens_seen=c["tokens_seen"] + n_tokens, trained_tokens_seen=c["trained_tokens_seen"] + n_trained)
    rate = t.progress.update(n_tokens, loss, lr)
    if (step + 1) % cfg.logging_steps == 0 or step + 1 == t.total:
        t.metrics_log.log(step + 1, loss=loss, lr=lr, grad_norm=grad_norm, tokens=c["tokens_seen"],
                          tokens_per_s=rate, elapsed_s=round(time.time() - t.started, 1), **extra)


def finish(t: Trainer) -> dict | None:
    """Gather and save the model (rank 0), the loss plot and the manifest (last)."""
    from llamantino.core import distributed
    from llamantino.core.manifest import describe_inputs, write_manifest
    from llamantino.train import common

    seconds = time.time() - t.started
    t.progress.close()
    t.metrics_log.close()
    local, _ = local_numel(t.model)
    ranks = distributed.all_gather_object({"rank": t.rank, "parameters": local,
                                        "state_bytes": state_bytes(t.model, t.optimizer),
                                        "peak_memory_bytes": common.peak_memory_bytes(t.device)})
    save_model(t.output, t.model, t.tokenizer, t.cfg, rank=t.rank)
    if t.rank != 0:
        distributed.barrier()
        return None
    common.plot_loss(t.output, title=f"instruct: {Path(t.cfg.model).name}")
    cfg, c = t.cfg, t.counters
    metrics = {
        "steps": t.total, "resumed_from_step": t.start,
        "epochs": round(t.total * cfg.effective_batch_size / len(t.examples), 3),
        "examples": len(t.examples), **t.counts, "tokens_seen": c["tokens_seen"],
        "trained_tokens_seen": c["trained_tokens_seen"],
        "final_loss": sum(t.recent) / len(t.recent) if t.recent else None,
        "tokens_per_s": round(t.tokens_this_run / max(seconds, 1e-9), 1), "train_seconds": round(seconds, 1),
        "world_size": t.world, "batch_size": cfg.batch_size, "gradient_accumulation": t.accumulation,
        "effective_batch_size": cfg.effective_batch_size,
        "warmup_steps": common.warmup_steps(cfg.warmup_ratio, t.total),
        "compute_dtype": t.compute_dtype, "device": t.device.type, "fsdp": t.world > 1, **t.speed,
        "parameters": common.parameter_record(t.model), "ranks": ranks,
    }
    if t.guard is not None and t.guard.fell_back:  # compiled blocks failed at first: the run went on eagerly
        metrics.update(compile="none", compile_error=t.guard.fell_back)
    write_manifest(t.output, KIND, cfg, inputs=describe_inputs([cfg.model, *cfg.data]), metrics=metrics)
    distributed.barrier()
    return {"status": "done", "headline": _headline(metrics), "metrics": metrics}


def _headline(metrics: dict) -> dict:
    return {"loss": metrics.get("final_loss"), "steps": metrics.get("steps"),
            "tok_s": metrics.get("tokens_per_s"), "ranks": metrics.get("world_size")}
