"""What Ollama does with a Modelfile, for tests: read it (its parser's quoting rules) and render the
prompt of a conversation as Ollama's chat endpoint does (the Modelfile's SYSTEM as a first system
message when the conversation has none; `.System` all system messages joined by a blank line;
`.Messages` with Role and Content), with the Go template renderer of go_template.py."""

from __future__ import annotations

import re

from helpers.go_template import render

_COMMAND = re.compile(r"(FROM|TEMPLATE|SYSTEM)[ \t]+|(PARAMETER)[ \t]+(\w+)[ \t]+")


def parse_modelfile(text: str) -> dict:
    """{"from", "template", "system", "parameters": {name: [values]}} of a Modelfile: values in
    \"\"\"...\"\"\" (newlines kept), "..." or bare; # lines are comments."""
    out = {"from": None, "template": None, "system": None, "parameters": {}}
    pos = 0
    while pos < len(text):
        if text[pos] in "\n \t":
            pos += 1
            continue
        if text[pos] == "#":
            pos = text.find("\n", pos) + 1 or len(text)
            continue
        m = _COMMAND.match(text, pos)
        if not m:
            raise ValueError(f"not a Modelfile command at {text[pos:pos + 40]!r}")
        command, name = m.group(1) or m.group(2), m.group(3)
        pos = m.end()
        if text.startswith('"""', pos):
            end = text.index('"""', pos + 3)
            value, pos = text[pos + 3:end], end + 3
        elif text.startswith('"', pos):
            end = text.index('"', pos + 1)
            value, pos = text[pos + 1:end], end + 1
        else:
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            value, pos = text[pos:end].strip(), end
        if command == "PARAMETER":
            out["parameters"].setdefault(name, []).append(value)
        else:
            out[command.lower()] = value
    return out


def ollama_prompt(modelfile: dict, messages: list[dict]) -> str:
    if modelfile["system"] and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": modelfile["system"]}, *messages]
    data = {"System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
            "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages], "Response": ""}
    return render(modelfile["template"], data)
