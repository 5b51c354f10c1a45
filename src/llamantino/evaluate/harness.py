"""`llamantino eval lm-eval`: lm-evaluation-harness on a model loaded the llamantino way.

    llamantino eval lm-eval --model runs/demo/base --adapter runs/demo/adapt \\
        --tasks leaderboard-it --samples --output eval/adapted
    llamantino eval lm-eval --model PATH --tasks arc_it m_mmlu_it --data-dir hub_copies/ --output out/

The model, adapter (optionally on a 4-bit base) and tokenizer are loaded exactly as every
other stage loads them, wrapped in lm-eval's `HFLM` and run with `lm_eval.simple_evaluate`
in this process, so the figures are lm-eval's own (a test checks them against its command
line). The output folder gets lm-eval's results JSON, unchanged, and `manifest.json` with
the metrics; the table printed is lm-eval's.

Tasks: any lm-eval task, group or tag name, a task YAML file, tasks under `--include-path`,
or a named suite (`SUITES`). Offline by default: a task whose dataset lives on the hub is
pointed at a local copy, found under `--data-dir` (hub layout: DATA_DIR/<owner>/<name>/...),
in the bundled samples (`--samples`), or in the hub cache; lm-eval gets a small override
config (`include:` the original, `dataset_path: json`, `data_files: ...`) that keeps the
task's name. Nothing is downloaded unless `--allow-download`. Inside a group, a task whose
code fails to import (the EVALITA-LLM summarisation tasks call `evaluate.load("rouge")`,
which needs the network) is skipped, with the reason, and the group runs without it.

Rolling log-likelihood tasks (bits per byte) run with `add_bos_token=False`: lm-eval
>= 0.4.9.2 otherwise puts the start token in twice with tokenizers that add it themselves
(LLaMA-style), and its figure no longer matches `eval bpb`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import re
import sys
import tempfile
from pathlib import Path

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.models.weight_files import DTYPES

KIND = "lm_eval"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "lm_eval"
INSTALL_HINT = "pip install 'llamantino[eval]'"


@dataclasses.dataclass(frozen=True)
class Suite:
    description: str
    tasks: dict       # lm-eval task or group -> shots (None: the task's own)
    primary: dict     # task -> the metric the suite ranks by
    folders: tuple    # lm-eval task folders that define them (indexed instead of all ~15k tasks)


SUITES = {
    "leaderboard-it": Suite(
        "Open Ita LLM Leaderboard: ARC, HellaSwag (0-shot, acc_norm) and MMLU (5-shot, acc) in Italian",
        {"arc_it": 0, "hellaswag_it": 0, "m_mmlu_it": 5},
        {"arc_it": "acc_norm", "hellaswag_it": "acc_norm", "m_mmlu_it": "acc"},
        ("okapi/arc_multilingual", "okapi/hellaswag_multilingual", "okapi/mmlu_multilingual")),
    "evalita-llm": Suite(
        "EVALITA-LLM (lm-eval's evalita-mp group): ten Italian tasks, several prompts each",
        {"evalita-mp": None}, {}, ("evalita_llm",)),
}

PACKAGED_BUILDERS = ("json", "csv", "parquet", "arrow", "text", "pandas", "xml")
BUILDER_OF_SUFFIX = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                     ".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv", ".arrow": "arrow"}
SPLIT_ALIASES = {"validation": ("validation", "val", "valid", "dev"), "val": ("val", "validation", "valid"),
                 "dev": ("dev", "validation", "val")}
LAYOUTS = ("data/{config}/{split}", "{config}/{split}", "data/{split}", "{split}")  # tried in order


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder or hub name", path_input=True)
    adapter: str = setting("", "PEFT adapter to apply on top of the model", path_input=True)
    tasks: list[str] = setting([], "lm-eval tasks, groups, tags or task YAML files, or a suite: "
                               + "; ".join(f"{name} ({suite.description})" for name, suite in SUITES.items()))
    include_path: list[str] = setting([], "folders of extra lm-eval task YAMLs", path_input=True)
    data_dir: str = setting("", "local copies of hub datasets in hub layout: DATA_DIR/<owner>/<name>/...",
                            path_input=True)
    samples: bool = setting(False, "also look for data in the bundled Italian samples (leaderboard-it, offline)")
    allow_download: bool = setting(False, "let lm-eval download datasets and task code that are not local")
    num_fewshot: int | None = setting(None, "few-shot examples for every task (default: each task's or "
                                      "suite's own)", minimum=0)
    limit: int = setting(0, "evaluate at most N documents per task (0: all)", minimum=0)
    batch_size: int = setting(8, "requests per forward pass", fingerprint=False, minimum=1)
    max_length: int = setting(0, "context length in tokens (0: the model's)", minimum=0)
    dtype: str = setting("float32", "dtype to run the model in (the compute dtype with --load-in-4bit)",
                         choices=DTYPES)
    load_in_4bit: bool = setting(False, "load the base in 4-bit NF4 (as QLoRA trains it)")
    single_bos: bool = setting(True, "rolling log-likelihood tasks (bits per byte) put the start token in "
                               "once, as `eval bpb` does (lm-eval's default puts it in twice)")
    log_samples: bool = setting(False, "also write lm-eval's per-document samples (samples_*.jsonl)")
    output: str = setting("", "output folder (lm-eval's results JSON and manifest.json)")

    def validate(self, source):
        if not self.model:
            raise LlamantinoError(f"{source}: setting 'model' is required")
        if not self.tasks:
            raise LlamantinoError(f"{source}: no tasks given (an lm-eval task name, a YAML file or a suite: "
                                  f"{', '.join(SUITES)})")


def require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise LlamantinoError(f"eval lm-eval needs lm-evaluation-harness, an optional extra: {INSTALL_HINT}") from None


@contextlib.contextmanager
def offline(enabled: bool):
    """Hub libraries offline while lm-eval loads tasks (read by libraries imported from now on)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    if enabled:
        os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---------------------------------------------------------------------------------------
