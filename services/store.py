"""The backup store: one directory per set under the backup dir.

Layout::

    <backup_dir>/
        .lock                      flock'ed by the one run allowed at a time (*)
        history.jsonl              every run, failures included (append-only) (*)
        <set id>/                  e.g. 20261126T131500Z; sortable UTC ids
            manifest.json          written last: a set without it is incomplete
            db-dart_cloud.dump.zst
            volume-functions_data.tar.zst
            ...

    (*) in the state dir instead when the backup dir is read-only (services/state.py)

A set counts as good only when its manifest exists, parses, passes the schema below and says
``complete``. Sets made by the old bash scripts (flat ``*_YYYYMMDD_HHMMSS.sql.gz`` files) are
listed as ``legacy``.

A manifest is input, not trusted (sets will come from remote destinations): types, enums,
SHA-256 digests, sizes and string lengths are checked, and every artifact file must be a plain
name inside the set directory. A manifest that fails makes its set ``incomplete`` with the
reason; nothing outside the set directory is ever opened because a manifest named it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.config import DOCKER_NAME_RE, pg_name_problem
from dcb.services.errors import DcbError, NotFound, UsageError

MANIFEST = "manifest.json"
HISTORY = "history.jsonl"
LOCKFILE = ".lock"
SET_ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
LEGACY_ID_RE = re.compile(r"^legacy-\d{8}_\d{6}$")
# A restore's (or drill's) id: it names an incident log file, so one plain name, never a path.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MANIFEST_VERSION = 1
MANIFEST_MAX_BYTES = 64 * 1024 * 1024
KINDS = ("globals", "database", "volume")
COMPRESSIONS = ("zstd", "gzip", "none")
FORMATS = ("custom", "plain", "tar")
STATUSES = ("complete", "failed", "incomplete")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_ARTIFACTS = 10_000
MAX_TEXT = 4096
FILE_MODE = 0o600
DIR_MODE = 0o700

LEGACY_RE = re.compile(
    r"^(?P<name>dart_cloud|functions_db|postgres_volume|functions_volume|backup)_"
    r"(?P<ts>\d{8}_\d{6})\.(?P<ext>sql\.gz|tar\.gz|meta)$"
)


@dataclass(frozen=True)
class Artifact:
    kind: str
    """``database``, ``globals`` or ``volume``."""
    name: str
    file: str
    """Path relative to the set directory."""
    size_bytes: int
    sha256: str | None
    compression: str
    source: dict[str, Any] = field(default_factory=dict)
    """How it was made: container, pg version, format, row counts, file counts..."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "file": self.file,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "compression": self.compression,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Artifact:
        return cls(
            kind=str(d["kind"]),
            name=str(d["name"]),
            file=str(d["file"]),
            size_bytes=int(d["size_bytes"]),
            sha256=d.get("sha256"),
            compression=str(d.get("compression", "none")),
            source=dict(d.get("source") or {}),
        )


@dataclass(frozen=True)
class BackupSet:
    id: str
    path: Path
    status: str
    """``complete``, ``incomplete``, ``failed`` or ``legacy``."""
    created_at: datetime
    artifacts: tuple[Artifact, ...] = ()
    host: str | None = None
    dcb_version: str | None = None
    duration_seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(a.size_bytes for a in self.artifacts)

    @property
    def legacy(self) -> bool:
        return self.status == "legacy"

    @property
    def purpose(self) -> str:
        """``backup``, or ``safety`` for a restore's snapshot of what it replaced (manifests
        from before this field are backups)."""
        return str(self.extra.get("purpose") or "backup")

    def artifact(self, kind: str, name: str) -> Artifact | None:
        for a in self.artifacts:
            if a.kind == kind and a.name == name:
                return a
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "size_bytes": self.size_bytes,
            "host": self.host,
            "dcb_version": self.dcb_version,
            "duration_seconds": self.duration_seconds,
            "error": self.error,
            "artifacts": [a.to_json() for a in self.artifacts],
            **self.extra,
        }


