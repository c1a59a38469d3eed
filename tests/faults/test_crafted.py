"""Crafted input from a destination someone else controls (a NAS, a bucket, a USB disk): dcb
reads it with ``list --from`` and ``verify --from`` (the fetch that ``restore --from`` uses).
Whatever the copy holds, dcb never reads outside the copy, never blocks on a FIFO, never
loads an oversized manifest, never prints a terminal escape it was sent, and never lists
such a copy complete. Each case: exit 1 (or the copy listed not complete), one clear line,
no traceback, nothing written outside the backup dir.

Crafted tar members (traversal, symlinks, devices, pax headers) are tests/test_safe_tar.py;
a plain SQL dump that runs ``\\!`` in psql is tests/faults/test_crafted_dump.py.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from dcb.services.destinations.base import MAX_MANIFEST_BYTES
from tests.conftest import run_dcb
from tests.replkit import make_set, set_ids
from tests.test_backup_faults import error_line

SECRET = "outside-" + secrets.token_hex(8)


def _manifest_symlink(copy: Path, outside: Path) -> None:
    (copy / "manifest.json").unlink()
    (copy / "manifest.json").symlink_to(outside / "manifest.json")


def _artifact_symlink(copy: Path, outside: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    name = m["artifacts"][0]["file"]
    (copy / name).unlink()
    (copy / name).symlink_to(outside / "secret.bin")


def _set_dir_symlink(copy: Path, outside: Path) -> None:
    target = outside / "elsewhere"
    copy.rename(target)
    copy.symlink_to(target)


def _artifact_fifo(copy: Path, outside: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    name = m["artifacts"][0]["file"]
    (copy / name).unlink()
    os.mkfifo(copy / name)


def _oversized_manifest(copy: Path, outside: Path) -> None:
    with open(copy / "manifest.json", "wb") as f:
        f.write(b'{"id": "' + b"x" * (MAX_MANIFEST_BYTES + 10) + b'"}')


def _traversal(copy: Path, outside: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    m["artifacts"][0]["file"] = "../" * 8 + str(outside / "secret.bin").lstrip("/")
    (copy / "manifest.json").write_text(json.dumps(m))


def _absolute(copy: Path, outside: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    m["artifacts"][0]["file"] = str(outside / "secret.bin")
    (copy / "manifest.json").write_text(json.dumps(m))


def _huge_numbers(copy: Path, outside: Path) -> None:
    m = json.loads((copy / "manifest.json").read_text())
    m["artifacts"][0]["size_bytes"] = 10 ** 40
    m["size_bytes"] = -1
    (copy / "manifest.json").write_text(json.dumps(m))


def _deep_nesting(copy: Path, outside: Path) -> None:
    (copy / "manifest.json").write_text('{"id": ' + "[" * 100_000 + "]" * 100_000 + "}")


CASES: dict[str, Callable[[Path, Path], None]] = {
    "manifest-symlink": _manifest_symlink, "artifact-symlink": _artifact_symlink,
    "set-dir-symlink": _set_dir_symlink, "artifact-fifo": _artifact_fifo,
    "oversized-manifest": _oversized_manifest, "path-traversal": _traversal,
    "absolute-path": _absolute, "huge-numbers": _huge_numbers, "deep-nesting": _deep_nesting,
}

ARTIFACT_LEVEL = {"artifact-symlink", "artifact-fifo"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_copy_is_refused(tmp_path: Path, case: str) -> None:
    (set_id,) = set_ids(1)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET.encode() * 64)
    good = make_set(outside / "good", set_id)  # a valid manifest, outside the destination
    (outside / "manifest.json").write_bytes((good / "manifest.json").read_bytes())
    nas = tmp_path / "nas"
    copy = make_set(nas, set_id)
    CASES[case](copy, outside)
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{tmp_path / "backups"}"\n'
                   f'[replication.nas]\ntype = "local"\npath = "{nas}"\n')

    listed = run_dcb("list", "--from", "nas", "--json", "--config", str(cfg), timeout=30)
    assert "Traceback" not in listed.err, listed.err
    if listed.code != 0:
        error_line(listed)
    elif case not in ARTIFACT_LEVEL:
        # A listing reads manifests only (an artifact is checked by the fetch that verify
        # and restore --from make): a bad manifest must never list complete.
        sets = json.loads(listed.out)
        assert all(s["status"] != "complete" for s in sets), sets

    r = run_dcb("verify", set_id, "--from", "nas", "--config", str(cfg), timeout=30)
    assert r.code == 1, (r.code, r.out, r.err)
    line = error_line(r) if r.err.startswith("dcb:") else r.err
    assert SECRET not in r.out + r.err + listed.out + listed.err
    assert len(line) < 2000, line
    # Nothing of the outside was copied into the backup dir, no part-copy left behind.
    backups = tmp_path / "backups"
    for p in backups.rglob("*") if backups.exists() else ():
        assert not p.is_file() or SECRET.encode() not in p.read_bytes(), p
    assert not any(p.name.startswith(".incoming") for p in backups.rglob("*")) \
        if backups.exists() else True


def test_terminal_escapes_in_a_copy_are_not_printed(tmp_path: Path) -> None:
    """A host name or error text carrying ESC sequences (retitle the terminal, hide text,
    OSC 52 to write the clipboard) is shown escaped, never sent to the terminal."""
    (set_id,) = set_ids(1)
    nas = tmp_path / "nas"
    copy = make_set(nas, set_id)
    m = json.loads((copy / "manifest.json").read_text())
    m["host"] = "evil\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\x1b]0;title\x07"
    m["error"] = "boom\x1b[8mhidden"
    m["status"] = "failed"
    (copy / "manifest.json").write_text(json.dumps(m))
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[storage]\nbackup_dir = "{tmp_path / "backups"}"\n'
                   f'[replication.nas]\ntype = "local"\npath = "{nas}"\n')
    for argv in (["list", "--from", "nas"], ["verify", set_id, "--from", "nas"]):
        r = run_dcb(*argv, "--config", str(cfg), timeout=30)
        assert "\x1b" not in r.out + r.err and "\x07" not in r.out + r.err, repr(r.out + r.err)
