"""A backup run: pre-checks, database dumps and volume archives, manifest last.

The database stage (roles, then each database in its own snapshot) and the volume stage run
concurrently: each is mostly waiting on Docker streams and compression, and together they use
both cores. Either stage failing cancels the other. A run that fails leaves a set whose
manifest says ``failed`` (artifacts deleted); a run that is killed leaves a set without a
manifest, listed as ``incomplete``. Neither can be mistaken for a good backup, and a failed
run never triggers retention.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions

from dcb import __version__
from dcb.services import faults
from dcb.services.artifacts import (
    EXTENSIONS,
    ArtifactWriter,
    StorageError,
    atomic_write_bytes,
    private_dirs,
)
from dcb.services.config import Config
from dcb.services.coverage import (
    resolve_databases,
    volume_tar_error,
    volume_writers,
    writer_warning,
)
from dcb.services.disk import disk_usage
from dcb.services.docker_exec import StepGuard, remove_stale_helpers, store_tag
from dcb.services.docker_gateway import (
    ContainerInfo,
    DockerGateway,
    describe_docker_host,
    explain_api_error,
    short_reason,
)
from dcb.services.encryption import age_tool
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.lock import StoreLock
from dcb.services.postgres import (
    CLUSTER_DUMP_END,
    CUSTOM_MAGIC,
    PLAIN_DUMP_END,
    DumpError,
    PgGateway,
    first_error,
    major_version,
)
from dcb.services.progress import (
    ByteMeter,
    LogLine,
    Reporter,
    StageFailed,
    StageFinished,
    StageStarted,
    locked,
    null_reporter,
)
from dcb.services.safe_tar import CorruptArchive, StreamValidator, UnsafeArchive
from dcb.services.state import sane_history_entry, state_for
from dcb.services.stopped import StoppedLedger
from dcb.services.store import (
    DIR_MODE,
    HISTORY,
    MANIFEST,
    MANIFEST_VERSION,
    Artifact,
    BackupSet,
    BackupStore,
    manifest_bytes,
    new_set_id,
    read_manifest,
)
from dcb.services.volumes import (
    HelperTar,
    LocalTar,
    TarSource,
    cluster_volumes,
    open_volume_tar,
    resolve_pg_data_volume,
)

STOP_TIMEOUT = 30
DEFAULT_PGDATA = "/var/lib/postgresql/data"  # the official image's


@dataclass(frozen=True)
class BackupRequest:
    databases: tuple[str, ...] | None = None
    """None: every configured database (with ``databases = "all"``: every database the
    cluster holds at the start of the run, services/coverage.py)."""
    volumes: tuple[str, ...] | None = None
    """None: every configured volume."""
    globals: bool = True
    purpose: str = "backup"
    """``backup``, or ``safety``: a restore's snapshot of what it replaces, which retention
    keeps until that restore's undo window ends (``[restore] keep_undo_hours``)."""
    restore_id: str | None = None
    """With ``purpose="safety"``: the restore this set can undo."""


PURPOSES = ("backup", "safety")


@dataclass
class _Plan:
    databases: tuple[str, ...]
    volumes: tuple[str, ...]
    globals: bool
    purpose: str = "backup"
    restore_id: str | None = None
    estimate_bytes: int = 0
    all_databases: bool = False
    """``databases`` is resolved from the cluster at the pre-check."""
    server_version: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    pg_data_volume: str | None = None
    """The volume holding the cluster's data directory, from the container's mounts."""
    pg_data_subdir: str = "."



def restart_stopped(gw: DockerGateway, ledger: StoppedLedger, report: Reporter) -> None:
    """Start what a killed earlier run left stopped (see services/stopped.py)."""
    for name, by in ledger.pending().items():
        report(LogLine(f"an interrupted {by} left {name} stopped: starting it", "warning"))
        try:
            gw.client.containers.get(name).start()
        except Exception as e:
            report(LogLine(f"could not start {name}: {e}", "error"))
            continue
        ledger.clear([name])


