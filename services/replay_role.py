"""The session that replays a dump: a login role of its own, never a superuser.

A dump may come from a destination someone else controls. Replayed by the superuser, its
``COPY ... TO PROGRAM``, ``COPY ... TO '/file'``, ``lo_export``, ``ALTER SYSTEM`` or an
untrusted language would run with the server's full power (``DO``/``EXECUTE`` defeat any
text filter). So psql and pg_restore log in as a temporary role made for one database's
replay, ``dcb_replay_<random>``: ``NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
NOBYPASSRLS``, a member of no role at all (membership in an application role would let the
dump ``SET ROLE`` to it and change that role's password or its live databases' settings),
owner of the temporary database it fills and of nothing else. PostgreSQL itself then refuses
everything only a superuser (or ``pg_execute_server_program`` and friends) may do.

The role cannot give its objects away (``ALTER ... OWNER TO`` needs membership in the new
owner), so the replay runs without the dump's ownership statements (``pg_restore
--no-owner``; in a plain dump, pg_dump's own ``ALTER ... OWNER TO`` lines are dropped by
:func:`without_owner_statements`) and dcb gives each object the owner the dump names
afterwards, as the superuser, with SQL of its own: the object's identity comes from the server
(``pg_identify_object``), the keyword from a fixed table, the owner as a quoted identifier.
Grants the role made move to the new owner with the object (``ALTER ... OWNER`` rewrites the
ACL), so ownership and ACLs come back as they were.

Its password is random, stored as a SCRAM verifier computed here (the server, and any
statement log, never sees the password), and given to psql/pg_restore in the exec's
environment only. The role is dropped when the replay ends, failed or not; a role left by a
killed run (``VALID UNTIL`` passed, no session) is dropped by the next replay.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dcb.services.errors import DcbError
from dcb.services.pg_objects import ident, literal, statements, unquote

PREFIX = "dcb_replay_"
VALID_HOURS = 6
"""The role's password expires then (it is needed only to log in, at the replay's start)."""
STALE_MINUTES = 15
"""A replay role older than this without a session was left by a killed run."""

ALTER_KEYWORD = {
    "TABLE": "TABLE", "VIEW": "TABLE", "SEQUENCE": "TABLE", "MATERIALIZED VIEW": "TABLE",
    "FOREIGN TABLE": "FOREIGN TABLE", "SCHEMA": "SCHEMA", "TYPE": "TYPE", "DOMAIN": "DOMAIN",
    "FUNCTION": "FUNCTION", "PROCEDURE": "PROCEDURE", "AGGREGATE": "AGGREGATE",
    "BLOB": "LARGE OBJECT", "LARGE OBJECT": "LARGE OBJECT", "COLLATION": "COLLATION",
    "CONVERSION": "CONVERSION", "TEXT SEARCH DICTIONARY": "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH CONFIGURATION": "TEXT SEARCH CONFIGURATION", "OPERATOR": "OPERATOR",
    "OPERATOR CLASS": "OPERATOR CLASS", "OPERATOR FAMILY": "OPERATOR FAMILY",
    "STATISTICS": "STATISTICS", "PUBLICATION": "PUBLICATION", "SERVER": "SERVER",
    "FOREIGN DATA WRAPPER": "FOREIGN DATA WRAPPER", "EVENT TRIGGER": "EVENT TRIGGER",
    "PROCEDURAL LANGUAGE": "LANGUAGE", "SUBSCRIPTION": "SUBSCRIPTION",
}
"""pg_dump's entry types that carry an owner -> the ``ALTER <keyword>`` that sets it."""

_HEADER = re.compile(r"-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z ]+); "
                     r"Schema: (?P<schema>.*); Owner: (?P<owner>.*)")
