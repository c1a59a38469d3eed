"""The steps of a restore: the objects a plan lists, the front ends display and the engine runs.

Each step is a frozen dataclass with a key, a title, an estimate and a ``run(run)`` method
that does the work and returns a one-line detail. :class:`RestoreRun` executes a plan's steps
in order; steps in the ``pool`` lane run in worker threads, concurrently with the main lane
(file creation in the kernel and PostgreSQL use both cores): one worker when live data is
replaced in place (the volumes, one after the other), two in a staged restore, where the
volumes are staged and then the databases, longest first, are restored into temporary
databases by whichever worker is free (work-conserving: a small database does not wait for a
big one while a core idles). A step that ``joins`` waits for the pool first.
Every step is timed into the incident log, written when the step starts and when it ends, so
a run killed with SIGKILL still shows where it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import zstandard

from dcb.services import faults
from dcb.services.artifacts import CHUNK, open_decompressed
from dcb.services.backup import BackupRequest, BackupRun
from dcb.services.docker_exec import StepGuard
from dcb.services.encryption import is_encrypted, open_decrypted_from
from dcb.services.errors import Cancelled, DcbError, NotFound
from dcb.services.pg_objects import (
    DATABASE_STATEMENTS,
    DatabaseProperties,
    checked_script,
    database_properties,
    fit_identifier,
    ident,
    parse_globals,
    roles_script,
)
from dcb.services.progress import (
    ByteMeter,
    LogLine,
    StageFailed,
    StageFinished,
    StageStarted,
    null_reporter,
)
from dcb.services.psql_guard import OLD_PSQL
from dcb.services.replay_role import (
    DumpOwners,
    ReplayRole,
    list_without_default_acls,
    without_owner_statements,
)
from dcb.services.restore_model import (
    RestoreError,
    RestoreReport,
    StepRecord,
    pg_data_artifact,
)
from dcb.services.safe_tar import (
    ExtractError,
    Listing,
    clear_directory,
    extract_archive,
    remove_extraneous,
)
from dcb.services.state import RESTORES_DIR
from dcb.services.store import Artifact
from dcb.services.undo import (
    REPLACED,
    STAGED,
    DbItem,
    UndoPoint,
    UndoStore,
    VolumeItem,
    create_undo_volume,
    expiry,
    move_aside,
    now_iso,
    rename_sql,
    undo_db_name,
    write_json,
)
from dcb.services.volumes import mountpoint_usable

if TYPE_CHECKING:
    from dcb.services.restore import RestoreFlow
    from dcb.services.restore_model import RestorePlan

TMP_SUFFIX = "__dcb_restore"
OLD_SUFFIX = "__dcb_old"
STAGED_PREFIX = ".dcb-restore-staged-"
"""Dumps staged in PostgreSQL's data volume for ``pg_restore -j2``; any left by a killed run
are removed by the next one (services/undo_flow.py)."""
LEGACY_STAGED_PREFIX = ".dcb-restore-"
KEEPER = ('f="$1"; trap \'rm -f "$f"\' EXIT; trap "exit 143" TERM INT HUP; '
          "while read -r _; do :; done")
"""Removes the staged dump ``$1`` when its stdin ends (see ``RestoreRun.stage_dump``)."""
NOTHING_CHANGED = "nothing was changed"


@dataclass
class StagedDump:
    host: str
    """The file through the volume's mountpoint."""
    inside: str
    """The same file as the PostgreSQL container sees it."""
    keeper: Any
    """The container's shell that removes it when its stdin ends."""

    def release(self) -> None:
        with contextlib.suppress(OSError, DcbError):
            self.keeper.close_stdin()
            self.keeper.read_all()
            self.keeper.wait(60)
        self.keeper.close()
        with contextlib.suppress(OSError):
            os.unlink(self.host)


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    estimate_seconds: float = 0.0
    lane: str = "main"
    """``main``, or ``pool``: run by a worker thread, concurrently with the main lane."""
    joins: bool = False
    """Wait for the ``pool`` lane before running."""
    estimate_source: str = ""
    """Where the estimate comes from (services/restore_estimate.py), said beside it."""
    bytes: int = 0
    """What a database or volume step moves (the artifact's raw size): the incident log keeps
    it so later plans scale this step's measured time."""

    changes_data: ClassVar[bool] = False
    """Once a step that changes data has started, a failure leaves something to undo."""

    def run(self, run: RestoreRun) -> str:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "kind": type(self).__name__,
                "estimate_seconds": round(self.estimate_seconds, 1),
                "estimate_source": self.estimate_source, "bytes": self.bytes, "lane": self.lane}


@dataclass(frozen=True)
class StartPostgresStep(Step):
    """PostgreSQL is stopped and a database needs it: start it first (before the undo point,
    which asks it what exists)."""

    def run(self, run: RestoreRun) -> str:
        name = run.target.postgres_container
        try:
            run.gw.client.containers.get(name).start()
        except Exception as e:
            raise RestoreError(f"could not start {name}: {e}") from None
        try:
            run.pg.wait_ready(timeout=run.cfg.timeouts.postgres_ready)
        except DcbError as e:
            art = pg_data_artifact(run.plan.set.artifacts, run.target.postgres_data_volume)
            data = art.name if art else run.target.postgres_data_volume
            raise RestoreError(
                f"PostgreSQL in {name} does not come up: {e.message}",
                hint=f"its data may be damaged: restore its data volume too (--volume {data}), "
                     "then the databases; nothing was changed") from None
        return f"{name} is running"


