"""The backup store: one directory per set under the backup dir.

Layout::

    <backup_dir>/
        .lock                      flock'ed by the one run allowed at a time
        history.jsonl              every run, failures included (append-only)
        <set id>/                  e.g. 20261126T131500Z; sortable UTC ids
            manifest.json          written last: a set without it is incomplete
            db-dart_cloud.dump.zst
            volume-functions_data.tar.zst
            ...

A set counts as good only when its manifest exists, parses and says ``complete``. Sets made by
the old bash scripts (flat ``*_YYYYMMDD_HHMMSS.sql.gz`` files) are listed as ``legacy``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.errors import DcbError, NotFound

MANIFEST = "manifest.json"
HISTORY = "history.jsonl"
LOCKFILE = ".lock"
SET_ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?$")
MANIFEST_VERSION = 1
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
        for s in self.list_sets():
            if s.id == set_id:
                return s
        raise NotFound(f"backup set {set_id!r} not found in {self.root}",
                       hint="`dcb list` shows the sets")

    def _dcb_sets(self) -> Iterator[BackupSet]:
        for entry in os.scandir(self.root):
            if not entry.is_dir(follow_symlinks=False) or not SET_ID_RE.match(entry.name):
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


def read_manifest(set_dir: Path) -> BackupSet:
    mpath = set_dir / MANIFEST
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        artifacts = tuple(Artifact.from_json(a) for a in data.get("artifacts", []))
        created = datetime.fromisoformat(data["created_at"])
        status = str(data.get("status", "incomplete"))
        known = {"id", "created_at", "status", "host", "dcb_version", "duration_seconds",
                 "error", "artifacts", "size_bytes", "path", "manifest_version"}
        return BackupSet(
            id=str(data.get("id", set_dir.name)),
            path=set_dir,
            status=status if status in ("complete", "failed") else "incomplete",
            created_at=created,
            artifacts=artifacts,
            host=data.get("host"),
            dcb_version=data.get("dcb_version"),
            duration_seconds=data.get("duration_seconds"),
            error=data.get("error"),
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DcbError(f"{mpath}: unreadable manifest: {e}") from None


def age_exceeds(s: BackupSet, now: datetime, limit: timedelta) -> bool:
    return now - s.created_at > limit
