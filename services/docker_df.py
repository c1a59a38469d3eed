"""What Docker keeps on disk, by kind, like ``docker system df -v``, plus each container's log
file: the model behind ``dcb du --docker`` and the console's Docker view. And the only cleanup
dcb does, each as a plan that is previewed, confirmed by typing its token, then executed
exactly as previewed.

Sizes come from the engine (``GET /system/df``, the SDK's ``client.df()``): images (size,
shared size, containers using them), containers' writable layers (``SizeRw``), volumes (size
and reference count) and the build cache. Log files are not in that report: each container's
``LogPath`` comes from ``docker inspect`` and is stat'ed when this process can read it (dcb
running as root beside the engine); otherwise its size is unknown and says so.

Every item is ranked by what it alone occupies: an image by its unique size (size minus the
layers it shares; shared layers are counted once, in the kind's total), a container by its
writable layer, a volume, a log, a build-cache record by their size. "Reclaimable" per kind
follows ``docker system df``; for volumes it leaves out the ones the configured stack needs.

Each item also says whether the configured stack needs it (``needed_by``) and what dcb backs up
of it (``backed_up``). The stack is the configured containers (``[stack] postgres_container``,
``app_containers``, ``stop_during_backup``), any container of the same Compose project, any
container mounting a configured volume, the images of those containers, and the configured
volumes.

Cleanup (``plan_cleanup`` then ``execute_cleanup``):

* ``remove-dangling-images``: untagged images no container uses; removed one by one by id,
  never forced (with their untagged intermediate parents that nothing else uses, as
  ``docker rmi`` does: they hold the image's layers and are not listed on their own).
* ``remove-stopped-containers``: exited, created or dead containers the stack does not need
  (and not dcb's own helpers); removed without their volumes, never forced.
* ``truncate-log``: one container's ``json-file`` log truncated to zero where it lies (the
  engine appends to it, so the container keeps running and logging).

Volumes are never removed by dcb: an unused one is shown as such, nothing more. A plan holds
the items of the report it was made from; execution checks every one against the engine first
and refuses the whole plan if any changed (an image got a tag or a container, a container
started, a log moved), then re-checks each item just before acting on it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar

from dcb.services import formatting as fmt
from dcb.services.config import Config, StackConfig
from dcb.services.docker_exec import HELPER_LABEL
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled, DcbError, UsageError

KIND_ORDER = ("image", "container", "volume", "build-cache", "log")
KIND_LABELS = {"image": "Images", "container": "Containers", "volume": "Local volumes",
               "build-cache": "Build cache", "log": "Container logs"}
KIND_WORDS = {"image": "image", "container": "container", "volume": "volume",
              "build-cache": "build cache", "log": "log"}
STOPPED_STATES = ("exited", "created", "dead")
ACTIVE_STATES = ("running", "paused", "restarting")
COMPOSE_PROJECT = "com.docker.compose.project"
JSON_FILE = "json-file"
NO_TAG = "<none>:<none>"
INSPECT_THREADS = 4

REMOVE_IMAGES = "remove-dangling-images"
REMOVE_CONTAINERS = "remove-stopped-containers"
TRUNCATE_LOG = "truncate-log"
ACTIONS = {
    REMOVE_IMAGES: "Remove dangling images",
    REMOVE_CONTAINERS: "Remove stopped containers",
    TRUNCATE_LOG: "Truncate a container's log",
}


# -- items ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DockerItem:
    """One thing Docker keeps on disk."""

    kind: ClassVar[str] = ""
    key: str
    """Unique within the kind: image id, container id, volume name, cache record id; a log's
    key is its container's id."""
    name: str
    size_bytes: int | None
    """What this item alone occupies (the ranking); None when unknown."""
    reclaimable_bytes: int = 0
    created: datetime | None = None
    status: str = ""
    """Short state: ``dangling``, ``in use``, ``exited``, ``unused``, ..."""
    users: tuple[str, ...] = ()
    """Containers using it (images, volumes)."""
    needed_by: str | None = None
    """Why the configured stack needs it; None when it does not."""
    backed_up: str | None = None
    """What dcb backs up of it; None when nothing."""
    offer: str | None = None
    """The cleanup action that may remove (or truncate) it, if any."""

    @property
    def label(self) -> str:
        """Kind and name, e.g. ``image app:1`` or ``log dart-cloud-backend``."""
        return f"{KIND_WORDS[self.kind]} {self.name}"

    def note(self) -> str:
        """One line for listings: status, ``stack`` (the configured stack needs it),
        ``backup`` (dcb backs it up), and what cleanup may do."""
        parts = [self.status] if self.status else []
        if self.needed_by:
            parts.append("stack")
        if self.backed_up:
            parts.append("backup")
        if self.offer == TRUNCATE_LOG:
            parts.append("truncatable")
        elif self.offer:
            parts.append("removable")
        return ", ".join(parts)

    def facts(self) -> list[tuple[str, str]]:
        """Label/value lines for the details view."""
        out = [("kind", KIND_WORDS[self.kind]), ("name", self.name),
               ("size", fmt.size(self.size_bytes) if self.size_bytes is not None
                else "unknown"),
               ("reclaimable", fmt.size(self.reclaimable_bytes))]
        if self.created is not None:
            out.append(("created", f"{self.created:%Y-%m-%d %H:%M} UTC "
                                   f"({fmt.age(self.created)})"))
        if self.status:
            out.append(("status", self.status))
        out += self._own_facts()
        out.append(("configured stack", f"needs it: {self.needed_by}" if self.needed_by
                    else "does not need it"))
        out.append(("backed up by dcb", self.backed_up or self._not_backed_up()))
        out.append(("cleanup", ACTIONS[self.offer] + " offers it" if self.offer
                    else self.why_not_offered()))
        return out

    def _own_facts(self) -> list[tuple[str, str]]:
        return []

    def _not_backed_up(self) -> str:
        return "no"

    def why_not_offered(self) -> str:
        """Why no cleanup action offers this item."""
        return "not offered"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = (v.isoformat() if isinstance(v, datetime)
                           else list(v) if isinstance(v, tuple) else v)
        return out


