"""What a scheduled job does: the existing engines, in-process (never a `dcb` subprocess).

``run_job`` runs one ``[schedule.NAME]`` job and turns whatever happens into a ``JobOutcome``
(ok, failed or cancelled, with the error as one line): a job never raises, so the daemon lives
on. A job that finds the backup dir locked by another run waits (``[schedule]
lock_wait_seconds``), then fails saying who holds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dcb.services import formatting as fmt
from dcb.services.backup import BackupRequest, BackupRun, append_history
from dcb.services.config import Config, JobConfig
from dcb.services.docker_gateway import DockerGateway
from dcb.services.drill import run_drill
from dcb.services.errors import Cancelled, DcbError, LockedError, NotFound, UsageError
from dcb.services.postgres import PgGateway
from dcb.services.progress import LogLine, Reporter
from dcb.services.prune import prune
from dcb.services.store import BackupSet, BackupStore
from dcb.services.verify import verified_now, verify_set

T = TypeVar("T")


@dataclass(frozen=True)
class JobOutcome:
    status: str
    """``ok``, ``failed`` or ``cancelled``."""
    message: str
    error: str | None = None
    set_id: str | None = None
    size_bytes: int | None = None
    duration_seconds: float = 0.0
    durations: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def replicate_set(cfg: Config, set_id: str | None, reporter: Reporter,
                  cancel: threading.Event) -> str:
    """Copy a set (None: every complete set not yet there) to every replication destination
    with the replication engine (``dcb replicate``); a one-line summary. A destination that
    failed fails the job (the others were still copied to)."""
    from dcb.services.replicate import replicate

    if not cfg.replication.destinations:
        raise UsageError("replication is not configured: add a [replication.NAME] table",
                         hint="or remove the replicate job / `then = [\"replicate\"]`")
    res = replicate(cfg, [set_id] if set_id else None, reporter=reporter, cancel=cancel)
    parts = [f"{d.name}: {len(d.copied)} copied" + (f", {len(d.pruned)} pruned"
                                                    if d.pruned else "")
             for d in res.destinations if d.error is None]
    bad = [f"{d.name}: {d.error}" for d in res.destinations if d.error is not None]
    if bad:
        raise DcbError("replication failed: " + "; ".join(bad))
    return "replicated (" + "; ".join(parts) + ")"


def _wait_for_lock(fn: Callable[[], T], lock_wait: float, cancel: threading.Event,
                   reporter: Reporter) -> T:
    deadline = time.monotonic() + lock_wait
    said = False
    while True:
        try:
            return fn()
        except LockedError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockedError(f"{e.message}; waited {fmt.duration(lock_wait)}",
                                  e.hint) from None
            if not said:
                reporter(LogLine(f"{e.message}: waiting up to {fmt.duration(left)}",
                                 "warning"))
                said = True
            if cancel.wait(min(2.0, left)):
                raise Cancelled("cancelled while waiting for the lock") from None


def _backup_request(cfg: Config, job: JobConfig) -> BackupRequest:
    # None: every configured database (with databases = "all", resolved at the backup).
    dbs: tuple[str, ...] | None = ()
    vols: tuple[str, ...] = ()
    if job.what in ("all", "databases"):
        dbs = job.databases or None
    if job.what in ("all", "volumes"):
        vols = job.volumes or cfg.stack.volumes
    return BackupRequest(databases=dbs, volumes=vols)


def verify_one(cfg: Config, s: BackupSet, deep: bool, reporter: Reporter,
               cancel: threading.Event) -> tuple[bool, list[str]]:
    """Verify a set as ``dcb verify`` does and record it in the history."""
    gw: DockerGateway | None = None
    pg: PgGateway | None = None
    try:
        if deep and any(a.source.get("format") == "custom" for a in s.artifacts):
            gw = DockerGateway.connect()
            pg = PgGateway(gw, cfg.stack.postgres_container, cfg.stack.postgres_user,
                           cfg.postgres_password())
        r = verify_set(s, deep=deep, pg=pg, reporter=reporter, cancel=cancel)
    finally:
        if gw is not None:
            gw.close()
    append_history(cfg.backup_dir, {"kind": "verify", "id": s.id, "ok": r.ok, "deep": deep,
                                    "at": verified_now(), "problems": r.problems()})
    return r.ok, r.problems()


def _newest_complete(cfg: Config) -> BackupSet:
    for s in BackupStore.for_config(cfg).list_sets():
        if s.status == "complete":
            return s
    raise NotFound(f"no complete backup set in {cfg.backup_dir}")


def _run(cfg: Config, job: JobConfig, reporter: Reporter, cancel: threading.Event,
         lock_wait: float) -> JobOutcome:
    if job.run == "backup":
        req = _backup_request(cfg, job)
        s = _wait_for_lock(lambda: BackupRun(cfg, reporter, cancel).run(req), lock_wait,
                           cancel, reporter)
        durations = {f"{a.kind} {a.name}": float(a.source.get("seconds") or 0.0)
                     for a in s.artifacts}
        sizes = {f"{a.kind} {a.name}": a.size_bytes for a in s.artifacts}
        done = [f"backup {s.id}: {len(s.artifacts)} artifacts, {fmt.size(s.size_bytes)} in "
                f"{fmt.duration(s.duration_seconds)}"]
        steps = list(job.then)
        if cfg.replication.after_backup and cfg.replication.destinations \
                and "replicate" not in steps:
            steps.append("replicate")  # [replication] after_backup holds for every backup
        for step in steps:
            if cancel.is_set():
                raise Cancelled("cancelled")
            try:
                done.append(_then(cfg, step, s, job, reporter, cancel, lock_wait))
            except DcbError as e:
                return JobOutcome("failed", "; ".join(done), f"{step} after backup {s.id} "
                                  f"failed: {e.message}", s.id, s.size_bytes,
                                  durations=durations, sizes=sizes)
        return JobOutcome("ok", "; ".join(done), None, s.id, s.size_bytes,
                          durations=durations, sizes=sizes)
    if job.run == "prune":
        res = _wait_for_lock(lambda: prune(cfg), lock_wait, cancel, reporter)
        return JobOutcome("ok", f"prune: removed {len(res.removed)} sets, freed "
                                f"{fmt.size(res.freed_bytes)}")
    if job.run == "verify":
        s = _newest_complete(cfg)
        ok, problems = verify_one(cfg, s, job.deep, reporter, cancel)
        what = f"verify{' --deep' if job.deep else ''} {s.id}"
        if not ok:
            return JobOutcome("failed", what, "; ".join(problems)[:500], s.id, s.size_bytes)
        return JobOutcome("ok", f"{what}: ok", None, s.id, s.size_bytes)
    if job.run == "drill":
        d = run_drill(cfg, None, reporter, cancel)
        what = f"drill of {d.set_id}: time to recover {fmt.duration(d.rto_seconds)}"
        if not d.ok:
            return JobOutcome("failed", what, d.error or "drill failed", d.set_id)
        return JobOutcome("ok", what, None, d.set_id)
    if job.run == "replicate":
        return JobOutcome("ok", replicate_set(cfg, None, reporter, cancel))
    raise DcbError(f"unknown job kind {job.run!r}")


def _then(cfg: Config, step: str, s: BackupSet, job: JobConfig, reporter: Reporter,
          cancel: threading.Event, lock_wait: float) -> str:
    if step == "prune":
        res = _wait_for_lock(lambda: prune(cfg), lock_wait, cancel, reporter)
        return f"pruned {len(res.removed)} sets"
    if step == "verify":
        ok, problems = verify_one(cfg, s, job.deep, reporter, cancel)
        if not ok:
            raise DcbError("; ".join(problems)[:500])
        return "verified"
    return replicate_set(cfg, s.id, reporter, cancel)


def run_job(cfg: Config, name: str, job: JobConfig, reporter: Reporter,
            cancel: threading.Event, lock_wait: float) -> JobOutcome:
    """Run one job to its end; never raises (a job's failure is an outcome)."""
    t0 = time.monotonic()
    try:
        out = _run(cfg, job, reporter, cancel, lock_wait)
    except Cancelled as e:
        out = JobOutcome("cancelled", f"{job.run} cancelled", e.message)
    except DcbError as e:
        out = JobOutcome("failed", f"{job.run} failed", e.message)
    except Exception as e:  # an engine's unexpected error must not end the daemon
        first = (str(e).splitlines() or [""])[0][:300]
        out = JobOutcome("failed", f"{job.run} failed", f"{type(e).__name__}: {first}")
    return JobOutcome(**{**out.__dict__, "duration_seconds": time.monotonic() - t0})


Runner = Callable[[Config, str, JobConfig, Reporter, threading.Event, float], JobOutcome]

__all__ = ["JobOutcome", "Runner", "run_job", "verify_one"]
