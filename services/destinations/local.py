"""``type = "local"``: a directory (a second disk, a NAS mount). A set is copied into
``.incoming-<id>`` beside its final place, every file fsynced and read back against its
SHA-256, then the directory is renamed into place: a copy is whole or absent. A copy that
fails (a full disk) removes its temporary directory; one a killed run left is swept at the
start of the next round. One host replicates into a directory (as with retention)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from dcb.services import faults
from dcb.services import formatting as fmt
from dcb.services.artifacts import CHUNK, fsync_dir, private_dirs, sha256_file
from dcb.services.destinations.base import (
    MAX_MANIFEST_BYTES,
    Destination,
    SetFile,
    Transfer,
    manifest_last,
)
from dcb.services.store import DIR_MODE, MANIFEST, SET_ID_RE

TEMP_PREFIXES = (".incoming-", ".deleting-")
"""Names a copy or a removal has while under way (never listed: not set ids)."""


class LocalDestination(Destination):
    type = "local"

    @property
    def root(self) -> Path:
        return self.cfg.resolve_path(self.dcfg.path)

    def describe(self) -> str:
        return str(self.root)

    def list_sets(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self.error(f"cannot list {self.root}: {e.strerror}") from None
        return sorted(e.name for e in entries
                      if SET_ID_RE.match(e.name) and e.is_dir(follow_symlinks=False)
                      and os.path.isfile(os.path.join(e.path, MANIFEST)))

    def put_set(self, set_dir: Path, set_id: str, files: Sequence[SetFile],
                transfer: Transfer) -> None:
        final = self.root / set_id
        tmp = self.root / f".incoming-{set_id}"
        try:
            private_dirs(self.root)
            if tmp.exists():  # left by a killed run
                shutil.rmtree(tmp)
            tmp.mkdir(mode=DIR_MODE)
            for f in manifest_last(files):
                self._copy(set_dir / f.name, tmp / f.name, f, transfer)
            fsync_dir(tmp)
            if final.exists():
                raise self.error(f"{final} appeared meanwhile")
            os.rename(tmp, final)
            fsync_dir(self.root)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                need = sum(f.size_bytes for f in files)
                raise self.error(f"no space left on device at {self.root} for set {set_id} "
                                 f"({fmt.size(need)}); the partial copy was removed",
                                 hint="free space there; the next `dcb replicate` sends it "
                                      "again") from None
            raise self.error(f"cannot write {self.root}: {e.strerror}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def sweep(self) -> None:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        except OSError as e:
            raise self.error(f"cannot list {self.root}: {e.strerror}") from None
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIXES):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _copy(self, src: Path, dst: Path, f: SetFile, transfer: Transfer) -> None:
        h = hashlib.sha256()
        n = 0
        with open(src, "rb") as r, open(dst, "xb") as w:
            os.fchmod(w.fileno(), 0o600)
            while b := r.read(CHUNK):
                transfer.check()
                h.update(b)
                w.write(b)
                n += len(b)
                transfer.add(len(b))
                if n == len(b):
                    faults.hold("replicate-copy", transfer.cancel)
            w.flush()
            os.fsync(w.fileno())
        if n != f.size_bytes or (f.sha256 and h.hexdigest() != f.sha256):
            raise self.error(f"{src} changed or is damaged: it does not match its manifest",
                             hint="`dcb verify` the set")
        size, digest = sha256_file(dst)  # read back what landed
        if size != f.size_bytes or (f.sha256 and digest != f.sha256):
            raise self.error(f"the copy of {f.name} does not verify (size or SHA-256)")

    def _open_in_set(self, set_id: str, name: str) -> int:
        """A file of a copy, opened as itself: the set directory and the file are never
        followed through a symlink, and a FIFO or device is refused without blocking (the
        destination may be another party's disk)."""
        d = os.open(self.root / set_id, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=d)
        finally:
            os.close(d)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self.error(f"{set_id}/{name} at {self.root} is not a regular file: refused")
        os.set_blocking(fd, True)
        return fd

    def read_manifest(self, set_id: str) -> bytes:
        p = self.root / set_id / MANIFEST
        try:
            with os.fdopen(self._open_in_set(set_id, MANIFEST), "rb") as f:
                return f.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise self.error(f"no set {set_id} at {self.root}",
                             hint=f"`dcb list --from {self.name}` shows its sets") from None
        except OSError as e:
            raise self.error(f"cannot read {p}: {e.strerror}") from None

    def fetch_files(self, set_id: str, names: Sequence[str], dest: Path,
                    transfer: Transfer) -> None:
        src = self.root / set_id
        for name in names:
            s = src / name
            try:
                with os.fdopen(self._open_in_set(set_id, name), "rb") as r, \
                        os.fdopen(os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                          0o600), "wb") as w:
                    while b := r.read(CHUNK):
                        transfer.add(len(b))
                        w.write(b)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    raise self.error(f"{set_id}/{name} is missing at {self.root}") from None
                raise self.error(f"cannot read {s}: {e.strerror}") from None

    def delete_set(self, set_id: str) -> None:
        final = self.root / set_id
        gone = self.root / f".deleting-{set_id}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(final, gone)
        shutil.rmtree(gone, ignore_errors=True)


DESTINATION = LocalDestination
