"""Filesystem usage of the backup directory."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DiskUsage:
    path: str
    """The path measured: the backup dir, or its nearest existing parent."""
    total_bytes: int
    used_bytes: int
    free_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def disk_usage(path: Path) -> DiskUsage:
    """Usage of the filesystem holding ``path`` (which need not exist yet)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    u = shutil.disk_usage(p)
    return DiskUsage(path=str(p), total_bytes=u.total, used_bytes=u.used, free_bytes=u.free)
