"""Validating and extracting volume tar archives without trusting them.

A volume is restored from a tar stream written by GNU tar (pax format with ``--xattrs
--xattrs-include='*' --sparse --numeric-owner``, services/volumes.py), busybox tar or
pg_basebackup. Python 3.11.7's tarfile predates the 2025 fixes to its extraction filters, and
the ``data`` filter drops numeric owners, so tarfile is used only to *parse* the stream: every
member is checked here and written with plain ``os`` calls.

Rules (the same in :func:`validate_archive`, :class:`StreamValidator` at backup time and,
member by member, in :func:`extract_archive`):

* names: not empty, no NUL, not absolute, no ``..`` component, at most 4096 bytes and 255
  bytes per component; ``./a``, ``a`` and ``a//b/.`` are normalised, so duplicates are caught;
* types: regular (also contiguous and GNU sparse) files, directories, symlinks and hard links
  only; devices, fifos and anything else are refused;
* symlinks are data: stored and restored verbatim, absolute or relative, whatever they point
  at (``current -> /data/releases/42``); only a target a filesystem cannot hold (empty, NUL,
  4096 bytes or more) is refused. Safety comes from never following a link while extracting;
* hard links: the target is a regular file (or a hard link to one) seen earlier in the archive;
* no member may sit below a non-directory of the archive (the "symlink, then a file through
  it" attack), in either order;
* numeric owners fit a uid_t (and are not ``-1``, which chown reads as "keep");
* extended attributes (pax ``SCHILY.xattr.*``): ``user.*`` (files and directories only),
  ``trusted.*``, ``security.*`` (a ``security.capability`` must be a v2 or v3 header) and
  POSIX ACLs as their raw ``system.posix_acl_access``/``_default`` values (numeric ids, the
  kernel's own format, checked like the kernel's ``posix_acl_valid``; default ACLs on
  directories only). Metadata the restore would drop (an ACL stored only as text, bsdtar's
  ``LIBARCHIVE.xattr.*``) is refused rather than lost;
* the stream must end with a proper end-of-archive block followed by zero padding only:
  tarfile silently stops at a damaged or missing header, which would look like a short but
  valid archive.

Extraction never follows a symlink inside the destination: every path is walked from a
directory descriptor with ``O_NOFOLLOW``, files are created with ``O_CREAT | O_EXCL``, and
anything already in the way of a member (a symlink, a file, a directory) is removed first,
never written through. Metadata goes on in the order the kernel needs: data, owner (chown
clears setuid/setgid and file capabilities), mode, extended attributes and ACLs, the
capability last, mtime. Directories get theirs at the end, deepest first, so no default ACL
is inherited by what is extracted into them. The destination is normally emptied with
:func:`clear_directory` first; existing entries that the archive does not name are kept.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import os
import queue
import re
import shutil
import stat
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self

import zstandard

from dcb.services.errors import Cancelled, DcbError

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_REPORTED = 10
CHUNK = 1024 * 1024
_STREAM_BUFSIZE = 256 * 1024  # what _Stream reads from its source at least
_MAX_PAX_BYTES = 1024 * 1024  # two 4 KiB paths and extended attributes (64 KiB each at most)
_MAX_GNU_LONG_BYTES = 64 * 1024
_MAX_DIGIT_RUN = 256  # Python < 3.11.10 pax parsing is quadratic in long digit runs
_FD_CACHE_LIMIT = 64
_MAX_ID = 2**32 - 2  # 2**32 - 1 is (uid_t) -1: "do not change" for chown
_NS = 1_000_000_000

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE)
_SPECIAL_NAMES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (_MAX_DIGIT_RUN + 1))

# Extended attributes, as GNU tar stores them in pax records (``--xattrs``).
XATTR_RECORD = "SCHILY.xattr."
ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
CAPABILITY = "security.capability"
_XATTR_NAME_MAX = 255  # Linux XATTR_NAME_MAX
_XATTR_SIZE_MAX = 65536  # Linux XATTR_SIZE_MAX
_XATTR_NAMESPACES = ("user.", "trusted.", "security.")
_ACL_TEXT = {"SCHILY.acl.access": ACL_ACCESS, "SCHILY.acl.default": ACL_DEFAULT}
_DROPPED_RECORDS = ("LIBARCHIVE.xattr.", "RHT.", "SCHILY.fflags")
_XATTR_ESCAPE = re.compile(r"%(3D|25)")
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20)
_CAP_REVISION_MASK = 0xFF000000
_CAP_SIZES = {0x02000000: 20, 0x03000000: 24}  # VFS_CAP_REVISION_2/3 -> XATTR_CAPS_SZ_2/3

# Undocumented tarfile exceptions (not in typeshed); tarfile hides them behind a silent stop.
_HeaderError = tarfile.HeaderError
_InvalidHeader: type[_HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_EOFHeader: type[_HeaderError] = tarfile.EOFHeaderError  # type: ignore[attr-defined]
_EmptyHeader: type[_HeaderError] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]
_TruncatedHeader: type[_HeaderError] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]


class UnsafeArchive(DcbError):
    """A tar archive breaks the extraction rules; the message names the members and why."""

    def __init__(self, message: str, hint: str | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.problems = problems


class CorruptArchive(UnsafeArchive):
    """The tar stream itself is damaged, truncated or not a tar stream."""


class ExtractError(DcbError):
    """Writing a member into the destination failed (disk full, permissions...)."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    """Normalised relative path without ``./``; ``.`` only for :attr:`Listing.root`."""
    type: str
    """``file``, ``dir``, ``symlink`` or ``hardlink``."""
    mode: int
    """Permission bits including setuid, setgid and sticky (``& 0o7777``)."""
    uid: int
    gid: int
    size: int
    mtime: int
    """Seconds since the epoch (floor; extraction keeps a pax header's nanoseconds)."""
    linkname: str | None
    """Symlink target as stored, or the normalised path of a hard link's target."""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    """Extended attributes by name (ACLs as ``system.posix_acl_*``), sorted; a hard link's
    are its target's."""


@dataclass(frozen=True, slots=True)
class Listing:
    entries: tuple[Entry, ...]
    """Every member except the root, in archive order."""
    root: Entry | None
    """The ``.`` member, if the archive has one: the destination's own mode and owner."""

    def files(self) -> dict[str, Entry]:
        """All entries (files, dirs, symlinks, hard links) by path; the root is not included."""
        return {e.path: e for e in self.entries}


# --------------------------------------------------------------------------------------------
# Parsing: tarfile, hardened where 3.11.7 is weak


class _TarFile(tarfile.TarFile):
    header_error: tarfile.HeaderError | None = None
    """Why tarfile's last attempt to read a header failed (it hides it and just stops)."""


class _TarInfo(tarfile.TarInfo):
    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        obj = super().frombuf(buf, encoding, errors)
        # tarfile reads these headers' whole payload into memory before looking at it.
        if obj.type in _PAX_TYPES and obj.size > _MAX_PAX_BYTES:
            raise _InvalidHeader(f"pax header of {obj.size} bytes")
        if (obj.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
                and obj.size > _MAX_GNU_LONG_BYTES):
            raise _InvalidHeader(f"GNU long name of {obj.size} bytes")
        return obj

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tf)
        except tarfile.HeaderError as e:
            if isinstance(tf, _TarFile):
                tf.header_error = e
            raise

    def _proc_pax(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        # Python < 3.11.10 parses pax records with regexes that backtrack quadratically
        # (CVE-2024-6232) and accepts broken framing. Check the records first with the
        # linear rules of the fixed versions, then hand the bytes back to tarfile's stream.
        stream = tf.fileobj
        if isinstance(stream, _Stream):
            data = stream.read(_blocks(self.size))
            stream.unread(data)
            problem = _pax_problem(data)
            if problem:
                raise _InvalidHeader(problem)
        return super()._proc_pax(tf)  # type: ignore[misc]


def _blocks(size: int) -> int:
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _pax_problem(data: bytes) -> str | None:
    pos = 0
    while pos < len(data) and data[pos] != 0:
        m = _PAX_LENGTH.match(data, pos)
        if m is None:
            return "malformed pax header"
        length = int(m.group(1))
        end = pos + length - 1
        if length < 5 or end >= len(data) or data[end] != 0x0A:
            return "malformed pax header"
        keyword, eq, _ = data[m.end():end].partition(b"=")
        if not keyword or not eq:
            return "malformed pax header"
        pos += length
    if _LONG_DIGITS.search(data):
        return (f"pax header with a run of more than {_MAX_DIGIT_RUN} digits (Python 3.11's "
                "tarfile would parse it in quadratic time)")
    return None


def _where(last: str | None) -> str:
    return f"in or after member {last!r}" if last is not None else "at the start"


class _Stream:
    """The forward-only reader tarfile parses an archive stream through (``r|`` mode).

    tarfile's own ``_Stream`` keeps what a read leaves by slicing it off: each 512-byte
    header read copied the rest of its 64 KiB buffer, and data came 64 KiB at a time, joined;
    for a volume of small files that cost about as much CPU as the decompression. This one
    slices what is asked for only, hands large reads through from the source, fills a
    caller's buffer directly (:meth:`readinto`, for O_DIRECT writes), and skips member data
    at the source when the source can (``skip``: read anyway, never looked at).
    """

    def __init__(self, src: Any, bufsize: int = _STREAM_BUFSIZE) -> None:
        self.src = src
        self.bufsize = bufsize
        skip = getattr(src, "skip", None)
        self.skip_src: Callable[[int], int] | None = skip if callable(skip) else None
        self.buf = b""
        self.off = 0
        self.pos = 0

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        """The source belongs to the caller."""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise tarfile.StreamError("reading a stream to its end is not supported")
        avail = len(self.buf) - self.off
        if n <= avail:
            out = self.buf[self.off:self.off + n]
            self.off += n
            self.pos += n
            return out
        parts = [self.buf[self.off:]] if avail else []
        got = avail
        self.buf, self.off = b"", 0
        while got < n:
            need = n - got
            chunk = self.src.read(max(need, self.bufsize))
            if not chunk:
                break
            if len(chunk) > need:
                parts.append(chunk[:need])
                self.buf, self.off = chunk, need
                got = n
            else:
                parts.append(chunk)
                got += len(chunk)
        out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(out)
        return out

    def readinto(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes into ``view``; 0 at the end of the stream."""
        avail = len(self.buf) - self.off
        if avail:
            k = min(avail, len(view))
            view[:k] = memoryview(self.buf)[self.off:self.off + k]
            self.off += k
            self.pos += k
            return k
        readinto = getattr(self.src, "readinto", None)
        if callable(readinto):
            k = int(readinto(view))
        else:
            b = self.src.read(len(view))
            k = len(b)
            view[:k] = b
        self.pos += k
        return k

    def unread(self, data: bytes) -> None:
        """Put back what was just read (the pax check looks before tarfile parses)."""
        self.buf = data + self.buf[self.off:]
        self.off = 0
        self.pos -= len(data)

    def seek(self, pos: int = 0) -> int:
        ahead = pos - self.pos
        if ahead < 0:
            raise tarfile.StreamError("seeking backwards is not allowed")
        avail = len(self.buf) - self.off
        if ahead <= avail:
            self.off += ahead
            self.pos = pos
            return pos
        self.buf, self.off = b"", 0
        left = ahead - avail
        self.pos += avail
        if self.skip_src is not None:
            self.pos += self.skip_src(left)  # short at the end: the next read says so
            return self.pos
        while left:
            chunk = self.src.read(min(left, CHUNK))
            if not chunk:
                break
            left -= len(chunk)
            self.pos += len(chunk)
        return self.pos


@contextlib.contextmanager
def _open_stream(stream: BinaryIO) -> Iterator[_TarFile]:
    try:
        # What tarfile.open(mode="r|") does, with the reader above.
        tf = _TarFile(None, "r", _Stream(stream),  # type: ignore[arg-type]
                      tarinfo=_TarInfo, encoding="utf-8", errors="surrogateescape")
    except DcbError:
        raise
    except Exception as e:
        raise CorruptArchive(f"not a readable tar stream: {e}",
                             hint="the artifact is damaged or not a tar archive") from None
    try:
        yield tf
    finally:
        with contextlib.suppress(Exception):
            tf.close()


def _next_member(tf: _TarFile, last: str | None) -> tarfile.TarInfo | None:
    """The next member, or None at a proper end of the archive (checked)."""
    try:
        ti = tf.next()
        members = getattr(tf, "members", None)
        if isinstance(members, list):
            members.clear()  # stream mode needs no index; keep memory flat
    except DcbError:
        raise
    except Exception as e:
        raise CorruptArchive(f"tar stream damaged {_where(last)}: {e}",
                             hint="the artifact is damaged; verify the backup set") from None
    if ti is not None:
        return ti
    err = tf.header_error
    if not isinstance(err, _EOFHeader):
        if err is None or isinstance(err, _EmptyHeader | _TruncatedHeader):
            why = "ends without an end-of-archive marker (truncated?)"
        else:
            why = f"has a damaged header ({err})"
        raise CorruptArchive(f"tar stream {why} {_where(last)}",
                             hint="the artifact is damaged; verify the backup set")
    try:
        while chunk := tf.fileobj.read(CHUNK):
            if chunk.count(0) != len(chunk):
                raise CorruptArchive(f"tar stream has data after its end-of-archive marker "
                                     f"({_where(last)})",
                                     hint="the artifact is damaged; verify the backup set")
    except DcbError:
        raise
    except Exception as e:
        raise CorruptArchive(f"tar stream damaged {_where(last)}: {e}") from None
    return None


# --------------------------------------------------------------------------------------------
# Validation


def _normalise(name: str) -> tuple[str, None] | tuple[None, str]:
    """(normalised path, None) or (None, why the name is refused). Root is ``.``."""
    if not name:
        return None, "empty name"
    if "\0" in name:
        return None, "NUL byte in the name"
    if name.startswith("/"):
        return None, "absolute path"
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None, "'..' component"
    path = "/".join(parts) or "."
    try:
        raw = os.fsencode(path)
    except UnicodeError:
        return None, "name cannot be encoded"
    if len(raw) > MAX_PATH_BYTES:
        return None, f"name longer than {MAX_PATH_BYTES} bytes"
    if any(len(p) > MAX_NAME_BYTES for p in raw.split(b"/")):
        return None, f"a name component longer than {MAX_NAME_BYTES} bytes"
    return path, None


def _mtime_ns(ti: tarfile.TarInfo) -> int:
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        try:
            d = decimal.Decimal(raw)
        except decimal.InvalidOperation:
            d = None
        if d is not None and d.is_finite():
            return int(d.scaleb(9).to_integral_value(rounding=decimal.ROUND_FLOOR))
    m = ti.mtime
    return m * _NS if isinstance(m, int) else int(m * _NS)


def _sparse_map(ti: tarfile.TarInfo) -> list[tuple[int, int]] | None:
    """A GNU sparse member's data regions (offset, length); None for a plain file."""
    sparse = getattr(ti, "sparse", None)
    if sparse is None:
        return None
    return [(int(off), int(n)) for off, n in sparse]


def _sparse_problem(regions: list[tuple[int, int]], size: int) -> str | None:
    end = 0
    for off, n in regions:
        if n == 0 and 0 <= off <= size:
            continue  # GNU tar's end marker (size, 0) and unused slots (0, 0)
        if off < end or n < 0 or off + n > size:
            return "inconsistent sparse map"
        end = off + n
    return None


def _acl_problem(value: bytes) -> str | None:
    """Why the kernel would refuse this ``system.posix_acl_*`` value (``posix_acl_valid``)."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return "not a version 2 POSIX ACL"
    state, needs_mask = _ACL_USER_OBJ, False
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        if perm & ~7:
            return "ACL entry with unknown permission bits"
        if tag in (_ACL_USER, _ACL_GROUP):
            if ident > _MAX_ID:
                return f"ACL entry for id {ident}"
            needs_mask = True
        if tag == _ACL_USER_OBJ and state == _ACL_USER_OBJ:
            state = _ACL_USER
        elif tag == _ACL_USER and state == _ACL_USER:
            pass
        elif tag == _ACL_GROUP_OBJ and state == _ACL_USER:
            state = _ACL_GROUP
        elif tag == _ACL_GROUP and state == _ACL_GROUP:
            pass
        elif tag == _ACL_MASK and state == _ACL_GROUP:
            state = _ACL_OTHER
        elif tag == _ACL_OTHER and (state == _ACL_OTHER or (state == _ACL_GROUP
                                                            and not needs_mask)):
            state = 0
        else:
            return "ACL entries out of order or incomplete"
    if state != 0 and len(value) > 4:
        return "ACL entries out of order or incomplete"
    return None


def _xattr_problem(name: str, value: bytes, kind: str) -> str | None:
    """Why the restore could not set this extended attribute on a member of ``kind``."""
    try:
        raw = os.fsencode(name)
    except UnicodeError:
        return "cannot be encoded"
    if not raw or b"\0" in raw or len(raw) > _XATTR_NAME_MAX:
        return "bad name"
    if len(value) > _XATTR_SIZE_MAX:
        return f"value longer than {_XATTR_SIZE_MAX} bytes"
    if name in (ACL_ACCESS, ACL_DEFAULT):
        if kind == SYMLINK:
            return "an ACL on a symlink"
        if name == ACL_DEFAULT and kind != DIR:
            return "a default ACL on something else than a directory"
        return _acl_problem(value)
    prefix = next((ns for ns in _XATTR_NAMESPACES if name.startswith(ns)), None)
    if prefix is None:
        return "in a namespace the restore cannot write"
    if name == prefix:
        return "empty name"
    if prefix == "user." and kind not in (FILE, DIR, HARDLINK):
        return f"user.* attributes exist only on files and directories, not on a {kind}"
    if name == CAPABILITY:
        magic = struct.unpack_from("<I", value)[0] if len(value) >= 4 else 0
        if _CAP_SIZES.get(magic & _CAP_REVISION_MASK) != len(value):
            return "not a v2 or v3 file capability"
    return None


def _xattrs(ti: tarfile.TarInfo, kind: str,
            bad: Callable[[str], None]) -> tuple[tuple[str, bytes], ...]:
    """A member's extended attributes from its pax records, each checked."""
    headers = ti.pax_headers
    if not headers:
        return ()
    found: dict[str, bytes] = {}
    for key, text in headers.items():
        if key.startswith(XATTR_RECORD):
            # GNU tar escapes '%' and '=' in names; values are raw bytes (tarfile decoded
            # them with surrogateescape, so encoding gives them back exactly).
            name = _XATTR_ESCAPE.sub(lambda m: "=" if m.group(1) == "3D" else "%",
                                     key[len(XATTR_RECORD):])
            value = text.encode("utf-8", "surrogateescape")
            why = _xattr_problem(name, value, kind)
            if why:
                bad(f"extended attribute {name!r}: {why}")
            else:
                found[name] = value
        elif key.startswith(_DROPPED_RECORDS):
            bad(f"pax record {key!r} holds metadata the restore cannot apply")
    for key, name in _ACL_TEXT.items():
        if key in headers and f"{XATTR_RECORD}{name}" not in headers:
            bad(f"an ACL stored only as text ({key}), which the restore does not apply; "
                "archive with --xattrs --xattrs-include='*'")
    return tuple(sorted(found.items()))


@dataclass(frozen=True, slots=True)
class _Member:
    entry: Entry
    mtime_ns: int
    sparse: list[tuple[int, int]] | None
    offset_data: int


class _Validator:
    """The rules, applied member by member; also tracks what later members may refer to.

    ``keep``: remember every entry for :meth:`listing` (a restore compares against it); a
    backup only needs each path's type, which keeps its memory small.
    """

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.entries: list[Entry] = []
        self.count = 0
        self.kinds: dict[str, str] = {}
        self.root: Entry | None = None
        self.parents: set[str] = set()  # every path some member sits below

    def check(self, ti: tarfile.TarInfo) -> tuple[_Member | None, list[str]]:
        name = ti.name
        problems: list[str] = []

        def bad(why: str) -> None:
            problems.append(f"{name!r}: {why}")

        path, why = _normalise(name)
        if path is None:
            bad(why or "bad name")
        if ti.type in _FILE_TYPES:
            kind = FILE
        elif ti.type == tarfile.DIRTYPE:
            kind = DIR
        elif ti.type == tarfile.SYMTYPE:
            kind = SYMLINK
        elif ti.type == tarfile.LNKTYPE:
            kind = HARDLINK
        else:
            desc = _SPECIAL_NAMES.get(ti.type, f"unsupported member type {ti.type!r}")
            bad(f"{desc} (only files, directories, symlinks and hard links are restored)")
            return None, problems
        if kind != DIR and name.endswith("/"):
            bad(f"a {kind} whose name ends with '/'")
        for what, value in (("uid", ti.uid), ("gid", ti.gid)):
            if not 0 <= value <= _MAX_ID:
                bad(f"{what} {value} out of range")
        if ti.size < 0:
            bad(f"negative size {ti.size}")
        sparse = _sparse_map(ti) if kind == FILE else None
        if sparse is not None and (p := _sparse_problem(sparse, ti.size)):
            bad(p)
        xattrs = _xattrs(ti, kind, bad)
        if path is None:
            return None, problems

        linkname: str | None = None
        if kind == SYMLINK:
            linkname = ti.linkname
            if why := _symlink_problem(linkname):
                bad(why)
        elif kind == HARDLINK:
            linkname, why = _normalise(ti.linkname)
            if linkname is None:
                bad(f"hard link target {ti.linkname!r}: {why}")
        mtime_ns = _mtime_ns(ti)
        entry = Entry(path, kind, ti.mode & 0o7777, ti.uid, ti.gid, ti.size,
                      mtime_ns // _NS, linkname, xattrs)

        if path == ".":
            if kind != DIR:
                bad(f"the archive root is a {kind}")
            elif self.root is not None:
                bad("duplicate entry for the archive root")
            else:
                self.root = entry
            return (_Member(entry, mtime_ns, None, 0) if not problems else None), problems

        if path in self.kinds:
            bad("duplicate entry" + (f" (same path as {path!r})" if path != name else ""))
            return None, problems
        if kind != DIR and path in self.parents:
            bad(f"a {kind}, but earlier members are inside it")
        parent = path.rpartition("/")[0]
        if parent and parent not in self.parents:
            parts = path.split("/")
            for i in range(1, len(parts)):
                anc = "/".join(parts[:i])
                k = self.kinds.get(anc)
                if k is not None and k != DIR:
                    bad(f"its parent {anc!r} is a {k} in the archive")
                    break
                self.parents.add(anc)

        if kind == HARDLINK and linkname is not None:
            target = self.kinds.get(linkname)
            if target is None:
                bad(f"hard link to {ti.linkname!r}, which is not an earlier member")
            elif target not in (FILE, HARDLINK):
                bad(f"hard link to {ti.linkname!r}, which is a {target}")

        self.kinds[path] = kind
        self.count += 1
        if self.keep:
            self.entries.append(entry)
        member = _Member(entry, mtime_ns, sparse, ti.offset_data)
        return (member if not problems else None), problems

    def listing(self) -> Listing:
        return Listing(tuple(self.entries), self.root)


def _symlink_problem(target: str) -> str | None:
    """Why no filesystem could hold this symlink target. Anything else is kept verbatim:
    after a restore the link is read by the application, never followed by dcb."""
    if not target:
        return "symlink with an empty target"
    if "\0" in target:
        return "NUL byte in the symlink target"
    try:
        raw = os.fsencode(target)
    except UnicodeError:
        return "symlink target cannot be encoded"
    if len(raw) >= MAX_PATH_BYTES:
        return f"symlink target longer than {MAX_PATH_BYTES - 1} bytes"
    return None


def _unsafe(problems: list[str], hint: str) -> UnsafeArchive:
    shown = problems[:MAX_REPORTED]
    more = len(problems) - len(shown)
    text = "; ".join(shown) + (f"; and {more} more" if more else "")
    return UnsafeArchive(f"unsafe tar archive: {text}", hint=hint, problems=tuple(problems))


RESTORE_HINT = "nothing was extracted; the archive is not restored"


def validate_archive(stream: BinaryIO, *, hint: str = RESTORE_HINT) -> Listing:
    """Read a whole uncompressed tar stream and check every member before anything is written.

    All problems are collected; :class:`UnsafeArchive` names up to ten of them. A damaged
    or truncated stream raises :class:`CorruptArchive` at once.
    """
    return _validate(stream, _Validator(), hint).listing()


def check_archive(stream: BinaryIO, *, hint: str = RESTORE_HINT) -> int:
    """:func:`validate_archive` without keeping the listing (any archive size in little
    memory): the number of members checked, the root included."""
    v = _validate(stream, _Validator(keep=False), hint)
    return v.count + (v.root is not None)


def _validate(stream: BinaryIO, v: _Validator, hint: str) -> _Validator:
    problems: list[str] = []
    last: str | None = None
    with _open_stream(stream) as tf:
        while (ti := _next_member(tf, last)) is not None:
            problems += v.check(ti)[1]
            last = ti.name
    if problems:
        raise _unsafe(problems, hint)
    return v


_EOF = object()
_STOP = object()
_QUEUE_CHUNKS = 8
_BATCH = 1024 * 1024


class _QueueReader:
    """The read end of :class:`StreamValidator`: chunks handed over by another thread."""

    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_CHUNKS)
        self.buf = b""
        self.pos = 0
        self.eof = False

    def _fill(self) -> bool:
        """Make the current chunk non-empty; False at the end of the stream."""
        while self.pos >= len(self.buf):
            if self.eof:
                return False
            item = self.queue.get()
            if item is _STOP:
                raise Cancelled("archive check stopped")
            if item is _EOF:
                self.eof = True
                return False
            assert isinstance(item, bytes)
            self.buf, self.pos = item, 0
        return True

    def skip(self, n: int) -> int:
        left = n
        while left and self._fill():
            take = min(len(self.buf) - self.pos, left)
            self.pos += take
            left -= take
        return n - left

    def read(self, n: int = -1) -> bytes:
        if not self._fill():
            return b""
        if self.pos == 0 and (n < 0 or n >= len(self.buf)):
            out, self.buf = self.buf, b""  # hand the chunk over whole: no copy
            return out
        end = len(self.buf) if n < 0 else min(len(self.buf), self.pos + n)
        out = self.buf[self.pos:end]
        self.pos = end
        return out


class _Counting:
    """Counts the bytes of tar checked; skips without copying where its source can."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.n = 0
        self._scratch: memoryview | None = None

    def read(self, n: int = -1) -> bytes:
        b: bytes = self.f.read(n)
        self.n += len(b)
        return b

    def skip(self, n: int) -> int:
        if hasattr(self.f, "skip"):
            done: int = self.f.skip(n)
        else:  # a decompressor: the bytes must be made, but need not be kept
            if self._scratch is None:
                self._scratch = memoryview(bytearray(CHUNK))
            done = 0
            while done < n:
                got = self.f.readinto(self._scratch[:min(CHUNK, n - done)])
                if not got:
                    break
                done += got
        self.n += done
        return done


class StreamValidator:
    """Checks a tar stream with the restore's rules while a backup writes it.

    The backup hands over each chunk it writes (:meth:`feed`); a thread of its own parses
    them, so nothing is read twice. ``compression="zstd"``: the chunks are a zstd stream
    (pg_basebackup compressing in the container) and are decompressed for the check. A damaged
    stream fails the next :meth:`feed`; members a restore would refuse are collected and
    reported, up to ten in one line, by :meth:`finish`. Memory stays small: only each path's
    type is kept.
    """

    def __init__(self, compression: str = "none", hint: str = RESTORE_HINT) -> None:
        self.compression = compression
        self.hint = hint
        self._reader = _QueueReader()
        self._error: BaseException | None = None
        self._count = 0
        self._raw = _Counting(self._reader)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dcb-tar-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            src: BinaryIO = self._reader  # type: ignore[assignment]
            if self.compression == "zstd":
                self._raw.f = zstandard.ZstdDecompressor().stream_reader(
                    src, read_size=CHUNK, read_across_frames=True)
            elif self.compression != "none":
                raise DcbError(f"cannot check a {self.compression} stream in line")
            self._count = _validate(self._raw, _Validator(keep=False),  # type: ignore[arg-type]
                                    self.hint).count
        except zstandard.ZstdError as e:
            self._error = CorruptArchive(f"not a readable zstd stream: {e}")
        except BaseException as e:  # handed to the feeding thread
            self._error = e
        finally:
            self._done.set()

    def _put(self, item: object) -> None:
        while not self._done.is_set():
            try:
                self._reader.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        # The check ended before the stream did: the stream is damaged (rule breaks are
        # only reported once everything was read).
        if self._error is not None and not isinstance(self._error, Cancelled):
            raise self._error

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
            if self._pending_bytes >= _BATCH:
                self._flush()

    def _flush(self) -> None:
        """Hand over what was fed as one item: tar writes 10 KiB records and Docker streams
        frames of a few KiB, and a queue hand-over costs more than joining them."""
        if self._pending:
            data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._put(data)

    @property
    def raw_bytes(self) -> int:
        """Bytes of tar checked (after decompression)."""
        return self._raw.n

    def finish(self) -> int:
        """Wait for the check of everything fed; the number of members, or the error."""
        self._flush()
        self._put(_EOF)
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._count

    def close(self) -> None:
        """Stop the check (after an error elsewhere); idempotent."""
        if not self._done.is_set():
            with contextlib.suppress(queue.Full):
                self._reader.queue.put_nowait(_STOP)
            # A full queue: drop what is waiting so the stop marker gets in.
            while not self._done.wait(0.05):
                with contextlib.suppress(queue.Empty):
                    self._reader.queue.get_nowait()
                with contextlib.suppress(queue.Full):
                    self._reader.queue.put_nowait(_STOP)
        self._thread.join()


# --------------------------------------------------------------------------------------------
# Extraction


def _differences(got: Entry, want: Entry) -> str:
    fields = ("path", "type", "size", "linkname", "mode", "uid", "gid", "mtime")
    out = [f"{f} {getattr(got, f)!r} instead of {getattr(want, f)!r}"
           for f in fields if getattr(got, f) != getattr(want, f)]
    if got.xattrs != want.xattrs:
        out.append("extended attributes differ")
    return ", ".join(out)


def _managed(name: str) -> bool:
    """Attributes a restore sets exactly (others, e.g. an LSM's labels, are the host's)."""
    return name.startswith(("user.", "trusted.", "system.posix_acl_")) or name == CAPABILITY


def _at(pfd: int, name: str) -> str:
    """A path naming ``name`` in directory ``pfd`` for calls without ``dir_fd`` (xattrs):
    the directory is the descriptor's, so nothing above it is resolved again."""
    return f"/proc/self/fd/{pfd}/{name}"


def set_xattrs(target: int | str, xattrs: tuple[tuple[str, bytes], ...], *,
               exact: bool = False) -> None:
    """Set extended attributes on an open descriptor, or on a path without following its
    last component. The file capability goes last (writing other attributes does not clear
    it, but it is the one a chown or a write would). ``exact``: also remove the managed
    attributes (user, trusted, ACLs, capability) that ``xattrs`` does not hold."""
    follow: dict[str, bool] = {} if isinstance(target, int) else {"follow_symlinks": False}
    if exact:
        want = {n for n, _ in xattrs}
        for name in os.listxattr(target, **follow):
            if _managed(name) and name not in want:
                with contextlib.suppress(OSError):
                    os.removexattr(target, name, **follow)
    cap = None
    for name, value in xattrs:
        if name == CAPABILITY:
            cap = value
        else:
            os.setxattr(target, name, value, **follow)
    if cap is not None:
        os.setxattr(target, CAPABILITY, cap, **follow)


def read_xattrs(target: int | str, also: tuple[tuple[str, bytes], ...] = ()
                ) -> tuple[tuple[str, bytes], ...]:
    """The managed extended attributes of a path (not following a symlink) or descriptor,
    plus any named in ``also``, sorted like :attr:`Entry.xattrs`."""
    follow: dict[str, bool] = {} if isinstance(target, int) else {"follow_symlinks": False}
    extra = {n for n, _ in also}
    out = []
    try:
        names = os.listxattr(target, **follow)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    for name in names:
        if _managed(name) or name in extra:
            with contextlib.suppress(OSError):
                out.append((name, os.getxattr(target, name, **follow)))
    return tuple(sorted(out))


class _Extractor:
    def __init__(self, root_fd: int, delta: bool = False, direct: bool = True) -> None:
        self.root_fd = root_fd
        self.delta = delta
        self.skipped = 0
        self.fds: dict[str, int] = {}
        self.inodes: dict[str, tuple[int, int]] = {}
        self.dirs: list[_Member] = []
        self.chown = os.geteuid() == 0
        self.direct: _Direct | None = _Direct() if direct else None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def release(self) -> None:
        self.close()
        if self.direct is not None:
            self.direct.close()
            self.direct = None

    def trim(self) -> None:
        if len(self.fds) > _FD_CACHE_LIMIT:
            self.close()

    # -- walking without following symlinks

    def dir_fd(self, path: str) -> int:
        """A descriptor of directory ``path`` (relative, '' is the root), created if needed."""
        if not path:
            return self.root_fd
        fd = self.fds.get(path)
        if fd is not None:
            return fd
        parts = path.split("/")
        i = len(parts) - 1
        while i > 0 and "/".join(parts[:i]) not in self.fds:
            i -= 1
        fd = self.fds["/".join(parts[:i])] if i else self.root_fd
        for j in range(i, len(parts)):
            fd = self._open_child_dir(fd, parts[j])
            self.fds["/".join(parts[:j + 1])] = fd
        return fd

    def _open_child_dir(self, parent: int, name: str) -> int:
        for _ in range(3):
            try:
                return os.open(name, _O_DIR, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
            except OSError:
                # ELOOP (a symlink) or ENOTDIR (a file) in the way: replace, never follow.
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise
                os.unlink(name, dir_fd=parent)
        raise OSError(f"{name!r} keeps changing under the restore")

    # -- members

    def extract(self, m: _Member, tf: tarfile.TarFile) -> None:
        e = m.entry
        self.trim()
        if e.path == ".":
            return
        parent, _, name = e.path.rpartition("/")
        pfd = self.dir_fd(parent)
        if e.type == DIR:
            self._make_dir(pfd, name, e.path)
            self.dirs.append(m)
        elif e.type == FILE:
            self._write_file(pfd, name, m, tf)
        elif e.type == SYMLINK:
            assert e.linkname is not None
            self._retry(lambda: os.symlink(e.linkname or "", name, dir_fd=pfd), pfd, name)
            if self.chown:
                os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            if e.xattrs:
                set_xattrs(_at(pfd, name), e.xattrs)
            os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        else:
            assert e.linkname is not None
            tparent, _, tname = e.linkname.rpartition("/")
            tfd = self.dir_fd(tparent)
            st = os.stat(tname, dir_fd=tfd, follow_symlinks=False)
            if self.inodes.get(e.linkname) != (st.st_dev, st.st_ino):
                raise OSError(f"hard link target {e.linkname!r} changed during the restore")
            self._retry(lambda: os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=pfd,
                                        follow_symlinks=False), pfd, name)
            self.inodes[e.path] = (st.st_dev, st.st_ino)
            if e.xattrs:
                set_xattrs(_at(pfd, name), e.xattrs)

    def _retry(self, create: Callable[[], None], pfd: int, name: str) -> None:
        try:
            create()
        except FileExistsError:
            _remove_at(pfd, name)
            create()

    def _make_dir(self, pfd: int, name: str, path: str) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                _remove_at(pfd, name)
                os.mkdir(name, 0o700, dir_fd=pfd)
            else:
                fd = self.dir_fd(path)
                if st.st_mode & 0o700 != 0o700:
                    # Kept until the end, when the archive's mode is applied.
                    os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
                # Nothing extracted into it may inherit an old default ACL; the archive's
                # attributes are applied at the end.
                _pop_default_acl(fd)

    def _unchanged(self, pfd: int, name: str, m: _Member) -> bool:
        """rsync's quick check: a regular file with the member's size, mtime (to the second,
        what tar keeps), owner and mode is left as it is."""
        e = m.entry
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or m.sparse is not None:
            return False
        same = (st.st_size == e.size and st.st_mtime_ns // 10**9 == m.mtime_ns // 10**9
                and stat.S_IMODE(st.st_mode) == e.mode)
        if self.chown:
            same = same and (st.st_uid, st.st_gid) == (e.uid, e.gid)
        if same:
            self.inodes[e.path] = (st.st_dev, st.st_ino)
            set_xattrs(_at(pfd, name), e.xattrs, exact=True)
        return same

    def _write_file(self, pfd: int, name: str, m: _Member, tf: tarfile.TarFile) -> None:
        e = m.entry
        if self.delta and self._unchanged(pfd, name, m):
            self.skipped += 1  # the stream skips the member's data by itself
            return
        try:
            fd = os.open(name, _O_NEW, 0o600, dir_fd=pfd)
        except FileExistsError:
            _remove_at(pfd, name)
            fd = os.open(name, _O_NEW, 0o600, dir_fd=pfd)
        try:
            _copy_data(tf, m, fd, self.direct)
            if self.chown:
                os.fchown(fd, e.uid, e.gid)
            os.fchmod(fd, e.mode)  # after chown, which clears setuid/setgid
            if e.xattrs:
                set_xattrs(fd, e.xattrs)  # after chown, which clears a file capability
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            st = os.fstat(fd)
            self.inodes[e.path] = (st.st_dev, st.st_ino)
        except BaseException:
            with contextlib.suppress(OSError):  # no truncated file under the real name
                os.unlink(name, dir_fd=pfd)
            raise
        finally:
            os.close(fd)

    def finish(self, root: _Member | None) -> None:
        """Directories' owners, modes and mtimes, deepest first; then the root's."""
        for m in sorted(self.dirs, key=lambda m: m.entry.path.count("/"), reverse=True):
            self.trim()
            self._apply_dir(self.dir_fd(m.entry.path), m)
        if root is not None:
            self._apply_dir(self.root_fd, root)

    def _apply_dir(self, fd: int, m: _Member) -> None:
        e = m.entry
        if self.chown:
            os.fchown(fd, e.uid, e.gid)
        os.fchmod(fd, e.mode)
        set_xattrs(fd, e.xattrs, exact=True)
        os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))


