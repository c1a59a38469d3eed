"""The demo guard: a demo configuration acts on the demo stack and nothing else.

With ``[stack] demo = "<id>"`` (written by ``dcb demo up``), every Docker client dcb connects
(``DockerGateway.connect``) checks each container and volume a request names: one without the
label ``dcb.demo=<id>`` is refused before the request is sent, whatever the request (inspect,
exec, stop, archive, remove...). Containers and volumes created meanwhile (helpers, drill
sandboxes, a recreated volume) get the label, and a container may mount only labelled
volumes. The check sits under every service, in the client itself, so no code path (present
or future) can reach a real stack from the demo's configuration.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import docker
import docker.utils

from dcb.services.errors import DcbError

DEMO_LABEL = "dcb.demo"

_lock = threading.Lock()
_required: tuple[str, str] | None = None


class NotDemo(DcbError):
    """A demo configuration named a container or volume of another stack."""

    exit_code = 2


def required_label() -> tuple[str, str] | None:
    """``(key, value)`` every container and volume must carry, or None (no guard)."""
    return _required


@contextlib.contextmanager
def demo_guard(demo_id: str) -> Iterator[None]:
    """While active, Docker clients connected by dcb refuse anything not labelled
    ``dcb.demo=demo_id``. An empty id guards nothing (a real stack's configuration)."""
    global _required
    if not demo_id:
        yield
        return
    with _lock:
        previous, _required = _required, (DEMO_LABEL, demo_id)
    try:
        yield
    finally:
        with _lock:
            _required = previous


def client_from_env(timeout: int) -> docker.DockerClient:
    """``docker.from_env``, guarded when a demo guard is active."""
    required = _required
    if required is None:
        return docker.from_env(timeout=timeout)
    return _GuardedDockerClient(required, timeout=timeout, version=None,
                                **docker.utils.kwargs_from_env())


class _GuardedDockerClient(docker.DockerClient):
    def __init__(self, required: tuple[str, str], **kwargs: Any) -> None:
        # DockerClient's own __init__ only builds its APIClient: build the guarded one instead.
        self.api = GuardedAPIClient(required, **kwargs)


class GuardedAPIClient(docker.APIClient):
    """An ``APIClient`` whose every request naming a container or volume is checked first."""

    def __init__(self, required: tuple[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.required = required

    def _url(self, pathfmt: str, *args: str, **kwargs: Any) -> str:
        # Every container or volume request of docker-py builds its URL here.
        if args and pathfmt.startswith("/containers/{0}"):
            self._check("container", args[0])
        elif args and pathfmt.startswith("/volumes/{0}"):
            self._check("volume", args[0])
        base: Any = super()  # docker-py's private helpers are not in its type stubs
        url: str = base._url(pathfmt, *args, **kwargs)
        return url

    def _labels(self, kind: str, name: str) -> dict[str, str] | None:
        """The object's labels; None when it does not exist."""
        path = "/containers/{0}/json" if kind == "container" else "/volumes/{0}"
        base: Any = super()
        res = base._get(base._url(path, name))  # the unchecked URL: no recursion
        if res.status_code == 404:
            return None
        base._raise_for_status(res)
        data = res.json()
        labels = (data.get("Config") or {}).get("Labels") if kind == "container" \
            else data.get("Labels")
        return dict(labels or {})

    def _check(self, kind: str, name: str, must_exist: bool = False) -> None:
        labels = self._labels(kind, name)
        key, value = self.required
        if labels is None:
            if must_exist:
                raise NotDemo(f"refusing to create {kind} {name!r} without the demo label: "
                              f"this is the demo's configuration ([stack] demo = {value!r})")
            return  # the real request reports "not found"
        if labels.get(key) != value:
            raise NotDemo(
                f"refusing to touch {kind} {name!r}: it is not part of demo {value} "
                f"(no label {key}={value}); this configuration acts on the demo stack only",
                hint="use your own dcb.toml (or --config) for a real stack")

    def create_container(self, *args: Any, **kwargs: Any) -> Any:
        key, value = self.required
        labels = kwargs.get("labels") or {}
        if not isinstance(labels, Mapping):
            labels = dict.fromkeys(labels, "")
        kwargs["labels"] = {**labels, key: value}
        for volume in _named_volumes(kwargs.get("host_config") or {}):
            self._check("volume", volume, must_exist=True)
        return super().create_container(*args, **kwargs)

    def create_volume(self, name: str | None = None, driver: str | None = None,
                      driver_opts: Any = None, labels: Mapping[str, str] | None = None) -> Any:
        key, value = self.required
        return super().create_volume(name, driver, driver_opts, {**(labels or {}), key: value})


def _named_volumes(host_config: Mapping[str, Any]) -> list[str]:
    """Named volumes a container's host config mounts (bind sources start with /)."""
    names = []
    for bind in host_config.get("Binds") or []:
        source = str(bind).split(":", 1)[0]
        if source and not source.startswith("/"):
            names.append(source)
    for m in host_config.get("Mounts") or []:
        if m.get("Type") == "volume" and m.get("Source"):
            names.append(str(m["Source"]))
    return names
