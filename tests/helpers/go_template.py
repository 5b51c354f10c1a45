"""A renderer for the subset of Go's text/template that Ollama Modelfile templates use, so tests
can render a TEMPLATE without Ollama.

Supported, with Go's semantics: text; actions `{{ pipeline }}` with the `{{-` / `-}}` trim markers
(they remove all spaces, tabs and newlines next to them); `if` / `else if` / `else` / `end`;
`range PIPELINE`, `range $i, $x := PIPELINE` and `range $x := PIPELINE` with `else`; variables
(`$x := ...`, `$x = ...`, `$`, `$x.Field`); fields (`.A.B`) of dicts; parentheses; string, number
and boolean literals; the functions eq (with several right-hand sides), ne, lt, le, gt, ge, not,
and, or (returning an argument, as Go does), len, index, slice, print. Go's truth: false, 0, "",
nil and empty collections are false. Anything else (a missing field, an unknown function, an
unclosed block) raises ValueError, so a template cannot render by accident.
"""

from __future__ import annotations

import json
import re

_SPACE = " \t\r\n"


def _lex(source: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], trim markers applied to the text around them."""
    items, pos = [], 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            items.append(("text", source[pos:]))
            break
        items.append(("text", source[pos:start]))
        end, i, quote = None, start + 2, None
        while i < len(source):  # "}}" inside a string literal does not close the action
            c = source[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = None
            elif c in "\"`":
                quote = c
            elif source.startswith("}}", i):
                end = i
                break
            i += 1
        if end is None:
            raise ValueError(f"unclosed action at {start}")
        body = source[start + 2:end]
        if body.startswith("- "):
            items[-1] = ("text", items[-1][1].rstrip(_SPACE))
            body = body[2:]
        trim_after = body.endswith(" -")
        if trim_after:
            body = body[:-2]
        items.append(("action", body.strip()))
        pos = end + 2
        if trim_after:
            while pos < len(source) and source[pos] in _SPACE:
                pos += 1
    return items


_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:\\.|[^"\\])*"|`[^`]*`)|(?P<num>-?\d+)|(?P<punct>:=|[()|,=])'
                    r'|(?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)|(?P<field>(?:\.[A-Za-z0-9_]+)+|\.)'
                    r'|(?P<ident>[A-Za-z_][A-Za-z0-9_]*))')


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot read {text[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


# ---------------------------------------------------------------------------------------
# Parsing into nodes: ("text", s), ("action", tokens), ("if", [(cond, body)...], else_body),
# ("range", vars, tokens, body, else_body)


def _parse(items, i=0, stop=()):
    """Nodes from items[i:] up to the {{ end }} / {{ else }} in `stop` (returned with its index)."""
    nodes = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            if body:
                nodes.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            if word not in stop:
                raise ValueError(f"unexpected {{{{ {body} }}}}")
            return nodes, i
        if word == "if":
            branches, cond = [], _tokens(body[2:])
            while True:
                block, i = _parse(items, i + 1, stop=("end", "else"))
                branches.append((cond, block))
                end_body = items[i][1]
                if end_body == "end":
                    otherwise = []
                    break
                rest = end_body[4:].strip()
                if rest.startswith("if "):
                    cond = _tokens(rest[3:])
                    continue
                otherwise, i = _parse(items, i + 1, stop=("end",))
                if items[i][1] != "end":
                    raise ValueError("else after else")
                break
            nodes.append(("if", branches, otherwise))
            i += 1
            continue
        if word == "range":
            spec = body[5:].strip()
            names, pipe = [], spec
            m = re.match(r"(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*(.*)$", spec, re.S)
            if m:
                names = [n for n in (m.group(1), m.group(2)) if n]
                pipe = m.group(3)
            block, i = _parse(items, i + 1, stop=("end", "else"))
            otherwise = []
            if items[i][1] == "else":
                otherwise, i = _parse(items, i + 1, stop=("end",))
            nodes.append(("range", names, _tokens(pipe), block, otherwise))
            i += 1
            continue
        nodes.append(("action", _tokens(body)))
        i += 1
    if stop:
        raise ValueError("unclosed block: no {{ end }}")
    return nodes, i


def _truth(value) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, dict, tuple)):
        return len(value) > 0
    return True


def _text(value) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _eq(a, *others):
    if not others:
        raise ValueError("eq needs two arguments")
    return any(a == b for b in others)


def _and(*args):
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args):
    for a in args:
        if _truth(a):
            return a
    return args[-1]


def _slice(x, *bounds):
    if len(bounds) > 2:
        raise ValueError("slice takes at most two indexes here")
    start = bounds[0] if bounds else 0
    end = bounds[1] if len(bounds) > 1 else len(x)
    if not 0 <= start <= end <= len(x):
        raise ValueError(f"slice index out of range: {start}:{end} of {len(x)}")
    return x[start:end]


def _index(x, *keys):
    for k in keys:
        if isinstance(x, (list, str)) and not 0 <= k < len(x):
            raise ValueError(f"index out of range: {k}")
        x = x[k]
    return x


FUNCS = {
    "eq": _eq, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "not": lambda a: not _truth(a), "and": _and,
    "or": _or, "len": len, "slice": _slice, "index": _index, "print": lambda *a: "".join(_text(x) for x in a),
}


class _Scope:
    def __init__(self, root):
        self.frames = [{"$": root}]

    def get(self, name):
        for frame in reversed(self.frames):
            if name in frame:
                return frame[name]
        raise ValueError(f"undefined variable {name}")

    def set(self, name, value):
        for frame in reversed(self.frames):
            if name in frame:
                frame[name] = value
                return
        raise ValueError(f"assignment to undeclared variable {name}")


def _field(value, path: str):
    for name in [p for p in path.split(".") if p]:
        if not isinstance(value, dict) or name not in value:
            raise ValueError(f"can't evaluate field {name}")
        value = value[name]
    return value


def _operand(tokens, pos, dot, scope):
    kind, text = tokens[pos]
    if kind == "str":
        return (json.loads(text) if text.startswith('"') else text[1:-1]), pos + 1
    if kind == "num":
        return int(text), pos + 1
    if kind == "field":
        return (dot if text == "." else _field(dot, text)), pos + 1
    if kind == "var":
        name, _, rest = text.partition(".")
        return _field(scope.get(name), rest), pos + 1
    if kind == "ident" and text in ("true", "false"):
        return text == "true", pos + 1
    if kind == "ident" and text == "nil":
        return None, pos + 1
    if kind == "punct" and text == "(":
        value, pos = _pipeline(tokens, pos + 1, dot, scope, closing=")")
        if pos + 1 < len(tokens) and tokens[pos + 1][0] == "field":  # (index .Messages 0).Role
            return _field(value, tokens[pos + 1][1]), pos + 2
        return value, pos + 1
    raise ValueError(f"unexpected {text!r}")


def _command(tokens, pos, dot, scope, closing):
    kind, text = tokens[pos]
    if kind == "ident" and text not in ("true", "false", "nil"):
        if text not in FUNCS:
            raise ValueError(f'function "{text}" not defined')
        args, pos = [], pos + 1
        while pos < len(tokens) and tokens[pos][1] not in ("|", closing):
            value, pos = _operand(tokens, pos, dot, scope)
            args.append(value)
        return FUNCS[text](*args), pos
    value, pos = _operand(tokens, pos, dot, scope)
    if pos < len(tokens) and tokens[pos][1] not in ("|", closing):
        raise ValueError(f"unexpected {tokens[pos][1]!r} after an operand")
    return value, pos


def _pipeline(tokens, pos, dot, scope, closing=None):
    value, pos = _command(tokens, pos, dot, scope, closing)
    while pos < len(tokens) and tokens[pos][1] == "|":
        kind, name = tokens[pos + 1]
        if name not in FUNCS:
            raise ValueError(f'function "{name}" not defined')
        args, pos = [], pos + 2
        while pos < len(tokens) and tokens[pos][1] not in ("|", closing):
            arg, pos = _operand(tokens, pos, dot, scope)
            args.append(arg)
        value = FUNCS[name](*args, value)
    if closing and (pos >= len(tokens) or tokens[pos][1] != closing):
        raise ValueError(f"missing {closing}")
    return value, pos


def _evaluate(tokens, dot, scope):
    """An action's value; declarations and assignments give None (and print nothing)."""
    if len(tokens) >= 2 and tokens[0][0] == "var" and tokens[1][1] in (":=", "="):
        value, pos = _pipeline(tokens, 2, dot, scope)
        if tokens[1][1] == ":=":
            scope.frames[-1][tokens[0][1]] = value
        else:
            scope.set(tokens[0][1], value)
        return None, True
    value, pos = _pipeline(tokens, 0, dot, scope)
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos][1]!r}")
    return value, False


