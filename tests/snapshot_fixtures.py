"""Fixed data for the console's snapshot tests and the TUI benchmark: no Docker, no clock.

``FixedSources`` replaces the dashboard's real sources (Docker, the store on disk) with a fixed
``StackStatus`` and ``StoreOverview``; its ``watch`` reports the engine once and then just waits
for the stop event. The builders make three containers (one exited), eight backup sets of every
status with verified marks, and a backup disk 72 % full. Everything is relative to ``FIXED_NOW``,
which the tests pin as the display clock (``services.formatting.pin_now``).

Paths shown on screen are fixed too (``SNAPSHOT_ROOT``, ``DU_ROOT``): pytest's ``tmp_path``
differs on every run, and a snapshot must not.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.config import Config, StackConfig, load_config
from dcb.services.disk import DiskUsage
from dcb.services.disk_picture import BACKUPS, DOCKER, DiskPicture, Filesystem, Offender
from dcb.services.docker_df import DockerReport, build_report
from dcb.services.docker_gateway import ContainerInfo, Mount
from dcb.services.errors import DcbError, DockerUnavailable
from dcb.services.events import ContainerChanged, EngineDown, EngineUp, WatchEvent
from dcb.services.ops.check import CRITICAL, OK, WARNING, CheckReport, Finding
from dcb.services.ops.heartbeat import DaemonState, JobState
from dcb.services.ops.history_stats import HistoryStats, stats_from
from dcb.services.overview import SetRow, StoreOverview
from dcb.services.status import BackupSummary, ContainerStatus, StackStatus, VolumeStatus
from dcb.services.store import MANIFEST, MANIFEST_VERSION, Artifact, BackupSet
from dcb.tui.sources import Sources

FIXED_NOW = datetime(2026, 11, 26, 14, 30, 0, tzinfo=UTC)
"""The display clock in every snapshot."""

SNAPSHOT_ROOT = Path("/tmp/dcb-snapshot")
BACKUP_DIR = SNAPSHOT_ROOT / "backups"
DU_ROOT = Path("/tmp/dcb-snapshot-du")

POSTGRES = "dart-cloud-postgres"
BACKEND = "dart-cloud-backend"
WORKER = "dart-cloud-worker"

GiB = 1024**3
MiB = 1024**2
KiB = 1024

DOCKER_DOWN_MESSAGE = "Docker engine unreachable at unix:///var/run/docker.sock: Connection refused"
DOCKER_DOWN_HINT = "is dockerd running, and may this user use its socket? (check DOCKER_HOST)"

ROW_COUNTS = {
    "dart_cloud": {"public.users": 12_840, "public.invoices": 481_230,
                   "public.functions": 342, "public.api_keys": 1_907},
    "functions_db": {"public.deployments": 9_120, "public.logs": 1_204_311},
}


# -- configuration ----------------------------------------------------------------------------
def config_toml(backup_dir: Path) -> str:
    return f"""\
[stack]
postgres_container = "{POSTGRES}"
app_containers = ["{BACKEND}", "{WORKER}"]
stop_during_backup = ["{BACKEND}"]

[storage]
backup_dir = "{backup_dir}"
"""


def write_config(directory: Path, backup_dir: Path = BACKUP_DIR, extra: str = "") -> Config:
    """A dcb.toml in ``directory`` (its path is never shown) and the loaded configuration.

    The environment is ignored, so a ``DCB_*`` variable of the person running the tests cannot
    change a snapshot.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dcb.toml"
    path.write_text(config_toml(backup_dir) + extra)
    return load_config(str(path), environ={})


# -- backup sets ------------------------------------------------------------------------------
def _sha(set_id: str, file: str) -> str:
    return hashlib.sha256(f"{set_id}/{file}".encode()).hexdigest()


