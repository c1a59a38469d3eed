"""Replication to local and command destinations, retention per destination, lag, --watch,
--from (list, verify), untrusted copies. No Docker needed: sets are made by tests/replkit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dcb.services.config import load_config
from dcb.services.replicate import destination_lag
from tests.conftest import BIN, run_dcb
from tests.replkit import make_set, set_ids


def write_config(tmp: Path, extra: str) -> Path:
    cfg = tmp / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{tmp / "backups"}"\n{extra}')
    return cfg


@pytest.fixture
def local_setup(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    ids = set_ids(4)
    for i in ids:
        make_set(tmp_path / "backups", i)
    nas = tmp_path / "nas"
    cfg = write_config(tmp_path, f'[replication.nas]\ntype = "local"\npath = "{nas}"\n'
                                 "keep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n"
                                 "keep_monthly = 0\n")
    return cfg, nas, ids


def test_local_replicate_skip_retention_lag(local_setup: tuple[Path, Path, list[str]]):
    cfg, nas, ids = local_setup
    c = load_config(str(cfg))
    before = destination_lag(c, "nas")
    assert before.pending == 4 and before.lag_seconds and before.lag_seconds > 3 * 86400

    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    res = json.loads(r.out)["destinations"][0]
    # Per-destination retention (keep_last = 2): only what it keeps is sent; local sets stay.
    assert res["copied"] == ids[2:] and res["error"] is None
    assert sorted(p.name for p in nas.iterdir()) == ids[2:]
    assert len([p for p in (cfg.parent / "backups").iterdir() if p.name in ids]) == 4
    for i in ids[2:]:
        for f in (cfg.parent / "backups" / i).iterdir():
            assert (nas / i / f.name).read_bytes() == f.read_bytes()
    after = destination_lag(load_config(str(cfg)), "nas")
    assert after.lag_seconds == 0 and after.pending == 0 and after.newest_copy == ids[-1]

    # Nothing new: skipped, nothing copied or removed.
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    res = json.loads(r.out)["destinations"][0]
    assert r.code == 0 and res["copied"] == [] and res["pruned"] == []
    # An older copy that retention no longer keeps is removed from the destination.
    make_set(nas, set_ids(1, end=datetime.now(UTC) - timedelta(days=30))[0])
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert len(json.loads(r.out)["destinations"][0]["pruned"]) == 1
    assert sorted(p.name for p in nas.iterdir()) == ids[2:]

    r = run_dcb("list", "--from", "nas", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    assert [s["id"] for s in json.loads(r.out)] == ids[2:][::-1]


def test_verify_from_and_damaged_copy(local_setup: tuple[Path, Path, list[str]]):
    cfg, nas, ids = local_setup
    assert run_dcb("replicate", ids[-1], "--config", str(cfg)).code == 0
    r = run_dcb("verify", ids[-1], "--from", "nas", "--config", str(cfg))
    assert r.code == 0, r.err
    assert f"{ids[-1]}: ok" in r.out
    # One flipped byte in the copy: the fetch refuses it, naming the file; nothing kept.
    f = nas / ids[-1] / "volume-data.tar.zst"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    r = run_dcb("verify", ids[-1], "--from", "nas", "--config", str(cfg))
    assert r.code == 1
    assert "volume-data.tar.zst does not match its manifest" in r.err
    assert "Traceback" not in r.err
    assert not any((cfg.parent / "backups" / ".fetched" / "nas").iterdir())
    r = run_dcb("restore", ids[-1], "--from", "nas", "--yes", "--config", str(cfg))
    assert r.code == 1 and "does not match its manifest" in r.err


def test_a_hostile_copy_is_refused(local_setup: tuple[Path, Path, list[str]]):
    cfg, nas, ids = local_setup
    evil = make_set(nas, ids[0])
    m = json.loads((evil / "manifest.json").read_text())
    m["artifacts"][0]["file"] = "../../escape"
    (evil / "manifest.json").write_text(json.dumps(m))
    r = run_dcb("verify", ids[0], "--from", "nas", "--config", str(cfg))
    assert r.code == 1 and "'../../escape' is not a plain file name" in r.err, r.err
    assert not (cfg.parent / "escape").exists()
    r = run_dcb("list", "--from", "nas", "--json", "--config", str(cfg))
    assert json.loads(r.out)[0]["status"] == "incomplete"


def test_unknown_destination_and_missing_choice(local_setup: tuple[Path, Path, list[str]]):
    cfg, _nas, _ids = local_setup
    r = run_dcb("replicate", "--all", "--to", "nope", "--config", str(cfg))
    assert r.code == 2 and "no destination 'nope'" in r.err
    r = run_dcb("replicate", "--config", str(cfg))
    assert r.code == 2 and "an ID, --all or --watch" in r.err


CP_SCRIPT = 'mkdir -p "$2" && cp -r "$1" "$2/.tmp-$3" && mv "$2/.tmp-$3" "$2/$3"'


def test_command_destination_round_trip_and_faults(tmp_path: Path):
    ids = set_ids(2)
    for i in ids:
        make_set(tmp_path / "backups", i)
    remote = tmp_path / "remote"
    remote.mkdir()
    secret = "sUpErSeCrEt-" + os.urandom(4).hex()
    cfg = write_config(tmp_path, f"""