def _run(nodes, dot, scope, out):
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "action":
            value, silent = _evaluate(node[1], dot, scope)
            if not silent:
                out.append(_text(value))
        elif node[0] == "if":
            for cond, body in node[1]:
                if _truth(_evaluate(cond, dot, scope)[0]):
                    scope.frames.append({})
                    _run(body, dot, scope, out)
                    scope.frames.pop()
                    break
            else:
                scope.frames.append({})
                _run(node[2], dot, scope, out)
                scope.frames.pop()
        elif node[0] == "range":
            _, names, tokens, body, otherwise = node
            items = _evaluate(tokens, dot, scope)[0]
            pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items or []))
            for key, item in pairs:
                frame = {}
                if len(names) == 2:
                    frame[names[0]], frame[names[1]] = key, item
                elif names:
                    frame[names[0]] = item
                scope.frames.append(frame)
                _run(body, item, scope, out)
                scope.frames.pop()
            if not pairs:
                scope.frames.append({})
                _run(otherwise, dot, scope, out)
                scope.frames.pop()


def render(source: str, data: dict) -> str:
    """`source` rendered with `data` as dot (and `$`)."""
    nodes, _ = _parse(_lex(source))
    out: list[str] = []
    _run(nodes, data, _Scope(data), out)
    return "".join(out)
