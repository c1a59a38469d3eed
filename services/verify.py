"""Verifying stored sets: checksums, and with ``deep`` a full read of every archive.

A quick verify proves the bytes are the ones written (size + SHA-256). A deep verify also
decompresses every artifact to its end, in the same pass, and checks what it must contain: a
volume tar read by the restore's own strict reader (services/safe_tar.py: every member checked
against the extraction rules, and the end-of-archive marker required, so an archive cut at a
member boundary fails), a plain SQL dump's completion marker, a custom-format dump read in full
by ``pg_restore -f /dev/null`` in the PostgreSQL container (``pg_restore --list`` accepts
truncated dumps; see shared/RELIABILITY.md).

Each artifact is one stage: bytes, rate and the measured time stream through the reporter.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import zstandard

from dcb.services.artifacts import CHUNK
from dcb.services.encryption import AGE_MAGIC, open_decrypted
from dcb.services.errors import Cancelled, DcbError
from dcb.services.postgres import CLUSTER_DUMP_END, PLAIN_DUMP_END, PgGateway
from dcb.services.progress import (
    ByteMeter,
    Reporter,
    StageFailed,
    StageFinished,
    StageStarted,
    null_reporter,
)
from dcb.services.safe_tar import check_archive
from dcb.services.store import Artifact, BackupSet


@dataclass(frozen=True)
class ArtifactCheck:
    artifact: Artifact
    ok: bool
    problem: str | None = None
    note: str | None = None
    seconds: float = 0.0
    """How long this artifact's check took."""


@dataclass(frozen=True)
class SetCheck:
    set_id: str
    ok: bool
    deep: bool
    checks: tuple[ArtifactCheck, ...]
    problem: str | None = None

    def problems(self) -> list[str]:
        out = [self.problem] if self.problem else []
        out += [f"{c.artifact.file}: {c.problem}" for c in self.checks if c.problem]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.set_id, "ok": self.ok, "deep": self.deep, "problem": self.problem,
            "artifacts": [{"kind": c.artifact.kind, "name": c.artifact.name,
                           "file": c.artifact.file, "ok": c.ok, "problem": c.problem,
                           "note": c.note, "seconds": round(c.seconds, 3)}
                          for c in self.checks],
        }


def verify_set(s: BackupSet, *, deep: bool = False, pg: PgGateway | None = None,
               reporter: Reporter = null_reporter,
               cancel: threading.Event | None = None) -> SetCheck:
    cancel = cancel or threading.Event()
    if s.status not in ("complete", "legacy"):
        return SetCheck(s.id, False, deep, (), problem=f"set is {s.status}"
                        + (f": {s.error}" if s.error else ""))
    if not s.artifacts:
        return SetCheck(s.id, False, deep, (), problem="set lists no artifacts")
    checks = []
    for a in s.artifacts:
        if cancel.is_set():
            raise Cancelled("verify cancelled")
        checks.append(_check_artifact(s, a, deep, pg, reporter, cancel))
    return SetCheck(s.id, all(c.ok for c in checks), deep, tuple(checks))


class _HashingReader:
    """Reads the stored file once for everything: SHA-256, size, progress, cancellation;
    a decompressor reads through it for the deep check."""

    def __init__(self, f: BinaryIO, meter: ByteMeter, cancel: threading.Event) -> None:
        self.f = f
        self.meter = meter
        self.cancel = cancel
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled("verify cancelled")
        b = self.f.read(CHUNK if n is None or n < 0 else n)
        self.sha.update(b)
        self.size += len(b)
        self.meter.add(len(b))
        return b

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def _check_artifact(s: BackupSet, a: Artifact, deep: bool, pg: PgGateway | None,
                    reporter: Reporter, cancel: threading.Event) -> ArtifactCheck:
    stage = f"verify {a.file}"
    reporter(StageStarted(stage, a.size_bytes))
    meter = ByteMeter(stage, reporter, a.size_bytes)
    problem, note = _read_artifact(s, a, deep, pg, meter, cancel)
    meter.flush()
    seconds = meter.seconds
    if problem:
        reporter(StageFailed(stage, problem))
        return ArtifactCheck(a, False, problem, seconds=seconds)
    reporter(StageFinished(stage, meter.done, seconds, detail=note or ""))
    return ArtifactCheck(a, True, note=note, seconds=seconds)


