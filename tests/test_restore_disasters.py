"""The moments a restore exists for, on the real stack: a dropped database, a lost volume (and
its app container), PostgreSQL stopped, damaged so it cannot start, or missing altogether.

The command sequences are the README's disaster runbook, read from README.md, so the runbook
cannot drift from what works. Every test leaves the shared stack running as it found it.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from tests.conftest import Result, run_dcb
from tests.stackkit import (
    BUSYBOX_IMAGE,
    LABEL,
    REPO,
    TestStack,
    release_undo_points,
    start_backend,
    wait_for_postgres,
)


def runbook(name: str) -> list[str]:
    """The ``dcb`` lines of one runbook block of README.md (comments stripped)."""
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- runbook: {re.escape(name)} -->\s*```sh\n(.*?)```", text, re.S)
    assert m, f"README.md has no runbook block {name!r}"
    lines = [line.split("#", 1)[0].strip() for line in m[1].splitlines()]
    return [line for line in lines if line.startswith("dcb ")]


def run_runbook(name: str, stack: TestStack, cfg: Path, set_id: str) -> list[Result]:
    results = []
    for line in runbook(name):
        args = line.split()[1:]
        args = [set_id if a == "SET_ID" else stack.functions_volume if a == "functions_data"
                else a for a in args]
        r = run_dcb(*args, "--config", str(cfg), timeout=900)
        # `dcb status` reports what is missing with exit 4; everything else must succeed.
        allowed = (0, 4) if args[0] == "status" else (0,)
        assert r.code in allowed, f"{line}: exit {r.code}\n{r.err}\n{r.out}"
        assert "Traceback" not in r.err, r.err
        results.append(r)
    return results


def backup(stack: TestStack, directory: Path, *args: str) -> tuple[Path, str]:
    cfg = stack.write_config(directory)
    r = run_dcb("backup", "--config", str(cfg), "-q", *args)
    assert r.code == 0, r.err
    return cfg, r.out.strip()


def undo_points(cfg: Path) -> list[dict[str, object]]:
    r = run_dcb("undo", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    points: list[dict[str, object]] = json.loads(r.out)
    return points


def ensure_up(stack: TestStack) -> None:
    for name in (stack.postgres_container, stack.backend_container):
        with contextlib.suppress(docker.errors.APIError):
            c = stack.client.containers.get(name)
            if c.status != "running":
                c.start()
    wait_for_postgres(stack.client, stack.postgres_container)


@pytest.fixture
def disaster(stack: TestStack) -> Iterator[TestStack]:
    """Whatever a test breaks, the stack's containers end up running and its undo points go."""
    try:
        yield stack
    finally:
        ensure_up(stack)
        release_undo_points(stack)


def test_dropped_database(disaster: TestStack, tmp_path: Path):
    stack = disaster
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db")
    before = stack.table_digest("functions_db")
    stack.psql("postgres", "DROP DATABASE functions_db WITH (FORCE)")
    listed, dry, restored = run_runbook("database-dropped", stack, cfg, set_id)
    assert set_id in listed.out
    assert "database functions_db: does not exist now" in dry.out
    assert "FAILED" not in restored.out and "verify database functions_db: equal" in restored.out
    assert stack.table_digest("functions_db") == before
    # The undo point knows the database did not exist: undoing removes it again.
    (point,) = undo_points(cfg)
    (db,) = point["databases"]  # type: ignore[misc]
    assert db["name"] == "functions_db" and db["existed"] is False
    rid = str(point["restore_id"])
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert u.code == 0, u.err
    assert "functions_db" not in stack.psql("postgres", "SELECT datname FROM pg_database").split()
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert stack.table_digest("functions_db") == before


def test_lost_volume_and_app_container(disaster: TestStack, tmp_path: Path):
    """``docker compose down -v``: the app container and its volume are gone."""
    stack = disaster
    cfg, set_id = backup(stack, tmp_path, "--volume", stack.functions_volume)
    before = stack.volume_listing(stack.functions_volume)
    stack.client.containers.get(stack.backend_container).remove(force=True)
    stack.client.volumes.get(stack.functions_volume).remove(force=True)
    try:
        dry, restored = run_runbook("volume-lost", stack, cfg, set_id)
        assert f"volume {stack.functions_volume}: does not exist now" in dry.out
        missing = f"app container {stack.backend_container} does not exist: nothing to stop " \
                  "or start"
        assert missing in dry.out and missing in restored.out
        assert f"verify volume {stack.functions_volume}: equal" in restored.out
        assert stack.volume_listing(stack.functions_volume) == before
        (point,) = undo_points(cfg)
        assert point["volumes"][0]["existed"] is False  # type: ignore[index]
    finally:
        try:
            stack.client.containers.get(stack.backend_container)
        except docker.errors.NotFound:
            start_backend(stack)


