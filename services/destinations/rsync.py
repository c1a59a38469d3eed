"""``type = "rsync"``: a directory on another host, by rsync over SSH (Debian's rsync and
openssh-client).

Host-key checking is always on against ``known_hosts`` (``StrictHostKeyChecking=yes``; an
unknown or changed key is refused), authentication only by ``identity_file`` (``BatchMode``:
never a password prompt; no secret on any command line). A set is sent into
``.incoming-<id>`` (rsync without ``--partial``: an interrupted file never keeps a final
name), checked there with ``sha256sum``, then renamed into place with ``mv -T``; a failed
copy (a full disk: "no space left", never retried) is removed at once, one a killed run left
at the start of the next round.
Connection failures are retried with backoff; a host-key refusal is not.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from dcb.services.destinations.base import (
    MAX_MANIFEST_BYTES,
    NO_SPACE_RE,
    Destination,
    DestinationError,
    SetFile,
    Transfer,
    last_line,
    run_bounded,
)
from dcb.services.store import MANIFEST, SET_ID_RE

HOSTKEY_RE = re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
                        r"No .* host key is known", re.I)


PROGRESS_RE = re.compile(rb"^\s*([\d,]+)\s+\d+%")


class _Progress:
    """Feeds ``rsync --info=progress2`` (bytes so far, on \\r-separated lines) to a Transfer."""

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer
        self.seen = 0
        self.tail = b""

    def __call__(self, chunk: bytes) -> None:
        parts = re.split(rb"[\r\n]", self.tail + chunk)
        self.tail = parts.pop()
        for part in parts:
            m = PROGRESS_RE.match(part)
            if m:
                done = int(m.group(1).replace(b",", b""))
                if done > self.seen:
                    self.transfer.meter.add(done - self.seen)
                    self.seen = done


class RsyncDestination(Destination):
    type = "rsync"

    @property
    def remote(self) -> str:
        return f"{self.dcfg.user}@{self.dcfg.host}" if self.dcfg.user else self.dcfg.host

    @property
    def path(self) -> str:
        return self.dcfg.path.rstrip("/") or "/"

    def describe(self) -> str:
        return f"{self.remote}:{self.path} (port {self.dcfg.port})"

    def ssh_argv(self) -> list[str]:
        d = self.dcfg
        argv = ["ssh", "-p", str(d.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.cfg.resolve_path(d.known_hosts)}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=15",
                "-o", "LogLevel=ERROR",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if d.identity_file:
            argv += ["-o", "IdentitiesOnly=yes", "-i", str(self.cfg.resolve_path(d.identity_file))]
        return argv

    def _run(self, argv: list[str], doing: str, transfer: Transfer | None = None,
             check: bool = True) -> str:
        delay = 1.0
        for attempt in range(1, self.dcfg.retries + 1):
            progress = _Progress(transfer) if transfer is not None else None
            ran = run_bounded(argv, self.dcfg.timeout, transfer.cancel if transfer else None,
                              on_output=progress)
            if ran.code == 0 or not check:
                return ran.output
            if HOSTKEY_RE.search(ran.output):
                raise self.error(f"{doing}: the host key of {self.dcfg.host} is unknown or "
                                 "changed: refused",
                                 hint=f"check the key and put it in {self.dcfg.known_hosts} "
                                      "(ssh-keyscan, verified out of band)")
            if NO_SPACE_RE.search(ran.output):  # permanent: never retried
                raise self.error(f"{doing}: no space left on device at {self.remote}:"
                                 f"{self.path} (exit {ran.code})",
                                 hint="free space there; the partial copy is removed and "
                                      "the next `dcb replicate` sends it again")
            # ssh's 255 and rsync's connection/timeout codes are worth another try.
            transient = ran.code in (255, 10, 12, 30, 35)
            if not transient or attempt == self.dcfg.retries:
                raise self.error(f"{doing} failed (exit {ran.code})"
                                 + (f": {last_line(ran.output)}" if ran.output.strip() else ""))
            time.sleep(delay)
            delay = min(delay * 2, 30)
        raise AssertionError("unreachable")

    def _ssh(self, script: str, doing: str, check: bool = True) -> str:
        return self._run([*self.ssh_argv(), self.remote, script], doing, check=check)

    def _rsync(self, *args: str) -> list[str]:
        # No --partial, ever: an interrupted file must not keep its final name.
        return ["rsync", "-rt", "--chmod=D700,F600", "--timeout=120", "--info=progress2",
                "-e", shlex.join(self.ssh_argv()), *args]

    def list_sets(self) -> list[str]:
        q = shlex.quote(self.path)
        out = self._ssh(f"cd {q} 2>/dev/null || exit 0; for d in *; do "
                        f"[ -f \"$d/{MANIFEST}\" ] && printf '%s\\n' \"$d\"; done; exit 0",
                        "listing")
        return sorted({ln.strip() for ln in out.splitlines() if SET_ID_RE.match(ln.strip())})

    def put_set(self, set_dir: Path, set_id: str, files: Sequence[SetFile],
                transfer: Transfer) -> None:
        final = f"{self.path}/{set_id}"
        tmp = f"{self.path}/.incoming-{set_id}"
        qf, qt = shlex.quote(final), shlex.quote(tmp)
        self._ssh(f"mkdir -p {shlex.quote(self.path)} && rm -rf {qt} && mkdir -m 700 {qt}",
                  f"preparing {set_id}")
        try:
            names = "".join(f"{f.name}\n" for f in files)
            list_file = set_dir.parent / f".rsync-files-{set_id}"
            list_file.write_text(names)
            try:
                self._run(self._rsync(f"--files-from={list_file}", f"{set_dir}/",
                                      f"{self.remote}:{tmp}/"), f"sending {set_id}", transfer)
            except DestinationError as e:
                # rsync's own "No space left" line does not always reach us (seen under
                # load: only "exit 11" and the progress); the remote disk says it instead.
                need = sum(f.size_bytes for f in files)
                free = None if "no space left" in e.message else self._free_bytes(tmp)
                if free is not None and free < need:
                    raise self.error(f"sending {set_id}: no space left on device at "
                                     f"{self.remote}:{self.path} ({free} bytes free, the set "
                                     f"needs {need})", hint=e.hint) from None
                raise
            finally:
                list_file.unlink(missing_ok=True)
            out = self._ssh(f"cd {qt} && sha256sum -- "
                            + " ".join(shlex.quote(f.name) for f in files),
                            f"checking the copy of {set_id}")
            got = {}
            for ln in out.splitlines():
                digest, _, name = ln.partition("  ")
                got[name.strip()] = digest.strip()
            for f in files:
                if f.sha256 and got.get(f.name) != f.sha256:
                    raise self.error(f"the copy of {f.name} does not verify (SHA-256)")
            self._ssh(f"[ ! -e {qf} ] && mv -T {qt} {qf}", f"publishing {set_id}")
        except BaseException:
            self._ssh(f"rm -rf {qt}", f"cleaning up {set_id}", check=False)
            raise

    def _free_bytes(self, where: str) -> int | None:
        """Free bytes on the remote filesystem holding ``where`` (None: unknown)."""
        out = self._ssh(f"df -Pk {shlex.quote(where)} | tail -n 1", "checking free space",
                        check=False)
        fields = out.split()
        try:
            return int(fields[3]) * 1024
        except (IndexError, ValueError):
            return None

    def sweep(self) -> None:
        self._ssh(f"cd {shlex.quote(self.path)} 2>/dev/null || exit 0; "
                  "rm -rf -- .incoming-* .deleting-*", "removing interrupted copies")

    def read_manifest(self, set_id: str) -> bytes:
        p = shlex.quote(f"{self.path}/{set_id}/{MANIFEST}")
        if self._ssh(f"[ -f {p} ] && echo yes || echo no", f"reading {set_id}").strip() != "yes":
            raise self.error(f"no set {set_id} at {self.describe()}",
                             hint=f"`dcb list --from {self.name}` shows its sets")
        return self._ssh(f"head -c {MAX_MANIFEST_BYTES + 1} {p}", f"reading {set_id}").encode()

    def fetch_files(self, set_id: str, names: Sequence[str], dest: Path,
                    transfer: Transfer) -> None:
        list_file = dest / ".rsync-files"
        list_file.write_text("".join(f"{n}\n" for n in names))
        try:
            # -rt without -l: a symlink in the copy is skipped, never followed.
            self._run(self._rsync(f"--files-from={list_file}",
                                  f"{self.remote}:{self.path}/{set_id}/", f"{dest}/"),
                      f"fetching {set_id}", transfer)
        finally:
            list_file.unlink(missing_ok=True)

    def delete_set(self, set_id: str) -> None:
        f, g = shlex.quote(f"{self.path}/{set_id}"), shlex.quote(f"{self.path}/.deleting-{set_id}")
        self._ssh(f"if [ -e {f} ]; then mv -T {f} {g}; fi; rm -rf {g}", f"deleting {set_id}")


DESTINATION = RsyncDestination
