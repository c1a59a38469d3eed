"""The disk-usage scanner (services.du) against GNU du on real trees, and ``dcb du``."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from dcb.cli import du_command
from dcb.services.config import load_config
from dcb.services.du import (
    OTHER_FILESYSTEM,
    DuNode,
    ScanProgress,
    bar,
    scan,
    sorted_children,
    to_json,
)
from dcb.services.errors import Cancelled, NotFound, UsageError
from tests.conftest import run_dcb

REPO = Path(__file__).resolve().parent.parent


def _write(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(n))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/
         big/blob1 (200 kB), big/sub/blob2 (50 kB)
         small/f (1000 B), small/hard (a hard link to big/blob1)
         link -> big (a symlink to a directory)
         empty/
         top.txt (10 B)
    """
    root = tmp_path / "root"
    _write(root / "big" / "blob1", 200_000)
    _write(root / "big" / "sub" / "blob2", 50_000)
    _write(root / "small" / "f", 1000)
    os.link(root / "big" / "blob1", root / "small" / "hard")
    (root / "link").symlink_to("big")
    (root / "empty").mkdir()
    _write(root / "top.txt", 10)
    return root


def _du(*args: str) -> int:
    out = subprocess.run(["du", *args], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _at(root: DuNode, rel: str) -> DuNode:
    node = root
    for name in rel.split("/"):
        child = node.child(name)
        assert child is not None, f"{name} not in {node.path}"
        node = child
    return node


def _own(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_blocks * 512, st.st_size


def test_totals_match_gnu_du(tree: Path):
    root = scan(tree)
    assert root.apparent_bytes == _du("-sxb", str(tree))
    assert root.size_bytes == _du("-sx", "--block-size=1", str(tree))
    sub2 = _at(root, "big/sub")
    assert sub2.apparent_bytes == _du("-sb", str(tree / "big" / "sub"))
    assert sub2.size_bytes == _du("-s", "--block-size=1", str(tree / "big" / "sub"))
    # Files: blob1, blob2, f, the symlink, top.txt (the second hard link is not counted).
    assert root.file_count == 5
    assert root.dir_count == 4
    assert root.error_count == 0 and root.error is None


def test_hard_link_counted_once(tree: Path):
    root = scan(tree)
    blob1, hard = _at(root, "big/blob1"), _at(root, "small/hard")
    counted, dup = (blob1, hard) if hard.duplicate_link else (hard, blob1)
    assert dup.duplicate_link and not counted.duplicate_link
    assert dup.size_bytes == 0 and dup.apparent_bytes == 0 and dup.file_count == 0
    assert counted.apparent_bytes == 200_000
    assert counted.size_bytes == _own(tree / "big" / "blob1")[0]


def test_symlink_is_not_followed(tree: Path):
    root = scan(tree)
    link = _at(root, "link")
    assert link.is_link and not link.is_dir and link.children == []
    assert (link.size_bytes, link.apparent_bytes) == _own(tree / "link")
    assert link.file_count == 1
    assert to_json(link)["type"] == "symlink"


def test_children_sorted_by_size_and_directories_carry_subtotals(tree: Path):
    root = scan(tree)
    kids = sorted_children(root)
    sizes = [k.size_bytes for k in kids]
    assert sizes == sorted(sizes, reverse=True)
    assert {k.name for k in kids} == {"big", "small", "link", "empty", "top.txt"}
    apparent = [k.apparent_bytes for k in sorted_children(root, apparent=True)]
    assert apparent == sorted(apparent, reverse=True)

    def check(node: DuNode) -> None:
        own_disk, own_apparent = _own(Path(node.path))
        assert node.size_bytes == own_disk + sum(c.size_bytes for c in node.children)
        assert node.apparent_bytes == own_apparent + sum(c.apparent_bytes for c in node.children)
        assert node.file_count == sum(c.file_count for c in node.children)
        assert node.dir_count == sum(1 + c.dir_count for c in node.children if c.is_dir)
        for c in node.children:
            if c.is_dir:
                check(c)

    check(root)


def test_to_json_depth(tree: Path):
    root = scan(tree)
    top = to_json(root, depth=0)
    assert "children" not in top
    assert top["size_bytes"] == root.size_bytes and top["type"] == "dir"
    one = to_json(root, depth=1)
    assert [c["name"] for c in one["children"]] == [c.name for c in sorted_children(root)]
    big = next(c for c in one["children"] if c["name"] == "big")
    assert "children" not in big
    full = to_json(root)
    big = next(c for c in full["children"] if c["name"] == "big")
    sub = next(c for c in big["children"] if c["name"] == "sub")
    assert [c["name"] for c in sub["children"]] == ["blob2"]
    assert "children" not in sub["children"][0]  # a file
    json.dumps(full)  # serialisable as is


def test_missing_path_and_file_are_refused(tmp_path: Path):
    with pytest.raises(NotFound, match="no such directory"):
        scan(tmp_path / "nope")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        scan(f)


def test_directory_vanishing_mid_scan_is_recorded_not_raised(tree: Path):
    """``current`` is the directory just listed: remove its subdirectory before it is read."""
    victim = tree / "big" / "sub"
    seen: list[str] = []

    def progress(p: ScanProgress) -> None:
        seen.append(p.current)
        if p.current == str(tree / "big") and victim.exists():
            shutil.rmtree(victim)

    root = scan(tree, on_progress=progress, interval=0)
    sub = _at(root, "big/sub")
    assert sub.error == "No such file or directory"
    assert sub.error_count == 1 and sub.children == []
    assert _at(root, "big").error_count == 1
    assert root.error_count == 1 and root.error is None
    # Everything else was still counted: blob1 (or its link), f, the symlink, top.txt.
    assert root.file_count == 4
    assert str(tree / "big") in seen


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable directories")
def test_unreadable_directory_is_recorded(tree: Path):
    locked = tree / "big" / "sub"
    locked.chmod(0)
    try:
        root = scan(tree)
    finally:
        locked.chmod(0o755)
    sub = _at(root, "big/sub")
    assert sub.error == "Permission denied"
    assert root.error_count == 1


def test_progress_is_throttled_and_ends_with_done(tree: Path):
    calls: list[ScanProgress] = []
    root = scan(tree, on_progress=calls.append, interval=3600)
    # The first listing is reported at once, then nothing until the end.
    assert len(calls) == 2
    assert not calls[0].done and calls[-1].done
    last = calls[-1]
    assert (last.files, last.dirs, last.size_bytes, last.apparent_bytes, last.errors) == (
        root.file_count, root.dir_count, root.size_bytes, root.apparent_bytes, 0)
    assert last.root is root


def test_partial_tree_is_consistent_at_every_progress(tree: Path):
    """Front ends show the tree while it grows: every partial total is a consistent sum."""
    snapshots: list[tuple[int, int]] = []
    root_own = _own(tree)[0]

    def progress(p: ScanProgress) -> None:
        r = p.root
        assert r.size_bytes == root_own + sum(c.size_bytes for c in list(r.children))
        assert p.files == r.file_count
        snapshots.append((p.files, p.size_bytes))

    root = scan(tree, on_progress=progress, interval=0)
    assert len(snapshots) >= 1 + root.dir_count  # one per directory listed, plus the end
    assert snapshots == sorted(snapshots)  # counts only grow


def test_cancel_stops_the_scan(tree: Path):
    cancel = threading.Event()

    def progress(_p: ScanProgress) -> None:
        cancel.set()

    with pytest.raises(Cancelled):
        scan(tree, on_progress=progress, cancel=cancel, interval=0)


@pytest.mark.skipif(not os.path.ismount("/dev/shm"), reason="needs /dev/shm mounted")
def test_other_filesystems_are_not_entered():
    root = scan("/dev")
    shm = _at(root, "shm")
    assert shm.excluded == OTHER_FILESYSTEM
    assert shm.size_bytes == 0 and shm.children == []


def test_bar():
    assert bar(1.0, 4) == "████"
    assert bar(0.0, 4) == "    "
    assert bar(0.5, 4) == "██  "
    assert bar(1 / 32, 4) == "▏   "
    assert len(bar(0.37, 10)) == 10


# --- dcb du -------------------------------------------------------------------------------


def _run_du(argv: list[str], cwd: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``dcb du ARGV`` in process, through the same ``add`` signature cli.main uses."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")

    def add(name: str, help_: str, func: object,
            description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description)
        p.set_defaults(func=func)
        return p

    du_command.register(add)
    args = parser.parse_args(["du", *argv])
    old = Path.cwd()
    os.chdir(cwd)
    try:
        code = args.func(args, load_config(environ={}))
    finally:
        os.chdir(old)
    return code, capsys.readouterr().out


def test_du_command_table(tree: Path, capsys: pytest.CaptureFixture[str]):
    code, out = _run_du([str(tree)], tree, capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["SIZE", "%", "FILES", "NAME"]
    names = [line.split()[-1] for line in lines[1:6]]
    root = scan(tree)
    assert names == [c.name + ("/" if c.is_dir else "@" if c.is_link else "")
                     for c in sorted_children(root)]
    assert lines[-1].startswith("total ")
    assert "5 files, 4 dirs" in lines[-1]


def test_du_command_defaults_to_the_backup_dir(tree: Path, capsys: pytest.CaptureFixture[str]):
    backups = tree.parent / "backups"
    _write(backups / "20260101T000000Z" / "manifest.json", 100)
    code, out = _run_du(["--json", "--depth", "2"], tree.parent, capsys)
    assert code == 0
    data = json.loads(out)
    assert data["path"] == str(backups)
    assert data["children"][0]["name"] == "20260101T000000Z"
    assert data["children"][0]["children"][0]["name"] == "manifest.json"


def test_du_command_limits_rows_unless_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    for i in range(du_command.TOP + 5):
        _write(tmp_path / "d" / f"f{i:02d}", 100 * (i + 1))
    code, out = _run_du([str(tmp_path / "d")], tmp_path, capsys)
    assert code == 0
    assert "... 5 more (--all lists them)" in out
    code, out = _run_du([str(tmp_path / "d"), "--all"], tmp_path, capsys)
    assert "more" not in out
    assert sum(1 for line in out.splitlines() if re.search(r" f\d\d$", line)) == du_command.TOP + 5


def test_dcb_du_json_subprocess(tree: Path):
    r = run_dcb("du", str(tree), "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["apparent_bytes"] == _du("-sxb", str(tree))
    assert data["size_bytes"] == _du("-sx", "--block-size=1", str(tree))
    assert data["file_count"] == 5 and data["dir_count"] == 4
    names = [c["name"] for c in data["children"]]
    assert set(names) == {"big", "small", "link", "empty", "top.txt"}
    sizes = [c["size_bytes"] for c in data["children"]]
    assert sizes == sorted(sizes, reverse=True)
    assert all("children" not in c for c in data["children"])  # --depth 1 by default
    assert r.err == ""  # progress only on a terminal


def test_dcb_du_errors_subprocess(tmp_path: Path):
    r = run_dcb("du", str(tmp_path / "missing"))
    assert r.code == NotFound.exit_code
    assert r.err.strip() == f"dcb: {tmp_path / 'missing'}: no such directory"
    (tmp_path / "f").write_text("x")
    r = run_dcb("du", str(tmp_path / "f"))
    assert r.code == UsageError.exit_code and "not a directory" in r.err
