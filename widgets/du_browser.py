"""An ncdu-like browser over a ``services.du`` tree: one directory's entries, largest first.

``DuListing`` is the table (and owns the navigation: which directory is shown, drilling in and
out); ``DuBrowser`` frames it with a path line above and a totals/scan-state line below. The
tree may still be growing in a scan thread: call ``DuBrowser.show_progress`` with each
``ScanProgress`` and the listing is refreshed in place, keeping the cursor on its entry.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from dcb.services import formatting as fmt
from dcb.services.du import DuNode, ScanProgress, bar, display_name, percent, sorted_children
from dcb.services.errors import DcbError

BAR_WIDTH = 10


class DuListing(DataTable[Text]):
    """The entries of one directory of the tree, largest first."""

    BINDINGS = [
        Binding("enter", "open", "Open dir", id="du.open"),
        Binding("right", "open", "Open dir", show=False),
        Binding("backspace", "up", "Parent", id="du.up"),
        Binding("left", "up", "Parent", show=False),
        Binding("a", "toggle_apparent", "Apparent/disk", id="du.apparent"),
    ]

    class Navigated(Message):
        """The directory shown changed, or its numbers did."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.root: DuNode | None = None
        self.trail: list[DuNode] = []
        """The directories from the root down to the one shown."""
        self.apparent = False
        """Show and sort by apparent size instead of disk usage."""
        self._entries: list[DuNode] = []
        self._shown: tuple[int, ...] | None = None

    def on_mount(self) -> None:
        self.add_column(Text("Size", justify="right"), width=10, key="size")
        self.add_column("", width=BAR_WIDTH, key="bar")
        self.add_column(Text("%", justify="right"), width=6, key="pct")
        self.add_column(Text("Files", justify="right"), width=9, key="files")
        self.add_column("Name", key="name")

    @property
    def current(self) -> DuNode | None:
        """The directory shown."""
        return self.trail[-1] if self.trail else None

    @property
    def selected(self) -> DuNode | None:
        """The entry under the cursor."""
        if not self._entries or not 0 <= self.cursor_row < len(self._entries):
            return None
        return self._entries[self.cursor_row]

    @property
    def entries(self) -> list[DuNode]:
        """The entries as listed, top to bottom."""
        return list(self._entries)

    def set_root(self, root: DuNode) -> None:
        """Show ``root`` (a new tree: navigation starts again at its top)."""
        if root is not self.root:
            self.root = root
            self.trail = [root]
            self._shown = None
        self.refresh_listing()

    def refresh_listing(self, force: bool = False) -> None:
        """Re-read the directory shown (cheap when nothing in it changed)."""
        node = self.current
        if node is None:
            return
        signature = (id(node), len(node.children), node.size(self.apparent), node.file_count,
                     node.dir_count, node.error_count, self.apparent)
        if signature == self._shown and not force:
            return
        self._shown = signature
        # The cursor follows its entry as rows re-sort, unless it is on the top row (the
        # largest entry), where it stays: a scan filling in does not drag it around.
        keep = self.selected if self.cursor_row > 0 else None
        self._entries = sorted_children(node, self.apparent)
        largest = max((c.size(self.apparent) for c in self._entries), default=0)
        total = node.size(self.apparent)
        self.clear()
        for i, c in enumerate(self._entries):
            self.add_row(*self._cells(c, largest, total), key=str(i))
        if keep is not None and keep in self._entries:
            self.move_cursor(row=self._entries.index(keep), animate=False)
        self.post_message(self.Navigated())

    def _cells(self, c: DuNode, largest: int, total: int) -> list[Text]:
        size = c.size(self.apparent)
        name = Text(display_name(c), style="bold" if c.is_dir else "")
        if c.error:
            name.append(f"  ! {c.error}", style="red")
        elif c.error_count:
            name.append(f"  ! {c.error_count} unreadable below", style="yellow")
        elif c.excluded:
            name.append(f"  ({c.excluded})", style="dim")
        elif c.duplicate_link:
            name.append("  (hard link, counted elsewhere)", style="dim")
        return [
            Text(fmt.size(size), justify="right"),
            Text(bar(size / largest if largest else 0, BAR_WIDTH), style="green"),
            Text(percent(size, total), justify="right"),
            Text(f"{c.file_count:,}" if c.is_dir else "", justify="right"),
            name,
        ]

    def open(self, node: DuNode) -> bool:
        """Show directory ``node`` (a child of the one shown); False if it is not one."""
        if not node.is_dir or node.excluded or self.current is None:
            return False
        self.trail.append(node)
        self._shown = None
        self.refresh_listing()
        self.move_cursor(row=0, animate=False)
        self.refresh_bindings()
        return True

    def up(self) -> bool:
        """Show the parent directory, the cursor on the one we came from; False at the top."""
        if len(self.trail) < 2:
            return False
        came_from = self.trail.pop()
        self._shown = None
        self.refresh_listing()
        if came_from in self._entries:
            self.move_cursor(row=self._entries.index(came_from), animate=False)
        self.refresh_bindings()
        return True

    def action_open(self) -> None:
        node = self.selected
        if node is None or not self.open(node):
            self.app.bell()

    def action_up(self) -> None:
        if not self.up():
            self.app.bell()

    def action_toggle_apparent(self) -> None:
        self.apparent = not self.apparent
        self.refresh_listing(force=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "up":
            return True if len(self.trail) > 1 else None
        if action == "open":
            node = self.selected
            return True if node is not None and node.is_dir and not node.excluded else None
        return True

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(DataTable.RowSelected)
    def _clicked(self, event: DataTable.RowSelected) -> None:
        # A click on the highlighted row (the enter key is bound to ``open`` directly).
        event.stop()
        self.action_open()


class DuBrowser(Vertical):
    """Path line, ``DuListing``, and a line with the totals and the scan's state."""

    DEFAULT_CSS = """
    DuBrowser { height: 1fr; }
    DuBrowser > #du-path { height: 1; padding: 0 1; background: $boost; text-style: bold; }
    DuBrowser > DuListing { height: 1fr; }
    DuBrowser > #du-state { height: 1; padding: 0 1; background: $boost; }
    DuBrowser > #du-state.error { color: $error; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.progress: ScanProgress | None = None
        self.scan_state = "starting scan..."
        self.error: DcbError | None = None

    def compose(self) -> ComposeResult:
        yield Static("", id="du-path", markup=False)
        yield DuListing(id="du-listing")
        yield Static(self.scan_state, id="du-state", markup=False)

    @property
    def listing(self) -> DuListing:
        return self.query_one(DuListing)

    @property
    def done(self) -> bool:
        """The scan finished (successfully or not)."""
        return self.error is not None or (self.progress is not None and self.progress.done)

    def show_progress(self, p: ScanProgress) -> None:
        """A scan's progress (or its end, ``p.done``): refresh the listing and the lines."""
        self.progress = p
        self.error = None
        if p.done:
            self.scan_state = f"scanned in {fmt.duration(p.elapsed)}"
        else:
            self.scan_state = (f"scanning... {p.files:,} files, {p.dirs:,} dirs, "
                               f"{fmt.size(p.size_bytes)}")
        self.listing.set_root(p.root)
        self._update_lines()

    def show_error(self, error: DcbError) -> None:
        """The scan could not start or failed."""
        self.error = error
        self.scan_state = error.message + (f" ({error.hint})" if error.hint else "")
        self._update_lines()

    def restart(self) -> None:
        """A new scan is starting: keep showing the old tree until it reports."""
        self.progress = None
        self.error = None
        self.scan_state = "rescanning..."
        self._update_lines()

    @on(DuListing.Navigated)
    def _navigated(self) -> None:
        self._update_lines()

    def _update_lines(self) -> None:
        listing = self.listing
        node = listing.current
        path_line = self.query_one("#du-path", Static)
        state = self.query_one("#du-state", Static)
        if node is None:
            path_line.update("")
        else:
            kind = "apparent" if listing.apparent else "disk usage"
            path_line.update(f"{node.path}  {fmt.size(node.size(listing.apparent))} {kind}")
        parts: list[str] = []
        if node is not None:
            parts.append(f"{node.file_count:,} files, {node.dir_count:,} dirs")
            if node.error:
                parts.append(f"error: {node.error}")
            elif node.error_count:
                parts.append(f"{node.error_count:,} unreadable")
        parts.append(self.scan_state)
        state.update("  |  ".join(parts))
        state.set_class(self.error is not None or bool(node and node.error), "error")
