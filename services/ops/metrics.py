"""Prometheus metrics from the store, the history and the daemon's heartbeat.

A ``prometheus_client`` collector reads the state when scraped (nothing is kept in memory);
``exposition`` renders it in the text format, ``write_textfile`` writes it atomically (temp file
and rename, prometheus_client's ``write_to_textfile``) for node_exporter's textfile collector.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dcb.services.backup import read_history
from dcb.services.config import Config
from dcb.services.disk import disk_usage
from dcb.services.ops.check import replication_errors, replication_lags, run_check
from dcb.services.ops.heartbeat import read_state
from dcb.services.store import BackupStore

KINDS = ("backup", "verify", "prune", "drill", "restore")


def _when(h: dict[str, Any]) -> datetime | None:
    """When a history entry's run finished (a backup records its start and duration)."""
    for key in ("at", "started_at"):
        v = h.get(key)
        if isinstance(v, str):
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                continue
            t = t if t.tzinfo else t.replace(tzinfo=UTC)
            if key == "started_at" and isinstance(h.get("duration_seconds"), int | float):
                t += timedelta(seconds=float(h["duration_seconds"]))
            return t
    return None


def succeeded(h: dict[str, Any]) -> bool | None:
    """Whether a history entry is a success (None: not a run that can fail)."""
    kind = h.get("kind")
    if kind == "backup":
        return h.get("status") == "complete"
    if kind in ("verify", "drill", "restore"):
        return bool(h.get("ok"))
    if kind == "replicate":
        return h.get("status") == "complete"
    if kind == "prune":
        return True
    return None


def _duration(h: dict[str, Any]) -> float | None:
    for key in ("duration_seconds", "rto_seconds", "seconds"):
        v = h.get(key)
        if isinstance(v, int | float):
            return float(v)
    return None


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                continue
    return total


