"""Running recipes, and the shared command-line plumbing of single-stage commands.

`llamantino run RECIPE` runs the recipe's stages in order. A stage whose output folder
holds a finished run with the same settings is skipped; an interrupted one resumes.
`llamantino adapt ...` (and every other stage command) runs one stage, taking its
settings from `--recipe` if given, then `--set`, then its own options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from llamantino.core.config import add_config_arguments, build_config, cli_overrides, parse_set_options, to_dict
from llamantino.core.errors import LlamantinoError
from llamantino.core.recipes import list_recipes, load_recipe, render_recipe, stage_module


# ---------------------------------------------------------------------------------------
# Single-stage commands


def add_stage_arguments(parser: argparse.ArgumentParser, kind: str, *, positional: dict | None = None,
                        skip=(), resume: bool = False):
    """Options of a stage command: positional inputs, --recipe, --set, --overwrite, settings.

    `positional` maps a setting name to argparse keyword arguments for a positional
    argument (e.g. {"inputs": {"nargs": "+"}}).
    """
    module = stage_module(kind)
    for name, kwargs in (positional or {}).items():
        parser.add_argument(name, **kwargs)
    parser.add_argument("--recipe", help="take settings from this recipe (name or YAML path) first")
    parser.add_argument("--stage", help="which of the recipe's stages (default: its first of this kind)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override any setting, e.g. --set learning_rate=1e-4")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder that holds a different run")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the latest checkpoint of an interrupted run in --output. Every "
                                 "checkpoint file must have the sha256 the run recorded when it wrote it (run.json); "
                                 "sharded checkpoints keep torch.distributed.checkpoint metadata, a pickle: trust "
                                 "a checkpoint folder like code")
    add_config_arguments(parser, module.Config, skip=tuple(skip) + tuple(positional or ()))


def stage_config(kind: str, args: argparse.Namespace, positional=()):
    """Resolve a stage's settings: recipe < --set < named options."""
    module = stage_module(kind)
    values: dict = {}
    if args.recipe:
        recipe = load_recipe(args.recipe)
        stage = recipe.stage(args.stage) if args.stage else recipe.first_of_kind(kind)
        values = to_dict(stage.config)
        source = f"recipe {recipe.name}, stage '{stage.name}'"
    else:
        source = "command line"
    for key, value in parse_set_options(args.set).items():
        values[key] = value
    values.update(cli_overrides(args, module.Config))
    for name in positional:
        value = getattr(args, name, None)
        if value not in (None, []):
            values[name] = value
    return build_config(module.Config, values, source)


# Exit status of a stage, or a chain, that stopped with a checkpoint (SIGTERM before a job's
# time limit, stop_after_steps): the same command resumes it. A job script requeues on it.
STOPPED = 3


def stopped(summary: dict | None) -> bool:
    return summary is not None and str(summary.get("status", "")).startswith("stopped")


def run_stage_command(kind: str, args: argparse.Namespace, positional=()) -> int:
    """Run one stage from its command's options; 0 when done, STOPPED when it stopped."""
    module = stage_module(kind)
    cfg = stage_config(kind, args, positional)
    try:
        summary = module.run(cfg, overwrite=args.overwrite, resume=getattr(args, "resume", False))
    finally:
        _end_process_group()
    if summary is not None and os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return STOPPED if stopped(summary) else 0


def _end_process_group() -> None:
    """Leave torchrun's process group cleanly (torch warns at exit otherwise). Only a stage
    that trained has imported torch."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------
# llamantino run


def add_run_arguments(parser):
    parser.add_argument("recipe", help="recipe name (see `llamantino config list`) or YAML file")
    parser.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", default=[],
                        help="override a setting, e.g. --set adapt.max_steps=100 (repeatable)")
    parser.add_argument("--run-dir", help="folder for all stage outputs (default from the recipe)")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace stage outputs that hold runs with other settings")


def run_main(args) -> int:
    recipe = load_recipe(args.recipe, parse_set_options(args.set), run_dir=args.run_dir)
    results = run_recipe(recipe, only=args.only, overwrite=args.overwrite)
    return STOPPED if any(stopped(r) for r in results) else 0


def run_recipe(recipe, *, only=None, overwrite: bool = False, out=None) -> list[dict]:
    """Run the stages in order; print a summary table at the end. Returns per-stage results."""
    out = out or sys.stdout
    if only:
        for name in only:
            recipe.stage(name)
    results = []
    t_all = time.time()
    for stage in recipe.stages:
        if (only and stage.name not in only) or (stage.optional and not only):
            if stage.optional and not only:
                print(f"\n=== {recipe.name}: stage '{stage.name}' is optional: run it with --only {stage.name}",
                      file=out, flush=True)
            continue
        print(f"\n=== {recipe.name}: stage '{stage.name}' ({stage.kind}) -> {stage.output}", file=out, flush=True)
        t0 = time.time()
        summary = stage_module(stage.kind).run(stage.config, overwrite=overwrite, resume=True) or {}
        results.append({"stage": stage.name, "kind": stage.kind, "output": stage.output,
                        "seconds": round(time.time() - t0, 1), **summary})
        if stopped(summary):
            # The next stages would read an unfinished folder: the chain stops here.
            print(f"\n=== {recipe.name}: stage '{stage.name}' {summary['status']} with a checkpoint; "
                  f"run the same command again to resume it and go on", file=out)
            break
    print(f"\n=== {recipe.name}: done in {time.time() - t_all:.0f} s; outputs under {recipe.run_dir}", file=out)
    print(summary_table(results), file=out)
    # Results worth reading again (tables, checks, transcripts), gathered at the end.
    for r in results:
        if r.get("display"):
            print(f"\n--- {r['stage']} ({r['output']})\n{r['display']}", file=out)
    out.flush()
    return results


def summary_table(results: list[dict]) -> str:
    """One row per stage: status, seconds, headline figures, output folder."""
    rows = [("stage", "status", "s", "headline", "output")]
    for r in results:
        headline = r.get("headline") or {}
        text = ", ".join(f"{k}={_fmt(v)}" for k, v in headline.items())
        rows.append((r["stage"], r.get("status", "done"), f"{r['seconds']:.0f}", text, r["output"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------------------
# llamantino config show / list


def add_show_arguments(parser):
    parser.add_argument("recipe", help="recipe name or YAML file")
    parser.add_argument("--format", choices=("yaml", "json"), default="yaml")
    parser.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", default=[],
                        help="show the settings with these overrides applied")


def show_main(args) -> int:
    recipe = load_recipe(args.recipe, parse_set_options(args.set))
    print(render_recipe(recipe, args.format))
    return 0


def add_list_arguments(parser):
    parser.add_argument("--format", choices=("text", "json"), default="text")


def list_main(args) -> int:
    names = list_recipes()
    if args.format == "json":
        print(json.dumps(names))
        return 0
    for name in names:
        try:
            description = load_recipe(name).description
        except LlamantinoError as exc:  # a broken bundled recipe must still be listed
            description = f"(invalid: {exc})"
        print(f"{name:45s} {description.splitlines()[0] if description else ''}")
    return 0


def config_for(kind: str, **values):
    """Build a stage's settings from Python (library use, tests)."""
    return build_config(stage_module(kind).Config, values, f"{kind} settings")
