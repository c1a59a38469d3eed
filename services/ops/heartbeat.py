"""The schedule daemon's heartbeat: one small JSON file in the backup dir, rewritten atomically
every ``[schedule] heartbeat_seconds`` and after each job.

It says the daemon is alive (``updated_at``), what it runs now, and per job the next run, the
last outcome and the run of consecutive failures. ``dcb check``, ``dcb metrics`` and the
console read it; the daemon reads it back at start-up to catch up a run missed while it was
down (``last_due``) and to notice a recovery across restarts.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.artifacts import atomic_write_bytes

STATE_FILE = "schedule-state.json"
DAEMON_LOCK = ".schedule.lock"


@dataclass
class JobState:
    name: str
    run: str
    cron: str
    next_run: str | None = None
    last_due: str | None = None
    """The scheduled time of the last run handled (ISO, UTC): a later due time that passed
    while the daemon was down is a missed run."""
    last_started: str | None = None
    last_finished: str | None = None
    last_status: str | None = None
    """``ok``, ``failed`` or ``cancelled``."""
    last_error: str | None = None
    last_set_id: str | None = None
    last_duration_seconds: float | None = None
    consecutive_failures: int = 0
    runs: int = 0
    failures: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> JobState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class DaemonState:
    pid: int
    host: str
    started_at: str
    updated_at: str
    tz: str
    current_job: str | None = None
    jobs: dict[str, JobState] = field(default_factory=dict)
    check_status: int | None = None
    """The last ``dcb check`` status the daemon saw (0-3), for its transitions."""
    stopped: bool = False
    """Set when the daemon exits cleanly: a stopped daemon is not a stale one."""

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DaemonState:
        jobs = {k: JobState.from_json(v) for k, v in (d.get("jobs") or {}).items()
                if isinstance(v, dict)}
        return cls(pid=int(d.get("pid", 0)), host=str(d.get("host", "")),
                   started_at=str(d.get("started_at", "")),
                   updated_at=str(d.get("updated_at", "")), tz=str(d.get("tz", "")),
                   current_job=d.get("current_job"), jobs=jobs,
                   check_status=d.get("check_status"), stopped=bool(d.get("stopped")))

    def updated(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.updated_at)
        except ValueError:
            return None

    def alive(self, now: datetime, stale: timedelta) -> bool:
        """Heartbeat fresh and the daemon did not say it stopped."""
        t = self.updated()
        return not self.stopped and t is not None and now - t <= stale

    def next_run(self) -> tuple[str, datetime] | None:
        """The soonest next run over all jobs: (job name, when)."""
        best: tuple[str, datetime] | None = None
        for j in self.jobs.values():
            if not j.next_run:
                continue
            try:
                t = datetime.fromisoformat(j.next_run)
            except ValueError:
                continue
            if best is None or t < best[1]:
                best = (j.name, t)
        return best


def state_path(root: Path) -> Path:
    return root / STATE_FILE


def read_state(root: Path) -> DaemonState | None:
    """The heartbeat file, or None when there is none or it cannot be read."""
    try:
        data = json.loads(state_path(root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        return DaemonState.from_json(data)
    except (TypeError, ValueError):
        return None


_write_lock = threading.Lock()


def write_state(root: Path, state: DaemonState) -> None:
    """Atomically replace the heartbeat file (one writer at a time: the temp name is fixed).

    Raises ``StorageError`` when the backup dir cannot be written."""
    data = json.dumps(state.to_json(), indent=1, sort_keys=True).encode()
    with _write_lock:
        atomic_write_bytes(state_path(root), data)
