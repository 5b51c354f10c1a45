"""Preference tuning: DPO, IPO, SimPO or ORPO with a LoRA / QLoRA adapter, on pairs of answers.

The step after chat fine-tuning in the Italian models that followed the paper (LLaMAntino-3-
ANITA: SFT -> DPO -> language adaptation). Each pair is a prompt, a chosen and a rejected
answer (`llamantino.data.preference`); the loss is taken on the answers' tokens only. The
loop is the QLoRA loop of `adapt` and `sft` (settings, checkpoints, exact resume, SIGTERM,
held-out evaluation, DDP) with its own objective:

* chosen and rejected answers go through the model in one forward (a batch of 2 x pairs,
  chosen rows first, as TRL), and each answer's log-probability is summed through the
  chunked output layer (`models.loss.row_target_logps`): no full-vocabulary logits;
* the losses and the figures they log are TRL 1.16's (`DPOTrainer` for dpo = sigmoid and
  ipo; `trl.experimental` CPO with loss_type simpo, ORPO), in float32 whatever the compute
  dtype. `sft_weight` adds the chosen answers' token-mean NLL (TRL's rpo_alpha / cpo_alpha);
* the reference of dpo and ipo is the model itself with its adapter switched off (no copy
  in memory). With `adapter` (e.g. the chat model's SFT adapter) that adapter is merged
  into the base first, so the reference is the chat model and a new adapter is trained on
  top (the manifest says so); simpo and orpo need no reference.

    llamantino prefer --model meta-llama/Meta-Llama-3-8B-Instruct --adapter runs/sft \
        --data pairs.jsonl --eval-data pairs=heldout.jsonl it=heldout_it.txt --output runs/dpo
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from pathlib import Path

from llamantino.core.config import override, setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import SYSTEM_PROMPT_HELP
from llamantino.models.weight_files import DTYPES
from llamantino.train import reference
from llamantino.train.settings import QLoraSettings

KIND = "prefer"
RESUMABLE = True  # the command takes --resume
log = logging.getLogger(__name__)

LOSS_TYPES = ("dpo", "ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")
FINETUNING = ("lora", "full")
# The figures of every step, with TRL's names.
FIELDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
          "logps/rejected", "nll_loss")
# Of a held-out set of pairs: TRL's, and the share of pairs whose chosen answer the model itself
# gives the higher log-probability (the same log-probabilities the loss uses).
EVAL_FIGURES = ("rewards/accuracies", "rewards/margins", "logps/accuracies")
PAIR_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclasses.dataclass
class Config(QLoraSettings):
    max_length: int = override(1024, "tokens of prompt + answer (answers are cut from the right, as TRL)")
    max_steps: int = override(1000)
    learning_rate: float = override(5e-6)
    lr_scheduler: str = override("cosine")
    warmup_ratio: float = override(0.1)
    max_grad_norm: float = override(1.0)
    max_prompt_length: int = setting(512, "tokens of the prompt (cut from the left, as TRL)", minimum=1)
    adapter: str = setting("", "adapter to merge into the base before training (e.g. the chat model's SFT adapter): "
                               "the merged model is the reference and a new adapter is trained on top",
                           path_input=True)
    merge_dtype: str = setting("auto", "dtype of the merged base: float32, bfloat16, float16, or auto = "
                               "the checkpoint's own", choices=("auto",) + DTYPES)
    data: list[str] = setting([], "preference pairs (prompt, chosen, rejected; strings or chat messages): JSON lines, "
                                  "parquet, folders, hub:NAME?config=C&split=S", path_input=True)
    prompt_format: str = setting("auto", "chat format of chat-message pairs: auto (the tokenizer's chat template, else "
                                         "llama2-chat), llama2-chat, chatml, or a Jinja chat template file",
                                 path_input=True)
    system_prompt: str = setting("auto", SYSTEM_PROMPT_HELP, path_input=True)
    skip_bad_lines: bool = setting(False, "count and skip bad pairs (missing field, chosen == rejected, empty answer, "
                                          "prompt too long) instead of stopping")
    loss_type: str = setting("dpo", "dpo (sigmoid), ipo, simpo or orpo, as TRL defines each", choices=LOSS_TYPES)
    beta: float = setting(0.1, "temperature of dpo, ipo (its tau) and simpo", minimum=1e-6, maximum=1000)
    label_smoothing: float = setting(0.0, "dpo and simpo: share of pairs assumed mislabelled (conservative DPO)",
                                     minimum=0, maximum=0.499)
    simpo_gamma: float = setting(0.5, "simpo: target reward margin", minimum=0, maximum=1000)
    orpo_alpha: float = setting(0.1, "orpo: weight of the odds-ratio term (TRL ORPOConfig.beta, the paper's lambda)",
                                minimum=0, maximum=1000)
    sft_weight: float = setting(0.0, "weight of an added NLL term on the chosen answers (TRL's rpo_alpha); dpo, ipo, "
                                     "simpo", minimum=0, maximum=1000)
    finetuning: str = setting("lora", "lora: train a LoRA adapter on the frozen base (4-bit with load_in_4bit: QLoRA); "
                                      "full: train every weight of the model in float32, one process (dpo and ipo "
                                      "take their reference from precompute_reference)", choices=FINETUNING)
    precompute_reference: bool = setting(False, "dpo, ipo: compute the reference log-probabilities of every training "
                                                "and held-out pair once, before the first step, into the run folder "
                                                "(reference_logps.safetensors, checked by sha256 when read back), "
                                                "and skip the reference forward at every step")
    eval_data: list[str] = override([], "held-out sets as NAME=PATH: preference pairs (JSON lines with chosen and "
                                        "rejected) give reward accuracy, text gives bits per byte, e.g. "
                                        "pairs=heldout.jsonl it=heldout_it.txt")

    def validate(self, source):
        self.check_common(source)
        if not self.data:
            raise LlamantinoError(f"{source}: no data given (setting 'data')")
        if self.max_prompt_length >= self.max_length:
            raise LlamantinoError(f"{source}: max_prompt_length {self.max_prompt_length} leaves no room for an answer "
                                  f"within max_length {self.max_length}")
        if self.loss_type == "orpo" and self.sft_weight:
            raise LlamantinoError(f"{source}: sft_weight is not used with orpo (its NLL term is part of the loss)")
        if self.precompute_reference and self.loss_type in REFERENCE_FREE:
            raise LlamantinoError(f"{source}: precompute_reference: {self.loss_type} is reference-free, there is no "
                                  "reference to precompute")
        if self.finetuning == "full":
            if self.loss_type not in REFERENCE_FREE and not self.precompute_reference:
                raise LlamantinoError(f"{source}: finetuning full with {self.loss_type} needs precompute_reference: "
                                      "true (its reference is computed once, never a second copy of the model kept "
                                      "in memory)")
            if self.load_in_4bit:
                raise LlamantinoError(f"{source}: finetuning full trains every weight in float32: set load_in_4bit "
                                      "false (--no-load-in-4bit)")
            if self.train_embeddings != "none":
                raise LlamantinoError(f"{source}: train_embeddings {self.train_embeddings}: finetuning full trains "
                                      "every weight, the embeddings included; leave it at none")
        elif self.train_embeddings != "none":
            raise LlamantinoError(f"{source}: train_embeddings {self.train_embeddings}: prefer trains a LoRA adapter "
                                  "only (its reference is the model with the adapter off)")


# ---------------------------------------------------------------------------------------
# The losses (float32), as TRL 1.16 computes them


@dataclasses.dataclass
class PairLogps:
    """Per pair: summed answer log-probabilities of the policy (and of the reference) and answer lengths."""

    chosen: object
    rejected: object
    chosen_tokens: object
    rejected_tokens: object
    ref_chosen: object = None
    ref_rejected: object = None


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (TRL's ORPO)."""
    import torch

    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def pair_losses(cfg: Config, lp: PairLogps):
    """(loss of each pair, chosen rewards, rejected rewards, chosen logps, rejected logps), float32.

    dpo: -log sigmoid(beta x margin of log-ratios) (with label smoothing: conservative DPO);
    ipo: (margin of token-averaged log-ratios - 1/(2 beta))^2; simpo: token-averaged
    log-probabilities, -log sigmoid(beta x margin - gamma); orpo: token-averaged log-probabilities,
    -alpha x log sigmoid(log odds ratio) (its NLL term is added by the caller). Rewards and
    log-probabilities are the ones TRL logs for each."""
    import torch.nn.functional as F

    c, r = lp.chosen.float(), lp.rejected.float()
    nc, nr = lp.chosen_tokens.float().clamp(min=1), lp.rejected_tokens.float().clamp(min=1)
    ls = cfg.label_smoothing
    if cfg.loss_type in ("dpo", "ipo"):
        chosen_ratio, rejected_ratio = c - lp.ref_chosen.float(), r - lp.ref_rejected.float()
        if cfg.loss_type == "dpo":
            z = cfg.beta * (chosen_ratio - rejected_ratio)
            losses = -F.logsigmoid(z) * (1 - ls) - F.logsigmoid(-z) * ls
        else:
            losses = (chosen_ratio / nc - rejected_ratio / nr - 1 / (2 * cfg.beta)) ** 2
        return losses, cfg.beta * chosen_ratio.detach(), cfg.beta * rejected_ratio.detach(), c, r
    c, r = c / nc, r / nr
    if cfg.loss_type == "simpo":
        z = cfg.beta * ((c - r) - cfg.simpo_gamma / cfg.beta)
        losses = -F.logsigmoid(z) * (1 - ls) - F.logsigmoid(-z) * ls
        return losses, cfg.beta * c.detach(), cfg.beta * r.detach(), c, r
    # orpo. An average log-probability of exactly 0 (float16 rounding) would make log(1 - 1) = -inf.
    cc, rc = c.clamp(max=-1e-7), r.clamp(max=-1e-7)
    log_odds = (cc - rc) - (log1mexp(cc) - log1mexp(rc))
    losses = -cfg.orpo_alpha * F.logsigmoid(log_odds)
    return losses, cfg.orpo_alpha * c.detach(), cfg.orpo_alpha * r.detach(), c, r


