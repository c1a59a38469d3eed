"""``dcb status``: one snapshot of the stack, the volumes and the backup store."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dcb.services.config import Config
from dcb.services.coverage import Coverage, coverage
from dcb.services.disk import DiskUsage, disk_usage
from dcb.services.docker_gateway import ContainerInfo, DockerGateway


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    role: str
    """``postgres`` or ``app``."""
    info: ContainerInfo | None
    """None when the container does not exist."""


@dataclass(frozen=True)
class VolumeStatus:
    name: str
    exists: bool
    size_bytes: int | None
    used_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackupSummary:
    count: int
    newest_id: str | None = None
    newest_created_at: datetime | None = None


@dataclass(frozen=True)
class UndoPointStatus:
    restore_id: str
    set_id: str
    state: str
    """verified, failed, interrupted, undone (what the restore wrote waits for release)..."""
    mode: str
    keeps: str
    held_bytes: int | None
    """Disk space it holds (undo volumes, kept databases), as far as known."""
    created_at: str
    expires_at: str | None

    @property
    def command(self) -> str:
        return (f"dcb undo --release {self.restore_id}" if self.state == "undone"
                else f"dcb undo {self.restore_id}")

    def to_json(self) -> dict[str, Any]:
        return {"restore_id": self.restore_id, "set_id": self.set_id, "state": self.state,
                "mode": self.mode, "keeps": self.keeps, "held_bytes": self.held_bytes,
                "created_at": self.created_at, "expires_at": self.expires_at,
                "command": self.command}


@dataclass(frozen=True)
class StackStatus:
    collected_at: datetime
    containers: tuple[ContainerStatus, ...]
    volumes: tuple[VolumeStatus, ...]
    disk: DiskUsage
    backup_dir: str
    backups: BackupSummary
    problems: tuple[str, ...] = field(default=())
    """Human-readable problems (a missing container, volume or database): exit code 4."""
    undo_points: tuple[UndoPointStatus, ...] = field(default=())
    """Restores that can still be undone (or whose undone data waits for release)."""
    coverage: Coverage | None = None
    """What is and is not backed up; None when not collected."""
    store_warnings: tuple[str, ...] = ()
    """The backup store open to other users (services/permissions.py)."""

    @property
    def warnings(self) -> tuple[str, ...]:
        """What is not protected, may be inconsistent, or is open to others: said, but not
        an error."""
        return (self.coverage.warnings if self.coverage is not None else ()) + \
            self.store_warnings

    def to_json(self) -> dict[str, Any]:
        now = self.collected_at
        return {
            "collected_at": now.isoformat(),
            "containers": [
                {
                    "name": c.name,
                    "role": c.role,
                    "exists": c.info is not None,
                    "state": c.info.state if c.info else "missing",
                    "health": c.info.health if c.info else None,
                    "image": c.info.image if c.info else None,
                    "started_at": c.info.started_at.isoformat()
                    if c.info and c.info.started_at else None,
                    "uptime_seconds": c.info.uptime_seconds(now) if c.info else None,
                }
                for c in self.containers
            ],
            "volumes": [
                {"name": v.name, "exists": v.exists, "size_bytes": v.size_bytes,
                 "used_by": list(v.used_by)}
                for v in self.volumes
            ],
            "disk": {
                "path": self.disk.path,
                "total_bytes": self.disk.total_bytes,
                "used_bytes": self.disk.used_bytes,
                "free_bytes": self.disk.free_bytes,
            },
            "backup_dir": self.backup_dir,
            "backups": {
                "count": self.backups.count,
                "newest_id": self.backups.newest_id,
                "newest_created_at": self.backups.newest_created_at.isoformat()
                if self.backups.newest_created_at else None,
            },
            "problems": list(self.problems),
            "undo_points": [u.to_json() for u in self.undo_points],
            "warnings": list(self.warnings),
            "coverage": self.coverage.to_json() if self.coverage is not None else None,
        }


def summarize_backups(cfg: Config) -> BackupSummary:
    # Imported here: the store module is heavier and status must work without a store.
    from dcb.services.store import BackupStore

    sets = [s for s in BackupStore.for_config(cfg).list_sets()
            if s.status in ("complete", "legacy")]
    if not sets:
        return BackupSummary(count=0)
    newest = max(sets, key=lambda s: s.created_at)
    return BackupSummary(count=len(sets), newest_id=newest.id, newest_created_at=newest.created_at)


def collect_status(cfg: Config, gateway: DockerGateway, *,
                   with_coverage: bool = True) -> StackStatus:
    """Ask Docker and the filesystem for the current state; raises ``DockerUnavailable``.

    ``with_coverage`` also lists every database and stack volume with what protects it (one
    query in the PostgreSQL container, services/coverage.py)."""
    problems: list[str] = []
    containers: list[ContainerStatus] = []
    roles = [(cfg.stack.postgres_container, "postgres")] + [
        (n, "app") for n in cfg.stack.app_containers if n != cfg.stack.postgres_container
    ]
    for name, role in roles:
        info = gateway.find_container(name)
        if info is None:
            problems.append(f"container {name!r} not found")
        containers.append(ContainerStatus(name=name, role=role, info=info))

    sizes = gateway.volume_sizes()
    volumes: list[VolumeStatus] = []
    for vname in cfg.stack.volumes:
        exists = vname in sizes or _volume_exists(gateway, vname)
        if not exists:
            problems.append(f"volume {vname!r} not found")
            volumes.append(VolumeStatus(name=vname, exists=False, size_bytes=None))
            continue
        users = tuple(c.name for c in gateway.containers_using_volume(vname))
        volumes.append(VolumeStatus(name=vname, exists=True, size_bytes=sizes.get(vname),
                                    used_by=users))

    from dcb.services.state import state_for
    cov = coverage(cfg, gateway, sizes) if with_coverage else None
    if cov is not None:
        problems += [f"database {i.name!r} not found in {cfg.stack.postgres_container}"
                     for i in cov.missing if i.kind == "database"]

    from dcb.services.stopped import StoppedLedger

    for name, by in StoppedLedger(state_for(cfg).root).pending().items():
        problems.append(f"{name} was stopped by an interrupted dcb {by} and not started again "
                        "(the next backup or restore starts it; or `docker start` it)")
    from dcb.services.permissions import lax_modes

    lax = lax_modes(cfg.backup_dir)
    return StackStatus(
        store_warnings=(lax,) if lax else (),
        undo_points=undo_point_status(cfg, sizes),
        collected_at=datetime.now(UTC),
        containers=tuple(containers),
        volumes=tuple(volumes),
        disk=disk_usage(cfg.backup_dir),
        backup_dir=str(cfg.backup_dir),
        backups=summarize_backups(cfg),
        problems=tuple(problems),
        coverage=cov,
    )


def undo_point_status(cfg: Config, volume_sizes: dict[str, int]) -> tuple[UndoPointStatus, ...]:
    """The undo points of the configuration's restores (services/undo.py)."""
    from dcb.services.undo_flow import list_points

    out = []
    for p in list_points(cfg):
        held = p.held_bytes + sum(volume_sizes.get(v.undo_volume or "", 0) for v in p.volumes)
        if p.mode == "safety" and p.safety_set_id:
            with contextlib.suppress(Exception):
                from dcb.services.store import BackupStore

                held += BackupStore.for_config(cfg).get(p.safety_set_id).size_bytes
        out.append(UndoPointStatus(p.restore_id, p.set_id, p.state, p.mode, p.describe(),
                                   held, p.created_at, p.expires_at))
    return tuple(out)


def _volume_exists(gateway: DockerGateway, name: str) -> bool:
    from dcb.services.errors import NotFound

    try:
        gateway.volume(name)
    except NotFound:
        return False
    return True
