"""``dcb drill`` and legacy sets from the old bash scripts, on the real test stack."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import run_dcb
from tests.stackkit import BUSYBOX_IMAGE, TestStack


def _sandbox_leftovers(stack: TestStack) -> list[str]:
    names = [c.name for c in stack.client.containers.list(all=True,
                                                          filters={"label": "dcb.drill"})]
    names += [v.name for v in stack.client.volumes.list(filters={"label": "dcb.drill"})]
    return names


def test_drill_passes_on_a_good_set_and_leaves_nothing(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    pg_started = stack.client.containers.get(stack.postgres_container).attrs["State"]["StartedAt"]
    before = stack.table_digest("dart_cloud")
    r = run_dcb("drill", "--json", "--config", str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    result = json.loads(r.out)
    assert result["ok"] is True and result["set_id"] == set_id
    assert result["rto_seconds"] > 0
    verification = result["report"]["verification"]
    assert set(verification) == {"database dart_cloud", "database functions_db",
                                 f"volume {stack.functions_volume}",
                                 f"volume {stack.postgres_volume}"}
    assert all(diffs == [] for diffs in verification.values())
    assert _sandbox_leftovers(stack) == []
    # The live stack was not touched.
    live = stack.client.containers.get(stack.postgres_container)
    assert live.attrs["State"]["StartedAt"] == pg_started
    assert stack.table_digest("dart_cloud") == before
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    drill = [h for h in hist if h["kind"] == "drill"]
    assert len(drill) == 1 and drill[0]["ok"] is True and drill[0]["rto_seconds"] > 0


def test_drill_fails_on_a_corrupted_set(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    dump = tmp_path / "backups" / r.out.strip() / "db-functions_db.pgdump"
    data = bytearray(dump.read_bytes())
    data[100] ^= 0xFF
    dump.write_bytes(bytes(data))
    r = run_dcb("drill", "--config", str(cfg), timeout=600)
    assert r.code == 1
    assert "drill failed" in r.err and "checksum mismatch" in r.err
    assert _sandbox_leftovers(stack) == []
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    assert [h["ok"] for h in hist if h["kind"] == "drill"] == [False]


def test_legacy_set_restores(stack: TestStack, tmp_path: Path):
    """A set made the old way (pg_dump | gzip, busybox tar czf) restores like any other."""
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    (root / "volumes").mkdir(parents=True)
    ts = "20240105_020000"
    dump = subprocess.run(
        f"docker exec {stack.postgres_container} pg_dump -U postgres dart_cloud | gzip "
        f"> {root}/dart_cloud_{ts}.sql.gz", shell=True, capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    tar = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "-v", f"{stack.functions_volume}:/v",
         "-v", f"{root}/volumes:/out", BUSYBOX_IMAGE, "tar", "czf",
         f"/out/functions_volume_{ts}.tar.gz", "-C", "/v", "."],
        capture_output=True, text=True)
    assert tar.returncode == 0, tar.stderr
    before_db = stack.table_digest("dart_cloud")
    before_vol = stack.volume_listing(stack.functions_volume)
    stack.psql("dart_cloud", "DELETE FROM invoices WHERE no < 2000")
    stack.client.containers.get(stack.backend_container).exec_run(
        ["sh", "-c", "rm -rf /data/functions && echo x > /data/stray"])
    r = run_dcb("restore", f"legacy-{ts}", "--yes", "--no-safety-backup", "--config", str(cfg))
    assert r.code == 0, r.err + r.out
    assert "legacy set" in r.out
    # No row counts were recorded: the report says so instead of "equal".
    line = next(x for x in r.out.splitlines() if x.startswith("  verify database dart_cloud"))
    assert "not checked: row counts: none recorded (legacy set)" in line
    assert "row counts" not in line.split("not checked")[0]
    assert stack.table_digest("dart_cloud") == before_db
    assert stack.volume_listing(stack.functions_volume) == before_vol
