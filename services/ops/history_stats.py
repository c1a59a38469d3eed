"""What the console's history screen charts, computed without Textual: each backup run's
duration and size (failures marked), the success rate, and the store's growth with a
projection of the day the backup disk fills up.

The store's size over time is rebuilt from the history (each complete backup adds its size,
each prune frees what it freed), anchored so that its last point is the store's size now;
the growth rate is a least-squares line through the last ``window_days`` of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dcb.services.backup import read_history
from dcb.services.config import Config
from dcb.services.disk import DiskUsage, disk_usage
from dcb.services.store import BackupSet, BackupStore


@dataclass(frozen=True)
class RunPoint:
    at: datetime
    ok: bool
    seconds: float | None
    size_bytes: int | None
    set_id: str
    error: str | None = None


@dataclass(frozen=True)
class Growth:
    points: tuple[tuple[datetime, int], ...]
    """The store's size after each change, oldest first; the last point is now."""
    bytes_per_day: float | None
    """None: too little history to tell."""
    full_at: datetime | None
    """When the disk fills at that rate (None: not growing, or unknown)."""


@dataclass(frozen=True)
class HistoryStats:
    runs: tuple[RunPoint, ...]
    """Backup runs, oldest first."""
    success_rate: float | None
    """Of the runs in ``window_days`` (None: no runs)."""
    window_days: int
    growth: Growth
    disk: DiskUsage | None
    now: datetime

    @property
    def failures(self) -> int:
        return sum(1 for r in self.runs if not r.ok)


def _parse(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def runs_from(history: Sequence[dict[str, Any]]) -> list[RunPoint]:
    out = []
    for h in history:
        if h.get("kind") != "backup" or (at := _parse(h.get("started_at"))) is None:
            continue
        ok = h.get("status") == "complete"
        secs = h.get("duration_seconds")
        size = h.get("size_bytes")
        out.append(RunPoint(at=at, ok=ok,
                            seconds=float(secs) if isinstance(secs, int | float) else None,
                            size_bytes=int(size) if ok and isinstance(size, int) else None,
                            set_id=str(h.get("id", "")), error=h.get("error")))
    out.sort(key=lambda r: r.at)
    return out


def slope_per_day(points: Sequence[tuple[datetime, int]]) -> float | None:
    """Least-squares bytes per day through ``points`` (None under 2 points or 1 hour)."""
    if len(points) < 2:
        return None
    t0 = points[0][0]
    xs = [(t - t0).total_seconds() / 86400 for t, _ in points]
    ys = [float(b) for _, b in points]
    if xs[-1] - xs[0] < 1 / 24:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def growth_from(history: Sequence[dict[str, Any]], store_bytes_now: int,
                disk: DiskUsage | None, now: datetime, window_days: int) -> Growth:
    steps: list[tuple[datetime, int]] = []
    for h in history:
        kind = h.get("kind")
        if kind == "backup" and h.get("status") == "complete":
            at = _parse(h.get("started_at"))
            delta = int(h.get("size_bytes") or 0)
        elif kind == "prune":
            at = _parse(h.get("at"))
            delta = -int(h.get("freed_bytes") or 0)
        else:
            continue
        if at is not None:
            steps.append((at, delta))
    steps.sort(key=lambda s: s[0])
    total = 0
    raw: list[tuple[datetime, int]] = []
    for at, delta in steps:
        total += delta
        raw.append((at, total))
    offset = store_bytes_now - total  # sets older than the history, files besides sets
    points = [(at, max(0, b + offset)) for at, b in raw] + [(now, store_bytes_now)]
    recent = [p for p in points if p[0] >= now - timedelta(days=window_days)]
    rate = slope_per_day(recent)
    full_at = None
    if rate is not None and rate > 0 and disk is not None:
        full_at = now + timedelta(days=disk.free_bytes / rate)
    return Growth(points=tuple(points), bytes_per_day=rate, full_at=full_at)


def store_bytes(sets: Sequence[BackupSet]) -> int:
    return sum(s.size_bytes for s in sets)


def history_stats(cfg: Config, now: datetime | None = None,
                  window_days: int = 30) -> HistoryStats:
    now = now or datetime.now(UTC)
    history = read_history(cfg.backup_dir)
    sets = BackupStore.for_config(cfg).list_sets()
    try:
        disk: DiskUsage | None = disk_usage(cfg.backup_dir)
    except OSError:
        disk = None
    return stats_from(history, store_bytes(sets), disk, now, window_days)


def stats_from(history: Sequence[dict[str, Any]], store_now: int, disk: DiskUsage | None,
               now: datetime, window_days: int = 30) -> HistoryStats:
    runs = runs_from(history)
    recent = [r for r in runs if r.at >= now - timedelta(days=window_days)]
    rate = sum(1 for r in recent if r.ok) / len(recent) if recent else None
    return HistoryStats(runs=tuple(runs), success_rate=rate, window_days=window_days,
                        growth=growth_from(history, store_now, disk, now, window_days),
                        disk=disk, now=now)
