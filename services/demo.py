"""``dcb demo``: a sandbox copy of the Dart Cloud stack to back up, break and restore.

``up`` makes a PostgreSQL container (``dart_cloud`` and ``functions_db`` with a few MB of
sample data, services/demo_data.py), an app container mounting ``functions_data`` (sample
files, symlinks included), and the two volumes: every one labelled ``dcb.demo=<id>``,
``--network none``, named ``dcb-demo-<id>-...`` so nothing collides with a real stack. It
writes the demo's own ``dcb.toml`` (with ``[stack] demo = "<id>"``: the guard of
services/guard.py then refuses anything without the label) and takes a first backup, both in
the demo dir (the user's data dir, ``~/.local/share/dcb/demo``). ``down`` removes exactly
what ``up`` recorded, each checked for the label, then whatever else carries this demo's label
(helpers, drill sandboxes made under the guard), and the demo dir. ``break`` drops a table and
deletes function directories, as an accident would.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker.errors
import platformdirs
import requests.exceptions

from dcb.services import demo_data
from dcb.services.artifacts import atomic_write_bytes
from dcb.services.backup import BackupRun
from dcb.services.config import CONFIG_FILENAME, load_config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError, NotFound
from dcb.services.guard import DEMO_LABEL, demo_guard
from dcb.services.images import ensure_postgres_image
from dcb.services.postgres import PgGateway, first_error
from dcb.services.progress import LogLine, Reporter, null_reporter
from dcb.services.store import BackupSet, BackupStore

STATE_FILE = "demo.json"
LOCK_FILE = ".demo.lock"
ROLE_LABEL = "dcb.demo.role"
APP_MOUNT = "/app/data"
PG_DATA = "/var/lib/postgresql/data"
APP_SCRIPT = (
    "trap 'exit 0' TERM INT; "
    "echo 'dart-cloud-backend (dcb demo): serving functions from /app/data'; "
    "while :; do sleep 1; done"
)


def demo_dir() -> Path:
    """Where the demo keeps its config, state and backups: the user's data dir."""
    return Path(platformdirs.user_data_dir("dcb")) / "demo"


@dataclass
class DemoState:
    """What ``up`` made, recorded as it goes so ``down`` can undo even a half-made demo."""

    id: str
    image: str = ""
    created_at: str = ""
    containers: dict[str, str] = field(default_factory=dict)
    """role (postgres, app) -> container name."""
    container_ids: dict[str, str] = field(default_factory=dict)
    """container name -> Docker's full id, once created."""
    volumes: dict[str, str] = field(default_factory=dict)
    """role (postgres_data, functions_data) -> volume name."""
    created_volumes: list[str] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"dcb-demo-{self.id}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DemoState:
        return cls(id=str(d["id"]), image=str(d.get("image", "")),
                   created_at=str(d.get("created_at", "")),
                   containers={str(k): str(v) for k, v in d.get("containers", {}).items()},
                   container_ids={str(k): str(v)
                                  for k, v in d.get("container_ids", {}).items()},
                   volumes={str(k): str(v) for k, v in d.get("volumes", {}).items()},
                   created_volumes=[str(v) for v in d.get("created_volumes", [])])


@dataclass(frozen=True)
class UpResult:
    state: DemoState
    config_path: Path
    backup_dir: Path
    already_up: bool
    first_backup: BackupSet | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.state.id, "already_up": self.already_up,
                "config": str(self.config_path), "backup_dir": str(self.backup_dir),
                "image": self.state.image, "containers": self.state.containers,
                "volumes": self.state.volumes,
                "first_backup": self.first_backup.id if self.first_backup else None}


