"""The QLoRA training loop shared by language adaptation (`adapt`) and chat fine-tuning (`sft`).

The base model is loaded in 4-bit NF4 with double quantisation; LoRA adapters go on every
linear layer of the decoder blocks; rows come packed from a `packing.RowSource` (documents
for `adapt`, chat examples for `sft`). Under torchrun each rank reads its own share of the
data and DDP averages the adapter gradients, as in the paper (3 nodes x 4 GPUs).

Three parts, as the loop in `train` shows on one screen: `setup` (model, optimizer,
schedule, data, resume), `train_step` (one optimizer step over its micro-batches) and
`finish` (save, plot, manifest). A checkpoint holds the adapter, optimizer, schedule,
counters, and every rank's RNG and data position; a resumed run continues with the next
unseen document and ends with the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from llamantino.core import distributed
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import atomic_write_json
from llamantino.core.manifest import (describe_inputs, prepare_output, read_manifest, record_outputs, start_run,
                                      write_manifest)
from llamantino.models.loss import IGNORE, loss_path, summed_target_loss
from llamantino.train import common, speed
from llamantino.train.checkpoint import RNG, Checkpoints
from llamantino.train.settings import QLoraSettings, accumulation

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The model: 4-bit base + LoRA, and its loss


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
    """4-bit base (or full precision when load_in_4bit is off) + fresh LoRA adapters on the
    language model's decoder blocks (never a vision tower's): its linear layers and, in a mixture
    of experts, the fused expert weights (PEFT `target_parameters`: each expert gets its own
    rank-`lora_r` pair). Returns (model, what carries LoRA and what trains whole)."""
    from peft import LoraConfig, get_peft_model

    from llamantino.models import moe4bit
    from llamantino.models.modeling import load_causal_lm

    model = load_causal_lm(base_path or cfg.model, dtype=compute_dtype, load_in_4bit=cfg.load_in_4bit,
                           compute_dtype=compute_dtype, device=str(device),
                           attn_implementation=cfg.attn_implementation, quant_type=cfg.quant_type,
                           double_quant=cfg.double_quant)
    log.info("%s: attention %s", type(model).__name__, model.config._attn_implementation)
    prepare_for_training(model, cfg.gradient_checkpointing, compute_dtype)
    targets, parameters, routers = adapter_targets(model, cfg.lora_targets, cfg.train_router, cfg.model)
    dropout = cfg.lora_dropout
    if parameters and dropout:
        log.warning("lora_dropout %g -> 0: PEFT's LoRA on fused expert weights has no dropout, and an adapter "
                    "has one dropout for all its layers", dropout)
        dropout = 0.0
    options = embedding_options(cfg.train_embeddings, model, cfg.model)
    # Trained whole: a copy PEFT saves with the adapter (as the embeddings' "all"), never quantized
    # (a router is no linear layer bitsandbytes replaces), in the dtype the base holds it in.
    if routers:
        options["modules_to_save"] = options.get("modules_to_save", []) + routers
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=dropout,
                      target_modules=targets, target_parameters=parameters or None, bias="none",
                      task_type="CAUSAL_LM", **options)
    # 4-bit experts take their LoRA in PEFT's format through their own wrapper (models.moe4bit).
    model = get_peft_model(model, moe4bit.lora_config(lora, model) if parameters else lora)
    return model, {"lora_targets": targets, "lora_target_parameters": parameters, "lora_dropout": dropout,
                   "routers_trained": routers}


def adapter_targets(model, configured: list[str], train_router: bool, source: str) -> tuple:
    """(modules that carry LoRA, parameters that carry LoRA, routers trained whole): `configured`
    (lora_targets) split into modules and fused expert weights, or by default every linear layer
    of the decoder blocks and every fused expert weight. Experts of an unknown layout, which the
    default would leave out, and train_router on a model without routers are refused."""
    from llamantino.models.modeling import lora_targets, moe_layout, split_lora_targets

    layout = moe_layout(model)
    if configured:
        targets, parameters = split_lora_targets(model, configured)
    elif layout["unknown"]:
        raise LlamantinoError(f"{source}: experts in a layout llamantino does not know ({', '.join(layout['unknown'])}: "
                              "neither fused 3-D weights nor linear layers), which LoRA would leave out; name "
                              "lora_targets to adapt the other layers only")
    else:
        targets, parameters = lora_targets(model), layout["parameters"]
    if train_router and not layout["routers"]:
        raise LlamantinoError(f"{source}: train_router is set, but the model has no mixture-of-experts router")
    return targets, parameters, layout["routers"] if train_router else []


def embedding_options(mode: str, model, model_path: str) -> dict:
    """LoraConfig options that also train the embeddings: the whole input and output matrices
    (PEFT `modules_to_save`), or only the rows `vocab extend` added (`trainable_token_indices`).
    Tied input and output embeddings stay tied."""
    if mode == "none":
        return {}
    layers = {"input": model.get_input_embeddings(), "output": model.get_output_embeddings()}
    for where, layer in layers.items():
        weight = getattr(layer, "weight", None)
        if weight is None or not weight.is_floating_point() or type(weight).__name__ == "Params4bit":
            raise LlamantinoError(f"{model_path}: the {where} embeddings are quantized "
                                  f"({type(weight).__name__}, {getattr(weight, 'dtype', '?')}); they cannot be trained "
                                  "as they are: load the base in 16 or 32 bits, or leave train_embeddings at none")
    names = {where: next(n for n, m in model.named_modules() if m is layer).rsplit(".", 1)[-1]
             for where, layer in layers.items()}
    tied = layers["input"].weight is layers["output"].weight
    if mode == "all":
        return {"modules_to_save": [names["input"], names["output"]], "ensure_weight_tying": tied}
    rows = new_token_ids(model_path)
    indices = {names["input"]: rows} if tied else {names["input"]: rows, names["output"]: rows}
    return {"trainable_token_indices": indices, "ensure_weight_tying": tied}


def new_token_ids(model_path: str) -> list[int]:
    """The ids `llamantino vocab extend` added to a model (its vocab_report.json says which)."""
    import json

    from llamantino.core.fileio import safe_join

    path = safe_join(model_path, "vocab_report.json", f"model {model_path}") if Path(model_path).is_dir() else None
    if path is None or not path.is_file():
        raise LlamantinoError(f"{model_path}: train_embeddings new needs a model made by `llamantino vocab extend` "
                              "(its vocab_report.json lists the new tokens); use all to train whole matrices")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        ids = [int(entry["id"]) for entry in report["new_tokens"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LlamantinoError(f"{path}: unreadable list of new tokens ({type(exc).__name__}: {exc})") from None
    if not ids:
        raise LlamantinoError(f"{path}: lists no new tokens")
    return ids


def parameter_groups(model, learning_rate: float, embedding_learning_rate: float, routers=()) -> list[dict]:
    """LoRA weights (and routers trained whole, named in `routers`) at the learning rate; trained
    embeddings (whole or new rows) at theirs, a tenth of it unless given, as practitioners advise
    for embeddings."""
    embedding, other = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            router = any(f".{r}.modules_to_save." in name for r in routers)
            whole = "modules_to_save" in name and not router
            (embedding if (whole or "trainable_tokens" in name) else other).append(param)
    groups = [{"params": other, "lr": learning_rate}]
    if embedding:
        groups.append({"params": embedding, "lr": embedding_learning_rate or learning_rate / 10})
    return groups


class CausalLMLoss(torch.nn.Module):
    """Token-mean next-token loss of a (PEFT) causal LM, as one module so DDP sees the forward.

    With `chunk` > 0 the output layer runs only on positions that have a target, `chunk`
    positions at a time, or in Liger's fused kernel with `fused` = "liger"; the model's own loss
    otherwise, or for a model whose logits are not its output head's (`models.loss.loss_path`,
    which checks that once, here, and logs it).

    With FlashAttention, packed rows are flattened into one sequence: its varlen kernel keeps
    the documents of a single row apart from their restarting position ids, not of a batch. The
    document boundaries (`cu_seqlens`, `varlen_kwargs`) are computed once per batch, by the
    training step on the host (or here), and handed to every layer, which would otherwise derive
    them from the position ids each time.
    """

    def __init__(self, model, chunk: int, fused: str = "chunked"):
        super().__init__()
        self.model = model
        causal_lm = model.get_base_model()
        self.flatten = str(getattr(causal_lm.config, "_attn_implementation", "")).startswith("flash")
        self.path = loss_path(causal_lm, chunk, fused)

    @property
    def chunk(self) -> int:
        """Target positions per chunk; 0: the model's own loss."""
        return self.path.chunk

    def forward(self, input_ids, position_ids, labels, num_items, varlen=None):
        """Summed loss / `num_items`; `varlen`: the batch's `varlen_kwargs` when flattening, made
        from the host's copy of the position ids (computed here from `position_ids` if not given)."""
        if self.flatten:
            labels = labels.clone()
            labels[:, 0] = IGNORE  # a row's first token has nothing before it in its row
            if varlen is None:
                varlen = varlen_kwargs(position_ids, input_ids.shape[-1])
            input_ids, position_ids, labels = (t.reshape(1, -1) for t in (input_ids, position_ids, labels))
        varlen = varlen if self.flatten else {}
        if not self.chunk:
            return self.model(input_ids=input_ids, position_ids=position_ids, labels=labels, use_cache=False,
                              num_items_in_batch=num_items, **varlen).loss
        causal_lm = self.model.get_base_model()
        hidden = causal_lm.model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                 **varlen).last_hidden_state
        return summed_target_loss(hidden, labels, self.path.head, self.chunk, self.path.fused) / num_items


