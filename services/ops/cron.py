"""Cron maths for the schedule: croniter for the expressions, zoneinfo for the time zone.

croniter does the calendar (month ends, ``L``, day-of-week/day-of-month rules, a sixth field
for seconds). One rule is ours, as Vixie cron has it: when the clock falls back and an hour
repeats, a job with a fixed hour (``30 2 * * *``) runs once, in the first pass; a job whose
hour field is a wildcard (``0 * * * *``, ``*/15 * * * *``) runs in both passes, since each is
a real hour. When the clock springs forward over a job's time, croniter runs it at the first
minute after the gap (03:00 for a 02:30 job): every day still gets its run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from dcb.services.errors import ConfigError

UTC_ZONE = ZoneInfo("UTC")


def host_zone() -> tzinfo:
    """The host's time zone with its DST rules: ``$TZ``, else ``/etc/localtime``, else UTC."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    local = Path("/etc/localtime")
    if local.exists():
        try:
            with local.open("rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            pass
    return UTC_ZONE


def zone(name: str) -> tzinfo:
    """``[schedule] tz``: an IANA name, or empty for the host's zone."""
    if not name:
        return host_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[schedule] tz: unknown time zone {name!r}",
                          hint="an IANA name such as Europe/Berlin or UTC") from None


class Cron:
    """One cron expression in one time zone."""

    def __init__(self, expr: str, tz: tzinfo, where: str = "cron") -> None:
        self.expr = expr.strip()
        self.tz = tz
        try:
            croniter(self.expr)
        except (CroniterError, ValueError, KeyError) as e:
            raise ConfigError(f"{where}: invalid cron expression {self.expr!r}: {e}",
                              hint='five fields "minute hour day month weekday", e.g. '
                                   '"0 2 * * *"; or @hourly, @daily, @weekly, @monthly') from None
        fields = self.expr.split()
        hour = fields[1] if len(fields) >= 5 else ""
        # @hourly has a wildcard hour; @daily & co. a fixed one.
        self.hour_wildcard = self.expr == "@hourly" or hour in ("*", "*/1")

    def _repeat(self, d: datetime) -> bool:
        """``d`` is the second pass of a wall time the fall-back transition repeats."""
        naive = d.replace(tzinfo=None)
        first = naive.replace(tzinfo=self.tz, fold=0).utcoffset()
        second = naive.replace(tzinfo=self.tz, fold=1).utcoffset()
        return first != second and d.utcoffset() == second and d.utcoffset() != first

    def after(self, t: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``t`` (aware), ascending, as aware times in the zone."""
        it = croniter(self.expr, t.astimezone(self.tz))
        while True:
            d: datetime = it.get_next(datetime)
            if self._repeat(d) and not self.hour_wildcard:
                continue
            yield d

    def next_after(self, t: datetime) -> datetime:
        return next(self.after(t))

    def prev_before(self, t: datetime) -> datetime:
        """The last fire time at or before ``t``."""
        it = croniter(self.expr, t.astimezone(self.tz))
        while True:
            d: datetime = it.get_prev(datetime)
            if self._repeat(d) and not self.hour_wildcard:
                continue
            return d

    def upcoming(self, t: datetime, n: int) -> list[datetime]:
        out = []
        for d in self.after(t):
            out.append(d)
            if len(out) == n:
                return out
        return out