@dataclass(frozen=True)
class UndoPointStep(Step):
    """Record what will be replaced, create the empty undo volumes (nothing is copied: the
    databases are renamed and the volumes' directories moved when their turn comes)."""

    def run(self, run: RestoreRun) -> str:
        faults.hold("undo-point-start", run.cancel)  # the incident log exists, no point yet
        plan = run.plan
        point = UndoPoint(restore_id=run.rid, set_id=plan.set.id, created_at=now_iso(),
                          mode="move", postgres_container=run.target.postgres_container,
                          postgres_data_volume=plan.pg_data or "")
        for a in plan.databases:
            name = plan.target_db or a.name
            if plan.stops_postgres:
                point.databases.append(DbItem(name, undo_db_name(name, run.rid), existed=True,
                                              covered_by_volume=True))
                continue
            info = run.pg.database_info(name)
            point.databases.append(DbItem(
                name, undo_db_name(name, run.rid), existed=info is not None,
                allow_connections=info.allow_connections if info else True,
                size_bytes=info.size_bytes if info else None))
        for a in plan.volumes:
            docker_name = plan.docker_volume(a.name)
            try:
                run.gw.volume(docker_name)
                existed = True
            except NotFound:
                existed = False
            point.volumes.append(VolumeItem(a.name, docker_name, None, existed,
                                            subdir=plan.pg_data_subdir if plan.is_pg_data(a)
                                            else "."))
        run.point = point
        run.save_point()
        for item in point.volumes:
            if item.existed or plan.staged:
                create_undo_volume(run.gw, point, item)
                run.save_point()
                faults.hold("undo-point", run.cancel)
        point.state = "active"
        run.save_point()
        absent = [f"database {d.name}" for d in point.databases if not d.existed] + \
                 [f"volume {v.name}" for v in point.volumes if not v.existed]
        detail = f"undo point {run.rid}"
        if absent:
            detail += f"; absent now (removed again by an undo): {', '.join(absent)}"
        return detail


@dataclass(frozen=True)
class SafetySetStep(Step):
    """Where moving aside is impossible: a normal backup set of what will be replaced."""

    def run(self, run: RestoreRun) -> str:
        plan = run.plan
        names = run.pg.database_names() if plan.databases and run.flow._pg_running() else set()
        point = UndoPoint(restore_id=run.rid, set_id=plan.set.id, created_at=now_iso(),
                          mode="safety", postgres_container=run.target.postgres_container,
                          postgres_data_volume=plan.pg_data or "")
        for a in plan.databases:
            name = plan.target_db or a.name
            point.databases.append(DbItem(name, undo_db_name(name, run.rid),
                                          existed=name in names,
                                          covered_by_volume=plan.stops_postgres))
        for a in plan.volumes:
            docker_name = plan.docker_volume(a.name)
            try:
                run.gw.volume(docker_name)
                existed = True
            except NotFound:
                existed = False
            point.volumes.append(VolumeItem(a.name, docker_name, None, existed))
        run.point = point
        run.save_point()
        dbs = tuple(d.name for d in point.databases if d.existed)
        vols = tuple(v.name for v in point.volumes if v.existed)
        if not dbs and not vols:
            point.state = "active"
            run.save_point()
            return "nothing to keep: everything this restore writes is absent now"
        safety = BackupRun(run.cfg, run.events, run.cancel).run_locked(
            run.gw, BackupRequest(databases=dbs, volumes=vols, purpose="safety",
                                  restore_id=run.rid))
        point.safety_set_id = safety.id
        point.state = "active"
        run.save_point()
        run.report.safety_set_id = safety.id
        run.events(LogLine(f"safety snapshot {safety.id}: undo with `dcb undo {run.rid}`"))
        return f"safety snapshot {safety.id}"


@dataclass(frozen=True)
class StopStep(Step):
    def run(self, run: RestoreRun) -> str:
        gone = []
        for n in run.plan.stop_containers:
            if run.gw.find_container(n) is None:
                gone.append(n)
                continue
            run.stop_container(n)
            run.stopped.append(n)
        return f"{', '.join(gone)} no longer exist(s)" if gone else ""


@dataclass(frozen=True)
class StopPostgresStep(Step):
    def run(self, run: RestoreRun) -> str:
        c = run.gw.find_container(run.target.postgres_container)
        if c is not None and c.state in ("running", "restarting", "paused"):
            run.stop_container(run.target.postgres_container)
        run.pg_stopped = True
        return ""


@dataclass(frozen=True)
class VolumeStep(Step):
    name: str = ""
    changes_data: ClassVar[bool] = True

    def run(self, run: RestoreRun) -> str:
        a = run.artifact("volume", self.name)
        docker_name = run.plan.docker_volume(a.name)
        gw = run.gw
        try:
            info = gw.volume(docker_name)
        except NotFound:
            gw.client.volumes.create(docker_name, labels=run.compose_volume_labels(docker_name))
            info = gw.volume(docker_name)
            run.events(LogLine(f"created missing volume {docker_name}"))
        if not mountpoint_usable(info.mountpoint):
            raise RestoreError(f"volume {docker_name}: cannot write its mountpoint "
                               f"{info.mountpoint}", hint="run dcb as root on the Docker host")
        pg_data = run.plan.is_pg_data(a)
        # PostgreSQL's data directory: below the mount when PGDATA says so.
        dest = Path(info.mountpoint) / (run.plan.pg_data_subdir if pg_data else ".")
        # PostgreSQL's data dir is always rewritten whole: its files change in place.
        delta = run.plan.delta and not pg_data
        item = run.point_volume(a.name)
        validated = run.plan.listings.get(a.name)
        if validated is None and not delta:
            validated, _ = read_through(run, a)  # never empty a volume for an unread archive
        run.touched.add(self.key)
        if item is not None and item.existed and item.undo_volume is not None:
            move_aside(gw, item)
            run.save_point()
        elif not delta:
            if not dest.exists():
                make_data_dir(dest)
            clear_directory(dest)
        meter = ByteMeter(f"volume {a.name}", run.events, a.source.get("raw_bytes"))
        # Every member is checked again as it is written (and must equal the validated
        # listing); large files go around the page cache (safe_tar._Direct).
        with open_decompressed(run.plan.set.path / a.file, a.compression) as f:
            listing = extract_archive(
                _HoldingReader(f, meter, run.stopping, run.cancel),  # type: ignore[arg-type]
                dest, expected=validated, delta=delta)
        if delta:
            remove_extraneous(dest, listing)
        meter.flush()
        from dcb.services.restore import compare_tree

        # Compared now, before anything starts on the volume: PostgreSQL rewrites its data
        # dir as it boots and an app may write at once.
        run.volume_diffs[a.name] = compare_tree(dest, listing)
        kept = "; previous contents kept in the undo point" if item and item.moved else ""
        return f"{len(listing.entries)} entries{kept}"


