"""The guided restore: validate, plan, confirm, safety snapshot, restore, verify.

Nothing changes before ``execute`` is called with the confirmation token (the set id), so the
CLI and the TUI share one safety rule. Every step is timed into an incident log. A failure at
any step stops the flow, starts again what was stopped, and the report says what state each
part is in and which command undoes the restore (the safety snapshot).

Databases are restored into a temporary database and swapped in by renaming only once the
restore succeeded, so a broken dump leaves the old database in place. Volumes are replaced
only after their archive was validated member by member (services/safe_tar.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dcb.services.artifacts import CHUNK, atomic_write_bytes, open_decompressed
from dcb.services.backup import (
    BackupRequest,
    BackupRun,
    append_history,
    restart_stopped,
)
from dcb.services.config import Config
from dcb.services.disk import disk_usage
from dcb.services.docker_gateway import DockerGateway
from dcb.services.encryption import is_encrypted
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.lock import StoreLock
from dcb.services.postgres import PgGateway, major_version
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
from dcb.services.psql_guard import OLD_PSQL, psql_restricts, restricted
from dcb.services.safe_tar import (
    Listing,
    clear_directory,
    extract_archive,
    read_xattrs,
    remove_extraneous,
    validate_archive,
)
from dcb.services.state import state_for
from dcb.services.stopped import StoppedLedger
from dcb.services.store import Artifact, BackupSet, BackupStore
from dcb.services.verify import verify_set
from dcb.services.volumes import mountpoint_usable

RESTORES_DIR = "restores"
TMP_SUFFIX = "__dcb_restore"
OLD_SUFFIX = "__dcb_old"
DEFAULT_RATE = 40 * 1024 * 1024  # bytes/s when no past restore says better


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


@dataclass(frozen=True)
class RestoreRequest:
    set_id: str
    databases: tuple[str, ...] | None = None
    volumes: tuple[str, ...] | None = None
    target_db: str | None = None
    """``--as NAME``: restore the one selected database under another name."""
    safety_backup: bool = True
    delta: bool = False
    """Keep volume files that pass rsync's quick check instead of rewriting everything."""


@dataclass(frozen=True)
class PlanStep:
    key: str
    title: str
    estimate_seconds: float = 0.0


