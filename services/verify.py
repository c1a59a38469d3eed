"""Verifying stored sets: checksums, and with ``deep`` a full read of every archive.

A quick verify proves the bytes are the ones written (size + SHA-256). A deep verify also
decompresses every artifact to its end and checks what it must contain: a tar read member by
member, a plain SQL dump's completion marker, a custom-format dump read in full by
``pg_restore -f /dev/null`` in the PostgreSQL container (``pg_restore --list`` accepts truncated
dumps; see shared/RELIABILITY.md).
"""

from __future__ import annotations

import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import zstandard

from dcb.services.artifacts import CHUNK, open_decompressed, sha256_file
from dcb.services.errors import Cancelled, DcbError
from dcb.services.postgres import CLUSTER_DUMP_END, PLAIN_DUMP_END, PgGateway
from dcb.services.progress import ByteMeter, Reporter, StageFinished, StageStarted, null_reporter
from dcb.services.store import Artifact, BackupSet


@dataclass(frozen=True)
class ArtifactCheck:
    artifact: Artifact
    ok: bool
    problem: str | None = None
    note: str | None = None


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
                           "note": c.note} for c in self.checks],
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


def _check_artifact(s: BackupSet, a: Artifact, deep: bool, pg: PgGateway | None,
                    reporter: Reporter, cancel: threading.Event) -> ArtifactCheck:
    path = s.path / a.file
    stage = f"verify {a.file}"
    reporter(StageStarted(stage, a.size_bytes))
    if path.is_symlink() or not path.is_file():
        return ArtifactCheck(a, False, "a symlink: refused" if path.is_symlink() else "missing")
    size, digest = sha256_file(path)
    if size != a.size_bytes:
        return ArtifactCheck(a, False, f"size {size} bytes, manifest says {a.size_bytes} "
                                       "(truncated or replaced)")
    note = None
    if a.sha256 is None:
        note = "legacy set: no checksum recorded"
    elif digest != a.sha256:
        return ArtifactCheck(a, False, "checksum mismatch (corrupted)")
    if deep:
        try:
            note = _deep_read(a, path, pg, ByteMeter(stage, reporter), cancel) or note
        except Cancelled:
            raise
        except (OSError, EOFError, zlib.error, zstandard.ZstdError, tarfile.TarError,
                DcbError) as e:
            return ArtifactCheck(a, False, f"unreadable: {e}")
    reporter(StageFinished(stage, size, 0.0))
    return ArtifactCheck(a, True, note=note)


def _chunks(f: Any, meter: ByteMeter, cancel: threading.Event) -> Iterator[bytes]:
    while True:
        if cancel.is_set():
            raise Cancelled("verify cancelled")
        b = f.read(CHUNK)
        if not b:
            return
        meter.add(len(b))
        yield b


def _deep_read(a: Artifact, path: Any, pg: PgGateway | None, meter: ByteMeter,
               cancel: threading.Event) -> str | None:
    fmt = a.source.get("format")
    with open_decompressed(path, a.compression) as f:
        if a.kind == "volume":
            n = 0
            with tarfile.open(fileobj=f, mode="r|") as tf:
                for member in tf:
                    n += 1
                    if cancel.is_set():
                        raise Cancelled("verify cancelled")
                    if member.isfile():
                        data = tf.extractfile(member)
                        while data is not None and (b := data.read(CHUNK)):
                            meter.add(len(b))
            if n == 0:
                raise DcbError("archive holds no entries")
            return f"{n} entries read"
        if fmt == "custom":
            if pg is None:
                raise DcbError("a custom-format dump needs the PostgreSQL container to read it")
            pg.check_custom_dump(_chunks(f, meter, cancel))
            return "pg_restore read the whole dump"
        tail = b""
        for b in _chunks(f, meter, cancel):
            tail = (tail + b)[-256:]
        marker = CLUSTER_DUMP_END if a.kind == "globals" else PLAIN_DUMP_END
        if marker not in tail and not a.source.get("legacy"):
            raise DcbError("dump lacks its completion marker (truncated)")
        if marker not in tail:
            return "legacy dump without completion marker"
        return None


def verified_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
