"""``dcb demo`` on the real engine: up, break, restore through the CLI, down; and the guard that
keeps a demo configuration off every other stack.

The demo dir is the user's data dir (platformdirs): ``XDG_DATA_HOME`` points it into the test's
tmp dir, so a demo a person runs on this machine is never touched.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker
import docker.errors
import pytest

from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError
from dcb.services.guard import DEMO_LABEL, NotDemo, demo_guard
from tests.conftest import Result, run_dcb
from tests.stackkit import TestStack

pytestmark = pytest.mark.docker


def demo(xdg: Path, *args: str) -> Result:
    return run_dcb("demo", *args, env={"XDG_DATA_HOME": str(xdg)}, timeout=900)


def psql(container: str, db: str, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", container, "psql", "-U", "postgres", "-d", db,
                           "-XAtc", sql], capture_output=True, text=True, timeout=60)


def files(container: str) -> list[str]:
    r = subprocess.run(["docker", "exec", container, "sh", "-c",
                        "cd /app/data && find . | sort"], capture_output=True, text=True,
                       timeout=60, check=True)
    return r.stdout.splitlines()


def labelled(client: docker.DockerClient, demo_id: str) -> list[str]:
    flt = {"label": f"{DEMO_LABEL}={demo_id}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=flt)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=flt)]
            + [f"network {n.name}" for n in client.networks.list(filters=flt)])


def test_demo_up_break_restore_down(docker_client: docker.DockerClient, tmp_path: Path):
    xdg = tmp_path / "xdg"
    r = demo(xdg, "up", "--json")
    assert r.code == 0, r.err
    up = json.loads(r.out)
    demo_id, pg, app = up["id"], up["containers"]["postgres"], up["containers"]["app"]
    try:
        root = xdg / "dcb" / "demo"
        assert up["config"] == str(root / "dcb.toml") and up["first_backup"]
        assert f'demo = "{demo_id}"' in (root / "dcb.toml").read_text()
        for name in (pg, app):
            c = docker_client.containers.get(name)
            assert name.startswith(f"dcb-demo-{demo_id}-") and c.status == "running"
            assert c.labels[DEMO_LABEL] == demo_id
            assert c.attrs["HostConfig"]["NetworkMode"] == "none"
        for v in up["volumes"].values():
            assert docker_client.volumes.get(v).attrs["Labels"][DEMO_LABEL] == demo_id
        # Sample data that looks like the app's, a few MB of it.
        deployments = psql(pg, "dart_cloud", "SELECT count(*) FROM deployments").stdout.strip()
        assert int(deployments) > 1000
        size = int(psql(pg, "postgres", "SELECT sum(pg_database_size(datname)) FROM "
                        "pg_database WHERE datname IN ('dart_cloud', 'functions_db')").stdout)
        assert 5 * 2**20 < size < 200 * 2**20
        assert int(psql(pg, "functions_db", "SELECT count(*) FROM invocations").stdout) > 1000
        before = files(app)
        assert "./functions/stripe-webhook/current" in before  # a symlink
        # Up again: nothing new, the same demo.
        again = demo(xdg, "up", "--json")
        assert again.code == 0 and json.loads(again.out)["already_up"] is True

        r = demo(xdg, "break", "--json")
        assert r.code == 0, r.err
        broke = json.loads(r.out)
        assert broke["dropped_table"] == "dart_cloud.deployments"
        assert broke["rows_lost"] == int(deployments) and broke["files_lost"] > 0
        gone = psql(pg, "dart_cloud", "SELECT count(*) FROM deployments")
        assert gone.returncode != 0 and "does not exist" in gone.stderr
        assert not any(f.startswith("./functions/stripe-webhook") for f in files(app))

        r = run_dcb("restore", broke["restore_from"], "--yes", "-q", "--config", up["config"],
                    timeout=900)
        assert r.code == 0, r.err + r.out
        assert psql(pg, "dart_cloud", "SELECT count(*) FROM deployments").stdout.strip() \
            == deployments
        assert files(app) == before
    finally:
        r = demo(xdg, "down", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["id"] == demo_id
    assert labelled(docker_client, demo_id) == []
    assert not (xdg / "dcb" / "demo").exists()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(pg)


def test_demo_config_refuses_a_real_stack(stack: TestStack, tmp_path: Path):
    """A demo configuration naming the test stack (no demo label) touches nothing of it."""
    cfg = stack.write_config(tmp_path, stack={"demo": "abc123"})
    r = run_dcb("backup", "--config", str(cfg))
    assert r.code == 2, r.err
    assert f"container {stack.postgres_container!r}: it is not part of demo abc123" in r.err
    assert "Traceback" not in r.err
    assert not [p for p in (tmp_path / "backups").glob("2*")]  # no set started
    r = run_dcb("status", "--config", str(cfg))
    assert r.code == 2 and "not part of demo abc123" in r.err
    assert stack.client.containers.get(stack.backend_container).status == "running"


def test_guard_checks_every_request_and_labels_what_it_creates(stack: TestStack):
    with demo_guard("abc123"):
        gw = DockerGateway.connect()
        try:
            with pytest.raises(NotDemo):
                gw.client.containers.get(stack.backend_container).stop()
            with pytest.raises(NotDemo):
                gw.client.volumes.get(stack.functions_volume)
            with pytest.raises(NotDemo, match="not part of demo"):  # mounting it in a helper
                gw.client.containers.create("dcb-test-busybox:1", ["true"], volumes={
                    stack.functions_volume: {"bind": "/v", "mode": "ro"}})
            v = gw.client.volumes.create("dcbt-guard-made-" + stack.prefix)
            try:
                assert v.attrs["Labels"][DEMO_LABEL] == "abc123"  # what it makes is the demo's
            finally:
                v.remove()
        finally:
            gw.close()
    assert stack.client.containers.get(stack.backend_container).status == "running"
    # Outside the guard the same gateway code reaches the stack as usual.
    gw = DockerGateway.connect()
    try:
        assert gw.container(stack.backend_container).running
    finally:
        gw.close()
    assert issubclass(NotDemo, DcbError) and NotDemo.exit_code == 2
