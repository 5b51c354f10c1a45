"""Recipes: YAML files naming a model, data and the settings of a chain of stages.

    name: LLaMAntino-2-7b-hf-ITA
    description: ...
    run_dir: runs/LLaMAntino-2-7b-hf-ITA       # default runs/<name>
    release: {released_as: adapter, parent: meta-llama/Llama-2-7b-hf, ...}
    stages:
      adapt:                                   # stage name; its kind defaults to the name
        model: meta-llama/Llama-2-7b-hf
        max_steps: 25000
      bpb_after:
        kind: bpb
        adapter: ${adapt.output}               # ${run_dir}, ${name}, ${assets_dir}, ${STAGE.SETTING}

Every stage's `output` defaults to `${run_dir}/<stage name>`. Unknown keys are errors
that name the key and suggest the closest valid one. The paper's ten models and the demo
ship as named recipes (`llamantino config list`).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import yaml

from llamantino.core.config import build_config, closest, setting, to_dict
from llamantino.core.errors import LlamantinoError, cut, shown
from llamantino.core.registry import STAGE_MODULES, StageModule

RECIPE_DIR = Path(__file__).parents[1] / "recipes"
ASSETS_DIR = Path(__file__).parents[1] / "assets"  # bundled data, ${assets_dir} in recipes

TOP_LEVEL_KEYS = ("name", "description", "run_dir", "release", "stages")


@dataclasses.dataclass
class ReleaseInfo:
    """How a recipe's model is published (adapter or weight difference) and rebuilt from its parent."""

    released_as: str = setting("adapter", "what is published",
                               choices=("adapter", "weight-diff", "none"))
    parent: str = setting("", "the model this one is made from: a hub model or another recipe's name")
    merge_parent: bool = setting(False, "merge the parent's adapter into its base before applying this one")
    hub_repo: str = setting("", "hub repository the release is published under")
    datasets: list[str] = setting([], "datasets used for training (for the model card)")
    license: str = setting("llama2", "licence of the released artefacts")
    language: list[str] = setting(["it"], "languages of the model")
    prompt_format: str = setting("", "prompt format of the model: llama2-chat, alpaca-it or none")


def stage_module(kind: str) -> StageModule:
    """The module of a stage kind (core.registry)."""
    if kind not in STAGE_MODULES:
        raise LlamantinoError(f"unknown stage kind '{kind}'{closest(kind, STAGE_MODULES)}; "
                              f"valid: {', '.join(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[kind])


@dataclasses.dataclass
class Stage:
    name: str
    kind: str
    config: Any
    optional: bool = False  # `optional: true`: `run` leaves it out unless --only names it

    @property
    def output(self) -> str:
        return self.config.output


@dataclasses.dataclass
class Recipe:
    name: str
    description: str
    run_dir: str
    release: ReleaseInfo
    stages: list[Stage]
    source: str

    def stage(self, name: str) -> Stage:
        for st in self.stages:
            if st.name == name:
                return st
        raise LlamantinoError(f"recipe {self.name}: no stage '{name}'"
                              f"{closest(name, [s.name for s in self.stages])}")

    def first_of_kind(self, kind: str) -> Stage:
        for st in self.stages:
            if st.kind == kind:
                return st
        raise LlamantinoError(f"recipe {self.name} has no '{kind}' stage "
                              f"(stages: {', '.join(s.name for s in self.stages)})")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "run_dir": self.run_dir,
            "release": to_dict(self.release),
            "stages": {s.name: {"kind": s.kind, **({"optional": True} if s.optional else {}), **to_dict(s.config)}
                       for s in self.stages},
        }


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise LlamantinoError(f"{path}: no such recipe file")
        return path
    bundled = RECIPE_DIR / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    raise LlamantinoError(f"unknown recipe '{name_or_path}'{closest(name_or_path, list_recipes())}; "
                          "`llamantino config list` shows the bundled ones")


_STAGE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; the bundled ones are under 4 KB
MAX_DEPTH = 32  # levels of nesting a recipe may use (the bundled ones use 4)
MAX_VALUE_CHARS = 1 << 20  # a setting after its ${...} references are filled in
_REF = re.compile(r"\$\{([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?\}")


