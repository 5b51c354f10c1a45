"""Every prompt format, in one place, as data: the paper's (its Italian LLaMA 2 chat
format and Italian Alpaca prompt) and today's.

Rendering returns the text and the character spans that are trained (each answer with its
end-of-turn token, or the Alpaca response with its EOS), so the loss mask and `llamantino
preview` come from the same source. The Jinja chat template saved with a run's tokenizer
renders the very same bytes (tests check it for every format and family).

Formats (`prompt_format` of sft, instruct, chat, preview and evaluation):

* `llama2-chat`: the paper's Italian LLaMA 2 chat format, byte for byte;
* `chatml`: <|im_start|>role ... <|im_end|> (needs a tokenizer that has those tokens);
* `auto`: the tokenizer's own chat template when it has one, else `llama2-chat`;
* a path to a Jinja chat template file;
* `alpaca-it` (the paper's Italian Alpaca prompt), `alpaca` (Stanford Alpaca's English one), or a
  path to a `.json` file with `prompt_input` / `prompt_no_input` (alpaca-lora's template files):
  instruction prompts, for `instruct` and evaluation.

A chat format renders instructions too: the instruction (and input) as the user turn, the
response as the answer. The system prompt is a setting (`system_prompt`, see `system_prompt`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from llamantino.core.errors import LlamantinoError

# The paper's Italian system prompt, verbatim (including "piu'" and "e'").
ITALIAN_SYSTEM_PROMPT = (
    "Sei un assistente disponibile, rispettoso e onesto. Rispondi sempre nel modo piu' utile "
    "possibile, pur essendo sicuro. Le risposte non devono includere contenuti dannosi, non etici, "
    "razzisti, sessisti, tossici, pericolosi o illegali. Assicurati che le tue risposte siano "
    "socialmente imparziali e positive. Se una domanda non ha senso o non e' coerente con i fatti, "
    "spiegane il motivo invece di rispondere in modo non corretto. Se non conosci la risposta a una "
    "domanda, non condividere informazioni false."
)

BOS = "<s>"
EOS = "</s>"


def jinja_string(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=False)


def llama2_chat_template(default_system: str | None = ITALIAN_SYSTEM_PROMPT) -> str:
    """The LLaMA 2 chat template rendering `render_chat`'s bytes, with `default_system` when a
    conversation has no system message (None: no <<SYS>> block). The assistant part is wrapped in
    {% generation %} so `apply_chat_template(..., return_assistant_tokens_mask=True)` marks it too.
    A tokenizer without a BOS (Qwen) gets none."""
    default = "none" if default_system is None else jinja_string(default_system)
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system_message = messages[0]['content'] | trim -%}"
        "{%- set loop_messages = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system_message = " + default + " -%}"
        "{%- set loop_messages = messages -%}"
        "{%- endif -%}"
        "{%- for message in loop_messages -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{%- if loop.index0 == 0 and system_message is not none -%}"
        "{{ (bos_token or '') + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] | trim + ' [/INST]' }}"
        "{%- else -%}"
        "{{ (bos_token or '') + '[INST] ' + message['content'] | trim + ' [/INST]' }}"
        "{%- endif -%}"
        "{%- else -%}"
        "{% generation %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endgeneration %}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


# The paper's template: the Italian system prompt as default.
LLAMA2_CHAT_TEMPLATE = llama2_chat_template(ITALIAN_SYSTEM_PROMPT)

# ChatML, as Qwen 2.5 writes it, without a default system prompt of its own.
CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

ALPACA_IT_HEADER = (
    "Di seguito è riportata un'istruzione che descrive un'attività, abbinata ad un input che "
    "fornisce ulteriore informazione. Scrivi una risposta che soddisfi adeguatamente la richiesta."
)


@dataclass
class Rendered:
    """A training example as text, with the character spans [start, end) that carry loss.
    `add_bos`: the text is plain and gets the tokenizer's BOS in front when the tokenizer adds
    one itself (Alpaca prompts); chat formats carry whatever BOS their template puts."""

    text: str
    trained: list[tuple[int, int]]
    add_bos: bool = False


def check_conversation(messages, where: str = "conversation") -> list[dict]:
    """Validate roles and contents: optional system first, then user/assistant alternating."""
    if not isinstance(messages, list) or not messages:
        raise LlamantinoError(f"{where}: empty conversation")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise LlamantinoError(f"{where}: turn {i} must have 'role' and 'content'")
        role, content = msg["role"], msg["content"]
        if not isinstance(content, str) or not content.strip():
            raise LlamantinoError(f"{where}: turn {i} ({role}) is empty")
        if role not in ("system", "user", "assistant"):
            raise LlamantinoError(f"{where}: turn {i} has unknown role '{role}' (system, user, assistant)")
        out.append({"role": role, "content": content})
    body = out[1:] if out[0]["role"] == "system" else out
    if not body:
        raise LlamantinoError(f"{where}: only a system message, no user turn")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise LlamantinoError(f"{where}: roles out of order: turn {i + len(out) - len(body)} is "
                                  f"'{msg['role']}', expected '{expected}'")
    return out


def render_chat(messages, *, default_system: str | None = ITALIAN_SYSTEM_PROMPT,
                add_generation_prompt: bool = False, where: str = "conversation",
                bos: str = BOS, eos: str = EOS) -> Rendered:
    """The paper's Italian LLaMA 2 chat format (LLaMA 2 chat with its Italian system prompt), byte for byte.

    The trained spans are each assistant answer with the space before it and its `</s>`.
    """
    messages = check_conversation(messages, where)
    if messages[0]["role"] == "system":
        system, body = messages[0]["content"].strip(), messages[1:]
    else:
        system, body = default_system, messages
    text, trained = "", []
    for i, msg in enumerate(body):
        content = msg["content"].strip()
        if msg["role"] == "user":
            if i == 0 and system is not None:
                text += f"{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]"
            else:
                text += f"{bos}[INST] {content} [/INST]"
        else:
            start = len(text)
            text += f" {content} {eos}"
            trained.append((start, len(text)))
    if add_generation_prompt and body[-1]["role"] == "assistant":
        raise LlamantinoError(f"{where}: a generation prompt needs the last turn to be the user's")
    return Rendered(text, trained)


def render_alpaca_it(instruction: str, input_text: str = "", response: str | None = None,
                     eos: str = EOS) -> Rendered:
    """The Italian Alpaca prompt; the `### Input:` block is left out when the input is empty.

    With a response, it is followed by `</s>` and both are the trained span. Without one,
    the text ends after `### Risposta:\\n`, ready for generation.
    """
    return AlpacaFormat("alpaca-it", ALPACA_IT_INPUT, ALPACA_IT_NO_INPUT, eos).render_instruction(
        instruction, input_text, response)


# EVALITA 2023 instructions, Table 1 of the paper, verbatim (typos included).
EVALITA_INSTRUCTIONS = {
    "acti-a": "Stabilisci se il seguente testo contiene una teoria del complotto o cospirazione. Rispondi con si o no.",
    "acti-b": "Classifica il seguente testo in una di queste quattro categorie di teorie del complotto: Covid, Qanon, Terra Piatta, Russia.",
    "clinkart": "Trova nel testo in input le menzioni testuali dei test di laboratorio o misurazioni (EVENT) e collegali ai loro risultati (RML). Le relazioni sono rappresentate da coppie ordinate di menzioni di entità (RML, EVENT), ciascuna identificata da inizi e fine degli offset carattere. Per ogni relazione, scrivi '[BREL]', seguito dal risultato seguito da '[SEP]', seguito dal test, seguito da '[EREL]'. Se non ci sono relazioni, restituisci [NOREL]",
    "discotex-1": "Classifica la frase in input come 'Coerente' se si integra logicamente e contribuisce a formare un testo coerente con il paragrafo di contesto. Se la frase target risulta incoerente con il paragrafo, classificala come 'Incoerente'.",
    "discotex-2": "Predici il punteggio medio di coerenza assegnato dai valutatori umani per il testo in input. Utilizza una scala ordinale a 5 punti (da 1 a 5) per riflettere la percezione graduale della coerenza.",
    "emit": "Categorizza le emozioni espresse nel testo fornito in input o determina l'assenza di emozioni. Puoi classificare il testo come neutrale o identificare una o più delle seguenti emozioni: rabbia, anticipazione, disgusto, paura, gioia, tristezza, sorpresa, fiducia, amore.",
    "geolingit": "Determina la regione di appartenenza, la latitudine e la longitudine dell'autore del tweet in input.",
    "haspeede3": "Stabilisci se il tweet in input contiene discorsi che incitano all'odio. Rispondi con si o no.",
    "haspeede3-contextual": "Stabilisci se il tweet in input contiene discorsi che incitano all'odio considerando anche il contesto relativo alle statistiche dell'account. Rispondi con si o no. Contesto: Data: {date} Numero di retweet: {retweets} Numero di mi piace: {likes} Data creazione account: {created} Numero di post: {posts} Follower: {followers} Amici: {friends}",
    "hodi-a": "Stabilisci se il testo in input ha contenuti omotransfobici o meno. Rispondi con si o no.",
    "hodi-b": "Estrai dal testo in input le parole che denotano concetti omotransfobici. Separa le parole estratte con [SEP]. Se non ci sono parole estratte, restituisci 'Non omotransfobico'.",
    "langlearn": "Data in input un coppia di documenti (Documento 1 [SEP] Documeto 2) scritti dallo stesso studente, stabilisci se il documento 1 è stato scritto prima del documento 2. Rispondi con si o no.",
    "nermud": "Elenca le menzioni di entità presenti nel testo in input, indicandone il tipo: [PER] (persona), [LOC] (luogo), [ORG] (organizzazione). Se non ci sono entità, resituisci: 'Nessuna menzione'",
    "politicit": "Indica se l'autore del testo in input è un 'uomo' o una 'donna', seguito dalla sua appartenenza politica scegliendo tra 'destra', 'sinistra', 'centrodestra', 'centrosinistra'.",
    "wic-ita": "Stabilisci nelle due frasi in input la parola '{word}' è usata con lo stesso significato. Rispondi con si o no.",
}


def evalita_instruction(task: str, **fields) -> str:
    """Table 1's instruction for `task`, with its placeholders ({word}, {date}, ...) filled."""
    if task not in EVALITA_INSTRUCTIONS:
        from llamantino.core.config import closest

        raise LlamantinoError(f"unknown EVALITA task '{task}'{closest(task, EVALITA_INSTRUCTIONS)}; "
                              f"valid: {', '.join(EVALITA_INSTRUCTIONS)}")
    template = EVALITA_INSTRUCTIONS[task]
    try:
        return template.format(**fields) if "{" in template else template
    except KeyError as exc:
        raise LlamantinoError(f"task {task}: the instruction needs the field {exc}") from None


