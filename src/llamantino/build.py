"""`llamantino build`: rebuild a released model from its chain, checking every checksum.

A chain starts from a base model and applies steps in order:

    adapter PATH   attach a LoRA adapter (the next step merges it)
    merge          fold the attached adapter into the weights
    diff PATH      apply an exact weight difference (`llamantino diff apply`)

The ten released models take their chains from their recipes' `release:` sections
(`llamantino build --list`), e.g.

    meta-llama/Llama-2-7b-hf -> +adapter swap-uniba/LLaMAntino-2-7b-hf-ITA -> merge
                             -> +diff swap-uniba/LLaMAntino-2-7b-hf-dolly-ITA

Inputs are looked up under `--base-dir`, one folder per hub name:

    BASE_DIR/meta-llama/Llama-2-7b-hf                  base model (safetensors, config, tokenizer)
    BASE_DIR/swap-uniba/LLaMAntino-2-7b-hf-ITA         released adapter
    BASE_DIR/swap-uniba/LLaMAntino-2-7b-hf-dolly-ITA   released weight difference

`--download` fetches the missing ones from the Hugging Face hub into the same places
(the Meta models need an accepted licence and a token). A released folder's SHA256SUMS
is checked before use; a weight difference checks each base tensor and each result.
Intermediate models live in a temporary folder next to the output and are removed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from llamantino.config import setting
from llamantino.errors import LlamantinoError
from llamantino.merge import DTYPES

KIND = "build"
CHECKSUMS = "SHA256SUMS"
STEP_KINDS = ("adapter", "merge", "diff")
# What a download fetches: safetensors weights only (Meta's repositories also hold .bin copies).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", CHECKSUMS]
TORCH_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclasses.dataclass
class Step:
    kind: str  # adapter, merge or diff
    path: str = ""  # the adapter or difference (folder, or hub name under --base-dir)

    def __str__(self) -> str:
        return "merge" if self.kind == "merge" else f"+{self.kind} {self.path}"


def parse_step(text: str) -> Step:
    """'adapter:PATH', 'merge' or 'diff:PATH'."""
    kind, _, path = text.partition(":")
    if kind not in STEP_KINDS or (kind == "merge") != (path == ""):
        raise LlamantinoError(f"chain step {text!r}: expected 'adapter:PATH', 'merge' or 'diff:PATH'")
    return Step(kind, path)


def check_chain(steps: list[Step]) -> None:
    """Every adapter is merged by the next step; a difference applies to a merged model."""
    if not steps:
        raise LlamantinoError("empty chain: give adapters to merge or a weight difference")
    for i, step in enumerate(steps):
        previous = steps[i - 1].kind if i else None
        if step.kind not in STEP_KINDS:
            raise LlamantinoError(f"chain step {i + 1}: unknown kind '{step.kind}'")
        if step.kind == "merge" and previous != "adapter":
            raise LlamantinoError(f"chain step {i + 1}: 'merge' must follow an 'adapter' step")
        if step.kind != "merge" and previous == "adapter":
            raise LlamantinoError(f"chain step {i + 1}: the adapter of step {i} must be merged first")
    if steps[-1].kind == "adapter":
        raise LlamantinoError("the chain ends with an adapter: add a 'merge' step")


def format_chain(base: str, steps: list[Step]) -> str:
    return " -> ".join([base] + [str(s) for s in steps])


# ---------------------------------------------------------------------------------------
# The ten released models


def released_models() -> list[str]:
    from llamantino.recipes import list_recipes, read_release

    out = []
    for name in list_recipes():
        try:
            if read_release(name).released_as != "none":
                out.append(name)
        except LlamantinoError:
            out.append(name)  # listed, so `build --list` shows what is wrong with it
    return out


def release_chain(name: str) -> tuple[str, list[Step]]:
    """(base hub name, steps) of a released model, following its parents' recipes."""
    from llamantino.recipes import list_recipes, read_release

    info = read_release(name)
    if info.released_as == "none":
        raise LlamantinoError(f"recipe {name} is not released (released_as: none)")
    if not info.hub_repo:
        raise LlamantinoError(f"recipe {name}: release.hub_repo is empty")
    if info.parent in list_recipes():
        if not info.merge_parent:
            raise LlamantinoError(f"recipe {name}: a parent recipe ({info.parent}) needs merge_parent: true")
        base, steps = release_chain(info.parent)
    elif info.parent:
        base, steps = info.parent, []
    else:
        raise LlamantinoError(f"recipe {name}: release.parent is empty")
    if info.released_as == "adapter":
        return base, steps + [Step("adapter", info.hub_repo), Step("merge")]
    return base, steps + [Step("diff", info.hub_repo)]


