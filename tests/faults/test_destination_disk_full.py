"""A full disk at a replication destination, made for real: the destination's directory is a
small tmpfs (a local directory, and the remote path of an rsync destination on Debian's sshd
on loopback).

- ``tiny`` (256 KiB) is too small for any set; ``small`` (1 MiB) takes the first set and
  fills up in the middle of the second; ``big`` (a plain directory) has room.
- One ``dcb replicate --all``: exit 1, one ``dcb: replication to NAME failed: ... no space
  left on device ...`` line per full destination and no traceback; ``big`` gets every set;
  nothing partial is ever listed, verified or restored ``--from`` a full destination; the
  local sets are untouched; the ledger, the history, ``dcb status`` and ``dcb check`` say
  which destination failed and why.
- Once space is freed, the next round completes and no temporary directory is left; one a
  run killed in the middle of a copy left behind is swept by the next round, even when that
  set is no longer sent.

S3 is not part of it: an S3 server's full disk is its own matter (MinIO answers
``XMinioStorageFull``, AWS has no such state); moto keeps objects in memory and has neither,
and a server that answers 500 is covered by tests/test_replicate_s3.py.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN, Result, run_dcb
from tests.faults import kit
from tests.replkit import make_set, set_ids
from tests.test_backup_faults import tmpfs
from tests.test_replicate_rsync import Sshd, sshd  # noqa: F401 (a fixture)

KIB = 1024


def _sets(backups: Path) -> list[str]:
    """Two sets: the first (about 500 KiB) fits in 1 MiB, the second (800 KiB) then does not."""
    ids = set_ids(2)
    make_set(backups, ids[0], {"db-app.pgdump": os.urandom(300 * KIB),
                               "volume-data.tar.zst": os.urandom(200 * KIB)})
    make_set(backups, ids[1], {"db-app.pgdump": os.urandom(400 * KIB),
                               "volume-data.tar.zst": os.urandom(400 * KIB)})
    return ids


def _digests(backups: Path, ids: list[str]) -> dict[str, str]:
    return {f"{i}/{f.name}": hashlib.sha256(f.read_bytes()).hexdigest()
            for i in ids for f in sorted((backups / i).iterdir())}


def _temps(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def _failure_lines(r: Result) -> dict[str, str]:
    """The ``dcb: replication to NAME failed`` lines, one per destination; no traceback."""
    assert "Traceback" not in r.err, r.err
    lines = [ln for ln in r.err.splitlines() if ln.startswith("dcb:")]
    out = {}
    for ln in lines:
        assert ln.startswith("dcb: replication to "), r.err
        name = ln.removeprefix("dcb: replication to ").split(" ", 1)[0]
        assert name not in out, r.err
        out[name] = ln
    return out


def _listed(cfg: Path, name: str) -> list[str]:
    r = run_dcb("list", "--from", name, "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    return sorted(s["id"] for s in json.loads(r.out) if s["status"] == "complete")


def _refused_from(cfg: Path, name: str, set_id: str) -> None:
    """Neither ``verify --from`` nor ``restore --from`` accepts a copy that is not there."""
    for argv in (["verify", set_id], ["restore", set_id, "--dry-run"]):
        r = run_dcb(*argv, "--from", name, "--config", str(cfg))
        assert r.code == 1 and f"no set {set_id}" in r.err, (argv, r.code, r.err)
        assert "Traceback" not in r.err


def _failing(cfg: Path) -> dict[str, float]:
    """``dcb_replication_failing`` per destination, from ``dcb metrics``."""
    r = run_dcb("metrics", "--config", str(cfg))
    assert r.code == 0, r.err
    return {s.labels["destination"]: s.value for fam in text_string_to_metric_families(r.out)
            if fam.name == "dcb_replication_failing" for s in fam.samples}


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with tmpfs(tmp_path / "tiny", "size=256k,mode=0700") as tiny, \
            tmpfs(tmp_path / "small", "size=1m,mode=0700") as small:
        yield tiny, small


def test_local_destination_disk_full(tmp_path: Path, mounts: tuple[Path, Path]) -> None:
    tiny, small = mounts
    backups, big = tmp_path / "backups", tmp_path / "big"
    ids = _sets(backups)
    before = _digests(backups, ids)
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{backups}"\n'
                   + "".join(f'[replication.{p.name}]\ntype = "local"\npath = "{p}"\n'
                             for p in (tiny, small, big)))

    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert r.code == 1, r.err
    res = {d["destination"]: d for d in json.loads(r.out)["destinations"]}
    failed = _failure_lines(r)
    assert sorted(failed) == ["small", "tiny"], r.err
    for name, line in failed.items():
        assert "no space left on device" in line.lower(), line
        assert res[name]["error"] in line
    assert res["tiny"]["copied"] == [] and res["small"]["copied"] == ids[:1]
    assert res["big"]["copied"] == ids and res["big"]["error"] is None
    # Nothing partial at a full destination, listed or left in a temporary directory.
    assert sorted(p.name for p in tiny.iterdir()) == [] and _listed(cfg, "tiny") == []
    assert sorted(p.name for p in small.iterdir()) == ids[:1]
    assert _listed(cfg, "small") == ids[:1] and _listed(cfg, "big") == ids
    _refused_from(cfg, "small", ids[1])
    _refused_from(cfg, "tiny", ids[0])
    assert run_dcb("verify", ids[0], "--from", "small", "--config", str(cfg)).code == 0
    assert _digests(backups, ids) == before  # the local sets are untouched
    # Recorded: the ledger and the history; shown by `dcb status` and `dcb check`.
    ledger = json.loads((backups / "replication.json").read_text())["destinations"]
    assert sorted(ledger["small"]["sets"]) == ids[:1] and not ledger["tiny"]["sets"]
    assert "no space left" in ledger["small"]["last_error"]["error"].lower()
    history = [json.loads(ln) for ln in (backups / "history.jsonl").read_text().splitlines()]
    failed_runs = {h["destination"] for h in history
                   if h["kind"] == "replicate" and h["status"] == "failed"}
    assert failed_runs == {"small", "tiny"}
    st = run_dcb("status", "--json", "--config", str(cfg))
    repl = {d["name"]: d for d in json.loads(st.out)["replication"]}
    assert repl["small"]["pending"] == 1 and repl["tiny"]["newest_copy"] is None
    assert "no space left" in repl["tiny"]["last_error"].lower()
    assert repl["big"]["last_error"] is None and repl["big"]["pending"] == 0
    ck = run_dcb("check", "--config", str(cfg))
    assert ck.code != 0 and "replication to small failed" in ck.out \
        and "replication to tiny failed" in ck.out and "no space left" in ck.out.lower(), ck.out
    assert _failing(cfg) == {"tiny": 1, "small": 1, "big": 0}

    # Space freed: the next round sends what is missing, and nothing temporary is left.
    subprocess.run(["mount", "-o", "remount,size=4m", str(tiny)], check=True)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    assert _listed(cfg, "tiny") == ids and _listed(cfg, "small") == ids
    assert _temps(tiny) == [] and _temps(small) == []
    ck = run_dcb("check", "--config", str(cfg))
    assert "failed" not in ck.out, ck.out
    assert _failing(cfg) == {"tiny": 0, "small": 0, "big": 0}

    # A run killed in the middle of a copy leaves its temporary directory; the next round
    # sweeps it though that set is gone locally meanwhile (pruned) and not sent again.
    third = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    make_set(backups, third, {"volume-data.tar.zst": os.urandom(1500 * KIB)})
    hold = tmp_path / "hold"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    env["DCB_TEST_HOLD"] = f"replicate-copy:{hold}"
    p = subprocess.Popen([str(BIN / "dcb"), "replicate", third, "--to", "small", "--config",
                          str(cfg)], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not hold.exists():
            assert p.poll() is None and time.monotonic() < deadline, "never reached the copy"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(30)
    assert _temps(small) == [f".incoming-{third}"] and _listed(cfg, "small") == ids
    shutil.rmtree(backups / third)
    r = run_dcb("replicate", "--all", "--config", str(cfg))
    assert r.code == 0, r.err
    assert _temps(small) == [] and _listed(cfg, "small") == ids
    kit.figure("destination disk full", "local: a destination too small for any set and one "
                                        "that fills up mid-set: one 'no space left' line "
                                        "each, exit 1, the other destination complete, 0 "
                                        "partial copies listed, verified or restored, 0 "
                                        "temporary directories left (also after kill -9)")


def test_rsync_destination_disk_full(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    backups, big = tmp_path / "backups", tmp_path / "big"
    ids = _sets(backups)
    before = _digests(backups, ids)
    remote = sshd.remote / tmp_path.name
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{backups}"\n'
                   f'[replication.far]\ntype = "rsync"\nhost = "127.0.0.1"\n'
                   f'user = "{getpass.getuser()}"\nport = {sshd.port}\npath = "{remote}"\n'
                   f'identity_file = "{sshd.identity}"\nknown_hosts = "{sshd.known_hosts}"\n'
                   f'retries = 2\n[replication.big]\ntype = "local"\npath = "{big}"\n')
    with tmpfs(remote, "size=1m,mode=0700"):
        t0 = time.monotonic()
        r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
        took = time.monotonic() - t0
        assert r.code == 1, r.err
        res = {d["destination"]: d for d in json.loads(r.out)["destinations"]}
        failed = _failure_lines(r)
        assert sorted(failed) == ["far"], r.err
        assert "no space left on device at " in failed["far"], failed["far"]
        assert res["far"]["copied"] == ids[:1] and res["big"]["copied"] == ids
        assert took < 30, f"a full disk was retried ({took:.0f}s)"
        assert sorted(p.name for p in remote.iterdir()) == ids[:1]
        assert _listed(cfg, "far") == ids[:1]
        _refused_from(cfg, "far", ids[1])
        assert _digests(backups, ids) == before
        st = run_dcb("status", "--json", "--config", str(cfg))
        far = next(d for d in json.loads(st.out)["replication"] if d["name"] == "far")
        assert far["pending"] == 1 and "no space left" in far["last_error"].lower()

        subprocess.run(["mount", "-o", "remount,size=4m", str(remote)], check=True)
        r = run_dcb("replicate", "--all", "--config", str(cfg))
        assert r.code == 0, r.err
        assert _listed(cfg, "far") == ids and _temps(remote) == []
        assert run_dcb("verify", ids[1], "--from", "far", "--config", str(cfg)).code == 0
    kit.figure("destination disk full", "rsync: the remote path filling up mid-set: one "
                                        "'no space left' line, not retried, 0 partial "
                                        "copies listed, none left after space is freed")
