"""Which backup sets ``dcb prune`` keeps: pure logic, no I/O.

The rules follow restic's ``forget --keep-last/--keep-daily/--keep-weekly/--keep-monthly``
(``internal/restic/snapshot_policy.go``), applied to the *good* sets (status ``complete`` or
``legacy``) sorted newest first:

* ``keep_last`` N keeps the N newest good sets.
* ``keep_daily`` N keeps the newest set of each of the N most recent distinct days that hold
  a good set. The days are counted back from the newest set, not from ``now``: a gap of a month
  without backups uses up no slots.
* ``keep_weekly`` and ``keep_monthly`` do the same with ISO year-week and year-month buckets.

Days, weeks and months are computed in UTC. A set may be kept by several rules; each one is
listed with its 1-based bucket number, as restic counts them: ``("daily 3", "weekly 1")``.

dcb adds safety rules on top:

* The newest good set is always kept (``"newest complete"``), whatever the policy.
* A policy whose ``keep_*`` are all 0 keeps every good set (``"no retention policy"``): a
  missing policy never deletes everything.
* ``incomplete`` sets are kept while at most a day old (a run may still be writing them) and
  removed when older than a day.
* ``failed`` sets are always removed: they hold no usable data.
* A set with any other status is kept (``"unknown status 'x'"``): never delete what dcb
  does not understand.
* A good set dated after ``now`` (clock skew) is kept, and left out of the bucket counting
  entirely, so it never uses up a slot nor pushes out another set. "newest complete" then
  goes to the newest good set that is not in the future.

One difference from restic 0.17+: restic also keeps the *oldest* snapshot when a rule still
has slots left; dcb keeps strictly the newest set of each bucket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dcb.services.config import RetentionConfig
from dcb.services.store import BackupSet

GOOD_STATUSES = frozenset({"complete", "legacy"})
INCOMPLETE_GRACE = timedelta(days=1)

REASON_NEWEST = "newest complete"
REASON_NO_POLICY = "no retention policy"
REASON_FUTURE = "in the future (clock skew)"
REASON_RUNNING = "incomplete, may still be running"
REASON_STALE = "incomplete, older than 1 day"
REASON_FAILED = "failed run"
REASON_REMOVE = "remove"


@dataclass(frozen=True)
class Decision:
    """What to do with one set, and why."""

    set: BackupSet
    keep: bool
    reasons: tuple[str, ...]
    """Why it is kept (``"daily 1"``, ``"weekly 1"``, ``"newest complete"``...), or why it
    goes (``"remove"``, ``"failed run"``, ``"incomplete, older than 1 day"``)."""


def _utc(d: datetime) -> datetime:
    """``d`` in UTC; a naive datetime is taken to be UTC already."""
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def _day(d: datetime) -> tuple[int, ...]:
    return (d.year, d.month, d.day)


def _week(d: datetime) -> tuple[int, ...]:
    iso = d.isocalendar()
    return (iso.year, iso.week)


def _month(d: datetime) -> tuple[int, ...]:
    return (d.year, d.month)


_BUCKETERS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("daily", _day),
    ("weekly", _week),
    ("monthly", _month),
)


def _policy_reasons(
    good: Sequence[BackupSet], policy: RetentionConfig
) -> dict[int, list[str]]:
    """Reasons to keep, by index into ``good`` (sorted newest first), for the keep_* rules."""
    reasons: dict[int, list[str]] = {}
    for i in range(min(policy.keep_last, len(good))):
        reasons.setdefault(i, []).append(f"last {i + 1}")
    counts = {
        "daily": policy.keep_daily,
        "weekly": policy.keep_weekly,
        "monthly": policy.keep_monthly,
    }
    for name, bucket_of in _BUCKETERS:
        limit = counts[name]
        used = 0
        last: tuple[int, ...] | None = None
        for i, s in enumerate(good):
            if used >= limit:
                break
            bucket = bucket_of(_utc(s.created_at))
            if bucket != last:
                used += 1
                last = bucket
                reasons.setdefault(i, []).append(f"{name} {used}")
    return reasons


def plan(sets: Sequence[BackupSet], policy: RetentionConfig, now: datetime) -> list[Decision]:
    """Decide, for every set, whether ``dcb prune`` keeps it; newest first.

    The result has one decision per input set, ordered by ``created_at`` newest first (sets
    with equal timestamps stay in input order). Raises ``ValueError`` for a negative keep_*.
    """
    counts = (policy.keep_last, policy.keep_daily, policy.keep_weekly, policy.keep_monthly)
    if any(c < 0 for c in counts):
        raise ValueError(f"retention counts must be >= 0, got {policy}")
    now = _utc(now)
    ordered = sorted(sets, key=lambda s: _utc(s.created_at), reverse=True)

    # Good sets that take part in the bucket counting: not in the future.
    good = [s for s in ordered if s.status in GOOD_STATUSES and _utc(s.created_at) <= now]
    no_policy = not any(counts)
    by_index = _policy_reasons(good, policy)
    # Keyed by id(): BackupSet holds a dict, so it is not hashable.
    kept_by: dict[int, list[str]] = {}
    for i, s in enumerate(good):
        rs = [REASON_NO_POLICY] if no_policy else by_index.get(i, [])
        if i == 0:
            rs = [*rs, REASON_NEWEST]
        kept_by[id(s)] = rs

    decisions: list[Decision] = []
    for s in ordered:
        created = _utc(s.created_at)
        if s.status == "failed":
            decisions.append(Decision(s, False, (REASON_FAILED,)))
        elif s.status == "incomplete":
            if now - created > INCOMPLETE_GRACE:
                decisions.append(Decision(s, False, (REASON_STALE,)))
            else:
                decisions.append(Decision(s, True, (REASON_RUNNING,)))
        elif s.status not in GOOD_STATUSES:
            # Never delete what we do not understand.
            decisions.append(Decision(s, True, (f"unknown status {s.status!r}",)))
        elif created > now:
            decisions.append(Decision(s, True, (REASON_FUTURE,)))
        elif kept_by.get(id(s)):
            decisions.append(Decision(s, True, tuple(kept_by[id(s)])))
        else:
            decisions.append(Decision(s, False, (REASON_REMOVE,)))
    return decisions
