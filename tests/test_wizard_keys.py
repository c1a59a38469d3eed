"""The restore wizard by keyboard alone (Enter/n forward, b/Escape back, wherever the focus is),
and the next plan's estimate taken from the restore it just ran (Pilot against the real stack).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Button, Checkbox, Input, Static, Switch
from textual.widgets._footer import FooterKey

from dcb.services.config import load_config
from dcb.tui.app import DcbApp
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.restore import RestoreWizard
from tests.conftest import run_dcb
from tests.stackkit import TestStack, release_undo_points
from tests.test_tui import backups, wait_for


def focused_id(app: DcbApp) -> str | None:
    return app.focused.id if app.focused is not None else None


async def focus_on(pilot: Pilot[Any], app: DcbApp, widget_id: str) -> None:
    """The focus lands on ``widget_id`` (focus moves on the next refresh)."""
    await wait_for(pilot, lambda: focused_id(app) == widget_id, timeout=10,
                   what=f"focus on #{widget_id} (it is on {focused_id(app)})")


async def tab_to(pilot: Pilot[Any], app: DcbApp, kind: type, key: str = "tab") -> None:
    """Move the focus with the keyboard until a widget of ``kind`` has it."""
    for _ in range(12):
        if isinstance(app.focused, kind):
            return
        await pilot.press(key)
    raise AssertionError(f"{key} never reached a {kind.__name__} (focus: {app.focused})")


def footer_keys(app: DcbApp) -> dict[str, str]:
    return {str(k.key_display): str(k.description) for k in app.screen.query(FooterKey)}


async def test_wizard_by_keyboard_alone_then_estimate_from_it(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    at_backup = stack.table_digest("functions_db")
    stack.psql("functions_db", "DELETE FROM invocations WHERE id % 4 = 1")
    damaged = stack.table_digest("functions_db")
    assert damaged != at_backup
    incidents = tmp_path / "backups" / "restores"
    app = DcbApp(load_config(str(cfg)))
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            await wait_for(pilot, lambda: backups(app).row_count >= 1, what="sets listed")
            await pilot.press("r")
            await wait_for(pilot, lambda: isinstance(app.screen, RestoreWizard))
            wizard = app.screen
            assert isinstance(wizard, RestoreWizard)
            # Step 1: the primary action has the focus; the footer names the keys.
            await focus_on(pilot, app, "scope-next")
            keys = footer_keys(app)
            assert keys.get("enter/n") == "Next" and keys.get("esc/b") == "Back", keys
            # A focused checkbox toggles with space and does not swallow Enter.
            await tab_to(pilot, app, Checkbox)
            box = app.focused
            assert isinstance(box, Checkbox) and box.value
            await pilot.press("space")
            assert not box.value
            await pilot.press("enter")  # nothing chosen: refused, stays, box unchanged
            assert wizard.step == "scope" and not box.value
            await pilot.press("space", "enter")
            assert box.value and wizard.step == "checks"
            # Escape goes back while the checks run; n goes forward again.
            await pilot.press("escape")
            assert wizard.step == "scope"
            await focus_on(pilot, app, "scope-next")
            await pilot.press("n")
            assert wizard.step == "checks"
            next_btn = wizard.query_one("#checks-next", Button)
            await wait_for(pilot, lambda: not next_btn.disabled, timeout=120,
                           what="checks passed")
            await focus_on(pilot, app, "checks-next")
            await pilot.press("enter")
            assert wizard.step == "confirm"
            await focus_on(pilot, app, "confirm-input")
            # Nothing restored from this store yet: the plan says its estimates are guesses.
            plan_text = str(wizard.query_one("#plan-text", Static).render())
            assert "restore database functions_db" in plan_text
            assert "a guess: no restore measured yet" in plan_text, plan_text
            # Enter on an empty, then a wrong confirmation changes nothing.
            await pilot.press("enter")
            await pilot.press(*"wrong", "enter")
            await pilot.pause(0.5)
            assert wizard.step == "confirm" and not wizard.running
            assert wizard.query_one("#confirm-input", Input).value == "wrong"
            # b in the input is a letter, not "back".
            await pilot.press("b")
            assert wizard.step == "confirm"
            # Escape back to the checks (Next focused), Enter forward: the field is empty.
            await pilot.press("escape")
            assert wizard.step == "checks"
            await focus_on(pilot, app, "checks-next")
            await pilot.press("enter")
            assert wizard.step == "confirm"
            assert wizard.query_one("#confirm-input", Input).value == ""
            # Focus on the undo switch: Enter neither toggles it nor runs anything.
            await tab_to(pilot, app, Switch, key="shift+tab")
            await pilot.press("enter")
            assert wizard.query_one("#safety", Switch).value is True
            assert wizard.step == "confirm"
            assert stack.table_digest("functions_db") == damaged
            assert not incidents.exists() or not list(incidents.iterdir())
            # Type the set id and press Enter: the restore runs to its result.
            await tab_to(pilot, app, Input)
            await pilot.press(*set_id, "enter")
            await wait_for(pilot, lambda: wizard.step == "result", timeout=300,
                           what="restore ran")
            text = str(wizard.query_one("#result-text", Static).render())
            assert "Restore complete and verified" in text, text
            assert stack.table_digest("functions_db") == at_backup
            await focus_on(pilot, app, "result-close")
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    finally:
        release_undo_points(stack)
    # The next plan estimates the database from the restore that just ran.
    (log,) = incidents.glob("*.json")
    took = {s["key"]: s["seconds"] for s in json.loads(log.read_text())["report"]["steps"]}
    r = run_dcb("restore", set_id, "--dry-run", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    steps = json.loads(r.out)["plan"]["steps"]
    step = next(s for s in steps if s["key"] == "database:functions_db")
    assert step["estimate_source"] == "from 1 past restore of functions_db"
    assert abs(step["estimate_seconds"] - took["database:functions_db"]) <= 0.2, (step, took)
    r = run_dcb("restore", set_id, "--dry-run", "--config", str(cfg))
    assert "from 1 past restore of functions_db" in r.out, r.out
