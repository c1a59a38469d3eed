"""PostgreSQL's own data volume on restore and drill: found from the container's mounts and
the artifact's method (``pg_basebackup``), never from a configured name alone.

Compose prefixes volume names, so with ``postgres_data_volume`` at its default the old restore
took the cluster's data volume for an app volume and moved its directory away under the
running server. Here the key is left out: the restore must still stop PostgreSQL, replace its
data directory and start it again. A second cluster keeps ``PGDATA`` in a subdirectory of its
volume (``PGDATA=/var/lib/postgresql/data/pgdata``, as many compose files do): only that
subdirectory is replaced, the undo puts it back, and a drill boots from it.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest

from tests.conftest import run_dcb
from tests.stackkit import LABEL, PG_IMAGE, TestStack, release_undo_points, wait_for_postgres

MOUNT = "/var/lib/postgresql/data"


def _without_data_volume_key(path: Path) -> Path:
    path.write_text(re.sub(r"(?m)^postgres_data_volume = .*\n", "", path.read_text()))
    return path


def _wait_stopped(c: docker.models.containers.Container, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c.reload()
        if c.status != "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"{c.name} still running")


def test_data_volume_with_a_compose_prefix_and_the_key_at_its_default(
        stack: TestStack, tmp_path: Path) -> None:
    assert stack.postgres_volume != "postgres_data"
    cfg = _without_data_volume_key(stack.write_config(tmp_path))
    r = run_dcb("backup", "-q", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    before = stack.table_digest("functions_db")
    stack.psql("functions_db", "DELETE FROM functions")  # the damage the restore undoes

    r = run_dcb("restore", set_id, "--volume", stack.postgres_volume, "--dry-run", "--json",
                "--config", str(cfg))
    assert r.code == 0, r.err
    plan = json.loads(r.out)["plan"]
    assert plan["stops_postgres"] is True
    assert plan["postgres_data_volume"] == stack.postgres_volume
    assert plan["volume_targets"] == {stack.postgres_volume: stack.postgres_volume}

    try:
        r = run_dcb("restore", set_id, "--volume", stack.postgres_volume, "--yes", "--json",
                    "--config", str(cfg), timeout=900)
        assert r.code == 0, r.err + r.out
        report = json.loads(r.out)["report"]
        titles = [s["title"] for s in report["steps"]]
        assert f"stop {stack.postgres_container}" in titles
        assert stack.client.containers.get(stack.postgres_container).status == "running"
        assert stack.table_digest("functions_db") == before
    finally:
        release_undo_points(stack)


@dataclass
class SubdirCluster:
    container: str
    volume: str
    mountpoint: Path
    config: Path


@pytest.fixture
def subdir_cluster(stack: TestStack, tmp_path: Path) -> Iterator[SubdirCluster]:
    """A PostgreSQL container whose data directory is ``pgdata`` below its volume's root."""
    name = f"{stack.prefix}-sub{secrets.token_hex(2)}"
    volume = f"{name}_pgdata"
    client = stack.client
    v = client.volumes.create(volume, labels=LABEL)
    try:
        client.containers.run(
            PG_IMAGE, name=name, detach=True, network_mode="none", labels=LABEL,
            environment={"POSTGRES_PASSWORD": "x", "PGDATA": f"{MOUNT}/pgdata"},
            volumes={volume: {"bind": MOUNT, "mode": "rw"}}, stop_signal="SIGINT")
        wait_for_postgres(client, name)
        c = client.containers.get(name)
        for sql in ("CREATE DATABASE subdb",):
            assert c.exec_run(["psql", "-U", "postgres", "-c", sql]).exit_code == 0
        assert c.exec_run(["psql", "-U", "postgres", "-d", "subdb", "-c",
                           "CREATE TABLE t AS SELECT g AS n FROM generate_series(1, 500) g"]
                          ).exit_code == 0
        cfg = stack.write_config(tmp_path, stack={
            "postgres_container": name, "databases": ["subdb"], "volumes": [volume],
            "app_containers": [], "stop_during_backup": []})
        yield SubdirCluster(name, volume, Path(v.attrs["Mountpoint"]),
                            _without_data_volume_key(cfg))
    finally:
        for c in client.containers.list(all=True, filters={"name": name}):
            c.remove(force=True, v=True)
        for vol in client.volumes.list(filters={"label": "dcb.undo"}):
            if vol.name.startswith(volume):
                vol.remove(force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(volume).remove(force=True)


def _rows(stack: TestStack, container: str) -> str:
    r = stack.client.containers.get(container).exec_run(
        ["psql", "-U", "postgres", "-d", "subdb", "-Atc", "SELECT count(*), sum(n) FROM t"])
    assert r.exit_code == 0, r.output
    return str(r.output.decode().strip())


def test_pgdata_below_the_volume_root_is_restored_there(stack: TestStack,
                                                        subdir_cluster: SubdirCluster) -> None:
    sc = subdir_cluster
    r = run_dcb("backup", "--json", "--config", str(sc.config))
    assert r.code == 0, r.err
    made = json.loads(r.out)
    art = next(a for a in made["artifacts"] if a["kind"] == "volume")
    assert art["source"]["method"] == "pg_basebackup"
    assert art["source"]["data_subdir"] == "pgdata"
    set_id = made["id"]
    good = _rows(stack, sc.container)

    # A drill clones the container (PGDATA below the mount) and boots from the restored copy.
    r = run_dcb("drill", set_id, "--json", "--config", str(sc.config), timeout=900)
    assert r.code == 0, r.err + r.out
    assert json.loads(r.out)["ok"] is True

    # The cluster is damaged so that it cannot start; beside it, in the volume's root, a file
    # that is not PostgreSQL's.
    c = stack.client.containers.get(sc.container)
    c.stop()
    (sc.mountpoint / "pgdata" / "global" / "pg_control").unlink()
    (sc.mountpoint / "beside.txt").write_text("not the cluster's")
    c.start()
    _wait_stopped(c)

    r = run_dcb("restore", set_id, "--yes", "--json", "--config", str(sc.config), timeout=900)
    assert r.code == 0, r.err + r.out
    out = json.loads(r.out)
    assert out["plan"]["stops_postgres"] is True and out["report"]["ok"] is True
    rid = out["report"]["restore_id"]
    assert stack.client.containers.get(sc.container).status == "running"
    assert _rows(stack, sc.container) == good
    assert (sc.mountpoint / "pgdata" / "global" / "pg_control").is_file()
    assert (sc.mountpoint / "beside.txt").read_text() == "not the cluster's"  # not replaced

    # Undo puts the damaged data directory back (and only it).
    r = run_dcb("undo", rid, "--yes", "--config", str(sc.config), timeout=600)
    assert r.code == 0, r.err + r.out
    assert not (sc.mountpoint / "pgdata" / "global" / "pg_control").exists()
    assert (sc.mountpoint / "pgdata" / "PG_VERSION").is_file()
    assert (sc.mountpoint / "beside.txt").exists()