def make_data_dir(path: Path) -> None:
    """PostgreSQL's data directory below its volume's root, missing (the volume was emptied):
    owned like the volume's root, mode 0700 as PostgreSQL requires."""
    path.parent.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path.parent)
    os.mkdir(path, 0o700)
    os.chown(path, st.st_uid, st.st_gid)


def read_through(run: RestoreRun, a: Artifact) -> tuple[Listing, str]:
    """Validate a volume archive member by member now, its checksum in the same read; its
    listing and SHA-256."""
    try:
        _check, listing, digest = run.flow._validate_artifact(run.plan.set, a, True)
    except DcbError as e:
        if isinstance(e, Cancelled):
            raise
        raise RestoreError(f"set {run.plan.set.id} failed validation: {a.file}: {e.message}",
                           hint="nothing live was changed; pick another set (`dcb list`)"
                           ) from None
    assert listing is not None
    return listing, digest


def stage_archive(run: RestoreRun, a: Artifact, dest: Path, validated: Listing | None,
                  meter: ByteMeter) -> Listing:
    """Extract a volume's archive into the empty staging directory ``dest`` in one read of
    the stored file: its checksum, decryption, decompression and every member's checks
    (services/safe_tar.py, before the member is written) in the same pass, large files
    written around the page cache. Nothing live is touched, so a member refused or a
    checksum that does not match at the end only fails the restore (the stage is dropped).

    Before, the archive was read through once to validate it and a second time into GNU
    tar: twice the hashing and decompression, and every byte through the page cache, which
    on a 2-core VM cost more CPU than PostgreSQL's replay running beside it (bench/README.md).
    """
    from dcb.services.restore import _decompressed, _HashingReader

    path = run.plan.set.path / a.file
    if path.is_symlink():
        raise RestoreError(f"set {run.plan.set.id} failed validation: {a.file}: a symlink: "
                           "refused", hint="nothing live was changed; pick another set")
    expected = a.sha256 or run.plan.digests.get(a.name)
    # The stored bytes hashed (before decryption and decompression); progress is counted on
    # the decompressed side.
    raw = _HashingReader(path, ByteMeter(a.file, null_reporter, None), run.cancel)
    try:
        plain: Any = open_decrypted_from(raw, a.file) if is_encrypted(path) else raw
        try:
            f = _decompressed(plain, a.compression)
            try:
                listing = extract_archive(
                    _HoldingReader(f, meter, run.stopping, run.cancel),  # type: ignore[arg-type]
                    dest, expected=validated)
            except Cancelled:
                raise
            except (DcbError, OSError, EOFError, zstandard.ZstdError) as e:
                why = getattr(e, "message", None) or str(e)
                try:
                    raw.drain()
                    digest: str | None = raw.hexdigest()
                except (OSError, DcbError):
                    digest = None
                if expected is not None and digest is not None and digest != expected:
                    why = "checksum mismatch (corrupted)"
                if isinstance(e, ExtractError):
                    raise RestoreError(f"volume {a.name}: {why}",
                                       hint="nothing live was changed") from None
                raise RestoreError(f"set {run.plan.set.id} failed validation: {a.file}: {why}",
                                   hint="nothing live was changed; pick another set "
                                        "(`dcb list`)") from None
            while plain.read(CHUNK):
                pass  # age checks every chunk through to the last
        finally:
            if plain is not raw:
                plain.close()
        raw.drain()
        digest = raw.hexdigest()
    finally:
        raw.f.close()
    if expected is not None and digest != expected:
        raise RestoreError(f"set {run.plan.set.id} failed validation: {a.file}: checksum "
                           "mismatch (corrupted)",
                           hint="nothing live was changed; pick another set (`dcb list`)")
    return listing


@dataclass(frozen=True)
class StageVolumeStep(Step):
    """Read the archive through (every member checked) and extract it into the undo volume,
    beside the live directory, while the stack runs. Nothing live changes."""

    name: str = ""

    def run(self, run: RestoreRun) -> str:
        a = run.artifact("volume", self.name)
        item = run.point_volume(a.name)
        if item is None or item.undo_volume is None:
            raise RestoreError(f"volume {a.name}: no undo volume to stage it in")
        gw = run.gw
        undo_root = Path(gw.volume(item.undo_volume).mountpoint)
        if not mountpoint_usable(str(undo_root)):
            raise RestoreError(f"volume {item.undo_volume}: cannot write its mountpoint "
                               f"{undo_root}", hint="run dcb as root on the Docker host")
        staged = undo_root / STAGED
        if staged.exists():
            shutil.rmtree(staged)
        os.mkdir(staged, 0o700)
        like = Path(gw.volume(item.docker_volume).mountpoint) if item.existed else None
        st = os.lstat(like) if like is not None and like.exists() else None
        if st is not None:
            os.chown(staged, st.st_uid, st.st_gid)
        os.chmod(staged, stat.S_IMODE(st.st_mode) if st is not None else 0o755)
        validated = run.plan.listings.get(a.name)
        meter = ByteMeter(f"volume {a.name}", run.events, a.source.get("raw_bytes"))
        listing = stage_archive(run, a, staged, validated, meter)
        meter.flush()
        from dcb.services.restore import compare_tree

        diffs = compare_tree(staged, listing)
        if diffs:
            raise RestoreError(f"volume {a.name}: the extracted tree differs from the archive: "
                               + "; ".join(diffs[:3]), hint="nothing live was changed")
        run.volume_diffs[a.name] = diffs
        return f"{len(listing.entries)} entries"


