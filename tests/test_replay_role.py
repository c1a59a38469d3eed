"""The unprivileged replay session (services/replay_role.py) on the real stack: a database with
objects of several owners, grants, a large object, default privileges and trusted extensions
(pgcrypto, citext) comes back with the same owners and ACLs, in plain and custom format, and
no replay role is left behind (one a killed run left is swept). pg_hba.conf decides how the
role logs in. The crafted-dump side (COPY ... PROGRAM refused) is in
tests/faults/test_crafted_dump.py.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dcb.services.replay_role import DumpOwners, without_owner_statements
from tests.conftest import run_dcb
from tests.stackkit import TestStack
from tests.test_backup_faults import error_line

DB = "dcbt_owners"
SEED = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dcbt_oreader') THEN
    CREATE ROLE dcbt_oreader;
  END IF;
END $$;
CREATE DATABASE {DB} OWNER dart_app;
"""
OBJECTS = """
ALTER SCHEMA public OWNER TO postgres;
GRANT CREATE ON SCHEMA public TO PUBLIC;
COMMENT ON SCHEMA public IS 'as PostgreSQL 14 made it';
CREATE TABLE t1 (id serial PRIMARY KEY, v text);
INSERT INTO t1 (v) SELECT 'row ' || g FROM generate_series(1, 50) g;
COMMENT ON TABLE t1 IS 'owned by the superuser';
CREATE SCHEMA app AUTHORIZATION dart_app;
CREATE TABLE app.t2 (id int GENERATED ALWAYS AS IDENTITY, x int);
ALTER TABLE app.t2 OWNER TO dart_app;
INSERT INTO app.t2 (x) VALUES (1), (2);
CREATE TABLE app."We ird; x" (a int);
ALTER TABLE app."We ird; x" OWNER TO dart_app;
GRANT SELECT ON t1 TO dcbt_oreader;
GRANT SELECT, INSERT ON app.t2 TO dcbt_oreader WITH GRANT OPTION;
REVOKE ALL ON SCHEMA app FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO dcbt_oreader;
CREATE VIEW v1 AS SELECT * FROM t1;
ALTER VIEW v1 OWNER TO dart_app;
CREATE MATERIALIZED VIEW mv AS SELECT count(*) AS n FROM t1;
CREATE FUNCTION f(a integer, b text) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
REVOKE EXECUTE ON FUNCTION f(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION f(integer, text) TO dcbt_oreader;
CREATE FUNCTION app."G w"() RETURNS int LANGUAGE sql AS $$ SELECT 2 $$;
ALTER FUNCTION app."G w"() OWNER TO dart_app;
CREATE AGGREGATE app.total(int) (SFUNC = int4pl, STYPE = int);
CREATE TYPE mood AS ENUM ('a', 'b');
ALTER TYPE mood OWNER TO dart_app;
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
SELECT lo_from_bytea(0, 'hello');
CREATE EXTENSION pgcrypto;
CREATE EXTENSION citext SCHEMA app;
CREATE TABLE app.emails (e app.citext, h bytea DEFAULT digest('x', 'sha256'));
ALTER TABLE app.emails OWNER TO dart_app;
INSERT INTO app.emails (e) VALUES ('A@b.c');
ALTER DEFAULT PRIVILEGES FOR ROLE dart_app IN SCHEMA app GRANT SELECT ON TABLES TO dcbt_oreader;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
"""
# Every object's owner and ACL, and the default privileges, in a stable order.
CATALOG = r"""
SELECT x FROM (
 SELECT 'class ' || c.oid::regclass::text || ' ' || c.relkind::text || ' '
        || pg_get_userbyid(c.relowner) || ' ' || coalesce(c.relacl::text, '-') AS x
 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
 UNION ALL SELECT 'schema ' || nspname || ' ' || pg_get_userbyid(nspowner) || ' '
        || coalesce(nspacl::text, '-')
 FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'
 UNION ALL SELECT 'proc ' || p.oid::regprocedure::text || ' ' || pg_get_userbyid(p.proowner)
        || ' ' || coalesce(p.proacl::text, '-')
 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
 UNION ALL SELECT 'type ' || t.oid::regtype::text || ' ' || pg_get_userbyid(t.typowner) || ' '
        || coalesce(t.typacl::text, '-')
 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
 UNION ALL SELECT 'lo ' || oid || ' ' || pg_get_userbyid(lomowner) || ' '
        || coalesce(lomacl::text, '-') FROM pg_largeobject_metadata
 UNION ALL SELECT 'defacl ' || pg_get_userbyid(defaclrole) || ' '
        || defaclnamespace::regnamespace::text || ' ' || defaclobjtype::text || ' '
        || defaclacl::text FROM pg_default_acl
 UNION ALL SELECT 'ext ' || extname || ' ' || pg_get_userbyid(extowner) FROM pg_extension
) s ORDER BY x
"""


