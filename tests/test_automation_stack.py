"""``dcb schedule`` against the real test stack: real backups on a fast schedule, never two at
once, and SIGTERM in the middle of a backup ends it safely with exit 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dcb.services.ops.heartbeat import read_state
from dcb.services.store import BackupStore
from tests.conftest import BIN
from tests.stackkit import TestStack

pytestmark = pytest.mark.docker


def test_daemon_backs_up_on_schedule_and_stops_safely_on_sigterm(stack: TestStack,
                                                                  tmp_path: Path):
    cfg = stack.write_config(tmp_path, schedule={"heartbeat_seconds": 1})
    cfg.write_text(cfg.read_text() + '\n[schedule.often]\nrun = "backup"\n'
                   'cron = "* * * * * */2"\n\n[schedule.tidy]\nrun = "prune"\n'
                   'cron = "* * * * * *"\n')
    exe = BIN / "dcb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    p = subprocess.Popen([str(exe) if exe.exists() else sys.executable, "schedule",
                          "--config", str(cfg)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    backups_started = threading.Event()

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            done = sum(1 for x in lines if "job often: ok" in x)
            if done >= 2 and "job often: started backup" in line:
                backups_started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert backups_started.wait(180), "\n".join(lines[-30:])
        time.sleep(1.0)  # well inside the third backup (stages take seconds)
        p.send_signal(signal.SIGTERM)
        p.wait(120)
        reader.join(10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, (p.stderr.read() if p.stderr else "") + "\n".join(lines[-20:])

    # Never two jobs at once: every "started" is followed by its own end before the next.
    events = [(m[1], m[2]) for x in lines
              if (m := re.search(r"job (\w+): (started|ok|FAILED|cancelled)\b", x))]
    running: str | None = None
    for job, what in events:
        if what == "started":
            assert running is None, f"{job} started while {running} ran"
            running = job
        else:
            assert running == job
            running = None
    assert {j for j, _ in events} == {"often", "tidy"}

    assert sum(1 for x in lines if "job often: ok" in x) >= 2
    sets = BackupStore(tmp_path / "backups").list_sets()
    # The prune job keeps one set a day ([retention] defaults): the others were removed.
    assert sum(1 for s in sets if s.status == "complete") >= 1
    assert any(re.search(r"job tidy: ok .*removed [1-9]", x) for x in lines)
    assert not [s for s in sets if s.status == "incomplete"]  # the SIGTERM left no half set
    last = sets[0]
    assert last.status == "complete" or (last.status == "failed"
                                         and "cancelled" in (last.error or ""))
    backend = stack.client.containers.get(stack.backend_container)
    assert backend.status == "running"  # stopped for the volume, started again
    state = read_state(tmp_path / "backups")
    assert state is not None and state.stopped and state.current_job is None
    assert lines[-1].endswith("dcb schedule stopped")
