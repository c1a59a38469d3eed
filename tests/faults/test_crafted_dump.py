"""A dump that someone else wrote (a destination they control) must never run more than a
database's owner may: psql's meta-commands are refused (``\\restrict``), and the replay logs in
as an unprivileged role of its own (services/replay_role.py), so PostgreSQL refuses what only a
superuser may do: ``COPY ... PROGRAM`` (also through ``DO``/``EXECUTE``, ``SET ROLE``,
``SET SESSION AUTHORIZATION`` or a CHECK constraint's function), ``COPY`` to a server file,
``lo_export``, ``ALTER SYSTEM``. Each attack is a real backup rewritten, its manifest re-signed as
an attacker with the destination could (or a genuine dump of a hostile database), replayed by
``dcb restore --as``: the program's side effect never exists, the restore fails with one line,
the temporary database is gone, no replay role is left, nothing live changed. The parts dcb
runs as the superuser (the roles file, the archive's DATABASE entries) are refused when they
hold anything but plain statements of their kind. The genuine dump still restores.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from dcb.services.psql_guard import restricted
from dcb.services.store import MANIFEST, manifest_bytes
from tests.conftest import run_dcb
from tests.stackkit import TestStack
from tests.test_backup_faults import error_line

DUMP = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict AbC123\n\nSET x = 1;\n"
        b"COPY t (a) FROM stdin;\n\\N\n\\\\restrict AbC123\n\\restrict AbC123x\n\\.\n\n"
        b"SELECT 1;\n\\unrestrict AbC123\n\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 4096])
def test_the_guard_drops_only_pg_dumps_own_pair(size: int) -> None:
    chunks = [DUMP[i:i + size] for i in range(0, len(DUMP), size)]
    out = b"".join(restricted(iter(chunks), key="k0"))
    expected = b"\\restrict k0\n" + DUMP.replace(b"\\restrict AbC123\n\n", b"\n", 1) \
        .replace(b"\\unrestrict AbC123\n", b"")
    assert out == expected
    # Without a header of its own, the stream passes untouched; a long backslash line too.
    plain = b"SELECT 1;\n\\" + b"x" * 5000 + b"\n\\unrestrict AbC123\n"
    chunks = [plain[i:i + size] for i in range(0, len(plain), size)]
    assert b"".join(restricted(iter(chunks), key="k1")) == b"\\restrict k1\n" + plain


def _plain_set(stack: TestStack, where: Path) -> tuple[Path, Path, str]:
    cfg = stack.write_config(where, storage={"db_format": "plain"})
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg), timeout=300)
    assert r.code == 0, r.err
    set_id = r.out.strip()
    return cfg, where / "backups" / set_id, set_id


def _rewrite(set_dir: Path, edit: Callable[[bytes], bytes],
             name: str = "db-functions_db.sql.zst") -> None:
    """Rewrite an artifact with ``edit`` and re-sign the manifest, as its author could."""
    path = set_dir / name
    if name.endswith(".zst"):
        sql = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
        path.write_bytes(zstandard.ZstdCompressor().compress(edit(sql)))
    else:
        path.write_bytes(edit(path.read_bytes()))
    data = path.read_bytes()
    m = json.loads((set_dir / MANIFEST).read_text())
    for a in m["artifacts"]:
        if a["file"] == path.name:
            a["size_bytes"], a["sha256"] = len(data), hashlib.sha256(data).hexdigest()
            a.get("source", {}).pop("raw_bytes", None)
    m.pop("manifest_sha256", None)
    (set_dir / MANIFEST).write_bytes(manifest_bytes(m))


def _append(extra: bytes, keep_pg_dumps_pair: bool) -> Callable[[bytes], bytes]:
    """``extra`` before the end of the dump; pg_dump's own \\restrict pair kept (the attacker
    then knows its key) or dropped (nothing restricts the replay but dcb)."""
    def edit(sql: bytes) -> bytes:
        lines = sql.splitlines(keepends=True)
        if not keep_pg_dumps_pair:
            lines = [x for x in lines if not x.startswith((b"\\restrict ", b"\\unrestrict "))]
            return b"".join(lines) + extra
        key = next(x.split()[1] for x in lines if x.startswith(b"\\restrict "))
        end = next(i for i, x in enumerate(lines) if x.startswith(b"\\unrestrict "))
        lines.insert(end, b"\\unrestrict " + key + b"\n" + extra)
        return b"".join(lines)
    return edit


def _own_copy(tmp_path: Path, plain: tuple[Path, Path, str]) -> tuple[Path, Path, str]:
    """The shared plain set copied into this test's own store (the test rewrites it): the
    config reading that store, the copy, the set id."""
    cfg, set_dir, set_id = plain
    copy = tmp_path / "backups" / set_id
    shutil.copytree(set_dir, copy)
    conf = tmp_path / "dcb.toml"
    conf.write_text(cfg.read_text().replace(str(set_dir.parent), str(copy.parent)))
    return conf, copy, set_id


def _drop(stack: TestStack, marker: str, *databases: str) -> None:
    """A test's databases and the file a crafted program would have made, whatever happened."""
    stack.psql("postgres", " ".join(f'DROP DATABASE IF EXISTS "{d}" WITH (FORCE);'
                                    for d in databases), check=False)
    subprocess.run(["docker", "exec", stack.postgres_container, "rm", "-f", marker])