# Which tasks run, on which data


@dataclasses.dataclass
class Request:
    spec: str                 # what the user asked for (after suites are expanded)
    shots: int | None = None  # the suite's shots
    suite: str = ""


@dataclasses.dataclass
class Node:
    """A task, group or tag as lm-eval's index defines it; groups keep their `task:` items."""
    name: str
    kind: str                 # "task", "group" or "tag"
    yaml_path: Path | None
    cfg: dict
    children: list = dataclasses.field(default_factory=list)
    items: list = dataclasses.field(default_factory=list)

    def leaves(self) -> list[Node]:
        if self.kind == "task":
            return [self]
        return [leaf for child in self.children if child is not None for leaf in child.leaves()]


class UnknownTask(Exception):
    pass


@dataclasses.dataclass
class Plan:
    specs: list[str]                                          # names lm-eval runs
    rolling: set[str] = dataclasses.field(default_factory=set)  # of them, rolling log-likelihood only
    overrides: dict[str, dict] = dataclasses.field(default_factory=dict)  # name -> override config
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)     # task -> reason
    data_files: list[str] = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)              # MissingData, reported together
    task_manager: object = None


def expand_requests(cfg: Config) -> list[Request]:
    requests = []
    for spec in cfg.tasks:
        if spec in SUITES:
            suite = SUITES[spec]
            requests += [Request(name, shots, spec) for name, shots in suite.tasks.items()]
        else:
            requests.append(Request(spec))
    return requests