def _pop_default_acl(fd: int) -> bytes | None:
    """Remove a directory's default ACL (returned), so new entries inherit nothing."""
    try:
        value = os.getxattr(fd, ACL_DEFAULT)
        os.removexattr(fd, ACL_DEFAULT)
    except OSError:
        return None
    return value


DIRECT_FROM = 1 << 20
"""Files at least this large have their data written with O_DIRECT (see :class:`_Direct`)."""

_ALIGN = 4096
_DIRECT_BUFFER = 4 * CHUNK


class _Direct:
    """Writes a large file's data around the page cache (O_DIRECT), in aligned blocks from one
    page-aligned buffer; the last partial block goes through the page cache as usual.

    Why: a restore writes gigabytes nobody reads soon. Through the page cache every byte
    costs a freshly allocated page, and on virtual machines that is most of a volume
    restore's CPU (bench/README.md: 1 GB took 4.8 s of kernel time buffered, 0.2 s with
    O_DIRECT); it also evicts the host's hot cache. A filesystem that refuses O_DIRECT
    (tmpfs, some FUSE) gets the ordinary writes, as does anything after a short write.
    """

    def __init__(self) -> None:
        import mmap

        self.buf = mmap.mmap(-1, _DIRECT_BUFFER)  # page-aligned, as O_DIRECT needs
        self.view = memoryview(self.buf)

    def close(self) -> None:
        self.view.release()
        self.buf.close()

    def copy(self, readinto: Callable[[memoryview], int], fd: int, size: int,
             what: str) -> None:
        import fcntl

        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
            direct = True
        except OSError:
            direct = False
        view, fill, left = self.view, 0, size
        try:
            while left:
                k = readinto(view[fill:fill + min(_DIRECT_BUFFER - fill, left)])
                if not k:
                    raise CorruptArchive(f"tar stream ends inside {what!r} (truncated?)",
                                         hint="the artifact is damaged; verify the backup set")
                fill += k
                left -= k
                if fill < _DIRECT_BUFFER and left:
                    continue
                aligned = fill - fill % _ALIGN if direct else 0
                done = 0
                while done < aligned:
                    try:
                        n = os.write(fd, view[done:aligned])
                    except OSError as err:
                        if err.errno != errno.EINVAL:
                            raise
                        n = 0  # this filesystem takes the flag but not the writes
                    done += n
                    if n == 0 or n % _ALIGN:
                        fcntl.fcntl(fd, fcntl.F_SETFL, flags)  # the rest the ordinary way
                        direct = False
                        break
                if done < fill:
                    if direct:
                        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
                        direct = False
                    rest = view[done:fill]
                    while rest:
                        rest = rest[os.write(fd, rest):]
                fill = 0
        finally:
            if direct:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _copy_data(tf: tarfile.TarFile, m: _Member, fd: int, direct: _Direct | None = None) -> None:
    e = m.entry
    src = tf.fileobj
    try:
        src.seek(m.offset_data)
    except DcbError:
        raise
    except Exception as exc:
        raise CorruptArchive(f"tar stream damaged in {e.path!r}: {exc}") from None

    def read(n: int) -> bytes:
        try:
            return src.read(n)
        except DcbError:
            raise
        except Exception as exc:
            raise CorruptArchive(f"tar stream damaged in {e.path!r}: {exc}") from None

    if direct is not None and m.sparse is None and e.size >= DIRECT_FROM \
            and isinstance(src, _Stream):
        def readinto(view: memoryview) -> int:
            try:
                return src.readinto(view)
            except DcbError:
                raise
            except Exception as exc:
                raise CorruptArchive(f"tar stream damaged in {e.path!r}: {exc}") from None

        direct.copy(readinto, fd, e.size, e.path)
        return
    regions = m.sparse if m.sparse is not None else [(0, e.size)]
    for off, n in regions:
        if n == 0:
            continue
        if m.sparse is not None:
            os.lseek(fd, off, os.SEEK_SET)  # the gaps stay holes
        left = n
        while left:
            b = read(min(CHUNK, left))
            if not b:
                raise CorruptArchive(f"tar stream ends inside {e.path!r} (truncated?)",
                                     hint="the artifact is damaged; verify the backup set")
            left -= len(b)
            view = memoryview(b)
            while view:
                view = view[os.write(fd, view):]
    if m.sparse is not None:
        os.ftruncate(fd, e.size)


