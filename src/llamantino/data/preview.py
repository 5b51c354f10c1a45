"""`llamantino preview`: training examples exactly as the model will see them.

    llamantino preview --format llama2-chat --data dialogues.jsonl --n 2
    llamantino preview --format alpaca-it --data dolly_it.jsonl --plain
    llamantino preview --format auto --tokenizer path/to/Llama-3.1-8B-Instruct --data chats.jsonl
    llamantino preview LLaMAntino-2-chat-7b-hf-UltraChat-ITA --tokenizer path/to/model
    llamantino preview --data preferences.jsonl --tokenizer path/to/model --format llama2-chat

The text is rendered by the same code the trainers use. Trained spans (those that carry
loss) are shown between ⟦ and ⟧; with a tokenizer the marks follow the token-level loss
mask the trainer computes, and the token counts are shown. `--plain` prints the bare text.
Formats that come from a tokenizer (auto, chatml, template files) need `--tokenizer`.
Preference pairs (rows with prompt, chosen and rejected) are shown as the preference stage
tokenizes them (`data/preference.py`): the prompt, then each answer between the marks; they
need `--tokenizer`.
"""

from __future__ import annotations

import itertools

from llamantino.core.errors import LlamantinoError
from llamantino.data.prompts import PROMPT_FORMAT_HELP, SYSTEM_PROMPT_HELP

OPEN, CLOSE = "⟦", "⟧"


def add_arguments(parser):
    parser.add_argument("recipe", nargs="?", help="take format, data and tokenizer from this recipe's "
                        "first sft or instruct stage")
    parser.add_argument("--format", help="prompt format: " + PROMPT_FORMAT_HELP)
    parser.add_argument("--system-prompt", default=None, help=SYSTEM_PROMPT_HELP + " (default: the recipe's, else auto)")
    parser.add_argument("--data", nargs="+", help="records: UltraChat / ultrachat_200k (llama2-chat), "
                        "Dolly / Alpaca / prepared EVALITA (alpaca-it), or preference pairs (prompt, chosen, "
                        "rejected; need --tokenizer)")
    parser.add_argument("--source-format", default=None, help="source format of the records (default: detected)")
    parser.add_argument("--tokenizer", help="tokenizer (or model folder) to show token-level marks and counts")
    parser.add_argument("--max-length", type=int, default=0, help="truncate as the trainer would")
    parser.add_argument("--n", type=int, default=3, help="how many examples")
    parser.add_argument("--plain", action="store_true", help="the bare text, no marks")


def preview_examples(records, prompt_format: str, *, tokenizer=None, max_length: int = 0, plain: bool = False,
                     system_prompt: str = "auto"):
    """Yield (where, text, info) for each (where, fmt, record)."""
    from llamantino.data.prompts import prompt_format as resolve
    from llamantino.data.supervised import encode, render_record, trained_char_spans

    prompt = resolve(prompt_format, tokenizer, system_prompt)
    for where, fmt, record in records:
        rendered = render_record(record, fmt, prompt, where)
        if tokenizer is None:
            if max_length:
                raise LlamantinoError("--max-length needs --tokenizer (truncation is counted in tokens)")
            info = f"{len(rendered.text)} characters"
            if plain:
                yield where, rendered.text, info
                continue
            text, last = "", 0
            for start, end in rendered.trained:
                text += rendered.text[last:start] + OPEN + rendered.text[start:end] + CLOSE
                last = end
            yield where, text + rendered.text[last:], info
            continue
        example = encode(tokenizer, rendered, max_length or None)
        info = f"{len(example.input_ids)} tokens, {example.trained_tokens} trained"
        if example.truncated:
            info += f", truncated to {max_length}"
        pieces = trained_char_spans(tokenizer, example)
        if plain:
            yield where, "".join(p for p, _ in pieces), info
        else:
            yield where, "".join(OPEN + p + CLOSE if flag else p for p, flag in pieces), info


