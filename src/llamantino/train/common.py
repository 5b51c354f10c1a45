"""Pieces every training loop here shares: seeds and RNG state, the compute dtype, learning-rate
schedules, optimizers, metric logs, loss plots, progress and stop requests. Checkpoint folders
live in llamantino.train.checkpoint.

The loops themselves (adapt.py, sft.py, instruct.py) stay short and read top to bottom.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch

from llamantino.core.distributed import all_reduce_sum
from llamantino.core.errors import LlamantinoError
from llamantino.train.settings import OPTIMIZERS, SCHEDULES  # noqa: F401  (named here too)

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Batches and memory


def peak_memory_bytes(device) -> int:
    """Peak memory of this process: allocated CUDA memory on a GPU, resident set size on CPU."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# What a 4-bit tensor that is not bitsandbytes' Params4bit says about itself: an attribute of
# this name holding the number of weights it stands for (a packed expert stack holds half as many
# bytes as weights, plus its scales). bitsandbytes' tensors carry a `quant_state` with the shape
# they were quantized from. Either way the tensor counts as that many weights, held in 4-bit.
FOUR_BIT_NUMEL = "llamantino_4bit_numel"

# Name parts PEFT gives the tensors it adds (LoRA factors, trained copies of whole modules,
# trained rows of an embedding): what a stage trains, never part of the base.
ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector",
                 ".modules_to_save.", "trainable_tokens_delta")


def weight_count(tensor) -> tuple[int, bool]:
    """(weights a tensor holds, whether in 4-bit): a 4-bit tensor counts its original weights once."""
    numel = getattr(tensor, FOUR_BIT_NUMEL, None)
    if numel is not None:
        return int(numel), True
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        return int(math.prod(state.shape)), True
    return tensor.numel(), False  # a DTensor (FSDP) gives the whole tensor's count


def parameter_record(model) -> dict:
    """{base_4bit, base_full_precision, trainable}: the weights of the base held in 4-bit and in
    16/32 bits, and the weights the stage trains (LoRA, modules trained whole, or the whole model),
    for every training stage's manifest. A base layer left out of the quantization shows as full
    precision; a 4-bit buffer (not a parameter) counts too."""
    record = {"base_4bit": 0, "base_full_precision": 0, "trainable": 0}
    for name, param in model.named_parameters():
        numel, four_bit = weight_count(param)
        if param.requires_grad:
            record["trainable"] += numel
        if not any(part in name for part in ADAPTER_PARTS):
            record["base_4bit" if four_bit else "base_full_precision"] += numel
    for _, buffer in model.named_buffers():
        numel, four_bit = weight_count(buffer)
        if four_bit:
            record["base_4bit"] += numel
    return record


# ---------------------------------------------------------------------------------------
# Seeds and RNG state (part of every checkpoint, so a resumed run draws the same dropout)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# Schedules and optimizers

def resolve_compute_dtype(name: str, device: torch.device) -> str:
    """`auto`: bfloat16 on a GPU that has it (float16 overflows in Gemma and others), float16 on
    an older GPU, float32 on CPU (where bfloat16 matmuls are many times slower)."""
    if name != "auto":
        return name
    if torch.device(device).type != "cuda":
        return "float32"
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def make_scheduler(optimizer, schedule: str, warmup_ratio: float, total: int):
    """Linear warmup over ceil(ratio x total) steps, then the schedule's decay to 0."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup_steps(warmup_ratio, total), total))


def warmup_steps(ratio: float, total: int) -> int:
    # Same rounding as transformers' TrainingArguments.get_warmup_steps.
    return math.ceil(total * ratio)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the peak learning rate at each step (warmup then decay to 0)."""
    def fn(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return fn


def make_optimizer(params, name: str, lr: float, weight_decay: float, device: torch.device,
                   betas=(0.9, 0.999), eps: float = 1e-8):
    """The paper's paged AdamW 32-bit on GPU; on CPU (no paging there) torch's AdamW,
    which computes the same update. Returns (optimizer, name actually used)."""
    # Plain parameters, or parameter groups with their own learning rates (trained embeddings).
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
    else:
        params = [p for p in params if p.requires_grad]
    if name in ("paged_adamw_32bit", "adamw_8bit") and device.type == "cuda":
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW32bit if name == "paged_adamw_32bit" else bnb.optim.AdamW8bit
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), name
    if name not in OPTIMIZERS:
        raise LlamantinoError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")
    if name != "adamw_torch":
        log.warning("optimizer %s needs a CUDA device; using torch AdamW (same update rule) on %s",
                    name, device.type)
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), "adamw_torch"


def fuse_adamw(optimizer):
    """torch's AdamW again over the same parameter groups, with its fused kernel (all parameters
    in one kernel launch, not a few per tensor); any other optimizer is returned as it is. Call it
    before the first step (the moments are not carried over)."""
    if type(optimizer) is not torch.optim.AdamW:
        return optimizer
    groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")} for group in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=True)


# ---------------------------------------------------------------------------------------
# Metrics: CSV + TensorBoard, loss curve PNG, progress bar


