"""What the fault tests share: repetition counts, figures for the summary, and probes of the
state a fault may leave behind (PostgreSQL sessions and replication slots, processes).

The helpers that drive ``dcb backup`` under faults (``Run``, ``wait_until``, ``tmpfs``...) come
from tests/test_backup_faults.py, which started this suite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from tests.stackkit import LABEL, PG_IMAGE, TestStack

LONG = os.environ.get("DCB_FAULT_LONG", "") not in ("", "0")
"""``DCB_FAULT_LONG=1``: the long version (200 kill -9 seeds, 500 flips per artifact kind)."""


def count(name: str, ci: int, long: int) -> int:
    """A repetition count: ``DCB_FAULT_<NAME>`` if set, else the long or the CI figure."""
    value = os.environ.get(f"DCB_FAULT_{name}")
    return int(value) if value else (long if LONG else ci)


SEEDS = count("SEEDS", 20, 200)
"""Random kill -9 points of a backup per run."""
FLIPS = count("FLIPS", 50, 500)
"""Random bit flips per artifact kind, each checked by a quick verify."""
DEEP_FLIPS = count("DEEP_FLIPS", 8, 50)
"""Of those, flips per kind also checked by a deep verify against a forged checksum."""
SEED_BASE = int(os.environ.get("DCB_FAULT_SEED_BASE", "0") or 0) or int.from_bytes(
    os.urandom(3), "big")
"""Random seeds are SEED_BASE + i; a failure names its seed (rerun with this variable)."""

FIGURES: dict[str, list[str]] = defaultdict(list)
"""Figures the tests proved, printed at the end of the session (tests/faults/conftest.py)."""


def figure(topic: str, text: str) -> None:
    FIGURES[topic].append(text)


def dcb_sessions(stack: TestStack | str) -> list[str]:
    """Server sessions a dcb client opened (application_name ``dcb-...``) that are still
    there, and temporary replication slots (``dcb_...``) still held: a killed dcb must leave
    neither behind (a queued session blocks writers, a slot pins WAL)."""
    container = stack if isinstance(stack, str) else stack.postgres_container
    r = subprocess.run(
        ["docker", "exec", container, "psql", "-U", "postgres", "-X", "-A", "-t", "-c",
         "SELECT 'session ' || application_name FROM pg_stat_activity "
         "WHERE application_name LIKE 'dcb-%' AND pid <> pg_backend_pid() "
         "UNION ALL SELECT 'slot ' || slot_name FROM pg_replication_slots "
         "WHERE slot_name LIKE 'dcb\\_%'"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:-1]


def all_paths(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))] if root.exists() else []


# -- a PostgreSQL server under write load (pgbench) ---------------------------------------------
PGBENCH_SCALE = 8
"""pgbench_accounts holds 100,000 rows per unit of scale: ~130 MB, so a dump and a base
backup each take a couple of seconds and outgrow Docker's stream buffers."""
SMALL_WAL = ("-c", "max_wal_size=32MB", "-c", "min_wal_size=32MB")
"""A small server's WAL settings: under pgbench a checkpoint recycles segments every few
seconds, the condition in which ``pg_basebackup -X fetch`` lost its WAL."""


class LoadStack:
    """A PostgreSQL container of its own with a pgbench database ``bench`` (the shared stack
    stays untouched: these tests kill and load this one)."""

    def __init__(self, client: docker.DockerClient) -> None:
        import secrets as _secrets

        self.client = client
        self.prefix = "dcbt" + _secrets.token_hex(3) + "-load"
        self.container = f"{self.prefix}-pg"
        self.volume = f"{self.prefix}_pgdata"
        self.pgbench: list[subprocess.Popen[bytes]] = []
        client.volumes.create(self.volume, labels=LABEL)
        client.containers.run(
            PG_IMAGE, list(SMALL_WAL), name=self.container, detach=True, network_mode="none",
            labels=LABEL, environment={"POSTGRES_PASSWORD": _secrets.token_urlsafe(12)},
            volumes={self.volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            stop_signal="SIGINT")
        self.wait_ready()
        self.psql("postgres", "CREATE DATABASE bench")
        r = subprocess.run(["docker", "exec", self.container, "pgbench", "-U", "postgres", "-i",
                            "-q", "-s", str(PGBENCH_SCALE), "bench"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    def wait_ready(self) -> None:
        from tests.stackkit import wait_for_postgres

        wait_for_postgres(self.client, self.container, timeout=120)

    def config(self, directory: Path, **extra: dict[str, object]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        sections: dict[str, dict[str, object]] = {
            "stack": {"postgres_container": self.container, "databases": ["bench"],
                      "volumes": [self.volume], "app_containers": [],
                      "stop_during_backup": [], "postgres_data_volume": self.volume},
            "storage": {"backup_dir": str(directory / "backups")},
        }
        for k, v in extra.items():
            sections.setdefault(k, {}).update(v)
        path = directory / "dcb.toml"
        path.write_text(toml(sections))
        return path

    def psql(self, db: str, sql: str, container: str | None = None) -> str:
        r = subprocess.run(["docker", "exec", "-i", container or self.container, "psql", "-U",
                            "postgres", "-d", db, "-X", "-q", "-t", "-A", "-v",
                            "ON_ERROR_STOP=1"], input=sql, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def start_load(self, seconds: int, clients: int = 3) -> None:
        """pgbench's TPC-B-like transactions for ``seconds`` (ended early by stop_load)."""
        self.pgbench.append(subprocess.Popen(
            ["docker", "exec", self.container, "pgbench", "-U", "postgres", "-n", "-c",
             str(clients), "-T", str(seconds), "bench"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def transactions(self) -> int:
        return int(self.psql("bench", "SELECT count(*) FROM pgbench_history"))

    def stop_load(self) -> None:
        with contextlib.suppress(Exception):
            self.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'pgbench'")
        for p in self.pgbench:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            if p.poll() is None:
                p.kill()
                p.wait()
        self.pgbench.clear()

    def ensure_running(self) -> None:
        c = self.client.containers.get(self.container)
        if c.status != "running":
            c.start()
        self.wait_ready()

    def destroy(self) -> None:
        self.stop_load()
        for kind, name in (("container", self.container), ("volume", self.volume)):
            with contextlib.suppress(docker.errors.NotFound):
                if kind == "container":
                    self.client.containers.get(name).remove(force=True, v=True)
                else:
                    self.client.volumes.get(name).remove(force=True)


def pgbench_invariants(psql: Callable[[str], str]) -> dict[str, int]:
    """pgbench's bookkeeping: every transaction adds the same delta to one account, one
    teller, one branch and logs it in history, so the four sums are equal in any consistent
    state of the database (and differ in a torn one)."""
    row = psql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), "
               "(SELECT sum(tbalance) FROM pgbench_tellers), "
               "(SELECT sum(bbalance) FROM pgbench_branches), "
               "(SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
               "(SELECT count(*) FROM pgbench_history)")
    a, t, b, h, n = (int(x) for x in row.split("|"))
    return {"accounts": a, "tellers": t, "branches": b, "history": h, "transactions": n}


def toml(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            if isinstance(v, bool):
                out.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, int | float):
                out.append(f"{k} = {v}")
            elif isinstance(v, list | tuple):
                out.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
            else:
                out.append(f'{k} = "{v}"')
        out.append("")
    return "\n".join(out)
