"""The dashboard's Disk pane without Textual: every filesystem that matters and the largest
things on them.

The filesystems are those holding the backup dir, Docker's data root (``DockerRootDir``) and
each volume's mountpoint, deduplicated by device (``st_dev``): one line per filesystem naming
what lives there. The engine's paths are stat'ed only when the engine runs on this host, and
need a user who may read them (root beside the engine); otherwise they are listed as not
reachable. The offenders are Docker's largest items (``services.docker_df``) and the backup
store itself, largest first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.docker_df import DockerReport, collect_report, engine_is_local
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError

OFFENDERS = 3
BACKUPS = "backups"
DOCKER = "docker"


@dataclass(frozen=True)
class Filesystem:
    path: str
    """The first path measured on it."""
    device: int
    total_bytes: int
    used_bytes: int
    free_bytes: int
    holds: tuple[str, ...]
    """What lives there: ``backups``, ``docker``, ``volume NAME``..."""

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    def low(self, min_free_percent: float) -> bool:
        return self.free_percent < min_free_percent

    def holds_text(self) -> str:
        """``backups, docker, 3 volumes``: volumes are counted, not named, past two."""
        others = [h for h in self.holds if not h.startswith("volume ")]
        vols = [h for h in self.holds if h.startswith("volume ")]
        if len(vols) > 2:
            others.append(f"{len(vols)} volumes")
        else:
            others += vols
        return ", ".join(others)


@dataclass(frozen=True)
class Offender:
    label: str
    """e.g. ``log dart-cloud-backend``, ``backup store``."""
    size_bytes: int


@dataclass(frozen=True)
class DiskPicture:
    filesystems: tuple[Filesystem, ...]
    unreachable: tuple[str, ...] = ()
    """Places whose filesystem could not be measured, with why (one line each)."""
    docker_offenders: tuple[Offender, ...] = ()
    """Docker's largest items, largest first (a few more than shown, to merge with)."""
    docker_error: str | None = None

    def offenders(self, store_bytes: int | None, n: int = OFFENDERS) -> list[Offender]:
        """The ``n`` largest: Docker's items and the backup store."""
        every = list(self.docker_offenders)
        if store_bytes:
            every.append(Offender("backup store", store_bytes))
        every.sort(key=lambda o: -o.size_bytes)
        return every[:n]

    def fs_of(self, label: str) -> Filesystem | None:
        return next((f for f in self.filesystems if label in f.holds), None)


def measure(places: Sequence[tuple[str, str]]) -> tuple[tuple[Filesystem, ...], tuple[str, ...]]:
    """Filesystems of ``places`` (label, path), one per device in order of first appearance;
    and the places that could not be measured. A path that does not exist yet is measured at
    its nearest existing parent."""
    by_dev: dict[int, tuple[str, list[str]]] = {}
    unreachable: list[str] = []
    for label, path in places:
        p = Path(path)
        try:
            while not p.exists() and p != p.parent:
                p = p.parent
            dev = os.stat(p).st_dev
        except OSError as e:
            unreachable.append(f"{label} ({path}): {e.strerror or type(e).__name__}")
            continue
        if dev in by_dev:
            by_dev[dev][1].append(label)
        else:
            by_dev[dev] = (str(p), [label])
    out: list[Filesystem] = []
    for dev, (path, labels) in by_dev.items():
        try:
            u = shutil.disk_usage(path)
        except OSError as e:
            unreachable.append(f"{', '.join(labels)} ({path}): {e.strerror}")
            continue
        out.append(Filesystem(path, dev, u.total, u.used, u.free, tuple(labels)))
    return tuple(out), tuple(unreachable)


def picture_from(report: DockerReport | None, backup_dir: Path, docker_error: str | None = None,
                 local_engine: bool | None = None) -> DiskPicture:
    """Measure the filesystems of the backup dir and of ``report``'s engine paths."""
    places = [(BACKUPS, str(backup_dir))]
    unreachable: list[str] = []
    local = engine_is_local() if local_engine is None else local_engine
    if report is not None:
        if not local:
            unreachable.append("docker and its volumes: the engine runs on another host")
        else:
            if report.docker_root:
                places.append((DOCKER, report.docker_root))
            places += [(f"volume {v.name}", v.mountpoint) for v in report.volumes
                       if v.mountpoint and v.driver == "local"]
    fss, missing = measure(places)
    vols = [m for m in missing if m.startswith("volume ")]
    if vols:  # one line for them all: the same reason, usually (not root)
        reason = vols[0].rsplit(": ", 1)[-1]
        missing = (*(m for m in missing if not m.startswith("volume ")),
                   f"{len(vols)} volume{'s' if len(vols) > 1 else ''}: {reason}")
    offenders = tuple(Offender(i.label, i.size_bytes) for i in report.items()[:OFFENDERS + 1]
                      if i.size_bytes) if report is not None else ()
    return DiskPicture(fss, tuple(unreachable) + missing, offenders, docker_error)


def collect_disk_picture(cfg: Config, gw: DockerGateway | None) -> DiskPicture:
    """The picture; without Docker (``gw`` None, or it fails) the backup dir's alone."""
    report = None
    error = None
    if gw is not None:
        try:
            report = collect_report(cfg, gw)
        except DcbError as e:
            error = e.message
    return picture_from(report, cfg.backup_dir, error)


def offender_line(o: Offender) -> str:
    return f"{fmt.size(o.size_bytes)} {o.label}"
