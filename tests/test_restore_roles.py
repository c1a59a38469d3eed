"""Roles and database properties across a restore, on the real stack.

A restore creates missing roles and leaves existing ones alone (``--roles`` resets them);
``--as`` touches nothing but the new database. A database comes back with its own encoding,
collation, ctype, owner, settings, comment and grants, and the restore verifies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.stackkit import TestStack, release_undo_points

DB = "dcbt_latin"
PROPS = """
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, d.datlocprovider,
       coalesce(d.daticulocale, '-'), pg_get_userbyid(d.datdba), d.datconnlimit,
       d.datallowconn,
       (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(d.datacl) a),
       coalesce(shobj_description(d.oid, 'pg_database'), '-'),
       coalesce((SELECT string_agg(coalesce(pg_get_userbyid(s.setrole), '*') || '=' ||
                                   s.setconfig::text, ',' ORDER BY s.setrole)
                 FROM pg_db_role_setting s WHERE s.setdatabase = d.oid), '-')
FROM pg_database d WHERE d.datname = '{db}'
"""
ROLE = """
SELECT rolcanlogin, rolconnlimit, coalesce(rolpassword, '-'),
       coalesce((SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) FROM pg_auth_members m
                 JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = r.oid), '-')
FROM pg_authid r WHERE rolname = '{role}'
"""


def props(stack: TestStack, db: str = DB) -> str:
    out = stack.psql("postgres", PROPS.format(db=db)).strip()
    assert out, f"database {db} does not exist"
    return out


def role(stack: TestStack, name: str) -> str:
    return stack.psql("postgres", ROLE.format(role=name)).strip()


@pytest.fixture
def latin(stack: TestStack) -> Iterator[TestStack]:
    """A LATIN1 database with a setting, a role setting, a comment, a connection limit and
    CONNECT revoked from PUBLIC; a role that only a grant on it uses."""
    stack.psql("postgres", f"""
        CREATE ROLE dcbt_reader LOGIN PASSWORD 'reader-secret' CONNECTION LIMIT 3;
        GRANT dart_app TO dcbt_reader;
        CREATE DATABASE {DB} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'
            TEMPLATE template0 OWNER dart_app CONNECTION LIMIT 5;
        ALTER DATABASE {DB} SET work_mem = '7MB';
        ALTER ROLE dart_app IN DATABASE {DB} SET search_path = 'app, public';
        COMMENT ON DATABASE {DB} IS 'Données; of the ''latin'' app';
        REVOKE CONNECT ON DATABASE {DB} FROM PUBLIC;
        GRANT CONNECT ON DATABASE {DB} TO dcbt_reader;
    """)
    stack.psql(DB, "CREATE TABLE notes (id int PRIMARY KEY, body text); "
                   "INSERT INTO notes SELECT g, 'caf' || chr(233) || ' ' || g "
                   "FROM generate_series(1, 500) g;")
    try:
        yield stack
    finally:
        release_undo_points(stack)
        stack.psql("postgres", f"""
            DROP DATABASE IF EXISTS {DB} WITH (FORCE);
            DROP DATABASE IF EXISTS {DB}_copy WITH (FORCE);
            DROP ROLE IF EXISTS dcbt_reader;
            ALTER ROLE dart_app CONNECTION LIMIT -1;
        """)


def test_database_properties_and_roles_come_back(latin: TestStack, tmp_path: Path):
    stack = latin
    cfg = stack.write_config(tmp_path, stack={"databases": [DB]})
    r = run_dcb("backup", "-q", "--db", DB, "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    at_backup = props(stack)
    assert at_backup.startswith("LATIN1|C|C|")
    rows = stack.table_digest(DB)
    reader, postgres = role(stack, "dcbt_reader"), role(stack, "postgres")

    # After the backup: the database is dropped, its reader role too, an existing role changed.
    stack.psql("postgres", f"DROP DATABASE {DB} WITH (FORCE); DROP ROLE dcbt_reader; "
                           "ALTER ROLE dart_app CONNECTION LIMIT 9;")
    dart_app = role(stack, "dart_app")
    r = run_dcb("restore", set_id, "--yes", "--json", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert report["verification"] == {f"database {DB}": []}
    roles_step = next(s for s in report["steps"] if s["key"] == "roles")
    assert "created dcbt_reader" in roles_step["detail"]
    # Identical: encoding, collation, ctype, owner, limits, grants, comment, settings.
    assert props(stack) == at_backup
    assert stack.table_digest(DB) == rows
    # The missing role is back as it was; existing roles were not touched.
    assert role(stack, "dcbt_reader") == reader
    assert role(stack, "dart_app") == dart_app
    assert role(stack, "postgres") == postgres

    # --roles resets existing roles to the backup's.
    r = run_dcb("restore", set_id, "--roles", "--yes", "--no-safety-backup", "--config",
                str(cfg))
    assert r.code == 0, r.err + r.out
    assert "existing role(s) reset" in r.out
    assert role(stack, "dart_app").split("|")[1] == "-1"
    assert props(stack) == at_backup

    # --as touches nothing but the new database: roles and the original stay as they are.
    stack.psql("postgres", "ALTER ROLE dart_app CONNECTION LIMIT 4;")
    stack.psql(DB, "DELETE FROM notes WHERE id > 250")
    dart_app, original = role(stack, "dart_app"), stack.table_digest(DB)
    r = run_dcb("restore", set_id, "--db", DB, "--as", f"{DB}_copy", "--yes", "--json",
                "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert "roles" not in [s["key"] for s in report["steps"]]
    assert report["verification"] == {f"database {DB}_copy": []}
    assert props(stack, f"{DB}_copy") == at_backup.replace(DB, f"{DB}_copy")
    assert stack.table_digest(f"{DB}_copy") == rows
    assert role(stack, "dart_app") == dart_app
    assert stack.table_digest(DB) == original


def test_plain_dump_keeps_the_replaced_databases_properties(latin: TestStack,
                                                           tmp_path: Path):
    """A plain dump records no database properties: the restore keeps those of the database
    it replaces, and says the archive had none to check against."""
    stack = latin
    cfg = stack.write_config(tmp_path, stack={"databases": [DB]},
                             storage={"db_format": "plain"})
    r = run_dcb("backup", "-q", "--db", DB, "--config", str(cfg))
    assert r.code == 0, r.err
    before = props(stack)
    rows = stack.table_digest(DB)
    stack.psql(DB, "DELETE FROM notes")
    r = run_dcb("restore", r.out.strip(), "--yes", "--json", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert report["verification"] == {f"database {DB}": []}
    assert "a plain dump records none" in report["not_checked"][f"database {DB}"][0]
    assert props(stack) == before
    assert stack.table_digest(DB) == rows
