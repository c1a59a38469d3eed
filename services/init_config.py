"""``dcb init``: a dcb.toml for a running Docker Compose project, discovered from Docker's labels.

Compose labels what it makes: each container with ``com.docker.compose.project`` and
``com.docker.compose.service`` (Compose v2 adds ``com.docker.compose.depends_on``), each named
volume with the project and ``com.docker.compose.volume``. From those and ``docker inspect``:
the PostgreSQL service (image, ``POSTGRES_*`` environment, ``pg_isready``), its databases (by
query), the named volumes and who mounts them, and the services that use the database. The
file says where each value came from; no secret is ever written into it.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import docker.errors
import requests.exceptions

from dcb.services.docker_gateway import DockerGateway, _as_unavailable
from dcb.services.errors import DcbError, NotFound, UsageError
from dcb.services.postgres import PgGateway

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
DEPENDS_ON = "com.docker.compose.depends_on"
ONEOFF = "com.docker.compose.oneoff"
VOLUME_KEY = "com.docker.compose.volume"
PG_IMAGE_RE = re.compile(r"postgres|postgis|timescale|pgvector", re.I)
PG_DATA_DEFAULT = "/var/lib/postgresql/data"
DB_HOST_KEYS = ("DB_HOST", "DATABASE_HOST", "POSTGRES_HOST", "PGHOST", "DB_HOSTNAME")
ANONYMOUS_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class VolumeMount:
    volume: str
    destination: str
    read_write: bool


@dataclass(frozen=True)
class ServiceInfo:
    service: str
    container: str
    state: str
    image: str
    env: dict[str, str] = field(repr=False)
    """The container's environment; used for discovery, never written out."""
    labels: dict[str, str] = field(repr=False)
    mounts: tuple[VolumeMount, ...] = ()
    binds: tuple[tuple[str, str], ...] = ()
    """Bind mounts: (host path, destination)."""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class VolumeUse:
    name: str
    users: tuple[str, ...]
    """``service (destination, rw|ro)`` for each container mounting it."""
    is_postgres_data: bool = False


@dataclass(frozen=True)
class Discovery:
    project: str
    services: tuple[ServiceInfo, ...]
    postgres: ServiceInfo
    postgres_user: str
    password_source: str
    ready: str
    databases: tuple[str, ...]
    databases_source: str
    volumes: tuple[VolumeUse, ...]
    postgres_data_volume: str | None
    app_containers: tuple[str, ...]
    app_reasons: dict[str, str]
    stop_during_backup: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "services": [{"service": s.service, "container": s.container, "state": s.state,
                          "image": s.image} for s in self.services],
            "postgres": {"service": self.postgres.service,
                         "container": self.postgres.container, "image": self.postgres.image,
                         "state": self.postgres.state, "user": self.postgres_user,
                         "password_source": self.password_source, "pg_isready": self.ready},
            "databases": list(self.databases), "databases_source": self.databases_source,
            "volumes": [{"name": v.name, "used_by": list(v.users),
                         "postgres_data": v.is_postgres_data} for v in self.volumes],
            "postgres_data_volume": self.postgres_data_volume,
            "app_containers": [{"container": c, "because": self.app_reasons.get(c, "")}
                               for c in self.app_containers],
            "stop_during_backup": list(self.stop_during_backup),
            "notes": list(self.notes),
        }


def list_projects(gw: DockerGateway) -> dict[str, list[Any]]:
    """Compose project -> its containers (running or not; one-off ``run`` containers left
    out)."""
    try:
        found = gw.client.containers.list(all=True, filters={"label": PROJECT})
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise _as_unavailable(e) from None
    projects: dict[str, list[Any]] = {}
    for c in found:
        labels = c.attrs.get("Config", {}).get("Labels") or {}
        if labels.get(ONEOFF, "False").lower() == "true":
            continue
        projects.setdefault(labels[PROJECT], []).append(c)
    return dict(sorted(projects.items()))


def discover(gw: DockerGateway, project: str | None = None) -> Discovery:
    projects = list_projects(gw)
    if not projects:
        raise NotFound("no Docker Compose project found: no container carries the label "
                       f"{PROJECT}",
                       hint="start your stack (docker compose up -d), then run dcb init")
    if project is None:
        if len(projects) > 1:
            raise UsageError(f"{len(projects)} Compose projects: {', '.join(projects)}; "
                             "choose one with --project NAME")
        project = next(iter(projects))
    elif project not in projects:
        raise NotFound(f"no Compose project {project!r}",
                       hint="projects: " + ", ".join(projects))
    services = tuple(sorted((_service(c) for c in projects[project]),
                            key=lambda s: (s.service, s.container)))
    return _discover(gw, project, services)


