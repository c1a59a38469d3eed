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
"""Seconds one API request may take ([timeouts] docker_api). Streams of running processes
are taken off it (services/docker_exec.py): only a StepGuard limits them."""
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"


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
    compose_project: str | None = None
    """The Docker Compose project that created it (label ``com.docker.compose.project``)."""

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
    mount: str = ""
    """What Docker mounts on the mountpoint while a container uses the volume (``tmpfs``,
    ``nfs``, a plugin's driver), "" for a plain directory. Such a mountpoint is, between
    uses, an empty directory of the host: never read or written there."""


def _mounted_by_docker(attrs: dict[str, Any]) -> str:
    driver = attrs.get("Driver") or "local"
    opts = attrs.get("Options") or {}
    if driver != "local":
        return f"driver {driver}"
    if opts.get("type") or opts.get("device"):
        return f"type={opts.get('type') or 'bind'}"
    return ""


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
            mount=_mounted_by_docker(attrs),
        )

    def disk_usage(self, attempts: int = 10) -> dict[str, Any] | None:
        """``docker system df -v`` as the engine reports it (``client.df()``).

        The engine runs one disk-usage computation at a time and refuses a second: this
        retries every 0.5 s, ``attempts`` times, then returns None (busy).
        """
        for attempt in range(attempts):
            try:
                df: dict[str, Any] = self.client.df()
                return df
            except docker.errors.APIError as e:
                if "already running" not in str(e):
                    raise _as_unavailable(e) from None
                if attempt < attempts - 1:
                    time.sleep(0.5)
            except requests.exceptions.RequestException as e:
                raise _as_unavailable(e) from None
        return None

    def engine_info(self) -> dict[str, Any]:
        """``docker info`` (``DockerRootDir``, ``LoggingDriver``, ...)."""
        try:
            info: dict[str, Any] = self.client.info()
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return info

    def inspect_container_raw(self, ref: str) -> dict[str, Any] | None:
        """``docker inspect`` of a container by id or name; None when it does not exist."""
        try:
            attrs: dict[str, Any] = self.client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return attrs

    def inspect_image_raw(self, ref: str) -> dict[str, Any] | None:
        """``docker image inspect``; None when the image does not exist."""
        try:
            attrs: dict[str, Any] = self.client.api.inspect_image(ref)
        except docker.errors.NotFound:
            return None
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return attrs

    def list_containers_raw(self) -> list[dict[str, Any]]:
        """Every container (``docker ps -a``), as the list endpoint reports it (one call)."""
        try:
            found: list[dict[str, Any]] = self.client.api.containers(all=True)
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return found

    def remove_image(self, image_id: str) -> None:
        """Remove one image by id, never forced: the engine refuses (``DcbError``) when a
        container uses it or it has more than one tag. As with ``docker rmi``, its untagged
        parents that nothing else uses (the intermediate images of a classic build, which
        hold its layers) go with it."""
        try:
            self.client.api.remove_image(image_id, force=False, noprune=False)
        except docker.errors.NotFound:
            raise NotFound(f"image {image_id[:19]} no longer exists") from None
        except docker.errors.APIError as e:
            raise DcbError(f"image {image_id[:19]}: the engine refused: {_explain(e)}") from None
        except requests.exceptions.RequestException as e:
            raise _as_unavailable(e) from None

    def remove_container(self, container_id: str) -> None:
        """Remove one stopped container (never forced, never its volumes): the engine refuses
        (``DcbError``) a running one."""
        try:
            self.client.api.remove_container(container_id, v=False, force=False)
        except docker.errors.NotFound:
            raise NotFound(f"container {container_id[:12]} no longer exists") from None
        except docker.errors.APIError as e:
            raise DcbError(f"container {container_id[:12]}: the engine refused: "
                           f"{_explain(e)}") from None
        except requests.exceptions.RequestException as e:
            raise _as_unavailable(e) from None

    def volume_sizes(self) -> dict[str, int]:
        """Sizes of all volumes, as ``docker system df -v`` computes them.

        When the engine stays busy with another disk-usage computation the sizes are
        reported unknown (empty) rather than failing the caller.
        """
        df = self.disk_usage()
        if df is None:
            return {}
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

    def containers_with_label(self, label: str) -> list[ContainerInfo]:
        """Every container (running or not) carrying ``label`` (``key`` or ``key=value``)."""
        try:
            found = self.client.containers.list(all=True, filters={"label": label})
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return [_container_info(c.attrs) for c in found]

    def volumes_with_label(self, label: str) -> list[str]:
        """Names of the volumes carrying ``label`` (``key`` or ``key=value``)."""
        try:
            found = self.client.volumes.list(filters={"label": label})
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise _as_unavailable(e) from None
        return [v.name for v in found]


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
        compose_project=((attrs.get("Config") or {}).get("Labels") or {}).get(
            COMPOSE_PROJECT_LABEL) or None,
    )


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    # The SDK nests "Error while fetching server API version: (...)": keep the innermost reason.
    for marker in ("Connection refused", "No such file or directory", "Permission denied",
                   "timed out", "Name or service not known"):
        if marker in str(e):
            return marker
    return text[:200]


def _explain(e: docker.errors.APIError) -> str:
    """The engine's own reason (``explanation``), else the first line."""
    expl = e.explanation
    text = expl.decode("utf-8", "replace") if isinstance(expl, bytes) else expl or ""
    return text.splitlines()[0][:300] if text else _short(e)


def _as_unavailable(e: BaseException) -> DcbError:
    return DockerUnavailable(f"Docker engine error at {describe_docker_host()}: {_short(e)}")


short_reason = _short
"""The innermost reason of a Docker client error ("Connection refused"...)."""
explain_api_error = _explain
"""The engine's own reason for a refused request."""