def _full_artifacts(set_id: str, scale: float = 1.0) -> tuple[Artifact, ...]:
    def art(kind: str, name: str, file: str, size: int, seconds: float,
            **source: object) -> Artifact:
        return Artifact(kind=kind, name=name, file=file, size_bytes=int(size * scale),
                        sha256=_sha(set_id, file), compression="zstd" if file.endswith(".zst")
                        else "none", source={"seconds": seconds, **source})

    return (
        art("globals", "globals", "globals.sql.zst", 2 * KiB + 310, 0.2),
        art("database", "dart_cloud", "db-dart_cloud.pgdump", 412 * MiB, 6.4,
            format="custom", row_counts=ROW_COUNTS["dart_cloud"], server_version="15.8"),
        art("database", "functions_db", "db-functions_db.pgdump", 38 * MiB, 1.1,
            format="custom", row_counts=ROW_COUNTS["functions_db"], server_version="15.8"),
        art("volume", "functions_data", "volume-functions_data.tar.zst", 96 * MiB, 2.3,
            raw_bytes=210 * MiB, method="mountpoint"),
        art("volume", "postgres_data", "volume-postgres_data.tar.zst", int(1.3 * GiB), 14.8,
            raw_bytes=int(1.6 * GiB), method="pg_basebackup"),
    )


def make_sets(root: Path = BACKUP_DIR) -> list[BackupSet]:
    """Eight sets, newest first: complete, failed, incomplete and legacy; fixed ids and times."""

    def at(hours_ago: float) -> datetime:
        return FIXED_NOW - timedelta(hours=hours_ago)

    def sid(when: datetime) -> str:
        return when.strftime("%Y%m%dT%H%M%SZ")

    sets: list[BackupSet] = []

    def complete(hours_ago: float, scale: float = 1.0, took: float = 24.6) -> None:
        when = at(hours_ago)
        i = sid(when)
        sets.append(BackupSet(id=i, path=root / i, status="complete", created_at=when,
                              artifacts=_full_artifacts(i, scale), host="backend-01",
                              dcb_version="0.1.0", duration_seconds=took))

    complete(2.5)                                                   # 12:00 today
    complete(12.5, 0.99, 23.9)                                      # 02:00 today
    when = at(24.5)
    sets.append(BackupSet(id=sid(when), path=root / sid(when), status="failed",
                          created_at=when, host="backend-01", dcb_version="0.1.0",
                          duration_seconds=3.2,
                          error="pg_dump of dart_cloud exited 1: connection to server lost"))
    complete(36.5, 0.98, 25.1)                                      # yesterday 02:00
    when = at(53.0)
    sets.append(BackupSet(id=sid(when), path=root / sid(when), status="incomplete",
                          created_at=when, error="no manifest (interrupted run)"))
    complete(60.5, 0.97, 22.0)
    complete(84.5, 0.95, 21.7)
    legacy_at = datetime(2026, 11, 1, 2, 0, 0, tzinfo=UTC)
    sets.append(BackupSet(
        id="legacy-20261101_020000", path=root, status="legacy", created_at=legacy_at,
        artifacts=(
            Artifact("database", "dart_cloud", "dart_cloud_20261101_020000.sql.gz",
                     188 * MiB, None, "gzip", {"format": "plain", "legacy": True}),
            Artifact("database", "functions_db", "functions_db_20261101_020000.sql.gz",
                     17 * MiB, None, "gzip", {"format": "plain", "legacy": True}),
            Artifact("volume", "functions_data",
                     "volumes/functions_volume_20261101_020000.tar.gz",
                     91 * MiB, None, "gzip", {"format": "tar", "legacy": True}),
        )))
    sets.sort(key=lambda s: (s.created_at, s.id), reverse=True)
    return sets


VERIFIED = ["ok", "ok (deep)", "-", "FAILED", "-", "-", "ok", "-"]
"""The verified mark of each set of ``make_sets``, newest first."""


def make_overview(sets: list[BackupSet] | None = None) -> StoreOverview:
    sets = make_sets() if sets is None else sets
    rows = []
    by_kind: dict[str, int] = {}
    for i, s in enumerate(sets):
        rows.append(SetRow(s, VERIFIED[i % len(VERIFIED)]))
        for a in s.artifacts:
            key = {"database": "databases", "globals": "databases"}.get(a.kind, "volumes")
            by_kind[key] = by_kind.get(key, 0) + a.size_bytes
    good = [s.created_at for s in sets if s.status in ("complete", "legacy")]
    failed = next((s for s in sets if s.status == "failed"), None)
    return StoreOverview(
        rows=tuple(rows), bytes_by_kind=by_kind, last_good=max(good) if good else None,
        last_failure={"kind": "backup", "status": "failed", "id": failed.id,
                      "error": failed.error} if failed else None,
        last_drill=None)