@dataclass(frozen=True)
class SwapStep(Step):
    """The apps are stopped: the staged volumes and databases take the live ones' places by
    renaming; the live ones go into the undo point."""

    changes_data: ClassVar[bool] = True

    def run(self, run: RestoreRun) -> str:
        point = run.point
        assert point is not None
        gw = run.gw
        run.touched.add(self.key)
        for item in point.volumes:
            assert item.undo_volume is not None
            undo_root = Path(gw.volume(item.undo_volume).mountpoint)
            try:
                live = Path(gw.volume(item.docker_volume).mountpoint)
            except NotFound:
                gw.client.volumes.create(item.docker_volume,
                                         labels=run.compose_volume_labels(item.docker_volume))
                run.events(LogLine(f"created missing volume {item.docker_volume}"))
                live = Path(gw.volume(item.docker_volume).mountpoint)
            if item.existed:
                os.rename(live, undo_root / REPLACED)
                item.moved = True
            elif live.exists():
                os.rmdir(live)  # the new volume's empty directory
            run.save_point()
            os.rename(undo_root / STAGED, live)
            run.swapped.add(f"volume:{item.name}")
            faults.hold("swap", run.cancel)
        if run.staged_dbs:
            self._databases(run)
        return ""

    def _databases(self, run: RestoreRun) -> None:
        pg = run.base_pg  # a few renames: never cut half-way by Ctrl-C
        names = pg.database_names()
        script: list[str] = []
        kept = []
        for target, tmp in run.staged_dbs.items():
            item = run.point_database(target)
            if target in names and item is not None:
                if item.undo_name in names:
                    script.append(f"DROP DATABASE {ident(item.undo_name)} WITH (FORCE);")
                script += rename_sql(pg, target, item.undo_name)
                kept.append(item)
            script.append(f"ALTER DATABASE {ident(tmp)} RENAME TO {ident(target)};")
        try:
            pg.run_script("\n".join(script) + "\n", what="swapping in the databases")
        finally:
            now = run.base_pg.database_names()
            for item in kept:
                item.swapped = item.name in now and item.undo_name in now
            for target, tmp in run.staged_dbs.items():
                if tmp not in now and target in now:
                    run.swapped.add(f"database:{target}")
            run.save_point()


@dataclass(frozen=True)
class PostgresReadyStep(Step):
    def run(self, run: RestoreRun) -> str:
        name = run.target.postgres_container
        if run.pg_stopped or not run.flow._pg_running():
            try:
                run.gw.client.containers.get(name).start()
            except Exception as e:
                raise RestoreError(f"could not start {name}: {e}") from None
            if not run.target.sandbox:
                run.flow.ledger.clear([name])
            run.pg_stopped = False
        run.pg.wait_ready(timeout=run.cfg.timeouts.postgres_ready)
        return ""


@dataclass(frozen=True)
class RolesStep(Step):
    changes_data: ClassVar[bool] = True

    def run(self, run: RestoreRun) -> str:
        a = run.plan.globals
        assert a is not None
        with open_decompressed(run.plan.set.path / a.file, a.compression) as f:
            sql = f.read().decode("utf-8", "replace")
        g = parse_globals(sql)
        existing = run.pg.role_names()
        script, created = roles_script(g, existing, reset_existing=run.plan.roles)
        if created or run.plan.roles:
            # Roles are added (or reset) before the databases are read: a change of its own.
            run.touched.add(self.key)
        run.pg.run_script(script, what="restoring roles")
        kept = len([r for r in g.roles if r in existing])
        parts = [f"created {', '.join(created)}" if created else "no role missing"]
        if run.plan.roles:
            parts.append(f"{kept} existing role(s) reset to the backup's")
        elif kept:
            parts.append(f"{kept} existing role(s) left as they are (--roles resets them)")
        return "; ".join(parts)


