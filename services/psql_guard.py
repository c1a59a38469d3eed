"""A plain SQL dump replayed by psql may hold meta-commands: ``\\! rm -rf /`` runs a shell in
the PostgreSQL container, ``\\o``, ``\\copy``, ``\\i`` read and write its files. A dump fetched
from a destination another party controls must not get that far (CVE-2025-8714 is the same
attack through a malicious server's dump).

psql 15.14, 16.10, 17.6 and later have ``\\restrict KEY``: from it on, every meta-command but
``\\unrestrict KEY`` is an error (and with ``ON_ERROR_STOP`` the replay stops, the old
database untouched). :func:`restricted` prefixes the stream with a fresh random key nobody
else knows, and drops the dump's own ``\\restrict``/``\\unrestrict`` pair (pg_dump writes one
with its own key), which would otherwise fail the replay. Nothing is buffered but the line
being decided (a line starting with a backslash, at most ``MAX_HELD`` bytes).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

MAX_HELD = 512
"""A ``\\restrict`` line is short; a longer line starting with a backslash is data."""
HEADER_LINES = 100
"""pg_dump writes its ``\\restrict`` within the header comments, before any data."""
_OWN = re.compile(rb"\\restrict ([A-Za-z0-9]{1,200})\r?\n?")

PROBE = ["psql", "--help=commands"]
"""Lists ``\\restrict`` on a psql that has it (no connection needed)."""


def restricted(chunks: Iterable[bytes], key: str | None = None) -> Iterator[bytes]:
    """``chunks`` (a plain SQL stream for psql) behind ``\\restrict`` with a random key."""
    key = key or secrets.token_hex(32)
    yield f"\\restrict {key}\n".encode()
    own: bytes | None = None
    line_no = 0
    at_start = True
    hold = bytearray()

    def decide(line: bytes) -> bool:
        """Whether a held line goes through."""
        nonlocal own
        m = _OWN.fullmatch(line)
        if m and own is None and line_no < HEADER_LINES:
            own = m.group(1)
            return False
        return not (own is not None and line.rstrip(b"\r\n") == b"\\unrestrict " + own)

    for chunk in chunks:
        out = bytearray()
        i, n = 0, len(chunk)
        while i < n:
            j = chunk.find(b"\n", i)
            end = n if j < 0 else j + 1
            if hold or (at_start and chunk[i] == 0x5C):  # a backslash opens the line
                hold += chunk[i:end]
                i = end
                if j >= 0:
                    if decide(bytes(hold)):
                        out += hold
                    hold.clear()
                    line_no += 1
                    at_start = True
                elif len(hold) > MAX_HELD:
                    out += hold
                    hold.clear()
                    at_start = False
                continue
            out += chunk[i:end]
            i = end
            at_start = j >= 0
            line_no += j >= 0
        if out:
            yield bytes(out)
    if hold and decide(bytes(hold)):
        yield bytes(hold)


def psql_restricts(pg: Any) -> bool:
    """Whether the psql of ``pg`` (a ``PgGateway``) has ``\\restrict``."""
    with pg.exec(PROBE) as p:
        out = p.read_all()
        p.wait(60)
    return b"\\restrict" in out


OLD_PSQL = ("the psql in {container} predates \\restrict (PostgreSQL 15.14, 16.10, 17.6): "
            "psql meta-commands in this plain dump could not be refused; replay only dumps "
            "you trust, or update the image")
