"""Recovery objectives at a glance: per database and volume, the age of the newest verified
backup against the RPO target, the last drill's measured RTO against the RTO target, and past
restores' incident logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dcb.services.config import Config
from dcb.services.state import state_for
from dcb.services.store import BackupSet, BackupStore


@dataclass(frozen=True)
class Objective:
    kind: str
    name: str
    newest_verified: datetime | None
    newest_any: datetime | None
    rpo_ok: bool


@dataclass(frozen=True)
class Incident:
    id: str
    kind: str
    set_id: str
    ok: bool
    seconds: float | None
    at: str
    steps: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Objectives:
    rpo: timedelta
    rto: timedelta
    items: tuple[Objective, ...]
    last_drill_rto: float | None
    last_drill_ok: bool | None
    last_drill_at: str | None
    incidents: tuple[Incident, ...]

    @property
    def rto_ok(self) -> bool | None:
        if self.last_drill_rto is None:
            return None
        return bool(self.last_drill_ok) and self.last_drill_rto <= self.rto.total_seconds()


def objectives(cfg: Config, now: datetime | None = None) -> Objectives:
    now = now or datetime.now(UTC)
    rpo = timedelta(hours=cfg.objectives.rpo_hours)
    sets = BackupStore.for_config(cfg).list_sets()
    state = state_for(cfg)
    history = state.read_history()
    verified_ok = {h["id"] for h in history if h.get("kind") == "verify" and h.get("ok")}
    drills = [h for h in history if h.get("kind") == "drill"]
    items = []
    wanted = [("database", d) for d in _databases(cfg, sets)] + \
        [("volume", v) for v in cfg.stack.volumes]
    for kind, name in wanted:
        having = [s for s in sets if s.status in ("complete", "legacy")
                  and s.artifact(kind, name) is not None]
        newest_any = max((s.created_at for s in having), default=None)
        verified = [s.created_at for s in having if s.id in verified_ok]
        newest_verified = max(verified, default=None)
        ok = newest_verified is not None and now - newest_verified <= rpo
        items.append(Objective(kind, name, newest_verified, newest_any, ok))
    incidents = []
    logs = [f for d in state.incident_dirs() if d.is_dir() for f in d.glob("*.json")]
    if logs:
        for f in sorted(logs, key=lambda f: f.name, reverse=True)[:20]:
            try:
                data = json.loads(f.read_text())
                r = data["report"]
            except (OSError, ValueError, KeyError):
                continue
            incidents.append(Incident(
                id=r["restore_id"], kind="drill" if data.get("sandbox") else "restore",
                set_id=r["set_id"], ok=bool(r["ok"]), seconds=r.get("seconds"),
                at=(r["steps"][0]["started_at"] if r.get("steps") else ""),
                steps=tuple(r.get("steps") or ())))
    last = drills[-1] if drills else None
    return Objectives(rpo=rpo, rto=timedelta(minutes=cfg.objectives.rto_minutes),
                      items=tuple(items),
                      last_drill_rto=last.get("rto_seconds") if last else None,
                      last_drill_ok=last.get("ok") if last else None,
                      last_drill_at=last.get("at") if last else None,
                      incidents=tuple(incidents))


def _databases(cfg: Config, sets: list[BackupSet]) -> tuple[str, ...]:
    """The configured databases; with ``databases = "all"`` (known only to the cluster),
    those of the newest complete backup."""
    if not cfg.stack.all_databases:
        return cfg.stack.listed_databases
    done = [s for s in sets if s.status == "complete" and s.purpose == "backup"]
    if not done:
        return ()
    newest = max(done, key=lambda s: s.created_at)
    return tuple(a.name for a in newest.artifacts if a.kind == "database")
