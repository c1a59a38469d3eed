"""The PostgreSQL gateway: client programs run inside the PostgreSQL container (``docker exec``).

Running ``pg_dump``/``psql`` in the server's own container means the client always matches
the server's version and needs no network. A password, when configured, travels only in the
exec's environment (``PGPASSWORD``), never in argv.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dcb.services.docker_exec import ExecProcess, StepGuard, StepTimeout
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError

PLAIN_DUMP_END = b"-- PostgreSQL database dump complete"
CLUSTER_DUMP_END = b"-- PostgreSQL database cluster dump complete"
CUSTOM_MAGIC = b"PGDMP"

# One "schema.table|count" line per ordinary or partitioned table, via psql's \gexec.
ROW_COUNTS_SQL = r"""
SELECT format('SELECT %L || ''|'' || count(*) FROM ONLY %I.%I',
              n.nspname || '.' || c.relname, n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp%'
ORDER BY 1 \gexec
"""


class DumpError(DcbError):
    """pg_dump/pg_dumpall/pg_basebackup failed or produced an incomplete stream."""


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    size_bytes: int
    allow_connections: bool
    connections: int


@dataclass(frozen=True)
class ServerInfo:
    version: str
    version_num: int

    @property
    def major(self) -> int:
        return self.version_num // 10000


class PgGateway:
    def __init__(self, gw: DockerGateway, container: str, user: str,
                 password: str | None = None) -> None:
        self.gw = gw
        self.container = container
        self.user = user
        self._env = {"PGPASSWORD": password} if password else {}
        self._major: int | None = None
        self.guard: StepGuard | None = None
        self.restricts: bool | None = None
        """Whether this container's psql has ``\\restrict`` (services/psql_guard.py)."""
        self.host: str | None = None
        """None: the server's Unix socket (the default)."""
        self._admin: PgGateway | None = None
        """For a gateway logged in as another role (:meth:`login_as`): the one it came from,
        which ends stopped clients' sessions."""

    def with_guard(self, guard: StepGuard) -> PgGateway:
        """The same gateway, every process it starts watched by ``guard`` (a step's time
        limit and cancellation)."""
        pg = copy.copy(self)
        pg.guard = guard
        return pg

    def login_as(self, user: str, password: str, host: str | None = None) -> PgGateway:
        """The same gateway, its client programs logging in as ``user`` with ``password``
        (in the exec's environment only), over TCP to ``host`` when given."""
        pg = copy.copy(self)
        pg.user = user
        pg.host = host
        pg._env = {"PGPASSWORD": password}
        pg._admin = self._admin or self
        return pg

    def login(self) -> list[str]:
        """``-U user`` (and ``-h host``) for a client program."""
        return ["-U", self.user] + (["-h", self.host] if self.host else [])

    def exec(self, cmd: list[str], *, stdin: bool = False) -> ExecProcess:
        """Run a client program. Its sessions carry a unique application_name, so when a
        ``StepGuard`` stops it, its server sessions are ended too (a backend waiting for a
        lock would otherwise stay queued, blocking the tables' writers)."""
        app = f"dcb-{secrets.token_hex(6)}"
        proc = ExecProcess(self.gw, self.container, cmd, env={**self._env, "PGAPPNAME": app},
                           stdin=stdin, on_abort=lambda: self.terminate_sessions(app))
        return self.guard.watch(proc) if self.guard is not None else proc

    def terminate_sessions(self, application_name: str) -> None:
        """End the server sessions of one stopped client (at most 30 s: cleanup only)."""
        if self._admin is not None:
            return self._admin.terminate_sessions(application_name)
        cmd = ["psql", "-X", "-q", "-A", "-t", "-U", self.user, "-d", "postgres", "-c",
               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               f"WHERE application_name = '{application_name}'"]
        guard = StepGuard(f"ending the sessions of {application_name}", 30,
                          setting="the cleanup limit")
        with guard, guard.watch(ExecProcess(self.gw, self.container, cmd, env=self._env)) as p:
            p.read_all()
            p.wait()

    def query(self, sql: str, db: str = "postgres", timeout: float = 60) -> str:
        """Run SQL with psql (errors fatal) and return its unaligned, tuples-only output."""
        with self.exec(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        *self.login(), "-d", db, "--no-password", "-c", sql]) as p:
            out = p.read_all()
            code = p.wait(timeout)
            if code != 0:
                raise DcbError(f"psql in {self.container} failed: "
                               f"{first_error(p.stderr_text) or f'exit {code}'}")
        return out.decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the server accepts a real query (``[timeouts] postgres_ready``; a
        query that hangs counts against it too)."""
        guard = StepGuard(f"waiting for PostgreSQL in {self.container}", timeout)
        pg = self.with_guard(guard)
        last = ""
        try:
            with guard:
                while guard.reason is None:
                    try:
                        if pg.query("SELECT 1").strip() == "1":
                            return
                    except StepTimeout:
                        break
                    except DcbError as e:
                        last = e.message
                        if "not running" in last or "not found" in last:
                            raise
                    time.sleep(0.5)
        except StepTimeout:
            pass
        raise DcbError(f"PostgreSQL in {self.container} not ready after {timeout:.0f}s"
                       + (f": {last}" if last else ""),
                       hint="raise [timeouts] postgres_ready if it needs longer to start")

    def server_info(self) -> ServerInfo:
        out = self.query("SELECT current_setting('server_version') || '|' || "
                         "current_setting('server_version_num')").strip()
        version, num = out.split("|")
        return ServerInfo(version=version, version_num=int(num))

    def server_major(self) -> int:
        """The server's major version, asked once per gateway."""
        if self._major is None:
            self._major = self.server_info().major
        return self._major

    def database_sizes(self) -> dict[str, int]:
        out = self.query("SELECT datname || '|' || pg_database_size(datname) FROM pg_database "
                         "WHERE NOT datistemplate")
        sizes: dict[str, int] = {}
        for line in out.splitlines():
            name, _, size = line.rpartition("|")
            sizes[name] = int(size)
        return sizes

    def row_counts(self, db: str, snapshot: str | None = None,
                   lock_wait_timeout: int = 0) -> dict[str, int]:
        """``schema.table -> rows`` for every table of ``db``; with ``snapshot``, in that
        exported snapshot (exactly what a concurrent ``pg_dump --snapshot`` sees)."""
        sql = ""
        if lock_wait_timeout:
            sql += f"SET lock_timeout = '{int(lock_wait_timeout)}s';\n"
        if snapshot:
            if not all(c.isalnum() or c == "-" for c in snapshot):
                raise DcbError(f"unexpected snapshot id {snapshot!r}")
            sql += ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
                    f"SET TRANSACTION SNAPSHOT '{snapshot}';\n")
        sql += ROW_COUNTS_SQL + ("\nCOMMIT;\n" if snapshot else "")
        with self.exec(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-U", self.user, "-d", db], stdin=True) as p:
            p.send(sql.encode())
            p.close_stdin()
            out = p.read_all().decode("utf-8", "replace")
            code = p.wait(600)
            if code != 0:
                raise DcbError(f"counting rows in {db} failed: {first_error(p.stderr_text)}")
        return parse_row_counts(out)

    def database_names(self) -> set[str]:
        return set(self.query("SELECT datname FROM pg_database").splitlines())

    def database_info(self, name: str) -> DatabaseInfo | None:
        """Size, connection permission and live connections of one database; None if absent."""
        out = self.query(
            "SELECT pg_database_size(d.oid) || '|' || d.datallowconn || '|' || "
            "(SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid) "
            f"FROM pg_database d WHERE d.datname = {_literal(name)}").strip()
        if not out:
            return None
        size, allow, conns = out.rsplit("|", 2)
        return DatabaseInfo(name=name, size_bytes=int(size),
                            allow_connections=allow in ("t", "true"),
                            connections=int(conns))

    def connection_counts(self) -> dict[str, int]:
        """Live sessions per database (this query's own included)."""
        counts: dict[str, int] = {}
        for line in self.query("SELECT datname || '|' || count(*) FROM pg_stat_activity "
                               "WHERE datname IS NOT NULL GROUP BY datname").splitlines():
            name, sep, n = line.rpartition("|")
            if sep and n.isdigit():
                counts[name] = int(n)
        return counts

    def role_names(self) -> set[str]:
        return set(self.query("SELECT rolname FROM pg_roles").splitlines())

    def run_script(self, sql: str, db: str = "postgres", what: str = "SQL script") -> None:
        """Run a multi-statement script with psql from stdin (each statement on its own,
        errors fatal)."""
        with self.exec(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *self.login(), "-d", db,
                        "-o", "/dev/null", "--no-password"], stdin=True) as p:
            code = p.feed(self.psql_input(iter([sql.encode()])))
            if code != 0:
                raise DcbError(f"{what} failed: {first_error(p.stderr_text) or f'exit {code}'}")

    def script_output(self, sql: str, db: str = "postgres", what: str = "SQL script") -> str:
        """:meth:`run_script` returning the script's tuples-only, unaligned output."""
        with self.exec(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *self.login(),
                        "-d", db, "--no-password"], stdin=True) as p:
            out: list[bytes] = []
            drain = threading.Thread(target=lambda: out.extend(p.stdout()), daemon=True,
                                     name="dcb-script-drain")
            drain.start()
            try:
                for c in self.psql_input(iter([sql.encode()])):
                    p.send(c)
            finally:
                p.close_stdin()
            drain.join(600)
            code = p.wait(600)
            if code != 0:
                raise DcbError(f"{what} failed: {first_error(p.stderr_text) or f'exit {code}'}")
        return b"".join(out).decode("utf-8", "replace")

    def psql_input(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """SQL for psql's stdin with psql's meta-commands refused when this psql can
        (services/psql_guard.py): part of it may come from a dump someone else wrote."""
        from dcb.services.psql_guard import psql_restricts, restricted

        if self.restricts is None:
            self.restricts = psql_restricts(self)
        return restricted(chunks) if self.restricts else chunks

    def terminate_connections(self, db: str) -> None:
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   f"WHERE datname = {_literal(db)} AND pid <> pg_backend_pid()")

    def live_properties_sql(self, db: str) -> str:
        """What ``pg_dump --create`` prints about database ``db`` itself (no schema)."""
        with self.exec(["pg_dump", "-U", self.user, "-d", db, "--no-password", "--create",
                        "--schema-only", "--exclude-schema=*"]) as p:
            out = p.read_all()
            code = p.wait(120)
            if code != 0:
                raise DcbError(f"reading the properties of {db} failed: "
                               f"{first_error(p.stderr_text) or f'exit {code}'}")
        return out.decode("utf-8", "replace")

    def archive_properties_sql(self, path: str | None = None,
                               chunks: Iterator[bytes] | None = None) -> str:
        """What ``pg_restore --create --schema-only`` prints for a custom-format dump, read from
        ``path`` in the container or streamed from ``chunks``. Only the archive's table of
        contents is read, so pg_restore stops reading a stream early."""
        return self._archive_toc(["pg_restore", "--create", "--schema-only", "-f", "-"],
                                 path, chunks)

    def archive_list(self, path: str | None = None,
                     chunks: Iterator[bytes] | None = None) -> str:
        """``pg_restore --list`` of a custom-format dump (as :meth:`archive_properties_sql`)."""
        return self._archive_toc(["pg_restore", "--list"], path, chunks)

    def _archive_toc(self, cmd: list[str], path: str | None,
                     chunks: Iterator[bytes] | None) -> str:
        with self.exec([*cmd, path] if path else cmd, stdin=path is None) as p:
            if chunks is not None and path is None:
                out: list[bytes] = []
                drain = threading.Thread(target=lambda: out.extend(p.stdout()), daemon=True,
                                         name="dcb-props-drain")
                drain.start()
                try:
                    for c in chunks:
                        p.send(c)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # pg_restore had the table of contents and stopped reading
                finally:
                    p.close_stdin()
                drain.join(120)
                data = b"".join(out)
            else:
                data = p.read_all()
            code = p.wait(120)
            if code != 0:
                raise DumpError(f"pg_restore cannot read the dump's table of contents: "
                                f"{first_error(p.stderr_text) or f'exit {code}'}")
        return data.decode("utf-8", "replace")

    # -- dumps ----------------------------------------------------------------------------------
    def snapshot_session(self, db: str) -> SnapshotSession:
        return SnapshotSession(self, db)

    def dump(self, db: str, *, fmt: str = "custom", snapshot: str | None = None,
             lock_wait_timeout: int = 0) -> ExecProcess:
        """Start ``pg_dump``; the caller streams ``stdout()`` and must check ``wait()``."""
        cmd = ["pg_dump", "-U", self.user, "-d", db, "--no-password"]
        if lock_wait_timeout:
            # A table held ACCESS EXCLUSIVE fails the dump cleanly instead of hanging.
            cmd += [f"--lock-wait-timeout={int(lock_wait_timeout)}s"]
        if fmt == "custom":
            # -Z1: zlib inside pg_dump is cheap and cuts the bytes crossing the slow
            # docker exec stream 3-4x (shared/PERFORMANCE.md).
            cmd += ["-Fc", "-Z1"]
        else:
            cmd += ["-Fp"]
        if snapshot:
            cmd += [f"--snapshot={snapshot}"]
        return self.exec(cmd)

    def dump_globals(self) -> ExecProcess:
        return self.exec(["pg_dumpall", "-U", self.user, "--globals-only", "--no-password"])

    def basebackup(self, zstd_level: int | None = None) -> BaseBackup:
        """An online physical backup of the whole cluster as one tar stream (WAL included).

        With ``zstd_level`` (PostgreSQL 15+), pg_basebackup compresses inside the container:
        a tenth of the bytes cross the slow ``docker exec`` stream (5.2 s -> 2.1 s for the
        benchmark's data volume, bench/README.md).

        ``-X fetch`` collects the WAL at the end of the backup, and a busy server may have
        recycled it by then ("requested WAL segment ... has already been removed": seen under
        pgbench while the backup disk stalled). ``-X stream`` cannot write a tar to stdout, so
        a temporary replication slot, held by a session of its own for the whole backup,
        keeps that WAL instead (:class:`WalHold`).
        """
        cmd = ["pg_basebackup", "-U", self.user, "-D", "-", "-F", "tar", "-X", "fetch",
               "--checkpoint=fast", "--no-password"]
        if zstd_level is not None:
            cmd.append(f"--compress=client-zstd:level={zstd_level},workers=2")
        return BaseBackup(self, cmd)

    def check_custom_dump(self, chunks: Iterator[bytes]) -> None:
        """Feed a custom-format dump to ``pg_restore -f /dev/null`` in the container.

        ``pg_restore --list`` accepts truncated dumps; a full read does not (RELIABILITY.md).
        """
        with self.exec(["pg_restore", "-f", "/dev/null"], stdin=True) as p:
            for c in chunks:
                p.send(c)
            p.close_stdin()
            p.read_all()
            code = p.wait(300)
            if code != 0:
                raise DumpError(f"pg_restore rejects the dump: "
                                f"{first_error(p.stderr_text) or f'exit {code}'}")