def extract_archive(stream: BinaryIO, dest: Path, *, expected: Listing | None = None,
                    delta: bool = False) -> Listing:
    """Extract a tar stream into the existing directory ``dest`` exactly.

    Numeric owners (when running as root), modes with setuid/setgid/sticky, mtimes,
    symlinks (verbatim), hard links, empty directories, sparse files, extended attributes,
    POSIX ACLs and file capabilities are restored; the ``.`` member sets ``dest``'s own owner,
    mode, attributes and mtime.
    Every member is validated again before it is written; with ``expected`` (the listing
    :func:`validate_archive` returned for the same artifact) each member must also equal the
    validated one, in order. On an error the destination is left partly extracted.

    ``delta``: files already in ``dest`` that pass rsync's quick check (same size, mtime,
    owner, mode) are not rewritten; the caller removes what the archive does not hold
    (:func:`remove_extraneous`).
    """
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ExtractError(f"cannot open the restore target {dest}: {err.strerror}") from None
    v = _Validator()
    x = _Extractor(root_fd, delta=delta)
    root: _Member | None = None
    # The root's own attributes come from the archive's '.' member at the end (or back as
    # they were); meanwhile nothing extracted inherits its default ACL.
    old_default_acl = _pop_default_acl(root_fd)
    root_done = False
    want = expected.entries if expected is not None else None
    hint = "extraction stopped at this member; the destination is incomplete"
    last: str | None = None
    try:
        with _open_stream(stream) as tf:
            while (ti := _next_member(tf, last)) is not None:
                m, problems = v.check(ti)
                if problems or m is None:
                    raise _unsafe(problems or [f"{ti.name!r}: refused"], hint)
                e = m.entry
                if expected is not None and want is not None:
                    if e.path == ".":
                        if e != expected.root:
                            raise _unsafe([f"{ti.name!r}: the archive root differs from the "
                                           "validated listing"], hint)
                    else:
                        i = len(v.entries) - 1
                        if i >= len(want):
                            raise _unsafe([f"{ti.name!r}: not in the validated listing"], hint)
                        if e != want[i]:
                            raise _unsafe([f"{ti.name!r}: differs from the validated listing "
                                           f"({_differences(e, want[i])})"], hint)
                if e.path == ".":
                    root = m
                try:
                    x.extract(m, tf)
                except (OSError, OverflowError) as err:
                    raise ExtractError(f"cannot extract {ti.name!r} into {dest}: "
                                       f"{_strerror(err)}") from None
                last = ti.name
        if want is not None:
            if len(v.entries) < len(want):
                missing = [e.path for e in want[len(v.entries):]][:MAX_REPORTED]
                raise _unsafe([f"{p!r}: validated, but missing from the stream"
                               for p in missing], hint)
            if expected is not None and expected.root is not None and root is None:
                raise _unsafe(["'.': validated, but missing from the stream"], hint)
        try:
            x.finish(root)
            root_done = root is not None
        except (OSError, OverflowError) as err:
            raise ExtractError(f"cannot set directory metadata in {dest}: "
                               f"{_strerror(err)}") from None
    finally:
        if old_default_acl is not None and not root_done:
            with contextlib.suppress(OSError):
                os.setxattr(root_fd, ACL_DEFAULT, old_default_acl)
        x.release()
        os.close(root_fd)
    return v.listing()


