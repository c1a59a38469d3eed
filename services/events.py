"""Live container state from Docker's event stream, with reconnect and backoff.

A watcher thread blocks on ``/events`` (filtered to containers) and re-inspects a container
whenever an event names one of ours, so a stopped container is reported within a second rather
than at the next poll. When the engine goes away the callback hears about it, and the watcher
retries with exponential backoff (capped) until it is back or told to stop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import docker.errors
import requests.exceptions

from dcb.services.docker_gateway import ContainerInfo, DockerGateway
from dcb.services.errors import DcbError


@dataclass(frozen=True)
class ContainerChanged:
    name: str
    info: ContainerInfo | None
    """None: the container no longer exists."""


@dataclass(frozen=True)
class EngineDown:
    error: str
    retry_in: float


@dataclass(frozen=True)
class EngineUp:
    pass


WatchEvent = ContainerChanged | EngineDown | EngineUp


# Events that change what the dashboard shows (health checks' exec_* events do not).
STATE_EVENTS = ("create", "start", "restart", "stop", "die", "kill", "pause", "unpause",
                "oom", "destroy", "rename", "health_status", "update")


def watch_containers(names: Iterable[str], callback: Callable[[WatchEvent], None],
                     stop: threading.Event, connect: Callable[[], DockerGateway] | None = None,
                     max_backoff: float = 30.0) -> None:
    """Run until ``stop`` is set; meant for a worker thread."""
    wanted = set(names)
    connect = connect or (lambda: DockerGateway.connect(timeout=10))
    backoff = 1.0
    while not stop.is_set():
        gw: DockerGateway | None = None
        stream = None
        try:
            gw = connect()
            # Subscribe first, then resync: an event during the resync waits in the stream
            # instead of falling into the gap between the two.
            stream = gw.client.api.events(decode=True, filters={
                "type": "container", "event": list(STATE_EVENTS)})
            callback(EngineUp())
            backoff = 1.0
            for n in wanted:
                callback(ContainerChanged(n, gw.find_container(n)))
            closer = threading.Thread(target=_close_on_stop, args=(stop, stream), daemon=True)
            closer.start()
            for ev in stream:
                if stop.is_set():
                    break
                name = (ev.get("Actor") or {}).get("Attributes", {}).get("name")
                if name in wanted:
                    callback(ContainerChanged(name, gw.find_container(name)))
            if stop.is_set():
                return
            raise DcbError("Docker event stream ended")
        except (DcbError, docker.errors.DockerException,
                requests.exceptions.RequestException, OSError) as e:
            if stop.is_set():
                return
            msg = e.message if isinstance(e, DcbError) else str(e).splitlines()[0][:200]
            callback(EngineDown(msg, backoff))
            stop.wait(backoff)
            backoff = min(backoff * 2, max_backoff)
        finally:
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
            if gw is not None:
                with contextlib.suppress(Exception):
                    gw.close()


def _close_on_stop(stop: threading.Event, stream: object) -> None:
    stop.wait()
    with contextlib.suppress(Exception):
        stream.close()  # type: ignore[attr-defined]