# Prompt formats a `prompt_format` setting names (besides a file); the instruction-only ones are Alpaca prompts.
PROMPT_FORMATS = ("auto", "llama2-chat", "chatml", "alpaca-it", "alpaca")
CHAT_FORMATS = ("auto", "llama2-chat", "chatml")
INSTRUCTION_PROMPT_FORMATS = ("alpaca-it", "alpaca")
PROMPT_FORMAT_HELP = ("auto (the tokenizer's chat template, else llama2-chat), llama2-chat (the paper's), chatml, "
                      "alpaca-it (the paper's Italian Alpaca), alpaca (English), or a file: a Jinja chat template, "
                      "or a .json Alpaca template with prompt_input and prompt_no_input")
SYSTEM_PROMPT_HELP = ("system prompt when a conversation has none: auto (the paper's Italian one with llama2-chat, "
                      "else none: the template's own default applies), none, paper-it, a text, or a .txt file")

# Named system prompts.
SYSTEM_PROMPTS = {"paper-it": ITALIAN_SYSTEM_PROMPT}


def system_prompt(value: str, prompt_format: str) -> str | None:
    """The default system prompt a setting names, for a (resolved) prompt format's name."""
    if value == "auto":
        return ITALIAN_SYSTEM_PROMPT if prompt_format == "llama2-chat" else None
    if value == "none":
        return None
    if value in SYSTEM_PROMPTS:
        return SYSTEM_PROMPTS[value]
    path = Path(value).expanduser()
    if path.suffix in (".txt", ".md") and " " not in value:
        if not path.is_file():
            raise LlamantinoError(f"system_prompt: file {value} not found")
        text = path.read_text(encoding="utf-8").strip()
        if not text:
            raise LlamantinoError(f"system_prompt: {value} is empty (use none for no system prompt)")
        return text
    if not value.strip():
        raise LlamantinoError("system_prompt is empty: give none, auto, paper-it, a text or a .txt file")
    return value