def _strerror(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


# --------------------------------------------------------------------------------------------
# Removal


def _remove_at(parent: int, name: str) -> None:
    """Remove ``name`` in directory ``parent``, a whole tree if it is a directory.

    Never follows a symlink: a symlink is unlinked, directories are opened with O_NOFOLLOW.
    Iterative, so depth is only bounded by open descriptors.
    """
    try:
        os.unlink(name, dir_fd=parent)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
    # (parent fd, name, own fd, names still to remove)
    stack: list[tuple[int, str, int, list[str]]] = []
    try:
        fd = os.open(name, _O_DIR, dir_fd=parent)
        stack.append((parent, name, fd, os.listdir(fd)))
        while stack:
            pfd, dname, fd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                os.rmdir(dname, dir_fd=pfd)
                continue
            child = names.pop()
            try:
                os.unlink(child, dir_fd=fd)
                continue
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                pass
            except PermissionError:
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise
            cfd = os.open(child, _O_DIR, dir_fd=fd)
            stack.append((fd, child, cfd, os.listdir(cfd)))
    finally:
        for _, _, fd, _ in stack:
            os.close(fd)


def remove_extraneous(dest: Path, listing: Listing) -> int:
    """Remove what ``dest`` holds beyond ``listing`` (after a delta extraction), never
    following a symlink. Returns how many top-most entries went."""
    keep = set(listing.files())
    removed = 0
    for dirpath, dirnames, filenames in os.walk(dest, topdown=True, followlinks=False):
        rel_dir = os.path.relpath(dirpath, dest)
        for n in list(dirnames) + filenames:
            rel = n if rel_dir == "." else f"{rel_dir}/{n}"
            if rel in keep:
                continue
            full = os.path.join(dirpath, n)
            if n in dirnames and not os.path.islink(full):
                shutil.rmtree(full)
                dirnames.remove(n)
            else:
                os.unlink(full)
            removed += 1
    return removed


def clear_directory(dest: Path) -> None:
    """Remove everything inside ``dest`` (not ``dest`` itself) without following symlinks."""
    try:
        fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ExtractError(f"cannot open {dest}: {e.strerror}") from None
    try:
        for name in os.listdir(fd):
            _remove_at(fd, name)
    except OSError as e:
        raise ExtractError(f"cannot empty {dest}: {_strerror(e)}") from None
    finally:
        os.close(fd)