def nll_weight(cfg: Config) -> float:
    """Weight of the chosen answers' token-mean NLL: ORPO's own term, or sft_weight."""
    return 1.0 if cfg.loss_type == "orpo" else cfg.sft_weight


# ---------------------------------------------------------------------------------------
# Batches and the loss module


@dataclasses.dataclass
class PairBatch:
    """Pairs as one batch of 2 x pairs rows (chosen first, then rejected), right-padded; labels are
    the answers' tokens (`IGNORE` on prompts and padding)."""

    input_ids: object
    labels: object
    pairs: int
    chosen_tokens: int  # tokens of the NLL term: chosen answers (with their prompts for orpo)
    real_tokens: int
    prompt_labels: object = None  # orpo: the chosen rows' prompt tokens, whose NLL TRL's ORPO adds

    @property
    def positions(self) -> int:
        return int(self.input_ids.numel())


def collate_pairs(pairs, pad_id: int | None, *, prompt_nll: bool = False) -> PairBatch:
    """`prompt_nll`: also label the chosen rows' prompts (after their first token), for ORPO's NLL
    term, which TRL takes over prompt and answer."""
    import torch

    from llamantino.models.loss import IGNORE

    rows = [(p.prompt + p.chosen, len(p.prompt)) for p in pairs] + [(p.prompt + p.rejected, len(p.prompt))
                                                                     for p in pairs]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_id if pad_id is not None else 0, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    for i, (ids, prompt) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, prompt:len(ids)] = torch.tensor(ids[prompt:])
    if not prompt_nll:
        return PairBatch(input_ids, labels, len(pairs), sum(len(p.chosen) for p in pairs),
                         sum(len(ids) for ids, _ in rows))
    prompt_labels = torch.full_like(labels, IGNORE)
    for i, p in enumerate(pairs):
        prompt_labels[i, 1:len(p.prompt)] = torch.tensor(p.prompt[1:], dtype=torch.long)
    return PairBatch(input_ids, labels, len(pairs), sum(len(p.prompt) - 1 + len(p.chosen) for p in pairs),
                     sum(len(ids) for ids, _ in rows), prompt_labels)