def _tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def open_index(cfg: Config, requests: list[Request]):
    """(TaskManager, folders it indexed) knowing every requested name and its members.

    lm-eval's own TaskManager parses all of its ~14k task YAMLs (15 s on 2 cores); this one
    indexes only the suites' folders, the include paths and the folders whose YAMLs mention
    a missing name, found by a plain text search (a name lm-eval knows is written in one)."""
    from lm_eval.tasks import TaskManager

    paths = [str(_tasks_dir() / f) for r in requests if r.suite for f in SUITES[r.suite].folders]
    for folder in cfg.include_path:
        if not Path(folder).is_dir():
            raise LlamantinoError(f"{folder}: include path is not a folder")
        paths.append(str(Path(folder).resolve()))
    paths += [str(Path(r.spec).resolve().parent) for r in requests if _is_yaml_file(r.spec)]
    paths = _outermost(list(dict.fromkeys(paths)))
    sources = TaskSources()
    while True:
        manager = TaskManager(include_defaults=False, include_path=paths)
        missing = next((name for name in (_unresolved(manager, r.spec) for r in requests) if name), None)
        if missing is None:
            return manager, paths
        more = [str(folder) for folder in sources.folders_mentioning(missing) if str(folder) not in paths]
        if not more:
            raise unknown_task_error(missing, sources.names() + list(manager.all_tasks))
        paths = _outermost(paths + more)


def _outermost(folders: list[str]) -> list[str]:
    """The folders not inside another one of them (lm-eval indexes folders recursively)."""
    return [f for f in folders if not any(g != f and Path(f).is_relative_to(g) for g in folders)]


def _unresolved(manager, spec: str) -> str | None:
    try:
        task_tree(manager, spec)
    except UnknownTask as exc:
        return str(exc)
    return None


class TaskSources:
    """The text of lm-eval's task YAMLs, read once, for finding names without parsing."""

    def __init__(self):
        self._texts = None

    def texts(self) -> list[tuple[Path, str]]:
        if self._texts is None:
            self._texts = [(p, p.read_text(encoding="utf-8", errors="replace"))
                           for p in sorted(_tasks_dir().rglob("*yaml"))]  # and included `_default_yaml`s
        return self._texts

    def folders_mentioning(self, name: str) -> list[Path]:
        word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        return list(dict.fromkeys(path.parent for path, text in self.texts() if word.search(text)))

    def names(self) -> list[str]:
        found = re.compile(r"^(?:task|group|tag):\s*[\"']?([^\s\"'#]+)", re.M)
        return sorted({n for _, text in self.texts() for n in found.findall(text)})


def _is_yaml_file(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) and Path(spec).is_file()


def task_tree(manager, spec: str) -> Node:
    """The requested name (or YAML file) as a tree of lm-eval index entries."""
    index = manager.task_index
    if _is_yaml_file(spec):
        path = Path(spec).resolve()
        names = [n for n, e in index.items() if e.yaml_path and Path(e.yaml_path).resolve() == path]
        if not names:
            raise LlamantinoError(f"{spec}: not an lm-eval task or group config (no 'task:' or 'group:' key)")
        spec = names[0]
    return _node(index, spec)


def _node(index, name: str) -> Node:
    entry = index.get(name)
    if entry is None:
        raise UnknownTask(name)
    kind = entry.kind.name
    if kind == "TAG":
        return Node(name, "tag", None, {}, [_node(index, t) for t in sorted(entry.tags)])
    if kind == "GROUP":
        return _group(index, name, entry.cfg or {}, entry.yaml_path)
    return Node(name, "task", entry.yaml_path, entry.cfg or {})


def _group(index, name: str, cfg: dict, yaml_path) -> Node:
    items = cfg.get("task") or []
    items = items if isinstance(items, list) else [items]
    return Node(name, "group", yaml_path, cfg, [_member(index, name, item) for item in items], items)


def _member(index, group: str, item) -> Node:
    """A group's `task:` item: a name, a name with overrides, or an inline task or group."""
    if isinstance(item, str):
        return _node(index, item)
    ref = item.get("group") or item.get("task")
    if ref in index:
        return _node(index, ref)
    if "group" in item:
        return _group(index, f"{group}::{ref}", item, None)
    return Node(f"{group}::{ref}", "task", None, item)


def unknown_task_error(name: str, known: list[str]) -> LlamantinoError:
    close = difflib.get_close_matches(name, list(SUITES) + known, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(dict.fromkeys(close))}" if close else "; see `lm-eval ls tasks`"
    return LlamantinoError(f"unknown lm-eval task '{name}'{hint}")