@dataclass(frozen=True, kw_only=True)
class ImageItem(DockerItem):
    kind: ClassVar[str] = "image"
    tags: tuple[str, ...] = ()
    total_bytes: int = 0
    """The image's size with every layer (``docker images``' SIZE)."""
    shared_bytes: int = 0
    """Layers it shares with other images (counted once, in the kind's total)."""
    containers: int = 0

    @property
    def dangling(self) -> bool:
        return not self.tags and self.containers == 0

    def _own_facts(self) -> list[tuple[str, str]]:
        return [("id", self.key), ("tags", ", ".join(self.tags) or "none (untagged)"),
                ("image size", f"{fmt.size(self.total_bytes)} ({fmt.size(self.shared_bytes)} "
                               f"shared, {fmt.size(self.size_bytes)} unique)"),
                ("containers", ", ".join(self.users) or "none")]

    def _not_backed_up(self) -> str:
        return "no (dcb backs up databases and volumes, not images)"

    def why_not_offered(self) -> str:
        if self.containers:
            return "not offered: a container uses it"
        if self.tags:
            return "not offered: it has a tag (dcb removes only dangling images)"
        return "not offered"


@dataclass(frozen=True, kw_only=True)
class ContainerItem(DockerItem):
    kind: ClassVar[str] = "container"
    state: str = ""
    state_text: str = ""
    """Docker's own words, e.g. ``Exited (0) 3 hours ago``."""
    image: str = ""
    root_fs_bytes: int | None = None
    log_driver: str = ""
    log_path: str = ""
    volumes: tuple[str, ...] = ()
    project: str = ""
    """Its Compose project, if any."""
    helper: bool = False
    """A dcb helper container (removed by dcb itself)."""

    def _own_facts(self) -> list[tuple[str, str]]:
        out = [("id", self.key[:12]), ("state", self.state_text or self.state),
               ("image", self.image),
               ("writable layer", fmt.size(self.size_bytes)),
               ("with its image", fmt.size(self.root_fs_bytes)),
               ("log", f"{self.log_driver or '?'}" + (f" {self.log_path}" if self.log_path
                                                        else ""))]
        out.append(("volumes", ", ".join(self.volumes) or "none"))
        if self.project:
            out.append(("compose project", self.project))
        return out

    def _not_backed_up(self) -> str:
        return "no (only its volumes, when they are configured)"

    def why_not_offered(self) -> str:
        if self.state not in STOPPED_STATES:
            return f"not offered: it is {self.state}"
        if self.needed_by:
            return "not offered: the configured stack needs it"
        if self.helper:
            return "not offered: a dcb helper (dcb removes it itself)"
        return "not offered"


@dataclass(frozen=True, kw_only=True)
class VolumeItem(DockerItem):
    kind: ClassVar[str] = "volume"
    driver: str = "local"
    mountpoint: str = ""
    ref_count: int = -1
    """Containers referencing it (-1: unknown)."""

    def _own_facts(self) -> list[tuple[str, str]]:
        return [("driver", self.driver), ("mountpoint", self.mountpoint or "-"),
                ("used by", ", ".join(self.users) or "no container")]

    def _not_backed_up(self) -> str:
        return "no (not in [stack] volumes)"

    def why_not_offered(self) -> str:
        return "never: dcb does not delete volumes" + (
            " (unused: `docker volume rm` it yourself if it is not needed)"
            if not self.users and not self.needed_by else "")


