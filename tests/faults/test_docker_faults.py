"""The Docker engine itself as the fault: unreachable for every command, and restarted in the
middle of a backup (a private engine, tests/faults/engine.py: the shared one is never touched).

Unreachable: every command that needs Docker exits 3 with one line naming the socket and
changes nothing; the commands that only read the store (list, quick verify, history, check)
still work, which is what an engineer needs while the engine is down.

Restarted: with the app stopped for its volume and a helper container reading it, the engine
goes down (dcb runs on while it is down, or it is back before dcb notices). The run fails in
one line, never lists a set as good; ``dcb status`` and ``dcb check`` say the app was left
stopped; the next run starts it, removes the dead helper and succeeds; every set listed
complete verifies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.faults import kit
from tests.faults.engine import PrivateEngine
from tests.stackkit import BUSYBOX_IMAGE, PG_IMAGE, TestStack, functions_tree_tar
from tests.test_backup_faults import (
    MARKER,
    Run,
    error_line,
    freeze,
    set_dirs,
    temp_files,
    tree,
    wait_until,
)

NOWHERE = {"DOCKER_HOST": "unix:///nonexistent.sock"}


@pytest.fixture(scope="module")
def one_set(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    where = tmp_path_factory.mktemp("one-set")
    cfg = stack.write_config(where)
    r = run_dcb("backup", "-q", "--config", str(cfg))
    assert r.code == 0, r.err
    return cfg, r.out.strip()


def _store(root: Path) -> dict[str, tuple[int, int]]:
    """The sets and their files (the lock's holder record and the history may change)."""
    return {k: v for k, v in tree(root).items() if k not in (".lock", "history.jsonl")}


@pytest.mark.parametrize("argv", [
    ["backup"], ["status"], ["drill"], ["restore", "{id}", "--dry-run"],
    ["verify", "{id}", "--deep"], ["du", "--docker"], ["init", "--output", "-"],
], ids=lambda a: a[0] + ("-deep" if "--deep" in a else ""))
def test_docker_unreachable(one_set: tuple[Path, str], argv: list[str]) -> None:
    cfg, set_id = one_set
    root = cfg.parent / "backups"
    before = _store(root)
    t0 = time.monotonic()
    r = run_dcb(*[a.format(id=set_id) for a in argv], "--config", str(cfg), env=NOWHERE,
                timeout=120)
    assert r.code == 3, r.out + r.err
    assert time.monotonic() - t0 < 30
    line = error_line(r)
    assert "Docker" in line and "/nonexistent.sock" in line, line
    assert _store(root) == before


def test_the_store_is_readable_while_docker_is_down(one_set: tuple[Path, str]) -> None:
    cfg, set_id = one_set
    for argv in (["list", "--json"], ["verify", set_id], ["history"], ["show", set_id]):
        r = run_dcb(*argv, "--config", str(cfg), env=NOWHERE)
        assert r.code == 0, (argv, r.err)
    r = run_dcb("check", "--config", str(cfg), env=NOWHERE)
    # The store's conditions are read; only what needs the engine (coverage) is UNKNOWN.
    assert r.code in (0, 1, 3) and "backup_age_hours=" in r.out, r.out + r.err


# -- the engine restarted mid-backup -------------------------------------------------------------
class EngineStack:
    """A small Compose-like stack on the private engine: PostgreSQL and an app with
    ``restart: unless-stopped``, the app's volume stopped for archiving."""

    def __init__(self, engine: PrivateEngine) -> None:
        self.engine = engine
        self.client = engine.client()
        self.pg, self.app = "dcbe-postgres", "dcbe-app"
        self.pgdata, self.files = "dcbe_pgdata", "dcbe_files"
        for v in (self.pgdata, self.files):
            self.client.volumes.create(v)
        self.client.containers.run(
            PG_IMAGE, name=self.pg, detach=True, network_mode="none",
            environment={"POSTGRES_PASSWORD": "unused"}, stop_signal="SIGINT",
            restart_policy={"Name": "unless-stopped"},
            volumes={self.pgdata: {"bind": "/var/lib/postgresql/data", "mode": "rw"}})
        app = self.client.containers.run(
            BUSYBOX_IMAGE, ["sleep", "2147483647"], name=self.app, detach=True, init=True,
            network_mode="none", restart_policy={"Name": "unless-stopped"},
            volumes={self.files: {"bind": "/data", "mode": "rw"}})
        app.put_archive("/data", functions_tree_tar(b"engine"))
        from tests.stackkit import wait_for_postgres

        wait_for_postgres(self.client, self.pg, timeout=120)
        r = subprocess.run(["docker", "-H", engine.host, "exec", self.pg, "psql", "-U",
                            "postgres", "-c", "CREATE DATABASE app"], capture_output=True)
        assert r.returncode == 0, r.stderr

    def config(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "dcb.toml"
        path.write_text(kit.toml({
            "stack": {"postgres_container": self.pg, "databases": ["app"],
                      "volumes": [self.pgdata, self.files], "app_containers": [self.app],
                      "stop_during_backup": [self.app], "postgres_data_volume": self.pgdata},
            "storage": {"backup_dir": str(directory / "backups"), "volume_access": "helper"},
        }))
        return path

    def state(self, name: str) -> str:
        return str(self.client.api.inspect_container(name)["State"]["Status"])

    def helpers(self) -> list[str]:
        # The plain list endpoint: a helper removed meanwhile must not fail the listing.
        return [n for c in self.client.api.containers(all=True,
                                                      filters={"label": "dcb.helper"})
                for n in c["Names"]]

    def wait_pg(self) -> None:
        from tests.stackkit import wait_for_postgres

        self.client.close()
        self.client = self.engine.client()
        wait_for_postgres(self.client, self.pg, timeout=120)


@pytest.fixture(scope="module")
def engine_stack() -> Iterator[EngineStack]:
    engine = PrivateEngine()
    try:
        yield EngineStack(engine)
    finally:
        engine.destroy()


@pytest.mark.parametrize("when", ["down-while-dcb-runs", "back-before-dcb-notices"])
def test_engine_restarted_mid_backup(engine_stack: EngineStack, tmp_path: Path,
                                     when: str) -> None:
    es = engine_stack
    env = {"DOCKER_HOST": es.engine.host}
    cfg = es.config(tmp_path)
    root = tmp_path / "backups"
    first = run_dcb("backup", "-q", "--config", str(cfg), env=env)
    assert first.code == 0, first.err
    good = first.out.strip()

    run = Run(tmp_path, "restarted", cfg, env=env)
    try:
        wait_until("the helper reading the app's volume", es.helpers, run, timeout=120)
        assert es.state(es.app) == "exited"
        freeze(run.pid)
        t0 = time.monotonic()
        if when == "down-while-dcb-runs":
            es.engine.stop()
            os.kill(run.pid, signal.SIGCONT)
            code = run.wait(120)
            es.engine.start()
        else:
            es.engine.restart()
            os.kill(run.pid, signal.SIGCONT)
            code = run.wait(120)
        took = time.monotonic() - t0
    finally:
        run.kill()
        if es.engine.proc is None:
            es.engine.start()
    es.wait_pg()
    assert took < 90, took
    sets = {s["id"]: s["status"]
            for s in json.loads(run_dcb("list", "--json", "--config", str(cfg), env=env).out)}
    assert sets[good] == "complete"
    if code == 0:
        # The engine was back before dcb needed it again (the helper's tar had all been
        # read): a whole set, deep-verified below with the others.
        assert when == "back-before-dcb-notices", run.err
        line = "nothing: the run completed (all read before the engine went)"
    else:
        assert code != 5, run.err
        line = error_line(run.err)
        assert [k for k, v in sets.items() if v == "complete"] == [good], sets

    if when == "down-while-dcb-runs":
        assert "Docker" in line, line
        # Nobody could start the app again: said loudly until the next run does.
        assert es.state(es.app) == "exited"
        st = run_dcb("status", "--config", str(cfg), env=env)
        assert es.app in st.out + st.err and "interrupted" in st.out + st.err, st.out + st.err
        ck = run_dcb("check", "--config", str(cfg), env=env)
        assert ck.code == 2 and es.app in ck.out, ck.out
    else:
        # The engine was back: the run started the app itself (before it failed).
        assert es.state(es.app) == "running", run.err
        assert es.helpers() == []

    nxt = run_dcb("backup", "-q", "--config", str(cfg), env=env, timeout=180)
    assert nxt.code == 0, nxt.err
    assert es.state(es.app) == "running" and es.state(es.pg) == "running"
    assert es.helpers() == []
    assert not (root / MARKER).exists()
    assert temp_files(root) == []
    assert len(set_dirs(root)) == 3
    v = run_dcb("verify", "--all", "--deep", "--config", str(cfg), env=env)
    assert v.code == 0, v.out + v.err
    kit.figure("Docker engine restarted mid-backup",
               f"{when}: {'completed' if code == 0 else 'failed'} in {took:.1f}s with: "
               f"{line}; the next run recovered")
