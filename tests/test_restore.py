"""``dcb restore`` against the real test stack: round trip, selective, refusals, undo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import run_dcb
from tests.stackkit import TestStack, release_undo_points


def backup(stack: TestStack, directory: Path, *args: str, **sections: Any) -> tuple[Path, str]:
    cfg = stack.write_config(directory, **sections)
    r = run_dcb("backup", "--config", str(cfg), "-q", *args)
    assert r.code == 0, r.err
    return cfg, r.out.strip()


def started_at(stack: TestStack, name: str) -> str:
    return str(stack.client.containers.get(name).attrs["State"]["StartedAt"])


def state(stack: TestStack) -> dict[str, Any]:
    return {
        "dart_cloud": stack.table_digest("dart_cloud"),
        "functions_db": stack.table_digest("functions_db"),
        "functions_data": stack.volume_listing(stack.functions_volume),
    }


def damage_live_data(stack: TestStack) -> None:
    damage_dart_cloud(stack)
    stack.psql("functions_db", "DELETE FROM invocations WHERE id > 1000;")
    damage_volume(stack)


def damage_dart_cloud(stack: TestStack) -> None:
    stack.psql("dart_cloud", "DELETE FROM invoices WHERE no % 3 = 0; "
                             "ALTER TABLE users ADD COLUMN nickname text; "
                             "UPDATE users SET nickname = 'x' WHERE id < 10; "
                             "CREATE TABLE intruder (id int); INSERT INTO intruder VALUES (1);")


def damage_volume(stack: TestStack) -> None:
    backend = stack.client.containers.get(stack.backend_container)
    r = backend.exec_run(["sh", "-c", "rm -rf /data/functions/hello /data/logs/2024/app.log && "
                                      "echo new > /data/functions/new.txt && "
                                      "chmod 600 /data/functions/run.sh"])
    assert r.exit_code == 0, r.output


@pytest.fixture(autouse=True)
def _release_undo_points(stack: TestStack) -> Iterator[None]:
    yield
    release_undo_points(stack)


def undo_volumes(stack: TestStack) -> list[str]:
    return sorted(v.name for v in stack.client.volumes.list(filters={"label": "dcb.undo"})
                  if v.name.startswith(stack.prefix))


def kept_databases(stack: TestStack) -> list[str]:
    return [n for n in stack.psql("postgres", "SELECT datname FROM pg_database").split()
            if "__dcb" in n]


def test_full_round_trip_and_instant_undo(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path)
    before = state(stack)
    damage_live_data(stack)
    damaged = state(stack)
    assert damaged != before
    mount = Path(stack.client.volumes.get(stack.functions_volume).attrs["Mountpoint"])
    new_inode = (mount / "functions/new.txt").stat().st_ino
    r = run_dcb("restore", set_id, "--yes", "--json", "--config", str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    out = json.loads(r.out)
    report, rid = out["report"], out["report"]["restore_id"]
    assert out["plan"]["undo"] == "move" and report["undo"] == f"dcb undo {rid}"
    assert state(stack) == before
    # Roles, views and sequences came back too; the apps run again.
    assert stack.psql("dart_cloud", "SELECT count(*) FROM big_spenders").strip() != "0"
    assert stack.psql("postgres", "SELECT 1 FROM pg_roles WHERE rolname='dart_app'").strip() == "1"
    assert stack.client.containers.get(stack.backend_container).status == "running"
    assert stack.client.containers.get(stack.postgres_container).status == "running"
    # Nothing was copied: the replaced files were moved into a labelled undo volume.
    assert len(undo_volumes(stack)) == 2
    undo_vol = stack.client.volumes.get(f"{stack.functions_volume}__dcb_undo_{rid}")
    assert undo_vol.attrs["Labels"]["dcb.undo"] == rid
    kept = Path(undo_vol.attrs["Mountpoint"]) / "replaced/functions/new.txt"
    assert kept.stat().st_ino == new_inode
    # dcb status shows the undo point; history and the incident log say what happened.
    st = json.loads(run_dcb("status", "--json", "--config", str(cfg)).out)
    assert [p["restore_id"] for p in st["undo_points"]] == [rid]
    assert st["undo_points"][0]["state"] == "verified"
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    restore = next(h for h in hist if h["kind"] == "restore")
    assert restore["ok"] is True and restore["set_id"] == set_id and restore["id"] == rid
    md = run_dcb("history", "--restore", rid, "--config", str(cfg))
    assert md.code == 0
    assert "## Timeline" in md.out and "replace volume" in md.out and "success" in md.out
    assert f"dcb undo {rid}" in md.out

    # Undo: everything as it was just before the restore, PostgreSQL's cluster included.
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert u.code == 0, u.err + u.out
    assert state(stack) == damaged
    assert (mount / "functions/new.txt").stat().st_ino == new_inode
    assert stack.client.containers.get(stack.backend_container).status == "running"
    again = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert again.code == 0 and "already undone" in again.out
    # Released: the undo volumes go; the point can no longer be undone.
    rel = run_dcb("undo", "--release", rid, "--yes", "--config", str(cfg))
    assert rel.code == 0, rel.err
    assert undo_volumes(stack) == []
    st = json.loads(run_dcb("status", "--json", "--config", str(cfg)).out)
    assert st["undo_points"] == []
    # Put the stack back as the backup had it, for the tests that follow.
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg),
                timeout=900)
    assert r.code == 0, r.err + r.out
    assert state(stack) == before
    assert undo_volumes(stack) == []


def test_selective_restore_and_undo(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "dart_cloud")
    at_backup = state(stack)
    damage_dart_cloud(stack)
    stack.psql("functions_db", "CREATE TABLE outside_the_restore (x int)")
    damaged = state(stack)
    pg_started = started_at(stack, stack.postgres_container)
    r = run_dcb("restore", set_id, "--db", "dart_cloud", "--yes", "--json", "--config",
                str(cfg))
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    rid = report["restore_id"]
    assert report["ok"] is True
    assert report["verification"] == {"database dart_cloud": []}
    now = state(stack)
    assert now["dart_cloud"] == at_backup["dart_cloud"]
    assert now["functions_db"] == damaged["functions_db"]  # untouched
    assert now["functions_data"] == damaged["functions_data"]  # untouched
    assert started_at(stack, stack.postgres_container) == pg_started  # never restarted
    # The dump staged in the data volume for pg_restore -j2 is gone again.
    pgdata = Path(stack.client.volumes.get(stack.postgres_volume).attrs["Mountpoint"])
    assert not list(pgdata.glob(".dcb-restore-*"))
    # The replaced database is kept renamed, closed to connections.
    undo_db = f"dart_cloud__dcb_undo_{rid}"
    assert kept_databases(stack) == [undo_db]
    assert stack.psql("postgres", "SELECT datallowconn FROM pg_database WHERE datname = "
                                  f"'{undo_db}'").strip() == "f"
    # Undo: the damaged database is back under its name, open again.
    u = run_dcb("undo", rid, "--yes", "--json", "--config", str(cfg))
    assert u.code == 0, u.err + u.out
    assert json.loads(u.out)["ok"] is True
    assert state(stack)["dart_cloud"] == damaged["dart_cloud"]
    assert stack.psql("postgres", "SELECT datallowconn FROM pg_database WHERE datname = "
                                  "'dart_cloud'").strip() == "t"
    assert started_at(stack, stack.postgres_container) == pg_started
    # What the restore had written waits for the next run, which releases it.
    assert kept_databases(stack) == [f"dart_cloud__dcb_discard_{rid}"]
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert "releasing the undo point" in r.err
    assert kept_databases(stack) == []
    stack.psql("functions_db", "DROP TABLE outside_the_restore")
    assert state(stack) == at_backup


def test_undo_point_is_released_after_keep_undo_hours(stack: TestStack, tmp_path: Path):
    """A verified restore's undo point goes by itself once ``[restore] keep_undo_hours``
    passed: at the next backup (the schedule's runs included), with a history entry that
    ends the undo window for retention too."""
    cfg = stack.write_config(tmp_path, restore={"keep_undo_hours": 0.001})  # 3.6 s
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    r = run_dcb("restore", set_id, "--db", "functions_db", "--yes", "--json", "--config",
                str(cfg))
    assert r.code == 0, r.err + r.out
    rid = json.loads(r.out)["report"]["restore_id"]
    assert kept_databases(stack) == [f"functions_db__dcb_undo_{rid}"]
    [point] = json.loads(run_dcb("undo", "--json", "--config", str(cfg)).out)
    assert point["state"] == "verified" and point["expires_at"]
    time.sleep(4)
    r = run_dcb("backup", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    assert f"releasing the undo point of {rid}" in r.err + r.out
    assert kept_databases(stack) == []
    assert json.loads(run_dcb("undo", "--json", "--config", str(cfg)).out) == []
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    assert ("undo-release", rid) in [(h["kind"], h.get("id")) for h in hist]
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert u.code == 1 and "was released" in u.err


def test_without_mountpoints_a_safety_set_is_the_way_back(stack: TestStack, tmp_path: Path):
    """Volumes reached through helper containers cannot be moved aside: the restore takes a
    safety set (labelled with the restore's id) and ``dcb undo`` restores it."""
    cfg, set_id = backup(stack, tmp_path, "--volume", stack.functions_volume,
                         storage={"volume_access": "helper"})
    at_backup = stack.volume_listing(stack.functions_volume)
    damage_volume(stack)
    damaged = stack.volume_listing(stack.functions_volume)
    r = run_dcb("restore", set_id, "--volume", stack.functions_volume, "--yes", "--json",
                "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    out = json.loads(r.out)
    assert out["plan"]["undo"] == "safety"
    assert "helper containers" in " ".join(out["plan"]["notes"])
    rid, safety = out["report"]["restore_id"], out["report"]["safety_set_id"]
    listed = {s["id"]: s for s in json.loads(run_dcb("list", "--json", "--config",
                                                     str(cfg)).out)}
    assert listed[safety]["status"] == "complete"
    # Labelled, so retention keeps it for the restore's undo window instead of counting it.
    assert listed[safety]["purpose"] == "safety"
    assert listed[safety]["restore_id"] == rid
    assert listed[set_id]["purpose"] == "backup"
    assert undo_volumes(stack) == []
    assert stack.volume_listing(stack.functions_volume) == at_backup
    u = run_dcb("undo", rid, "--yes", "--config", str(cfg))
    assert u.code == 0, u.err + u.out
    assert stack.volume_listing(stack.functions_volume) == damaged
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert stack.volume_listing(stack.functions_volume) == at_backup


def test_restore_as_another_name_touches_nothing_else(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "dart_cloud")
    backend_started = started_at(stack, stack.backend_container)
    try:
        r = run_dcb("restore", set_id, "--db", "dart_cloud", "--as", "dart_cloud_inspect",
                    "--yes", "--config", str(cfg))
        assert r.code == 0, r.err + r.out
        assert stack.table_digest("dart_cloud_inspect") == stack.table_digest("dart_cloud")
        assert started_at(stack, stack.backend_container) == backend_started
    finally:
        stack.psql("postgres", "DROP DATABASE IF EXISTS dart_cloud_inspect WITH (FORCE)")


def test_dry_run_and_no_tty_change_nothing(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db")
    stack.psql("functions_db", "CREATE TABLE marker (x int)")
    try:
        r = run_dcb("restore", set_id, "--dry-run", "--config", str(cfg))
        assert r.code == 0, r.err
        assert f"Restore plan for set {set_id}" in r.out
        assert "restore database functions_db" in r.out and "estimated total" in r.out
        # What will change, measured now: the database's size and live connections.
        assert "What will change:" in r.out
        assert re.search(r"database functions_db: now [\d.]+ [KMG]iB, \d+ live connection",
                         r.out), r.out
        assert "undo point" in r.out and "dump read through by pg_restore" in r.out
        r = run_dcb("restore", set_id, "--config", str(cfg))  # stdin is not a TTY
        assert r.code == 2
        assert "refusing to restore without confirmation" in r.err
        assert "marker" in stack.table_digest("functions_db")
        assert len(json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)) == 1
    finally:
        stack.psql("functions_db", "DROP TABLE IF EXISTS marker")


def _rewrite_artifact(set_dir: Path, file: str, data: bytes) -> None:
    (set_dir / file).write_bytes(data)
    m = json.loads((set_dir / "manifest.json").read_text())
    for a in m["artifacts"]:
        if a["file"] == file:
            a["size_bytes"] = len(data)
            a["sha256"] = hashlib.sha256(data).hexdigest()
    m.pop("manifest_sha256")  # a hand-edited manifest carries no digest
    (set_dir / "manifest.json").write_text(json.dumps(m))


def test_corrupt_set_is_refused_before_anything_changes(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path)
    set_dir = tmp_path / "backups" / set_id
    vol = next(set_dir.glob("volume-*functions_data*"))
    data = bytearray(vol.read_bytes())
    data[len(data) // 3] ^= 0x01
    vol.write_bytes(bytes(data))
    before = state(stack)
    starts = {n: started_at(stack, n) for n in (stack.backend_container,
                                                stack.postgres_container)}
    r = run_dcb("restore", set_id, "--yes", "--config", str(cfg))
    assert r.code == 1
    assert "failed validation" in r.err and vol.name in r.err and "checksum" in r.err
    assert state(stack) == before
    assert {n: started_at(stack, n) for n in starts} == starts


def test_crafted_archive_is_refused_and_nothing_written_outside(stack: TestStack,
                                                                tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--volume", stack.functions_volume)
    set_dir = tmp_path / "backups" / set_id
    vol = next(set_dir.glob("volume-*"))
    evil = io.BytesIO()
    outside = tmp_path / "outside"
    outside.mkdir()
    with tarfile.open(fileobj=evil, mode="w") as tf:
        ti = tarfile.TarInfo("escape")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(outside)
        tf.addfile(ti)
        payload = b"pwned"
        ti = tarfile.TarInfo("escape/evil.txt")
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
        ti = tarfile.TarInfo("../../../../tmp/dcb-escape.txt")
        ti.size = len(payload)
        tf.addfile(ti, io.BytesIO(payload))
    _rewrite_artifact(set_dir, vol.name, zstandard.ZstdCompressor().compress(evil.getvalue()))
    before = stack.volume_listing(stack.functions_volume)
    r = run_dcb("restore", set_id, "--yes", "--config", str(cfg))
    assert r.code == 1
    assert "escape" in r.err
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/dcb-escape.txt").exists()
    assert stack.volume_listing(stack.functions_volume) == before


def test_broken_dump_leaves_the_old_database_and_restarts_apps(stack: TestStack,
                                                               tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db",
                         storage={"db_format": "plain", "compression": "gzip"})
    set_dir = tmp_path / "backups" / set_id
    art = next(set_dir.glob("db-functions_db.sql.gz"))
    sql = gzip.decompress(art.read_bytes()).decode()
    cut = sql.index("COPY public.invocations")
    broken = sql[:cut] + "CREATE TABLE broken (;\n" + sql[cut:]
    _rewrite_artifact(set_dir, art.name, gzip.compress(broken.encode()))
    before = stack.table_digest("functions_db")
    r = run_dcb("restore", set_id, "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 1
    assert "old database is untouched" in r.out + r.err
    assert "state: nothing was changed" in r.out
    assert stack.table_digest("functions_db") == before
    names = stack.psql("postgres", "SELECT datname FROM pg_database").split()
    assert not [n for n in names if "__dcb" in n]  # no temporary database left behind
    assert stack.client.containers.get(stack.backend_container).status == "running"


def test_unknown_set_and_selection(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db")
    r = run_dcb("restore", "20990101T000000Z", "--yes", "--config", str(cfg))
    assert r.code == 4 and "not found" in r.err
    r = run_dcb("restore", set_id, "--db", "dart_cloud", "--yes", "--config", str(cfg))
    assert r.code == 2 and "has no database 'dart_cloud'" in r.err



def test_dump_from_a_newer_server_is_refused_before_anything(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--db", "functions_db")
    manifest = tmp_path / "backups" / set_id / "manifest.json"
    m = json.loads(manifest.read_text())
    for a in m["artifacts"]:
        if a["kind"] == "database":
            a["source"]["server_version"] = "99.1 (Debian 99.1-1)"
    m.pop("manifest_sha256")  # a hand-edited manifest carries no digest
    manifest.write_text(json.dumps(m))
    r = run_dcb("restore", set_id, "--yes", "--config", str(cfg))
    assert r.code == 1
    assert "preflight failed" in r.err and "PostgreSQL 99" in r.err
    assert "nothing was changed" in r.err


def test_delta_restore_rewrites_only_what_differs(stack: TestStack, tmp_path: Path):
    cfg, set_id = backup(stack, tmp_path, "--volume", stack.functions_volume)
    at_backup = stack.volume_listing(stack.functions_volume)
    mount = Path(stack.client.volumes.get(stack.functions_volume).attrs["Mountpoint"])
    big_inode = (mount / "functions/big.bin").stat().st_ino
    damage_volume(stack)  # removes a dir and a file, adds one, changes a mode
    r = run_dcb("restore", set_id, "--volume", stack.functions_volume, "--delta", "--yes",
                "--no-safety-backup", "--json", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    out = json.loads(r.out)
    assert out["plan"]["delta"] is True
    assert out["report"]["verification"] == {f"volume {stack.functions_volume}": []}
    assert stack.volume_listing(stack.functions_volume) == at_backup
    # The unchanged 3 MiB file was left in place, not rewritten.
    assert (mount / "functions/big.bin").stat().st_ino == big_inode
