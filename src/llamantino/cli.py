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
from llamantino.core.registry import COMMANDS  # every command: its module, stage kind and help

def _top_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"llamantino {__version__}: adapt open LLaMA-family models to Italian (the LLaMAntino pipeline).",
        "",
        "usage: llamantino COMMAND [options]      (llamantino COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {entry.help}" for name, entry in COMMANDS.items()]
    lines += ["", "Examples:", "  llamantino run demo", "  llamantino config show LLaMAntino-2-7b-hf-ITA",
              "  llamantino clean shards/ --output clean/"]
    return "\n".join(lines)


def _functions(name: str):
    """add_arguments(parser) and main(args) of a command: the module's own, or, for a stage
    whose options are its settings, built from them (runner.add_stage_arguments)."""
    entry = COMMANDS[name]
    module = importlib.import_module(entry.module)
    parts = name.split()
    candidates = [parts[-1].replace("-", "_")] if len(parts) > 1 else []
    for suffix in candidates + [parts[0].replace("-", "_")]:
        add = getattr(module, f"add_{suffix}_arguments", None)
        run = getattr(module, f"{suffix}_main", None)
        if add and run:
            return add, run
    if hasattr(module, "add_arguments"):
        return module.add_arguments, module.main
    from llamantino.core import runner

    resumable = getattr(module, "RESUMABLE", False)
    return (lambda parser: runner.add_stage_arguments(parser, entry.kind, resume=resumable),
            lambda args: runner.run_stage_command(entry.kind, args))


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
        parser = argparse.ArgumentParser(prog=f"llamantino {name}", description=COMMANDS[name].help)
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
