"""Chat fine-tuning: QLoRA on conversations, in the paper's Italian LLaMA 2 chat format or the model's own.

As in the paper (its UltraChat models): the language-adapted chat model (a base plus
its language adapter, merged) is loaded in 4-bit and a new LoRA adapter is trained on
translated UltraChat with the adaptation settings, except max length 2048 and 15,000
steps. Loss is taken on the assistant answers and their end-of-turn token only (`</s>` in
the paper's format). `prompt_format` picks the format (`auto`: the tokenizer's own chat
template, else the paper's) and `system_prompt` the default system prompt. The tokenizer
saved with the run carries the chat template, so `apply_chat_template` renders the training
format exactly (with the run's system prompt when no system message is given).

    llamantino sft --model meta-llama/Llama-2-7b-chat-hf --adapter runs/chat-7b-ita \
        --data ultrachat_it/ --output runs/chat-7b-ultrachat-ita
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from llamantino.core.config import override, setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.packing import RowSource
from llamantino.data.prompts import SYSTEM_PROMPT_HELP
from llamantino.data.records import CONVERSATION_DATA_FORMATS
from llamantino.models.weight_files import DTYPES
from llamantino.train.settings import QLoraSettings

KIND = "sft"
RESUMABLE = True  # the command takes --resume
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config(QLoraSettings):
    max_length: int = override(2048, "tokens per packed sequence (longer conversations are truncated)")
    max_steps: int = override(15000)
    adapter: str = setting("", "language adapter to merge into the base before training (the paper's "
                               "language-adapted chat model)", path_input=True)
    merge_dtype: str = setting("auto", "dtype of the merged base: float32, bfloat16, float16, or auto = "
                               "the checkpoint's own", choices=("auto",) + DTYPES)
    data: list[str] = setting([], "conversations: UltraChat or ultrachat_200k JSON lines, folders, hub:NAME?config=C&split=S", path_input=True)
    format: str = setting("", "data format (default: detected from the fields)",
                          choices=("",) + CONVERSATION_DATA_FORMATS)
    prompt_format: str = setting("auto", "chat format: auto (the tokenizer's chat template, else llama2-chat), "
                                         "llama2-chat (the paper's), chatml, or a Jinja chat template file",
                                 path_input=True)
    system_prompt: str = setting("auto", SYSTEM_PROMPT_HELP, path_input=True)

    def validate(self, source):
        self.check_common(source)
        if not self.data:
            raise LlamantinoError(f"{source}: no data given (setting 'data')")


class ExampleRows(RowSource):
    """Conversations of one rank -> rendered, tokenized, masked examples -> packed rows."""

    def __init__(self, stream, tokenizer, cfg: Config, prompt):
        from llamantino.data.packing import ExamplePacker

        self.stream, self.tokenizer, self.cfg, self.prompt = stream, tokenizer, cfg, prompt
        self.packer = ExamplePacker(cfg.max_length)
        self.formats: dict[str, str] = {}
        self.counts = {"examples": 0, "truncated": 0, "dropped_no_target": 0}
        self.examples = self._examples()

    def _examples(self):
        from llamantino.data.records import check_format, detect_format
        from llamantino.data.supervised import encode, render_record

        usable_in_epoch, epoch = 0, self.stream.epoch
        for record in self.stream:
            if self.stream.epoch != epoch:
                if usable_in_epoch == 0:
                    raise LlamantinoError(
                        f"{', '.join(self.stream.sources)}: no conversation keeps an answer within max_length "
                        f"{self.cfg.max_length} tokens; raise max_length")
                usable_in_epoch, epoch = 0, self.stream.epoch
            where = self.stream.where
            source = where.split(":")[0]
            fmt = self.cfg.format or self.formats.get(source) or detect_format(record, where)
            self.formats[source] = fmt
            check_format(record, fmt, where)
            rendered = render_record(record, fmt, self.prompt, where)
            example = encode(self.tokenizer, rendered, self.cfg.max_length)
            self.counts["examples"] += 1
            if example.truncated:
                self.counts["truncated"] += 1
            if example.trained_tokens == 0:
                self.counts["dropped_no_target"] += 1
                continue
            usable_in_epoch += 1
            yield example

    def next_row(self):
        return self.packer.next_row(self.examples)

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "packer": self.packer.state_dict(), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        self.packer.load_state_dict(state["packer"])
        self.counts = dict(state["counts"])
        self.examples = self._examples()

    def metrics(self) -> dict:
        return {**self.counts, "conversations_read": self.stream.count, "data_epochs": self.stream.epoch,
                "formats": sorted(set(self.formats.values())), "prompt_format": self.prompt.name,
                "end_of_turn": self.prompt.end_of_turn}


def merged_base(cfg: Config) -> str:
    """The base with the language adapter merged in, cached inside the run folder."""
    from llamantino.core.manifest import record_outputs
    from llamantino.models.merge import merge_adapter

    folder = Path(cfg.output) / "merged-base"
    if (folder / "config.json").is_file():
        return str(folder)
    log.info("merging %s into %s -> %s", cfg.adapter, cfg.model, folder)
    record_outputs(cfg.output, f"{folder.name}/")
    merge_adapter(cfg.model, cfg.adapter, folder, dtype=_merge_dtype(cfg))
    return str(folder)


def _merge_dtype(cfg: Config) -> str:
    if cfg.merge_dtype != "auto":
        return cfg.merge_dtype
    from llamantino.models.modeling import load_config

    dtype = str(getattr(load_config(cfg.model), "dtype", None) or "float32").replace("torch.", "")
    return dtype if dtype in DTYPES else "float32"


def chat_format(cfg: Config, tokenizer):
    """The run's chat format; the tokenizer saved with the run renders it (`apply_chat_template`)."""
    from llamantino.data.prompts import is_instruction_only, prompt_format

    if is_instruction_only(cfg.prompt_format):
        raise LlamantinoError(f"prompt_format {cfg.prompt_format} is an instruction prompt; sft trains on "
                              "conversations: auto, llama2-chat, chatml or a Jinja chat template")
    chat = prompt_format(cfg.prompt_format, tokenizer, cfg.system_prompt)
    tokenizer.chat_template = chat.chat_template
    return chat


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.distributed import dist_env
    from llamantino.data.prompts import prompt_files
    from llamantino.data.streaming import DocumentStream, expand_sources
    from llamantino.train.adapt import check_inputs

    tokenizer = check_inputs(cfg)
    chat = chat_format(cfg, tokenizer)
    sources = expand_sources(cfg.data)
    if cfg.adapter:
        from llamantino.models.modeling import check_adapter

        check_adapter(cfg.adapter)

    def make_source(rank, world):
        stream = DocumentStream(sources, text_field=None, rank=rank, world=world)
        rows = ExampleRows(stream, tokenizer, cfg, chat)
        # Render the first example now: a bad record or template fails before any work.
        probe = ExampleRows(DocumentStream(sources, text_field=None, rank=rank, world=world), tokenizer, cfg, chat)
        next(probe.examples, None)
        return rows

    from llamantino.train.qlora import train

    summary = train(KIND, cfg, make_source, overwrite=overwrite, resume=resume, tokenizer=tokenizer,
                    base_model=(lambda: merged_base(cfg)) if cfg.adapter else None,
                    inputs=list(sources) + prompt_files(cfg.prompt_format, cfg.system_prompt))
    if summary["status"] == "done" and dist_env()[0] == 0:
        # The merged base is a full copy of the model: only needed while training.
        shutil.rmtree(Path(cfg.output) / "merged-base", ignore_errors=True)
    return summary
