"""``dcb init`` against stacks labelled the way Docker Compose labels them.

Neither ``docker compose`` (the v2 plugin) nor a registry is available here (Debian bookworm
only packages the retired v1), so the test makes containers and volumes with the labels
Compose v2 puts on them (``com.docker.compose.project``, ``.service``, ``.depends_on``,
``.volume``...) and its names (``project-service-1``, ``project_volume``). Three projects: a
Dart Cloud-like one (PostgreSQL running with two databases, a backend that depends on it, a
worker found by its DATABASE_URL, stopped), one without PostgreSQL, and one whose PostgreSQL
container is stopped.
"""

from __future__ import annotations

import json
import re
import secrets
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
import pytest

from dcb.services.config import load_config
from tests.conftest import run_dcb
from tests.stackkit import BUSYBOX_IMAGE, LABEL, PG_IMAGE, wait_for_postgres

pytestmark = pytest.mark.docker

PASSWORD = "s3cret-" + secrets.token_hex(8)


@dataclass
class Projects:
    main: str
    nopg: str
    stopped: str
    made: list[tuple[str, str]] = field(default_factory=list)


def _labels(project: str, service: str, depends: str | None = None) -> dict[str, str]:
    labels = {**LABEL, "com.docker.compose.project": project,
              "com.docker.compose.service": service,
              "com.docker.compose.container-number": "1",
              "com.docker.compose.oneoff": "False",
              "com.docker.compose.version": "2.29.7",
              "com.docker.compose.project.working_dir": f"/srv/{project}",
              "com.docker.compose.project.config_files": f"/srv/{project}/compose.yaml"}
    if depends is not None:
        labels["com.docker.compose.depends_on"] = depends
    return labels


