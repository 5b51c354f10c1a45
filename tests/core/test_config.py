"""Settings: every stage's numbers carry a range, and a stage overrides a group's default
without declaring the setting again."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from llamantino.core import recipes
from llamantino.core.config import Settings, _base_type, _field_types, build_config, override, setting
from llamantino.core.errors import LlamantinoError


def _stage_configs():
    return [(kind, recipes.stage_module(kind).Config) for kind in recipes.STAGE_MODULES] + [
        ("release section", recipes.ReleaseInfo)]


def _number_type(tp):
    base, _ = _base_type(tp)
    if typing.get_origin(base) is list:
        (base,) = typing.get_args(base) or (str,)
        base, _ = _base_type(base)
    return base if base in (int, float) else None


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@pytest.mark.parametrize("kind,cls", _stage_configs(), ids=[kind for kind, _ in _stage_configs()])
def test_every_numeric_setting_has_a_range_its_default_keeps(kind, cls):
    """A recipe is a stranger's file: no number reaches a stage unchecked (a negative length, a
    batch of 0), and every default lies inside its own range and choices."""
    types = _field_types(cls)
    for f in dataclasses.fields(cls):
        low, high, choices = f.metadata.get("minimum"), f.metadata.get("maximum"), f.metadata.get("choices")
        default = _default(f)
        if _number_type(types[f.name]) is not None:
            assert low is not None, f"{kind}: numeric setting '{f.name}' has no minimum"
            assert high is None or high >= low, f"{kind}: setting '{f.name}' has an empty range"
            for item in default if isinstance(default, list) else [default]:
                assert item is None or (item >= low and (high is None or item <= high)), \
                    f"{kind}: the default of '{f.name}' ({item}) is outside its range"
        elif low is not None or high is not None:
            pytest.fail(f"{kind}: setting '{f.name}' is no number but has a range")
        if choices and default is not dataclasses.MISSING:
            assert default in choices, f"{kind}: the default of '{f.name}' is not among its choices"


@pytest.mark.parametrize("kind,values", [
    ("sft", {"max_length": -5}), ("sft", {"max_steps": 0}), ("adapt", {"max_length": -5}),
    ("instruct", {"batch_size": 0}), ("instruct", {"effective_batch_size": -1}),
    ("evalita_eval", {"batch_size": 0}), ("evalita_eval", {"max_new_tokens": -3}),
    ("evalita_eval", {"max_input_chars": 0}), ("evalita_eval", {"limit": -1}),
    ("evalita_prepare", {"max_per_task": -1}), ("evalita_prepare", {"seed": -1}),
])
def test_out_of_range_numbers_are_refused_in_every_stage(kind, values):
    (name, value), = values.items()
    cls = recipes.stage_module(kind).Config
    given = {key: text for key, text in (("model", "m"), ("output", "o"), ("data", ["d"]))
             if key in {f.name for f in dataclasses.fields(cls)}}
    with pytest.raises(LlamantinoError, match=rf"setting '{name}' is {value}; it must be at least"):
        build_config(cls, {**given, **values}, source=kind)


def test_a_stage_overrides_the_default_and_keeps_the_declaration():
    from llamantino.train import instruct, sft
    from llamantino.train.settings import QLoraSettings, TrainSettings

    def field(cls, name):
        return next(f for f in dataclasses.fields(cls) if f.name == name)

    declared, stage = field(TrainSettings, "max_length"), field(sft.Config, "max_length")
    assert stage.default == 2048 and declared.default == 1024
    assert stage.metadata["help"] != declared.metadata["help"]  # the stage's own words
    assert {k: v for k, v in stage.metadata.items() if k != "help"} == \
           {k: v for k, v in declared.metadata.items() if k != "help"}
    # QLoRA narrows max_steps to at least 1; sft's own default keeps that range and the help.
    assert field(sft.Config, "max_steps").metadata == field(QLoraSettings, "max_steps").metadata
    assert field(QLoraSettings, "max_steps").metadata["minimum"] == 1
    assert field(instruct.Config, "compute_dtype").metadata["choices"] == ("auto", "float32", "bfloat16")
    assert field(instruct.Config, "batch_size").metadata["minimum"] == 1
    # Overriding keeps the declaring group's place: the stages list the shared settings in one order.
    shared = [f.name for f in dataclasses.fields(TrainSettings)]
    for cls in (sft.Config, instruct.Config):
        names = [f.name for f in dataclasses.fields(cls)]
        assert [n for n in names if n in shared] == shared


def test_override_mistakes_fail_when_the_class_is_defined():
    @dataclasses.dataclass
    class Group(Settings):
        steps: int = setting(10, "steps", minimum=0, maximum=100)
        mode: str = setting("a", "mode", choices=("a", "b"))

    @dataclasses.dataclass
    class Stage(Group):
        steps: int = override(20, minimum=1)
        mode: str = override("b", choices=("b",))

    assert Stage().steps == 20 and Stage().mode == "b"
    with pytest.raises(LlamantinoError, match="setting 'steps' is 0; it must be between 1 and 100"):
        build_config(Stage, {"steps": 0})
    with pytest.raises(LlamantinoError, match="setting 'mode' is 'a'; valid: b"):
        build_config(Stage, {"mode": "a"})

    cases = {"no base class declares": lambda: dataclasses.dataclass(type("S", (Group,), {
                 "__annotations__": {"other": "int"}, "other": override(1)})),
             "annotate it as the declaring group does": lambda: type("S", (Group,), {
                 "__annotations__": {"steps": "float"}, "steps": override(1.0)}),
             "minimum -1 is outside the declared minimum 0": lambda: type("S", (Group,), {
                 "__annotations__": {"steps": "int"}, "steps": override(1, minimum=-1)}),
             "maximum 200 is outside the declared maximum 100": lambda: type("S", (Group,), {
                 "__annotations__": {"steps": "int"}, "steps": override(1, maximum=200)}),
             "are not among": lambda: type("S", (Group,), {
                 "__annotations__": {"mode": "str"}, "mode": override("c", choices=("c",))})}
    for message, define in cases.items():
        with pytest.raises(TypeError, match=message):
            define()
