"""The console opens on the dashboard, shows the stack, and quits on q."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from services.config import load_config
from tests.stackkit import TestStack
from tui.app import DcbApp


async def _wait_for(pilot, predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    waited = 0.0
    while not predicate():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError("condition not met in time")


@pytest.mark.asyncio
async def test_dashboard_shows_containers_and_quits(stack: TestStack, stack_config: Path):
    app = DcbApp(load_config(str(stack_config)))
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one("#containers", DataTable)
        await _wait_for(pilot, lambda: table.row_count == 2)
        names = {str(table.get_row_at(i)[0]) for i in range(table.row_count)}
        assert names == {stack.postgres_container, stack.backend_container}
        assert "running" in str(table.get_row_at(0)[2])
        await pilot.press("q")
    assert app.return_code == 0


@pytest.mark.asyncio
async def test_docker_unreachable_shows_error_and_app_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    monkeypatch.chdir(tmp_path)
    app = DcbApp(load_config(environ={}))
    async with app.run_test(size=(80, 24)) as pilot:
        conn = app.query_one("#connection", Static)
        await _wait_for(pilot, lambda: conn.has_class("error"))
        assert "unreachable" in str(conn.render())
        assert app.is_running
        await pilot.press("q")
