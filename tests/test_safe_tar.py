"""services.safe_tar: validating and extracting volume tars. No Docker; runs as root here.

Round trips go through archives made by real GNU tar (the flags the backup uses), busybox tar
and tarfile, and compare a full listing of the source tree (extended attributes, ACLs and
capabilities included, also as getfacl/getcap print them) with the extracted one. Crafted
archives must be refused by ``validate_archive``, ``StreamValidator`` and ``extract_archive``
alike, with nothing appearing outside the destination; symlinks, whatever they point at, are
data and come back verbatim.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from dcb.services.safe_tar import (
    CorruptArchive,
    Entry,
    Listing,
    StreamValidator,
    UnsafeArchive,
    clear_directory,
    extract_archive,
    validate_archive,
)
from dcb.services.volumes import TAR_FLAGS

T0 = 1_700_000_000
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown")


# -------------------------------------------------------------------------------------------
# helpers


class ReadOnly:
    """Only ``read``, like restore's metered wrapper: what the API must cope with."""

    def __init__(self, data: bytes) -> None:
        self.f = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)


def stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@dataclass
class M:
    """One member of a crafted archive."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = T0
    pax: dict[str, str] | None = None

    def info(self) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(self.name)
        ti.type, ti.linkname, ti.mode = self.type, self.linkname, self.mode
        ti.uid, ti.gid, ti.mtime = self.uid, self.gid, self.mtime
        if self.pax:
            ti.pax_headers = dict(self.pax)
        if self.type == tarfile.CHRTYPE:
            ti.devmajor, ti.devminor = 1, 3
        if self.type == tarfile.BLKTYPE:
            ti.devmajor, ti.devminor = 7, 0
        ti.size = len(self.data) if self.type == tarfile.REGTYPE else 0
        return ti


# D, S, H: a directory, a symlink, a hard link (short, so the tables below read like listings)
def D(name: str, mode: int = 0o755, **kw: object) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def S(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def H(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, linkname=target)


def make_tar(*members: M, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            ti = m.info()
            tf.addfile(ti, io.BytesIO(m.data) if ti.size else None)
    return buf.getvalue()


def gnu_tar(src: Path) -> bytes:
    """The archive the backup makes (services/volumes.py LocalTar)."""
    return subprocess.run(["tar", *TAR_FLAGS, "-C", str(src), "-cf", "-", "."],
                          check=True, capture_output=True).stdout


def xattrs_of(path: Path) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                        for n in os.listxattr(path, follow_symlinks=False)))


def X(name: str, value: bytes) -> dict[str, str]:
    """A pax record as GNU tar --xattrs writes it."""
    return {f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")}


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A raw system.posix_acl_* value: (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


NO_ID = 0xFFFFFFFF
FILE_ACL = acl((0x01, 6, NO_ID), (0x02, 4, 1234), (0x04, 4, NO_ID), (0x10, 6, NO_ID),
               (0x20, 4, NO_ID))
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def snapshot(root: Path, xattrs: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything extraction promises to keep, per path ('.' is the root itself)."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        names = ["."] if dirpath == str(root) else []
        for rel in (*names, *dirnames, *filenames):
            full = Path(dirpath) / rel
            path = os.path.relpath(full, root)
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                kind, extra = "symlink", os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, extra = "dir", ""
            elif stat.S_ISREG(st.st_mode):
                kind, extra = "file", hashlib.sha256(full.read_bytes()).hexdigest()
                inodes.setdefault((st.st_dev, st.st_ino), []).append(path)
            else:
                kind, extra = "other", ""
            mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
            out[path] = (kind, mode, st.st_uid, st.st_gid, st.st_mtime_ns, extra,
                         xattrs_of(full) if xattrs else ())
    for paths in inodes.values():  # hard links: every name of an inode knows its first name
        first = min(paths)
        for p in paths:
            out[p] += (first if len(paths) > 1 else None,)
    return out


def set_mtimes(root: Path) -> None:
    """Whole-second mtimes (GNU tar's default format keeps seconds), deepest first."""
    paths = sorted((p for p in root.rglob("*")), key=lambda p: len(p.parts), reverse=True)
    for i, p in enumerate([*paths, root]):
        t = (T0 + 1000 * i) * 1_000_000_000
        os.utime(p, ns=(t, t), follow_symlinks=False)


def build_tree(src: Path, metadata: bool = True) -> None:
    """A volume-like tree with the awkward bits: owners 999/1000, setgid/setuid/sticky,
    read-only dirs, symlinks (relative, absolute, leaving the tree, dangling, a loop), a hard
    link, an empty dir, odd names, a 3 MB and a sparse file; with ``metadata`` also extended
    attributes (user, trusted, security, binary values, '=' and '%' in names), access and
    default ACLs (setfacl) and a file capability (setcap)."""
    src.mkdir(exist_ok=True)
    data = src / "data"
    data.mkdir()
    (data / "PG_VERSION").write_text("15\n")
    (data / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with open(data / "sparse.img", "wb") as f:
        f.truncate(20 * 1024 * 1024)
        f.seek(5 * 1024 * 1024)
        f.write(b"in the middle")
        f.seek(20 * 1024 * 1024 - 3)
        f.write(b"end")
    shared = src / "shared"
    shared.mkdir()
    (shared / "with space & quote's.txt").write_text("odd name\n")
    (shared / "Zoë ☃ ünïcödé.json").write_text('{"snow": "☃"}\n')
    (shared / os.fsdecode(b"latin1-caf\xe9")).write_text("not utf-8\n")
    (shared / "new\nline").write_text("newline in name\n")
    os.link(data / "big.bin", shared / "big-hardlink")
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "setuid-bin").write_text("x")
    (src / "latest").symlink_to("data/PG_VERSION")
    (src / "dangling").symlink_to("nowhere/at/all")
    (src / "current").symlink_to("/data/releases/42")
    (src / "escape").symlink_to("../../../../etc/passwd")
    (src / "loop-a").symlink_to("loop-b")
    (src / "loop-b").symlink_to("loop-a")
    (src / "capable").write_bytes(b"\x7fELF pretend binary")
    (src / "empty").mkdir()
    ro = src / "readonly"
    ro.mkdir()
    (ro / "inside.txt").write_text("read only\n")
    (src / "sticky").mkdir()
    (src / ("x" * 200)).write_text("long name\n")
    deep = src.joinpath(*["d"] * 40)
    deep.mkdir(parents=True)
    (deep / "bottom").write_text("deep\n")

    owners = {"data": (999, 999), "data/PG_VERSION": (999, 999), "data/big.bin": (1000, 1000),
              "data/sparse.img": (999, 1000), "shared": (1000, 1000), "latest": (1000, 1000),
              "empty": (1000, 1000), "readonly": (999, 999), "readonly/inside.txt": (999, 999)}
    for rel, (uid, gid) in owners.items():
        os.chown(src / rel, uid, gid, follow_symlinks=False)
    os.chown(src, 999, 999)
    modes = {"data": 0o700, "data/PG_VERSION": 0o600, "data/big.bin": 0o644,
             "data/sparse.img": 0o640, "shared": 0o2775, "run.sh": 0o755,
             "setuid-bin": 0o4755, "empty": 0o750, "readonly/inside.txt": 0o444,
             "readonly": 0o555, "sticky": 0o1777}
    for rel, mode in modes.items():
        os.chmod(src / rel, mode)
    os.chmod(src, 0o750)
    if metadata:
        os.setxattr(src / "data/PG_VERSION", "user.comment", b"the cluster's version")
        os.setxattr(src / "shared" / "with space & quote's.txt", "user.a=b%c",
                    b"binary\n\x00\xff value")
        os.setxattr(src / "shared", "trusted.overlay", b"y")
        os.setxattr(src / "run.sh", "security.ima", b"\x03\x02signed")
        os.setxattr(src, "user.root", b"on the root")
        subprocess.run(["setfacl", "-m", "u:1234:rw,g:2345:r", str(src / "shared/new\nline")],
                       check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx,g:2345:rx", str(src / "shared")],
                       check=True)
        subprocess.run(["setfacl", "-m", "u:4321:rx", str(src / "shared")], check=True)
        os.chown(src / "capable", 1000, 1000)
        os.chmod(src / "capable", 0o750)
        subprocess.run(["setcap", "cap_net_bind_service,cap_sys_time=+ep", str(src / "capable")],
                       check=True)
    set_mtimes(src)


def tools_view(root: Path) -> str:
    """getfacl and getcap output over a tree, as an administrator would compare them."""
    acls = subprocess.run(["getfacl", "-R", "-n", "-p", "-s", "."], cwd=root, check=True,
                          capture_output=True, text=True).stdout
    caps = subprocess.run(["getcap", "-r", "."], cwd=root, check=True, capture_output=True,
                          text=True).stdout
    return acls + caps


@dataclass
class Area:
    """dest/ is where archives go; outside/ next to it must never change."""

    base: Path
    dest: Path
    outside: Path

    def assert_untouched(self) -> None:
        assert sorted(os.listdir(self.base)) == ["dest", "outside"]
        assert os.listdir(self.outside) == ["passwd"]
        pw = self.outside / "passwd"
        assert pw.read_bytes() == b"root:x:0:0\n"
        st = pw.lstat()
        assert st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o644


@pytest.fixture
def area(tmp_path: Path) -> Area:
    base = tmp_path / "area"
    dest, outside = base / "dest", base / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0\n")
    os.chmod(outside / "passwd", 0o644)
    return Area(base, dest, outside)


# -------------------------------------------------------------------------------------------
# round trips


@requires_root
def test_gnu_tar_round_trip_is_exact(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    data = gnu_tar(src)

    listing = validate_archive(stream(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    got = extract_archive(ReadOnly(data), dest, expected=listing)  # type: ignore[arg-type]

    assert got == listing
    assert snapshot(dest) == snapshot(src)
    assert "user:1234:rw-" in tools_view(dest) and "cap_net_bind_service" in tools_view(dest)
    assert tools_view(dest) == tools_view(src)
    assert listing.root is not None
    assert (listing.root.mode, listing.root.uid, listing.root.gid) == (0o750, 999, 999)
    files = listing.files()
    assert files["shared"] == Entry("shared", "dir", 0o2775, 1000, 1000, 0,
                                    files["shared"].mtime, None, files["shared"].xattrs)
    assert {files["data/big.bin"].type, files["shared/big-hardlink"].type} == {"file",
                                                                                "hardlink"}
    assert files["latest"].linkname == "data/PG_VERSION"
    assert os.readlink(dest / "current") == "/data/releases/42"
    assert os.readlink(dest / "escape") == "../../../../etc/passwd"
    assert dict(files["capable"].xattrs)["security.capability"][:4] == struct.pack("<I",
                                                                                  0x02000001)
    assert {n for n, _ in files["shared"].xattrs} == {
        "trusted.overlay", "system.posix_acl_access", "system.posix_acl_default"}
    assert "." not in files and not any(p.startswith("./") for p in files)
    # --sparse members come back sparse, not as 20 MB of zeros on disk
    assert (dest / "data/sparse.img").stat().st_blocks * 512 < 1024 * 1024


class Dribble:
    """A source that hands out short reads of irregular sizes (as a decompressor or a pipe
    may), through ``read`` and ``readinto`` alike."""

    def __init__(self, data: bytes) -> None:
        self.f = io.BytesIO(data)
        self.sizes = [1, 511, 513, 4096, 65537, 3, 1 << 20, 7777]
        self.i = 0

    def _size(self, n: int) -> int:
        self.i += 1
        return max(1, min(n, self.sizes[self.i % len(self.sizes)]))

    def read(self, n: int = -1) -> bytes:
        return self.f.read(self._size(n if n >= 0 else 1 << 30))

    def readinto(self, view: memoryview) -> int:
        b = self.f.read(self._size(len(view)))
        view[:len(b)] = b
        return len(b)


def test_short_irregular_reads_extract_exactly(tmp_path: Path) -> None:
    """Headers, pax records, small files and the large ones written with O_DIRECT come out
    the same when the source returns a few bytes at a time."""
    src = tmp_path / "src"
    build_tree(src)
    before = (src / "data").stat()
    long_name = src / "data" / ("long-" * 40 + "name.txt")  # a pax path record
    long_name.write_bytes(b"pax path\n")
    os.utime(long_name, (T0, T0))  # archives keep whole seconds
    os.utime(src / "data", ns=(before.st_atime_ns, before.st_mtime_ns))
    data = gnu_tar(src)
    dest = tmp_path / "dest"
    dest.mkdir()
    got = extract_archive(Dribble(data), dest)  # type: ignore[arg-type]
    assert got == validate_archive(stream(data))
    assert snapshot(dest) == snapshot(src)
    assert hashlib.sha256((dest / "data/big.bin").read_bytes()).digest() == \
        hashlib.sha256((src / "data/big.bin").read_bytes()).digest()


@requires_root
def test_busybox_tar_round_trip(tmp_path: Path) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox not installed")
    src = tmp_path / "src"
    build_tree(src, metadata=False)  # busybox tar keeps no extended attributes
    (src / "data/sparse.img").unlink()  # busybox stores no sparse files; keep the test short
    (src / "shared" / os.fsdecode(b"latin1-caf\xe9")).unlink()
    set_mtimes(src)
    data = subprocess.run(["busybox", "tar", "-c", "-f", "-", "-C", str(src), "."],
                          check=True, capture_output=True).stdout
    listing = validate_archive(stream(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_archive(stream(data), dest, expected=listing)
    assert snapshot(dest) == snapshot(src)


@requires_root
def test_pg_basebackup_style_ustar(area: Area) -> None:
    """pg_basebackup -Ft: ustar, no './' prefix, dirs with a trailing '/', owner 999, 0700/0600,
    no root member (the destination keeps its own mode and owner)."""
    data = make_tar(
        M("PG_VERSION", data=b"15\n", mode=0o600, uid=999, gid=999),
        D("global", 0o700, uid=999, gid=999),
        M("global/pg_control", data=b"\x01" * 8192, mode=0o600, uid=999, gid=999),
        D("base", 0o700, uid=999, gid=999),
        D("base/1", 0o700, uid=999, gid=999),
        M("base/1/1259", data=b"\x02" * 16384, mode=0o600, uid=999, gid=999),
        D("pg_wal", 0o700, uid=999, gid=999),
        D("pg_wal/archive_status", 0o700, uid=999, gid=999),
        M("backup_label", data=b"START WAL LOCATION: 0/2000028\n", mode=0o600, uid=999,
          gid=999),
        fmt=tarfile.USTAR_FORMAT)
    assert b"global/\0" in data  # tarfile, like pg_basebackup, ends directory names with '/'
    before = area.dest.stat()
    listing = extract_archive(stream(data), area.dest)
    assert listing.root is None
    assert [e.path for e in listing.entries][:3] == ["PG_VERSION", "global", "global/pg_control"]
    st = (area.dest / "base/1/1259").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size) == (0o600, 999, 999,
                                                                             16384)
    assert stat.S_IMODE((area.dest / "pg_wal/archive_status").stat().st_mode) == 0o700
    after = area.dest.stat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)
    area.assert_untouched()


@requires_root
def test_pax_keeps_nanoseconds_big_ids_and_root_metadata(area: Area) -> None:
    data = make_tar(
        D(".", 0o711, uid=70, gid=71),
        M("f", data=b"x", uid=3_000_000, gid=2**32 - 2, mtime=1_700_000_000.25),
        D("late/sub", 0o755),
        M("late/sub/f", data=b"y", mode=0o400),
        D("late", 0o500, uid=5, gid=6),  # the directory's own member after its contents
    )
    extract_archive(stream(data), area.dest)
    st = (area.dest / "f").stat()
    assert (st.st_uid, st.st_gid) == (3_000_000, 2**32 - 2)
    assert st.st_mtime_ns == 1_700_000_000_250_000_000
    late = (area.dest / "late").stat()
    assert (stat.S_IMODE(late.st_mode), late.st_uid, late.st_gid, late.st_mtime) == (0o500, 5,
                                                                                     6, T0)
    assert (area.dest / "late/sub/f").read_bytes() == b"y"
    root = area.dest.stat()
    assert (stat.S_IMODE(root.st_mode), root.st_uid, root.st_gid, root.st_mtime) == (0o711, 70,
                                                                                     71, T0)
    area.assert_untouched()


@pytest.fixture
def world_reachable_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="dcb-safe-tar-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def test_extract_as_non_root_skips_chown_and_handles_read_only_dirs(
        world_reachable_dir: Path) -> None:
    """Read-only directories (final mode applied at the end) do not block their contents."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    data = make_tar(D("ro", 0o555, uid=999), M("ro/f", data=b"x", mode=0o444, uid=999),
                    D("ro/sub", 0o500), M("ro/sub/g", data=b"y"), D("locked", 0o000))
    dest = world_reachable_dir / "dest"
    dest.mkdir()
    os.chown(dest, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # the child drops root and extracts; the exit code says how it went
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            extract_archive(stream(data), dest)
            code = 0
        except BaseException as e:
            os.write(2, f"child: {e!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    st = (dest / "ro/f").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o444)
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((dest / "ro/sub").stat().st_mode) == 0o500
    assert stat.S_IMODE((dest / "locked").stat().st_mode) == 0o000
    assert (dest / "ro/sub/g").read_bytes() == b"y"


# -------------------------------------------------------------------------------------------
# crafted archives


def crafted(outside: str) -> list[tuple[str, list[M], str, str]]:
    """(id, members, words in the message, member the message must name)."""
    return [
        ("dotdot", [M("../x", data=b"evil")], "'..' component", "../x"),
        ("absolute", [M(f"{outside}/abs", data=b"evil")], "absolute path", f"{outside}/abs"),
        ("nested dotdot", [D("a"), M("a/../../x", data=b"evil")], "'..'", "a/../../x"),
        ("symlink then file through it",
         [S("link", "../outside"), M("link/evil", data=b"evil")],
         "its parent 'link' is a symlink", "link/evil"),
        ("symlink inside, then a file through it",
         [D("sub"), S("link", "sub"), M("link/x", data=b"x")],
         "its parent 'link' is a symlink", "link/x"),
        ("file below a file", [M("f", data=b"1"), M("f/x", data=b"2")],
         "its parent 'f' is a file", "f/x"),
        ("symlink over an earlier member's parent",
         [M("d/x", data=b"1"), S("d", "../outside")], "earlier members are inside it", "d"),
        ("absolute symlink, then a file through it",
         [S("abs", outside), M("abs/passwd", data=b"evil")],
         "its parent 'abs' is a symlink", "abs/passwd"),
        ("hardlink through a symlink",
         [D("d"), M("d/f", data=b"x"), S("l", "d"), H("h", "l/f")],
         "not an earlier member", "h"),
        ("symlink with an empty target", [S("e", "")], "empty target", "e"),
        ("hardlink to an absolute path", [H("pw", f"{outside}/passwd")], "absolute path", "pw"),
        ("hardlink outside", [H("pw", "../outside/passwd")], "'..' component", "pw"),
        ("hardlink to a later member", [H("a", "b"), M("b", data=b"x")],
         "not an earlier member", "a"),
        ("hardlink to a directory", [D("d"), H("h", "d")], "which is a dir", "h"),
        ("hardlink to a symlink", [S("s", "x"), H("h", "s")], "which is a symlink", "h"),
        ("character device", [M("null", tarfile.CHRTYPE)], "character device", "null"),
        ("block device", [M("sda", tarfile.BLKTYPE)], "block device", "sda"),
        ("fifo", [M("pipe", tarfile.FIFOTYPE)], "fifo", "pipe"),
        ("duplicate", [M("a", data=b"1"), M("./a", data=b"2")], "duplicate entry", "./a"),
        ("duplicate directory", [D("d"), D("d/")], "duplicate entry", "d"),
        ("component too long", [M("n" * 256, data=b"x")], "longer than 255 bytes", "n" * 256),
        ("name too long", [M("d/" * 2048 + "f", data=b"x")], "longer than 4096 bytes", "d/d/"),
        ("root that is a file", [M(".", data=b"x")], "archive root is a file", "."),
        ("uid that chown reads as 'keep'", [M("f", uid=2**32 - 1)], "out of range", "f"),
        ("ACL entries out of order",
         [M("f", pax=X("system.posix_acl_access",
                       acl((0x04, 4, NO_ID), (0x01, 6, NO_ID), (0x20, 4, NO_ID))))],
         "ACL entries out of order", "f"),
        ("ACL with named entries but no mask",
         [M("f", pax=X("system.posix_acl_access",
                       acl((0x01, 6, NO_ID), (0x02, 4, 7), (0x04, 4, NO_ID), (0x20, 4, NO_ID))))],
         "out of order or incomplete", "f"),
        ("not an ACL", [M("f", pax=X("system.posix_acl_access", b"\x01\x00\x00\x00abc"))],
         "not a version 2 POSIX ACL", "f"),
        ("default ACL on a file", [M("f", pax=X("system.posix_acl_default", FILE_ACL))],
         "default ACL on something else than a directory", "f"),
        ("ACL on a symlink", [M("l", tarfile.SYMTYPE, linkname="x",
                                pax=X("system.posix_acl_access", FILE_ACL))],
         "an ACL on a symlink", "l"),
        ("user attribute on a symlink", [M("l", tarfile.SYMTYPE, linkname="x",
                                           pax=X("user.x", b"1"))],
         "only on files and directories", "l"),
        ("v1 capability", [M("f", pax=X("security.capability",
                                        struct.pack("<III", 0x01000000, 1, 0)))],
         "not a v2 or v3 file capability", "f"),
        ("attribute namespace we cannot write", [M("f", pax=X("system.nfs4_acl", b"x"))],
         "namespace the restore cannot write", "f"),
        ("ACL stored only as text", [M("f", pax={"SCHILY.acl.access": "user::rw-\n"})],
         "an ACL stored only as text", "f"),
        ("bsdtar attribute record", [M("f", pax={"LIBARCHIVE.xattr.user.x": "eA=="})],
         "metadata the restore cannot apply", "f"),
    ]


CRAFTED = [c[0] for c in crafted("/outside")]


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_archive_is_refused_by_both(area: Area, case: str) -> None:
    for c, members, words, name in crafted(str(area.outside)):
        if c != case:
            continue
        data = make_tar(*members)
        with pytest.raises(UnsafeArchive) as v:
            validate_archive(stream(data))
        assert words in str(v.value), case
        assert repr(name)[:-1] in str(v.value), case  # names the member (prefix for long ones)
        assert not isinstance(v.value, CorruptArchive), case
        with pytest.raises(UnsafeArchive) as x:
            extract_archive(stream(data), area.dest)
        # extraction stops at the first bad member, with the same words as validation
        n = len(x.value.problems)
        assert n and x.value.problems == v.value.problems[:n], case
        area.assert_untouched()
        clear_directory(area.dest)
        # the backup's in-line check finds the same, from the stream as it is written
        with pytest.raises(UnsafeArchive) as b:
            check_in_line(data)
        assert b.value.problems == v.value.problems, case


def check_in_line(data: bytes, compression: str = "none", chunk: int = 7000) -> int:
    """What the backup does: feed the stream chunk by chunk while it is written."""
    v = StreamValidator(compression)
    try:
        for i in range(0, len(data), chunk):
            v.feed(data[i:i + chunk])
        return v.finish()
    finally:
        v.close()


def test_validation_reports_every_problem_but_at_most_ten(area: Area) -> None:
    data = make_tar(M("ok", data=b"fine"), M("../a"), S("b", ""), M("c", tarfile.FIFOTYPE))
    with pytest.raises(UnsafeArchive) as e:
        validate_archive(stream(data))
    assert len(e.value.problems) == 3
    for name in ("'../a'", "'b'", "'c'"):
        assert name in str(e.value)
    assert e.value.hint and "nothing was extracted" in e.value.hint

    many = make_tar(*[M(f"../{i}") for i in range(25)])
    with pytest.raises(UnsafeArchive) as e:
        validate_archive(stream(many))
    assert "and 15 more" in str(e.value) and len(e.value.problems) == 25
    assert "\n" not in str(e.value)


def test_nothing_written_before_the_bad_member_is_outside(area: Area) -> None:
    """extract_archive stops at the first bad member; earlier good members stay inside dest."""
    data = make_tar(M("good", data=b"ok"), S("l", "../outside"), M("l/evil", data=b"x"))
    with pytest.raises(UnsafeArchive, match="'l/evil': its parent 'l' is a symlink"):
        extract_archive(stream(data), area.dest)
    assert sorted(os.listdir(area.dest)) == ["good", "l"]
    assert os.readlink(area.dest / "l") == "../outside"
    area.assert_untouched()


def test_symlinks_are_data_whatever_they_point_at(area: Area) -> None:
    """Absolute, escaping, looping and dangling links come back verbatim; nothing is ever
    written through one (a member below a symlink is refused above)."""
    links = {"current": "/data/releases/42", "abs-dir": str(area.outside),
             "abs-file": str(area.outside / "passwd"), "up": "../outside/passwd",
             "d/chain": "../up", "loop-a": "loop-b", "loop-b": "loop-a", "dotdot": "..",
             "dangling": "no/such/file"}
    data = make_tar(D("d"), *[S(n, t) for n, t in links.items()],
                    M("d/after", data=b"a file after the links"))
    listing = validate_archive(stream(data))
    assert check_in_line(data) == len(links) + 2
    extract_archive(stream(data), area.dest, expected=listing)
    for name, target in links.items():
        assert os.readlink(area.dest / name) == target
    # Extracting again over them replaces the links, never writes through them.
    extract_archive(stream(make_tar(M("abs-file", data=b"replaced"),
                                    M("up", data=b"replaced"), D("abs-dir"),
                                    M("abs-dir/new", data=b"inside"))), area.dest)
    assert (area.dest / "abs-file").read_bytes() == b"replaced"
    assert not (area.dest / "abs-dir").is_symlink()
    area.assert_untouched()


@requires_root
def test_attributes_acls_and_capability_from_a_crafted_archive(area: Area) -> None:
    """A capability survives its own chown and the setuid bit; files extracted into a
    directory with a default ACL do not inherit it (directories get theirs last)."""
    dir_default = acl((0x01, 7, NO_ID), (0x02, 7, 1234), (0x04, 5, NO_ID), (0x10, 7, NO_ID),
                      (0x20, 5, NO_ID))
    data = make_tar(
        D("d", 0o2750, uid=1000, gid=1000, pax={**X("system.posix_acl_default", dir_default),
                                                 **X("user.dir", b"d")}),
        M("d/plain", data=b"no ACL of its own", uid=1000),
        M("d/bin", data=b"x", mode=0o4755, uid=1000, gid=1000,
          pax={**X("security.capability", CAP_NET_BIND), **X("user.bin", b"\x00\xff"),
               **X("system.posix_acl_access", FILE_ACL)}),
        H("d/bin-link", "d/bin"))
    listing = validate_archive(stream(data))
    extract_archive(stream(data), area.dest, expected=listing)
    d = area.dest / "d"
    assert xattrs_of(d) == (("system.posix_acl_default", dir_default), ("user.dir", b"d"))
    assert xattrs_of(d / "plain") == ()
    st = (d / "bin").stat()
    # the ACL sets the permission bits (owner rw, mask rw, other r); setuid stays
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o4664)
    assert dict(xattrs_of(d / "bin")) == {"security.capability": CAP_NET_BIND,
                                          "user.bin": b"\x00\xff",
                                          "system.posix_acl_access": FILE_ACL}
    assert "cap_net_bind_service=ep" in subprocess.run(
        ["getcap", str(d / "bin")], capture_output=True, text=True, check=True).stdout
    area.assert_untouched()


def test_old_default_acl_of_the_destination_is_not_inherited(area: Area) -> None:
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(area.dest)], check=True)
    before = os.getxattr(area.dest, "system.posix_acl_default")
    extract_archive(stream(make_tar(M("f", data=b"1"), D("sub"), M("sub/g", data=b"2"))),
                    area.dest)
    for p in ("f", "sub", "sub/g"):
        assert xattrs_of(area.dest / p) == (), p
    assert os.getxattr(area.dest, "system.posix_acl_default") == before  # no '.' member


def test_in_line_check_of_plain_and_zstd_streams(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_tree(src)
    data = gnu_tar(src)
    n = len(validate_archive(stream(data)).entries)
    assert check_in_line(data, chunk=1 << 20) == n
    v = StreamValidator("zstd")
    z = zstandard.ZstdCompressor(level=1).compress(data)
    for i in range(0, len(z), 4096):
        v.feed(z[i:i + 4096])
    assert v.finish() == n and v.raw_bytes == len(data)
    # a stream cut at a member boundary, and a damaged one, fail; a stopped check ends
    cut = data[:len(data) // 2]
    with pytest.raises(CorruptArchive):
        check_in_line(cut)
    junk = StreamValidator()
    with pytest.raises(CorruptArchive):
        for _ in range(100):
            junk.feed(os.urandom(65536))
    junk.close()
    stopped = StreamValidator()
    stopped.feed(data[:100_000])
    stopped.close()


def test_allowed_links_inside_the_root(area: Area) -> None:
    data = make_tar(D("d"), D("d/e"), S("d/e/up", "../.."), S("d/rel", "e/up/d"),
                    S("dot", "."), S("self-dir", "d/./e/../e"), S("dangling", "no/such/file"),
                    S("pnpm", "d/e"), S("pnpm-bin", "pnpm/up/d/rel"),
                    M("d/e/f", data=b"shared", mode=0o640, uid=7), H("h1", "./d/e/f"),
                    H("d/h2", "h1"))
    listing = validate_archive(stream(data))
    extract_archive(stream(data), area.dest, expected=listing)
    inode = (area.dest / "d/e/f").stat()
    assert inode.st_nlink == 3 and (area.dest / "d/h2").stat().st_ino == inode.st_ino
    assert listing.files()["h1"].linkname == "d/e/f"  # normalised like member names
    assert os.readlink(area.dest / "d/e/up") == "../.."
    # pnpm -> d/e, d/e/up -> the root, so pnpm-bin -> d/rel -> d/e/up/d = d
    assert (area.dest / "pnpm-bin").resolve() == (area.dest / "d").resolve()


# -------------------------------------------------------------------------------------------
# what is already in the destination


def test_existing_symlink_directory_in_dest_is_replaced_not_followed(area: Area) -> None:
    """Documented choice: anything in a member's way is removed (a symlink is unlinked, never
    followed) and replaced by what the archive holds."""
    (area.dest / "sub").symlink_to(area.outside)
    (area.dest / "sub2").symlink_to(area.outside)
    (area.dest / "f").symlink_to(area.outside / "new-file")
    (area.dest / "h").symlink_to(area.outside / "passwd")
    (area.dest / "was-dir").mkdir()
    (area.dest / "was-dir/old").write_text("old")
    (area.dest / "was-file").write_text("old")
    data = make_tar(M("sub/file", data=b"in sub"),  # parent only implied
                    D("sub2"), M("sub2/file", data=b"in sub2"),
                    M("f", data=b"plain file"), M("t", data=b"target"), H("h", "t"),
                    M("was-dir", data=b"now a file"), D("was-file"))
    extract_archive(stream(data), area.dest)
    for d in ("sub", "sub2", "was-file"):
        assert (area.dest / d).is_dir() and not (area.dest / d).is_symlink()
    assert (area.dest / "sub/file").read_bytes() == b"in sub"
    assert (area.dest / "sub2/file").read_bytes() == b"in sub2"
    assert not (area.dest / "f").is_symlink() and (area.dest / "f").read_bytes() == b"plain file"
    assert (area.dest / "h").stat().st_ino == (area.dest / "t").stat().st_ino
    assert (area.dest / "was-dir").read_bytes() == b"now a file"
    area.assert_untouched()


def test_clear_directory_does_not_follow_symlinks(area: Area) -> None:
    d = area.dest
    (d / "a/b").mkdir(parents=True)
    (d / "a/b/f").write_text("x")
    (d / "ro").mkdir()
    (d / "ro/f").write_text("x")
    os.chmod(d / "ro", 0o500)
    (d / "to-outside").symlink_to(area.outside)
    (d / "a/to-passwd").symlink_to(area.outside / "passwd")
    (d / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(d / "fifo")
    fd = os.open(d, os.O_RDONLY)
    for _ in range(1200):  # deeper than Python's recursion limit
        os.mkdir("z", dir_fd=fd)
        fd, old = os.open("z", os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    os.chmod(d, 0o751)
    clear_directory(d)
    assert os.listdir(d) == []
    assert stat.S_IMODE(d.stat().st_mode) == 0o751
    area.assert_untouched()


# -------------------------------------------------------------------------------------------
# expected listing, damaged streams


def test_expected_listing_must_match(area: Area) -> None:
    a = make_tar(D("d"), M("d/f", data=b"1234"), S("l", "d/f"))
    listing = validate_archive(stream(a))
    cases = [
        (make_tar(D("d"), M("d/f", data=b"12345"), S("l", "d/f")), "size 5 instead of 4"),
        (make_tar(D("d"), M("d/f", data=b"1234"), S("l", "d")), "linkname 'd' instead of"),
        (make_tar(D("d"), M("d/f", data=b"1234"), S("l", "d/f"), M("x")),
         "'x': not in the validated listing"),
        (make_tar(D("d"), M("d/f", data=b"1234")), "'l': validated, but missing"),
        (make_tar(D("."), D("d"), M("d/f", data=b"1234"), S("l", "d/f")), "archive root"),
    ]
    for data, words in cases:
        clear_directory(area.dest)
        with pytest.raises(UnsafeArchive, match=words.replace("(", r"\(")):
            extract_archive(stream(data), area.dest, expected=listing)
    clear_directory(area.dest)
    assert extract_archive(stream(a), area.dest, expected=listing) == listing
    area.assert_untouched()


def damaged_streams() -> dict[str, tuple[bytes, str]]:
    good = make_tar(M("a", data=os.urandom(100_000)), M("b", data=b"second"),
                    fmt=tarfile.GNU_FORMAT)
    end_of_b = 512 + 100_352 + 512 + 512
    assert good[end_of_b:].count(0) == len(good) - end_of_b  # only the end marker + padding
    flipped = bytearray(good)
    flipped[100_864 + 3] ^= 0x20  # second header's name: bad checksum
    return {
        "cut inside data": (good[:50_000], "unexpected end of data|ends inside 'a'"),
        "cut at a member boundary": (good[:end_of_b], "without an end-of-archive marker"),
        "damaged header": (bytes(flipped), "damaged header (bad checksum) in or after member"),
        "data after the end": (good + b"garbage" + bytes(505), "data after its end-of-archive"),
        "empty stream": (b"", "not a readable tar stream"),
        "not a tar": (os.urandom(4096), "not a readable tar stream"),
    }


@pytest.mark.parametrize("case", list(damaged_streams()))
def test_damaged_stream_is_refused(area: Area, case: str) -> None:
    """tarfile silently stops at a bad or missing header; that must not pass for a short but
    valid archive."""
    data, words = damaged_streams()[case]
    pattern = words.replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(CorruptArchive, match=pattern):
        validate_archive(stream(data))
    with pytest.raises(CorruptArchive, match=pattern):
        extract_archive(stream(data), area.dest)
    if case == "cut inside data":
        assert "a" not in os.listdir(area.dest)  # no truncated file left under its name
    area.assert_untouched()


def test_empty_archive_is_fine() -> None:
    """Only end-of-archive blocks: an empty volume without a root member."""
    assert validate_archive(stream(bytes(10240))) == Listing((), None)


def test_hostile_pax_headers_are_refused_quickly(area: Area) -> None:
    """Python 3.11.7 parses pax records with quadratic regexes (CVE-2024-6232)."""

    def with_pax(payload: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            ti = tarfile.TarInfo("PaxHeaders/f")
            ti.type, ti.size = tarfile.XHDTYPE, len(payload)
            tf.addfile(ti, io.BytesIO(payload))
            ti = tarfile.TarInfo("f")
            tf.addfile(ti)
        return buf.getvalue()

    value = b"1" * 5000
    record = b"path=" + value + b"\n"
    n = len(record) + 5
    well_framed = str(n).encode() + b" " + record
    assert len(well_framed) == n
    for payload in (b"1" * 60_000, well_framed, b"9" * 100_000):
        start = time.monotonic()
        with pytest.raises(CorruptArchive):
            validate_archive(stream(with_pax(payload)))
        assert time.monotonic() - start < 1.0
    # a normal pax header still works
    ok = make_tar(M("ünïcödé/" + "x" * 150, data=b"1"), fmt=tarfile.PAX_FORMAT)
    assert validate_archive(stream(ok)).entries[-1].path.endswith("x" * 150)
