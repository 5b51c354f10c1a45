"""`llamantino chat MODEL [--adapter PATH]`: multi-turn chat in the terminal.

The conversation is rendered in the format the model was trained with (`--prompt-format`,
default `auto`: the chat template saved with the adapter or model, else the paper's Italian
LLaMA 2 format) with the system prompt `--system-prompt` names (default `auto`: the
template's own, or the paper's Italian one with LLaMA 2), unless `/system` sets another for
the conversation; tokens are streamed as they are generated, and generation stops at the
model's EOS ids and the format's end-of-turn token. Commands: /reset,
/system TEXT, /exit. `--prompt TEXT` answers once.

In a recipe, the `chat` stage answers a list of prompts and saves the transcript.
"""

from __future__ import annotations

import dataclasses
import sys

from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import PROMPT_FORMAT_HELP, SYSTEM_PROMPT_HELP

KIND = "chat"
HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit"


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder or hub name", path_input=True)
    adapter: str = setting("", "PEFT adapter to apply (e.g. an sft run)", path_input=True)
    prompts: list[str] = setting([], "user messages, one conversation turn each")
    prompt_format: str = setting("auto", PROMPT_FORMAT_HELP, path_input=True)
    system_prompt: str = setting("auto", SYSTEM_PROMPT_HELP, path_input=True)
    max_new_tokens: int = setting(128, "tokens to generate per answer", minimum=1)
    do_sample: bool = setting(False, "sample instead of greedy decoding")
    temperature: float = setting(0.7, "sampling temperature", minimum=0)
    top_p: float = setting(0.9, "nucleus sampling", minimum=0, maximum=1)
    seed: int = setting(0, "seed for sampling", minimum=0)
    output: str = setting("", "folder for the transcript (stage use)")

    def validate(self, source):
        if not self.model:
            raise LlamantinoError(f"{source}: setting 'model' is required")


class Conversation:
    """The turns so far, rendered in a chat format; `system` ("": the format's default)."""

    def __init__(self, chat, system: str = ""):
        self.chat, self.system = chat, system
        self.messages: list[dict] = []

    def prompt(self, user: str) -> str:
        head = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*head, *self.messages, {"role": "user", "content": user}]
        return self.chat.render_conversation(messages, add_generation_prompt=True).text

    @property
    def default_system(self) -> str:
        return getattr(self.chat, "system", None) or "(none)"

    def add(self, user: str, answer: str) -> None:
        self.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer or "…"}]


def load(model_path: str, adapter: str, prompt_format: str = "auto", system_prompt: str = "auto"):
    """Model, tokenizer (the adapter run's when it saved one) and chat format."""
    from llamantino.data.prompts import is_instruction_only, prompt_format as resolve
    from llamantino.models.modeling import load_tokenizer, load_with_adapter

    if is_instruction_only(prompt_format):
        raise LlamantinoError(f"prompt format {prompt_format} is an instruction prompt; chat needs a chat format")
    tokenizer = load_tokenizer(adapter if adapter and _has_tokenizer(adapter) else model_path)
    chat = resolve(prompt_format, tokenizer, system_prompt)
    model = load_with_adapter(model_path, adapter)
    return model, tokenizer, chat


def _has_tokenizer(folder: str) -> bool:
    from pathlib import Path

    return (Path(folder) / "tokenizer_config.json").is_file()


def answer(model, tokenizer, conversation: Conversation, user: str, cfg: Config, stream=None) -> str:
    from llamantino.models.generate import generate

    prompt = conversation.prompt(user)
    streamer = None
    if stream is not None:
        from transformers import TextStreamer

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    text = generate(model, tokenizer, [prompt], max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                    temperature=cfg.temperature, top_p=cfg.top_p, batch_size=1, streamer=streamer,
                    seed=cfg.seed if cfg.do_sample else None, add_bos=conversation.chat.add_bos,
                    stop_tokens=[conversation.chat.end_of_turn])[0]
    conversation.add(user, text)
    return text


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    """Stage: answer `prompts` as one conversation and save the transcript."""
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import prepare_output, read_manifest, write_manifest

    if not cfg.prompts:
        raise LlamantinoError("chat stage: no prompts given")
    if cfg.output and prepare_output(cfg.output, KIND, cfg, overwrite=overwrite) == "complete":
        transcript = read_manifest(cfg.output)["metrics"]["transcript"]
        _print_transcript(transcript)
        return {"status": "skipped (done)", "headline": {"turns": len(transcript)}, "metrics": {},
                "display": _transcript_text(transcript)}
    model, tokenizer, chat = load(cfg.model, cfg.adapter, cfg.prompt_format, cfg.system_prompt)
    conversation = Conversation(chat)
    transcript = []
    for user in cfg.prompts:
        transcript.append({"user": user, "assistant": answer(model, tokenizer, conversation, user, cfg)})
    _print_transcript(transcript)
    if cfg.output:
        with atomic_dir(cfg.output) as tmp:
            write_manifest(tmp, KIND, cfg, metrics={"transcript": transcript})
    return {"status": "done", "headline": {"turns": len(transcript)}, "metrics": {"transcript": transcript},
            "display": _transcript_text(transcript)}


def _transcript_text(transcript) -> str:
    return "\n".join(f"utente     > {t['user']}\nassistente > {t['assistant']}" for t in transcript)


def _print_transcript(transcript):
    print(_transcript_text(transcript))


def add_arguments(parser):
    parser.add_argument("model", help="model folder or hub name")
    parser.add_argument("--adapter", default="", help="PEFT adapter (e.g. an sft run)")
    parser.add_argument("--prompt", help="answer this message once and exit")
    parser.add_argument("--prompt-format", default="auto", help=PROMPT_FORMAT_HELP)
    parser.add_argument("--system-prompt", default="auto", help=SYSTEM_PROMPT_HELP)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    cfg = Config(model=args.model, adapter=args.adapter, max_new_tokens=args.max_new_tokens,
                 do_sample=args.sample, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                 prompt_format=args.prompt_format, system_prompt=args.system_prompt)
    model, tokenizer, chat = load(cfg.model, cfg.adapter, cfg.prompt_format, cfg.system_prompt)
    conversation = Conversation(chat)
    if args.prompt is not None:
        answer(model, tokenizer, conversation, args.prompt, cfg, stream=sys.stdout)
        return 0
    print(HELP)
    while True:
        try:
            line = input("utente > ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line == "/exit":
            return 0
        if line == "/reset":
            conversation = Conversation(chat, conversation.system)
            print("(new conversation)")
            continue
        if line.startswith("/system"):
            text = line[len("/system"):].strip()
            if not text:
                print(f"(system prompt: {conversation.system or conversation.default_system})")
                continue
            conversation = Conversation(chat, text)
            print("(system prompt set; new conversation)")
            continue
        if line.startswith("/"):
            print(HELP)
            continue
        print("assistente > ", end="", flush=True)
        answer(model, tokenizer, conversation, line, cfg, stream=sys.stdout)
