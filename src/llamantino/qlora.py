"""The QLoRA training loop shared by language adaptation (`adapt`) and chat fine-tuning (`sft`).

The base model is loaded in 4-bit NF4 with double quantisation; LoRA adapters go on every
linear layer of the decoder blocks; rows come packed from a `RowSource` (documents for
`adapt`, chat examples for `sft`). Under torchrun each rank reads its own share of the
data and DDP averages the adapter gradients, as in the paper (3 nodes x 4 GPUs).

A checkpoint holds the adapter, optimizer, scheduler, RNG states and the data position
of every rank; a resumed run continues with the next unseen document and ends with the
same adapter as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path

import torch
import torch.utils.checkpoint

from llamantino import training
from llamantino.config import setting
from llamantino.errors import LlamantinoError
from llamantino.fileio import atomic_write_json
from llamantino.manifest import describe_inputs, prepare_output, read_manifest, start_run, write_manifest

log = logging.getLogger(__name__)


@dataclasses.dataclass
class QLoraSettings:
    """Settings of the paper's QLoRA recipe (defaults: SPEC section 1, adaptation row)."""

    model: str = setting("", "base model: local folder or hub name", path_input=True)
    tokenizer: str = setting("", "tokenizer folder or hub name (default: the model's)", path_input=True)
    output: str = setting("", "run folder: adapter, tokenizer, checkpoints, logs, manifest.json")
    max_length: int = setting(1024, "tokens per packed sequence")
    batch_size: int = setting(8, "sequences per device per optimizer step")
    gradient_accumulation: int = setting(1, "micro-batches per optimizer step")
    max_steps: int = setting(25000, "optimizer steps")
    learning_rate: float = setting(2e-4, "peak learning rate")
    lr_scheduler: str = setting("linear", "learning-rate decay after warmup", choices=training.SCHEDULES)
    warmup_ratio: float = setting(0.03, "share of steps spent warming up")
    weight_decay: float = setting(0.001, "AdamW weight decay")
    max_grad_norm: float = setting(0.3, "gradient clipping norm")
    optimizer: str = setting("paged_adamw_32bit", "optimizer (paged variants need a CUDA device)",
                             choices=training.OPTIMIZERS)
    lora_r: int = setting(64, "LoRA rank")
    lora_alpha: int = setting(16, "LoRA alpha")
    lora_dropout: float = setting(0.1, "LoRA dropout")
    lora_targets: list[str] = setting([], "LoRA target layers (default: every linear layer of the decoder blocks)")
    load_in_4bit: bool = setting(True, "quantize the frozen base to 4-bit NF4 (QLoRA)")
    double_quant: bool = setting(True, "quantize the quantization constants too")
    compute_dtype: str = setting("auto", "4-bit compute dtype: float16 (the paper), bfloat16, float32, or "
                                 "auto = float16 on GPU, float32 on CPU", choices=("auto", "float16", "bfloat16", "float32"))
    gradient_checkpointing: bool = setting(True, "recompute activations in the backward pass (less memory)")
    loss_chunk_tokens: int = setting(1024, "compute the output layer and loss on target positions only, this "
                                     "many at a time, never holding all logits (0: the model's own loss)")
    attn_implementation: str = setting("sdpa", "attention kernel", choices=("sdpa", "eager", "flash_attention_2",
                                                                           "flex_attention"))
    seed: int = setting(42, "random seed")
    save_steps: int = setting(500, "checkpoint every N steps", fingerprint=False)
    save_total_limit: int = setting(2, "checkpoints kept", fingerprint=False)
    logging_steps: int = setting(10, "log every N steps", fingerprint=False)
    stop_after_steps: int = setting(0, "stop after N steps in this invocation, with a checkpoint (for job time "
                                    "limits); continue with --resume", fingerprint=False)
    threads: int = setting(0, "torch CPU threads (0: torch's default)", fingerprint=False)

    def check_common(self, source):
        if not self.model:
            raise LlamantinoError(f"{source}: setting 'model' is required")
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        for name in ("max_length", "batch_size", "gradient_accumulation", "max_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise LlamantinoError(f"{source}: setting '{name}' must be at least 1")


def resolve_compute_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return "float16" if device.type == "cuda" else "float32"


class RowSource:
    """What a training stage feeds the loop: packed rows, with a resumable position."""

    def next_row(self):  # -> packing.Row | None (None: data exhausted for good)
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_for_training(model, gradient_checkpointing: bool, compute_dtype: str) -> None:
    """Freeze the base. With float16 compute (the paper's), keep the norm weights in float32
    for stability, as QLoRA does. Unlike peft's prepare_model_for_kbit_training, do not
    upcast the frozen embeddings and output layer, and with bfloat16 do not upcast the
    norms either: an upcast norm turns the whole residual stream into float32, doubling
    the activations kept for the backward pass."""
    for param in model.parameters():
        param.requires_grad_(False)
    if compute_dtype == "float16":
        for param in model.parameters():
            if param.ndim == 1 and param.dtype == torch.float16:
                param.data = param.data.float()
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_peft_model(cfg: QLoraSettings, device, compute_dtype: str, *, base_path: str | None = None):
    """4-bit base (or full precision when load_in_4bit is off) + fresh LoRA adapters."""
    from peft import LoraConfig, get_peft_model

    from llamantino.modeling import load_causal_lm, lora_targets

    model = load_causal_lm(base_path or cfg.model, dtype=compute_dtype, load_in_4bit=cfg.load_in_4bit,
                           compute_dtype=compute_dtype, device=str(device),
                           attn_implementation=cfg.attn_implementation)
    prepare_for_training(model, cfg.gradient_checkpointing, compute_dtype)
    targets = cfg.lora_targets or lora_targets(model)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    return model, targets


class CausalLMLoss(torch.nn.Module):
    """Token-mean next-token loss of a (PEFT) causal LM, as one module so DDP sees the forward.

    With `chunk` > 0 the output layer runs only on positions that have a target, `chunk`
    positions at a time, each chunk recomputed in the backward pass: the full
    (batch x length x vocabulary) logits never exist, which saves about 2 GB per 8x1024
    batch at a 32k vocabulary and skips the prompt positions of chat data.
    """

    def __init__(self, model, chunk: int):
        super().__init__()
        self.model, self.chunk = model, chunk

    def forward(self, input_ids, position_ids, labels, num_items):
        if not self.chunk:
            return self.model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False,
                              num_items_in_batch=num_items).loss
        causal_lm = self.model.get_base_model()
        hidden = causal_lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        hidden, targets = hidden[:, :-1][keep], targets[keep]
        weight = causal_lm.get_output_embeddings().weight
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, targets.numel(), self.chunk):
            end = start + self.chunk
            total = total + torch.utils.checkpoint.checkpoint(
                _cross_entropy_sum, hidden[start:end], weight, targets[start:end], use_reentrant=False)
        return total / num_items


