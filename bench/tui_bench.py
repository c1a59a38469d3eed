#!/usr/bin/env python3
"""Console (TUI) benchmark: start-up, a big backups table, UI stalls during a backup.

    .venv/bin/python bench/tui_bench.py [--config PATH | --make-stack [--extra-mb N]]
                                        [--sets N] [--runs N]

Prints figures next to their targets; never asserts (it is a script, not a test).

a. Launch to the dashboard's first full paint, in-process (``App.run_test``): the time from
   creating the app until the backups table holds its rows and the screen has been refreshed.
   With the fixed-data sources of the snapshot tests (no Docker: the console's own cost), and,
   given a configuration, with the real services (Docker, the store on disk). Also the cold
   import of ``tui.app`` in a fresh interpreter, which a user pays on top. Target < 1 s.
b. ``BackupsTable.set_rows`` with ``--sets`` (10,000) sets, then the next paint; also a
   filter keystroke and a sort over them. Target < 0.5 s.
c. The longest UI stall while a backup streams: a real backup of everything through the
   ``BackupScreen`` (over the real dashboard), while a callback re-arms itself every 10 ms with
   ``loop.call_later`` and records how late it ran. Max lateness is the longest time the event
   loop could not react to a key. Target < 100 ms. Needs ``--config`` or ``--make-stack``.

``--make-stack`` builds the disposable test stack of ``tests/stackkit.py`` (local images, no
network), writes its dcb.toml in a temporary directory, optionally adds ``--extra-mb`` MB of
random data to its functions volume so the backup streams for a while, and destroys it all at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from textual._compositor import CompositorUpdate  # noqa: E402
from textual.app import App, ComposeResult  # noqa: E402

from dcb.services import formatting as fmt  # noqa: E402
from dcb.services.config import Config, load_config  # noqa: E402
from dcb.services.store import BackupStore  # noqa: E402
from dcb.tui.app import DcbApp  # noqa: E402
from dcb.tui.screens.dashboard import DashboardScreen  # noqa: E402
from dcb.tui.screens.tasks import BackupScreen  # noqa: E402
from dcb.widgets.backups_table import MAX_ROWS, BackupsTable  # noqa: E402
from tests.snapshot_fixtures import (  # noqa: E402
    FIXED_NOW,
    FixedSources,
    many_sets,
    write_config,
)

SIZE = (120, 40)
TARGET_LAUNCH = 1.0
TARGET_TABLE = 0.5
TARGET_STALL = 0.100


# -- reporting -------------------------------------------------------------------------------
def line(what: str, seconds: float | None, target: float | None = None, note: str = "") -> None:
    value = "skipped" if seconds is None else f"{seconds * 1000:9.1f} ms"
    verdict = ""
    if seconds is not None and target is not None:
        verdict = f"target < {target * 1000:.0f} ms  {'ok' if seconds < target else 'MISSED'}"
    print(f"  {what:<52} {value:>12}  {verdict:<24} {note}".rstrip())


def summary(xs: list[float]) -> str:
    return (f"median of {len(xs)}: min {min(xs) * 1000:.1f}, "
            f"max {max(xs) * 1000:.1f} ms")


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll every millisecond (the granularity of the launch figures)."""
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.001)


class PaintClock:
    """Records when the app writes a frame to the terminal.

    Headless, Textual composes every frame but skips turning it into terminal output; this
    does that part too (``render_segments``), so a recorded time is a full paint.
    """

    def __init__(self, app: App[Any]) -> None:
        self.app = app
        self.times: list[float] = []
        original = app._display

        def display(screen: Any, renderable: Any) -> None:
            original(screen, renderable)
            if isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)
                self.times.append(time.perf_counter())

        app._display = display  # type: ignore[method-assign]

    async def next_after(self, t: float, timeout: float = 30) -> float:
        """The time of the first paint after ``t``."""
        await until(lambda: bool(self.times) and self.times[-1] > t, timeout, "a paint")
        return next(x for x in self.times if x > t)


# -- a. launch -------------------------------------------------------------------------------
async def launch_once(make_app: Callable[[], DcbApp], expect_rows: int,
                      need_status: bool) -> tuple[float, float]:
    """Seconds from creating the app to (rows in the table, the screen refreshed after)."""
    t0 = time.perf_counter()
    app = make_app()
    clock = PaintClock(app)
    async with app.run_test(size=SIZE) as pilot:
        def loaded() -> bool:
            s = app.screen
            if not isinstance(s, DashboardScreen):
                return False
            if s.query_one(BackupsTable).row_count < expect_rows or s.overview is None:
                return False
            return not need_status or s.status is not None

        await until(loaded, 60, "dashboard loaded")
        t_rows = time.perf_counter()
        t_paint = await clock.next_after(t_rows)
        await pilot.press("q")
    return t_rows - t0, t_paint - t0