def _interpolate(value, context: dict, where: str):
    if isinstance(value, str):
        def repl(match):
            head, attr = match.group(1), match.group(2)
            if attr is None:
                if head not in context or isinstance(context[head], dict):
                    raise LlamantinoError(f"{where}: unknown reference ${{{head}}}")
                return str(context[head])
            stage = context.get("stages", {}).get(head)
            if stage is None:
                raise LlamantinoError(f"{where}: ${{{head}.{attr}}} refers to no earlier stage "
                                      f"named '{head}'")
            if attr not in stage:
                raise LlamantinoError(f"{where}: stage '{head}' has no setting '{attr}'{closest(attr, stage)}")
            return str(stage[attr])
        out = _REF.sub(repl, value)
        if len(out) > MAX_VALUE_CHARS:  # references of references can double a value at every stage
            raise LlamantinoError(f"{where}: {shown(value)} expands to {len(out)} characters with its "
                                  f"${{...}} references (at most {MAX_VALUE_CHARS})")
        return out
    if isinstance(value, list):
        return [_interpolate(v, context, where) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, context, where) for k, v in value.items()}
    return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_recipe(name_or_path: str, overrides: dict | None = None, run_dir: str | None = None) -> Recipe:
    """Load, override, interpolate and validate a recipe.

    `overrides` is nested {stage_name: {setting: value}} (from `--set stage.key=value`),
    and may also hold top-level keys such as run_dir.
    """
    path = recipe_path(name_or_path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise LlamantinoError(f"{path}: a recipe is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise LlamantinoError(f"{path}: unknown key {shown(key)}{closest(str(key), TOP_LEVEL_KEYS)}")
    overrides = dict(overrides or {})
    stage_over = overrides.pop("stages", {})
    for key in list(overrides):
        value = overrides.pop(key)
        if key in ("run_dir", "name", "description"):
            raw[key] = value
        elif not isinstance(value, dict):
            example = "release.license=apache-2.0" if key == "release" else f"{key}.max_steps=10"
            raise LlamantinoError(f"--set {key}={shown(value)}: '{key}' is a section, give one of its settings "
                                  f"(e.g. --set {example})")
        elif key == "release":
            raw["release"] = _merge(raw.get("release") or {}, value)
        else:
            stage_over[key] = value
    if run_dir:
        raw["run_dir"] = run_dir
    name = str(raw.get("name") or path.stem)
    if not name or name.startswith(".") or any(c in name for c in "/\\\x00") or len(name.encode("utf-8")) > 255:
        # The name is a folder under runs/: `../x` or `/x` would put the run elsewhere.
        raise LlamantinoError(f"{path}: name {shown(name)}: a recipe's name is a plain name (no '/' or '\\', "
                              "not starting with '.'); it names the run folder runs/NAME")
    stages_raw = raw.get("stages") or {}
    if not isinstance(stages_raw, dict) or not stages_raw:
        raise LlamantinoError(f"{path}: 'stages' must be a non-empty mapping of stage name to settings")
    for stage_name in stage_over:
        if stage_name not in stages_raw:
            raise LlamantinoError(f"override for unknown stage '{stage_name}'"
                                  f"{closest(stage_name, stages_raw)}; stages: {', '.join(stages_raw)}")
    context: dict = {"name": name, "run_dir": str(raw.get("run_dir") or f"runs/{name}"), "stages": {},
                     "assets_dir": str(ASSETS_DIR)}
    if "${run_dir}" in context["run_dir"]:
        raise LlamantinoError(f"{path}: run_dir refers to itself (${{run_dir}}); give a folder")
    context["run_dir"] = _interpolate(context["run_dir"], context, f"{path}: run_dir")
    stages = []
    for stage_name, settings in stages_raw.items():
        if not isinstance(stage_name, str) or not _STAGE_NAME.match(stage_name):
            raise LlamantinoError(f"{path}: stage name {shown(stage_name)}: use letters, digits and _ only "
                                  "(it names the stage's output folder and its ${NAME.setting} references)")
        if settings is not None and not isinstance(settings, dict):
            raise LlamantinoError(f"{path}: stage '{stage_name}': expected a mapping of settings, "
                                  f"got {type(settings).__name__}")
        settings = dict(settings or {})
        settings = _merge(settings, stage_over.get(stage_name, {}))
        kind = str(settings.pop("kind", stage_name))
        optional = settings.pop("optional", False)
        if not isinstance(optional, bool):
            raise LlamantinoError(f"{path}: stage '{stage_name}': optional {shown(optional)}: give true or false")
        module = stage_module(kind)
        settings.setdefault("output", f"${{run_dir}}/{stage_name}")
        where = f"{path}: stage '{stage_name}'"
        settings = _interpolate(settings, context, where)
        cfg = build_config(module.Config, settings, where)
        context["stages"][stage_name] = to_dict(cfg)
        stages.append(Stage(stage_name, kind, cfg, optional))
    release = build_config(ReleaseInfo, raw.get("release") or {}, f"{path}: release")
    return Recipe(name=name, description=str(raw.get("description") or ""), run_dir=context["run_dir"],
                  release=release, stages=stages, source=str(path))


class _RecipeYAMLError(Exception):
    def __init__(self, mark, message: str):
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None


class RecipeLoader(yaml.SafeLoader):
    """`yaml.safe_load` for recipes, stricter: no anchors or aliases (a recipe reuses values
    with ${...} references; nested aliases expand a few hundred bytes into gigabytes), no key
    given twice in a mapping (YAML would keep the last one silently), nesting at most
    MAX_DEPTH levels (the composer recurses once per level)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _RecipeYAMLError(event.start_mark, f"YAML anchor or alias ({sign}{cut(str(event.anchor), 40)}): "
                                   "recipes reuse values with ${stage.setting} references, not aliases")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _RecipeYAMLError(event.start_mark, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if duplicate:
                raise _RecipeYAMLError(key_node.start_mark, f"key {shown(key)} given twice in one mapping")
        return super().construct_mapping(node, deep)


def _read_yaml(path: Path):
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise LlamantinoError(f"{path}: {size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LlamantinoError(f"{path}:{line}: not UTF-8 text (byte {exc.start} of the file)") from None
    loader = RecipeLoader(text)  # a SafeLoader: plain data only
    try:
        return loader.get_single_data()
    except _RecipeYAMLError as exc:
        raise LlamantinoError(f"{path}:{exc.line}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LlamantinoError(f"{path}: not valid YAML ({cut(' '.join(str(exc).split()), 300)})") from None
    finally:
        loader.dispose()


def read_release(name_or_path: str) -> ReleaseInfo:
    """Only the `release` section of a recipe (for `build`, which runs no stage)."""
    path = recipe_path(name_or_path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise LlamantinoError(f"{path}: a recipe is a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    return build_config(ReleaseInfo, raw.get("release") or {}, f"{path}: release")


def render_recipe(recipe: Recipe, fmt: str = "yaml") -> str:
    import json

    data = recipe.to_dict()
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