def _exists_in_pg(stack: TestStack, path: str) -> bool:
    return subprocess.run(["docker", "exec", stack.postgres_container, "test", "-e", path],
                          capture_output=True).returncode == 0


def _databases(stack: TestStack) -> set[str]:
    return set(stack.psql("postgres", "SELECT datname FROM pg_database").split())


@pytest.fixture(scope="module")
def plain(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    return _plain_set(stack, tmp_path_factory.mktemp("plain"))


def _restore_as(stack: TestStack, cfg: Path, set_id: str) -> tuple[int, str, str]:
    name = "dcb_probe_" + secrets.token_hex(3)
    r = run_dcb("restore", set_id, "--db", "functions_db", "--as", name, "--yes",
                "--config", str(cfg), timeout=300)
    return r.code, r.err, name


def test_the_genuine_plain_dump_restores(stack: TestStack, plain: tuple[Path, Path, str]
                                         ) -> None:
    cfg, _set_dir, set_id = plain
    code, err, name = _restore_as(stack, cfg, set_id)
    try:
        assert code == 0, err
        assert stack.table_digest(name) == stack.table_digest("functions_db")
    finally:
        stack.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)


@pytest.mark.parametrize("attack", ["shell", "own-key"])
def test_psql_meta_commands_in_a_dump_never_run(stack: TestStack, tmp_path: Path,
                                                plain: tuple[Path, Path, str],
                                                attack: str) -> None:
    conf, copy, set_id = _own_copy(tmp_path, plain)
    marker = f"/tmp/dcb-pwned-{secrets.token_hex(4)}"
    _rewrite(copy, _append(f"\\! touch {marker}\n".encode(), attack == "own-key"))
    before = _databases(stack)
    code, err, name = _restore_as(stack, conf, set_id)
    try:
        assert not _exists_in_pg(stack, marker), "the dump ran a shell command"
        assert code == 1, (code, err)
        line = error_line(err)
        assert "restricted" in line or "restoring" in line, line
        assert _databases(stack) == before  # the temporary database is gone
    finally:
        stack.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)
        subprocess.run(["docker", "exec", stack.postgres_container, "rm", "-f", marker])


