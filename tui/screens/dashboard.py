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
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input

from dcb.services.config import Config
from dcb.services.disk import DiskUsage
from dcb.services.errors import DcbError
from dcb.services.events import ContainerChanged, EngineDown, EngineUp, WatchEvent
from dcb.services.overview import StoreOverview
from dcb.services.status import StackStatus
from dcb.tui.messages import ContainerEvent
from dcb.tui.sources import Sources
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.status_panes import ContainersPane, DiskPane, StatusLine

if TYPE_CHECKING:
    from dcb.tui.app import DcbApp

POLL_SECONDS = 10.0
AGE_REFRESH_SECONDS = 30.0
"""Ages and uptimes are redrawn this often (from the display clock, ``formatting.now``)."""


class Polled(Message):
    def __init__(self, status: StackStatus | None, overview: StoreOverview | None,
                 error: DcbError | None, started: float = 0.0,
                 disk: DiskUsage | None = None) -> None:
        super().__init__()
        self.disk = disk
        self.started = started
        """monotonic time the poll began: what it saw may be older than a later event."""
        self.status = status
        self.overview = overview
        self.error = error


class DashboardScreen(Screen[None]):
    BINDINGS = [
        Binding("b", "app.backup", "Backup", id="backup"),
        Binding("r", "restore", "Restore", id="restore"),
        Binding("v", "verify(False)", "Verify", id="verify"),
        Binding("V", "verify(True)", "Deep verify", show=False, id="verify-deep"),
        Binding("p", "app.prune", "Prune", id="prune"),
        Binding("d", "app.du", "Disk usage", show=False, id="du"),
        Binding("o", "app.objectives", "Recovery objectives (RPO/RTO)", show=False,
                id="objectives"),
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
        self._stop_watch = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusLine(id="statusline")
        with Horizontal(id="top"):
            yield ContainersPane(id="containers")
            yield DiskPane(id="disk")
        yield Input(placeholder="filter by id or status…", id="filter")
        yield BackupsTable(id="backups")
        yield Footer()

    def on_mount(self) -> None:
        roles = {self.cfg.stack.postgres_container: "postgres"}
        for n in self.cfg.stack.app_containers:
            roles.setdefault(n, "app")
        self.query_one(ContainersPane).set_roles(roles)
        self.query_one("#filter", Input).display = False
        self.query_one(BackupsTable).focus()
        self._render_status()
        self.watch_docker(list(roles))
        self.poll()
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
        disk = None
        try:
            status = self.sources.status()
        except DcbError as e:
            error = e
            with contextlib.suppress(OSError):
                disk = self.sources.disk()
        self.post_message(Polled(status, overview, error, started, disk))

    @on(Polled)
    def _polled(self, msg: Polled) -> None:
        if msg.overview is not None:
            changed = self.overview is None or self.overview.rows != msg.overview.rows
            self.overview = msg.overview
            if changed:  # rebuilding a big table every poll would stall the UI
                self.query_one(BackupsTable).set_rows(list(msg.overview.rows))
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
        self.query_one(StatusLine).show(self.overview, self.docker_state, problems)
        # The disk is local: shown even while Docker is unreachable.
        self.query_one(DiskPane).show(self.status, self.overview,
                                      self.cfg.storage.min_free_percent, self.disk)

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

        self.app.push_screen(SetDetailScreen(row.set))

    def action_restore(self) -> None:
        sid = self._selected()
        if sid is None:
            self.notify("select a backup set to restore", severity="warning")
            return
        self._app.start_restore(sid)

    def action_verify(self, deep: bool) -> None:
        sid = self._selected()
        if sid is None:
            self.notify("select a backup set to verify", severity="warning")
            return
        self._app.start_verify(sid, deep)
