"""``dcb prune`` removes exactly the sets its preview showed: the service, the CLI's confirmation
(also on a real terminal) and the console's prune screen, on a store of hand-written sets
(no Docker needed).

The store: full sets A and B (both databases, the roles, the volume) and a databases-only set
C, an hour apart, with ``keep_last = 1``. Per item, C is the newest copy of the databases and
the roles, B the newest copy of the volume: A goes. Between the preview and the confirmation
the tests change the store as a user or a schedule would.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

from dcb.services.backup import read_history
from dcb.services.config import Config, load_config
from dcb.services.errors import LockedError
from dcb.services.lock import StoreLock
from dcb.services.prune import PlanChanged, execute, preview, prune
from dcb.services.store import MANIFEST, MANIFEST_VERSION, Artifact, BackupSet
from dcb.tui.app import DcbApp
from dcb.tui.screens.common import ConfirmScreen
from dcb.tui.screens.tasks import PruneScreen
from tests.conftest import BIN, run_dcb
from tests.snapshot_fixtures import FixedSources

DBS = (("database", "dart_cloud"), ("database", "functions_db"), ("globals", "globals"))
FULL = (*DBS, ("volume", "functions_data"))


@dataclass
class Store:
    cfg: Config
    root: Path
    now: datetime
    ids: dict[str, str]
    """Letter -> set id."""

    def add(self, letter: str, hours_ago: float, items: tuple[tuple[str, str], ...] = FULL,
            status: str = "complete", **extra: Any) -> str:
        when = (self.now - timedelta(hours=hours_ago)).replace(microsecond=0)
        sid = when.strftime("%Y%m%dT%H%M%SZ")
        d = self.root / sid
        d.mkdir(mode=0o700)
        artifacts = []
        for kind, name in items:
            f = d / f"{kind}-{name}.bin"
            data = f"{letter} {kind} {name}\n".encode() * 100
            f.write_bytes(data)
            artifacts.append(Artifact(kind, name, f.name, len(data),
                                      hashlib.sha256(data).hexdigest(), "none"))
        if status != "incomplete":
            s = BackupSet(id=sid, path=d, status=status, created_at=when,
                          artifacts=tuple(artifacts), extra={"purpose": "backup", **extra})
            (d / MANIFEST).write_text(json.dumps({**s.to_json(),
                                                  "manifest_version": MANIFEST_VERSION}))
        self.ids[letter] = sid
        return sid

    def present(self) -> set[str]:
        """Letters whose set directory still exists."""
        return {k for k, v in self.ids.items() if (self.root / v).is_dir()}

    def drop(self, letter: str) -> None:
        shutil.rmtree(self.root / self.ids[letter])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    root = tmp_path / "backups"
    root.mkdir(mode=0o700)
    f = tmp_path / "dcb.toml"
    f.write_text(f'[storage]\nbackup_dir = "{root}"\n'
                 "[retention]\nkeep_last = 1\nkeep_daily = 0\nkeep_weekly = 0\n"
                 "keep_monthly = 0\n")
    st = Store(load_config(str(f), environ={}), root, datetime.now(UTC), {})
    st.add("A", 3)
    st.add("B", 2)
    st.add("C", 1, DBS)
    return st


def letters(st: Store, ids: tuple[str, ...] | list[str]) -> list[str]:
    back = {v: k for k, v in st.ids.items()}
    return [back[i] for i in ids]


# --- the service -----------------------------------------------------------------------------


def test_execute_removes_exactly_the_preview(store: Store) -> None:
    shown = preview(store.cfg)
    reasons = {d.set.id: d.reasons for d in shown.decisions}
    assert reasons == {
        store.ids["C"]: ("database dart_cloud, database functions_db, roles: last 1, "
                         "newest copy",),
        store.ids["B"]: ("volume functions_data: last 1, newest copy",),
        store.ids["A"]: ("remove",),
    }
    assert store.present() == {"A", "B", "C"}  # a preview changes nothing
    res = execute(store.cfg, shown)
    assert letters(store, res.removed) == ["A"]
    assert store.present() == {"B", "C"}
    assert res.freed_bytes > 0 and res.also_removable == ()
    entry = read_history(store.root)[-1]
    assert entry["kind"] == "prune" and letters(store, entry["removed"]) == ["A"]


def test_a_new_backup_before_the_confirmation_changes_nothing_that_is_removed(
        store: Store) -> None:
    shown = preview(store.cfg)
    store.add("D", 0.5)  # a scheduled full backup lands while the user reads the preview
    res = execute(store.cfg, shown)
    # Only A, as shown. By the rules B and C could go now too, but nobody was shown that.
    assert letters(store, res.removed) == ["A"]
    assert letters(store, res.also_removable) == ["C", "B"]
    assert store.present() == {"B", "C", "D"}


def test_a_shown_removal_the_rules_now_keep_is_refused_with_the_new_plan(store: Store) -> None:
    shown = preview(store.cfg)
    store.drop("B")  # the volume's newest copy is deleted by hand: A holds the only one now
    with pytest.raises(PlanChanged) as e:
        execute(store.cfg, shown)
    assert f"set {store.ids['A']} is now kept (volume functions_data: last 1, newest copy)" \
        in e.value.message
    assert e.value.hint == "nothing was removed; review the new plan"
    assert store.present() == {"A", "C"}
    assert e.value.current.removals == ()
    assert not [h for h in read_history(store.root) if h["kind"] == "prune"]


@pytest.mark.parametrize("change", ["gone", "changed"])
def test_a_shown_removal_that_changed_or_vanished_is_refused(store: Store, change: str) -> None:
    shown = preview(store.cfg)
    a = store.root / store.ids["A"]
    if change == "gone":
        store.drop("A")
    else:  # the same id now names other data: the preview did not show that
        m = json.loads((a / MANIFEST).read_text())
        m["artifacts"] = m["artifacts"][:1]
        (a / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PlanChanged, match=f"set {store.ids['A']} is {change}|"
                                          f"set {store.ids['A']} {change}"):
        execute(store.cfg, shown)
    assert store.present() == ({"B", "C"} if change == "gone" else {"A", "B", "C"})


def test_execute_waits_for_no_one_while_another_run_holds_the_store(store: Store) -> None:
    shown = preview(store.cfg)
    with StoreLock(store.root, "dcb backup"), pytest.raises(LockedError):
        execute(store.cfg, shown)
    assert store.present() == {"A", "B", "C"}


def test_prune_in_one_step_removes_dead_runs_and_keeps_fresh_ones(store: Store) -> None:
    store.add("F", 0.2, status="failed")
    store.add("I", 30, status="incomplete")  # a run killed more than a day ago
    store.add("R", 0.1, status="incomplete")  # may still be running
    res = prune(store.cfg)
    assert sorted(letters(store, res.removed)) == ["A", "F", "I"]
    assert store.present() == {"B", "C", "R"}
    assert {d.set.id for d in res.plan.removals} == set(res.removed)


def test_safety_sets_follow_their_restores_undo_window(store: Store) -> None:
    from dcb.services.backup import append_history

    s_done = store.add("S1", 0.4, FULL, purpose="safety", restore_id="restore-1")
    s_open = store.add("S2", 0.3, FULL, purpose="safety", restore_id="restore-2")
    s_run = store.add("S3", 0.2, FULL, purpose="safety", restore_id="restore-3")
    finished = store.now - timedelta(hours=30)
    append_history(store.root, {"kind": "restore", "id": "restore-1", "ok": True,
                                "at": finished.isoformat(), "safety_set_id": s_done})
    append_history(store.root, {"kind": "restore", "id": "restore-2", "ok": True,
                                "at": store.now.isoformat(), "safety_set_id": s_open})
    by_id = {d.set.id: d for d in preview(store.cfg).decisions}
    assert not by_id[s_done].keep
    assert by_id[s_done].reasons[0].startswith("undo window of restore-1 ended")
    assert by_id[s_open].keep and by_id[s_open].reasons[0].startswith("undo for restore-2 until")
    assert by_id[s_run].keep and "recorded no end" in by_id[s_run].reasons[0]
    # Not counted: B is still the volume's newest copy, C the databases'.
    assert by_id[store.ids["B"]].reasons == ("volume functions_data: last 1, newest copy",)
    assert not by_id[store.ids["A"]].keep


# --- the CLI ---------------------------------------------------------------------------------


def cfg_path(st: Store) -> str:
    assert st.cfg.path is not None
    return str(st.cfg.path)


def test_cli_dry_run_yes_and_refusals(store: Store) -> None:
    r = run_dcb("prune", "--dry-run", "--config", cfg_path(store))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    b_row = next(i for i, x in enumerate(lines) if x.startswith(store.ids["B"]))
    assert lines[b_row].split()[-1] == "keep"
    assert lines[b_row + 1].strip() == "volume functions_data: last 1, newest copy"
    assert next(x for x in lines if x.startswith(store.ids["A"])).split()[-1] == "REMOVE"
    assert "1 of 3 sets would be removed (dry run)" in r.out
    # Without a terminal to ask on, only --yes removes.
    for args in ((), ("--json",)):
        r = run_dcb("prune", *args, "--config", cfg_path(store))
        assert r.code == 2, r.out + r.err
        assert r.err.startswith("dcb: ") and "Traceback" not in r.err
    assert store.present() == {"A", "B", "C"}
    r = run_dcb("prune", "--yes", "--json", "--config", cfg_path(store))
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert letters(store, data["removed"]) == ["A"]
    b = next(s for s in data["sets"] if s["id"] == store.ids["B"])
    assert b["kept_by"] == [{"kind": "volume", "name": "functions_data",
                             "item": "volume functions_data",
                             "rules": ["last 1", "newest copy"]}]
    assert store.present() == {"B", "C"}


class Terminal:
    """``dcb`` on a pseudo-terminal, read until a pattern shows, as a user would see it."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        exe = BIN / "dcb"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dcb"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
        self.proc = subprocess.Popen([*cmd, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=env, close_fds=True)
        os.close(slave)
        self.fd = master
        self.seen = ""

    def expect(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.seen):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not shown; the terminal shows:\n{self.seen}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the program ended
                    chunk = b""
                if not chunk:
                    time.sleep(0.05)
                self.seen += chunk.decode(errors="replace").replace("\r\n", "\n")
        return self.seen

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> int:
        try:
            code = self.proc.wait(timeout=30)
        finally:
            os.close(self.fd)
        return code


def test_cli_on_a_terminal_shows_the_new_plan_when_the_store_changed(store: Store) -> None:
    term = Terminal("prune", "--config", cfg_path(store))
    try:
        term.expect(r"Remove these 1 sets .* Type yes")
        store.drop("B")
        term.send("yes\n")
        out = term.expect(r"nothing to remove")
    finally:
        code = term.close()
    assert code == 0
    assert "the backup store changed since the preview" in out
    after = out.split("The new plan:")[1]
    assert "volume functions_data: last 1, newest copy" in after  # now kept by A
    assert store.present() == {"A", "C"}


def test_cli_on_a_terminal_removes_what_it_showed_despite_a_new_backup(store: Store) -> None:
    term = Terminal("prune", "--config", cfg_path(store))
    try:
        term.expect(r"Type yes")
        store.add("D", 0.5)
        term.send("yes\n")
        out = term.expect(r"removed \d+ sets")
    finally:
        code = term.close()
    assert code == 0
    assert "removed 1 sets" in out and "2 more can go" in out
    assert store.present() == {"B", "C", "D"}


@pytest.mark.parametrize("answer", ["y\n", "\x04"], ids=["y", "ctrl-d"])
def test_cli_on_a_terminal_cancels_on_anything_but_yes(store: Store, answer: str) -> None:
    term = Terminal("prune", "--config", cfg_path(store))
    try:
        term.expect(r"Type yes")
        term.send(answer)
        out = term.expect(r"cancelled")
    finally:
        code = term.close()
    assert code == 1 and "nothing was removed" in out and "Traceback" not in out
    assert store.present() == {"A", "B", "C"}


# --- the console -----------------------------------------------------------------------------


async def until(pilot: Any, predicate: Callable[[], bool], what: str,
                timeout: float = 15.0) -> None:
    waited = 0.0
    while not predicate():
        await pilot.pause(0.02)
        waited += 0.02
        if waited > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")


def decision_cell(screen: PruneScreen, set_id: str) -> str:
    return Text.from_markup(str(screen.query_one(DataTable).get_row(set_id)[4])).plain


async def open_prune(pilot: Any) -> PruneScreen:
    await pilot.press("p")
    await until(pilot, lambda: isinstance(pilot.app.screen, PruneScreen)
                and pilot.app.screen.plan is not None, "prune plan shown")
    screen = pilot.app.screen
    assert isinstance(screen, PruneScreen)
    return screen


async def confirm(pilot: Any) -> None:
    await pilot.press("x")
    await until(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen), "confirmation")
    await pilot.click("#yes")


