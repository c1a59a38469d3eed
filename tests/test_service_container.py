"""The backup service container, for real: deploy/build-image.sh builds the image here (a local
Debian base, dcb from wheels built on the host, ``docker build --network none``), and a
container runs ``dcb schedule`` against the test stack with an every-minute job.

``docker compose`` is not installable here (Debian bookworm ships only the old Python
docker-compose 1.29, no compose v2 plugin), so the test reads deploy/docker-compose.backup.yml
and runs the container with exactly the settings it declares (image, command, user, group_add,
network_mode, environment, volumes, healthcheck test, stop signal, logging) through the Docker
API. Only the health check's interval is shortened, to keep the test quick.

It proves: a job fires and a complete set appears in the mounted backup dir, the container turns
healthy; while the store's lock is held from the host the job fails (it waits
``lock_wait_seconds``, then gives up) and the container turns unhealthy; ``docker stop`` ends
the daemon with exit code 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from docker.types import LogConfig

from dcb.services.ops.heartbeat import STATE_FILE
from dcb.services.store import BackupStore
from tests.stackkit import LABEL, TestStack

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "deploy" / "docker-compose.backup.yml"
SERVICE = "dcb-backup"
UID = 10001


@pytest.fixture(scope="module")
def image() -> str:
    """Built (or found cached by its source hash) by the script users run."""
    r = subprocess.run(["bash", str(REPO / "deploy" / "build-image.sh"), "dcb:test"],
                       capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m[1], m[2], m[3] or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs ${name}: {arg}")
        return arg

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, value)


def seconds(v: str) -> int:
    m = re.fullmatch(r"(\d+)([sm])", v)
    assert m, v
    return int(m[1]) * (60 if m[2] == "m" else 1)


def run_as_compose(client: docker.DockerClient, svc: dict[str, Any], name: str,
                   health_interval: int) -> Any:
    volumes = {}
    for spec in svc["volumes"]:
        host, target, *mode = spec.split(":")
        volumes[host] = {"bind": target, "mode": mode[0] if mode else "rw"}
    hc = svc["healthcheck"]
    assert svc["network_mode"] == "none"
    return client.containers.run(
        svc["image"], svc["command"], name=name, detach=True,
        network_mode=svc["network_mode"], user=svc["user"],
        group_add=[str(g) for g in svc["group_add"]],
        environment=svc["environment"], volumes=volumes, labels=LABEL,
        stop_signal=svc["stop_signal"],
        log_config=LogConfig(type=svc["logging"]["driver"], config=svc["logging"]["options"]),
        healthcheck={"test": hc["test"], "interval": health_interval * 1_000_000_000,
                     "timeout": seconds(hc["timeout"]) * 1_000_000_000,
                     "retries": 1, "start_period": 0})


def health(c: Any) -> tuple[str, str]:
    c.reload()
    h = c.attrs["State"].get("Health") or {}
    log = h.get("Log") or [{}]
    return h.get("Status", ""), str(log[-1].get("Output", ""))


def wait(what: str, predicate: Any, timeout: float, c: Any) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n"
                                 + c.logs(tail=40).decode(errors="replace"))
        time.sleep(1)


@pytest.mark.timeout(1500)  # a first build on a fresh machine (base and wheels) is slow
def test_service_container_backs_up_and_reports_health(stack: TestStack, tmp_path: Path,
                                                       image: str):
    backups = tmp_path / "backups"
    backups.mkdir()
    os.chown(backups, UID, UID)  # the container's non-root user writes the store
    cfg = stack.write_config(tmp_path / "etc", schedule={"heartbeat_seconds": 5,
                                                         "lock_wait_seconds": 3})
    cfg.write_text(cfg.read_text() + '\n[schedule.minutely]\nrun = "backup"\n'
                   'cron = "* * * * *"\n')
    cfg.chmod(0o644)
    # A daemon ran here before and last handled the job two minutes ago: the new container
    # catches up that missed run at once (catch_up), so the first set needs no wait for the
    # next minute; the failing run later is a regular every-minute fire.
    ago = (datetime.now(UTC) - timedelta(minutes=2)).isoformat(timespec="seconds")
    (backups / STATE_FILE).write_text(json.dumps({
        "pid": 1, "host": "old", "started_at": ago, "updated_at": ago, "tz": "UTC",
        "stopped": True, "jobs": {"minutely": {"name": "minutely", "run": "backup",
                                               "cron": "* * * * *", "last_due": ago}}}))
    env = {"DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
           "DCB_BACKUP_DIR": str(backups), "DCB_CONFIG_FILE": str(cfg), "DCB_IMAGE": image,
           "DCB_NOTIFY_HOST": "dcb-test-host"}
    svc = interpolate(yaml.safe_load(COMPOSE.read_text())["services"][SERVICE], env)
    assert svc["user"] == str(UID) and svc["command"] == ["schedule"]
    c = run_as_compose(stack.client, svc, f"{stack.prefix}-dcb-backup", health_interval=3)
    lock_fd = -1
    try:
        store = BackupStore(backups)
        wait("a complete set from the job",
             lambda: any(s.status == "complete" for s in store.list_sets()), 150, c)
        wait("healthy", lambda: health(c)[0] == "healthy", 60, c)
        assert health(c)[1].startswith("DCB OK - newest backup")

        # Another run holds the store's lock: the next job waits 3 s, then fails.
        lock_fd = os.open(backups / ".lock", os.O_RDWR)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        wait("unhealthy after a failed job", lambda: health(c)[0] == "unhealthy", 150, c)
        _status, output = health(c)
        assert "DCB WARNING - 1 failure of job minutely" in output
        assert "locked by another run" in output
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        c.stop(timeout=120)
        code = c.wait(timeout=30)["StatusCode"]
        logs = c.logs().decode(errors="replace")
        c.remove(force=True)
    assert code == 0, logs[-2000:]
    lines = logs.splitlines()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ dcb schedule started", lines[0])
    assert any("job minutely: missed its run" in x for x in lines)
    assert any("job minutely: ok" in x for x in lines)
    (failed,) = [x for x in lines if "job minutely: FAILED" in x][:1]
    assert "locked by another run" in failed
    started = [x for x in lines if "job minutely: started backup" in x]
    assert any(re.search(r"\(due \S+T\d\d:\d\d:00\+00:00\)$", x) for x in started[1:])
    assert lines[-1].endswith("dcb schedule stopped")
    st = (backups / "schedule-state.json").stat()
    assert st.st_uid == UID  # written by the non-root user
