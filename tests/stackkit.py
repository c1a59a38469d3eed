"""A disposable copy of the Dart Cloud stack on the real Docker engine, for integration tests.

Everything carries unique names (``dcbt<hex>-...``) and the label ``dcb.test=1``; the session
fixture tears it down even when tests fail, and sweeps leftovers of killed earlier runs.
Images are local builds (``tests/images/build.sh``): no registry is reachable here.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PG_IMAGE = os.environ.get("DCB_TEST_PG_IMAGE", "dcb-test-postgres:15")
BUSYBOX_IMAGE = os.environ.get("DCB_TEST_BUSYBOX_IMAGE", "dcb-test-busybox:1")
# The owning pytest process is recorded so a sweep removes only what dead runs left behind
# (two test sessions on one engine must not tear down each other's stacks).
LABEL = {"dcb.test": "1", "dcb.test.pid": str(os.getpid())}
DATABASES = ("dart_cloud", "functions_db")

# The functions_data volume's tree: (path, kind, content-or-target, mode, uid, gid).
# Varied sizes, nested dirs, a symlink, an empty dir, odd names with spaces and unicode.
FUNCTIONS_TREE: list[tuple[str, str, bytes | str, int, int, int]] = [
    ("functions", "dir", b"", 0o755, 1000, 1000),
    ("functions/hello", "dir", b"", 0o755, 1000, 1000),
    ("functions/hello/main.dart", "file", b"void main() => print('hello');\n", 0o644, 1000, 1000),
    ("functions/hello/pubspec.yaml", "file", b"name: hello\n", 0o640, 1000, 1000),
    ("functions/big.bin", "file", b"", 0o600, 1000, 1000),  # filled with random data below
    ("functions/empty.txt", "file", b"", 0o644, 0, 0),
    ("functions/run.sh", "file", b"#!/bin/sh\necho run\n", 0o755, 0, 0),
    ("functions/with space & quote's.txt", "file", b"odd name\n", 0o644, 1000, 1000),
    ("functions/Zoë ☃ ünïcödé.json", "file", '{"snow": "☃"}\n'.encode(), 0o644, 1000, 1000),
    ("functions/latest", "symlink", "hello", 0o777, 1000, 1000),
    ("functions/empty-dir", "dir", b"", 0o700, 1000, 1000),
    ("logs", "dir", b"", 0o750, 999, 999),
    ("logs/2024", "dir", b"", 0o750, 999, 999),
    ("logs/2024/app.log", "file", b"line\n" * 5000, 0o640, 999, 999),
]
BIG_FILE_SIZE = 3 * 1024 * 1024 + 17


def functions_tree_tar(seed: bytes) -> bytes:
    """The tar put into the functions_data volume; ``seed`` makes the big file's bytes."""
    buf = io.BytesIO()
    big = (seed * (BIG_FILE_SIZE // len(seed) + 1))[:BIG_FILE_SIZE]
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, kind, content, mode, uid, gid in FUNCTIONS_TREE:
            ti = tarfile.TarInfo(path)
            ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, 1_700_000_000
            if kind == "dir":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = str(content)
                tf.addfile(ti)
            else:
                data = big if path.endswith("big.bin") else bytes(content)  # type: ignore[arg-type]
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class TestStack:
    __test__ = False
    """Names and handles of one disposable stack."""

    prefix: str
    client: docker.DockerClient
    password: str
    postgres_container: str = ""
    backend_container: str = ""
    postgres_volume: str = ""
    functions_volume: str = ""
    created: list[tuple[str, str]] = field(default_factory=list)

    @property
    def volumes(self) -> tuple[str, str]:
        return (self.postgres_volume, self.functions_volume)

    def config_toml(self, backup_dir: Path, **extra: dict[str, Any]) -> str:
        def lst(xs: tuple[str, ...] | list[str]) -> str:
            return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

        sections: dict[str, dict[str, Any]] = {
            "stack": {
                "postgres_container": self.postgres_container,
                "postgres_user": "postgres",
                "databases": list(DATABASES),
                "volumes": list(self.volumes),
                "app_containers": [self.backend_container],
                "postgres_data_volume": self.postgres_volume,
                "stop_during_backup": [self.backend_container],
            },
            "storage": {"backup_dir": str(backup_dir)},
        }
        for section, values in extra.items():
            sections.setdefault(section, {}).update(values)
        out = []
        for section, values in sections.items():
            out.append(f"[{section}]")
            for k, v in values.items():
                if isinstance(v, list | tuple):
                    out.append(f"{k} = {lst(v)}")
                elif isinstance(v, bool):
                    out.append(f"{k} = {'true' if v else 'false'}")
                elif isinstance(v, int | float):
                    out.append(f"{k} = {v}")
                else:
                    out.append(f'{k} = "{v}"')
            out.append("")
        return "\n".join(out)

    def write_config(self, directory: Path, **extra: dict[str, Any]) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "dcb.toml"
        path.write_text(self.config_toml(directory / "backups", **extra))
        return path

    # -- helpers for assertions -----------------------------------------------------------
    def psql(self, db: str, sql: str, *, check: bool = True) -> str:
        """Run SQL through ``docker exec psql`` (tuples only, unaligned) and return stdout."""
        r = subprocess.run(
            ["docker", "exec", "-i", self.postgres_container, "psql", "-U", "postgres", "-d", db,
             "-v", "ON_ERROR_STOP=1", "-X", "-q", "-t", "-A", "-F", "|"],
            input=sql, capture_output=True, text=True, timeout=120,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"psql failed: {r.stderr}")
        return r.stdout

    def table_digest(self, db: str) -> dict[str, tuple[int, str]]:
        """Per table: (row count, md5 of all rows in a stable order)."""
        tables = self.psql(db, "SELECT tablename FROM pg_tables WHERE schemaname='public' "
                               "ORDER BY 1").split()
        out: dict[str, tuple[int, str]] = {}
        for t in tables:
            row = self.psql(db, f'SELECT count(*), coalesce(md5(string_agg(x::text, \'\' '
                                f'ORDER BY x::text)), \'\') FROM "{t}" x').strip()
            count, digest = row.split("|")
            out[t] = (int(count), digest)
        return out

    def volume_listing(self, volume: str) -> dict[str, tuple[str, int, int, int, str]]:
        """``path -> (type, mode, uid, gid, sha256-or-linktarget)`` read in a helper container."""
        script = (
            "cd /v && find . -mindepth 1 | sort | while IFS= read -r f; do "
            "if [ -L \"$f\" ]; then t=l; c=$(readlink \"$f\"); "
            "elif [ -d \"$f\" ]; then t=d; c=-; "
            "else t=f; c=$(sha256sum \"$f\" | cut -d' ' -f1); fi; "
            "printf '%s\\t%s\\t%s\\t%s\\n' \"$f\" \"$t\" \"$(stat -c '%a %u %g' \"$f\")\" \"$c\"; "
            "done"
        )
        out = self.client.containers.run(
            BUSYBOX_IMAGE, ["sh", "-c", script], remove=True, network_mode="none",
            volumes={volume: {"bind": "/v", "mode": "ro"}}, labels=LABEL,
        ).decode()
        listing: dict[str, tuple[str, int, int, int, str]] = {}
        for line in out.splitlines():
            path, typ, meta, content = line.split("\t")
            mode, uid, gid = meta.split()
            listing[path[2:]] = (typ, int(mode, 8), int(uid), int(gid), content)
        return listing


def ensure_images() -> None:
    """Build the local test images once; cached by tag."""
    subprocess.run(["bash", str(HERE / "images" / "build.sh")], check=True,
                   env={**os.environ, "PYTHON": sys.executable})


def _owner_alive(labels: dict[str, str] | None) -> bool:
    pid = (labels or {}).get("dcb.test.pid", "")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(client: docker.DockerClient) -> None:
    """Remove containers and volumes left by earlier, killed test runs."""
    for c in client.containers.list(all=True, filters={"label": "dcb.test=1"}):
        if not _owner_alive(c.labels):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True, v=True)
    for v in client.volumes.list(filters={"label": "dcb.test=1"}):
        if not _owner_alive(v.attrs.get("Labels")):
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)
    # Undo volumes a killed test session's restores left: the volume they belong to is gone.
    for v in client.volumes.list(filters={"label": "dcb.undo"}):
        of = (v.attrs.get("Labels") or {}).get("dcb.undo.of", "")
        if v.name.startswith("dcbt") and of:
            try:
                client.volumes.get(of)
            except docker.errors.NotFound:
                with contextlib.suppress(docker.errors.APIError):
                    v.remove(force=True)


