"""A list of one-line rows with a row cursor, drawn with Textual's line API.

Only the visible lines are rendered, so a thousand rows cost what forty do. (``DataTable``
measures every cell of every new row on the next idle: for ~900 rows of the Docker view that
was one 0.2-0.5 s stall on this machine; see bench/TUI.md.) The rows are prepared as
``rich.text.Text`` lines, typically in a worker thread, and handed over in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip


@dataclass(frozen=True)
class LineRow:
    key: str
    text: Text
    """One line (no newline); cut at the widget's width."""


class LineList(ScrollView, can_focus=True):
    """Rows of text, one per line, with a cursor; Enter or a click on the cursor's row
    posts ``Selected``."""

    COMPONENT_CLASSES = {"line-list--cursor", "line-list--odd"}
    DEFAULT_CSS = """
    LineList { background: $surface; height: 1fr; }
    LineList > .line-list--cursor { background: $block-cursor-blurred-background; }
    LineList:focus > .line-list--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    LineList > .line-list--odd { background: $surface-darken-1 40%; }
    """
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    cursor_row: reactive[int] = reactive(0, always_update=True)

    class Highlighted(Message):
        def __init__(self, line_list: LineList, row: int) -> None:
            super().__init__()
            self.line_list = line_list
            self.row = row

        @property
        def control(self) -> LineList:
            return self.line_list

    class Selected(Message):
        def __init__(self, line_list: LineList, row: int) -> None:
            super().__init__()
            self.line_list = line_list
            self.row = row

        @property
        def control(self) -> LineList:
            return self.line_list

    def __init__(self, *, id: str | None = None, classes: str | None = None,
                 zebra_stripes: bool = True) -> None:
        super().__init__(id=id, classes=classes)
        self.rows: list[LineRow] = []
        self.zebra_stripes = zebra_stripes

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def set_rows(self, rows: Sequence[LineRow], keep: str | None = None) -> None:
        """Show ``rows``; the cursor goes to the row keyed ``keep`` if there is one, else it
        stays where it was (within the new length)."""
        self.rows = list(rows)
        width = max((r.text.cell_len for r in self.rows[:200]), default=0)
        self.virtual_size = Size(width, len(self.rows))
        index = next((n for n, r in enumerate(self.rows) if r.key == keep), None) \
            if keep is not None else None
        row = index if index is not None else min(self.cursor_row, max(len(self.rows) - 1, 0))
        self.cursor_row = row
        self.refresh()

    def validate_cursor_row(self, row: int) -> int:
        return max(0, min(row, len(self.rows) - 1)) if self.rows else 0

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh_line(old)
        self.refresh_line(new)
        self.scroll_to_region(Region(0, new, 1, 1), animate=False, immediate=True)
        self.post_message(self.Highlighted(self, new))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        segments = list(self.rows[index].text.render(self.app.console))
        post: Style | None = None
        if index == self.cursor_row:
            post = self.get_component_rich_style("line-list--cursor")
        elif self.zebra_stripes and index % 2:
            base = base + self.get_component_rich_style("line-list--odd")
        segments = list(Segment.apply_style(segments, base, post))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, post or base)

    def action_cursor(self, delta: int) -> None:
        self.cursor_row += delta

    def action_page(self, direction: int) -> None:
        self.cursor_row += direction * max(1, self.scrollable_content_region.height - 1)

    def action_jump(self, row: int) -> None:
        self.cursor_row = row if row >= 0 else len(self.rows) - 1

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self, self.cursor_row))

    def on_click(self, event: events.Click) -> None:
        row = self.scroll_offset.y + event.y
        if not 0 <= row < len(self.rows):
            return
        if row == self.cursor_row:
            self.action_select()
        else:
            self.cursor_row = row