def list_text() -> str:
    names = released_models()
    width = max(len(n) for n in names) if names else 0
    lines = []
    for name in names:
        try:
            chain = format_chain(*release_chain(name))
        except LlamantinoError as exc:
            chain = f"(invalid: {exc})"
        lines.append(f"{name.ljust(width)}  {chain}")
    return "\n".join(lines)


def resolve(name: str, base_dir, download: bool) -> Path:
    """A hub name's folder under base_dir, fetched from the hub only when asked."""
    folder = Path(base_dir) / name
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    if not download:
        raise LlamantinoError(f"{folder}: missing; put {name} there or pass --download to fetch it from the hub")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=name, local_dir=folder, allow_patterns=DOWNLOAD_PATTERNS)
    except Exception as exc:  # network, authentication or a missing repository: one line for the user
        raise LlamantinoError(f"download of {name} failed: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
    return folder


# ---------------------------------------------------------------------------------------
# Building


def verify_checksums(folder) -> str:
    """Check the files listed in a release's SHA256SUMS; say what was checked."""
    from llamantino.fileio import sha256_file

    path = Path(folder) / CHECKSUMS
    if not path.is_file():
        return f"{folder}: no {CHECKSUMS}, files not checked"
    bad = []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines:
        digest, _, name = line.partition("  ")
        file = Path(folder) / name
        if not file.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(file) != digest:
            bad.append(f"{name} (sha256 differs)")
    if bad:
        raise LlamantinoError(f"{folder}: files do not match {CHECKSUMS}: {', '.join(bad)}")
    return f"{folder}: {len(lines)} files match {CHECKSUMS}"


def chain_dtype(base, steps: list[Step], dtype: str) -> str:
    """'auto': the dtype the first weight difference expects, else the base's own dtype."""
    from llamantino.weightdiff import base_dtypes

    if dtype != "auto":
        return dtype
    diff = next((s for s in steps if s.kind == "diff"), None)
    if diff is not None and any(s.kind == "merge" for s in steps[: steps.index(diff)]):
        wanted = {TORCH_DTYPE_NAMES.get(d, d) for d in base_dtypes(diff.path) if d in TORCH_DTYPE_NAMES}
        if len(wanted) != 1:
            raise LlamantinoError(f"{diff.path}: expects base tensors in {sorted(wanted)}: pass --dtype")
        return wanted.pop()
    config_path = Path(base) / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    own = config.get("dtype") or config.get("torch_dtype")
    return own if own in DTYPES else "float32"


def build_into(folder, base, steps: list[Step], *, dtype: str = "auto", max_shard_size: str = "5GB") -> dict:
    """Run the chain; the final model lands in the existing empty folder `folder`."""
    from llamantino.merge import merge_into
    from llamantino.weightdiff import apply_into

    check_chain(steps)
    folder = Path(folder)
    if not Path(base).is_dir():
        raise LlamantinoError(f"{base}: no such base model folder")
    t0 = time.time()
    dtype = chain_dtype(base, steps, dtype)
    checks, log = [], []
    current, pending = Path(base), None
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.chain-", dir=folder.parent))
    try:
        for i, step in enumerate(steps):
            dest = folder if i == len(steps) - 1 else work / f"step-{i + 1}"
            if step.kind == "adapter":
                checks.append(verify_checksums(step.path))
                pending = step.path
                continue
            dest.mkdir(exist_ok=True)
            if step.kind == "merge":
                merge_into(dest, current, pending, dtype=dtype, max_shard_size=max_shard_size)
                log.append(f"merged {pending} into {current} ({dtype})")
                pending = None
            else:
                checks.append(verify_checksums(step.path))
                summary = apply_into(current, step.path, dest)
                checks.append(f"{step.path}: {summary['tensors']} base tensors and results match their sha256")
                log.append(f"applied {step.path} to {current}")
            if work in current.parents:
                shutil.rmtree(current)  # an intermediate model is not needed once used
            current = dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"chain": format_chain(str(base), steps), "dtype": dtype, "steps": log, "checks": checks,
            "seconds": round(time.time() - t0, 1)}


