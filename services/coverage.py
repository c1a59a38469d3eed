"""What dcb protects, and what it does not: every database and every volume of the stack.

Apps add databases and volumes over time; a backup tool must say what it leaves out. The
report lists every database of the cluster (by query, templates left out) and every volume
the stack's containers mount (by the Docker API: all containers of the stack's Compose
projects where the configured containers carry Compose labels, otherwise the configured
containers themselves), each marked

* ``protected``: in the next backup set;
* ``excluded``: left out on purpose (``[stack] exclude_databases`` / ``exclude_volumes``, or
  PostgreSQL's empty maintenance database ``postgres``, or dcb's own restore scratch);
* ``unprotected``: nobody asked for it, so nothing backs it up;
* ``missing``: configured but not there (also a problem for ``dcb status``, exit 4).

Separately it names every protected volume that a running container mounts read-write while
it is archived (a container not in ``[stack] stop_during_backup``): that copy may be
inconsistent. PostgreSQL's own data volume is taken with ``pg_basebackup``, never as files,
so PostgreSQL writing it is fine.

``databases = "all"`` is resolved here too (``resolve_databases``), at each backup, so a
database created yesterday is in today's set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dcb.services.config import Config
from dcb.services.docker_gateway import COMPOSE_PROJECT_LABEL, ContainerInfo, DockerGateway
from dcb.services.errors import DcbError
from dcb.services.postgres import PgGateway, first_error

PROTECTED = "protected"
EXCLUDED = "excluded"
UNPROTECTED = "unprotected"
MISSING = "missing"

MAINTENANCE_DB = "postgres"
# A restore replays into NAME__dcb_restore and keeps the old data as NAME__dcb_old until the
# swap is done (services/restore.py): dcb's scratch, never a database of the app.
SCRATCH_SUFFIXES = ("__dcb_restore", "__dcb_old")
# What a restore replaced, kept renamed NAME__dcb_undo_<restore id> (connections refused) until
# its undo point is released (services/undo.py): dcb's own too, and `dcb status` lists it.
UNDO_DATABASE = re.compile(r"__dcb_undo_(restore-\d{8}T\d{6}Z(?:-\d+)?)$")
ANONYMOUS_VOLUME = re.compile(r"[0-9a-f]{64}")

# One line per database: name|size|user objects (counted only in the database psql is in,
# the maintenance database: whether it holds anything worth a backup).
DATABASES_SQL = r"""
SELECT d.datname || '|' || d.datallowconn || '|' || pg_database_size(d.oid) || '|' ||
       CASE WHEN d.datname = current_database() THEN (
         SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\_%')::text ELSE '' END
FROM pg_database d WHERE NOT d.datistemplate ORDER BY d.datname
"""


@dataclass(frozen=True)
class CoverageItem:
    kind: str
    """``database`` or ``volume``."""
    name: str
    state: str
    """``protected``, ``excluded``, ``unprotected`` or ``missing``."""
    why: str
    """The reason, in words a user can act on."""
    size_bytes: int | None = None
    used_by: tuple[str, ...] = ()
    """Volumes: the stack containers that mount it."""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "state": self.state, "why": self.why,
                "size_bytes": self.size_bytes, "used_by": list(self.used_by)}


@dataclass(frozen=True)
class Writer:
    """A running container that mounts a protected volume read-write and keeps running
    while the volume is archived: the archive may hold a half-written state."""

    volume: str
    container: str


@dataclass(frozen=True)
class Coverage:
    databases: tuple[CoverageItem, ...]
    volumes: tuple[CoverageItem, ...]
    writers: tuple[Writer, ...]
    unchecked: tuple[str, ...] = field(default=())
    """Parts that could not be inspected and why (PostgreSQL not answering)."""
    compose_projects: tuple[str, ...] = ()

    @property
    def items(self) -> tuple[CoverageItem, ...]:
        return self.databases + self.volumes

    @property
    def unprotected(self) -> tuple[CoverageItem, ...]:
        """What holds data that no backup takes: what ``dcb check`` reports as WARNING."""
        return tuple(i for i in self.items if i.state == UNPROTECTED)

    @property
    def missing(self) -> tuple[CoverageItem, ...]:
        return tuple(i for i in self.items if i.state == MISSING)

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line per kind of gap, each naming the items and the setting to change."""
        out: list[str] = []
        dbs = [i.name for i in self.unprotected if i.kind == "database"]
        vols = [i.name for i in self.unprotected if i.kind == "volume"]
        if dbs:
            out.append(f"not backed up: database{'s' if len(dbs) > 1 else ''} "
                       f"{', '.join(dbs)}: add to [stack] databases (or set databases = "
                       f"\"all\"), or to [stack] exclude_databases")
        if vols:
            out.append(f"not backed up: volume{'s' if len(vols) > 1 else ''} "
                       f"{', '.join(vols)}: add to [stack] volumes, or to [stack] "
                       "exclude_volumes")
        by_volume: dict[str, list[str]] = {}
        for w in self.writers:
            by_volume.setdefault(w.volume, []).append(w.container)
        for volume, names in by_volume.items():
            out.append(writer_warning(volume, names))
        out.extend(self.unchecked)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "databases": [i.to_json() for i in self.databases],
            "volumes": [i.to_json() for i in self.volumes],
            "unprotected": [{"kind": i.kind, "name": i.name} for i in self.unprotected],
            "may_be_inconsistent": [{"volume": w.volume, "container": w.container}
                                    for w in self.writers],
            "compose_projects": list(self.compose_projects),
            "unchecked": list(self.unchecked),
        }


