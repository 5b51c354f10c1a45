"""Preference pairs: rows with `prompt`, `chosen`, `rejected` -> token ids for the `prefer` stage.

Row forms (JSON lines, parquet, folders of them, or `hub:` datasets, read by the project's readers):

* plain strings: {"prompt": "...", "chosen": "...", "rejected": "..."}, used as TRL's
  `DPOTrainer` uses them: no template, the tokenizer's own BOS (when it adds one), the
  tokenizer's EOS text appended to each answer when it does not end with it, and the answer
  starting where the tokenized prompt and prompt + answer part;
* chat: `prompt` a list of {"role", "content"} turns ending with the user's (or one string,
  the user's turn), `chosen` / `rejected` an answer string or a list holding one assistant
  message (TRL's conversational preference format);
* whole conversations, as UltraFeedback-binarized and its Italian translations have them:
  `chosen` / `rejected` each the full conversation, prompt turns included. The turns they
  share must be the prompt (a `prompt` field, when there is one, must match them); without a
  `prompt` field the shared turns are the prompt (TRL's `extract_prompt`).

Chat rows are rendered with the stage's prompt format and system prompt by the same code as
`sft` (`data/prompts.py`): exactly the BOS the template writes (one, or none for Qwen and
Phi-3), the prompt up to and including the generation prompt, each answer closed by the
family's end-of-turn token (whatever the template writes after that token is not part of it).

Truncation: `max_prompt_length` keeps the end of a longer prompt (its BOS stays in front);
then `max_length` cuts both answers from the right so that prompt + answer fits, as TRL's
collator does with `truncation_mode="keep_start"`. A row whose prompt alone fills
`max_length` before that cut is bad (TRL drops such rows: no answer token would be left).
TRL 1.16 itself has no `max_prompt_length`; its earlier `DPOTrainer` cut the prompt from the
left in the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging

from llamantino.core.errors import LlamantinoError

log = logging.getLogger(__name__)

FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: list[int]     # prompt token ids (BOS included where the model has one; chat: through the generation prompt)
    chosen: list[int]     # chosen answer ids (chat: closed by the end-of-turn token; plain: TRL's EOS)
    rejected: list[int]
    source: str           # where the row was read ("file:line", "file: row N", "hub:...: record N")
    cut: bool             # truncated by max_prompt_length / max_length


@dataclasses.dataclass
class PreferenceSet:
    pairs: list[PreferencePair]
    cut: int              # how many pairs were truncated
    skipped: int          # bad rows skipped (skip_bad_lines)
    fingerprint: str      # sha256 over all token ids in order (resume checks)


def load_pairs(specs: list[str], tokenizer, *, prompt_format: str = "auto", system_prompt: str = "auto",
               max_length: int = 1024, max_prompt_length: int = 512, skip_bad_lines: bool = False,
               limit: int | None = None) -> PreferenceSet:
    """Every pair of `specs` (files, folders, `hub:` specs), tokenized and truncated, in order.

    A bad row is one `LlamantinoError` naming file, line and field; with `skip_bad_lines` it is
    logged, counted in `skipped` and left out (malformed JSON lines too)."""
    if max_length < 2 or max_prompt_length < 1:
        raise LlamantinoError(f"max_length must be 2 or more and max_prompt_length 1 or more "
                              f"(got {max_length} and {max_prompt_length})")
    encoder = PairEncoder(tokenizer, prompt_format=prompt_format, system_prompt=system_prompt,
                          max_length=max_length, max_prompt_length=max_prompt_length)
    pairs: list[PreferencePair] = []
    skipped = 0
    digest = hashlib.sha256()
    reader = RowReader(specs, skip_bad_lines=skip_bad_lines)
    for where, record in reader:
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pair = encoder.encode(record, where)
        except LlamantinoError as exc:
            if not skip_bad_lines:
                raise
            skipped += 1
            log.warning("skipped: %s", exc)
            continue
        pairs.append(pair)
        digest.update(repr((pair.prompt, pair.chosen, pair.rejected)).encode())
    skipped += reader.bad_lines
    if not pairs:
        raise LlamantinoError(f"{', '.join(map(str, specs))}: no preference pairs"
                              + (f" ({skipped} bad rows skipped)" if skipped else ""))
    return PreferenceSet(pairs, sum(p.cut for p in pairs), skipped, digest.hexdigest())


class RowReader:
    """(where, record) of every row of the sources, through the readers the other stages use."""

    def __init__(self, specs, *, skip_bad_lines: bool = False):
        from llamantino.data.streaming import expand_sources

        self.sources = expand_sources([str(s) for s in specs])
        self.skip_bad_lines = skip_bad_lines
        self.bad_lines = 0  # malformed JSON lines skipped

    def __iter__(self):
        from llamantino.core.fileio import HUB_PREFIX, LineStats, iter_jsonl
        from llamantino.data.streaming import TEXT_SUFFIXES, hub_records, parquet_records

        for source in self.sources:
            if source.startswith(HUB_PREFIX):
                for _, where, record in hub_records(source):
                    yield where, record
            elif source.endswith(".parquet"):
                for _, where, record in parquet_records(source):
                    yield where, record
            elif source.endswith(TEXT_SUFFIXES):
                raise LlamantinoError(f"{source}: plain text holds documents, not preference pairs "
                                      "(JSON lines or parquet with prompt, chosen, rejected)")
            else:
                stats = LineStats()
                try:
                    for number, record in iter_jsonl(source, skip_bad_lines=self.skip_bad_lines, stats=stats,
                                                     skip_option=True, on_bad_line=functools.partial(_skipped, source)):
                        yield f"{source}:{number}", record
                finally:
                    self.bad_lines += stats.bad


def _skipped(source: str, number: int, problem: str) -> None:
    log.warning("skipped: %s:%d: %s", source, number, problem)


# ---------------------------------------------------------------------------------------
# One row -> one pair


class PairEncoder:
    """Turns rows into `PreferencePair`s for one tokenizer and prompt format."""

    def __init__(self, tokenizer, *, prompt_format: str = "auto", system_prompt: str = "auto",
                 max_length: int = 1024, max_prompt_length: int = 512):
        self.tokenizer = tokenizer
        self.prompt_format, self.system_prompt = prompt_format, system_prompt
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self._chat = None  # resolved at the first chat row: plain rows need no template

    @property
    def chat(self):
        if self._chat is None:
            from llamantino.data.prompts import is_instruction_only
            from llamantino.data.prompts import prompt_format as resolve

            if is_instruction_only(self.prompt_format):
                raise LlamantinoError(f"prompt_format {self.prompt_format} is an instruction prompt; chat "
                                      "preference rows need auto, llama2-chat, chatml or a Jinja chat template")
            self._chat = resolve(self.prompt_format, self.tokenizer, self.system_prompt)
        return self._chat

    def encode(self, record, where: str) -> PreferencePair:
        if not isinstance(record, dict):
            raise LlamantinoError(f"{where}: expected an object with {', '.join(FIELDS)}")
        row = parse_row(record, where)
        if isinstance(row.prompt, str):
            prompt, chosen, rejected = self._plain(row, where)
        else:
            prompt, chosen, rejected = self._chat_ids(row, where)
        return self._truncate(prompt, chosen, rejected, where)

    def _plain(self, row: "Row", where: str):
        """TRL 1.16 `DPOTrainer._prepare_dataset` for standard (not conversational) rows."""
        eos = self.tokenizer.eos_token
        if not eos:
            raise LlamantinoError(f"{where}: plain-string rows end each answer with the tokenizer's EOS, and this "
                                  "tokenizer has none")
        tok = self.tokenizer
        answers = [a if a.endswith(eos) else a + eos for a in (row.chosen, row.rejected)]
        prompt_ids = list(tok(row.prompt)["input_ids"])
        chosen_ids, rejected_ids = (list(tok(row.prompt + a)["input_ids"]) for a in answers)
        n = min(_common_prefix(prompt_ids, chosen_ids), _common_prefix(prompt_ids, rejected_ids))
        return prompt_ids[:n], chosen_ids[n:], rejected_ids[n:]

    def _chat_ids(self, row: "Row", where: str):
        """Render prompt + answer once per answer; the answer is the last trained span, through its end of turn."""
        from llamantino.data.prompts import Rendered
        from llamantino.data.supervised import encode

        from llamantino.models.loss import IGNORE

        out = []
        for field, answer in (("chosen", row.chosen), ("rejected", row.rejected)):
            messages = row.prompt + [{"role": "assistant", "content": answer}]
            rendered = self.chat.render_conversation(messages, where=f"{where}: field '{field}'")
            if not rendered.trained:
                raise LlamantinoError(f"{where}: field '{field}': the prompt format marks no answer")
            last = Rendered(rendered.text, [rendered.trained[-1]], rendered.add_bos)
            example = encode(self.tokenizer, last)
            marked = [i for i, label in enumerate(example.labels) if label != IGNORE]
            if not marked:
                raise LlamantinoError(f"{where}: field '{field}': the answer renders to no token")
            out.append((example.input_ids, marked[0], marked[-1] + 1))
        (ids_c, start_c, end_c), (ids_r, start_r, end_r) = out
        # Both renderings share the prompt; should a token merge across its end, the prompt stops where they part.
        n = min(start_c, start_r, _common_prefix(ids_c, ids_r))
        return ids_c[:n], ids_c[n:end_c], ids_r[n:end_r]

    def _truncate(self, prompt, chosen, rejected, where: str) -> PreferencePair:
        if len(prompt) >= self.max_length:
            raise LlamantinoError(f"{where}: field 'prompt': {len(prompt)} tokens once rendered, max_length is "
                                  f"{self.max_length}: no answer token would be left")
        cut = False
        if len(prompt) > self.max_prompt_length:
            bos = self.tokenizer.bos_token_id
            keep_bos = bos is not None and prompt[0] == bos
            tail = self.max_prompt_length - int(keep_bos)
            prompt = ([bos] if keep_bos else []) + (prompt[len(prompt) - tail:] if tail else [])
            cut = True
        room = self.max_length - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected, cut = chosen[:room], rejected[:room], True
        return PreferencePair(list(prompt), list(chosen), list(rejected), where, cut)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---------------------------------------------------------------------------------------
# Row forms


@dataclasses.dataclass
class Row:
    prompt: str | list[dict]   # a string: plain row; a list of turns: chat row
    chosen: str
    rejected: str


def parse_row(record: dict, where: str) -> Row:
    """The row's prompt and two answers, whatever form it has (see the module docstring)."""
    for field in ("chosen", "rejected"):
        if field not in record:
            raise LlamantinoError(f"{where}: missing field '{field}'")
    prompt, chosen, rejected = record.get("prompt"), record["chosen"], record["rejected"]
    for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if (value is not None or field != "prompt") and not isinstance(value, (str, list)):
            raise LlamantinoError(f"{where}: field '{field}' must be a string or a list of messages, "
                                  f"got {type(value).__name__}")
    if "prompt" not in record or prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise LlamantinoError(f"{where}: missing field 'prompt'")
        prompt = _shared_turns(chosen, rejected, where)
    if isinstance(prompt, str) and isinstance(chosen, str) and isinstance(rejected, str):
        if not prompt.strip():
            raise LlamantinoError(f"{where}: field 'prompt' is empty")
        row = Row(prompt, chosen, rejected)
    else:
        turns = _prompt_turns(prompt, where)
        row = Row(turns, _answer(chosen, turns, where, "chosen"), _answer(rejected, turns, where, "rejected"))
    for field in ("chosen", "rejected"):
        if not getattr(row, field).strip():
            raise LlamantinoError(f"{where}: field '{field}' is empty")
    if row.chosen == row.rejected:
        raise LlamantinoError(f"{where}: field 'rejected' is the same as 'chosen'")
    return row


