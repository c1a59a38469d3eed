"""Rendering the services' event stream on a terminal (stderr).

On a TTY: stage lines plus one live line with bytes, rate and percent of every active stage.
Otherwise (cron, CI, pipes): plain timestamped lines, with byte progress at most every 10 s.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from dcb.services import formatting as fmt
from dcb.services.progress import (
    BytesProgress,
    Event,
    LogLine,
    StageFailed,
    StageFinished,
    StageStarted,
)

_quiet = False


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """Every ``ProgressPrinter`` made meanwhile is quiet: ``-q`` for a command whose module
    did not define it (cli/main.py adds it to every long command)."""
    global _quiet
    previous, _quiet = _quiet, _quiet or quiet
    try:
        yield
    finally:
        _quiet = previous


class ProgressPrinter:
    def __init__(self, out: TextIO = sys.stderr, tty: bool | None = None,
                 quiet: bool = False) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.quiet = quiet or _quiet
        self.active: dict[str, BytesProgress | None] = {}
        self._live = False
        self._last_plain = 0.0

    def __call__(self, e: Event) -> None:
        if self.quiet and not (isinstance(e, StageFailed)
                               or (isinstance(e, LogLine) and e.level != "info")):
            return
        if isinstance(e, StageStarted):
            self.active[e.stage] = None
            self._line(f"started   {e.stage}"
                       + (f" (~{fmt.size(e.total_bytes)})" if e.total_bytes else ""))
        elif isinstance(e, BytesProgress):
            self.active[e.stage] = e
            if self.tty:
                self._draw()
            elif time.monotonic() - self._last_plain > 10:
                self._last_plain = time.monotonic()
                self._line(f"progress  {self._describe(e)}")
        elif isinstance(e, StageFinished):
            self.active.pop(e.stage, None)
            detail = f", {e.detail}" if e.detail else ""
            self._line(f"finished  {e.stage}: {fmt.size(e.bytes)} in "
                       f"{fmt.duration(e.seconds)}{detail}")
        elif isinstance(e, StageFailed):
            self.active.pop(e.stage, None)
            self._line(f"FAILED    {e.stage}: {e.error}")
        elif isinstance(e, LogLine):
            prefix = {"warning": "warning   ", "error": "error     "}.get(e.level, "          ")
            self._line(prefix + e.message)

    @staticmethod
    def _describe(p: BytesProgress) -> str:
        pct = f" {100 * p.done_bytes / p.total_bytes:3.0f}%" if p.total_bytes else ""
        return f"{p.stage} {fmt.size(p.done_bytes)}{pct} {fmt.rate(p.rate)}"

    def _clear(self) -> None:
        if self._live:
            self.out.write("\r\x1b[2K")
            self._live = False

    def _draw(self) -> None:
        parts = [self._describe(p) for p in self.active.values() if p is not None]
        if not parts:
            return
        self._clear()
        self.out.write(" | ".join(parts)[:200])
        self.out.flush()
        self._live = True

    def _line(self, text: str) -> None:
        self._clear()
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"{stamp} {text}\n")
        self.out.flush()
        if self.tty:
            self._draw()

    def close(self) -> None:
        self._clear()
        self.out.flush()
