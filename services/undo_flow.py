"""Running undo points (services/undo.py): ``dcb undo``, releases, and the recovery every
restore and undo starts with.

All of it runs under the store's lock. :func:`recover` finishes what a killed restore left:
containers it stopped are started, dumps it staged in PostgreSQL's data volume are removed,
its incident log is closed as interrupted, its undo point marked ``interrupted`` (a volume
directory a move took away is put back, empty) and its temporary database dropped. From there
``dcb undo RESTORE_ID`` or a rerun of the restore reaches a known state.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcb.services.artifacts import atomic_write_bytes
from dcb.services.backup import restart_stopped
from dcb.services.config import Config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled, DcbError, NotFound
from dcb.services.lock import StoreLock
from dcb.services.pg_objects import fit_identifier, ident
from dcb.services.postgres import PgGateway
from dcb.services.progress import LogLine, Reporter, StageFinished, StageStarted, null_reporter
from dcb.services.restore_model import Target
from dcb.services.restore_steps import (
    LEGACY_STAGED_PREFIX,
    NOTHING_CHANGED,
    STAGED_PREFIX,
    TMP_SUFFIX,
)
from dcb.services.state import StateDir, state_for
from dcb.services.stopped import StoppedLedger
from dcb.services.store import BackupStore
from dcb.services.undo import (
    UndoError,
    UndoPoint,
    UndoStore,
    check_restore_id,
    due,
    ensure_directory,
    now_iso,
    release_point,
    swap_back_databases,
    swap_back_volume,
)
from dcb.services.volumes import mountpoint_usable

if TYPE_CHECKING:
    from dcb.services.restore import RestoreFlow


@dataclass
class UndoResult:
    restore_id: str
    ok: bool
    already: bool = False
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"restore_id": self.restore_id, "ok": self.ok, "already": self.already,
                "steps": self.steps, "error": self.error, "seconds": round(self.seconds, 3)}


# -- recovery ---------------------------------------------------------------------------------
def recover(cfg: Config, gw: DockerGateway, report: Reporter,
            target: Target | None = None) -> None:
    """What a killed restore left behind (call under the store lock)."""
    target = target or Target.live(cfg)
    state = state_for(cfg)
    restart_stopped(gw, StoppedLedger(state.root), report)
    remove_staged_dumps(gw, target.postgres_container, report)
    _close_interrupted_incidents(state, report)
    store = UndoStore(state.root)
    for p in store.list():
        if p.state not in ("preparing", "active"):
            continue
        p.state = "interrupted"
        p.note = "the restore was interrupted"
        for v in p.volumes:
            if v.undo_volume:
                with contextlib.suppress(DcbError, OSError):
                    mp = v.live_dir(gw)
                    replaced = Path(gw.volume(v.undo_volume).mountpoint) / "replaced"
                    if replaced.exists():
                        ensure_directory(mp, like=replaced)
                        v.moved = True
        _drop_temporary_databases(gw, target, p)
        store.save(p)
        report(LogLine(f"restore {p.restore_id} was interrupted: `dcb undo {p.restore_id}` "
                       "puts back what it replaced, or run the restore again", "warning"))


def remove_staged_dumps(gw: DockerGateway, postgres_container: str, report: Reporter) -> int:
    """Dumps staged in PostgreSQL's volumes for pg_restore by a run that was killed."""
    c = gw.find_container(postgres_container)
    n = 0
    for mount in c.mounts if c else ():
        if not mount.volume or not mountpoint_usable(mount.source):
            continue
        for p in Path(mount.source).iterdir():
            if p.name.startswith((STAGED_PREFIX, LEGACY_STAGED_PREFIX)) and \
                    p.name.endswith(".pgdump") and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    if n:
        report(LogLine(f"removed {n} dump(s) a killed restore had staged in "
                       f"{postgres_container}'s data volume", "warning"))
    return n