def catalog(stack: TestStack, db: str) -> list[str]:
    return stack.psql(db, CATALOG).splitlines()


def replay_roles(stack: TestStack) -> list[str]:
    return stack.psql("postgres", r"SELECT rolname FROM pg_roles "
                                  r"WHERE rolname LIKE 'dcb\_replay\_%'").split()


@pytest.fixture(scope="module")
def owners_db(stack: TestStack) -> Iterator[list[str]]:
    stack.psql("postgres", SEED)
    stack.psql(DB, OBJECTS)
    try:
        yield catalog(stack, DB)
    finally:
        stack.psql("postgres", f"DROP DATABASE IF EXISTS {DB} WITH (FORCE); "
                               "DROP ROLE IF EXISTS dcbt_oreader")


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_owners_and_acls_come_back_and_no_role_is_left(stack: TestStack, tmp_path: Path,
                                                       owners_db: list[str], fmt: str) -> None:
    assert any(" dart_app " in x for x in owners_db) and any(" postgres " in x
                                                             for x in owners_db)
    cfg = stack.write_config(tmp_path, stack={"databases": [DB]}, storage={"db_format": fmt})
    r = run_dcb("backup", "-q", "--db", DB, "--config", str(cfg), timeout=300)
    assert r.code == 0, r.err
    copy = f"{DB}_{secrets.token_hex(3)}"
    # What a run killed during its replay leaves (made more than 15 minutes ago): swept.
    stale = f"dcb_replay_{secrets.token_hex(6)}"
    stack.psql("postgres", f"CREATE ROLE {stale} LOGIN VALID UNTIL "
                           f"'{(datetime.now(UTC) + timedelta(hours=5)).isoformat()}'; "
                           f"CREATE DATABASE {stale}_db OWNER {stale}")
    stack.psql(f"{stale}_db", f"SET ROLE {stale}; CREATE TABLE left_over (x int)")
    # Roles of runs killed minutes ago by other tests stay (younger than 15 minutes).
    before = set(replay_roles(stack)) - {stale}
    r = run_dcb("restore", r.out.strip(), "--db", DB, "--as", copy, "--yes", "--config",
                str(cfg), timeout=300)
    try:
        assert r.code == 0, r.err
        assert "warning" not in r.err, r.err
        assert catalog(stack, copy) == owners_db
        assert stack.table_digest(copy) == stack.table_digest(DB)
        assert set(replay_roles(stack)) <= before  # its own dropped, the stale one swept
    finally:
        stack.psql("postgres", f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE); '
                               f'DROP DATABASE IF EXISTS "{stale}_db" WITH (FORCE)')