def build_chain(base, steps, output, *, dtype: str = "auto", max_shard_size: str = "5GB",
                overwrite: bool = False) -> dict:
    """Library entry point: rebuild `base` + `steps` (Step objects or 'adapter:PATH', 'merge',
    'diff:PATH') into `output`, which appears only when complete."""
    from llamantino.fileio import atomic_dir

    steps = [s if isinstance(s, Step) else parse_step(s) for s in steps]
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise LlamantinoError(f"{output}: output folder exists and is not empty; pass overwrite to replace it")
    with atomic_dir(output) as tmp:
        return build_into(tmp, base, steps, dtype=dtype, max_shard_size=max_shard_size)


# ---------------------------------------------------------------------------------------
# The stage and the command


@dataclasses.dataclass
class Config:
    output: str = setting("", "folder to write the rebuilt model into")
    name: str = setting("", "a released model (see `llamantino build --list`); its chain comes from its recipe")
    base_dir: str = setting("", "folder holding the chain's inputs as BASE_DIR/<hub name>", path_input=True)
    download: bool = setting(False, "fetch missing inputs from the hub into --base-dir", fingerprint=False)
    base: str = setting("", "base model folder of an explicit chain (instead of a name)", path_input=True)
    adapters: list[str] = setting([], "adapter folders merged into the base one after the other", path_input=True)
    diff: str = setting("", "weight difference folder applied last", path_input=True)
    dtype: str = setting("auto", "dtype of the merges; auto: what the weight difference expects, "
                                 "else the base's own", choices=("auto",) + DTYPES)
    max_shard_size: str = setting("5GB", "largest safetensors file of merged models")

    def validate(self, source):
        if not self.output:
            raise LlamantinoError(f"{source}: setting 'output' is required")
        if bool(self.name) == bool(self.base):
            raise LlamantinoError(f"{source}: give either a released model name or 'base' (with adapters/diff)")
        if self.name and not self.base_dir:
            raise LlamantinoError(f"{source}: building {self.name} needs --base-dir (where its inputs are)")
        if self.name and (self.adapters or self.diff):
            raise LlamantinoError(f"{source}: a released model's chain comes from its recipe; "
                                  "'adapters' and 'diff' go with 'base'")


def chain_of(cfg: Config) -> tuple[str, list[Step]]:
    """The config's chain with every input resolved to a folder."""
    if cfg.name:
        base, steps = release_chain(cfg.name)
        base = str(resolve(base, cfg.base_dir, cfg.download))
        steps = [Step(s.kind, str(resolve(s.path, cfg.base_dir, cfg.download)) if s.path else "") for s in steps]
        return base, steps
    steps = [step for a in cfg.adapters for step in (Step("adapter", a), Step("merge"))]
    if cfg.diff:
        steps.append(Step("diff", cfg.diff))
    return cfg.base, steps


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.fileio import atomic_dir
    from llamantino.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    base, steps = chain_of(cfg)
    with atomic_dir(cfg.output) as tmp:
        metrics = build_into(tmp, base, steps, dtype=cfg.dtype, max_shard_size=cfg.max_shard_size)
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs([base] + [s.path for s in steps if s.path]),
                       metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"steps": len(metrics["steps"]), "dtype": metrics["dtype"]}, "metrics": metrics}


def add_arguments(parser):
    from llamantino.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"name": {"nargs": "?", "help": "released model to rebuild"}})
    parser.add_argument("--list", action="store_true", help="list the released models and their chains")


def main(args) -> int:
    from llamantino.runner import run_stage_command

    if args.list:
        print(list_text())
        return 0
    return run_stage_command(KIND, args, positional=("name",))
