"""Undo points: the way back from a restore, kept without copying anything.

Before a restore replaces a database or a volume it records an undo point
(``<state dir>/undo/<restore id>.json``), then:

* a replaced **database** is renamed ``NAME__dcb_undo_<restore id>`` (connections refused)
  instead of being dropped after the swap;
* a replaced **volume**'s directory is renamed into a labelled undo volume
  (``dcb.undo=<restore id>``), ``<undo volume>/_data/replaced``, and the restore extracts into
  a fresh, empty directory. Both volumes live under the engine's volumes directory, so this is a
  rename on one filesystem, through the mountpoints dcb reaches as root beside the engine.

What did not exist before (a dropped database, a removed volume) is recorded as absent.
``dcb undo RESTORE_ID`` swaps everything back in seconds; what the restore had put in place
goes aside (``..._dcb_discard_...`` databases, ``<undo volume>/_data/discarded-N``) and is
dropped when the point is released: by ``dcb undo --release ID``, or automatically
``[restore] keep_undo_hours`` after the restore verified (right away after an undo).

Where moving is impossible (volumes reached through helper containers, another filesystem,
``--delta``), the restore falls back to a safety set: a normal backup of what it replaces,
labelled ``purpose="safety"`` with the restore id; ``dcb undo`` then restores that set.

Every step is idempotent and driven by what exists on disk and in PostgreSQL, so an undo (or
a release) that is itself interrupted is finished by running it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker.errors

from dcb.services.artifacts import atomic_write_bytes
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError, NotFound, UsageError
from dcb.services.pg_objects import fit_identifier, ident, literal
from dcb.services.postgres import PgGateway
from dcb.services.progress import LogLine, Reporter
from dcb.services.store import MANIFEST, BackupStore

UNDO_DIR = "undo"
LABEL = "dcb.undo"
"""Label of undo volumes: the restore id."""
LABEL_OF = "dcb.undo.of"
"""Label of undo volumes: the volume whose contents they hold."""
REPLACED = "replaced"
STAGED = "staged"
"""Where a staged restore extracts the archive before the swap."""
DISCARDED = "discarded"
RESTORE_ID_RE = re.compile(r"^restore-\d{8}T\d{6}Z(-\d+)?$")

# Point states. A point is "live" (holds data, can be undone) in these:
LIVE_STATES = ("preparing", "active", "verified", "failed", "interrupted")


class UndoError(DcbError):
    pass


def check_restore_id(value: str) -> str:
    if not RESTORE_ID_RE.match(value):
        raise UsageError(f"{value!r} is not a restore id (restore-YYYYMMDDTHHMMSSZ)",
                         hint="`dcb status` lists undo points, `dcb history` restores")
    return value


def undo_db_name(name: str, restore_id: str) -> str:
    return fit_identifier(name, f"__dcb_undo_{restore_id}")


def discard_db_name(name: str, restore_id: str) -> str:
    return fit_identifier(name, f"__dcb_discard_{restore_id}")


def undo_volume_name(volume: str, restore_id: str) -> str:
    return f"{volume}__dcb_undo_{restore_id}"


@dataclass
class DbItem:
    name: str
    """The live database the restore replaces (``--as`` name included)."""
    undo_name: str
    existed: bool
    """False: the database did not exist before the restore (undo removes it)."""
    allow_connections: bool = True
    size_bytes: int | None = None
    covered_by_volume: bool = False
    """PostgreSQL's data volume is restored too: the old database travels with it."""
    swapped: bool = False
    """The restored database is live (the old one kept under ``undo_name``)."""


@dataclass
class VolumeItem:
    name: str
    """The volume's name in the configuration and the set."""
    docker_volume: str
    undo_volume: str | None
    existed: bool
    moved: bool = False
    size_bytes: int | None = None
    subdir: str = "."
    """What is moved: the volume's directory, or PostgreSQL's data directory below it
    (``PGDATA`` in a subdirectory of the volume)."""

    def live_dir(self, gw: DockerGateway) -> Path:
        return Path(gw.volume(self.docker_volume).mountpoint) / self.subdir


