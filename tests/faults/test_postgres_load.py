"""PostgreSQL under write load and killed mid-dump, on a server of its own (tests/faults/kit.py
LoadStack: pgbench's database, a small WAL).

- A backup taken while pgbench writes restores (``dcb restore --as``) into a database that
  satisfies pgbench's invariants and holds exactly the row counts of the manifest; its
  physical backup (pg_basebackup) boots in a fresh container and satisfies them too.
- The backup disk stalls for seconds while pgbench writes: ``pg_basebackup -X fetch`` used to
  fail with "requested WAL segment ... has already been removed"; a temporary replication slot
  now keeps that WAL for the backup's duration, and is gone afterwards.
- ``docker kill`` of PostgreSQL mid-dump: the run fails in one line, nothing partial is left,
  the earlier set still verifies, and the next run (once PostgreSQL is back) succeeds.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import zstandard

from tests.conftest import run_dcb
from tests.faults import kit
from tests.stackkit import BUSYBOX_IMAGE, LABEL, PG_IMAGE
from tests.test_backup_faults import (
    Run,
    error_line,
    freeze,
    list_sets,
    temp_files,
    wait_until,
)


@pytest.fixture(scope="module")
def load(docker_client: docker.DockerClient) -> Iterator[kit.LoadStack]:
    st = kit.LoadStack(docker_client)
    try:
        yield st
    finally:
        st.destroy()


def _manifest(cfg: Path, set_id: str) -> dict[str, object]:
    r = run_dcb("show", set_id, "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    data: dict[str, object] = json.loads(r.out)
    return data


def _artifact(manifest: dict[str, object], kind: str) -> dict[str, object]:
    arts = manifest["artifacts"]
    assert isinstance(arts, list)
    return next(a for a in arts if a["kind"] == kind)


@contextlib.contextmanager
def _booted(load: kit.LoadStack, archive: Path) -> Iterator[str]:
    """The physical backup extracted into a new volume and a PostgreSQL container started on
    it (recovery from the backup's own WAL); yields the container's name."""
    client = load.client
    name = f"{load.prefix}-boot"
    vol = f"{load.prefix}_boot"
    client.volumes.create(vol, labels=LABEL)
    try:
        tar = subprocess.Popen(
            ["docker", "run", "-i", "--rm", "--network", "none", "--log-driver", "none",
             "-v", f"{vol}:/data", BUSYBOX_IMAGE, "tar", "x", "-C", "/data"],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert tar.stdin is not None
        with open(archive, "rb") as f:
            zstandard.ZstdDecompressor().copy_stream(f, tar.stdin)
        tar.stdin.close()
        assert tar.wait(120) == 0, tar.stderr.read() if tar.stderr else ""
        client.containers.run(PG_IMAGE, name=name, detach=True, network_mode="none",
                              labels=LABEL, environment={"POSTGRES_PASSWORD": "unused"},
                              volumes={vol: {"bind": "/var/lib/postgresql/data",
                                             "mode": "rw"}})
        from tests.stackkit import wait_for_postgres

        wait_for_postgres(client, name, timeout=120)
        yield name
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(name).remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(vol).remove(force=True)


def test_backup_under_pgbench_restores_a_consistent_database(load: kit.LoadStack,
                                                              tmp_path: Path) -> None:
    cfg = load.config(tmp_path)
    before = load.transactions()
    load.start_load(120)
    try:
        wait_until("pgbench to write", lambda: load.transactions() > before + 200,
                   timeout=60, interval=0.2)
        r = run_dcb("backup", "-q", "--config", str(cfg), timeout=300)
        during = load.transactions() - before
    finally:
        load.stop_load()
    assert r.code == 0, r.err
    set_id = r.out.strip()
    counts = _artifact(_manifest(cfg, set_id), "database")["source"]["row_counts"]  # type: ignore[index]
    assert counts["public.pgbench_accounts"] == kit.PGBENCH_SCALE * 100_000

    copy = "bench_copy"
    try:
        rr = run_dcb("restore", set_id, "--db", "bench", "--as", copy, "--yes",
                     "--no-safety-backup", "--config", str(cfg), timeout=600)
        assert rr.code == 0, rr.out + rr.err
        inv = kit.pgbench_invariants(lambda sql: load.psql(copy, sql))
        assert inv["accounts"] == inv["tellers"] == inv["branches"] == inv["history"], inv
        assert inv["transactions"] == counts["public.pgbench_history"]
        restored = dict(line.split("|") for line in load.psql(copy, (
            "SELECT 'public.' || relname || '|' || n_live_tup FROM pg_stat_user_tables"
            )).splitlines())
        for table in counts:
            assert int(load.psql(copy, f"SELECT count(*) FROM {table}")) == counts[table], table
        assert set(restored) == set(counts)
    finally:
        load.psql("postgres", f"DROP DATABASE IF EXISTS {copy} WITH (FORCE)")
    kit.figure("write load during backup",
               f"{during} pgbench transactions during the backup; the restored database's "
               f"four balance sums equal ({inv['accounts']}), row counts = the manifest's")


def test_a_stalled_backup_disk_under_load_keeps_its_wal(load: kit.LoadStack,
                                                        tmp_path: Path) -> None:
    """The backup disk stalls (dcb frozen) while pgbench writes and checkpoints recycle WAL:
    the physical backup still completes, verifies, boots, and leaves no slot behind."""
    cfg = load.config(tmp_path)
    root = tmp_path / "backups"
    load.start_load(180)
    run = Run(tmp_path, "stalled", cfg, "-q", "--volume", load.volume)
    try:
        def growing() -> bool:
            return any(p.stat().st_size > 0 for p in root.glob("*/.volume-*.tmp"))

        wait_until("the base backup to be under way", growing, run, timeout=120)
        lsn0 = load.psql("postgres", "SELECT pg_current_wal_lsn()")
        freeze(run.pid)
        try:
            # Long enough for pgbench to write several max_wal_size worth of WAL.
            wait_until("WAL to move on by 100 MB", lambda: int(load.psql(
                "postgres", f"SELECT pg_current_wal_lsn() - '{lsn0}'::pg_lsn")) > 100 << 20,
                timeout=120, interval=0.5)
        finally:
            import os
            import signal
            os.kill(run.pid, signal.SIGCONT)
        code = run.wait(300)
    finally:
        run.kill()
        load.stop_load()
    assert code == 0, run.err
    set_id = run.out.strip()
    assert kit.dcb_sessions(load.container) == []
    v = run_dcb("verify", set_id, "--deep", "--config", str(cfg))
    assert v.code == 0, v.out + v.err
    art = _artifact(_manifest(cfg, set_id), "volume")
    with _booted(load, root / set_id / str(art["file"])) as booted:
        inv = kit.pgbench_invariants(lambda sql: load.psql("bench", sql, container=booted))
    assert inv["accounts"] == inv["tellers"] == inv["branches"] == inv["history"], inv
    kit.figure("write load during backup",
               "backup disk stalled while 100 MB of WAL went by: the base backup kept its WAL "
               "(temporary slot), verified and booted with the balance sums equal")


def test_postgres_killed_mid_dump(load: kit.LoadStack, tmp_path: Path) -> None:
    cfg = load.config(tmp_path)
    root = tmp_path / "backups"
    good = run_dcb("backup", "-q", "--db", "bench", "--config", str(cfg), timeout=300)
    assert good.code == 0, good.err
    good_id = good.out.strip()
    run = Run(tmp_path, "killed-db", cfg, "-q", "--db", "bench")
    try:
        wait_until("the dump to be written",
                   lambda: any(p.stat().st_size > 1 << 20
                               for p in root.glob("*/.db-bench.pgdump.tmp")), run,
                   timeout=120, interval=0.01)
        t0 = time.monotonic()
        load.client.containers.get(load.container).kill()
        code = run.wait(120)
        took = time.monotonic() - t0
    finally:
        run.kill()
        load.ensure_running()
    assert code == 1, run.err
    line = error_line(run.err)
    assert "bench" in line and ("pg_dump" in line or "PostgreSQL" in line), line
    assert took < 60, took
    sets = list_sets(cfg)
    failed = [k for k, v in sets.items() if v["status"] == "failed"]
    assert len(failed) == 1 and sets[good_id]["status"] == "complete", sets
    assert sorted(p.name for p in (root / failed[0]).iterdir()) == ["manifest.json"]
    assert temp_files(root) == []
    v = run_dcb("verify", good_id, "--deep", "--config", str(cfg))
    assert v.code == 0, v.out + v.err
    again = run_dcb("backup", "-q", "--db", "bench", "--config", str(cfg), timeout=300)
    assert again.code == 0, again.err
    kit.figure("PostgreSQL killed mid-dump", f"failed in {took:.1f}s with: {line}")