def import_failure(leaf: Node) -> str | None:
    """Why the task's code cannot be imported (e.g. it needs the network), or None."""
    if leaf.yaml_path is None:
        return None
    # lm-eval has no public call that imports a task's code without also loading its data.
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        load_yaml(leaf.yaml_path, resolve_func=True)
    except Exception as exc:  # any failure of third-party task code: reported, never hidden
        return f"its code failed to import ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def prune(node: Node, skipped: dict) -> Node | None:
    """The node without skipped tasks; None when nothing is left. A group keeps None in
    place of a dropped member, so its members still line up with its `task:` items."""
    if node.kind == "task":
        return None if node.name in skipped else node
    kept = [prune(child, skipped) for child in node.children]
    if not any(kept):
        return None
    if node.kind == "tag":
        kept = [k for k in kept if k is not None]
    return dataclasses.replace(node, children=kept)


def group_overrides(group: Node, pruned: Node, out: dict) -> None:
    """Override configs for the groups that lost members: the original (`include:`) with
    a shorter `task:` list; a tag that lost members is replaced by the names left."""
    items, changed = [], False
    for item, child, kept in zip(group.items, group.children, pruned.children):
        if kept is None:
            changed = True
            continue
        if child.kind == "tag" and len(kept.children) < len(child.children):
            items += [leaf.name for leaf in kept.leaves()]
            changed = True
        else:
            items.append(item)
        if child.kind == "group":
            group_overrides(child, kept, out)
    if changed:
        if group.yaml_path is None:
            raise LlamantinoError(f"group {group.name}: a member must be skipped but the group is defined inline")
        out[group.name] = {"include": str(group.yaml_path), "group": group.name, "task": items}


def needed_splits(cfg: dict) -> list[str]:
    """The splits lm-eval reads when it builds the task: the one it evaluates and the
    source of few-shot examples (read even at 0 shots)."""
    evaluated = cfg.get("test_split") or cfg.get("validation_split")
    fewshot = cfg.get("fewshot_config") or {}
    source = fewshot.get("split") or cfg.get("fewshot_split")
    if not source and fewshot.get("samples") is None:
        source = cfg.get("training_split") or cfg.get("validation_split") or cfg.get("test_split")
    return [s for s in dict.fromkeys([evaluated, source]) if s]


def needs_hub(cfg: dict) -> bool:
    path = cfg.get("dataset_path")
    if not path or cfg.get("custom_dataset") or path in PACKAGED_BUILDERS:
        return False
    return not Path(str(path)).expanduser().exists()


def data_roots(cfg: Config, dataset: str) -> list[Path]:
    """Folders that may hold a local copy of a hub dataset, in the order they are tried:
    --data-dir, the bundled samples (--samples), the hub cache."""
    roots = [Path(cfg.data_dir) / dataset] if cfg.data_dir else []
    if cfg.samples:
        roots.append(SAMPLE_DIR / dataset)
    cached = _hub_cache(dataset)
    return roots + ([cached] if cached else [])


def _hub_cache(dataset: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(dataset, repo_type="dataset", local_files_only=True))
    except Exception:  # not cached, or not a hub name at all: simply not a candidate
        return None


def split_files(root: Path, config: str | None, splits: list[str]) -> dict[str, list[Path]]:
    """The files of each split in a dataset folder: from its README's `configs` metadata
    (as the hub reads them), else by the usual layouts (data/<config>/<split>.jsonl, ...)."""
    from llamantino.core.fileio import check_member_name

    declared = readme_data_files(root, config)
    found = {}
    for split in splits:
        if declared is not None:
            # Patterns written by the dataset's author stay inside its folder.
            patterns = [check_member_name(p, f"{root / 'README.md'}: configs data_files")
                        for p in declared.get(split, [])]
            files = sorted({p for pattern in patterns for p in root.glob(pattern) if p.is_file()})
        else:
            files = _layout_files(root, config, split)
        if files:
            found[split] = files
    return found


def _layout_files(root: Path, config: str | None, split: str) -> list[Path]:
    for name in SPLIT_ALIASES.get(split, (split,)):
        for layout in LAYOUTS:
            if "{config}" in layout and not config:
                continue
            stem = layout.format(config=config, split=name)
            for pattern in (f"{stem}.*", f"{stem}-*.*", f"{stem}/*.*"):
                files = sorted(p for p in root.glob(pattern) if p.is_file() and _builder(p))
                if files:
                    return files
    return []


