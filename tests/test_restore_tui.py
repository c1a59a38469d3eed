"""The restore wizard as the engineer on call meets it: PostgreSQL down, then undo from the
result screen (Textual Pilot against the real stack)."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Button, Input, Static

from dcb.services.config import load_config
from dcb.tui.app import DcbApp
from dcb.tui.screens.common import ConfirmScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.restore import RestoreWizard
from tests.conftest import run_dcb
from tests.stackkit import TestStack, release_undo_points, wait_for_postgres
from tests.test_tui import backups, wait_for


async def test_wizard_says_what_it_did_not_check_then_undoes(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    at_backup = stack.table_digest("functions_db")
    stack.psql("functions_db", "DELETE FROM invocations WHERE id % 3 = 0")
    damaged = stack.table_digest("functions_db")
    stack.client.containers.get(stack.postgres_container).stop()
    app = DcbApp(load_config(str(cfg)))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            await wait_for(pilot, lambda: backups(app).row_count >= 1, what="sets listed")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RestoreWizard))
            wizard = app.screen
            assert isinstance(wizard, RestoreWizard)
            await pilot.click("#scope-next")
            next_btn = wizard.query_one("#checks-next", Button)
            await wait_for(pilot, lambda: not next_btn.disabled, timeout=120,
                           what="checks passed")
            checklist = str(wizard.query_one("#checklist", Static).render())
            # PostgreSQL is down: no dump was read, and the checklist says so.
            assert "read through by pg_restore" not in checklist
            assert "not read through: PostgreSQL is not running" in checklist
            assert "server version not checked" in checklist
            assert "checksums of 2 artifact(s) match" in checklist
            await pilot.click("#checks-next")
            blast = str(wizard.query_one("#blast", Static).render())
            assert "PostgreSQL is not running: it is started first" in blast
            assert "undo point keeps what is replaced" in blast
            wizard.query_one("#confirm-input", Input).value = set_id
            go = wizard.query_one("#confirm-go", Button)
            await wait_for(pilot, lambda: not go.disabled)
            await pilot.click("#confirm-go")
            await wait_for(pilot, lambda: wizard.step == "result", timeout=300,
                           what="restore ran")
            text = str(wizard.query_one("#result-text", Static).render())
            assert "Restore complete and verified" in text, text
            assert stack.table_digest("functions_db") == at_backup
            # Undo from the result screen: u, confirm, and the damaged database is back.
            await pilot.press("u")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.click("#yes")
            await wait_for(pilot, lambda: "undone" in str(
                wizard.query_one("#result-text", Static).render()), timeout=120,
                what="undo done")
            assert stack.table_digest("functions_db") == damaged
            assert not wizard.query_one("#result-undo", Button).display
            await pilot.click("#result-close")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    finally:
        pg = stack.client.containers.get(stack.postgres_container)
        if pg.status != "running":
            pg.start()
        wait_for_postgres(stack.client, stack.postgres_container)
        release_undo_points(stack)
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert stack.table_digest("functions_db") == at_backup