def varlen_kwargs(position_ids: torch.Tensor, row_length: int, device=None) -> dict:
    """FlashAttention's varlen arguments for the packed rows of a batch flattened into one: every
    document (and every row, and padding) starts at position 0. Made from the collated batch on
    the host, they cost the GPU no sync; `max_length_q` is the row length, an upper bound of every
    document's (the kernel needs no more), the same for every batch: no recompilation, no sync."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    bounds = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    if device is not None:
        bounds = bounds.to(device, non_blocking=True)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": int(row_length),
            "max_length_k": int(row_length)}


def is_adapter(model) -> bool:
    """Whether `model` is a PEFT model (an adapter on a frozen base), not a model trained whole."""
    return hasattr(model, "get_base_model")


def causal_lm(model):
    """The transformers causal LM: a PEFT model's base, or the model trained whole itself."""
    return model.get_base_model() if is_adapter(model) else model


def build_full_model(cfg: QLoraSettings, device, compute_dtype: str, *, base_path: str | None = None):
    """The whole model in float32 (the master weights; autocast gives the compute dtype), every
    weight of its language model trained. Returns (model, what trains), as `build_peft_model`."""
    from llamantino.models.modeling import freeze_outside_language_model, load_causal_lm

    model = load_causal_lm(base_path or cfg.model, dtype="float32", device=str(device),
                           attn_implementation=cfg.attn_implementation)
    log.info("%s: attention %s, every weight trained", type(model).__name__, model.config._attn_implementation)
    model.config.use_cache = False
    frozen = freeze_outside_language_model(model)
    if frozen:
        log.info("vision-language model: %.1fM parameters outside the language model stay frozen", frozen / 1e6)
    return model, {"lora_targets": [], "lora_target_parameters": [], "lora_dropout": 0.0, "routers_trained": []}


