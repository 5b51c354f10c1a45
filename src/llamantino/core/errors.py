"""The one exception users see.

Every stage raises `LlamantinoError` for bad input or settings; the command line prints
its message as a single `error: ...` line and exits with status 2. Anything else is a
bug and keeps its traceback.
"""


import errno

# OSError numbers of a full, read-only or forbidden disk: one line for the user, finished
# work kept for a resume (never a traceback).
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


class LlamantinoError(Exception):
    """A user-facing error: one line that says what is wrong and where (file, line, field)."""


def where(path, line: int | None = None, field: str | None = None) -> str:
    """Format a location prefix such as `data.jsonl:12: field 'text'`."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if field is not None:
        out += f": field '{field}'"
    return out


SHOWN_CHARS = 200  # the most of a value an error line prints


def cut(text: str, limit: int = SHOWN_CHARS) -> str:
    """A message or value for an error line, cut to `limit` characters (a value read from a
    file can be any size: the line stays one short line)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to `limit` characters (containers without building their whole text)."""
    return cut(_short_repr(value, limit) if isinstance(value, (list, dict, tuple)) else repr(value), limit)


def _short_repr(value, limit: int) -> str:
    """repr of a container without building the whole text (a nested value can be huge)."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    short.maxlist = short.maxdict = short.maxtuple = 20
    short.maxlevel = 4
    return short.repr(value)


def first_line(exc: BaseException) -> str:
    """An exception in one line: its type and first line, and for a wrapper (torch.compile's
    BackendCompilerFailed, a raise ... from) the exception it wraps."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__
    if inner is not None and inner is not exc:
        return f"{type(exc).__name__}: {first_line(inner)}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