@dataclass(frozen=True, kw_only=True)
class LogItem(DockerItem):
    kind: ClassVar[str] = "log"
    container_id: str = ""
    driver: str = JSON_FILE
    path: str = ""
    running: bool = False
    apparent_bytes: int | None = None
    unknown_why: str = ""
    """Why the size is unknown, when it is."""
    container_needed_by: str | None = None
    """Why the stack needs its container (the log itself it does not need)."""

    def _own_facts(self) -> list[tuple[str, str]]:
        state = "running" if self.running else "not running"
        role = (f"; the configured stack needs it: {self.container_needed_by}"
                if self.container_needed_by else "")
        out = [("container", f"{self.name} ({state}{role})"),
               ("driver", self.driver), ("path", self.path or "-")]
        if self.size_bytes is None:
            out.append(("size unknown", self.unknown_why or "not readable here"))
        elif self.apparent_bytes is not None and self.apparent_bytes != self.size_bytes:
            out.append(("apparent size", fmt.size(self.apparent_bytes)))
        return out

    def _not_backed_up(self) -> str:
        return "no (logs are not backed up)"

    def why_not_offered(self) -> str:
        if self.driver != JSON_FILE:
            return f"not offered: driver {self.driver} (dcb truncates json-file logs only)"
        if self.size_bytes is None:
            return "not offered: its size is unknown (the file is not readable here)"
        return "not offered: it is empty"


@dataclass(frozen=True, kw_only=True)
class BuildCacheItem(DockerItem):
    kind: ClassVar[str] = "build-cache"
    cache_type: str = ""
    description: str = ""
    in_use: bool = False
    shared: bool = False
    last_used: datetime | None = None
    usage_count: int = 0

    def _own_facts(self) -> list[tuple[str, str]]:
        return [("id", self.key), ("type", self.cache_type or "-"),
                ("description", self.description or "-"),
                ("in use", "yes" if self.in_use else "no"),
                ("shared", "yes" if self.shared else "no"),
                ("last used", fmt.age(self.last_used) if self.last_used else "never"),
                ("usage count", str(self.usage_count))]

    def _not_backed_up(self) -> str:
        return "no"

    def why_not_offered(self) -> str:
        return "not offered: `docker builder prune` clears the build cache"


# -- the report -------------------------------------------------------------------------------
@dataclass(frozen=True)
class KindUsage:
    """One line of ``docker system df``."""

    kind: str
    count: int
    active: int
    size_bytes: int
    reclaimable_bytes: int
    unknown: int = 0
    """Items whose size is unknown (not counted in ``size_bytes``)."""

    @property
    def label(self) -> str:
        return KIND_LABELS[self.kind]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "count": self.count,
                "active": self.active, "size_bytes": self.size_bytes,
                "reclaimable_bytes": self.reclaimable_bytes, "unknown": self.unknown}


@dataclass(frozen=True)
class DockerReport:
    collected_at: datetime
    docker_root: str
    images: tuple[ImageItem, ...] = ()
    containers: tuple[ContainerItem, ...] = ()
    volumes: tuple[VolumeItem, ...] = ()
    build_cache: tuple[BuildCacheItem, ...] = ()
    logs: tuple[LogItem, ...] = ()
    kinds: tuple[KindUsage, ...] = ()
    notes: tuple[str, ...] = ()
    """What the report could not know (e.g. log sizes not readable), one line each."""
    _sorted: list[DockerItem] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        every: list[DockerItem] = [*self.images, *self.containers, *self.volumes,
                                   *self.build_cache, *self.logs]
        every.sort(key=_rank)
        self._sorted.extend(every)

    def items(self, kind: str | None = None) -> list[DockerItem]:
        """Every item (or those of ``kind``), largest first; unknown sizes last."""
        if kind is None:
            return list(self._sorted)
        return [i for i in self._sorted if i.kind == kind]

    def find(self, kind: str, key: str) -> DockerItem | None:
        return next((i for i in self._sorted if i.kind == kind and i.key == key), None)

    def kind_usage(self, kind: str) -> KindUsage:
        return next(k for k in self.kinds if k.kind == kind)

    @property
    def total_bytes(self) -> int:
        return sum(k.size_bytes for k in self.kinds)

    @property
    def reclaimable_bytes(self) -> int:
        return sum(k.reclaimable_bytes for k in self.kinds)

    def to_json(self) -> dict[str, Any]:
        return {
            "collected_at": self.collected_at.isoformat(),
            "docker_root": self.docker_root,
            "total_bytes": self.total_bytes,
            "reclaimable_bytes": self.reclaimable_bytes,
            "kinds": [k.to_json() for k in self.kinds],
            "items": [i.to_json() for i in self._sorted],
            "notes": list(self.notes),
        }


def _rank(i: DockerItem) -> tuple[bool, int, int, str]:
    return (i.size_bytes is None, -(i.size_bytes or 0), KIND_ORDER.index(i.kind), i.name)


