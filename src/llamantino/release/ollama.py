"""`llamantino export ollama MODEL [--adapter RUN] --output FOLDER --type TYPE`: a folder that
`ollama create NAME -f Modelfile` turns into an Ollama model: the GGUF file (`export gguf`) and
a Modelfile whose prompt is the one `llamantino chat MODEL --adapter RUN` renders.

The Modelfile holds:

* `FROM ./NAME.gguf`;
* `TEMPLATE`, in Ollama's Go template syntax (`.System`, `.Messages` with `range`/`if`/`eq`),
  derived from the run's chat format (the chat template saved with the run's tokenizer, which
  renders its prompt format and default system prompt; `--prompt-format` and `--system-prompt`
  as `chat` reads them). The chat template renders a few probe conversations; the text around
  each turn (before the system prompt, between the system prompt and the first user turn,
  after a user turn, after an answer, after the last user turn) becomes the Go template, and
  it must render a set of test conversations exactly as the chat template does, or the
  format is refused in one line naming it;
* `SYSTEM`: the default system prompt (the paper's Italian one with llama2-chat, a
  template's own such as Qwen 2.5's), which Ollama inserts when a conversation has none;
* `PARAMETER stop` for every token `chat` stops at: the generation config's EOS ids, the
  tokenizer's EOS and the format's end of turn;
* `PARAMETER num_ctx`: the run's training length (`max_length` in its manifest), else the
  model's context.

llama.cpp puts the BOS in front of the prompt itself when the GGUF says so
(`tokenizer.ggml.add_bos_token`), so the template leaves out a BOS the chat template writes
first: the model sees the same tokens as with `chat`. Go templates cannot trim text: a
message with spaces or newlines around it renders as written, where some chat templates
(Llama 3, Gemma, llama2-chat) trim it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from llamantino import __version__
from llamantino.core.config import setting
from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import PROMPT_FORMAT_HELP, SYSTEM_PROMPT_HELP
from llamantino.release.gguf import TYPES, run_settings

KIND = "export_ollama"
MODELFILE = "Modelfile"
README = "README.md"

# Sentinels the probe conversations are made of: plain words no template changes.
_SYSTEM, _USERS, _ANSWERS = "llamantinoprobesystem", ("llamantinoprobeuser1", "llamantinoprobeuser2",
                                                      "llamantinoprobeuser3"), ("llamantinoprobeanswer1",
                                                                                "llamantinoprobeanswer2")

# Conversations the derived template must render exactly as the chat template does.
CHECKS = [
    [{"role": "user", "content": "Qual è la capitale d'Italia?"}],
    [{"role": "system", "content": "Rispondi in italiano, in una frase."},
     {"role": "user", "content": "Chi ha scritto la Divina Commedia?"}],
    [{"role": "user", "content": "Ciao! Come stai?"},
     {"role": "assistant", "content": "Bene, grazie. E tu?"},
     {"role": "user", "content": "Mi consigli una ricetta per la cena?"}],
    [{"role": "system", "content": "Sei un cuoco."},
     {"role": "user", "content": "Cosa cucino stasera?"},
     {"role": "assistant", "content": "Un risotto ai funghi: è semplice."},
     {"role": "user", "content": "E per dolce?"},
     {"role": "assistant", "content": "Un tiramisù, l'ho fatto ieri."},
     {"role": "user", "content": "Grazie! Quanto zucchero?"}],
]


@dataclasses.dataclass
class TurnTemplate:
    """A chat format as the text around each turn; a conversation renders as

    (head_system + system + after_system  if there is a system prompt, else head) + for each
    turn its content followed by: after_user / tail (a user turn, the last one) or
    after_answer (an answer that is not the last turn).
    """

    head: str
    head_system: str
    after_system: str
    after_user: str
    after_answer: str
    tail: str
    system: str | None  # the default system prompt (Modelfile SYSTEM)

    def render(self, messages) -> str:
        """What Ollama renders with the Go template (`go_template`): the Modelfile's SYSTEM as a
        first system message when the conversation has none; `.System` joins the system
        messages with a blank line (Ollama's `collate`)."""
        if self.system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system}, *messages]
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        out = self.head_system + system + self.after_system if system else self.head
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            if m["role"] == "user":
                out += m["content"] + (self.tail if last else self.after_user)
            elif m["role"] == "assistant":
                out += m["content"] + ("" if last else self.after_answer)
        return out

    def go_template(self) -> str:
        """The Modelfile's TEMPLATE. Text sits right next to non-trimming actions, so `{{-`
        only ever removes the newlines between two actions."""
        t = _go_text
        return (
            "{{- if .System }}" + t(self.head_system) + "{{ .System }}" + t(self.after_system)
            + "{{ else }}" + t(self.head) + "{{ end }}\n"
            "{{- range $i, $m := .Messages }}\n"
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if eq $m.Role "user" }}{{ $m.Content }}{{ if $last }}' + t(self.tail)
            + "{{ else }}" + t(self.after_user) + "{{ end }}\n"
            '{{- else if eq $m.Role "assistant" }}{{ $m.Content }}{{ if not $last }}' + t(self.after_answer)
            + "{{ end }}\n"
            "{{- end }}\n"
            "{{- end }}")


