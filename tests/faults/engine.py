"""A private Docker engine for the faults that take the engine itself away.

The session's engine is shared by every test (and, on a developer's machine, by other
sessions): restarting it would break them. This is a second ``dockerd`` started exactly as
``deploy/setup.sh`` starts the shared one (``--iptables=false --ip6tables=false
--bridge=none``) with a data root, exec root, socket and pid file of its own under /var/tmp,
the test images loaded into it. Its restart is real: the daemon stops its containers, exits,
and comes back; containers with ``restart: unless-stopped`` (as Compose stacks use) start
again, containers someone stopped stay stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from tests.stackkit import BUSYBOX_IMAGE, PG_IMAGE

FLAGS = ("--iptables=false", "--ip6tables=false", "--bridge=none")
OWNER = "owner.pid"


class PrivateEngine:
    def __init__(self) -> None:
        sweep()
        self.dir = Path(tempfile.mkdtemp(prefix="dcbe-", dir="/var/tmp"))
        (self.dir / OWNER).write_text(str(os.getpid()))
        self.sock = self.dir / "d.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self.start()
            save = subprocess.Popen(["docker", "save", PG_IMAGE, BUSYBOX_IMAGE],
                                    stdout=subprocess.PIPE)
            subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                           check=True, capture_output=True, timeout=600)
            assert save.wait(60) == 0
        except BaseException:
            self.destroy()
            raise

    def args(self) -> list[str]:
        return ["dockerd", *FLAGS, "--data-root", str(self.dir / "data"), "--exec-root",
                str(self.dir / "exec"), "-H", self.host, "--pidfile", str(self.dir / "d.pid")]

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=120)

    def start(self) -> None:
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 (the daemon keeps it)
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = subprocess.run(["docker", "-H", self.host, "info"], capture_output=True)
            if r.returncode == 0:
                return
            assert self.proc.poll() is None, (self.dir / "dockerd.log").read_text()[-2000:]
            time.sleep(0.2)
        raise TimeoutError("the private Docker engine did not start")

    def stop(self) -> None:
        """Stop the daemon as an administrator would (SIGTERM, it stops its containers)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        if self.proc is not None:
            c = self.client()
            with contextlib.suppress(Exception):
                for ctr in c.containers.list(all=True):
                    ctr.remove(force=True, v=True)
                for v in c.volumes.list():
                    v.remove(force=True)
            c.close()
        self.stop()
        _remove(self.dir)


def _remove(d: Path) -> None:
    # A daemon that died uncleanly may leave its overlay mounts behind.
    for line in reversed(Path("/proc/mounts").read_text().splitlines()):
        mnt = line.split()[1]
        if mnt.startswith(str(d) + "/"):
            subprocess.run(["umount", "-l", mnt], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def sweep() -> None:
    """Stop and remove private engines whose test session died."""
    for d in Path("/var/tmp").glob("dcbe-*"):
        try:
            owner = int((d / OWNER).read_text())
            os.kill(owner, 0)
            continue  # its session is alive
        except (OSError, ValueError):
            pass
        with contextlib.suppress(OSError, ValueError):
            pid = int((d / "d.pid").read_text())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(d).encode() in cmd:
                os.kill(pid, signal.SIGTERM)
                time.sleep(3)
        _remove(d)
