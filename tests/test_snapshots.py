"""What the console looks like: SVG snapshots at 80x24 and 160x48 (pytest-textual-snapshot).

Deterministic: fixed data without Docker (``tests.snapshot_fixtures.FixedSources``), the
display clock pinned to ``FIXED_NOW``, fixed paths on screen, no cursor blink, no animations.
Each test drives the app to the screen it shows and waits for that screen's data (never a
fixed sleep). ``pytest tests/test_snapshots.py --snapshot-update`` rewrites the SVGs under
``tests/__snapshots__/`` after a deliberate change; look at them before committing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import Checkbox, Input

import dcb.tui.screens.du as du_screen
from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.du import ScanProgress
from dcb.tui.app import DcbApp
from dcb.tui.screens.common import HelpScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.docker_du import CleanupScreen
from dcb.tui.screens.du import DuScreen
from dcb.tui.screens.history import HistoryScreen
from dcb.tui.screens.restore import RestoreWizard
from dcb.tui.screens.tasks import BackupScopeScreen, PruneScreen, SetDetailScreen
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.docker_usage import DockerUsageView
from tests.snapshot_fixtures import (
    DU_ROOT,
    FIXED_NOW,
    SCHEDULE_TOML,
    FixedSources,
    make_check,
    make_schedule,
    make_sets,
    write_config,
    write_du_tree,
    write_store,
)

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]
RunBefore = Callable[[Pilot[Any]], Awaitable[None]]
SnapCompare = Callable[..., bool]


@pytest.fixture(autouse=True)
def fixed_clock() -> Any:
    fmt.pin_now(FIXED_NOW)
    yield
    fmt.pin_now(None)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A configuration whose backup dir holds the fixed sets on disk (the restore wizard reads
    its set from there)."""
    write_store(make_sets())
    return write_config(tmp_path)


def app_for(cfg: Config, docker_down: bool = False) -> DcbApp:
    return DcbApp(cfg, FixedSources(cfg, docker_down=docker_down))


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str,
                timeout: float = 15.0) -> None:
    waited = 0.0
    while not predicate():
        await pilot.pause(0.02)
        waited += 0.02
        if waited > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")


def steady(pilot: Pilot[Any]) -> None:
    """No animations, no blinking cursor in any screen on the stack (harlequin's
    ``no_cursor_blink``)."""
    app = pilot.app
    app.animation_level = "none"
    for screen in app.screen_stack:
        for box in screen.query(Input):
            box.cursor_blink = False


async def dashboard_ready(pilot: Pilot[Any], docker_down: bool = False) -> DashboardScreen:
    app = pilot.app

    def ready() -> bool:
        s = app.screen
        if not isinstance(s, DashboardScreen) or s.overview is None:
            return False
        if s.query_one(BackupsTable).row_count != len(s.overview.rows):
            return False
        if s.disk_picture is None:
            return False
        if docker_down:
            return "Docker engine unreachable" in s.docker_state
        return s.status is not None and "connected" in s.docker_state

    await until(pilot, ready, "dashboard painted with its data")
    steady(pilot)
    screen = app.screen
    assert isinstance(screen, DashboardScreen)
    return screen


