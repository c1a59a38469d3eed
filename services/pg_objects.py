"""Reading what pg_dump and pg_dumpall wrote about roles and databases: pure logic, no I/O.

A restore must not replay a whole ``pg_dumpall --globals-only`` over a live cluster (that
resets every role's attributes and password, ``postgres`` included): :func:`roles_script`
keeps only what creates missing roles, unless the user asked for ``--roles``.

A database must come back with its own properties (encoding, locale, owner, settings,
comment, grants). pg_dump keeps them in the archive's DATABASE entries, printed by
``pg_restore --create``; the same statements are printed for a live database by
``pg_dump --create --schema-only --exclude-schema=*``. :func:`database_properties` reads
either, so a restore can recreate them under a temporary name and verify them afterwards.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from dcb.services.errors import DcbError

MAX_IDENTIFIER_BYTES = 63  # NAMEDATALEN - 1: PostgreSQL silently truncates longer names

_IDENT = r'(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({_IDENT});$")
_ALTER_ROLE = re.compile(rf"^ALTER ROLE ({_IDENT}) ")
_GRANT_ROLE = re.compile(rf"^GRANT ({_IDENT}) TO ({_IDENT})[ ;]")
_DATABASE_REF = re.compile(rf"\bDATABASE\s+({_IDENT})")
_HEADER = re.compile(r"^-- Name: (?P<name>.*); Type: (?P<type>[A-Z ]+); Schema: ")
_DB_TYPES = ("DATABASE", "DATABASE PROPERTIES")
_DB_OBJECT_TYPES = ("COMMENT", "ACL", "SECURITY LABEL")


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A quoted SQL string (standard_conforming_strings on)."""
    return "'" + value.replace("'", "''") + "'"


def unquote(token: str) -> str:
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        return token[1:-1].replace('""', '"')
    return token


def fit_identifier(base: str, suffix: str) -> str:
    """``base + suffix`` within PostgreSQL's 63-byte identifier limit.

    When too long, ``base`` is cut (on a character boundary) and a short hash of the whole
    base keeps two long names that share a prefix apart.
    """
    name = base + suffix
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    tag = "_" + hashlib.sha256(base.encode()).hexdigest()[:6]
    room = MAX_IDENTIFIER_BYTES - len((tag + suffix).encode())
    if room < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name")
    cut = base.encode()[:room].decode("utf-8", "ignore")
    return cut + tag + suffix


# -- statements ---------------------------------------------------------------------------------
def statements(sql: str) -> Iterator[tuple[str | None, str]]:
    """``(entry type, statement)`` for each SQL statement of a pg_dump/pg_restore script.

    The entry type comes from the ``-- Name: ...; Type: ...`` comment before it (None before
    the first, and after a ``\\connect``). String literals and quoted identifiers are read
    whole, so a ``;`` or a comment marker inside a database comment is no statement end.
    psql meta-commands (``\\connect``, ``\\restrict``...) and ``--`` comments are skipped.
    """
    kind: str | None = None
    i, n = 0, len(sql)
    while i < n:
        while i < n and sql[i] in " \t\r\n":
            i += 1
        if i >= n:
            return
        if sql.startswith("--", i) or sql[i] == "\\":
            end = sql.find("\n", i)
            end = n if end < 0 else end
            line = sql[i:end]
            if m := _HEADER.match(line):
                name, kind = m["name"], m["type"].strip()
                if kind in _DB_OBJECT_TYPES and name.startswith("DATABASE "):
                    kind = f"{kind} DATABASE"
            elif line.startswith("\\connect"):
                kind = None
            i = end + 1
            continue
        j = i
        while j < n and sql[j] != ";":
            q = sql[j]
            if q in ("'", '"'):
                j += 1
                while j < n:
                    if sql[j] == q:
                        if j + 1 < n and sql[j + 1] == q:
                            j += 2
                            continue
                        break
                    j += 1
            j += 1
        text = sql[i:j].strip()
        if text:
            yield kind, text + ";"
        i = j + 1


# -- SQL that dcb runs as the superuser -----------------------------------------------------------
class UnsafeStatement(DcbError):
    """A backup's roles or database properties hold SQL dcb will not run as the superuser."""


_TOKEN = re.compile(r'\s+|"(?:[^"]|"")*"' r"|'(?:[^']|'')*'"
                    r"|[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*|\d+(?:\.\d+)?|-\d+|[,=.]")