def _go_text(text: str) -> str:
    """Literal text in a Go template; text holding the `{{` delimiter goes in a string action."""
    if "{{" not in text:
        return text
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"  # JSON's escapes are valid in Go strings


def _split(text: str, sentinels: list[str], name: str) -> list[str]:
    """The text before, between and after the sentinels, in order."""
    pieces, cursor = [], 0
    for sentinel in sentinels:
        at = text.find(sentinel, cursor)
        if at < 0:
            raise LlamantinoError(f"{name}: the chat template does not render every turn of a conversation as "
                                  "given; no Ollama template can be derived from it")
        pieces.append(text[cursor:at])
        cursor = at + len(sentinel)
    return pieces + [text[cursor:]]


def turn_template(chat, *, bos: str | None, add_bos: bool) -> TurnTemplate:
    """The TurnTemplate of a chat format (`data.prompts.prompt_format`), checked on CHECKS.

    `add_bos`: llama.cpp puts `bos` in front of the prompt itself (the GGUF's
    tokenizer.ggml.add_bos_token), so the template must not write it first."""
    name = chat.name
    if getattr(chat, "chat_template", None) is None:
        raise LlamantinoError(f"prompt format {name} is an instruction prompt; an Ollama Modelfile needs a chat "
                              "format (auto, llama2-chat, chatml or a chat template)")

    def render(messages) -> str:
        return chat.render_conversation(messages, add_generation_prompt=True, where=name).text

    u, a = [{"role": "user", "content": c} for c in _USERS], [{"role": "assistant", "content": c} for c in _ANSWERS]
    with_system = render([{"role": "system", "content": _SYSTEM}, u[0], a[0], u[1], a[1], u[2]])
    head_system, after_system, after_user, after_answer, after_user2, after_answer2, tail = _split(
        with_system, [_SYSTEM, _USERS[0], _ANSWERS[0], _USERS[1], _ANSWERS[1], _USERS[2]], name)
    head, *rest = _split(render([u[0], a[0], u[1]]), [_USERS[0], _ANSWERS[0], _USERS[1]], name)
    if [after_user2, after_answer2] != [after_user, after_answer] or rest != [after_user, after_answer, tail]:
        raise LlamantinoError(f"{name}: the chat template renders a turn differently by its position or by the "
                              "presence of a system prompt; no Ollama template can be derived from it")
    system = None
    if head.startswith(head_system) and head.endswith(after_system) and \
            len(head) > len(head_system) + len(after_system):
        system = head[len(head_system):len(head) - len(after_system)]
    if add_bos:
        if not bos or not (head.startswith(bos) and head_system.startswith(bos)):
            raise LlamantinoError(f"{name}: llama.cpp puts the BOS {bos} in front of every prompt, but the chat "
                                  "template does not begin with it; the model would see a token it never saw")
        head, head_system = head[len(bos):], head_system[len(bos):]
    turns = TurnTemplate(head, head_system, after_system, after_user, after_answer, tail, system)
    for k, messages in enumerate(CHECKS):
        expected = render(messages)
        if add_bos:
            expected = expected[len(bos):]
        if turns.render(messages) != expected:
            raise LlamantinoError(f"{name}: the derived Ollama template renders test conversation {k + 1} "
                                  "differently from the chat template; this format cannot be translated")
    return turns