# -- what the configured stack needs ----------------------------------------------------------
class StackNeeds:
    """Which containers, volumes and images the configured stack needs, and why."""

    def __init__(self, stack: StackConfig, containers: Iterable[Mapping[str, Any]]) -> None:
        self.names: dict[str, str] = {}
        for n in stack.stop_during_backup:
            self.names[n] = "[stack] stop_during_backup"
        for n in stack.app_containers:
            self.names[n] = "app container ([stack] app_containers)"
        self.names[stack.postgres_container] = "PostgreSQL ([stack] postgres_container)"
        self.volumes: dict[str, str] = {v: "[stack] volumes" for v in stack.volumes}
        self.volumes[stack.postgres_data_volume] = "PostgreSQL's data ([stack] volumes)"
        self.backed_up_volumes = set(stack.volumes)
        self.databases = stack.listed_databases
        self.all_databases = stack.all_databases
        self.postgres = stack.postgres_container
        listed = list(containers)
        self.projects = {
            p for c in listed
            if _name(c) in self.names and (p := (c.get("Labels") or {}).get(COMPOSE_PROJECT))}
        self.needed_containers: dict[str, str] = {}
        for c in listed:
            why = self.container(c)
            if why:
                self.needed_containers[_name(c)] = why

    def container(self, c: Mapping[str, Any]) -> str | None:
        name = _name(c)
        if name in self.names:
            return self.names[name]
        project = (c.get("Labels") or {}).get(COMPOSE_PROJECT)
        if project and project in self.projects:
            return f"Compose project {project}, like the configured containers"
        for v in _volumes_of(c):
            if v in self.volumes:
                return f"mounts the configured volume {v}"
        return None

    def volume(self, name: str, users: Iterable[str]) -> str | None:
        if name in self.volumes:
            return self.volumes[name]
        for u in users:
            if u in self.needed_containers:
                return f"mounted by {u}, which the stack needs"
        return None

    def container_backed_up(self, name: str, volumes: Iterable[str]) -> str | None:
        parts = []
        if name == self.postgres and (self.all_databases or self.databases):
            parts.append("every database" if self.all_databases
                         else "databases " + ", ".join(self.databases))
        vols = [v for v in volumes if v in self.backed_up_volumes]
        if vols:
            parts.append(("volume " if len(vols) == 1 else "volumes ") + ", ".join(vols))
        return "; ".join(parts) or None


def _name(c: Mapping[str, Any]) -> str:
    names = c.get("Names") or []
    if names:
        return str(names[0]).lstrip("/")
    return str(c.get("Name", "")).lstrip("/")