def readme_data_files(root: Path, config: str | None) -> dict[str, list[str]] | None:
    """split -> path patterns declared for `config` in README.md's YAML header, or None."""
    import yaml

    readme = root / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.S)
    try:
        meta = yaml.safe_load(match.group(1)) if match else None
    except yaml.YAMLError as exc:
        raise LlamantinoError(f"{readme}: unreadable YAML header ({_first_line(exc)})") from None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        return None
    for entry in configs:
        if isinstance(entry, dict) and entry.get("config_name", "default") == (config or "default"):
            return _split_patterns(entry.get("data_files"))
    return None


def _split_patterns(data_files) -> dict[str, list]:
    """A README config's `data_files`: a pattern or a list of them (all `train`, as the hub
    reads them), or a list of {split, path} entries."""
    entries = [data_files] if isinstance(data_files, str) else data_files if isinstance(data_files, list) else []
    if entries and all(isinstance(e, str) for e in entries):
        return {"train": list(entries)}
    out: dict[str, list] = {}
    for entry in entries:
        if isinstance(entry, dict):
            paths = entry.get("path", [])
            out.setdefault(str(entry.get("split", "train")), []).extend(paths if isinstance(paths, list) else [paths])
    return out


def _builder(path: Path) -> str | None:
    name = path.name.lower()
    return next((b for suffix, b in BUILDER_OF_SUFFIX.items() if name.endswith(suffix)), None)


def local_data(leaf: Node, cfg: Config) -> dict | None:
    """Override settings pointing the task at local files; None when it needs none."""
    task = leaf.cfg
    if not needs_hub(task):
        return None
    dataset, config, splits = str(task["dataset_path"]), task.get("dataset_name"), needed_splits(task)
    for root in data_roots(cfg, dataset):
        found = split_files(root, config, splits)
        if len(found) == len(splits):
            builders = {_builder(p) for files in found.values() for p in files}
            if len(builders) != 1:
                raise LlamantinoError(f"{root}: {leaf.name} needs one file format, found {', '.join(sorted(builders))}")
            return {"dataset_path": builders.pop(), "dataset_name": None,
                    "dataset_kwargs": {"data_files": {s: [str(p) for p in files] for s, files in found.items()}}}
    if cfg.allow_download:
        return None
    raise MissingData(dataset, leaf.name, missing_data_message(cfg, leaf.name, dataset, config, splits))


class MissingData(Exception):
    def __init__(self, dataset: str, task: str, message: str):
        super().__init__(message)
        self.dataset, self.task = dataset, task


def missing_data_message(cfg: Config, task: str, dataset: str, config: str | None, splits: list[str]) -> str:
    wanted = ", ".join(f"data/{config}/{s}.jsonl" if config else f"data/{s}.jsonl" for s in splits)
    return (f"task {task}: dataset {dataset}{f' (config {config})' if config else ''} is not available offline; "
            f"it wants the {' and '.join(splits)} split(s), e.g. {wanted} under "
            f"{cfg.data_dir or 'DATA_DIR'}/{dataset}/ (pass --data-dir, or --allow-download to fetch it)")


def plan_tasks(cfg: Config, override_dir: Path) -> Plan:
    """Resolve names, skip tasks whose code cannot be imported, point hub datasets at local
    files; write the override configs into `override_dir`. Fails before any model loads."""
    from lm_eval.tasks import TaskManager

    requests = expand_requests(cfg)
    manager, paths = open_index(cfg, requests)
    plan = Plan(specs=[])
    for request in requests:
        plan_request(cfg, request, task_tree(manager, request.spec), plan)
    if plan.missing:  # one line: the first in full, then the other datasets by name
        first = plan.missing[0]
        others = list(dict.fromkeys(m.dataset for m in plan.missing if m.dataset != first.dataset))
        raise LlamantinoError(str(first) + (f"; also missing: {', '.join(others)}" if others else ""))
    if plan.overrides:
        override_dir.mkdir(parents=True, exist_ok=True)
        for name, override in plan.overrides.items():
            write_override(override_dir / (re.sub(r"[^\w.-]", "_", name) + ".yaml"), override)
        # The overrides replace the originals on purpose; lm-eval would warn about each one.
        index_log = logging.getLogger("lm_eval.tasks._index")
        level = index_log.level
        index_log.setLevel(logging.ERROR)
        try:
            manager = TaskManager(include_defaults=False, include_path=[*paths, str(override_dir)])
        finally:
            index_log.setLevel(level)
    plan.task_manager = manager
    return plan


