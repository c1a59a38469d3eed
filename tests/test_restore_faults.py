"""``dcb restore`` interrupted at each step, by Ctrl-C (SIGINT) and by SIGKILL, on the real stack.

A hold point (services/faults.py, ``DCB_TEST_HOLD``) parks the restore at a known place:
validation, before and after the undo point is recorded, mid-volume (being extracted
aside), mid-database (the new database complete, not swapped in), before verification, and
(SIGKILL) between the swap's renames.
Then the signal. What a user checks afterwards: the exit code (130
for Ctrl-C), the incident log's last step, the app container running again (by the run
itself after Ctrl-C, by the next dcb run after SIGKILL), no staged dump left in PostgreSQL's
data volume (after SIGKILL too, before any other dcb run), and ``dcb undo`` bringing back
exactly the state before the restore.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_dcb
from tests.stackkit import TestStack, changed_after_backup, functions_state

DCB = Path(sys.executable).parent / "dcb"
POINTS = ["validate", "undo-point-start", "undo-point", "volume", "database", "verify"]
# The restore stages the volume and the database while the stack runs: until the swap,
# nothing live has changed.
CHANGES_NOTHING = {"validate", "undo-point-start", "undo-point", "volume", "database"}
CASES = [pytest.param(p, s, id=f"{p}-{n}") for p in POINTS
         for s, n in ((signal.SIGINT, "ctrl-c"), (signal.SIGKILL, "kill-9"))]
# The app is down only between the stop and the restart: kill -9 in the middle of the swap.
CASES.append(pytest.param("swap", signal.SIGKILL, id="swap-kill-9"))


state = functions_state


@pytest.fixture(scope="module")
def damaged(stack: TestStack, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """Every test starts from (and must end in) the changed state."""
    with changed_after_backup(stack, tmp_path_factory.mktemp("faults"), keep_rows=1000,
                              new_file="new.txt") as made:
        yield made


def staged_dumps(stack: TestStack) -> list[str]:
    mp = Path(stack.client.volumes.get(stack.postgres_volume).attrs["Mountpoint"])
    return [p.name for p in mp.glob(".dcb-restore-*")]


def incident(cfg: Path) -> tuple[str, dict[str, Any]] | None:
    logs = sorted((cfg.parent / "backups" / "restores").glob("restore-*.json"))
    if not logs:
        return None
    return logs[-1].stem, json.loads(logs[-1].read_text())


def backend_status(stack: TestStack) -> str:
    return str(stack.client.containers.get(stack.backend_container).status)


@pytest.mark.parametrize(("point", "sig"), CASES)
def test_restore_interrupted(stack: TestStack, damaged: tuple[Path, str, dict[str, Any]],
                             tmp_path: Path, point: str, sig: signal.Signals) -> None:
    cfg, set_id, before = damaged
    hold = tmp_path / "held"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    env["DCB_TEST_HOLD"] = f"{point}:{hold}"
    err = tmp_path / "stderr"
    with open(err, "w") as errf:
        proc = subprocess.Popen(
            [str(DCB), "restore", set_id, "--db", "functions_db", "--volume",
             stack.functions_volume, "--yes", "--config", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=errf, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not hold.exists():
            assert proc.poll() is None, f"dcb exited ({proc.returncode}) before {point}:\n" \
                                        + err.read_text()
            assert time.monotonic() < deadline, f"never reached {point}"
            time.sleep(0.02)
        if point == "database":
            assert staged_dumps(stack), "the dump is staged while the database is restored"
        proc.send_signal(sig)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        with contextlib.suppress(FileNotFoundError):
            hold.unlink()
    stderr = err.read_text()
    assert "Traceback" not in stderr, stderr
    found = incident(cfg)

    if sig == signal.SIGINT:
        assert code == 130, stderr
        # The run itself started again what it had stopped.
        assert backend_status(stack) == "running"
        assert staged_dumps(stack) == []
    else:
        assert code == -signal.SIGKILL
        # The staged dump goes with the killed run, before any other dcb run: its keeper in
        # the container removes it when Docker closes the keeper's stdin.
        deadline = time.monotonic() + 15
        while staged_dumps(stack) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert staged_dumps(stack) == []
    if point == "validate":
        assert found is None  # nothing started
        assert state(stack) == before
        return
    assert found is not None
    rid, log = found
    steps = log["report"]["steps"]
    want = {"undo-point-start": "undo-point", "undo-point": "undo-point",
            "volume": f"volume:{stack.functions_volume}", "database": "database:functions_db",
            "verify": "verify", "swap": "swap"}[point]
    held = next(s for s in steps if s["key"] == want)
    if sig == signal.SIGKILL:
        # The incident log was written as the run went: it shows the step it died in.
        assert log["report"]["finished"] is False
        assert want in [s["key"] for s in steps if s["outcome"] == "running"]
        if point == "swap":
            assert backend_status(stack) != "running"  # stopped, and nobody started it
        else:
            assert backend_status(stack) == "running"
    else:
        assert log["report"]["cancelled"] is True and log["report"]["finished"] is True
        # Stopped at the next safe point: inside the step, or right after it.
        assert held["outcome"] in ("cancelled", "ok"), steps
        assert "verify" not in [s["key"] for s in steps] or point == "verify"
        if point in CHANGES_NOTHING:
            assert log["report"]["state"] == ["nothing was changed"]
            assert log["report"]["undo"] is None

    # The next dcb run (here: the undo) starts what was stopped, removes the staged dump,
    # closes the incident log as interrupted, and puts back the state before the restore.
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert u.code == 0, u.err + u.out
    if (sig == signal.SIGINT and point in CHANGES_NOTHING) or point == "undo-point-start":
        # Killed before its undo point was on disk, it had changed nothing (seen in the
        # random-kill test: `dcb undo` used to answer "no undo point", exit 4).
        assert "nothing to undo" in u.out, u.out
    if point in CHANGES_NOTHING and point != "validate":
        assert "previous" not in u.out  # nothing had been swapped: nothing to put back
    if sig == signal.SIGKILL and point != "undo-point-start":
        assert "was interrupted" in u.err
        if point == "swap":
            assert f"left {stack.backend_container} stopped" in u.err
    assert backend_status(stack) == "running"
    assert staged_dumps(stack) == []
    assert state(stack) == before
    md = run_dcb("history", "--restore", rid, "--config", str(cfg))
    assert md.code == 0, md.err
    outcome = "interrupted" if sig == signal.SIGKILL else held["outcome"]
    assert any(line.startswith("| ") and f"| {held['title']} |" in line
               and f"| {outcome} |" in line for line in md.out.splitlines()), md.out
    names = stack.psql("postgres", "SELECT datname FROM pg_database").split()
    assert "functions_db__dcb_restore" not in names


# An index whose expression sleeps: pg_restore builds it after the data, silent all along.
SLOW_DB = "slowdb"
SLOW_SQL = ("CREATE FUNCTION slow_key(n int) RETURNS int LANGUAGE sql IMMUTABLE "
            "AS 'SELECT n FROM pg_sleep(1.6)';\n"
            "CREATE TABLE t (n int);\nINSERT INTO t SELECT generate_series(1, 5);\n"
            "CREATE INDEX t_slow ON t (slow_key(n));\n")


def slow_sessions(stack: TestStack) -> list[str]:
    return stack.psql("postgres", "SELECT pid FROM pg_stat_activity WHERE query LIKE "
                                  "'CREATE INDEX t_slow%'").split()


def test_silent_pg_restore_has_no_hidden_timeout_and_ctrl_c_ends_it(stack: TestStack,
                                                                    tmp_path: Path) -> None:
    """pg_restore silent (building an index) for longer than a Docker API request may take
    (``[timeouts] docker_api = 3``): the restore completes. Ctrl-C during that silence ends
    it at once with its server sessions: exit 130, the old database untouched."""
    stack.psql("postgres", f"CREATE DATABASE {SLOW_DB}")
    try:
        stack.psql(SLOW_DB, SLOW_SQL)
        cfg = stack.write_config(tmp_path, stack={"databases": [SLOW_DB]},
                                 timeouts={"docker_api": 3})
        r = run_dcb("backup", "-q", "--db", SLOW_DB, "--config", str(cfg))
        assert r.code == 0, r.err
        set_id = r.out.strip()
        args = ("restore", set_id, "--db", SLOW_DB, "--yes", "--no-safety-backup",
                "--config", str(cfg))

        t0 = time.monotonic()
        r = run_dcb(*args, "--json")
        took = time.monotonic() - t0
        assert r.code == 0, r.err + r.out
        assert "Traceback" not in r.err
        report = json.loads(r.out)["report"]
        assert report["verification"] == {f"database {SLOW_DB}": []}
        assert took > 8, took  # five index rows of 1.6 s each, in one silent pg_restore

        stack.psql(SLOW_DB, "INSERT INTO t VALUES (6)")  # the old database, to be kept
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
        err = tmp_path / "stderr"
        with open(err, "w") as errf:
            proc = subprocess.Popen([str(DCB), *args], stdout=subprocess.DEVNULL, stderr=errf,
                                    stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 120
            while not slow_sessions(stack):
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "pg_restore never built the index"
                time.sleep(0.1)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        assert code == 130, err.read_text()
        assert took < 5, took  # not after the index (up to 8 s more)
        assert "Traceback" not in err.read_text()
        assert slow_sessions(stack) == []
        names = stack.psql("postgres", "SELECT datname FROM pg_database").split()
        assert f"{SLOW_DB}__dcb_restore" not in names
        assert stack.psql(SLOW_DB, "SELECT count(*) FROM t").strip() == "6"
        assert staged_dumps(stack) == []
    finally:
        for db in stack.psql("postgres", "SELECT datname FROM pg_database WHERE datname "
                                         f"LIKE '{SLOW_DB}%'").split():
            stack.psql("postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
