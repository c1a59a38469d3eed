"""Where dcb keeps its own state for a backup dir: the run lock, the run history, restores'
incident logs and the ledger of containers it stopped.

By default that is the backup dir itself. When the backup dir cannot be written (the disk of
a dead host mounted read-only, an NFS snapshot, another user's store), the state goes to a
directory of its own under the user's state dir, one per backup dir
(``~/.local/state/dcb/stores/<name>-<hash>``), so ``list``, ``verify``, ``restore`` and
``drill`` still work. ``[storage] state_dir`` names the place explicitly. What the backup dir
already holds (its history, its incident logs) is still read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from dcb.services.artifacts import StorageError, private_dirs
from dcb.services.config import Config
from dcb.services.errors import UsageError
from dcb.services.stopped import STOPPED_MARKER
from dcb.services.store import HISTORY, LOCKFILE, RUN_ID_RE

RESTORES_DIR = "restores"


def check_run_id(value: str, what: str = "restore id") -> str:
    """``value`` if it is a plain run id; ``UsageError`` (exit 2) otherwise."""
    if not RUN_ID_RE.fullmatch(value) or ".." in value:
        raise UsageError(f"{what} {value!r} is not a valid id",
                         hint="`dcb history` lists restores and their ids")
    return value


_NUMBER = (int, float)
_HISTORY_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "id": (str,), "set_id": (str,), "status": (str,), "at": (str,),
    "started_at": (str,), "finished_at": (str,), "error": (str, type(None)),
    "ok": (bool,), "deep": (bool,), "duration_seconds": _NUMBER, "size_bytes": (int,),
    "rto_seconds": _NUMBER, "freed_bytes": (int,), "artifacts": (list,),
    "problems": (list,), "steps": (list,),
}
_ARTIFACT_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "name": (str,), "size_bytes": (int, type(None)),
    "seconds": (*_NUMBER, type(None)),
}


def sane_history_entry(entry: object) -> bool:
    """True when a history line can be read: a JSON object whose known fields have their
    types (a line torn by a crash, flipped on disk or written by something else is skipped:
    the history informs, it never stops a command)."""
    if not isinstance(entry, dict):
        return False
    for key, types in _HISTORY_TYPES.items():
        v = entry.get(key)
        if key in entry and (not isinstance(v, types) or (isinstance(v, bool)
                                                          and bool not in types)):
            return False
        if isinstance(v, int | float) and not isinstance(v, bool) and v < 0:
            return False
    for a in entry.get("artifacts") or []:
        if not isinstance(a, dict):
            return False
        for key, types in _ARTIFACT_TYPES.items():
            if key in a and (not isinstance(a[key], types) or isinstance(a[key], bool)):
                return False
    return all(isinstance(x, dict) for x in entry.get("steps") or [])


@dataclass(frozen=True)
class StateDir:
    root: Path
    """Where the lock, history, incident logs and stopped-container ledger are written."""
    backup_dir: Path

    @property
    def separate(self) -> bool:
        """True when the state lives outside the backup dir (read-only store)."""
        return self.root != self.backup_dir

    @property
    def lock(self) -> Path:
        return self.root / LOCKFILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def restores(self) -> Path:
        return self.root / RESTORES_DIR

    @property
    def stopped(self) -> Path:
        return self.root / STOPPED_MARKER

    def ensure(self) -> None:
        """Create the state dir (0700) and prove it is writable."""
        try:
            private_dirs(self.root)
            probe = self.root / f".write-test-{os.getpid()}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            probe.unlink()
        except OSError as e:
            raise StorageError(f"state dir {self.root} is not writable: {e.strerror}",
                               hint="set [storage] state_dir to a writable directory") from None

    # -- history --------------------------------------------------------------------------------
    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one JSON line to the run history, durably."""
        self.ensure()
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.history, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StorageError(f"cannot write {self.history}: {e.strerror}") from None

    def history_files(self) -> list[Path]:
        """The backup dir's own history first (older runs, e.g. of a dead host), then ours."""
        files = [self.backup_dir / HISTORY] if self.separate else []
        return [*files, self.history]

    def read_history(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for path in self.history_files():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if sane_history_entry(entry):
                        out.append(entry)
        return out

    # -- incident logs --------------------------------------------------------------------------
    def incident_dirs(self) -> list[Path]:
        dirs = [self.restores]
        if self.separate:
            dirs.append(self.backup_dir / RESTORES_DIR)
        return dirs

    def incident_path(self, restore_id: str) -> Path:
        """Where the incident log of ``restore_id`` is (ours first, then the backup dir's);
        where it would be written when none exists. The id is validated (exit 2)."""
        name = f"{check_run_id(restore_id)}.json"
        for d in self.incident_dirs():
            if (d / name).is_file():
                return d / name
        return self.restores / name


def _writable(path: Path) -> bool:
    """Whether dcb could write in ``path`` (or create it: its nearest existing parent)."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK)


def fallback_dir(backup_dir: Path) -> Path:
    """The per-backup-dir state directory under the user's state dir."""
    key = hashlib.sha256(str(backup_dir).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", backup_dir.name)[:40] or "root"
    return Path(platformdirs.user_state_dir("dcb")) / "stores" / f"{name}-{key}"


def state_for(cfg: Config) -> StateDir:
    """The state dir of a configuration: ``[storage] state_dir``, else the backup dir when
    writable, else a per-backup-dir directory under the user's state dir."""
    backup_dir = cfg.backup_dir
    explicit = cfg.state_dir
    if explicit is not None:
        return StateDir(explicit, backup_dir)
    if _writable(backup_dir):
        return StateDir(backup_dir, backup_dir)
    return StateDir(fallback_dir(backup_dir), backup_dir)
