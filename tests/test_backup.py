"""``dcb backup`` against the real test stack: what the artifacts hold, checksums, selection,
formats, legacy sets, verify and prune."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from dcb.services.docker_exec import store_tag
from tests.conftest import run_dcb
from tests.stackkit import DATABASES, TestStack


@dataclass
class MadeSet:
    config: Path
    data: dict[str, Any]

    @property
    def dir(self) -> Path:
        return Path(self.data["path"])

    def artifact(self, kind: str, name: str) -> dict[str, Any]:
        return next(a for a in self.data["artifacts"] if a["kind"] == kind and a["name"] == name)


def make_set(stack: TestStack, directory: Path, *args: str, **sections: dict[str, Any]) -> MadeSet:
    cfg = stack.write_config(directory, **sections)
    r = run_dcb("backup", "--json", "--config", str(cfg), *args)
    assert r.code == 0, r.err
    return MadeSet(cfg, json.loads(r.out))


@pytest.fixture(scope="module")
def full_set(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> MadeSet:
    return make_set(stack, tmp_path_factory.mktemp("full"))


def read_tar(path: Path, compression: str) -> dict[str, tuple[str, int, int, int, str]]:
    """Same shape as TestStack.volume_listing, from an artifact."""
    raw: Any
    if compression == "zstd":
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))  # noqa: SIM115
    elif compression == "gzip":
        raw = gzip.open(path, "rb")  # noqa: SIM115
    else:
        raw = open(path, "rb")  # noqa: SIM115
    out = {}
    with raw, tarfile.open(fileobj=raw, mode="r|") as tf:
        for m in tf:
            name = m.name.removeprefix("./")
            if name in ("", "."):
                continue
            if m.issym():
                out[name] = ("l", m.mode & 0o7777, m.uid, m.gid, m.linkname)
            elif m.isdir():
                out[name] = ("d", m.mode & 0o7777, m.uid, m.gid, "-")
            else:
                f = tf.extractfile(m)
                assert f is not None
                out[name] = ("f", m.mode & 0o7777, m.uid, m.gid,
                             hashlib.sha256(f.read()).hexdigest())
    return out


def test_full_backup_lists_as_complete_with_every_artifact(stack: TestStack, full_set: MadeSet):
    s = full_set.data
    assert s["status"] == "complete"
    kinds = sorted((a["kind"], a["name"]) for a in s["artifacts"])
    assert kinds == sorted([("globals", "globals"), *(("database", d) for d in DATABASES),
                            *(("volume", v) for v in stack.volumes)])
    r = run_dcb("list", "--json", "--config", str(full_set.config))
    listed = json.loads(r.out)
    assert [x["id"] for x in listed] == [s["id"]]
    assert listed[0]["status"] == "complete"
    assert listed[0]["size_bytes"] == sum(a["size_bytes"] for a in s["artifacts"])


def test_checksums_sizes_and_permissions_match_the_files(full_set: MadeSet):
    assert oct(full_set.dir.stat().st_mode & 0o777) == oct(0o700)
    for a in full_set.data["artifacts"]:
        p = full_set.dir / a["file"]
        data = p.read_bytes()
        assert len(data) == a["size_bytes"] > 0
        assert hashlib.sha256(data).hexdigest() == a["sha256"]
        assert oct(p.stat().st_mode & 0o777) == oct(0o600)
    manifest = full_set.dir / "manifest.json"
    assert oct(manifest.stat().st_mode & 0o777) == oct(0o600)
    assert not list(full_set.dir.glob(".*.tmp"))


@pytest.mark.parametrize("db", DATABASES)
def test_database_artifact_restores_with_equal_contents(stack: TestStack, full_set: MadeSet,
                                                         db: str):
    a = full_set.artifact("database", db)
    assert a["source"]["format"] == "custom"
    scratch = f"scratch_{db}"
    stack.psql("postgres", f"DROP DATABASE IF EXISTS {scratch}; CREATE DATABASE {scratch};")
    try:
        with open(full_set.dir / a["file"], "rb") as f:
            r = subprocess.run(["docker", "exec", "-i", stack.postgres_container, "pg_restore",
                                "-U", "postgres", "-d", scratch, "--exit-on-error"],
                               stdin=f, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert stack.table_digest(scratch) == stack.table_digest(db)
        # The manifest's row counts are the live tables' counts (nothing wrote meanwhile).
        live = {f"public.{t}": n for t, (n, _) in stack.table_digest(db).items()}
        assert a["source"]["row_counts"] == live
        views = stack.psql(scratch, "SELECT viewname FROM pg_views WHERE schemaname='public'")
        assert views.split() == stack.psql(db, "SELECT viewname FROM pg_views "
                                               "WHERE schemaname='public'").split()
    finally:
        stack.psql("postgres", f"DROP DATABASE IF EXISTS {scratch};")


def test_globals_artifact_holds_the_roles(full_set: MadeSet):
    a = full_set.artifact("globals", "globals")
    sql = zstandard.ZstdDecompressor().stream_reader(
        open(full_set.dir / a["file"], "rb")).read().decode()  # noqa: SIM115
    assert "CREATE ROLE dart_app;" in sql
    assert sql.rstrip().endswith("--") and "cluster dump complete" in sql


def test_volume_artifact_holds_exactly_the_volume(stack: TestStack, full_set: MadeSet):
    a = full_set.artifact("volume", stack.functions_volume)
    archived = read_tar(full_set.dir / a["file"], a["compression"])
    assert archived == stack.volume_listing(stack.functions_volume)
    # Spot checks of what the listing compares: owners, a symlink, odd names, empty dir.
    assert archived["functions/latest"][0] == "l"
    assert archived["functions/latest"][4] == "hello"
    assert archived["logs/2024/app.log"][2:4] == (999, 999)
    assert "functions/Zoë ☃ ünïcödé.json" in archived
    assert "functions/with space & quote's.txt" in archived
    assert archived["functions/empty-dir"] == ("d", 0o700, 1000, 1000, "-")
    assert a["source"]["stopped_containers"] == [stack.backend_container]


def test_backend_is_running_after_backup(stack: TestStack, full_set: MadeSet):
    assert stack.client.containers.get(stack.backend_container).status == "running"


def test_postgres_volume_is_an_online_physical_backup(stack: TestStack, full_set: MadeSet):
    a = full_set.artifact("volume", stack.postgres_volume)
    assert a["source"]["method"] == "pg_basebackup"
    assert a["source"]["compressed_by"] == "pg_basebackup"  # zstd inside the container
    archived = read_tar(full_set.dir / a["file"], a["compression"])
    assert "PG_VERSION" in archived and "backup_label" in archived
    assert any(p.startswith("pg_wal/") for p in archived)
    # PostgreSQL itself was never stopped.
    assert stack.client.containers.get(stack.postgres_container).status == "running"


def test_selected_database_only(stack: TestStack, tmp_path: Path):
    made = make_set(stack, tmp_path, "--db", "functions_db")
    names = sorted((a["kind"], a["name"]) for a in made.data["artifacts"])
    assert names == [("database", "functions_db"), ("globals", "globals")]


def test_unknown_selection_is_a_usage_error(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "--config", str(cfg), "--db", "nope")
    assert r.code == 2
    assert "database 'nope' is not configured" in r.err
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").iterdir())


def test_gzip_plain_sql_and_helper_container(stack: TestStack, tmp_path: Path):
    made = make_set(stack, tmp_path, storage={"compression": "gzip", "compression_level": 6,
                                              "db_format": "plain", "volume_access": "helper",
                                              "helper_image": "dcb-test-busybox:1"})
    db = made.artifact("database", "dart_cloud")
    assert db["file"] == "db-dart_cloud.sql.gz" and db["compression"] == "gzip"
    sql = gzip.decompress((made.dir / db["file"]).read_bytes()).decode()
    assert "-- PostgreSQL database dump complete" in sql
    assert "COPY public.users" in sql
    vol = made.artifact("volume", stack.functions_volume)
    assert vol["source"]["method"] == "helper"
    assert read_tar(made.dir / vol["file"], "gzip") == stack.volume_listing(
        stack.functions_volume)
    r = run_dcb("verify", "--deep", "--config", str(made.config))
    assert r.code == 0, r.err + r.out
    # Helper containers are removed.
    tag = store_tag(made.config.parent / "backups")
    assert not stack.client.containers.list(all=True, filters={"label": f"dcb.helper={tag}"})


def _copy_set(src: MadeSet, dest_root: Path) -> tuple[Path, Path]:
    """A private copy of a set (and a config pointing at it) to damage."""
    import shutil

    dest_root.mkdir(parents=True, exist_ok=True)
    cfg = dest_root / "dcb.toml"
    text = src.config.read_text().replace(str(src.config.parent / "backups"),
                                          str(dest_root / "backups"))
    cfg.write_text(text)
    target = dest_root / "backups" / src.dir.name
    shutil.copytree(src.dir, target)
    return cfg, target


def test_verify_passes_on_a_good_set(full_set: MadeSet):
    r = run_dcb("verify", "--deep", "--config", str(full_set.config))
    assert r.code == 0, r.err
    assert f"{full_set.data['id']}: ok (deep)" in r.out
    r = run_dcb("list", "--json", "--config", str(full_set.config))
    assert json.loads(r.out)[0]["verified"]["ok"] is True


@pytest.mark.parametrize("damage", ["bitflip", "truncate-half", "truncate-1", "empty", "delete"])
def test_verify_names_a_damaged_artifact(full_set: MadeSet, tmp_path: Path, damage: str):
    cfg, set_dir = _copy_set(full_set, tmp_path)
    a = full_set.artifact("volume", next(a["name"] for a in full_set.data["artifacts"]
                                         if a["kind"] == "volume"))
    p = set_dir / a["file"]
    data = bytearray(p.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x10
        p.write_bytes(bytes(data))
    elif damage == "truncate-half":
        p.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "truncate-1":
        p.write_bytes(bytes(data[:-1]))
    elif damage == "empty":
        p.write_bytes(b"")
    else:
        p.unlink()
    r = run_dcb("verify", full_set.data["id"], "--config", str(cfg))
    assert r.code == 1
    assert f"{a['file']}:" in r.err
    expected = {"bitflip": "checksum mismatch", "delete": "missing"}.get(damage, "truncated")
    assert expected in r.err


def test_deep_verify_catches_a_broken_dump_with_a_matching_checksum(
    full_set: MadeSet, tmp_path: Path
):
    """Damage written before checksumming (a bad disk, a bug) is found by reading through."""
    cfg, set_dir = _copy_set(full_set, tmp_path)
    a = full_set.artifact("database", "dart_cloud")
    p = set_dir / a["file"]
    data = p.read_bytes()[: a["size_bytes"] * 2 // 3]
    p.write_bytes(data)
    manifest = json.loads((set_dir / "manifest.json").read_text())
    for m in manifest["artifacts"]:
        if m["file"] == a["file"]:
            m["size_bytes"] = len(data)
            m["sha256"] = hashlib.sha256(data).hexdigest()
    manifest.pop("manifest_sha256")  # as a bug before the checksum would have written it
    (set_dir / "manifest.json").write_text(json.dumps(manifest))
    assert run_dcb("verify", "--config", str(cfg)).code == 0  # checksums alone agree
    r = run_dcb("verify", "--deep", "--config", str(cfg))
    assert r.code == 1
    assert f"{a['file']}: unreadable: pg_restore rejects the dump" in r.err


def test_legacy_sets_from_the_old_scripts_are_listed(tmp_path: Path, stack: TestStack):
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    (root / "volumes").mkdir(parents=True)
    ts = "20240105_020000"
    sql = b"SELECT 1;\n--\n-- PostgreSQL database dump complete\n--\n"
    for name in ("dart_cloud", "functions_db"):
        (root / f"{name}_{ts}.sql.gz").write_bytes(gzip.compress(sql))
    with tarfile.open(root / "volumes" / f"functions_volume_{ts}.tar.gz", "w:gz"):
        pass
    (root / f"backup_{ts}.meta").write_text("old meta\n")
    r = run_dcb("list", "--json", "--config", str(cfg))
    sets = json.loads(r.out)
    assert [s["id"] for s in sets] == [f"legacy-{ts}"]
    legacy = sets[0]
    assert legacy["status"] == "legacy"
    assert legacy["created_at"].startswith("2024-01-05T02:00:00")
    assert sorted((a["kind"], a["name"], a["sha256"]) for a in legacy["artifacts"]) == [
        ("database", "dart_cloud", None), ("database", "functions_db", None),
        ("volume", stack.functions_volume, None)]  # mapped onto the configured volume
    r = run_dcb("verify", f"legacy-{ts}", "--config", str(cfg))
    assert "no checksum recorded" in r.out


def test_prune_on_real_sets_keeps_the_newest(stack: TestStack, tmp_path: Path):
    ids = [make_set(stack, tmp_path, "--db", "functions_db").data["id"] for _ in range(3)]
    assert len(set(ids)) == 3  # same-second runs still get unique ids
    cfg = stack.write_config(tmp_path, retention={"keep_last": 1, "keep_daily": 0,
                                                  "keep_weekly": 0, "keep_monthly": 0})
    r = run_dcb("prune", "--dry-run", "--json", "--config", str(cfg))
    plan = {s["id"]: s for s in json.loads(r.out)["sets"]}
    newest = max(ids)
    assert plan[newest]["keep"]
    assert {(k["item"], tuple(k["rules"])) for k in plan[newest]["kept_by"]} == {
        ("database functions_db", ("last 1", "newest copy")),
        ("roles", ("last 1", "newest copy"))}
    assert [i for i in ids if not plan[i]["keep"]] == sorted(ids)[:2]
    assert all((tmp_path / "backups" / i).is_dir() for i in ids)  # dry run removed nothing
    r = run_dcb("prune", "--config", str(cfg))  # no terminal to confirm on
    assert r.code == 2 and "pass --yes" in r.err
    assert all((tmp_path / "backups" / i).is_dir() for i in ids)
    r = run_dcb("prune", "--yes", "--config", str(cfg))
    assert r.code == 0, r.err
    assert sorted(os.listdir(tmp_path / "backups")) == sorted(
        [newest, ".lock", "history.jsonl"])
    listed = json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)
    assert [s["id"] for s in listed] == [newest]