class MetricsLog:
    """Scalars per step to `metrics.csv` and TensorBoard (`tb/`). On resume, rows past the
    checkpoint's step are dropped so the CSV has each step once. The CSV is never rewritten in
    place: a new file is renamed over it, and rows are appended only while no other name links
    to it (a hard link made by `cp -al` keeps the rows it had)."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s")

    def __init__(self, run_dir, *, resume_step: int = 0, enabled: bool = True, extra_fields=()):
        self.enabled = enabled
        self.fields = self.FIELDS + tuple(extra_fields)  # e.g. eval_it_bpb, logged on rows of their own
        if not enabled:
            return
        from llamantino.core.manifest import record_outputs

        self.path = Path(run_dir) / "metrics.csv"
        record_outputs(run_dir, self.path.name, "tb/")
        rows = self._rows_until(resume_step) if resume_step and self.path.is_file() else []
        self.handle = None
        self._replace(rows)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def _rows_until(self, step: int) -> list[dict]:
        from llamantino.core.errors import shown

        rows = []
        try:
            with open(self.path, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                for row in reader:
                    try:
                        number = int(row.get("step"))
                    except (TypeError, ValueError):
                        raise LlamantinoError(f"{self.path}:{reader.line_num}: field 'step' is {shown(row.get('step'))}, "
                                              "not a step number; fix the line or remove the file (the checkpoints "
                                              "do not need it)") from None
                    if number <= step:
                        rows.append(row)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise LlamantinoError(f"{self.path}: unreadable metrics log ({exc}); fix or remove the file (the "
                                  "checkpoints do not need it)") from None
        return rows

    def _replace(self, rows: list[dict] | None = None) -> None:
        """Rename a new file over metrics.csv (these rows, or, with None, what it holds now) and
        append to that one."""
        import shutil

        from llamantino.core.fileio import temporary_name

        if self.handle is not None:
            self.handle.close()
        tmp = temporary_name(self.path)
        if rows is None:
            shutil.copyfile(self.path, tmp)
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, self.path)
        self.handle = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.fields)

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        if os.fstat(self.handle.fileno()).st_nlink > 1:  # linked from elsewhere since: leave that file be
            self._replace()
        self.writer.writerow({"step": step, **{k: values.get(k, "") for k in self.fields if k != "step"}})
        self.handle.flush()
        for key in ("loss", "router_aux_loss", "lr", "grad_norm", "tokens_per_s") + tuple(
                k for k in values if "/" in k and not k.startswith("eval_")):
            if values.get(key) not in (None, ""):  # and a stage's own figures: rewards/margins, ...
                self.tb.add_scalar(f"train/{key}", values[key], step)
        for key, value in values.items():
            if key.startswith("eval_") and value not in (None, ""):
                self.tb.add_scalar(f"eval/{key[5:]}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.handle.close()
            self.tb.close()


def save_files(run_dir, write) -> None:
    """`write(folder)` (save_pretrained and the like) into a temporary folder inside the run
    folder; then each file is recorded as the run's own and renamed into place. A file already
    there is replaced, never written through (a hard link to it elsewhere keeps its content)."""
    import shutil

    from llamantino.core.fileio import temporary_name
    from llamantino.core.manifest import record_outputs

    run_dir = Path(run_dir)
    tmp = temporary_name(run_dir / "save")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
    record_outputs(run_dir, *names)
    for name in names:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, run_dir / name)
    shutil.rmtree(tmp)


def plot_loss(run_dir, title: str = "") -> Path | None:
    """loss.png from metrics.csv: raw loss and a moving average against the step."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    rows = [r for r in table if r["loss"]]
    if not rows:
        return None
    evals = sorted(k for k in (table[0] if table else {}) if k.startswith("eval_"))
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.35, label="loss")
    ax.plot(steps, smooth, label=f"moving average ({window})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    if evals:  # held-out bits per byte on a second axis: language gained, language forgotten
        right = ax.twinx()
        for key in evals:
            points = [(int(r["step"]), float(r[key])) for r in table if r.get(key)]
            right.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle="--",
                       label=f"held-out {key[5:-4]} (bits/byte)")
        right.set_ylabel("held-out bits per byte")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels)
    fig.tight_layout()
    from llamantino.core.fileio import temporary_name
    from llamantino.core.manifest import record_outputs

    out = Path(run_dir) / "loss.png"
    record_outputs(run_dir, out.name)
    tmp = temporary_name(out)
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, out)  # a new file: a hard link to the old one keeps its picture
    return out


class Progress:
    """Progress bar over optimizer steps, showing loss, tokens/s and ETA."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc, unit="step",
                        dynamic_ncols=True, mininterval=1.0)
        self.start = time.time()
        self.tokens = 0

    def update(self, tokens: int, loss: float, lr: float) -> float:
        self.tokens += tokens
        rate = self.tokens / max(1e-9, time.time() - self.start)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(1)
        return rate

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StopRequest:
    """SIGTERM (what SLURM sends before a time limit) asks for a checkpoint and a clean exit."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not in the main thread
            pass

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self, device) -> bool:
        # Every rank must stop at the same step (a SIGTERM reaches them at different times).
        return all_reduce_sum(float(self.requested), device) > 0