def many_sets(n: int) -> list[SetRow]:
    """``n`` complete sets an hour apart (for the benchmark), newest first."""
    rows = []
    for k in range(n):
        when = FIXED_NOW - timedelta(hours=k + 1)
        i = when.strftime("%Y%m%dT%H%M%SZ")
        rows.append(SetRow(BackupSet(id=i, path=BACKUP_DIR / i, status="complete",
                                     created_at=when, artifacts=_full_artifacts(i)),
                           VERIFIED[k % len(VERIFIED)]))
    return rows


# -- the stack --------------------------------------------------------------------------------
def make_status(backup_dir: Path = BACKUP_DIR, sets: list[BackupSet] | None = None) -> StackStatus:
    """Three containers (PostgreSQL healthy, the backend up, the worker exited), two volumes,
    the backup disk 72 % used."""
    sets = make_sets() if sets is None else sets

    def info(name: str, state: str, health: str | None, image: str, up_hours: float,
             mounts: tuple[Mount, ...]) -> ContainerInfo:
        return ContainerInfo(name=name, id=hashlib.sha256(name.encode()).hexdigest(),
                             state=state, health=health, image=image,
                             started_at=FIXED_NOW - timedelta(hours=up_hours), mounts=mounts)

    pg_mount = Mount("postgres_data", "/var/lib/docker/volumes/postgres_data/_data",
                     "/var/lib/postgresql/data", False)
    fn_mount = Mount("functions_data", "/var/lib/docker/volumes/functions_data/_data",
                     "/app/functions", False)
    containers = (
        ContainerStatus(POSTGRES, "postgres",
                        info(POSTGRES, "running", "healthy", "postgres:15-alpine", 77.0,
                             (pg_mount,))),
        ContainerStatus(BACKEND, "app",
                        info(BACKEND, "running", None, "dart-cloud-backend:1.8.2", 5.2,
                             (fn_mount,))),
        ContainerStatus(WORKER, "app",
                        info(WORKER, "exited", None, "dart-cloud-worker:1.8.2", 30.0,
                             (fn_mount,))),
    )
    total = 500 * GiB
    used = total * 72 // 100
    good = [s for s in sets if s.status in ("complete", "legacy")]
    newest = max(good, key=lambda s: s.created_at) if good else None
    return StackStatus(
        collected_at=FIXED_NOW,
        containers=containers,
        volumes=(VolumeStatus("postgres_data", True, int(1.6 * GiB), (POSTGRES,)),
                 VolumeStatus("functions_data", True, 210 * MiB, (BACKEND, WORKER))),
        disk=DiskUsage(path=str(backup_dir), total_bytes=total, used_bytes=used,
                       free_bytes=total - used),
        backup_dir=str(backup_dir),
        backups=BackupSummary(count=len(good), newest_id=newest.id if newest else None,
                              newest_created_at=newest.created_at if newest else None),
    )