[replication.cmd]
type = "command"
command = ["sh", "-c", {json.dumps(CP_SCRIPT)}, "x", "{{set_dir}}", "{remote}", "{{set_id}}"]
list_command = ["ls", "{remote}"]
fetch_command = ["sh", "-c", "cp \\"$1\\"/* \\"$2\\"/", "x", "{remote}/{{set_id}}", "{{set_dir}}"]
delete_command = ["rm", "-rf", "{remote}/{{set_id}}"]
[replication.leaky]
type = "command"
command = ["sh", "-c", "echo token is $MY_API_TOKEN >&2; exit 3"]
[replication.hang]
type = "command"
command = ["sh", "-c", "sleep 97.25 & sleep 97.25; true"]
timeout = 1
""")
    env = {"MY_API_TOKEN": secret}
    t0 = time.monotonic()
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg), env=env)
    assert r.code == 1
    res = {d["destination"]: d for d in json.loads(r.out)["destinations"]}
    # One failing destination leaves the others going.
    assert res["cmd"]["copied"] == ids and res["cmd"]["error"] is None
    assert sorted(p.name for p in remote.iterdir()) == ids
    assert "exited 3" in res["leaky"]["error"] and "[redacted]" in res["leaky"]["error"]
    assert "timed out after 1s" in res["hang"]["error"]
    assert time.monotonic() - t0 < 60
    # The secret never shows, anywhere.
    everything = r.out + r.err + "".join(
        p.read_text(errors="replace") for p in (tmp_path / "backups").glob("*.json*"))
    assert secret not in everything
    # The timeout killed the whole process group: no sleeper left.
    time.sleep(0.3)
    ps = subprocess.run(["pgrep", "-f", "sleep 97.25"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""

    r = run_dcb("verify", ids[-1], "--from", "cmd", "--config", str(cfg))
    assert r.code == 0, r.err
    r = run_dcb("list", "--from", "cmd", "--json", "--config", str(cfg))
    assert [s["id"] for s in json.loads(r.out)] == ids[::-1]


def test_watch_picks_up_a_new_set(tmp_path: Path):
    ids = set_ids(2)
    make_set(tmp_path / "backups", ids[0])
    nas = tmp_path / "nas"
    cfg = write_config(tmp_path, f'[replication.nas]\ntype = "local"\npath = "{nas}"\n')
    exe = BIN / "dcb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    p = subprocess.Popen([str(exe) if exe.exists() else sys.executable, "replicate", "--watch",
                          "--interval", "0.3", "--config", str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (nas / ids[0] / "manifest.json").exists())
        make_set(tmp_path / "backups", ids[1])
        _wait(lambda: (nas / ids[1] / "manifest.json").exists())
    finally:
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err


def _wait(cond, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize(("table", "expected"), [
    ('[replication.x]\ntype = "ftp"\n', "[replication.x] type must be one of"),
    ('[replication.x]\ntype = "local"\n', "[replication.x] path is required"),
    ('[replication.x]\ntype = "local"\npath = "/a"\nbukcet = "b"\n',
     "unknown key [replication.x] bukcet"),
    ('[replication.x]\ntype = "s3"\nbucket = 3\n', "[replication.x] bucket: expected a string"),
    ('[replication.x]\ntype = "rsync"\nhost = "h"\npath = "/p"\n',
     "[replication.x] known_hosts is required"),
    ('[replication.x]\ntype = "s3"\nbucket = "b"\nrequest_checksum_calculation = "never"\n',
     "request_checksum_calculation must be"),
])
def test_destination_tables_are_strict(tmp_path: Path, table: str, expected: str):
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(table)
    r = run_dcb("config", "--config", str(cfg))
    assert r.code == 2 and expected in r.err and str(cfg) in r.err


def test_destination_retention_falls_back_to_the_global_policy(tmp_path: Path):
    cfg = write_config(tmp_path, '[retention]\nkeep_daily = 9\n[replication.n]\ntype = "local"\n'
                                 'path = "n"\nkeep_weekly = 1\n')
    c = load_config(str(cfg))
    pol = c.replication.destinations["n"].retention(c.retention)
    assert (pol.keep_daily, pol.keep_weekly, pol.keep_monthly) == (9, 1, 12)
    r = run_dcb("config", "--json", "--config", str(cfg))
    settings = json.loads(r.out)["settings"]
    assert settings["replication.n.keep_weekly"]["value"] == 1
    assert settings["replication.n.keep_weekly"]["source"].startswith("file")


def test_scheduled_replication_and_its_lag_in_check_and_metrics(tmp_path: Path):
    """The automation's seams, wired: a `replicate` job copies, `dcb check` and `dcb metrics`
    report each destination's real lag."""
    from prometheus_client.parser import text_string_to_metric_families

    from dcb.services.ops.check import run_check

    ids = set_ids(2, end=datetime.now(UTC) - timedelta(hours=100))
    for i in ids:
        make_set(tmp_path / "backups", i)
    nas = tmp_path / "nas"
    cfg = write_config(tmp_path, f'[replication.nas]\ntype = "local"\npath = "{nas}"\n'
                                 '[schedule.offsite]\nrun = "replicate"\ncron = "0 * * * *"\n')

    def lag_finding() -> dict[str, object]:
        data = run_check(load_config(str(cfg), environ={})).to_json()
        (f,) = [f for f in data["findings"] if f["name"] == "replication"]
        return f

    assert lag_finding()["status"] == "WARNING"  # nothing copied yet
    r = run_dcb("schedule", "--run", "offsite", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    assert sorted(p.name for p in nas.iterdir()) == ids
    assert lag_finding()["status"] == "OK"
    # A newer local set not yet copied: the lag is its age, in check and in the metrics.
    newer = (datetime.now(UTC) - timedelta(hours=60)).strftime("%Y%m%dT%H%M%SZ")
    make_set(tmp_path / "backups", newer)
    r = run_dcb("metrics", "--config", str(cfg))
    assert r.code == 0, r.err
    lags = {s.labels["destination"]: s.value
            for fam in text_string_to_metric_families(r.out)
            if fam.name == "dcb_replication_lag_seconds" for s in fam.samples}
    assert 59 * 3600 < lags["nas"] < 61 * 3600, lags
    f = lag_finding()
    assert f["status"] == "WARNING" and "lags" in str(f["message"]), f