def test_stopped_postgres_is_started_and_waited_for(disaster: TestStack, tmp_path: Path):
    stack = disaster
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db")
    before = stack.table_digest("functions_db")
    stack.psql("functions_db", "DELETE FROM invocations WHERE id % 2 = 0")
    stack.client.containers.get(stack.postgres_container).stop()
    r = run_dcb("restore", set_id, "--db", "functions_db", "--yes", "--json", "--config",
                str(cfg))
    assert r.code == 0, r.err + r.out
    out = json.loads(r.out)
    # Validation says what it could not do with PostgreSQL down, instead of ticking it.
    check = next(c for c in out["plan"]["checks"] if c["what"] == "database functions_db")
    assert check["ok"] is None and "PostgreSQL is not running" in check["detail"]
    assert out["report"]["steps"][0]["key"] == "start-postgres"
    assert stack.client.containers.get(stack.postgres_container).status == "running"
    assert stack.table_digest("functions_db") == before


def test_postgres_that_cannot_start_comes_back_from_its_data_volume(disaster: TestStack,
                                                                    tmp_path: Path):
    stack = disaster
    cfg, set_id = backup(stack, tmp_path)
    before = {db: stack.table_digest(db) for db in ("dart_cloud", "functions_db")}
    pg = stack.client.containers.get(stack.postgres_container)
    pg.stop()
    data = Path(stack.client.volumes.get(stack.postgres_volume).attrs["Mountpoint"])
    (data / "global" / "pg_control").unlink()  # the cluster can no longer start
    pg.start()
    deadline = time.monotonic() + 30
    while pg.status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        pg.reload()
    assert pg.status != "running", "PostgreSQL started without its pg_control"
    status, dry, restored = run_runbook("postgres-down", stack, cfg, set_id)
    assert "exited" in status.out
    assert "PostgreSQL is stopped (its data volume is replaced)" in dry.out
    assert "FAILED" not in restored.out
    assert stack.client.containers.get(stack.postgres_container).status == "running"
    assert {db: stack.table_digest(db) for db in before} == before
    # The damaged data directory is kept in the undo point, not deleted.
    undo_vol = next(v for v in stack.client.volumes.list(filters={"label": "dcb.undo"})
                    if v.name.startswith(stack.postgres_volume))
    kept = Path(undo_vol.attrs["Mountpoint"]) / "replaced"
    assert (kept / "PG_VERSION").exists() and not (kept / "global" / "pg_control").exists()


def test_missing_postgres_container_is_one_clear_error(disaster: TestStack, tmp_path: Path):
    """No container, no restore of a database: exit 4 before anything changes, naming the
    compose command that creates it (from the labels of the stack's other containers)."""
    stack = disaster
    compose = tmp_path / "stack" / "docker-compose.yml"
    compose.parent.mkdir()
    compose.write_text(f"services:\n  db:\n    image: postgres:15\n"
                       f"    container_name: {stack.postgres_container}\n"
                       f"  backend:\n    image: app\n")
    probe = f"{stack.prefix}-probe"
    stack.client.containers.create(
        BUSYBOX_IMAGE, ["true"], name=probe, network_mode="none",
        labels={**LABEL, "com.docker.compose.project": stack.prefix,
                "com.docker.compose.project.working_dir": str(compose.parent),
                "com.docker.compose.project.config_files": str(compose),
                "com.docker.compose.service": "backend"})
    cfg = stack.write_config(tmp_path, stack={"app_containers": [probe]})
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    away = f"{stack.postgres_container}-away"
    pg = stack.client.containers.get(stack.postgres_container)
    pg.rename(away)
    try:
        r = run_dcb("restore", set_id, "--db", "functions_db", "--yes", "--config", str(cfg))
    finally:
        stack.client.containers.get(away).rename(stack.postgres_container)
        stack.client.containers.get(probe).remove(force=True)
    assert r.code == 4, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert lines[0].startswith("dcb: PostgreSQL container") and "does not exist" in lines[0]
    assert stack.postgres_container in lines[0] and "nothing was changed" in lines[0]
    assert lines[1] == (f"hint: create it again: docker compose --project-directory "
                        f"{compose.parent} -f {compose} -p {stack.prefix} up -d db "
                        "(restoring only volumes does not need it)")
    assert len(lines) == 2 and r.out == ""
    assert not (tmp_path / "backups" / "undo").exists()