class ModelState:
    """The weights of a model trained whole as a checkpoint part (one process writes and reads them)."""

    FILE = "model.safetensors"

    def __init__(self, model):
        self.model = model

    def save_to(self, folder: Path, rank: int) -> None:
        from safetensors.torch import save_model

        if rank == 0:
            save_model(self.model, str(folder / self.FILE))  # tied weights once

    def load_from(self, folder: Path, rank: int) -> None:
        from safetensors.torch import load_model

        load_model(self.model, str(folder / self.FILE), device=str(next(self.model.parameters()).device))


class AdapterState:
    """The LoRA weights as a checkpoint part: rank 0 writes them, every rank reads them."""

    FILE = "adapter_model.safetensors"

    def __init__(self, model):
        self.model = model

    def save_to(self, folder: Path, rank: int) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        if rank == 0:
            state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
            save_file(state, str(folder / self.FILE))

    def load_from(self, folder: Path, rank: int) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.model, load_file(str(folder / self.FILE)))


# ---------------------------------------------------------------------------------------
# The run: set up, step, finish


@dataclasses.dataclass
class Objective:
    """What a stage trains when it is not the next-token loss of packed rows (`prefer`: pairs
    of answers). `make_loss(model, chunk, fused)` builds the loss module (with the `path` the
    manifest reports; DDP wraps it); `step(t)` runs one optimizer step's forward and backward
    passes and ends with `apply_update` (False: the data ran out); `evaluate(t)` gives held-out
    figures of its own, logged as `eval_fields`; `fields` are the training figures it logs;
    `evaluate_first` scores the held-out sets once before the first step too."""

    make_loss: Callable
    step: Callable
    fields: tuple = ()
    evaluate: Callable | None = None
    eval_fields: tuple = ()
    evaluate_first: bool = False
    text_eval: list | None = None  # the eval_data entries scored in bits per byte (None: all)
    info: dict = dataclasses.field(default_factory=dict)  # for the manifest
    # Called once the model is set up (and a checkpoint loaded), before anything is scored or trained.
    prepare: Callable | None = None
    # Train every weight of the model in float32 (no adapter, no 4-bit base); one process.
    full: bool = False


