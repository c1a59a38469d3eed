"""One run at a time per backup directory: a kernel lock (flock), freed the moment its holder
dies, so a killed run never leaves a stale lock. The lock file lives in the backup dir's state
dir (services/state.py): the backup dir itself unless that is read-only."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dcb.services.artifacts import StorageError
from dcb.services.config import Config
from dcb.services.errors import LockedError
from dcb.services.state import state_for
from dcb.services.store import LOCKFILE


class StoreLock:
    def __init__(self, root: Path, purpose: str, backup_dir: Path | None = None) -> None:
        """``root``: the directory holding the lock file; ``backup_dir``: the store it guards
        (named in messages; default ``root``)."""
        self.path = root / LOCKFILE
        self.purpose = purpose
        self.backup_dir = backup_dir or root
        self._fd = -1

    @classmethod
    def for_config(cls, cfg: Config, purpose: str) -> StoreLock:
        """The lock of a configuration's backup dir, in its state dir (created if needed)."""
        state = state_for(cfg)
        state.ensure()
        return cls(state.root, purpose, state.backup_dir)

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open the lock {self.path}: {e.strerror}",
                              hint="set [storage] state_dir to a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockedError(
                f"backup dir {self.backup_dir} is locked by another run ({holder})",
                hint="wait for it to finish; a killed run releases the lock at once",
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"{info.get('purpose', '?')}, pid {info.get('pid', '?')} on "
                f"{info.get('host', '?')} since {info.get('since', '?')}")
    except (OSError, ValueError):
        return "holder unknown"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a backup dir's lock, as its holder wrote it (services/lock.py)."""

    purpose: str
    pid: int | None
    host: str
    since: datetime | None

    def describe(self) -> str:
        return f"{self.purpose}, pid {self.pid if self.pid is not None else '?'} on {self.host}"


def current_holder(root: Path) -> LockHolder | None:
    """The run holding ``root``'s lock now, or None; never takes the lock itself (a probe
    that did would make a backup starting at that instant fail as "locked").

    On this host the kernel's lock table (/proc/locks, else the pid) tells whether the
    recorded holder still holds it: a killed run leaves its record but not its lock."""
    path = root / LOCKFILE
    try:
        st = path.stat()
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        info = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None  # released: the holder truncates the file
    pid = info.get("pid") if isinstance(info.get("pid"), int) else None
    host = str(info.get("host", "?"))
    if host == socket.gethostname() and not _held_here(st, pid):
        return None
    try:
        since: datetime | None = datetime.fromisoformat(str(info.get("since")))
    except ValueError:
        since = None
    return LockHolder(purpose=str(info.get("purpose", "?")), pid=pid, host=host, since=since)


def _held_here(st: os.stat_result, pid: int | None) -> bool:
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            return any(line.split()[1:2] == ["FLOCK"] and dev in line.split() for line in f)
    except OSError:
        pass
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
