"""Extracting an already validated volume archive with GNU tar on the host.

The restore's own extractor (services/safe_tar.py) checks every member again as it writes it,
in Python, in one thread. When the archive was validated member by member in this run and the
destination is an empty directory (a fresh volume directory: the replaced one was moved into
the undo point, or a drill's new volume), GNU tar writes the same files with a third of the CPU
and in its own process: on two cores that shared with PostgreSQL's restore, it is what makes a
full restore fast (bench/README.md).

What keeps it safe: the archive was validated first (no absolute names, no ``..``, no member
below a link, no devices); the bytes piped to tar are hashed and must equal the checksum the
validation saw, so a file changed in between fails the restore; and the restore compares the
extracted tree with the validated listing afterwards. GNU tar itself never writes through a
symlink it created (it delays them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zstandard

from dcb.services.artifacts import CHUNK
from dcb.services.encryption import is_encrypted, open_decrypted_from
from dcb.services.errors import Cancelled, DcbError
from dcb.services.progress import ByteMeter

FULL_BELOW = 1 << 20
"""Free bytes under which a failed extraction is said to have filled the disk."""


class HostExtractError(DcbError):
    pass


@functools.lru_cache(maxsize=1)
def gnu_tar() -> tuple[str, ...] | None:
    """The GNU tar command line for exact extraction, or None when there is no GNU tar."""
    exe = shutil.which("tar")
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        helptext = subprocess.run([exe, "--help"], capture_output=True, text=True,
                                  timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "GNU tar" not in version:
        return None
    if "--xattrs" not in helptext:
        return None  # it would lose extended attributes, ACLs and capabilities
    # ACLs are in the archive as raw system.posix_acl_* attributes (services/volumes.py):
    # --xattrs restores them with numeric ids; --acls would skip them, looking for tar's own
    # textual ACL records, and leave the files without ACLs.
    args = [exe, "-x", "-f", "-", "--numeric-owner", "--same-owner", "--same-permissions",
            "--delay-directory-restore", "--xattrs", "--xattrs-include=*", "--no-acls"]
    return tuple(args)


def _reader(raw: Any, compression: str) -> Any:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=False)
    if compression == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


class _Hashing:
    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b: bytes = self.f.read(n)
        self.sha.update(b)
        return b


def _pump(src: Any, out: Any, meter: ByteMeter, stopping: Callable[[], bool],
          after_first_chunk: Callable[[], None]) -> None:
    first = True
    while True:
        if stopping():
            raise Cancelled("restore cancelled")
        b = src.read(CHUNK)
        if not b:
            return
        try:
            out.write(b)
        except BrokenPipeError:
            return  # tar stopped: its exit status says why
        meter.add(len(b))
        if first:
            first = False
            after_first_chunk()


def extract_validated(path: Path, compression: str, dest: Path, *, sha256: str | None,
                      meter: ByteMeter, stopping: Callable[[], bool],
                      after_first_chunk: Callable[[], None] = lambda: None) -> None:
    """Pipe the decompressed archive into GNU tar extracting into ``dest`` (empty)."""
    args = gnu_tar()
    if args is None:
        raise HostExtractError("GNU tar is not available")
    encrypted = is_encrypted(path)
    proc = subprocess.Popen([*args, "-C", str(dest)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    err = bytearray()
    stderr = proc.stderr

    def drain() -> None:
        for line in stderr:
            err.extend(line)
            del err[:-16384]

    drainer = threading.Thread(target=drain, name="dcb-tar-stderr", daemon=True)
    drainer.start()
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as raw:
            hashed = _Hashing(raw)
            # An age file is decrypted as it is read: the bytes hashed are the stored ones,
            # the bytes extracted their plaintext, in one pass.
            plain: Any = open_decrypted_from(hashed, path.name) if encrypted else hashed
            try:
                _pump(_reader(plain, compression), proc.stdin, meter, stopping,
                      after_first_chunk)
                while plain.read(CHUNK):
                    pass  # trailing bytes the decompressor did not need: hashed all the same
            finally:
                if plain is not hashed:
                    plain.close()
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        code = proc.wait()
        drainer.join()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        drainer.join(5)
        proc.stderr.close()
    if code != 0:
        text = bytes(err).decode("utf-8", "replace").strip().splitlines()
        # The first error says why ("No space left on device"); tar's last line only that
        # there were errors.
        why = next((line for line in text if "Exiting with failure status" not in line),
                   text[-1] if text else f"exit {code}")
        with contextlib.suppress(OSError):
            if shutil.disk_usage(dest).free < FULL_BELOW:
                why = f"no space left on its filesystem ({why})"  # tar: "Wrote only ..."
        raise HostExtractError(f"tar could not extract into {dest}: {why}")
    if sha256 is not None and hashed.sha.hexdigest() != sha256:
        raise HostExtractError(f"{path.name} changed after it was validated (checksum "
                               "mismatch): the volume is only partly restored",
                               hint="verify the backup set; `dcb undo` puts the volume back")