def _service(c: Any) -> ServiceInfo:
    a = c.attrs
    cfg = a.get("Config") or {}
    env = {}
    for item in cfg.get("Env") or []:
        k, _, v = item.partition("=")
        env[k] = v
    mounts, binds = [], []
    for m in a.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Name"):
            mounts.append(VolumeMount(m["Name"], m.get("Destination", ""), bool(m.get("RW"))))
        elif m.get("Type") == "bind":
            binds.append((m.get("Source", ""), m.get("Destination", "")))
    labels = cfg.get("Labels") or {}
    return ServiceInfo(service=labels.get(SERVICE, a.get("Name", "").lstrip("/")),
                       container=a.get("Name", "").lstrip("/"),
                       state=(a.get("State") or {}).get("Status", "unknown"),
                       image=cfg.get("Image", ""), env=env, labels=labels,
                       mounts=tuple(mounts), binds=tuple(binds))


def _pg_score(s: ServiceInfo) -> int:
    score = 2 if PG_IMAGE_RE.search(s.image) else 0
    score += any(k in s.env for k in ("POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB",
                                      "POSTGRES_PASSWORD_FILE", "PGDATA"))
    score += any(m.destination.startswith("/var/lib/postgresql") for m in s.mounts)
    return score


def _discover(gw: DockerGateway, project: str, services: tuple[ServiceInfo, ...]) -> Discovery:
    notes: list[str] = []
    scored = sorted(((_pg_score(s), s) for s in services), key=lambda t: -t[0])
    if not scored or scored[0][0] < 2:
        raise NotFound(f"Compose project {project!r} has no PostgreSQL service "
                       f"(services: {', '.join(s.service for s in services)})",
                       hint="dcb protects a PostgreSQL database and named volumes")
    pg = scored[0][1]
    others = [s.service for score, s in scored[1:] if score >= 2]
    if others:
        notes.append(f"other PostgreSQL-like services ({', '.join(others)}) are not configured:"
                     " dcb backs up one PostgreSQL server per configuration")
    user = pg.env.get("POSTGRES_USER") or "postgres"
    password_source = _password_source(pg)
    ready, databases, db_source = _databases(gw, pg, user, notes)

    pgdata = pg.env.get("PGDATA") or PG_DATA_DEFAULT
    pg_volume = next((m.volume for m in pg.mounts
                      if pgdata == m.destination or pgdata.startswith(m.destination + "/")), None)
    if pg_volume is None:
        bind = next((src for src, dst in pg.binds
                     if pgdata == dst or pgdata.startswith(dst + "/")), None)
        notes.append(f"PostgreSQL's data ({pgdata}) is "
                     + (f"a bind mount of {bind}" if bind else "not on a named volume")
                     + ": not archived as a volume (the databases are still dumped)")

    users: dict[str, list[str]] = {}
    for s in services:
        for m in s.mounts:
            if ANONYMOUS_RE.match(m.volume):
                continue
            users.setdefault(m.volume, []).append(
                f"{s.service} ({m.destination}, {'rw' if m.read_write else 'ro'})")
    try:
        labelled = gw.client.volumes.list(filters={"label": f"{PROJECT}={project}"})
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise _as_unavailable(e) from None
    for labelled_volume in labelled:
        users.setdefault(labelled_volume.name, [])
    volumes = tuple(VolumeUse(n, tuple(u), n == pg_volume) for n, u in sorted(users.items()))
    for v in volumes:
        if not v.users:
            notes.append(f"volume {v.name} belongs to the project but no container mounts it")

    apps: list[str] = []
    reasons: dict[str, str] = {}
    for s in services:
        if s is pg:
            continue
        why = _uses_database(s, pg)
        data = [m for m in s.mounts if m.volume in users and m.volume != pg_volume]
        if why is None and data:
            why = "mounts " + ", ".join(sorted({m.volume for m in data}))
        if why is not None:
            apps.append(s.container)
            reasons[s.container] = why
    writers = tuple(s.container for s in services if s is not pg and any(
        m.read_write and m.volume in users and m.volume != pg_volume for m in s.mounts))
    for s in services:
        if not s.running:
            notes.append(f"{s.service} ({s.container}) is {s.state}")
    return Discovery(project=project, services=services, postgres=pg, postgres_user=user,
                     password_source=password_source, ready=ready, databases=databases,
                     databases_source=db_source, volumes=volumes,
                     postgres_data_volume=pg_volume, app_containers=tuple(apps),
                     app_reasons=reasons, stop_during_backup=writers, notes=tuple(notes))


def _password_source(pg: ServiceInfo) -> str:
    if pg.env.get("POSTGRES_PASSWORD_FILE"):
        return (f"the container reads it from POSTGRES_PASSWORD_FILE "
                f"({pg.env['POSTGRES_PASSWORD_FILE']}, e.g. a Compose secret)")
    if pg.env.get("POSTGRES_HOST_AUTH_METHOD") == "trust":
        return "none: POSTGRES_HOST_AUTH_METHOD=trust"
    if "POSTGRES_PASSWORD" in pg.env:
        return ("the container's environment (POSTGRES_PASSWORD, from the compose file or its "
                ".env; the value is not copied)")
    return "not set in the container's environment"


