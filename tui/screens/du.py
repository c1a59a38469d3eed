"""The disk-usage screen. Directories tab: the browser (like ncdu) opens on a directory, scans
it in the background and shows the tree as it fills in; drill in and out with the arrow keys,
Enter and Backspace. Docker tab (when the screen has sources): what Docker keeps on disk, by
kind and item, loaded in a worker; Enter shows an item's details, and the cleanup keys open a
preview that must be confirmed by typing."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane
from textual.worker import get_current_worker

from dcb.services.docker_df import (
    REMOVE_CONTAINERS,
    REMOVE_IMAGES,
    TRUNCATE_LOG,
    CleanupResult,
    ContainerItem,
    DockerReport,
    LogItem,
    plan_cleanup,
)
from dcb.services.du import ScanProgress, scan
from dcb.services.errors import Cancelled, DcbError
from dcb.tui.screens.docker_du import CleanupScreen, DockerItemScreen
from dcb.tui.sources import Sources
from dcb.widgets.docker_usage import DockerRow, DockerUsageView, docker_rows
from dcb.widgets.du_browser import DuBrowser, DuListing
from dcb.widgets.line_list import LineList

PROGRESS_INTERVAL = 0.2
"""Seconds between progress messages from the scan thread (at most 5 a second)."""


class DuScanProgressed(Message):
    """The scan's counts and live tree; a newer one replaces any not yet handled."""

    def __init__(self, progress: ScanProgress, generation: int) -> None:
        super().__init__()
        self.progress = progress
        self.generation = generation

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, DuScanProgressed) and message.generation == self.generation


class DuScanFailed(Message):
    def __init__(self, error: DcbError, generation: int) -> None:
        super().__init__()
        self.error = error
        self.generation = generation


class DockerLoaded(Message):
    def __init__(self, report: DockerReport | None, rows: list[DockerRow],
                 error: DcbError | None, generation: int, kind: str | None = None,
                 name_width: int = 0) -> None:
        super().__init__()
        self.report = report
        self.rows = rows
        self.kind = kind
        self.name_width = name_width
        self.error = error
        self.generation = generation


DIRS = "tab-dirs"
DOCKER = "tab-docker"
DOCKER_ACTIONS = ("kind", "details", "remove_images", "remove_containers", "truncate_log",
                  "remove_selected")


