"""Streaming processes in containers: ``docker exec`` and short-lived helper containers.

Both speak Docker's multiplexed stream protocol (8-byte frame headers, stdout/stderr). Output
is read through a 1 MiB buffer in constant memory; stderr keeps only its last 64 KiB for error
messages. Every exit status is checked by the caller through ``wait()``: a non-zero status is a
failure even when bytes arrived.

No stream carries a timeout of its own: a ``pg_dump`` waiting for a lock or a ``pg_restore``
building an index may rightly stay silent for hours (the Docker client's request timeout would
otherwise cut every stream after two minutes of silence). A step's explicit limit and
cancellation come from a ``StepGuard``, which stops the step's processes and ends their
streams, so a blocked read returns and the caller reports why.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import os
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import docker.errors
import requests.exceptions
from docker.types import LogConfig

from dcb.services.docker_gateway import DockerGateway, _as_unavailable, describe_docker_host
from dcb.services.errors import Cancelled, DcbError, DockerUnavailable, NotFound

STDOUT, STDERR = 1, 2
STDERR_KEEP = 64 * 1024
HELPER_LABEL = "dcb.helper"
POLL = 0.05


class StepTimeout(DcbError):
    """A step ran longer than its explicit limit and was stopped."""


class Abortable(Protocol):
    def abort(self, reason: DcbError | None = None) -> None:
        """Stop from another thread; ``wait()`` then raises ``reason``."""


A = TypeVar("A", bound=Abortable)


class StepGuard:
    """Stops a step's processes when its time limit passes or the run is cancelled.

    ``limit`` is in seconds (0: none); ``cancelled`` is polled. A watcher thread calls
    ``abort()`` on every watched process, which ends their streams; the step then calls
    ``check()`` after each blocking call and raises ``StepTimeout`` or ``Cancelled``.
    """

    def __init__(self, what: str, limit: float = 0,
                 cancelled: Callable[[], bool] | None = None,
                 setting: str = "[timeouts] step") -> None:
        self.what = what
        self.limit = limit
        self.cancelled = cancelled
        self.setting = setting
        self.reason: DcbError | None = None
        self._procs: list[Abortable] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, proc: A) -> A:
        with self._lock:
            self._procs.append(proc)
            stopped = self.reason is not None
        if stopped:
            proc.abort(self.reason)
        return proc

    def check(self) -> None:
        """Raise why the step was stopped, if it was."""
        if self.reason is not None:
            raise self.reason

    def stop(self, reason: DcbError) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            procs = list(self._procs)
        for p in procs:
            with contextlib.suppress(Exception):
                p.abort(reason)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.limit if self.limit else None
        while not self._done.wait(0.1):
            if self.cancelled is not None and self.cancelled():
                self.stop(Cancelled(f"{self.what}: cancelled"))
                return
            if deadline is not None and time.monotonic() > deadline:
                self.stop(StepTimeout(
                    f"{self.what} did not finish within {self.limit:g}s ({self.setting}); "
                    "stopped",
                    hint=f"raise {self.setting} (0: no limit)"))
                return

    def __enter__(self) -> StepGuard:
        if self.limit or self.cancelled is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="dcb-step-guard")
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if exc_type is None:
            self.check()
        elif self.reason is None:
            # The step failed: nothing it started may run on (or wait on in a lock queue).
            with self._lock:
                procs, self._procs = self._procs, []
            for p in procs:
                with contextlib.suppress(Exception):
                    p.abort(None)


def _unlimited(sock: Any) -> None:
    """Take the Docker client's request timeout off a hijacked stream's socket."""
    settimeout = getattr(sock, "settimeout", None)
    if settimeout is not None:
        with contextlib.suppress(OSError):
            settimeout(None)


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
        _unlimited(self._raw_sock if self._raw_sock is not None else sock)
        self.aborted = False
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

    def _read(self, n: int) -> bytes:
        try:
            return self.reader.read(n)
        except (OSError, ValueError) as e:
            if self.aborted:
                return b""
            raise DockerUnavailable(f"lost the Docker stream: {e}") from None

    def frames(self) -> Iterator[tuple[int, bytes]]:
        while not self.eof:
            header = self._read(8)
            if len(header) < 8:
                self.eof = True
                return
            stream, size = struct.unpack(">BxxxL", header)
            data = self._read(size)
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

    def abort(self) -> None:
        """End the stream from another thread: a blocked read returns at once (closing the
        reader instead would wait for the reader's lock, held by that blocked read)."""
        self.aborted = True
        target = self._raw_sock if self._raw_sock is not None else self.sock
        with contextlib.suppress(Exception):
            target.shutdown(socket.SHUT_RDWR)

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

    Secrets go in ``env`` (the exec's environment), never in ``cmd``. ``on_abort`` is called
    when a ``StepGuard`` stops the process (PostgreSQL clients end their server sessions
    there: a killed client's backend could otherwise wait on in a lock queue).
    """

    def __init__(self, gw: DockerGateway, container: str, cmd: list[str], *,
                 env: dict[str, str] | None = None, stdin: bool = False,
                 user: str = "", on_abort: Callable[[], None] | None = None) -> None:
        self.api = gw.client.api
        self.cmd = cmd
        self.container = container
        self.on_abort = on_abort
        self.aborted = False
        self.abort_reason: DcbError | None = None
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

    def feed(self, chunks: Iterator[bytes], timeout: float | None = None) -> int:
        """Send ``chunks`` to the process's stdin while draining its output; its exit code.

        The output is drained in a thread so a chatty process never blocks our writes. No
        limit unless ``timeout`` is given: a ``StepGuard`` stops a step that runs too long.
        """
        errors: list[DcbError] = []

        def drain() -> None:
            try:
                collections.deque(self.stdout(), maxlen=0)
            except DcbError as e:
                errors.append(e)

        drained = threading.Thread(target=drain, daemon=True, name="dcb-exec-drain")
        drained.start()
        try:
            for c in chunks:
                self.send(c)
        except OSError:
            pass  # the process exited early or was stopped: its exit code says why
        finally:
            self.close_stdin()
        drained.join(timeout)
        if self.abort_reason is not None:
            raise self.abort_reason
        if errors:
            raise errors[0]
        return self.wait(timeout)

    @property
    def stderr_text(self) -> str:
        return self.stream.stderr_text

    def wait(self, timeout: float | None = None) -> int:
        """The process's exit code, once Docker reports it finished.

        Without ``timeout`` it waits as long as the process runs: its output has ended by
        now, and a ``StepGuard`` ends the wait of a step that runs too long (raising its
        reason; -1 when aborted without one).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.abort_reason is not None:
                raise self.abort_reason
            try:
                info = self.api.exec_inspect(self.exec_id)
            except (docker.errors.APIError, requests.exceptions.RequestException) as e:
                raise _as_unavailable(e) from None
            if not info.get("Running"):
                code = info.get("ExitCode")
                return -1 if code is None else int(code)
            if self.aborted:
                return -1
            if deadline is not None and time.monotonic() > deadline:
                raise DcbError(f"{self.cmd[0]} in {self.container} did not finish in {timeout}s")
            time.sleep(POLL)

    def abort(self, reason: DcbError | None = None) -> None:
        """Stop the process (from another thread): end our stream so a blocked read returns,
        run ``on_abort``, and signal the process itself when the engine is on this host."""
        self.abort_reason = reason
        self.aborted = True
        self.stream.abort()
        if self.on_abort is not None:
            with contextlib.suppress(Exception):
                self.on_abort()
        with contextlib.suppress(Exception):
            info = self.api.exec_inspect(self.exec_id)
            if info.get("Running"):
                _kill_local(int(info.get("Pid") or 0), self.cmd[0])

    def close(self) -> None:
        self.stream.close()

    def __enter__(self) -> ExecProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


READER_CAPS = ("DAC_READ_SEARCH",)
"""What a helper that only reads a volume keeps of root's capabilities: reading every file
whatever its owner and mode (tar of a PostgreSQL data dir owned by uid 999, mode 0700)."""


class HelperProcess:
    """A throwaway container whose stdout streams to us, as confined as its work allows:
    ``--network none``, every capability dropped but ``caps``, ``no-new-privileges`` (a setuid
    binary in the image gains nothing), a read-only root filesystem, no logs kept.

    Docker's default json-file log driver would store everything it prints (shared/
    PERFORMANCE.md), so the log driver is ``none`` and output is read by attaching.
    """

    def __init__(self, gw: DockerGateway, image: str, cmd: list[str], *,
                 volumes: dict[str, Mapping[str, str]] | None = None, user: str = "0:0",
                 owner: str = "1", caps: Sequence[str] = READER_CAPS) -> None:
        self.gw = gw
        api = gw.client.api
        self.name = f"dcb-helper-{uuid.uuid4().hex[:10]}"
        self.aborted = False
        self.abort_reason: DcbError | None = None
        try:
            host_config = api.create_host_config(
                binds=volumes or {}, network_mode="none",
                log_config=LogConfig(type="none"), auto_remove=False,
                cap_drop=["ALL"], cap_add=list(caps), security_opt=["no-new-privileges"],
                read_only=True)
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

    def wait(self, timeout: float | None = None) -> int:
        """The container's exit code once it stopped (-1 once aborted); no limit unless
        ``timeout`` is given (a ``StepGuard`` ends the wait of a step that runs too long)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.abort_reason is not None:
                raise self.abort_reason
            if self.aborted:
                return -1
            try:
                state = self.gw.client.api.inspect_container(self.id)["State"]
            except (docker.errors.APIError, requests.exceptions.RequestException) as e:
                raise _as_unavailable(e) from None
            if not state.get("Running") and state.get("Status") != "created":
                return int(state.get("ExitCode", -1))
            if deadline is not None and time.monotonic() > deadline:
                raise DcbError(f"helper container {self.name} did not finish in {timeout}s")
            time.sleep(POLL)

    def abort(self, reason: DcbError | None = None) -> None:
        """Stop the helper from another thread: kill it and end our stream."""
        self.abort_reason = reason
        self.aborted = True
        if getattr(self, "stream", None) is not None:
            self.stream.abort()
        with contextlib.suppress(Exception):
            self.gw.client.api.kill(self.name)

    def remove(self) -> None:
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        with contextlib.suppress(Exception):
            self.gw.client.api.remove_container(self.name, force=True, v=False)

    def __enter__(self) -> HelperProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _kill_local(pid: int, program: str) -> None:
    """SIGTERM an exec'd process by its host pid, when the engine runs on this host and the
    pid still is that program (never another process that reused the number)."""
    host = describe_docker_host()
    if pid <= 0 or not host.startswith("unix://"):
        return
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return
    if os.path.basename(argv0.decode(errors="replace")) == os.path.basename(program):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


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
