"""The console driven as a user would (Textual Pilot) against the real test stack."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static

from dcb.services.config import load_config
from dcb.tui.app import DcbApp
from dcb.tui.screens import dashboard
from dcb.tui.screens.common import HelpScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.restore import RestoreWizard
from dcb.tui.screens.tasks import BackupScreen, SetDetailScreen
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.status_panes import ContainersPane, StatusLine
from tests.conftest import run_dcb
from tests.stackkit import BUSYBOX_IMAGE, TestStack, release_undo_points


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 60.0,
                   what: str = "condition") -> None:
    waited = 0.0
    while not predicate():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError(f"{what} not met within {timeout}s")


def cell(table: Any, row: int, col: int) -> str:
    return str(table.get_row_at(row)[col])


def backups(app: DcbApp) -> BackupsTable:
    return app.screen.query_one(BackupsTable)


async def test_dashboard_shows_stack_and_backups_and_quits(stack: TestStack, tmp_path: Path):
    cfg_path = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg_path))
    assert r.code == 0, r.err
    app = DcbApp(load_config(str(cfg_path)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        containers = app.screen.query_one(ContainersPane)
        await wait_for(pilot, lambda: "running" in cell(containers, 0, 2), what="state")
        names = {cell(containers, i, 0) for i in range(containers.row_count)}
        assert names == {stack.postgres_container, stack.backend_container}
        await wait_for(pilot, lambda: backups(app).row_count == 1, what="backups listed")
        assert cell(backups(app), 0, 0) == r.out.strip()
        assert "complete" in cell(backups(app), 0, 3)
        status = str(app.screen.query_one(StatusLine).render())
        assert "last good backup" in status and "connected" in status
        # Enter opens the set's details: artifacts and row counts.
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, SetDetailScreen))
        await pilot.press("escape")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await pilot.press("q")
    assert app.return_code == 0


async def test_stopped_container_turns_red_live(stack: TestStack, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    # No poll after the first: only Docker's event stream can change the row.
    monkeypatch.setattr(dashboard, "POLL_SECONDS", 3600.0)
    c = stack.client.containers.run(BUSYBOX_IMAGE, ["sleep", "600"], name=f"{stack.prefix}-app2",
                                    detach=True, network_mode="none", init=True,
                                    labels={"dcb.test": "1"})
    try:
        cfg = stack.write_config(tmp_path, stack={"app_containers": [c.name]})
        app = DcbApp(load_config(str(cfg)))
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            pane = app.screen.query_one(ContainersPane)

            def state_of(name: str) -> str:
                row = next(i for i in range(pane.row_count) if cell(pane, i, 0) == name)
                return cell(pane, row, 2)

            await wait_for(pilot, lambda: "running" in state_of(c.name), what="running")
            c.kill()
            # Typically well under a second; the bound is loose for loaded CI machines.
            await wait_for(pilot, lambda: "exited" in state_of(c.name), timeout=15,
                           what="exited from the event stream")
            assert "red" in state_of(c.name), app.screen.docker_state
    finally:
        c.remove(force=True)


async def test_backup_from_the_dashboard(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("b")
        await pilot.pause(0.2)
        await pilot.press("down", "enter")  # "Databases only"
        await pilot.click("#start")
        await wait_for(pilot, lambda: isinstance(app.screen, BackupScreen))
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        await wait_for(pilot, lambda: not screen.running, timeout=300, what="backup done")
        result = str(screen.query_one("#task-result", Static).render())
        assert "complete" in result, result
        assert screen.query_one("#panel").rows  # one progress row per stage was shown
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: backups(app).row_count == 1, what="new set listed")
    listed = json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)
    assert [a["kind"] for a in listed[0]["artifacts"]] == ["globals", "database", "database"]


async def _open_wizard(app: DcbApp, pilot: Pilot[Any]) -> RestoreWizard:
    await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    await wait_for(pilot, lambda: backups(app).row_count >= 1, what="sets listed")
    await pilot.press("r")
    await wait_for(pilot, lambda: isinstance(app.screen, RestoreWizard))
    wizard = app.screen
    assert isinstance(wizard, RestoreWizard)
    return wizard


async def test_restore_wizard_end_to_end(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "dart_cloud", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    before = stack.table_digest("dart_cloud")
    stack.psql("dart_cloud", "DELETE FROM invoices; DROP VIEW big_spenders;")
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(120, 40)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await pilot.click("#scope-next")
        next_btn = wizard.query_one("#checks-next", Button)
        await wait_for(pilot, lambda: not next_btn.disabled, what="checks passed")
        checklist = str(wizard.query_one("#checklist", Static).render())
        assert "checksums" in checklist and "✗" not in checklist
        await pilot.click("#checks-next")
        assert wizard.step == "confirm"
        blast = str(wizard.query_one("#blast", Static).render())
        assert "dart_cloud" in blast and "live connections" in blast
        go = wizard.query_one("#confirm-go", Button)
        box = wizard.query_one("#confirm-input", Input)
        box.value = "wrong"
        await pilot.pause(0.1)
        assert go.disabled  # nothing runs until the set id is typed
        box.value = set_id
        await wait_for(pilot, lambda: not go.disabled)
        await pilot.click("#confirm-go")
        await wait_for(pilot, lambda: wizard.step == "result", timeout=300, what="restore ran")
        text = str(wizard.query_one("#result-text", Static).render())
        assert "Restore complete and verified" in text, text
        assert wizard.report is not None and wizard.report.undo == \
            f"dcb undo {wizard.report.restore_id}"
        assert stack.table_digest("dart_cloud") == before
        release_undo_points(stack)  # the restore kept the damaged database: not needed here
        close = wizard.query_one("#result-close", Button)
        # Clicked only once laid out: a click before lands at (0, 0), on the header's icon.
        await wait_for(pilot, lambda: close.region.area > 0 and close.has_focus,
                       what="the Close button laid out and focused")
        await pilot.click("#result-close")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen),
                       what=f"dashboard (on {app.screen!r}, focus {app.focused!r})")


async def test_wizard_refuses_a_corrupted_set_and_escape_goes_back(stack: TestStack,
                                                                   tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    dump = tmp_path / "backups" / r.out.strip() / "db-functions_db.pgdump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x04
    dump.write_bytes(bytes(data))
    before = stack.table_digest("functions_db")
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(100, 30)) as pilot:
        wizard = await _open_wizard(app, pilot)
        await pilot.click("#scope-next")
        checklist = wizard.query_one("#checklist", Static)
        await wait_for(pilot, lambda: checklist.has_class("failed"), what="refusal")
        text = str(checklist.render())
        assert "checksum mismatch" in text and "Nothing was changed" in text
        assert wizard.query_one("#checks-next", Button).disabled
        await pilot.press("escape")
        assert wizard.step == "scope"
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    assert stack.table_digest("functions_db") == before


async def test_docker_unreachable_shows_error_and_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    monkeypatch.chdir(tmp_path)
    app = DcbApp(load_config(environ={}))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        line = app.screen.query_one(StatusLine)
        await wait_for(pilot, lambda: "unreachable" in str(line.render()), what="error state")
        pane = app.screen.query_one(ContainersPane)
        assert "unknown" in cell(pane, 0, 2)
        assert app.is_running
        await pilot.press("q")
    assert app.return_code == 0


async def test_objectives_screen_shows_rpo_per_database_and_volume(stack: TestStack,
                                                                   tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "dart_cloud", "--config", str(cfg))
    assert r.code == 0, r.err
    assert run_dcb("verify", "--config", str(cfg)).code == 0
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ObjectivesScreen")
        table = app.screen.query_one("#rpo")
        rows = {cell(table, i, 1): cell(table, i, 4) for i in range(table.row_count)}
        assert "met" in rows["dart_cloud"]  # verified minutes ago, target 24 h
        assert "missed" in rows["functions_db"]  # never backed up
        assert "missed" in rows[stack.functions_volume]
        assert "no drill yet" in str(app.screen.query_one("#rto").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))


async def test_quit_asks_while_a_backup_runs(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("b")
        await pilot.click("#start")
        await wait_for(pilot, lambda: isinstance(app.screen, BackupScreen))
        screen = app.screen
        assert isinstance(screen, BackupScreen)
        assert screen.running  # a full backup of the stack takes seconds
        await pilot.press("q")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
        assert app.is_running
        await pilot.press("escape")  # keep going
        await wait_for(pilot, lambda: not screen.running, timeout=300, what="backup done")
        await pilot.press("q")
    assert app.return_code == 0
