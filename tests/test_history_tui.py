"""The console's history screen and alert banner, driven with Pilot over a synthetic store on
disk (the health check, the heartbeat file and the history are read for real; only the Docker
side is fixed data, as in the snapshot tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Static

from dcb.services.config import Config
from dcb.services.ops.check import CheckReport
from dcb.services.ops.heartbeat import STATE_FILE, DaemonState
from dcb.services.ops.history_stats import HistoryStats
from dcb.tui.app import DcbApp
from dcb.tui.screens.common import HelpScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.history import HistoryScreen
from dcb.tui.sources import Sources
from dcb.widgets.history_charts import GrowthChart, RunsChart
from dcb.widgets.status_panes import AlertBanner, StatusLine
from tests.automation_fixtures import Run, steady_runs, write_runs
from tests.snapshot_fixtures import SCHEDULE_TOML, FixedSources, write_config


class StoreSources(FixedSources):
    """Docker fixed; the store's history, the check and the heartbeat read for real."""

    def check(self) -> CheckReport:
        return Sources.check(self)

    def schedule(self) -> DaemonState | None:
        return Sources.schedule(self)

    def history(self) -> HistoryStats:
        return Sources.history(self)


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str,
                timeout: float = 20) -> None:
    waited = 0.0
    while not predicate():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")


def store(tmp_path: Path, runs: list[Run]) -> Config:
    root = tmp_path / "backups"
    write_runs(root, datetime.now(UTC), runs)
    return write_config(tmp_path / "cfg", backup_dir=root, extra=SCHEDULE_TOML)


def text(widget: Any) -> str:
    return str(widget.render())


async def test_history_screen_charts_the_runs(tmp_path: Path):
    runs = [*steady_runs(10, every_hours=24, start_hours=2),
            Run(30, status="failed"), Run(54, status="failed")]
    cfg = store(tmp_path, runs)
    app = DcbApp(cfg, StoreSources(cfg))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen)
                    and app.screen.overview is not None, "dashboard")
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, HistoryScreen)
                    and app.screen.stats is not None, "history loaded")
        screen = app.screen
        assert isinstance(screen, HistoryScreen) and screen.stats is not None
        summary = text(screen.query_one("#history-summary", Static))
        assert "12 runs, 2 failed" in summary and "success 83% (30 days)" in summary
        assert "median 1m" in summary.replace("1 minute", "1m")
        assert len(screen.stats.runs) == 12
        assert [r.ok for r in screen.stats.runs].count(False) == 2
        assert len(screen.query(RunsChart)) == 2 and len(screen.query(GrowthChart)) == 1
        plotted = text(screen.query_one("#durations", RunsChart))
        assert "Duration (s) per run" in plotted and "failed" in plotted
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "back")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert any(key == "h" and "History" in desc for key, desc in app.screen.rows)


async def test_alert_banner_follows_dcb_check_and_status_line_the_daemon(tmp_path: Path):
    cfg = store(tmp_path, [Run(30)])  # newest backup 30 h old: RPO (24 h) missed
    app = DcbApp(cfg, StoreSources(cfg))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen)
                    and app.screen.check is not None, "dashboard polled")
        banner = app.screen.query_one(AlertBanner)
        assert banner.display and banner.has_class("critical")
        assert "CRITICAL: newest complete backup is 30.0h old (RPO 24h)" in text(banner)
        assert "CRITICAL: schedule daemon not running" in text(banner)
        assert "daemon not running" in text(app.screen.query_one(StatusLine))

        # A backup lands and the daemon beats: after a refresh the banner is gone.
        write_runs(cfg.backup_dir, datetime.now(UTC), [Run(0.1)])
        now = datetime.now(UTC).isoformat()
        (cfg.backup_dir / STATE_FILE).write_text(json.dumps({
            "pid": 1, "host": "h", "started_at": now, "updated_at": now, "tz": "UTC",
            "jobs": {"nightly": {"name": "nightly", "run": "backup", "cron": "0 2 * * *",
                                 "next_run": "2099-01-01T02:00:00+00:00"}}}))
        (cfg.backup_dir / STATE_FILE).chmod(0o600)  # as the daemon writes it
        await pilot.press("g")
        await until(pilot, lambda: not banner.display, "banner hidden")
        line = text(app.screen.query_one(StatusLine))
        assert "next: nightly" in line and "daemon alive" in line