@dataclasses.dataclass
class Trainer:
    """Everything the loop touches, made once by `setup`."""

    kind: str
    cfg: QLoraSettings
    rank: int
    world: int
    device: torch.device
    run_dir: Path
    tokenizer: object
    source: object          # packing.RowSource of this rank
    model: object           # the PEFT model
    loss: torch.nn.Module   # CausalLMLoss, wrapped in DDP on several ranks
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    compute_dtype: str
    accumulation: int
    checkpoints: Checkpoints
    metrics_log: common.MetricsLog
    progress: common.Progress
    counters: dict          # step, tokens, real_tokens, world_size: saved in every checkpoint
    info: dict              # what the manifest reports about the setup
    recent: collections.deque = dataclasses.field(default_factory=lambda: collections.deque(maxlen=10))
    started: float = dataclasses.field(default_factory=time.time)
    steps_this_run: int = 0
    real_this_run: int = 0
    batch_digest: object = None  # sha256 of every batch, with debug_rank_records
    heldout: list = dataclasses.field(default_factory=list)  # heldout.HeldOutSet scored while training
    last_eval: dict = dataclasses.field(default_factory=dict)
    eval_seconds: float = 0.0  # spent on held-out evaluation, not counted as training time
    guard: speed.CompileGuard = dataclasses.field(default_factory=lambda: speed.CompileGuard(False))
    objective: Objective | None = None

    @property
    def step(self) -> int:
        return self.counters["step"]

    def parts(self) -> tuple[dict, dict]:
        """The checkpoint's shared parts and this rank's own."""
        weights = AdapterState(self.model) if is_adapter(self.model) else ModelState(self.model)
        return ({"adapter" if is_adapter(self.model) else "model": weights, "optimizer": self.optimizer, "scheduler": self.scheduler,
                 "trainer": self.counters}, {"data": self.source, "rng": RNG})


