"""Typed, validated settings for every stage.

Each stage declares its settings as a dataclass whose fields are built with `setting()`.
The same dataclass serves three masters:

* recipes (YAML): `build_config` checks every key, suggests the closest valid one for a
  typo, and coerces the values to the declared types;
* the command line: `add_config_arguments` turns each field into `--kebab-name`;
* manifests: `fingerprint` hashes the fields that change a stage's result, so a chain
  can tell a finished stage from one with other settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import logging
import math
import types
import typing
from typing import Any

from llamantino.core.errors import LlamantinoError, cut, shown


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices=None,
            fingerprint: bool = True, cli: bool = True, minimum=None, maximum=None,
            path_input: bool = False):
    """A dataclass field with the metadata the CLI and manifests need.

    fingerprint=False marks settings that do not change the result (worker counts,
    logging intervals, overwrite flags), so changing them does not invalidate a run.
    `minimum` / `maximum` bound a number (inclusive; for a list, every item); they are
    checked with the types, before any work starts. `path_input` marks settings naming
    files or folders the stage reads: an output folder may never be, hold or sit inside one.
    """
    meta = {"help": help, "choices": choices, "fingerprint": fingerprint, "cli": cli,
            "minimum": minimum, "maximum": maximum, "path_input": path_input}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class _Override:
    default: Any
    help: str | None
    choices: tuple | None
    minimum: Any
    maximum: Any


def override(default: Any, help: str | None = None, *, choices=None, minimum=None, maximum=None):
    """A stage's own default for a setting a group declares: `max_steps: int = override(15000)`.

    Help (unless given), choices, range and the fingerprint/cli/path flags come from the
    declaring group, so a setting is declared once; a stage may only narrow its choices and
    range. Works in subclasses of `Settings`."""
    return _Override(default, help, tuple(choices) if choices is not None else None, minimum, maximum)


class Settings:
    """Base of the settings groups that stages build on (as LitGPT's TrainArgs): each field is
    declared once, in its group, and a stage changes a default where it is created, with
    `override()`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if isinstance(value, _Override):
                setattr(cls, name, _overridden(cls, name, value))


def _overridden(cls, name: str, new: _Override) -> dataclasses.Field:
    """The declaring group's field for `name`, with the stage's default (checked when the class
    is defined: a mistake here is the code's, not a recipe's)."""
    where = f"{cls.__qualname__}.{name}"
    parent = next((base.__dataclass_fields__[name] for base in cls.__mro__[1:]
                   if name in getattr(base, "__dataclass_fields__", {})), None)
    if parent is None:
        raise TypeError(f"{where}: override() of a setting no base class declares")
    if cls.__dict__.get("__annotations__", {}).get(name) != parent.type:
        raise TypeError(f"{where}: annotate it as the declaring group does ({parent.type})")
    meta = dict(parent.metadata)
    if new.choices is not None:
        if meta["choices"] and not set(new.choices) <= set(meta["choices"]):
            raise TypeError(f"{where}: choices {new.choices} are not among {meta['choices']}")
        meta["choices"] = new.choices
    for bound, tighter in (("minimum", lambda new, old: new >= old), ("maximum", lambda new, old: new <= old)):
        value = getattr(new, bound)
        if value is not None:
            if meta[bound] is not None and not tighter(value, meta[bound]):
                raise TypeError(f"{where}: {bound} {value} is outside the declared {bound} {meta[bound]}")
            meta[bound] = value
    return setting(new.default, meta["help"] if new.help is None else new.help, choices=meta["choices"],
                   fingerprint=meta["fingerprint"], cli=meta["cli"], minimum=meta["minimum"],
                   maximum=meta["maximum"], path_input=meta["path_input"])


def closest(name: str, candidates) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    if len(name) > 100:  # no setting name is that long (and difflib's time grows with it)
        return ""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _base_type(tp):
    """Unwrap Optional[X] / X | None to (X, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp, where: str):
    """Convert a YAML or command-line value to the declared type, or fail naming `where`."""
    base, optional = _base_type(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise LlamantinoError(f"{where}: a value is required")
    origin = typing.get_origin(base)
    try:
        if origin is list:
            (item,) = typing.get_args(base) or (str,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""] if value else []
            if not isinstance(value, (list, tuple)):
                value = [value]
            return [coerce(v, item, where) for v in value]
        if origin is dict or base is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise ValueError("expected a mapping")
            return dict(value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError("expected true or false")
        if base is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            if isinstance(value, str):
                value = value.replace("_", "")
                return int(float(value)) if ("e" in value.lower() and float(value).is_integer()) else int(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError("expected a string")
            return str(value)
    except (TypeError, ValueError, json.JSONDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else cut(str(exc), 120)
        raise LlamantinoError(f"{where}: {shown(value)} is not valid ({why})") from None
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def build_config(cls, values: dict, source: str = "settings"):
    """Create `cls` from a mapping, validating names, types and choices."""
    if not isinstance(values, dict):
        raise LlamantinoError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    types_ = _field_types(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = renamed_settings(cls, values, source)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise LlamantinoError(f"{source}: unknown setting {shown(key)}{closest(str(key), fields)}")
        value = coerce(value, types_[key], f"{source}: setting '{key}'")
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise LlamantinoError(
                f"{source}: setting '{key}' is {shown(value)}; valid: {', '.join(map(str, choices))}")
        check_range(fields[key], value, source)
        kwargs[key] = value
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise LlamantinoError(f"{source}: missing required setting(s): {', '.join(missing)}")
    cfg = cls(**kwargs)
    check = getattr(cfg, "validate", None)
    if check:
        check(source)
    return cfg


def renamed_settings(cls, values: dict, source: str) -> dict:
    """Old setting names still accepted: a class may declare RENAMED = {old: (new, {old value: new
    value} or None[, {other setting: value the old name implied}])}; each use logs one
    deprecation line."""
    renamed = getattr(cls, "RENAMED", {})
    out = dict(values)
    for old, (new, mapping, *implied) in renamed.items():
        if old not in out:
            continue
        for key, meant in (implied[0] if implied else {}).items():
            if key in out and str(out[key]) != str(meant):
                raise LlamantinoError(f"{source}: setting '{old}' (old name) means {key}: {meant}, "
                                      f"but {key} is {shown(out[key])}; give '{new}' instead")
            out[key] = meant
        value = out.pop(old)
        if mapping is not None:
            if str(value) not in mapping:
                raise LlamantinoError(f"{source}: setting '{old}' is {shown(value)}; valid: {', '.join(mapping)}")
            value = mapping[str(value)]
        if new in out and str(out[new]) != str(value):
            raise LlamantinoError(f"{source}: settings '{old}' (old name) and '{new}' disagree; give only '{new}'")
        out[new] = value
        logging.getLogger("llamantino.core.config").warning(
            "%s: setting '%s' is now '%s' (%s); the old name still works", source, old, new,
            ", ".join(f"{k}: {v}" for k, v in {new: value, **(implied[0] if implied else {})}.items()))
    return out


def check_range(field: dataclasses.Field, value, source: str) -> None:
    """A number outside the setting's [minimum, maximum] is an error naming the setting."""
    low, high = field.metadata.get("minimum"), field.metadata.get("maximum")
    if value is None or (low is None and high is None):
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if (low is not None and item < low) or (high is not None and item > high):
                bounds = (f"at least {low}" if high is None else f"at most {high}" if low is None
                          else f"between {low} and {high}")
                raise LlamantinoError(f"{source}: setting '{field.name}' is {shown(item)}; it must be {bounds}")


def check_ranges(cfg, source: str) -> None:
    """Range checks for a settings object built directly in Python (not through build_config)."""
    for f in dataclasses.fields(cfg):
        check_range(f, getattr(cfg, f.name), source)


def input_paths(cfg) -> list[str]:
    """The local paths named by a stage's input settings (`TASK=PATH` values give PATH;
    hub names and empty values are left out)."""
    out = []
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("path_input"):
            continue
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str) or not item or item.startswith("hub:"):
                continue
            head, sep, tail = item.partition("=")
            out.append(tail if sep and "/" not in head else item)
    return out


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def fingerprint(kind: str, cfg, *, known: set | None = None) -> str:
    """Hash of the settings that change a stage's result. `known`: the setting names an earlier
    run recorded; a setting it did not have (added since) that is at its default is left out,
    so a run made before an upgrade that only added settings is still the same run."""
    data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("fingerprint", True)
            and (known is None or f.name in known or getattr(cfg, f.name) != _default(f))}
    blob = json.dumps({"stage": kind, "settings": data}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def differing_settings(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


# ---------------------------------------------------------------------------------------
# Command line


def add_config_arguments(parser: argparse.ArgumentParser, cls, *, skip=()):
    """One `--kebab-case` option per setting; only options given on the line are returned.

    Values stay strings here and are coerced by `build_config`, so the command line and
    YAML follow exactly the same rules.
    """
    types_ = _field_types(cls)
    group = parser.add_argument_group("settings (each overrides the recipe)")
    for old in getattr(cls, "RENAMED", {}):
        group.add_argument("--" + old.replace("_", "-"), dest=old, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        base, _ = _base_type(types_[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        helptext = f.metadata.get("help", "")
        if default not in (None, "", []):
            helptext += f" [default: {default}]"
        helptext = helptext.replace("%", "%%")  # argparse formats help with %
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=helptext)
        elif typing.get_origin(base) is list:
            group.add_argument(flag, dest=f.name, nargs="+", default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=helptext)
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                               metavar=f.name.upper(), help=helptext)


def cli_overrides(args: argparse.Namespace, cls) -> dict:
    """The settings that were actually given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "RENAMED", {}))
    return {k: v for k, v in vars(args).items() if k in names}


def parse_set_options(items: list[str] | None) -> dict:
    """`--set stage.key=value` pairs into a nested mapping {stage: {key: value}}."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise LlamantinoError(f"--set {shown(item)}: expected KEY=VALUE, e.g. adapt.max_steps=100")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 3:  # stage.setting (a mapping setting: one level more)
            raise LlamantinoError(f"--set {shown(key)}: a key has at most 3 parts (STAGE.SETTING)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
