"""The console's replication side: the destinations pane, the Replicated column, ``R``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from dcb.services import formatting as fmt
from dcb.services.config import load_config
from dcb.services.overview import SetRow
from dcb.services.replicate import DestinationState
from dcb.tui.app import DcbApp
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.tasks import ReplicateScreen
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.destinations_pane import DestinationsPane
from tests.replkit import SECRET_KEY, make_set, moto_server, s3_env, set_ids
from tests.snapshot_fixtures import FIXED_NOW, FixedSources, make_overview, make_sets
from tests.test_snapshots import SnapCompare, dashboard_ready, until
from tests.test_snapshots import cfg as cfg

REPLICATED = ["1/2", "2/2", "2/2", "-", "2/2", "-", "2/2", "2/2"]


def test_dashboard_with_destinations(snap_compare: SnapCompare, cfg: Any) -> None:
    """Two destinations: one up to date, one failing for 30 hours (red: past the RPO)."""
    fmt.pin_now(FIXED_NOW)
    try:
        ov = make_overview()
        rows = tuple(SetRow(r.set, r.verified, REPLICATED[i % len(REPLICATED)]
                            if r.set.status == "complete" else "-")
                     for i, r in enumerate(ov.rows))
        newest = make_sets()[0].id
        older = make_sets()[1].id
        dests = (
            DestinationState("nas", "local", "/mnt/nas/dcb", newest, None, 0.0, 0),
            DestinationState("offsite", "s3", "s3://dcb-offsite/host-a/", older, None,
                             30 * 3600.0, 1, "destination offsite (s3): uploading: cannot "
                             "reach https://s3.example.net (after 5 attempts)"),
        )
        overview = dataclasses.replace(ov, rows=rows, destinations=dests)
        app = DcbApp(cfg, FixedSources(cfg, overview=overview))
        assert snap_compare(app, terminal_size=(160, 48), run_before=dashboard_ready)
    finally:
        fmt.pin_now(None)


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/dcb-test.sock")


async def test_r_replicates_the_selected_set(tmp_path: Path, no_docker: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ids = set_ids(2)
    for i in ids:
        make_set(tmp_path / "backups", i)
    with moto_server() as url:
        for k, v in s3_env(url).items():
            monkeypatch.setenv(k, v)
        (tmp_path / "dcb.toml").write_text(
            f'[storage]\nbackup_dir = "{tmp_path / "backups"}"\n'
            f'[replication.nas]\ntype = "local"\npath = "{tmp_path / "nas"}"\n'
            f'[replication.offsite]\ntype = "s3"\nbucket = "missing-bucket"\n'
            f'endpoint_url = "{url}"\nretries = 1\n')
        cfg = load_config(str(tmp_path / "dcb.toml"), environ={})
        app = DcbApp(cfg)
        async with app.run_test(size=(160, 48)) as pilot:
            await _drive(pilot, ids, tmp_path)


async def _drive(pilot: Pilot[Any], ids: list[str], tmp_path: Path) -> None:
    app = pilot.app
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen)
                and app.screen.overview is not None, "dashboard")
    dash = app.screen
    table = dash.query_one(BackupsTable)
    await until(pilot, lambda: table.row_count == 2, "sets listed")
    assert [table.get_cell(i, "replicated") for i in ids] == ["0/2", "0/2"]
    pane = dash.query_one(DestinationsPane)
    assert pane.display and pane.row_count == 2
    table.focus()
    table.move_cursor(row=0)  # the newest set
    await pilot.press("R")
    await until(pilot, lambda: isinstance(app.screen, ReplicateScreen)
                and not app.screen.running, "replication finished", timeout=60)
    text = str(app.screen.query_one("#task-result").render())
    assert "nas: copied and verified" in text
    assert "offsite" in text and "does not exist" in text
    assert (tmp_path / "nas" / ids[-1] / "manifest.json").exists()
    assert not (tmp_path / "nas" / ids[0]).exists()
    await pilot.press("escape")
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen), "back")
    await until(pilot, lambda: table.get_cell(ids[-1], "replicated") == "1/2",
                "Replicated column updated")
    await until(pilot, lambda: "does not exist" in str(pane.get_cell("offsite", "error")),
                "last error shown")
    # Lag counts from the newest copy: the older set never sent does not make it stale.
    assert "up to date" in str(pane.get_cell("nas", "lag"))
    # The S3 secret is nowhere on screen.
    assert SECRET_KEY not in app.export_screenshot()
