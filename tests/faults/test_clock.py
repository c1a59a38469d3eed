"""The wall clock as the fault, with libfaketime (Debian's faketime package) preloaded into
dcb: ``FAKETIME_DONT_FAKE_MONOTONIC=1`` moves the wall clock only, as an NTP step does, and
the offset is read from a file at every call, so it can step in the middle of a run.

- the wall clock frozen: two backups in the same second get distinct set ids, both verify;
- the wall clock stepped back two days in the middle of a backup: the run completes, its
  duration is measured on the monotonic clock (not negative, not two days), the set verifies;
- a set dated two days ahead (the clock was wrong, then corrected): retention keeps it out of
  the counting and never deletes the newer sets because of it.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.faults import kit
from tests.stackkit import TestStack
from tests.test_backup_faults import Run, ensure_running, freeze, set_dirs, wait_until

LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")

pytestmark = pytest.mark.skipif(not LIB.exists(), reason="libfaketime is installed by "
                                                          "deploy/setup.sh --test")


def _faked(offset_file: Path, **extra: str) -> dict[str, str]:
    return {"LD_PRELOAD": str(LIB), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_TIMESTAMP_FILE": str(offset_file), "FAKETIME_NO_CACHE": "1", **extra}


def _sets(cfg: Path) -> list[dict[str, object]]:
    r = run_dcb("list", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    return list(json.loads(r.out))


def test_frozen_clock_gives_distinct_set_ids(stack: TestStack, tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path)
    clock = tmp_path / "faketime"
    clock.write_text("2026-06-01 12:00:00\n")  # absolute, no '@': the clock stands still
    ids = []
    for _ in range(2):
        r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg),
                    env=_faked(clock), timeout=300)
        assert r.code == 0, r.err
        ids.append(r.out.strip())
    assert ids[0] != ids[1] and ids[0].startswith("20260601T120000Z"), ids
    assert sorted(s["status"] for s in _sets(cfg)) == ["complete", "complete"]
    v = run_dcb("verify", "--all", "--config", str(cfg))
    assert v.code == 0, v.err


def test_clock_stepped_back_mid_backup(stack: TestStack, tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    clock = tmp_path / "faketime"
    clock.write_text("+0\n")
    run = Run(tmp_path, "stepped", cfg, env=_faked(clock))
    try:
        wait_until("the run's set", lambda: set_dirs(root), run, timeout=120)
        freeze(run.pid)
        clock.write_text("-2d\n")  # an NTP step: the wall clock only
        os.kill(run.pid, signal.SIGCONT)
        code = run.wait(300)
    finally:
        run.kill()
        ensure_running(stack)
    assert code == 0, run.err
    (s,) = _sets(cfg)
    assert s["status"] == "complete"
    (set_dir,) = set_dirs(root)
    manifest = json.loads((root / set_dir / "manifest.json").read_text())
    took = float(manifest["duration_seconds"])
    stepped = datetime.fromisoformat(manifest["created_at"]) - datetime.fromisoformat(
        manifest["finished_at"])
    assert stepped.days >= 1, manifest  # the wall clock did step back during the run
    assert 0 <= took < 600, took
    history = [json.loads(line) for line in (root / "history.jsonl").read_text().splitlines()]
    assert all(float(h.get("duration_seconds") or 0) >= 0 for h in history), history
    v = run_dcb("verify", "--deep", "--config", str(cfg), timeout=300)
    assert v.code == 0, v.err
    kit.figure("wall clock", f"stepped back 2 days mid-backup: complete, duration {took:.1f}s "
                             "(monotonic), deep-verified")


def test_a_set_from_the_future_never_costs_a_newer_set(stack: TestStack,
                                                       tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path, retention={"keep_last": 1, "keep_daily": 0,
                                                  "keep_weekly": 0, "keep_monthly": 0})
    ahead = tmp_path / "ahead"
    ahead.write_text("+2d\n")
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg),
                env=_faked(ahead), timeout=300)
    assert r.code == 0, r.err
    future = r.out.strip()
    ids = []
    for _ in range(2):  # the clock corrected: real time again
        r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg), timeout=300)
        assert r.code == 0, r.err
        ids.append(r.out.strip())
    assert future > ids[1], (future, ids)  # dated ahead of them all
    p = run_dcb("prune", "--yes", "--config", str(cfg))
    assert p.code == 0, p.err + p.out
    left = {str(s["id"]) for s in _sets(cfg)}
    assert ids[1] in left, (left, p.out)  # the newest real set is kept
    assert future in left, (left, p.out)  # kept, out of the counting, until its date passes
    assert ids[0] not in left, (left, p.out)  # keep_last = 1 among the real ones
