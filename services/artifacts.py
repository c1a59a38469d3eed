"""Writing and reading artifacts: streaming compression, SHA-256, atomic commit.

An artifact is written under a hidden temporary name in its set directory (mode 0600),
compressed on the fly in constant memory, hashed as written, fsynced, then renamed into place
and the directory fsynced. Any error deletes the temporary file. ENOSPC is never retried.

With ``[encryption] recipients`` the compressed stream goes through age before it reaches the
file (services/encryption.py); sizes and SHA-256 are those of the stored, encrypted bytes.
``open_decompressed`` recognises an age file by its header and decrypts it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from dcb.services.encryption import EncryptingSink, open_decrypted
from dcb.services.errors import DcbError

CHUNK = 1024 * 1024
EXTENSIONS = {"zstd": ".zst", "gzip": ".gz", "none": ""}


class StorageError(DcbError):
    """Writing to the backup store failed (full disk, permissions...)."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dirs(path: Path) -> None:
    """``mkdir -p`` where every directory created is 0700: ``Path.mkdir(parents=True)``
    gives the parents the umask's mode (0755 under the usual 022), and dcb's directories hold
    backups, history and logs nobody else should read."""
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a small file atomically: temp, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {path}: {e.strerror}") from None


class _HashingFile(io.RawIOBase):
    """A write-only raw file that hashes and counts what it writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        mv = memoryview(b)
        self.sha.update(mv)
        total = 0
        while total < len(mv):
            total += os.write(self.fd, mv[total:])
        self.size += total
        return total


@dataclass(frozen=True)
class Written:
    path: Path
    size_bytes: int
    sha256: str
    raw_bytes: int
    """Bytes before compression."""


class ArtifactWriter:
    """Streams bytes into ``final_path`` through the chosen compressor.

    Use as a context manager: ``commit()`` publishes the file; leaving the block without
    committing (an exception, a cancel) removes the temporary file.
    """

    def __init__(self, final_path: Path, compression: str = "zstd", level: int = 3,
                 recipients: tuple[str, ...] = ()) -> None:
        self.final_path = final_path
        self.tmp_path = final_path.with_name(f".{final_path.name}.tmp")
        self.compression = compression
        self.raw_bytes = 0
        self._tail = b""
        self._head = b""
        self._done = False
        self._age: EncryptingSink | None = None
        if compression not in EXTENSIONS:
            raise DcbError(f"unknown compression {compression!r}")
        try:
            self._fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise StorageError(f"cannot create {self.tmp_path}: {e.strerror}") from None
        self._raw = _HashingFile(self._fd)
        stored: Any = self._raw
        if recipients:
            try:
                self._age = stored = EncryptingSink(recipients, self._raw)
            except BaseException:
                self.abort()
                raise
        self._sink: BinaryIO
        if compression == "zstd":
            # The frame's checksum (XXH64 of the content) lets a deep verify catch damage
            # done before the file was hashed, at a cost lost in the noise.
            cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
            self._sink = cctx.stream_writer(stored, closefd=False)
        elif compression == "gzip":
            self._sink = gzip.GzipFile(fileobj=stored, mode="wb",  # type: ignore[assignment]
                                       compresslevel=level, mtime=0)
        else:
            self._sink = stored

    def write(self, data: bytes) -> None:
        if len(self._head) < 16:
            self._head = (self._head + data[:16])[:16]
        self.raw_bytes += len(data)
        self._tail = (self._tail + data[-256:])[-256:]
        try:
            self._sink.write(data)
        except OSError as e:
            raise StorageError(f"writing {self.final_path.name}: {e.strerror}") from None

    @property
    def head(self) -> bytes:
        """The first 16 uncompressed bytes written (for format magic)."""
        return self._head

    @property
    def tail(self) -> bytes:
        """The last 256 uncompressed bytes written (for completion markers)."""
        return self._tail

    def commit(self) -> Written:
        try:
            if self.compression == "zstd":
                self._sink.flush(zstandard.FLUSH_FRAME)  # type: ignore[call-arg]
            elif self.compression == "gzip":
                self._sink.close()
            if self._age is not None:
                self._age.finish()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp_path, self.final_path)
            fsync_dir(self.final_path.parent)
        except OSError as e:
            self.abort()
            raise StorageError(f"writing {self.final_path.name}: {e.strerror}") from None
        self._done = True
        return Written(self.final_path, self._raw.size, self._raw.sha.hexdigest(), self.raw_bytes)

    def abort(self) -> None:
        if self._age is not None:
            self._age.abort()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            self.tmp_path.unlink()

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()


def _no_follow(path: str, flags: int) -> int:
    """Artifacts are opened as themselves, never through a symlink (a set's files are input:
    a link could point anywhere on the host)."""
    return os.open(path, flags | os.O_NOFOLLOW)


def open_decompressed(path: Path, compression: str) -> BinaryIO:
    """A streaming reader of the artifact's original bytes (decrypted when it is age)."""
    f = open_decrypted(path)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    return f


def iter_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        b = f.read(size)
        if not b:
            return
        yield b


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb", opener=_no_follow) as f:
        for b in iter_chunks(f):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()
