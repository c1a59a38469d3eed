"""What to tell the user when a container of the stack is missing: the ``docker compose``
command that creates it again, from the labels Compose puts on the stack's other containers
and volumes (project, working directory, compose files) and, when it can be found, the
service that names the container."""

from __future__ import annotations

import contextlib
import re
import shlex
from pathlib import Path

import docker.errors
import requests.exceptions

from dcb.services.docker_gateway import DockerGateway

PROJECT = "com.docker.compose.project"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
SERVICE = "com.docker.compose.service"

_SERVICE_KEY = re.compile(r"^(\s+)([A-Za-z0-9._-]+):\s*(#.*)?$")
_CONTAINER_NAME = re.compile(r"^\s+container_name:\s*[\"']?([^\"'#\s]+)")


def compose_labels(gw: DockerGateway, containers: tuple[str, ...],
                   volumes: tuple[str, ...]) -> dict[str, str]:
    """The Compose labels of the first of ``containers`` or ``volumes`` that has them."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        for name in containers:
            with contextlib.suppress(docker.errors.NotFound):
                labels = gw.client.containers.get(name).labels or {}
                if PROJECT in labels:
                    return dict(labels)
        for name in volumes:
            with contextlib.suppress(docker.errors.NotFound):
                labels = gw.client.volumes.get(name).attrs.get("Labels") or {}
                if PROJECT in labels:
                    return dict(labels)
    return {}


def service_for(container: str, labels: dict[str, str]) -> str | None:
    """The Compose service that creates ``container``: a ``container_name:`` in the compose
    files, else Compose's own naming (``<project>-<service>-<n>``)."""
    for f in (labels.get(CONFIG_FILES) or "").split(","):
        with contextlib.suppress(OSError):
            service = _service_with_container_name(Path(f.strip()).read_text(), container)
            if service:
                return service
    project = labels.get(PROJECT)
    if project:
        m = re.match(rf"^{re.escape(project)}[-_](.+)[-_]\d+$", container)
        if m:
            return m[1]
    return None


def _service_with_container_name(text: str, container: str) -> str | None:
    """A line scan of a compose file (no YAML parser needed for this one question)."""
    in_services = False
    service_indent: int | None = None
    current: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            in_services = line.split(":")[0].strip() == "services"
            service_indent, current = None, None
            continue
        if not in_services:
            continue
        m = _SERVICE_KEY.match(line)
        indent = len(line) - len(line.lstrip())
        if m and (service_indent is None or indent == service_indent):
            service_indent, current = indent, m[2]
            continue
        cm = _CONTAINER_NAME.match(line)
        if cm and current and cm[1] == container:
            return current
    return None


def up_command(container: str, labels: dict[str, str]) -> str:
    """``docker compose ... up -d SERVICE`` for a missing container."""
    service = service_for(container, labels)
    parts = ["docker", "compose"]
    wd = labels.get(WORKING_DIR)
    if wd:
        parts += ["--project-directory", wd]
    for f in (labels.get(CONFIG_FILES) or "").split(","):
        if f.strip():
            parts += ["-f", f.strip()]
    if labels.get(PROJECT):
        parts += ["-p", labels[PROJECT]]
    parts += ["up", "-d"]
    cmd = " ".join(shlex.quote(p) for p in parts)
    return f"{cmd} {shlex.quote(service)}" if service else f"{cmd} SERVICE"