def prompt_files(*values: str) -> list[str]:
    """The files that prompt settings name (templates, system prompts): inputs of a run."""
    return [v for v in values if v and Path(v).expanduser().is_file()]


# ---------------------------------------------------------------------------------------
# Instruction prompts (Alpaca-like)


ALPACA_EN_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                   "context. Write a response that appropriately completes the request.\n\n"
                   "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
ALPACA_EN_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                      "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
ALPACA_IT_INPUT = ALPACA_IT_HEADER + "\n\n### Istruzione:\n{instruction}\n\n### Input:\n{input}\n\n### Risposta:\n"
ALPACA_IT_NO_INPUT = ALPACA_IT_HEADER + "\n\n### Istruzione:\n{instruction}\n\n### Risposta:\n"
_FIELD = re.compile(r"\{(instruction|input)\}")


@dataclass
class AlpacaFormat:
    """An Alpaca-like instruction prompt: one template with an input, one without; the response
    follows with the tokenizer's EOS, and both are trained."""

    name: str
    prompt_input: str
    prompt_no_input: str
    eos: str = EOS
    chat_template = None
    add_bos = True  # plain text: the tokenizer's BOS goes in front when it adds one itself

    @property
    def end_of_turn(self) -> str:
        return self.eos

    def render_instruction(self, instruction: str, input_text: str = "", response: str | None = None,
                           where: str = "record") -> Rendered:
        with_input = bool(input_text and input_text.strip())
        template = self.prompt_input if with_input else self.prompt_no_input
        values = {"instruction": instruction, "input": input_text}
        text = _FIELD.sub(lambda m: values[m.group(1)], template)
        if response is None:
            return Rendered(text, [], add_bos=True)
        start = len(text)
        text += f"{response}{self.eos}"
        return Rendered(text, [(start, len(text))], add_bos=True)

    def render_conversation(self, messages, *, add_generation_prompt: bool = False, where: str = "conversation"):
        raise LlamantinoError(f"{where}: prompt format {self.name} is an instruction prompt; conversations need a "
                              "chat format (auto, llama2-chat, chatml or a Jinja template)")