def writer_warning(volume: str, containers: Iterable[str]) -> str:
    listed = list(containers)
    names = ", ".join(listed)
    verb = "keeps" if len(listed) == 1 else "keep"
    return (f"volume {volume} may be inconsistent: {names} {verb} writing it while it is "
            f"archived; add {names} to [stack] stop_during_backup")


# GNU tar's words for a file that a writer changed under it (exit 1 or 2).
CHANGED_WHILE_READ = ("file changed as we read it", "File shrank by",
                      "file removed before we read it")


def volume_tar_error(volume: str, code: int, stderr: str,
                     writers: Iterable[str] = ()) -> DcbError:
    """The error of a failed volume archive; when tar saw a file change under it, it says
    who was writing (as warned before the archive began) and what to change."""
    changed = next((line.strip() for line in stderr.splitlines()
                    if any(m in line for m in CHANGED_WHILE_READ)), None)
    if changed is None:
        why = first_error(stderr) or ("no error output: the process was killed (an engine "
                                      "restart, an out-of-memory kill, someone's docker kill)")
        return DcbError(f"archiving volume {volume} failed (exit {code}): {why}")
    names = ", ".join(writers)
    if names:
        return DcbError(f"archiving volume {volume} failed: {names} wrote to it while it was "
                        f"archived ({changed})",
                        hint=f"add {names} to [stack] stop_during_backup")
    return DcbError(f"archiving volume {volume} failed: something wrote to it while it was "
                    f"archived ({changed})",
                    hint="add the containers that write it to [stack] stop_during_backup")


# -- databases ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseFact:
    name: str
    size_bytes: int
    allows_connections: bool
    objects: int | None
    """User tables, views, sequences; counted only in the maintenance database."""


def list_databases(pg: PgGateway) -> list[DatabaseFact]:
    """Every database of the cluster but the templates (one query)."""
    facts = []
    for line in pg.query(DATABASES_SQL, timeout=30).splitlines():
        if not line:
            continue
        name, conn, size, objects = line.rsplit("|", 3)
        facts.append(DatabaseFact(name=name, size_bytes=int(size), allows_connections=conn
                                  == "true", objects=int(objects) if objects else None))
    return facts


def database_items(cfg: Config, facts: Iterable[DatabaseFact]) -> list[CoverageItem]:
    st = cfg.stack
    listed, excluded = set(st.listed_databases), set(st.exclude_databases)
    items: list[CoverageItem] = []
    seen = set()
    for f in facts:
        seen.add(f.name)
        size = f.size_bytes
        if f.name in excluded:
            items.append(CoverageItem("database", f.name, EXCLUDED,
                                      "in [stack] exclude_databases", size))
        elif f.name.endswith(SCRATCH_SUFFIXES):
            items.append(CoverageItem("database", f.name, EXCLUDED,
                                      "a restore's scratch copy (dcb's own)", size))
        elif (undo := UNDO_DATABASE.search(f.name)) is not None:
            items.append(CoverageItem("database", f.name, EXCLUDED,
                                      f"kept by the undo point of {undo.group(1)} (dcb undo "
                                      f"--release {undo.group(1)} drops it)", size))
        elif f.name in listed:
            items.append(CoverageItem("database", f.name, PROTECTED,
                                      "in [stack] databases", size))
        elif f.name == MAINTENANCE_DB and f.objects == 0:
            items.append(CoverageItem("database", f.name, EXCLUDED,
                                      "PostgreSQL's maintenance database, empty", size))
        elif not f.allows_connections:
            items.append(CoverageItem("database", f.name, UNPROTECTED,
                                      "does not accept connections (ALLOW_CONNECTIONS false): "
                                      "pg_dump cannot read it", size))
        elif st.all_databases:
            items.append(CoverageItem("database", f.name, PROTECTED,
                                      '[stack] databases = "all"', size))
        else:
            items.append(CoverageItem("database", f.name, UNPROTECTED,
                                      "not in [stack] databases", size))
    for name in st.listed_databases:
        if name not in seen:
            items.append(CoverageItem("database", name, MISSING,
                                      f"in [stack] databases, not in {st.postgres_container}"))
    return items


def resolve_databases(cfg: Config, pg: PgGateway) -> tuple[str, ...]:
    """The databases a backup of "every database" takes now: ``[stack] databases`` as
    listed, or with ``"all"`` every database the coverage report marks protected."""
    if not cfg.stack.all_databases:
        return cfg.stack.listed_databases
    return tuple(i.name for i in database_items(cfg, list_databases(pg))
                 if i.state == PROTECTED)