@dataclass(frozen=True)
class DownResult:
    id: str | None
    removed: tuple[str, ...]
    """``container NAME`` / ``volume NAME``, in the order removed."""
    skipped: tuple[str, ...] = ()
    """Recorded names now held by something without this demo's label: left alone."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "removed": list(self.removed), "skipped": list(self.skipped)}


@dataclass(frozen=True)
class BreakResult:
    id: str
    dropped: str
    rows_lost: int
    deleted_paths: tuple[str, ...]
    files_lost: int
    backup: BackupSet
    backup_taken: bool

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "dropped_table": self.dropped, "rows_lost": self.rows_lost,
                "deleted": list(self.deleted_paths), "files_lost": self.files_lost,
                "restore_from": self.backup.id, "backup_taken_first": self.backup_taken}


class Demo:
    def __init__(self, root: Path | None = None, reporter: Reporter = null_reporter) -> None:
        self.root = root or demo_dir()
        self.report = reporter

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILENAME

    @property
    def backup_dir(self) -> Path:
        return self.root / "backups"

    # -- state ------------------------------------------------------------------------------
    def state(self) -> DemoState | None:
        try:
            return DemoState.from_json(json.loads((self.root / STATE_FILE).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DcbError(f"{self.root / STATE_FILE}: unreadable demo state: {e}",
                           hint=f"remove the demo's containers by label: docker ps -a "
                                f"--filter label={DEMO_LABEL}") from None

    def _save(self, st: DemoState) -> None:
        atomic_write_bytes(self.root / STATE_FILE, json.dumps(st.to_json(), indent=2).encode())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DcbError(f"another dcb demo command is running on {self.root}",
                               hint="wait for it to finish") from None
            yield
        finally:
            os.close(fd)

    def is_up(self, gw: DockerGateway) -> bool:
        """Every recorded container running and volume present, each with our label."""
        st = self.state()
        return st is not None and self.config_path.is_file() and not self._missing(gw, st) \
            and all(self._container(gw, st, n).status == "running"
                    for n in st.containers.values())

    def _container(self, gw: DockerGateway, st: DemoState, name: str) -> Any:
        c = gw.client.containers.get(st.container_ids.get(name) or name)
        if (c.labels or {}).get(DEMO_LABEL) != st.id:
            raise DcbError(f"container {name} is not the demo's (no label {DEMO_LABEL}="
                           f"{st.id}): leaving it alone")
        return c

    def _missing(self, gw: DockerGateway, st: DemoState) -> list[str]:
        missing = []
        for name in st.containers.values():
            try:
                self._container(gw, st, name)
            except docker.errors.NotFound:
                missing.append(f"container {name}")
        for name in st.volumes.values():
            try:
                v = gw.client.volumes.get(name)
            except docker.errors.NotFound:
                missing.append(f"volume {name}")
                continue
            if (v.attrs.get("Labels") or {}).get(DEMO_LABEL) != st.id:
                missing.append(f"volume {name} (not labelled as the demo's)")
        return missing

    # -- up -----------------------------------------------------------------------------------
    def up(self, backup: bool = True) -> UpResult:
        with self._locked():
            gw = DockerGateway.connect()
            try:
                return self._up(gw, backup)
            finally:
                gw.close()

    def _up(self, gw: DockerGateway, backup: bool) -> UpResult:
        st = self.state()
        if st is not None:
            missing = self._missing(gw, st)
            if missing or not self.config_path.is_file():
                raise DcbError(f"the demo {st.id} is partly gone (missing: "
                               f"{', '.join(missing) or self.config_path})",
                               hint="dcb demo down, then dcb demo up")
            for name in st.containers.values():
                c = self._container(gw, st, name)
                if c.status != "running":
                    self.report(LogLine(f"starting {name}"))
                    c.start()
            PgGateway(gw, st.containers["postgres"], "postgres").wait_ready(60)
            return UpResult(st, self.config_path, self.backup_dir, already_up=True)

        image = ensure_postgres_image(gw, self.report)
        t0 = time.monotonic()
        st = DemoState(id=secrets.token_hex(3), image=image,
                       created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        p = st.prefix
        st.containers = {"postgres": f"{p}-postgres", "app": f"{p}-backend"}
        st.volumes = {"postgres_data": f"{p}_postgres_data",
                      "functions_data": f"{p}_functions_data"}
        for name in [*st.containers.values(), *st.volumes.values()]:
            if gw.find_container(name) is not None or _volume_exists(gw, name):
                raise DcbError(f"{name} already exists: not a name dcb demo may take")
        self._save(st)  # recorded before anything exists: down can undo a half-made demo
        self.report(LogLine(f"making the demo stack {st.prefix}"))
        labels = {DEMO_LABEL: st.id}
        try:
            for role, name in st.volumes.items():
                gw.client.volumes.create(name, labels={**labels, ROLE_LABEL: role})
                st.created_volumes.append(name)
                self._save(st)
            pg = gw.client.containers.create(
                image, name=st.containers["postgres"], detach=True, network_mode="none",
                labels={**labels, ROLE_LABEL: "postgres"},
                environment={"POSTGRES_PASSWORD": secrets.token_urlsafe(18)},
                volumes={st.volumes["postgres_data"]: {"bind": PG_DATA, "mode": "rw"}},
                stop_signal="SIGINT",
                healthcheck={"test": ["CMD", "pg_isready", "-U", "postgres"],
                             "interval": 2_000_000_000, "timeout": 3_000_000_000,
                             "retries": 30})
            st.container_ids[st.containers["postgres"]] = str(pg.id)
            self._save(st)
            app = gw.client.containers.create(
                image, name=st.containers["app"], detach=True, network_mode="none",
                entrypoint=["sh", "-c", APP_SCRIPT],
                labels={**labels, ROLE_LABEL: "app"},
                volumes={st.volumes["functions_data"]: {"bind": APP_MOUNT, "mode": "rw"}})
            st.container_ids[st.containers["app"]] = str(app.id)
            self._save(st)
            pg.start()
            app.start()
            self.report(LogLine("writing sample files into functions_data"))
            if not app.put_archive(APP_MOUNT, demo_data.functions_tree()):
                raise DcbError("could not write the sample files into the app container")
            self._load_databases(gw, st)
            self._write_config(st)
        except BaseException as e:
            # Half a demo is no use: remove what was made (it is all recorded and labelled).
            self.report(LogLine(f"demo up failed: removing what it made ({e!s:.200})", "error"))
            with contextlib.suppress(Exception):
                self._down(gw, st)
                (self.root / STATE_FILE).unlink()
            if isinstance(e, docker.errors.DockerException | requests.exceptions.RequestException):
                raise DcbError(f"demo up failed: {str(e).splitlines()[0][:200]}") from None
            raise
        self.report(LogLine(f"demo stack {st.prefix} ready in {time.monotonic() - t0:.1f}s"))
        first = None
        if backup:
            with demo_guard(st.id):
                first = BackupRun(load_config(str(self.config_path), environ={}),
                                  self.report).run()
        return UpResult(st, self.config_path, self.backup_dir, already_up=False,
                        first_backup=first)

    def _load_databases(self, gw: DockerGateway, st: DemoState) -> None:
        pg = PgGateway(gw, st.containers["postgres"], "postgres")
        self.report(LogLine("waiting for PostgreSQL"))
        pg.wait_ready(90)
        for db, sql in demo_data.DATABASES.items():
            self.report(LogLine(f"loading sample data into {db}"))
            pg.query(f"CREATE DATABASE {db}")
            _psql(pg, db, sql)

    def _write_config(self, st: DemoState) -> None:
        text = f"""\
