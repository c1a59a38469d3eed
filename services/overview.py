"""What the console's dashboard shows about the backup store, computed without Textual."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dcb.services.config import Config
from dcb.services.replicate import DestinationState, destination_states, replicated_summary
from dcb.services.running import RunningSet, running_sets
from dcb.services.state import state_for
from dcb.services.store import BackupSet, BackupStore


@dataclass(frozen=True)
class SetRow:
    set: BackupSet
    verified: str
    """``ok``, ``ok (deep)``, ``FAILED`` or ``-``."""
    replicated: str = "-"
    running: RunningSet | None = None
    """Set while a run is writing this set (it has no manifest yet)."""


@dataclass(frozen=True)
class StoreOverview:
    rows: tuple[SetRow, ...]
    bytes_by_kind: dict[str, int] = field(default_factory=dict)
    last_good: datetime | None = None
    last_failure: dict[str, Any] | None = None
    last_drill: dict[str, Any] | None = None
    destinations: tuple[DestinationState, ...] = ()
    """Each ``[replication.NAME]``: newest copy, lag, last error (from the ledger)."""


def store_overview(cfg: Config) -> StoreOverview:
    sets = BackupStore.for_config(cfg).list_sets()
    history = state_for(cfg).read_history()
    verified: dict[str, dict[str, Any]] = {}
    last_failure = last_drill = None
    for h in history:
        kind = h.get("kind")
        if kind == "verify":
            verified[h["id"]] = h
        elif kind == "backup" and h.get("status") == "failed":
            last_failure = h
        elif kind == "drill":
            last_drill = h
    rows = []
    by_kind: dict[str, int] = {}
    dests = len(cfg.replication.destinations)
    copies = replicated_summary(cfg) if dests else {}
    running = running_sets(state_for(cfg).root, sets)  # where the lock lives
    for s in sets:
        v = verified.get(s.id)
        vtext = "-" if v is None else (("ok" if v.get("ok") else "FAILED")
                                       + (" (deep)" if v.get("deep") else ""))
        rtext = "-" if not dests or s.status != "complete" else \
            f"{len(copies.get(s.id, ()))}/{dests}"
        rows.append(SetRow(s, vtext, rtext, running=running.get(s.id)))
        for a in s.artifacts:
            key = {"database": "databases", "globals": "databases"}.get(a.kind, "volumes")
            by_kind[key] = by_kind.get(key, 0) + a.size_bytes
    good = [s.created_at for s in sets if s.status in ("complete", "legacy")]
    return StoreOverview(rows=tuple(rows), bytes_by_kind=by_kind,
                         last_good=max(good) if good else None,
                         last_failure=last_failure, last_drill=last_drill,
                         destinations=tuple(destination_states(cfg, sets=sets)))