DUMP = b"""--
-- Name: app; Type: SCHEMA; Schema: -; Owner: dart_app
--

CREATE SCHEMA app;


ALTER SCHEMA app OWNER TO dart_app;

--
-- Name: f(integer); Type: FUNCTION; Schema: public; Owner: postgres
--

CREATE FUNCTION public.f(a integer) RETURNS integer
    LANGUAGE sql
    AS $$

ALTER TABLE public.t OWNER TO postgres;
SELECT 1 $$;


ALTER FUNCTION public.f(a integer) OWNER TO postgres;

--
-- Name: We ird; Type: TABLE; Schema: public; Owner: we ird
--

CREATE TABLE public."We ird" (
    a integer
);


ALTER TABLE public."We ird" OWNER TO "we ird";

--
-- Data for Name: We ird; Type: TABLE DATA; Schema: public; Owner: we ird
--

COPY public."We ird" (a) FROM stdin;

ALTER TABLE public."We ird" OWNER TO "we ird";

\\.


ALTER TABLE public."We ird" OWNER TO "we ird";

--
-- PostgreSQL database dump complete
--

"""


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
def test_only_pg_dumps_own_owner_statements_are_dropped(size: int) -> None:
    owners = DumpOwners()
    chunks = [DUMP[i:i + size] for i in range(0, len(DUMP), size)]
    out = b"".join(without_owner_statements(iter(chunks), owners))
    kept = DUMP.splitlines(keepends=True)
    # pg_dump's own: after a blank line, the entry's owner, then only its next entry. The
    # same text in the function's body, in COPY data or in a TABLE DATA entry stays.
    for line in (b"ALTER SCHEMA app OWNER TO dart_app;\n",
                 b"ALTER FUNCTION public.f(a integer) OWNER TO postgres;\n",
                 b'ALTER TABLE public."We ird" OWNER TO "we ird";\n'):
        kept.remove(line)
    assert out == b"".join(kept)
    assert owners.owners == {("SCHEMA", "-", "app"): "dart_app",
                             ("FUNCTION", "public", "f(integer)"): "postgres",
                             ("TABLE", "public", "We ird"): "we ird"}


HBA = "/var/lib/postgresql/data/pg_hba.conf"


def _set_hba(stack: TestStack, text: str) -> None:
    subprocess.run(["docker", "exec", "-i", stack.postgres_container, "sh", "-c",
                    f"cat > {HBA}"], input=text.encode(), check=True)
    stack.psql("postgres", "SELECT pg_reload_conf()")


def test_the_role_logs_in_over_tcp_else_the_restore_says_how(stack: TestStack,
                                                             tmp_path: Path) -> None:
    """pg_hba.conf decides how the replay role logs in: over the socket (the images' local
    trust), else over TCP to 127.0.0.1 with its password; if neither, the restore stops with
    one line naming the fix, never falling back to the superuser."""
    db = "dcbt_hba_" + secrets.token_hex(3)
    stack.psql("postgres", f"CREATE DATABASE {db}")
    stack.psql(db, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 10) g")
    original = subprocess.run(["docker", "exec", stack.postgres_container, "cat", HBA],
                              capture_output=True, check=True).stdout.decode()
    try:
        cfg = stack.write_config(tmp_path, stack={"databases": [db]})
        r = run_dcb("backup", "-q", "--db", db, "--config", str(cfg), timeout=300)
        assert r.code == 0, r.err
        set_id = r.out.strip()
        # The socket only for the superuser (as Debian's peer rule would do to other roles).
        _set_hba(stack, "local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        r = run_dcb("restore", set_id, "--db", db, "--as", f"{db}_tcp", "--yes", "--config",
                    str(cfg), timeout=300)
        assert r.code == 0, r.err
        assert stack.table_digest(f"{db}_tcp") == stack.table_digest(db)
        _set_hba(stack, "local all postgres trust\n")
        before = stack.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
        roles = set(replay_roles(stack))
        r = run_dcb("restore", set_id, "--db", db, "--as", f"{db}_none", "--yes", "--config",
                    str(cfg), timeout=300)
        assert r.code == 1, r.err
        line = error_line(r.err)
        assert "lets no unprivileged role log in" in line, line
        assert "127.0.0.1/32 scram-sha-256" in r.err  # the hint
        assert stack.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1") == before
        assert set(replay_roles(stack)) <= roles
    finally:
        _set_hba(stack, original)
        stack.psql("postgres", f"DROP DATABASE IF EXISTS {db}_tcp WITH (FORCE); "
                               f"DROP DATABASE IF EXISTS {db}_none WITH (FORCE); "
                               f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