def plan_request(cfg: Config, request: Request, tree: Node, plan: Plan) -> None:
    for leaf in tree.leaves():
        if leaf.name not in plan.skipped:
            reason = import_failure(leaf)
            if reason:
                plan.skipped[leaf.name] = reason
    pruned = prune(tree, plan.skipped)
    if pruned is None:
        first = tree.leaves()[0]
        hint = "" if cfg.allow_download else "; pass --allow-download if it needs the network"
        raise LlamantinoError(f"{request.spec}: nothing left to run ({len(tree.leaves())} task(s) skipped; "
                              f"{first.name}: {plan.skipped[first.name]}){hint}")
    if tree.kind == "group":
        group_overrides(tree, pruned, plan.overrides)
    leaves = pruned.leaves()
    for leaf in leaves:
        try:
            override = local_data(leaf, cfg) or {}
        except MissingData as exc:
            plan.missing.append(exc)
            continue
        shots = request.shots if cfg.num_fewshot is None else None
        if shots is not None:
            override["num_fewshot"] = shots
        if override:
            if leaf.yaml_path is None:
                raise LlamantinoError(f"task {leaf.name} is defined inline in its group; it cannot be pointed "
                                      "at local files (pass --allow-download)")
            plan.overrides[leaf.name] = {"include": str(leaf.yaml_path), "task": leaf.name, **override}
            files = override.get("dataset_kwargs", {}).get("data_files", {})
            plan.data_files += [f for split in files.values() for f in split]
    # A tag that lost members runs as the names left.
    names = [leaf.name for leaf in leaves] if tree.kind == "tag" else [tree.name]
    plan.specs += [n for n in names if n not in plan.specs]
    if all(leaf.cfg.get("output_type") == "loglikelihood_rolling" for leaf in leaves):
        plan.rolling.update(names)