@dataclass(frozen=True)
class RestorePlan:
    set: BackupSet
    databases: tuple[Artifact, ...]
    volumes: tuple[Artifact, ...]
    globals: Artifact | None
    target_db: str | None
    safety_backup: bool
    stop_containers: tuple[str, ...]
    stops_postgres: bool
    steps: tuple[PlanStep, ...]
    listings: dict[str, Listing] = field(default_factory=dict, compare=False, repr=False)
    notes: tuple[str, ...] = ()
    delta: bool = False

    @property
    def confirm_token(self) -> str:
        return self.set.id

    @property
    def estimate_seconds(self) -> float:
        return sum(s.estimate_seconds for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "set_id": self.set.id, "databases": [a.name for a in self.databases],
            "volumes": [a.name for a in self.volumes], "target_db": self.target_db,
            "roles": self.globals is not None, "safety_backup": self.safety_backup,
            "stop_containers": list(self.stop_containers), "stops_postgres": self.stops_postgres,
            "estimate_seconds": round(self.estimate_seconds, 1), "notes": list(self.notes),
            "delta": self.delta,
            "steps": [asdict(s) for s in self.steps],
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
    verification: dict[str, list[str]] = field(default_factory=dict)
    """Per database/volume: the differences found (empty: equal)."""
    error: str | None = None
    state: list[str] = field(default_factory=list)
    undo: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RestoreFlow:
    def __init__(self, cfg: Config, reporter: Reporter = null_reporter,
                 cancel: threading.Event | None = None, target: Target | None = None,
                 gw: DockerGateway | None = None) -> None:
        self.cfg = cfg
        self.report = locked(reporter)
        self.cancel = cancel or threading.Event()
        self.target = target or Target.live(cfg)
        self.store = BackupStore.for_config(cfg)
        self._gw = gw
        self._volume_diffs: dict[str, list[str]] = {}
        self.ledger = StoppedLedger(state_for(cfg).root)

    @property
    def gw(self) -> DockerGateway:
        if self._gw is None:
            self._gw = DockerGateway.connect(self.cfg.timeouts.docker_api)
        return self._gw

    @property
    def pg(self) -> PgGateway:
        t = self.target
        return PgGateway(self.gw, t.postgres_container, t.postgres_user, t.password)

    # -- 1. validate + 2. plan (nothing changes) --------------------------------------------------
    def prepare(self, request: RestoreRequest) -> RestorePlan:
        s = self.store.get(request.set_id)
        if s.status not in ("complete", "legacy"):
            raise RestoreError(f"set {s.id} is {s.status}: it cannot be restored"
                               + (f" ({s.error})" if s.error else ""))
        dbs, vols, glob = self._select(s, request)
        self.report(StageStarted("validate", sum(a.size_bytes for a in (*dbs, *vols))))
        t0 = time.monotonic()
        chosen = {(a.kind, a.name) for a in (*dbs, *vols, *([glob] if glob else []))}
        sub = BackupSet(id=s.id, path=s.path, status=s.status, created_at=s.created_at,
                        artifacts=tuple(a for a in s.artifacts if (a.kind, a.name) in chosen))
        check = verify_set(sub, reporter=self.report, cancel=self.cancel)
        if not check.ok:
            raise RestoreError(f"set {s.id} failed validation: " + "; ".join(check.problems()),
                               hint="nothing was changed; pick another set (`dcb list`)")
        listings: dict[str, Listing] = {}
        for a in vols:
            listings[a.name] = self._validate_volume(s, a)
        for a in (*dbs, *([glob] if glob else [])):
            self._validate_dump(s, a)
        self.report(StageFinished("validate", 0, time.monotonic() - t0))

        notes = []
        if s.legacy:
            notes.append("legacy set from the old scripts: no checksums or row counts recorded; "
                         "archives were read through instead")
        stops_pg = any(a.name == self.target.postgres_data_volume for a in vols)
        stop = self._containers_to_stop(vols) if request.target_db is None else ()
        safety = request.safety_backup and not self.target.sandbox and request.target_db is None
        steps = self._steps(s, dbs, vols, glob, stop, stops_pg, safety, request.target_db)
        return RestorePlan(set=s, databases=dbs, volumes=vols, globals=glob,
                           target_db=request.target_db, safety_backup=safety,
                           stop_containers=stop, stops_postgres=stops_pg, steps=steps,
                           listings=listings, notes=tuple(notes), delta=request.delta)

    def _select(self, s: BackupSet, r: RestoreRequest
                ) -> tuple[tuple[Artifact, ...], tuple[Artifact, ...], Artifact | None]:
        have_db = [a for a in s.artifacts if a.kind == "database"]
        have_vol = [a for a in s.artifacts if a.kind == "volume"]
        want_db, want_vol = r.databases, r.volumes
        if want_db is not None and want_vol is None:
            want_vol = ()
        if want_vol is not None and want_db is None:
            want_db = ()
        dbs = have_db if want_db is None else []
        for name in want_db or ():
            a = s.artifact("database", name)
            if a is None:
                raise UsageError(f"set {s.id} has no database {name!r}",
                                 hint="in it: " + ", ".join(x.name for x in have_db))
            dbs.append(a)
        vols = have_vol if want_vol is None else []
        for name in want_vol or ():
            a = s.artifact("volume", name)
            if a is None:
                raise UsageError(f"set {s.id} has no volume {name!r}",
                                 hint="in it: " + ", ".join(x.name for x in have_vol))
            vols.append(a)
        if r.target_db is not None:
            if len(dbs) != 1 or vols:
                raise UsageError("--as needs exactly one --db and no volumes")
            if not r.target_db.replace("_", "").isalnum():
                raise UsageError(f"--as {r.target_db!r}: use letters, digits and _ only")
        for a in vols:
            if a.name not in self.target.volumes:
                raise UsageError(f"volume {a.name!r} is not in [stack] volumes: "
                                 "dcb does not know where to restore it")
        if not dbs and not vols:
            raise UsageError("nothing selected to restore")
        glob = s.artifact("globals", "globals") if dbs else None
        return tuple(dbs), tuple(vols), glob

    def _validate_volume(self, s: BackupSet, a: Artifact) -> Listing:
        stage = f"validate {a.file}"
        meter = ByteMeter(stage, self.report)
        with open_decompressed(s.path / a.file, a.compression) as f:
            return validate_archive(_Metered(f, meter, self.cancel))  # type: ignore[arg-type]

    def _validate_dump(self, s: BackupSet, a: Artifact) -> None:
        path = s.path / a.file
        if a.source.get("format") == "custom":
            # Read in full by pg_restore in the (running) server container when we can;
            # the checksum above already proved the bytes are the ones written.
            if self._pg_running():
                with open_decompressed(path, a.compression) as f:
                    self.pg.check_custom_dump(_read_chunks(f, self.cancel))
            return
        tail = b""
        with open_decompressed(path, a.compression) as f:
            for b in _read_chunks(f, self.cancel):
                tail = (tail + b)[-256:]
        if b"dump complete" not in tail and not s.legacy:
            raise RestoreError(f"{a.file}: dump lacks its completion marker (truncated)",
                               hint="nothing was changed")

    def _pg_running(self) -> bool:
        c = self.gw.find_container(self.target.postgres_container)
        return c is not None and c.running

    def _containers_to_stop(self, vols: tuple[Artifact, ...]) -> tuple[str, ...]:
        names: list[str] = []
        for n in self.target.app_containers:
            c = self.gw.find_container(n)
            if c is not None and c.running:
                names.append(n)
        for a in vols:
            if a.name == self.target.postgres_data_volume:
                continue
            with contextlib.suppress(NotFound):
                for c in self.gw.containers_using_volume(self.target.volumes[a.name]):
                    if c.running and c.name not in names and \
                            c.name != self.target.postgres_container:
                        names.append(c.name)
        return tuple(names)

    def _rate(self) -> float:
        """Bytes/s of past restores, from the history; a default until one exists."""
        rates = [h["raw_bytes"] / h["seconds"] for h in _history(state_for(self.cfg).root)
                 if h.get("kind") == "restore" and h.get("ok") and h.get("seconds")
                 and h.get("raw_bytes")]
        return sum(rates[-5:]) / len(rates[-5:]) if rates else DEFAULT_RATE

    def _steps(self, s: BackupSet, dbs: tuple[Artifact, ...], vols: tuple[Artifact, ...],
               glob: Artifact | None, stop: tuple[str, ...], stops_pg: bool, safety: bool,
               target_db: str | None) -> tuple[PlanStep, ...]:
        rate = self._rate()

        def est(a: Artifact) -> float:
            return float(a.source.get("raw_bytes", a.size_bytes * 3)) / rate

        steps = []
        if safety:
            steps.append(PlanStep("safety", "safety snapshot of what will be replaced",
                                  sum(est(a) for a in (*dbs, *vols)) / 2))
        if stop:
            steps.append(PlanStep("stop", "stop " + ", ".join(stop), 10))
        if stops_pg:
            steps.append(PlanStep("stop-postgres", f"stop {self.target.postgres_container}", 10))
        for a in vols:
            steps.append(PlanStep(f"volume:{a.name}", f"replace volume {a.name}", est(a)))
        steps.append(PlanStep("postgres", "start PostgreSQL and wait until it answers", 5))
        if glob:
            steps.append(PlanStep("roles", "restore roles", 1))
        for a in dbs:
            name = target_db or a.name
            steps.append(PlanStep(f"database:{a.name}",
                                  f"restore database {a.name}"
                                  + (f" as {name}" if name != a.name else ""), est(a)))
        if stop:
            steps.append(PlanStep("restart", "start " + ", ".join(stop), 10))
        steps.append(PlanStep("verify", "verify row counts and file lists", 5))
        return tuple(steps)

    # -- preflight (still nothing changed) ------------------------------------------------------
    def preflight(self, plan: RestorePlan) -> list[str]:
        """Problems that must stop the restore before anything is touched."""
        problems = []
        if plan.databases and not plan.stops_postgres and not self.target.sandbox:
            if not self._pg_running():
                problems.append(f"PostgreSQL container {self.target.postgres_container} is "
                                "not running")
            else:
                major = self.pg.server_info().major
                dumped = plan.set.artifacts[0].source.get("server_version") or \
                    (plan.databases[0].source.get("server_version") or "")
                dumped_major = major_version(str(dumped))
                if dumped_major and dumped_major > major:
                    problems.append(f"the dump comes from PostgreSQL {dumped_major}, the server "
                                    f"runs {major}: pg_restore cannot go back a major version")
        for a in plan.volumes:
            need = int(a.source.get("raw_bytes") or a.size_bytes * 3)
            mp = self._mountpoint(a.name)
            if mp is not None:
                free = disk_usage(Path(mp)).free_bytes
                if need > free:
                    problems.append(f"volume {a.name} needs about {need} bytes, {free} free")
            elif self.cfg.storage.volume_access != "helper":
                problems.append(f"volume {a.name}: its mountpoint is not reachable from here "
                                "(run dcb as root on the Docker host)")
        for n in plan.stop_containers:
            if self.gw.find_container(n) is None:
                problems.append(f"container {n} not found")
        return problems

    def _mountpoint(self, volume: str) -> str | None:
        name = self.target.volumes[volume]
        try:
            mp = self.gw.volume(name).mountpoint
        except NotFound:
            return str(Path("/var/lib/docker/volumes")) if mountpoint_usable(
                "/var/lib/docker/volumes") else None
        return mp if mountpoint_usable(mp) else None

    # -- execute ------------------------------------------------------------------------------
    def execute(self, plan: RestorePlan, confirm: str) -> RestoreReport:
        if confirm != plan.confirm_token:
            raise UsageError("restore not confirmed: the confirmation must be the set id "
                             f"{plan.confirm_token}")
        problems = self.preflight(plan)
        if problems:
            raise RestoreError("preflight failed: " + "; ".join(problems),
                               hint="nothing was changed")
        with StoreLock.for_config(self.cfg, f"dcb restore {plan.set.id}"):
            return self._execute_locked(plan)

    def _execute_locked(self, plan: RestorePlan) -> RestoreReport:
        if not self.target.sandbox:
            restart_stopped(self.gw, self.ledger, self.report)
        now = datetime.now(UTC)
        rid = now.strftime("restore-%Y%m%dT%H%M%SZ")
        report = RestoreReport(restore_id=rid, set_id=plan.set.id)
        t_start = time.monotonic()
        stopped: list[str] = []
        pg_stopped = False
        done: set[str] = set()

        @contextlib.contextmanager
        def step(key: str) -> Iterator[StepRecord]:
            title = next((s.title for s in plan.steps if s.key == key), key)
            rec = StepRecord(key, title, datetime.now(UTC).isoformat(timespec="seconds"))
            report.steps.append(rec)
            self.report(StageStarted(title))
            t0 = time.monotonic()
            try:
                yield rec
            except BaseException as e:
                rec.outcome = "failed"
                rec.detail = rec.detail or str(e)
                rec.seconds = round(time.monotonic() - t0, 3)
                self.report(StageFailed(title, str(e)))
                raise
            rec.outcome = "ok"
            rec.seconds = round(time.monotonic() - t0, 3)
            done.add(key)
            self.report(StageFinished(title, 0, rec.seconds, rec.detail))
            if self.cancel.is_set():
                raise Cancelled("restore cancelled")

        try:
            if plan.safety_backup:
                with step("safety") as rec:
                    safety = BackupRun(self.cfg, self.report, self.cancel).run_locked(
                        self.gw, BackupRequest(
                            databases=tuple(a.name for a in plan.databases),
                            volumes=tuple(a.name for a in plan.volumes),
                            purpose="safety", restore_id=rid))
                    report.safety_set_id = safety.id
                    rec.detail = f"safety snapshot {safety.id}"
                    self.report(LogLine(f"safety snapshot {safety.id}: undo with "
                                        f"`dcb restore {safety.id} --yes`"))
            if plan.stop_containers:
                with step("stop"):
                    for n in plan.stop_containers:
                        self._stop(n)
                        stopped.append(n)
            if plan.stops_postgres:
                with step("stop-postgres"):
                    self._stop(self.target.postgres_container)
                    pg_stopped = True
            pg_vols = [a for a in plan.volumes if a.name == self.target.postgres_data_volume]
            other_vols = [a for a in plan.volumes if a not in pg_vols]
            for a in pg_vols:
                with step(f"volume:{a.name}") as rec:
                    rec.detail = self._restore_volume(plan, a)

            def restore_other_volumes() -> None:
                for a in other_vols:
                    with step(f"volume:{a.name}") as rec:
                        rec.detail = self._restore_volume(plan, a)

            # The app's volumes and the databases do not depend on each other: restoring
            # them at once uses both cores (file creation in the kernel vs. PostgreSQL).
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcb-restore") as pool:
                volumes_done = pool.submit(restore_other_volumes) if other_vols else None
                db_error: BaseException | None = None
                try:
                    with step("postgres"):
                        if pg_stopped or not self._pg_running():
                            self.gw.client.containers.get(
                                self.target.postgres_container).start()
                            self.ledger.clear([self.target.postgres_container])
                            pg_stopped = False
                        self.pg.wait_ready(timeout=self.cfg.timeouts.postgres_ready)
                    if plan.globals is not None:
                        with step("roles"):
                            self._restore_globals(plan.set, plan.globals)
                    for a in plan.databases:
                        with step(f"database:{a.name}") as rec:
                            rec.detail = self._restore_database(plan.set, a,
                                                                plan.target_db or a.name)
                except BaseException as e:
                    db_error = e
                if volumes_done is not None:
                    try:
                        volumes_done.result()
                    except BaseException:
                        if db_error is None:
                            raise
                if db_error is not None:
                    raise db_error
            if stopped:
                with step("restart"):
                    self._restart(stopped)
                    stopped = []
            with step("verify") as rec:
                report.verification = self._verify(plan)
                bad = {k: v for k, v in report.verification.items() if v}
                if bad:
                    rec.detail = "; ".join(f"{k}: {', '.join(v[:3])}" for k, v in bad.items())
                    raise RestoreError("verification found differences: " + rec.detail)
                rec.detail = "all equal"
            report.ok = True
        except BaseException as e:
            report.error = str(e) or type(e).__name__
            if pg_stopped:
                with contextlib.suppress(Exception):
                    self.gw.client.containers.get(self.target.postgres_container).start()
            if stopped:
                with contextlib.suppress(Exception):
                    self._restart(stopped)
            report.state = self._describe_state(plan, done)
            if report.safety_set_id:
                report.undo = f"dcb restore {report.safety_set_id} --yes"
            if not isinstance(e, DcbError | KeyboardInterrupt):
                raise
        finally:
            report.seconds = round(time.monotonic() - t_start, 3)
            self._write_incident(plan, report)
        return report

    def _describe_state(self, plan: RestorePlan, done: set[str]) -> list[str]:
        state = []
        for a in plan.volumes:
            state.append(f"volume {a.name}: " + ("restored from " + plan.set.id
                         if f"volume:{a.name}" in done else "unchanged or partly replaced"
                         if any(s.key == f"volume:{a.name}" for s in plan.steps) else ""))
        for a in plan.databases:
            name = plan.target_db or a.name
            state.append(f"database {name}: " + ("restored from " + plan.set.id
                         if f"database:{a.name}" in done else "unchanged (old data in place)"))
        return state

    # -- steps ----------------------------------------------------------------------------------
    def _stop(self, name: str) -> None:
        self.report(LogLine(f"stopping {name}"))
        if not self.target.sandbox:
            self.ledger.mark(name, "restore")
        try:
            self.gw.client.containers.get(name).stop(timeout=30)
        except Exception as e:
            raise RestoreError(f"could not stop {name}: {e}") from None

    def _restart(self, names: list[str]) -> None:
        for n in names:
            c = self.gw.client.containers.get(n)
            c.start()
        self.ledger.clear(names)
        deadline = time.monotonic() + 60
        for n in names:
            while True:
                info = self.gw.container(n)
                if info.running and info.health in (None, "healthy"):
                    break
                if time.monotonic() > deadline:
                    raise RestoreError(f"{n} did not come back up (state {info.state}, "
                                       f"health {info.health})")
                time.sleep(0.5)
            self.report(LogLine(f"{n} is running"))

    def _restore_volume(self, plan: RestorePlan, a: Artifact) -> str:
        name = self.target.volumes[a.name]
        try:
            info = self.gw.volume(name)
        except NotFound:
            self.gw.client.volumes.create(name)
            info = self.gw.volume(name)
            self.report(LogLine(f"created missing volume {name}"))
        if not mountpoint_usable(info.mountpoint):
            raise RestoreError(f"volume {name}: cannot write its mountpoint {info.mountpoint}",
                               hint="run dcb as root on the Docker host")
        dest = Path(info.mountpoint)
        # PostgreSQL's data dir is always rewritten whole: its files change in place.
        delta = plan.delta and a.name != self.target.postgres_data_volume
        if not delta:
            clear_directory(dest)
        meter = ByteMeter(f"volume {a.name}", self.report, a.source.get("raw_bytes"))
        with open_decompressed(plan.set.path / a.file, a.compression) as f:
            listing = extract_archive(_Metered(f, meter, self.cancel), dest,  # type: ignore[arg-type]
                                      expected=plan.listings.get(a.name), delta=delta)
        if delta:
            remove_extraneous(dest, listing)
        meter.flush()
        # Compared now, before anything starts on the volume: PostgreSQL rewrites its data
        # dir as it boots and an app may write at once.
        self._volume_diffs[a.name] = compare_tree(dest, listing)
        return f"{len(listing.entries)} entries"

    def _psql_input(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """A plain SQL stream for psql, its meta-commands refused (services/psql_guard.py):
        a dump from a destination may have been written by someone else."""
        restricts: bool | None = getattr(self, "_restricts", None)
        if restricts is None:
            restricts = self._restricts = psql_restricts(self.pg)
            if not restricts:
                self.report(LogLine(OLD_PSQL.format(container=self.target.postgres_container),
                                    "warning"))
        return restricted(chunks) if restricts else chunks

    def _restore_globals(self, s: BackupSet, a: Artifact) -> None:
        with open_decompressed(s.path / a.file, a.compression) as f:
            sql = f.read().decode("utf-8", "replace")
        lines = []
        for line in sql.splitlines():
            # Roles that exist already (postgres, or a second restore) are not errors.
            if line.startswith("CREATE ROLE ") and line.endswith(";"):
                line = (f"DO $dcb$ BEGIN {line} EXCEPTION WHEN duplicate_object THEN "
                        f"NULL; END $dcb$;")
            lines.append(line)
        script = "\n".join(lines).encode()
        with self.pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U",
                           self.target.postgres_user, "-d", "postgres", "-o", "/dev/null"],
                          stdin=True) as p:
            code = p.feed(self._psql_input(iter([script])))
            if code != 0:
                raise RestoreError(f"restoring roles failed: {_first_line(p.stderr_text)}")

    def _restore_database(self, s: BackupSet, a: Artifact, name: str) -> str:
        pg, user = self.pg, self.target.postgres_user
        tmp = f"{name}{TMP_SUFFIX}"
        exists = bool(pg.query(f"SELECT 1 FROM pg_database WHERE datname = {_lit(name)}"))
        owner = (pg.query(f"SELECT pg_get_userbyid(datdba) FROM pg_database "
                          f"WHERE datname = {_lit(name)}").strip() if exists else user)
        pg.query(f"DROP DATABASE IF EXISTS {_ident(tmp)} WITH (FORCE)")
        pg.query(f"CREATE DATABASE {_ident(tmp)} OWNER {_ident(owner)}")
        meter = ByteMeter(f"database {a.name}", self.report, a.source.get("raw_bytes"))
        fmt = a.source.get("format", "plain")
        if fmt == "custom":
            cmd = ["pg_restore", "-U", user, "-d", tmp, "--exit-on-error", "--no-password"]
        else:
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", tmp,
                   "-o", "/dev/null", "--no-password"]
        staged = self._stage_dump(s, a) if fmt == "custom" else None
        try:
            if staged is not None:
                # pg_restore -j2 needs a file it can seek: two cores replay the dump.
                container_path = staged[1]
                with pg.exec([*cmd, "-j", "2", container_path]) as p:
                    p.read_all()
                    code = p.wait(24 * 3600)
                meter.add(a.size_bytes)
            else:
                with open_decompressed(s.path / a.file, a.compression) as f, \
                        pg.exec(cmd, stdin=True) as p:
                    code = p.feed(self._psql_input(_read_chunks(f, self.cancel, meter)))
            if code != 0:
                raise RestoreError(f"restoring {a.name} failed, the old database is "
                                   f"untouched: {_first_line(p.stderr_text)}")
        except BaseException:
            with contextlib.suppress(DcbError):
                pg.query(f"DROP DATABASE IF EXISTS {_ident(tmp)} WITH (FORCE)")
            raise
        finally:
            if staged is not None:
                with contextlib.suppress(OSError):
                    os.unlink(staged[0])
        meter.flush()
        # Swap: the old database is renamed away only now that the new one is complete.
        old = f"{name}{OLD_SUFFIX}"
        if exists:
            pg.query(f"DROP DATABASE IF EXISTS {_ident(old)} WITH (FORCE)")
            pg.query(f"ALTER DATABASE {_ident(name)} WITH ALLOW_CONNECTIONS false")
            for attempt in range(10):
                pg.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         f"WHERE datname = {_lit(name)} AND pid <> pg_backend_pid()")
                try:
                    pg.query(f"ALTER DATABASE {_ident(name)} RENAME TO {_ident(old)}")
                    break
                except DcbError:
                    if attempt == 9:
                        pg.query(f"ALTER DATABASE {_ident(name)} WITH ALLOW_CONNECTIONS true")
                        raise
                    time.sleep(0.3)
        pg.query(f"ALTER DATABASE {_ident(tmp)} RENAME TO {_ident(name)}")
        if exists:
            pg.query(f"DROP DATABASE IF EXISTS {_ident(old)} WITH (FORCE)")
        return f"{meter.done} bytes replayed"

    def _stage_dump(self, s: BackupSet, a: Artifact) -> tuple[str, str] | None:
        """Put a custom-format dump where the server's container can read it as a file: in
        PostgreSQL's data volume, through its mountpoint (a hard link when the backup dir is
        on the same filesystem, else a copy). None when dcb cannot (not root beside the
        engine, or no data volume mounted): the dump is then streamed to pg_restore's stdin.
        """
        if a.compression != "none" or is_encrypted(s.path / a.file):
            return None
        c = self.gw.find_container(self.target.postgres_container)
        mount = next((m for m in (c.mounts if c else ()) if m.volume), None)
        if mount is None or not mountpoint_usable(mount.source):
            return None
        name = f".dcb-restore-{os.getpid()}-{a.name}.pgdump"
        host = os.path.join(mount.source, name)
        try:
            # Mode 0600 stays (a hard link shares the artifact's inode): pg_restore runs as
            # the container's default user, root in the official image.
            try:
                os.link(s.path / a.file, host)
            except OSError:
                shutil.copyfile(s.path / a.file, host)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(host)
            return None
        return host, f"{mount.destination.rstrip('/')}/{name}"

    def _verify(self, plan: RestorePlan) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a in plan.databases:
            name = plan.target_db or a.name
            expected = a.source.get("row_counts")
            if expected is None:
                out[f"database {name}"] = []
                self.report(LogLine(f"database {name}: no row counts recorded (legacy set)",
                                    "warning"))
                continue
            actual = self.pg.row_counts(name)
            diffs = [f"{t}: {actual.get(t)} rows, backup had {n}"
                     for t, n in expected.items() if actual.get(t) != n]
            diffs += [f"{t}: not in the backup" for t in actual if t not in expected]
            out[f"database {name}"] = diffs
        for a in plan.volumes:
            out[f"volume {a.name}"] = self._volume_diffs.get(a.name, ["not restored"])
        return out

    def _write_incident(self, plan: RestorePlan, report: RestoreReport) -> None:
        root = state_for(self.cfg).root
        with contextlib.suppress(OSError, DcbError):
            d = root / RESTORES_DIR
            d.mkdir(mode=0o700, exist_ok=True)
            data = {"plan": plan.to_json(), "report": report.to_json(),
                    "sandbox": self.target.sandbox}
            atomic_write_bytes(d / f"{report.restore_id}.json", json.dumps(data, indent=2)
                               .encode())
            if self.target.sandbox:
                return  # the drill records itself, with its measured RTO
            raw = sum(int(a.source.get("raw_bytes") or 0) for a in (*plan.databases,
                                                                      *plan.volumes))
            append_history(root, {"kind": "restore",
                                  "id": report.restore_id, "set_id": plan.set.id,
                                  "ok": report.ok, "seconds": report.seconds,
                                  "raw_bytes": raw, "error": report.error,
                                  "safety_set_id": report.safety_set_id,
                                  "at": datetime.now(UTC).isoformat(timespec="seconds")})


