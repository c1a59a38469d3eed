"""``dcb check``: one condition at a time on a synthetic store, with the exit code Nagios reads
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and the one status line; ``dcb metrics`` parsed with
prometheus_client's own parser."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcb.services.config import load_config
from dcb.services.ops.check import CRITICAL, OK, WARNING, run_check
from dcb.services.ops.heartbeat import STATE_FILE
from tests.automation_fixtures import MiB, Run, steady_runs, write_runs
from tests.conftest import run_dcb


def setup(tmp_path: Path, runs: list[Run], toml: str = "", others: tuple[Any, ...] = ()
          ) -> Path:
    root = tmp_path / "backups"
    write_runs(root, datetime.now(UTC), runs, others)
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{root}"\n{toml}')
    return cfg


def check(cfg: Path) -> tuple[int, dict[str, Any], str]:
    """``dcb check`` as Nagios runs it (exit code, one line), and the findings as JSON."""
    line = run_dcb("check", "--config", str(cfg))
    assert line.err == "" and len(line.out.splitlines()) == 1
    data = run_check(load_config(str(cfg), environ={})).to_json()
    assert data["code"] == line.code
    return line.code, data, line.out.strip()


def finding(data: dict[str, Any], name: str) -> dict[str, Any]:
    (f,) = [f for f in data["findings"] if f["name"] == name]
    return f


def test_healthy_store_is_ok(tmp_path: Path):
    code, data, line = check(setup(tmp_path, steady_runs()))
    assert code == 0 and data["status"] == "OK"
    assert re.match(r"DCB OK - newest backup 60 min ago \| backup_age_hours=1(\.0\d)?;;24 ",
                    line), line
    assert {f["name"] for f in data["findings"]} >= {"rpo", "failures", "free_space",
                                                     "duration", "size"}


def test_rpo_missed_and_no_backup_are_critical(tmp_path: Path):
    code, data, line = check(setup(tmp_path, steady_runs(start_hours=30)))
    assert code == 2 and finding(data, "rpo")["status"] == "CRITICAL"
    assert "newest complete backup is 30.0h old" in line and "(RPO 24h)" in line
    empty = tmp_path / "empty"
    code, data, line = check(setup(empty, []))
    assert code == 2 and "no complete backup in" in line


def test_consecutive_failures_warn_then_go_critical(tmp_path: Path):
    one = [*steady_runs(start_hours=2), Run(1, status="failed", error="pg_dump died")]
    code, data, line = check(setup(tmp_path / "a", one))
    assert code == 1 and "1 failure of backups: pg_dump died" in line
    three = steady_runs(start_hours=4) + [Run(h, status="failed") for h in (3, 2, 1)]
    code, data, line = check(setup(tmp_path / "b", three))
    assert code == 2 and finding(data, "failures")["message"].startswith(
        "3 consecutive failures of backups")
    recovered = [*three, Run(0.5)]
    code, _, _ = check(setup(tmp_path / "c", recovered))
    assert code == 0


def test_a_scheduled_jobs_failures_count_too(tmp_path: Path):
    """A job that never reaches the history (e.g. the store was locked) still counts."""
    cfg = setup(tmp_path, steady_runs(),
                '[schedule.nightly]\nrun = "backup"\ncron = "0 2 * * *"\n')
    state = {"pid": 1, "host": "h", "started_at": datetime.now(UTC).isoformat(),
             "updated_at": datetime.now(UTC).isoformat(), "tz": "UTC",
             "jobs": {"nightly": {"name": "nightly", "run": "backup", "cron": "0 2 * * *",
                                  "consecutive_failures": 2, "failures": 2,
                                  "last_error": "backup dir is locked by another run"}}}
    (tmp_path / "backups" / STATE_FILE).write_text(json.dumps(state))
    code, _, line = check(cfg)
    assert code == 1 and "2 consecutive failures of job nightly: backup dir is locked" in line


def test_heartbeat_missing_stale_stopped_or_fresh(tmp_path: Path):
    cfg = setup(tmp_path, steady_runs(),
                '[schedule.nightly]\nrun = "backup"\ncron = "0 2 * * *"\n'
                "[check]\nheartbeat_stale_minutes = 5\n")
    code, _, line = check(cfg)
    assert code == 2 and "schedule daemon not running (no heartbeat" in line
    state_file = tmp_path / "backups" / STATE_FILE
    now = datetime.now(UTC).isoformat()
    state = {"pid": 1, "host": "h", "started_at": now, "tz": "UTC", "jobs": {}}
    state_file.write_text(json.dumps({**state, "updated_at":
                                      (datetime.now(UTC) - timedelta(minutes=12)).isoformat()}))
    state_file.chmod(0o600)  # as the daemon writes it (a store open to others is a finding)
    code, _, line = check(cfg)
    assert code == 2 and "heartbeat is 12 min old" in line and "stale after 5 min" in line
    state_file.write_text(json.dumps({**state, "updated_at": now, "stopped": True}))
    code, _, line = check(cfg)
    assert code == 2 and "schedule daemon stopped" in line
    state_file.write_text(json.dumps({**state, "updated_at": datetime.now(UTC).isoformat()}))
    code, data, _ = check(cfg)
    assert code == 0 and finding(data, "heartbeat")["status"] == "OK"


def test_free_space_thresholds(tmp_path: Path):
    free = shutil.disk_usage(tmp_path).free * 100 / shutil.disk_usage(tmp_path).total
    if free >= 89:
        pytest.skip(f"{free:.0f}% free: no threshold can be above it")
    warn = setup(tmp_path / "w", steady_runs())
    warn.write_text(warn.read_text() + "min_free_percent = 90\n")  # [storage] is last
    code, _, line = check(warn)
    assert code == 1 and "free on the backup disk" in line and "below 90%" in line
    crit = setup(tmp_path / "c", steady_runs(), "[check]\nmin_free_percent = 90\n")
    code, _, line = check(crit)
    assert code == 2 and "below 90%" in line


def test_abnormal_duration_and_size_against_the_median_of_the_last_ten(tmp_path: Path):
    slow = [*steady_runs(start_hours=2), Run(1, seconds=200)]
    code, data, line = check(setup(tmp_path / "slow", slow))
    assert code == 1 and finding(data, "duration")["status"] == "WARNING"
    assert "last backup took 3 minutes and 20 seconds, 3.3x the median 1m" in line.replace(
        "1 minute", "1m")
    big = [*steady_runs(start_hours=2), Run(1, size=350 * MiB)]
    code, data, line = check(setup(tmp_path / "big", big))
    assert code == 1 and "x the median" in finding(data, "size")["message"]
    small = [*steady_runs(start_hours=2), Run(1, size=20 * MiB)]
    code, data, _ = check(setup(tmp_path / "small", small))
    assert code == 1 and finding(data, "size")["status"] == "WARNING"
    # A databases-only run is compared with databases-only runs, not the full ones.
    db_only = [*steady_runs(start_hours=2),
               Run(1, size=5 * MiB, seconds=5, artifacts=(("database", "dart_cloud"),))]
    code, data, _ = check(setup(tmp_path / "scope", db_only))
    assert code == 0 and not [f for f in data["findings"] if f["name"] in ("size", "duration")]
    few = [Run(3), Run(2), Run(1, seconds=600)]  # two earlier runs: no baseline yet
    code, _, _ = check(setup(tmp_path / "few", few))
    assert code == 0


def test_replication_lag_over_threshold_warns(tmp_path: Path):
    cfg = load_config(str(setup(tmp_path, steady_runs(), "[check]\n"
                                "replication_lag_hours = 24\n")), environ={})
    assert run_check(cfg, lags=[("offsite", 3600.0)]).status == OK
    late = run_check(cfg, lags=[("offsite", 3600.0), ("s3", 30 * 3600.0)])
    assert late.status == WARNING and "replication to s3 lags 30.0h (limit 24h)" in late.summary()
    never = run_check(cfg, lags=[("s3", None)])
    assert never.status == WARNING and "nothing replicated to s3 yet" in never.summary()
    assert run_check(cfg).status == OK  # no destinations configured: no lag findings


def test_unreadable_store_is_unknown(tmp_path: Path):
    cfg = setup(tmp_path, steady_runs())
    history = tmp_path / "backups" / "history.jsonl"
    history.unlink()
    history.mkdir()
    code, _data, line = check(cfg)
    assert code == 3 and line.startswith("DCB UNKNOWN - cannot read the backup dir")


def test_worst_finding_wins(tmp_path: Path):
    runs = [*steady_runs(start_hours=30), Run(29, status="failed")]
    cfg = load_config(str(setup(tmp_path, runs)), environ={})
    report = run_check(cfg)
    assert [f.status for f in report.alerts] == [CRITICAL, WARNING]
    assert report.status == CRITICAL


def test_metrics_parse_with_prometheus_client(tmp_path: Path):
    now = datetime.now(UTC)
    others = ({"kind": "verify", "id": "x", "ok": False, "deep": True,
               "at": (now - timedelta(hours=3)).isoformat()},
              {"kind": "drill", "id": "d", "set_id": "x", "ok": True, "rto_seconds": 42.5,
               "at": (now - timedelta(hours=2)).isoformat()})
    runs = [*steady_runs(3, start_hours=4), Run(3.5, status="failed"),
            Run(0.5, purpose="safety")]
    cfg = setup(tmp_path, runs, others=others)
    r = run_dcb("metrics", "--config", str(cfg))
    assert r.code == 0, r.err
    fams = {f.name: f for f in text_string_to_metric_families(r.out)}

    def value(name: str, **labels: str) -> float:
        (s,) = [s for s in fams[name].samples if s.labels == labels
                and not s.name.endswith("_created")]
        return float(s.value)

    newest_ok = now - timedelta(hours=0.5) + timedelta(seconds=60)
    assert abs(value("dcb_last_success_timestamp_seconds", kind="backup")
               - newest_ok.timestamp()) < 2
    assert value("dcb_last_duration_seconds", kind="drill") == 42.5
    assert value("dcb_failures", kind="backup") == 1
    assert value("dcb_failures", kind="verify") == 1
    assert value("dcb_consecutive_failures", kind="backup") == 0
    assert fams["dcb_failures"].type == "counter"
    assert value("dcb_last_backup_size_bytes") == 100 * MiB
    assert value("dcb_sets", status="failed") == 1
    assert value("dcb_undo_points") == 1
    assert value("dcb_backup_dir_bytes") > 0
    assert 0 < value("dcb_backup_disk_free_bytes") < value("dcb_backup_disk_size_bytes")
    assert value("dcb_schedule_up") == 0
    assert value("dcb_check_status") == 0
    assert "dcb_replication_lag_seconds" in fams  # a sample per configured destination

    out = tmp_path / "textfile" / "dcb.prom"
    out.parent.mkdir()
    r = run_dcb("metrics", "--textfile", str(out), "--config", str(cfg))
    assert r.code == 0 and out.is_file()
    assert {f.name for f in text_string_to_metric_families(out.read_text())} == set(fams)
    # --json: the same samples for scripts.
    r = run_dcb("metrics", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    js = {(x["name"], tuple(sorted(x["labels"].items()))): x["value"] for x in json.loads(r.out)}
    assert js[("dcb_last_duration_seconds", (("kind", "drill"),))] == 42.5
    assert js[("dcb_sets", (("status", "failed"),))] == 1
    assert [p.name for p in out.parent.iterdir()] == ["dcb.prom"]  # no temp file left
