"""The guided restore: validate, plan, confirm, undo point, restore, verify.

Nothing changes before ``execute`` is called with the confirmation token (the set id), so the
CLI and the TUI share one safety rule. The plan is a list of step objects
(services/restore_steps.py) that both front ends display and the engine executes, one by one,
each timed into an incident log written as it goes (a killed run leaves its last step).

The way back costs no copy (services/undo.py): a replaced database is kept renamed, a replaced
volume's directory is moved into a labelled undo volume and the archive is extracted into a
fresh, empty directory; ``dcb undo RESTORE_ID`` swaps back. Where moving is impossible a
safety set is taken instead. Databases are restored into a temporary database (with the
archive's encoding, locale, owner, settings, comment and grants) and swapped in by renaming
only once complete, so a broken dump leaves the old database in place. Volumes are replaced
only after their archive was validated member by member (services/safe_tar.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from dcb.services import faults
from dcb.services.artifacts import CHUNK
from dcb.services.backup import ensure_store_dir
from dcb.services.compose import compose_labels, up_command
from dcb.services.config import Config
from dcb.services.disk import disk_usage
from dcb.services.docker_gateway import ContainerInfo, DockerGateway
from dcb.services.encryption import is_encrypted, open_decrypted_from
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.lock import StoreLock
from dcb.services.postgres import CLUSTER_DUMP_END, PLAIN_DUMP_END, PgGateway, major_version
from dcb.services.progress import (
    ByteMeter,
    Reporter,
    StageFinished,
    StageStarted,
    locked,
    null_reporter,
)
from dcb.services.restore_estimate import Estimator, read_samples
from dcb.services.restore_model import (
    BlastRadius,
    Check,
    DatabaseChange,
    RestoreError,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
    StepRecord,
    Target,
    VolumeChange,
    pg_data_artifact,
)
from dcb.services.restore_steps import (
    DatabaseStep,
    PostgresReadyStep,
    RestartStep,
    RestoreRun,
    RolesStep,
    SafetySetStep,
    StageVolumeStep,
    StartPostgresStep,
    Step,
    StopPostgresStep,
    StopStep,
    SwapStep,
    UndoPointStep,
    VerifyStep,
    VolumeStep,
)
from dcb.services.safe_tar import Listing, read_xattrs, validate_archive
from dcb.services.state import RESTORES_DIR, state_for
from dcb.services.stopped import StoppedLedger
from dcb.services.store import Artifact, BackupSet, BackupStore
from dcb.services.undo import UNDO_DIR
from dcb.services.volumes import (
    ClusterVolumes,
    cluster_layout,
    mountpoint_usable,
    resolve_pg_data_volume,
    safe_subdir,
)

UNDO_MODES = ("move", "safety", "none")

__all__ = ["RESTORES_DIR", "BlastRadius", "Check", "DatabaseChange", "RestoreError",
           "RestoreFlow", "RestorePlan", "RestoreReport", "RestoreRequest", "StepRecord",
           "Target", "VolumeChange", "compare_tree"]


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
        self.state = state_for(cfg)
        self.root = self.state.root
        """The state dir: incident logs, undo point records, the stopped-container ledger
        (never the backup dir when that is read-only)."""
        self.ledger = StoppedLedger(self.root)

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
        pg_art = pg_data_artifact(vols, self.target.postgres_data_volume)
        pg_state = self._require_postgres(bool(dbs), pg_art is not None)
        targets, pg_data, subdir, route_notes = self._route_volumes(vols, pg_art)
        stops_pg = pg_data is not None
        undo = self._undo_mode(request, vols, targets)
        # Staged: every volume extracted into its undo volume and every database restored
        # into a temporary one while the stack runs; then one swap (renames). Reading the
        # archives through then happens there, before anything live changes.
        staged = undo == "move" and not stops_pg and not request.delta
        checks, listings, digests = self._validate(
            s, dbs, vols, glob, pg_running=pg_state == "running",
            defer=staged and not request.validate_now)

        notes = route_notes
        if s.legacy:
            notes.append("legacy set from the old scripts: no checksums or row counts recorded; "
                         "archives were read through instead")
        stop, missing = ((), ()) if request.target_db is not None else \
            self._containers_to_stop(vols, targets, pg_data)
        notes += [f"app container {n} does not exist: nothing to stop or start"
                  for n in missing]
        starts_pg = bool(dbs) and not stops_pg and not self.target.sandbox and \
            pg_state == "stopped"
        if request.safety_backup and undo == "safety" and not self.target.sandbox:
            notes.append("the replaced volumes cannot be moved aside here (" + self._why_safety(
                request, vols, targets) + "): a safety set is taken instead")
        plan = RestorePlan(set=s, databases=dbs, volumes=vols, globals=glob,
                           target_db=request.target_db, undo=undo, stop_containers=stop,
                           stops_postgres=stops_pg, steps=(), listings=listings,
                           digests=digests,
                           notes=tuple(notes), delta=request.delta, roles=request.roles,
                           starts_postgres=starts_pg, checks=tuple(checks),
                           missing_containers=missing, staged=staged,
                           volume_targets=targets, pg_data=pg_data, pg_data_subdir=subdir)
        return replace(plan, steps=self._steps(plan))

    def replan(self, plan: RestorePlan, safety_backup: bool) -> RestorePlan:
        """The same validated plan with or without its way back (the wizard's switch)."""
        if safety_backup == plan.safety_backup:
            return plan
        if not safety_backup:
            undo = "none"
        else:
            undo = self._undo_mode(RestoreRequest(plan.set.id, delta=plan.delta,
                                                  target_db=plan.target_db), plan.volumes,
                                   plan.volume_targets)
        new = replace(plan, undo=undo, staged=plan.staged and undo == "move")
        return replace(new, steps=self._steps(new))

    def _require_postgres(self, databases: bool, stops_pg: bool) -> str:
        """``running``, ``stopped`` or ``none``: a database step (or the data volume's restart)
        needs the container, so a missing one stops everything here (exit 4)."""
        if self.target.sandbox:
            return "running" if self._pg_running() else "stopped"
        c = self.gw.find_container(self.target.postgres_container)
        if c is None:
            if databases or stops_pg:
                labels = compose_labels(self.gw, self.target.app_containers,
                                        tuple(self.target.volumes.values()))
                raise NotFound(
                    f"PostgreSQL container {self.target.postgres_container!r} does not exist: "
                    "the databases cannot be restored without it; nothing was changed",
                    hint=f"create it again: {up_command(self.target.postgres_container, labels)}"
                         " (restoring only volumes does not need it)")
            return "none"
        return "running" if c.running else "stopped"

    def _route_volumes(self, vols: tuple[Artifact, ...], pg_art: Artifact | None
                       ) -> tuple[dict[str, str], str | None, str, list[str]]:
        """Where each volume goes: its Docker volume; PostgreSQL's data volume into the one
        the PostgreSQL container mounts at its data directory, whatever the names (Compose
        prefixes them). A volume the live cluster runs on is always treated as its data
        volume (replaced with the server stopped); a volume holding other files of the
        cluster (a separate pg_wal, a tablespace) is refused. Returns (targets, the data
        volume's name in the set, the data directory below its mount, notes)."""
        t = self.target
        targets: dict[str, str] = {}
        for a in vols:
            if a is pg_art:
                continue
            if a.name not in t.volumes:
                raise UsageError(f"volume {a.name!r} is not in [stack] volumes: "
                                 "dcb does not know where to restore it")
            targets[a.name] = t.volumes[a.name]
        c = self.gw.find_container(t.postgres_container) if vols else None
        if c is None:
            if pg_art is not None:  # only a sandbox gets here (_require_postgres)
                targets[pg_art.name] = t.volumes.get(pg_art.name, pg_art.name)
            return targets, pg_art.name if pg_art else None, ".", []
        layout = self._cluster_layout(c)
        notes: list[str] = []
        if layout.data_volume is not None:
            for a in vols:
                if a is pg_art or targets.get(a.name) != layout.data_volume:
                    continue
                if pg_art is not None:
                    raise RestoreError(f"volumes {pg_art.name} and {a.name} would both go "
                                       f"into PostgreSQL's data volume {layout.data_volume}",
                                       hint="restore one of them (--volume)")
                pg_art = a
                del targets[a.name]
                notes.append(f"volume {a.name} is PostgreSQL's data volume (mounted at "
                             f"{layout.data_mount} in {c.name}): PostgreSQL is stopped while "
                             f"it is replaced; the archive was taken by "
                             f"{a.source.get('method') or 'another tool'}, not "
                             "pg_basebackup, so the cluster may not start from it")
        for name, docker_volume in targets.items():
            if docker_volume in layout.parts:
                raise RestoreError(
                    f"volume {name} holds files of the PostgreSQL cluster "
                    f"({layout.parts[docker_volume]} in {c.name}): replacing it alone "
                    "would break the cluster; nothing was changed",
                    hint="restore PostgreSQL's data volume and the databases instead")
        if pg_art is None:
            return targets, None, ".", notes
        if layout.data_volume is None:
            raise RestoreError(
                f"PostgreSQL's data directory {layout.data_directory} in {c.name} is not on a "
                f"named volume: dcb cannot restore volume {pg_art.name} into it; nothing was "
                "changed", hint="restore the databases only (--db NAME)")
        if not t.sandbox:
            explicit = self.cfg.sources.get("stack.postgres_data_volume",
                                            "default") != "default"
            resolve_pg_data_volume(self.cfg.stack.postgres_data_volume, explicit, c, layout,
                                   tuple(targets.values()))
        targets[pg_art.name] = layout.data_volume
        recorded = safe_subdir(pg_art.source.get("data_subdir"))
        if recorded != layout.data_subdir:
            notes.append(f"the backup found the data directory at {recorded!r} in its volume, "
                         f"{c.name} now uses {layout.data_subdir!r}: restored there")
        return targets, pg_art.name, layout.data_subdir, notes

    def _cluster_layout(self, c: ContainerInfo) -> ClusterVolumes:
        return cluster_layout(self.gw, c, self.pg.query if c.running else None)

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
            if r.roles:
                raise UsageError("--as touches nothing but the new database: no --roles")
        if not dbs and not vols:
            raise UsageError("nothing selected to restore")
        glob = s.artifact("globals", "globals") if dbs and r.target_db is None else None
        return tuple(dbs), tuple(vols), glob

    # -- validation -------------------------------------------------------------------------------
    def _validate(self, s: BackupSet, dbs: tuple[Artifact, ...], vols: tuple[Artifact, ...],
                  glob: Artifact | None, pg_running: bool, defer: bool = False
                  ) -> tuple[list[Check], dict[str, Listing], dict[str, str]]:
        """Every selected artifact read once: its checksum and, in the same pass, its content
        (each tar member checked, each dump read through). Two at a time: the volumes' tar
        checks run here while pg_restore reads the dumps in the server's container."""
        arts = [*vols, *dbs, *([glob] if glob else [])]
        total = sum(a.size_bytes for a in arts)
        self.report(StageStarted("validate", total))
        t0 = time.monotonic()
        listings: dict[str, Listing] = {}
        digests: dict[str, str] = {}
        checks: dict[int, Check] = {}
        problems: list[str] = []

        def one(i: int, a: Artifact) -> None:
            try:
                check, listing, digest = self._validate_artifact(
                    s, a, pg_running, defer=defer and a.kind != "globals")
            except Cancelled:
                raise
            except DcbError as e:
                problems.append(f"{a.file}: {e.message}")
                return
            checks[i] = check
            if listing is not None:
                listings[a.name] = listing
                digests[a.name] = digest
            faults.hold("validate", self.cancel)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="dcb-validate") as pool:
            futures = [pool.submit(one, i, a) for i, a in enumerate(arts)]
            for f in futures:
                f.result()
        if self.cancel.is_set():
            raise Cancelled("restore cancelled")
        if problems:
            raise RestoreError(f"set {s.id} failed validation: " + "; ".join(problems),
                               hint="nothing was changed; pick another set (`dcb list`)")
        ordered = [checks[i] for i in sorted(checks)]
        with_sums = [a for a in arts if a.sha256 and not (defer and a.kind == "volume")]
        head = [Check("checksums", True, f"checksums of {len(with_sums)} artifact(s) match "
                                         "the manifest")] if with_sums else []
        if any(not a.sha256 for a in arts):
            head.append(Check("checksums", None, "legacy set: no checksums recorded"))
        self.report(StageFinished("validate", total, time.monotonic() - t0))
        return head + ordered, listings, digests

    def _validate_artifact(self, s: BackupSet, a: Artifact, pg_running: bool,
                           defer: bool = False) -> tuple[Check, Listing | None, str]:
        path = s.path / a.file
        if path.is_symlink():
            raise RestoreError("a symlink: refused")  # it could name any file on the host
        try:
            size = path.stat().st_size
        except OSError:
            raise RestoreError("missing") from None
        if size != a.size_bytes and a.sha256 is not None:
            raise RestoreError(f"size {size} bytes, manifest says {a.size_bytes} "
                               "(truncated or replaced)")
        meter = ByteMeter(f"validate {a.file}", self.report, a.size_bytes)
        with _HashingReader(path, meter, self.cancel) as raw:
            try:
                if defer:
                    check, listing = _deferred(a, pg_running), None
                    if a.kind == "volume" and a.sha256 is not None:
                        # Its checksum is checked when it is staged (one read, not two).
                        meter.flush()
                        return check, None, a.sha256
                elif is_encrypted(path):
                    # Decrypted as it is read: the stored bytes are hashed, their plaintext
                    # checked, in one pass.
                    with open_decrypted_from(raw, a.file) as plain:
                        check, listing = self._validate_content(a, plain, pg_running)
                        while plain.read(CHUNK):
                            pass  # age checks every chunk through to the last
                else:
                    check, listing = self._validate_content(a, raw, pg_running)
            except Cancelled:
                raise
            except (DcbError, OSError, EOFError, zstandard.ZstdError) as e:
                raw.drain()
                if a.sha256 is not None and raw.hexdigest() != a.sha256:
                    raise RestoreError("checksum mismatch (corrupted)") from None
                raise RestoreError(getattr(e, "message", None) or str(e)) from None
            raw.drain()
        if a.sha256 is not None and raw.hexdigest() != a.sha256:
            raise RestoreError("checksum mismatch (corrupted)")
        meter.flush()
        return check, listing, raw.hexdigest()

    def _validate_content(self, a: Artifact, raw: Any, pg_running: bool
                          ) -> tuple[Check, Listing | None]:
        f = _decompressed(raw, a.compression)
        if a.kind == "volume":
            listing = validate_archive(f)
            return Check(f"volume {a.name}", True, f"archive read through, "
                         f"{len(listing.entries)} entries checked"), listing
        if a.source.get("format") == "custom":
            if not pg_running:
                return Check(f"database {a.name}", None,
                             "dump not read through: PostgreSQL is not running (its checksum "
                             "matches; pg_restore reads it during the restore, before the "
                             "old database is touched)"), None
            self.pg.check_custom_dump(_read_chunks(f, self.cancel))
            return Check(f"database {a.name}", True, "dump read through by pg_restore"), None
        tail = b""
        for b in _read_chunks(f, self.cancel):
            tail = (tail + b)[-256:]
        marker = CLUSTER_DUMP_END if a.kind == "globals" else PLAIN_DUMP_END
        what = "roles" if a.kind == "globals" else f"database {a.name}"
        if marker not in tail:
            if a.source.get("legacy"):
                return Check(what, None, "legacy dump read through; it has no completion "
                                         "marker to check"), None
            raise RestoreError("dump lacks its completion marker (truncated)")
        return Check(what, True, "dump read through, completion marker found"), None

    def _pg_running(self) -> bool:
        c = self.gw.find_container(self.target.postgres_container)
        return c is not None and c.running

    def _containers_to_stop(self, vols: tuple[Artifact, ...], targets: dict[str, str],
                            pg_data: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        names: list[str] = []
        missing: list[str] = []
        for n in self.target.app_containers:
            c = self.gw.find_container(n)
            if c is None:
                missing.append(n)
            elif c.running:
                names.append(n)
        for a in vols:
            if a.name == pg_data:
                continue
            with contextlib.suppress(NotFound):
                for c in self.gw.containers_using_volume(targets[a.name]):
                    if c.running and c.name not in names and \
                            c.name != self.target.postgres_container:
                        names.append(c.name)
        return tuple(names), tuple(missing)

    # -- the way back -------------------------------------------------------------------------
    def _undo_mode(self, r: RestoreRequest, vols: tuple[Artifact, ...],
                   targets: dict[str, str]) -> str:
        if not r.safety_backup or self.target.sandbox:
            return "none"
        return "safety" if self._why_safety(r, vols, targets) else "move"

    def _why_safety(self, r: RestoreRequest, vols: tuple[Artifact, ...],
                    targets: dict[str, str]) -> str:
        """Why the volumes' contents cannot be moved aside ("" when they can)."""
        if not vols:
            return ""
        if r.delta:
            return "--delta keeps files in place"
        if self.cfg.storage.volume_access == "helper":
            return "volumes are reached through helper containers"
        for a in vols:
            try:
                mp = self.gw.volume(targets[a.name]).mountpoint
            except NotFound:
                continue  # absent: nothing to move
            if not mountpoint_usable(mp):
                return "dcb cannot reach the volumes' mountpoints (run it as root beside " \
                       "the engine)"
            volumes_root = Path(mp).parent.parent
            with contextlib.suppress(OSError):
                if os.stat(mp).st_dev != os.stat(volumes_root).st_dev:
                    return f"volume {a.name} is on another filesystem"
        return ""

    # -- the plan's steps -----------------------------------------------------------------------
    def _steps(self, plan: RestorePlan) -> tuple[Step, ...]:
        """The plan's steps, each estimated from past restores (services/restore_estimate)."""
        sizes = {f"{a.kind}:{a.name}": int(a.source.get("raw_bytes") or a.size_bytes * 3)
                 for a in (*plan.databases, *plan.volumes)}
        estimator = Estimator(read_samples(self.state.incident_dirs()))
        return estimator.apply(self._plan_steps(plan, lambda a: 0.0), sizes)

    def _plan_steps(self, plan: RestorePlan, est: Callable[[Artifact], float]
                    ) -> tuple[Step, ...]:
        t = self.target
        steps: list[Step] = []
        if plan.starts_postgres:
            steps.append(StartPostgresStep("start-postgres", f"start {t.postgres_container} "
                                           "(it is stopped) and wait until it answers", 5))
        if plan.undo == "move":
            steps.append(UndoPointStep("undo-point", "undo point: keep what will be replaced "
                                       "(renamed, nothing copied)", 1))
        elif plan.undo == "safety":
            steps.append(SafetySetStep("safety", "safety snapshot of what will be replaced",
                                       sum(est(a) for a in (*plan.databases, *plan.volumes)) / 2))
        if plan.staged:
            return tuple(steps + self._staged_steps(plan, est))
        if plan.stop_containers:
            steps.append(StopStep("stop", "stop " + ", ".join(plan.stop_containers), 10))
        if plan.stops_postgres:
            steps.append(StopPostgresStep("stop-postgres", f"stop {t.postgres_container}", 10))
        for a in plan.volumes:
            lane = "main" if plan.is_pg_data(a) else "pool"
            steps.append(VolumeStep(f"volume:{a.name}", f"replace volume {a.name}", est(a),
                                    lane=lane, name=a.name))
        if plan.databases or plan.stops_postgres:
            steps.append(PostgresReadyStep("postgres", "start PostgreSQL and wait until it "
                                           "answers", 5))
        if plan.globals:
            steps.append(RolesStep("roles", "restore roles" + (" (reset existing ones)"
                                                               if plan.roles else
                                                               " (create missing ones)"), 1))
        for a in plan.databases:
            name = plan.target_db or a.name
            steps.append(DatabaseStep(f"database:{a.name}", f"restore database {a.name}"
                                      + (f" as {name}" if name != a.name else ""), est(a),
                                      name=a.name, target=name))
        if plan.stop_containers:
            steps.append(RestartStep("restart", "start " + ", ".join(plan.stop_containers), 10,
                                     joins=True))
        steps.append(VerifyStep("verify", "verify row counts, properties and file lists", 5,
                                joins=True))
        return tuple(steps)

    def _staged_steps(self, plan: RestorePlan, est: Callable[[Artifact], float]
                      ) -> list[Step]:
        """Stage everything while the stack runs (two workers: the volumes first, then the
        databases, longest first, once PostgreSQL answers and the roles exist), then stop the
        apps, swap, start them again, verify."""
        steps: list[Step] = [
            StageVolumeStep(f"volume:{a.name}", f"stage volume {a.name} (checked as it is "
                            "extracted aside; nothing live changes)", est(a), lane="pool",
                            name=a.name) for a in plan.volumes]
        if plan.databases:
            steps.append(PostgresReadyStep("postgres", "check that PostgreSQL answers", 1))
        if plan.globals:
            steps.append(RolesStep("roles", "restore roles" + (" (reset existing ones)"
                                                               if plan.roles else
                                                               " (create missing ones)"), 1))
        for a in sorted(plan.databases, key=est, reverse=True):
            name = plan.target_db or a.name
            steps.append(DatabaseStep(f"database:{a.name}", f"restore database {a.name} into "
                                      "a temporary database", est(a), name=a.name,
                                      target=name, swap=False, lane="pool"))
        if plan.stop_containers:
            steps.append(StopStep("stop", "stop " + ", ".join(plan.stop_containers), 10,
                                  joins=True))
        what = [f"volume {a.name}" for a in plan.volumes] + \
               [f"database {plan.target_db or a.name}" for a in plan.databases]
        steps.append(SwapStep("swap", "swap in " + ", ".join(what) + " (renames)", 1,
                              joins=True))
        if plan.stop_containers:
            steps.append(RestartStep("restart", "start " + ", ".join(plan.stop_containers), 10))
        steps.append(VerifyStep("verify", "verify row counts, properties and file lists", 5,
                                joins=True))
        return steps

    # -- preflight (still nothing changed) ------------------------------------------------------
    def preflight(self, plan: RestorePlan) -> list[str]:
        """Problems that must stop the restore before anything is touched."""
        problems = []
        if plan.databases and not plan.stops_postgres and not self.target.sandbox \
                and self._pg_running():
            major = self.pg.server_info().major
            dumped = plan.set.artifacts[0].source.get("server_version") or \
                (plan.databases[0].source.get("server_version") or "")
            dumped_major = major_version(str(dumped))
            if dumped_major and dumped_major > major:
                problems.append(f"the dump comes from PostgreSQL {dumped_major}, the server "
                                f"runs {major}: pg_restore cannot go back a major version")
        keeps_old = plan.undo == "move"
        for a in plan.volumes:
            with contextlib.suppress(NotFound):
                mount = self.gw.volume(plan.docker_volume(a.name)).mount
                if mount:
                    problems.append(
                        f"volume {a.name} is mounted by Docker only while a container uses "
                        f"it ({mount}): dcb restores through the host directory, which "
                        "would write beneath the mount; restore it by hand: tar -x of its "
                        "archive inside a container that mounts the volume")
                    continue
            need = int(a.source.get("raw_bytes") or a.size_bytes * 3)
            mp = self._mountpoint(plan.docker_volume(a.name))
            if mp is not None:
                free = disk_usage(Path(mp)).free_bytes
                if need > free:
                    problems.append(self._space_problem(f"volume {a.name}", need, free,
                                                        keeps_old))
            elif self.cfg.storage.volume_access != "helper":
                problems.append(f"volume {a.name}: its mountpoint is not reachable from here "
                                "(run dcb as root on the Docker host)")
        if plan.databases and keeps_old and not plan.stops_postgres and not self.target.sandbox:
            need = sum(int(a.source.get("raw_bytes") or a.size_bytes) * 3
                       for a in plan.databases)
            c = self.gw.find_container(self.target.postgres_container)
            data_volume = self._cluster_layout(c).data_volume if c is not None else None
            mp = self._mountpoint(data_volume) if data_volume else None
            if mp is not None:
                free = disk_usage(Path(mp)).free_bytes
                if need > free:
                    problems.append(self._space_problem("the databases", need, free, True))
        for n in plan.stop_containers:
            if self.gw.find_container(n) is None:
                problems.append(f"container {n} not found")
        if plan.undo == "safety":
            try:
                ensure_store_dir(self.cfg.backup_dir)
            except DcbError as e:
                problems.append(f"no safety snapshot possible: {e.message}; restore with "
                                "--no-safety-backup (it cannot be undone then)")
        return problems

    def _space_problem(self, what: str, need: int, free: int, keeps_old: bool) -> str:
        from dcb.services import formatting as fmt
        from dcb.services.undo import UndoStore

        text = f"{what} needs about {fmt.size(need)}, {fmt.size(free)} free"
        if keeps_old:
            text += " (the undo point keeps the replaced data until it is released"
            live = [p.restore_id for p in UndoStore(self.root).list() if p.live]
            if live:
                text += "; undo points held now: " + ", ".join(live) + \
                        " (`dcb undo --release ID`)"
            text += "; --no-safety-backup replaces in place)"
        return text

    def _mountpoint(self, docker_volume: str) -> str | None:
        try:
            mp = self.gw.volume(docker_volume).mountpoint
        except NotFound:
            return str(Path("/var/lib/docker/volumes")) if mountpoint_usable(
                "/var/lib/docker/volumes") else None
        return mp if mountpoint_usable(mp) else None

    # -- what will change -------------------------------------------------------------------------
    def blast_radius(self, plan: RestorePlan) -> BlastRadius:
        """Each volume's size and users and each database's size and live connections, now."""
        gw = self.gw
        vols = []
        sizes = gw.volume_sizes() if plan.volumes else {}
        for a in plan.volumes:
            name = plan.docker_volume(a.name)
            try:
                gw.volume(name)
                exists = True
                users = tuple(c.name for c in gw.containers_using_volume(name))
            except NotFound:
                exists, users = False, ()
            vols.append(VolumeChange(a.name, name, exists, sizes.get(name), users,
                                     a.source.get("raw_bytes")))
        dbs = []
        running = bool(plan.databases) and self._pg_running()
        for a in plan.databases:
            name = plan.target_db or a.name
            rows = sum((a.source.get("row_counts") or {}).values()) or None
            info = None
            if running:
                with contextlib.suppress(DcbError):
                    info = self.pg.database_info(name)
            dbs.append(DatabaseChange(
                name=name, exists=(info is not None) if running else None,
                size_bytes=info.size_bytes if info else None,
                connections=info.connections if info else None,
                dump_bytes=a.size_bytes, rows=rows))
        return BlastRadius(tuple(vols), tuple(dbs), plan.stop_containers, plan.stops_postgres,
                           plan.starts_postgres, plan.missing_containers)

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
            from dcb.services.undo_flow import recover, release_expired

            if not self.target.sandbox:
                recover(self.cfg, self.gw, self.report, self.target)
                release_expired(self.cfg, self.gw, self.report)
            rid = new_restore_id(self.root, also=tuple(self.state.incident_dirs()))
            return RestoreRun(self, plan, rid).execute()


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


def _deferred(a: Artifact, pg_running: bool) -> Check:
    """A staged restore reads the content when it stages it, before anything live changes."""
    if a.kind == "volume":
        return Check(f"volume {a.name}", None, "checksum and every member checked as it is "
                     "staged, before anything live changes")
    down = "PostgreSQL is not running now; " if not pg_running else ""
    return Check(f"database {a.name}", None, f"{down}checksum matches; read through by "
                 "pg_restore into a temporary database, before anything live changes")


class _HashingReader:
    """The artifact's file, hashed (SHA-256) and counted as it is read, honouring cancel."""

    def __init__(self, path: Path, meter: ByteMeter, cancel: threading.Event) -> None:
        # Never through a symlink: a set's files are input (services/artifacts.py).
        self.f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
        self.sha = hashlib.sha256()
        self.meter = meter
        self.cancel = cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("restore cancelled")
        b = self.f.read(n)
        self.sha.update(b)
        self.meter.add(len(b))
        return b

    def readinto(self, buf: Any) -> int:
        b = self.read(len(buf))
        buf[:len(b)] = b
        return len(b)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        """Read (and hash) whatever the content check did not need (padding, trailers)."""
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def __enter__(self) -> _HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _decompressed(raw: Any, compression: str) -> BinaryIO:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)
    if compression == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


class Metered:
    """A read-only file wrapper that counts bytes and honours cancellation."""

    def __init__(self, f: Any, meter: ByteMeter, cancel: Callable[[], bool]) -> None:
        self.f = f
        self.meter = meter
        self.cancelled = cancel

    def read(self, n: int = -1) -> bytes:
        if self.cancelled():
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


def new_restore_id(root: Path, now: datetime | None = None,
                   also: tuple[Path, ...] = ()) -> str:
    """``restore-YYYYMMDDTHHMMSSZ`` (``-2``, ``-3`` for restores in the same second), unused
    in the state dir ``root`` and in the incident log dirs ``also``."""
    base = (now or datetime.now(UTC)).strftime("restore-%Y%m%dT%H%M%SZ")
    rid, n = base, 1
    dirs = (root / RESTORES_DIR, root / UNDO_DIR, *also)
    while any((d / f"{rid}.json").exists() for d in dirs):
        n += 1
        rid = f"{base}-{n}"
    return rid


ConfirmFn = Callable[[RestorePlan], bool]