def _messages(value, where: str, field: str) -> list[dict]:
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise LlamantinoError(f"{where}: field '{field}': message {i} needs 'role' and 'content'")
        if not isinstance(msg["content"], str):
            raise LlamantinoError(f"{where}: field '{field}': message {i} has content of type "
                                  f"{type(msg['content']).__name__}, not a string")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _prompt_turns(prompt, where: str) -> list[dict]:
    from llamantino.data.prompts import check_conversation

    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(prompt, where, "prompt")
    turns = check_conversation(turns, f"{where}: field 'prompt'")
    if turns[-1]["role"] != "user":
        raise LlamantinoError(f"{where}: field 'prompt' must end with a user turn, not '{turns[-1]['role']}'")
    return turns


def _shared_turns(chosen: list, rejected: list, where: str) -> list[dict]:
    """The turns both conversations start with (TRL's `extract_prompt`)."""
    a, b = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if n == 0:
        raise LlamantinoError(f"{where}: missing field 'prompt' (and 'chosen' and 'rejected' share no first turn)")
    return a[:n]


def _answer(value, prompt: list[dict], where: str, field: str) -> str:
    """The assistant answer of `value`: a string, one assistant message, or the whole conversation
    (the prompt's turns, then the answer)."""
    if isinstance(value, str):
        return value
    messages = _messages(value, where, field)
    if len(messages) > 1:
        head = messages[:len(prompt)]
        same = len(head) == len(prompt) and all(
            m["role"] == p["role"] and m["content"].strip() == p["content"].strip() for m, p in zip(head, prompt))
        if not same:
            raise LlamantinoError(f"{where}: field '{field}' is a conversation that does not start with the prompt")
        messages = messages[len(prompt):]
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages) or "none"
        raise LlamantinoError(f"{where}: field '{field}' must hold one assistant answer after the prompt "
                              f"(found: {roles})")
    return messages[0]["content"]
