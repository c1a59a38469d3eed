"""The backups table: sets newest first, sortable, filterable."""

from __future__ import annotations

import contextlib

from rich.markup import escape
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist

from dcb.services import formatting as fmt
from dcb.services.overview import SetRow

STATUS_STYLE = {"complete": "green", "legacy": "cyan", "incomplete": "yellow",
                "failed": "b red", "running": "b blue"}
SORT_KEYS = ("created", "size", "status")
MAX_ROWS = 500
"""Rows drawn at once: the table measures every cell it holds, so thousands of sets would
stall the UI. Filtering and sorting still run over all sets."""


def effective_status(r: SetRow) -> str:
    return "running" if r.running is not None else r.set.status


def status_markup(r: SetRow) -> str:
    """``running`` (and by whom: the lock holder) for a set being written, else its status;
    since when is the Age column."""
    if r.running is not None:
        return (f"[{STATUS_STYLE['running']}]running[/] "
                f"({escape(r.running.holder.describe())})")
    style = STATUS_STYLE.get(r.set.status, "")
    return f"[{style}]{r.set.status}[/]" if style else r.set.status


def row_size(r: SetRow) -> str:
    return fmt.size(r.running.bytes_written if r.running else r.set.size_bytes)


class BackupsTable(DataTable[str]):
    def __init__(self, replicated: bool = False, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self.replicated = replicated
        """Show the Replicated column (only with [replication] destinations: a column of
        "-" would say nothing)."""
        self.rows_data: list[SetRow] = []
        self.filter_text = ""
        self.sort_key = "created"
        self.sort_reverse = True

    def on_mount(self) -> None:
        self.border_title = "Backups"
        self._add_columns()

    def _add_columns(self) -> None:
        columns = [("ID", "id"), ("Age", "age"), ("Size", "size"), ("Status", "status"),
                   ("Verified", "verified")]
        if self.replicated:
            columns.append(("Replicated", "replicated"))
        for label, key in columns:
            self.add_column(label, key=key)

    def set_rows(self, rows: list[SetRow], replicated: bool | None = None) -> None:
        """``replicated``: whether destinations exist (the Replicated column); None keeps it."""
        if replicated is not None and replicated != self.replicated:
            self.replicated = replicated
            self.clear(columns=True)
            self._add_columns()
        self.rows_data = rows
        self.refresh_rows()

    def visible_rows(self) -> list[SetRow]:
        f = self.filter_text.lower()
        rows = [r for r in self.rows_data
                if not f or f in r.set.id.lower() or f in effective_status(r)]
        key = {"created": lambda r: (r.set.created_at, r.set.id),
               "size": lambda r: (r.set.size_bytes, r.set.id),
               "status": lambda r: (effective_status(r), r.set.id)}[self.sort_key]
        return sorted(rows, key=key, reverse=self.sort_reverse)

    def refresh_rows(self) -> None:
        selected = self.selected_id()
        self.clear()
        rows = self.visible_rows()
        for r in rows[:MAX_ROWS]:
            s = r.set
            cells = [s.id, fmt.age(s.created_at), row_size(r), status_markup(r), r.verified]
            if self.replicated:
                cells.append(r.replicated)
            self.add_row(*cells, key=s.id)
        if self.filter_text:
            title = f"Backups ({len(rows)} of {len(self.rows_data)} matching " \
                    f"{self.filter_text!r}"
        else:
            title = f"Backups ({len(rows)}"
        if len(rows) > MAX_ROWS:
            title += f"; showing the first {MAX_ROWS}, / filters"
        self.border_title = title + ")"
        if selected is not None:
            for i, r in enumerate(rows[:MAX_ROWS]):
                if r.set.id == selected:
                    self.move_cursor(row=i)
                    break

    def refresh_ages(self) -> None:
        """Ages move on while the console is open (called by the dashboard's timer)."""
        for r in self.visible_rows()[:MAX_ROWS]:
            with contextlib.suppress(CellDoesNotExist):
                self.update_cell(r.set.id, "age", fmt.age(r.set.created_at))

    def cycle_sort(self) -> str:
        i = SORT_KEYS.index(self.sort_key)
        self.sort_key = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
        self.refresh_rows()
        return self.sort_key

    def selected_id(self) -> str | None:
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:
            return None
        return str(key.value) if key.value is not None else None

    def selected_row(self) -> SetRow | None:
        sid = self.selected_id()
        return next((r for r in self.rows_data if r.set.id == sid), None)