# ---------------------------------------------------------------------------------------
# The Modelfile


def stop_tokens(model_dir, tokenizer, end_of_turn: str) -> list[str]:
    """The tokens `chat` stops at (models.generate.stop_token_ids), as text: the model's
    generation-config EOS ids, the tokenizer's EOS and the format's end of turn."""
    from types import SimpleNamespace

    from llamantino.models.generate import stop_token_ids

    generation = None
    if (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        generation = GenerationConfig.from_pretrained(str(model_dir))
    elif (Path(model_dir) / "config.json").is_file():
        from llamantino.models.modeling import load_config

        generation = SimpleNamespace(eos_token_id=getattr(load_config(str(model_dir)), "eos_token_id", None))
    ids = stop_token_ids(SimpleNamespace(generation_config=generation), tokenizer, [end_of_turn])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return sorted(set(tokens), key=tokens.index)


def _quoted(text: str, what: str) -> str:
    """A Modelfile value in triple quotes. Ollama's parser ends it at the first \"\"\" before a space
    or newline and drops characters that are not printable (newlines and tabs apart)."""
    if '"""' in text:
        raise LlamantinoError(f"{what} holds \"\"\", which a Modelfile cannot quote")
    bad = sorted({c for c in text if not (c.isprintable() or c in "\n\t")})
    if bad:
        raise LlamantinoError(f"{what} holds characters a Modelfile drops: {', '.join(repr(c) for c in bad)}")
    return f'"""{text}"""'


def modelfile(gguf_name: str, turns: TurnTemplate, stops: list[str], num_ctx: int, *, header: str = "") -> str:
    """The Modelfile's text: FROM, TEMPLATE, SYSTEM, PARAMETER stop and num_ctx."""
    system = ["SYSTEM " + _quoted(turns.system, "the system prompt")] if turns.system else []
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"FROM ./{gguf_name}", "TEMPLATE " + _quoted(turns.go_template(), "the template"), *system]
    for token in stops:
        if '"' in token or not token.isprintable():
            raise LlamantinoError(f"stop token {token!r} cannot be written in a Modelfile")
        lines.append(f'PARAMETER stop "{token}"')
    lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines) + "\n"


def training_length(model: Path, adapter: Path | None) -> tuple[int, str]:
    """num_ctx: the `max_length` the run trained with (the adapter run's manifest, else the
    model folder's), else the model's context; and where it came from."""
    from llamantino.core.manifest import read_manifest
    from llamantino.models.modeling import context_length, load_config

    for folder in (adapter, model):
        if folder is None:
            continue
        manifest = read_manifest(folder) or {}
        length = (manifest.get("settings") or {}).get("max_length")
        if isinstance(length, int) and length > 0:
            return length, f"max_length of the run in {folder.name}"
    length = context_length(load_config(str(model)))
    if not length:
        raise LlamantinoError(f"{model}: no training length in a run manifest and no context length in config.json")
    return length, "the model's context length"


def chat_tokenizer(model: Path, adapter: Path | None):
    """The tokenizer `chat` renders with: the adapter run's when it saved one, else the model's."""
    from llamantino.models.modeling import load_tokenizer

    source = adapter if adapter is not None and (adapter / "tokenizer_config.json").is_file() else model
    return load_tokenizer(str(source))


