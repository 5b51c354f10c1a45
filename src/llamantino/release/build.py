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
(the Meta models need an accepted licence and a token): the repository's file names are
checked before anything is fetched, into a temporary folder renamed into place once
complete. A released folder (adapter, weight difference) must carry SHA256SUMS listing
every file, each checked before use: without one the build is refused unless
`--no-verify` is given, since a checksum list that can be deleted protects nothing. A
weight difference then checks every rebuilt tensor against its sha256. Every input is
refused if it holds a symbolic link leading out of its folder. Intermediate models live
in a temporary folder next to the output and are removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import TMP_PREFIX, check_member_name, safe_join
from llamantino.models.weight_files import DTYPES

KIND = "build"
CHECKSUMS = "SHA256SUMS"
STEP_KINDS = ("adapter", "merge", "diff")
# What a download fetches: safetensors weights only (Meta's repositories also hold .bin copies).
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", CHECKSUMS]
TORCH_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # as `sha256sum` writes them (text or binary)
NOT_RELEASED = ("manifest.json", "run.json")  # llamantino's own records of the release run


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
    from llamantino.core.recipes import list_recipes, read_release

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
    from llamantino.core.recipes import list_recipes, read_release

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


def hub_folder(name: str, base_dir) -> Path:
    """BASE_DIR/<owner>/<name> for a hub repository name (recipes may come from strangers)."""
    if not HUB_NAME.fullmatch(name):
        raise LlamantinoError(f"{name!r}: not a hub repository name (owner/name)")
    return Path(base_dir) / check_member_name(name, f"hub repository {name!r}")


def resolve(name: str, base_dir, download: bool) -> Path:
    """A hub name's folder under base_dir, fetched from the hub only when asked."""
    folder = hub_folder(name, base_dir)
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    if not download:
        raise LlamantinoError(f"{folder}: missing; put {name} there or pass --download to fetch it from the hub")
    fetch(name, folder)
    return folder


def _repo_listing(name: str) -> tuple[str, list[str]]:
    """(commit, file names) of a hub model repository."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(name)
    return info.sha, [sibling.rfilename for sibling in info.siblings or []]


def fetch(name: str, folder: Path) -> None:
    """Download the files of `name` that a build reads into `folder`: names checked before
    anything is fetched, one pinned commit, a temporary folder renamed into place once
    complete and checked (no symbolic links, no file the listing did not announce)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    try:
        revision, names = _repo_listing(name)
    except Exception as exc:  # network, authentication or a missing repository: one line for the user
        raise _download_failed(name, exc) from None
    wanted = set(filter_repo_objects(names, allow_patterns=DOWNLOAD_PATTERNS))
    for file in sorted(wanted):
        check_member_name(file, f"hub repository {name}: file")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.download-{os.getpid()}"
    try:
        try:
            snapshot_download(repo_id=name, revision=revision, local_dir=tmp, allow_patterns=DOWNLOAD_PATTERNS)
        except Exception as exc:
            raise _download_failed(name, exc) from None
        _check_download(tmp, name, names)
        if folder.is_dir():
            folder.rmdir()  # empty (resolve's caller found nothing in it)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_download(tmp: Path, name: str, names: list[str]) -> None:
    """No symbolic link, and no file the repository's listing did not announce."""
    links = [p for p in tmp.rglob("*") if p.is_symlink()]
    got = {str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and not _hidden(p.relative_to(tmp))}
    odd = [str(p.relative_to(tmp)) for p in links] or sorted(got - set(names))
    if odd:
        raise LlamantinoError(f"download of {name}: unexpected file or link {odd[0]}; nothing kept")


def _download_failed(name: str, exc: Exception) -> LlamantinoError:
    return LlamantinoError(f"download of {name} failed: {type(exc).__name__}: {exc}".replace("\n", " "))


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


# ---------------------------------------------------------------------------------------
# Building


def read_checksums(folder) -> dict[str, str]:
    """file name -> sha256 of a release's SHA256SUMS; every name a plain one inside `folder`."""
    path = safe_join(folder, CHECKSUMS, f"release {folder}")
    listed: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise LlamantinoError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = CHECKSUM_LINE.fullmatch(line)
        if not match:
            raise LlamantinoError(f"{path}:{number}: not a '<sha256>  <file name>' line")
        name = match.group(2)
        safe_join(folder, name, f"{path}:{number}")
        if name in listed:
            raise LlamantinoError(f"{path}:{number}: {name} is listed twice")
        listed[name] = match.group(1).lower()
    return listed