def _module():
    import contextlib

    import torch

    class PreferenceLoss(torch.nn.Module):
        """Policy (and reference) answer log-probabilities of a pair batch and the step's share of
        the loss, as one module so DDP sees the forward. Padding is on the right, so causal
        attention keeps it out of every real token: no attention mask is needed."""

        def __init__(self, model, chunk: int, cfg: Config):
            super().__init__()
            from llamantino.models.loss import loss_path

            from llamantino.train.qlora import causal_lm

            self.model, self.cfg = model, cfg
            self.causal_lm = causal_lm(model)  # a PEFT model's base, or the model trained whole
            self.path = loss_path(self.causal_lm, chunk, "chunked")  # per-answer sums: never Liger's
            self.flatten = False

        def logps(self, input_ids, *label_sets):
            """(per-row log-probability sums, counts) for each set of labels, from one forward."""
            from llamantino.models.loss import row_target_logps, row_target_logps_from_logits

            if not self.path.chunk:
                logits = self.model(input_ids=input_ids, use_cache=False).logits
                return [row_target_logps_from_logits(logits, labels) for labels in label_sets]
            hidden = self.causal_lm.model(input_ids=input_ids, use_cache=False).last_hidden_state
            return [row_target_logps(hidden, labels, self.path.head, self.path.chunk) for labels in label_sets]

        def reference_logps(self, input_ids, labels):
            """Per-row answer log-probability sums of the reference: the model with its adapter off
            (a model trained whole has its reference precomputed, before its first step: itself)."""
            from llamantino.train.qlora import is_adapter

            with torch.no_grad(), (self.model.disable_adapter() if is_adapter(self.model)
                                   else contextlib.nullcontext()):
                ((ref, _),) = self.logps(input_ids, labels)
            return ref

        def pair_logps(self, input_ids, labels, prompt_labels=None, ref=None) -> tuple[PairLogps, object]:
            """The pairs' log-probabilities, and the chosen prompts' summed log-probability (with
            `prompt_labels`; else 0). `ref`: the rows' reference log-probabilities, precomputed
            (chosen rows, then rejected); else they are computed here."""
            from llamantino.train.qlora import is_adapter

            n = input_ids.shape[0] // 2
            if ref is None and self.cfg.loss_type not in REFERENCE_FREE:
                if not is_adapter(self.model):  # validated away; never a reference from the trained weights
                    raise LlamantinoError("finetuning full: no precomputed reference log-probabilities")
                ref = self.reference_logps(input_ids, labels)
            found = self.logps(input_ids, labels, *(() if prompt_labels is None else (prompt_labels,)))
            logps, counts = found[0]
            prompts = found[1][0][:n].sum() if prompt_labels is not None else logps.new_zeros(())
            return PairLogps(logps[:n], logps[n:], counts[:n], counts[n:],
                             None if ref is None else ref[:n], None if ref is None else ref[n:]), prompts

        def forward(self, input_ids, labels, n_pairs, n_chosen_tokens, prompt_labels=None, ref=None):
            """(this micro-batch's share of the step's loss, its figures summed over pairs); `ref`:
            precomputed reference log-probabilities of the rows."""
            lp, prompts = self.pair_logps(input_ids, labels, prompt_labels, ref)
            losses, chosen_rewards, rejected_rewards, chosen, rejected = pair_losses(self.cfg, lp)
            nll = -(lp.chosen.float().sum() + prompts)
            loss = losses.sum() / n_pairs
            if nll_weight(self.cfg):
                loss = loss + nll_weight(self.cfg) * nll / n_chosen_tokens
            figures = torch.stack([chosen_rewards.sum(), rejected_rewards.sum(),
                                   (chosen_rewards > rejected_rewards).float().sum(),
                                   (chosen_rewards - rejected_rewards).sum(), chosen.detach().sum(),
                                   rejected.detach().sum(), nll.detach()]).double()
            return loss, figures

    return PreferenceLoss


