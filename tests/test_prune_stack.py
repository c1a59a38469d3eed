"""Per-item retention on the real stack (issue 15's sequence): two full sets, then
``dcb backup --db functions_db``; ``dcb prune`` keeps the newest full set for the volumes and
dart_cloud, and the volume restores from it. The restore's safety set is kept for its undo
window, outside the counting, and goes once the window is over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import run_dcb
from tests.stackkit import TestStack


def backup(cfg: Path, *args: str) -> str:
    r = run_dcb("backup", "-q", "--config", str(cfg), *args)
    assert r.code == 0, r.err
    return r.out.strip()


def plan(cfg: Path) -> dict[str, dict[str, Any]]:
    r = run_dcb("prune", "--dry-run", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    return {s["id"]: s for s in json.loads(r.out)["sets"]}


def kept_by(entry: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    return {k["item"]: tuple(k["rules"]) for k in entry["kept_by"]}


def test_a_databases_only_set_never_prunes_the_volumes(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    vol = stack.functions_volume
    full1 = backup(cfg)
    full2 = backup(cfg)
    at_full2 = stack.volume_listing(vol)
    db_only = backup(cfg, "--db", "functions_db")

    p = plan(cfg)
    newest = ("daily 1", "weekly 1", "monthly 1", "newest copy")
    assert kept_by(p[db_only]) == {"database functions_db": newest, "roles": newest}
    assert kept_by(p[full2]) == {"database dart_cloud": newest, f"volume {vol}": newest,
                                 f"volume {stack.postgres_volume}": newest}
    assert not p[full1]["keep"] and p[full1]["reasons"] == ["remove"]
    lines = run_dcb("prune", "--dry-run", "--config", str(cfg)).out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(full2))
    assert lines[row + 1].strip() == (f"database dart_cloud, volume {vol}, volume "
                                      f"{stack.postgres_volume}: {', '.join(newest)}")

    r = run_dcb("prune", "--yes", "--config", str(cfg))
    assert r.code == 0, r.err
    ids = {s["id"] for s in json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)}
    assert ids == {full2, db_only}

    # The volume changes; restoring it from the newest set that holds it works.
    backend = stack.client.containers.get(stack.backend_container)
    assert backend.exec_run(["sh", "-c", "echo later > /data/functions/later.txt"]).exit_code == 0
    assert stack.volume_listing(vol) != at_full2
    # --delta keeps files in place, so the way back is a safety set (not an undo point).
    r = run_dcb("restore", full2, "--volume", vol, "--delta", "--yes", "--json", "--config",
                str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    report = json.loads(r.out)["report"]
    assert report["ok"] is True
    assert stack.volume_listing(vol) == at_full2

    # Its safety set holds the volume and is the newest set, yet counts for nothing: full2
    # stays the volume's newest copy, and the safety set is kept for the undo window.
    safety = report["safety_set_id"]
    p = plan(cfg)
    assert p[safety]["keep"] and p[safety]["purpose"] == "safety"
    assert p[safety]["reasons"][0].startswith(f"undo for {report['restore_id']} until ")
    assert kept_by(p[full2])[f"volume {vol}"] == newest

    # With no undo window the safety set goes, and nothing else does.
    cfg0 = stack.write_config(tmp_path / "no-undo", storage={"backup_dir": str(tmp_path /
                                                                              "backups")},
                              restore={"keep_undo_hours": 0})
    r = run_dcb("prune", "--yes", "--json", "--config", str(cfg0))
    assert r.code == 0, r.err
    assert json.loads(r.out)["removed"] == [safety]
    ids = {s["id"] for s in json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)}
    assert ids == {full2, db_only}

    # Releasing the undo point records the end of its window for retention.
    rid = report["restore_id"]
    r = run_dcb("undo", "--release", rid, "--yes", "--config", str(cfg))
    assert r.code == 0, r.err
    hist = json.loads(run_dcb("history", "--json", "--config", str(cfg)).out)
    assert [(h["kind"], h.get("id")) for h in hist][-1] == ("undo-release", rid)
    assert json.loads(run_dcb("undo", "--json", "--config", str(cfg)).out) == []