def verify_checksums(folder, *, required: bool = True) -> str:
    """Check a release folder against its SHA256SUMS, which must list every file in it
    (llamantino's own run records and hidden files apart); say what was checked."""
    from llamantino.core.fileio import sha256_file

    folder = Path(folder)
    if not safe_join(folder, CHECKSUMS, f"release {folder}").is_file():
        if required:
            raise LlamantinoError(f"{folder}: no {CHECKSUMS}, so its files cannot be checked; pass --no-verify "
                                  "to use it anyway")
        return f"{folder}: no {CHECKSUMS}, files not checked (--no-verify)"
    listed = read_checksums(folder)
    present = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if not p.is_dir() and not _hidden(p.relative_to(folder)))
    unlisted = [f for f in present if f not in listed and f != CHECKSUMS and f not in NOT_RELEASED]
    if unlisted:
        raise LlamantinoError(f"{folder}: file(s) not listed in {CHECKSUMS}, so not checkable: {', '.join(unlisted)}")
    bad = []
    for name, digest in listed.items():
        file = folder / name
        if not file.is_file():
            bad.append(f"{name} (missing)")
        elif sha256_file(file) != digest:
            bad.append(f"{name} (sha256 differs)")
    if bad:
        raise LlamantinoError(f"{folder}: files do not match {CHECKSUMS}: {', '.join(bad)}")
    return f"{folder}: {len(listed)} files match {CHECKSUMS}"


def check_inputs(base, steps: list[Step], *, verify: bool = True) -> list[str]:
    """Before any work: no input holds a link leading out of it, every released folder
    matches its SHA256SUMS. Returns what was checked."""
    from llamantino.models.weight_files import require_safetensors
    from llamantino.models.weight_files import refuse_links_outside

    if not Path(base).is_dir():
        raise LlamantinoError(f"{base}: no such base model folder")
    refuse_links_outside(base, "base model")
    require_safetensors(base, "model")
    checks = []
    for step in steps:
        if step.path:
            if not Path(step.path).is_dir():
                raise LlamantinoError(f"{step.path}: no such {step.kind} folder")
            refuse_links_outside(step.path, step.kind)
            if step.kind == "adapter":
                require_safetensors(step.path, "adapter")
            checks.append(verify_checksums(step.path, required=verify))
    return checks


def chain_dtype(base, steps: list[Step], dtype: str) -> str:
    """'auto': the dtype the first weight difference expects, else the base's own dtype."""
    from llamantino.release.diff_manifest import base_dtypes

    if dtype != "auto":
        return dtype
    diff = next((s for s in steps if s.kind == "diff"), None)
    if diff is not None and any(s.kind == "merge" for s in steps[: steps.index(diff)]):
        wanted = {TORCH_DTYPE_NAMES.get(d, d) for d in base_dtypes(diff.path) if d in TORCH_DTYPE_NAMES}
        if len(wanted) != 1:
            raise LlamantinoError(f"{diff.path}: expects base tensors in {sorted(wanted)}: pass --dtype")
        return wanted.pop()
    from llamantino.core.fileio import read_json_object

    config_path = safe_join(base, "config.json", f"base model {base}")
    config = read_json_object(config_path, "config") if config_path.is_file() else {}
    own = config.get("dtype") or config.get("torch_dtype")
    return own if own in DTYPES else "float32"


def check_merge_methods(base, steps: list[Step]) -> None:
    """Before any work: each weight difference was made against a merge by the method this
    chain's merge uses (a merge step here merges with MERGE_METHOD)."""
    from llamantino.models.merge import MERGE_METHOD, merge_method_of
    from llamantino.release.diff_manifest import check_merge_method, read_diff_manifest

    method = merge_method_of(base)
    for i, step in enumerate(steps):
        if step.kind == "merge":
            method = MERGE_METHOD
        elif step.kind == "diff":
            label = str(base) if i == 0 else format_chain(str(base), steps[:i])
            check_merge_method(read_diff_manifest(step.path), method, label, step.path)
            method = None  # the difference's target: no merge of ours