def make_loss(cfg: Config):
    def build(model, chunk: int, fused: str = "chunked"):
        return _module()(model, chunk, cfg)
    return build


# ---------------------------------------------------------------------------------------
# The pairs of one rank, in a resumable order


class PairSource:
    """The pairs, shuffled anew each epoch (seeded), every `world`-th one for this rank; its
    position (epoch, index) is part of every checkpoint."""

    def __init__(self, pairs: list, *, seed: int, rank: int = 0, world: int = 1, summary: dict | None = None):
        self.pairs, self.seed, self.rank, self.world = pairs, seed, rank, world
        self.summary = summary or {}
        self.epoch, self.index, self.read = 0, 0, 0
        self._order = self._shuffled()

    def _shuffled(self) -> list[int]:
        import torch

        order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return order.tolist()[self.rank::self.world]

    def next_index(self) -> int | None:
        """The position in `pairs` of the next pair (None: there are none)."""
        if not self._order:
            return None
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._shuffled()
        found = self._order[self.index]
        self.index += 1
        self.read += 1
        return found

    def next_pair(self):
        found = self.next_index()
        return None if found is None else self.pairs[found]

    def take_indices(self, n: int) -> list[int]:
        out = []
        while len(out) < n and (found := self.next_index()) is not None:
            out.append(found)
        return out

    def take(self, n: int) -> list:
        return [self.pairs[i] for i in self.take_indices(n)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "read": self.read,
                "pairs_sha256": self.summary.get("pairs_sha256", "")}

    def load_state_dict(self, state: dict) -> None:
        # A position means nothing in other pairs: the data (or how they are rendered) changed.
        if state.get("pairs_sha256") != self.summary.get("pairs_sha256", ""):
            raise LlamantinoError(f"the checkpoint was made on other pairs (sha256 {str(state.get('pairs_sha256'))[:12]}"
                                  f", now {str(self.summary.get('pairs_sha256'))[:12]}): the data changed since; "
                                  "start again with --overwrite")
        self.epoch, self.index, self.read = int(state["epoch"]), int(state["index"]), int(state["read"])
        self._order = self._shuffled()

    def metrics(self) -> dict:
        from llamantino.core.distributed import all_gather_object

        return {**self.summary, "pairs_read": sum(all_gather_object(self.read)), "data_epochs": self.epoch}


