"""The disk-usage browser (like ncdu): opens on a directory, scans it in the background and
shows the tree as it fills in; drill in and out with the arrow keys, Enter and Backspace."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header
from textual.worker import get_current_worker

from dcb.services.du import ScanProgress, scan
from dcb.services.errors import Cancelled, DcbError
from dcb.widgets.du_browser import DuBrowser, DuListing

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


class DuScreen(Screen[None]):
    """Disk usage of ``path``, largest first."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="du.close"),
        Binding("q", "close", "Close", show=False, id="du.close-q"),
        Binding("r", "rescan", "Rescan", id="du.rescan"),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.generation = 0
        """Counts scans, so late messages from a replaced scan are ignored."""
        self.sub_title = f"disk usage of {self.path}"

    def compose(self) -> ComposeResult:
        yield Header()
        yield DuBrowser(id="du-browser")
        yield Footer()

    @property
    def browser(self) -> DuBrowser:
        return self.query_one(DuBrowser)

    @property
    def scanning(self) -> bool:
        return not self.browser.done

    def on_mount(self) -> None:
        self.query_one(DuListing).focus()
        self.start_scan()

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
        self.browser.restart()
        self.start_scan()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "rescan":
            return None if self.scanning else True
        return True
