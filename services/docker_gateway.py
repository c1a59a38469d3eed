"""The one place dcb talks to the Docker Engine (through the Docker SDK).

Errors from the SDK are translated into ``DockerUnavailable`` / ``NotFound`` with a message a
person on call can act on; no traceback reaches the user.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors
import requests.exceptions

from dcb.services.errors import DcbError, DockerUnavailable, NotFound
from dcb.services.guard import client_from_env

DEFAULT_TIMEOUT = 120


@dataclass(frozen=True)
class Mount:
    volume: str | None
    """The named volume, or None for a bind mount / tmpfs."""
    source: str
    destination: str
    read_only: bool


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    id: str
    state: str
    """Docker's state: running, exited, paused, restarting, created, dead."""
    health: str | None
    """healthy / unhealthy / starting, or None when the image has no health check."""
    image: str
    started_at: datetime | None
    mounts: tuple[Mount, ...] = ()

    @property
    def running(self) -> bool:
        return self.state == "running"

    def uptime_seconds(self, now: datetime | None = None) -> float | None:
        if not self.running or self.started_at is None:
            return None
        now = now or datetime.now(UTC)
        return max(0.0, (now - self.started_at).total_seconds())


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str
    mountpoint: str
    size_bytes: int | None
    """From ``docker system df`` (may be None when the engine did not compute it)."""


def _parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith("0001-"):
        return None
    # Docker gives RFC 3339 with nanoseconds: trim to microseconds for fromisoformat.
    v = value.rstrip("Z")
    if "." in v:
        head, frac = v.split(".", 1)
        v = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(v).replace(tzinfo=UTC)
    except ValueError:
        return None


def describe_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class DockerGateway:
    """A thin, typed wrapper around ``docker.DockerClient``."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client

    @classmethod
    def connect(cls, timeout: int = DEFAULT_TIMEOUT) -> DockerGateway:
        """Connect using the usual ``DOCKER_HOST``/``DOCKER_*`` environment."""
        host = describe_docker_host()
        try:
            # Guarded while a demo configuration is in use (services/guard.py).
            client = client_from_env(timeout)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise DockerUnavailable(
                f"Docker engine unreachable at {host}: {_short(e)}",
                hint="is dockerd running, and may this user use its socket? (check DOCKER_HOST)",
            ) from None
        return cls(client)

    def close(self) -> None:
        self.client.close()

    def container(self, name: str) -> ContainerInfo:
        """Inspect a container by name or id; ``NotFound`` when it does not exist."""
        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            raise NotFound(
                f"container {name!r} not found",
                hint="check [stack] in dcb.toml against `docker ps -a`",
            ) from None
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return _container_info(c.attrs)

    def find_container(self, name: str) -> ContainerInfo | None:
        try:
            return self.container(name)
        except NotFound:
            return None

    def volume(self, name: str) -> VolumeInfo:
        try:
            v = self.client.volumes.get(name)
        except docker.errors.NotFound:
            raise NotFound(
                f"volume {name!r} not found",
                hint="check [stack] volumes against `docker volume ls`",
            ) from None
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        attrs = v.attrs
        return VolumeInfo(
            name=attrs["Name"],
            driver=attrs.get("Driver", "local"),
            mountpoint=attrs.get("Mountpoint", ""),
            size_bytes=None,
        )

    def volume_sizes(self) -> dict[str, int]:
        """Sizes of all volumes, as ``docker system df -v`` computes them.

        The engine runs one disk-usage computation at a time and refuses a second; after a
        few retries the sizes are reported unknown (empty) rather than failing the caller.
        """
        for attempt in range(10):
            try:
                df = self.client.df()
                break
            except docker.errors.APIError as e:
                if "already running" not in str(e):
                    raise _as_unavailable(e) from None
                if attempt == 9:
                    return {}
                time.sleep(0.5)
            except requests.exceptions.RequestException as e:
                raise _as_unavailable(e) from None
        sizes: dict[str, int] = {}
        for v in df.get("Volumes") or []:
            size = (v.get("UsageData") or {}).get("Size", -1)
            if isinstance(size, int) and size >= 0:
                sizes[v["Name"]] = size
        return sizes

    def containers_using_volume(self, volume: str) -> list[ContainerInfo]:
        try:
            found = self.client.containers.list(all=True, filters={"volume": volume})
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return [_container_info(c.attrs) for c in found]


def _container_info(attrs: dict[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    health = (state.get("Health") or {}).get("Status")
    mounts = tuple(
        Mount(
            volume=m.get("Name") if m.get("Type") == "volume" else None,
            source=m.get("Source", ""),
            destination=m.get("Destination", ""),
            read_only=not m.get("RW", True),
        )
        for m in attrs.get("Mounts") or []
    )
    return ContainerInfo(
        name=attrs.get("Name", "").lstrip("/"),
        id=attrs.get("Id", "")[:12],
        state=state.get("Status", "unknown"),
        health=health,
        image=(attrs.get("Config") or {}).get("Image", ""),
        started_at=_parse_time(state.get("StartedAt")),
        mounts=mounts,
    )


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    # The SDK nests "Error while fetching server API version: (...)": keep the innermost reason.
    for marker in ("Connection refused", "No such file or directory", "Permission denied",
                   "timed out", "Name or service not known"):
        if marker in str(e):
            return marker
    return text[:200]


def _as_unavailable(e: BaseException) -> DcbError:
    return DockerUnavailable(f"Docker engine error at {describe_docker_host()}: {_short(e)}")