def _pg_gateway(cfg: Config, gw: DockerGateway) -> PgGateway:
    return PgGateway(gw, cfg.stack.postgres_container, cfg.stack.postgres_user,
                     cfg.postgres_password())


# -- volumes and writers ------------------------------------------------------------------------
def stack_containers(cfg: Config, gw: DockerGateway) -> tuple[list[ContainerInfo], list[str]]:
    """The stack's containers and its Compose projects.

    The configured containers (PostgreSQL, ``app_containers``, ``stop_during_backup``); when
    they carry Compose labels, every container of their projects too.
    """
    st = cfg.stack
    found: dict[str, ContainerInfo] = {}
    for name in dict.fromkeys((st.postgres_container, *st.app_containers,
                               *st.stop_during_backup)):
        info = gw.find_container(name)
        if info is not None:
            found[info.name] = info
    projects = sorted({c.compose_project for c in found.values() if c.compose_project})
    for p in projects:
        for c in gw.containers_with_label(f"{COMPOSE_PROJECT_LABEL}={p}"):
            found.setdefault(c.name, c)
    return sorted(found.values(), key=lambda c: c.name), projects


def volume_writers(cfg: Config, gw: DockerGateway, volume: str) -> tuple[str, ...]:
    """Running containers that mount ``volume`` read-write and are not stopped while it is
    archived. Empty for PostgreSQL's data volume (taken by pg_basebackup, not as files)."""
    if volume == cfg.stack.postgres_data_volume:
        return ()
    stop = set(cfg.stack.stop_during_backup)
    return tuple(sorted(
        c.name for c in gw.containers_using_volume(volume)
        if c.running and c.name not in stop
        and any(m.volume == volume and not m.read_only for m in c.mounts)))


def volume_items(cfg: Config, gw: DockerGateway, containers: Iterable[ContainerInfo],
                 projects: Iterable[str], sizes: Mapping[str, int]) -> list[CoverageItem]:
    st = cfg.stack
    users: dict[str, list[str]] = {}
    for c in containers:
        for m in c.mounts:
            if m.volume:
                users.setdefault(m.volume, []).append(c.name)
    for p in projects:
        for v in gw.volumes_with_label(f"{COMPOSE_PROJECT_LABEL}={p}"):
            users.setdefault(v, [])
    items: list[CoverageItem] = []
    for name in st.volumes:
        state, why = PROTECTED, "in [stack] volumes"
        if name not in users and name not in sizes and not _volume_exists(gw, name):
            state, why = MISSING, "in [stack] volumes, not in Docker"
        items.append(CoverageItem("volume", name, state, why, sizes.get(name),
                                  tuple(users.get(name, ()))))
    excluded = set(st.exclude_volumes)
    for name in sorted(set(users) - set(st.volumes)):
        used_by = tuple(users[name])
        if name in excluded:
            state, why = EXCLUDED, "in [stack] exclude_volumes"
        else:
            state, why = UNPROTECTED, "mounted by the stack, not in [stack] volumes"
            if ANONYMOUS_VOLUME.fullmatch(name):
                why = ("an anonymous volume: give it a name in the Compose file, then add it "
                       "to [stack] volumes")
        items.append(CoverageItem("volume", name, state, why, sizes.get(name), used_by))
    return items


def _volume_exists(gw: DockerGateway, name: str) -> bool:
    from dcb.services.errors import NotFound

    try:
        gw.volume(name)
    except NotFound:
        return False
    return True


# -- the report ---------------------------------------------------------------------------------
def coverage(cfg: Config, gw: DockerGateway, sizes: Mapping[str, int] | None = None) -> Coverage:
    """The coverage report; ``sizes`` (volume -> bytes, from ``gw.volume_sizes()``) when the
    caller has them already. Raises ``DockerUnavailable``; PostgreSQL not answering is not
    an error here, it is reported in ``unchecked``."""
    containers, projects = stack_containers(cfg, gw)
    volumes = volume_items(cfg, gw, containers, projects, sizes or {})
    writers = [Writer(v.name, c) for v in volumes if v.state == PROTECTED
               for c in volume_writers(cfg, gw, v.name)]
    unchecked: list[str] = []
    databases: list[CoverageItem] = []
    pgc = next((c for c in containers if c.name == cfg.stack.postgres_container), None)
    if pgc is None or not pgc.running:
        state = pgc.state if pgc else "missing"
        unchecked.append(f"databases not checked: PostgreSQL container "
                         f"{cfg.stack.postgres_container} is {state}")
    else:
        try:
            databases = database_items(cfg, list_databases(_pg_gateway(cfg, gw)))
        except DcbError as e:
            unchecked.append(f"databases not checked: {e.message}")
    return Coverage(databases=tuple(databases), volumes=tuple(volumes),
                    writers=tuple(writers), unchecked=tuple(unchecked),
                    compose_projects=tuple(projects))