@dataclass(frozen=True)
class DatabaseStep(Step):
    name: str = ""
    """The database in the set."""
    target: str = ""
    """The database it becomes (``--as``)."""
    swap: bool = True
    """False in a staged restore: left in its temporary database for the swap step."""
    changes_data: ClassVar[bool] = True

    def run(self, run: RestoreRun) -> str:
        a = run.artifact("database", self.name)
        pg = run.pg
        tmp = fit_identifier(self.target, TMP_SUFFIX)
        names = pg.database_names()
        if tmp in names:
            pg.query(f"DROP DATABASE {ident(tmp)} WITH (FORCE)")
        fmt = a.source.get("format", "plain")
        staged = run.stage_dump(a) if fmt == "custom" else None
        props: DatabaseProperties | None = None
        meter = ByteMeter(f"database {a.name}", run.events, a.source.get("raw_bytes"))
        try:
            props = self._properties(run, a, staged, names)
            # Checked before anything is done (they run as the superuser).
            create = _props_script(props.renamed(tmp).create) if props and props.create else ""
            after = _props_script(props.renamed(tmp).after) if props and props.after else ""
            if create:
                pg.run_script(create,
                              what=f"creating {tmp} with the database's encoding and locale")
            else:
                owner = (pg.query(f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                                  f"WHERE datname = {_lit(self.target)}").strip()
                         if self.target in names else run.target.postgres_user)
                pg.query(f"CREATE DATABASE {ident(tmp)} OWNER {ident(owner)}")
            # The dump is replayed by an unprivileged role of its own (services/replay_role.py)
            role = ReplayRole(run.base_pg, tmp, warn=lambda m: run.events(LogLine(m, "warning")),
                              run=run.rid).open()
            try:
                owners = run.dump_owners.pop(a.name, None) or DumpOwners()
                self._replay(run, a, tmp, staged, meter, role, owners)
                role.finish(owners)
            finally:
                role.drop()
            if after:
                pg.run_script(after, what="restoring the database's settings, comment and "
                                          "grants")
            faults.hold("database", run.cancel)
            if run.stopping():
                raise Cancelled("restore cancelled")
        except BaseException:
            with contextlib.suppress(DcbError):
                run.base_pg.query(f"DROP DATABASE IF EXISTS {ident(tmp)} WITH (FORCE)")
            raise
        finally:
            if staged is not None:
                staged.release()
        meter.flush()
        run.expected_props[self.target] = props.renamed(self.target) if props else None
        if not self.swap:
            run.staged_dbs[self.target] = tmp
            # Checked now, concurrently with the volumes; the swap only renames it.
            run.db_checks[self.target] = check_database(run, a, tmp)
            return f"{meter.done} bytes replayed into {tmp}"
        run.touched.add(self.key)
        self._swap(run, tmp)
        run.swapped.add(f"database:{self.target}")
        return f"{meter.done} bytes replayed"

    def _properties(self, run: RestoreRun, a: Artifact, staged: StagedDump | None,
                    names: set[str]) -> DatabaseProperties | None:
        """The archive's DATABASE entries; for a plain dump (which has none) those of the
        database it replaces, so it keeps its encoding, settings and grants."""
        pg = run.pg
        if a.source.get("format") == "custom":
            if staged is not None:
                sql = pg.archive_properties_sql(path=staged.inside)
            else:
                with open_decompressed(run.plan.set.path / a.file, a.compression) as f:
                    sql = pg.archive_properties_sql(chunks=_chunks(f, run))
            run.dump_owners[a.name] = DumpOwners().read(sql)
            props = database_properties(sql, a.name)
            if not props.empty:
                return props
        if self.target in names:
            props = database_properties(pg.live_properties_sql(self.target), self.target)
            run.props_from_live.add(self.target)
            return props if not props.empty else None
        return None

    def _replay(self, run: RestoreRun, a: Artifact, tmp: str, staged: StagedDump | None,
                meter: ByteMeter, role: ReplayRole, owners: DumpOwners) -> None:
        """Replay the dump into ``tmp`` as ``role`` (never the superuser), without its
        ownership statements; ``owners`` learns a plain dump's owners on the way."""
        pg = role.gateway(run.pg)
        if a.source.get("format", "plain") == "custom":
            cmd = ["pg_restore", *pg.login(), "-d", tmp, "--exit-on-error", "--no-password",
                   "--no-owner"]
        else:
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *pg.login(), "-d", tmp,
                   "-o", "/dev/null", "--no-password"]
        listed = None
        if cmd[0] == "pg_restore":
            listing = _archive_list(run, a, staged)
            owners.read_list(listing)  # large objects' owners: not in --schema-only
            if owners.default_acls:
                # The role may not set another role's default privileges: dcb does, after.
                listed = _list_file(run, list_without_default_acls(listing))
                cmd += ["-L", listed]
        try:
            code, err = self._run_replay(run, a, cmd, staged, meter, pg, owners)
        finally:
            if listed is not None:
                _remove_in_container(run, listed)
        if code != 0:
            if run.stopping():
                raise Cancelled("restore cancelled")
            raise RestoreError(f"restoring {a.name} failed, the old database is "
                               f"untouched: {_first_line(err)}")

    def _run_replay(self, run: RestoreRun, a: Artifact, cmd: list[str],
                    staged: StagedDump | None, meter: ByteMeter, pg: Any,
                    owners: DumpOwners) -> tuple[int, str]:
        if staged is not None:
            # pg_restore -j2 needs a file it can seek: two cores replay the dump.
            with pg.exec([*cmd, "-j", "2", staged.inside]) as p:
                p.read_all()
                code = p.wait()
            meter.add(a.size_bytes)
        else:
            stream = _chunks_of(run, a, meter)
            if cmd[0] == "psql":  # a plain dump: psql's meta-commands refused
                stream = pg.psql_input(without_owner_statements(stream, owners))
                if not pg.restricts:
                    run.events(LogLine(OLD_PSQL.format(
                        container=run.target.postgres_container), "warning"))
            with pg.exec(cmd, stdin=True) as p:
                code = p.feed(stream)
        return code, p.stderr_text

    def _swap(self, run: RestoreRun, tmp: str) -> None:
        """The old database is renamed away only now that the new one is complete: kept as
        the undo point, or dropped (no undo point, or PostgreSQL's data volume restored).
        One psql run (never cut half-way by Ctrl-C); if it fails half-way the old database
        gets its name back."""
        pg = run.base_pg
        names = pg.database_names()
        item = run.point_database(self.target)
        keep = item is not None and run.point is not None and run.point.mode == "move" \
            and not item.covered_by_volume
        aside = None
        script: list[str] = []
        if self.target in names:
            aside = item.undo_name if keep and item else fit_identifier(self.target, OLD_SUFFIX)
            if aside in names:
                script.append(f"DROP DATABASE {ident(aside)} WITH (FORCE);")
            script += rename_sql(pg, self.target, aside)
        script.append(f"ALTER DATABASE {ident(tmp)} RENAME TO {ident(self.target)};")
        if aside and not keep:
            script.append(f"DROP DATABASE {ident(aside)} WITH (FORCE);")
        try:
            pg.run_script("\n".join(script) + "\n", what=f"swapping in {self.target}")
        except DcbError:
            now = pg.database_names()
            if aside and aside in now and self.target not in now:
                with contextlib.suppress(DcbError):
                    pg.query(f"ALTER DATABASE {ident(aside)} RENAME TO {ident(self.target)}")
                    pg.query(f"ALTER DATABASE {ident(self.target)} WITH ALLOW_CONNECTIONS "
                             "true")
            raise
        if keep and item is not None and aside:
            item.swapped = True
            run.save_point()


@dataclass(frozen=True)
class RestartStep(Step):
    def run(self, run: RestoreRun) -> str:
        names = list(run.stopped)
        run.restart(names)
        run.stopped = []
        return ""


def check_database(run: RestoreRun, a: Artifact, db: str
                   ) -> tuple[list[str], list[str], list[str]]:
    """Compare database ``db`` with the backup: (what was checked, differences, what was
    not checked and why)."""
    plan = run.plan
    target = plan.target_db or a.name
    checked: list[str] = []
    diffs: list[str] = []
    unchecked: list[str] = []
    expected = a.source.get("row_counts")
    if expected is None:
        unchecked.append("row counts: none recorded" + (" (legacy set)"
                                                        if plan.set.legacy else ""))
    else:
        actual = run.pg.row_counts(db)
        diffs += [f"{t}: {actual.get(t)} rows, backup had {n}"
                  for t, n in expected.items() if actual.get(t) != n]
        diffs += [f"{t}: not in the backup" for t in actual if t not in expected]
        checked.append("row counts")
    props = run.expected_props.get(target)
    if props is None:
        unchecked.append("properties: the dump records none (plain format)")
    else:
        live = database_properties(run.pg.live_properties_sql(db), db)
        diffs += props.renamed(db).differences(live)
        checked.append("properties")
        if target in run.props_from_live:
            unchecked.append("properties: a plain dump records none; those of the "
                             "database it replaced were kept")
    return checked, diffs, unchecked


