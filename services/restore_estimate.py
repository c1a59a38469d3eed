"""How long each step of a restore plan will take, and where that figure comes from.

A restore's time is mostly pg_restore and file creation, which a constant rate models badly
(a 608 MB database once planned at ~0.5 s took 9.4 s). So each step is estimated, in order:

1. from the same step of past restores of the same item (``database:functions_db``), scaled
   to the item's size now;
2. else from the throughput measured for its kind (database, volume) in past restores of
   items large enough that fixed costs do not dominate;
3. else from a conservative default, said to be a guess.

Samples come from the incident logs in the state dir: every restore and drill writes one with
each step's measured seconds and, since this module, the bytes it moved. Pure apart from
reading those files.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcb.services import formatting as fmt

if TYPE_CHECKING:
    from dcb.services.restore_steps import Step

MIB = 1024 * 1024
DEFAULT_RATE = {"database": 20 * MIB, "volume": 30 * MIB}
"""Bytes/s when nothing was measured: below what pg_restore and tar reach on a slow 2-core
machine (PERFORMANCE.md: ~60-100 MB/s for databases, ~60 MB/s for many small files)."""
FIXED = {"database": 2.0, "volume": 1.0}
"""Seconds a data step costs whatever its size (create, swap, analyze; mount, rename)."""
THROUGHPUT_MIN_BYTES = 16 * MIB
"""Smaller samples say more about fixed costs than about throughput."""
RECENT = 5
"""Past restores of one item considered (the newest)."""
SCAN_LIMIT = 60
"""Incident logs read (the newest): enough history, bounded time to plan."""

GUESS = "a guess: no restore measured yet"


@dataclass(frozen=True)
class Sample:
    """One step of one past restore that ended well."""

    key: str
    """The step's key: ``database:NAME``, ``volume:NAME``, ``verify``, ``stop``..."""
    seconds: float
    bytes: int | None = None
    """Bytes the step moved (the artifact's raw size); None for old logs and fixed steps."""

    @property
    def kind(self) -> str:
        return self.key.partition(":")[0] if ":" in self.key else ""


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str


def samples_from_incident(data: Mapping[str, Any]) -> list[Sample]:
    """The steps of one incident log that completed, with what they moved."""
    plan_steps = (data.get("plan") or {}).get("steps") or []
    moved = {s.get("key"): s.get("bytes") for s in plan_steps if isinstance(s, dict)}
    out: list[Sample] = []
    for s in (data.get("report") or {}).get("steps") or []:
        if not isinstance(s, dict) or s.get("outcome") != "ok":
            continue
        key, seconds = s.get("key"), s.get("seconds")
        if not isinstance(key, str) or not isinstance(seconds, int | float) or seconds < 0:
            continue
        b = moved.get(key)
        out.append(Sample(key, float(seconds), int(b) if isinstance(b, int) and b > 0 else None))
    return out


def read_samples(dirs: Iterable[Path], limit: int = SCAN_LIMIT) -> list[Sample]:
    """Samples of the newest ``limit`` incident logs in ``dirs``, oldest first (restore ids
    sort by time). Unreadable or foreign files are skipped."""
    files: dict[str, Path] = {}
    for d in dirs:
        with contextlib.suppress(OSError):
            for p in d.glob("restore-*.json"):
                files.setdefault(p.name, p)
    out: list[Sample] = []
    for name in sorted(files)[-limit:]:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(files[name].read_text(encoding="utf-8"))
            if isinstance(data, dict):
                out += samples_from_incident(data)
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Estimator:
    """Estimates for one plan's steps from past samples (oldest first)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.by_key: dict[str, list[Sample]] = {}
        for s in samples:
            self.by_key.setdefault(s.key, []).append(s)
        self.samples = list(samples)

    def data_step(self, key: str, nbytes: int) -> Estimate:
        """A step that moves ``nbytes`` of a database or volume (``key`` = kind:name)."""
        kind, _, name = key.partition(":")
        same = self.by_key.get(key, [])[-RECENT:]
        if same:
            values = [self._scaled(s, kind, nbytes) for s in same]
            return Estimate(statistics.median(values),
                            f"from {_plural(len(same), 'past restore')} of {name}")
        big = [s for s in self.samples if s.kind == kind and s.bytes
               and s.bytes >= THROUGHPUT_MIN_BYTES][-2 * RECENT:]
        if big:
            rate = sum(s.bytes or 0 for s in big) / max(sum(s.seconds for s in big), 1e-3)
            return Estimate(max(nbytes / rate, FIXED.get(kind, 1.0)),
                            f"from measured {kind} throughput ({fmt.rate(rate)})")
        return Estimate(FIXED.get(kind, 1.0) + nbytes / DEFAULT_RATE.get(kind, 20 * MIB),
                        GUESS)

    @staticmethod
    def _scaled(s: Sample, kind: str, nbytes: int) -> float:
        """A past duration brought to today's size: proportionally for a big item, else the
        past time plus the growth at the default rate (small items are mostly fixed costs)."""
        if s.bytes is None:
            return s.seconds
        if s.bytes >= THROUGHPUT_MIN_BYTES:
            return s.seconds * nbytes / s.bytes
        return max(s.seconds + (nbytes - s.bytes) / DEFAULT_RATE.get(kind, 20 * MIB), 0.1)

    def fixed_step(self, key: str, default: float) -> Estimate:
        """A step that moves no data of its own (stop, start, undo point, verify)."""
        same = self.by_key.get(key, [])[-RECENT:]
        if same:
            return Estimate(statistics.median(s.seconds for s in same),
                            f"from {_plural(len(same), 'past restore')}")
        return Estimate(default, GUESS)

    def apply(self, steps: Sequence[Step], sizes: Mapping[str, int]) -> tuple[Step, ...]:
        """``steps`` with their estimates and sources; ``sizes``: step key -> bytes moved."""
        out: list[Step] = []
        for st in steps:
            if st.key in sizes:
                e = self.data_step(st.key, sizes[st.key])
                out.append(replace(st, estimate_seconds=e.seconds, estimate_source=e.source,
                                   bytes=sizes[st.key]))
            else:
                e = self.fixed_step(st.key, st.estimate_seconds)
                out.append(replace(st, estimate_seconds=e.seconds, estimate_source=e.source))
        if any(s.key == "safety" and s.estimate_source == GUESS for s in out):
            half = sum(s.estimate_seconds for s in out if s.key in sizes) / 2
            out = [replace(s, estimate_seconds=half,
                           estimate_source="half of the data steps' estimate")
                   if s.key == "safety" else s for s in out]
        return tuple(out)