def _cross_entropy_sum(hidden, weight, targets):
    logits = torch.nn.functional.linear(hidden, weight).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")


def _save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, source: RowSource, rank: int,
                     world: int, extra: dict) -> None:
    """Write <run>/checkpoints/step-N: every rank its RNG and data state, rank 0 the rest;
    the folder appears under its final name only when complete."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = training.checkpoint_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:
        tmp.mkdir(parents=True, exist_ok=True)
    training.barrier()
    torch.save(training.rng_state(), tmp / f"rng-rank{rank}.pt")
    atomic_write_json(tmp / f"data-rank{rank}.json", source.state_dict())
    if rank == 0:
        state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        save_file(state, str(tmp / "adapter_model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "world_size": world, **extra})
    training.barrier()
    if rank == 0:
        os.replace(tmp, final)
    training.barrier()


def _load_checkpoint(path: Path, model, optimizer, scheduler, source: RowSource, rank: int, world: int) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "trainer_state.json").read_text())
    if state["world_size"] != world:
        raise LlamantinoError(f"{path}: made with {state['world_size']} processes, this run has {world}; "
                              "resume with the same number of processes")
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    source.load_state_dict(json.loads((path / f"data-rank{rank}.json").read_text()))
    training.set_rng_state(torch.load(path / f"rng-rank{rank}.pt", weights_only=False))
    return state


class _StopRequest:
    """SIGTERM (what SLURM sends before a time limit) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not in the main thread
            pass

    def _handler(self, signum, frame):
        self.requested = True