_OWNER_STMT = re.compile(rb'ALTER [A-Z ]+ .+ OWNER TO ("(?:[^"\n]|"")+"|[a-z_][a-z0-9_$]*);\r?\n')
_ID = r'(?:"(?:[^"\x00-\x1f]|"")+"|[a-z_][a-z0-9_$]*)'
_PRIVS = (r"(?:ALL|(?:SELECT|INSERT|UPDATE|DELETE|TRUNCATE|REFERENCES|TRIGGER|USAGE|EXECUTE"
          r"|CREATE|MAINTAIN)(?:,(?:SELECT|INSERT|UPDATE|DELETE|TRUNCATE|REFERENCES|TRIGGER"
          r"|USAGE|EXECUTE|CREATE|MAINTAIN))*)")
_ON = r" ON (?:TABLES|SEQUENCES|FUNCTIONS|TYPES|SCHEMAS)  "
DEFAULT_ACL = re.compile(
    rf"ALTER DEFAULT PRIVILEGES FOR ROLE {_ID}(?: IN SCHEMA {_ID})? "
    rf"(?:GRANT {_PRIVS}{_ON}TO (?:{_ID}|PUBLIC)(?: WITH GRANT OPTION)?"
    rf"|REVOKE(?: GRANT OPTION FOR)? {_PRIVS}{_ON}FROM (?:{_ID}|PUBLIC));")
"""pg_dump's default privileges statements, exactly: identifiers, fixed words, nothing else.
The replay role may not run them for another role (``FOR ROLE`` needs membership), so dcb runs
them as the superuser after the replay, only when they match this whole."""
_ENTRY_START = (b"-- Name: ", b"-- Data for Name: ", b"-- PostgreSQL database dump complete")

# The live objects the role owns in the current database, keyed like pg_dump's entries.
OWNED_SQL = """
SELECT coalesce(json_agg(json_build_array(d.classid::int8, d.objid::int8, k.kind,
                                          coalesce(i.schema, '-'), k.name, i.identity)), '[]')
FROM (SELECT classid, objid FROM pg_shdepend
      WHERE refclassid = 'pg_authid'::regclass AND deptype = 'o'
        AND refobjid = (SELECT oid FROM pg_roles WHERE rolname = {role})
        AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
      {extra}) d
CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, 0) i
CROSS JOIN LATERAL (SELECT
  CASE d.classid
    WHEN 'pg_class'::regclass THEN (SELECT CASE c.relkind WHEN 'r' THEN 'TABLE'
        WHEN 'p' THEN 'TABLE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
        WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'c' THEN 'TYPE' END
        FROM pg_class c WHERE c.oid = d.objid)
    WHEN 'pg_type'::regclass THEN (SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE'
        END FROM pg_type t WHERE t.oid = d.objid)
    WHEN 'pg_proc'::regclass THEN (SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE'
        WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END FROM pg_proc p WHERE p.oid = d.objid)
    WHEN 'pg_largeobject'::regclass THEN 'BLOB'
    WHEN 'pg_language'::regclass THEN 'PROCEDURAL LANGUAGE'
    WHEN 'pg_statistic_ext'::regclass THEN 'STATISTICS'
    WHEN 'pg_foreign_data_wrapper'::regclass THEN 'FOREIGN DATA WRAPPER'
    ELSE upper(i.type) END AS kind,
  CASE d.classid
    WHEN 'pg_class'::regclass THEN (SELECT relname FROM pg_class WHERE oid = d.objid)
    WHEN 'pg_type'::regclass THEN (SELECT typname FROM pg_type WHERE oid = d.objid)
    WHEN 'pg_namespace'::regclass THEN (SELECT nspname FROM pg_namespace WHERE oid = d.objid)
    WHEN 'pg_proc'::regclass THEN (SELECT p.proname || '(' || CASE WHEN p.prokind = 'a'
        AND p.pronargs = 0 THEN '*' ELSE oidvectortypes(p.proargtypes) END || ')'
        FROM pg_proc p WHERE p.oid = d.objid)
    WHEN 'pg_largeobject'::regclass THEN d.objid::text
    ELSE i.name END AS name) k
"""
PUBLIC_SCHEMA = ("UNION SELECT 'pg_namespace'::regclass::oid, oid FROM pg_namespace "
                 "WHERE nspname = 'public'")