def build_modelfile(model, adapter=None, *, gguf_name: str, add_bos: bool, prompt_format: str = "auto",
                    system_prompt: str = "auto") -> tuple[str, dict]:
    """The Modelfile for `model` (with `adapter`), and a summary. The chat format is resolved as
    `chat` resolves it; both settings left at auto take the run's own (its manifest's
    prompt_format and system_prompt), so the default system prompt it trained with is kept."""
    from llamantino.data.prompts import is_instruction_only
    from llamantino.data.prompts import prompt_format as resolve

    model, adapter = Path(model), (Path(adapter) if adapter else None)
    trained = run_settings(model, adapter)
    if prompt_format == "auto" and system_prompt == "auto":  # what the run trained with
        prompt_format = str(trained.get("prompt_format") or "auto")
        system_prompt = str(trained.get("system_prompt") or "auto")
    if is_instruction_only(prompt_format):
        raise LlamantinoError(f"prompt format {prompt_format} is an instruction prompt; an Ollama Modelfile needs "
                              "a chat format (auto, llama2-chat, chatml or a chat template)")
    tokenizer = chat_tokenizer(model, adapter)
    chat = resolve(prompt_format, tokenizer, system_prompt)
    turns = turn_template(chat, bos=tokenizer.bos_token, add_bos=add_bos)
    stops = stop_tokens(model, tokenizer, chat.end_of_turn)
    num_ctx, ctx_source = training_length(model, adapter)
    header = (f"Ollama Modelfile written by llamantino {__version__}: "
              f"ollama create NAME -f {MODELFILE}\n"
              f"prompt format: {chat.name}; num_ctx: {ctx_source}")
    text = modelfile(gguf_name, turns, stops, num_ctx, header=header)
    return text, {"prompt_format": chat.name, "system": turns.system, "stop": stops, "num_ctx": num_ctx,
                  "end_of_turn": chat.end_of_turn}


# ---------------------------------------------------------------------------------------
# The stage and the command


@dataclasses.dataclass
class Config:
    model: str = setting("", "model folder (safetensors), or a training run folder holding a LoRA adapter",
                         path_input=True)
    adapter: str = setting("", "LoRA adapter folder to merge into the model first (e.g. an sft run)",
                           path_input=True)
    output: str = setting("", "folder to write: NAME.gguf, NAME.gguf.sha256, Modelfile, README.md")
    type: str = setting("q8_0", "tensor type of the GGUF's matrices (export gguf's --type)",
                        choices=TYPES)
    name: str = setting("", "model name: of the GGUF file and in `ollama create NAME` (default: the output "
                            "folder's name)")
    prompt_format: str = setting("auto", "chat format of the TEMPLATE: " + PROMPT_FORMAT_HELP +
                                 "; auto with system_prompt auto: the run's own", path_input=True)
    system_prompt: str = setting("auto", SYSTEM_PROMPT_HELP, path_input=True)

    def validate(self, source):
        for name in ("model", "output"):
            if not getattr(self, name):
                raise LlamantinoError(f"{source}: setting '{name}' is required")
        if self.name and not _NAME.fullmatch(self.name):
            raise LlamantinoError(f"{source}: name '{self.name}' must be letters, digits, '.', '_' or '-'")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_name(cfg: Config) -> str:
    return cfg.name or ollama_name(Path(cfg.output).resolve().name)


def ollama_name(text: str) -> str:
    """A name for the GGUF file and the Ollama model (Ollama names are lower case)."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"


def readme(summary: dict) -> str:
    """The folder's README: what is in it, the ollama create line, the llama.cpp lines."""
    name, gguf_name, gguf = summary["name"], summary["gguf"], summary
    system = "the run's default system prompt" if summary["system"] else "no default system prompt"
    return "\n".join([
        f"# {name}", "",
        f"`{gguf_name}`: the model as one GGUF file ({gguf['type']}, {gguf['bytes'] / 1e6:.1f} MB; sha256 in "
        f"`{gguf_name}.sha256`), and a `{MODELFILE}` with its chat template ({summary['prompt_format']}), "
        f"{system}, the tokens it stops at and its context ({summary['num_ctx']} tokens).", "",
        "```", f"ollama create {name} -f {MODELFILE}", f"ollama run {name}", "```", "",
        "With llama.cpp (it reads the chat template stored in the file):", "",
        "```", f"llama-cli -m {gguf_name} -cnv", f"llama-server -m {gguf_name} --jinja", "```", ""])


