#!/usr/bin/env python3
"""Console benchmark of the Docker disk view on a large host (fake data, no Docker needed).

    .venv/bin/python bench/du_docker_bench.py [--images 500] [--containers 200] [--runs 5]
                                              [--engine-delay 0.3] [--real]

Prints figures next to their targets; never asserts (a script, not a test).

The host is fake: ``tests.snapshot_fixtures.docker_df`` grows the snapshot tests' ``client.df()``
answer to ``--images`` images (a third of them dangling) and ``--containers`` containers (all
stopped, each with a json-file log), and the real report builder (``services.docker_df``) turns
it into the report the console shows. It is injected as the snapshot tests inject data: a
``FixedSources`` whose ``docker_report()`` waits ``--engine-delay`` seconds (the engine's time)
and returns it.

a. The pure work a worker thread does: building the report from the raw answers, and the
   table's rows (``widgets.docker_usage.docker_rows``).
b. ``D`` on the dashboard to the Docker view: the first paint of the screen (before the data),
   then the list getting every row and the next full paint. Target < 1 s. Also the main
   thread's CPU time for it (less sensitive to other load on the machine than wall time).
   A 10 ms ticker measures how late the event loop ran it: the longest stall while the
   screen is pushed (one callback composes and styles it, like any screen) and while the
   data loads and is shown. Target < 100 ms.
c. ``k`` (kind filter: images only, a main-thread rebuild) to the next paint; the preview of
   "remove stopped containers" (every generated container) to its paint. Target < 100 ms
   and < 1 s. For scale, a plain ``ConfirmScreen`` pushed over the same view.
d. ``--real``: ``collect_report`` against this machine's engine (df, info, one inspect per
   container, stat of each log), for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from tui_bench import PaintClock, StallMeter, line, summary, until  # noqa: E402

from dcb.services import formatting as fmt  # noqa: E402
from dcb.services.config import Config  # noqa: E402
from dcb.services.docker_df import DockerReport  # noqa: E402
from dcb.tui.app import DcbApp  # noqa: E402
from dcb.tui.screens.common import ConfirmScreen  # noqa: E402
from dcb.tui.screens.dashboard import DashboardScreen  # noqa: E402
from dcb.tui.screens.docker_du import CleanupScreen  # noqa: E402
from dcb.tui.screens.du import DuScreen  # noqa: E402
from dcb.widgets.docker_usage import DockerItemsTable, DockerUsageView, docker_rows  # noqa: E402
from tests.snapshot_fixtures import (  # noqa: E402
    FIXED_NOW,
    FixedSources,
    make_docker_report,
    write_config,
)

SIZE = (120, 40)
TARGET_PAINT = 1.0
TARGET_STALL = 0.100

# The fixed data holds 6 images and 5 containers of its own.
BASE_IMAGES = 6
BASE_CONTAINERS = 5


class SlowSources(FixedSources):
    """The fixed dashboard, and a Docker report that takes the engine's time to arrive."""

    def __init__(self, cfg: Config, report: DockerReport, delay: float) -> None:
        super().__init__(cfg, docker=report)
        self.delay = delay

    def docker_report(self, cancel: threading.Event | None = None) -> DockerReport:
        if self.delay:
            threading.Event().wait(self.delay)
        assert self.fixed_docker is not None
        return self.fixed_docker


def bench_pure(cfg: Config, images: int, containers: int, runs: int) -> DockerReport:
    print(f"a. work done in the worker thread ({images} images, {containers} containers)")
    builds, rows = [], []
    report = None
    for _ in range(runs):
        t0 = time.perf_counter()
        report = make_docker_report(cfg.stack, images - BASE_IMAGES, containers - BASE_CONTAINERS)
        builds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        docker_rows(report)
        rows.append(time.perf_counter() - t0)
    assert report is not None
    n = len(report.items())
    line("build the report from the raw answers", statistics.median(builds), None,
         summary(builds))
    line(f"build the table's rows ({n} items)", statistics.median(rows), None, summary(rows))
    return report


