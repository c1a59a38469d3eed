"""Where the dashboard's data comes from: the real services, or fixed data for snapshots."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from dcb.services.config import Config
from dcb.services.disk import DiskUsage, disk_usage
from dcb.services.disk_picture import DiskPicture, collect_disk_picture, picture_from
from dcb.services.docker_df import (
    CleanupPlan,
    CleanupResult,
    DockerReport,
    ItemCallback,
    collect_report,
    execute_cleanup,
)
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError
from dcb.services.events import WatchEvent, watch_containers
from dcb.services.ops.check import CheckReport, run_check
from dcb.services.ops.heartbeat import DaemonState, read_state
from dcb.services.ops.history_stats import HistoryStats, history_stats
from dcb.services.overview import StoreOverview, store_overview
from dcb.services.status import StackStatus, collect_status


class Sources:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def status(self) -> StackStatus:
        """Raises ``DcbError`` (e.g. ``DockerUnavailable``)."""
        gw = DockerGateway.connect(timeout=10)
        try:
            return collect_status(self.cfg, gw)
        finally:
            gw.close()

    def overview(self) -> StoreOverview:
        return store_overview(self.cfg)

    def disk(self) -> DiskUsage:
        """The backup filesystem alone (local: known even when Docker is not)."""
        return disk_usage(self.cfg.backup_dir)

    def watch(self, names: Iterable[str], callback: Callable[[WatchEvent], None],
              stop: threading.Event) -> None:
        watch_containers(names, callback, stop)

    def check(self) -> CheckReport:
        """``dcb check``'s findings: the dashboard's alert banner (coverage has its own
        warning line on the dashboard, from the status)."""
        return run_check(self.cfg, with_coverage=False)

    def schedule(self) -> DaemonState | None:
        """The schedule daemon's heartbeat file (None: no daemon ever ran here)."""
        return read_state(self.cfg.backup_dir)

    def history(self) -> HistoryStats:
        return history_stats(self.cfg)

    def docker_report(self, cancel: threading.Event | None = None) -> DockerReport:
        """What Docker keeps on disk; raises ``DcbError`` (e.g. ``DockerUnavailable``)."""
        gw = DockerGateway.connect(timeout=60)
        try:
            return collect_report(self.cfg, gw, cancel)
        finally:
            gw.close()

    def disk_picture(self) -> DiskPicture:
        """The Disk pane's filesystems and offenders (the backup dir's alone without Docker)."""
        try:
            gw = DockerGateway.connect(timeout=30)
        except DcbError as e:
            return picture_from(None, self.cfg.backup_dir, e.message)
        try:
            return collect_disk_picture(self.cfg, gw)
        finally:
            gw.close()

    def run_cleanup(self, plan: CleanupPlan, confirm: str, on_item: ItemCallback | None = None,
                    cancel: threading.Event | None = None) -> CleanupResult:
        gw = DockerGateway.connect(timeout=60)
        try:
            return execute_cleanup(gw, self.cfg.stack, plan, confirm, on_item, cancel)
        finally:
            gw.close()
