"""Every prompt format of the paper, in one place, as data (SPEC section 4 and 5).

Rendering functions return the text and the character spans that are trained (the
assistant answers with their end-of-sequence marker, or the Alpaca response), so the
loss mask and `llamantino preview` come from the same source. The Jinja chat template
given to tokenizers renders the very same bytes (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

from llamantino.errors import LlamantinoError

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

# LLaMA 2 chat template with the Italian system prompt as default. Same bytes as
# `render_chat`; the assistant part is wrapped in {% generation %} so that
# `apply_chat_template(..., return_assistant_tokens_mask=True)` marks it too.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + ITALIAN_SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.index0 == 0 -%}"
    "{{ bos_token + '[INST] <<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] | trim + ' [/INST]' }}"
    "{%- else -%}"
    "{{ bos_token + '[INST] ' + message['content'] | trim + ' [/INST]' }}"
    "{%- endif -%}"
    "{%- else -%}"
    "{% generation %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

ALPACA_IT_HEADER = (
    "Di seguito è riportata un'istruzione che descrive un'attività, abbinata ad un input che "
    "fornisce ulteriore informazione. Scrivi una risposta che soddisfi adeguatamente la richiesta."
)


@dataclass
class Rendered:
    """A training example as text, with the character spans [start, end) that carry loss."""

    text: str
    trained: list[tuple[int, int]]


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
    """The Italian LLaMA 2 chat format of SPEC section 4, byte for byte.

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
    text = f"{ALPACA_IT_HEADER}\n\n### Istruzione:\n{instruction}\n\n"
    if input_text and input_text.strip():
        text += f"### Input:\n{input_text}\n\n"
    text += "### Risposta:\n"
    if response is None:
        return Rendered(text, [])
    start = len(text)
    text += f"{response}{eos}"
    return Rendered(text, [(start, len(text))])


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
        from llamantino.config import closest

        raise LlamantinoError(f"unknown EVALITA task '{task}'{closest(task, EVALITA_INSTRUCTIONS)}; "
                              f"valid: {', '.join(EVALITA_INSTRUCTIONS)}")
    template = EVALITA_INSTRUCTIONS[task]
    try:
        return template.format(**fields) if "{" in template else template
    except KeyError as exc:
        raise LlamantinoError(f"task {task}: the instruction needs the field {exc}") from None


PROMPT_FORMATS = ("llama2-chat", "alpaca-it")