def _volumes_of(c: Mapping[str, Any]) -> list[str]:
    return [str(m.get("Name")) for m in c.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name")]


def _ts(value: Any) -> datetime | None:
    if isinstance(value, int | float) and value > 0:
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value and not value.startswith("0001-"):
        v = value.rstrip("Z")
        if "." in v:
            head, frac = v.split(".", 1)
            v = f"{head}.{frac[:6]}"
        v = v.split("+")[0]
        try:
            return datetime.fromisoformat(v).replace(tzinfo=UTC)
        except ValueError:
            return None
    return None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and value >= 0 else default


def short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _tags(raw: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(t for t in raw.get("RepoTags") or [] if t and t != NO_TAG)


LogSize = tuple[int, int] | None
"""A log file's (disk usage, apparent size), or None when it could not be read."""


def build_report(stack: StackConfig, df: Mapping[str, Any],
                 inspects: Mapping[str, Mapping[str, Any]], docker_root: str,
                 log_sizes: Mapping[str, LogSize], collected_at: datetime,
                 notes: Sequence[str] = (), log_unknown_why: str = "") -> DockerReport:
    """The report from the engine's raw answers (pure: no I/O).

    ``df``: ``client.df()``; ``inspects``: container id -> ``docker inspect`` (for the log
    driver and path); ``log_sizes``: container id -> the log file's sizes (absent or None:
    unknown, for ``log_unknown_why``).
    """
    raw_containers = list(df.get("Containers") or [])
    needs = StackNeeds(stack, raw_containers)
    names_by_image: dict[str, list[str]] = {}
    users_by_volume: dict[str, list[str]] = {}
    for c in raw_containers:
        names_by_image.setdefault(str(c.get("ImageID", "")), []).append(_name(c))
        for v in _volumes_of(c):
            users_by_volume.setdefault(v, []).append(_name(c))

    images: list[ImageItem] = []
    for raw in df.get("Images") or []:
        iid = str(raw.get("Id", ""))
        tags = _tags(raw)
        users = tuple(sorted(names_by_image.get(iid, [])))
        containers = raw.get("Containers")
        n_containers = containers if isinstance(containers, int) and containers >= 0 \
            else len(users)
        total = _int(raw.get("Size"))
        shared = min(_int(raw.get("SharedSize")), total)
        unique = total - shared
        needed_users = [u for u in users if u in needs.needed_containers]
        dangling = not tags and n_containers == 0
        status = ("dangling" if dangling else "untagged, in use" if not tags
                  else "in use" if n_containers else "unused")
        images.append(ImageItem(
            key=iid, name=", ".join(tags) if tags else f"<none> {short_id(iid)}",
            size_bytes=unique, reclaimable_bytes=0 if n_containers else unique,
            created=_ts(raw.get("Created")), status=status, users=users,
            needed_by=f"image of {needed_users[0]}" if needed_users else None,
            offer=REMOVE_IMAGES if dangling and not needed_users else None,
            tags=tags, total_bytes=total, shared_bytes=shared, containers=n_containers))

    containers_out: list[ContainerItem] = []
    logs: list[LogItem] = []
    for c in raw_containers:
        cid = str(c.get("Id", ""))
        name = _name(c)
        state = str(c.get("State", "")).lower() or "unknown"
        labels = c.get("Labels") or {}
        vols = tuple(_volumes_of(c))
        needed = needs.needed_containers.get(name)
        helper = HELPER_LABEL in labels
        size_rw = _int(c.get("SizeRw"))
        ins = inspects.get(cid) or {}
        log_cfg = (ins.get("HostConfig") or {}).get("LogConfig") or {}
        driver = str(log_cfg.get("Type", ""))
        log_path = str(ins.get("LogPath") or "")
        containers_out.append(ContainerItem(
            key=cid, name=name, size_bytes=size_rw,
            reclaimable_bytes=0 if state in ACTIVE_STATES else size_rw,
            created=_ts(c.get("Created")), status=state,
            needed_by=needed, backed_up=needs.container_backed_up(name, vols),
            offer=(REMOVE_CONTAINERS if state in STOPPED_STATES and not needed and not helper
                   else None),
            state=state, state_text=str(c.get("Status", "")), image=str(c.get("Image", "")),
            root_fs_bytes=c.get("SizeRootFs") if isinstance(c.get("SizeRootFs"), int) else None,
            log_driver=driver, log_path=log_path, volumes=vols,
            project=str(labels.get(COMPOSE_PROJECT, "")), helper=helper))
        if driver == JSON_FILE and log_path:
            sizes = log_sizes.get(cid)
            size = sizes[0] if sizes is not None else None
            logs.append(LogItem(
                key=cid, name=name, size_bytes=size,
                reclaimable_bytes=size or 0, created=_ts(c.get("Created")),
                status=state if size is not None else "size unknown",
                offer=TRUNCATE_LOG if size else None,
                container_id=cid, driver=driver, path=log_path,
                running=state in ACTIVE_STATES,
                apparent_bytes=sizes[1] if sizes is not None else None,
                unknown_why="" if sizes is not None else log_unknown_why,
                container_needed_by=needed))

    volumes: list[VolumeItem] = []
    for raw in df.get("Volumes") or []:
        vname = str(raw.get("Name", ""))
        usage = raw.get("UsageData") or {}
        size = usage.get("Size")
        known = size if isinstance(size, int) and size >= 0 else None
        users = tuple(sorted(users_by_volume.get(vname, [])))
        refs = usage.get("RefCount")
        ref_count = refs if isinstance(refs, int) and refs >= 0 else -1
        in_use = bool(users) or ref_count > 0
        needed = needs.volume(vname, users)
        volumes.append(VolumeItem(
            key=vname, name=vname, size_bytes=known,
            reclaimable_bytes=(known or 0) if not in_use and not needed else 0,
            created=_ts(raw.get("CreatedAt")),
            status="in use" if in_use else "unused",
            users=users, needed_by=needed,
            backed_up="archived by dcb backup" if vname in needs.backed_up_volumes else None,
            driver=str(raw.get("Driver", "local")), mountpoint=str(raw.get("Mountpoint", "")),
            ref_count=ref_count))

    cache: list[BuildCacheItem] = []
    for raw in df.get("BuildCache") or []:
        size = _int(raw.get("Size"))
        in_use = bool(raw.get("InUse"))
        shared = bool(raw.get("Shared"))
        desc = str(raw.get("Description") or "")
        cid = str(raw.get("ID", ""))
        cache.append(BuildCacheItem(
            key=cid, name=f"{cid[:12]}" + (f" {desc[:40]}" if desc else ""),
            size_bytes=size, reclaimable_bytes=0 if in_use or shared else size,
            created=_ts(raw.get("CreatedAt")), status="in use" if in_use else "idle",
            cache_type=str(raw.get("Type", "")), description=desc, in_use=in_use,
            shared=shared, last_used=_ts(raw.get("LastUsedAt")),
            usage_count=_int(raw.get("UsageCount"))))

    used_by_containers = sum(i.size_bytes or 0 for i in images if i.containers)
    layers = df.get("LayersSize")
    images_total = layers if isinstance(layers, int) and layers >= 0 else sum(
        i.total_bytes for i in images)
    kinds = (
        KindUsage("image", len(images), sum(1 for i in images if i.containers), images_total,
                  max(0, images_total - used_by_containers)),
        KindUsage("container", len(containers_out),
                  sum(1 for c in containers_out if c.state in ACTIVE_STATES),
                  sum(c.size_bytes or 0 for c in containers_out),
                  sum(c.reclaimable_bytes for c in containers_out)),
        KindUsage("volume", len(volumes), sum(1 for v in volumes if v.status != "unused"),
                  sum(v.size_bytes or 0 for v in volumes),
                  sum(v.reclaimable_bytes for v in volumes),
                  sum(1 for v in volumes if v.size_bytes is None)),
        KindUsage("build-cache", len(cache), sum(1 for b in cache if b.in_use),
                  sum(b.size_bytes or 0 for b in cache), sum(b.reclaimable_bytes for b in cache)),
        KindUsage("log", len(logs), sum(1 for g in logs if g.running),
                  sum(g.size_bytes or 0 for g in logs), sum(g.reclaimable_bytes for g in logs),
                  sum(1 for g in logs if g.size_bytes is None)),
    )
    return DockerReport(collected_at=collected_at, docker_root=docker_root,
                        images=tuple(images), containers=tuple(containers_out),
                        volumes=tuple(volumes), build_cache=tuple(cache), logs=tuple(logs),
                        kinds=kinds, notes=tuple(notes))


# -- collecting from the engine ---------------------------------------------------------------
def engine_is_local() -> bool:
    """The engine runs on this host (a unix socket), so its paths are ours to stat."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


def stat_log(path: str) -> tuple[LogSize, str]:
    """A log file's sizes, or None and why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0), ""  # never started: the engine creates the file on start
    except PermissionError:
        return None, "not readable by this user (run dcb as root on the Docker host)"
    except OSError as e:
        return None, f"cannot read it: {e.strerror}"
    return (st.st_blocks * 512, st.st_size), ""


def collect_report(cfg: Config, gw: DockerGateway,
                   cancel: threading.Event | None = None) -> DockerReport:
    """Ask the engine (``df``, ``info``, one ``inspect`` per container) and stat each log file.

    Raises ``DockerUnavailable``, or ``DcbError`` when the engine stays busy with another
    disk-usage computation.
    """
    df = gw.disk_usage()
    if df is None:
        raise DcbError("the Docker engine is busy computing disk usage for someone else",
                       hint="try again in a moment")
    if cancel is not None and cancel.is_set():
        raise Cancelled("Docker disk usage cancelled")
    info = gw.engine_info()
    root = str(info.get("DockerRootDir") or "")
    ids = [str(c.get("Id", "")) for c in df.get("Containers") or []]
    inspects = inspect_all(gw, ids, cancel)
    local = engine_is_local()
    notes: list[str] = []
    log_sizes: dict[str, LogSize] = {}
    why_unknown = "" if local else "the engine runs on another host"
    for cid, ins in inspects.items():
        path = str(ins.get("LogPath") or "")
        driver = ((ins.get("HostConfig") or {}).get("LogConfig") or {}).get("Type")
        if driver != JSON_FILE or not path:
            continue
        if not local:
            log_sizes[cid] = None
            continue
        size, why = stat_log(path)
        log_sizes[cid] = size
        if size is None and not why_unknown:
            why_unknown = why
    if why_unknown and any(v is None for v in log_sizes.values()):
        notes.append(f"log sizes unknown: {why_unknown}")
    return build_report(cfg.stack, df, inspects, root, log_sizes, datetime.now(UTC), notes,
                        why_unknown)


def inspect_all(gw: DockerGateway, ids: Sequence[str],
                cancel: threading.Event | None = None) -> dict[str, dict[str, Any]]:
    """``docker inspect`` of each container (a few at a time); vanished ones are left out."""
    def one(cid: str) -> tuple[str, dict[str, Any] | None]:
        if cancel is not None and cancel.is_set():
            return cid, None
        return cid, gw.inspect_container_raw(cid)

    if len(ids) <= INSPECT_THREADS:
        results = [one(c) for c in ids]
    else:
        with ThreadPoolExecutor(INSPECT_THREADS, thread_name_prefix="dcb-inspect") as pool:
            results = list(pool.map(one, ids))
    if cancel is not None and cancel.is_set():
        raise Cancelled("Docker disk usage cancelled")
    return {cid: ins for cid, ins in results if ins is not None}


# -- cleanup ----------------------------------------------------------------------------------
class PlanChanged(DcbError):
    """An item of a previewed plan is no longer what the preview showed."""


@dataclass(frozen=True)
class CleanupPlan:
    """What one cleanup action will do: exactly these items, nothing else."""

    action: str
    items: tuple[DockerItem, ...]
    not_offered: tuple[tuple[str, str], ...] = ()
    """Items of the same kind left out, with the reason (e.g. the stack's containers)."""
    docker_root: str = ""

    @property
    def title(self) -> str:
        return ACTIONS[self.action]

    @property
    def confirm_token(self) -> str:
        """What the user types to confirm: the container's name for a log, else
        ``remove N``."""
        if not self.items:
            return ""
        if self.action == TRUNCATE_LOG:
            return self.items[0].name
        return f"remove {len(self.items)}"

    @property
    def total_bytes(self) -> int:
        return sum(i.reclaimable_bytes for i in self.items)

    def verb(self) -> str:
        return "truncate" if self.action == TRUNCATE_LOG else "remove"

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "title": self.title,
                "confirm_token": self.confirm_token, "total_bytes": self.total_bytes,
                "items": [i.to_json() for i in self.items],
                "not_offered": [{"name": n, "why": w} for n, w in self.not_offered]}


def plan_cleanup(report: DockerReport, action: str,
                 only: Collection[str] | None = None) -> CleanupPlan:
    """The plan of ``action`` over ``report``: every item it offers, largest first, or only
    those whose key is in ``only`` (each must be offered: ``UsageError`` says why not).

    ``truncate-log`` is for one container: ``only`` names it (by id).
    """
    if action not in ACTIONS:
        raise UsageError(f"unknown cleanup action {action!r}")
    kind = {REMOVE_IMAGES: "image", REMOVE_CONTAINERS: "container", TRUNCATE_LOG: "log"}[action]
    candidates = report.items(kind)
    if action == TRUNCATE_LOG and (only is None or len(only) != 1):
        raise UsageError("truncate-log needs exactly one container")
    if only is not None:
        wanted = set(only)
        chosen = [i for i in candidates if i.key in wanted]
        if action == TRUNCATE_LOG and not chosen:
            c = next((c for c in report.containers if c.key in wanted), None)
            why = (f"container {c.name}: its log driver is {c.log_driver or 'unknown'} "
                   "(dcb truncates json-file logs only)" if c else "no such container")
            raise UsageError(why)
        missing = wanted - {i.key for i in chosen}
        if missing:
            raise UsageError(f"not in the report: {', '.join(sorted(missing))}")
        refused = [i for i in chosen if i.offer != action]
        if refused:
            i = refused[0]
            raise UsageError(f"{i.label}: {i.why_not_offered()}")
        return CleanupPlan(action, tuple(chosen), docker_root=report.docker_root)
    items = tuple(i for i in candidates if i.offer == action)
    left = tuple((i.label, i.why_not_offered().removeprefix("not offered: "))
                 for i in candidates if i.offer != action and _worth_saying(i, action))
    return CleanupPlan(action, items, left, report.docker_root)


def _worth_saying(i: DockerItem, action: str) -> bool:
    """Items a preview lists as left out: the ones a person might expect in it."""
    if action == REMOVE_IMAGES:
        return isinstance(i, ImageItem) and not i.tags
    if action == REMOVE_CONTAINERS:
        return isinstance(i, ContainerItem) and i.state in STOPPED_STATES
    return False


@dataclass(frozen=True)
class CleanupResult:
    action: str
    done: tuple[DockerItem, ...]
    freed_bytes: int
    failed: DockerItem | None = None
    error: str | None = None
    not_attempted: tuple[DockerItem, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failed is None

    def summary(self) -> str:
        verb = "truncated" if self.action == TRUNCATE_LOG else "removed"
        text = f"{verb} {len(self.done)}, freed {fmt.size(self.freed_bytes)}"
        if self.failed is not None:
            text += (f"; stopped at {self.failed.label}: {self.error}"
                     f" ({len(self.not_attempted)} not attempted)")
        return text

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "freed_bytes": self.freed_bytes,
                "done": [i.label for i in self.done],
                "failed": self.failed.label if self.failed else None, "error": self.error,
                "not_attempted": [i.label for i in self.not_attempted]}


ItemCallback = Callable[[DockerItem, str], None]
"""Called after each item with ``done``, ``failed`` or ``skipped``."""


def execute_cleanup(gw: DockerGateway, stack: StackConfig, plan: CleanupPlan, confirm: str,
                    on_item: ItemCallback | None = None,
                    cancel: threading.Event | None = None) -> CleanupResult:
    """Do ``plan``: exactly its items, after ``confirm`` matched ``plan.confirm_token``.

    First every item is checked against the engine; if any changed since the report, nothing
    is done (``PlanChanged`` lists them). Then each item is checked again just before it is
    acted on; a change or a refusal by the engine stops there (the result says what was done
    and what was not attempted). ``cancel`` stops between items.
    """
    if not plan.items:
        raise UsageError("nothing to do: the plan is empty")
    if confirm.strip() != plan.confirm_token:
        raise UsageError(f"confirmation does not match: type {plan.confirm_token!r} "
                         f"to {plan.verb()} what the preview lists")
    changed = _changes(gw, stack, plan)
    if changed:
        listed = "; ".join(f"{i.label}: {why}" for i, why in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise PlanChanged(f"nothing was done: {len(changed)} of {len(plan.items)} items "
                          f"changed since the preview: {listed}{more}",
                          hint="refresh and look at the new preview")
    done: list[DockerItem] = []
    freed = 0
    for n, item in enumerate(plan.items):
        if cancel is not None and cancel.is_set():
            return CleanupResult(plan.action, tuple(done), freed, item, "cancelled",
                                 plan.items[n + 1:])
        try:
            why = _changes(gw, stack, plan, [item])
            if why:
                raise PlanChanged(f"changed since the preview: {why[0][1]}")
            freed += _act(gw, plan, item)
        except DcbError as e:
            if on_item is not None:
                on_item(item, "failed")
            return CleanupResult(plan.action, tuple(done), freed, item, e.message,
                                 plan.items[n + 1:])
        done.append(item)
        if on_item is not None:
            on_item(item, "done")
    return CleanupResult(plan.action, tuple(done), freed)


def _changes(gw: DockerGateway, stack: StackConfig, plan: CleanupPlan,
             items: Sequence[DockerItem] | None = None) -> list[tuple[DockerItem, str]]:
    items = plan.items if items is None else items
    listed = gw.list_containers_raw() if plan.action != TRUNCATE_LOG else []
    needs = StackNeeds(stack, listed)
    out: list[tuple[DockerItem, str]] = []
    for item in items:
        why = _changed(gw, needs, listed, item)
        if why:
            out.append((item, why))
    return out


def _changed(gw: DockerGateway, needs: StackNeeds, listed: list[dict[str, Any]],
             item: DockerItem) -> str | None:
    if isinstance(item, ImageItem):
        raw = gw.inspect_image_raw(item.key)
        if raw is None:
            return "it no longer exists"
        tags = _tags(raw)
        if tags:
            return f"it is now tagged {', '.join(tags)}"
        users = [_name(c) for c in listed if c.get("ImageID") == item.key]
        if users:
            return f"container {users[0]} now uses it"
        return None
    if isinstance(item, ContainerItem):
        ins = gw.inspect_container_raw(item.key)
        if ins is None:
            return "it no longer exists"
        name = _name(ins)
        state = str((ins.get("State") or {}).get("Status", "")).lower()
        if name != item.name:
            return f"it is now named {name}"
        if state not in STOPPED_STATES:
            return f"it is now {state}"
        summary = next((c for c in listed if c.get("Id") == item.key), None)
        why = needs.container(summary) if summary is not None else None
        if why:
            return f"the configured stack now needs it ({why})"
        return None
    if isinstance(item, LogItem):
        ins = gw.inspect_container_raw(item.container_id)
        if ins is None:
            return "its container no longer exists"
        driver = ((ins.get("HostConfig") or {}).get("LogConfig") or {}).get("Type")
        if driver != JSON_FILE:
            return f"its log driver is now {driver}"
        if str(ins.get("LogPath") or "") != item.path:
            return "its log file moved"
        return None
    return "dcb does not clean up this kind"


def _act(gw: DockerGateway, plan: CleanupPlan, item: DockerItem) -> int:
    """Do one item; the bytes it freed."""
    if isinstance(item, ImageItem):
        gw.remove_image(item.key)
        return item.reclaimable_bytes
    if isinstance(item, ContainerItem):
        gw.remove_container(item.key)
        return item.reclaimable_bytes
    if isinstance(item, LogItem):
        return truncate_log(item, plan.docker_root)
    raise DcbError(f"{item.label}: dcb does not clean up this kind")


def truncate_log(item: LogItem, docker_root: str) -> int:
    """Truncate a json-file log to zero in place; the bytes freed.

    Only the engine's own file for that container (``<root>/containers/<id>/<id>-json.log``)
    is touched: the path the engine reported must be exactly that.
    """
    if not engine_is_local():
        raise DcbError(f"{item.label}: the engine runs on another host; its log file is "
                       "not reachable from here")
    expected = os.path.join(docker_root, "containers", item.container_id,
                            f"{item.container_id}-json.log")
    if not docker_root or os.path.realpath(item.path) != os.path.realpath(expected):
        raise DcbError(f"{item.label}: refusing to truncate {item.path}: not the engine's "
                       f"log file for this container ({expected})")
    try:
        before = os.stat(item.path).st_blocks * 512
        os.truncate(item.path, 0)
        after = os.stat(item.path).st_blocks * 512
    except PermissionError:
        raise DcbError(f"{item.label}: cannot truncate {item.path}: permission denied",
                       hint="run dcb as root on the Docker host") from None
    except OSError as e:
        raise DcbError(f"{item.label}: cannot truncate {item.path}: {e.strerror}") from None
    return max(0, before - after)


__all__ = ["ACTIONS", "BuildCacheItem", "CleanupPlan", "CleanupResult", "ContainerItem",
           "DockerItem", "DockerReport", "ImageItem", "KindUsage", "LogItem", "PlanChanged",
           "StackNeeds", "VolumeItem", "build_report", "collect_report", "execute_cleanup",
           "plan_cleanup"]