_WORD_START = re.compile(r"[A-Za-z0-9_\x80-\uffff]")
GLOBALS_STATEMENTS = re.compile(
    r"(?:CREATE|ALTER|COMMENT ON) (?:ROLE|TABLESPACE) |(?:GRANT|REVOKE) |SECURITY LABEL ")
"""What a roles script may hold (with ``SET`` of the preamble, see :func:`plain_statements`)."""
DATABASE_STATEMENTS = re.compile(
    rf"(?:CREATE|ALTER) DATABASE |COMMENT ON DATABASE |ALTER ROLE {_IDENT} IN DATABASE "
    rf"|(?:GRANT|REVOKE)(?: GRANT OPTION FOR)? [A-Z, ]+ ON DATABASE "
    rf"|SECURITY LABEL (?:FOR {_IDENT} )?ON DATABASE ")
"""What a database's properties may hold."""
_PREAMBLE = re.compile(r"SET (?:client_encoding = '[A-Za-z0-9_-]+'|default_transaction_read_only"
                       r" = off|standard_conforming_strings = on);")


def plain_statements(script: str) -> list[str] | None:
    """The statements of ``script`` when it is made of plain tokens only: identifiers,
    standard string literals (no ``E''``, no dollar quotes), words, numbers, ``, = .``; else
    None. Such a script splits at its semicolons the same way for dcb, psql and the server
    (no comment, parenthesis, backslash or escape can make one statement two), so the first
    words of each statement say what it is."""
    out: list[str] = []
    start = i = 0
    prev_word = False
    while i < len(script):
        if script[i] == ";":
            out.append(script[start:i + 1].strip())
            start = i = i + 1
            prev_word = False
            continue
        m = _TOKEN.match(script, i)
        if m is None:
            return None
        tok = m.group()
        if tok[0] in "'\"" and prev_word:
            return None  # E'...', U&"...", B'...': not plain
        prev_word = bool(_WORD_START.match(tok))
        i = m.end()
    return out if not script[start:].strip() else None


def checked_script(script: str, allowed: re.Pattern[str], what: str) -> str:
    """``script`` if every statement is plain (:func:`plain_statements`) and starts as
    ``allowed`` says: ``SET standard_conforming_strings = on`` first, so psql reads the
    literals as dcb did. Else :class:`UnsafeStatement`: it was written by someone else."""
    stmts = plain_statements(script)
    bad = None if stmts is not None else script.strip()[:100]
    for st in stmts or []:
        if not (allowed.match(st) or _PREAMBLE.fullmatch(st)):
            bad = st[:100]
            break
    if bad is not None:
        raise UnsafeStatement(f"{what} hold SQL that dcb will not run as the superuser: "
                              f"{bad!r}", hint="the backup was not written by pg_dump as is; "
                                               "restore it with --as elsewhere to inspect it")
    return "SET standard_conforming_strings = on;\n" + script


# -- roles ----------------------------------------------------------------------------------------
@dataclass
class Globals:
    """A ``pg_dumpall --globals-only`` script, by role."""

    preamble: list[str] = field(default_factory=list)
    """``SET`` lines: kept in every script made from it."""
    roles: dict[str, list[str]] = field(default_factory=dict)
    """Role -> its CREATE ROLE, ALTER ROLE ... WITH and ALTER ROLE ... SET lines."""
    memberships: list[tuple[str, str, str]] = field(default_factory=list)
    """(granted role, member, GRANT line)."""
    other: list[str] = field(default_factory=list)
    """Everything else (tablespaces, parameter grants): replayed with ``--roles`` only."""


def parse_globals(sql: str) -> Globals:
    g = Globals()
    for line in sql.splitlines():
        s = line.strip()
        if not s or s.startswith("--"):
            continue
        if s.startswith("\\"):
            continue  # psql meta-commands (\restrict): not needed for the lines kept
        if s.startswith("SET "):
            g.preamble.append(s)
        elif (m := _CREATE_ROLE.match(s)) or (m := _ALTER_ROLE.match(s)):
            g.roles.setdefault(unquote(m[1]), []).append(s)
        elif m := _GRANT_ROLE.match(s):
            g.memberships.append((unquote(m[1]), unquote(m[2]), s))
        else:
            g.other.append(s)
    return g