def main(args) -> int:
    from llamantino.data.records import iter_records

    prompt_format, data, tokenizer_src, max_length, source_format, system = (
        args.format, args.data, args.tokenizer, args.max_length, args.source_format, args.system_prompt)
    if args.recipe:
        from llamantino.core.recipes import load_recipe

        recipe = load_recipe(args.recipe)
        stage = next((s for s in recipe.stages if s.kind in ("sft", "instruct")), None)
        if stage is None:
            raise LlamantinoError(f"recipe {recipe.name} has no sft or instruct stage to preview")
        cfg = stage.config
        prompt_format = prompt_format or getattr(cfg, "prompt_format", None) or "alpaca-it"
        system = system or getattr(cfg, "system_prompt", None)
        data = data or cfg.data
        source_format = source_format or cfg.format or None
        max_length = max_length or cfg.max_length
        if tokenizer_src is None and _loadable(cfg.model):
            tokenizer_src = getattr(cfg, "tokenizer", "") or cfg.model
    if data and not args.recipe and _preference_rows(data):
        return _show_pairs(args, prompt_format or "auto", system or "auto")
    if not prompt_format or not data:
        raise LlamantinoError("give --format and --data, or a recipe")
    tokenizer = None
    if tokenizer_src:
        from llamantino.models.modeling import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_src)
    elif max_length and args.recipe:
        max_length = 0  # no tokenizer at hand: show character marks, untruncated
    records = itertools.islice(iter_records(data, source_format), args.n)
    for i, (where, text, info) in enumerate(preview_examples(records, prompt_format, tokenizer=tokenizer,
                                                             max_length=max_length, plain=args.plain,
                                                             system_prompt=system or "auto")):
        if not args.plain:
            print(f"--- example {i + 1} ({where}; {info}; trained spans in {OPEN}{CLOSE})")
        print(text)
        if not args.plain:
            print()
    return 0


def _preference_rows(data) -> bool:
    """Whether the first row of `data` is a preference pair (unreadable data: no; the record
    preview says what is wrong with it)."""
    from llamantino.data.preference import RowReader

    try:
        first = next(iter(RowReader(data)), None)
    except LlamantinoError:
        return False
    return isinstance(first, tuple) and isinstance(first[1], dict) and {"chosen", "rejected"} <= set(first[1])


def preview_pairs(data, tokenizer, prompt_format: str, *, system_prompt: str = "auto", max_length: int = 0,
                  n: int = 3, plain: bool = False):
    """Yield (where, text, info) for the first `n` preference pairs: the prompt, then each answer
    (what the loss is taken on) between the marks."""
    from llamantino.data.preference import load_pairs

    length = max_length or 1 << 30  # 0: no truncation
    pairs = load_pairs(data, tokenizer, prompt_format=prompt_format, system_prompt=system_prompt,
                       max_length=length, max_prompt_length=length, limit=n)

    def show(ids):
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    for pair in pairs.pairs:
        info = f"{len(pair.prompt)} prompt tokens, {len(pair.chosen)} chosen, {len(pair.rejected)} rejected"
        if pair.cut:
            info += f", truncated to {max_length}"
        prompt = show(pair.prompt)
        if plain:
            text = f"{prompt}{show(pair.chosen)}\n{prompt}{show(pair.rejected)}"
        else:
            text = (f"{prompt}\nchosen:   {OPEN}{show(pair.chosen)}{CLOSE}"
                    f"\nrejected: {OPEN}{show(pair.rejected)}{CLOSE}")
        yield pair.source, text, info


def _show_pairs(args, prompt_format: str, system: str) -> int:
    if not args.tokenizer:
        raise LlamantinoError("preference pairs are shown in tokens: give --tokenizer")
    from llamantino.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    for i, (where, text, info) in enumerate(preview_pairs(args.data, tokenizer, prompt_format, system_prompt=system,
                                                          max_length=args.max_length, n=args.n, plain=args.plain)):
        if not args.plain:
            print(f"--- pair {i + 1} ({where}; {info}; trained spans in {OPEN}{CLOSE})")
        print(text)
        if not args.plain:
            print()
    return 0


def _loadable(model: str) -> bool:
    from pathlib import Path

    return bool(model) and (Path(model) / "config.json").is_file()