def cold_import_seconds(runs: int) -> list[float]:
    code = ("import time; t = time.perf_counter(); import dcb.tui.app; "
            "print(time.perf_counter() - t)")
    out = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=REPO, check=True)
        out.append(float(r.stdout.strip()))
    return out


async def bench_launch(cfg_fixed: Config, real: Config | None, runs: int) -> None:
    print("a. launch to the dashboard's first full paint (in-process, 120x40)")
    fmt.pin_now(FIXED_NOW)
    try:
        rows, paints = [], []
        for _ in range(runs + 1):
            r, p = await launch_once(lambda: DcbApp(cfg_fixed, FixedSources(cfg_fixed)), 8,
                                     need_status=True)
            rows.append(r)
            paints.append(p)
        # The first run pays one-off costs (CSS parsing caches, lazy imports): shown apart.
        line("fixed data, first run in this process", paints[0], TARGET_LAUNCH)
        line("fixed data: rows in the table", statistics.median(rows[1:]), TARGET_LAUNCH,
             summary(rows[1:]))
        line("fixed data: table painted", statistics.median(paints[1:]), TARGET_LAUNCH,
             summary(paints[1:]))
    finally:
        fmt.pin_now(None)
    imports = cold_import_seconds(3)
    line("cold `import dcb.tui.app` (fresh interpreter)", statistics.median(imports), None,
         summary(imports))
    if real is None:
        line("real services (needs --config)", None)
        return
    n = len(BackupStore.for_config(real).list_sets())
    real_paints = []
    for _ in range(runs):
        _, p = await launch_once(lambda: DcbApp(real), n, need_status=True)
        real_paints.append(p)
    line(f"real services ({n} sets): rows + containers painted",
         statistics.median(real_paints), TARGET_LAUNCH, summary(real_paints))
    line("  (add the cold import for a launch from the shell)",
         statistics.median(real_paints) + statistics.median(imports), TARGET_LAUNCH)


# -- b. a big table --------------------------------------------------------------------------
class TableApp(App[None]):
    CSS = "BackupsTable { height: 1fr; }"

    def compose(self) -> ComposeResult:
        yield BackupsTable()


async def bench_table(n: int, runs: int) -> None:
    print(f"b. the backups table with {n:,} sets")
    rows = many_sets(n)
    fmt.pin_now(FIXED_NOW)
    try:
        set_rows, painted, filtered, sorted_ = [], [], [], []
        for _ in range(runs):
            app = TableApp()
            clock = PaintClock(app)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                table = app.query_one(BackupsTable)
                t0 = time.perf_counter()
                table.set_rows(rows)
                t1 = time.perf_counter()
                set_rows.append(t1 - t0)
                painted.append(await clock.next_after(t1) - t0)
                assert table.row_count == min(n, MAX_ROWS)  # the table draws at most MAX_ROWS
                t0 = time.perf_counter()
                table.filter_text = "2026"  # what one keystroke in the filter box does
                table.refresh_rows()
                filtered.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                table.cycle_sort()
                sorted_.append(time.perf_counter() - t0)
    finally:
        fmt.pin_now(None)
    line("set_rows", statistics.median(set_rows), TARGET_TABLE, summary(set_rows))
    line("set_rows + next paint", statistics.median(painted), TARGET_TABLE, summary(painted))
    line("filter keystroke (refresh_rows)", statistics.median(filtered), TARGET_TABLE,
         summary(filtered))
    line("sort key change (cycle_sort)", statistics.median(sorted_), TARGET_TABLE,
         summary(sorted_))