def train(kind: str, cfg: QLoraSettings, make_source, *, tokenizer, overwrite: bool = False, resume: bool = False,
          inputs=(), base_model=None, objective: Objective | None = None) -> dict:
    """Run a QLoRA stage from start (or its latest checkpoint) to `max_steps`.

    `make_source(rank, world)` returns this rank's RowSource; `base_model()`, if given,
    runs on rank 0 once the run folder is claimed and returns the folder the 4-bit base is
    loaded from instead of `cfg.model` (sft merges a language adapter first). `objective`
    replaces the next-token loss of packed rows (see `Objective`).
    """
    rank, world, device = distributed.init_distributed()
    run_dir = Path(cfg.output)
    # A refusal on rank 0 reaches every rank (none is left waiting in a collective).
    state = distributed.on_rank0(lambda: prepare_output(run_dir, kind, cfg, overwrite=overwrite, resume=resume))
    if state == "complete":
        metrics = read_manifest(run_dir)["metrics"]
        return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics}
    t = setup(kind, cfg, make_source, tokenizer, resume_from=state == "resume", base_model=base_model,
              rank=rank, world=world, device=device, objective=objective)
    step = objective.step if objective else train_step
    scored = bool(t.heldout or (objective and objective.evaluate))
    stop = common.StopRequest()
    with t.progress:  # closed on an error too: the error line starts a line of its own
        if objective and objective.prepare:
            objective.prepare(t)
        if scored and objective and objective.evaluate_first and t.step == 0:
            evaluate_heldout(t)
            t.counters["first_eval"] = dict(t.last_eval)
        while t.step < cfg.max_steps:
            if not step(t):
                raise LlamantinoError(f"the data ran out at step {t.step} of {cfg.max_steps}: it yields no more rows")
            want_stop = stop.agreed(device) or 0 < cfg.stop_after_steps <= t.steps_this_run
            if scored and (t.step == cfg.max_steps or (cfg.eval_steps and t.step % cfg.eval_steps == 0)):
                evaluate_heldout(t)
            if t.step < cfg.max_steps and (want_stop or (cfg.save_steps and t.step % cfg.save_steps == 0)):
                t.checkpoints.save(t.step, *t.parts())
            if want_stop and t.step < cfg.max_steps:
                return stopped(t)
    return finish(t, inputs)