class DcbCollector(Collector):
    def __init__(self, cfg: Config, now: datetime | None = None) -> None:
        self.cfg = cfg
        self.now = now

    def collect(self) -> Iterator[Metric]:
        cfg = self.cfg
        now = self.now or datetime.now(UTC)
        root = cfg.backup_dir
        history = read_history(root)
        sets = BackupStore.for_config(cfg).list_sets()
        state = read_state(root)

        last_ok = GaugeMetricFamily("dcb_last_success_timestamp_seconds",
                                    "When the last successful run of each kind finished",
                                    labels=["kind"])
        last_dur = GaugeMetricFamily("dcb_last_duration_seconds",
                                     "Duration of the last run of each kind (drill: its RTO)",
                                     labels=["kind"])
        failures = CounterMetricFamily("dcb_failures", "Failed runs in the history, by kind",
                                       labels=["kind"])
        consecutive = GaugeMetricFamily("dcb_consecutive_failures",
                                        "Failed runs since the last success, by kind",
                                        labels=["kind"])
        for kind in KINDS:
            runs = [h for h in history if h.get("kind") == kind]
            oks = [t for h in runs if succeeded(h) and (t := _when(h)) is not None]
            if oks:
                last_ok.add_metric([kind], max(oks).timestamp())
            if runs and (took := _duration(runs[-1])) is not None:
                last_dur.add_metric([kind], took)
            failures.add_metric([kind], sum(1 for h in runs if succeeded(h) is False))
            n = 0
            for h in reversed(runs):
                if succeeded(h) is False:
                    n += 1
                else:
                    break
            consecutive.add_metric([kind], n)
        yield from (last_ok, last_dur, failures, consecutive)

        size = GaugeMetricFamily("dcb_last_backup_size_bytes",
                                 "Size of the newest complete backup set")
        complete = [s for s in sets if s.status == "complete"]
        if complete:
            size.add_metric([], complete[0].size_bytes)
        yield size

        count = GaugeMetricFamily("dcb_sets", "Backup sets in the store, by status",
                                  labels=["status"])
        for status in ("complete", "failed", "incomplete", "legacy"):
            count.add_metric([status], sum(1 for s in sets if s.status == status))
        yield count
        undo = GaugeMetricFamily("dcb_undo_points",
                                 "Restores' safety snapshots held (ways back from a restore)")
        undo.add_metric([], sum(1 for s in complete if s.purpose == "safety"))
        yield undo

        store = GaugeMetricFamily("dcb_backup_dir_bytes", "Bytes of files in the backup dir")
        store.add_metric([], tree_bytes(root) if root.is_dir() else 0)
        yield store
        try:
            d = disk_usage(root)
        except OSError:
            d = None
        if d is not None:
            free = GaugeMetricFamily("dcb_backup_disk_free_bytes",
                                     "Free bytes on the backup dir's filesystem")
            free.add_metric([], d.free_bytes)
            total = GaugeMetricFamily("dcb_backup_disk_size_bytes",
                                      "Size of the backup dir's filesystem")
            total.add_metric([], d.total_bytes)
            yield free
            yield total

        lag = GaugeMetricFamily("dcb_replication_lag_seconds",
                                "Age of each destination's newest copy (-1: none yet)",
                                labels=["destination"])
        failing = GaugeMetricFamily("dcb_replication_failing",
                                    "1 when the last round to a destination failed (a full "
                                    "disk, unreachable...)", labels=["destination"])
        errors = replication_errors(cfg)
        for name, seconds in replication_lags(cfg, now):
            lag.add_metric([name], -1 if seconds is None else seconds)
            failing.add_metric([name], 1 if name in errors else 0)
        yield lag
        yield failing

        up = GaugeMetricFamily("dcb_schedule_up",
                               "1 when the schedule daemon's heartbeat is fresh")
        stale = timedelta(minutes=cfg.check.heartbeat_stale_minutes)
        up.add_metric([], 1 if state is not None and state.alive(now, stale) else 0)
        yield up
        if state is not None:
            beat = GaugeMetricFamily("dcb_schedule_heartbeat_timestamp_seconds",
                                     "The daemon's last heartbeat")
            if (t := state.updated()) is not None:
                beat.add_metric([], t.timestamp())
            yield beat
            job_fail = CounterMetricFamily("dcb_job_failures", "Failed runs of each job",
                                           labels=["job"])
            job_runs = CounterMetricFamily("dcb_job_runs", "Runs of each job", labels=["job"])
            job_consecutive = GaugeMetricFamily("dcb_job_consecutive_failures",
                                                "Failed runs of each job since its last "
                                                "success", labels=["job"])
            job_next = GaugeMetricFamily("dcb_job_next_run_timestamp_seconds",
                                         "Each job's next scheduled run", labels=["job"])
            for j in state.jobs.values():
                job_fail.add_metric([j.name], j.failures)
                job_runs.add_metric([j.name], j.runs)
                job_consecutive.add_metric([j.name], j.consecutive_failures)
                if j.next_run:
                    with contextlib.suppress(ValueError):
                        job_next.add_metric([j.name],
                                            datetime.fromisoformat(j.next_run).timestamp())
            yield from (job_fail, job_runs, job_consecutive, job_next)

        check = GaugeMetricFamily("dcb_check_status",
                                  "dcb check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
        check.add_metric([], run_check(cfg, now).status)
        yield check


def registry(cfg: Config, now: datetime | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DcbCollector(cfg, now))
    return reg


def exposition(cfg: Config, now: datetime | None = None) -> str:
    """The metrics in Prometheus' text format."""
    return generate_latest(registry(cfg, now)).decode()


def samples(cfg: Config, now: datetime | None = None) -> list[dict[str, Any]]:
    """The same samples as :func:`exposition`, as plain data (``dcb metrics --json``)."""
    return [{"name": smp.name, "labels": dict(smp.labels), "value": smp.value}
            for fam in registry(cfg, now).collect() for smp in fam.samples]


def write_textfile(cfg: Config, path: str | None = None) -> Path | None:
    """Write the metrics to ``[metrics] textfile`` (or ``path``) atomically; None when unset."""
    target = path or cfg.metrics.textfile
    if not target:
        return None
    p = cfg.resolve_path(target)
    write_to_textfile(str(p), registry(cfg))
    return p