ATTACKS = {
    "copy-program": "COPY (SELECT 1) TO PROGRAM 'touch {m}';",
    "do-execute": "DO $x$ BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', "
                  "'touch {m}'); END $x$;",
    "copy-to-file": "COPY (SELECT 1) TO '{m}';",
    "lo-export": "SELECT lo_export(lo_from_bytea(0, 'x'), '{m}');",
    "set-role": "SET ROLE postgres; COPY (SELECT 1) TO PROGRAM 'touch {m}';",
    "session-auth": "RESET SESSION AUTHORIZATION; SET SESSION AUTHORIZATION postgres; "
                    "COPY (SELECT 1) TO PROGRAM 'touch {m}';",
    "alter-system": "ALTER SYSTEM SET work_mem = '{m}';",
}


def _replay_roles(stack: TestStack) -> list[str]:
    return stack.psql("postgres", r"SELECT rolname FROM pg_roles "
                                  r"WHERE rolname LIKE 'dcb\_replay\_%'").split()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_superuser_sql_in_a_dump_never_runs(stack: TestStack, tmp_path: Path,
                                            plain: tuple[Path, Path, str], attack: str) -> None:
    conf, copy, set_id = _own_copy(tmp_path, plain)
    marker = f"/tmp/dcb-pwned-{secrets.token_hex(4)}"
    _rewrite(copy, _append((ATTACKS[attack].format(m=marker) + "\n").encode(), False))
    before, auto_conf = _databases(stack), _auto_conf(stack)
    roles = set(_replay_roles(stack))
    code, err, name = _restore_as(stack, conf, set_id)
    try:
        assert not _exists_in_pg(stack, marker), f"{attack}: the dump did what only a " \
                                                 "superuser may"
        assert _auto_conf(stack) == auto_conf
        assert code == 1, (code, err)
        line = error_line(err)
        assert line.startswith("dcb: restore failed: restoring functions_db failed"), line
        assert "superuser" in line or "permission denied" in line \
            or "pg_execute_server_program" in line or "pg_write_server_files" in line, line
        assert _databases(stack) == before  # nothing live changed, the temporary one gone
        assert set(_replay_roles(stack)) <= roles  # its own dropped
    finally:
        stack.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', check=False)
        subprocess.run(["docker", "exec", stack.postgres_container, "rm", "-f", marker])


def _auto_conf(stack: TestStack) -> bytes:
    return subprocess.run(["docker", "exec", stack.postgres_container, "cat",
                           "/var/lib/postgresql/data/postgresql.auto.conf"],
                          capture_output=True).stdout


HOSTILE = r"""
CREATE FUNCTION pwn() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF current_database() LIKE '%\_\_dcb\_restore' THEN
    EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch {m}');
  END IF;
  RETURN true;
END $f$;
CREATE TABLE guarded (x int CHECK (pwn()));
INSERT INTO guarded VALUES (1);
"""


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_a_databases_own_functions_cannot_escalate_during_the_replay(
        stack: TestStack, tmp_path: Path, fmt: str) -> None:
    """A genuine dump of a hostile database: a CHECK constraint calls a function that runs
    COPY ... PROGRAM when it finds itself in dcb's temporary database (pg_restore replays
    the data through it; custom format is pg_restore's path)."""
    db = "dcbt_hostile_" + secrets.token_hex(3)
    marker = f"/tmp/dcb-pwned-{secrets.token_hex(4)}"
    stack.psql("postgres", f"CREATE DATABASE {db}")
    stack.psql(db, HOSTILE.replace("{m}", marker))
    name = db + "_as"
    try:
        cfg = stack.write_config(tmp_path, stack={"databases": [db]},
                                 storage={"db_format": fmt})
        r = run_dcb("backup", "-q", "--db", db, "--config", str(cfg), timeout=300)
        assert r.code == 0, r.err
        before, roles = _databases(stack), set(_replay_roles(stack))
        r = run_dcb("restore", r.out.strip(), "--db", db, "--as", name, "--yes",
                    "--config", str(cfg), timeout=300)
        assert not _exists_in_pg(stack, marker), "COPY ... PROGRAM ran"
        assert r.code == 1, (r.code, r.err)
        line = error_line(r.err)
        assert line.startswith(f"dcb: restore failed: restoring {db} failed"), line
        assert "pg_execute_server_program" in line or "superuser" in line, line
        assert _databases(stack) == before
        assert set(_replay_roles(stack)) <= roles  # its own dropped
    finally:
        _drop(stack, marker, name, db)