async def test_console_removes_exactly_what_it_showed(store: Store) -> None:
    app = DcbApp(store.cfg, FixedSources(store.cfg))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_prune(pilot)
        assert decision_cell(screen, store.ids["B"]) == (
            "keep: volume functions_data: last 1, newest copy")
        assert decision_cell(screen, store.ids["A"]) == "remove"
        store.add("D", 0.5)
        await confirm(pilot)
        await until(pilot, lambda: not isinstance(app.screen, PruneScreen | ConfirmScreen),
                    "back on the dashboard")
    assert store.present() == {"B", "C", "D"}


async def test_console_shows_the_new_plan_when_the_store_changed(store: Store) -> None:
    app = DcbApp(store.cfg, FixedSources(store.cfg))
    async with app.run_test(size=(160, 48)) as pilot:
        screen = await open_prune(pilot)
        first = screen.plan
        store.drop("B")
        await confirm(pilot)
        await until(pilot, lambda: screen.plan is not first and not screen.busy, "new plan")
        assert app.screen is screen
        summary = str(screen.query_one("#summary", Static).render())
        assert "changed since the preview" in summary and "Nothing was removed" in summary
        assert decision_cell(screen, store.ids["A"]) == (
            "keep: volume functions_data: last 1, newest copy")
        assert screen.check_action("prune", ()) is None  # nothing left to remove
    assert store.present() == {"A", "C"}
