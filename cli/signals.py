"""Turning termination signals into a service's cancel event, for the duration of a command."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any


class CancelOnSignals:
    """While active, the given signals set ``cancel`` (the service stops at a safe point)."""

    def __init__(self, cancel: threading.Event,
                 signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
                 message: str | None = None) -> None:
        self.cancel = cancel
        self.signals = signals
        self.message = message
        self._old: dict[signal.Signals, Any] = {}

    def __enter__(self) -> None:
        def handler(_sig: int, _frame: FrameType | None) -> None:
            if self.message:
                sys.stderr.write(self.message)
            self.cancel.set()

        self._old = {s: signal.signal(s, handler) for s in self.signals}

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
