"""The schedule daemon (``dcb schedule``): runs the ``[schedule.NAME]`` jobs in the foreground.

- One job at a time: jobs run one after another in this thread; a second daemon on the same
  backup dir is refused (a flock on ``.schedule.lock``); the engines take the store's lock, so
  a manual run and a job never overlap either (a job waits ``lock_wait_seconds`` for it).
- A job due while another runs starts when that one ends, once, however many of its times
  passed (the same for a run missed while the daemon was down, with ``catch_up``).
- ``request_stop`` (SIGTERM/SIGINT in the CLI) cancels the current job at its next safe point
  (a backup then fails cleanly and starts what it stopped) and ends the loop.
- A heartbeat thread rewrites the heartbeat file every ``heartbeat_seconds``, also while a
  long job runs. Between jobs the daemon re-checks health (``dcb check``, without its own
  heartbeat and consecutive failures, which the jobs report themselves) and the history for
  runs made by others (a restore, a manual backup), and notifies on what changed.
- Logs are plain timestamped lines (the container's log).
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, TextIO

from dcb.services import formatting as fmt
from dcb.services.backup import ensure_store_dir, read_history
from dcb.services.config import Config, JobConfig
from dcb.services.errors import DcbError, LockedError
from dcb.services.ops.check import NAMES, OK, CheckReport, run_check
from dcb.services.ops.cron import Cron, zone
from dcb.services.ops.heartbeat import DAEMON_LOCK, DaemonState, JobState, read_state, write_state
from dcb.services.ops.jobs import JobOutcome, Runner, run_job
from dcb.services.ops.metrics import succeeded, write_textfile
from dcb.services.ops.notify import Event, Notifier, host_name, ping_url
from dcb.services.progress import BytesProgress, LogLine, StageFailed, StageFinished, StageStarted
from dcb.services.progress import Event as ProgressEvent

MAX_SLEEP = 5.0
"""Never sleep longer than this at once: a wall-clock jump is noticed within seconds."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds")


class LineLog:
    """Plain timestamped lines (UTC) on a stream, flushed at once; safe from several threads."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        with self._lock:
            try:
                self.out.write(f"{stamp} {message}\n")
                self.out.flush()
            except (OSError, ValueError):
                pass

    def reporter(self, prefix: str) -> Callable[[ProgressEvent], None]:
        """An engine's progress as log lines (byte progress at most every 30 s per stage)."""
        last: dict[str, float] = {}

        def report(e: ProgressEvent) -> None:
            if isinstance(e, StageStarted):
                self(f"{prefix} started {e.stage}")
            elif isinstance(e, StageFinished):
                detail = f", {e.detail}" if e.detail else ""
                self(f"{prefix} finished {e.stage}: {fmt.size(e.bytes)} in "
                     f"{fmt.duration(e.seconds)}{detail}")
            elif isinstance(e, StageFailed):
                self(f"{prefix} FAILED {e.stage}: {e.error}")
            elif isinstance(e, LogLine):
                self(f"{prefix} {'' if e.level == 'info' else e.level + ': '}{e.message}")
            elif isinstance(e, BytesProgress):
                now = time.monotonic()
                if now - last.get(e.stage, 0.0) >= 30:
                    last[e.stage] = now
                    self(f"{prefix} progress {e.stage}: {fmt.size(e.done_bytes)} "
                         f"{fmt.rate(e.rate)}")

        return report


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    job: JobConfig
    cron: Cron


def load_jobs(cfg: Config) -> tuple[tzinfo, list[ScheduledJob]]:
    """The configured jobs with their cron expressions parsed (ConfigError when invalid)."""
    tz = zone(cfg.schedule.tz)
    jobs = [ScheduledJob(name, job, Cron(job.cron, tz, f"[schedule.{name}] cron"))
            for name, job in cfg.schedule.jobs.items()]
    return tz, jobs


def upcoming(cfg: Config, n: int = 3, now: datetime | None = None
             ) -> list[tuple[ScheduledJob, list[datetime]]]:
    """Each job with its next ``n`` run times (``dcb schedule --list``)."""
    _tz, jobs = load_jobs(cfg)
    now = now or utcnow()
    return [(j, j.cron.upcoming(now, n)) for j in jobs]


