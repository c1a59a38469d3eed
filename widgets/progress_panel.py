"""Progress of long work: one bar per stage (bytes, rate, ETA) and a log of stage events."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Label, ProgressBar, RichLog

from dcb.services import formatting as fmt
from dcb.services.progress import (
    BytesProgress,
    Event,
    LogLine,
    StageFailed,
    StageFinished,
    StageStarted,
)


class StageRow(Vertical):
    """One stage: a label with bytes/rate and a bar (indeterminate without a total)."""

    def __init__(self, stage: str, total: int | None) -> None:
        super().__init__(classes="stage-row")
        self.stage = stage
        self.total = total
        self.started = time.monotonic()
        # Held directly: events can arrive before the row has composed its children.
        self.label = Label(f"[b]{stage}[/] starting…", classes="stage-label")
        self.bar = ProgressBar(total=total, show_eta=True, classes="stage-bar")

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.bar

    def progress(self, p: BytesProgress) -> None:
        total = p.total_bytes
        bar = self.bar
        if total and p.done_bytes <= total:
            bar.update(total=total, progress=p.done_bytes)
        else:
            # Estimates can be low (compressed vs raw): fall back to an indeterminate bar.
            bar.update(total=None)
        # A fixed-size label: no relayout of the screen on every byte count.
        self.label.update(
            f"[b]{self.stage}[/]  {fmt.size(p.done_bytes)}"
            + (f" of ~{fmt.size(total)}" if total else "") + f"  {fmt.rate(p.rate)}",
            layout=False)

    def finish(self, e: StageFinished) -> None:
        self.bar.update(total=100, progress=100)
        detail = f", {e.detail}" if e.detail else ""
        self.label.update(f"[green]✓[/] [b]{self.stage}[/]  {fmt.size(e.bytes)} in "
                                     f"{fmt.duration(e.seconds)}{detail}")
        self.add_class("done")

    def fail(self, e: StageFailed) -> None:
        self.label.update(f"[red]✗[/] [b]{self.stage}[/]  {e.error}")
        self.add_class("failed")


class ProgressPanel(Widget):
    """Feed it service events with ``handle``; it keeps one row per stage and a log."""

    DEFAULT_CSS = """
    ProgressPanel { height: 1fr; }
    ProgressPanel #stages { height: auto; max-height: 60%; }
    ProgressPanel RichLog { height: 1fr; border: round $primary-darken-2; }
    """

    def __init__(self, hide_stages: tuple[str, ...] = (), **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.rows: dict[str, StageRow] = {}
        self.hide_stages = hide_stages

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="stages")
        yield RichLog(id="log", wrap=True, markup=True, max_lines=2000)

    def log_line(self, text: str) -> None:
        self.query_one(RichLog).write(f"[dim]{fmt.now():%H:%M:%S}[/] {text}")

    def handle(self, e: Event) -> None:
        if isinstance(e, StageStarted):
            if e.stage not in self.hide_stages:
                row = StageRow(e.stage, e.total_bytes)
                self.rows[e.stage] = row
                self.query_one("#stages", VerticalScroll).mount(row)
                row.scroll_visible()
            self.log_line(f"started {e.stage}")
        elif isinstance(e, BytesProgress):
            if e.stage in self.rows:
                self.rows[e.stage].progress(e)
        elif isinstance(e, StageFinished):
            if e.stage in self.rows:
                self.rows[e.stage].finish(e)
            self.log_line(f"[green]finished[/] {e.stage}: {fmt.size(e.bytes)} in "
                          f"{fmt.duration(e.seconds)}" + (f" ({e.detail})" if e.detail else ""))
        elif isinstance(e, StageFailed):
            if e.stage in self.rows:
                self.rows[e.stage].fail(e)
            self.log_line(f"[b red]failed[/] {e.stage}: {e.error}")
        elif isinstance(e, LogLine):
            colour = {"warning": "yellow", "error": "red"}.get(e.level)
            self.log_line(f"[{colour}]{e.message}[/]" if colour else e.message)
