"""Backups on a read-only mount (the disk of a dead host, an NFS snapshot): ``list``,
``verify``, ``restore`` and ``drill`` work, keeping their lock, history and incident logs in
a state directory of their own; the mount is never written.

The store is a real read-only bind mount of a backup dir (tests run as root).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.stackkit import TestStack
from tests.test_backup_faults import ensure_running, error_line, tree


@pytest.fixture
def ro_store(stack: TestStack, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A full backup of the stack, then its backup dir bind-mounted read-only at ``ro``."""
    src = stack.write_config(tmp_path / "host")
    r = run_dcb("backup", "-q", "--config", str(src))
    assert r.code == 0, r.err
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(tmp_path / "host" / "backups"), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        yield ro, r.out.strip()
    finally:
        if subprocess.run(["umount", str(ro)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        ensure_running(stack)


def test_list_verify_restore_and_drill_from_a_read_only_store(
        stack: TestStack, tmp_path: Path, ro_store: tuple[Path, str]) -> None:
    """The README's runbook "Backups only on a read-only disk", step by step."""
    ro, set_id = ro_store
    state_home = tmp_path / "xdg-state"
    env = {"XDG_STATE_HOME": str(state_home), "DCB_STORAGE_BACKUP_DIR": str(ro)}
    cfg = stack.write_config(tmp_path / "rescue")  # its own backup_dir is overridden
    before = tree(ro)
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")  # really read-only

    # list: the set, and the dead host's own history still counts.
    r = run_dcb("list", "--json", "--config", str(cfg), env=env)
    assert r.code == 0, r.err
    assert [(s["id"], s["status"]) for s in json.loads(r.out)] == [(set_id, "complete")]

    # verify --deep: recorded in the state dir, shown by list.
    r = run_dcb("verify", "--deep", set_id, "--config", str(cfg), env=env)
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    (state,) = (state_home / "dcb" / "stores").iterdir()
    r = run_dcb("list", "--json", "--config", str(cfg), env=env)
    assert json.loads(r.out)[0]["verified"]["ok"] is True
    r = run_dcb("history", "--json", "--config", str(cfg), env=env)
    kinds = [h["kind"] for h in json.loads(r.out)]
    assert kinds == ["backup", "verify"], kinds  # the host's backup, then our verify

    # restore a database and a volume, after damaging both.
    before_db = stack.table_digest("dart_cloud")
    before_vol = stack.volume_listing(stack.functions_volume)
    stack.psql("dart_cloud", "DELETE FROM invoices WHERE no < 100")
    stack.client.containers.get(stack.backend_container).exec_run(
        ["sh", "-c", "rm -rf /data/functions && echo stray > /data/stray"])
    r = run_dcb("restore", set_id, "--db", "dart_cloud", "--volume", stack.functions_volume,
                "--yes", "--no-safety-backup", "--json", "--config", str(cfg), env=env)
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert report["ok"] is True
    assert stack.table_digest("dart_cloud") == before_db
    assert stack.volume_listing(stack.functions_volume) == before_vol
    rid = report["restore_id"]
    assert (state / "restores" / f"{rid}.json").is_file()
    r = run_dcb("history", "--restore", rid, "--config", str(cfg), env=env)
    assert r.code == 0 and f"Restore {rid}" in r.out, r.err
    assert (state / ".lock").exists()

    # An undo point needs no write to the mount: the replaced database is kept renamed, its
    # record goes to the state dir; releasing it ends its window there too.
    stack.psql("dart_cloud", "DELETE FROM invoices WHERE no < 50")
    r = run_dcb("restore", set_id, "--db", "dart_cloud", "--yes", "--json", "--config",
                str(cfg), env=env)
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert report["undo_point"] is True and report["safety_set_id"] is None
    assert stack.table_digest("dart_cloud") == before_db
    assert (state / "undo" / f"{report['restore_id']}.json").is_file()
    r = run_dcb("undo", "--release", report["restore_id"], "--yes", "--config", str(cfg),
                env=env)
    assert r.code == 0, r.err
    r = run_dcb("history", "--json", "--config", str(cfg), env=env)
    assert [h["kind"] for h in json.loads(r.out)][-1] == "undo-release"

    # Where nothing can be moved aside (--delta keeps the files in place), the way back would
    # be a safety snapshot, which cannot be stored on the mount: refused in one line before
    # anything changed.
    stack.client.containers.get(stack.backend_container).exec_run(
        ["sh", "-c", "echo stray > /data/stray2"])
    r = run_dcb("restore", set_id, "--volume", stack.functions_volume, "--delta", "--yes",
                "--config", str(cfg), env=env)
    assert r.code == 1
    assert "no safety snapshot possible" in r.err and "Read-only file system" in r.err
    assert "--no-safety-backup" in r.err and "Traceback" not in r.err
    assert "stray2" in stack.volume_listing(stack.functions_volume)
    stack.client.containers.get(stack.backend_container).exec_run(["rm", "/data/stray2"])

    # drill
    r = run_dcb("drill", set_id, "--json", "--config", str(cfg), env=env, timeout=900)
    assert r.code == 0, r.err + r.out
    assert json.loads(r.out)["ok"] is True
    r = run_dcb("history", "--json", "--config", str(cfg), env=env)
    assert [h["kind"] for h in json.loads(r.out)][-1] == "drill"

    assert tree(ro) == before, "the read-only store was written"


def test_state_dir_setting_and_an_unwritable_one(stack: TestStack, tmp_path: Path,
                                                 ro_store: tuple[Path, str]) -> None:
    """``[storage] state_dir`` names the place; one that cannot be written is one line."""
    ro, set_id = ro_store
    chosen = tmp_path / "my-state"
    cfg = stack.write_config(tmp_path / "a", storage={"backup_dir": str(ro),
                                                      "state_dir": str(chosen)})
    r = run_dcb("verify", set_id, "--config", str(cfg))
    assert r.code == 0, r.err
    assert "verify" in (chosen / "history.jsonl").read_text()

    cfg = stack.write_config(tmp_path / "b", storage={"backup_dir": str(ro),
                                                      "state_dir": str(ro / "state")})
    r = run_dcb("verify", set_id, "--config", str(cfg))
    assert r.code == 1
    line = error_line(r)
    assert f"state dir {ro / 'state'} is not writable" in line, line