"""The schema that exists before the replay (owned by ``pg_database_owner`` since PostgreSQL
15): a dump may give it an owner (``ALTER SCHEMA public OWNER TO ...``, from older clusters)."""


class ReplayError(DcbError):
    """The unprivileged replay session cannot be set up."""


# -- what the dump says about owners ---------------------------------------------------------------
@dataclass
class DumpOwners:
    """``(entry type, schema, name) -> owner`` from pg_dump's ``-- Name: ...`` headers."""

    owners: dict[tuple[str, str, str], str] = field(default_factory=dict)
    default_acls: list[str] = field(default_factory=list)
    """The dump's ``DEFAULT ACL`` statements, run by dcb after the replay (:data:`DEFAULT_ACL`)."""

    def header(self, line: str) -> tuple[str, str] | None:
        """Read one comment line; ``(entry type, owner)`` when it is an entry's header."""
        m = _HEADER.fullmatch(line.rstrip("\r\n"))
        if m is None:
            return None
        kind, owner = m["type"].strip(), m["owner"]
        if kind in ALTER_KEYWORD and owner and owner != "-":
            self.owners[(kind, m["schema"], m["name"])] = owner
        return kind, owner

    def read(self, sql: str) -> DumpOwners:
        """All headers and default privileges of a script (``pg_restore --schema-only -f -``
        of an archive)."""
        for line in sql.splitlines():
            if line.startswith("-- Name: "):
                self.header(line)
        self.default_acls += [st for kind, st in statements(sql) if kind == "DEFAULT ACL"]
        return self

    def read_list(self, listing: str) -> DumpOwners:
        """Large objects' owners from a ``pg_restore --list`` (``--schema-only`` has none)."""
        for m in _LIST_BLOB.finditer(listing):
            self.owners[("BLOB", "-", m[1])] = m[2]
        return self

    def owner_of(self, kind: str, schema: str, name: str) -> str | None:
        for k in _aliases(kind):
            if (owner := self.owners.get((k, schema, name))) is not None:
                return owner
        return None


def _aliases(kind: str) -> tuple[str, ...]:
    return {"BLOB": ("BLOB", "LARGE OBJECT"), "TYPE": ("TYPE",)}.get(kind, (kind,))


