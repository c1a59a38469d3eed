"""The dcb console: a full-screen Textual app over services/.

Keys come from one registry (the ``BINDINGS`` of the app and its screens); the footer, the
help screen (``?``) and the command palette (ctrl+p) all derive from it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from dcb.services.config import Config
from dcb.tui.screens.common import ConfirmScreen, HelpScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.restore import RestoreWizard
from dcb.tui.screens.tasks import (
    BackupScopeScreen,
    BackupScreen,
    PruneScreen,
    ReplicateScreen,
    TaskScreen,
    VerifyScreen,
)
from dcb.tui.sources import Sources

# Shipped inside the package (dcb/styles.tcss): a wheel has no repository around it.
CSS_FILE = Path(__file__).resolve().parent.parent / "styles.tcss"


class DcbApp(App[int]):
    CSS_PATH = str(CSS_FILE)
    TITLE = "dcb"
    SUB_TITLE = "backup & disaster recovery"
    BINDINGS = [
        Binding("q", "quit", "Quit", id="quit"),
        Binding("question_mark", "help", "Help", id="help"),
    ]

    def __init__(self, cfg: Config, sources: Sources | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.sources = sources

    def on_mount(self) -> None:
        if self.cfg.stack.demo:  # `dcb demo`: say so, and what to try
            self.sub_title = (f"DEMO stack {self.cfg.stack.demo}: back up (b), run "
                              "`dcb demo break` elsewhere, restore (r)")
        self.push_screen(DashboardScreen(self.cfg, self.sources))

    # -- state ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a backup, verify or restore is running."""
        for s in self.screen_stack:
            if isinstance(s, TaskScreen) and s.running:
                return True
            if isinstance(s, RestoreWizard) and s.running:
                return True
        return False

    @property
    def dashboard(self) -> DashboardScreen | None:
        return next((s for s in self.screen_stack if isinstance(s, DashboardScreen)), None)

    def _refresh_dashboard(self, _result: object = None) -> None:
        if self.dashboard is not None:
            self.dashboard.poll()

    # -- actions --------------------------------------------------------------------------
    async def action_quit(self) -> None:
        if not self.busy:
            self.exit(0)
            return

        def decided(yes: bool | None) -> None:
            if yes:
                for s in self.screen_stack:
                    cancel = getattr(s, "cancel", None)
                    if cancel is not None:
                        cancel.set()
                self.exit(0)

        self.push_screen(ConfirmScreen(
            "Work is running. Quit anyway?\n\nIt is cancelled at the next safe point; "
            "stopped containers are started again.", yes="Quit", danger=True), decided)

    def action_backup(self) -> None:
        if self.busy:
            self.notify("a backup or restore is already running", severity="warning")
            return

        def chosen(scope: str | None) -> None:
            if scope:
                self.push_screen(BackupScreen(self.cfg, scope), self._refresh_dashboard)

        self.push_screen(BackupScopeScreen(), chosen)

    def start_restore(self, set_id: str) -> None:
        if self.busy:
            self.notify("a backup or restore is already running", severity="warning")
            return
        self.push_screen(RestoreWizard(self.cfg, set_id), self._refresh_dashboard)

    def start_verify(self, set_id: str, deep: bool) -> None:
        self.push_screen(VerifyScreen(self.cfg, set_id, deep), self._refresh_dashboard)

    def start_replicate(self, set_id: str) -> None:
        if not self.cfg.replication.destinations:
            self.notify("no destinations: add a [replication.NAME] table to dcb.toml",
                        severity="warning")
            return
        if self.busy:
            self.notify("a backup, restore or replication is already running",
                        severity="warning")
            return
        self.push_screen(ReplicateScreen(self.cfg, set_id), self._refresh_dashboard)

    def action_prune(self) -> None:
        self.push_screen(PruneScreen(self.cfg), self._refresh_dashboard)

    def action_du(self, docker: bool = False) -> None:
        try:
            from dcb.tui.screens.du import DuScreen
        except ImportError:
            self.notify("disk-usage browser not available", severity="error")
            return
        self.push_screen(DuScreen(self.cfg.backup_dir, self.sources or Sources(self.cfg),
                                  docker=docker), self._after_du)

    def _after_du(self, _result: object = None) -> None:
        if self.dashboard is not None:
            self.dashboard.poll_disk()  # a cleanup may have freed space

    def action_du_docker(self) -> None:
        self.action_du(docker=True)

    def action_objectives(self) -> None:
        try:
            from dcb.tui.screens.objectives import ObjectivesScreen
        except ImportError:
            self.notify("recovery objectives not available", severity="error")
            return
        self.push_screen(ObjectivesScreen(self.cfg))

    def action_history(self) -> None:
        from dcb.tui.screens.history import HistoryScreen

        d = self.dashboard
        self.push_screen(HistoryScreen(d.sources if d is not None else
                                       (self.sources or Sources(self.cfg))))

    def action_help(self) -> None:
        ours: list[tuple[str, str]] = []
        widgets: list[tuple[str, str]] = []
        seen = set()
        for key, active in self.active_bindings.items():
            b = active.binding
            if b.description and (key, b.description) not in seen:
                seen.add((key, b.description))
                # dcb's own keys (they carry ids) first; Textual's and widgets' after.
                mine = b.id is not None
                (ours if mine else widgets).append((self.get_key_display(b), b.description))
        rows = ours + widgets
        self.push_screen(HelpScreen(rows))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Back up now", "Back up databases and volumes", self.action_backup)
        yield SystemCommand("Prune", "Preview and apply the retention policy",
                            self.action_prune)
        yield SystemCommand("Disk usage", "Browse the backup directory by size", self.action_du)
        yield SystemCommand("Docker disk usage", "What Docker keeps on disk; safe cleanup",
                            self.action_du_docker)
        yield SystemCommand("Recovery objectives", "RPO/RTO per database and volume",
                            self.action_objectives)
        yield SystemCommand("History", "Run durations, sizes, success rate, disk growth",
                            self.action_history)
        yield SystemCommand("Help", "Every key", self.action_help)


def run_tui(cfg: Config) -> int:
    return DcbApp(cfg).run() or 0
