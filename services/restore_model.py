"""What flows through a restore: the request, the validated plan (its checks and its steps),
what the restore will change (the blast radius), and the report. Frozen where it can be; no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dcb.services.config import Config
from dcb.services.errors import DcbError
from dcb.services.safe_tar import Listing
from dcb.services.store import Artifact, BackupSet

if TYPE_CHECKING:
    from dcb.services.restore_steps import Step

class RestoreError(DcbError):
    pass


@dataclass(frozen=True)
class Target:
    """Where a set is restored: the live stack, or a drill's sandbox."""

    postgres_container: str
    postgres_user: str
    password: str | None
    volumes: dict[str, str]
    """Artifact volume name -> Docker volume name."""
    app_containers: tuple[str, ...]
    postgres_data_volume: str
    sandbox: bool = False

    @classmethod
    def live(cls, cfg: Config) -> Target:
        s = cfg.stack
        return cls(postgres_container=s.postgres_container, postgres_user=s.postgres_user,
                   password=cfg.postgres_password(), volumes={v: v for v in s.volumes},
                   app_containers=s.app_containers, postgres_data_volume=s.postgres_data_volume)


def pg_data_artifact(artifacts: tuple[Artifact, ...] | list[Artifact],
                     configured: str) -> Artifact | None:
    """The volume artifact holding PostgreSQL's data directory: taken with pg_basebackup
    (whatever the volume's name), or a legacy set's raw copy of ``postgres_data_volume``."""
    for a in artifacts:
        if a.kind != "volume":
            continue
        if a.source.get("method") == "pg_basebackup" or (
                a.source.get("legacy") and a.name == configured):
            return a
    return None


@dataclass(frozen=True)
class RestoreRequest:
    set_id: str
    databases: tuple[str, ...] | None = None
    volumes: tuple[str, ...] | None = None
    target_db: str | None = None
    """``--as NAME``: restore the one selected database under another name."""
    safety_backup: bool = True
    """Keep a way back (an undo point, or a safety set where moving is impossible)."""
    delta: bool = False
    """Keep volume files that pass rsync's quick check instead of rewriting everything."""
    roles: bool = False
    """``--roles``: reset existing roles to the backup's (missing roles are always created)."""
    validate_now: bool = True
    """Read every archive and dump through now. False (a confirmed CLI restore): a staged
    restore reads them as it stages them, before anything live changes, instead of twice."""


