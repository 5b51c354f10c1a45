"""Full-parameter instruction tuning with PyTorch FSDP2 (SPEC section 1, Table 2).

    torchrun --nproc_per_node 8 -m llamantino instruct --model M --data dolly-it.jsonl --output OUT
    llamantino instruct --model M --data dolly-it.jsonl --output OUT          # one process

Records (Dolly, Alpaca or prepared EVALITA) are rendered with the Italian Alpaca prompt
and trained on the response and its EOS only. Under torchrun every decoder layer, then
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
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from array import array
from pathlib import Path
from typing import TYPE_CHECKING

from llamantino.config import setting
from llamantino.errors import LlamantinoError
from llamantino.modeling import DTYPES
from llamantino.records import INSTRUCTION_FORMATS
from llamantino.supervised import IGNORE, Example

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch loads only when a run starts (fast --help and config show)
    import torch

KIND = "instruct"
MIXED_PRECISION = ("auto", "bf16", "no")
LR_SCHEDULES = ("linear", "cosine", "constant")  # training.SCHEDULES; torch loads only when a run starts


@dataclasses.dataclass
class Config:
    model: str = setting("", "model to fine-tune (local folder or hub name), e.g. the merged language-adapted model", path_input=True)
    data: list[str] = setting([], "instruction data: JSON-lines files or folders (Dolly, Alpaca, prepared EVALITA)", path_input=True)
    format: str = setting("auto", "data format; auto: detected from each file's fields",
                          choices=("auto",) + INSTRUCTION_FORMATS)
    output: str = setting("", "output folder: the fine-tuned model, checkpoints, metrics, manifest")
    max_length: int = setting(1024, "tokens per example; longer examples are truncated")
    batch_size: int = setting(16, "examples per device in one micro-batch")
    effective_batch_size: int = setting(128, "examples per optimizer step over all devices; gradient "
                                             "accumulation = this / (batch_size x processes)")
    learning_rate: float = setting(2e-5, "peak learning rate")
    epochs: int = setting(3, "passes over the data (the last incomplete effective batch of each is left out)")
    max_steps: int = setting(0, "optimizer steps; 0: from epochs")
    weight_decay: float = setting(0.0, "AdamW weight decay (applied to every parameter)")
    warmup_ratio: float = setting(0.03, "fraction of the steps with a linear warmup")
    lr_scheduler: str = setting("cosine", "learning-rate decay after warmup", choices=LR_SCHEDULES)
    max_grad_norm: float = setting(1.0, "gradient clipping by global norm (0: off)")
    seed: int = setting(42, "seed of the data order and of torch")
    mixed_precision: str = setting("auto", "bf16: bfloat16 compute on float32 master weights; no: float32; "
                                           "auto: bf16 on GPU, no on CPU", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = setting(True, "recompute each decoder layer in the backward pass "
                                                   "(less memory, about a third more compute)", fingerprint=False)
    save_dtype: str = setting("float32", "dtype of the saved weights", choices=DTYPES)
    save_steps: int = setting(500, "write a resumable checkpoint every N steps (0: never)", fingerprint=False)
    save_total_limit: int = setting(2, "how many of the latest checkpoints to keep", fingerprint=False)
    logging_steps: int = setting(10, "write metrics every N steps", fingerprint=False)

    def validate(self, source):
        for name in ("model", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")
        if not self.data:
            raise LlamantinoError(f"{source}: setting 'data' is required (instruction JSON-lines files)")
        for name in ("max_length", "batch_size", "effective_batch_size", "save_total_limit", "logging_steps"):
            if getattr(self, name) < 1:
                raise LlamantinoError(f"{source}: setting '{name}' must be at least 1")
        if self.effective_batch_size % self.batch_size:
            raise LlamantinoError(f"{source}: effective_batch_size {self.effective_batch_size} is not a multiple "
                                  f"of batch_size {self.batch_size}")
        if self.max_steps < 0 or self.epochs < 0 or (self.max_steps == 0 and self.epochs == 0):
            raise LlamantinoError(f"{source}: give a positive 'epochs' or 'max_steps'")
        if self.learning_rate <= 0:
            raise LlamantinoError(f"{source}: setting 'learning_rate' must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise LlamantinoError(f"{source}: setting 'warmup_ratio' must be in [0, 1)")


# ---------------------------------------------------------------------------------------
# Data: records -> Italian Alpaca prompt -> token ids with the loss on the response only


def load_examples(cfg: Config, tokenizer) -> tuple[list[Example], dict]:
    from llamantino.records import iter_records
    from llamantino.supervised import encode, render_record

    examples, counts = [], {"records": 0, "truncated": 0, "dropped_no_response": 0}
    for where, fmt, record in iter_records(cfg.data, None if cfg.format == "auto" else cfg.format):
        counts["records"] += 1
        ex = encode(tokenizer, render_record(record, fmt, "alpaca-it", where, tokenizer), cfg.max_length)
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


def collate(batch: list[Example], pad_id: int, device) -> dict:
    """Right-padded to the longest example of the micro-batch, with an attention mask."""
    import torch

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


def resolve_mixed_precision(setting_value: str, device: torch.device) -> str:
    import torch

    if setting_value == "auto":
        return "bf16" if device.type == "cuda" else "no"
    if setting_value == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LlamantinoError("mixed_precision bf16: this GPU has no bfloat16 support; use 'no'")
    return setting_value


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks, found by the class names transformers keeps whole on one device."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise LlamantinoError(f"{type(model).__name__}: no decoder layers found to shard "
                              f"(_no_split_modules: {sorted(names) or 'none'})")
    return layers


def prepare_model(model, *, world: int, device: torch.device, mixed_precision: str,
                  gradient_checkpointing: bool):
    """Shard with FSDP2 on several processes (per decoder layer, then the root); move to
    `device` on one. Returns the model and the autocast context of the forward pass."""
    import torch

    model.config.use_cache = False
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}  # the non-reentrant form composes with FSDP2
        if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.2x
            model.activation_checkpointing_enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    bf16 = mixed_precision == "bf16"
    if world == 1:
        # No FSDP to cast the weights: autocast gives bf16 compute on float32 weights (as torchtitan).
        model.to(device)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        return model, autocast
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    # Weights are gathered in bf16 for compute; gradients are reduced and kept in float32.
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # The root (embeddings, final norm, LM head) is needed again at once by the backward.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model, contextlib.nullcontext


def load_model(cfg: Config, config, *, rank: int, world: int, device: torch.device, mixed_precision: str):
    """The model in float32 (the master weights), ready to train: (model, autocast).

    With several ranks only rank 0 reads the checkpoint; the others build the model on the
    meta device (no memory), shard it, and receive their shards from rank 0, so a node's
    host memory holds one copy of the weights, not one per process.
    """
    import torch

    from llamantino.modeling import load_causal_lm

    if world == 1:
        return prepare_model(load_causal_lm(cfg.model, dtype="float32", device="cpu"), world=1, device=device,
                             mixed_precision=mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoModelForCausalLM

    source = load_causal_lm(cfg.model, dtype="float32", device="cpu") if rank == 0 else None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model, autocast = prepare_model(model, world=world, device=device, mixed_precision=mixed_precision,
                                    gradient_checkpointing=cfg.gradient_checkpointing)
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


def summed_loss(model, batch: dict, autocast) -> torch.Tensor:
    """Cross-entropy summed over the response tokens of a micro-batch (float32)."""
    import torch

    with autocast():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                             ignore_index=IGNORE, reduction="sum")


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
# the data position and every rank's RNG state.


def _distributed() -> bool:
    import torch

    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def _one_process_is_intended():
    # torch.distributed.checkpoint warns at every save and load without a process group.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_checkpoint(output, step: int, model, optimizer, scheduler, trainer: dict, *, rank: int, keep: int) -> Path:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from llamantino import training

    final = training.checkpoint_path(output, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    training.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _one_process_is_intended():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    torch.save(training.rng_state(), tmp / f"rng-rank{rank}.pt")
    if rank == 0:
        from llamantino.fileio import atomic_write_json

        atomic_write_json(tmp / "trainer.json", {**trainer, "scheduler": scheduler.state_dict()})
    training.barrier()  # every rank's files are in place before the folder gets its final name
    if rank == 0:
        os.replace(tmp, final)
        training.prune_checkpoints(output, keep)
    training.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, *, rank: int) -> dict:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from llamantino import training

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _one_process_is_intended():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    scheduler.load_state_dict(trainer.pop("scheduler"))
    rng = path / f"rng-rank{rank}.pt"
    if rng.is_file():
        training.set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("%s: no RNG state for rank %d (saved by %d ranks); it keeps the run's seed",
                    path, rank, trainer["world_size"])
    return trainer


def save_model(output, model, tokenizer, cfg: Config, *, rank: int) -> None:
    """Gather the full weights to rank 0's CPU and save them as sharded safetensors that
    `from_pretrained` loads, with config, generation config and tokenizer."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    dtype = getattr(torch, cfg.save_dtype)
    full = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
    model.config.use_cache = True
    tmp = Path(output) / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=full, max_shard_size="5GB")
    model.config.dtype = cfg.save_dtype
    model.config.save_pretrained(tmp)  # the dtype the weights are saved in, not the training one
    tokenizer.save_pretrained(tmp)
    for item in tmp.iterdir():
        os.replace(item, Path(output) / item.name)
    tmp.rmdir()