class FixedSources(Sources):
    """The dashboard's data without Docker: a fixed status and overview.

    ``docker_down``: ``status()`` raises ``DockerUnavailable`` and ``watch`` reports the engine
    down. The watcher's report always lands before the poll's (``status()`` waits for it), so
    the final screen never depends on which thread ran first.
    """

    def __init__(self, cfg: Config, status: StackStatus | None = None,
                 overview: StoreOverview | None = None, docker_down: bool = False,
                 status_delay: float = 0.0, check: CheckReport | None = None,
                 schedule: DaemonState | None = None,
                 history: HistoryStats | None = None,
                 docker: DockerReport | None = None) -> None:
        super().__init__(cfg)
        self.fixed_check = check if check is not None else CheckReport((), FIXED_NOW)
        """Default: all OK (no alert banner)."""
        self.fixed_schedule = schedule
        self.fixed_history = history
        self.fixed_docker = docker
        self.fixed_status = status if status is not None else make_status(cfg.backup_dir)
        self.fixed_overview = overview if overview is not None else make_overview()
        self.docker_down = docker_down
        self.status_delay = status_delay
        """Seconds ``status()`` takes (to imitate a real engine in the benchmark)."""
        self.watch_reported = threading.Event()
        self.polls = 0

    def status(self) -> StackStatus:
        # The watcher reports first (bounded: a screen torn down early must not hang here).
        self.watch_reported.wait(5)
        self.polls += 1
        if self.status_delay:
            threading.Event().wait(self.status_delay)
        if self.docker_down:
            raise DockerUnavailable(DOCKER_DOWN_MESSAGE, hint=DOCKER_DOWN_HINT)
        return self.fixed_status

    def overview(self) -> StoreOverview:
        return self.fixed_overview

    def check(self) -> CheckReport:
        return self.fixed_check

    def schedule(self) -> DaemonState | None:
        return self.fixed_schedule

    def history(self) -> HistoryStats:
        return self.fixed_history if self.fixed_history is not None else make_history_stats()

    def docker_report(self, cancel: threading.Event | None = None) -> DockerReport:
        if self.docker_down:
            raise DockerUnavailable(DOCKER_DOWN_MESSAGE, hint=DOCKER_DOWN_HINT)
        if self.fixed_docker is None:
            self.fixed_docker = make_docker_report(self.cfg.stack)
        return self.fixed_docker

    def disk_picture(self) -> DiskPicture:
        if self.docker_down:
            return make_disk_picture(None, self.fixed_status.disk, DOCKER_DOWN_MESSAGE)
        return make_disk_picture(self.docker_report(), self.fixed_status.disk)

    def run_cleanup(self, *args: object, **kwargs: object) -> Any:
        raise DcbError("fixed data: nothing is removed")

    def disk(self) -> DiskUsage:
        return self.fixed_status.disk

    def watch(self, names: Iterable[str], callback: Callable[[WatchEvent], None],
              stop: threading.Event) -> None:
        if self.docker_down:
            callback(EngineDown(DOCKER_DOWN_MESSAGE, 8.0))
        else:
            callback(EngineUp())
            by_name = {c.name: c.info for c in self.fixed_status.containers}
            for n in names:
                callback(ContainerChanged(n, by_name.get(n)))
        self.watch_reported.set()
        stop.wait()


# -- automation: history, check, schedule ------------------------------------------------------
SCHEDULE_TOML = """
[schedule.nightly]
run = "backup"
cron = "0 2 * * *"
"""


def make_history(days: int = 40) -> list[dict[str, object]]:
    """A nightly full backup for ``days`` days (slowly growing, two failures, one slow run)
    and a weekly prune, oldest first, ending at ``FIXED_NOW``."""
    out: list[dict[str, object]] = []
    for d in range(days, 0, -1):
        when = (FIXED_NOW - timedelta(days=d)).replace(hour=2, minute=0)
        sid = when.strftime("%Y%m%dT%H%M%SZ")
        if d in (9, 23):
            out.append({"kind": "backup", "id": sid, "status": "failed",
                        "started_at": when.isoformat(), "duration_seconds": 3.2,
                        "error": "pg_dump of dart_cloud exited 1: connection to server lost"})
            continue
        size = int((1.80 + 0.004 * (days - d)) * GiB) + (d % 5) * 7 * MiB
        seconds = 24.0 + (d % 4) * 1.3 + (31.0 if d == 15 else 0.0)
        out.append({"kind": "backup", "id": sid, "status": "complete",
                    "started_at": when.isoformat(), "duration_seconds": seconds,
                    "size_bytes": size})
        if d % 7 == 0:
            out.append({"kind": "prune", "at": (when + timedelta(minutes=5)).isoformat(),
                        "removed": ["x"], "freed_bytes": int(11 * GiB)})
    return out