def alpaca_file(path: Path, eos: str) -> AlpacaFormat:
    """An alpaca-lora style template file: {"prompt_input": ..., "prompt_no_input": ...}."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LlamantinoError(f"{path}: not a JSON prompt template ({exc})") from None
    if not isinstance(data, dict):
        raise LlamantinoError(f"{path}: a JSON prompt template is an object with prompt_input and prompt_no_input")
    for key, fields in (("prompt_input", ("{instruction}", "{input}")), ("prompt_no_input", ("{instruction}",))):
        value = data.get(key)
        if not isinstance(value, str):
            raise LlamantinoError(f"{path}: field '{key}' (a string) is missing")
        for field in fields:
            if field not in value:
                raise LlamantinoError(f"{path}: field '{key}' has no {field} placeholder")
    return AlpacaFormat(str(path), data["prompt_input"], data["prompt_no_input"], eos)


# ---------------------------------------------------------------------------------------
# Chat formats


def _instruction_turns(instruction: str, input_text: str, response: str | None) -> list[dict]:
    user = instruction + (f"\n\n{input_text}" if input_text and input_text.strip() else "")
    turns = [{"role": "user", "content": user}]
    return turns + ([{"role": "assistant", "content": response}] if response is not None else [])


class ChatFormat:
    """What every chat format offers; instructions become one user turn and one answer."""

    name: str
    chat_template: str
    end_of_turn: str
    add_bos = False  # the template writes whatever BOS the model expects

    def render_conversation(self, messages, *, add_generation_prompt: bool = False,
                            where: str = "conversation") -> Rendered:
        raise NotImplementedError

    def render_instruction(self, instruction: str, input_text: str = "", response: str | None = None,
                           where: str = "record") -> Rendered:
        return self.render_conversation(_instruction_turns(instruction, input_text, response),
                                        add_generation_prompt=response is None, where=where)


class Llama2Chat(ChatFormat):
    """The paper's LLaMA 2 chat format (`render_chat`), with its default system prompt."""

    name = "llama2-chat"

    def __init__(self, system: str | None = ITALIAN_SYSTEM_PROMPT, bos: str = BOS, eos: str = EOS):
        self.system, self.bos, self.eos = system, bos, eos
        self.chat_template = llama2_chat_template(system)
        self.end_of_turn = eos

    def render_conversation(self, messages, *, add_generation_prompt=False, where="conversation") -> Rendered:
        return render_chat(messages, default_system=self.system, add_generation_prompt=add_generation_prompt,
                           where=where, bos=self.bos, eos=self.eos)