def setup(kind: str, cfg: QLoraSettings, make_source, tokenizer, *, resume_from: bool, base_model, rank: int,
          world: int, device: torch.device, objective: Objective | None = None) -> Trainer:
    """Data, model, optimizer and schedule; the latest checkpoint loaded when resuming."""
    from torch.nn.parallel import DistributedDataParallel

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from llamantino.train.heldout import load_sets

    accum = accumulation(cfg, world)
    # Data first: a corpus that yields nothing fails before the folder is claimed.
    source = make_source(rank, world)
    texts = cfg.eval_data if objective is None or objective.text_eval is None else objective.text_eval
    heldout = load_sets(texts, max_documents=cfg.eval_max_documents) if texts else []
    distributed.on_rank0(lambda: start_run(cfg.output, kind, cfg) if not resume_from else None)
    base_path = distributed.on_rank0(base_model) if base_model else None
    compute_dtype = common.resolve_compute_dtype(cfg.compute_dtype, device)
    common.seed_all(cfg.seed)
    build = build_full_model if objective is not None and objective.full else build_peft_model
    model, adapted = build(cfg, device, compute_dtype, base_path=base_path)
    groups = parameter_groups(model, cfg.learning_rate, cfg.embedding_learning_rate, adapted["routers_trained"])
    counts = common.parameter_record(model)
    if rank == 0 and is_adapter(model):
        log.info("LoRA (r %d) on modules %s and parameters %s%s: %s trainable parameters; base %s in 4-bit, %s in "
                 "full precision", cfg.lora_r, adapted["lora_targets"], adapted["lora_target_parameters"] or "none",
                 f", routers {adapted['routers_trained']} trained whole" if adapted["routers_trained"] else "",
                 f"{counts['trainable']:,}", f"{counts['base_4bit']:,}", f"{counts['base_full_precision']:,}")
    optimizer, optimizer_used = common.make_optimizer(groups, cfg.optimizer, cfg.learning_rate,
                                                        cfg.weight_decay, device)
    scheduler = common.make_scheduler(optimizer, cfg.lr_scheduler, cfg.warmup_ratio, cfg.max_steps)
    counters = {"step": 0, "tokens": 0, "real_tokens": 0, "world_size": world}
    paths = speed.resolve(cfg, device, causal_lm(model).config.model_type, compute_dtype)
    # The loss checks the model's head: before compiling.
    loss = (objective.make_loss if objective else CausalLMLoss)(model, cfg.loss_chunk_tokens, fused=paths.fused_loss)
    apply_speed(model, paths, cfg.lora_r)
    checkpoints = Checkpoints(cfg.output, rank=rank, world=world, keep=cfg.save_total_limit)
    t = Trainer(kind=kind, cfg=cfg, rank=rank, world=world, device=device, run_dir=Path(cfg.output),
                tokenizer=tokenizer, source=source, model=model, loss=loss,
                optimizer=optimizer, scheduler=scheduler, compute_dtype=compute_dtype, accumulation=accum,
                scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and compute_dtype == "float16"),
                checkpoints=checkpoints, metrics_log=None, progress=None, counters=counters,
                info={**adapted, "optimizer": optimizer_used, **speed_info(model, loss, paths),
                      "train_embeddings": cfg.train_embeddings,
                      "embedding_parameters": sum(p.numel() for p in groups[1]["params"]) if len(groups) > 1 else 0,
                      "trainable_parameters": counts["trainable"], "parameters": counts,
                      **(objective.info if objective else {})},
                batch_digest=hashlib.sha256() if cfg.debug_rank_records else None, heldout=heldout,
                guard=speed.CompileGuard(paths.compile == "blocks"), objective=objective)
    found = checkpoints.latest() if resume_from else None
    if found:
        shared, own = t.parts()
        checkpoints.load(found[1], shared, own)
        if counters["world_size"] != world:
            raise LlamantinoError(f"{found[1]}: made with {counters['world_size']} processes, this run has {world}; "
                                  "resume with the same number of processes")
        log.info("resumed from %s (step %d)", found[1], t.step)
    if world > 1:
        t.loss = DistributedDataParallel(t.loss, device_ids=[device.index] if device.type == "cuda" else None,
                                         init_sync=False)
    t.metrics_log = common.MetricsLog(cfg.output, resume_step=t.step, enabled=rank == 0,
                                        extra_fields=[h.column for h in heldout] + list(
                                            objective.fields + objective.eval_fields if objective else ()))
    t.progress = common.Progress(cfg.max_steps, initial=t.step, enabled=rank == 0, desc=kind)
    model.train()
    return t


def apply_speed(model, paths: speed.Speed, lora_rank: int) -> None:
    """The run's speed paths (kernels, checkpointing, compiled blocks) on the PEFT model's base, in place."""
    base = causal_lm(model)
    speed.apply(base, paths, lora_rank=lora_rank if is_adapter(model) else 0)
    log.info("speed paths: attention %s, %s", base.config._attn_implementation, speed.describe(paths))


def speed_info(model, loss: CausalLMLoss, paths: speed.Speed) -> dict:
    """What the manifest reports about the speed paths taken (the loss as it runs: liger, chunked or own)."""
    return {"attention": causal_lm(model).config._attn_implementation,
            **paths.settings(), "fused_loss": loss.path.name}


