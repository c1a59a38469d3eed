"""kill -9 at random points of a real restore (a database and a volume of the test stack).

One uninterrupted restore measures how long a restore takes and what the stack looks like
restored. Then each seed starts ``dcb restore`` again from the changed state, kills it with
SIGKILL after a random delay spread over the whole run (start-up included), and records the
step the incident log says it died in. What must hold after every seed:

- a restore is never reported finished while the stack differs from the set;
- the next dcb run (``dcb undo RESTORE_ID``, what ``dcb status`` and the incident log point
  to) puts back exactly the state before the restore, the app running, no staged dump in
  PostgreSQL's volume and no temporary database left; a restore killed before it changed
  anything needs nothing.

``DCB_FAULT_RESTORE_SEEDS=N`` (or ``DCB_FAULT_LONG=1``: 50) runs more seeds;
``DCB_FAULT_SEED_BASE`` replays the same delays.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, run_dcb
from tests.faults import kit
from tests.stackkit import TestStack, changed_after_backup, functions_state, release_undo_points

SEEDS = kit.count("RESTORE_SEEDS", 5, 50)


def _staged(stack: TestStack) -> list[str]:
    mp = Path(stack.client.volumes.get(stack.postgres_volume).attrs["Mountpoint"])
    return [p.name for p in mp.glob(".dcb-restore-*")]


def _leftovers(stack: TestStack) -> list[str]:
    dbs = stack.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE "
                                 "'%\\_\\_dcb\\_restore%'").split()
    return dbs + _staged(stack)


def _incidents(cfg: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text())
            for p in (cfg.parent / "backups" / "restores").glob("restore-*.json")}


def _backend(stack: TestStack) -> str:
    return str(stack.client.containers.get(stack.backend_container).status)


@pytest.fixture(scope="module")
def changed(stack: TestStack, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    with changed_after_backup(stack, tmp_path_factory.mktemp("kill-restore"), keep_rows=500,
                              new_file="changed.txt") as made:
        yield made


def _restore(cfg: Path, set_id: str, stack: TestStack, err: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    with open(err, "w") as errf:
        return subprocess.Popen(
            [str(BIN / "dcb"), "restore", set_id, "--db", "functions_db", "--volume",
             stack.functions_volume, "--yes", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=errf, stdin=subprocess.DEVNULL, env=env)


def _undo(cfg: Path, rid: str) -> str:
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg), timeout=300)
    assert u.code == 0, u.err + u.out
    return u.out + u.err


def test_kill_9_at_random_points_of_a_restore(stack: TestStack, tmp_path: Path,
                                              changed: tuple[Path, str, dict[str, Any]]
                                              ) -> None:
    cfg, set_id, before = changed
    # One whole restore: its duration spreads the kill points, its result is the target.
    t0 = time.monotonic()
    p = _restore(cfg, set_id, stack, tmp_path / "whole.err")
    assert p.wait(300) == 0, (tmp_path / "whole.err").read_text()
    whole = time.monotonic() - t0
    restored = functions_state(stack)
    assert restored != before
    (rid,) = _incidents(cfg)
    _undo(cfg, rid)
    assert functions_state(stack) == before
    release_undo_points(stack)

    landed: collections.Counter[str] = collections.Counter()
    finished = 0
    for i in range(SEEDS):
        seed = kit.SEED_BASE + i
        delay = random.Random(seed).uniform(0.0, whole * 1.1)
        known = set(_incidents(cfg))
        err = tmp_path / f"seed{i}.err"
        p = _restore(cfg, set_id, stack, err)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(delay)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            code = p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        where = f"seed {seed} (DCB_FAULT_SEED_BASE={kit.SEED_BASE}), killed after {delay:.2f}s"
        assert "Traceback" not in err.read_text(), where
        new = {k: v for k, v in _incidents(cfg).items() if k not in known}
        if not new:
            landed["before the restore started"] += 1
            assert code == -signal.SIGKILL, where
            assert functions_state(stack) == before, where
        else:
            ((rid, log),) = new.items()
            report = log["report"]
            if code == 0 or report["finished"]:  # done, killed on its way out at most
                finished += 1
                landed["after it finished"] += 1
                assert not report.get("cancelled"), where
                assert functions_state(stack) == restored, where  # reported finished: it is
            else:
                assert code == -signal.SIGKILL, (where, code, err.read_text())
                assert report["finished"] is False, where
                running = [s["key"] for s in report["steps"] if s["outcome"] == "running"]
                landed["in " + (running[-1].split(":")[0] if running else
                                "between steps")] += 1
            # The next dcb run puts everything back as it was before the restore.
            _undo(cfg, rid)
        assert _backend(stack) == "running", where
        deadline = time.monotonic() + 15
        while _leftovers(stack) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leftovers(stack) == [], where
        assert functions_state(stack) == before, where
        release_undo_points(stack)
    kit.figure("kill -9 at random points of a restore",
               f"{SEEDS} seeds (base {kit.SEED_BASE}) over a {whole:.1f}s restore: every one "
               "complete or put back exactly by the next dcb run (undo), none reported "
               f"finished while different; landed: "
               + ", ".join(f"{k} {v}" for k, v in sorted(landed.items())))