class DaemonLock:
    """One daemon per backup dir (a flock, freed when the holder dies)."""

    def __init__(self, cfg: Config) -> None:
        self.path = cfg.backup_dir / DAEMON_LOCK
        self._fd = -1

    def __enter__(self) -> DaemonLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"another `dcb schedule` runs for {self.path.parent} ({holder})",
                              hint="one daemon per backup dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Scheduler:
    def __init__(self, cfg: Config, log: Callable[[str], None] | LineLog, *,
                 runner: Runner = run_job, notifier: Notifier | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 rng: Callable[[], float] = random.random) -> None:
        self.cfg = cfg
        self.root = cfg.backup_dir
        self.tz, self.jobs = load_jobs(cfg)
        self.log = log if isinstance(log, LineLog) else None
        self._say = log
        self.runner = runner
        self.notifier = notifier if notifier is not None else Notifier(cfg, self._say)
        self.clock = clock
        self.rng = rng
        self.stop = threading.Event()
        self._cancel = threading.Event()
        self._state_lock = threading.Lock()
        self.host = host_name(cfg)
        now = clock()
        self.state = DaemonState(pid=os.getpid(), host=self.host, started_at=iso(now),
                                 updated_at=iso(now), tz=str(self.tz))
        self._previous: DaemonState | None = None
        self._seen = 0
        self._kind_ok: dict[str, bool] = {}
        self._last_tick = 0.0

    # -- control ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after (or by cancelling) the current job; safe from a signal handler."""
        self.stop.set()
        self._cancel.set()

    # -- state --------------------------------------------------------------------------------
    def _save(self) -> None:
        with self._state_lock:
            self.state.updated_at = iso(self.clock())
            try:
                write_state(self.root, self.state)
            except DcbError as e:
                self._say(f"warning: heartbeat not written: {e.message}")

    def _heartbeat_loop(self, done: threading.Event) -> None:
        while not done.wait(self.cfg.schedule.heartbeat_seconds):
            self._save()

    def _restore_state(self) -> None:
        prev = read_state(self.root)
        self._previous = prev
        for j in self.jobs:
            old = prev.jobs.get(j.name) if prev else None
            js = JobState(name=j.name, run=j.job.run, cron=j.job.cron)
            if old is not None:
                for k in ("last_due", "last_started", "last_finished", "last_status",
                          "last_error", "last_set_id", "last_duration_seconds",
                          "consecutive_failures", "runs", "failures"):
                    setattr(js, k, getattr(old, k))
            self.state.jobs[j.name] = js
        if prev is not None:
            self.state.check_status = prev.check_status

    def missed(self, j: ScheduledJob, now: datetime) -> datetime | None:
        """The last fire time missed while no daemon ran, if any (for ``catch_up``)."""
        js = self.state.jobs[j.name]
        ref_text = js.last_due or (self._previous.updated_at if self._previous else None)
        if not ref_text:
            return None
        try:
            ref = datetime.fromisoformat(ref_text)
        except ValueError:
            return None
        prev = j.cron.prev_before(now)
        return prev if prev > ref else None

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> int:
        """Run until ``request_stop``; returns the exit code (0)."""
        if not self.jobs:
            raise DcbError("no jobs in [schedule]",
                           hint='add e.g. [schedule.nightly] with run = "backup" and '
                                'cron = "0 2 * * *"')
        ensure_store_dir(self.root)
        with DaemonLock(self.cfg):
            return self._run_locked()

    def _run_locked(self) -> int:
        self._restore_state()
        now = self.clock()
        due: dict[str, datetime] = {j.name: j.cron.next_after(now) for j in self.jobs}
        for j in self.jobs:
            self.state.jobs[j.name].next_run = iso(due[j.name])
        catch_up = []
        if self.cfg.schedule.catch_up:
            for j in self.jobs:
                m = self.missed(j, now)
                if m is not None:
                    catch_up.append((m, j))
        history = self._history()
        self._seen = len(history)
        for h in history:
            ok = succeeded(h)
            if ok is not None:
                self._kind_ok[str(h.get("kind"))] = ok
        self._save()
        self._say(f"dcb schedule started: {len(self.jobs)} job(s), tz {self.tz}, "
                  f"backup dir {self.root}")
        for j in self.jobs:
            self._say(f"job {j.name}: {j.job.run} at {j.job.cron!r}, next "
                      f"{due[j.name].isoformat()}")
        self._metrics()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(done,),
                                name="dcb-heartbeat", daemon=True)
        beat.start()
        try:
            for when, j in sorted(catch_up, key=lambda x: x[0]):
                if self.stop.is_set():
                    break
                self._say(f"job {j.name}: missed its run at {when.isoformat()} "
                          "(catch_up): running it now, once")
                self._run_one(j, when)
                due[j.name] = j.cron.next_after(self.clock())
                self.state.jobs[j.name].next_run = iso(due[j.name])
            while not self.stop.is_set():
                now = self.clock()
                ready = sorted((t, j.name) for j in self.jobs if (t := due[j.name]) <= now)
                if not ready:
                    self._tick()
                    wait = min(due.values()) - self.clock()
                    self.stop.wait(max(0.0, min(wait.total_seconds(), MAX_SLEEP)))
                    continue
                when, name = ready[0]
                j = next(x for x in self.jobs if x.name == name)
                jitter = self.rng() * self.cfg.schedule.jitter_seconds
                if jitter > 0:
                    self._say(f"job {name}: due, starting in {jitter:.1f}s (jitter)")
                    if self.stop.wait(jitter):
                        break
                self._run_one(j, when)
                due[name] = j.cron.next_after(max(when, self.clock()))
                self.state.jobs[name].next_run = iso(due[name])
                self._save()
        finally:
            done.set()
            beat.join(5)
            self.state.current_job = None
            self.state.stopped = True
            self._save()
            self._say("dcb schedule stopped")
        return 0

    # -- one job ------------------------------------------------------------------------------
    def _run_one(self, j: ScheduledJob, when: datetime) -> JobOutcome:
        js = self.state.jobs[j.name]
        started = self.clock()
        with self._state_lock:
            js.last_due = iso(when)
            js.last_started = iso(started)
            self.state.current_job = j.name
        self._save()
        try:
            url = ping_url(self.cfg, j.name, j.job)
        except DcbError as e:
            url = None
            self._say(f"job {j.name}: no ping: {e.message}")
        self.notifier.ping(url, "start", job=j.name)
        self._say(f"job {j.name}: started {j.job.run} (due {when.isoformat()})")
        self._cancel = threading.Event()
        if self.stop.is_set():
            self._cancel.set()
        report = self.log.reporter(f"job {j.name} >") if self.log else (lambda _e: None)
        out = self.runner(self.cfg, j.name, j.job, report, self._cancel,
                          self.cfg.schedule.lock_wait_seconds)
        finished = self.clock()
        previous = js.last_status
        with self._state_lock:
            js.last_finished = iso(finished)
            js.last_status = out.status
            js.last_error = out.error
            js.last_set_id = out.set_id
            js.last_duration_seconds = round(out.duration_seconds, 3)
            js.runs += 1
            if out.status == "failed":
                js.failures += 1
                js.consecutive_failures += 1
            elif out.status == "ok":
                js.consecutive_failures = 0
            self.state.current_job = None
        self._save()
        took = fmt.duration(out.duration_seconds)
        if out.status == "ok":
            self._say(f"job {j.name}: ok in {took}: {out.message}")
            self.notifier.ping(url, "success", out.message, job=j.name)
        elif out.status == "failed":
            self._say(f"job {j.name}: FAILED after {took}: {out.error}")
            self.notifier.ping(url, "fail", out.error or out.message, job=j.name)
        else:
            self._say(f"job {j.name}: cancelled after {took}: {out.error}")
            self.notifier.ping(url, "fail", f"cancelled: {out.error}", job=j.name)
        if out.status != "cancelled":
            status = out.status
            if status == "ok" and previous == "failed":
                status = "recovered"
            message = (out.message if out.status == "ok" else
                       f"job {j.name} ({j.job.run}) failed: {out.error}")
            self.notifier.send(Event(
                event=j.job.run, status=status, host=self.host, message=message, job=j.name,
                set_id=out.set_id, started_at=iso(started), finished_at=iso(finished),
                duration_seconds=round(out.duration_seconds, 3), size_bytes=out.size_bytes,
                error=out.error, durations=out.durations, sizes=out.sizes))
        # Entries the job wrote to the history are this job's, not news from others.
        self._seen = len(self._history())
        self._metrics()
        self._tick(force=True)
        return out

    def run_now(self, name: str) -> JobOutcome:
        """Run one job at once (``dcb schedule --run NAME``), recording it like a scheduled
        run."""
        j = next((x for x in self.jobs if x.name == name), None)
        if j is None:
            raise DcbError(f"no job {name!r} in [schedule]",
                           hint="jobs: " + ", ".join(x.name for x in self.jobs))
        ensure_store_dir(self.root)
        with DaemonLock(self.cfg):
            self._restore_state()
            if self._previous is not None:  # keep a running daemon's view of its heartbeat
                self.state.started_at = self._previous.started_at
            out = self._run_one(j, self.clock())
            self.state.stopped = self._previous.stopped if self._previous else True
            self._save()
            return out

    # -- between jobs -------------------------------------------------------------------------
    def _history(self) -> list[dict[str, Any]]:
        try:
            return read_history(self.root)
        except OSError as e:
            self._say(f"warning: history unreadable: {e.strerror}")
            return []

    def _metrics(self) -> None:
        try:
            write_textfile(self.cfg)
        except (OSError, DcbError) as e:
            self._say(f"warning: metrics textfile not written: {e}")

    def _tick(self, force: bool = False) -> None:
        """Health transitions and others' runs, at most every heartbeat interval."""
        now = time.monotonic()
        if not force and now - self._last_tick < self.cfg.schedule.heartbeat_seconds:
            return
        self._last_tick = now
        self._news_from_history()
        self._check_transition()

    def _news_from_history(self) -> None:
        history = self._history()
        if len(history) < self._seen:
            self._seen = 0
        for h in history[self._seen:]:
            kind = str(h.get("kind"))
            ok = succeeded(h)
            if ok is None:
                continue
            was = self._kind_ok.get(kind)
            self._kind_ok[kind] = ok
            status = "failed" if not ok else ("recovered" if was is False else "ok")
            what = h.get("set_id") or h.get("id")
            self._say(f"history: {kind} {what} {status} (not run by this daemon)")
            self.notifier.send(Event(
                event=kind, status=status, host=self.host,
                message=f"{kind} {what} {'failed' if not ok else 'succeeded'}",
                set_id=str(h.get("set_id") or h.get("id") or "") or None,
                started_at=h.get("started_at") or h.get("at"),
                duration_seconds=(h.get("duration_seconds") or h.get("seconds")
                                  or h.get("rto_seconds")),
                size_bytes=h.get("size_bytes"), error=h.get("error")))
        self._seen = len(history)

    def _check_transition(self) -> None:
        try:
            report = run_check(self.cfg, self.clock(), heartbeat=False)
        except (OSError, DcbError) as e:
            self._say(f"warning: check failed: {e}")
            return
        # Consecutive failures are each job's own notification; not a second alert here.
        report = CheckReport(tuple(f for f in report.findings if f.name != "failures"),
                             report.checked_at)
        before = self.state.check_status
        now_status = report.status
        with self._state_lock:
            self.state.check_status = now_status
        if before == now_status or (before is None and now_status == OK):
            return
        self._say(f"check: {NAMES.get(before or 0, '?')} -> {report.summary()}")
        status = "recovered" if now_status == OK else NAMES[now_status].lower()
        self.notifier.send(Event(event="check", status=status, host=self.host,
                                 message=report.summary(),
                                 error=None if now_status == OK else report.summary()))