class SnapshotSession:
    """A REPEATABLE READ transaction whose snapshot ``pg_dump --snapshot`` shares.

    Row counts taken in this session see exactly the data the dump contains, so a restore can
    be verified against them even while the application writes.
    """

    def __init__(self, pg: PgGateway, db: str) -> None:
        self.pg = pg
        self.db = db
        self.proc = pg.exec(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                             "-U", pg.user, "-d", db], stdin=True)
        self._out = self.proc.stdout()
        self._buf = b""
        self.proc.send(b"BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
                       b"SELECT 'DCB-SNAP:' || pg_export_snapshot();\n")
        line = self._read_until(b"DCB-SNAP:")
        self.snapshot = line.split(b"DCB-SNAP:", 1)[1].strip().decode()

    def _read_until(self, marker: bytes) -> bytes:
        while True:
            i = self._buf.find(marker)
            if i >= 0:
                j = self._buf.find(b"\n", i)
                if j >= 0:
                    line, self._buf = self._buf[: j + 1], self._buf[j + 1:]
                    return line
            chunk = next(self._out, None)
            if chunk is None:
                self.proc.wait(10)
                raise DumpError(f"psql session on {self.db} ended early: "
                                f"{first_error(self.proc.stderr_text)}")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.proc.send(b"COMMIT;\n")
            self.proc.close_stdin()
            for _ in self._out:
                pass
            self.proc.wait(30)
        except (OSError, DcbError):
            pass
        finally:
            self.proc.close()

    def __enter__(self) -> SnapshotSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WalHold:
    """A temporary physical replication slot, reserved at once and held by its own psql
    session: the server keeps every WAL segment from the slot's position on until the session
    ends. The slot is temporary, so the server drops it when the session ends for any reason
    (dcb finished, failed, or was killed: the exec's stdin closes and psql exits); it can
    never pin WAL after the backup."""

    MARKER = b"DCB-SLOT:"

    def __init__(self, pg: PgGateway) -> None:
        self.slot = f"dcb_{secrets.token_hex(6)}"
        self.proc = pg.exec(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                             "-U", pg.user, "-d", "postgres"], stdin=True)
        self._out = self.proc.stdout()
        buf = b""
        try:
            self.proc.send(b"SELECT '" + self.MARKER + b"' || lsn FROM "
                           b"pg_create_physical_replication_slot('" + self.slot.encode()
                           + b"', true, true);\n")
            while self.MARKER not in buf or not buf.endswith(b"\n"):
                chunk = next(self._out, None)
                if chunk is None:
                    self.proc.wait(10)
                    raise DumpError("cannot reserve WAL for pg_basebackup: "
                                    f"{first_error(self.proc.stderr_text) or 'psql ended'}")
                buf += chunk
        except BaseException:
            self.close()
            raise
        self.lsn = buf.split(self.MARKER, 1)[1].strip().decode()

    def close(self) -> None:
        """End the session (the server drops the slot with it)."""
        try:
            self.proc.close_stdin()
            for _ in self._out:
                pass
            self.proc.wait(30)
        except (OSError, DcbError):
            pass
        finally:
            self.proc.close()


