"""The Docker view of the disk-usage screen: Docker's usage by kind (like ``docker system df``)
above every item largest first (images, containers' writable layers, volumes, build cache,
container logs), with a bar, the kind, the name and its state.

Building the rows of a large host (hundreds of images and containers) costs time, so
``docker_rows`` is a plain function a worker thread calls; ``DockerItemsTable.show_rows`` then
only hands the prepared lines to the list, which draws just the visible ones (``LineList``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from dcb.services import formatting as fmt
from dcb.services.docker_df import (
    KIND_LABELS,
    KIND_ORDER,
    DockerItem,
    DockerReport,
)
from dcb.services.du import bar, percent
from dcb.services.errors import DcbError
from dcb.widgets.line_list import LineList, LineRow

BAR_WIDTH = 6
NAME_WIDTH = 23
"""Names are cut in the middle to fit: this many cells at 80 columns, more when wider (up to
``MAX_NAME_WIDTH``)."""
MAX_NAME_WIDTH = 48
BEFORE_NAME = 1 + 9 + 2 + BAR_WIDTH + 2 + 9 + 2
NOTES_WIDTH = 24
SHORT_KINDS = {"image": "image", "container": "container", "volume": "volume",
               "build-cache": "cache", "log": "log"}
KIND_FILTERS: tuple[str | None, ...] = (None, *KIND_ORDER)
"""What ``k`` cycles through: every kind, then one kind at a time."""


@dataclass(frozen=True)
class DockerRow:
    key: str
    item: DockerItem
    line: LineRow


def docker_rows(report: DockerReport, kind: str | None = None,
                name_width: int = NAME_WIDTH) -> list[DockerRow]:
    """The list's rows for ``report`` (one kind, or all), largest first. Thread-safe."""
    items = report.items(kind)
    largest = max((i.size_bytes or 0 for i in items), default=0)
    out = []
    for i in items:
        key = f"{i.kind}:{i.key}"
        out.append(DockerRow(key, i, LineRow(key, _line(i, largest, name_width))))
    return out


def name_width_for(width: int) -> int:
    """How wide the Name column is in a list ``width`` cells wide."""
    return max(NAME_WIDTH, min(MAX_NAME_WIDTH, width - BEFORE_NAME - 2 - NOTES_WIDTH))


def header(name_width: int) -> Text:
    return Text(f" {'Size':>9}  {'':<{BAR_WIDTH}}  {'Kind':<9}  {'Name':<{name_width}}  Notes",
                style="bold")


def _line(i: DockerItem, largest: int, name_width: int) -> Text:
    size = i.size_bytes
    shown = fmt.size(size) if size is not None else "unknown"
    note_style = "yellow" if i.offer else "dim"
    return Text.assemble(
        f" {shown:>9}  ",
        (bar((size or 0) / largest if largest else 0, BAR_WIDTH), "green"),
        f"  {SHORT_KINDS[i.kind]:<9}  ",
        (f"{middle_cut(i.name, name_width):<{name_width}}", "bold" if i.needed_by else ""),
        "  ",
        (i.note(), note_style),
    )


def middle_cut(text: str, width: int) -> str:
    """``text`` in ``width`` cells, cut in the middle: an image's tag keeps its version."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def summary_text(report: DockerReport) -> Text:
    """The kinds, one line each, like ``docker system df``."""
    t = Text()
    t.append(f"{'Kind':<15}{'Count':>7}{'Active':>8}{'Size':>12}{'Reclaimable':>13}\n",
             style="bold")
    for k in report.kinds:
        size = fmt.size(k.size_bytes) + ("+?" if k.unknown else "")
        t.append(f"{k.label:<15}{k.count:>7,}{k.active:>8,}{size:>12}"
                 f"{fmt.size(k.reclaimable_bytes):>13}")
        if k.size_bytes:
            t.append(f" {percent(k.reclaimable_bytes, k.size_bytes):>6}", style="dim")
        t.append("\n")
    t.rstrip()
    return t


class DockerItemsTable(LineList):
    """Docker's items, largest first; the cursor stays on its item across refreshes."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._items: list[DockerRow] = []

    @property
    def selected(self) -> DockerItem | None:
        if not self._items or not 0 <= self.cursor_row < len(self._items):
            return None
        return self._items[self.cursor_row].item

    @property
    def items(self) -> list[DockerItem]:
        """The items as listed, top to bottom."""
        return [r.item for r in self._items]

    def show_rows(self, rows: Sequence[DockerRow]) -> None:
        keep = self._items[self.cursor_row].key if self._items and self.cursor_row > 0 else None
        self._items = list(rows)
        self.set_rows([r.line for r in self._items], keep)