def roles_script(g: Globals, existing: set[str], reset_existing: bool = False
                 ) -> tuple[str, list[str]]:
    """The SQL that brings the backup's roles into a cluster that has ``existing`` roles,
    and the roles it creates.

    By default only missing roles are created (with their attributes, password and settings)
    and only memberships that involve a created role are granted: existing roles are left
    exactly as they are. ``reset_existing`` (``--roles``) replays everything, resetting
    existing roles to the backup's attributes, passwords and memberships.
    """
    lines = list(g.preamble)
    created = [r for r in g.roles if r not in existing]
    for role, stmts in g.roles.items():
        if role in existing and not reset_existing:
            continue
        if role in existing:
            # --roles over an existing role: back to defaults, then the backup's ALTER ROLE
            # lines (pg_dumpall leaves out what is at its default).
            lines += [f"ALTER ROLE {ident(role)} CONNECTION LIMIT -1;",
                      f"ALTER ROLE {ident(role)} RESET ALL;"]
        for s in stmts:
            if s.startswith("CREATE ROLE ") and role in existing:
                continue
            lines.append(s)
    new = set(created)
    for granted, member, s in g.memberships:
        if reset_existing or granted in new or member in new:
            lines.append(s)
    if reset_existing:
        lines += g.other
    script = checked_script("\n".join(lines) + "\n", GLOBALS_STATEMENTS, "the backup's roles")
    return script, created


# -- database properties --------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseProperties:
    """A database's own properties as pg_dump prints them.

    ``create``: the CREATE DATABASE and ALTER DATABASE ... OWNER statements (encoding, locale,
    owner); ``after``: comment, settings (``ALTER DATABASE/ROLE ... SET``), connection limit,
    grants, security labels: applied once the data is in.
    """

    name: str
    create: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not self.create and not self.after

    def renamed(self, new: str) -> DatabaseProperties:
        """The same statements about database ``new``."""
        return DatabaseProperties(new, tuple(rename_database(s, self.name, new)
                                             for s in self.create),
                                  tuple(rename_database(s, self.name, new) for s in self.after))

    def facts(self) -> set[str]:
        """Comparable facts: CREATE options one by one (``LOCALE`` split into collate and
        ctype, the template left out), every other statement whitespace-normalised."""
        out: set[str] = set()
        for s in (*self.create, *self.after):
            s = rename_database(s, self.name, self.name)  # one spelling of the name
            if s.startswith("CREATE DATABASE"):
                out |= {f"create {k} = {v}" for k, v in create_options(s).items()
                        if k != "TEMPLATE"}
            else:
                out.add(" ".join(s.split()))
        return out

    def differences(self, live: DatabaseProperties) -> list[str]:
        """What ``live`` lacks or has beyond these properties, one line each."""
        want, have = self.facts(), live.facts()
        diffs = [f"property missing: {f}" for f in sorted(want - have)]
        diffs += [f"property not in the backup: {f}" for f in sorted(have - want)]
        return diffs


def database_properties(sql: str, name: str) -> DatabaseProperties:
    """The properties of database ``name`` in a ``pg_restore --create --schema-only`` or
    ``pg_dump --create --schema-only`` script."""
    create: list[str] = []
    after: list[str] = []
    for kind, s in statements(sql):
        m = _DATABASE_REF.search(s)
        if m is None or unquote(m[1]) != name:
            continue  # SET lines pg_restore prints between entries
        if kind == "DATABASE":
            create.append(s)
        elif kind is not None and (kind in _DB_TYPES or kind.endswith(" DATABASE")):
            after.append(s)
    return DatabaseProperties(name, tuple(create), tuple(after))


def rename_database(statement: str, old: str, new: str) -> str:
    """``statement`` about database ``new`` instead of ``old``: its first ``DATABASE name``
    (the object it is about; literals come later in these statements)."""
    m = _DATABASE_REF.search(statement)
    if m is None or unquote(m[1]) != old:
        return statement
    return statement[:m.start(1)] + ident(new) + statement[m.end(1):]


_OPTION = re.compile(r"([A-Z_]+) = ('(?:[^']|'')*'|[^ ;]+)")


def create_options(statement: str) -> dict[str, str]:
    """``CREATE DATABASE x WITH A = 'v' ...`` -> ``{"A": "'v'"}``; ``LOCALE`` is split into
    ``LC_COLLATE`` and ``LC_CTYPE`` (pg_dump writes it when both are equal)."""
    opts = dict(_OPTION.findall(statement))
    if "LOCALE" in opts:
        loc = opts.pop("LOCALE")
        opts.setdefault("LC_COLLATE", loc)
        opts.setdefault("LC_CTYPE", loc)
    return opts
