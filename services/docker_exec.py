"""Streaming processes in containers: ``docker exec`` and short-lived helper containers.

Both speak Docker's multiplexed stream protocol (8-byte frame headers, stdout/stderr). Output
is read through a 1 MiB buffer in constant memory; stderr keeps only its last 64 KiB for error
messages. Every exit status is checked by the caller through ``wait()``: a non-zero status is a
failure even when bytes arrived.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions
from docker.types import LogConfig

from dcb.services.docker_gateway import DockerGateway, _as_unavailable
from dcb.services.errors import DcbError, NotFound

STDOUT, STDERR = 1, 2
STDERR_KEEP = 64 * 1024
HELPER_LABEL = "dcb.helper"


def _response_reader(sock: Any) -> io.BufferedReader | None:
    try:
        fp = sock._response.raw._fp.fp
    except AttributeError:
        return None
    return fp if isinstance(fp, io.BufferedReader) and fp.raw is sock else None


class _Framed:
    """Reads demultiplexed frames from a hijacked Docker connection."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self._raw_sock: socket.socket | None = getattr(sock, "_sock", None) or (
            sock if isinstance(sock, socket.socket) else None)
        # The HTTP client read the response headers through a buffered reader, which may
        # already hold the first frames (a quick process's whole output): read through that
        # same reader, or those bytes are lost. docker-py keeps the response on the socket.
        buffered = _response_reader(sock)
        if buffered is not None:
            self.reader = buffered
        else:
            raw = sock if isinstance(sock, io.RawIOBase) else socket.SocketIO(sock, "rb")
            self.reader = io.BufferedReader(raw, buffer_size=1 << 20)
        self.stderr = bytearray()
        self.eof = False

    def frames(self) -> Iterator[tuple[int, bytes]]:
        while not self.eof:
            header = self.reader.read(8)
            if len(header) < 8:
                self.eof = True
                return
            stream, size = struct.unpack(">BxxxL", header)
            data = self.reader.read(size)
            if len(data) < size:
                self.eof = True
                if data:
                    yield stream, data
                return
            yield stream, data

    def stdout(self) -> Iterator[bytes]:
        for stream, data in self.frames():
            if stream == STDERR:
                self.stderr += data
                if len(self.stderr) > STDERR_KEEP:
                    del self.stderr[:-STDERR_KEEP]
            else:
                yield data

    def send(self, data: bytes) -> None:
        if self._raw_sock is None:
            raise DcbError("cannot write to this Docker stream")
        self._raw_sock.sendall(data)

    def close_stdin(self) -> None:
        if self._raw_sock is not None:
            with contextlib.suppress(OSError):
                self._raw_sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()
        with contextlib.suppress(Exception):
            self.sock.close()
        if self._raw_sock is not None:
            with contextlib.suppress(Exception):
                self._raw_sock.close()

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


class ExecProcess:
    """A process started with ``docker exec`` whose stdout streams to us.

    Secrets go in ``env`` (the exec's environment), never in ``cmd``.
    """

    def __init__(self, gw: DockerGateway, container: str, cmd: list[str], *,
                 env: dict[str, str] | None = None, stdin: bool = False,
                 user: str = "") -> None:
        self.api = gw.client.api
        self.cmd = cmd
        self.container = container
        try:
            self.exec_id = self.api.exec_create(
                container, cmd, stdout=True, stderr=True, stdin=stdin,
                environment=env or None, user=user)["Id"]
            sock = self.api.exec_start(self.exec_id, socket=True)
        except docker.errors.NotFound:
            raise NotFound(f"container {container!r} not found") from None
        except docker.errors.APIError as e:
            if e.status_code == 409:
                raise DcbError(f"container {container!r} is not running",
                               hint=f"docker start {container}") from None
            raise _as_unavailable(e) from None
        except requests.exceptions.RequestException as e:
            raise _as_unavailable(e) from None
        self.stream = _Framed(sock)

    def stdout(self) -> Iterator[bytes]:
        return self.stream.stdout()

    def read_all(self) -> bytes:
        return b"".join(self.stdout())

    def send(self, data: bytes) -> None:
        self.stream.send(data)

    def close_stdin(self) -> None:
        self.stream.close_stdin()

    def feed(self, chunks: Iterator[bytes], timeout: float = 3600) -> int:
        """Send ``chunks`` to the process's stdin while draining its output; its exit code.

        The output is drained in a thread so a chatty process never blocks our writes.
        """
        drained = threading.Thread(target=lambda: collections.deque(self.stdout(), maxlen=0),
                                   daemon=True, name="dcb-exec-drain")
        drained.start()
        try:
            for c in chunks:
                self.send(c)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the process exited early: its exit code says why
        finally:
            self.close_stdin()
        drained.join(timeout)
        return self.wait(timeout)

    @property
    def stderr_text(self) -> str:
        return self.stream.stderr_text

    def wait(self, timeout: float = 60) -> int:
        """The process's exit code, once Docker reports it finished."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = self.api.exec_inspect(self.exec_id)
            except (docker.errors.APIError, requests.exceptions.RequestException) as e:
                raise _as_unavailable(e) from None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return -1 if code is None else int(code)
            if time.monotonic() > deadline:
                raise DcbError(f"{self.cmd[0]} in {self.container} did not finish in {timeout}s")
            time.sleep(0.05)

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> ExecProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HelperProcess:
    """A throwaway container (``--network none``, no logs kept) whose stdout streams to us.

    Docker's default json-file log driver would store everything it prints (shared/
    PERFORMANCE.md), so the log driver is ``none`` and output is read by attaching.
    """

    def __init__(self, gw: DockerGateway, image: str, cmd: list[str], *,
                 volumes: dict[str, Mapping[str, str]] | None = None, user: str = "0:0",
                 owner: str = "1") -> None:
        self.gw = gw
        api = gw.client.api
        self.name = f"dcb-helper-{uuid.uuid4().hex[:10]}"
        try:
            host_config = api.create_host_config(
                binds=volumes or {}, network_mode="none",
                log_config=LogConfig(type="none"), auto_remove=False)
            created = api.create_container(
                image, cmd, name=self.name, user=user, entrypoint=[],
                host_config=host_config, labels={HELPER_LABEL: owner},
                network_disabled=True, stdin_open=False, tty=False)
            self.id = created["Id"]
            sock = api.attach_socket(self.id, params={"stdout": 1, "stderr": 1, "stream": 1})
            self.stream = _Framed(sock)
            api.start(self.id)
        except docker.errors.ImageNotFound:
            self.remove()
            raise NotFound(f"helper image {image!r} not found locally",
                           hint="set [storage] helper_image to an image that has tar") from None
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            self.remove()
            raise _as_unavailable(e) from None

    def stdout(self) -> Iterator[bytes]:
        return self.stream.stdout()

    @property
    def stderr_text(self) -> str:
        return self.stream.stderr_text

    def wait(self, timeout: float = 60) -> int:
        try:
            res = self.gw.client.api.wait(self.id, timeout=int(timeout))
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return int(res.get("StatusCode", -1))

    def remove(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        with contextlib.suppress(Exception):
            self.gw.client.api.remove_container(self.name, force=True, v=False)

    def __enter__(self) -> HelperProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def store_tag(root: Path) -> str:
    """Labels a store's helper containers, so one store's cleanup never touches another's."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def remove_stale_helpers(gw: DockerGateway, owner: str) -> int:
    """Remove helper containers a killed run of this store left behind."""
    n = 0
    for c in gw.client.containers.list(all=True,
                                       filters={"label": f"{HELPER_LABEL}={owner}"}):
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            c.remove(force=True)
            n += 1
    return n
