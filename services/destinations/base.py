"""The one interface every replication destination implements (like restic's
``internal/backend``): list the complete copies, publish a set atomically, fetch, delete.

A destination knows nothing of the backup engine: it is handed a set directory and the list
of its files with their sizes and SHA-256 (from the manifest), and must make the copy appear
only when whole (temporary name then rename, or the manifest last) and verified. Fetching
writes the named files into an empty local directory; the caller (services/replicate.py)
treats what arrives as untrusted and verifies it against the manifest.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcb.services.config import Config, DestinationConfig
from dcb.services.errors import Cancelled, DcbError
from dcb.services.progress import ByteMeter
from dcb.services.store import MANIFEST

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
SAFE_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


class DestinationError(DcbError):
    """A destination failed: unreachable, refused, or a copy that does not verify."""


@dataclass(frozen=True)
class SetFile:
    """One file of a set as its manifest records it (the manifest itself has no checksum)."""

    name: str
    size_bytes: int
    sha256: str | None


class Transfer:
    """Progress and cancellation for one set's transfer."""

    def __init__(self, meter: ByteMeter, cancel: threading.Event) -> None:
        self.meter = meter
        self.cancel = cancel
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        self.check()
        with self._lock:
            self.meter.add(n)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("replication cancelled")


def safe_file_name(name: str) -> bool:
    """A plain file name inside a set: no separators, no dot files, no ``..``."""
    return bool(SAFE_FILE_RE.match(name)) and name not in (".", "..")


def secrets_in_env(environ: dict[str, str] | None = None) -> list[str]:
    """Values that must never be shown: every environment variable whose name says it holds a
    secret (AWS_SECRET_ACCESS_KEY, POSTGRES_PASSWORD, *_TOKEN...)."""
    env = os.environ if environ is None else environ
    pat = re.compile(r"SECRET|PASSW|TOKEN|CREDENTIAL|PRIVATE|_KEY$|^PASS")
    return [v for k, v in env.items() if pat.search(k.upper()) and len(v) >= 4]


def redact(text: str, secrets: Sequence[str]) -> str:
    for s in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(s, "[redacted]")
    return text


@dataclass(frozen=True)
class Ran:
    code: int
    output: str
    """stdout and stderr (their last 64 KiB), secrets redacted."""


def run_bounded(argv: Sequence[str], timeout: float, cancel: threading.Event | None = None,
                stdin: Any = subprocess.DEVNULL, env: dict[str, str] | None = None,
                on_output: Callable[[bytes], None] | None = None) -> Ran:
    """Run ``argv`` (no shell) in its own process group; on timeout or cancel the whole group
    is killed. Output is kept bounded and redacted of secrets."""
    try:
        p = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as e:
        raise DestinationError(f"cannot run {argv[0]}: {e.strerror}") from None
    buf = bytearray()
    done = threading.Event()

    def pump() -> None:
        assert p.stdout is not None
        while chunk := os.read(p.stdout.fileno(), 65536):
            if on_output is not None:
                on_output(chunk)
            buf.extend(chunk)
            del buf[:-65536]
        done.set()

    t = threading.Thread(target=pump, daemon=True, name="dcb-cmd-output")
    t.start()
    deadline = time.monotonic() + timeout
    killed = ""
    while p.poll() is None:
        if cancel is not None and cancel.is_set():
            killed = "cancelled"
        elif time.monotonic() > deadline:
            killed = f"timed out after {timeout:g}s"
        if killed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            break
        time.sleep(0.05)
    t.join(5)
    out = redact(bytes(buf).decode("utf-8", "replace"), secrets_in_env(env))
    if killed == "cancelled":
        raise Cancelled("replication cancelled")
    if killed:
        raise DestinationError(f"{argv[0]} {killed} (its process group was killed)"
                               + (f": {last_line(out)}" if out.strip() else ""))
    return Ran(p.returncode, out)


NO_SPACE_RE = re.compile(r"No space left on device|Disk quota exceeded", re.I)
"""What a full disk (ENOSPC) or a full quota (EDQUOT) says, in any tool's output."""


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Destination(ABC):
    """A place where complete sets are copied, one module per type."""

    type = ""

    def __init__(self, name: str, dcfg: DestinationConfig, cfg: Config) -> None:
        self.name = name
        self.dcfg = dcfg
        self.cfg = cfg

    def error(self, message: str, hint: str | None = None) -> DestinationError:
        return DestinationError(f"destination {self.name} ({self.type}): {message}", hint)

    @abstractmethod
    def describe(self) -> str:
        """Where it is, for people (no secrets)."""

    @abstractmethod
    def list_sets(self) -> list[str] | None:
        """Ids of the complete copies (manifest present); None if the destination cannot be
        listed (a command destination without ``list_command``): the ledger is the truth."""

    def has_set(self, set_id: str) -> bool:
        ids = self.list_sets()
        return ids is not None and set_id in ids

    @abstractmethod
    def put_set(self, set_dir: Path, set_id: str, files: Sequence[SetFile],
                transfer: Transfer) -> None:
        """Copy the set's files and its manifest; the copy appears under its final name only
        whole and verified (size and SHA-256), else nothing appears and this raises."""

    @abstractmethod
    def read_manifest(self, set_id: str) -> bytes:
        """The raw manifest of a copy (at most MAX_MANIFEST_BYTES)."""

    @abstractmethod
    def fetch_files(self, set_id: str, names: Sequence[str], dest: Path,
                    transfer: Transfer) -> None:
        """Write the named files of a copy into the empty local directory ``dest``."""

    @abstractmethod
    def delete_set(self, set_id: str) -> None:
        """Remove a copy; its manifest goes first, so a half-deleted copy is never listed."""

    def sweep(self) -> None:
        """Remove what an interrupted copy left under a temporary name (a killed run, a disk
        that filled up): called once per round, under the replicate lock, before any copy, so
        a partial copy never keeps eating the space the next one needs."""
        return None

    def close(self) -> None:
        return None


def manifest_last(files: Sequence[SetFile]) -> list[SetFile]:
    return sorted(files, key=lambda f: f.name == MANIFEST)