@dataclass
class UndoPoint:
    restore_id: str
    set_id: str
    created_at: str
    mode: str
    """``move`` (renamed databases, moved volume contents) or ``safety`` (a safety set)."""
    state: str = "preparing"
    """preparing, active (restore running), verified, failed, interrupted, undone, released."""
    postgres_container: str = ""
    postgres_data_volume: str = ""
    safety_set_id: str | None = None
    databases: list[DbItem] = field(default_factory=list)
    volumes: list[VolumeItem] = field(default_factory=list)
    verified_at: str | None = None
    expires_at: str | None = None
    undone_at: str | None = None
    released_at: str | None = None
    note: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def held_bytes(self) -> int:
        """What the point keeps on disk, as far as recorded (databases' sizes)."""
        return sum(d.size_bytes or 0 for d in self.databases if d.existed and d.swapped)

    def expires(self) -> datetime | None:
        return datetime.fromisoformat(self.expires_at) if self.expires_at else None

    def describe(self) -> str:
        parts = [f"database {d.name}" + ("" if d.existed else " (did not exist)")
                 for d in self.databases if not d.covered_by_volume]
        parts += [f"volume {v.name}" + ("" if v.existed else " (did not exist)")
                  for v in self.volumes]
        how = (f"safety set {self.safety_set_id}" if self.mode == "safety" and
               self.safety_set_id else "kept in place" if self.mode == "move" else self.mode)
        return f"{', '.join(parts) or 'nothing'} ({how})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UndoPoint:
        data = dict(d)
        dbs = [DbItem(**x) for x in data.pop("databases", [])]
        vols = [VolumeItem(**x) for x in data.pop("volumes", [])]
        return cls(**data, databases=dbs, volumes=vols)


class UndoStore:
    """Undo point records under a state directory (the backup dir by default)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / UNDO_DIR

    def path(self, restore_id: str) -> Path:
        return self.dir / f"{check_restore_id(restore_id)}.json"

    def load(self, restore_id: str) -> UndoPoint:
        path = self.path(restore_id)
        try:
            data = json.loads(path.read_text())
            return UndoPoint.from_json(data)
        except FileNotFoundError:
            raise NotFound(f"no undo point for {restore_id}",
                           hint="`dcb status` lists undo points; a restore made with "
                                "--no-safety-backup has none") from None
        except (OSError, ValueError, TypeError) as e:
            raise UndoError(f"{path}: unreadable undo point: {e}") from None

    def save(self, point: UndoPoint, durable: bool = True) -> None:
        """Write the record atomically; ``durable=False`` skips the fsyncs (a record written
        while a restore moves gigabytes would wait behind their writeback; a killed process
        loses nothing, and recovery goes by what exists on disk)."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json(self.path(point.restore_id), point.to_json(), durable)

    def list(self) -> list[UndoPoint]:
        """Every recorded point, newest first (unreadable records are skipped)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("restore-*.json"), reverse=True):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                out.append(UndoPoint.from_json(json.loads(p.read_text())))
        return out


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Temp file and rename; with ``durable``, fsynced (services/artifacts.py)."""
    payload = json.dumps(data, indent=2).encode()
    if durable:
        atomic_write_bytes(path, payload)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UndoError(f"cannot write {path}: {e.strerror}") from None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- volumes: moving contents aside and back ----------------------------------------------------
