"""Pure logic of restores: what pg_dump/pg_dumpall printed about roles and databases, names
within PostgreSQL's identifier limit, undo point ids, Compose hints. No Docker needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcb.services.compose import service_for, up_command
from dcb.services.errors import UsageError
from dcb.services.pg_objects import (
    DATABASE_STATEMENTS,
    MAX_IDENTIFIER_BYTES,
    UnsafeStatement,
    checked_script,
    create_options,
    database_properties,
    fit_identifier,
    parse_globals,
    roles_script,
    statements,
)
from dcb.services.undo import check_restore_id, undo_db_name

# What `pg_restore --create --schema-only` printed for a PostgreSQL 15 dump (trimmed).
ARCHIVE = """\
--
-- PostgreSQL database dump
--

\\restrict he7YE98IeRqcCB4bBqc061lldCHNDO9K931d9JrVxFGjbitAHRomygdJssG4s1h

SET statement_timeout = 0;
SET client_encoding = 'LATIN1';
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: lat-1; Type: DATABASE; Schema: -; Owner: dart_app
--

CREATE DATABASE "lat-1" WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE_PROVIDER = libc \
LOCALE = 'C';


ALTER DATABASE "lat-1" OWNER TO dart_app;

\\unrestrict he7YE98IeRqcCB4bBqc061lldCHNDO9K931d9JrVxFGjbitAHRomygdJssG4s1h
\\encoding SQL_ASCII
\\connect -reuse-previous=on "dbname='lat-1'"

SET statement_timeout = 0;

--
-- Name: DATABASE "lat-1"; Type: COMMENT; Schema: -; Owner: dart_app
--

COMMENT ON DATABASE "lat-1" IS 'a ''comment''; -- not a comment
two lines';


--
-- Name: lat-1; Type: DATABASE PROPERTIES; Schema: -; Owner: dart_app
--

ALTER DATABASE "lat-1" CONNECTION LIMIT = 7;
ALTER DATABASE "lat-1" SET work_mem TO '7MB';
ALTER ROLE dart_app IN DATABASE "lat-1" SET search_path TO 'x';


\\connect -reuse-previous=on "dbname='lat-1'"

SET default_tablespace = '';

--
-- Name: t; Type: TABLE; Schema: public; Owner: postgres
--

CREATE TABLE public.t (
    x text
);

--
-- Name: DATABASE "lat-1"; Type: ACL; Schema: -; Owner: dart_app
--

REVOKE CONNECT,TEMPORARY ON DATABASE "lat-1" FROM PUBLIC;
GRANT TEMPORARY ON DATABASE "lat-1" TO PUBLIC;

--
-- PostgreSQL database dump complete
--
"""

GLOBALS = """\
--
-- PostgreSQL database cluster dump
--

\\restrict UrjiqYOejfrc3IiCS64sHR8AxFupvIE6SbWd0EneiJcZ8JY53araCpwZHC9dHDD

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';

CREATE ROLE dart_app;
ALTER ROLE dart_app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION \
NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS \
PASSWORD 'SCRAM-SHA-256$4096:def';
CREATE ROLE "we ird";
ALTER ROLE "we ird" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION \
NOBYPASSRLS;

ALTER ROLE dart_app SET statement_timeout TO '5000';

GRANT dart_app TO "we ird" GRANTED BY postgres;
GRANT pg_read_all_data TO dart_app GRANTED BY postgres;

CREATE TABLESPACE fast OWNER postgres LOCATION '/fast';

\\unrestrict UrjiqYOejfrc3IiCS64sHR8AxFupvIE6SbWd0EneiJcZ8JY53araCpwZHC9dHDD

