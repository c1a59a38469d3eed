"""The history screen (``h``): run durations and sizes as charts with failures marked, the
success rate, and the backup store's growth with the day the disk fills up."""

from __future__ import annotations

import statistics

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from dcb.services import formatting as fmt
from dcb.services.errors import DcbError
from dcb.services.ops.history_stats import HistoryStats
from dcb.tui.sources import Sources
from dcb.widgets.history_charts import GrowthChart, RunsChart


class HistoryLoaded(Message):
    def __init__(self, stats: HistoryStats | None, error: str | None = None) -> None:
        super().__init__()
        self.stats = stats
        self.error = error


def summary_markup(s: HistoryStats) -> str:
    """The two lines above the charts."""
    n = len(s.runs)
    if n == 0:
        first = "no backup runs yet"
    else:
        rate = "-" if s.success_rate is None else f"{100 * s.success_rate:.0f}%"
        colour = "green" if (s.success_rate or 0) >= 0.95 else "yellow"
        if s.success_rate is not None and s.success_rate < 0.8:
            colour = "red"
        ok = [r.seconds for r in s.runs if r.ok and r.seconds is not None]
        med = fmt.duration(statistics.median(ok)) if ok else "-"
        last = next((r for r in reversed(s.runs) if r.ok), None)
        failed = f", [red]{s.failures} failed[/]" if s.failures else ""
        first = (f"{n} runs{failed} │ success [{colour}]{rate}[/] ({s.window_days} days) │ "
                 f"median {med} │ last {fmt.size(last.size_bytes if last else None)}")
    g = s.growth
    store = fmt.size(g.points[-1][1]) if g.points else "-"
    if g.bytes_per_day is None:
        second = f"store {store}: too little history to project its growth"
    elif g.bytes_per_day <= 0:
        second = f"store {store}: not growing ({fmt.size(int(-g.bytes_per_day))}/day freed)"
    elif g.full_at is None:
        second = f"store {store}, +{fmt.size(int(g.bytes_per_day))}/day"
    else:
        days = (g.full_at - s.now).total_seconds() / 86400
        colour = "red" if days < 14 else ("yellow" if days < 60 else "green")
        second = (f"store {store}, +{fmt.size(int(g.bytes_per_day))}/day: disk full "
                  f"[{colour}]~{g.full_at:%Y-%m-%d}[/] (in {days:.0f} days)")
    return f"{first}\n{second}"


class HistoryScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,q", "dismiss", "Back", id="history-back"),
        Binding("g", "reload", "Refresh", id="history-refresh"),
    ]

    def __init__(self, sources: Sources) -> None:
        super().__init__()
        self.sources = sources
        self.stats: HistoryStats | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading the history…", id="history-summary")
        with Horizontal(id="history-runs"):
            yield RunsChart("seconds", id="durations")
            yield RunsChart("size", id="sizes")
        yield GrowthChart(id="growth")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="history-load", exit_on_error=False)
    def load(self) -> None:
        try:
            self.post_message(HistoryLoaded(self.sources.history()))
        except (DcbError, OSError) as e:
            self.post_message(HistoryLoaded(None, str(e)))

    @on(HistoryLoaded)
    def _loaded(self, msg: HistoryLoaded) -> None:
        if msg.stats is None:
            self.query_one("#history-summary", Static).update(
                f"[b red]history unreadable:[/] {msg.error}")
            return
        self.stats = msg.stats
        self.query_one("#history-summary", Static).update(summary_markup(msg.stats))
        for chart in self.query(RunsChart):
            chart.show_stats(msg.stats)
        self.query_one(GrowthChart).show_stats(msg.stats)