def without_owner_statements(chunks: Iterable[bytes], owners: DumpOwners) -> Iterator[bytes]:
    """A plain dump without pg_dump's own ``ALTER ... OWNER TO`` statements (the replay role
    could not run them), noting every entry's owner in ``owners`` on the way.

    A line is dropped only when it is exactly pg_dump's: outside COPY data, after a blank
    line, naming the owner of the entry's header, and the last statement of its entry (only
    blank lines and the archiver's ``SET default_...`` lines, then ``--`` and the next
    entry's header, follow it). Anything else passes, so
    a dump that hides an ownership change elsewhere fails the replay (the role may not
    run it); dropping a line never gives the dump more power. COPY data is passed on in
    whole chunks, searched only for its end marker.
    """
    buf = b""
    in_copy = False
    entry: tuple[str, str] | None = None
    prev_blank = False
    held: list[bytes] = []
    """A candidate owner statement and the lines after it, until the next entry decides."""

    def line_out(line: bytes) -> list[bytes]:
        nonlocal in_copy, entry, prev_blank, held
        out: list[bytes] = []
        if held:
            bare = line.rstrip(b"\r\n")
            if len(held) < 12 and (not bare.strip() or bare == b"--" or (
                    bare.startswith(b"SET ") and bare.endswith(b";"))):
                held.append(line)  # blank lines, pg_restore's SETs between entries, "--"
                return out
            if line.startswith(_ENTRY_START) and held[-1].rstrip(b"\r\n") == b"--":
                out += held[1:]  # pg_dump's ownership statement: dropped
            else:
                out += held
            held = []
        if line.startswith(b"-- "):
            h = owners.header(line.decode("utf-8", "replace"))
            if h is not None:
                entry = h
        elif (entry is not None and entry[0] == "DEFAULT ACL"
              and line.startswith(b"ALTER DEFAULT PRIVILEGES ")
              and DEFAULT_ACL.fullmatch(text := line.decode("utf-8", "replace").rstrip("\r\n"))):
            owners.default_acls.append(text)  # run by dcb after the replay
            return out
        elif (prev_blank and entry is not None and entry[0] in ALTER_KEYWORD
              and line.startswith(b"ALTER ") and (m := _OWNER_STMT.fullmatch(line))
              and unquote(m[1].decode("utf-8", "replace")) == entry[1]):
            held = [line]
            prev_blank = False
            return out
        elif line.startswith(b"COPY ") and line.rstrip(b"\r\n").endswith(b" FROM stdin;"):
            in_copy = True
        prev_blank = line.strip() == b""
        out.append(line)
        return out

    for chunk in chunks:
        buf += chunk
        out: list[bytes] = []
        pos = 0
        while pos < len(buf):
            if in_copy:
                end = _copy_end(buf, pos)
                if end < 0:
                    cut = buf.rfind(b"\n", pos) + 1
                    if cut > pos:
                        out.append(buf[pos:cut])
                        pos = cut
                    break
                out.append(buf[pos:end])
                pos = end
                in_copy = False
                prev_blank = False
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            out += line_out(buf[pos:nl + 1])
            pos = nl + 1
        buf = buf[pos:]
        if out:
            yield b"".join(out)
    tail = held + ([buf] if buf else [])
    if tail:
        yield b"".join(tail)


def _copy_end(buf: bytes, pos: int) -> int:
    """The offset just after the ``\\.`` line that ends COPY data at or after ``pos``, or -1."""
    i = pos
    while True:
        i = buf.find(b"\\.", i)
        if i < 0:
            return -1
        if i == pos or buf[i - 1] == 0x0A:
            rest = buf[i + 2:i + 4]
            if rest.startswith(b"\n"):
                return i + 3
            if rest == b"\r\n":
                return i + 4
            if len(rest) < 2 and not rest.startswith(b"\n"):
                return -1  # the line's end is in the next chunk
        i += 2