def _close_interrupted_incidents(state: StateDir, report: Reporter) -> None:
    d = state.restores
    if not d.is_dir():
        return
    for path in d.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            r = data["report"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if r.get("finished", True):
            continue
        running = [s for s in r.get("steps", []) if s.get("outcome") == "running"]
        where = (" during " + ", ".join(f"'{s['title']}'" for s in running) if running
                 else " between steps")
        for s in running:
            s["outcome"] = "interrupted"
        r["error"] = r.get("error") or f"interrupted: dcb stopped{where} (killed?)"
        r["finished"] = True
        if not data.get("sandbox"):
            r["undo"] = r.get("undo") or f"dcb undo {r['restore_id']}"
        with contextlib.suppress(DcbError):
            atomic_write_bytes(path, json.dumps(data, indent=2).encode())
        if not data.get("sandbox"):
            with contextlib.suppress(DcbError):
                state.append_history({"kind": "restore", "id": r["restore_id"],
                                      "set_id": r.get("set_id"), "ok": False,
                                      "error": r["error"], "seconds": None,
                                      "at": datetime.now(UTC).isoformat(timespec="seconds")})


def _drop_temporary_databases(gw: DockerGateway, target: Target, p: UndoPoint) -> None:
    c = gw.find_container(target.postgres_container)
    if c is None or not c.running:
        return
    pg = PgGateway(gw, target.postgres_container, target.postgres_user, target.password)
    with contextlib.suppress(DcbError):
        names = pg.database_names()
        for d in p.databases:
            tmp = fit_identifier(d.name, TMP_SUFFIX)
            if tmp in names:
                pg.query(f"DROP DATABASE {ident(tmp)} WITH (FORCE)")


# -- release ----------------------------------------------------------------------------------
def release_now(flow: RestoreFlow, p: UndoPoint, report: Reporter,
                note: str | None = None) -> None:
    """Release a point inside a run that holds the lock already."""
    _release(flow.cfg, flow.gw, flow.target, p, report, note)


def _release(cfg: Config, gw: DockerGateway, target: Target, p: UndoPoint, report: Reporter,
             note: str | None = None) -> list[str]:
    c = gw.find_container(target.postgres_container)
    pg = PgGateway(gw, target.postgres_container, target.postgres_user, target.password) \
        if c is not None and c.running else None
    left = release_point(p, gw, pg, BackupStore.for_config(cfg), report)
    state = state_for(cfg)
    store = UndoStore(state.root)
    if left:
        p.note = "release incomplete: " + "; ".join(left)
        store.save(p)
        return left
    p.state = "released"
    p.released_at = now_iso()
    if note:
        p.note = note
    store.save(p)
    # The undo window ends now: retention may remove the safety set (services/retention.py).
    with contextlib.suppress(DcbError):
        state.append_history({"kind": "undo-release", "id": p.restore_id, "set_id": p.set_id,
                              "ok": True, "safety_set_id": p.safety_set_id, "at": p.released_at})
    return []


def release_expired(cfg: Config, gw: DockerGateway, report: Reporter) -> list[str]:
    """Release the points whose window ended (``[restore] keep_undo_hours`` after the restore
    verified; right away after an undo). Call under the store lock."""
    released = []
    target = Target.live(cfg)
    now = datetime.now(UTC)
    for p in UndoStore(state_for(cfg).root).list():
        if due(p, now):
            report(LogLine(f"releasing the undo point of {p.restore_id} (its window ended)"))
            if not _release(cfg, gw, target, p, report):
                released.append(p.restore_id)
    return released


def release(cfg: Config, restore_id: str, reporter: Reporter = null_reporter) -> UndoPoint:
    """``dcb undo --release ID``: drop what the point keeps; the restore can no longer be
    undone."""
    check_restore_id(restore_id)
    root = state_for(cfg).root
    with StoreLock.for_config(cfg, f"dcb undo --release {restore_id}"):
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        try:
            recover(cfg, gw, reporter)
            p = UndoStore(root).load(restore_id)
            if p.state == "released":
                return p
            left = _release(cfg, gw, Target.live(cfg), p, reporter)
            if left:
                raise UndoError(f"could not release all of {restore_id}: " + "; ".join(left),
                                hint=f"fix that, then `dcb undo --release {restore_id}` again")
            return p
        finally:
            gw.close()


def list_points(cfg: Config) -> list[UndoPoint]:
    """Points that still hold data (or hold what an undo took out, until released)."""
    return [p for p in UndoStore(state_for(cfg).root).list() if p.state != "released"]


# -- undo ---------------------------------------------------------------------------------------
def undo_restore(cfg: Config, restore_id: str, reporter: Reporter = null_reporter,
                 cancel: threading.Event | None = None) -> UndoResult:
    """``dcb undo RESTORE_ID``: put back what the restore replaced."""
    check_restore_id(restore_id)
    root = state_for(cfg).root
    try:
        p = UndoStore(root).load(restore_id)
    except NotFound:
        if not _stopped_before_its_point(cfg, restore_id, reporter):
            raise
        return UndoResult(restore_id, True, already=True,
                          steps=["the restore stopped before it recorded its undo point, "
                                 "so it changed nothing: nothing to undo"])
    if p.state == "undone":
        return UndoResult(restore_id, True, already=True,
                          steps=[f"already undone at {p.undone_at}"])
    if p.state == "released" and p.note == NOTHING_CHANGED:
        return UndoResult(restore_id, True, already=True,
                          steps=["the restore changed nothing: nothing to undo"])
    if p.state == "released":
        raise UndoError(f"the undo point of {restore_id} was released at {p.released_at}: "
                        "the previous data is gone",
                        hint="restore an older set instead (`dcb list`)")
    if p.mode == "safety":
        return _undo_from_safety_set(cfg, p, reporter, cancel)
    t0 = time.monotonic()
    with StoreLock.for_config(cfg, f"dcb undo {restore_id}"):
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        try:
            recover(cfg, gw, reporter)
            p = UndoStore(root).load(restore_id)
            result = _Undo(cfg, gw, p, reporter).run()
        finally:
            gw.close()
    result.seconds = time.monotonic() - t0
    _record_undo(cfg, p, result)
    return result


# What a restore may do before its undo point is on disk: start a stopped PostgreSQL (not
# data) and record the point itself, before anything is renamed or moved (UndoPointStep).
_BEFORE_THE_POINT = {"start-postgres", "undo-point"}


def _stopped_before_its_point(cfg: Config, restore_id: str, reporter: Reporter) -> bool:
    """A restore killed before it wrote its undo point: its incident log says it was to keep
    one and got no further than recording it. Checked under the store lock, after recovery
    closed the incident, so a restore still running is never taken for a stopped one."""
    state = state_for(cfg)
    with StoreLock.for_config(cfg, f"dcb undo {restore_id}"):
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        try:
            recover(cfg, gw, reporter)
        finally:
            gw.close()
        if UndoStore(state.root).path(restore_id).exists():
            return False
        try:
            data = json.loads((state.restores / f"{restore_id}.json").read_text())
            plan, report = data["plan"], data["report"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if plan.get("undo") != "move" or data.get("sandbox"):
            return False
        keys = {str(s.get("key")) for s in report.get("steps", [])}
        return keys <= _BEFORE_THE_POINT


class _Undo:
    """Swap back, in the order a restore swapped in: containers stopped, PostgreSQL's data
    volume, the other volumes, the databases, containers started again."""

    def __init__(self, cfg: Config, gw: DockerGateway, p: UndoPoint, reporter: Reporter) -> None:
        self.cfg, self.gw, self.p, self.report = cfg, gw, p, reporter
        self.target = Target.live(cfg)
        root = state_for(cfg).root
        self.ledger = StoppedLedger(root)
        self.store = UndoStore(root)
        self.stopped: list[str] = []
        t = self.target
        self.pg = PgGateway(gw, t.postgres_container, t.postgres_user, t.password)

    def run(self) -> UndoResult:
        p, result = self.p, UndoResult(self.p.restore_id, False)
        pg_vol = [v for v in p.volumes if v.name == p.postgres_data_volume]
        other_vols = [v for v in p.volumes if v not in pg_vol]
        dbs = [d for d in p.databases if not d.covered_by_volume]
        self.report(StageStarted(f"undo {p.restore_id}"))
        t0 = time.monotonic()
        try:
            self._stop_users(pg_vol, other_vols, bool(dbs))
            if pg_vol:
                self._stop(p.postgres_container or self.target.postgres_container)
            for v in [*pg_vol, *other_vols]:
                result.steps.append(swap_back_volume(self.gw, v, self.report))
                self.report(LogLine(result.steps[-1]))
            if dbs:
                self._postgres_up()
            elif pg_vol:
                # Its data directory is back as it was before the restore: if that is what
                # kept it from starting, the undo still did what it promised.
                try:
                    self._postgres_up()
                except DcbError as e:
                    result.steps.append(f"PostgreSQL does not answer with its previous data "
                                        f"directory ({e.message}): as before the restore")
                    self.report(LogLine(result.steps[-1], "warning"))
            if dbs:
                for line in swap_back_databases(self.pg, p, dbs):
                    result.steps.append(line)
                    self.report(LogLine(line))
            result.steps += [f"database {d.name}: back with PostgreSQL's data volume"
                             for d in p.databases if d.covered_by_volume]
            self._restart()
            p.state = "undone"
            p.undone_at = now_iso()
            p.expires_at = p.undone_at  # what the restore wrote is dropped at the next run
            p.note = None
            self.store.save(p)
            result.ok = True
        except BaseException as e:
            result.error = str(e) or type(e).__name__
            with contextlib.suppress(Exception):
                self._restart()
            p.note = f"undo failed: {result.error}"
            with contextlib.suppress(DcbError):
                self.store.save(p)
            self.report(LogLine(f"undo failed: {result.error}", "error"))
            if not isinstance(e, DcbError):
                raise UndoError(f"undo of {p.restore_id} failed: {result.error}",
                                hint=f"`dcb undo {p.restore_id}` again finishes it") from None
            raise UndoError(f"undo of {p.restore_id} failed: {e.message}",
                            hint=f"`dcb undo {p.restore_id}` again finishes it") from None
        self.report(StageFinished(f"undo {p.restore_id}", 0, time.monotonic() - t0))
        return result

    def _stop_users(self, pg_vol: list[Any], other_vols: list[Any], dbs: bool) -> None:
        names: list[str] = []
        if other_vols or dbs or pg_vol:
            for n in self.target.app_containers:
                c = self.gw.find_container(n)
                if c is not None and c.running:
                    names.append(n)
        for v in other_vols:
            with contextlib.suppress(NotFound):
                for c in self.gw.containers_using_volume(v.docker_volume):
                    if c.running and c.name not in names and \
                            c.name != self.target.postgres_container:
                        names.append(c.name)
        for n in names:
            self._stop(n)

    def _stop(self, name: str) -> None:
        c = self.gw.find_container(name)
        if c is None or c.state not in ("running", "restarting", "paused"):
            return
        self.report(LogLine(f"stopping {name}"))
        self.ledger.mark(name, "undo")
        try:
            self.gw.client.containers.get(name).stop(timeout=30)
        except Exception as e:
            raise UndoError(f"could not stop {name}: {e}") from None
        self.stopped.append(name)

    def _postgres_up(self) -> None:
        name = self.target.postgres_container
        c = self.gw.find_container(name)
        if c is None:
            raise NotFound(f"PostgreSQL container {name!r} does not exist")
        if not c.running:
            self.gw.client.containers.get(name).start()
            if name in self.stopped:
                self.stopped.remove(name)
                self.ledger.clear([name])
        self.pg.wait_ready(timeout=self.cfg.timeouts.postgres_ready)

    def _restart(self) -> None:
        names, self.stopped = self.stopped, []
        for n in names:
            with contextlib.suppress(Exception):
                self.gw.client.containers.get(n).start()
                self.report(LogLine(f"started {n} again"))
        self.ledger.clear(names)


def _undo_from_safety_set(cfg: Config, p: UndoPoint, reporter: Reporter,
                          cancel: threading.Event | None) -> UndoResult:
    """A safety-set point: restore that set (what existed), then remove what did not exist."""
    from dcb.services.restore import RestoreFlow, RestoreRequest

    t0 = time.monotonic()
    result = UndoResult(p.restore_id, False)
    if p.safety_set_id:
        flow = RestoreFlow(cfg, reporter, cancel)
        try:
            plan = flow.prepare(RestoreRequest(
                set_id=p.safety_set_id,
                databases=tuple(d.name for d in p.databases if d.existed),
                volumes=tuple(v.name for v in p.volumes if v.existed),
                safety_backup=False))
            report = flow.execute(plan, plan.confirm_token)
        finally:
            if flow._gw is not None:
                flow._gw.close()
        if not report.ok:
            if report.cancelled:
                raise Cancelled("undo cancelled")
            raise UndoError(f"undo of {p.restore_id} failed: {report.error}",
                            hint=f"incident log: `dcb history --restore {report.restore_id}`")
        result.steps.append(f"restored safety set {p.safety_set_id} "
                            f"({report.restore_id})")
    absent = [d for d in p.databases if not d.existed and not d.covered_by_volume]
    with StoreLock.for_config(cfg, f"dcb undo {p.restore_id}"):
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        try:
            if absent:
                t = Target.live(cfg)
                pg = PgGateway(gw, t.postgres_container, t.postgres_user, t.password)
                result.steps += swap_back_databases(pg, p, absent)
            result.steps += [f"volume {v.name}: did not exist before the restore; left as "
                             "restored" for v in p.volumes if not v.existed]
            p.state = "undone"
            p.undone_at = now_iso()
            p.expires_at = p.undone_at
            UndoStore(state_for(cfg).root).save(p)
        finally:
            gw.close()
    result.ok = True
    result.seconds = time.monotonic() - t0
    _record_undo(cfg, p, result)
    return result


def _record_undo(cfg: Config, p: UndoPoint, result: UndoResult) -> None:
    state = state_for(cfg)
    with contextlib.suppress(DcbError):
        state.append_history({"kind": "undo", "id": p.restore_id, "set_id": p.set_id,
                              "ok": result.ok, "seconds": round(result.seconds, 3),
                              "error": result.error,
                              "at": datetime.now(UTC).isoformat(timespec="seconds")})
    path = state.restores / f"{p.restore_id}.json"
    with contextlib.suppress(OSError, ValueError, DcbError):
        data = json.loads(path.read_text())
        data["undone"] = {"at": p.undone_at, "steps": result.steps,
                          "seconds": round(result.seconds, 3)}
        atomic_write_bytes(path, json.dumps(data, indent=2).encode())
