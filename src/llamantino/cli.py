"""The `llamantino` command: thin wrappers over library functions.

Sub-commands are imported only when used, so `llamantino --help` is instant and a
command that needs no torch never imports it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from llamantino import __version__
from llamantino.core.errors import DISK_ERRORS, LlamantinoError

# name -> (module, help). The module defines add_arguments(parser) and main(args) -> int,
# or, for a module serving several commands, add_<suffix>_arguments / <suffix>_main.
COMMANDS = {
    "run": ("llamantino.core.runner", "run the stages of a recipe (a chain: skips finished stages, resumes interrupted ones)"),
    "config show": ("llamantino.core.runner", "print the fully resolved settings of a recipe, running nothing"),
    "config list": ("llamantino.core.runner", "list the bundled recipes"),
    "clean": ("llamantino.data.clean", "clean a web corpus with the clean_mc4_it rules"),
    "manifest merge": ("llamantino.data.sharding", "check the parts of a sharded run (array job) and write their combined manifest"),
    "demo-base": ("llamantino.demo.demo_base", "build the small English-trained LLaMA stand-in used by the demo"),
    "eval bpb": ("llamantino.evaluate.bpb", "bits per byte of a model on held-out text"),
    "eval evalita": ("llamantino.evaluate.evalita.evaluate", "generate, decode and score EVALITA 2023 tasks"),
    "eval lm-eval": ("llamantino.evaluate.harness", "lm-evaluation-harness tasks and suites (leaderboard-it, evalita-llm)"),
    "adapt": ("llamantino.train.adapt", "language adaptation: QLoRA continued pretraining"),
    "translate": ("llamantino.data.translate", "machine-translate chat or instruction data"),
    "demo-translator": ("llamantino.demo.tiny_translator", "build the small stand-in translation model used by the demo"),
    "sft": ("llamantino.train.sft", "chat fine-tuning (QLoRA) with the Italian LLaMA 2 chat template"),
    "preview": ("llamantino.data.preview", "show training examples exactly as the model sees them"),
    "chat": ("llamantino.evaluate.chat", "chat with a model in the terminal"),
    "evalita prepare": ("llamantino.evaluate.evalita.prepare", "turn EVALITA 2023 task files into instruction records"),
    "evalita score": ("llamantino.evaluate.evalita.score", "score predictions against gold with a task's official metric"),
    "instruct": ("llamantino.train.instruct", "full-parameter instruction tuning with FSDP"),
    "merge": ("llamantino.models.merge", "merge a LoRA adapter into its base model"),
    "diff make": ("llamantino.release.weightdiff", "make an exact weight difference between two checkpoints"),
    "diff apply": ("llamantino.release.weightdiff", "rebuild a checkpoint from its base and a weight difference"),
    "build": ("llamantino.release.build", "rebuild one of the ten released models from its chain"),
    "release": ("llamantino.release.release", "package a trained run as it is published (adapter or weight difference)"),
    "vocab extend": ("llamantino.data.vocab", "add target-language tokens to a model's vocabulary, with initialised embeddings"),
    "report compare": ("llamantino.evaluate.compare", "compare runs side by side: markdown table and bar chart"),
    "doctor": ("llamantino.doctor", "what a bug report needs, and what every auto setting picks here and why "
                                    "(--smoke: check each path on a tiny model)"),
}


def _top_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"llamantino {__version__}: adapt open LLaMA-family models to Italian (the LLaMAntino pipeline).",
        "",
        "usage: llamantino COMMAND [options]      (llamantino COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Examples:", "  llamantino run demo", "  llamantino config show LLaMAntino-2-7b-hf-ITA",
              "  llamantino clean shards/ --output clean/"]
    return "\n".join(lines)


def _functions(name: str):
    module_name, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parts = name.split()
    candidates = [parts[-1].replace("-", "_")] if len(parts) > 1 else []
    for suffix in candidates + [parts[0].replace("-", "_")]:
        add = getattr(module, f"add_{suffix}_arguments", None)
        run = getattr(module, f"{suffix}_main", None)
        if add and run:
            return add, run
    if hasattr(module, "add_arguments"):
        return module.add_arguments, module.main
    # A plain stage: its options come from its settings (runner.add_stage_arguments).
    from llamantino.core import runner

    resumable = getattr(module, "RESUMABLE", False)
    return (lambda parser: runner.add_stage_arguments(parser, module.KIND, resume=resumable),
            lambda args: runner.run_stage_command(module.KIND, args))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0
    if argv[0] == "--version":
        print(f"llamantino {__version__}")
        return 0
    name = " ".join(argv[:2]) if " ".join(argv[:2]) in COMMANDS else argv[0]
    if name not in COMMANDS:
        groups = sorted({c.split()[0] for c in COMMANDS if " " in c})
        if argv[0] in groups:
            subs = [c.split()[1] for c in COMMANDS if c.startswith(argv[0] + " ")]
            print(f"error: '{argv[0]}' needs a sub-command: {', '.join(subs)}", file=sys.stderr)
        else:
            from llamantino.core.config import closest

            print(f"error: unknown command '{argv[0]}'{closest(argv[0], [c.split()[0] for c in COMMANDS])}; "
                  "see llamantino --help", file=sys.stderr)
        return 2
    rest = argv[len(name.split()):]
    logging.basicConfig(level=os.environ.get("LLAMANTINO_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    _quiet_libraries()
    try:
        add_arguments, run = _functions(name)
        parser = argparse.ArgumentParser(prog=f"llamantino {name}", description=COMMANDS[name][1])
        add_arguments(parser)
        args = parser.parse_args(rest)
        return int(run(args) or 0)
    except LlamantinoError as exc:
        # One write: under torchrun every rank reports the same refusal on a shared stderr.
        sys.stderr.write(f"error: {exc}\n")
        sys.stderr.flush()
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: a reader that had enough
        # Whatever is still buffered would fail again at exit; it goes nowhere instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            from llamantino.core.errors import shown

            where = f"{shown(exc.filename, 120)}: " if exc.filename else ""
            print(f"error: {where}a file name longer than the file system allows; choose a shorter one",
                  file=sys.stderr)
            return 2
        if exc.errno not in DISK_ERRORS:
            raise
        # A full, read-only or forbidden disk: one line; what was finished stays for a resume.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; finished work is kept: fix this and run the same "
              "command again to resume", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """Keep the output to what matters here: our progress bars and results."""
    import warnings

    # bitsandbytes announces, on every CPU run, that an optional kernel package from the hub
    # is missing; nothing may be fetched from the hub here, so the notice is noise.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft still calls transformers' old checkpointing names, which warn on every load.
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing_enable.*", category=FutureWarning)
    if not sys.stderr.isatty():
        # Weight-loading bars of transformers, redrawn hundreds of times in a log file.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