@dataclass(frozen=True)
class VerifyStep(Step):
    def run(self, run: RestoreRun) -> str:
        faults.hold("verify", run.cancel)
        if run.stopping():
            raise Cancelled("restore cancelled")
        plan, report = run.plan, run.report
        names = run.pg.database_names() if plan.databases else set()
        for a in plan.databases:
            name = plan.target_db or a.name
            key = f"database {name}"
            if name not in names:
                raise RestoreError(f"database {name} is missing after the restore")
            # A staged database was checked in its temporary database (the swap renamed it).
            checked, diffs, unchecked = run.db_checks.get(name) or check_database(run, a, name)
            if checked:
                report.verification[key] = diffs
                report.checked[key] = checked
            if unchecked:
                report.not_checked[key] = unchecked
        for a in plan.volumes:
            report.verification[f"volume {a.name}"] = run.volume_diffs.get(a.name,
                                                                           ["not restored"])
            report.checked[f"volume {a.name}"] = ["file list"]
        bad = {k: v for k, v in report.verification.items() if v}
        if bad:
            detail = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in bad.items())
            raise RestoreError("verification found differences: " + detail)
        run.verified()
        if report.not_checked:
            return "equal where checked; not checked: " + "; ".join(
                f"{k}: {', '.join(v)}" for k, v in report.not_checked.items())
        return "all equal"


