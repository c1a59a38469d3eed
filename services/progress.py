"""The typed event stream long work reports through (backups, verifies, restores).

Services call a ``Reporter`` (any callable taking an ``Event``); the CLI renders events as
progress bars or plain lines, the TUI posts them as Textual messages. Reporters may be called
from several worker threads at once. High-rate byte progress is throttled at the source by
``ByteMeter`` so no front end is flooded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StageStarted:
    stage: str
    """e.g. ``database dart_cloud``, ``volume functions_data``, ``precheck``."""
    total_bytes: int | None = None
    """An estimate, when one is known."""


@dataclass(frozen=True)
class BytesProgress:
    stage: str
    done_bytes: int
    total_bytes: int | None
    rate: float
    """Bytes per second since the stage started."""


@dataclass(frozen=True)
class LogLine:
    message: str
    level: str = "info"
    """``info``, ``warning`` or ``error``."""


@dataclass(frozen=True)
class StageFinished:
    stage: str
    bytes: int
    seconds: float
    detail: str = ""


@dataclass(frozen=True)
class StageFailed:
    stage: str
    error: str


Event = StageStarted | BytesProgress | LogLine | StageFinished | StageFailed
Reporter = Callable[[Event], None]


def null_reporter(_event: Event) -> None:
    return None


def locked(reporter: Reporter) -> Reporter:
    """Serialise calls to ``reporter`` from several threads."""
    lock = threading.Lock()

    def call(event: Event) -> None:
        with lock:
            reporter(event)

    return call


class ByteMeter:
    """Counts a stage's bytes and emits ``BytesProgress`` at most every ``interval`` seconds."""

    def __init__(self, stage: str, reporter: Reporter, total: int | None = None,
                 interval: float = 0.25) -> None:
        self.stage = stage
        self.reporter = reporter
        self.total = total
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def _emit(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-6)
        self.reporter(BytesProgress(self.stage, self.done, self.total, self.done / elapsed))

    def flush(self) -> None:
        self._emit(time.monotonic())

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started
