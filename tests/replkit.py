"""Helpers for replication tests: synthetic sets, a moto S3 server, an sshd, a fault proxy."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

SECRET_KEY = "dcbTestSecret" + secrets.token_hex(12)


def make_set(root: Path, set_id: str, files: dict[str, bytes] | None = None,
             purpose: str = "backup") -> Path:
    """A complete set as the backup engine writes it (artifacts, then the manifest)."""
    files = files or {"db-app.pgdump": os.urandom(2048) + set_id.encode(),
                      "volume-data.tar.zst": os.urandom(4096)}
    d = root / set_id
    d.mkdir(parents=True, mode=0o700)
    artifacts = []
    for name, data in files.items():
        (d / name).write_bytes(data)
        kind = "database" if name.startswith("db-") else "volume"
        artifacts.append({"kind": kind, "name": name.split("-", 1)[1].split(".")[0],
                          "file": name, "size_bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest(), "compression": "none",
                          "source": {"format": "custom" if kind == "database" else "tar"}})
    created = datetime.strptime(set_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    (d / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "id": set_id, "status": "complete", "purpose": purpose,
        "created_at": created.isoformat(), "host": "test", "artifacts": artifacts,
        "size_bytes": sum(len(v) for v in files.values())}))
    return d


def set_ids(n: int, days: int = 1, end: datetime | None = None) -> list[str]:
    end = end or datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return [(end - timedelta(days=days * i)).strftime("%Y%m%dT%H%M%SZ") for i in range(n)][::-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "dcbtestkey", "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "DCB_TEST_S3": endpoint}


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto in server mode on a loopback port; yields its endpoint URL."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


class FaultProxy:
    """A TCP proxy on loopback in front of a server, to inject faults: answer the next N
    connections with an HTTP error, or go down (drop every connection, refuse new ones)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.fail_next = 0
        self.fail_status = "503 Slow Down"
        self.failed = 0
        self.stall = False
        """Accept and read, never answer: a server that hangs."""
        self.stalled = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            with self._lock:
                fail = self.fail_next != 0
                if self.fail_next > 0:
                    self.fail_next -= 1
            if self.stall:
                self.stalled += 1
                with self._lock:
                    self._conns.append(c)
                threading.Thread(target=self._swallow, args=(c,), daemon=True).start()
                continue
            if fail:
                self.failed += 1
                threading.Thread(target=self._refuse, args=(c,), daemon=True).start()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _swallow(c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while c.recv(65536):
                pass

    def _refuse(self, c: socket.socket) -> None:
        with contextlib.suppress(OSError):
            c.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
            c.sendall(f"HTTP/1.1 {self.fail_status}\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n".encode())
        c.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(262144):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