def open_screen(key: str, kind: type[Screen[Any]],
                ready: Callable[[Any], bool] = lambda s: True,
                before: tuple[str, ...] = ()) -> RunBefore:
    """From the loaded dashboard press ``before`` then ``key``; wait for a ``kind`` screen."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_ready(pilot)
        if before:
            await pilot.press(*before)
        await pilot.press(key)
        await until(pilot, lambda: isinstance(pilot.app.screen, kind)
                    and ready(pilot.app.screen), f"{kind.__name__} shown")
        steady(pilot)

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(snap_compare: SnapCompare, cfg: Config, size: tuple[int, int]) -> None:
    """Three containers (one exited), eight sets of every status, disk 72 % used."""
    assert snap_compare(app_for(cfg), terminal_size=size, run_before=dashboard_ready)


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_docker_unreachable(snap_compare: SnapCompare, cfg: Config,
                                      size: tuple[int, int]) -> None:
    """The engine is down: containers unknown, the status line says why; backups still shown."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_ready(pilot, docker_down=True)

    assert snap_compare(app_for(cfg, docker_down=True), terminal_size=size,
                        run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_backup_scope_dialog(snap_compare: SnapCompare, cfg: Config,
                             size: tuple[int, int]) -> None:
    assert snap_compare(app_for(cfg), terminal_size=size,
                        run_before=open_screen("b", BackupScopeScreen))


@pytest.mark.parametrize("size", SIZES)
def test_set_detail(snap_compare: SnapCompare, cfg: Config, size: tuple[int, int]) -> None:
    """The newest complete set: artifacts with checksums, row counts at dump time."""
    assert snap_compare(app_for(cfg), terminal_size=size,
                        run_before=open_screen("enter", SetDetailScreen))


@pytest.mark.parametrize("size", SIZES)
def test_set_detail_failed(snap_compare: SnapCompare, cfg: Config,
                           size: tuple[int, int]) -> None:
    """The failed set (third row): no artifacts, the error in the header line."""
    assert snap_compare(app_for(cfg), terminal_size=size,
                        run_before=open_screen("enter", SetDetailScreen,
                                               before=("down", "down")))


@pytest.mark.parametrize("size", SIZES)
def test_restore_wizard_scope(snap_compare: SnapCompare, cfg: Config,
                              size: tuple[int, int]) -> None:
    """Step 1 of the restore wizard on the newest set, read from the store on disk.

    The later steps need Docker (preflight, blast radius), so they are not snapshotted.
    """
    assert snap_compare(app_for(cfg), terminal_size=size, run_before=open_screen(
        "r", RestoreWizard, ready=lambda s: len(s.query(Checkbox)) == 4))


@pytest.mark.parametrize("size", SIZES)
def test_prune_preview(snap_compare: SnapCompare, tmp_path: Path, size: tuple[int, int]) -> None:
    """The prune screen on the fixed sets: each set with the items and rules that keep it, the
    highlighted set's reasons in full below; the failed and the stale incomplete set go.

    The screen shows no path, so the store lives in this test's own directory (the shared
    fixed path may be rewritten by a concurrent session)."""
    root = tmp_path / "backups"
    write_store(make_sets(root), root)
    cfg = write_config(tmp_path, backup_dir=root)

    async def run_before(pilot: Pilot[Any]) -> None:
        await dashboard_ready(pilot)
        screen = PruneScreen(cfg, now=FIXED_NOW)
        await pilot.app.push_screen(screen)
        await until(pilot, lambda: screen.plan is not None, "prune plan shown")
        steady(pilot)

    assert snap_compare(app_for(cfg), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_help(snap_compare: SnapCompare, cfg: Config, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(cfg), terminal_size=size,
                        run_before=open_screen("question_mark", HelpScreen))


@pytest.mark.parametrize("size", SIZES)
def test_du_browser(snap_compare: SnapCompare, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    size: tuple[int, int]) -> None:
    """``d`` on the dashboard: the backup dir (a fixed small tree) by size, largest first."""
    root = write_du_tree(DU_ROOT)
    du_cfg = write_config(tmp_path, backup_dir=root)
    real_scan = du_screen.scan

    def scan_with_fixed_elapsed(path: Any, on_progress: Any = None, **kw: Any) -> Any:
        # "scanned in 0.0s" must not become "0.1s" on a slow run.
        def progress(p: ScanProgress) -> None:
            on_progress(dataclasses.replace(p, elapsed=0.0))

        return real_scan(path, on_progress=progress if on_progress else None, **kw)

    monkeypatch.setattr(du_screen, "scan", scan_with_fixed_elapsed)
    assert snap_compare(app_for(du_cfg), terminal_size=size, run_before=open_screen(
        "d", DuScreen, ready=lambda s: s.generation > 0 and not s.scanning))


@pytest.mark.parametrize("size", SIZES)
def test_history(snap_compare: SnapCompare, cfg: Config, size: tuple[int, int]) -> None:
    """``h``: 40 nights of backups (two failed, one slow) charted, the store's growth projected
    to a full disk."""
    assert snap_compare(app_for(cfg), terminal_size=size, run_before=open_screen(
        "h", HistoryScreen, ready=lambda s: s.stats is not None))


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_alerts(snap_compare: SnapCompare, tmp_path: Path,
                          size: tuple[int, int]) -> None:
    """``dcb check`` finds an RPO miss and a failed job: the banner; the daemon is alive and
    the status line shows the next run."""
    write_store(make_sets())
    alert_cfg = write_config(tmp_path, extra=SCHEDULE_TOML)
    app = DcbApp(alert_cfg, FixedSources(alert_cfg, check=make_check(),
                                         schedule=make_schedule()))

    async def run_before(pilot: Pilot[Any]) -> None:
        screen = await dashboard_ready(pilot)
        await until(pilot, lambda: screen.check is not None, "check polled")

    assert snap_compare(app, terminal_size=size, run_before=run_before)




@pytest.mark.parametrize("size", SIZES)
def test_docker_view(snap_compare: SnapCompare, cfg: Config, size: tuple[int, int]) -> None:
    """``D`` on the dashboard: Docker's usage by kind, then every item largest first (fixed
    engine answers: a 4.2 GiB log on top, dangling images, the stack's parts marked)."""
    assert snap_compare(app_for(cfg), terminal_size=size, run_before=open_screen(
        "D", DuScreen, ready=lambda s: bool(s.query(DockerUsageView))
        and s.query_one(DockerUsageView).report is not None))


@pytest.mark.parametrize("size", SIZES)
def test_docker_cleanup_preview(snap_compare: SnapCompare, cfg: Config,
                                size: tuple[int, int]) -> None:
    """``c`` in the Docker view: exactly the stopped containers to remove, the stack's worker
    not offered, the typed confirmation."""
    async def run_before(pilot: Pilot[Any]) -> None:
        await open_screen("D", DuScreen, ready=lambda s: bool(s.query(DockerUsageView))
                          and s.query_one(DockerUsageView).report is not None)(pilot)
        await pilot.press("c")
        await until(pilot, lambda: isinstance(pilot.app.screen, CleanupScreen),
                    "cleanup preview shown")
        steady(pilot)

    assert snap_compare(app_for(cfg), terminal_size=size, run_before=run_before)
