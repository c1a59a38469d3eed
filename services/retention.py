"""Which backup sets ``dcb prune`` keeps: pure logic, no I/O.

**Per item.** A set holds artifacts of *items*: each database, each volume, and the roles
(the globals dump). The rules are applied to each item separately, over the good sets (status
``complete`` or ``legacy``) that hold an artifact of it, sorted newest first, like restic
applies its policy to each group of paths. A set is removed only when no rule keeps any of its
items: a databases-only set that is newer never pushes out the last copies of a volume.

The rules follow restic's ``forget --keep-last/--keep-daily/--keep-weekly/--keep-monthly``
(``internal/restic/snapshot_policy.go``), over the sets that hold the item:

* ``keep_last`` N keeps the N newest.
* ``keep_daily`` N keeps the newest of each of the N most recent distinct days that hold a
  copy. The days are counted back from the newest copy, not from ``now``: a month without
  backups uses up no slots.
* ``keep_weekly`` and ``keep_monthly`` do the same with ISO year-week and year-month buckets.

Days, weeks and months are computed in UTC. An item may be kept in a set by several rules;
each one is listed with its 1-based bucket number, as restic counts them. The reasons of a
kept set name the items that keep it: ``"volume functions_data: daily 2, weekly 1"``.

Databases and the roles follow ``policy.for_group("databases")``, volumes
``policy.for_group("volumes")`` (``[retention.databases]`` / ``[retention.volumes]``, each
key defaulting to ``[retention]``'s).

dcb adds safety rules on top:

* The newest good copy of each item is always kept (``"newest copy"``), whatever the policy.
* A group whose ``keep_*`` are all 0 keeps every copy of its items (``"no retention
  policy"``): a missing policy never deletes everything.
* ``incomplete`` sets are kept while at most a day old (a run may still be writing them) and
  removed when older than a day.
* ``failed`` sets are always removed: they hold no usable data.
* A set with any other status, or a purpose dcb does not know, is kept: never delete what
  dcb does not understand.
* A good set dated after ``now`` (clock skew) is kept and left out of the counting, so it never
  uses up a slot nor pushes out another set; "newest copy" then goes to the newest copy that is
  not in the future.
* A good set holding no artifact at all is removed (it holds nothing), unless every group's
  policy is all zeros.

**Safety sets** (``purpose = "safety"``: a restore's snapshot of what it replaced) are outside
the counting: they neither use up slots nor count as an item's newest copy. Each is kept until
its restore's undo window ends (``UndoWindow.ends_at``: the restore's finish time plus
``[restore] keep_undo_hours``) and removed after. When the window is unknown it is kept:

* its restore failed or did not verify (``ends_at`` None): the set is the way back to the state
  before that restore, so it stays until removed by hand;
* its restore has no entry (still running, or killed before it recorded its end), or the set
  names no restore: kept as well.

Releasing the undo point (``dcb undo --release``, or automatically after the window) records
an ``undo-release`` entry, which ends the window at once.

One difference from restic 0.17+: restic also keeps the *oldest* snapshot when a rule still
has slots left; dcb keeps strictly the newest copy of each bucket.

``plan`` takes any list of sets and a mapping of undo windows, so the same rules apply to the
local store and to any other place holding sets (a replication destination).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dcb.services.config import RETENTION_GROUPS, RetentionConfig
from dcb.services.store import Artifact, BackupSet

GOOD_STATUSES = frozenset({"complete", "legacy"})
INCOMPLETE_GRACE = timedelta(days=1)
PURPOSE_BACKUP = "backup"
PURPOSE_SAFETY = "safety"

REASON_NEWEST = "newest copy"
REASON_NO_POLICY = "no retention policy"
REASON_FUTURE = "in the future (clock skew)"
REASON_RUNNING = "incomplete, may still be running"
REASON_STALE = "incomplete, older than 1 day"
REASON_FAILED = "failed run"
REASON_EMPTY = "holds no artifact"
REASON_REMOVE = "remove"

_KIND_ORDER = {"database": 0, "globals": 1, "volume": 2}


@dataclass(frozen=True, order=True)
class Item:
    """What a set holds a copy of: a database, a volume or the roles."""

    kind: str
    """``database``, ``volume`` or ``globals`` (the roles), as in the manifest."""
    name: str

    @property
    def label(self) -> str:
        return "roles" if self.kind == "globals" else f"{self.kind} {self.name}"

    @property
    def group(self) -> str:
        """Whose policy applies: ``volumes`` for volumes, ``databases`` for the rest."""
        return "volumes" if self.kind == "volume" else "databases"

    @classmethod
    def of(cls, a: Artifact) -> Item:
        return cls(a.kind, a.name)


@dataclass(frozen=True)
class ItemKeep:
    """One item that keeps a set, and the rules that keep it there."""

    item: Item
    rules: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.item.label}: {', '.join(self.rules)}"


@dataclass(frozen=True)
class UndoWindow:
    """What retention knows about the restore a safety set can undo."""

    ends_at: datetime | None
    """When the undo window ends (the restore's finish time plus ``keep_undo_hours``);
    None: never by itself (the restore failed or did not verify)."""
    note: str = ""
    """Why there is no end, e.g. ``failed``; shown in the reason."""


@dataclass(frozen=True)
class Decision:
    """What to do with one set, and why."""

    set: BackupSet
    keep: bool
    reasons: tuple[str, ...]
    """Why it is kept (``"volume functions_data: daily 2"``, ``"database dart_cloud, roles:
    daily 1, newest copy"``, ``"undo for restore-... until ..."``), or why it goes
    (``"remove"``, ``"failed run"``, ``"incomplete, older than 1 day"``...)."""
    kept_by: tuple[ItemKeep, ...] = ()
    """For a backup set kept by the rules: each item that keeps it, with its rules."""


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
    copies: Sequence[BackupSet], policy: RetentionConfig
) -> dict[int, list[str]]:
    """Reasons to keep, by index into ``copies`` (sorted newest first), for the keep_* rules."""
    reasons: dict[int, list[str]] = {}
    for i in range(min(policy.keep_last, len(copies))):
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
        for i, s in enumerate(copies):
            if used >= limit:
                break
            bucket = bucket_of(_utc(s.created_at))
            if bucket != last:
                used += 1
                last = bucket
                reasons.setdefault(i, []).append(f"{name} {used}")
    return reasons


def _item_order(item: Item) -> tuple[int, str, str]:
    return (_KIND_ORDER.get(item.kind, 9), item.kind, item.name)


def items_of(s: BackupSet) -> list[Item]:
    """The items ``s`` holds a copy of: databases, then the roles, then volumes."""
    return sorted({Item.of(a) for a in s.artifacts}, key=_item_order)


def describe(kept_by: Iterable[ItemKeep]) -> tuple[str, ...]:
    """Reasons for display: items with the same rules share one line
    (``"database dart_cloud, roles: daily 1"``), in item order."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for k in kept_by:
        groups.setdefault(k.rules, []).append(k.item.label)
    return tuple(f"{', '.join(labels)}: {', '.join(rules)}" for rules, labels in groups.items())


def _fmt_time(d: datetime) -> str:
    return _utc(d).strftime("%Y-%m-%d %H:%M UTC")


def _safety_decision(s: BackupSet, undo: Mapping[str, UndoWindow], now: datetime) -> Decision:
    rid = s.extra.get("restore_id")
    if not isinstance(rid, str) or not rid:
        return Decision(s, True, ("safety snapshot of an unknown restore: kept until removed "
                                  "by hand",))
    w = undo.get(rid)
    if w is None:
        return Decision(s, True, (f"undo for {rid}, which recorded no end (still running, "
                                  "or interrupted): kept",))
    if w.ends_at is None:
        return Decision(s, True, (f"undo for {rid}, which {w.note or 'did not verify'}: "
                                  "kept until removed by hand",))
    if now < _utc(w.ends_at):
        return Decision(s, True, (f"undo for {rid} until {_fmt_time(w.ends_at)}",))
    return Decision(s, False, (f"undo window of {rid} ended {_fmt_time(w.ends_at)}",))


def _check(policy: RetentionConfig) -> tuple[bool, dict[str, RetentionConfig]]:
    """The effective policy of each group, and whether every one of them is all zeros."""
    groups = {g: policy.for_group(g) for g in RETENTION_GROUPS}
    for p in (policy, *groups.values()):
        if any(c < 0 for c in p.counts()):
            raise ValueError(f"retention counts must be >= 0, got {policy}")
    return not any(any(p.counts()) for p in groups.values()), groups


def plan(
    sets: Sequence[BackupSet],
    policy: RetentionConfig,
    now: datetime,
    undo: Mapping[str, UndoWindow] | None = None,
) -> list[Decision]:
    """Decide, for every set, whether ``dcb prune`` keeps it; newest first.

    ``undo`` maps a restore id to its undo window (see ``undo_windows``); a safety set whose
    restore is missing from it is kept. The result has one decision per input set, ordered by
    ``created_at`` newest first (sets with equal timestamps stay in input order). Raises
    ``ValueError`` for a negative keep_*.
    """
    all_zero, group_policy = _check(policy)
    undo = undo or {}
    now = _utc(now)
    ordered = sorted(sets, key=lambda s: _utc(s.created_at), reverse=True)

    # The copies that take part in the counting: good backups, not in the future.
    counted = [s for s in ordered if s.status in GOOD_STATUSES
               and s.purpose == PURPOSE_BACKUP and _utc(s.created_at) <= now]
    holders: dict[Item, list[int]] = {}
    for i, s in enumerate(counted):
        for item in items_of(s):
            holders.setdefault(item, []).append(i)
    # Keyed by index into counted: BackupSet holds a dict, so it is not hashable.
    keeps: dict[int, list[ItemKeep]] = {}
    for item, idxs in holders.items():
        p = group_policy[item.group]
        no_policy = not any(p.counts())
        by_copy = {} if no_policy else _policy_reasons([counted[i] for i in idxs], p)
        for j, i in enumerate(idxs):
            rules = [REASON_NO_POLICY] if no_policy else by_copy.get(j, [])
            if j == 0:
                rules = [*rules, REASON_NEWEST]
            if rules:
                keeps.setdefault(i, []).append(ItemKeep(item, tuple(rules)))
    counted_index = {id(s): i for i, s in enumerate(counted)}

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
        elif s.purpose == PURPOSE_SAFETY:
            decisions.append(_safety_decision(s, undo, now))
        elif s.purpose != PURPOSE_BACKUP:
            decisions.append(Decision(s, True, (f"unknown purpose {s.purpose!r}",)))
        elif created > now:
            decisions.append(Decision(s, True, (REASON_FUTURE,)))
        elif not s.artifacts:
            decisions.append(Decision(s, True, (REASON_NO_POLICY,)) if all_zero
                             else Decision(s, False, (REASON_EMPTY,)))
        elif kept := keeps.get(counted_index[id(s)]):
            kept.sort(key=lambda k: _item_order(k.item))
            decisions.append(Decision(s, True, describe(kept), tuple(kept)))
        else:
            decisions.append(Decision(s, False, (REASON_REMOVE,)))
    return decisions


def undo_windows(history: Iterable[Mapping[str, Any]],
                 keep_undo_hours: float) -> dict[str, UndoWindow]:
    """Each finished restore's undo window, from the run history's ``restore`` entries.

    A restore that verified (``ok``) keeps its way back until ``at`` (its finish time) plus
    ``keep_undo_hours``; one that failed or did not verify has no end (``ends_at`` None).
    An entry without a readable finish time has no end either. An ``undo-release`` entry
    (``dcb undo --release``, or the automatic release) ends the window at its ``at``. The
    last entry of an id wins.
    """
    out: dict[str, UndoWindow] = {}
    for h in history:
        kind = h.get("kind")
        if kind not in ("restore", "undo-release") or not isinstance(h.get("id"), str):
            continue
        try:
            at = _utc(datetime.fromisoformat(str(h["at"])))
        except (KeyError, ValueError):
            if kind == "restore":
                out[h["id"]] = UndoWindow(None, "has no finish time")
            continue
        if kind == "undo-release":
            out[h["id"]] = UndoWindow(at)
        elif h.get("ok") is True:
            out[h["id"]] = UndoWindow(at + timedelta(hours=keep_undo_hours))
        else:
            out[h["id"]] = UndoWindow(None, "failed or did not verify")
    return out
