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