# ---------------------------------------------------------------------------------------
# One step, held-out pairs


def _autocast(t):
    import torch

    return torch.autocast(t.device.type, dtype=getattr(torch, t.compute_dtype),
                          enabled=t.device.type == "cuda" and t.compute_dtype != "float32")


def step(t, reference: dict | None = None) -> bool:
    """One optimizer step over `accumulation` micro-batches of `batch_size` pairs. The loss is
    the mean over the step's pairs on every rank (the NLL term: over its chosen tokens), the
    same update as one process with one big batch. `reference`: the precomputed reference
    log-probabilities ({"train": (chosen, rejected)}, filled before the first step), or empty."""
    import contextlib

    import torch

    from llamantino.core import distributed
    from llamantino.train.qlora import apply_update

    if t.step == 0 and t.rank == 0 and t.counters.get("first_eval"):
        write_before(t.cfg, t.counters["first_eval"])  # scored before this step (Objective.evaluate_first)
    micro, refs = [], []
    for _ in range(t.accumulation):
        indices = t.source.take_indices(t.cfg.batch_size)
        if not indices:
            return False
        micro.append(collate_pairs([t.source.pairs[i] for i in indices], t.tokenizer.pad_token_id,
                                   prompt_nll=t.cfg.loss_type == "orpo"))
        refs.append(cached_reference(reference, "train", indices))
    n_pairs, n_chosen = sum(b.pairs for b in micro), sum(b.chosen_tokens for b in micro)
    if t.world > 1:  # DDP averages gradients: / (global count / world) makes them the global batch's mean
        n_pairs, n_chosen = (v / t.world for v in distributed.all_reduce_sums([n_pairs, n_chosen], t.device))
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.device)
    figures = torch.zeros(len(FIELDS), dtype=torch.float64, device=t.device)
    for i, batch in enumerate(micro):
        sync = t.loss.no_sync() if (t.world > 1 and i < len(micro) - 1) else contextlib.nullcontext()
        with sync, _autocast(t):
            loss, sums = t.loss(batch.input_ids.to(t.device), batch.labels.to(t.device), float(n_pairs),
                                float(max(1, n_chosen)),
                                None if batch.prompt_labels is None else batch.prompt_labels.to(t.device),
                                None if refs[i] is None else refs[i].to(t.device))
        t.scaler.scale(loss).backward()
        loss_sum += loss.detach().double()
        figures += sums
    apply_update(t, float(loss_sum), sum(b.positions for b in micro), sum(b.real_tokens for b in micro),
                 extra=_step_figures(t, figures, sum(b.pairs for b in micro), sum(b.chosen_tokens for b in micro)))
    return True