# The dcb demo's configuration, written by `dcb demo up` ({st.created_at}).
# It acts on the demo stack only: `demo` below makes dcb refuse every container and volume
# without the label {DEMO_LABEL}={st.id}. `dcb demo down` removes the stack and this directory.

[stack]
demo = "{st.id}"
postgres_container = "{st.containers['postgres']}"
postgres_user = "postgres"
databases = ["dart_cloud", "functions_db"]
volumes = ["{st.volumes['postgres_data']}", "{st.volumes['functions_data']}"]
postgres_data_volume = "{st.volumes['postgres_data']}"
app_containers = ["{st.containers['app']}"]
stop_during_backup = ["{st.containers['app']}"]

[storage]
backup_dir = "backups"
"""
        atomic_write_bytes(self.config_path, text.encode(), mode=0o600)

    # -- break ----------------------------------------------------------------------------------
    def break_stack(self) -> BreakResult:
        """Drop ``dart_cloud.deployments`` and delete two functions' directories. Takes a
        backup first when the demo has no complete one, so there is something to restore."""
        with self._locked():
            st = self.state()
            if st is None:
                raise NotFound(f"no demo in {self.root}", hint="dcb demo up")
            cfg = load_config(str(self.config_path), environ={})
            with demo_guard(st.id):  # every Docker call below is checked for the label
                gw = DockerGateway.connect()
                try:
                    return self._break(gw, st, cfg)
                finally:
                    gw.close()

    def _break(self, gw: DockerGateway, st: DemoState, cfg: Any) -> BreakResult:
        good = [s for s in BackupStore.for_config(cfg).list_sets() if s.status == "complete"]
        taken = not good
        if taken:
            self.report(LogLine("no backup of the demo yet: taking one first, so the accident "
                                "can be undone"))
            good = [BackupRun(cfg, self.report).run()]
        db, table = demo_data.BROKEN_TABLE
        pg = PgGateway(gw, st.containers["postgres"], "postgres")
        rows = int(pg.query(f"SELECT count(*) FROM {table}", db=db).strip() or 0)
        pg.query(f"DROP TABLE {table} CASCADE", db=db)
        self.report(LogLine(f"dropped table {db}.{table} ({rows:,} rows)", "warning"))
        paths = tuple(f"{APP_MOUNT}/functions/{f}" for f in demo_data.BROKEN_FUNCTIONS)
        app = gw.client.containers.get(st.containers["app"])
        count = app.exec_run(["sh", "-c", 'find "$@" -type f | wc -l', "sh", *paths])
        out = count.output if isinstance(count.output, bytes) else b""
        files = int(out.decode().strip() or 0) if count.exit_code == 0 else 0
        r = app.exec_run(["rm", "-rf", "--", *paths])
        if r.exit_code != 0:
            raise DcbError(f"rm in {app.name} failed: {r.output!r:.200}")
        self.report(LogLine(f"deleted {', '.join(paths)} ({files} files)", "warning"))
        return BreakResult(st.id, f"{db}.{table}", rows, paths, files, good[0], taken)

    # -- down -----------------------------------------------------------------------------------
    def down(self) -> DownResult:
        with self._locked():
            st = self.state()
            gw = DockerGateway.connect()
            try:
                result = self._down(gw, st)
            finally:
                gw.close()
            for entry in self.root.iterdir():
                if entry.name != LOCK_FILE:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        with contextlib.suppress(OSError):
            (self.root / LOCK_FILE).unlink()
            self.root.rmdir()
        return result

    def _down(self, gw: DockerGateway, st: DemoState | None) -> DownResult:
        if st is None:
            return DownResult(None, ())
        removed: list[str] = []
        skipped: list[str] = []
        client = gw.client
        # The recorded containers first (each must carry our label), then anything else made
        # under this demo's guard (helpers, drill sandboxes): by label, never by name alone.
        for name in st.containers.values():
            try:
                c = client.containers.get(st.container_ids.get(name) or name)
            except docker.errors.NotFound:
                continue
            if (c.labels or {}).get(DEMO_LABEL) != st.id:
                skipped.append(f"container {name}")
                continue
            c.remove(force=True, v=False)
            removed.append(f"container {name}")
        for c in client.containers.list(all=True, filters={"label": f"{DEMO_LABEL}={st.id}"}):
            c.remove(force=True, v=False)
            removed.append(f"container {c.name}")
        for name in st.created_volumes:
            try:
                v = client.volumes.get(name)
            except docker.errors.NotFound:
                continue
            if (v.attrs.get("Labels") or {}).get(DEMO_LABEL) != st.id:
                skipped.append(f"volume {name}")
                continue
            v.remove(force=True)
            removed.append(f"volume {name}")
        for v in client.volumes.list(filters={"label": f"{DEMO_LABEL}={st.id}"}):
            v.remove(force=True)
            removed.append(f"volume {v.name}")
        for msg in removed:
            self.report(LogLine(f"removed {msg}"))
        for msg in skipped:
            self.report(LogLine(f"left {msg} alone: it is not labelled {DEMO_LABEL}={st.id}",
                                "warning"))
        return DownResult(st.id, tuple(removed), tuple(skipped))


def _volume_exists(gw: DockerGateway, name: str) -> bool:
    try:
        gw.client.volumes.get(name)
    except docker.errors.NotFound:
        return False
    return True


def _psql(pg: PgGateway, db: str, sql: str) -> None:
    with pg.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", pg.user, "-d", db],
                 stdin=True) as p:
        p.send(sql.encode())
        p.close_stdin()
        p.read_all()
        code = p.wait(300)
        if code != 0:
            raise DcbError(f"loading the sample data into {db} failed: "
                           f"{first_error(p.stderr_text) or f'exit {code}'}")