# -- c. stalls during a backup ----------------------------------------------------------------
class StallMeter:
    """Re-arms itself every ``period`` seconds and records how late each call came."""

    def __init__(self, period: float = 0.010) -> None:
        self.period = period
        self.lateness: list[float] = []
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self.t0 = 0.0
        self.stalls: list[tuple[float, float]] = []
        """(seconds since ``t0``, lateness) of every tick more than 50 ms late."""

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.period
        self._handle = loop.call_later(self.period, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = max(0.0, now - self._due)
        self.lateness.append(late)
        if late > 0.050:
            self.stalls.append((time.perf_counter() - self.t0 - late, late))
        self._due = now + self.period
        self._handle = loop.call_later(self.period, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


async def stall_once(cfg: Config) -> tuple[StallMeter, float, str, int]:
    app = DcbApp(cfg)
    meter = StallMeter()
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: isinstance(app.screen, DashboardScreen)
                    and app.screen.status is not None, 60, "dashboard loaded")
        gc.collect()  # garbage of earlier figures must not be collected during this one
        meter.start()
        t0 = meter.t0 = time.perf_counter()
        screen = BackupScreen(cfg, "all")
        await app.push_screen(screen)
        await until(lambda: not screen.running, 1800, "backup finished")
        took = time.perf_counter() - t0
        meter.stop()
        result = str(screen.query_one("#task-result").render())
        stages = len(screen.query_one("#panel").rows)  # type: ignore[attr-defined]
        await pilot.press("escape")
    return meter, took, result, stages


async def bench_stall(cfg: Config | None, rounds: int, diagnose: bool = False) -> None:
    print("c. the longest UI stall while a backup streams (everything, real stack)")
    if cfg is None:
        line("max event-loop lateness (needs --config)", None)
        return
    if diagnose:
        # asyncio names every callback that ran longer than this (logged to stderr).
        logging.basicConfig(level=logging.WARNING, format="    %(message)s")
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.050
    maxima: list[float] = []
    for n in range(1, rounds + 1):
        meter, took, result, stages = await stall_once(cfg)
        late = sorted(meter.lateness)
        ok = "complete" in result
        print(f"  round {n}: backup {'complete' if ok else 'FAILED: ' + result.splitlines()[0]}"
              f" in {took:.1f} s, {stages} stages, {len(late)} ticks of 10 ms; lateness "
              f"max {late[-1] * 1000:.0f} ms, p99 {late[int(len(late) * 0.99) - 1] * 1000:.0f}"
              f" ms, median {statistics.median(late) * 1000:.1f} ms")
        for at, length in meter.stalls:
            print(f"    stall of {length * 1000:.0f} ms, {at:.2f} s after the backup started")
        maxima.append(late[-1])
    line("max event-loop lateness (worst round)", max(maxima), TARGET_STALL,
         f"rounds: {', '.join(f'{m * 1000:.0f}' for m in maxima)} ms")


# -- the stack -------------------------------------------------------------------------------
@contextlib.contextmanager
def made_stack(extra_mb: int) -> Iterator[Path]:
    import docker

    from tests import stackkit

    client = docker.from_env(timeout=120)
    stackkit.ensure_images()
    st = stackkit.create_stack(client)
    try:
        if extra_mb:
            backend = client.containers.get(st.backend_container)
            r = backend.exec_run(["sh", "-c", f"dd if=/dev/urandom of=/data/bench-random.bin "
                                              f"bs=1M count={extra_mb} 2>/dev/null && sync"])
            if r.exit_code != 0:
                raise RuntimeError(f"could not fill the volume: {r.output!r}")
        with tempfile.TemporaryDirectory(prefix="dcb-tui-bench-") as d:
            cfg = st.write_config(Path(d))
            # A few sets in the store, so the real launch has rows to show.
            dcb = Path(sys.executable).parent / "dcb"
            for _ in range(3):
                subprocess.run([str(dcb), "backup", "-q", "--db", "functions_db",
                                "--config", str(cfg)], check=True, capture_output=True,
                               env={k: v for k, v in os.environ.items()
                                    if not k.startswith("DCB_")})
            yield cfg
    finally:
        stackkit.destroy_stack(st)
        client.close()


async def main_async(args: argparse.Namespace, real_cfg: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="dcb-tui-bench-fixed-") as d:
        fixed_cfg = write_config(Path(d), backup_dir=Path(d) / "backups")
        real = load_config(str(real_cfg)) if real_cfg else None
        if "a" in args.phases:
            await bench_launch(fixed_cfg, real, args.runs)
        if "b" in args.phases:
            await bench_table(args.sets, args.runs)
        if "c" in args.phases:
            await bench_stall(real, args.stall_runs, args.diagnose)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, help="dcb.toml of a stack for the real-service "
                   "figures (a backup of everything is made in its backup dir)")
    p.add_argument("--make-stack", action="store_true",
                   help="build the disposable test stack (tests/stackkit.py) and use it")
    p.add_argument("--extra-mb", type=int, default=0,
                   help="with --make-stack: MB of random data added to the functions volume")
    p.add_argument("--sets", type=int, default=10_000, help="sets in the big table (10000)")
    p.add_argument("--diagnose", action="store_true",
                   help="name the event-loop callbacks slower than 50 ms during the backup "
                        "(asyncio debug mode; slows everything a little)")
    p.add_argument("--stall-runs", type=int, default=3,
                   help="backups made for figure c (3); each one is a new set")
    p.add_argument("--phases", default="abc", help="which figures: any of a, b, c (abc)")
    p.add_argument("--runs", type=int, default=5, help="repetitions per figure (5)")
    args = p.parse_args()
    if args.config and args.make_stack:
        p.error("--config and --make-stack exclude each other")
    os.environ.pop("TEXTUAL", None)
    print(f"dcb console benchmark  (python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, terminal {SIZE[0]}x{SIZE[1]}, headless)")
    print("  load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.make_stack:
        with made_stack(args.extra_mb) as cfg:
            print(f"  test stack config: {cfg}"
                  + (f" (+{args.extra_mb} MB random data in the functions volume)"
                     if args.extra_mb else ""))
            asyncio.run(main_async(args, cfg))
    else:
        asyncio.run(main_async(args, args.config))
    print("  load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