def cached_reference(reference: dict | None, name: str, indices: list[int]):
    """The precomputed reference log-probabilities of these pairs as the batch's rows (chosen, then
    rejected), or None without a precomputed reference."""
    import torch

    if not reference or name not in reference:
        return None
    chosen, rejected = reference[name]
    return torch.cat([chosen[indices], rejected[indices]])


def _step_figures(t, figures, pairs: int, chosen_tokens: int) -> dict:
    from llamantino.core import distributed

    sums = distributed.all_reduce_sums([float(v) for v in figures] + [pairs, chosen_tokens], t.device)
    pairs, chosen_tokens = max(1, sums[-2]), max(1, sums[-1])
    out = {name: value / pairs for name, value in zip(FIELDS[:-1], sums[:-3])}
    out["nll_loss"] = sums[-3] / chosen_tokens
    return out


class HeldOutPairs:
    """A held-out set of pairs scored while training: TRL's reward accuracy and margin, and the
    share of pairs the model itself prefers the chosen answer of."""

    def __init__(self, name: str, source: str, pairs: list, fingerprint: str = "", reference: dict | None = None):
        self.name, self.source, self.pairs, self.fingerprint = name, source, pairs, fingerprint
        self.reference = reference  # the stage's precomputed reference log-probabilities, once filled

    @property
    def columns(self) -> list[str]:
        return [f"eval_{self.name}_{figure}" for figure in EVAL_FIGURES]

    def evaluate(self, t) -> dict:
        import torch

        from llamantino.core import distributed

        module = getattr(t.loss, "module", t.loss)
        mine = list(range(len(self.pairs)))[t.rank::t.world]
        sums = [0.0, 0.0, 0.0, 0.0]
        t.model.eval()
        try:
            with torch.no_grad(), _autocast(t):
                for start in range(0, len(mine), t.cfg.eval_batch_size):
                    indices = mine[start:start + t.cfg.eval_batch_size]
                    batch = collate_pairs([self.pairs[i] for i in indices], t.tokenizer.pad_token_id)
                    ref = cached_reference(self.reference, f"eval_{self.name}", indices)
                    lp, _ = module.pair_logps(batch.input_ids.to(t.device), batch.labels.to(t.device),
                                              ref=None if ref is None else ref.to(t.device))
                    _, chosen_rewards, rejected_rewards, chosen, rejected = pair_losses(t.cfg, lp)
                    sums[0] += float((chosen_rewards > rejected_rewards).float().sum())
                    sums[1] += float((chosen_rewards - rejected_rewards).sum())
                    sums[2] += float((chosen > rejected).float().sum())
                    sums[3] += batch.pairs
        finally:
            t.model.train()
        correct, margins, prefers, n = distributed.all_reduce_sums(sums, t.device)
        n = max(1.0, n)
        return dict(zip(self.columns, (correct / n, margins / n, prefers / n)))


