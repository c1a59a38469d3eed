"""Reading a Docker named volume as a tar stream.

Two ways, chosen by ``[storage] volume_access``:

* ``mountpoint``: GNU tar on the host reads the volume's directory directly (about 5x faster
  than any stream through the daemon, shared/PERFORMANCE.md). Needs dcb to run as root on
  the engine's host.
* ``helper``: a throwaway container with the volume mounted read-only runs ``tar``; its stdout
  is attached (no log driver), nothing else crosses.

Both run GNU tar with :data:`TAR_FLAGS`: a pax archive keeping numeric owners, modes with
setuid/setgid/sticky, mtimes (to the second), symlinks verbatim, hard links, empty dirs, any file
name, sparse files as sparse, and every extended attribute: ``user.*``, ``trusted.*`` (host tar
only: a container lacks the privilege to read them), ``security.*`` with file capabilities,
and POSIX ACLs as their raw ``system.posix_acl_*`` values with numeric ids (``--acls`` would
store them as text with user *names*, which map to other ids on another host). The backup
checks the stream with the restore's rules as it is written (safe_tar.StreamValidator).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dcb.services.docker_exec import HelperProcess
from dcb.services.docker_gateway import ContainerInfo, DockerGateway, Mount
from dcb.services.errors import ConfigError, DcbError

READ_CHUNK = 1024 * 1024
TAR_FLAGS = ("--format=posix", "--numeric-owner", "--sparse", "--xattrs", "--xattrs-include=*",
             "--pax-option=delete=atime,delete=ctime,delete=mtime")
"""GNU tar options of every volume archive. Times are kept to the second (the ustar header's
mtime): nanosecond pax records would give every member a second header, tripling the cost of
checking the stream as it is written (and atime/ctime would only make each archive differ)."""
NOT_GNU_TAR = "dcb: tar in the helper image is not GNU tar"


class TarSource(Protocol):
    def stdout(self) -> Iterator[bytes]: ...
    def wait(self, timeout: float | None = None) -> int: ...
    @property
    def stderr_text(self) -> str: ...
    def close(self) -> None: ...
    def abort(self, reason: DcbError | None = None) -> None: ...


class LocalTar:
    """GNU tar on the host, reading a directory."""

    def __init__(self, directory: str) -> None:
        self.proc = subprocess.Popen(
            ["tar", *TAR_FLAGS, "-C", directory, "-cf", "-", "."],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._stderr = b""
        self.abort_reason: DcbError | None = None

    def stdout(self) -> Iterator[bytes]:
        assert self.proc.stdout is not None
        while True:
            # What is there (tar writes 10 KiB records): whole 1 MiB reads cost ~50 MB more
            # peak RSS in the multithreaded compressor for no measurable gain.
            b = self.proc.stdout.read1(READ_CHUNK)  # type: ignore[attr-defined]
            if not b:
                return
            yield b

    def wait(self, timeout: float | None = None) -> int:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise DcbError(f"tar did not finish in {timeout}s") from None
        if self.abort_reason is not None:
            raise self.abort_reason
        self._stderr = err or b""
        return self.proc.returncode

    def abort(self, reason: DcbError | None = None) -> None:
        """Stop tar from another thread (a ``StepGuard``); ``wait()`` then raises ``reason``."""
        self.abort_reason = reason
        with contextlib.suppress(OSError):
            self.proc.kill()

    @property
    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


class HelperTar:
    """GNU ``tar`` in a throwaway container with the volume mounted read-only at /v.

    An image whose tar is not GNU tar (busybox, bsdtar) still works, with that tar's plain
    options: it keeps no extended attributes, ACLs, capabilities or sparseness, and says so
    (:attr:`lossy`, read after :meth:`wait`).
    """

    def __init__(self, gw: DockerGateway, image: str, volume: str, owner: str) -> None:
        flags = " ".join(f"'{f}'" for f in TAR_FLAGS)
        script = (f"if tar --version 2>/dev/null | grep -q 'GNU tar'; then "
                  f"exec tar {flags} -C /v -cf - .; fi; "
                  f"echo '{NOT_GNU_TAR}' >&2; exec tar -cf - -C /v .")
        self.image = image
        self.helper = HelperProcess(gw, image, ["sh", "-c", script],
                                    volumes={volume: {"bind": "/v", "mode": "ro"}},
                                    owner=owner)

    @property
    def lossy(self) -> bool:
        return NOT_GNU_TAR in self.helper.stderr_text

    def stdout(self) -> Iterator[bytes]:
        return self.helper.stdout()

    def wait(self, timeout: float | None = None) -> int:
        return self.helper.wait(timeout)

    def abort(self, reason: DcbError | None = None) -> None:
        self.helper.abort(reason)

    @property
    def stderr_text(self) -> str:
        return self.helper.stderr_text

    def close(self) -> None:
        self.helper.remove()


def mountpoint_usable(mountpoint: str) -> bool:
    """True when this process can read the volume's directory on the host directly."""
    host = os.environ.get("DOCKER_HOST", "")
    local_engine = host == "" or host.startswith("unix://")
    return (local_engine and os.geteuid() == 0 and shutil.which("tar") is not None
            and bool(mountpoint) and Path(mountpoint).is_dir())