# ---------------------------------------------------------------------------------------
# The run


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict | None:
    import torch

    from llamantino import training
    from llamantino.manifest import describe_inputs, prepare_output, read_manifest, start_run, write_manifest
    from llamantino.modeling import check_max_length, load_config, load_tokenizer

    rank, world, device = training.init_distributed()
    if rank != 0:  # one rank reports
        from transformers.utils import logging as hf_logging

        log.setLevel(logging.WARNING)
        hf_logging.disable_progress_bar()
    accumulation = training.grad_accumulation(cfg.effective_batch_size, cfg.batch_size, world)
    output = Path(cfg.output)

    state = training.on_rank0(lambda: prepare_output(output, KIND, cfg, overwrite=overwrite, resume=resume))
    if state == "complete":
        metrics = read_manifest(output)["metrics"] if rank == 0 else {}
        return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics} if rank == 0 else None

    # Everything that can fail on bad input fails here, on every rank alike, before training.
    config = load_config(cfg.model)
    check_max_length(config, cfg.max_length, cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    examples, counts = load_examples(cfg, tokenizer)
    per_epoch = len(examples) // cfg.effective_batch_size
    if per_epoch == 0:
        raise LlamantinoError(f"{', '.join(cfg.data)}: {len(examples)} usable examples, fewer than one "
                              f"effective batch of {cfg.effective_batch_size}")
    total = cfg.max_steps or cfg.epochs * per_epoch
    mixed_precision = resolve_mixed_precision(cfg.mixed_precision, device)
    training.on_rank0(lambda: start_run(output, KIND, cfg))  # the folder is claimed once the input is known good
    training.seed_all(cfg.seed)

    model, autocast = load_model(cfg, config, rank=rank, world=world, device=device, mixed_precision=mixed_precision)
    model.train()
    optimizer, _ = training.make_optimizer(model.parameters(), "adamw_torch", cfg.learning_rate,
                                           cfg.weight_decay, device)
    warmup = training.warmup_steps(cfg.warmup_ratio, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, training.lr_lambda(cfg.lr_scheduler, warmup, total))

    digest = data_digest(examples)
    trainer = {"step": 0, "tokens_seen": 0, "trained_tokens_seen": 0}
    found = training.latest_checkpoint(output) if state == "resume" else None
    if found:
        trainer = load_checkpoint(found[1], model, optimizer, scheduler, rank=rank)
        if trainer["data_digest"] != digest:
            raise LlamantinoError(f"{found[1]}: the data differ from those this checkpoint was trained on "
                                  f"({trainer['examples']} examples then, {len(examples)} now)")
        log.info("resuming from %s (step %d of %d)", found[1], trainer["step"], total)
    start = trainer["step"]

    local, n_params = local_numel(model)
    log.info("instruct: %d examples (%d truncated, %d dropped), %.1fM parameters (%.1fM on each of %d ranks), "
             "%d steps of %d examples (batch %d x %d ranks x %d accumulation), %s, mixed precision %s",
             len(examples), counts["truncated"], counts["dropped_no_response"], n_params / 1e6, local / 1e6, world,
             total, cfg.effective_batch_size, cfg.batch_size, world, accumulation, device, mixed_precision)
    metrics_log = training.MetricsLog(output, resume_step=start, enabled=rank == 0)
    progress = training.Progress(total, initial=start, enabled=rank == 0, desc=KIND)
    pad_id = tokenizer.pad_token_id
    recent: list[float] = []
    tokens_this_run, t0 = 0, time.time()

    for step in range(start, total):
        epoch, index, ids = global_batch(step, len(examples), cfg.effective_batch_size, cfg.seed)
        # Every rank holds all examples, so it knows the global batch's token counts without talking.
        n_trained = sum(trained_tokens(examples[i]) for i in ids)
        n_tokens = sum(len(examples[i].input_ids) for i in ids)
        loss_sum = torch.zeros((), device=device)
        for chunk in micro_batches(ids, examples, cfg.batch_size, world, rank):
            ce = summed_loss(model, collate([examples[i] for i in chunk], pad_id, device), autocast)
            # FSDP averages gradients over ranks: x world makes it the sum over the global batch.
            (ce * world / n_trained).backward()
            loss_sum += ce.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss = training.all_reduce_sum(loss_sum.item(), device) / n_trained
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        recent = (recent + [loss])[-10:]
        tokens_this_run += n_tokens
        trainer.update(step=step + 1, epoch=epoch, index=index + cfg.effective_batch_size,
                       tokens_seen=trainer["tokens_seen"] + n_tokens,
                       trained_tokens_seen=trainer["trained_tokens_seen"] + n_trained)
        rate = progress.update(n_tokens, loss, lr)
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == total:
            metrics_log.log(step + 1, loss=loss, lr=lr, grad_norm=grad_norm, tokens=trainer["tokens_seen"],
                            tokens_per_s=rate, elapsed_s=round(time.time() - t0, 1))
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < total:
            save_checkpoint(output, step + 1, model, optimizer, scheduler,
                            {**trainer, "world_size": world, "examples": len(examples), "data_digest": digest},
                            rank=rank, keep=cfg.save_total_limit)
    seconds = time.time() - t0
    progress.close()
    metrics_log.close()

    ranks = training.all_gather_object({"rank": rank, "parameters": local, "state_bytes": state_bytes(model, optimizer),
                                        "peak_memory_bytes": training.peak_memory_bytes(device)})
    save_model(output, model, tokenizer, cfg, rank=rank)
    if rank != 0:
        training.barrier()
        return None
    training.plot_loss(output, title=f"instruct: {Path(cfg.model).name}")
    metrics = {
        "steps": total, "resumed_from_step": start,
        "epochs": round(total * cfg.effective_batch_size / len(examples), 3),
        "examples": len(examples), **counts, "tokens_seen": trainer["tokens_seen"],
        "trained_tokens_seen": trainer["trained_tokens_seen"],
        "final_loss": sum(recent) / len(recent) if recent else None,
        "tokens_per_s": round(tokens_this_run / max(seconds, 1e-9), 1), "train_seconds": round(seconds, 1),
        "world_size": world, "batch_size": cfg.batch_size, "gradient_accumulation": accumulation,
        "effective_batch_size": cfg.effective_batch_size, "warmup_steps": warmup,
        "mixed_precision": mixed_precision, "device": device.type, "fsdp": world > 1,
        "parameters": n_params, "ranks": ranks,
    }
    write_manifest(output, KIND, cfg, inputs=describe_inputs([cfg.model, *cfg.data]), metrics=metrics)
    training.barrier()
    return {"status": "done", "headline": _headline(metrics), "metrics": metrics}


def _headline(metrics: dict) -> dict:
    return {"loss": metrics.get("final_loss"), "steps": metrics.get("steps"),
            "tok_s": metrics.get("tokens_per_s"), "ranks": metrics.get("world_size")}


def add_arguments(parser):
    from llamantino.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, resume=True)


def main(args) -> int:
    import torch

    from llamantino.runner import run_stage_command

    try:
        return run_stage_command(KIND, args)
    finally:
        if _distributed():
            torch.distributed.destroy_process_group()