def split_eval_data(specs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`eval_data` -> (text sets as given, [(name, path)] of preference-pair files): a local JSON
    lines file whose first record has `chosen` and `rejected` holds pairs."""
    from llamantino.train.heldout import parse_sets

    text, pairs = [], []
    for (name, path), spec in zip(parse_sets(specs), specs):
        (pairs.append((name, path)) if _holds_pairs(path) else text.append(spec))
    return text, pairs


def _holds_pairs(path: str) -> bool:
    import gzip

    if not path.endswith(PAIR_SUFFIXES) or not Path(path).is_file():
        return False
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "")
        record = json.loads(first)
    except (OSError, UnicodeDecodeError, ValueError):
        return False  # read as text, which says what is wrong with it
    return isinstance(record, dict) and "chosen" in record and "rejected" in record


# ---------------------------------------------------------------------------------------
# The stage


def reference_kind(cfg: Config) -> str:
    if cfg.loss_type in REFERENCE_FREE:
        return f"none ({cfg.loss_type} is reference-free)"
    base = "the base with the starting adapter merged in" if cfg.adapter else "the base"
    if cfg.finetuning == "full":
        found = f"the model before the first step: {base}"
    elif cfg.adapter:
        found = f"the model with the new adapter off: {base}"
    else:
        found = "the model with the adapter off: the base"
    if cfg.precompute_reference:
        return f"{found}, precomputed once before the first step ({reference.FILE})"
    return found


def starting_adapter(cfg: Config) -> str:
    if not cfg.adapter:
        return "none"
    trained = "the whole model trained" if cfg.finetuning == "full" else "a new adapter trained on top"
    return f"merged into the base; {trained}"


def reference_identity(cfg: Config) -> dict:
    """What the reference log-probabilities depend on besides the pairs: the model (and starting
    adapter), how they are loaded and the precision they run in."""
    from llamantino.core.manifest import describe_inputs

    return {"model": describe_inputs([cfg.model])[0], "adapter": describe_inputs([cfg.adapter])[0] if cfg.adapter
            else None, "merge_dtype": cfg.merge_dtype if cfg.adapter else None, "finetuning": cfg.finetuning,
            "load_in_4bit": cfg.load_in_4bit, "quant_type": cfg.quant_type if cfg.load_in_4bit else None,
            "double_quant": cfg.double_quant if cfg.load_in_4bit else None, "compute_dtype": cfg.compute_dtype,
            "attn_implementation": cfg.attn_implementation}


def precompute_reference(t, cfg: Config, train_set, heldout: list, values: dict) -> None:
    """Fill `values` with the reference log-probabilities of the training pairs and every held-out
    set of pairs (`reference.Pass`): read back and checked, or computed once with the model as it
    is before the first step, adapter off. Every rank computes a share of the parts, rank 0 writes
    them, every rank reads the file."""
    import torch

    from llamantino.core import distributed
    from llamantino.core.manifest import record_outputs
    from llamantino.train.qlora import is_adapter

    if not is_adapter(t.model) and t.step > 0 and not (t.run_dir / reference.INFO).is_file():
        raise LlamantinoError(f"{t.run_dir / reference.INFO}: missing after step {t.step}: the reference of a model "
                              "trained whole is the model before its first step; start again with --overwrite")
    module = getattr(t.loss, "module", t.loss)
    sets = [("train", train_set.pairs, train_set.fingerprint)] + [(f"eval_{h.name}", h.pairs, h.fingerprint)
                                                                    for h in heldout]

    def compute(pairs):
        batch = collate_pairs(pairs, t.tokenizer.pad_token_id)
        with _autocast(t):
            ref = module.reference_logps(batch.input_ids.to(t.device), batch.labels.to(t.device))
        return ref[:batch.pairs], ref[batch.pairs:]

    work = reference.Pass(cfg.output, sets, reference_identity(cfg))

    def begin():
        record_outputs(cfg.output, *reference.OUTPUTS)
        return work.begin()

    started = time.time()
    committed = distributed.on_rank0(begin)
    if committed is not None:
        # Every rank computes one part of each round; rank 0 writes them in order and commits.
        t.model.eval()  # no dropout in the reference
        try:
            for first in range(committed, work.total, t.world):
                index = first + t.rank
                mine = work.compute_part(index, compute, cfg.eval_batch_size) if index < work.total else None
                gathered = distributed.all_gather_object(mine)
                distributed.on_rank0(lambda: [work.commit(first + r, part) for r, part in enumerate(gathered)
                                              if part is not None])
        finally:
            t.model.train()
    record = distributed.on_rank0(lambda: work.finish() if committed is not None else
                                  reference.load(cfg.output, work.expected)[1])
    found, _ = reference.load(cfg.output, work.expected)
    values.update({name: (chosen.to(torch.float32), rejected.to(torch.float32))
                   for name, (chosen, rejected) in found.items()})
    t.info.update(reference_logps=reference.FILE, reference_logps_sha256=record["sha256"],
                  reference_seconds=round(time.time() - started, 2))
    if t.rank == 0:
        log.info("reference log-probabilities of %d pairs: %s (sha256 %s)", sum(len(s[1]) for s in sets),
                 reference.FILE, record["sha256"][:12])


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.distributed import dist_env
    from llamantino.data.preference import load_pairs
    from llamantino.data.prompts import prompt_files, prompt_format
    from llamantino.data.streaming import expand_sources
    from llamantino.train.adapt import check_inputs
    from llamantino.train.qlora import Objective, train
    from llamantino.train.sft import merged_base

    if cfg.finetuning == "full" and dist_env()[1] > 1:
        raise LlamantinoError(f"finetuning full trains on one process ({dist_env()[1]} started): launch it without "
                              "torchrun, or use finetuning lora (DDP)")
    tokenizer = check_inputs(cfg)
    if cfg.adapter:
        from llamantino.models.modeling import check_adapter

        check_adapter(cfg.adapter)
    # The tokenizer saved with the run renders the training format (`apply_chat_template`).
    chat = prompt_format(cfg.prompt_format, tokenizer, cfg.system_prompt)
    tokenizer.chat_template = chat.chat_template
    options = {"prompt_format": cfg.prompt_format, "system_prompt": cfg.system_prompt, "max_length": cfg.max_length,
               "max_prompt_length": cfg.max_prompt_length, "skip_bad_lines": cfg.skip_bad_lines}
    loaded = load_pairs(cfg.data, tokenizer, **options)
    if not loaded.pairs:
        raise LlamantinoError(f"{', '.join(cfg.data)}: no preference pair to train on")
    text_sets, pair_sets = split_eval_data(cfg.eval_data)
    cached: dict = {}  # the precomputed reference log-probabilities, filled before the first step
    heldout = [HeldOutPairs(name, path, found.pairs, found.fingerprint, cached)
               for name, path in pair_sets for found in [load_pairs([path], tokenizer, **options)]]
    summary = {"pairs": len(loaded.pairs), "pairs_cut": loaded.cut, "pairs_skipped": loaded.skipped,
               "pairs_sha256": loaded.fingerprint, "prompt_format": chat.name, "end_of_turn": chat.end_of_turn}

    def evaluate(t) -> dict:
        out = {}
        for held in heldout:
            out.update(held.evaluate(t))
        return out

    objective = Objective(
        make_loss=make_loss(cfg), step=functools.partial(step, reference=cached), fields=FIELDS,
        evaluate=evaluate if heldout else None, eval_fields=tuple(c for h in heldout for c in h.columns),
        evaluate_first=True, text_eval=text_sets,
        info={"loss_type": cfg.loss_type, "reference": reference_kind(cfg), "finetuning": cfg.finetuning,
              "starting_adapter": starting_adapter(cfg)},
        prepare=(lambda t: precompute_reference(t, cfg, loaded, heldout, cached)) if cfg.precompute_reference else None,
        full=cfg.finetuning == "full")
    inputs = list(expand_sources(cfg.data)) + [path for _, path in pair_sets] + prompt_files(cfg.prompt_format,
                                                                                             cfg.system_prompt)
    result = train(KIND, cfg, lambda rank, world: PairSource(loaded.pairs, seed=cfg.seed, rank=rank, world=world,
                                                             summary=summary),
                   overwrite=overwrite, resume=resume, tokenizer=tokenizer,
                   base_model=(lambda: merged_base(cfg)) if cfg.adapter else None, inputs=inputs, objective=objective)
    if result["status"] == "done" and dist_env()[0] == 0:
        shutil.rmtree(Path(cfg.output) / "merged-base", ignore_errors=True)  # a full copy: only needed to train
    return result


BEFORE = "heldout_before.json"


def write_before(cfg: Config, before: dict) -> None:
    """The held-out figures of the model before the first step (the model tuned from) as a result
    file of its own, which `report compare` reads next to the run's final figures."""
    from llamantino.core.fileio import atomic_write_json
    from llamantino.core.manifest import record_outputs

    record_outputs(cfg.output, BEFORE)
    atomic_write_json(Path(cfg.output) / BEFORE, {"stage": KIND, "step": 0,
                                                  "settings": {"eval_data": list(cfg.eval_data)}, **before})