def test_a_crafted_archive_database_entry_never_runs(stack: TestStack, tmp_path: Path) -> None:
    """The statements about the database itself (comment, settings, grants) are run by dcb as
    the superuser: an archive whose comment entry smuggles a second statement (written into
    the custom-format table of contents in place) is refused before anything is done."""
    db = "dcbt_props_" + secrets.token_hex(3)
    marker = f"/tmp/dcb-pwned-{secrets.token_hex(4)}"
    stack.psql("postgres", f"CREATE DATABASE {db}; COMMENT ON DATABASE {db} IS '{'A' * 200}'")
    name = db + "_as"
    try:
        cfg = stack.write_config(tmp_path, stack={"databases": [db]},
                                 storage={"db_format": "custom"})
        r = run_dcb("backup", "-q", "--db", db, "--config", str(cfg), timeout=300)
        assert r.code == 0, r.err
        set_id = r.out.strip()
        payload = (f"x'; COPY (SELECT 'DATABASE {db}') TO PROGRAM 'touch {marker}'; "
                   "SELECT '").encode()
        payload += b"A" * (200 - len(payload))

        def edit(data: bytes) -> bytes:
            assert data.count(b"A" * 200) == 1
            return data.replace(b"A" * 200, payload)

        _rewrite(tmp_path / "backups" / set_id, edit, f"db-{db}.pgdump")
        before, roles = _databases(stack), set(_replay_roles(stack))
        r = run_dcb("restore", set_id, "--db", db, "--as", name, "--yes", "--config",
                    str(cfg), timeout=300)
        assert not _exists_in_pg(stack, marker), "COPY ... PROGRAM ran as the superuser"
        assert r.code == 1, (r.code, r.err)
        line = error_line(r.err)
        assert "database properties hold SQL that dcb will not run as the superuser" in line, \
            line
        assert _databases(stack) == before
        assert set(_replay_roles(stack)) <= roles  # its own dropped
    finally:
        _drop(stack, marker, name, db)


def test_a_crafted_roles_file_never_runs(stack: TestStack, tmp_path: Path,
                                         plain: tuple[Path, Path, str]) -> None:
    """``globals.sql.zst`` is replayed by the superuser (CREATE ROLE needs it): a line that
    psql reads as two statements (``E'\\''``) is refused, nothing is changed."""
    conf, copy, set_id = _own_copy(tmp_path, plain)
    marker = f"/tmp/dcb-pwned-{secrets.token_hex(4)}"
    role = "dcbt_crafted_" + secrets.token_hex(3)
    evil = (f"CREATE ROLE {role};\nALTER ROLE {role} SET search_path TO E'\\''; "
            f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'; --'\n").encode()

    def edit(sql: bytes) -> bytes:
        end = sql.index(b"\\unrestrict ")
        return sql[:end] + evil + sql[end:]

    _rewrite(copy, edit, "globals.sql.zst")
    before = _databases(stack)
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(conf),
                timeout=300)
    try:
        assert not _exists_in_pg(stack, marker), "COPY ... PROGRAM ran as the superuser"
        assert r.code == 1, (r.code, r.err)
        line = error_line(r.err)
        assert "roles hold SQL that dcb will not run as the superuser" in line, line
        assert role not in stack.psql("postgres", "SELECT rolname FROM pg_roles").split()
        assert _databases(stack) == before
    finally:
        stack.psql("postgres", f"DROP ROLE IF EXISTS {role}", check=False)
        subprocess.run(["docker", "exec", stack.postgres_container, "rm", "-f", marker])
