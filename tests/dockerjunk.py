"""What fills a Docker host's disk, made for real on the test engine: a container with a 50 MB
json-file log, dangling images (local builds from the busybox test image), stopped containers,
an unused volume; and, beside the session's test stack, a stopped container the configuration
names and one that mounts a volume the configuration names (neither may ever be offered for
removal). Nothing here touches the test stack itself: other tests count its volumes' users.

Every item is labelled ``dcb.test=1`` with the owning pid (``stackkit.LABEL``), named
``dcbj<hex>-...``, and removed by ``destroy_junk`` even when tests fail. Each destructive test
uses items of its own, so the tests do not depend on their order.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from tests.stackkit import BUSYBOX_IMAGE, LABEL, TestStack

MiB = 1024 * 1024
LOG_LINES = 50_000
"""Lines of 1000 characters: about 53 MB of json-file log."""
LINE = 1000


@dataclass
class Junk:
    __test__ = False
    prefix: str
    client: docker.DockerClient
    stack: TestStack
    chatty: str = ""
    """Running; its log is over 50 MiB."""
    chatty2: str = ""
    """Running, a small log, and it goes on logging ("tick"): for the truncation."""
    dangling: list[str] = field(default_factory=list)
    """Image ids: 20 MB, 1 MB, 0.5 MB and 0.3 MB of their own, largest first."""
    tagged: str = ""
    """The image holding the tag the dangling ones lost."""
    stopped: list[str] = field(default_factory=list)
    """Container names: s1 exited with a 10 MB writable layer, then four never started."""
    stack_worker: str = ""
    """Stopped, and named in [stack] app_containers."""
    mounter: str = ""
    """Stopped, and mounts ``configured_volume`` (the stack's own volumes keep their users:
    other tests count them)."""
    configured_volume: str = ""
    """A volume the junk's configuration adds to [stack] volumes."""
    unused_volume: str = ""
    """5 MB, no container."""
    images: list[str] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def write_config(self, directory: Path) -> Path:
        return self.stack.write_config(directory, stack={
            "app_containers": [self.stack.backend_container, self.stack_worker],
            "volumes": [*self.stack.volumes, self.configured_volume]})

    def container_id(self, name: str) -> str:
        return str(self.client.containers.get(name).id)

    def log_path(self, name: str) -> str:
        return str(self.client.api.inspect_container(name)["LogPath"])


def _build(client: docker.DockerClient, tag: str, run: str) -> str:
    dockerfile = (f"FROM {BUSYBOX_IMAGE}\n"
                  f"LABEL dcb.test=1 dcb.test.pid={LABEL['dcb.test.pid']}\nRUN {run}\n")
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                   network_mode="none", rm=True, forcerm=True)
    return str(image.id)


def _wait_log(path: str, at_least: int, timeout: float = 120) -> None:
    """Until the file holds ``at_least`` bytes and stopped growing."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        size = os.stat(path).st_size if os.path.exists(path) else 0
        if size >= at_least and size == last:
            return
        last = size
        time.sleep(0.3)
    raise TimeoutError(f"{path}: {last} bytes, expected {at_least}")


def make_junk(client: docker.DockerClient, stack: TestStack) -> Junk:
    prefix = "dcbj" + secrets.token_hex(3)
    j = Junk(prefix, client, stack)
    try:
        _fill(j)
    except BaseException:
        destroy_junk(j)
        raise
    return j


def _run(j: Junk, name: str, cmd: str, **kw: Any) -> None:
    j.client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", cmd], name=name, detach=True,
                            network_mode="none", labels=LABEL, init=True, **kw)
    j.containers.append(name)


def _fill(j: Junk) -> None:
    c = j.client
    line = "x" * LINE
    j.chatty = f"{j.prefix}-chatty"
    _run(j, j.chatty, f"yes {line} | head -n {LOG_LINES}; exec sleep 2147483647")
    j.chatty2 = f"{j.prefix}-chatty2"
    _run(j, j.chatty2, f"yes {line} | head -n 2000; while :; do echo tick; sleep 0.3; done")

    tag = f"{j.prefix}-junk:1"
    for run in ("head -c 20000000 /dev/urandom > /blob", "head -c 1000000 /dev/urandom > /b",
                "head -c 500000 /dev/urandom > /b", "head -c 300000 /dev/urandom > /b",
                "echo final > /b"):
        image_id = _build(c, tag, run)
        j.images.append(image_id)
        j.dangling.append(image_id)
    j.tagged = j.dangling.pop()

    s1 = f"{j.prefix}-stopped1"
    _run(j, s1, "head -c 10000000 /dev/urandom > /junk")
    for n in range(2, 6):
        name = f"{j.prefix}-stopped{n}"
        c.containers.create(BUSYBOX_IMAGE, ["sleep", "600"], name=name, network_mode="none",
                            labels=LABEL)
        j.containers.append(name)
    j.stopped = [s1] + [f"{j.prefix}-stopped{n}" for n in range(2, 6)]

    j.stack_worker = f"{j.prefix}-stackworker"
    c.containers.create(BUSYBOX_IMAGE, ["sleep", "600"], name=j.stack_worker,
                        network_mode="none", labels=LABEL)
    j.containers.append(j.stack_worker)
    j.configured_volume = f"{j.prefix}_configured"
    c.volumes.create(j.configured_volume, labels=LABEL)
    j.volumes.append(j.configured_volume)
    j.mounter = f"{j.prefix}-mounter"
    c.containers.create(BUSYBOX_IMAGE, ["sleep", "600"], name=j.mounter, network_mode="none",
                        labels=LABEL,
                        volumes={j.configured_volume: {"bind": "/data", "mode": "ro"}})
    j.containers.append(j.mounter)

    j.unused_volume = f"{j.prefix}_unused"
    c.volumes.create(j.unused_volume, labels=LABEL)
    j.volumes.append(j.unused_volume)
    c.containers.run(BUSYBOX_IMAGE, ["sh", "-c", "head -c 5000000 /dev/urandom > /v/blob"],
                     remove=True, network_mode="none", labels=LABEL,
                     volumes={j.unused_volume: {"bind": "/v", "mode": "rw"}})

    c.containers.get(s1).wait(timeout=60)
    _wait_log(j.log_path(j.chatty), LOG_LINES * LINE)
    _wait_log(j.log_path(j.chatty2), 2000 * LINE)


def destroy_junk(j: Junk) -> None:
    for name in reversed(j.containers):
        with contextlib.suppress(docker.errors.NotFound):
            j.client.containers.get(name).remove(force=True, v=False)
    for v in j.volumes:
        with contextlib.suppress(docker.errors.NotFound):
            j.client.volumes.get(v).remove(force=True)
    with contextlib.suppress(docker.errors.NotFound):
        j.client.images.remove(f"{j.prefix}-junk:1")
    for image_id in reversed(j.images):
        with contextlib.suppress(docker.errors.NotFound):
            j.client.images.remove(image_id, force=True)


def sweep_images(client: docker.DockerClient) -> None:
    """Remove images built by earlier, killed test runs (their pid is gone)."""
    from tests.stackkit import _owner_alive

    for image in client.images.list(all=True, filters={"label": "dcb.test=1"}):
        if not _owner_alive(image.labels):
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image.id, force=True)