def compare_tree(root: Path, listing: Listing) -> list[str]:
    """Differences between a directory and an archive's listing: type, owner, mode, size,
    mtime, symlink target, hard links, extended attributes (ACLs and capabilities too)."""
    diffs: list[str] = []
    expected = listing.files()
    seen: set[str] = set()
    if listing.root is not None:
        r = listing.root
        st = root.stat()
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (r.uid, r.gid, r.mode):
            diffs.append(f".: owner {st.st_uid}:{st.st_gid} mode {oct(st.st_mode & 0o7777)}, "
                         f"archive {r.uid}:{r.gid} {oct(r.mode)}")
        elif read_xattrs(str(root), r.xattrs) != r.xattrs:
            diffs.append(".: extended attributes or ACLs differ from the archive")
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            full = Path(dirpath) / n
            rel = str(full.relative_to(root))
            seen.add(rel)
            e = expected.get(rel)
            if e is None:
                diffs.append(f"{rel}: not in the archive")
                continue
            st = full.lstat()
            kind = ("symlink" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                    else "file" if stat.S_ISREG(st.st_mode) else "special file")
            etype = "file" if e.type == "hardlink" else e.type
            if kind != etype:
                diffs.append(f"{rel}: is a {kind}, archive has a {e.type}")
            elif (st.st_uid, st.st_gid) != (e.uid, e.gid):
                diffs.append(f"{rel}: owner {st.st_uid}:{st.st_gid}, archive {e.uid}:{e.gid}")
            elif kind != "symlink" and st.st_mode & 0o7777 != e.mode:
                diffs.append(f"{rel}: mode {oct(st.st_mode & 0o7777)}, archive {oct(e.mode)}")
            elif kind == "file" and e.type == "file" and st.st_size != e.size:
                diffs.append(f"{rel}: {st.st_size} bytes, archive {e.size}")
            elif kind == "symlink" and os.readlink(full) != e.linkname:
                diffs.append(f"{rel}: link to {os.readlink(full)}, archive {e.linkname}")
            elif kind != "dir" and int(st.st_mtime) != e.mtime:
                diffs.append(f"{rel}: modified at {int(st.st_mtime)}, archive {e.mtime}")
            elif e.type == "hardlink" and e.linkname is not None and not os.path.samefile(
                    full, root / e.linkname):
                diffs.append(f"{rel}: not a hard link to {e.linkname}")
            elif e.type != "hardlink" and read_xattrs(str(full), e.xattrs) != e.xattrs:
                diffs.append(f"{rel}: extended attributes or ACLs differ from the archive")
        dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]
    diffs += [f"{p}: missing" for p in expected if p not in seen]
    return diffs


class _Metered:
    """A read-only file wrapper that counts bytes and honours cancellation."""

    def __init__(self, f: Any, meter: ByteMeter, cancel: threading.Event) -> None:
        self.f = f
        self.meter = meter
        self.cancel = cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("restore cancelled")
        b: bytes = self.f.read(n)
        self.meter.add(len(b))
        return b


def _read_chunks(f: Any, cancel: threading.Event, meter: ByteMeter | None = None
                 ) -> Iterator[bytes]:
    while True:
        if cancel.is_set():
            raise Cancelled("restore cancelled")
        b = f.read(CHUNK)
        if not b:
            return
        if meter is not None:
            meter.add(len(b))
        yield b


def _history(root: Path) -> list[dict[str, Any]]:
    from dcb.services.backup import read_history

    return read_history(root)



def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if "ERROR" in line or "error" in line or "FATAL" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else "no error output"


ConfirmFn = Callable[[RestorePlan], bool]
