"""Charts of the history screen (textual-plotext): run durations and sizes with failures
marked, and the store's growth with its projection to a full disk."""

from __future__ import annotations

from datetime import timedelta

from textual_plotext import PlotextPlot

from dcb.services.ops.history_stats import HistoryStats

MAX_RUNS = 60
"""The charts show the most recent runs; older ones are in `dcb history`."""

GiB = 1024**3
MiB = 1024**2


def _unit(values: list[float]) -> tuple[float, str]:
    top = max(values, default=0)
    return (GiB, "GiB") if top >= GiB else (MiB, "MiB")


class RunsChart(PlotextPlot):
    """Each run's duration (``what="seconds"``) or size (``"size"``), the newest run at 0 on
    the right; failures as red x."""

    def __init__(self, what: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.what = what

    def show_stats(self, stats: HistoryStats) -> None:
        runs = stats.runs[-MAX_RUNS:]
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        xs = list(range(1 - len(runs), 1))  # 0 is the newest run, -1 the one before...
        if self.what == "seconds":
            plt.title("Duration (s) per run")
            ok = [(x, r.seconds) for x, r in zip(xs, runs, strict=True)
                  if r.ok and r.seconds is not None]
            bad = [(x, r.seconds or 0.0) for x, r in zip(xs, runs, strict=True) if not r.ok]
            scale, unit = 1.0, "s"
        else:
            sizes = [float(r.size_bytes) for r in runs if r.size_bytes is not None]
            scale, unit = _unit(sizes)
            plt.title(f"Size ({unit}) per run")
            ok = [(x, r.size_bytes / scale) for x, r in zip(xs, runs, strict=True)
                  if r.ok and r.size_bytes is not None]
            bad = [(x, 0.0) for x, r in zip(xs, runs, strict=True) if not r.ok]
        if ok:
            plt.plot([x for x, _ in ok], [y for _, y in ok], color="green", marker="hd")
        if bad:
            plt.scatter([x for x, _ in bad], [y for _, y in bad], marker="x", color="red",
                        label="failed")
        plt.xlabel("runs, 0 = newest")
        if not runs:
            plt.title("No backup runs yet")
        self.refresh()


class GrowthChart(PlotextPlot):
    """The store's size by day (0 is today) and, dashed red, its projection."""

    def show_stats(self, stats: HistoryStats) -> None:
        g = stats.growth
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        pts = [(t, b) for t, b in g.points if t >= stats.now - timedelta(days=90)]
        scale, unit = _unit([float(b) for _, b in pts])
        days = [(t - stats.now).total_seconds() / 86400 for t, _ in pts]
        plt.title(f"Backup store ({unit}) by day, 0 = today")
        if pts:
            plt.plot(days, [b / scale for _, b in pts], color="cyan", marker="braille")
        if g.bytes_per_day and g.bytes_per_day > 0 and pts:
            span = max(7.0, -min(days, default=0.0))
            end = span
            if g.full_at is not None:
                end = min(span, (g.full_at - stats.now).total_seconds() / 86400)
            last = pts[-1][1]
            plt.plot([0, end], [last / scale, (last + g.bytes_per_day * end) / scale],
                     color="red", marker="dot", label="projection")
        self.refresh()