def new_set_id(now: datetime, taken: set[str]) -> str:
    base = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def parse_set_id(set_id: str) -> datetime:
    return datetime.strptime(set_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


LEGACY_VOLUMES = {"postgres_volume": "postgres_data", "functions_volume": "functions_data"}


class BackupStore:
    """Reads and writes sets under one backup directory."""

    def __init__(self, root: Path, legacy_volumes: dict[str, str] | None = None) -> None:
        self.root = root
        self.legacy_volumes = legacy_volumes or LEGACY_VOLUMES

    @classmethod
    def for_config(cls, cfg: Any) -> BackupStore:
        """The store of a configuration; legacy volume names map onto its volumes."""
        stack = cfg.stack
        functions = next((v for v in stack.volumes if v.endswith("functions_data")),
                         "functions_data")
        return cls(cfg.backup_dir, {"postgres_volume": stack.postgres_data_volume,
                                    "functions_volume": functions})

    # -- reading ---------------------------------------------------------------------------
    def list_sets(self) -> list[BackupSet]:
        """All sets, newest first: dcb sets (any status) and legacy sets from the old scripts."""
        if not self.root.is_dir():
            return []
        sets = list(self._dcb_sets()) + list(self._legacy_sets())
        sets.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return sets

    def get(self, set_id: str) -> BackupSet:
        check_set_id(set_id)
        for s in self.list_sets():
            if s.id == set_id:
                return s
        raise NotFound(f"backup set {set_id!r} not found in {self.root}",
                       hint="`dcb list` shows the sets")

    def _dcb_sets(self) -> Iterator[BackupSet]:
        for entry in os.scandir(self.root):
            if not entry.is_dir(follow_symlinks=False) or not SET_ID_RE.fullmatch(entry.name):
                continue
            path = Path(entry.path)
            mpath = path / MANIFEST
            created = parse_set_id(entry.name)
            if not mpath.exists():
                yield BackupSet(id=entry.name, path=path, status="incomplete", created_at=created,
                                error="no manifest (interrupted run)")
                continue
            try:
                yield read_manifest(path)
            except DcbError as e:
                yield BackupSet(id=entry.name, path=path, status="incomplete",
                                created_at=created, error=e.message)

    def _legacy_sets(self) -> Iterator[BackupSet]:
        groups: dict[str, list[Path]] = {}
        for d in (self.root, self.root / "volumes"):
            if not d.is_dir():
                continue
            for entry in os.scandir(d):
                m = LEGACY_RE.match(entry.name)
                if m and entry.is_file(follow_symlinks=False):
                    groups.setdefault(m["ts"], []).append(Path(entry.path))
        for ts, files in groups.items():
            created = datetime.strptime(ts, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
            artifacts = []
            for f in sorted(files):
                m = LEGACY_RE.match(f.name)
                assert m is not None
                name, ext = m["name"], m["ext"]
                if ext == "meta":
                    continue
                kind = "volume" if ext == "tar.gz" else "database"
                vol_name = self.legacy_volumes.get(name, name)
                artifacts.append(Artifact(
                    kind=kind, name=vol_name, file=str(f.relative_to(self.root)),
                    size_bytes=f.stat().st_size, sha256=None, compression="gzip",
                    source={"format": "plain" if kind == "database" else "tar", "legacy": True},
                ))
            if artifacts:
                yield BackupSet(id=f"legacy-{ts}", path=self.root, status="legacy",
                                created_at=created, artifacts=tuple(artifacts))


def check_set_id(set_id: str) -> str:
    """``set_id`` if it is a set id (``20261126T020000Z``, ``legacy-20240105_020000``);
    ``UsageError`` (exit 2) otherwise: an id never becomes a path."""
    if not (SET_ID_RE.fullmatch(set_id) or LEGACY_ID_RE.fullmatch(set_id)):
        raise UsageError(f"{set_id!r} is not a backup set id",
                         hint="set ids look like 20261126T020000Z; `dcb list` shows them")
    return set_id


DIGEST_KEY = "manifest_sha256"


def manifest_digest(data: dict[str, Any]) -> str:
    """SHA-256 of a manifest's content without its own digest, in canonical JSON (sorted
    keys, no whitespace): a bit flipped anywhere in the file changes it or breaks the JSON."""
    body = {k: v for k, v in data.items() if k != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def manifest_bytes(data: dict[str, Any]) -> bytes:
    """The manifest file as dcb writes it: indented JSON carrying its own digest."""
    return json.dumps({**data, DIGEST_KEY: manifest_digest(data)}, indent=2).encode()


class ManifestError(DcbError):
    """A manifest that does not parse or does not pass the schema."""


def read_manifest(set_dir: Path) -> BackupSet:
    mpath = set_dir / MANIFEST
    try:
        data = json.loads(_read_plain_file(mpath, MANIFEST_MAX_BYTES))
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ManifestError(f"{mpath}: unreadable manifest: {reason}") from None
    try:
        return _from_manifest(set_dir, data)
    except _Invalid as e:
        raise ManifestError(f"{mpath}: invalid manifest: {e}") from None


def _read_plain_file(path: Path, limit: int) -> str:
    """A regular file's text, never through a symlink, at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError("is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data.decode("utf-8")


class _Invalid(ValueError):
    pass


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str | None) -> str | None:
    """Free text from a manifest (host, error) with its control characters shown escaped: a
    copy from another party's disk must not send ESC sequences to the terminal (retitle it,
    hide text, write the clipboard with OSC 52)."""
    if text is None:
        return None
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _field(d: dict[str, Any], key: str, types: type | tuple[type, ...], where: str,
           required: bool = True, nullable: bool = False) -> Any:
    if key not in d:
        if required:
            raise _Invalid(f"{where}{key} is missing")
        return None
    v = d[key]
    if v is None and nullable:
        return None
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _Invalid(f"{where}{key} has the wrong type")
    if not isinstance(v, types):
        raise _Invalid(f"{where}{key} has the wrong type")
    if isinstance(v, str) and len(v) > MAX_TEXT:
        raise _Invalid(f"{where}{key} is too long")
    if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
        raise _Invalid(f"{where}{key} is negative")
    return v


def _enum(d: dict[str, Any], key: str, allowed: tuple[str, ...], where: str,
          required: bool = True) -> str | None:
    v = _field(d, key, str, where, required)
    if v is not None and v not in allowed:
        raise _Invalid(f"{where}{key} {v[:40]!r} is not one of {', '.join(allowed)}")
    return v


def _time(d: dict[str, Any], key: str, where: str, required: bool = True) -> datetime | None:
    v = _field(d, key, str, where, required, nullable=not required)
    if v is None:
        return None
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise _Invalid(f"{where}{key} is not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise _Invalid(f"{where}{key} has no time zone")
    return t


def _plain_file_name(name: str) -> bool:
    """A file directly inside the set directory: no path, no hidden or control characters."""
    return (0 < len(name.encode("utf-8", "surrogateescape")) <= 255 and "/" not in name
            and "\\" not in name and not name.startswith(".") and name != MANIFEST
            and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def _artifact(a: Any, i: int) -> Artifact:
    where = f"artifacts[{i}]."
    if not isinstance(a, dict):
        raise _Invalid(f"artifacts[{i}] is not an object")
    kind = _enum(a, "kind", KINDS, where)
    name = _field(a, "name", str, where)
    if kind == "volume" and not DOCKER_NAME_RE.fullmatch(name):
        raise _Invalid(f"{where}name {name[:80]!r} is not a volume name")
    if kind == "database" and pg_name_problem(name):
        raise _Invalid(f"{where}name {name[:80]!r} {pg_name_problem(name)}")
    if kind == "globals" and name != "globals":
        raise _Invalid(f"{where}name of the roles artifact must be 'globals'")
    file = _field(a, "file", str, where)
    if not _plain_file_name(file):
        raise _Invalid(f"{where}file {file[:80]!r} is not a plain file name inside the set")
    size = _field(a, "size_bytes", int, where)
    sha = _field(a, "sha256", str, where)
    if not SHA256_RE.fullmatch(sha):
        raise _Invalid(f"{where}sha256 is not 64 lowercase hex digits")
    compression = _enum(a, "compression", COMPRESSIONS, where)
    source = _field(a, "source", dict, where, required=False, nullable=True) or {}
    sw = f"{where}source."
    _enum(source, "format", FORMATS, sw, required=False)
    for key in ("raw_bytes",):
        _field(source, key, int, sw, required=False, nullable=True)
    for key in ("seconds",):
        _field(source, key, (int, float), sw, required=False, nullable=True)
    for key in ("server_version", "container", "tool", "snapshot", "method"):
        _field(source, key, str, sw, required=False, nullable=True)
    if source.get("legacy"):
        raise _Invalid(f"{sw}legacy: a manifest's set is never a legacy set")
    counts = _field(source, "row_counts", dict, sw, required=False, nullable=True)
    for table, n in (counts or {}).items():
        if len(table) > 1024 or not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _Invalid(f"{sw}row_counts holds a bad entry")
    assert kind is not None and compression is not None
    return Artifact(kind=kind, name=name, file=file, size_bytes=size, sha256=sha,
                    compression=compression, source=dict(source))


KNOWN_FIELDS = {"id", "created_at", "status", "host", "dcb_version", "duration_seconds",
                "error", "artifacts", "size_bytes", "path", "manifest_version", DIGEST_KEY}


def _from_manifest(set_dir: Path, data: Any) -> BackupSet:
    if not isinstance(data, dict):
        raise _Invalid("not a JSON object")
    if DIGEST_KEY in data and data[DIGEST_KEY] != manifest_digest(data):
        # Manifests from before the digest (and hand-made ones) have none: still read.
        raise _Invalid("damaged: its content does not match its manifest_sha256")
    version = _field(data, "manifest_version", int, "", required=False)
    if version is not None and version > MANIFEST_VERSION:
        raise _Invalid(f"manifest_version {version} is newer than this dcb reads "
                       f"({MANIFEST_VERSION})")
    set_id = _field(data, "id", str, "", required=False) or set_dir.name
    if set_id != set_dir.name:
        raise _Invalid(f"id {set_id[:40]!r} does not match its directory {set_dir.name}")
    status = _enum(data, "status", STATUSES, "")
    created = _time(data, "created_at", "")
    _time(data, "finished_at", "", required=False)
    _enum(data, "purpose", ("backup", "safety"), "", required=False)
    restore_id = _field(data, "restore_id", str, "", required=False, nullable=True)
    if restore_id is not None and (not RUN_ID_RE.fullmatch(restore_id) or ".." in restore_id):
        raise _Invalid("restore_id is not a restore id")
    for key in ("host", "dcb_version", "error"):
        _field(data, key, str, "", required=False, nullable=True)
    duration = _field(data, "duration_seconds", (int, float), "", required=False, nullable=True)
    _field(data, "size_bytes", int, "", required=False, nullable=True)
    _field(data, "stack", dict, "", required=False, nullable=True)
    raw = _field(data, "artifacts", list, "")
    if len(raw) > MAX_ARTIFACTS:
        raise _Invalid(f"more than {MAX_ARTIFACTS} artifacts")
    artifacts = tuple(_artifact(a, i) for i, a in enumerate(raw))
    seen_names: set[tuple[str, str]] = set()
    seen_files: set[str] = set()
    for a in artifacts:
        if (a.kind, a.name) in seen_names or a.file in seen_files:
            raise _Invalid(f"{a.kind} {a.name[:80]!r} or its file is listed twice")
        seen_names.add((a.kind, a.name))
        seen_files.add(a.file)
    if status == "complete" and not artifacts:
        raise _Invalid("a complete set lists no artifacts")
    assert status is not None and created is not None
    return BackupSet(
        id=set_id,
        path=set_dir,
        status=status,
        created_at=created,
        artifacts=artifacts,
        host=printable(data.get("host")),
        dcb_version=printable(data.get("dcb_version")),
        duration_seconds=duration,
        error=printable(data.get("error")),
        extra={k: v for k, v in data.items() if k not in KNOWN_FIELDS},
    )


def age_exceeds(s: BackupSet, now: datetime, limit: timedelta) -> bool:
    return now - s.created_at > limit