def same_filesystem(a: str | Path, b: str | Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def create_undo_volume(gw: DockerGateway, point: UndoPoint, item: VolumeItem) -> str:
    """The labelled, empty undo volume for ``item``; its mountpoint must be on the same
    filesystem as the volume's (else the move would be a copy)."""
    name = undo_volume_name(item.docker_volume, point.restore_id)
    try:
        gw.client.volumes.create(name, labels={LABEL: point.restore_id,
                                               LABEL_OF: item.docker_volume})
    except docker.errors.APIError as e:
        raise UndoError(f"cannot create the undo volume {name}: {e.explanation or e}") from None
    item.undo_volume = name
    dst = gw.volume(name).mountpoint
    # An absent volume is created later beside this one: the same filesystem by construction.
    src = gw.volume(item.docker_volume).mountpoint if item.existed else dst
    if not same_filesystem(src, dst):
        remove_volume(gw, name)
        item.undo_volume = None
        raise UndoError(f"volume {item.docker_volume} is on another filesystem than the "
                        "engine's volumes: its contents cannot be moved aside",
                        hint="restore with --no-safety-backup, or set [storage] "
                             "volume_access = \"helper\" to take a safety set instead")
    return name


def move_aside(gw: DockerGateway, item: VolumeItem) -> None:
    """Rename the volume's directory into its undo volume and put an empty one with the same
    owner and mode in its place. Idempotent (a rerun after a crash finishes the job)."""
    assert item.undo_volume is not None
    src = item.live_dir(gw)
    dst = Path(gw.volume(item.undo_volume).mountpoint) / REPLACED
    if not dst.exists():
        if not src.exists():  # PostgreSQL's data directory below an emptied volume: none
            return
        os.rename(src, dst)
    ensure_directory(src, like=dst)
    item.moved = True


def ensure_directory(path: Path, like: Path) -> None:
    """Recreate a volume's directory that a move took away (same owner and mode)."""
    if path.exists():
        return
    st = os.lstat(like)
    os.mkdir(path, 0o700)
    os.chown(path, st.st_uid, st.st_gid)
    os.chmod(path, stat.S_IMODE(st.st_mode))


def _next_discard(base: Path) -> Path:
    n = 1
    while (base / f"{DISCARDED}-{n}").exists():
        n += 1
    return base / f"{DISCARDED}-{n}"


def swap_back_volume(gw: DockerGateway, item: VolumeItem, report: Reporter) -> str:
    """Put the volume's replaced contents back; what the restore wrote goes aside into the
    undo volume. Returns what happened."""
    try:
        target_info = gw.volume(item.docker_volume)
    except NotFound:
        target_info = None
    if item.undo_volume is None:
        return f"volume {item.name}: nothing was moved"
    try:
        undo_root = Path(gw.volume(item.undo_volume).mountpoint)
    except NotFound:
        raise UndoError(f"the undo volume {item.undo_volume} of {item.name} is gone "
                        "(removed by hand or by `docker volume prune`?)") from None
    replaced = undo_root / REPLACED
    if item.existed:
        if not replaced.exists():
            return f"volume {item.name}: already as before the restore"
        if target_info is None:
            gw.client.volumes.create(item.docker_volume)
            target_info = gw.volume(item.docker_volume)
        target = Path(target_info.mountpoint) / item.subdir
        if target.exists():
            os.rename(target, _next_discard(undo_root))
        os.rename(replaced, target)
        return f"volume {item.name}: previous contents back"
    # The volume did not exist before the restore: take it away again.
    if target_info is None:
        return f"volume {item.name}: already gone, as before the restore"
    target = Path(target_info.mountpoint)
    if target.exists():
        os.rename(target, _next_discard(undo_root))
        os.mkdir(target, 0o755)
    try:
        gw.client.volumes.get(item.docker_volume).remove()
    except docker.errors.APIError as e:
        report(LogLine(f"volume {item.docker_volume} did not exist before the restore but "
                       f"cannot be removed ({e.explanation or e}): left empty", "warning"))
        return f"volume {item.name}: emptied (it did not exist before; still in use)"
    return f"volume {item.name}: removed (it did not exist before the restore)"


def remove_volume(gw: DockerGateway, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        gw.client.volumes.get(name).remove(force=True)


# -- databases ----------------------------------------------------------------------------------
def swap_back_databases(pg: PgGateway, point: UndoPoint, items: list[DbItem]) -> list[str]:
    """Put the replaced databases back under their names; the restored ones are renamed aside
    (dropped at release). One psql run for all of them. Returns what happened, per database.
    """
    names = pg.database_names()
    script: list[str] = []
    done: list[str] = []
    for item in items:
        discard = discard_db_name(item.name, point.restore_id)
        tmp = fit_identifier(item.name, "__dcb_restore")
        if tmp in names:
            script.append(f"DROP DATABASE {ident(tmp)} WITH (FORCE);")
        if item.covered_by_volume:
            done.append(f"database {item.name}: back with PostgreSQL's data volume")
        elif item.existed:
            if item.undo_name not in names:
                if item.name not in names:
                    raise UndoError(f"database {item.name}: neither it nor its undo copy "
                                    f"{item.undo_name} exists")
                done.append(f"database {item.name}: already as before the restore")
                continue
            if item.name in names:
                script += _rename_away_sql(pg, item.name, discard, names)
            script.append(f"ALTER DATABASE {ident(item.undo_name)} RENAME TO "
                          f"{ident(item.name)};")
            script.append(f"ALTER DATABASE {ident(item.name)} WITH ALLOW_CONNECTIONS "
                          f"{'true' if item.allow_connections else 'false'};")
            done.append(f"database {item.name}: previous database back")
        elif item.name in names:
            script += _rename_away_sql(pg, item.name, discard, names)
            done.append(f"database {item.name}: removed (it did not exist before the restore)")
        else:
            done.append(f"database {item.name}: already gone, as before the restore")
    if script:
        pg.run_script("\n".join(script) + "\n", what="swapping the databases back")
    return done


def _rename_away_sql(pg: PgGateway, name: str, to: str, names: set[str]) -> list[str]:
    out = [f"DROP DATABASE {ident(to)} WITH (FORCE);"] if to in names else []
    return out + rename_sql(pg, name, to)


def rename_sql(pg: PgGateway, name: str, to: str) -> list[str]:
    """Rename a database that clients may be using: refuse new connections, end the open
    ones (waiting until they are gone, PostgreSQL 14+), rename."""
    wait = ", 10000" if pg.server_major() >= 14 else ""
    return [f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS false;",
            f"SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity "
            f"WHERE datname = {literal(name)} AND pid <> pg_backend_pid();",
            f"ALTER DATABASE {ident(name)} RENAME TO {ident(to)};"]


def rename_database(pg: PgGateway, name: str, to: str) -> None:
    """:func:`rename_sql` in one psql run; retried a few times (before PostgreSQL 14 a
    terminated session may still be leaving when the rename comes)."""
    for attempt in range(10):
        try:
            pg.run_script("\n".join(rename_sql(pg, name, to)) + "\n",
                          what=f"renaming database {name}")
            return
        except DcbError:
            if attempt == 9:
                with contextlib.suppress(DcbError):
                    pg.query(f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS true")
                raise
            time.sleep(0.3)


# -- release --------------------------------------------------------------------------------------
def release_point(point: UndoPoint, gw: DockerGateway, pg: PgGateway | None,
                  store: BackupStore, report: Reporter) -> list[str]:
    """Drop what the point keeps (undo databases, discarded databases, undo volumes, the
    safety set). Returns what could not be released (the point stays until then)."""
    left: list[str] = []
    names: set[str] | None = None
    if any(not d.covered_by_volume for d in point.databases) and pg is not None:
        try:
            names = pg.database_names()
        except DcbError as e:
            left.append(f"databases: PostgreSQL not reachable ({e.message})")
    for d in point.databases:
        if names is None or d.covered_by_volume:
            continue
        for n in (d.undo_name, discard_db_name(d.name, point.restore_id)):
            if n in names and n != d.name:
                try:
                    pg.query(f"DROP DATABASE {ident(n)} WITH (FORCE)")  # type: ignore[union-attr]
                    report(LogLine(f"dropped {n}"))
                except DcbError as e:
                    left.append(f"database {n}: {e.message}")
    for v in point.volumes:
        if v.undo_volume:
            try:
                remove_volume(gw, v.undo_volume)
                report(LogLine(f"removed volume {v.undo_volume}"))
            except docker.errors.APIError as e:
                left.append(f"volume {v.undo_volume}: {e.explanation or e}")
    if point.safety_set_id:
        with contextlib.suppress(NotFound):
            s = store.get(point.safety_set_id)
            if s.extra.get("restore_id") == point.restore_id and (s.path / MANIFEST).exists():
                shutil.rmtree(s.path, ignore_errors=True)
                report(LogLine(f"removed safety set {s.id}"))
    return left


def expiry(hours: float, at: datetime | None = None) -> str:
    return ((at or datetime.now(UTC)) + timedelta(hours=hours)).isoformat(timespec="seconds")


def due(point: UndoPoint, now: datetime | None = None) -> bool:
    """Released automatically: verified (or undone) and past its window."""
    exp = point.expires()
    return (point.state in ("verified", "undone") and exp is not None
            and exp <= (now or datetime.now(UTC)))