PRELUDE_BEGIN = "{#- llamantino: default system prompt -#}"
PRELUDE_END = "{#- llamantino: end of default system prompt -#}"
_PROBE_SYSTEM, _PROBE_USER, _PROBE_ANSWER = "Probe system prompt.", "Probe question?", "Probe answer."


def _prelude(system: str | None, system_role: bool) -> str:
    """Jinja run before a template: the default system prompt when a conversation has none, and
    for templates without a system role the system prompt folded into the first user turn (as
    Gemma 3's template does), never dropped or refused."""
    if system_role:
        if system is None:
            return ""
        body = ("{%- if messages and messages[0]['role'] != 'system' -%}"
                "{%- set messages = [{'role': 'system', 'content': " + jinja_string(system) + "}] + messages -%}"
                "{%- endif -%}")
    else:
        body = ("{%- if messages and messages[0]['role'] == 'system' -%}"
                "{%- set llamantino_system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
                "{%- else -%}{%- set llamantino_system = " + jinja_string(system or "") + " -%}{%- endif -%}"
                "{%- if llamantino_system and messages -%}"
                "{%- set messages = [{'role': messages[0]['role'], 'content': llamantino_system + '\\n\\n' + "
                "messages[0]['content']}] + messages[1:] -%}{%- endif -%}")
    return PRELUDE_BEGIN + body + PRELUDE_END


def without_prelude(template: str) -> str:
    """A template as its author wrote it (a run's saved template carries a prelude)."""
    if template.startswith(PRELUDE_BEGIN) and PRELUDE_END in template:
        return template[template.index(PRELUDE_END) + len(PRELUDE_END):]
    return template


