"""The one registry agrees with every module it names: each stage module meets the stage
interface under its registered kind, each command builds its parser and answers --help, and
no module hand-writes the command pair the CLI would generate for it."""

import ast
import dataclasses
import importlib
import inspect

import pytest

from llamantino import cli
from llamantino.core import registry
from llamantino.core.errors import LlamantinoError
from llamantino.core.recipes import load_recipe

STAGES = [e for e in registry.REGISTRY if e.kind]


@pytest.mark.parametrize("entry", STAGES, ids=lambda e: e.kind)
def test_every_stage_module_meets_the_stage_interface_under_its_kind(entry):
    module = importlib.import_module(entry.module)
    assert isinstance(module, registry.StageModule), f"{entry.module} lacks KIND, Config or run"
    assert module.KIND == entry.kind
    assert dataclasses.is_dataclass(module.Config) and "output" in module.Config.__dataclass_fields__
    keywords = inspect.signature(module.run).parameters
    assert keywords["overwrite"].kind is keywords["resume"].kind is inspect.Parameter.KEYWORD_ONLY


def test_one_entry_per_command_and_per_kind():
    commands = [e.command for e in registry.REGISTRY if e.command]
    kinds = [e.kind for e in registry.REGISTRY if e.kind]
    assert len(commands) == len(set(commands)) and len(kinds) == len(set(kinds))
    assert all(e.command or e.kind for e in registry.REGISTRY)
    assert list(cli.COMMANDS) == commands  # `llamantino --help` lists them in the registry's order


@pytest.mark.parametrize("command", sorted(registry.COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(command.split() + ["--help"])
    assert exit_.value.code == 0 and f"usage: llamantino {command}" in capsys.readouterr().out


def test_a_stage_command_without_its_own_parser_takes_its_settings(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "evalita", "--help"])
    text = capsys.readouterr().out
    assert all(option in text for option in ("--recipe", "--set", "--overwrite", "--model", "--tasks", "--samples"))


def _calls_only(function: ast.FunctionDef, name: str) -> bool:
    """Whether a function's body is one call of `name(..., KIND)` or `name(KIND, args)`
    (after an import), with nothing more."""
    body = [node for node in function.body if not isinstance(node, (ast.Import, ast.ImportFrom))]
    if len(body) != 1 or not isinstance(body[0], (ast.Expr, ast.Return)):
        return False
    call = body[0].value
    return (isinstance(call, ast.Call) and getattr(call.func, "id", None) == name and not call.keywords
            and len(call.args) == 2)


@pytest.mark.parametrize("command", sorted(registry.COMMANDS))
def test_no_module_hand_writes_the_generated_command(command):
    add, main = cli._functions(command)
    if add.__name__ == "<lambda>":
        return  # generated from the stage's settings
    add_def, main_def = (ast.parse(inspect.getsource(f)).body[0] for f in (add, main))
    generated = _calls_only(add_def, "add_stage_arguments") and _calls_only(main_def, "run_stage_command")
    assert not generated, f"{add.__module__}.{add.__name__}/{main.__name__} do what the CLI generates: remove them"


def test_sft_help_names_no_single_chat_format(capsys):
    assert cli.main(["--help"]) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if text.strip().startswith("sft "))
    assert "LLaMA 2" not in line and "QLoRA" in line


def test_removed_stage_kinds_are_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  table:\n    kind: report\n    metric: m\n    rows: [a=b]\n")
    with pytest.raises(LlamantinoError, match="unknown stage kind 'report'"):
        load_recipe(str(recipe))