def open_volume_tar(gw: DockerGateway, volume: str, access: str, helper_image: str,
                    owner: str) -> TarSource:
    info = gw.volume(volume)
    if info.mount:
        # Docker mounts it for the helper; on the host it may be the empty directory below.
        if access == "mountpoint":
            raise DcbError(f"volume {volume} is mounted by Docker only while a container "
                           f"uses it ({info.mount}): its host directory may be empty",
                           hint="set [storage] volume_access = \"auto\" or \"helper\"")
        return HelperTar(gw, helper_image, volume, owner)
    if access == "mountpoint" or (access == "auto" and mountpoint_usable(info.mountpoint)):
        if not mountpoint_usable(info.mountpoint):
            raise DcbError(f"volume {volume}: cannot read its mountpoint {info.mountpoint}",
                           hint="run dcb as root on the Docker host, or set "
                                "[storage] volume_access = \"helper\"")
        return LocalTar(info.mountpoint)
    return HelperTar(gw, helper_image, volume, owner)


# -- PostgreSQL's own data ------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterVolumes:
    """Which named volumes hold the running cluster's files, read from its container's mounts.

    Compose prefixes volume names (``myproj_postgres_data``), so the name in the config proves
    nothing: the volume mounted where the data directory is does.
    """

    data_directory: str
    data_volume: str | None
    """The named volume holding the data directory (None: a bind mount or the container's
    own filesystem)."""
    data_subdir: str
    """Where in that volume the data directory is (``.``: its root; ``pgdata`` when
    PGDATA=/var/lib/postgresql/data/pgdata under a volume at /var/lib/postgresql/data)."""
    parts: dict[str, str]
    """Other named volumes holding cluster files (mounted inside the data directory, e.g. a
    separate pg_wal, or at a tablespace): volume -> what it holds."""
    data_mount: str | None = None
    """Where the mount holding the data directory is in the container (None: no mount)."""


def _within(path: str, root: str) -> bool:
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def cluster_volumes(mounts: tuple[Mount, ...], data_directory: str,
                    tablespaces: tuple[str, ...] = ()) -> ClusterVolumes:
    """Match the data directory and tablespace locations against the container's mounts."""
    holder: Mount | None = None
    for m in mounts:
        if _within(data_directory, m.destination) and (
                holder is None or len(m.destination) > len(holder.destination)):
            holder = m
    data_volume = holder.volume if holder is not None else None
    subdir = (posixpath.relpath(posixpath.normpath(data_directory),
                                posixpath.normpath(holder.destination))
              if holder is not None else ".")
    parts: dict[str, str] = {}
    for m in mounts:
        if m.volume is None or m.volume == data_volume:
            continue
        if _within(m.destination, data_directory):
            parts[m.volume] = f"{m.destination}, inside the data directory {data_directory}"
        for t in tablespaces:
            if _within(m.destination, t) or _within(t, m.destination):
                parts[m.volume] = f"the tablespace at {t}"
    return ClusterVolumes(data_directory, data_volume, subdir, parts,
                          holder.destination if holder is not None else None)


