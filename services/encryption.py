"""Encryption at rest with age (https://age-encryption.org), through Debian's ``age`` binary.

Every artifact is encrypted as it streams, before any byte reaches disk: the compressor writes
into ``age -r RECIPIENT`` and what age prints is hashed and written to the artifact's
temporary file (services/artifacts.py). The manifest stays plaintext and records the size and
SHA-256 of the stored (encrypted) bytes, so a quick verify and replication never need a key.
Reading (deep verify, restore, fetch from a destination) decrypts with ``age -d -i
identity_file``; ``age -d -i key.txt FILE`` does the same by hand.

Why the binary and not pyrage (measured, bench/README.md): both stream in constant memory, but
pyrage holds the GIL while it encrypts, which stalls the backup's other stage thread, while the
age process runs on the other core; age's own 64 KiB chunks carry a last-chunk flag, so a
truncated file fails to decrypt instead of reading short.

Which identity to use is process-wide (``use_identity_file``, set by the front ends from
``[encryption] identity_file``), because readers are opened deep inside the verify and restore
engines. A wrong or missing identity is an ``EncryptionError`` before any plaintext is
produced.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import stat
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from dcb.services.errors import DcbError

AGE_MAGIC = b"age-encryption.org/v1\n"
CHUNK = 1024 * 1024
_F_SETPIPE_SZ = 1031


class EncryptionError(DcbError):
    """Encrypting or decrypting failed: no age tool, no or wrong identity, damaged file."""


_identity_lock = threading.Lock()
_identity_file: Path | None = None


def use_identity_file(path: Path | None) -> None:
    """Set the identity readers decrypt with (``[encryption] identity_file``), or none."""
    global _identity_file
    with _identity_lock:
        _identity_file = path


def use_config(cfg: Any) -> None:
    """``use_identity_file`` from a Config: its ``[encryption] identity_file``, if set."""
    value = cfg.encryption.identity_file
    use_identity_file(cfg.resolve_path(value) if value else None)


def identity_file() -> Path:
    """The configured identity file, checked: it exists and only its owner may read it."""
    with _identity_lock:
        path = _identity_file
    if path is None:
        raise EncryptionError(
            "the set is encrypted and no identity is configured",
            hint="set [encryption] identity_file (or DCB_ENCRYPTION_IDENTITY_FILE) to the "
                 "age identity written by `dcb keygen`")
    try:
        st = path.stat()
    except OSError as e:
        raise EncryptionError(f"[encryption] identity_file {path}: cannot read: "
                              f"{e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EncryptionError(
            f"[encryption] identity_file {path}: permissions {stat.filemode(st.st_mode)} let "
            "others read it", hint=f"chmod 600 {path}")
    return path


def age_tool(name: str = "age") -> str:
    exe = shutil.which(name)
    if exe is None:
        raise EncryptionError(f"encryption needs the `{name}` tool, which is not installed",
                              hint="apt-get install age")
    return exe


def is_encrypted(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(AGE_MAGIC)) == AGE_MAGIC


def _big_pipe(fd: int) -> None:
    # 1 MiB pipes: fewer wake-ups per byte; not fatal where the limit is lower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, CHUNK)


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    lines = [ln.removeprefix("age: ").removeprefix("error: ") for ln in text.splitlines()
             if ln.strip() and not ln.startswith("age: report") and "github" not in ln]
    return (lines[0] if lines else "age failed")[:300]


class EncryptingSink(io.RawIOBase):
    """A write-only stream that encrypts to ``recipients`` and writes the ciphertext to
    ``out`` (from a thread draining age's stdout). ``finish`` must be called to end it."""

    def __init__(self, recipients: Sequence[str], out: Any) -> None:
        super().__init__()
        argv = [age_tool()]
        for r in recipients:
            argv += ["-r", r]
        in_r, self._in_w = os.pipe()
        self._out_r, out_w = os.pipe()
        _big_pipe(self._in_w)
        _big_pipe(out_w)
        try:
            # Its own session: a Ctrl-C reaches dcb, which cancels cleanly, not age.
            self._proc = subprocess.Popen(argv, stdin=in_r, stdout=out_w,
                                          stderr=subprocess.PIPE, start_new_session=True)
        finally:
            os.close(in_r)
            os.close(out_w)
        self._out = out
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="dcb-age", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            while b := os.read(self._out_r, CHUNK):
                self._out.write(b)
        except BaseException as e:
            self._error = e
            with contextlib.suppress(OSError):
                self._proc.kill()
        finally:
            os.close(self._out_r)

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        done = 0
        try:
            while done < len(mv):
                done += os.write(self._in_w, mv[done:])
        except BrokenPipeError:
            self._fail()
        return done

    def _fail(self) -> None:
        self.abort()
        if isinstance(self._error, OSError):
            raise self._error
        err = self._proc.stderr.read() if self._proc.stderr else b""
        raise EncryptionError(f"age encryption failed: {_first_line(err)}")

    def finish(self) -> None:
        """Close age's input, wait for the last ciphertext, check age's exit status."""
        if self._in_w >= 0:
            os.close(self._in_w)
            self._in_w = -1
        self._thread.join()
        code = self._proc.wait()
        if self._error is not None or code != 0:
            self._fail()
        if self._proc.stderr:
            self._proc.stderr.close()

    def abort(self) -> None:
        if self._in_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._in_w)
            self._in_w = -1
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._thread.join(10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(10)


class DecryptingReader(io.RawIOBase):
    """The plaintext of an age file, read from ``age -d``'s stdout. EOF is only reported once
    age exited 0: a wrong key, a damaged or truncated file raise ``EncryptionError``."""

    def __init__(self, f: BinaryIO, name: str, identity: Path | None = None) -> None:
        super().__init__()
        key = identity or identity_file()
        self.name = name
        out_r, out_w = os.pipe()
        _big_pipe(out_w)
        try:
            self._proc = subprocess.Popen([age_tool(), "-d", "-i", str(key)], stdin=f,
                                          stdout=out_w, stderr=subprocess.PIPE,
                                          start_new_session=True)
        finally:
            os.close(out_w)
            f.close()
        self._fd = out_r
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._eof:
            return 0
        mv = memoryview(b).cast("B")
        data = os.read(self._fd, len(mv))
        if data:
            mv[:len(data)] = data
            return len(data)
        code = self._proc.wait()
        err = self._proc.stderr.read() if self._proc.stderr else b""
        if code != 0:
            raise EncryptionError(f"cannot decrypt {self.name}: {_first_line(err)}",
                                  hint="is [encryption] identity_file the key the set was "
                                       "encrypted to? nothing was changed")
        self._eof = True
        return 0

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            if self._proc.poll() is None:
                with contextlib.suppress(OSError):
                    self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(10)
            if self._proc.stderr:
                self._proc.stderr.close()
        super().close()


def open_decrypted(path: Path, identity: Path | None = None) -> BinaryIO:
    """A buffered reader of the file's plaintext (the file as is when it is not age)."""
    # Never through a symlink: a set's files are input, a link could point anywhere.
    f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")
    # pread: the fd's offset stays 0 for age, whatever the buffer did.
    if os.pread(f.fileno(), len(AGE_MAGIC), 0) != AGE_MAGIC:
        return f
    return io.BufferedReader(DecryptingReader(f, path.name, identity), CHUNK)


def open_decrypted_from(src: Any, name: str, identity: Path | None = None) -> BinaryIO:
    """The plaintext of an age stream read from ``src`` (any object with ``read``), fed to
    ``age -d`` by a thread: a reader that hashes and meters the stored bytes sees each byte
    once, in order, while the plaintext streams out (a restore extracts exactly the bytes
    whose checksum it checks). An error of ``src`` (a cancellation) is raised by the reader."""
    r, w = os.pipe()
    _big_pipe(w)
    try:
        inner = DecryptingReader(os.fdopen(r, "rb"), name, identity)
    except BaseException:
        os.close(w)
        raise
    return io.BufferedReader(_FedDecryption(inner, src, w), CHUNK)


class _FedDecryption(io.RawIOBase):
    def __init__(self, inner: DecryptingReader, src: Any, w: int) -> None:
        super().__init__()
        self.inner = inner
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._feed, args=(src, w), daemon=True,
                                        name="dcb-age-feed")
        self._thread.start()

    def _feed(self, src: Any, w: int) -> None:
        try:
            while b := src.read(CHUNK):
                mv = memoryview(b)
                done = 0
                while done < len(mv):
                    done += os.write(w, mv[done:])
        except BrokenPipeError:
            pass  # age stopped reading: its exit status says why
        except BaseException as e:
            self.error = e
        finally:
            os.close(w)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            n = self.inner.readinto(b)
        except EncryptionError:
            self._thread.join()
            if self.error is not None:
                raise self.error from None
            raise
        if n == 0:
            self._thread.join()
            if self.error is not None:
                raise self.error
        return n

    def close(self) -> None:
        if not self.closed:
            self.inner.close()  # age is killed: a blocked feeder gets EPIPE
            self._thread.join(10)
        super().close()


def keygen(dest: Path) -> str:
    """Write a new age identity to ``dest`` (mode 0600, never overwriting) and return its
    recipient (the public key to put in ``[encryption] recipients``)."""
    if dest.exists():
        raise EncryptionError(f"{dest} exists already: refusing to overwrite an identity")
    p = subprocess.run([age_tool("age-keygen")], capture_output=True, timeout=30)
    if p.returncode != 0:
        raise EncryptionError(f"age-keygen failed: {_first_line(p.stderr)}")
    recipient = next((ln.split(":", 1)[1].strip() for ln in p.stdout.decode().splitlines()
                      if ln.startswith("# public key:")), "")
    if not recipient.startswith("age1"):
        raise EncryptionError("age-keygen printed no public key")
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(p.stdout)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise EncryptionError(f"cannot write {dest}: {e.strerror}") from None
    return recipient