def make_history_stats() -> HistoryStats:
    """The history screen's data: 40 nights; the store holds what they left plus 4 GiB of
    older sets, on a disk 72 % used."""
    history = make_history()
    left = sum(int(str(h.get("size_bytes") or 0)) for h in history) - sum(
        int(str(h.get("freed_bytes") or 0)) for h in history)
    return stats_from(history, left + 4 * GiB, make_status().disk, FIXED_NOW)


def make_check(status: int = CRITICAL) -> CheckReport:
    """Alerts for the dashboard's banner: a critical RPO miss and a warning, or all OK."""
    if status == OK:
        return CheckReport((Finding("rpo", OK, "newest backup 2.5h ago"),), FIXED_NOW)
    findings = [Finding("failures", WARNING, "1 failure of job nightly: pg_dump of dart_cloud "
                        "exited 1: connection to server lost")]
    if status == CRITICAL:
        findings.insert(0, Finding("rpo", CRITICAL,
                                   "newest complete backup is 26.5h old (RPO 24h)"))
    return CheckReport(tuple(findings), FIXED_NOW)


def make_schedule(alive: bool = True) -> DaemonState:
    """The daemon's heartbeat: nightly next at 02:00 tomorrow; fresh or 20 minutes old."""
    beat = FIXED_NOW - (timedelta(seconds=10) if alive else timedelta(minutes=20))
    nxt = (FIXED_NOW + timedelta(days=1)).replace(hour=2, minute=0)
    return DaemonState(pid=4242, host="backend-01", started_at=beat.isoformat(),
                       updated_at=beat.isoformat(), tz="UTC",
                       jobs={"nightly": JobState(name="nightly", run="backup",
                                                 cron="0 2 * * *", next_run=nxt.isoformat())})