def write_files(folder: Path, model, adapter, *, name: str, type: str, prompt_format: str = "auto",  # noqa: A002
                system_prompt: str = "auto") -> dict:
    """NAME.gguf, NAME.gguf.sha256 and the Modelfile in `folder` (also `release --gguf`)."""
    from llamantino.models.gguf_files import read_metadata
    from llamantino.models.modeling import adds_bos
    from llamantino.release.gguf import export_gguf, resolve_source

    model, adapter = resolve_source(model, adapter or None)
    gguf_name = f"{name}.gguf"
    # The Modelfile first: a format Ollama's template cannot express fails before the export.
    add_bos = adds_bos(chat_tokenizer(model, adapter))
    text, summary = build_modelfile(model, adapter, gguf_name=gguf_name, add_bos=add_bos,
                                    prompt_format=prompt_format, system_prompt=system_prompt)
    gguf = export_gguf(model, folder / gguf_name, adapter=adapter, type=type, end_of_turn=summary["end_of_turn"])
    written = bool(read_metadata(folder / gguf_name)[0].get("tokenizer.ggml.add_bos_token"))
    if written != add_bos:  # llama.cpp follows the file: the template must agree with it
        raise LlamantinoError(f"{gguf_name}: tokenizer.ggml.add_bos_token is {written}, the tokenizer's is {add_bos}")
    (folder / MODELFILE).write_text(text, encoding="utf-8")
    return {"name": name, "gguf": gguf_name, "type": type, "sha256": gguf["sha256"], "bytes": gguf["bytes"],
            "kept_f16": gguf["kept_f16"], "family": gguf["family"], **summary}



def export_into(folder: Path, cfg: Config, name: str) -> dict:
    summary = write_files(folder, cfg.model, cfg.adapter, name=name, type=cfg.type, prompt_format=cfg.prompt_format,
                          system_prompt=cfg.system_prompt)
    (folder / README).write_text(readme(summary), encoding="utf-8")
    return summary


def run(cfg: Config, *, overwrite: bool = False, resume: bool = False) -> dict:
    from llamantino.core.fileio import atomic_dir
    from llamantino.core.manifest import describe_inputs, prepare_output, read_manifest, write_manifest

    state = prepare_output(cfg.output, KIND, cfg, overwrite=overwrite, replace_later=True)
    if state == "complete":
        metrics, status = read_manifest(cfg.output)["metrics"], "skipped (done)"
    else:
        name = model_name(cfg)
        with atomic_dir(cfg.output) as tmp:
            metrics = export_into(tmp, cfg, name)
            write_manifest(tmp, KIND, cfg, inputs=describe_inputs([p for p in (cfg.model, cfg.adapter) if p]),
                           metrics=metrics)
        status = "done"
    return {"status": status, "headline": {"name": metrics["name"], "type": metrics["type"],
                                           "MB": round(metrics["bytes"] / 1e6, 1)},
            "metrics": metrics, "display": f"ollama create {metrics['name']} -f {Path(cfg.output) / MODELFILE}"}


def add_arguments(parser):
    from llamantino.core.runner import add_stage_arguments

    add_stage_arguments(parser, KIND, positional={"model": {"metavar": "MODEL|RUN",
                                                            "help": "model folder, or a run folder holding an adapter"}})


def main(args) -> int:
    from llamantino.core.runner import run_stage_command

    return run_stage_command(KIND, args, positional=("model",))