def _read_artifact(s: BackupSet, a: Artifact, deep: bool, pg: PgGateway | None,
                   meter: ByteMeter, cancel: threading.Event) -> tuple[str | None, str | None]:
    """(problem, note). The checksum outranks what the deep read found: a damaged file is
    reported as damaged, not as a strange archive."""
    path = s.path / a.file
    if path.is_symlink():
        return "a symlink: refused", None  # it could name any file on the host
    try:
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
    except FileNotFoundError:
        return "missing", None
    except OSError as e:
        return f"unreadable: {e.strerror}", None
    deep_problem = note = None
    with f:
        hr = _HashingReader(f, meter, cancel)
        encrypted = os.pread(f.fileno(), len(AGE_MAGIC), 0) == AGE_MAGIC
        if deep:
            try:
                if encrypted:
                    # age reads the file itself (a second pass, decrypting in its own
                    # process); the checksum pass below is still the stored bytes'.
                    with open_decrypted(path) as plain:
                        note = _deep_read(a, plain, pg, cancel)
                else:
                    note = _deep_read(a, hr, pg, cancel)
            except Cancelled:
                raise
            except (OSError, EOFError, zlib.error, zstandard.ZstdError, tarfile.TarError,
                    DcbError) as e:
                deep_problem = f"unreadable: {e}"
        try:
            hr.drain()
        except OSError as e:
            return f"unreadable: {e.strerror}", None
    if hr.size != a.size_bytes:
        return (f"size {hr.size} bytes, manifest says {a.size_bytes} (truncated or replaced)",
                None)
    if a.sha256 is not None and hr.sha.hexdigest() != a.sha256:
        return "checksum mismatch (corrupted)", None
    if deep_problem:
        return deep_problem, None
    if a.sha256 is None:
        note = note or "legacy set: no checksum recorded"
    return None, note


class _ZstdFrames:
    """Every zstd frame decompressed to its end, its checksum checked: a stream that ends
    inside a frame is damaged (zstandard's stream_reader ends quietly there, so a file cut by
    one byte read as complete)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.dctx = zstandard.ZstdDecompressor()
        self.obj = self.dctx.decompressobj()
        self.pending = False
        self.buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while len(self.buf) < n:
            chunk = self.raw.read(CHUNK)
            if not chunk:
                if self.pending:
                    raise zstandard.ZstdError("the zstd stream ends inside a frame (truncated)")
                break
            while chunk:
                if self.obj.eof:  # the previous frame ended: the next one starts here
                    self.obj = self.dctx.decompressobj()
                self.buf += self.obj.decompress(chunk)
                chunk = self.obj.unused_data if self.obj.eof else b""
                self.pending = not self.obj.eof
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def _decompressed(f: Any, compression: str) -> BinaryIO:
    reader: Any = f
    if compression == "zstd":
        reader = _ZstdFrames(f)
    elif compression == "gzip":
        reader = gzip.GzipFile(fileobj=f, mode="rb")
    return reader


def _chunks(f: BinaryIO, cancel: threading.Event) -> Iterator[bytes]:
    while True:
        if cancel.is_set():
            raise Cancelled("verify cancelled")
        b = f.read(CHUNK)
        if not b:
            return
        yield b


def _deep_read(a: Artifact, raw: BinaryIO | _HashingReader, pg: PgGateway | None,
               cancel: threading.Event) -> str | None:
    fmt = a.source.get("format")
    f = _decompressed(raw, a.compression)
    if a.kind == "volume":
        # The restore's reader: what it would refuse, or a stream it would find damaged,
        # fails here too.
        n = check_archive(f, hint="a restore of this set would refuse this archive")
        if n == 0:
            raise DcbError("archive holds no entries")
        return f"{n} entries read and checked as a restore would"
    if fmt == "custom":
        if pg is None:
            raise DcbError("a custom-format dump needs the PostgreSQL container to read it")
        pg.check_custom_dump(_chunks(f, cancel))
        return "pg_restore read the whole dump"
    tail = b""
    for b in _chunks(f, cancel):
        tail = (tail + b)[-256:]
    marker = CLUSTER_DUMP_END if a.kind == "globals" else PLAIN_DUMP_END
    if marker not in tail and not a.source.get("legacy"):
        raise DcbError("dump lacks its completion marker (truncated)")
    if marker not in tail:
        return "legacy dump without completion marker"
    return None


def verified_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
