"""The dcb console: a full-screen Textual app over services/."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Footer, Header, Static

from services.config import Config
from services.docker_gateway import DockerGateway
from services.errors import DcbError
from services.status import StackStatus, collect_status
from widgets.status_panes import ContainersPane, DiskPane, VolumesPane

CSS_FILE = Path(__file__).resolve().parent.parent / "styles.tcss"


class StatusLoaded(Message):
    def __init__(self, status: StackStatus) -> None:
        super().__init__()
        self.status = status


class StatusFailed(Message):
    def __init__(self, error: DcbError) -> None:
        super().__init__()
        self.error = error


class DcbApp(App[int]):
    """The dashboard (issue 5 grows it into the full console)."""

    CSS_PATH = str(CSS_FILE)
    TITLE = "dcb"
    SUB_TITLE = "backup & disaster recovery"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("g", "refresh", "Refresh", id="refresh"),
    ]

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Connecting to Docker...", id="connection")
        yield ContainersPane(id="containers")
        yield VolumesPane(id="volumes")
        yield DiskPane(id="disk")
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        self.load_status()

    @work(thread=True, exclusive=True, group="status", exit_on_error=False)
    def load_status(self) -> None:
        try:
            gw = DockerGateway.connect(timeout=10)
            try:
                st = collect_status(self.cfg, gw)
            finally:
                gw.close()
        except DcbError as e:
            self.post_message(StatusFailed(e))
            return
        self.post_message(StatusLoaded(st))

    @on(StatusLoaded)
    def _show_status(self, msg: StatusLoaded) -> None:
        conn = self.query_one("#connection", Static)
        problems = "; ".join(msg.status.problems)
        conn.update(f"Docker: connected{'  |  ' + problems if problems else ''}")
        conn.set_class(bool(problems), "warning")
        conn.remove_class("error")
        self.query_one(ContainersPane).show(msg.status)
        self.query_one(VolumesPane).show(msg.status)
        self.query_one(DiskPane).show(msg.status)

    @on(StatusFailed)
    def _show_error(self, msg: StatusFailed) -> None:
        conn = self.query_one("#connection", Static)
        hint = f"\n{msg.error.hint}" if msg.error.hint else ""
        conn.update(f"Docker: {msg.error.message}{hint}")
        conn.add_class("error")


def run_tui(cfg: Config) -> int:
    return DcbApp(cfg).run() or 0
