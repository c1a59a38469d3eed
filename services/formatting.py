"""Human formatting shared by the CLI and the TUI (sizes, ages, durations)."""

from __future__ import annotations

from datetime import UTC, datetime

import humanize

_fixed_now: datetime | None = None


def now() -> datetime:
    """The current time for display; tests pin it (``pin_now``) for deterministic screens."""
    return _fixed_now or datetime.now(UTC)


def pin_now(when: datetime | None) -> None:
    global _fixed_now
    _fixed_now = when


def size(n: int | None) -> str:
    return "-" if n is None else humanize.naturalsize(n, binary=True)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return humanize.precisedelta(int(seconds), minimum_unit="seconds", format="%0.0f")


def uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return humanize.naturaldelta(seconds)


def age(when: datetime | None, at: datetime | None = None) -> str:
    if when is None:
        return "never"
    return humanize.naturaltime((at or now()) - when)


def rate(bytes_per_second: float | None) -> str:
    if not bytes_per_second:
        return "-"
    return humanize.naturalsize(bytes_per_second, binary=True) + "/s"