# -- execution ------------------------------------------------------------------------------------
class RestoreRun:
    """One execution of a plan: its steps' shared state, the incident log, the undo point."""

    def __init__(self, flow: RestoreFlow, plan: RestorePlan, restore_id: str) -> None:
        self.flow = flow
        self.plan = plan
        self.rid = restore_id
        self.cfg = flow.cfg
        self.target = flow.target
        self.events = flow.report
        self.cancel = flow.cancel
        self.abort = threading.Event()
        """Set when one lane failed: the other stops at its next check."""
        self.report = RestoreReport(restore_id=restore_id, set_id=plan.set.id)
        self.report.notes = list(plan.notes)
        self.stopped: list[str] = []
        self.pg_stopped = False
        self.point: UndoPoint | None = None
        self.undo_store = UndoStore(flow.root)
        self.volume_diffs: dict[str, list[str]] = {}
        self.expected_props: dict[str, DatabaseProperties | None] = {}
        self.props_from_live: set[str] = set()
        self.dump_owners: dict[str, DumpOwners] = {}
        """Database in the set -> its archive's owners, read with its properties."""
        self.staged_dbs: dict[str, str] = {}
        """Target database -> its temporary database, waiting for the swap."""
        self.db_checks: dict[str, tuple[list[str], list[str], list[str]]] = {}
        """Staged databases, verified in their temporary databases."""
        self.swapped: set[str] = set()
        """``volume:NAME`` / ``database:NAME`` now live from the set."""
        self.touched: set[str] = set()
        """Keys of steps that changed data (a failure after one leaves something to undo)."""
        self.done: set[str] = set()
        self._lock = threading.RLock()
        self._pg: Any = None
        self._local = threading.local()

    # -- helpers the steps use ----------------------------------------------------------------
    @property
    def gw(self) -> Any:
        return self.flow.gw

    @property
    def pg(self) -> Any:
        """The PostgreSQL gateway; inside a step, watched by the step's guard (its time limit
        and Ctrl-C end a silent pg_restore and its server sessions at once)."""
        guarded = getattr(self._local, "pg", None)
        return guarded if guarded is not None else self.base_pg

    @property
    def base_pg(self) -> Any:
        """Unguarded: for cleanup after a step was stopped."""
        if self._pg is None:
            self._pg = self.flow.pg
        return self._pg

    def stopping(self) -> bool:
        return self.cancel.is_set() or self.abort.is_set()

    def artifact(self, kind: str, name: str) -> Artifact:
        for a in (*self.plan.databases, *self.plan.volumes):
            if a.kind == kind and a.name == name:
                return a
        raise RestoreError(f"the plan has no {kind} {name!r}")

    def point_volume(self, name: str) -> VolumeItem | None:
        if self.point is None or self.point.mode != "move":
            return None
        return next((v for v in self.point.volumes if v.name == name), None)

    def point_database(self, name: str) -> DbItem | None:
        if self.point is None:
            return None
        return next((d for d in self.point.databases if d.name == name), None)

    def save_point(self, durable: bool = False) -> None:
        if self.point is not None:
            with self._lock:
                self.undo_store.save(self.point, durable)

    def compose_volume_labels(self, volume: str) -> dict[str, str]:
        """A recreated volume carries Compose's labels when the stack is a Compose project, so
        ``docker compose`` adopts it instead of warning about a foreign volume."""
        from dcb.services.compose import PROJECT, compose_labels

        labels = compose_labels(self.gw, self.target.app_containers,
                                (self.target.postgres_container,))
        project = labels.get(PROJECT)
        if project and volume.startswith(f"{project}_"):
            return {PROJECT: project, "com.docker.compose.volume": volume[len(project) + 1:]}
        return {}

    def stop_container(self, name: str) -> None:
        self.events(LogLine(f"stopping {name}"))
        if not self.target.sandbox:
            self.flow.ledger.mark(name, "restore")
        try:
            self.gw.client.containers.get(name).stop(timeout=30)
        except Exception as e:
            raise RestoreError(f"could not stop {name}: {e}") from None

    def restart(self, names: list[str]) -> None:
        present = []
        for n in names:
            try:
                self.gw.client.containers.get(n).start()
                present.append(n)
            except NotFound:
                self.events(LogLine(f"{n} no longer exists: not started", "warning"))
            except Exception as e:
                if "No such container" in str(e):
                    self.events(LogLine(f"{n} no longer exists: not started", "warning"))
                    continue
                raise RestoreError(f"could not start {n}: {e}") from None
        self.flow.ledger.clear(names)
        limit = self.cfg.timeouts.container_ready
        deadline = time.monotonic() + limit if limit else None
        for n in present:
            while True:
                info = self.gw.container(n)
                if info.running and info.health in (None, "healthy"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise RestoreError(f"{n} did not come back up within {limit}s (state "
                                       f"{info.state}, health {info.health})",
                                       hint="the data is restored; look at the container's "
                                            "logs, or raise [timeouts] container_ready")
                if self.stopping():
                    raise Cancelled("restore cancelled")
                time.sleep(0.5)
            self.events(LogLine(f"{n} is running"))

    def stage_dump(self, a: Artifact) -> StagedDump | None:
        """Put a custom-format dump where the server's container can read it as a file: in
        PostgreSQL's data volume, through its mountpoint (a hard link when the backup dir is
        on the same filesystem, else a copy), named ``.dcb-restore-staged-<restore id>-...``.
        None when dcb cannot (not root beside the engine, no data volume mounted, an
        encrypted or compressed dump): the dump is then streamed to pg_restore's stdin.

        The file lives exactly as long as a keeper in the container: a shell that removes it
        when its stdin ends, which happens when dcb releases it, and also when dcb is killed
        (Docker closes an exec's stdin when its client goes away). So a staged dump never
        outlives the restore, even after ``kill -9``.
        """
        if a.compression != "none" or is_encrypted(self.plan.set.path / a.file):
            return None  # pg_restore reads the plaintext from dcb (decrypted, decompressed)
        c = self.gw.find_container(self.target.postgres_container)
        if c is None:
            return None
        from dcb.services.volumes import cluster_layout

        data_volume = cluster_layout(self.gw, c).data_volume
        mount = next((m for m in c.mounts if m.volume and m.volume == data_volume), None)
        if mount is None or not mountpoint_usable(mount.source):
            return None
        name = f"{STAGED_PREFIX}{self.rid}-{a.name}.pgdump"
        host = os.path.join(mount.source, name)
        inside = f"{mount.destination.rstrip('/')}/{name}"
        try:
            keeper = self.base_pg.exec(["sh", "-c", KEEPER, "sh", inside], stdin=True)
        except DcbError:
            return None  # no shell in the image: streamed instead
        try:
            # Mode 0600 stays (a hard link shares the artifact's inode): pg_restore runs as
            # the container's default user, root in the official image.
            try:
                os.link(self.plan.set.path / a.file, host)
            except OSError:
                shutil.copyfile(self.plan.set.path / a.file, host)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(host)
            StagedDump(host, inside, keeper).release()
            return None
        return StagedDump(host, inside, keeper)

    def verified(self) -> None:
        """The restore verified: the undo point's window starts now."""
        p = self.point
        if p is None:
            return
        p.state = "verified"
        p.verified_at = now_iso()
        p.expires_at = expiry(self.cfg.restore.keep_undo_hours)
        self.save_point()

    # -- the run ----------------------------------------------------------------------------------
    def execute(self) -> RestoreReport:
        t_start = time.monotonic()
        self.write_incident()
        try:
            self._run_steps()
            self.report.ok = True
            self._finish_point_ok()
        except BaseException as e:
            self._failed(e)
            if not isinstance(e, DcbError | KeyboardInterrupt):
                raise
        finally:
            self.report.seconds = round(time.monotonic() - t_start, 3)
            self.report.finished = True
            with contextlib.suppress(DcbError, OSError):
                if self.point is not None and self.point.state != "released":
                    self.save_point(durable=True)
            self.write_incident(final=True)
        return self.report

    def _run_steps(self) -> None:
        futures: list[Future[None]] = []
        workers = 2 if self.plan.staged else 1
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dcb-restore") as pool:
            try:
                for step in self.plan.steps:
                    _raise_failed(futures)
                    if step.lane == "pool":
                        futures.append(pool.submit(self._run_one, step))
                        continue
                    if step.joins:
                        _join(futures)
                    self._run_one(step)
                _join(futures)
            except BaseException as e:
                self.abort.set()
                lane_error = None
                for f in futures:
                    with contextlib.suppress(BaseException):
                        f.result()
                    if f.done() and f.exception() is not None and lane_error is None:
                        lane_error = f.exception()
                if isinstance(e, Cancelled) and not self.cancel.is_set() and \
                        lane_error is not None:
                    raise lane_error from None
                raise

    def _run_one(self, step: Step) -> None:
        with self._step(step) as rec, \
                StepGuard(step.title, self.cfg.timeouts.step, self.stopping) as guard:
            self._local.pg = self.base_pg.with_guard(guard)
            try:
                rec.detail = step.run(self) or ""
            finally:
                self._local.pg = None

    @contextlib.contextmanager
    def _step(self, step: Step) -> Iterator[StepRecord]:
        rec = StepRecord(step.key, step.title, datetime.now(UTC).isoformat(timespec="seconds"))
        with self._lock:
            self.report.steps.append(rec)
        self.events(StageStarted(step.title))
        self.write_incident()
        t0 = time.monotonic()
        try:
            if self.stopping():
                raise Cancelled("restore cancelled")
            yield rec
        except BaseException as e:
            rec.outcome = "cancelled" if isinstance(e, Cancelled | KeyboardInterrupt) \
                else "failed"
            rec.detail = rec.detail or str(e) or type(e).__name__
            rec.seconds = round(time.monotonic() - t0, 3)
            self.events(StageFailed(step.title, str(e)))
            self.write_incident()
            raise
        rec.outcome = "ok"
        rec.seconds = round(time.monotonic() - t0, 3)
        self.done.add(step.key)
        self.events(StageFinished(step.title, 0, rec.seconds, rec.detail))
        self.write_incident()
        if self.cancel.is_set():
            raise Cancelled("restore cancelled")

    def _finish_point_ok(self) -> None:
        p = self.point
        if p is None:
            return
        self.report.undo_point = True
        self.report.undo = f"dcb undo {self.rid}"
        if self.cfg.restore.keep_undo_hours == 0:
            from dcb.services.undo_flow import release_now

            release_now(self.flow, p, self.events)

    def _failed(self, e: BaseException) -> None:
        r = self.report
        r.error = str(e) or type(e).__name__
        r.cancelled = (isinstance(e, Cancelled | KeyboardInterrupt) and self.cancel.is_set()) \
            or isinstance(e, KeyboardInterrupt)
        if self.pg_stopped:
            with contextlib.suppress(Exception):
                self.gw.client.containers.get(self.target.postgres_container).start()
                if not self.target.sandbox:
                    self.flow.ledger.clear([self.target.postgres_container])
        for target, tmp in self.staged_dbs.items():
            if f"database:{target}" not in self.swapped:
                with contextlib.suppress(Exception):
                    self.pg.query(f"DROP DATABASE IF EXISTS {ident(tmp)} WITH (FORCE)")
        if self.stopped:
            with contextlib.suppress(Exception):
                self.restart(self.stopped)
        p = self.point
        if p is not None:
            if not self.touched - {"roles"}:
                from dcb.services.undo_flow import release_now

                with contextlib.suppress(Exception):
                    release_now(self.flow, p, self.events, note=NOTHING_CHANGED)
            else:
                p.state = "failed"
                p.note = r.error
                with contextlib.suppress(DcbError):
                    self.save_point()
                r.undo_point = True
                r.undo = f"dcb undo {self.rid}"
        r.state = self._describe_state()

    def _describe_state(self) -> list[str]:
        plan = self.plan
        if not self.touched - {"roles"}:
            return [NOTHING_CHANGED] if not self.touched else \
                ["roles: created or reset; databases and volumes unchanged"]
        state = []
        for a in plan.volumes:
            key = f"volume:{a.name}"
            if key in self.swapped or (key in self.done and not plan.staged):
                what = f"restored from {plan.set.id}"
            elif key in self.touched:
                item = self.point_volume(a.name)
                what = "partly replaced" + (" (its previous contents are in the undo point)"
                                            if item and item.moved else "")
            else:
                what = "unchanged"
            state.append(f"volume {a.name}: {what}")
        for a in plan.databases:
            name = plan.target_db or a.name
            done = f"database:{name}" in self.swapped
            state.append(f"database {name}: " + (f"restored from {plan.set.id}" if done
                                                 else "unchanged (old data in place)"))
        return state

    # -- incident log ---------------------------------------------------------------------------
    def write_incident(self, final: bool = False) -> None:
        state = self.flow.state
        with self._lock, contextlib.suppress(OSError, DcbError):
            d = state.root / RESTORES_DIR
            d.mkdir(mode=0o700, exist_ok=True)
            data = {"plan": self.plan.to_json(), "report": self.report.to_json(),
                    "sandbox": self.target.sandbox}
            write_json(d / f"{self.rid}.json", data, durable=final)
            if not final or self.target.sandbox:
                return  # the drill records itself, with its measured RTO
            raw = sum(int(a.source.get("raw_bytes") or 0)
                      for a in (*self.plan.databases, *self.plan.volumes))
            state.append_history({"kind": "restore",
                                  "id": self.rid, "set_id": self.plan.set.id,
                                  "ok": self.report.ok, "seconds": self.report.seconds,
                                  "raw_bytes": raw, "error": self.report.error,
                                  "safety_set_id": self.report.safety_set_id,
                                  "undo_point": self.report.undo_point,
                                  "at": datetime.now(UTC).isoformat(timespec="seconds")})


def _join(futures: list[Future[None]]) -> None:
    for f in futures:
        f.result()


def _raise_failed(futures: list[Future[None]]) -> None:
    for f in futures:
        if f.done() and f.exception() is not None:
            f.result()


class _HoldingReader:
    """A read-only file wrapper that counts bytes, honours cancellation and holds (fault
    tests) once the first MiB went through."""

    def __init__(self, f: Any, meter: ByteMeter, stopping: Any,
                 cancel: threading.Event) -> None:
        self.f = f
        self.meter = meter
        self.stopping = stopping
        self.cancel = cancel
        self._held = False

    def read(self, n: int = -1) -> bytes:
        if self.stopping():
            raise Cancelled("restore cancelled")
        b: bytes = self.f.read(n)
        self._count(len(b))
        return b

    def readinto(self, view: memoryview) -> int:
        """Straight into the caller's (O_DIRECT) buffer: no intermediate bytes object."""
        if self.stopping():
            raise Cancelled("restore cancelled")
        readinto = getattr(self.f, "readinto", None)
        if callable(readinto):
            k = int(readinto(view))
        else:
            b = self.f.read(len(view))
            k = len(b)
            view[:k] = b
        self._count(k)
        return k

    def _count(self, k: int) -> None:
        self.meter.add(k)
        if not self._held and self.meter.done >= CHUNK:
            self._held = True
            faults.hold("volume", self.cancel)


def _chunks_of(run: RestoreRun, a: Artifact, meter: ByteMeter) -> Iterator[bytes]:
    """An artifact's content, decompressed, the file closed at its end (or on an error)."""
    with open_decompressed(run.plan.set.path / a.file, a.compression) as f:
        yield from _chunks(f, run, meter)


def _chunks(f: Any, run: RestoreRun, meter: ByteMeter | None = None) -> Iterator[bytes]:
    while True:
        if run.stopping():
            raise Cancelled("restore cancelled")
        b = f.read(CHUNK)
        if not b:
            return
        if meter is not None:
            meter.add(len(b))
        yield b


def _props_script(statements: tuple[str, ...]) -> str:
    """A database's property statements, run as the superuser: from an archive someone else
    may have written, so only plain statements about the database (pg_objects)."""
    return checked_script("\n".join(statements) + "\n", DATABASE_STATEMENTS,
                          "the dump's database properties")


def _archive_list(run: RestoreRun, a: Artifact, staged: StagedDump | None) -> str:
    """``pg_restore --list`` of a custom dump (its table of contents only)."""
    if staged is not None:
        return str(run.pg.archive_list(path=staged.inside))
    with open_decompressed(run.plan.set.path / a.file, a.compression) as f:
        return str(run.pg.archive_list(chunks=_chunks(f, run)))


def _list_file(run: RestoreRun, listing: str) -> str:
    """A list for ``pg_restore -L`` as a 0600 file in the PostgreSQL container's /tmp
    (removed after the replay)."""
    import io
    import secrets
    import tarfile

    data = listing.encode()
    name = f".dcb-restore-list-{secrets.token_hex(6)}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
    try:
        ok = run.gw.client.containers.get(run.target.postgres_container).put_archive(
            "/tmp", buf.getvalue())
    except Exception as e:
        raise RestoreError(f"cannot write pg_restore's list into "
                           f"{run.target.postgres_container}: {e}") from None
    if not ok:
        raise RestoreError(f"cannot write pg_restore's list into "
                           f"{run.target.postgres_container}")
    return f"/tmp/{name}"


def _remove_in_container(run: RestoreRun, path: str) -> None:
    with contextlib.suppress(DcbError, OSError), run.base_pg.exec(["rm", "-f", path]) as p:
        p.read_all()
        p.wait(30)


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if "ERROR" in line or "error" in line or "FATAL" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "no error output"
