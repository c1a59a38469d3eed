"""``dcb prune``: apply the retention plan to the store, under the store's lock."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

from dcb.services.backup import append_history
from dcb.services.config import Config
from dcb.services.lock import StoreLock
from dcb.services.retention import Decision, plan
from dcb.services.store import BackupSet, BackupStore


@dataclass(frozen=True)
class PruneResult:
    decisions: tuple[Decision, ...]
    removed: tuple[str, ...]
    freed_bytes: int


def plan_prune(cfg: Config, now: datetime | None = None) -> list[Decision]:
    return plan(BackupStore.for_config(cfg).list_sets(), cfg.retention, now or datetime.now(UTC))


def _remove(s: BackupSet) -> int:
    if s.legacy:
        freed = 0
        for a in s.artifacts:
            p = s.path / a.file
            with contextlib.suppress(OSError):
                freed += p.stat().st_size
                p.unlink()
        for meta in s.path.glob(f"backup_{s.id.removeprefix('legacy-')}.meta"):
            meta.unlink(missing_ok=True)
        return freed
    freed = sum(f.stat().st_size for f in s.path.rglob("*") if f.is_file())
    shutil.rmtree(s.path)
    return freed


def prune(cfg: Config, *, dry_run: bool = False, now: datetime | None = None) -> PruneResult:
    root = cfg.backup_dir
    if not root.is_dir():
        return PruneResult((), (), 0)
    with StoreLock(root, "dcb prune"):
        decisions = plan_prune(cfg, now)
        if dry_run:
            return PruneResult(tuple(decisions), (), 0)
        removed, freed = [], 0
        for d in decisions:
            if not d.keep:
                freed += _remove(d.set)
                removed.append(d.set.id)
        if removed:
            append_history(root, {"kind": "prune", "at": datetime.now(UTC).isoformat(),
                                  "removed": removed, "freed_bytes": freed})
        return PruneResult(tuple(decisions), tuple(removed), freed)