def _databases(gw: DockerGateway, pg: ServiceInfo, user: str,
               notes: list[str]) -> tuple[str, tuple[str, ...], str]:
    """(pg_isready's answer, databases, where the list came from)."""
    env_db = pg.env.get("POSTGRES_DB") or ""
    fallback = (env_db,) if env_db and env_db != user and env_db != "postgres" else ()
    if not pg.running:
        notes.append(f"PostgreSQL ({pg.container}) is {pg.state}: its databases could not be "
                     "listed; start it and run dcb init --force again")
        return (f"not running ({pg.state})", fallback,
                "POSTGRES_DB (the container is not running)" if fallback else "none found")
    gate = PgGateway(gw, pg.container, user)
    with gate.exec(["pg_isready", "-U", user]) as p:
        ready = p.read_all().decode("utf-8", "replace").strip()
        code = p.wait(30)
    ready = ready.split(" - ", 1)[-1] if ready else f"exit {code}"
    try:
        out = gate.query("SELECT datname FROM pg_database WHERE NOT datistemplate "
                         "AND datname <> 'postgres' ORDER BY 1")
    except DcbError as e:
        notes.append(f"listing databases failed: {e.message}")
        return ready, fallback, "POSTGRES_DB (the query failed)" if fallback else "none found"
    return ready, tuple(n for n in out.splitlines() if n), "query (pg_database)"


def _uses_database(s: ServiceInfo, pg: ServiceInfo) -> str | None:
    deps = s.labels.get(DEPENDS_ON)
    if deps is not None:  # Compose v2: "service:condition:restart,..."
        names = {d.split(":", 1)[0] for d in deps.split(",") if d}
        return f"depends_on {pg.service}" if pg.service in names else None
    hosts = {pg.service, pg.container}
    for k, v in s.env.items():
        if k in DB_HOST_KEYS and v in hosts:
            return f"{k}={v}"
        m = re.search(r"postgres(?:ql)?://[^@/\s]*@([^:/\s]+)", v)
        if m and m.group(1) in hosts:
            return f"{k} points at {m.group(1)}"
    return None


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, width=92, initial_indent="# ", subsequent_indent="# ",
                         break_on_hyphens=False)


def _s(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(_s(v) for v in values) + "]"


def render_toml(d: Discovery, now: datetime | None = None) -> str:
    """The commented dcb.toml for ``d``."""
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    pg = d.postgres
    vol_w = max((len(v.name) for v in d.volumes), default=0)
    lines = [
        *_comment(f"dcb.toml for the Docker Compose project {_s(d.project)}, written by "
                  f"`dcb init` on {when} from Docker's labels (com.docker.compose.*) and "
                  "docker inspect. Check it, then run `dcb status`. Every key is explained "
                  "in dcb.example.toml."),
        "",
        "[stack]",
        *_comment(f"PostgreSQL: service {_s(pg.service)}, image {pg.image}, {pg.state}; "
                  f"pg_isready: {d.ready}"),
        f"postgres_container = {_s(pg.container)}",
        "# POSTGRES_USER of the container" + ("" if "POSTGRES_USER" in pg.env
                                              else " (not set: the default)"),
        f"postgres_user = {_s(d.postgres_user)}",
        *_comment("No password is written here. dcb runs psql inside the container over its "
                  "local socket, which the official image trusts. The server's password "
                  f"comes from {d.password_source}. If dcb needs it, export "
                  'POSTGRES_PASSWORD or set password_file = "PATH" (a file of mode 0600).'),
        f"# Databases, from {d.databases_source}:",
        f"databases = {_list(d.databases)}",
        "# Named volumes and the services that mount them:",
    ]
    for v in d.volumes:
        what = "PostgreSQL's data, taken online with pg_basebackup; " if v.is_postgres_data \
            else ""
        lines += textwrap.wrap(f"{v.name.ljust(vol_w)}  {what}"
                               f"{', '.join(v.users) or 'not mounted'}", width=92,
                               initial_indent="#   ", subsequent_indent="#     " + " " * vol_w,
                               break_on_hyphens=False)
    lines.append(f"volumes = {_list([v.name for v in d.volumes])}")
    if d.postgres_data_volume:
        lines.append(f"postgres_data_volume = {_s(d.postgres_data_volume)}")
    else:
        lines += ["# PostgreSQL's data is not on a named volume:",
                  'postgres_data_volume = ""']
    lines.append("# Stopped during a restore and started again; why each is here:")
    for c in d.app_containers:
        lines.append(f"#   {c}: {d.app_reasons[c]}")
    lines.append(f"app_containers = {_list(d.app_containers)}")
    lines += ["# Write to a backed-up volume: stopped while it is archived, then started again",
              "# (remove one to keep it running; its files may then change mid-archive).",
              f"stop_during_backup = {_list(d.stop_during_backup)}"]
    lines += ["", "[storage]", "# Relative to this file's directory.",
              'backup_dir = "./backups"']
    if d.notes:
        lines += ["", "# Notes from discovery:"] + [f"#   {n}" for n in d.notes]
    return "\n".join(lines) + "\n"