def build_into(folder, base, steps: list[Step], *, dtype: str = "auto", max_shard_size: str = "5GB",
               verify: bool = True) -> dict:
    """Run the chain; the final model lands in the existing empty folder `folder`."""
    from llamantino.models.merge import MERGE_METHOD, merge_into
    from llamantino.release.weightdiff import apply_into

    check_chain(steps)
    folder = Path(folder)
    t0 = time.time()
    checks = check_inputs(base, steps, verify=verify)
    check_merge_methods(base, steps)
    dtype = chain_dtype(base, steps, dtype)
    log = []
    current, pending = Path(base), None
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}chain-{folder.name}-", dir=folder.parent))
    try:
        for i, step in enumerate(steps):
            dest = folder if i == len(steps) - 1 else work / f"step-{i + 1}"
            if step.kind == "adapter":
                pending = step.path
                continue
            dest.mkdir(exist_ok=True)
            if step.kind == "merge":
                merge_into(dest, current, pending, dtype=dtype, max_shard_size=max_shard_size)
                log.append(f"merged {pending} into {current} ({dtype})")
                pending = None
            else:
                # errors name the user's base and what was merged into it, not a temporary folder
                label = str(base) if i == 0 else f"{format_chain(str(base), steps[:i])} ({dtype})"
                summary = apply_into(current, step.path, dest, base_label=label)
                checks.append(f"{step.path}: all {summary['tensors']} rebuilt tensors match their sha256 "
                              "(so every base tensor is the one the difference was made from)")
                log.append(f"applied {step.path} to {label}")
            if work in current.parents:
                shutil.rmtree(current)  # an intermediate model is not needed once used
            current = dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"chain": format_chain(str(base), steps), "dtype": dtype, "steps": log, "checks": checks,
              "seconds": round(time.time() - t0, 1)}
    if steps[-1].kind == "merge":  # the output is a merge: say by which method
        report["merge_method"] = MERGE_METHOD
    return report


def build_chain(base, steps, output, *, dtype: str = "auto", max_shard_size: str = "5GB",
                overwrite: bool = False, verify: bool = True) -> dict:
    """Library entry point: rebuild `base` + `steps` (Step objects or 'adapter:PATH', 'merge',
    'diff:PATH') into `output`, which appears only when complete. The output may not be,
    hold or lie inside an input; `overwrite` replaces only a previous llamantino output."""
    from llamantino.core.fileio import atomic_dir
    from llamantino.models.weight_files import check_output, write_marker

    steps = [s if isinstance(s, Step) else parse_step(s) for s in steps]
    output = check_output(output, [("base", base)] + [(s.kind, s.path) for s in steps if s.path], overwrite)
    with atomic_dir(output) as tmp:
        report = build_into(tmp, base, steps, dtype=dtype, max_shard_size=max_shard_size, verify=verify)
        merged = {"merge_method": report["merge_method"]} if "merge_method" in report else None
        write_marker(tmp, KIND, metrics=merged)
    return report


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
    verify: bool = setting(True, "check every released folder against its SHA256SUMS, which must list every "
                                 "file; --no-verify also takes folders without one (their files unchecked; "
                                 "a weight difference still checks every tensor)", fingerprint=False)

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
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        return {"status": "skipped (done)", **_summary(read_manifest(cfg.output)["metrics"])}
    base, steps = chain_of(cfg)
    with atomic_dir(cfg.output) as tmp:
        metrics = build_into(tmp, base, steps, dtype=cfg.dtype, max_shard_size=cfg.max_shard_size,
                             verify=cfg.verify)
        write_manifest(tmp, KIND, cfg, inputs=describe_inputs([base] + [s.path for s in steps if s.path]),
                       metrics=metrics)
    return {"status": "done", **_summary(metrics)}


def _summary(metrics: dict) -> dict:
    return {"headline": {"steps": len(metrics["steps"]), "dtype": metrics["dtype"]}, "metrics": metrics}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    # SUPPRESS: without a name, the setting keeps its default (an explicit chain: --base ...)
    add_stage_arguments(parser, KIND, positional={"name": {"nargs": "?", "default": argparse.SUPPRESS,
                                                           "help": "released model to rebuild"}})
    parser.add_argument("--list", action="store_true", help="list the released models and their chains")


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    if args.list:
        print(list_text())
        return 0
    return run_stage_command(KIND, args, positional=("name",))