# -- the role ---------------------------------------------------------------------------------
def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The ``SCRAM-SHA-256$...`` verifier PostgreSQL stores for ``password`` (RFC 5802/7677),
    so the statement that creates the role never holds the password itself."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class ReplayRole:
    """One database's replay session (see the module's docstring). ``pg`` is the superuser's
    gateway; :meth:`open` makes the role and gives it database ``db``; :meth:`gateway` is how
    psql/pg_restore log in as it; :meth:`finish` gives the database and
    every object the owners they had; :meth:`drop` (always) removes the role."""

    def __init__(self, pg: Any, db: str, warn: Callable[[str], None] | None = None,
                 run: str = "") -> None:
        self.pg = pg
        self.db = db
        self.tag = PREFIX + hashlib.sha256(run.encode()).hexdigest()[:6] + "_"
        """Shared by the roles of one restore (``run``: its id), which may replay several
        databases at once: the sweep never takes a role of its own run."""
        self.name = self.tag + secrets.token_hex(4)
        self._password = secrets.token_urlsafe(32)
        self.host: str | None = None
        self.db_owner = ""
        self.created = False
        self.warn = warn or (lambda _m: None)

    def open(self) -> ReplayRole:
        pg = self.pg
        until = (datetime.now(UTC) + timedelta(hours=VALID_HOURS)).isoformat(timespec="seconds")
        mine = literal(self.tag.replace("_", "\\_") + "%")
        owner, _, stale = pg.query(
            f"SELECT pg_get_userbyid(datdba) || '|' || ({STALE_SQL} AND r.rolname NOT LIKE "
            f"{mine}) FROM pg_database WHERE datname = {literal(self.db)}").strip().partition("|")
        for role in stale.split(","):
            if role.startswith(PREFIX):
                drop_role(pg, role)
        self.db_owner = owner
        pg.run_script(
            f"CREATE ROLE {ident(self.name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
            "NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT -1 "
            f"PASSWORD {literal(scram_verifier(self._password))} VALID UNTIL {literal(until)};\n"
            f"ALTER DATABASE {ident(self.db)} OWNER TO {ident(self.name)};\n",
            what="creating the restore's unprivileged role")
        self.created = True
        try:
            self._login()
        except BaseException:
            self.drop()
            raise
        return self

    def _login(self) -> None:
        """Log in once, over the socket, else over TCP to 127.0.0.1 (pg_hba.conf decides),
        and check that the session is no superuser."""
        errors: list[str] = []
        for host in (None, "127.0.0.1"):
            self.host = host
            try:
                out = self.gateway(self.pg).query(
                    "SELECT current_setting('is_superuser')", db=self.db, timeout=60)
            except DcbError as e:
                why = e.message.split("FATAL:", 1)[-1].split(", user ", 1)[0].strip()
                errors.append(f"{host or 'socket'}: {why}")
                continue
            if out.strip() != "off":
                raise ReplayError(f"the restore's role {self.name} is a superuser")
            return
        container = getattr(self.pg, "container", "the PostgreSQL container")
        fix = ("allow password logins from the container itself in pg_hba.conf, e.g. "
               "'host all all 127.0.0.1/32 scram-sha-256' (the official image does)")
        raise ReplayError(
            f"PostgreSQL in {container} lets no unprivileged role log in from inside its "
            f"container, and a dump is never replayed as the superuser: {fix} "
            f"({'; '.join(errors)})", hint=fix)

    def gateway(self, pg: Any) -> Any:
        """``pg`` (possibly watched by a step's guard) logging in as the role."""
        return pg.login_as(self.name, self._password, self.host)

    def finish(self, owners: DumpOwners) -> None:
        """The database back to its owner; every object the role made to the owner the dump
        names (the superuser's own SQL, see the module's docstring); the role dropped. Two
        psql runs: it is on every database's path."""
        pg = self.pg
        bad = next((x for x in owners.default_acls if not DEFAULT_ACL.fullmatch(x)), None)
        if bad is not None:
            raise ReplayError(f"the dump's default privileges are not pg_dump's: {bad[:120]!r}")
        owned = OWNED_SQL.format(role=literal(self.name), extra="")
        objects = json.loads(pg.query(
            f"ALTER DATABASE {ident(self.db)} OWNER TO {ident(self.db_owner)}; "
            + OWNED_SQL.format(role=literal(self.name), extra=PUBLIC_SCHEMA),
            db=self.db) or "[]")
        todo: list[list[Any]] = []
        for classid, objid, kind, schema, name, _identity in objects:
            owner = owners.owner_of(kind, schema, name) if kind and name else None
            if owner is not None and kind in ALTER_KEYWORD:
                todo.append([int(classid), int(objid), ALTER_KEYWORD[kind], owner])
        role = ident(self.name)
        script = (owner_script(todo) if todo else "") + "".join(
            x + "\n" for x in owners.default_acls) + (
            f"{owned};\nREASSIGN OWNED BY {role} TO CURRENT_USER;\nDROP OWNED BY {role};\n"
            f"DROP ROLE {role};\n")
        out = pg.script_output(script, db=self.db, what="giving the restored objects their "
                                                        "owners")
        self.created = False
        left = [x for x in json.loads(out.strip() or "[]") if x[2] != "EXTENSION"]
        if left:
            shown = ", ".join(str(x[5]) for x in left[:3]) + (" ..." if len(left) > 3 else "")
            self.warn(f"{len(left)} object(s) in {self.db} whose owner the dump does not name "
                      f"or does not exist here are owned by {pg.user}: {shown}")

    def drop(self) -> None:
        """Remove the role if :meth:`finish` did not (whatever it still owns goes to the
        superuser first)."""
        if self.created:
            drop_role(self.pg, self.name)
            self.created = False


