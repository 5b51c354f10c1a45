"""The one registry: every command of `llamantino` and every stage kind a recipe may name,
and the interface a stage module meets.

The CLI (`cli.py`), recipe loading (`config show`) and `run` all read this table. An entry
names its command (None: a stage only recipes run), its stage kind (the `kind:` of a recipe;
None: a command that runs no stage), the module that implements it, and the command's help
line. Modules are named, not imported, so `llamantino --help` stays instant.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StageModule(Protocol):
    """A stage module: a settings dataclass (`Config`, with an `output` field), its kind, and
    `run`, which returns a summary ({"status", "headline", "metrics", "display"}; a status
    starting with "stopped" means it stopped with a checkpoint and resumes) or None on a rank
    other than 0. Its command is built from `Config` (runner.add_stage_arguments; `RESUMABLE
    = True` adds --resume) unless the module defines `add_arguments(parser)` and `main(args)`."""

    KIND: str
    Config: type

    def run(self, cfg: Any, *, overwrite: bool = False, resume: bool = False) -> dict | None: ...


@dataclasses.dataclass(frozen=True)
class Entry:
    command: str | None  # `llamantino COMMAND`; None for a stage only recipes run
    kind: str | None  # stage kind (`kind:` in recipes); None for a command that runs no stage
    module: str
    help: str


# Listed in the order of `llamantino --help`. A module serving several commands defines
# add_<last word>_arguments / <last word>_main for each (runner: add_show_arguments, show_main).
REGISTRY = (
    Entry("run", None, "llamantino.core.runner",
          "run the stages of a recipe (a chain: skips finished stages, resumes interrupted ones)"),
    Entry("config show", None, "llamantino.core.runner", "print the fully resolved settings of a recipe, running nothing"),
    Entry("config list", None, "llamantino.core.runner", "list the bundled recipes"),
    Entry("clean", "clean", "llamantino.data.clean", "clean a web corpus with the clean_mc4_it rules"),
    Entry("manifest merge", None, "llamantino.data.sharding",
          "check the parts of a sharded run (array job) and write their combined manifest"),
    Entry("demo-base", "demo_base", "llamantino.demo.demo_base",
          "build the small English-trained LLaMA stand-in used by the demo"),
    Entry("eval bpb", "bpb", "llamantino.evaluate.bpb", "bits per byte of a model on held-out text"),
    Entry("eval evalita", "evalita_eval", "llamantino.evaluate.evalita.evaluate",
          "generate, decode and score EVALITA 2023 tasks"),
    Entry("eval lm-eval", "lm_eval", "llamantino.evaluate.harness",
          "lm-evaluation-harness tasks and suites (leaderboard-it, evalita-llm)"),
    Entry("adapt", "adapt", "llamantino.train.adapt", "language adaptation: QLoRA continued pretraining"),
    Entry("translate", "translate", "llamantino.data.translate", "machine-translate chat or instruction data"),
    Entry("demo-translator", "tiny_translator", "llamantino.demo.tiny_translator",
          "build the small stand-in translation model used by the demo"),
    Entry("sft", "sft", "llamantino.train.sft", "chat fine-tuning (QLoRA) on conversations (chat format: --prompt-format)"),
    Entry("prefer", "prefer", "llamantino.train.prefer",
          "preference tuning (QLoRA): DPO, IPO, SimPO or ORPO on pairs of chosen and rejected answers"),
    Entry("preview", None, "llamantino.data.preview", "show training examples exactly as the model sees them"),
    Entry("chat", "chat", "llamantino.evaluate.chat", "chat with a model in the terminal"),
    Entry("evalita prepare", "evalita_prepare", "llamantino.evaluate.evalita.prepare",
          "turn EVALITA 2023 task files into instruction records"),
    Entry("evalita score", None, "llamantino.evaluate.evalita.score",
          "score predictions against gold with a task's official metric"),
    Entry("instruct", "instruct", "llamantino.train.instruct", "full-parameter instruction tuning with FSDP"),
    Entry("merge", "merge", "llamantino.models.merge", "merge a LoRA adapter into its base model"),
    Entry("diff make", None, "llamantino.release.weightdiff", "make an exact weight difference between two checkpoints"),
    Entry("diff apply", None, "llamantino.release.weightdiff", "rebuild a checkpoint from its base and a weight difference"),
    Entry("build", "build", "llamantino.release.build", "rebuild one of the ten released models from its chain"),
    Entry("release", "release", "llamantino.release.release",
          "package a trained run as it is published (adapter or weight difference)"),
    Entry("export gguf", "export_gguf", "llamantino.release.gguf",
          "write a model (and a LoRA adapter merged into it) as one GGUF file for llama.cpp and Ollama"),
    Entry("export ollama", "export_ollama", "llamantino.release.ollama",
          "a folder for `ollama create`: the GGUF file and a Modelfile with the run's chat template and stop tokens"),
    Entry("vocab extend", "vocab_extend", "llamantino.data.vocab",
          "add target-language tokens to a model's vocabulary, with initialised embeddings"),
    Entry("report compare", "compare", "llamantino.evaluate.compare",
          "compare runs side by side: markdown table and bar chart"),
    Entry("doctor", None, "llamantino.doctor", "what a bug report needs, and what every auto setting picks here and why "
                                               "(--smoke: check each path on a tiny model)"),
    Entry(None, "verify", "llamantino.release.verify", "check that a rebuilt model equals a reference bit for bit"),
)

COMMANDS = {e.command: e for e in REGISTRY if e.command}
STAGE_MODULES = {e.kind: e.module for e in REGISTRY if e.kind}
