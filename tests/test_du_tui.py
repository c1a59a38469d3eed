"""The disk-usage screen driven as a user would: the directory browser (scan, sorted rows,
drill in and out), and the Docker view (ranked items, kind filter, details, cleanup through the
preview and its typed confirmation) on fixed data and on the real engine."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from textual.app import App
from textual.pilot import Pilot

from dcb.services.config import Config, load_config
from dcb.services.du import DuNode, ScanProgress
from dcb.tui.app import DcbApp
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.docker_du import CleanupScreen, DockerItemScreen
from dcb.tui.screens.du import DuScreen
from dcb.widgets.docker_usage import DockerUsageView
from dcb.widgets.du_browser import DuBrowser, DuListing
from tests.dockerjunk import Junk
from tests.snapshot_fixtures import FixedSources, write_config


class DuApp(App[None]):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_mount(self) -> None:
        self.push_screen(DuScreen(self.path))


async def _wait_for(pilot: Pilot[Any], predicate: Callable[[], bool],
                    timeout: float = 20.0) -> None:
    waited = 0.0
    while not predicate():
        await pilot.pause(0.05)
        waited += 0.05
        if waited > timeout:
            raise AssertionError("condition not met in time")


def _write(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(n))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _write(root / "big" / "a.bin", 300_000)
    _write(root / "big" / "b.bin", 20_000)
    _write(root / "big" / "inner" / "c.bin", 60_000)
    _write(root / "mid" / "d.bin", 100_000)
    _write(root / "note.txt", 5_000)
    (root / "empty").mkdir()
    with open(root / "sparse.img", "wb") as f:  # 50 MB apparent, nothing on disk
        f.truncate(50_000_000)
    return root


def _names(listing: DuListing) -> list[str]:
    return [str(listing.get_row_at(i)[4]).split("  ")[0] for i in range(listing.row_count)]


async def _scanned(pilot: Pilot[None]) -> tuple[DuScreen, DuListing]:
    app = pilot.app
    await _wait_for(pilot, lambda: isinstance(app.screen, DuScreen) and not app.screen.scanning)
    screen = app.screen
    assert isinstance(screen, DuScreen)
    return screen, screen.query_one(DuListing)


async def test_rows_sorted_by_size_drill_in_and_out(tree: Path):
    app = DuApp(tree)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, listing = await _scanned(pilot)
        assert _names(listing) == ["big/", "mid/", "note.txt", "empty/", "sparse.img"]
        sizes = [e.size_bytes for e in listing.entries]
        assert sizes == sorted(sizes, reverse=True)
        assert screen.query_one("#du-browser", DuBrowser).error is None
        state = str(screen.query_one("#du-state").render())
        assert "6 files, 4 dirs" in state and "scanned in" in state
        assert str(tree) in str(screen.query_one("#du-path").render())

        assert listing.cursor_row == 0
        await pilot.press("enter")
        assert listing.current is not None and listing.current.name == "big"
        assert _names(listing) == ["a.bin", "inner/", "b.bin"]
        assert str(tree / "big") in str(screen.query_one("#du-path").render())

        await pilot.press("down", "right")  # into inner/
        assert _names(listing) == ["c.bin"]
        await pilot.press("enter")  # a file: nothing happens
        assert _names(listing) == ["c.bin"]

        await pilot.press("left")
        assert _names(listing) == ["a.bin", "inner/", "b.bin"]
        assert listing.cursor_row == 1  # back on the directory we came from
        await pilot.press("backspace")
        assert listing.current is not None and listing.current.path == str(tree)
        assert _names(listing)[0] == "big/" and listing.cursor_row == 0
        await pilot.press("backspace")  # at the top: nothing happens
        assert listing.current.path == str(tree)

        await pilot.press("escape")
        await _wait_for(pilot, lambda: not isinstance(app.screen, DuScreen))


async def test_apparent_size_toggle_resorts(tree: Path):
    app = DuApp(tree)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, listing = await _scanned(pilot)
        assert _names(listing)[-1] == "sparse.img"
        await pilot.press("a")
        assert _names(listing)[0] == "sparse.img"
        assert "apparent" in str(screen.query_one("#du-path").render())
        await pilot.press("a")
        assert _names(listing)[0] == "big/"

        _write(tree / "huge.bin", 2_000_000)
        await pilot.press("r")  # rescan: a new tree, shown from its top
        await _wait_for(pilot, lambda: not screen.scanning
                        and _names(listing)[:1] == ["huge.bin"])
        assert listing.current is not None and listing.current.file_count == 7
        await pilot.press("q")
        await _wait_for(pilot, lambda: not isinstance(app.screen, DuScreen))


async def test_missing_directory_shows_the_error(tmp_path: Path):
    app = DuApp(tmp_path / "gone")
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait_for(pilot, lambda: isinstance(app.screen, DuScreen)
                        and app.screen.browser.error is not None)
        state = app.screen.query_one("#du-state")
        assert "no such directory" in str(state.render())
        assert state.has_class("error")
        assert app.is_running


async def test_listing_fills_in_progressively_and_keeps_the_cursor(tmp_path: Path):
    """Partial trees as a scan reports them: rows re-sort, the cursor stays on its entry."""
    (tmp_path / "empty").mkdir()
    app = DuApp(tmp_path / "empty")
    async with app.run_test(size=(80, 24)) as pilot:
        screen, listing = await _scanned(pilot)
        browser = screen.browser
        root = DuNode("r", "/r", True, size_bytes=4096)
        a = DuNode("a", "/r/a", True, size_bytes=4096)
        root.children.append(a)
        root.size_bytes += a.size_bytes

        def progress(done: bool = False) -> ScanProgress:
            return ScanProgress(root, "/r", root.file_count, root.dir_count, root.size_bytes,
                                root.apparent_bytes, 0, 0.1, done)

        browser.show_progress(progress())
        await pilot.pause()
        assert _names(listing) == ["a/"]
        assert "scanning" in str(screen.query_one("#du-state").render())

        b = DuNode("b", "/r/b", False, size_bytes=8192, file_count=1)
        root.children.append(b)
        root.size_bytes += b.size_bytes
        root.file_count += 1
        browser.show_progress(progress())
        await pilot.pause()
        assert _names(listing) == ["b", "a/"]
        assert listing.selected is b  # the cursor stays on the top row, the largest

        await pilot.press("down")
        assert listing.selected is a
        a.size_bytes += 100_000  # a grows past b while the scan goes on
        root.size_bytes += 100_000
        browser.show_progress(progress(done=True))
        await pilot.pause()
        assert _names(listing) == ["a/", "b"]
        assert listing.selected is a  # off the top row, the cursor follows its entry
        assert "scanned in" in str(screen.query_one("#du-state").render())


# -- the Docker view --------------------------------------------------------------------------
def _docker_screen(app: App[Any]) -> DuScreen:
    screen = app.screen
    assert isinstance(screen, DuScreen)
    return screen


async def _docker_loaded(pilot: Pilot[Any]) -> tuple[DuScreen, DockerUsageView]:
    app = pilot.app
    await _wait_for(pilot, lambda: isinstance(app.screen, DuScreen)
                    and bool(app.screen.query(DockerUsageView))
                    and app.screen.query_one(DockerUsageView).loaded
                    and not app.screen.docker_loading, timeout=120)
    screen = _docker_screen(app)
    return screen, screen.query_one(DockerUsageView)


def _select(view: DockerUsageView, label: str) -> None:
    """Put the cursor on the item (what the arrow keys do, without pressing 900 of them)."""
    labels = [i.label for i in view.table.items]
    view.table.cursor_row = labels.index(label)


class FixedDockerApp(App[None]):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def on_mount(self) -> None:
        self.push_screen(DuScreen(self.cfg.backup_dir, FixedSources(self.cfg), docker=True))


async def test_docker_view_ranks_filters_and_explains(tmp_path: Path):
    """Fixed engine answers: the list, the kind filter, tabs, details, refusals."""
    cfg = write_config(tmp_path, backup_dir=tmp_path / "backups")
    app = FixedDockerApp(cfg)
    async with app.run_test(size=(100, 30)) as pilot:
        screen, view = await _docker_loaded(pilot)
        items = view.table.items
        assert len(items) == 21
        assert [i.size_bytes or 0 for i in items] == sorted(
            (i.size_bytes or 0 for i in items), reverse=True)
        assert items[0].label == "log dart-cloud-backend"
        assert "Container logs" in str(view.query_one("#docker-summary").render())

        await pilot.press("k")  # images only
        assert view.kind == "image" and {i.kind for i in view.table.items} == {"image"}
        assert "images (k: kind)" in str(view.query_one("#docker-state").render())
        for _ in range(5):
            await pilot.press("k")
        assert view.kind is None and len(view.table.items) == 21

        _select(view, "volume postgres_data")
        await pilot.press("enter")
        await _wait_for(pilot, lambda: isinstance(app.screen, DockerItemScreen))
        facts = app.screen.text  # type: ignore[attr-defined]
        assert "backed up by dcb: archived by dcb backup" in facts
        assert "used by: dart-cloud-postgres" in facts
        assert "never: dcb does not delete volumes" in facts
        await pilot.press("escape")
        await _wait_for(pilot, lambda: app.screen is screen)

        await pilot.press("x")  # a volume: refused, with the reason
        await pilot.pause()
        assert app.screen is screen
        assert any("never" in n.message for n in app._notifications)

        # A refused cleanup (the fixed sources refuse every one): the preview says why and,
        # closed, the view asks Docker again.
        _select(view, "container old-migrate")
        await pilot.press("x")
        await _wait_for(pilot, lambda: isinstance(app.screen, CleanupScreen))
        preview = app.screen
        assert isinstance(preview, CleanupScreen)
        assert preview.listed == ["container old-migrate"]
        loads = screen.docker_generation
        await pilot.press(*"remove 1", "enter")
        await _wait_for(pilot, lambda: preview.error is not None)
        assert "nothing is removed" in str(preview.query_one("#cleanup-result").render())
        await pilot.press("escape")
        await _wait_for(pilot, lambda: app.screen is screen and not screen.docker_loading)
        assert screen.docker_generation == loads + 1

        await pilot.press("D")  # the directories tab, scanned when first shown
        await _wait_for(pilot, lambda: screen.tab == "tab-dirs" and bool(
            screen.query(DuBrowser)) and not screen.scanning)
        await pilot.press("k")  # a Docker key: not active on this tab
        assert view.kind is None
        await pilot.press("D")
        assert screen.tab == "tab-docker" and view.table.has_focus


async def test_docker_view_on_the_real_engine(docker_junk: Junk, tmp_path: Path):
    """D on the dashboard: the hogs ranked, details, and cleanup through the preview."""
    j = docker_junk
    cfg = load_config(str(j.write_config(tmp_path)), environ={})
    app = DcbApp(cfg)
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await pilot.press("D")
        screen, view = await _docker_loaded(pilot)
        labels = [i.label for i in view.table.items]
        hogs = [f"log {j.chatty}", f"container {j.stopped[0]}", f"volume {j.unused_volume}"]
        assert [labels.index(h) for h in hogs] == sorted(labels.index(h) for h in hogs)

        # Enter: the log's details.
        _select(view, f"log {j.chatty}")
        await pilot.press("enter")
        await _wait_for(pilot, lambda: isinstance(app.screen, DockerItemScreen))
        facts = app.screen.text  # type: ignore[attr-defined]
        assert f"path: {j.log_path(j.chatty)}" in facts and "driver: json-file" in facts
        await pilot.press("escape")
        await _wait_for(pilot, lambda: app.screen is screen)

        # c: the preview of every stopped container never lists the stack's.
        await pilot.press("c")
        await _wait_for(pilot, lambda: isinstance(app.screen, CleanupScreen))
        preview = app.screen
        assert isinstance(preview, CleanupScreen)
        listed = preview.listed
        assert f"container {j.stopped[1]}" in listed
        for part in (j.stack_worker, j.mounter, j.stack.postgres_container,
                     j.stack.backend_container):
            assert f"container {part}" not in listed
        kept = dict(preview.plan.not_offered)
        for part in (j.stack_worker, j.mounter):
            assert "the configured stack needs it" in kept[f"container {part}"]
        await pilot.press("escape")  # (other sessions' containers may be in it: not run)
        await _wait_for(pilot, lambda: app.screen is screen)

        # x on one stopped container: the preview lists it alone; typing the token removes it.
        await _remove_selected(pilot, view, f"container {j.stopped[1]}")
        with pytest.raises(docker.errors.NotFound):
            j.client.containers.get(j.stopped[1])
        # ... and one dangling image, the same way.
        image = next(i for i in view.table.items if i.key == j.dangling[3])
        await _remove_selected(pilot, view, image.label)
        with pytest.raises(docker.errors.NotFound):
            j.client.images.get(j.dangling[3])

        # t on a running container's log: truncated, the container keeps running and logging.
        before = j.client.api.inspect_container(j.chatty2)["State"]
        path = j.log_path(j.chatty2)
        assert os.stat(path).st_size > 2_000_000
        _select(view, f"log {j.chatty2}")
        await pilot.press("t")
        await _wait_for(pilot, lambda: isinstance(app.screen, CleanupScreen))
        preview = app.screen
        assert isinstance(preview, CleanupScreen)
        assert preview.listed == [f"log {j.chatty2}"]
        await pilot.press(*j.chatty2, "enter")
        await _wait_for(pilot, lambda: preview.result is not None or preview.error is not None)
        assert preview.error is None and preview.result is not None and preview.result.ok
        after = j.client.api.inspect_container(j.chatty2)["State"]
        assert after["Running"] and after["StartedAt"] == before["StartedAt"]
        assert os.stat(path).st_size < 100_000
        await _wait_for_ticks(path)
        await pilot.press("escape")
        await _wait_for(pilot, lambda: app.screen is screen and not screen.docker_loading)


async def _remove_selected(pilot: Pilot[Any], view: DockerUsageView, label: str) -> None:
    app = pilot.app
    _select(view, label)
    await pilot.press("x")
    await _wait_for(pilot, lambda: isinstance(app.screen, CleanupScreen))
    preview = app.screen
    assert isinstance(preview, CleanupScreen)
    assert preview.listed == [label]
    go = preview.query_one("#cleanup-go")
    await pilot.press(*"remove 2")  # a wrong count: the button stays disabled
    assert go.disabled
    await pilot.press("backspace", "1")
    assert not go.disabled
    await pilot.press("enter")
    await _wait_for(pilot, lambda: preview.result is not None or preview.error is not None)
    assert preview.error is None and preview.result is not None
    assert [i.label for i in preview.result.done] == [label]
    await pilot.press("escape")  # Close: the view reloads
    await _wait_for(pilot, lambda: not isinstance(app.screen, CleanupScreen)
                    and not _docker_screen(app).docker_loading)
    assert label not in [i.label for i in view.table.items]


async def _wait_for_ticks(path: str, timeout: float = 10.0) -> None:
    """Docker goes on appending to the truncated file: whole JSON lines from offset 0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        if lines:
            first = json.loads(lines[0])
            assert first["stream"] == "stdout" and first["log"] == "tick\n"
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path}: nothing logged after the truncation")
