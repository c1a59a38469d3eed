"""``dcb prune``: preview the retention plan, then delete exactly what the preview showed.

A flow a user confirms is data first: ``preview`` returns a ``PrunePlan`` (read only, no
lock), the front end shows it, and ``execute(cfg, plan)`` removes exactly the sets that plan
removes, under the store's lock. Before deleting anything it plans again on the store as it is
now; if any set the preview removes has changed or vanished, or the current rules would keep it
(say a newer copy of its volume was deleted meanwhile), nothing is removed and ``PlanChanged``
carries the new plan to show. Sets the current rules would remove but the preview did not show
(a new backup moved the buckets) are left alone and reported as ``also_removable``.

``prune`` plans and removes in one hold of the lock: for ``dcb prune --yes`` and
``dcb backup --prune``, where nothing is shown before.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcb.services.config import Config, RetentionConfig
from dcb.services.errors import DcbError
from dcb.services.lock import StoreLock
from dcb.services.retention import Decision, plan, undo_windows
from dcb.services.state import StateDir, state_for
from dcb.services.store import MANIFEST, BackupSet, BackupStore


@dataclass(frozen=True)
class PrunePlan:
    """Every set of the store with its decision, as shown to the user."""

    decisions: tuple[Decision, ...]
    made_at: datetime
    policy: RetentionConfig = field(default_factory=RetentionConfig)
    keep_undo_hours: float = 24.0

    @property
    def removals(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if not d.keep)

    @property
    def bytes_to_free(self) -> int:
        """The removed sets' size as their manifests record it."""
        return sum(d.set.size_bytes for d in self.removals)

    def to_json(self) -> dict[str, Any]:
        return {"made_at": self.made_at.isoformat(), "sets": [_decision_json(d)
                                                             for d in self.decisions]}


@dataclass(frozen=True)
class PruneResult:
    plan: PrunePlan
    removed: tuple[str, ...]
    freed_bytes: int
    also_removable: tuple[str, ...] = ()
    """Sets the rules would remove now that the executed preview did not show: left alone."""

    @property
    def decisions(self) -> tuple[Decision, ...]:
        return self.plan.decisions


class PlanChanged(DcbError):
    """The store changed since the preview in a way that changes what would be removed."""

    def __init__(self, message: str, current: PrunePlan) -> None:
        super().__init__(message, hint="nothing was removed; review the new plan")
        self.current = current


def _decision_json(d: Decision) -> dict[str, Any]:
    return {"id": d.set.id, "status": d.set.status, "purpose": d.set.purpose,
            "created_at": d.set.created_at.isoformat(), "size_bytes": d.set.size_bytes,
            "keep": d.keep, "reasons": list(d.reasons),
            "kept_by": [{"kind": k.item.kind, "name": k.item.name, "item": k.item.label,
                         "rules": list(k.rules)} for k in d.kept_by]}


def _plan_store(cfg: Config, policy: RetentionConfig, keep_undo_hours: float,
                now: datetime | None) -> PrunePlan:
    root = cfg.backup_dir
    sets: list[BackupSet] = BackupStore.for_config(cfg).list_sets() if root.is_dir() else []
    history = state_for(cfg).read_history() if root.is_dir() else []
    when = now or datetime.now(UTC)
    decisions = plan(sets, policy, when, undo_windows(history, keep_undo_hours))
    return PrunePlan(tuple(decisions), when, policy, keep_undo_hours)


def preview(cfg: Config, now: datetime | None = None) -> PrunePlan:
    """What prune would do now, without changing anything (takes no lock)."""
    return _plan_store(cfg, cfg.retention, cfg.restore.keep_undo_hours, now)


def _identity(s: BackupSet) -> tuple[Any, ...]:
    """What a removal was shown as: a set that differs in any of this is another set."""
    return (s.id, s.status, s.purpose, s.created_at, s.path,
            tuple((a.kind, a.name, a.file, a.size_bytes, a.sha256) for a in s.artifacts))


def _stale(shown: PrunePlan, current: PrunePlan) -> list[str]:
    """Why the removals ``shown`` cannot be executed as they are on the ``current`` store."""
    now_by_id = {d.set.id: d for d in current.decisions}
    problems = []
    for d in shown.removals:
        cur = now_by_id.get(d.set.id)
        if cur is None:
            problems.append(f"set {d.set.id} is gone")
        elif _identity(cur.set) != _identity(d.set):
            problems.append(f"set {d.set.id} changed")
        elif cur.keep:
            problems.append(f"set {d.set.id} is now kept ({'; '.join(cur.reasons)})")
    return problems


def execute(cfg: Config, shown: PrunePlan, now: datetime | None = None) -> PruneResult:
    """Remove exactly the sets ``shown`` removes, or raise ``PlanChanged`` and remove nothing.

    Raises ``LockedError`` while another run holds the store.
    """
    root = cfg.backup_dir
    if not shown.removals:
        return PruneResult(shown, (), 0)
    if not root.is_dir():
        raise PlanChanged(f"the backup dir {root} is gone",
                          _plan_store(cfg, shown.policy, shown.keep_undo_hours, now))
    with StoreLock.for_config(cfg, "dcb prune"):
        current = _plan_store(cfg, shown.policy, shown.keep_undo_hours, now)
        problems = _stale(shown, current)
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise PlanChanged("the backup store changed since the preview: "
                              + "; ".join(problems[:3]) + more, current)
        removed, freed = _remove_all(state_for(cfg), shown.removals)
        shown_ids = {d.set.id for d in shown.removals}
        also = tuple(d.set.id for d in current.removals if d.set.id not in shown_ids)
        return PruneResult(shown, removed, freed, also)


def prune(cfg: Config, now: datetime | None = None) -> PruneResult:
    """Plan and remove in one hold of the lock (nothing was shown, nothing can go stale)."""
    root = cfg.backup_dir
    if not root.is_dir():
        return PruneResult(preview(cfg, now), (), 0)
    with StoreLock.for_config(cfg, "dcb prune"):
        p = preview(cfg, now)
        removed, freed = _remove_all(state_for(cfg), p.removals)
        return PruneResult(p, removed, freed)


def _remove_all(state: StateDir, removals: Sequence[Decision]) -> tuple[tuple[str, ...], int]:
    removed: list[str] = []
    freed = 0
    try:
        for d in removals:
            freed += _remove(d.set)
            removed.append(d.set.id)
    except OSError as e:
        raise DcbError(f"could not remove set {d.set.id}: {e.strerror or e}",
                       hint=(f"removed before it: {', '.join(removed)}; " if removed else "")
                       + "fix the cause and run dcb prune again") from None
    finally:
        if removed:
            state.append_history({"kind": "prune", "at": datetime.now(UTC).isoformat(),
                                  "removed": removed, "freed_bytes": freed})
    return tuple(removed), freed


def _remove(s: BackupSet) -> int:
    """Delete one set; returns the bytes freed. A dcb set loses its manifest first (its commit
    marker), so one interrupted half way lists as incomplete, never as complete."""
    if s.legacy:
        freed = 0
        for a in s.artifacts:
            p = s.path / a.file
            try:
                freed += p.stat().st_size
                p.unlink()
            except FileNotFoundError:
                pass
        for meta in s.path.glob(f"backup_{s.id.removeprefix('legacy-')}.meta"):
            meta.unlink(missing_ok=True)
        return freed
    freed = sum(f.stat().st_size for f in s.path.rglob("*") if f.is_file())
    manifest = s.path / MANIFEST
    if manifest.exists():
        manifest.unlink()
        fd = os.open(s.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    shutil.rmtree(s.path)
    return freed