def train_step(t: Trainer) -> bool:
    """One optimizer step over `accumulation` micro-batches of `batch_size` rows; False when
    the data are exhausted. The loss is normalised by the target tokens of the whole step, over
    every rank: the same update as one process accumulating the ranks' micro-batches."""
    from llamantino.data.packing import collate

    cfg = t.cfg
    micro = []
    for _ in range(t.accumulation):
        rows = _take(t.source, cfg.batch_size)
        if not rows:
            return False
        micro.append(collate(rows, cfg.max_length, t.tokenizer.pad_token_id))
    if t.batch_digest is not None:
        for b in micro:
            t.batch_digest.update(b.input_ids.numpy().tobytes())
    n_targets = max(1, sum(b.target_tokens for b in micro))
    if t.world > 1:  # DDP averages gradients: / (global targets / world) makes them the global batch's mean
        n_targets = distributed.all_reduce_sum(n_targets, t.device) / t.world
    n_targets = torch.tensor(n_targets, device=t.device)
    autocast = torch.autocast(t.device.type, dtype=getattr(torch, t.compute_dtype),
                              enabled=t.device.type == "cuda" and t.compute_dtype != "float32")
    # Flattened rows: their document boundaries from the host's copy of the batch (no GPU sync).
    flat = getattr(t.loss, "module", t.loss).flatten
    varlen = [{"varlen": varlen_kwargs(b.position_ids, cfg.max_length, t.device)} if flat else {} for b in micro]
    rng = common.rng_state() if t.guard.left else None  # a step the compile guard may run again

    def forward_backward() -> float:
        loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)  # read once a step, not per micro-batch
        for i, batch in enumerate(micro):
            last = i == len(micro) - 1
            sync = t.loss.no_sync() if (t.world > 1 and not last) else contextlib.nullcontext()
            with sync, autocast:
                loss = t.loss(batch.input_ids.to(t.device, non_blocking=True),
                              batch.position_ids.to(t.device, non_blocking=True),
                              batch.labels.to(t.device, non_blocking=True), n_targets, **varlen[i])
            t.scaler.scale(loss).backward()
            loss_sum += loss.detach().double()
        return float(loss_sum)

    def undo() -> None:  # what a failed compiled step left behind
        t.optimizer.zero_grad(set_to_none=True)
        common.set_rng_state(rng)

    loss_sum = t.guard.run(forward_backward, undo)
    apply_update(t, loss_sum, sum(b.positions for b in micro), sum(b.real_tokens for b in micro))
    return True


def apply_update(t: Trainer, loss_sum: float, tokens: int, real: int, extra: dict | None = None) -> None:
    """The end of every step: clip, optimizer and schedule, then counters, progress and metrics.
    `loss_sum`: this rank's share of the step's loss (x world); `extra`: further figures of the
    step, already the same on every rank (prefer's rewards)."""
    cfg = t.cfg
    t.scaler.unscale_(t.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.max_grad_norm or float("inf")))
    t.scaler.step(t.optimizer)
    t.scaler.update()
    t.optimizer.zero_grad(set_to_none=True)
    lr = t.scheduler.get_last_lr()[0]
    t.scheduler.step()
    # loss_sum is this rank's share of the global token mean, x world; average over ranks.
    # One collective for the step's three figures.
    loss_sum, tokens, real = distributed.all_reduce_sums([loss_sum, tokens, real], t.device)
    loss, tokens, real = loss_sum / t.world, int(tokens), int(real)
    t.counters.update(step=t.step + 1, tokens=t.counters["tokens"] + tokens,
                      real_tokens=t.counters["real_tokens"] + real)
    t.steps_this_run += 1
    t.real_this_run += real
    t.recent.append(loss)
    rate = t.progress.update(real, loss, lr)
    if t.step % cfg.logging_steps == 0 or t.step == cfg.max_steps or t.step == 1:
        t.metrics_log.log(t.step, loss=loss, lr=lr, grad_norm=grad_norm, tokens=t.counters["tokens"],
                          tokens_per_s=rate, elapsed_s=round(time.time() - t.started, 2), **(extra or {}))


def evaluate_heldout(t: Trainer) -> None:
    """Bits per byte of the model as it is now on every held-out set, logged at this step."""
    from llamantino.train.heldout import evaluate

    autocast = torch.autocast(t.device.type, dtype=getattr(torch, t.compute_dtype),
                              enabled=t.device.type == "cuda" and t.compute_dtype != "float32")
    started = time.time()
    with autocast, speed.eager():  # never compiled: no graphs for evaluation's shapes and no-grad mode
        t.last_eval = evaluate(t.model, t.tokenizer, t.heldout, max_length=t.cfg.max_length,
                               batch_size=t.cfg.eval_batch_size, rank=t.rank, world=t.world) if t.heldout else {}
        if t.objective and t.objective.evaluate:
            t.last_eval.update(t.objective.evaluate(t))
    t.eval_seconds += time.time() - started
    t.metrics_log.log(t.step, **t.last_eval)
    if t.rank == 0:
        log.info("step %d: %s", t.step, ", ".join(f"{k} {v:.4f}" for k, v in t.last_eval.items()))