--
-- PostgreSQL database cluster dump complete
--
"""


def test_statements_respect_literals_and_entry_types():
    got = list(statements(ARCHIVE))
    comment = [s for k, s in got if k == "COMMENT DATABASE"]
    assert comment == ["COMMENT ON DATABASE \"lat-1\" IS 'a ''comment''; -- not a comment\n"
                       "two lines';"]
    kinds = {k for k, _ in got}
    assert {"DATABASE", "DATABASE PROPERTIES", "ACL DATABASE", "TABLE"} <= kinds
    # After a \connect and before the next entry, statements belong to no entry.
    assert (None, "SET default_tablespace = '';") in got


def test_database_properties_of_an_archive():
    p = database_properties(ARCHIVE, "lat-1")
    assert p.create == (
        "CREATE DATABASE \"lat-1\" WITH TEMPLATE = template0 ENCODING = 'LATIN1' "
        "LOCALE_PROVIDER = libc LOCALE = 'C';",
        'ALTER DATABASE "lat-1" OWNER TO dart_app;')
    assert len(p.after) == 6  # comment, 3 properties, 2 ACL lines; no SET, no table
    assert not any(s.startswith(("SET", "CREATE TABLE")) for s in p.after)
    tmp = p.renamed("lat-1__dcb_restore")
    assert tmp.create[0].startswith('CREATE DATABASE "lat-1__dcb_restore" WITH')
    assert tmp.after[0].startswith('COMMENT ON DATABASE "lat-1__dcb_restore" IS')
    assert 'IN DATABASE "lat-1__dcb_restore" SET' in tmp.after[3]
    # Only the object's name changes, never text inside a literal.
    assert "two lines'" in tmp.after[0] and tmp.after[0].count("lat-1") == 1


def test_properties_compare_by_meaning_not_spelling():
    archive = database_properties(ARCHIVE, "lat-1")
    live_sql = ARCHIVE.replace('"lat-1"', "lat1").replace("lat-1", "lat1").replace(
        "LOCALE = 'C'", "LC_COLLATE = 'C' LC_CTYPE = 'C'").replace("TEMPLATE = template0 ", "")
    live = database_properties(live_sql, "lat1")
    assert archive.renamed("lat1").differences(live) == []
    lost = database_properties(live_sql.replace("work_mem TO '7MB'", "work_mem TO '4MB'")
                               .replace("REVOKE CONNECT,TEMPORARY", "REVOKE TEMPORARY"), "lat1")
    diffs = archive.renamed("lat1").differences(lost)
    assert "property missing: ALTER DATABASE \"lat1\" SET work_mem TO '7MB';" in diffs
    assert any("REVOKE CONNECT,TEMPORARY" in d and "missing" in d for d in diffs)
    assert any("4MB" in d and "not in the backup" in d for d in diffs)


def test_create_options():
    assert create_options("CREATE DATABASE x WITH ENCODING = 'UTF8' LOCALE = 'C.UTF-8' "
                          "LOCALE_PROVIDER = icu ICU_LOCALE = 'und';") == {
        "ENCODING": "'UTF8'", "LC_COLLATE": "'C.UTF-8'", "LC_CTYPE": "'C.UTF-8'",
        "LOCALE_PROVIDER": "icu", "ICU_LOCALE": "'und'"}


def test_fit_identifier_keeps_names_within_63_bytes():
    rid = "restore-20261203T101500Z"
    assert undo_db_name("dart_cloud", rid) == f"dart_cloud__dcb_undo_{rid}"
    long_a = "a" * 40 + "_one"
    long_b = "a" * 40 + "_two"
    na, nb = undo_db_name(long_a, rid), undo_db_name(long_b, rid)
    assert len(na.encode()) <= MAX_IDENTIFIER_BYTES and na.endswith(f"__dcb_undo_{rid}")
    assert na != nb
    wide = fit_identifier("é" * 40, "__dcb_restore")
    assert len(wide.encode()) <= MAX_IDENTIFIER_BYTES
    wide.encode().decode()  # cut on a character boundary
    with pytest.raises(ValueError):
        fit_identifier("x", "_" * 70)


def test_roles_script_creates_only_missing_roles():
    g = parse_globals(GLOBALS)
    assert set(g.roles) == {"dart_app", "postgres", "we ird"}
    script, created = roles_script(g, existing={"postgres", "dart_app", "pg_read_all_data"})
    assert created == ["we ird"]
    lines = script.splitlines()
    assert 'CREATE ROLE "we ird";' in lines
    assert 'GRANT dart_app TO "we ird" GRANTED BY postgres;' in lines  # involves a new role
    assert not any("ROLE postgres" in x or "ROLE dart_app" in x for x in lines)
    assert "GRANT pg_read_all_data TO dart_app GRANTED BY postgres;" not in lines
    assert not any(x.startswith(("\\", "CREATE TABLESPACE")) for x in lines)
    # psql reads the literals as dcb checked them (services/pg_objects.checked_script).
    assert lines[:2] == ["SET standard_conforming_strings = on;",
                         "SET default_transaction_read_only = off;"]


def test_roles_script_with_reset_replays_everything():
    g = parse_globals(GLOBALS)
    script, created = roles_script(g, existing={"postgres", "dart_app"}, reset_existing=True)
    lines = script.splitlines()
    assert created == ["we ird"]
    assert "CREATE ROLE postgres;" not in lines  # exists: altered, not created
    assert 'ALTER ROLE "dart_app" CONNECTION LIMIT -1;' in lines
    assert lines.index('ALTER ROLE "dart_app" RESET ALL;') < \
        lines.index("ALTER ROLE dart_app SET statement_timeout TO '5000';")
    assert "GRANT pg_read_all_data TO dart_app GRANTED BY postgres;" in lines
    assert "CREATE TABLESPACE fast OWNER postgres LOCATION '/fast';" in lines


def test_restore_ids_are_checked():
    assert check_restore_id("restore-20261203T101500Z-2") == "restore-20261203T101500Z-2"
    for bad in ("../../x", "restore-2026", "20261203T101500Z", "restore-20261203T101500Z/.."):
        with pytest.raises(UsageError):
            check_restore_id(bad)


def test_compose_hint_names_the_service(tmp_path: Path):
    f = tmp_path / "docker-compose.yml"
    f.write_text("version: '3'\nservices:\n  backend:\n    image: app\n"
                 "    depends_on: [db]\n  db:  # the database\n    image: postgres:15\n"
                 "    container_name: \"dart-cloud-postgres\"\nvolumes:\n  pg: {}\n")
    labels = {"com.docker.compose.project": "dart",
              "com.docker.compose.project.working_dir": str(tmp_path),
              "com.docker.compose.project.config_files": str(f)}
    assert service_for("dart-cloud-postgres", labels) == "db"
    assert service_for("dart-postgres-1", labels) == "postgres"  # Compose's own naming
    assert up_command("dart-cloud-postgres", labels) == (
        f"docker compose --project-directory {tmp_path} -f {f} -p dart up -d db")
    assert up_command("x", {}) == "docker compose up -d SERVICE"


@pytest.mark.parametrize("line", [
    # psql reads E'\'' as one quote: the COPY would be a statement of its own.
    "ALTER ROLE \"we ird\" SET search_path TO E'\\''; COPY (SELECT 1) TO PROGRAM 'touch m'; --'",
    "SET client_encoding = 'UTF8'; COPY (SELECT 1) TO PROGRAM 'touch m';",
    "SET standard_conforming_strings = off;",
    "ALTER ROLE \"we ird\" SET search_path TO $$x$$;",
    "ALTER ROLE \"we ird\" SET search_path TO 'x' \\! touch m",
])
def test_a_crafted_roles_file_is_refused_whole(line: str) -> None:
    g = parse_globals(GLOBALS.replace("CREATE ROLE \"we ird\";", "CREATE ROLE \"we ird\";\n"
                                      + line))
    with pytest.raises(UnsafeStatement, match="will not run as the superuser"):
        roles_script(g, existing={"postgres", "dart_app"})


def test_database_properties_run_as_the_superuser_are_plain_statements() -> None:
    props = database_properties(ARCHIVE, "lat-1")
    script = "\n".join((*props.create, *props.after)) + "\n"
    assert checked_script(script, DATABASE_STATEMENTS, "x").endswith(script)
    # A comment whose text ends the statement for psql but not for a naive reader, and a
    # statement that only names the database in a literal.
    for bad in ["COMMENT ON DATABASE \"lat-1\" IS E'\\''; COPY (SELECT 1) TO PROGRAM 'x'; --'",
                "COPY (SELECT 'DATABASE \"lat-1\"') TO PROGRAM 'touch m';",
                "GRANT pg_execute_server_program TO \"DATABASE lat-1\";"]:
        with pytest.raises(UnsafeStatement):
            checked_script(script + bad + "\n", DATABASE_STATEMENTS, "x")