def train(kind: str, cfg: QLoraSettings, make_source, *, overwrite: bool, resume: bool, tokenizer,
          make_base=None, inputs=(), prepare_tokenizer=None, extra_metrics=None) -> dict:
    """Run a QLoRA stage from start (or its latest checkpoint) to `max_steps`.

    `make_source(rank, world)` returns the RowSource of this rank. `make_base()`, if given,
    runs on rank 0 once the run folder is claimed and returns the folder the 4-bit base is
    loaded from instead of `cfg.model` (sft merges a language adapter first). Returns the
    stage summary.
    """
    from torch.nn.parallel import DistributedDataParallel

    from llamantino.packing import collate

    rank, world, device = training.init_distributed()
    run_dir = Path(cfg.output)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Decide fresh / resume / done before anything is written; rank 0 owns the folder.
    # A refusal on rank 0 reaches every rank (none is left waiting in a collective).
    state = training.on_rank0(lambda: prepare_output(run_dir, kind, cfg, overwrite=overwrite, resume=resume))
    if state == "complete":
        metrics = read_manifest(run_dir)["metrics"]
        return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics}
    checkpoint = training.latest_checkpoint(run_dir) if state == "resume" else None
    # Data first: a corpus that yields nothing fails before anything is written.
    source = make_source(rank, world)
    if rank == 0:
        start_run(run_dir, kind, cfg)
    base_path = _broadcast_object(make_base() if (make_base and rank == 0) else None, rank, world)
    compute_dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    training.seed_all(cfg.seed)
    model, targets = build_peft_model(cfg, device, compute_dtype, base_path=base_path)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer, optimizer_used = training.make_optimizer(model.parameters(), cfg.optimizer, cfg.learning_rate,
                                                        cfg.weight_decay, device)
    warmup = training.warmup_steps(cfg.warmup_ratio, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, training.lr_lambda(cfg.lr_scheduler, warmup,
                                                                                cfg.max_steps))
    step, tokens_seen, real_seen, positions_seen = 0, 0, 0, 0
    if checkpoint is not None:
        st = _load_checkpoint(checkpoint[1], model, optimizer, scheduler, source, rank, world)
        step = st["step"]
        tokens_seen, real_seen, positions_seen = st["tokens_seen"], st["real_seen"], st["positions_seen"]
        log.info("resumed from %s (step %d)", checkpoint[1], step)
    if prepare_tokenizer is not None and rank == 0:
        prepare_tokenizer(tokenizer)
    loss_module = CausalLMLoss(model, cfg.loss_chunk_tokens)
    ddp = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None,
                                  init_sync=False) if world > 1 else loss_module
    use_autocast = device.type == "cuda" and compute_dtype in ("float16", "bfloat16")
    scaler = torch.amp.GradScaler("cuda", enabled=use_autocast and compute_dtype == "float16")
    metrics_log = training.MetricsLog(run_dir, resume_step=step, enabled=rank == 0)
    progress = training.Progress(cfg.max_steps, initial=step, enabled=rank == 0, desc=kind)
    stop = _StopRequest()
    pad_id = tokenizer.pad_token_id
    started, steps_this_run, real_this_run, last_loss = time.time(), 0, 0, float("nan")
    losses: list[float] = []
    data_digest, rows_this_run = hashlib.sha256(), 0
    model.train()
    exhausted = False
    while step < cfg.max_steps:
        micro = []
        for _ in range(cfg.gradient_accumulation):
            rows = []
            for _ in range(cfg.batch_size):
                row = source.next_row()
                if row is None:
                    break
                rows.append(row)
            if not rows:
                exhausted = True
                break
            micro.append(collate(rows, cfg.max_length, pad_id))
        if exhausted:
            break
        for b in micro:
            data_digest.update(b.input_ids.numpy().tobytes())
            rows_this_run += b.input_ids.shape[0]
        n_targets = sum(b.target_tokens for b in micro)
        loss_sum = 0.0
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = ddp.no_sync() if (world > 1 and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(device.type, dtype=getattr(torch, compute_dtype), enabled=use_autocast):
                loss = ddp(batch.input_ids.to(device), batch.position_ids.to(device), batch.labels.to(device),
                           torch.tensor(max(1, n_targets), device=device))
            scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step += 1
        steps_this_run += 1
        # loss_sum is the token-mean loss of this rank's batch; average over ranks.
        last_loss = training.all_reduce_sum(loss_sum, device) / world
        losses.append(last_loss)
        batch_tokens = int(training.all_reduce_sum(sum(b.positions for b in micro), device))
        batch_real = int(training.all_reduce_sum(sum(b.real_tokens for b in micro), device))
        tokens_seen += batch_tokens
        real_seen += batch_real
        real_this_run += batch_real
        positions_seen += batch_tokens
        rate = progress.update(batch_real, last_loss, lr)
        if step % cfg.logging_steps == 0 or step == cfg.max_steps or step == 1:
            metrics_log.log(step, loss=last_loss, lr=lr, grad_norm=grad_norm, tokens=tokens_seen,
                            tokens_per_s=rate, elapsed_s=round(time.time() - started, 2))
        # Every rank must stop at the same step (a SIGTERM reaches them at different times).
        want_stop = training.all_reduce_sum(float(stop.requested), device) > 0 or (
            cfg.stop_after_steps and steps_this_run >= cfg.stop_after_steps)
        if (step % cfg.save_steps == 0 or want_stop) and step < cfg.max_steps:
            _save_checkpoint(run_dir, step, model, optimizer, scheduler, source, rank, world,
                             {"tokens_seen": tokens_seen, "real_seen": real_seen, "positions_seen": positions_seen})
            if rank == 0:
                training.prune_checkpoints(run_dir, cfg.save_total_limit)
        if want_stop and step < cfg.max_steps:
            progress.close()
            metrics_log.close()
            if rank == 0:
                log.info("stopped at step %d with a checkpoint; continue with --resume", step)
            return {"status": f"stopped at step {step}", "headline": {"step": step}, "metrics": {"step": step}}
    progress.close()
    metrics_log.close()
    if exhausted:
        raise LlamantinoError(f"the data ran out at step {step} of {cfg.max_steps}: it yields no more rows")
    elapsed = time.time() - started
    metrics = {
        "steps": step,
        "tokens_seen": tokens_seen,
        "real_token_share": real_seen / max(1, positions_seen),
        "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])) if losses else float("nan"),
        "tokens_per_s": real_this_run / max(1e-9, elapsed),
        "train_seconds": round(elapsed, 1),
        "world_size": world,
        "trainable_parameters": trainable,
        "parameters": total,
        "lora_targets": targets,
        "optimizer": optimizer_used,
        "compute_dtype": compute_dtype,
        "device": device.type,
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        **(extra_metrics(source) if extra_metrics else {}),
    }
    # Per-rank record: what this rank trained on and what it ended with (identical
    # adapters across ranks are what DDP guarantees; different data is what sharding does).
    (run_dir / "ranks").mkdir(exist_ok=True)
    atomic_write_json(run_dir / "ranks" / f"rank{rank}.json", {
        "rank": rank, "world_size": world, "rows": rows_this_run, "data_sha256": data_digest.hexdigest(),
        "adapter_sha256": _adapter_digest(model)})
    training.barrier()
    if rank == 0:
        model.save_pretrained(run_dir)
        tokenizer.save_pretrained(run_dir)
        training.plot_loss(run_dir, title=f"{kind}: {Path(cfg.model).name}")
        write_manifest(run_dir, kind, cfg, inputs=describe_inputs(inputs), metrics=metrics)
    training.barrier()
    return {"status": "done", "headline": _headline(metrics), "metrics": metrics}


def _adapter_digest(model) -> str:
    from peft import get_peft_model_state_dict

    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _headline(m: dict) -> dict:
    out = {"steps": m.get("steps"), "final_loss": m.get("final_loss")}
    if m.get("real_token_share") is not None:
        out["real_tokens"] = f"{100 * m['real_token_share']:.1f}%"
    return out


def _broadcast_object(obj, rank: int, world: int):
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