def write_override(path: Path, override: dict) -> None:
    import yaml

    path.write_text(yaml.safe_dump(override, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ---------------------------------------------------------------------------------------
# Model and evaluation


def load_model(cfg: Config):
    """(model, tokenizer) loaded as every stage loads them; the run's tokenizer is the
    adapter's when it ships one."""
    from llamantino.models.modeling import load_causal_lm, load_tokenizer, load_with_adapter

    if cfg.adapter and Path(cfg.adapter).is_dir():
        from llamantino.models.weight_files import require_safetensors

        require_safetensors(cfg.adapter, "adapter")  # before the model loads
    adapter_has_tokenizer = cfg.adapter and any((Path(cfg.adapter) / f).is_file()
                                                for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(cfg.adapter if adapter_has_tokenizer else cfg.model)
    try:
        if not cfg.load_in_4bit:
            return load_with_adapter(cfg.model, cfg.adapter, dtype=cfg.dtype), tokenizer
        model = load_causal_lm(cfg.model, load_in_4bit=True, compute_dtype=cfg.dtype)
        if cfg.adapter:
            from peft import PeftModel

            from llamantino.models.modeling import check_adapter
            from llamantino.models.moe4bit import adapter_config

            check_adapter(cfg.adapter)
            model = PeftModel.from_pretrained(model, cfg.adapter, config=adapter_config(model, cfg.adapter))
        model.eval()
        return model, tokenizer
    except (RuntimeError, ValueError, KeyError) as exc:
        if not cfg.adapter:
            raise
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), _first_line(exc))
        raise LlamantinoError(f"{cfg.adapter}: this adapter does not fit the model {cfg.model} ({detail[:300]})") from None


def model_record(cfg: Config) -> dict:
    """What lm-eval records as model_args, in its CLI's words."""
    record = {"pretrained": cfg.model, "dtype": cfg.dtype}
    if cfg.adapter:
        record["peft"] = cfg.adapter
    if cfg.load_in_4bit:
        record["load_in_4bit"] = True
    return record


def evaluate_pass(cfg: Config, plan: Plan, specs: list[str], model, tokenizer, folder: Path, *,
                  rolling: bool) -> dict:
    """One lm-eval run over `specs`; lm-eval writes its results JSON into `folder`."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size,
              max_length=cfg.max_length or None, add_bos_token=False if rolling and cfg.single_bos else None)
    stem = "results_rolling" if rolling else "results"
    tracker = EvaluationTracker(output_path=str(folder / f"{stem}.json"))
    results = lm_eval.simple_evaluate(
        model=lm, model_args=model_record(cfg), tasks=specs, num_fewshot=cfg.num_fewshot,
        limit=cfg.limit or None, batch_size=cfg.batch_size, device=str(lm.device), log_samples=cfg.log_samples,
        evaluation_tracker=tracker, task_manager=plan.task_manager)
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples)
    if cfg.log_samples:
        for name in results["configs"]:
            tracker.save_results_samples(task_name=name, samples=samples[name])
    # lm-eval logs a failure to write its files as a warning; here it is an error.
    written = sorted(folder.glob(f"{stem}_*.json"))
    if not written or (cfg.log_samples and not all(any(folder.glob(f"samples_{name}_*.jsonl"))
                                                   for name in results["configs"])):
        raise LlamantinoError(f"{folder}: lm-eval did not write its results files")
    return {"results": results, "file": written[-1].name, "add_bos_token": lm.add_bos_token}


def summarise(passes: list[dict], plan: Plan, suites: list[str]) -> dict:
    """The manifest's metrics: every task's and group's figures as lm-eval reports them."""
    results, hib, shots, samples, groups = {}, {}, {}, {}, set()
    for p in passes:
        r = p["results"]
        results.update(r["results"])
        hib.update(r.get("higher_is_better", {}))
        shots.update(r.get("n-shot", {}))
        samples.update(r.get("n-samples", {}))
        groups.update(r.get("groups", {}))
    tasks = {}
    for name, values in results.items():
        metrics = {k.removesuffix(",none"): v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "sample_len"}
        tasks[name] = {"metrics": metrics, "higher_is_better": hib.get(name, {}), "group": name in groups,
                       "n_shot": shots.get(name), "samples": (samples.get(name) or {}).get("effective")}
    out = {"results": tasks, "skipped": dict(plan.skipped),
           "passes": [{"file": p["file"], "tasks": list(p["results"]["results"]),
                       "add_bos_token": p["add_bos_token"]} for p in passes],
           "suites": {}}
    for name in suites:
        primary = SUITES[name].primary
        scores = [tasks[t]["metrics"].get(m) for t, m in primary.items() if t in tasks]
        if primary and len(scores) == len(primary) and None not in scores:
            out["suites"][name] = {"average": sum(scores) / len(scores), "primary": primary}
    return out


def table(passes: list[dict], metrics: dict) -> str:
    """lm-eval's own tables, then what was skipped and the suites' averages."""
    from lm_eval.utils import make_table

    parts = []
    for p in passes:
        parts.append(make_table(p["results"]))
        if p["results"].get("groups"):
            parts.append(make_table(p["results"], "groups"))
    for name, reason in metrics["skipped"].items():
        parts.append(f"skipped {name}: {reason}")
    for name, suite in metrics["suites"].items():
        detail = ", ".join(f"{t} {m}" for t, m in suite["primary"].items())
        parts.append(f"{name} average ({detail}): {suite['average']:.4f}")
    return "\n".join(parts)


FUNCTION_TAG = re.compile(r"!function\s+([\w.]+)")


def task_code_notice(cfg: Config) -> str | None:
    """One line when a task folder given by the user (`--include-path`, or the folder of a task
    YAML) holds a YAML with `!function module.name`: lm-eval imports that Python file when it
    loads the task. That is lm-eval's design; the line says it before it happens."""
    folders = [Path(f) for f in cfg.include_path]
    folders += [Path(t).resolve().parent for t in cfg.tasks if _is_yaml_file(t)]
    found = []
    for folder in dict.fromkeys(folders):
        for path in sorted(folder.rglob("*.y*ml")) if folder.is_dir() else []:
            match = FUNCTION_TAG.search(path.read_text(encoding="utf-8", errors="replace"))
            if match:
                found.append((path, match.group(1)))
    if not found:
        return None
    path, ref = found[0]
    module = path.parent / (ref.rsplit(".", 1)[0].replace(".", "/") + ".py")
    more = f" (and {len(found) - 1} more task file(s) with !function)" if len(found) > 1 else ""
    return (f"note: {path}: `!function {ref}` makes lm-eval import and run {module} when it loads the "
            f"task{more}: lm-eval's design, task folders are code; use only task folders you trust")


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    require_lm_eval()
    notice = task_code_notice(cfg)
    if notice:
        print(notice, file=sys.stderr, flush=True)  # before lm-eval loads (and imports) anything
    with offline(not cfg.allow_download), tempfile.TemporaryDirectory(prefix="llamantino-lm-eval-") as scratch:
        plan = plan_tasks(cfg, Path(scratch) / "task_overrides")
        if cfg.output and prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True) == "complete":
            metrics = read_manifest(cfg.output)["metrics"]
            text = read_table(cfg.output)
            print(text)
            return {"status": "skipped (done)", "headline": _headline(metrics), "metrics": metrics, "display": text}
        if cfg.max_length:
            from llamantino.models.modeling import check_max_length, load_config

            check_max_length(load_config(cfg.model), cfg.max_length, cfg.model)
        model, tokenizer = load_model(cfg)
        with atomic_dir(cfg.output or Path(scratch) / "out") as tmp:
            main = [s for s in plan.specs if not (cfg.single_bos and s in plan.rolling)]
            rolling = [s for s in plan.specs if cfg.single_bos and s in plan.rolling]
            passes = [evaluate_pass(cfg, plan, specs, model, tokenizer, tmp, rolling=is_rolling)
                      for specs, is_rolling in ((main, False), (rolling, True)) if specs]
            metrics = summarise(passes, plan, [s for s in cfg.tasks if s in SUITES])
            text = table(passes, metrics)
            (tmp / "table.md").write_text(text + "\n", encoding="utf-8")
            if plan.overrides:
                (tmp / "task_overrides").mkdir()
                for path in sorted((Path(scratch) / "task_overrides").glob("*.yaml")):
                    (tmp / "task_overrides" / path.name).write_bytes(path.read_bytes())
            inputs = describe_inputs(list(dict.fromkeys(plan.data_files)))
            write_manifest(tmp, KIND, cfg, inputs=inputs, metrics=metrics,
                           extra={"lm_eval": _version("lm_eval")})
    print(text)
    return {"status": "done", "headline": _headline(metrics), "metrics": metrics, "display": text}


def read_table(folder) -> str:
    path = Path(folder) / "table.md"
    return path.read_text(encoding="utf-8").rstrip("\n") if path.is_file() else ""


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package.replace("_", "-"))


def _headline(metrics: dict) -> dict:
    out = {"tasks": sum(1 for r in metrics["results"].values() if not r["group"])}
    if metrics["skipped"]:
        out["skipped"] = len(metrics["skipped"])
    for name, suite in metrics["suites"].items():
        out[f"{name} average"] = round(suite["average"], 4)
    return out


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND)


def main(args) -> int:
    from llamantino.core.runner import stage_config

    cfg = stage_config(KIND, args)
    result = run(cfg, overwrite=args.overwrite)
    if cfg.output:
        print(f"results: {cfg.output} ({', '.join(p['file'] for p in result['metrics']['passes'])})",
              file=sys.stderr)
    return 0
