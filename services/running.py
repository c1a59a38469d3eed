"""Backups in progress: a set without a manifest is being written while the store's lock is
held by the run that made it (otherwise it is ``incomplete``: a killed run's remains)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.lock import LockHolder, current_holder
from dcb.services.store import MANIFEST, BackupSet

CLOCK_SLACK = timedelta(seconds=2)
"""The lock's time and the set's id are both whole seconds, from two clock readings."""


@dataclass(frozen=True)
class RunningSet:
    set_id: str
    holder: LockHolder
    bytes_written: int
    """On disk so far: finished artifacts and those still being written."""
    done: tuple[str, ...]
    """Artifacts finished (file names)."""
    writing: tuple[str, ...]
    """Artifacts being written now."""

    @property
    def since(self) -> datetime | None:
        return self.holder.since

    def describe(self) -> str:
        """``dcb backup, pid 4242 on host; writing db-dart_cloud.pgdump (2 done)``."""
        text = self.holder.describe()
        if self.writing:
            text += "; writing " + ", ".join(self.writing)
        if self.done:
            text += f" ({len(self.done)} done)"
        return text

    def to_json(self) -> dict[str, Any]:
        h = self.holder
        return {"purpose": h.purpose, "pid": h.pid, "host": h.host,
                "since": h.since.isoformat() if h.since else None,
                "bytes_written": self.bytes_written, "done": list(self.done),
                "writing": list(self.writing)}


def running_sets(root: Path, sets: Iterable[BackupSet]) -> dict[str, RunningSet]:
    """Set id -> what is writing it, for each set of ``sets`` being written now. ``root`` is
    the state dir (services/state.py), where the store's lock lives."""
    holder = current_holder(root)
    if holder is None or holder.since is None:
        return {}
    out: dict[str, RunningSet] = {}
    for s in sets:
        if s.status != "incomplete" or s.legacy or s.created_at < holder.since - CLOCK_SLACK \
                or (s.path / MANIFEST).exists():
            continue
        total, done, writing = 0, [], []
        try:
            entries = list(os.scandir(s.path))
        except OSError:
            continue
        for e in entries:
            try:
                total += e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            if e.name.startswith(".") and e.name.endswith(".tmp"):
                writing.append(e.name[1:-4])
            elif not e.name.startswith("."):
                done.append(e.name)
        out[s.id] = RunningSet(s.id, holder, total, tuple(sorted(done)), tuple(sorted(writing)))
    return out