class DuScreen(Screen[None]):
    """Disk usage of ``path``, largest first; with ``sources``, also Docker's (a second tab,
    shown first when ``docker`` is true)."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="du.close"),
        Binding("q", "close", "Close", show=False, id="du.close-q"),
        Binding("x", "remove_selected", "Remove", id="du.docker-remove"),
        Binding("t", "truncate_log", "Truncate log", id="du.docker-truncate"),
        Binding("i", "remove_images", "Dangling images", id="du.docker-images"),
        Binding("c", "remove_containers", "Stopped containers", id="du.docker-containers"),
        Binding("D", "switch_tab", "Dirs/Docker", id="du.switch"),
        Binding("r", "rescan", "Rescan", id="du.rescan"),
        Binding("k", "kind", "Kind filter", show=False, id="du.docker-kind"),
    ]

    def __init__(self, path: Path, sources: Sources | None = None, docker: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.sources = sources
        self.initial_tab = DOCKER if docker and sources is not None else DIRS
        self.generation = 0
        """Counts scans, so late messages from a replaced scan are ignored."""
        self.docker_generation = 0
        """Counts Docker loads, likewise."""
        self._docker_done = False
        self.sub_title = f"disk usage of {self.path}"

    def compose(self) -> ComposeResult:
        yield Header()
        if self.sources is None:
            yield DuBrowser(id="du-browser")
        else:
            # Only the tab shown first is built now; the other when it is first shown.
            with TabbedContent(initial=self.initial_tab, id="du-tabs"):
                with TabPane("Directories", id=DIRS):
                    if self.initial_tab == DIRS:
                        yield DuBrowser(id="du-browser")
                with TabPane("Docker", id=DOCKER):
                    if self.initial_tab == DOCKER:
                        yield DockerUsageView(id="docker-view")
        yield Footer()

    # -- the Docker tab ---------------------------------------------------------------------
    @property
    def tab(self) -> str:
        if self.sources is None:
            return DIRS
        return self.query_one(TabbedContent).active or self.initial_tab

    @property
    def docker_view(self) -> DockerUsageView:
        return self.query_one(DockerUsageView)

    @property
    def docker_loading(self) -> bool:
        return self.docker_generation > 0 and not self._docker_done

    def start_docker(self) -> None:
        self.docker_generation += 1
        self._docker_done = False
        self.docker_view.show_loading()
        view = self.docker_view
        self.load_docker(self.docker_generation, view.kind, view.name_width)

    @work(thread=True, exclusive=True, group="du-docker", exit_on_error=False)
    def load_docker(self, generation: int, kind: str | None, name_width: int) -> None:
        assert self.sources is not None
        worker = get_current_worker()
        try:
            report = self.sources.docker_report(worker.cancelled_event)
        except Cancelled:
            return
        except DcbError as e:
            self.post_message(DockerLoaded(None, [], e, generation))
            return
        # The rows are built here: on a large host that is most of the work.
        self.post_message(DockerLoaded(report, docker_rows(report, kind, name_width), None,
                                       generation, kind, name_width))

    @on(DockerLoaded)
    def _docker_loaded(self, msg: DockerLoaded) -> None:
        if msg.generation != self.docker_generation:
            return
        self._docker_done = True
        view = self.docker_view
        if msg.report is not None:
            # Rows built for another filter or width (changed meanwhile) are built again.
            fits = msg.kind == view.kind and msg.name_width == view.name_width
            view.show_report(msg.report, msg.rows if fits else None, view.kind)
        elif msg.error is not None:
            view.show_error(msg.error)
            self.notify(msg.error.message, title="Docker disk usage", severity="error")
        self.refresh_bindings()

    @on(TabbedContent.TabActivated)
    async def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = self.query_one(f"#{self.tab}", TabPane)
        if not pane.children:
            await pane.mount(DockerUsageView(id="docker-view") if self.tab == DOCKER
                             else DuBrowser(id="du-browser"))
        self._focus_tab()
        self.refresh_bindings()

    def _focus_tab(self) -> None:
        """Focus the tab's list, starting its first load if it has none yet."""
        if self.tab == DOCKER:
            if self.docker_generation == 0:
                self.start_docker()
            self.docker_view.table.focus()
        else:
            if self.generation == 0:
                self.start_scan()
            self.query_one(DuListing).focus()

    def action_switch_tab(self) -> None:
        if self.sources is None:
            return
        self.query_one(TabbedContent).active = DOCKER if self.tab == DIRS else DIRS

    def action_kind(self) -> None:
        self.docker_view.cycle_kind()

    @on(LineList.Selected, "#docker-items")
    def _docker_row(self, event: LineList.Selected) -> None:
        event.stop()
        self.action_details()

    def action_details(self) -> None:
        item = self.docker_view.table.selected
        if item is not None:
            self.app.push_screen(DockerItemScreen(item))

    def _plan(self, action: str, only: list[str] | None = None) -> None:
        report = self.docker_view.report
        if report is None or self.sources is None:
            self.notify("Docker's disk usage is not loaded yet", severity="warning")
            return
        try:
            plan = plan_cleanup(report, action, only)
        except DcbError as e:
            self.notify(e.message, title="Not offered", severity="warning")
            return
        screen = CleanupScreen(plan, self.sources)
        self.app.push_screen(screen, lambda result: self._cleaned(result, screen))

    def _cleaned(self, result: CleanupResult | None, screen: CleanupScreen) -> None:
        if result is not None and result.done:
            self.notify(result.summary(), title="Docker cleanup")
        if result is not None or screen.error is not None:
            self.start_docker()  # what changed (or was found changed) shows at once

    def action_remove_images(self) -> None:
        self._plan(REMOVE_IMAGES)

    def action_remove_containers(self) -> None:
        self._plan(REMOVE_CONTAINERS)

    def action_truncate_log(self) -> None:
        item = self.docker_view.table.selected
        if not isinstance(item, LogItem | ContainerItem):
            self.notify("select a container or its log to truncate the log",
                        severity="warning")
            return
        self._plan(TRUNCATE_LOG, [item.key])

    def action_remove_selected(self) -> None:
        item = self.docker_view.table.selected
        if item is None:
            return
        if isinstance(item, LogItem):
            self._plan(TRUNCATE_LOG, [item.key])
        elif item.offer in (REMOVE_IMAGES, REMOVE_CONTAINERS):
            self._plan(item.offer, [item.key])
        else:
            self.notify(f"{item.label}: {item.why_not_offered()}", title="Not offered",
                        severity="warning")

    @property
    def browser(self) -> DuBrowser:
        return self.query_one(DuBrowser)

    @property
    def scanning(self) -> bool:
        return self.generation > 0 and not self.browser.done

    def on_mount(self) -> None:
        self._focus_tab()

    def start_scan(self) -> None:
        self.generation += 1
        self.scan_tree(self.generation)

    @work(thread=True, exclusive=True, group="du-scan", exit_on_error=False)
    def scan_tree(self, generation: int) -> None:
        worker = get_current_worker()

        def progress(p: ScanProgress) -> None:
            # Called in this thread every PROGRESS_INTERVAL; post_message is thread-safe.
            self.post_message(DuScanProgressed(p, generation))

        try:
            scan(self.path, on_progress=progress, cancel=worker.cancelled_event,
                 interval=PROGRESS_INTERVAL)
        except Cancelled:
            return
        except DcbError as e:
            self.post_message(DuScanFailed(e, generation))

    @on(DuScanProgressed)
    def _show_progress(self, msg: DuScanProgressed) -> None:
        if msg.generation != self.generation:
            return
        self.browser.show_progress(msg.progress)
        self.refresh_bindings()

    @on(DuScanFailed)
    def _show_error(self, msg: DuScanFailed) -> None:
        if msg.generation != self.generation:
            return
        self.browser.show_error(msg.error)
        self.notify(msg.error.message, title="Disk usage", severity="error")
        self.refresh_bindings()

    def action_close(self) -> None:
        # Leaving the screen cancels its workers: the scan stops at the next directory.
        self.app.pop_screen()

    def action_rescan(self) -> None:
        if self.tab == DOCKER:
            self.start_docker()
        else:
            self.browser.restart()
            self.start_scan()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "switch_tab":
            return self.sources is not None
        if action in DOCKER_ACTIONS:
            if self.tab != DOCKER:
                return False
            views = self.query(DockerUsageView)
            return True if views and views.first().report is not None else None
        if action == "rescan":
            if self.tab == DOCKER:
                busy = self.docker_loading
            else:
                busy = bool(self.query(DuBrowser)) and self.scanning
            return None if busy else True
        return True