class DockerUsageView(Vertical):
    """Summary by kind, the items table and a state line."""

    DEFAULT_CSS = """
    DockerUsageView { height: 1fr; }
    DockerUsageView > #docker-summary { height: auto; padding: 0 1; background: $boost; }
    DockerUsageView > #docker-head { height: 1; background: $surface; }
    DockerUsageView > DockerItemsTable { height: 1fr; }
    DockerUsageView > #docker-state { height: 1; padding: 0 1; background: $boost; }
    DockerUsageView > #docker-state.error { color: $error; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.report: DockerReport | None = None
        self.error: DcbError | None = None
        self.kind: str | None = None
        """The kind shown, or None for every kind."""
        self.loading_state = "not loaded"
        self.name_width = NAME_WIDTH
        """The Name column's width, from the view's width (rows are built for it)."""

    def compose(self) -> ComposeResult:
        yield Static("", id="docker-summary", markup=False)
        yield Static(header(self.name_width), id="docker-head")
        yield DockerItemsTable(id="docker-items")
        yield Static(self.loading_state, id="docker-state", markup=False)

    @property
    def table(self) -> DockerItemsTable:
        return self.query_one(DockerItemsTable)

    def on_mount(self) -> None:
        # The view spans the screen: rows a worker builds before the first resize fit.
        self._fit_names(self.app.size.width)

    def on_resize(self) -> None:
        self._fit_names(self.size.width)

    def _fit_names(self, view_width: int) -> None:
        width = name_width_for(view_width)
        if width == self.name_width:
            return
        self.name_width = width
        self.query_one("#docker-head", Static).update(header(width))
        if self.report is not None:
            self.table.show_rows(docker_rows(self.report, self.kind, width))

    @property
    def loaded(self) -> bool:
        """A report (or an error) is shown."""
        return self.report is not None or self.error is not None

    def show_loading(self) -> None:
        self.loading_state = "asking Docker..." if self.report is None else "refreshing..."
        self._update_state()

    def show_report(self, report: DockerReport, rows: Sequence[DockerRow] | None = None,
                    kind: str | None = None) -> None:
        """A new report; ``rows`` prepared by ``docker_rows(report, kind)`` in a worker."""
        self.report = report
        self.error = None
        self.kind = kind
        self.loading_state = f"as of {report.collected_at:%H:%M:%S}"
        self.query_one("#docker-summary", Static).update(summary_text(report))
        self.table.show_rows(rows if rows is not None
                             else docker_rows(report, kind, self.name_width))
        self._update_state()

    def show_error(self, error: DcbError) -> None:
        self.error = error
        self.loading_state = error.message + (f" ({error.hint})" if error.hint else "")
        self._update_state()

    def cycle_kind(self) -> str | None:
        """Show the next kind (all, then each kind); returns it."""
        self.kind = KIND_FILTERS[(KIND_FILTERS.index(self.kind) + 1) % len(KIND_FILTERS)]
        if self.report is not None:
            self.table.show_rows(docker_rows(self.report, self.kind, self.name_width))
            self.table.cursor_row = 0
        self._update_state()
        return self.kind

    def _update_state(self) -> None:
        state = self.query_one("#docker-state", Static)
        parts = []
        if self.report is not None:
            shown = self.table.row_count
            what = "every kind" if self.kind is None else KIND_LABELS[self.kind].lower()
            parts.append(f"{shown:,} items, {what} (k: kind)")
            parts += list(self.report.notes)
        parts.append(self.loading_state)
        state.update("  |  ".join(parts))
        state.set_class(self.error is not None, "error")