class TemplateChat(ChatFormat):
    """Any Jinja chat template (the tokenizer's own, ChatML, a file), rendered by transformers.

    An answer's trained span is what the model must write after the generation prompt: from the
    end of the conversation so far rendered with `add_generation_prompt=True`, through the
    end-of-turn token that closes the answer (the first special token after it, e.g.
    <|eot_id|>, <|im_end|>, <end_of_turn>, <|end|>, </s>). The saved template is the source with
    a prelude for the system prompt, and renders exactly what training saw."""

    def __init__(self, tokenizer, template: str, system: str | None, name: str):
        self.tokenizer, self.name = tokenizer, name
        self.source = without_prelude(template)
        self.system = system
        self.system_role = self._has_system_role()
        self.chat_template = _prelude(system, self.system_role) + self.source
        self.end_of_turn = self._find_end_of_turn()

    def _apply(self, template: str, messages, add_generation_prompt: bool, where: str) -> str:
        import jinja2

        try:
            return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise LlamantinoError(f"{where}: the chat template of {self.name} fails on this conversation "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def _has_system_role(self) -> bool:
        probe = [{"role": "system", "content": _PROBE_SYSTEM}, {"role": "user", "content": _PROBE_USER}]
        try:
            text = self._apply(self.source, probe, True, "probe")
        except LlamantinoError:
            return False
        return _PROBE_SYSTEM in text

    def _find_end_of_turn(self) -> str:
        """The special token that closes an answer in this template."""
        probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
        text = self._apply(self.chat_template, probe, False, f"{self.name}")
        if _PROBE_ANSWER not in text:
            raise LlamantinoError(f"{self.name}: the chat template does not render the answer it is given")
        rest = text[text.index(_PROBE_ANSWER) + len(_PROBE_ANSWER):]
        specials = {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        specials |= set(self.tokenizer.all_special_tokens)
        found = sorted((rest.find(t), -len(t), t) for t in specials if t and t in rest)
        if not found or rest[:found[0][0]].strip():
            raise LlamantinoError(f"{self.name}: the chat template ends an answer with no special token of this "
                                  "tokenizer, so no token tells where an answer ends (a tokenizer without "
                                  "<|im_start|>/<|im_end|> cannot use chatml)")
        return found[0][2]

    def render_conversation(self, messages, *, add_generation_prompt=False, where="conversation") -> Rendered:
        messages = check_conversation(messages, where)
        if add_generation_prompt and messages[-1]["role"] == "assistant":
            raise LlamantinoError(f"{where}: a generation prompt needs the last turn to be the user's")
        text = self._apply(self.chat_template, messages, add_generation_prompt, where)
        return Rendered(text, [] if add_generation_prompt else self._answer_spans(messages, text, where))

    def _answer_spans(self, messages, text: str, where: str) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._apply(self.chat_template, messages[:k], True, where)
            if text.startswith(prompt) and len(prompt) >= cursor:
                start = len(prompt)
            else:  # the template renders earlier turns differently once later ones follow
                start = _back_over_space(text, self._find(text, message, cursor, k, where), cursor)
            end = self._end_after(text, message, start, k, where)
            spans.append((start, end))
            cursor = end
        return spans

    def _find(self, text: str, message: dict, cursor: int, k: int, where: str) -> int:
        for content in (message["content"], message["content"].strip()):
            at = text.find(content, cursor)
            if at >= 0:
                return at
        raise LlamantinoError(f"{where}: the chat template of {self.name} changes the text of turn {k}; cannot "
                              "tell which tokens are the answer")

    def _end_after(self, text: str, message: dict, start: int, k: int, where: str) -> int:
        content = message["content"].strip()
        at = text.find(content, start)
        if at < 0:
            self._find(text, message, start, k, where)  # raises
        rest = text[at + len(content):]
        end = rest.find(self.end_of_turn)
        if end < 0 or rest[:end].strip():
            raise LlamantinoError(f"{where}: turn {k} does not end with {self.end_of_turn} in the chat template of "
                                  f"{self.name}")
        return at + len(content) + end + len(self.end_of_turn)


def _back_over_space(text: str, at: int, floor: int) -> int:
    while at > floor and text[at - 1].isspace():
        at -= 1
    return at


# ---------------------------------------------------------------------------------------
# Resolving a `prompt_format` setting


def is_instruction_only(name: str) -> bool:
    return name in INSTRUCTION_PROMPT_FORMATS or name.endswith(".json")


def prompt_format(name: str, tokenizer=None, system: str = "auto"):
    """The prompt format a setting names (see the module docstring), for `tokenizer`.

    Without a tokenizer only llama2-chat (with <s> and </s>) and the Alpaca prompts render."""
    eos = getattr(tokenizer, "eos_token", None) or EOS
    if name == "alpaca-it":
        return AlpacaFormat("alpaca-it", ALPACA_IT_INPUT, ALPACA_IT_NO_INPUT, eos)
    if name == "alpaca":
        return AlpacaFormat("alpaca", ALPACA_EN_INPUT, ALPACA_EN_NO_INPUT, eos)
    if name == "auto":
        own = _own_template(tokenizer)
        name = "llama2-chat" if own is None else "auto"
    if name == "llama2-chat":
        bos = BOS if tokenizer is None else (tokenizer.bos_token or "")
        return Llama2Chat(system_prompt(system, "llama2-chat"), bos=bos, eos=eos)
    if name in ("auto", "chatml"):
        template = CHATML_TEMPLATE if name == "chatml" else _own_template(tokenizer)
        return _template_chat(tokenizer, template, system,
                              "chatml" if name == "chatml" else "auto (the tokenizer's chat template)")
    path = Path(name).expanduser()
    if not path.is_file():
        raise LlamantinoError(f"prompt format '{name}': neither {', '.join(PROMPT_FORMATS)} nor an existing file")
    if path.suffix == ".json":
        return alpaca_file(path, eos)
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LlamantinoError(f"{path}: cannot read the chat template ({exc})") from None
    return _template_chat(tokenizer, template, system, str(path))


def _own_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return template or None


def _template_chat(tokenizer, template: str, system: str, name: str) -> TemplateChat:
    if tokenizer is None:
        raise LlamantinoError(f"prompt format {name} renders with a tokenizer: give one (--tokenizer)")
    import jinja2

    try:
        return TemplateChat(tokenizer, template, system_prompt(system, name), name)
    except jinja2.TemplateSyntaxError as exc:
        raise LlamantinoError(f"{name}: the chat template is not valid Jinja (line {exc.lineno}: {exc.message})") \
            from None