def owner_script(todo: list[list[Any]]) -> str:
    """One ``DO`` block giving each ``[classid, objid, keyword, owner]`` its owner. Only
    numbers, keywords of :data:`ALTER_KEYWORD` and owner names (as data, quoted by
    ``format('%I')``) come in; the object's identity is the server's. One that fails (its
    owner missing here) stays the role's and is reported."""
    payload = json.dumps([dict(zip("cokw", r, strict=True)) for r in todo])
    tag = "$dcb_" + secrets.token_hex(8) + "$"
    if tag in payload:  # cannot be guessed; refuse rather than mis-quote
        raise ReplayError("cannot quote the ownership map")
    assert all(r[2] in ALTER_KEYWORD.values() for r in todo)
    return (f"DO {tag}\nDECLARE r record;\nBEGIN\n"
            f"  FOR r IN SELECT * FROM json_to_recordset({literal(payload)}::json)\n"
            "      AS x(c int8, o int8, k text, w text) LOOP\n"
            "    BEGIN\n"
            "      EXECUTE format('ALTER %s %s OWNER TO %I', r.k,\n"
            "                     (pg_identify_object(r.c::oid, r.o::oid, 0)).identity, r.w);\n"
            "    EXCEPTION WHEN OTHERS THEN NULL;\n"
            "    END;\n"
            f"  END LOOP;\nEND {tag};\n")


def drop_role(pg: Any, role: str) -> None:
    """Give what ``role`` owns to the superuser, revoke its privileges in every database
    where it has any, drop it. Errors are left to the next sweep (cleanup only)."""
    name = literal(role)
    with contextlib.suppress(DcbError):
        dbs = pg.query(
            "SELECT DISTINCT d.datname FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = {name}) "
            "AND d.datallowconn").split("\n")
        for db in sorted({d for d in dbs if d} | {"postgres"}):
            with contextlib.suppress(DcbError):
                pg.run_script(f"REASSIGN OWNED BY {ident(role)} TO CURRENT_USER;\n"
                              f"DROP OWNED BY {ident(role)};\n", db=db,
                              what=f"removing the restore's role {role}")
        with contextlib.suppress(DcbError):
            pg.query(f"DROP ROLE IF EXISTS {ident(role)}")


STALE_SQL = (
    "SELECT coalesce(string_agg(r.rolname, ','), '') FROM pg_roles r "
    "WHERE r.rolname LIKE 'dcb\\_replay\\_%' "
    f"AND r.rolvaliduntil < now() + interval '{VALID_HOURS * 60 - STALE_MINUTES} minutes' "
    "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usename = r.rolname)")
"""Replay roles left by killed runs: made more than :data:`STALE_MINUTES` ago (read from
``VALID UNTIL``) and without a session. A live run's role has one from its first minute until
its replay ends; the roles of the same restore (databases replayed at once) are never taken.
Dropped by the next replay's :meth:`ReplayRole.open`."""


def replay_roles(pg: Any) -> set[str]:
    """The replay roles that exist (tests and ``dcb check`` look)."""
    return {r for r in pg.role_names() if r.startswith(PREFIX)}


def list_without_default_acls(listing: str) -> str:
    """A ``pg_restore --list`` with the ``DEFAULT ACL`` entries commented out (for ``-L``):
    dcb runs those itself (:data:`DEFAULT_ACL`). The entry type follows the dump id and
    two OIDs, so no object name can pose as one."""
    return "".join(";" + x if _LIST_DEFAULT_ACL.match(x) else x
                   for x in listing.splitlines(keepends=True))


_LIST_DEFAULT_ACL = re.compile(r"\d+; \d+ \d+ DEFAULT ACL ")
_LIST_BLOB = re.compile(r"^\d+; \d+ \d+ (?:BLOB|LARGE OBJECT) - (\d+) (.+?)\r?$", re.M)