class BaseBackup:
    """``pg_basebackup``'s tar stream while a :class:`WalHold` keeps the WAL it fetches at
    the end. When no slot can be made (``max_replication_slots = 0``, all slots in use, an
    old server), the backup still runs as before and :attr:`warning` says why."""

    def __init__(self, pg: PgGateway, cmd: list[str]) -> None:
        self.hold: WalHold | None = None
        self.warning: str | None = None
        try:
            self.hold = WalHold(pg)
        except DumpError as e:
            self.warning = (f"{e.message}; the backup runs without it and fails if the "
                            "server recycles that WAL first (raise max_replication_slots or "
                            "wal_keep_size)")
        try:
            self.proc = pg.exec(cmd)
        except BaseException:
            if self.hold is not None:
                self.hold.close()
            raise

    def stdout(self) -> Iterator[bytes]:
        return self.proc.stdout()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    @property
    def stderr_text(self) -> str:
        return self.proc.stderr_text

    def abort(self, reason: DcbError | None = None) -> None:
        self.proc.abort(reason)

    def close(self) -> None:
        try:
            self.proc.close()
        finally:
            if self.hold is not None:
                self.hold.close()
                self.hold = None


def major_version(version: str) -> int:
    """``15.18 (Debian 15.18-0+deb12u1)`` -> 15; 0 when unknown."""
    try:
        return int(version.split(".")[0].split()[0])
    except (ValueError, IndexError):
        return 0


def parse_row_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, n = line.rpartition("|")
        if sep and n.strip().isdigit():
            counts[name] = int(n)
    return counts


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "error" in line.lower() or "fatal" in line.lower():
            return line.strip()
    return stderr.strip().splitlines()[-1] if stderr.strip() else ""