@pytest.fixture(scope="module")
def projects(docker_client: docker.DockerClient) -> Iterator[Projects]:
    tag = secrets.token_hex(3)
    p = Projects(main=f"dcbt{tag}shop", nopg=f"dcbt{tag}web", stopped=f"dcbt{tag}old")
    c = docker_client

    def volume(project: str, name: str) -> str:
        full = f"{project}_{name}"
        c.volumes.create(full, labels={**LABEL, "com.docker.compose.project": project,
                                       "com.docker.compose.volume": name,
                                       "com.docker.compose.version": "2.29.7"})
        p.made.append(("volume", full))
        return full

    def container(project: str, service: str, image: str, cmd: list[str] | None = None,
                  start: bool = True, **kw: object) -> str:
        name = f"{project}-{service}-1"
        made = c.containers.create(image, cmd, name=name, network_mode="none", detach=True,
                                   **kw)  # type: ignore[arg-type]
        p.made.append(("container", name))
        if start:
            made.start()
        return name

    try:
        pgdata, uploads, cache = (volume(p.main, n) for n in ("pgdata", "uploads", "cache"))
        volume(p.main, "unused")
        db = container(p.main, "db", PG_IMAGE, labels=_labels(p.main, "db"),
                       environment={"POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "dart_cloud"},
                       volumes={pgdata: {"bind": "/var/lib/postgresql/data", "mode": "rw"}})
        container(p.main, "backend", BUSYBOX_IMAGE, ["sleep", "2147483647"], init=True,
                  labels=_labels(p.main, "backend", "db:service_healthy:false"),
                  environment={"DB_PASSWORD": PASSWORD},
                  volumes={uploads: {"bind": "/app/uploads", "mode": "rw"}})
        # No depends_on label (Compose v1 never set one): found by its DATABASE_URL.
        worker_labels = _labels(p.main, "worker")
        container(p.main, "worker", BUSYBOX_IMAGE, ["true"], start=False,
                  labels=worker_labels,
                  environment={"DATABASE_URL": f"postgres://app:{PASSWORD}@db:5432/dart_cloud"},
                  volumes={uploads: {"bind": "/data", "mode": "ro"}})
        container(p.main, "redis", BUSYBOX_IMAGE, ["sleep", "2147483647"], init=True,
                  labels=_labels(p.main, "redis"),
                  volumes={cache: {"bind": "/data", "mode": "rw"}})
        container(p.nopg, "web", BUSYBOX_IMAGE, ["sleep", "2147483647"], init=True,
                  labels=_labels(p.nopg, "web"))
        old_data = volume(p.stopped, "pg")
        container(p.stopped, "postgres", PG_IMAGE, start=False,
                  labels=_labels(p.stopped, "postgres"),
                  environment={"POSTGRES_PASSWORD_FILE": "/run/secrets/pg",
                               "POSTGRES_DB": "legacy"},
                  volumes={old_data: {"bind": "/var/lib/postgresql/data", "mode": "rw"}})
        wait_for_postgres(c, db)
        made = c.containers.get(db).exec_run(["psql", "-U", "postgres", "-c",
                                              "CREATE DATABASE functions_db"])
        assert made.exit_code == 0, made.output
        yield p
    finally:
        for kind, name in reversed(p.made):
            try:
                if kind == "container":
                    c.containers.get(name).remove(force=True, v=True)
                else:
                    c.volumes.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass


def test_several_projects_ask_for_one(projects: Projects, tmp_path: Path):
    r = run_dcb("init", cwd=tmp_path)
    assert r.code == 2, r.err
    assert "choose one with --project NAME" in r.err
    assert projects.main in r.err and projects.nopg in r.err and projects.stopped in r.err
    assert not (tmp_path / "dcb.toml").exists()
    r = run_dcb("init", "--project", "nope" + projects.main, cwd=tmp_path)
    assert r.code == 4 and "no Compose project" in r.err


def test_a_stack_without_postgresql_is_refused(projects: Projects, tmp_path: Path):
    r = run_dcb("init", "--project", projects.nopg, cwd=tmp_path)
    assert r.code == 4, r.err
    assert "has no PostgreSQL service (services: web)" in r.err
    assert not (tmp_path / "dcb.toml").exists() and "Traceback" not in r.err


def test_init_writes_a_commented_config_without_secrets(projects: Projects, tmp_path: Path):
    p = projects.main
    r = run_dcb("init", "--project", p, cwd=tmp_path)
    assert r.code == 0, r.err
    path = tmp_path / "dcb.toml"
    text = path.read_text()
    assert r.out == text  # shown as written
    flat = re.sub(r"\n#\s+", " ", text)  # comments wrapped at 92 columns, read as prose
    assert PASSWORD not in text and PASSWORD not in r.err
    assert "POSTGRES_PASSWORD" in flat  # says where the password comes from
    assert "pg_isready: accepting connections" in flat
    data = tomllib.loads(text)["stack"]
    assert data["postgres_container"] == f"{p}-db-1"
    assert data["databases"] == ["dart_cloud", "functions_db"]  # by query, not from env
    assert data["volumes"] == [f"{p}_cache", f"{p}_pgdata", f"{p}_unused", f"{p}_uploads"]
    assert data["postgres_data_volume"] == f"{p}_pgdata"
    assert data["app_containers"] == [f"{p}-backend-1", f"{p}-redis-1", f"{p}-worker-1"]
    assert data["stop_during_backup"] == [f"{p}-backend-1", f"{p}-redis-1"]
    assert f"{p}-backend-1: depends_on db" in flat
    assert f"{p}-worker-1: DATABASE_URL points at db" in flat
    assert "worker (/data, ro)" in flat and "backend (/app/uploads, rw)" in flat
    assert f"worker ({p}-worker-1) is created" in flat  # the stopped container is listed
    assert f"volume {p}_unused belongs to the project but no container mounts it" in flat
    cfg = load_config(str(path), environ={})  # a valid configuration
    assert cfg.stack.postgres_container == f"{p}-db-1"
    assert run_dcb("status", "--config", str(path)).code == 0

    # An existing file is shown, not overwritten, without --force.
    path.write_text("# mine\n")
    r = run_dcb("init", "--project", p, cwd=tmp_path)
    assert r.code == 2 and "exists: not overwritten" in r.err and "--force" in r.err
    assert path.read_text() == "# mine\n"
    r = run_dcb("init", "--project", p, "--force", "--json", cwd=tmp_path)
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["written"] is True and path.read_text() == out["toml"]
    assert out["discovered"]["postgres"]["container"] == f"{p}-db-1"
    assert PASSWORD not in r.out


def test_a_stopped_postgresql(projects: Projects, tmp_path: Path):
    p = projects.stopped
    r = run_dcb("init", "--project", p, "--output", "-", cwd=tmp_path)
    assert r.code == 0, r.err
    assert not (tmp_path / "dcb.toml").exists()  # --output - prints only
    data = tomllib.loads(r.out)["stack"]
    assert data["postgres_container"] == f"{p}-postgres-1"
    assert data["databases"] == ["legacy"]  # from POSTGRES_DB: it cannot be asked
    flat = re.sub(r"\n#\s+", " ", r.out)
    assert "its databases could not be listed; start it" in flat
    assert "POSTGRES_PASSWORD_FILE (/run/secrets/pg" in flat