DEFAULT_PGDATA = "/var/lib/postgresql/data"
"""The official image's data directory (and Debian's image's, in the tests)."""
_TABLESPACES_SQL = ("SELECT * FROM (SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                    "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1) t")


def container_pgdata(gw: DockerGateway, name: str) -> str:
    """The data directory a PostgreSQL container is configured with (``PGDATA``)."""
    env = gw.client.containers.get(name).attrs.get("Config", {}).get("Env") or []
    return next((e.partition("=")[2] for e in env if e.startswith("PGDATA=")), DEFAULT_PGDATA)


def cluster_layout(gw: DockerGateway, container: ContainerInfo,
                   query: Callable[[str], str] | None = None) -> ClusterVolumes:
    """Which volumes hold a PostgreSQL container's cluster: the data directory and tablespaces
    the server reports when it answers (``query``), else the container's ``PGDATA``."""
    rows: list[str] = []
    if query is not None and container.running:
        with contextlib.suppress(DcbError):
            rows = query(f"SELECT current_setting('data_directory') UNION ALL "
                         f"{_TABLESPACES_SQL}").splitlines()
    if not rows or not rows[0].strip():
        rows = [container_pgdata(gw, container.name)]
    return cluster_volumes(container.mounts, rows[0].strip(),
                           tuple(r.strip() for r in rows[1:] if r.strip()))


def safe_subdir(value: object) -> str:
    """A manifest's ``data_subdir`` (input): ``"."`` when absent, else a plain relative path
    inside the volume; ``..``, absolute or odd paths are refused."""
    if value in (None, "", "."):
        return "."
    text = str(value)
    norm = posixpath.normpath(text)
    if (text.startswith("/") or norm.startswith("..") or norm != text.rstrip("/")
            or any(ord(c) < 32 for c in text) or len(text) > 255):
        raise DcbError(f"the manifest's data_subdir {text[:80]!r} is not a plain "
                       "subdirectory of the volume")
    return norm


def resolve_pg_data_volume(configured: str, explicit: bool, container: ContainerInfo,
                           layout: ClusterVolumes, selected: tuple[str, ...]) -> str | None:
    """The volume to take with pg_basebackup (None: none of ``selected`` is the data volume).

    ``configured``/``explicit``: ``[stack] postgres_data_volume`` and whether the user set it
    (the default ``postgres_data`` is only a guess, replaced by what the mounts say). A value
    the user set that contradicts the mounts, and a selected volume holding other files of the
    running cluster, are configuration errors: a raw copy of a live cluster is never taken.
    """
    where = f"container {container.name}"
    if explicit and configured != layout.data_volume:
        found = (f"on volume {layout.data_volume!r}" if layout.data_volume
                 else "on no named volume")
        raise ConfigError(
            f"[stack] postgres_data_volume is {configured!r}, but PostgreSQL's data directory "
            f"{layout.data_directory} is {found} (mounts of {where})",
            hint=(f"set postgres_data_volume = \"{layout.data_volume}\"" if layout.data_volume
                  else "remove postgres_data_volume from the config"))
    for v in selected:
        if v in layout.parts:
            raise ConfigError(
                f"volume {v!r} holds files of the running PostgreSQL cluster "
                f"({layout.parts[v]} in {where}): dcb never copies a live cluster raw",
                hint="remove it from [stack] volumes; back up the cluster with its databases "
                     "and its data volume")
    return layout.data_volume
