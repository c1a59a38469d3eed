"""A backup in progress lists as running (who holds the lock, since when, bytes so far), not as
"incomplete 0 Bytes"; a killed run's set stays incomplete; the console's ages move on.

No Docker: the run is imitated exactly as a backup leaves the store mid-way (the store's lock
held with its holder record, a set directory with a finished artifact and a hidden temporary
one), which is all the listing reads.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

import dcb.tui.screens.dashboard as dashboard
import dcb.tui.screens.tasks as tasks
from dcb.services import formatting as fmt
from dcb.services.config import Config, load_config
from dcb.services.lock import StoreLock
from dcb.services.overview import store_overview
from dcb.services.store import LOCKFILE, MANIFEST
from dcb.tui.app import DcbApp
from dcb.widgets.backups_table import BackupsTable
from tests.conftest import run_dcb
from tests.snapshot_fixtures import FixedSources


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Config]:
    (tmp_path / "dcb.toml").write_text('[storage]\nbackup_dir = "backups"\n')
    root = tmp_path / "backups"
    root.mkdir()
    return root, load_config(str(tmp_path / "dcb.toml"), environ={})


def _set_in_progress(root: Path, age: timedelta = timedelta(0)) -> str:
    set_id = (datetime.now(UTC) - age).strftime("%Y%m%dT%H%M%SZ")
    d = root / set_id
    d.mkdir()
    (d / "globals.sql.zst").write_bytes(b"g" * 700)
    (d / ".db-dart_cloud.pgdump.tmp").write_bytes(b"d" * 5000)
    return set_id


@pytest.fixture
def running(store: tuple[Path, Config]) -> Iterator[tuple[Path, Config, str]]:
    root, cfg = store
    with StoreLock(root, "dcb backup"):
        yield root, cfg, _set_in_progress(root)


def test_list_shows_the_running_backup_and_who_runs_it(running: tuple[Path, Config, str]):
    _root, cfg, set_id = running
    r = run_dcb("list", "--config", str(cfg.path))
    assert r.code == 0, r.err
    line = next(x for x in r.out.splitlines() if x.startswith(set_id))
    assert "running" in line and "incomplete" not in line
    assert f"dcb backup, pid {os.getpid()} on {socket.gethostname()}" in line
    assert "writing db-dart_cloud.pgdump" in line and "started" in line
    assert "5.6 KiB" in line  # 700 + 5000 bytes on disk so far
    r = run_dcb("list", "--json", "--config", str(cfg.path))
    (entry,) = json.loads(r.out)
    assert entry["status"] == "running" and entry["size_bytes"] == 5700
    assert entry["running"]["pid"] == os.getpid()
    assert entry["running"]["purpose"] == "dcb backup"
    assert entry["running"]["done"] == ["globals.sql.zst"]


def test_a_killed_runs_set_is_incomplete(store: tuple[Path, Config]):
    root, cfg = store
    set_id = _set_in_progress(root, age=timedelta(minutes=1))
    # What a run killed with -9 leaves: its holder record, but no lock (the kernel freed it).
    (root / LOCKFILE).write_text(json.dumps({
        "pid": 999_999, "host": socket.gethostname(), "purpose": "dcb backup",
        "since": (datetime.now(UTC) - timedelta(minutes=2)).isoformat(timespec="seconds")}))
    r = run_dcb("list", "--config", str(cfg.path))
    line = next(x for x in r.out.splitlines() if x.startswith(set_id))
    assert "incomplete" in line and "running" not in line
    # An older interrupted set stays incomplete while a newer run holds the lock.
    with StoreLock(root, "dcb backup"):
        r = run_dcb("list", "--json", "--config", str(cfg.path))
    (entry,) = json.loads(r.out)
    assert entry["id"] == set_id and entry["status"] == "incomplete"


async def test_console_shows_running_and_ages_move_on(running: tuple[Path, Config, str],
                                                      monkeypatch: Any):
    _root, cfg, set_id = running
    start = datetime.now(UTC)
    fmt.pin_now(start)
    monkeypatch.setattr(dashboard, "AGE_REFRESH_SECONDS", 0.1)
    try:
        app = DcbApp(cfg, FixedSources(cfg, overview=store_overview(cfg)))
        async with app.run_test(size=(160, 40)) as pilot:
            table = app.screen.query_one(BackupsTable)
            for _ in range(500):
                if table.row_count:
                    break
                await pilot.pause(0.02)
            status = str(table.get_cell(set_id, "status"))
            assert "running" in status and f"pid {os.getpid()}" in status
            assert "KiB" in str(table.get_cell(set_id, "size"))
            assert str(table.get_cell(set_id, "age")) in ("now", "a second ago")
            fmt.pin_now(start + timedelta(hours=3))  # the console stays open for 3 hours
            for _ in range(200):
                if str(table.get_cell(set_id, "age")) == "3 hours ago":
                    break
                await pilot.pause(0.05)
            assert str(table.get_cell(set_id, "age")) == "3 hours ago"
    finally:
        fmt.pin_now(None)


async def test_a_running_sets_details_show_its_progress_and_offer_no_restore(
        running: tuple[Path, Config, str], monkeypatch: Any):
    root, cfg, set_id = running
    monkeypatch.setattr(tasks, "RUNNING_POLL_SECONDS", 0.05)
    app = DcbApp(cfg, FixedSources(cfg, overview=store_overview(cfg)))
    async with app.run_test(size=(160, 40)) as pilot:
        table = app.screen.query_one(BackupsTable)
        for _ in range(500):
            if table.row_count:
                break
            await pilot.pause(0.02)
        assert table.selected_id() == set_id
        # Restore and verify of a set still being written are not offered.
        assert app.screen.check_action("restore", ()) is None
        assert app.screen.check_action("verify", (False,)) is None
        await pilot.press("r", "v")
        await pilot.pause(0.2)
        assert isinstance(app.screen, dashboard.DashboardScreen)
        await pilot.press("enter")
        for _ in range(100):
            if isinstance(app.screen, tasks.SetDetailScreen):
                break
            await pilot.pause(0.02)
        detail = app.screen
        assert isinstance(detail, tasks.SetDetailScreen)

        def head() -> str:
            return str(detail.query_one("#set-head", Static).render())

        text = head()
        assert f"running: dcb backup, pid {os.getpid()}" in text, text
        assert "since " in text and "1 artifact(s) done, writing db-dart_cloud.pgdump" in text
        assert "5.6 KiB written so far" in text, text
        # The dump grows: the detail follows it.
        with (root / set_id / ".db-dart_cloud.pgdump.tmp").open("ab") as f:
            f.write(b"d" * 3 * 1024 * 1024)
        for _ in range(200):
            if "3.0 MiB written so far" in head():
                break
            await pilot.pause(0.05)
        assert "3.0 MiB written so far" in head(), head()
        # The run ends (here: it records a failure): the detail shows the set as it is now.
        (root / set_id / MANIFEST).write_text(json.dumps(
            {"id": set_id, "status": "failed", "created_at": datetime.now(UTC).isoformat(),
             "artifacts": [], "error": "pg_dump was killed"}))
        for _ in range(200):
            if "running" not in head():
                break
            await pilot.pause(0.05)
        text = head()
        assert "failed" in text and "pg_dump was killed" in text and "running" not in text
