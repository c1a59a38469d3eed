"""The schedule: cron maths (DST, month ends) and the daemon's loop with a fast schedule.

The loop tests use a stand-in job runner (the engines are tested elsewhere; here what matters
is when jobs run, that they never overlap, catch-up and stopping). The daemon against the real
stack, with real backups and SIGTERM, is in test_automation_stack.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from dcb.services.config import Config, JobConfig, load_config
from dcb.services.errors import ConfigError, LockedError
from dcb.services.ops.cron import Cron, zone
from dcb.services.ops.heartbeat import read_state
from dcb.services.ops.jobs import JobOutcome
from dcb.services.ops.schedule import Scheduler
from dcb.services.progress import Reporter
from tests.conftest import BIN, run_dcb

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def fires(expr: str, tz: ZoneInfo, start: datetime, n: int) -> list[str]:
    return [d.isoformat() for d in Cron(expr, tz).upcoming(start, n)]


# -- cron maths -------------------------------------------------------------------------------
def test_daily_job_runs_once_on_the_spring_forward_day_after_the_gap():
    # 2026-03-29 02:00-03:00 does not exist in Berlin: the 02:30 run happens at 03:00.
    got = fires("30 2 * * *", BERLIN, datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3)
    assert got == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00",
                   "2026-03-31T02:30:00+02:00"]


def test_daily_job_runs_once_when_the_hour_repeats_in_autumn():
    # 2026-10-25 02:00-03:00 happens twice in Berlin: a 02:30 job runs in the first pass only.
    got = fires("30 2 * * *", BERLIN, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 3)
    assert got == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00",
                   "2026-10-27T02:30:00+01:00"]
    utc = [datetime.fromisoformat(g).astimezone(UTC) for g in got]
    assert [b - a for a, b in itertools.pairwise(utc)] == [timedelta(hours=25),
                                                                   timedelta(hours=24)]


def test_hourly_job_runs_every_real_hour_across_both_transitions():
    autumn = fires("0 * * * *", BERLIN, datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN), 4)
    assert autumn == ["2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00",
                      "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"]
    spring = fires("0 * * * *", NEW_YORK, datetime(2026, 3, 8, 0, 30, tzinfo=NEW_YORK), 3)
    assert spring == ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00",
                      "2026-03-08T04:00:00-04:00"]


def test_previous_fire_time_skips_the_repeated_pass():
    c = Cron("0 2 * * *", BERLIN)
    after_fall_back = datetime(2026, 10, 25, 3, 0, tzinfo=BERLIN)
    assert c.prev_before(after_fall_back).isoformat() == "2026-10-25T02:00:00+02:00"


def test_month_ends_31st_last_day_and_leap_years():
    start = datetime(2027, 12, 31, 12, tzinfo=BERLIN)
    assert fires("0 3 31 * *", BERLIN, start, 3) == [
        "2028-01-31T03:00:00+01:00", "2028-03-31T03:00:00+02:00", "2028-05-31T03:00:00+02:00"]
    assert fires("0 3 L * *", BERLIN, start, 3) == [
        "2028-01-31T03:00:00+01:00", "2028-02-29T03:00:00+01:00", "2028-03-31T03:00:00+02:00"]
    assert fires("0 0 29 2 *", BERLIN, datetime(2026, 1, 1, tzinfo=BERLIN), 2) == [
        "2028-02-29T00:00:00+01:00", "2032-02-29T00:00:00+01:00"]


def test_monthly_and_weekly_shortcuts_and_utc():
    utc = ZoneInfo("UTC")
    assert fires("@monthly", utc, datetime(2026, 1, 31, 1, tzinfo=utc), 2) == [
        "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"]
    assert fires("0 4 * * 0", utc, datetime(2026, 12, 3, tzinfo=utc), 1) == [
        "2026-12-06T04:00:00+00:00"]  # Sunday


def test_bad_cron_and_zone_are_config_errors():
    with pytest.raises(ConfigError, match="invalid cron expression"):
        Cron("61 * * * *", BERLIN, "[schedule.x] cron")
    with pytest.raises(ConfigError, match="unknown time zone"):
        zone("Mars/Olympus")


def test_bad_job_tables_exit_2_naming_the_key(tmp_path: Path):
    cases = {
        'run = "bake"\ncron = "0 2 * * *"': "run must be one of",
        'run = "backup"': "cron is required",
        'run = "backup"\ncron = "0 2 * * *"\ncolour = "red"': "unknown key [schedule.x] colour",
        'run = "backup"\ncron = "0 2 * *"': "invalid cron expression",
        'run = "prune"\ncron = "@daily"\nthen = ["verify"]': "then applies to backup jobs",
    }
    for body, message in cases.items():
        cfg = tmp_path / "dcb.toml"
        cfg.write_text(f"[schedule.x]\n{body}\n")
        r = run_dcb("schedule", "--list", "--config", str(cfg))
        assert r.code == 2 and message in r.err, (body, r.err)
        assert "Traceback" not in r.err


def test_schedule_list_shows_next_runs_in_the_zone(tmp_path: Path):
    cfg = tmp_path / "dcb.toml"
    cfg.write_text('[schedule]\ntz = "Europe/Berlin"\n[schedule.nightly]\nrun = "backup"\n'
                   'cron = "0 2 * * *"\n[schedule.weekly]\nrun = "verify"\ndeep = true\n'
                   'cron = "0 4 * * 0"\n')
    r = run_dcb("schedule", "--list", "--json", "-n", "2", "--config", str(cfg))
    assert r.code == 0, r.err
    jobs = {j["name"]: j for j in json.loads(r.out)}
    assert jobs["nightly"]["run"] == "backup" and len(jobs["nightly"]["next"]) == 2
    first = datetime.fromisoformat(jobs["nightly"]["next"][0])
    assert first.astimezone(BERLIN).hour == 2 and first > datetime.now(UTC)
    assert datetime.fromisoformat(jobs["weekly"]["next"][0]).astimezone(BERLIN).weekday() == 6


# -- the daemon's loop --------------------------------------------------------------------------
def make_cfg(tmp_path: Path, jobs: str, **schedule: object) -> Config:
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in schedule.items())
    path = tmp_path / "dcb.toml"
    path.write_text(f'[storage]\nbackup_dir = "{tmp_path / "backups"}"\n'
                    f"[schedule]\nheartbeat_seconds = 0.5\n{extra}{jobs}")
    return load_config(str(path), environ={})


class Recorder:
    """A stand-in runner: records (job, start, end) and takes ``seconds`` per run."""

    def __init__(self, seconds: float = 0.0, fail: set[str] | None = None) -> None:
        self.seconds = seconds
        self.fail = fail or set()
        self.runs: list[tuple[str, float, float]] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.cancelled: list[str] = []

    def __call__(self, cfg: Config, name: str, job: JobConfig, reporter: Reporter,
                 cancel: threading.Event, lock_wait: float) -> JobOutcome:
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        t0 = time.monotonic()
        try:
            if cancel.wait(self.seconds):
                self.cancelled.append(name)
                return JobOutcome("cancelled", "cancelled", "cancelled")
            if name in self.fail:
                return JobOutcome("failed", f"{name} failed", "boom")
            return JobOutcome("ok", f"{name} ok")
        finally:
            with self.lock:
                self.active -= 1
            self.runs.append((name, t0, time.monotonic()))


def run_for(sched: Scheduler, seconds: float) -> int:
    threading.Timer(seconds, sched.request_stop).start()
    return sched.run()


def test_daemon_runs_jobs_one_at_a_time(tmp_path: Path):
    cfg = make_cfg(tmp_path, '[schedule.a]\nrun = "prune"\ncron = "* * * * * *"\n'
                             '[schedule.b]\nrun = "verify"\ncron = "* * * * * *"\n')
    rec = Recorder(seconds=0.7)
    lines: list[str] = []
    assert run_for(Scheduler(cfg, lines.append, runner=rec), 5.0) == 0
    names = [r[0] for r in rec.runs]
    assert names.count("a") >= 2 and names.count("b") >= 2, names
    assert rec.max_active == 1
    spans = sorted((s, e) for _, s, e in rec.runs)
    assert all(prev_end <= start for (_, prev_end), (start, _) in itertools.pairwise(spans))
    state = read_state(cfg.backup_dir)
    assert state is not None and state.stopped
    assert state.jobs["a"].runs == names.count("a")
    assert state.jobs["a"].last_status in ("ok", "cancelled")  # the stop may land mid-run


def test_a_job_due_during_a_long_run_runs_once_after_it(tmp_path: Path):
    # "slow" takes 3.5 s; "fast" is due every second meanwhile: it runs once after, not 3x.
    cfg = make_cfg(tmp_path, '[schedule.slow]\nrun = "backup"\ncron = "* * * * * */10"\n'
                             '[schedule.fast]\nrun = "prune"\ncron = "* * * * * *"\n')

    class Mixed(Recorder):
        def __call__(self, cfg: Config, name: str, job: JobConfig, reporter: Reporter,
                     cancel: threading.Event, lock_wait: float) -> JobOutcome:
            self.seconds = 3.5 if name == "slow" else 0.0
            return super().__call__(cfg, name, job, reporter, cancel, lock_wait)

    rec = Mixed()
    sched = Scheduler(cfg, lambda _m: None, runner=rec)
    # Start a second before a multiple of 10 s, so "slow" fires early in the window.
    time.sleep((9 - time.time() % 10) % 10)
    assert run_for(sched, 6.0) == 0
    slow = [r for r in rec.runs if r[0] == "slow"]
    assert len(slow) == 1
    _, s_start, s_end = slow[0]
    during = [r for r in rec.runs if r[0] == "fast" and s_start <= r[1] < s_end]
    after = [r[1] - s_end for r in rec.runs if r[0] == "fast" and r[1] >= s_end]
    assert during == [], rec.runs
    # The three fires missed while "slow" ran make one run at once; the next is the regular
    # one at the next whole second (not a burst of three).
    assert after and after[0] < 0.3, rec.runs
    assert len([a for a in after if a < 0.95]) <= 2, rec.runs


def test_catch_up_runs_a_missed_job_once(tmp_path: Path):
    jobs = '[schedule.nightly]\nrun = "backup"\ncron = "0 2 * * *"\n'
    cfg = make_cfg(tmp_path, jobs, tz="UTC")
    # A first daemon ran the job three days ago, then the host was down.
    first = Scheduler(cfg, lambda _m: None, runner=Recorder(),
                      clock=lambda: datetime.now(UTC) - timedelta(days=3))
    first.request_stop()
    first.run()
    state = read_state(cfg.backup_dir)
    assert state is not None
    state_file = cfg.backup_dir / "schedule-state.json"
    data = json.loads(state_file.read_text())
    data["jobs"]["nightly"]["last_due"] = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    state_file.write_text(json.dumps(data))

    rec = Recorder()
    lines: list[str] = []
    assert run_for(Scheduler(cfg, lines.append, runner=rec), 1.5) == 0
    assert [r[0] for r in rec.runs] == ["nightly"]  # three missed days: one run
    assert any("missed its run" in line for line in lines)

    rec2 = Recorder()
    assert run_for(Scheduler(cfg, lines.append, runner=rec2), 1.0) == 0
    assert rec2.runs == []  # caught up: nothing missed any more

    data = json.loads(state_file.read_text())
    data["jobs"]["nightly"]["last_due"] = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    state_file.write_text(json.dumps(data))
    no_catch_up = make_cfg(tmp_path, jobs, tz="UTC", catch_up=False)
    rec3 = Recorder()
    assert run_for(Scheduler(no_catch_up, lines.append, runner=rec3), 1.0) == 0
    assert rec3.runs == []


def test_stop_cancels_the_running_job(tmp_path: Path):
    cfg = make_cfg(tmp_path, '[schedule.long]\nrun = "backup"\ncron = "* * * * * *"\n')
    rec = Recorder(seconds=60)
    sched = Scheduler(cfg, lambda _m: None, runner=rec)
    t0 = time.monotonic()
    assert run_for(sched, 2.5) == 0
    assert time.monotonic() - t0 < 10
    assert rec.cancelled == ["long"]
    state = read_state(cfg.backup_dir)
    assert state is not None and state.jobs["long"].last_status == "cancelled"
    assert state.jobs["long"].consecutive_failures == 0


def test_jitter_delays_each_run(tmp_path: Path):
    cfg = make_cfg(tmp_path, '[schedule.a]\nrun = "prune"\ncron = "* * * * * */2"\n',
                   jitter_seconds=0.8)
    starts: list[float] = []

    def runner(cfg: Config, name: str, job: JobConfig, reporter: Reporter,
               cancel: threading.Event, lock_wait: float) -> JobOutcome:
        starts.append(time.time())
        return JobOutcome("ok", "ok")

    lines: list[str] = []
    run_for(Scheduler(cfg, lines.append, runner=runner, rng=lambda: 1.0), 4.5)
    assert starts, lines
    # Due on even seconds; the jitter (rng 1.0 x 0.8 s) moves each start 0.8 s later.
    assert all(0.75 <= t % 2 <= 1.2 for t in starts), [t % 2 for t in starts]
    assert any("starting in 0.8s (jitter)" in line for line in lines)


def test_second_daemon_on_the_same_backup_dir_is_refused(tmp_path: Path):
    cfg = make_cfg(tmp_path, '[schedule.a]\nrun = "prune"\ncron = "@daily"\n')
    first = Scheduler(cfg, lambda _m: None, runner=Recorder())
    t = threading.Thread(target=first.run)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while read_state(cfg.backup_dir) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LockedError, match="another `dcb schedule`"):
            Scheduler(cfg, lambda _m: None, runner=Recorder()).run()
    finally:
        first.request_stop()
        t.join(10)


def test_failures_count_and_heartbeat_keeps_beating_during_a_long_job(tmp_path: Path):
    cfg = make_cfg(tmp_path, '[schedule.bad]\nrun = "prune"\ncron = "* * * * * *"\n')
    rec = Recorder(seconds=1.6, fail={"bad"})
    sched = Scheduler(cfg, lambda _m: None, runner=rec)
    beats: list[str] = []

    def watch() -> None:
        while not sched.stop.is_set():
            s = read_state(cfg.backup_dir)
            if s is not None and s.current_job == "bad":
                beats.append(s.updated_at)
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    run_for(sched, 4.5)
    state = read_state(cfg.backup_dir)
    assert state is not None
    assert state.jobs["bad"].consecutive_failures == state.jobs["bad"].failures >= 2
    assert state.jobs["bad"].last_error in ("boom", "cancelled")  # the stop may land mid-run
    assert len(set(beats)) >= 3  # the heartbeat file moved on while the job was running


def test_dcb_schedule_exits_0_on_sigterm(tmp_path: Path):
    """The real command in the foreground: plain timestamped lines on stdout, SIGTERM -> 0."""
    cfg = make_cfg(tmp_path, '[schedule.tidy]\nrun = "prune"\ncron = "* * * * * *"\n')
    exe = BIN / "dcb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    p = subprocess.Popen([str(exe if exe.exists() else sys.executable), "schedule",
                          "--config", str(cfg.path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = read_state(cfg.backup_dir)
            if s is not None and s.jobs["tidy"].runs >= 2:
                break
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert any("job tidy: ok" in line for line in lines)
    assert lines[-1].endswith("dcb schedule stopped")
    assert all(datetime.strptime(line[:20], "%Y-%m-%dT%H:%M:%SZ") for line in lines)
    assert err == ""