@dataclass(frozen=True)
class Check:
    """One check of the validation: what was checked, and whether it ran."""

    what: str
    ok: bool | None
    """True: checked and good; None: not checked (the detail says why)."""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class RestorePlan:
    set: BackupSet
    databases: tuple[Artifact, ...]
    volumes: tuple[Artifact, ...]
    globals: Artifact | None
    target_db: str | None
    undo: str
    """``move`` (undo point, nothing copied), ``safety`` (a safety set) or ``none``."""
    stop_containers: tuple[str, ...]
    stops_postgres: bool
    steps: tuple[Step, ...]
    listings: dict[str, Listing] = field(default_factory=dict, compare=False, repr=False)
    digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    """SHA-256 of each volume archive as validated (legacy sets have none in their manifest):
    the extraction must read the same bytes."""
    notes: tuple[str, ...] = ()
    delta: bool = False
    roles: bool = False
    starts_postgres: bool = False
    """PostgreSQL is stopped and a database step needs it: started first."""
    checks: tuple[Check, ...] = ()
    missing_containers: tuple[str, ...] = ()
    """App containers that do not exist: nothing to stop or start."""
    staged: bool = False
    """Volumes extracted into their undo volumes and databases into temporary ones while the
    stack runs, then swapped in by renames: the app is down for seconds."""
    volume_targets: dict[str, str] = field(default_factory=dict)
    """Volume in the set -> the Docker volume it is restored into (PostgreSQL's data volume:
    the one its container mounts, whatever the names)."""
    pg_data: str | None = None
    """The volume in the set that is PostgreSQL's data volume (restored with the server
    stopped), if selected."""
    pg_data_subdir: str = "."
    """Where in that volume the data directory is (``PGDATA`` below the mount)."""

    def docker_volume(self, name: str) -> str:
        return self.volume_targets[name]

    def is_pg_data(self, a: Artifact) -> bool:
        return a.kind == "volume" and a.name == self.pg_data

    @property
    def confirm_token(self) -> str:
        return self.set.id

    @property
    def safety_backup(self) -> bool:
        return self.undo != "none"

    @property
    def estimate_seconds(self) -> float:
        return sum(s.estimate_seconds for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "set_id": self.set.id, "databases": [a.name for a in self.databases],
            "volumes": [a.name for a in self.volumes], "target_db": self.target_db,
            "roles": self.globals is not None, "reset_roles": self.roles,
            "safety_backup": self.safety_backup, "undo": self.undo,
            "stop_containers": list(self.stop_containers), "stops_postgres": self.stops_postgres,
            "starts_postgres": self.starts_postgres,
            "missing_containers": list(self.missing_containers),
            "estimate_seconds": round(self.estimate_seconds, 1), "notes": list(self.notes),
            "delta": self.delta, "staged": self.staged,
            "volume_targets": dict(self.volume_targets), "postgres_data_volume": self.pg_data,
            "checks": [c.to_json() for c in self.checks],
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass
class StepRecord:
    key: str
    title: str
    started_at: str
    seconds: float = 0.0
    outcome: str = "running"
    detail: str = ""


@dataclass
class RestoreReport:
    restore_id: str
    set_id: str
    ok: bool = False
    steps: list[StepRecord] = field(default_factory=list)
    safety_set_id: str | None = None
    undo_point: bool = False
    """An undo point holds what was replaced (``dcb undo RESTORE_ID``)."""
    verification: dict[str, list[str]] = field(default_factory=dict)
    """Per database/volume that was checked: the differences found (empty: equal)."""
    checked: dict[str, list[str]] = field(default_factory=dict)
    """Per database/volume: what was compared (row counts, properties, file list)."""
    not_checked: dict[str, list[str]] = field(default_factory=dict)
    """Per database/volume: what could not be checked, and why."""
    error: str | None = None
    cancelled: bool = False
    state: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    undo: str | None = None
    seconds: float = 0.0
    finished: bool = False
    """False while the restore runs (a killed run's incident log stays so)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeChange:
    name: str
    docker_volume: str
    exists: bool
    size_bytes: int | None
    used_by: tuple[str, ...]
    restored_bytes: int | None


@dataclass(frozen=True)
class DatabaseChange:
    name: str
    exists: bool | None
    """None: PostgreSQL is not running, so it could not be asked."""
    size_bytes: int | None
    connections: int | None
    dump_bytes: int
    rows: int | None


@dataclass(frozen=True)
class BlastRadius:
    """What a restore will change, measured now: each volume's size and users, each
    database's size and live connections, the containers stopped and started again."""

    volumes: tuple[VolumeChange, ...]
    databases: tuple[DatabaseChange, ...]
    stop_containers: tuple[str, ...]
    stops_postgres: bool
    starts_postgres: bool
    missing_containers: tuple[str, ...]

    def lines(self) -> list[str]:
        from dcb.services import formatting as fmt

        out = []
        for v in self.volumes:
            now = (f"now {fmt.size(v.size_bytes)}, used by {', '.join(v.used_by) or 'no container'}"
                   if v.exists else "does not exist now (created)")
            out.append(f"volume {v.docker_volume}: {now} -> replaced by "
                       f"{fmt.size(v.restored_bytes)} from the backup")
        for d in self.databases:
            if d.exists is None:
                now = "PostgreSQL not running: size unknown"
            elif d.exists:
                now = f"now {fmt.size(d.size_bytes)}, {d.connections} live connections"
            else:
                now = "does not exist now (created)"
            rows = f" ({d.rows:,} rows)" if d.rows else ""
            out.append(f"database {d.name}: {now} -> replaced by the backup's "
                       f"{fmt.size(d.dump_bytes)} dump{rows}")
        out.append("containers stopped and started again: "
                   + (", ".join(self.stop_containers) or "none"))
        if self.stops_postgres:
            out.append("PostgreSQL is stopped (its data volume is replaced)")
        if self.starts_postgres:
            out.append("PostgreSQL is not running: it is started first")
        out += [f"app container {n} does not exist: nothing to stop or start"
                for n in self.missing_containers]
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