def _take(source, n: int) -> list:
    rows = []
    while len(rows) < n and (row := source.next_row()) is not None:
        rows.append(row)
    return rows


def stopped(t: Trainer) -> dict:
    t.progress.close()
    t.metrics_log.close()
    if t.rank == 0:
        log.info("stopped at step %d with a checkpoint; continue with --resume", t.step)
    return {"status": f"stopped at step {t.step}", "headline": {"step": t.step}, "metrics": {"step": t.step}}


def finish(t: Trainer, inputs) -> dict:
    """Save the adapter and tokenizer, the loss plot and the manifest (last)."""
    t.progress.close()
    t.metrics_log.close()
    elapsed = time.time() - t.started
    metrics = {
        "steps": t.step,
        "tokens_seen": t.counters["tokens"],
        "real_token_share": t.counters["real_tokens"] / max(1, t.counters["tokens"]),
        "final_loss": sum(t.recent) / len(t.recent) if t.recent else float("nan"),
        "tokens_per_s": t.real_this_run / max(1e-9, elapsed - t.eval_seconds),
        "train_seconds": round(elapsed, 1),
        "world_size": t.world,
        "gradient_accumulation": t.accumulation,
        "effective_batch_size": t.cfg.batch_size * t.accumulation * t.world,
        **t.info,
        "compute_dtype": t.compute_dtype,
        "device": t.device.type,
        "peak_memory_mb": round(common.peak_memory_bytes(t.device) / 2**20, 1),
        **t.source.metrics(),
        **t.last_eval,
        **{f"before_{k}": v for k, v in t.counters.get("first_eval", {}).items()},  # Objective.evaluate_first
        **({"eval_seconds": round(t.eval_seconds, 3)} if t.heldout else {}),
    }
    if t.guard.fell_back:  # compiled blocks failed at first: the run went on eagerly
        metrics.update(compile="none", compile_error=t.guard.fell_back)
    if t.batch_digest is not None:
        _write_rank_record(t)
    distributed.barrier()
    if t.rank == 0:
        common.save_files(t.run_dir, lambda folder: (t.model.save_pretrained(folder),
                                                       t.tokenizer.save_pretrained(folder)))
        common.plot_loss(t.run_dir, title=f"{t.kind}: {Path(t.cfg.model).name}")
        write_manifest(t.run_dir, t.kind, t.cfg, inputs=describe_inputs(inputs), metrics=metrics)
    distributed.barrier()
    return {"status": "done", "headline": _headline(metrics), "metrics": metrics}


def _write_rank_record(t: Trainer) -> None:
    """ranks/rankR.json: what this rank trained on and the adapter it ended with (identical
    adapters across ranks are what DDP guarantees; different data is what sharding does)."""
    from peft import get_peft_model_state_dict

    digest = hashlib.sha256()
    state = get_peft_model_state_dict(t.model) if is_adapter(t.model) else t.model.state_dict()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    if t.rank == 0:
        record_outputs(t.run_dir, "ranks/")
    (t.run_dir / "ranks").mkdir(exist_ok=True)
    atomic_write_json(t.run_dir / "ranks" / f"rank{t.rank}.json", {
        "rank": t.rank, "world_size": t.world, "steps": t.step, "data_sha256": t.batch_digest.hexdigest(),
        "adapter_sha256": digest.hexdigest()})


def _headline(m: dict) -> dict:
    out = {"steps": m.get("steps"), "final_loss": m.get("final_loss")}
    if m.get("real_token_share") is not None:
        out["real_tokens"] = f"{100 * m['real_token_share']:.1f}%"
    out.update({k[5:]: v for k, v in m.items() if k.startswith("eval_") and k.endswith("_bpb")})  # it_bpb, ...
    out.update({k[5:]: v for k, v in m.items() if k.startswith("eval_") and k.endswith("/accuracies")})  # prefer
    return out