# -- trees on disk ----------------------------------------------------------------------------
def write_store(sets: list[BackupSet], root: Path = BACKUP_DIR) -> Path:
    """Write ``sets`` as a real store under ``root`` (recreated): a hand-written manifest per
    complete or failed set, small placeholder artifact files, a set directory without a
    manifest for an incomplete set. Legacy sets are left out (their sizes come from the files).

    The manifests keep the sets' nominal sizes; the files are placeholders, so this store is
    for screens that read sets (the restore wizard's scope step), not for verifying them.
    """
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, mode=0o700)
    for s in sets:
        if s.status == "legacy":
            continue
        d = root / s.id
        d.mkdir(mode=0o700)
        if s.status == "incomplete":
            (d / "db-dart_cloud.pgdump").write_bytes(b"PGDMP partial")
            continue
        for a in s.artifacts:
            (d / a.file).write_bytes(f"placeholder for {a.kind} {a.name}\n".encode())
        manifest = {**s.to_json(), "manifest_version": MANIFEST_VERSION}
        (d / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return root


DU_TREE: list[tuple[str, int]] = [
    ("20261126T120000Z/db-dart_cloud.pgdump", 300_000),
    ("20261126T120000Z/db-functions_db.pgdump", 41_000),
    ("20261126T120000Z/volume-functions_data.tar.zst", 120_000),
    ("20261126T120000Z/globals.sql.zst", 2_300),
    ("20261126T120000Z/manifest.json", 1_500),
    ("20261126T020000Z/db-dart_cloud.pgdump", 296_000),
    ("20261126T020000Z/volume-functions_data.tar.zst", 118_000),
    ("20261126T020000Z/manifest.json", 1_480),
    ("20261124T093000Z/db-dart_cloud.pgdump", 40_000),
    ("restores/20261120T101500Z-r1.json", 900),
    ("dart_cloud_20261101_020000.sql.gz", 150_000),
    ("volumes/functions_volume_20261101_020000.tar.gz", 60_000),
    ("history.jsonl", 4_000),
    (".lock", 0),
]
"""The disk-usage browser's tree: (path, size); file contents are not sparse."""


def write_du_tree(root: Path = DU_ROOT) -> Path:
    """Recreate the fixed tree at ``root`` (a fixed path: it is shown in the header)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for rel, size in DU_TREE:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
    (root / "empty-set-dir").mkdir()
    return root


# -- Docker's disk usage ----------------------------------------------------------------------
def _ts(hours_ago: float) -> int:
    return int((FIXED_NOW - timedelta(hours=hours_ago)).timestamp())


def _cid(name: str) -> str:
    return hashlib.sha256(f"container {name}".encode()).hexdigest()


def _iid(name: str) -> str:
    return "sha256:" + hashlib.sha256(f"image {name}".encode()).hexdigest()


BASE_LAYERS = 80 * MiB
"""Layers the backend images share."""


def docker_df(extra_images: int = 0, extra_containers: int = 0) -> dict[str, Any]:
    """A ``client.df()`` answer: the stack (PostgreSQL, backend, an exited worker), an old
    tagged image, two dangling images (one large), a stopped one-off container and a never
    started one, an unused volume, two build-cache records. ``extra_*`` add generated images
    and stopped containers (for the benchmark)."""
    def image(name: str, tags: list[str], size: int, shared: int, containers: int,
              hours_ago: float) -> dict[str, Any]:
        return {"Id": _iid(name), "RepoTags": tags, "Size": size, "SharedSize": shared,
                "Containers": containers, "Created": _ts(hours_ago), "ParentId": "",
                "RepoDigests": [], "Labels": None, "VirtualSize": size}

    def mount(volume: str, dest: str) -> dict[str, Any]:
        return {"Type": "volume", "Name": volume, "Destination": dest, "Driver": "local",
                "Source": f"/var/lib/docker/volumes/{volume}/_data", "RW": True}

    def container(name: str, image_name: str, tag: str, state: str, status: str,
                  size_rw: int, mounts: list[dict[str, Any]], hours_ago: float,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {"Id": _cid(name), "Names": [f"/{name}"], "Image": tag,
                "ImageID": _iid(image_name), "Command": "", "Created": _ts(hours_ago),
                "State": state, "Status": status, "SizeRw": size_rw,
                "SizeRootFs": size_rw + 100 * MiB, "Labels": labels or {}, "Mounts": mounts}

    images = [
        image("backend-1.8.2", ["dart-cloud-backend:1.8.2"], 412 * MiB, BASE_LAYERS, 2, 30),
        image("postgres", ["postgres:15-alpine"], 238 * MiB, 0, 1, 900),
        image("backend-1.8.1", ["dart-cloud-backend:1.8.1"], 405 * MiB, BASE_LAYERS, 0, 200),
        image("dangling-big", [], int(1.2 * GiB), BASE_LAYERS, 0, 230),
        image("dangling-small", ["<none>:<none>"], 398 * MiB, BASE_LAYERS, 0, 400),
        image("busybox", ["busybox:1.36"], 4 * MiB, 0, 2, 2000),
    ]
    pg = mount("postgres_data", "/var/lib/postgresql/data")
    fn = mount("functions_data", "/app/functions")
    containers = [
        container(POSTGRES, "postgres", "postgres:15-alpine", "running", "Up 3 days",
                  64 * KiB, [pg], 77),
        container(BACKEND, "backend-1.8.2", "dart-cloud-backend:1.8.2", "running",
                  "Up 5 hours", 12 * MiB, [fn], 30),
        container(WORKER, "backend-1.8.2", "dart-cloud-backend:1.8.2", "exited",
                  "Exited (137) 30 hours ago", 3 * MiB, [fn], 30),
        container("old-migrate", "busybox", "busybox:1.36", "exited",
                  "Exited (0) 2 weeks ago", 180 * MiB, [], 340),
        container("scratch-debug", "busybox", "busybox:1.36", "created", "Created", 0,
                  [], 300),
    ]
    for k in range(extra_images):
        images.append(image(f"gen-{k}", [f"registry.local/app-{k // 10}:{k}"]
                            if k % 3 else [], (k % 97 + 1) * 3 * MiB, BASE_LAYERS // 4,
                            0, 24 + k))
    for k in range(extra_containers):
        containers.append(container(f"job-{k:04d}", f"gen-{k % max(extra_images, 1)}",
                                    f"registry.local/app:{k}", "exited",
                                    f"Exited (0) {k + 1} hours ago", (k % 50) * 256 * KiB,
                                    [], 2 + k))
    volumes = [
        {"Name": "postgres_data", "Driver": "local", "Scope": "local", "Labels": None,
         "Mountpoint": "/var/lib/docker/volumes/postgres_data/_data",
         "CreatedAt": "2026-09-01T10:00:00Z", "UsageData": {"Size": int(1.6 * GiB),
                                                            "RefCount": 1}},
        {"Name": "functions_data", "Driver": "local", "Scope": "local", "Labels": None,
         "Mountpoint": "/var/lib/docker/volumes/functions_data/_data",
         "CreatedAt": "2026-09-01T10:00:00Z", "UsageData": {"Size": 210 * MiB,
                                                            "RefCount": 2}},
        {"Name": "old_cache", "Driver": "local", "Scope": "local", "Labels": None,
         "Mountpoint": "/var/lib/docker/volumes/old_cache/_data",
         "CreatedAt": "2026-06-11T08:00:00Z", "UsageData": {"Size": 640 * MiB,
                                                            "RefCount": 0}},
    ]
    cache = [
        {"ID": "k3b9x0c1d2e3f4a5", "Type": "regular", "InUse": False, "Shared": False,
         "Size": 310 * MiB, "Description": "mount / from exec /bin/sh -c dart pub get",
         "CreatedAt": "2026-11-20T09:00:00Z", "LastUsedAt": "2026-11-20T09:00:00Z",
         "UsageCount": 3},
        {"ID": "m7q2w8e4r5t6y7u8", "Type": "source.local", "InUse": True, "Shared": True,
         "Size": 45 * MiB, "Description": "local source for context",
         "CreatedAt": "2026-11-25T09:00:00Z", "LastUsedAt": "2026-11-26T12:00:00Z",
         "UsageCount": 12},
    ]
    layers = sum(i["Size"] - i["SharedSize"] for i in images) + BASE_LAYERS
    return {"LayersSize": layers, "Images": images, "Containers": containers,
            "Volumes": volumes, "BuildCache": cache, "BuilderSize": 355 * MiB}


LOG_SIZES = {POSTGRES: 38 * MiB, BACKEND: int(4.2 * GiB), WORKER: 220 * MiB,
             "old-migrate": 1 * MiB, "scratch-debug": 0}


def make_docker_report(stack: StackConfig, extra_images: int = 0,
                       extra_containers: int = 0) -> DockerReport:
    """Docker's disk usage from ``docker_df`` through the real report builder; every
    container logs to json-file (``LOG_SIZES``; generated containers 64 KiB each)."""
    df = docker_df(extra_images, extra_containers)
    inspects: dict[str, dict[str, Any]] = {}
    sizes: dict[str, tuple[int, int] | None] = {}
    for c in df["Containers"]:
        cid = c["Id"]
        name = c["Names"][0][1:]
        inspects[cid] = {"Id": cid, "Name": f"/{name}",
                         "LogPath": f"/var/lib/docker/containers/{cid}/{cid}-json.log",
                         "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}}}}
        size = LOG_SIZES.get(name, 64 * KiB)
        sizes[cid] = (size, size)
    return build_report(stack, df, inspects, "/var/lib/docker", sizes, FIXED_NOW)


def make_disk_picture(report: DockerReport | None, disk: DiskUsage,
                      docker_error: str | None = None) -> DiskPicture:
    """One filesystem holding the backup dir, Docker's root and every volume."""
    holds = [BACKUPS]
    if report is not None:
        holds += [DOCKER, *(f"volume {v.name}" for v in report.volumes)]
    fs = Filesystem(disk.path, 2049, disk.total_bytes, disk.used_bytes, disk.free_bytes,
                    tuple(holds))
    offenders = tuple(Offender(i.label, i.size_bytes) for i in report.items()[:4]
                      if i.size_bytes) if report is not None else ()
    return DiskPicture((fs,), (), offenders, docker_error)
