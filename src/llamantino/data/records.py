"""Source formats -> the three record types that flow between stages.

* a text document: {"text", ...} (mC4, clean_mc4_it, plain text files);
* a conversation: a list of {"role", "content"} (UltraChat, ultrachat_200k);
* an instruction: {"instruction", "input", "output"} (Dolly, Alpaca, prepared EVALITA).

One reader per source format; adding a dataset means adding a reader here.
"""

from __future__ import annotations

from typing import Iterator

from llamantino.core.errors import LlamantinoError
from llamantino.core.fileio import LineStats, expand_inputs, iter_jsonl, iter_paragraphs

# Format -> the fields that identify it (all must be present).
FORMAT_FIELDS = {
    "ultrachat": ("id", "data"),
    "ultrachat_200k": ("messages",),
    "dolly": ("instruction", "context", "response"),
    "evalita": ("task", "instruction", "input", "output"),
    "alpaca": ("instruction", "input", "output"),
    "text": ("text",),
}
# Data formats (the fields a record has), not prompt formats (see llamantino.data.prompts).
CONVERSATION_DATA_FORMATS = ("ultrachat", "ultrachat_200k")
INSTRUCTION_DATA_FORMATS = ("dolly", "alpaca", "evalita")


def detect_format(record: dict, where: str) -> str:
    for fmt, fields in FORMAT_FIELDS.items():
        if all(f in record for f in fields):
            return fmt
    raise LlamantinoError(
        f"{where}: cannot tell the format from the fields ({', '.join(sorted(record)) or 'none'}); "
        "expected one of: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in FORMAT_FIELDS.items()))


def check_format(record: dict, fmt: str, where: str) -> None:
    if fmt not in FORMAT_FIELDS:
        from llamantino.core.config import closest

        raise LlamantinoError(f"unknown data format '{fmt}'{closest(fmt, FORMAT_FIELDS)}; "
                              f"valid: {', '.join(FORMAT_FIELDS)}")
    for field in FORMAT_FIELDS[fmt]:
        if field not in record:
            raise LlamantinoError(f"{where}: missing field '{field}' for format {fmt}")


def _text(value, where: str, field: str, *, allow_empty: bool = False) -> str:
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise LlamantinoError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise LlamantinoError(f"{where}: field '{field}' is empty")
    return value


def to_conversation(record: dict, fmt: str, where: str) -> list[dict]:
    """Messages [{"role", "content"}] of an UltraChat or ultrachat_200k record."""
    if fmt == "ultrachat":
        turns = record["data"]
        if not isinstance(turns, list) or not turns:
            raise LlamantinoError(f"{where}: field 'data' must be a non-empty list of turns")
        if len(turns) % 2:
            raise LlamantinoError(f"{where}: field 'data' has {len(turns)} turns; the last user turn "
                                  "has no answer")
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": _text(t, where, f"data[{i}]")}
                for i, t in enumerate(turns)]
    if fmt == "ultrachat_200k":
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise LlamantinoError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise LlamantinoError(f"{where}: messages[{i}] needs 'role' and 'content'")
            out.append({"role": msg["role"], "content": _text(msg["content"], where, f"messages[{i}].content")})
        return out
    raise LlamantinoError(f"{where}: format {fmt} holds no conversation (expected "
                          f"{' or '.join(CONVERSATION_DATA_FORMATS)})")


def to_instruction(record: dict, fmt: str, where: str) -> dict:
    """{"instruction", "input", "output"} of a Dolly, Alpaca or prepared EVALITA record."""
    if fmt == "dolly":
        return {"instruction": _text(record["instruction"], where, "instruction"),
                "input": _text(record.get("context"), where, "context", allow_empty=True),
                "output": _text(record["response"], where, "response")}
    if fmt in ("alpaca", "evalita"):
        return {"instruction": _text(record["instruction"], where, "instruction"),
                "input": _text(record.get("input"), where, "input", allow_empty=True),
                "output": _text(record["output"], where, "output")}
    raise LlamantinoError(f"{where}: format {fmt} holds no instruction (expected "
                          f"{', '.join(INSTRUCTION_DATA_FORMATS)})")


def iter_records(paths, fmt: str | None = None, *, skip_bad_lines: bool = False,
                 stats: LineStats | None = None) -> Iterator[tuple[str, str, dict]]:
    """Yield (where, format, record) over JSON-lines files, detecting the format per file."""
    for path in expand_inputs(paths):
        file_fmt = fmt
        for number, record in iter_jsonl(path, skip_bad_lines=skip_bad_lines, stats=stats):
            where = f"{path}:{number}"
            if file_fmt is None:
                file_fmt = detect_format(record, where)
            check_format(record, file_fmt, where)
            yield where, file_fmt, record


def iter_documents(paths, *, text_field: str = "text", skip_bad_lines: bool = False) -> Iterator[tuple[str, str]]:
    """Yield (where, text) from JSON lines with a text field, or plain text files.

    Plain text (.txt) holds one document per blank-line-separated paragraph.
    """
    for path in expand_inputs(paths, suffixes=(".jsonl", ".json", ".jsonl.gz", ".json.gz", ".txt", ".txt.gz"),
                              what="text"):
        if str(path).endswith((".txt", ".txt.gz")):
            yield from ((f"{path}:{line}", text) for line, text in iter_paragraphs(path))
            continue
        for number, record in iter_jsonl(path, skip_bad_lines=skip_bad_lines):
            if text_field not in record:
                raise LlamantinoError(f"{path}:{number}: missing field '{text_field}'")
            text = record[text_field]
            if not isinstance(text, str):
                raise LlamantinoError(f"{path}:{number}: field '{text_field}' must be a string")
            if text.strip():
                yield f"{path}:{number}", text
