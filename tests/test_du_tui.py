"""The disk-usage browser driven as a user would: scan, sorted rows, drill in and out."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.app import App
from textual.pilot import Pilot

from dcb.services.du import DuNode, ScanProgress
from dcb.tui.screens.du import DuScreen
from dcb.widgets.du_browser import DuBrowser, DuListing


class DuApp(App[None]):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def on_mount(self) -> None:
        self.push_screen(DuScreen(self.path))


async def _wait_for(pilot: Pilot[None], predicate: Callable[[], bool],
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
