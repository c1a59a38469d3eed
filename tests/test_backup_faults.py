"""``dcb backup`` under faults (shared/RELIABILITY.md), on the real Docker engine + PostgreSQL.

Every test checks what the engineer on call would check afterwards: the exit code and the one
``dcb:`` error line, ``dcb list``/``dcb verify``, the files left in the backup dir, whether
the app container is running (and whether it was ever restarted), leftover helper containers.
No mocks: faults are real signals, real full/read-only filesystems, real missing objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker.errors
import pytest

from tests.conftest import Result, run_dcb
from tests.stackkit import LABEL, PG_IMAGE, TestStack

DCB = Path(sys.executable).parent / "dcb"
SET_ID = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
MARKER = ".stopped-containers.json"
T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------------
def dcb_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``run_dcb`` gives the CLI: no stray DCB_* settings from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    env.update(extra or {})
    return env


class Run:
    """``dcb backup`` started in the background, its output going to files (no pipe stalls)."""

    def __init__(self, tmp_path: Path, name: str, config: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.out_path = tmp_path / f"{name}.stdout"
        self.err_path = tmp_path / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [str(DCB), "backup", "--config", str(config), *args],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=dcb_env(env))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Make sure nothing is left running (idempotent; used in finally blocks)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(30)


def freeze(pid: int) -> bool:
    """SIGSTOP ``pid`` and wait until every one of its threads has really stopped (the signal
    is delivered asynchronously: a thread may finish a write after ``kill`` returns).
    False when it had ended already (a zombie not yet reaped: nothing to freeze)."""
    os.kill(pid, signal.SIGSTOP)
    ended = False

    def all_stopped() -> bool:
        nonlocal ended
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        ended = not states or any(st in ("Z", "X") for st in states)
        return ended or all(st in ("T", "t") for st in states)

    wait_until(f"pid {pid} to stop", all_stopped, timeout=10)
    return not ended


def wait_until(what: str, pred: Callable[[], T], run: Run | None = None,
               timeout: float = 60, interval: float = 0.005) -> T:
    """Poll ``pred`` until it returns something truthy; fail if ``run`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"dcb exited with {run.proc.returncode} before {what}:\n"
                                 f"{run.err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def set_dirs(root: Path) -> set[str]:
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and SET_ID.match(p.name)}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with (size, mtime_ns): a fingerprint of the store."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def temp_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def list_sets(config: Path, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    r = run_dcb("list", "--json", "--config", str(config), env=env)
    assert r.code == 0, r.err
    return {s["id"]: s for s in json.loads(r.out)}


def statuses(config: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in list_sets(config).items()}


def error_line(r: Result | str) -> str:
    """The one-line ``dcb: ...`` error: exactly one, followed at most by ``hint:`` lines, and
    no traceback anywhere on stderr."""
    err = r if isinstance(r, str) else r.err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    idx = [i for i, line in enumerate(lines) if line.startswith("dcb:")]
    assert len(idx) == 1, f"expected one 'dcb:' error line, got:\n{err}"
    rest = [line for line in lines[idx[0] + 1:] if line.strip()]
    assert all(line.startswith("hint:") for line in rest), \
        f"the error spills over several lines:\n{err}"
    return lines[idx[0]]


def container_state(stack: TestStack, name: str) -> dict[str, Any]:
    state: dict[str, Any] = stack.client.api.inspect_container(name)["State"]
    return state


def ensure_running(stack: TestStack, *names: str) -> None:
    """Put the shared stack back as it was (used in finally blocks)."""
    for name in names or (stack.postgres_container, stack.backend_container):
        with contextlib.suppress(docker.errors.APIError):
            c = stack.client.containers.get(name)
            if c.status != "running":
                c.start()


def stack_helpers(stack: TestStack) -> list[str]:
    """dcb helper containers (label ``dcb.helper``, any store) that mount this test stack's
    volumes: other stacks on the engine may be busy with their own."""
    names: set[str] = set()
    for v in stack.volumes:
        # The plain list endpoint: inspecting a container that is being removed can block.
        for c in stack.client.api.containers(all=True,
                                             filters={"label": "dcb.helper", "volume": v}):
            names.update(n.lstrip("/") for n in c["Names"])
    return sorted(names)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (these tests run as root): {r.stderr}",
                    pytrace=False)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def restore_stack(stack: TestStack) -> Iterator[TestStack]:
    """Whatever a test does, the shared stack's containers end up running."""
    try:
        yield stack
    finally:
        ensure_running(stack)


# -- 1. kill -9 in the middle of a run -----------------------------------------------------------
KILL_POINTS = [
    # (trigger, extra delay after it, [storage] volume_access)
    pytest.param("set-dir", 0.0, "auto", id="as-set-dir-appears"),
    pytest.param("set-dir", 0.2, "auto", id="set-dir-plus-200ms"),
    pytest.param("artifact-tmp", 0.0, "auto", id="while-an-artifact-is-written"),
    pytest.param("helper", 0.0, "helper", id="app-stopped-helper-running"),
]


@pytest.mark.parametrize(("trigger", "delay", "access"), KILL_POINTS)
def test_kill_9_mid_run_then_next_run_recovers(restore_stack: TestStack, tmp_path: Path,
                                               trigger: str, delay: float, access: str) -> None:
    stack = restore_stack
    cfg = stack.write_config(tmp_path, storage={"volume_access": access})
    root = tmp_path / "backups"
    run = Run(tmp_path, "killed", cfg)
    try:
        new_dir = wait_until("the set directory", lambda: set_dirs(root), run)
        killed_id = next(iter(new_dir))
        if trigger == "artifact-tmp":
            wait_until("an artifact's temp file", lambda: temp_files(root / killed_id), run)
        elif trigger == "helper":
            wait_until("a helper container", lambda: stack_helpers(stack), run)
        if delay:
            time.sleep(delay)
        run.proc.send_signal(signal.SIGKILL)
        assert run.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    finally:
        run.kill()

    if trigger == "helper":
        # The fault really happened: the app was stopped and a helper was running.
        assert container_state(stack, stack.backend_container)["Status"] != "running"
        assert stack_helpers(stack)
        assert (root / MARKER).exists()

    # The killed run left no good set behind: its set is "incomplete", nothing is complete.
    before = statuses(cfg)
    assert before == {killed_id: "incomplete"}

    # The next run does not wait for (or trip over) the dead run's lock, and cleans up.
    t0 = time.monotonic()
    r = run_dcb("backup", "--config", str(cfg), timeout=180)
    assert r.code == 0, r.err
    assert "locked" not in r.err
    assert time.monotonic() - t0 < 60
    new_id = r.out.strip()
    assert SET_ID.match(new_id) and new_id != killed_id

    if trigger == "helper":
        assert "interrupted" in r.err and stack.backend_container in r.err, r.err
    assert container_state(stack, stack.backend_container)["Status"] == "running"
    assert stack_helpers(stack) == []
    assert not (root / MARKER).exists()
    assert temp_files(root) == [], "temp files left in the backup dir"
    assert statuses(cfg) == {killed_id: "incomplete", new_id: "complete"}
    assert not any(p.name.endswith(".tmp") for p in (root / new_id).iterdir())

    v = run_dcb("verify", new_id, "--config", str(cfg))
    assert v.code == 0, v.out + v.err
    assert f"{new_id}: ok" in v.out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_app_stopped_restarts_it_promptly(restore_stack: TestStack, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    """A polite stop (systemd, Ctrl-C) while the app is down for archiving: the app comes back
    before dcb exits, the set is marked failed, no helper is left."""
    stack = restore_stack
    cfg = stack.write_config(tmp_path, storage={"volume_access": "helper"})
    root = tmp_path / "backups"
    held = tmp_path / "held"
    # PYTHONFAULTHANDLER: a run that does not stop is made to print where each thread is.
    run = Run(tmp_path, "signalled", cfg, env={"DCB_TEST_HOLD": f"backup-app-stopped:{held}",
                                               "PYTHONFAULTHANDLER": "1"})
    try:
        wait_until("the app stopped for archiving", held.exists, run)
        assert stack_helpers(stack)
        assert container_state(stack, stack.backend_container)["Status"] != "running"
        t0 = time.monotonic()
        run.proc.send_signal(sig)
        try:
            code = run.wait(60)
        except subprocess.TimeoutExpired:
            run.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's traceback
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.wait(10)
            raise AssertionError(f"dcb did not stop within 60 s of {sig.name}:\n"
                                 f"{run.err[-6000:]}") from None
        elapsed = time.monotonic() - t0
        # Started again by the run itself, not by a later one.
        backend = container_state(stack, stack.backend_container)["Status"]
        helpers = stack_helpers(stack)
    finally:
        run.kill()
        # Whatever happened, the shared stack is left as the next tests expect it.
        for name in stack_helpers(stack):
            with contextlib.suppress(docker.errors.APIError):
                stack.client.containers.get(name).remove(force=True)
        if container_state(stack, stack.backend_container)["Status"] != "running":
            stack.client.containers.get(stack.backend_container).start()
    assert code == 130, run.err
    assert elapsed < 30, f"took {elapsed:.1f}s to stop"
    assert run.out == ""
    assert backend == "running"
    assert helpers == []
    assert not (root / MARKER).exists()
    assert temp_files(root) == []
    sets = list_sets(cfg)
    assert [s["status"] for s in sets.values()] == ["failed"], sets
    (set_id,) = sets
    assert sorted(p.name for p in (root / set_id).iterdir()) == ["manifest.json"]


def test_sigterm_during_replication_after_backup(restore_stack: TestStack,
                                                tmp_path: Path) -> None:
    """``docker stop`` of a backup that is replicating its new set ([replication]
    after_backup): the copy is stopped (its process with it), the exit is "interrupted"
    (130) and says the backup itself is complete, and the set stays listed complete."""
    stack = restore_stack
    cfg = stack.write_config(
        tmp_path, stack={"databases": ["functions_db"], "volumes": []},
        replication={"after_backup": True},
        **{"replication.slow": {"type": "command", "command": ["sh", "-c", "sleep 98.75"]}})
    root = tmp_path / "backups"

    def sleeping() -> bool:
        ps = subprocess.run(["pgrep", "-f", "sleep 98.75"], capture_output=True, text=True)
        return ps.stdout.strip() != ""

    run = Run(tmp_path, "replicating", cfg, "-q")
    try:
        wait_until("the replication command running", sleeping, run)
        run.proc.send_signal(signal.SIGTERM)
        code = run.wait(30)
    finally:
        run.kill()
    assert code == 130, run.err
    assert "is complete; its replication was interrupted" in run.err, run.err
    assert "Traceback" not in run.err
    sets = list_sets(cfg)
    assert [s["status"] for s in sets.values()] == ["complete"], sets
    assert run.out.strip() == next(iter(sets))
    time.sleep(0.3)
    assert not sleeping(), "the replication command outlived dcb"
    assert temp_files(root) == []


def test_run_on_another_backup_dir_does_not_break_a_live_run(restore_stack: TestStack,
                                                               tmp_path: Path) -> None:
    """Two backup dirs on one engine (two stacks, or a test copy next to production): each run
    holds only its own dir's lock, so cleaning up after killed runs must spare the helper
    container of a run that is alive."""
    stack = restore_stack
    cfg_a = stack.write_config(tmp_path / "a", storage={"volume_access": "helper"})
    cfg_b = stack.write_config(tmp_path / "b")
    a = Run(tmp_path, "a", cfg_a)
    b: Run | None = None
    try:
        wait_until("run A's helper container", lambda: stack_helpers(stack), a)
        freeze(a.pid)  # A is alive, just slow (a slow disk, a busy host)
        try:
            b = Run(tmp_path, "b", cfg_b, "--db", "functions_db")
            with contextlib.suppress(subprocess.TimeoutExpired):
                b.wait(5)  # B's cleanup step comes first, within a second
        finally:
            os.kill(a.pid, signal.SIGCONT)
        code_b = b.wait(120)
        code_a = a.wait(120)
    finally:
        a.kill()
        if b is not None:
            b.kill()
    assert code_b == 0, b.err
    assert code_a == 0, f"run A was broken by run B:\n{a.err}"
    assert statuses(cfg_a) == {a.out.strip(): "complete"}
    assert stack_helpers(stack) == []


# -- 2. two runs at once -------------------------------------------------------------------------
def test_second_concurrent_run_is_locked_out_and_writes_nothing(restore_stack: TestStack,
                                                                stack_config: Path,
                                                                tmp_path: Path) -> None:
    stack = restore_stack
    root = tmp_path / "backups"
    first = Run(tmp_path, "first", stack_config)
    try:
        first_id = next(iter(wait_until("the first run's set", lambda: set_dirs(root), first)))
        # Freeze the first run so it is certainly still running (and holding its lock) while
        # the second one starts; SIGCONT below lets it finish normally.
        freeze(first.pid)
        try:
            snapshot = tree(root)
            t0 = time.monotonic()
            second = run_dcb("backup", "--config", str(stack_config), timeout=60)
            elapsed = time.monotonic() - t0
            after = tree(root)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.code == 5, second.out + second.err
        line = error_line(second)
        assert "locked" in line and f"pid {first.pid}" in line, line
        assert second.out == ""
        assert elapsed < 15, "the loser must give up at once, not wait for the lock"
        assert after == snapshot, f"the locked-out run changed the backup dir:\n{snapshot}\n{after}"

        assert first.wait(180) == 0, first.err
    finally:
        first.kill()
    assert first.out.strip() == first_id
    assert statuses(stack_config) == {first_id: "complete"}
    assert container_state(stack, stack.backend_container)["Status"] == "running"
    v = run_dcb("verify", first_id, "--config", str(stack_config))
    assert v.code == 0, v.out + v.err


# -- 3. full disk --------------------------------------------------------------------------------
def test_disk_full_mid_write_fails_cleanly(restore_stack: TestStack, tmp_path: Path) -> None:
    stack = restore_stack
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    # A tiny space estimate lets the pre-check pass so ENOSPC happens while writing. (An
    # environment override: the test kit's write_config cannot write TOML floats.)
    tiny_estimate = {"DCB_STORAGE_SPACE_ESTIMATE_RATIO": "0.001"}
    # The full backup is ~4.6 MB compressed (mostly pg_basebackup); one small dump fits in 2 MB.
    with tmpfs(root, "size=2m,mode=0700"):
        small = run_dcb("backup", "--db", "functions_db", "--config", str(cfg),
                        env=tiny_estimate)
        assert small.code == 0, small.err
        good_id = small.out.strip()

        t0 = time.monotonic()
        r = run_dcb("backup", "--prune", "--config", str(cfg), env=tiny_estimate, timeout=180)
        elapsed = time.monotonic() - t0
        assert r.code != 0 and r.code != 5, r.err
        line = error_line(r)
        assert "No space left" in line, line
        assert elapsed < 60, "ENOSPC must not be retried"

        sets = list_sets(cfg)
        failed_ids = set(sets) - {good_id}
        assert len(failed_ids) == 1, sets
        failed_id = failed_ids.pop()
        assert sets[failed_id]["status"] == "failed"
        assert "No space left" in (sets[failed_id]["error"] or "")
        assert sets[failed_id]["artifacts"] == []
        assert sets[good_id]["status"] == "complete"
        # Nothing of the failed run is left but its manifest: space is given back.
        assert sorted(p.name for p in (root / failed_id).iterdir()) == ["manifest.json"]
        assert temp_files(root) == []
        assert not (root / MARKER).exists()

        v = run_dcb("verify", good_id, "--config", str(cfg))
        assert v.code == 0, v.out + v.err
        assert container_state(stack, stack.backend_container)["Status"] == "running"
        assert container_state(stack, stack.postgres_container)["Status"] == "running"


def test_disk_too_small_is_refused_before_writing(restore_stack: TestStack,
                                                  tmp_path: Path) -> None:
    stack = restore_stack
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    started = container_state(stack, stack.backend_container)["StartedAt"]
    with tmpfs(root, "size=2m,mode=0700"):
        r = run_dcb("backup", "--config", str(cfg))
        assert r.code not in (0, 5), r.err
        line = error_line(r)
        assert "not enough space" in line and str(root) in line, line
        assert set_dirs(root) == set()
        assert temp_files(root) == []
        assert statuses(cfg) == {}
    state = container_state(stack, stack.backend_container)
    assert state["Status"] == "running"
    assert state["StartedAt"] == started, "the app was stopped for a backup that never began"


# -- 4. read-only backup dir ---------------------------------------------------------------------
@pytest.mark.parametrize("sub", ["", "sub/dir"], ids=["mount-point", "missing-subdir"])
def test_read_only_backup_dir_fails_before_stopping_anything(restore_stack: TestStack,
                                                             tmp_path: Path, sub: str) -> None:
    stack = restore_stack
    mnt = tmp_path / "ro"
    backup_dir = mnt / sub if sub else mnt
    cfg = stack.write_config(tmp_path, storage={"backup_dir": str(backup_dir)})
    before = {n: container_state(stack, n)["StartedAt"]
              for n in (stack.backend_container, stack.postgres_container)}
    with tmpfs(mnt, "ro,size=1m"):
        r = run_dcb("backup", "--config", str(cfg))
        assert r.code not in (0, 5), r.err
        line = error_line(r)
        assert str(backup_dir) in line and "not writable" in line, line
        assert "Read-only file system" in line, line
        assert list(mnt.iterdir()) == []
    for name, started in before.items():
        state = container_state(stack, name)
        assert state["Status"] == "running"
        assert state["StartedAt"] == started, f"{name} was restarted"


# -- 5. PostgreSQL container not running ---------------------------------------------------------
def test_postgres_container_stopped(restore_stack: TestStack, tmp_path: Path) -> None:
    stack = restore_stack
    # A throwaway container from the same image stands in for a stopped database server; the
    # shared stack's PostgreSQL keeps running.
    dead = stack.client.containers.run(
        PG_IMAGE, name=f"{stack.prefix}-pg-stopped", entrypoint=["sh", "-c", "exit 0"],
        detach=True, network_mode="none", labels=LABEL)
    try:
        dead.wait(timeout=30)
        dead.reload()
        assert dead.status == "exited"
        started = container_state(stack, stack.backend_container)["StartedAt"]
        cfg = stack.write_config(tmp_path, stack={"postgres_container": dead.name})
        r = run_dcb("backup", "--config", str(cfg))
        assert r.code not in (0, 5), r.err
        line = error_line(r)
        assert dead.name and dead.name in line and "not running" in line, line
        assert set_dirs(tmp_path / "backups") == set()
        assert statuses(cfg) == {}
        state = container_state(stack, stack.backend_container)
        assert state["Status"] == "running" and state["StartedAt"] == started
    finally:
        dead.remove(force=True)


# -- 6. configured volume or database missing ----------------------------------------------------
@pytest.mark.parametrize("kind", ["volume", "database"])
def test_missing_volume_or_database_is_not_found(restore_stack: TestStack, tmp_path: Path,
                                                 kind: str) -> None:
    stack = restore_stack
    if kind == "volume":
        missing = f"{stack.prefix}_no_such_volume"
        cfg = stack.write_config(tmp_path, stack={"volumes": [*stack.volumes, missing]})
    else:
        missing = f"{stack.prefix}_no_such_db"
        cfg = stack.write_config(tmp_path, stack={"databases": ["dart_cloud", missing]})
    started = container_state(stack, stack.backend_container)["StartedAt"]
    r = run_dcb("backup", "--config", str(cfg))
    assert r.code == 4, r.out + r.err
    line = error_line(r)
    assert missing in line and kind in line, line
    root = tmp_path / "backups"
    assert set_dirs(root) == set()
    assert not root.exists() or temp_files(root) == []
    assert statuses(cfg) == {}
    state = container_state(stack, stack.backend_container)
    assert state["Status"] == "running" and state["StartedAt"] == started


# -- 7. Docker unreachable -----------------------------------------------------------------------
def test_docker_unreachable(restore_stack: TestStack, stack_config: Path,
                            tmp_path: Path) -> None:
    stack = restore_stack
    started = container_state(stack, stack.backend_container)["StartedAt"]
    t0 = time.monotonic()
    r = run_dcb("backup", "--config", str(stack_config),
                env={"DOCKER_HOST": "unix:///nonexistent.sock"}, timeout=120)
    assert r.code == 3, r.out + r.err
    assert time.monotonic() - t0 < 30
    line = error_line(r)
    assert "Docker" in line and "/nonexistent.sock" in line, line
    assert r.out == ""
    assert set_dirs(tmp_path / "backups") == set()
    assert statuses(stack_config) == {}
    assert container_state(stack, stack.backend_container)["StartedAt"] == started


# -- 8. pg_dump fails (no privileges) ------------------------------------------------------------
@pytest.fixture
def noaccess_role(stack: TestStack) -> Iterator[str]:
    role = f"{stack.prefix}_noaccess"
    stack.psql("postgres", f"CREATE ROLE {role} LOGIN;")
    try:
        yield role
    finally:
        stack.psql("postgres", f"REVOKE ALL ON pg_catalog.pg_authid FROM {role};", check=False)
        for db in ("postgres", "dart_cloud", "functions_db"):
            stack.psql(db, f"DROP OWNED BY {role};", check=False)
        stack.psql("postgres", f"DROP ROLE IF EXISTS {role};")
        assert stack.psql("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'") == ""


def assert_failed_run_left_nothing(stack: TestStack, cfg: Path) -> None:
    """The run is listed as failed (nothing complete), only its manifest is left, the app runs."""
    root = cfg.parent / "backups"
    sets = list_sets(cfg)
    assert [s["status"] for s in sets.values()] == ["failed"], sets
    (failed_id,) = sets
    assert sets[failed_id]["artifacts"] == []
    assert sorted(p.name for p in (root / failed_id).iterdir()) == ["manifest.json"]
    assert temp_files(root) == []
    assert not (root / MARKER).exists()
    assert container_state(stack, stack.backend_container)["Status"] == "running"
    assert stack_helpers(stack) == []
    v = run_dcb("verify", "--config", str(cfg))
    assert v.code == 4, "verify must find no complete set to vouch for"


def test_backup_as_unprivileged_role_fails_the_run(restore_stack: TestStack, tmp_path: Path,
                                                   noaccess_role: str) -> None:
    """Roles (pg_dumpall), tables (pg_dump) and pg_basebackup are all refused to this role:
    whichever stage fails first, the run fails as a whole."""
    stack = restore_stack
    cfg = stack.write_config(tmp_path, stack={"postgres_user": noaccess_role})
    r = run_dcb("backup", "--config", str(cfg), timeout=180)
    assert r.code == 1, r.out + r.err
    assert r.out == ""
    assert "Traceback" not in r.err, r.err
    first = next(line for line in r.err.splitlines() if line.startswith("dcb:"))
    assert "permission denied" in first or "must be superuser" in first, r.err
    assert_failed_run_left_nothing(stack, cfg)


@pytest.fixture
def dump_denied_config(stack: TestStack, tmp_path: Path, noaccess_role: str) -> Path:
    """A config whose user may dump the roles (it may read pg_authid) but no table, so
    ``pg_dump`` itself fails; ``--db dart_cloud`` keeps pg_basebackup out of the run."""
    stack.psql("postgres", f"GRANT SELECT ON pg_catalog.pg_authid TO {noaccess_role};")
    return stack.write_config(tmp_path, stack={"postgres_user": noaccess_role})


def test_pg_dump_failure_fails_the_run(restore_stack: TestStack,
                                       dump_denied_config: Path) -> None:
    r = run_dcb("backup", "--db", "dart_cloud", "--config", str(dump_denied_config),
                timeout=180)
    assert r.code == 1, r.out + r.err
    assert r.out == ""
    assert any(line.startswith("dcb: pg_dump dart_cloud failed") for line in r.err.splitlines()), \
        r.err
    assert_failed_run_left_nothing(restore_stack, dump_denied_config)


def test_pg_dump_failure_is_reported_in_one_clear_line(restore_stack: TestStack,
                                                       dump_denied_config: Path) -> None:
    r = run_dcb("backup", "--db", "dart_cloud", "--config", str(dump_denied_config),
                timeout=180)
    assert r.code == 1, r.out + r.err
    line = error_line(r)  # one line, no traceback
    assert "pg_dump dart_cloud" in line and "permission denied" in line, line


@contextlib.contextmanager
def table_locked(stack: TestStack, seconds: int) -> Iterator[float]:
    """``invoices`` held ACCESS EXCLUSIVE by another session for ``seconds``; yields the
    monotonic time at which the lock will be released."""
    holder = subprocess.Popen(
        ["docker", "exec", "-i", stack.postgres_container, "psql", "-U", "postgres",
         "-d", "dart_cloud", "-v", "ON_ERROR_STOP=1"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    assert holder.stdin is not None
    holder.stdin.write(f"BEGIN; LOCK TABLE invoices IN ACCESS EXCLUSIVE MODE; "
                       f"SELECT pg_sleep({seconds}); COMMIT;\n")
    holder.stdin.flush()
    try:
        wait_until("the lock is held", lambda: stack.psql(
            "dart_cloud", "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'invoices' AND l.mode = 'AccessExclusiveLock' "
                        "AND l.granted").strip() == "1")
        yield time.monotonic() + seconds
    finally:
        stack.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               f"WHERE query LIKE '%pg_sleep({seconds})%' "
                               "AND pid <> pg_backend_pid()")
        holder.kill()
        holder.wait(10)


def lock_waiters(stack: TestStack) -> list[str]:
    """Sessions queued for a lock on ``invoices`` (a killed client's backend would stay)."""
    return stack.psql("dart_cloud", "SELECT a.application_name FROM pg_locks l "
                                    "JOIN pg_class c ON c.oid = l.relation "
                                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                                    "WHERE c.relname = 'invoices' AND NOT l.granted").split()


def test_table_lock_fails_cleanly_at_the_lock_wait_timeout(restore_stack: TestStack,
                                                           tmp_path: Path) -> None:
    """A table held ACCESS EXCLUSIVE by someone else: the run fails at the timeout, no hang."""
    stack = restore_stack
    cfg = stack.write_config(tmp_path, stack={"lock_wait_timeout": 2})
    with table_locked(stack, 120):
        t0 = time.monotonic()
        r = run_dcb("backup", "--db", "dart_cloud", "--config", str(cfg), timeout=120)
        assert r.code == 1, r.err
        assert time.monotonic() - t0 < 60
        line = error_line(r)
        assert "dart_cloud" in line and "lock" in line.lower(), line
        assert statuses(cfg) and set(statuses(cfg).values()) == {"failed"}


def test_step_limit_and_signals_stop_a_silent_dump(restore_stack: TestStack,
                                                   tmp_path: Path) -> None:
    """pg_dump waits for a lock forever (lock_wait_timeout = 0) and prints nothing: the
    explicit [timeouts] step stops it in one line, SIGTERM stops it at once (exit 130), and
    neither leaves a dcb session queued behind the lock (it would block the app's writes)."""
    stack = restore_stack
    limited = stack.write_config(tmp_path / "limited", stack={"lock_wait_timeout": 0},
                                 timeouts={"step": 4})
    unlimited = stack.write_config(tmp_path / "unlimited", stack={"lock_wait_timeout": 0})
    with table_locked(stack, 120):
        t0 = time.monotonic()
        r = run_dcb("backup", "--db", "dart_cloud", "--config", str(limited), timeout=120)
        took = time.monotonic() - t0
        assert r.code == 1, r.err
        line = error_line(r)
        assert "pg_dump dart_cloud did not finish within 4s ([timeouts] step)" in line, line
        assert took < 30, took
        assert set(statuses(limited).values()) == {"failed"}
        wait_until("no dcb session in the lock queue", lambda: not lock_waiters(stack),
                   timeout=10, interval=0.2)

        run = Run(tmp_path, "sigterm", unlimited, "--db", "dart_cloud")
        try:
            wait_until("pg_dump queued behind the lock",
                       lambda: any(n.startswith("dcb-") for n in lock_waiters(stack)), run,
                       interval=0.2)
            t0 = time.monotonic()
            run.proc.send_signal(signal.SIGTERM)
            code = run.wait(60)
            took = time.monotonic() - t0
        finally:
            run.kill()
        assert code == 130, run.err
        assert "Traceback" not in run.err
        assert took < 20, took
        assert set(statuses(unlimited).values()) == {"failed"}
        wait_until("no dcb session in the lock queue", lambda: not lock_waiters(stack),
                   timeout=10, interval=0.2)


def test_a_dump_silent_for_150s_is_not_cut(restore_stack: TestStack, tmp_path: Path) -> None:
    """With lock_wait_timeout = 0 and a table locked for 150 s, pg_dump prints nothing for
    150 s: no hidden timeout (docker-py's socket timeout used to kill the run at 121.7 s
    with a traceback); the backup completes once the lock is released, and verifies."""
    stack = restore_stack
    cfg = stack.write_config(tmp_path, stack={"lock_wait_timeout": 0})
    with table_locked(stack, 150) as released_at:
        r = run_dcb("backup", "-q", "--db", "dart_cloud", "--config", str(cfg), timeout=400)
        done_at = time.monotonic()
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    assert done_at >= released_at - 1, "the dump cannot have finished while the lock was held"
    set_id = r.out.strip()
    assert statuses(cfg) == {set_id: "complete"}
    v = run_dcb("verify", set_id, "--deep", "--config", str(cfg))
    assert v.code == 0, v.err
