"""Stages that write their output in numbered parts and resume after a kill (clean, translate).

A part is written atomically, then the progress file (atomically) records how far the input
has been consumed: that write is the commit point. A run killed at any moment continues from
its last commit: parts numbered from the committed count on, and temporary files, are stale
and removed; a part written but not yet counted is simply written again under the same name.
A full, read-only or forbidden disk stops the run with one line and keeps what was committed.

Each stage keeps the part names its runs have always had (clean: `part-00000.jsonl.gz` in the
output folder; translate: `.parts/part-000000.jsonl`), so a run interrupted by an earlier
version resumes.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path
from typing import Callable

from llamantino.core.errors import DISK_ERRORS, LlamantinoError
from llamantino.core.fileio import atomic_write_json, is_temporary, read_json_object

PROGRESS = "progress.json"  # in the output folder, while a run is unfinished


class Parts:
    """The numbered parts `part-N<suffix>` (N written with `width` digits) in `folder`, and the
    progress file of the output folder `out` that commits them."""

    def __init__(self, out, *, width: int, suffix: str, folder: str = ""):
        self.out = Path(out)
        self.folder = self.out / folder if folder else self.out
        self.progress = self.out / PROGRESS
        self.width, self.suffix = width, suffix
        self._name = re.compile(rf"part-(\d{{{width}}}){re.escape(suffix)}")

    def name(self, index: int) -> str:
        return f"part-{index:0{self.width}d}{self.suffix}"

    def path(self, index: int) -> Path:
        return self.folder / self.name(index)

    def index(self, name: str) -> int | None:
        """The number of a part's file name; None for any other name."""
        match = self._name.fullmatch(name)
        return int(match.group(1)) if match else None

    def read_progress(self) -> dict | None:
        """The last committed progress, or None when nothing was committed."""
        return read_json_object(self.progress, "progress file") if self.progress.is_file() else None

    def commit(self, progress: dict) -> None:
        atomic_write_json(self.progress, progress)

    def remove_stale(self, committed: int) -> None:
        """On resume: remove the parts written after the last commit and temporary files."""
        self._remove(lambda index: index >= committed)

    def remove_work(self, *, parts: bool = True) -> None:
        """Remove the progress file, temporary files and (with `parts`) every part; a parts
        folder of its own goes too once empty."""
        self.progress.unlink(missing_ok=True)
        self._remove(lambda index: parts)
        if self.folder != self.out and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def _remove(self, part_is_stale: Callable[[int], bool]) -> None:
        for folder in dict.fromkeys((self.out, self.folder)):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                index = self.index(path.name) if folder == self.folder else None
                if is_temporary(path.name):
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                elif index is not None and part_is_stale(index):
                    path.unlink()

    @contextlib.contextmanager
    def guard(self, kept: Callable[[dict | None], str], on_failure: Callable[[], None] | None = None):
        """Around a run's work: a full, read-only or forbidden disk becomes one line saying what
        is kept (`kept` of the last committed progress, e.g. "2 finished chunk(s) (20 records)"),
        and the same command resumes once there is room; an interrupted run (Ctrl-C) keeps its
        work too; any other error calls `on_failure` (a stage whose failed runs leave nothing)."""
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
                raise LlamantinoError(f"{exc.filename or self.out}: cannot write ({exc.strerror or exc}); "
                                      f"{kept(self.read_progress())} kept in {self.out}: free space or fix the "
                                      "permissions, then run the same command again to resume") from None
            if on_failure is not None and not isinstance(exc, KeyboardInterrupt):
                on_failure()
            raise