class RowsClock:
    """When the Docker list got its rows (the call, in the event loop's thread)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        original = DockerItemsTable.show_rows

        def show_rows(table: DockerItemsTable, rows: Any) -> None:
            original(table, rows)
            self.times.append(time.perf_counter())

        DockerItemsTable.show_rows = show_rows  # type: ignore[method-assign]


ROWS = RowsClock()


class ScreenPaints:
    """Which screen was on top at each full paint (on top of ``PaintClock``)."""

    def __init__(self, app: DcbApp) -> None:
        self.app = app
        self.paints: list[tuple[float, type]] = []
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            self.paints.append((time.perf_counter(), type(app.screen)))

        app._display = display  # type: ignore[method-assign]

    async def first(self, kind: type, after: float, timeout: float = 30) -> float:
        """The time of the first paint after ``after`` with a ``kind`` screen on top."""
        def found() -> bool:
            return any(t > after and k is kind for t, k in self.paints)

        await until(found, timeout, f"a paint of {kind.__name__}")
        return next(t for t, k in self.paints if t > after and k is kind)


async def open_once(cfg: Config, report: DockerReport, delay: float) -> dict[str, float]:
    """Times of one run, in seconds (see ``bench_view``)."""
    app = DcbApp(cfg, SlowSources(cfg, report, delay))
    clock = PaintClock(app)
    screens = ScreenPaints(app)
    push_meter = StallMeter()
    load_meter = StallMeter()
    n = len(report.items())
    out: dict[str, float] = {}
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: isinstance(app.screen, DashboardScreen)
                    and app.screen.disk_picture is not None, 30, "dashboard loaded")
        await pilot.pause(0.2)
        gc.collect()
        push_meter.start()
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        await pilot.press("D")
        out["first"] = await clock.next_after(t0) - t0
        push_meter.stop()
        load_meter.start()

        def table_full() -> bool:
            s = app.screen
            return isinstance(s, DuScreen) and s.query_one(DockerItemsTable).row_count == n

        await until(table_full, 30, "docker rows shown")
        t_rows = ROWS.times[-1]
        out["rows"] = t_rows - t0
        out["painted"] = await clock.next_after(t_rows) - t0
        await pilot.pause(0.3)  # anything queued behind the paint (idle relayout) counts too
        load_meter.stop()
        out["cpu"] = time.thread_time() - cpu0
        out["push_stall"] = max(push_meter.lateness, default=0.0)
        out["load_stall"] = max(load_meter.lateness, default=0.0)

        view = app.screen.query_one(DockerUsageView)
        t1 = time.perf_counter()
        cpu1 = time.thread_time()
        await pilot.press("k")  # images only
        assert view.kind == "image"
        out["kind"] = await clock.next_after(t1) - t1
        out["kind_cpu"] = time.thread_time() - cpu1

        t2 = time.perf_counter()
        cpu2 = time.thread_time()
        await pilot.press("c")  # preview: remove stopped containers
        out["preview"] = await screens.first(CleanupScreen, t2) - t2
        out["preview_cpu"] = time.thread_time() - cpu2
        await pilot.press("escape")
        await pilot.pause(0.1)
        t3 = time.perf_counter()
        cpu3 = time.thread_time()
        await app.push_screen(ConfirmScreen("baseline"))
        out["confirm"] = await screens.first(ConfirmScreen, t3) - t3
        out["confirm_cpu"] = time.thread_time() - cpu3
    return out


async def bench_view(cfg: Config, report: DockerReport, runs: int, delay: float) -> None:
    n = len(report.items())
    print(f"b. `D` to the Docker view with {n} items (engine time {delay * 1000:.0f} ms, "
          f"{SIZE[0]}x{SIZE[1]})")
    fmt.pin_now(FIXED_NOW)
    try:
        results = [await open_once(cfg, report, delay) for _ in range(runs + 1)]
    finally:
        fmt.pin_now(None)
    results = results[1:]  # the first run pays one-off costs (CSS, imports)

    def col(key: str) -> list[float]:
        return [r[key] for r in results]

    def show(what: str, key: str, target: float | None) -> None:
        line(what, statistics.median(col(key)), target, summary(col(key)))

    show("first paint of the screen (before the data)", "first", TARGET_PAINT)
    show("every row in the list", "rows", TARGET_PAINT)
    show("... and painted", "painted", TARGET_PAINT)
    show("  main-thread CPU for all of it", "cpu", None)
    line("longest stall: pushing the screen (worst run)", max(col("push_stall")), None,
         "runs: " + ", ".join(f"{s * 1000:.0f}" for s in col("push_stall")) + " ms")
    line("longest stall: while the data loads (worst run)", max(col("load_stall")),
         TARGET_STALL,
         "runs: " + ", ".join(f"{s * 1000:.0f}" for s in col("load_stall")) + " ms")
    print("c. keys on the loaded view")
    show("k (images only) to the next paint", "kind", TARGET_STALL)
    show("  main-thread CPU, until the figure is taken", "kind_cpu", None)
    show("c (preview of every stopped container) painted", "preview", TARGET_PAINT)
    show("  main-thread CPU, until the figure is taken", "preview_cpu", None)
    show("for scale: a ConfirmScreen over the view, painted", "confirm", None)
    show("  main-thread CPU, until the figure is taken", "confirm_cpu", None)


def bench_real(cfg: Config, runs: int) -> None:
    print("d. collect_report against this machine's engine")
    from dcb.services.docker_df import collect_report
    from dcb.services.docker_gateway import DockerGateway

    gw = DockerGateway.connect()
    try:
        took = []
        report = None
        for _ in range(runs):
            t0 = time.perf_counter()
            report = collect_report(cfg, gw)
            took.append(time.perf_counter() - t0)
    finally:
        gw.close()
    assert report is not None
    line(f"collect ({len(report.images)} images, {len(report.containers)} containers, "
         f"{len(report.volumes)} volumes)", statistics.median(took), None, summary(took))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=500, help="images on the fake host (500)")
    p.add_argument("--containers", type=int, default=200,
                   help="containers on the fake host (200)")
    p.add_argument("--engine-delay", type=float, default=0.3,
                   help="seconds the fake engine takes to answer (0.3)")
    p.add_argument("--runs", type=int, default=5, help="repetitions per figure (5)")
    p.add_argument("--real", action="store_true", help="also time the real engine (d)")
    args = p.parse_args()
    os.environ.pop("TEXTUAL", None)
    print(f"dcb Docker disk view benchmark  (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, headless)")
    print("  load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="dcb-du-docker-bench-") as d:
        cfg = write_config(Path(d), backup_dir=Path(d) / "backups")
        report = bench_pure(cfg, args.images, args.containers, args.runs)
        asyncio.run(bench_view(cfg, report, args.runs, args.engine_delay))
        if args.real:
            bench_real(cfg, args.runs)
    print("  load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
