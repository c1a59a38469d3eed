"""A manifest is input: it is checked against a schema, and no manifest makes dcb open a file
outside its set directory. Ids on the command line never become paths.

Sets here are written by hand (as a remote destination or an attacker could); ``dcb list``
and ``dcb verify`` read them as a user would. No Docker needed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dcb.services.store import BackupStore
from dcb.services.verify import verify_set
from tests.conftest import run_dcb

SET_ID = "20260102T030405Z"
PAYLOAD = b"the bytes of a perfectly good artifact\n" * 100


def good_manifest(file: str = "volume-data.tar", payload: bytes = PAYLOAD) -> dict[str, Any]:
    return {
        "manifest_version": 1, "id": SET_ID, "status": "complete", "purpose": "backup",
        "created_at": "2026-01-02T03:04:05+00:00", "duration_seconds": 1.5,
        "host": "box", "dcb_version": "0.1.0", "size_bytes": len(payload),
        "artifacts": [{
            "kind": "volume", "name": "data", "file": file, "size_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(), "compression": "none",
            "source": {"format": "tar", "raw_bytes": len(payload), "seconds": 0.1},
        }],
    }


def write_set(root: Path, manifest: Any, raw: bytes | None = None) -> Path:
    d = root / SET_ID
    d.mkdir(parents=True)
    (d / "volume-data.tar").write_bytes(PAYLOAD)
    (d / "manifest.json").write_bytes(raw if raw is not None else json.dumps(manifest).encode())
    return d


def config(tmp_path: Path, root: Path) -> Path:
    f = tmp_path / "dcb.toml"
    f.write_text(f'[storage]\nbackup_dir = "{root}"\n')
    return f


def test_a_good_manifest_passes(tmp_path: Path):
    root = tmp_path / "backups"
    write_set(root, good_manifest())
    (s,) = BackupStore(root).list_sets()
    assert (s.status, s.error) == ("complete", None)
    assert verify_set(s).ok


def mutate(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    m = copy.deepcopy(good_manifest())
    change(m)
    return m


def art(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["artifacts"][0].__setitem__(key, value)


def top(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m.__setitem__(key, value)


BAD = [
    ("file-outside", art("file", "../../../../etc/hostname"), "is not a plain file name"),
    ("file-absolute", art("file", "/etc/hostname"), "is not a plain file name"),
    ("file-in-subdir", art("file", "sub/x.tar"), "is not a plain file name"),
    ("file-hidden", art("file", ".volume-data.tar.tmp"), "is not a plain file name"),
    ("file-manifest", art("file", "manifest.json"), "is not a plain file name"),
    ("file-newline", art("file", "a\nb"), "is not a plain file name"),
    ("file-not-string", art("file", 7), "artifacts[0].file has the wrong type"),
    ("size-string", art("size_bytes", "3900"), "artifacts[0].size_bytes has the wrong type"),
    ("size-negative", art("size_bytes", -1), "artifacts[0].size_bytes is negative"),
    ("size-bool", art("size_bytes", True), "artifacts[0].size_bytes has the wrong type"),
    ("size-float", art("size_bytes", 3900.0), "artifacts[0].size_bytes has the wrong type"),
    ("sha-short", art("sha256", "abc123"), "sha256 is not 64 lowercase hex digits"),
    ("sha-upper", art("sha256", "A" * 64), "sha256 is not 64 lowercase hex digits"),
    ("sha-null", art("sha256", None), "artifacts[0].sha256 has the wrong type"),
    ("kind", art("kind", "secrets"), "artifacts[0].kind 'secrets' is not one of"),
    ("compression", art("compression", "lz4"), "artifacts[0].compression 'lz4' is not one of"),
    ("format", lambda m: m["artifacts"][0]["source"].__setitem__("format", "exe"),
     "source.format 'exe' is not one of"),
    ("row-counts", lambda m: m["artifacts"][0]["source"].__setitem__("row_counts", {"t": -5}),
     "row_counts holds a bad entry"),
    ("legacy-claim", lambda m: m["artifacts"][0]["source"].__setitem__("legacy", True),
     "never a legacy set"),
    ("volume-name", art("name", "../x"), "is not a volume name"),
    ("db-name", lambda m: m["artifacts"][0].update(kind="database", name="-d x"),
     "starts with '-'"),
    ("status", top("status", "great"), "status 'great' is not one of"),
    ("created-missing", lambda m: m.pop("created_at"), "created_at is missing"),
    ("created-naive", top("created_at", "2026-01-02T03:04:05"), "created_at has no time zone"),
    ("created-garbage", top("created_at", "yesterday"), "not an ISO 8601 time"),
    ("id-elsewhere", top("id", "20250101T000000Z"), "does not match its directory"),
    ("purpose", top("purpose", "fun"), "purpose 'fun' is not one of"),
    ("restore-id", top("restore_id", "../../x"), "restore_id is not a restore id"),
    ("long-host", top("host", "h" * 5000), "host is too long"),
    ("artifacts-object", top("artifacts", {"a": 1}), "artifacts has the wrong type"),
    ("artifact-string", top("artifacts", ["x"]), "artifacts[0] is not an object"),
    ("duplicate", lambda m: m["artifacts"].append(dict(m["artifacts"][0])), "listed twice"),
    ("empty-complete", top("artifacts", []), "a complete set lists no artifacts"),
    ("newer-version", top("manifest_version", 99), "manifest_version 99 is newer"),
]


@pytest.mark.parametrize(("change", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_manifest_makes_the_set_incomplete_with_the_reason(
        tmp_path: Path, change: Callable[[dict[str, Any]], None], reason: str):
    root = tmp_path / "backups"
    write_set(root, mutate(change))
    (s,) = BackupStore(root).list_sets()
    assert s.status == "incomplete"
    assert s.error is not None and "invalid manifest" in s.error and reason in s.error, s.error
    assert not verify_set(s).ok


@pytest.mark.parametrize(("raw", "reason"), [
    (b"[1, 2]", "invalid manifest: not a JSON object"),
    (b"{", "unreadable manifest"),
    (b"\xff\xfe", "unreadable manifest"),
])
def test_unparseable_manifests(tmp_path: Path, raw: bytes, reason: str):
    root = tmp_path / "backups"
    write_set(root, None, raw=raw)
    (s,) = BackupStore(root).list_sets()
    assert s.status == "incomplete" and s.error is not None and reason in s.error, s.error


def test_verify_never_reads_a_file_outside_the_set(tmp_path: Path):
    """The manifest names a file outside the set whose size and SHA-256 it gives correctly:
    reading it would 'verify'. dcb refuses the set without opening it."""
    root = tmp_path / "backups"
    outside = tmp_path / "outside.bin"
    secret = b"not part of any backup\n"
    outside.write_bytes(secret)
    write_set(root, good_manifest(file="../../outside.bin", payload=secret))
    cfg = config(tmp_path, root)
    r = run_dcb("verify", SET_ID, "--config", str(cfg))
    assert r.code == 1, r.out + r.err
    assert "Traceback" not in r.err
    assert "is not a plain file name inside the set" in r.err
    r = run_dcb("list", "--json", "--config", str(cfg))
    (listed,) = json.loads(r.out)
    assert listed["status"] == "incomplete" and "invalid manifest" in listed["error"]


def test_an_artifact_that_is_a_symlink_is_refused(tmp_path: Path):
    """A plain name inside the set, but a symlink to a file elsewhere (matching checksum)."""
    root = tmp_path / "backups"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(PAYLOAD)
    d = write_set(root, good_manifest(file="volume-link.tar"))
    os.symlink(outside, d / "volume-link.tar")
    r = run_dcb("verify", SET_ID, "--config", str(config(tmp_path, root)))
    assert r.code == 1
    assert "volume-link.tar: a symlink: refused" in r.err, r.err


def test_a_manifest_that_is_a_symlink_is_refused(tmp_path: Path):
    root = tmp_path / "backups"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(good_manifest()))
    d = root / SET_ID
    d.mkdir(parents=True)
    (d / "volume-data.tar").write_bytes(PAYLOAD)
    os.symlink(elsewhere, d / "manifest.json")
    (s,) = BackupStore(root).list_sets()
    assert s.status == "incomplete" and s.error is not None and "symbolic link" in s.error


@pytest.mark.parametrize("argv", [
    ["show", "../x"],
    ["show", "20260102T030405Z/../../etc"],
    ["verify", "../../x"],
    ["verify", "20260102T030405Z\n"],
    ["restore", "../x", "--dry-run"],
    ["drill", "../x"],
    ["history", "--restore", "../../x"],
    ["history", "--restore", "/etc/passwd"],
    ["history", "--restore=-x"],
])
def test_ids_on_the_command_line_never_become_paths(tmp_path: Path, argv: list[str]):
    root = tmp_path / "backups"
    write_set(root, good_manifest())
    r = run_dcb(*argv, "--config", str(config(tmp_path, root)))
    assert r.code == 2, r.out + r.err
    lines = r.err.splitlines()
    assert lines[0].startswith("dcb: ") and "not a" in lines[0], r.err
    assert all(line.startswith("hint:") for line in lines[1:]), r.err
