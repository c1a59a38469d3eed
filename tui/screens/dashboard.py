"""The first screen: containers (live), disk, backups, status line."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input

from dcb.services.config import Config
from dcb.services.disk import DiskUsage
from dcb.services.disk_picture import DiskPicture
from dcb.services.errors import DcbError
from dcb.services.events import ContainerChanged, EngineDown, EngineUp, WatchEvent
from dcb.services.ops.check import CheckReport
from dcb.services.ops.heartbeat import DaemonState
from dcb.services.overview import StoreOverview
from dcb.services.status import StackStatus
from dcb.tui.messages import ContainerEvent
from dcb.tui.sources import Sources
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.coverage_line import CoverageLine
from dcb.widgets.destinations_pane import DestinationsPane
from dcb.widgets.status_panes import (
    AlertBanner,
    ContainersPane,
    DiskPane,
    StatusLine,
    schedule_markup,
)

if TYPE_CHECKING:
    from dcb.tui.app import DcbApp

POLL_SECONDS = 10.0
DISK_POLL_SECONDS = 60.0
"""The Disk pane's filesystems and offenders (Docker's disk usage is costly to compute)."""
AGE_REFRESH_SECONDS = 30.0
"""Ages and uptimes are redrawn this often (from the display clock, ``formatting.now``)."""


class Polled(Message):
    def __init__(self, status: StackStatus | None, overview: StoreOverview | None,
                 error: DcbError | None, started: float = 0.0,
                 disk: DiskUsage | None = None, check: CheckReport | None = None,
                 schedule: DaemonState | None = None) -> None:
        super().__init__()
        self.disk = disk
        self.check = check
        self.schedule = schedule
        self.started = started
        """monotonic time the poll began: what it saw may be older than a later event."""
        self.status = status
        self.overview = overview
        self.error = error


class DiskPictured(Message):
    def __init__(self, picture: DiskPicture) -> None:
        super().__init__()
        self.picture = picture


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("b", "app.backup", "Backup", id="backup"),
        Binding("r", "restore", "Restore", id="restore"),
        Binding("v", "verify(False)", "Verify", id="verify"),
        Binding("V", "verify(True)", "Deep verify", show=False, id="verify-deep"),
        Binding("p", "app.prune", "Prune", id="prune"),
        Binding("R", "replicate", "Replicate to the destinations", show=False,
                id="replicate"),
        Binding("d", "app.du", "Disk usage", show=False, id="du"),
        Binding("D", "app.du_docker", "Docker disk usage", show=False, id="du-docker"),
        Binding("o", "app.objectives", "Recovery objectives (RPO/RTO)", show=False,
                id="objectives"),
        Binding("h", "app.history", "History and growth charts", show=False, id="history"),
        Binding("enter", "details", "Details", show=False, id="details"),
        Binding("slash", "filter", "Filter", id="filter"),
        Binding("s", "sort", "Sort", show=False, id="sort"),
        Binding("g", "refresh", "Refresh", show=False, id="refresh"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, cfg: Config, sources: Sources | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.sources = sources or Sources(cfg)
        self.status: StackStatus | None = None
        self.overview: StoreOverview | None = None
        self.docker_state = "connecting…"
        self.disk: DiskUsage | None = None
        self.check: CheckReport | None = None
        self.schedule: DaemonState | None = None
        self.disk_picture: DiskPicture | None = None
        self._disk_timer: Timer | None = None
        self._stop_watch = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusLine(id="statusline")
        yield CoverageLine(id="coverage")
        yield AlertBanner(id="alerts")
        with Horizontal(id="top"):
            yield ContainersPane(id="containers")
            yield DiskPane(id="disk")
        yield DestinationsPane(self.cfg.objectives.rpo_hours, id="destinations")
        yield Input(placeholder="filter by id or status…", id="filter")
        yield BackupsTable(replicated=bool(self.cfg.replication.destinations), id="backups")
        yield Footer()

    def on_mount(self) -> None:
        roles = {self.cfg.stack.postgres_container: "postgres"}
        for n in self.cfg.stack.app_containers:
            roles.setdefault(n, "app")
        self.query_one(ContainersPane).set_roles(roles)
        self.query_one("#filter", Input).display = False
        self.query_one(DestinationsPane).display = False
        self.query_one(AlertBanner).display = False
        self.query_one(BackupsTable).focus()
        self._render_status()
        self.watch_docker(list(roles))
        self.poll()
        self.poll_disk()
        self.set_interval(AGE_REFRESH_SECONDS, self.refresh_ages)

    def on_unmount(self) -> None:
        self._stop_watch.set()

    # -- background work ------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="dashboard-watch", exit_on_error=False)
    def watch_docker(self, names: list[str]) -> None:
        def forward(e: WatchEvent) -> None:
            self.post_message(ContainerEvent(e))

        self.sources.watch(names, forward, self._stop_watch)

    @work(thread=True, exclusive=True, group="dashboard-poll", exit_on_error=False)
    def poll(self) -> None:
        status = overview = None
        error: DcbError | None = None
        started = time.monotonic()
        try:
            overview = self.sources.overview()
        except (DcbError, OSError) as e:
            error = e if isinstance(e, DcbError) else DcbError(str(e))
        check: CheckReport | None = None
        schedule: DaemonState | None = None
        with contextlib.suppress(DcbError, OSError):  # the banner must never break the poll
            check = self.sources.check()
            schedule = self.sources.schedule()
        disk = None
        try:
            status = self.sources.status()
        except DcbError as e:
            error = e
            with contextlib.suppress(OSError):
                disk = self.sources.disk()
        self.post_message(Polled(status, overview, error, started, disk, check, schedule))

    @work(thread=True, exclusive=True, group="dashboard-disk", exit_on_error=False)
    def poll_disk(self) -> None:
        self.post_message(DiskPictured(self.sources.disk_picture()))

    @on(DiskPictured)
    def _disk_pictured(self, msg: DiskPictured) -> None:
        self.disk_picture = msg.picture
        self._render_status()
        self._arm_disk_poll()

    def _arm_disk_poll(self) -> None:
        # One timer at a time: an extra poll (after a cleanup) replaces the pending one.
        if self._disk_timer is not None:
            self._disk_timer.stop()
        self._disk_timer = self.set_timer(DISK_POLL_SECONDS, self._poll_disk_if_visible)

    def _poll_disk_if_visible(self) -> None:
        if self.app.screen is self:
            self.poll_disk()
        else:
            self._arm_disk_poll()

    @on(Polled)
    def _polled(self, msg: Polled) -> None:
        self.check = msg.check
        self.schedule = msg.schedule
        self.query_one(AlertBanner).show(msg.check)
        if msg.overview is not None:
            changed = self.overview is None or self.overview.rows != msg.overview.rows
            self.overview = msg.overview
            if changed:  # rebuilding a big table every poll would stall the UI
                self.query_one(BackupsTable).set_rows(
                    list(msg.overview.rows), replicated=bool(msg.overview.destinations))
            self.query_one(DestinationsPane).show(msg.overview.destinations)
        if msg.status is not None:
            self.status = msg.status
            self.query_one(ContainersPane).show(msg.status, as_of=msg.started)
        elif msg.error is not None:
            self.disk = msg.disk
            hint = f" ({msg.error.hint})" if msg.error.hint else ""
            self.docker_state = f"[b red]{msg.error.message}[/]{hint}"
            self.query_one(ContainersPane).mark_unknown()
        self._render_status()
        # Polls never overlap: the next one is armed when this one has landed.
        self.set_timer(POLL_SECONDS, self._poll_if_visible)

    def _poll_if_visible(self) -> None:
        if self.app.screen is self:
            self.poll()
        else:
            self.set_timer(POLL_SECONDS, self._poll_if_visible)

    @on(ContainerEvent)
    def _container_event(self, msg: ContainerEvent) -> None:
        e = msg.event
        if isinstance(e, ContainerChanged):
            self.query_one(ContainersPane).update_container(e.name, e.info, time.monotonic())
        elif isinstance(e, EngineUp):
            self.docker_state = "[green]connected[/]"
        elif isinstance(e, EngineDown):
            self.docker_state = f"[b red]unreachable: {e.error}[/] (retry in {e.retry_in:.0f}s)"
            self.query_one(ContainersPane).mark_unknown()
        self._render_status()

    def _render_status(self) -> None:
        problems = self.status.problems if self.status is not None else ()
        sched = schedule_markup(len(self.cfg.schedule.jobs), self.schedule,
                                self.cfg.check.heartbeat_stale_minutes)
        self.query_one(StatusLine).show(self.overview, self.docker_state, problems, sched)
        self.query_one(CoverageLine).show(self.status.warnings if self.status else ())
        # The disk is local: shown even while Docker is unreachable.
        self.query_one(DiskPane).show(self.status, self.overview,
                                      self.cfg.storage.min_free_percent, self.disk,
                                      self.disk_picture)

    def refresh_ages(self) -> None:
        """"3 minutes ago" must not stay 3 minutes while the console is open."""
        self.query_one(BackupsTable).refresh_ages()
        self.query_one(ContainersPane).refresh_uptimes()
        self._render_status()

    # -- actions --------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self.poll()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.query_one(BackupsTable).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        table = self.query_one(BackupsTable)
        table.filter_text = event.value.strip()
        table.refresh_rows()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(BackupsTable).focus()

    def action_sort(self) -> None:
        key = self.query_one(BackupsTable).cycle_sort()
        self.notify(f"sorted by {key}")

    @property
    def _app(self) -> DcbApp:
        return cast("DcbApp", self.app)

    def _selected(self) -> str | None:
        return self.query_one(BackupsTable).selected_id()

    @on(DataTable.RowSelected, "#backups")
    def _row_selected(self) -> None:
        self.action_details()

    def action_details(self) -> None:
        row = self.query_one(BackupsTable).selected_row()
        if row is None:
            self.notify("no backup selected", severity="warning")
            return
        from dcb.tui.screens.tasks import SetDetailScreen

        self.app.push_screen(SetDetailScreen(row.set, row.running, self.cfg))

    def _being_written(self) -> bool:
        """The selected set is being written now: nothing to restore, verify or copy yet."""
        row = self.query_one(BackupsTable).selected_row()
        if row is None or row.running is None:
            return False
        self.notify(f"{row.set.id} is being written ({row.running.holder.describe()}): "
                    "wait until it completes; Enter shows its progress", severity="warning")
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("restore", "verify", "replicate"):
            with contextlib.suppress(NoMatches):
                row = self.query_one(BackupsTable).selected_row()
                if row is not None and row.running is not None:
                    return None  # shown disabled: the set is not complete
        return True

    @on(DataTable.RowHighlighted, "#backups")
    def _row_highlighted(self) -> None:
        self.refresh_bindings()

    def action_restore(self) -> None:
        sid = self._selected()
        if sid is None:
            self.notify("select a backup set to restore", severity="warning")
            return
        if self._being_written():
            return
        self._app.start_restore(sid)

    def action_verify(self, deep: bool) -> None:
        sid = self._selected()
        if sid is None:
            self.notify("select a backup set to verify", severity="warning")
            return
        if self._being_written():
            return
        self._app.start_verify(sid, deep)

    def action_replicate(self) -> None:
        sid = self._selected()
        if sid is None:
            self.notify("select a backup set to replicate", severity="warning")
            return
        if self._being_written():
            return
        self._app.start_replicate(sid)
