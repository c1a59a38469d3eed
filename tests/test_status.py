"""``dcb status`` against the real test stack."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_dcb
from tests.stackkit import PG_IMAGE, TestStack


def test_status_json_reports_the_stack(stack: TestStack, stack_config: Path):
    r = run_dcb("status", "--json", "--config", str(stack_config))
    assert r.code == 0, r.err
    data = json.loads(r.out)
    by_name = {c["name"]: c for c in data["containers"]}
    pg = by_name[stack.postgres_container]
    assert pg["role"] == "postgres"
    assert pg["state"] == "running"
    assert pg["image"] == PG_IMAGE
    assert pg["health"] in ("healthy", "starting")
    assert pg["uptime_seconds"] > 0
    assert by_name[stack.backend_container]["state"] == "running"
    vols = {v["name"]: v for v in data["volumes"]}
    assert set(vols) == set(stack.volumes)
    # functions_data holds a 3 MiB file and more: docker's own accounting must see it.
    assert vols[stack.functions_volume]["size_bytes"] > 3 * 1024 * 1024
    assert vols[stack.postgres_volume]["size_bytes"] > 20 * 1024 * 1024
    assert vols[stack.functions_volume]["used_by"] == [stack.backend_container]
    disk = data["disk"]
    assert disk["total_bytes"] >= disk["free_bytes"] > 0
    assert data["backups"]["count"] == 0
    assert data["problems"] == []


def test_status_text_is_readable(stack: TestStack, stack_config: Path):
    r = run_dcb("status", "--config", str(stack_config))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    pg_line = next(line for line in lines if line.startswith(stack.postgres_container))
    assert "running" in pg_line and PG_IMAGE in pg_line
    assert any(line.startswith(stack.functions_volume) and "MiB" in line for line in lines)
    assert "no backups yet" in r.out
    assert "free of" in r.out


def test_stopped_container_shows_as_exited(stack: TestStack, tmp_path: Path):
    # A throwaway container stands in for an app that crashed; the live stack is not touched.
    c = stack.client.containers.run("dcb-test-busybox:1", ["true"], name=f"{stack.prefix}-dead",
                                    detach=True, network_mode="none", labels={"dcb.test": "1"})
    try:
        c.wait(timeout=30)
        cfg = stack.write_config(tmp_path, stack={"app_containers": [c.name]})
        r = run_dcb("status", "--json", "--config", str(cfg))
        assert r.code == 0, r.err
        dead = next(x for x in json.loads(r.out)["containers"] if x["name"] == c.name)
        assert dead["state"] == "exited"
        assert dead["uptime_seconds"] is None
    finally:
        c.remove(force=True)


def test_missing_container_and_volume_are_named(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={"app_containers": ["no-such-backend"],
                                              "volumes": [stack.functions_volume, "no_such_vol"]})
    r = run_dcb("status", "--config", str(cfg))
    assert r.code == 4
    assert "dcb: container 'no-such-backend' not found" in r.err
    assert "dcb: volume 'no_such_vol' not found" in r.err
    assert "Traceback" not in r.err
    r = run_dcb("status", "--json", "--config", str(cfg))
    assert r.code == 4
    data = json.loads(r.out)
    assert {"container 'no-such-backend' not found", "volume 'no_such_vol' not found"} <= set(
        data["problems"])


def test_docker_unreachable_is_a_clear_error(tmp_path: Path):
    for host in ("unix:///nonexistent.sock", "tcp://127.0.0.1:1"):
        r = run_dcb("status", env={"DOCKER_HOST": host}, cwd=tmp_path)
        assert r.code == 3, (host, r.err)
        assert r.err.startswith(f"dcb: Docker engine unreachable at {host}")
        assert "Traceback" not in r.err