def wait_for_postgres(client: docker.DockerClient, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = client.containers.get(name)
        if c.status != "running":
            raise RuntimeError(f"{name} exited: {c.logs().decode()[-2000:]}")
        # The entrypoint's first-run server (initdb, POSTGRES_DB) listens on no address and
        # is stopped again at once: only the final server counts, or what a test creates next
        # may meet "the database system is shutting down".
        r = c.exec_run(["psql", "-U", "postgres", "-Atc", "show listen_addresses"])
        if r.exit_code == 0 and r.output.strip():
            return
        time.sleep(0.3)
    raise TimeoutError(f"PostgreSQL in {name} not ready after {timeout}s")


def create_stack(client: docker.DockerClient) -> TestStack:
    prefix = "dcbt" + secrets.token_hex(3)
    st = TestStack(prefix=prefix, client=client, password=secrets.token_urlsafe(16))
    st.postgres_volume = f"{prefix}_postgres_data"
    st.functions_volume = f"{prefix}_functions_data"
    st.postgres_container = f"{prefix}-postgres"
    st.backend_container = f"{prefix}-backend"
    for v in st.volumes:
        client.volumes.create(v, labels=LABEL)
        st.created.append(("volume", v))
    client.containers.run(
        PG_IMAGE, name=st.postgres_container, detach=True, network_mode="none", labels=LABEL,
        environment={"POSTGRES_PASSWORD": st.password},
        volumes={st.postgres_volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        stop_signal="SIGINT",
        healthcheck={"test": ["CMD", "pg_isready", "-U", "postgres"],
                     "interval": 1_000_000_000, "timeout": 3_000_000_000, "retries": 30},
    )
    st.created.append(("container", st.postgres_container))
    backend = start_backend(st)
    st.created.append(("container", st.backend_container))
    backend.put_archive("/data", functions_tree_tar(prefix.encode()))
    wait_for_postgres(client, st.postgres_container)
    for db in DATABASES:
        st.psql("postgres", f"CREATE DATABASE {db};")
        st.psql(db, (HERE / "data" / f"{db}.sql").read_text())
    return st


def release_undo_points(st: TestStack) -> None:
    """Drop what restores of this stack kept for undo (undo/discarded databases, undo volumes),
    directly, so one test's undo points never show up in the next test."""
    with contextlib.suppress(AssertionError, docker.errors.APIError):
        names = st.psql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE "
                                    "'%\\_\\_dcb\\_%'").split()
        for n in names:
            st.psql("postgres", f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
    for v in st.client.volumes.list(filters={"label": "dcb.undo"}):
        if v.name.startswith(st.prefix):
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)


def functions_state(st: TestStack) -> dict[str, Any]:
    """What a restore of functions_db and the functions volume must bring back exactly."""
    return {"functions_db": st.table_digest("functions_db"),
            "functions_data": st.volume_listing(st.functions_volume)}


@contextlib.contextmanager
def changed_after_backup(st: TestStack, directory: Path, *, keep_rows: int, new_file: str
                         ) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """A set of functions_db and the functions volume, then both changed (rows above
    ``keep_rows`` deleted, ``new_file`` added, a file removed): yields the config, the set id
    and the changed state. Afterwards every container runs again and the set is restored
    without an undo point, so the shared stack is as the next tests expect it."""
    from tests.conftest import run_dcb  # conftest imports this module

    cfg = st.write_config(directory)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--volume", st.functions_volume,
                "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    st.psql("functions_db", f"DELETE FROM invocations WHERE id > {keep_rows}")
    backend = st.client.containers.get(st.backend_container)
    assert backend.exec_run(["sh", "-c", f"echo changed > /data/functions/{new_file} && "
                                         "rm -rf /data/functions/hello"]).exit_code == 0
    try:
        yield cfg, set_id, functions_state(st)
    finally:
        release_undo_points(st)
        for name in (st.postgres_container, st.backend_container):
            c = st.client.containers.get(name)
            if c.status != "running":
                c.start()
        r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
        assert r.code == 0, r.err + r.out
        release_undo_points(st)


def start_backend(st: TestStack) -> Any:
    """The app container: busybox sleeping with the functions volume at /data (created again
    by tests that remove it, as ``docker compose down -v`` would)."""
    return st.client.containers.run(
        BUSYBOX_IMAGE, ["sleep", "2147483647"], name=st.backend_container, detach=True,
        network_mode="none", labels=LABEL, init=True,
        volumes={st.functions_volume: {"bind": "/data", "mode": "rw"}},
    )


def destroy_stack(st: TestStack) -> None:
    release_undo_points(st)
    for kind, name in reversed(st.created):
        try:
            if kind == "container":
                st.client.containers.get(name).remove(force=True, v=True)
            else:
                st.client.volumes.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