def append_history(root: Path, entry: dict[str, Any]) -> None:
    """Append one JSON line to the run history, durably."""
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(root / HISTORY, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_history(root: Path) -> list[dict[str, Any]]:
    path = root / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if sane_history_entry(entry):  # a torn or foreign line is skipped, never fatal
                out.append(entry)
    return out


def ensure_store_dir(root: Path) -> None:
    """Create the backup dir (0700) and prove it is writable before anything else happens."""
    try:
        private_dirs(root)
        probe = root / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise StorageError(f"backup dir {root} is not writable: {e.strerror}",
                           hint="check its permissions and free space") from None


class BackupRun:
    def __init__(self, cfg: Config, reporter: Reporter = null_reporter,
                 cancel: threading.Event | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cfg = cfg
        self.report = locked(reporter)
        self.cancel = cancel or threading.Event()
        self.clock = clock
        self.root = cfg.backup_dir
        self.state = state_for(cfg)
        self.store = BackupStore.for_config(cfg)
        self.ledger = StoppedLedger(self.state.root)
        self.recipients = cfg.encryption.recipients

    # -- the run ----------------------------------------------------------------------------
    def run(self, request: BackupRequest | None = None) -> BackupSet:
        request = request or BackupRequest()
        plan = self._select(request)
        ensure_store_dir(self.root)
        with StoreLock.for_config(self.cfg, "dcb backup"):
            gw = DockerGateway.connect(self.cfg.timeouts.docker_api)
            try:
                return self._run_locked(gw, plan)
            finally:
                gw.close()

    def run_locked(self, gw: DockerGateway, request: BackupRequest) -> BackupSet:
        """A run inside another flow that already holds the store lock (a restore's safety
        snapshot)."""
        plan = self._select(request)
        try:
            ensure_store_dir(self.root)
        except StorageError as e:
            if plan.purpose != "safety":
                raise
            # The restore reports only the message: the way out goes in it.
            raise StorageError(f"no safety snapshot possible: {e.message}; restore with "
                               "--no-safety-backup (it cannot be undone then)") from None
        return self._run_locked(gw, plan)

    def _run_locked(self, gw: DockerGateway, plan: _Plan) -> BackupSet:
        self._recover(gw)
        pg = PgGateway(gw, self.cfg.stack.postgres_container, self.cfg.stack.postgres_user,
                       self.cfg.postgres_password())
        self._precheck(gw, pg, plan)

        started = self.clock()
        t0 = time.monotonic()
        set_dir = self._make_set_dir(started)
        set_id = set_dir.name
        self.report(LogLine(f"backup set {set_id} in {set_dir}"))
        artifacts: list[Artifact] = []
        failure: BaseException | None = None
        stop_both = threading.Event()
        # The failure that stopped the run: the first in time. What the other stage hits once
        # it is being stopped (pg_dump's "invalid snapshot identifier" when the snapshot's
        # session ends, say) is a consequence, whichever stage is collected first.
        cause: list[BaseException] = []
        cause_lock = threading.Lock()

        def guarded(stage: Callable[[], list[Artifact]]) -> list[Artifact]:
            try:
                return stage()
            except BaseException as e:
                with cause_lock:
                    if not stop_both.is_set() and not isinstance(e, Cancelled):
                        cause.append(e)
                    stop_both.set()
                raise

        self._stage_cancel = stop_both
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dcb-backup") as pool:
            futures: list[Future[list[Artifact]]] = []
            if plan.databases or plan.globals:
                futures.append(pool.submit(guarded, lambda: self._db_stage(pg, plan, set_dir)))
            if plan.volumes:
                futures.append(pool.submit(guarded, lambda: self._volume_stage(gw, pg, plan,
                                                                               set_dir)))
            try:
                while not all(f.done() for f in futures):
                    if self.cancel.wait(0.1):
                        stop_both.set()
            except KeyboardInterrupt:
                self.cancel.set()
                stop_both.set()
            for f in futures:
                try:
                    artifacts.extend(f.result())
                except BaseException as e:  # the first real error wins over "cancelled"
                    if failure is None or isinstance(failure, Cancelled):
                        failure = e
            if cause:
                failure = cause[0]

        duration = time.monotonic() - t0
        if self.cancel.is_set() and not isinstance(failure, Cancelled):
            # Asked to stop: what failed while the stages were torn down (a dump whose
            # snapshot session just ended...) is a consequence, not the story.
            failure = Cancelled("backup cancelled")
        if failure is not None:
            self._fail(set_dir, set_id, started, duration, failure)
            if isinstance(failure, DcbError):
                raise failure
            raise failure

        order = {"globals": 0, "database": 1, "volume": 2}
        artifacts.sort(key=lambda a: (order.get(a.kind, 9), a.name))
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "id": set_id,
            "status": "complete",
            "purpose": plan.purpose,
            **({"restore_id": plan.restore_id} if plan.restore_id else {}),
            "created_at": started.isoformat(),
            "finished_at": self.clock().isoformat(),
            "duration_seconds": round(duration, 3),
            "host": socket.gethostname(),
            "dcb_version": __version__,
            "stack": {
                "postgres_container": self.cfg.stack.postgres_container,
                "postgres_user": self.cfg.stack.postgres_user,
                "server_version": plan.server_version,
            },
            "size_bytes": sum(a.size_bytes for a in artifacts),
            **({"encryption": {"format": "age", "recipients": list(self.recipients)}}
               if self.recipients else {}),
            "artifacts": [a.to_json() for a in artifacts],
        }
        atomic_write_bytes(set_dir / MANIFEST, manifest_bytes(manifest))
        result = read_manifest(set_dir)
        self.state.append_history({
            "kind": "backup", "id": set_id, "status": "complete",
            "started_at": started.isoformat(), "duration_seconds": round(duration, 3),
            "size_bytes": result.size_bytes,
            "artifacts": [{"kind": a.kind, "name": a.name, "size_bytes": a.size_bytes,
                           "seconds": a.source.get("seconds")} for a in artifacts],
        })
        self.report(StageFinished("backup", result.size_bytes, duration, detail=set_id))
        return result

    # -- preparation --------------------------------------------------------------------------
    def _select(self, request: BackupRequest) -> _Plan:
        stack = self.cfg.stack
        everything = request.databases is None and stack.all_databases
        dbs = stack.listed_databases if request.databases is None else request.databases
        vols = stack.volumes if request.volumes is None else request.volumes
        if not stack.all_databases:  # with "all": any database that exists (pre-check)
            for d in dbs:
                if d not in stack.listed_databases:
                    raise UsageError(f"database {d!r} is not configured in [stack] databases",
                                     hint="configured: " + ", ".join(stack.listed_databases))
        for v in vols:
            if v not in stack.volumes:
                raise UsageError(f"volume {v!r} is not configured in [stack] volumes",
                                 hint="configured: " + ", ".join(stack.volumes))
        if not dbs and not vols and not everything:
            raise UsageError("nothing to back up")
        if request.purpose not in PURPOSES:
            raise UsageError(f"unknown backup purpose {request.purpose!r}")
        return _Plan(databases=tuple(dbs), volumes=tuple(vols),
                     globals=request.globals and (bool(dbs) or everything),
                     purpose=request.purpose, restore_id=request.restore_id,
                     all_databases=everything)

    def _recover(self, gw: DockerGateway) -> None:
        """Undo what a killed earlier run left behind: stopped containers, helpers."""
        restart_stopped(gw, self.ledger, self.report)
        n = remove_stale_helpers(gw, store_tag(self.root))
        if n:
            self.report(LogLine(f"removed {n} helper container(s) left by a killed run",
                                "warning"))
        for entry in self.root.glob("*/.*.tmp"):
            entry.unlink(missing_ok=True)
        # A killed restore's staged dump must not end up in pg_basebackup's copy; undo points
        # whose window ended are released (services/undo_flow.py).
        from dcb.services.undo_flow import release_expired, remove_staged_dumps

        with contextlib.suppress(DcbError, OSError):
            remove_staged_dumps(gw, self.cfg.stack.postgres_container, self.report)
            release_expired(self.cfg, gw, self.report)

    def _precheck(self, gw: DockerGateway, pg: PgGateway, plan: _Plan) -> None:
        self.report(StageStarted("precheck"))
        t0 = time.monotonic()
        if self.recipients:
            age_tool()  # missing: refused before anything is stopped or written
        pgc = gw.container(self.cfg.stack.postgres_container)
        if not pgc.running:
            raise DcbError(f"PostgreSQL container {pgc.name!r} is {pgc.state}, not running",
                           hint=f"docker start {pgc.name}")
        pg.wait_ready(timeout=self.cfg.timeouts.postgres_ready)
        plan.server_version = pg.server_info().version
        self._find_pg_data(gw, pg, pgc, plan)
        db_sizes = pg.database_sizes()
        if plan.all_databases:
            self._resolve_all(pg, plan)
        for d in plan.databases:
            if d not in db_sizes:
                raise NotFound(f"database {d!r} does not exist in {pgc.name}")
        vol_sizes = gw.volume_sizes()
        for v in plan.volumes:
            gw.volume(v)  # NotFound with a clear message
        plan.sizes = {**{f"database {d}": db_sizes[d] for d in plan.databases},
                      **{f"volume {v}": vol_sizes.get(v, 0) for v in plan.volumes}}
        raw = sum(plan.sizes.values())
        plan.estimate_bytes = int(raw * self.cfg.storage.space_estimate_ratio)
        free = disk_usage(self.root).free_bytes
        if plan.estimate_bytes > free:
            from dcb.services.formatting import size

            raise StorageError(
                f"not enough space in {self.root}: this backup needs about "
                f"{size(plan.estimate_bytes)}, {size(free)} free",
                hint="free space, run `dcb prune`, or lower [storage] space_estimate_ratio",
            )
        self.report(StageFinished("precheck", 0, time.monotonic() - t0,
                                  detail=f"PostgreSQL {plan.server_version}"))

    def _find_pg_data(self, gw: DockerGateway, pg: PgGateway, pgc: ContainerInfo,
                      plan: _Plan) -> None:
        """Which volume is PostgreSQL's own, from its mounts: never a raw copy of it."""
        spaces = ("SELECT * FROM (SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                  "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1) t")
        try:
            rows = pg.query(f"SELECT current_setting('data_directory') UNION ALL {spaces}"
                            ).splitlines()
        except DcbError:  # a role without pg_read_all_settings: the container's PGDATA
            env = gw.client.containers.get(pgc.name).attrs.get("Config", {}).get("Env") or []
            pgdata = next((e.partition("=")[2] for e in env if e.startswith("PGDATA=")),
                          DEFAULT_PGDATA)
            rows = [pgdata, *pg.query(spaces).splitlines()]
        layout = cluster_volumes(pgc.mounts, rows[0].strip(),
                                 tuple(r.strip() for r in rows[1:] if r.strip()))
        explicit = self.cfg.sources.get("stack.postgres_data_volume", "default") != "default"
        plan.pg_data_volume = resolve_pg_data_volume(
            self.cfg.stack.postgres_data_volume, explicit, pgc, layout, plan.volumes)
        plan.pg_data_subdir = layout.data_subdir

    def _resolve_all(self, pg: PgGateway, plan: _Plan) -> None:
        """``databases = "all"``: what the cluster holds now, so a new database is in."""
        plan.databases = resolve_databases(self.cfg, pg)
        self.report(LogLine('[stack] databases = "all": ' + (", ".join(plan.databases)
                                                            or "no database")))
        if not plan.databases:
            plan.globals = False
            if not plan.volumes:
                raise UsageError('nothing to back up: [stack] databases = "all" matches no '
                                 "database", hint="check [stack] exclude_databases")

    def _make_set_dir(self, now: datetime) -> Path:
        taken = {p.name for p in self.root.iterdir()} if self.root.exists() else set()
        while True:
            set_id = new_set_id(now, taken)
            path = self.root / set_id
            try:
                path.mkdir(mode=DIR_MODE)
                return path
            except FileExistsError:
                taken.add(set_id)

    # -- stages -------------------------------------------------------------------------------
    def _check_cancel(self) -> None:
        if self._stopping():
            raise Cancelled("backup cancelled")

    def _stopping(self) -> bool:
        return self.cancel.is_set() or self._stage_cancel.is_set()

    def _guard(self, stage: str) -> StepGuard:
        """The explicit time limit of one artifact ([timeouts] step) and cancellation: the
        only things that stop a silent dump or archive."""
        return StepGuard(stage, self.cfg.timeouts.step, self._stopping)

    def _pump(self, source: Any, writer: ArtifactWriter, meter: ByteMeter,
              also: Callable[[bytes], None] | None = None) -> None:
        for chunk in source.stdout():
            self._check_cancel()
            writer.write(chunk)
            if also is not None:
                also(chunk)
            meter.add(len(chunk))
        meter.flush()

    def _db_stage(self, pg: PgGateway, plan: _Plan, set_dir: Path) -> list[Artifact]:
        out: list[Artifact] = []
        if plan.globals:
            with self._guard("roles (pg_dumpall --globals-only)") as guard:
                out.append(self._dump_globals(pg.with_guard(guard), set_dir))
        for db in plan.databases:
            self._check_cancel()
            with self._guard(f"pg_dump {db}") as guard:
                out.append(self._dump_database(pg.with_guard(guard), db, set_dir, plan))
        return out

    def _dump_globals(self, pg: PgGateway, set_dir: Path) -> Artifact:
        stage = "roles (pg_dumpall --globals-only)"
        st = self.cfg.storage
        self.report(StageStarted(stage))
        meter = ByteMeter(stage, self.report)
        fname = "globals.sql" + EXTENSIONS[st.compression]
        with ArtifactWriter(set_dir / fname, st.compression, st.compression_level,
                            self.recipients) as w:
            with pg.dump_globals() as proc:
                self._pump(proc, w, meter)
                code = proc.wait()
                if code != 0:
                    raise DumpError(f"pg_dumpall --globals-only failed (exit {code}): "
                                    f"{first_error(proc.stderr_text)}")
            if CLUSTER_DUMP_END not in w.tail:
                raise DumpError("pg_dumpall output lacks its completion marker")
            written = w.commit()
        self.report(StageFinished(stage, written.size_bytes, meter.seconds))
        return Artifact(kind="globals", name="globals", file=fname,
                        size_bytes=written.size_bytes, sha256=written.sha256,
                        compression=st.compression,
                        source={"tool": "pg_dumpall --globals-only", "format": "plain",
                                "raw_bytes": written.raw_bytes,
                                "seconds": round(meter.seconds, 3)})

    def _dump_database(self, pg: PgGateway, db: str, set_dir: Path, plan: _Plan) -> Artifact:
        stage = f"database {db}"
        st = self.cfg.storage
        fmt = st.db_format
        self.report(StageStarted(stage, plan.sizes.get(stage)))
        meter = ByteMeter(stage, self.report, plan.sizes.get(stage))
        if fmt == "custom":
            # pg_dump -Fc -Z1 is already compressed: compressing again would burn CPU for ~0.
            fname, compression = f"db-{db}.pgdump", "none"
        else:
            fname, compression = f"db-{db}.sql" + EXTENSIONS[st.compression], st.compression
        with pg.snapshot_session(db) as snap, \
                ArtifactWriter(set_dir / fname, compression, st.compression_level,
                               self.recipients) as w:
            proc = pg.dump(db, fmt=fmt, snapshot=snap.snapshot,
                           lock_wait_timeout=self.cfg.stack.lock_wait_timeout)
            counts: dict[str, int] = {}
            count_error: list[BaseException] = []

            def count_rows() -> None:
                # A session of its own importing the snapshot: a failure here cannot end
                # the exporting transaction under pg_dump's feet.
                try:
                    counts.update(pg.row_counts(
                        db, snapshot=snap.snapshot,
                        lock_wait_timeout=self.cfg.stack.lock_wait_timeout))
                except BaseException as e:
                    count_error.append(e)

            counter = threading.Thread(target=count_rows, name=f"dcb-rowcount-{db}",
                                       daemon=True)
            counter.start()
            try:
                self._pump(proc, w, meter)
                code = proc.wait()
            finally:
                proc.close()
            if code != 0:
                err = proc.stderr_text
                if "statement timeout" in err or "lock timeout" in err:
                    raise DumpError(
                        f"pg_dump {db} failed: a table stayed locked by another session "
                        f"for more than {self.cfg.stack.lock_wait_timeout}s",
                        hint="find the holder in pg_locks / pg_stat_activity, or raise "
                             "[stack] lock_wait_timeout")
                raise DumpError(f"pg_dump {db} failed (exit {code}): {first_error(err)}")
            if w.raw_bytes == 0:
                raise DumpError(f"pg_dump {db} produced no output")
            if fmt == "plain" and PLAIN_DUMP_END not in w.tail:
                raise DumpError(f"pg_dump {db}: output lacks its completion marker (truncated)")
            counter.join()  # the step's guard stops it on cancel or at [timeouts] step
            if count_error:
                cerr = count_error[0]
                raise DumpError(f"counting rows of {db} failed: "
                                f"{cerr.message if isinstance(cerr, DcbError) else cerr}")
            if counter.is_alive():
                raise DumpError(f"counting rows of {db} did not finish")
            written = w.commit()
        if fmt == "custom" and not w.head.startswith(CUSTOM_MAGIC):
            written.path.unlink()
            raise DumpError(f"pg_dump {db}: not a custom-format archive")
        self.report(StageFinished(stage, written.size_bytes, meter.seconds,
                                  detail=f"{len(counts)} tables"))
        return Artifact(kind="database", name=db, file=fname, size_bytes=written.size_bytes,
                        sha256=written.sha256, compression=compression,
                        source={"tool": "pg_dump", "format": fmt,
                                "container": self.cfg.stack.postgres_container,
                                "server_version": plan.server_version,
                                "snapshot": snap.snapshot, "row_counts": counts,
                                "raw_bytes": written.raw_bytes,
                                "seconds": round(meter.seconds, 3)})

    def _volume_stage(self, gw: DockerGateway, pg: PgGateway, plan: _Plan,
                      set_dir: Path) -> list[Artifact]:
        out = []
        for v in plan.volumes:
            self._check_cancel()
            with self._guard(f"archiving volume {v}") as guard:
                out.append(self._archive_volume(gw, pg.with_guard(guard), v, set_dir, plan,
                                                guard))
        return out

    def _archive_volume(self, gw: DockerGateway, pg: PgGateway, volume: str, set_dir: Path,
                        plan: _Plan, guard: StepGuard) -> Artifact:
        stage = f"volume {volume}"
        st = self.cfg.storage
        self.report(StageStarted(stage, plan.sizes.get(stage)))
        meter = ByteMeter(stage, self.report, plan.sizes.get(stage))
        fname = f"volume-{volume}.tar" + EXTENSIONS[st.compression]
        is_pg_data = volume == plan.pg_data_volume
        stopped: list[str] = []
        source: dict[str, Any] = {}
        write_compression = st.compression
        entries = 0
        try:
            if is_pg_data:
                # Never a raw copy of a live data directory: an online physical backup.
                in_container = st.compression == "zstd" and major_version(plan.server_version) >= 15
                base = pg.basebackup(
                    zstd_level=st.compression_level if in_container else None)
                if base.warning:
                    self.report(LogLine(f"volume {volume}: {base.warning}", "warning"))
                proc: TarSource = base
                if in_container:
                    write_compression = "none"  # the stream arrives compressed already
                source["method"] = "pg_basebackup"
                source["compressed_by"] = "pg_basebackup" if in_container else "dcb"
                if plan.pg_data_subdir != ".":
                    source["data_subdir"] = plan.pg_data_subdir
            else:
                stopped = self._stop_users(gw, volume)
                writers = self._warn_writers(gw, volume)
                if writers:
                    source["running_writers"] = list(writers)
                helper_image = st.helper_image or gw.container(
                    self.cfg.stack.postgres_container).image
                proc = guard.watch(open_volume_tar(gw, volume, st.volume_access,
                                                   helper_image, store_tag(self.root)))
                source["method"] = "host tar" if isinstance(proc, LocalTar) else "helper"
            source["stopped_containers"] = stopped
            # Whatever a restore would refuse is found now, on the stream as it is written.
            check = StreamValidator(
                "zstd" if write_compression != st.compression else "none",
                hint="nothing was stored: move or remove it in the volume, then back up again")
            with ArtifactWriter(set_dir / fname, write_compression,
                                st.compression_level, self.recipients) as w:
                damaged: CorruptArchive | None = None
                if stopped:
                    faults.hold("backup-app-stopped", self.cancel)
                try:
                    try:
                        self._pump(proc, w, meter, also=check.feed)
                    except CorruptArchive as e:
                        damaged = e  # the producer's own failure, if any, says more
                        for _ in proc.stdout():
                            self._check_cancel()
                    code = proc.wait()
                    if code == 0 and damaged is None:
                        entries = check.finish()
                except CorruptArchive as e:
                    damaged = e
                except UnsafeArchive as e:
                    raise DcbError(
                        f"volume {volume} holds what a restore could not recreate: "
                        + "; ".join(e.problems[:10])
                        + (f"; and {len(e.problems) - 10} more" if len(e.problems) > 10
                           else ""), hint=e.hint) from None
                finally:
                    check.close()
                    proc.close()
                guard.check()
                if code != 0:
                    raise volume_tar_error(volume, code, proc.stderr_text,
                                           source.get("running_writers", ()))
                if damaged is not None:
                    raise DcbError(f"archiving volume {volume}: the stream is not a readable "
                                   f"tar archive: {damaged}")
                if w.raw_bytes == 0:
                    raise DcbError(f"archiving volume {volume} produced no output")
                written = w.commit()
            if isinstance(proc, HelperTar) and proc.lossy:
                source["tar"] = "not GNU tar: no extended attributes, ACLs or sparse files"
                self.report(LogLine(f"volume {volume}: the helper image {proc.image} has no "
                                    "GNU tar; extended attributes, ACLs, capabilities and "
                                    "sparse files were not kept (set [storage] helper_image)",
                                    "warning"))
        finally:
            # When the archive failed (the engine went away, say), its error is the one to
            # report: a container that cannot be started now is said and stays in the
            # ledger, for `dcb status`, `dcb check` and the next run.
            self._start_again(gw, stopped, failing=sys.exc_info()[0] is not None)
        self.report(StageFinished(stage, written.size_bytes, meter.seconds,
                                  detail=f"{entries} entries checked"))
        raw = written.raw_bytes
        if write_compression != st.compression:  # compressed before it reached us
            raw = check.raw_bytes  # as the check decompressed it
        source.update({"raw_bytes": raw, "seconds": round(meter.seconds, 3), "format": "tar",
                       "entries": entries})
        return Artifact(kind="volume", name=volume, file=fname, size_bytes=written.size_bytes,
                        sha256=written.sha256, compression=st.compression, source=source)

    # -- containers -----------------------------------------------------------------------------
    def _stop_users(self, gw: DockerGateway, volume: str) -> list[str]:
        wanted = set(self.cfg.stack.stop_during_backup)
        users = [c for c in gw.containers_using_volume(volume)
                 if c.running and c.name in wanted]
        stopped: list[str] = []
        for c in users:
            self._mark_stopped(c.name)
            self.report(LogLine(f"stopping {c.name} while {volume} is archived"))
            try:
                gw.client.containers.get(c.name).stop(timeout=STOP_TIMEOUT)
            except Exception as e:
                self._start_again(gw, [*stopped, c.name], failing=True)
                raise DcbError(f"could not stop {c.name}: {e}") from None
            stopped.append(c.name)
        return stopped

    def _warn_writers(self, gw: DockerGateway, volume: str) -> tuple[str, ...]:
        """Name the running containers that keep writing ``volume`` while it is archived."""
        writers = volume_writers(self.cfg, gw, volume)
        if writers:
            self.report(LogLine(writer_warning(volume, writers), "warning"))
        return writers

    def _start_container(self, gw: DockerGateway, name: str) -> str | None:
        """Start ``name`` again; None, or why it could not be (reported as an error)."""
        try:
            gw.client.containers.get(name).start()
        except docker.errors.APIError as e:
            why = explain_api_error(e)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            why = f"Docker engine unreachable at {describe_docker_host()}: {short_reason(e)}"
        except Exception as e:
            why = str(e) or type(e).__name__
        else:
            self.report(LogLine(f"started {name} again"))
            return None
        self.report(LogLine(f"could not start {name} again: {why}", "error"))
        return why

    def _start_again(self, gw: DockerGateway, names: list[str], failing: bool) -> None:
        """Start what this run stopped; the ones that started leave the ledger. Unless the
        run is failing already, one that cannot be started fails it."""
        failed = {n: why for n in names if (why := self._start_container(gw, n))}
        started = [n for n in names if n not in failed]
        if started:
            self._clear_stopped(started)
        if failed and not failing:
            why = next(iter(failed.values()))
            raise DcbError(f"could not start {', '.join(failed)} again: {why}",
                           hint=f"docker start {' '.join(failed)} (or the next dcb backup "
                                "starts it)")

    def _mark_stopped(self, name: str) -> None:
        self.ledger.mark(name, "backup")

    def _clear_stopped(self, gone: list[str]) -> None:
        self.ledger.clear(gone)

    # -- failure --------------------------------------------------------------------------------
    def _fail(self, set_dir: Path, set_id: str, started: datetime, duration: float,
              error: BaseException) -> None:
        message = str(error) or type(error).__name__
        self.report(StageFailed("backup", message))
        # Free the space first (a full disk is a common cause), then say what happened.
        for entry in list(set_dir.iterdir()) if set_dir.exists() else []:
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        manifest = {
            "manifest_version": MANIFEST_VERSION, "id": set_id, "status": "failed",
            "created_at": started.isoformat(), "duration_seconds": round(duration, 3),
            "host": socket.gethostname(), "dcb_version": __version__, "error": message,
            "artifacts": [],
        }
        with contextlib.suppress(DcbError):
            atomic_write_bytes(set_dir / MANIFEST, manifest_bytes(manifest))
        with contextlib.suppress(OSError, DcbError):
            self.state.append_history({
                "kind": "backup", "id": set_id, "status": "failed",
                "started_at": started.isoformat(), "duration_seconds": round(duration, 3),
                "error": message,
            })
