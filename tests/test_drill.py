"""``dcb drill`` and legacy sets from the old bash scripts, on the real test stack."""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.conftest import run_dcb
from tests.stackkit import BUSYBOX_IMAGE, LABEL, PG_IMAGE, TestStack, wait_for_postgres


def _sandbox_leftovers(stack: TestStack) -> list[str]:
    names = [c.name for c in stack.client.containers.list(all=True,
                                                          filters={"label": "dcb.drill"})]
    names += [v.name for v in stack.client.volumes.list(filters={"label": "dcb.drill"})]
    return names


def test_drill_passes_on_a_good_set_and_leaves_nothing(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    pg_started = stack.client.containers.get(stack.postgres_container).attrs["State"]["StartedAt"]
    before = stack.table_digest("dart_cloud")
    r = run_dcb("drill", "--json", "--config", str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    result = json.loads(r.out)
    assert result["ok"] is True and result["set_id"] == set_id
    assert result["rto_seconds"] > 0
    verification = result["report"]["verification"]
    assert set(verification) == {"database dart_cloud", "database functions_db",
                                 f"volume {stack.functions_volume}",
                                 f"volume {stack.postgres_volume}"}
    assert all(diffs == [] for diffs in verification.values())
    assert _sandbox_leftovers(stack) == []
    # The live stack was not touched.
    live = stack.client.containers.get(stack.postgres_container)
    assert live.attrs["State"]["StartedAt"] == pg_started
    assert stack.table_digest("dart_cloud") == before
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    drill = [h for h in hist if h["kind"] == "drill"]
    assert len(drill) == 1 and drill[0]["ok"] is True and drill[0]["rto_seconds"] > 0


def test_drill_fails_on_a_corrupted_set(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    dump = tmp_path / "backups" / r.out.strip() / "db-functions_db.pgdump"
    data = bytearray(dump.read_bytes())
    data[100] ^= 0xFF
    dump.write_bytes(bytes(data))
    r = run_dcb("drill", "--config", str(cfg), timeout=600)
    assert r.code == 1
    assert "drill failed" in r.err and "checksum mismatch" in r.err
    assert _sandbox_leftovers(stack) == []
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    assert [h["ok"] for h in hist if h["kind"] == "drill"] == [False]


def test_legacy_set_restores(stack: TestStack, tmp_path: Path):
    """A set made the old way (pg_dump | gzip, busybox tar czf) restores like any other."""
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    (root / "volumes").mkdir(parents=True)
    ts = "20240105_020000"
    dump = subprocess.run(
        f"docker exec {stack.postgres_container} pg_dump -U postgres dart_cloud | gzip "
        f"> {root}/dart_cloud_{ts}.sql.gz", shell=True, capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    tar = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{stack.functions_volume}:/v",
         "-v", f"{root}/volumes:/out", BUSYBOX_IMAGE, "tar", "czf",
         f"/out/functions_volume_{ts}.tar.gz", "-C", "/v", "."],
        capture_output=True, text=True)
    assert tar.returncode == 0, tar.stderr
    before_db = stack.table_digest("dart_cloud")
    before_vol = stack.volume_listing(stack.functions_volume)
    stack.psql("dart_cloud", "DELETE FROM invoices WHERE no < 2000")
    stack.client.containers.get(stack.backend_container).exec_run(
        ["sh", "-c", "rm -rf /data/functions && echo x > /data/stray"])
    r = run_dcb("restore", f"legacy-{ts}", "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert "legacy set" in r.out
    # No row counts were recorded: the report says so instead of "equal".
    line = next(x for x in r.out.splitlines() if x.startswith("  verify database dart_cloud"))
    assert "not checked: row counts: none recorded (legacy set)" in line
    assert "row counts" not in line.split("not checked")[0]
    assert stack.table_digest("dart_cloud") == before_db
    assert stack.volume_listing(stack.functions_volume) == before_vol


@pytest.fixture
def bare_image_postgres(stack: TestStack, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PostgreSQL container from an image with neither ENTRYPOINT nor CMD, started with an
    explicit command carrying -c settings, an explicit user and an extra variable."""
    client = stack.client
    tag = f"dcb-test-postgres:nocmd-{secrets.token_hex(4)}"
    client.images.build(fileobj=io.BytesIO(f"FROM {PG_IMAGE}\nENTRYPOINT []\n".encode()),
                        tag=tag, rm=True, pull=False, labels=LABEL)
    name = f"{stack.prefix}-bare-pg"
    volume = f"{stack.prefix}_bare_pgdata"
    client.volumes.create(volume, labels=LABEL)
    try:
        client.containers.run(
            tag, ["/usr/local/bin/docker-entrypoint.sh", "-c", "work_mem=7MB",
                  "-c", "max_connections=37"],
            name=name, detach=True, network_mode="none", labels=LABEL, user="0:0",
            environment={"POSTGRES_PASSWORD": "live-only-secret", "DCB_TEST_MARK": "cloned"},
            volumes={volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            stop_signal="SIGINT")
        wait_for_postgres(client, name)
        client.containers.get(name).exec_run(
            ["psql", "-U", "postgres", "-c", "CREATE DATABASE drilldb"])
        client.containers.get(name).exec_run(
            ["psql", "-U", "postgres", "-d", "drilldb", "-c",
             "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g"])
        cfg = tmp_path / "dcb.toml"
        cfg.write_text(f'[stack]\npostgres_container = "{name}"\ndatabases = ["drilldb"]\n'
                       f'volumes = ["{volume}"]\npostgres_data_volume = "{volume}"\n'
                       f'app_containers = []\nstop_during_backup = []\n'
                       f'[storage]\nbackup_dir = "{tmp_path / "backups"}"\n')
        yield {"config": str(cfg), "container": name, "volume": volume, "image": tag}
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.containers.get(name).remove(force=True, v=True)
        with contextlib.suppress(docker.errors.APIError):
            client.volumes.get(volume).remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(tag, force=True)


def test_drill_clones_a_container_started_with_its_own_command(
        stack: TestStack, tmp_path: Path, bare_image_postgres: dict[str, str]):
    """The image alone cannot start ("No command specified") and would lose the -c settings:
    the sandbox is a clone of the live container (entrypoint, command, environment, user),
    still without network, ports or other mounts, and runs with the same settings."""
    env = bare_image_postgres
    r = run_dcb("backup", "-q", "--config", env["config"])
    assert r.code == 0, r.err
    live = stack.client.api.inspect_container(env["container"])
    out, err = tmp_path / "drill.out", tmp_path / "drill.err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dcb"), "drill", "--json",
                                 "--config", env["config"]], stdout=o, stderr=e)
    sandbox: dict[str, Any] | None = None
    try:
        while proc.poll() is None and sandbox is None:
            for c in stack.client.api.containers(all=True, filters={"label": "dcb.drill"}):
                if c["Names"][0].endswith("-postgres"):
                    with contextlib.suppress(docker.errors.NotFound):
                        sandbox = stack.client.api.inspect_container(c["Id"])
            time.sleep(0.05)
        code = proc.wait(600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, err.read_text() + out.read_text()
    result = json.loads(out.read_text())
    assert result["ok"] is True
    assert result["settings"]["work_mem"] == "7168"  # kB
    assert result["settings"]["max_connections"] == "37"
    assert result["settings_differ"] == []
    assert sandbox is not None, "the sandbox container was never seen"
    conf, host = sandbox["Config"], sandbox["HostConfig"]
    assert sandbox["Image"] == live["Image"]
    assert conf["Cmd"] == live["Config"]["Cmd"]
    assert conf["User"] == "0:0"
    assert "DCB_TEST_MARK=cloned" in conf["Env"]
    assert not any("live-only-secret" in v for v in conf["Env"])
    assert host["NetworkMode"] == "none" and not host.get("PortBindings")
    assert conf["Entrypoint"] == live["Config"]["Entrypoint"]
    (mount,) = sandbox["Mounts"]  # its own data volume, nothing of the live container's
    assert mount["Name"] != env["volume"] and mount["Name"].startswith("dcb-drill-")
    assert _sandbox_leftovers(stack) == []
