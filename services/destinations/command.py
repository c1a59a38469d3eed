"""``type = "command"``: any tool (rclone, scp, a site script), run without a shell.

``command`` is an argv template. With ``{file}`` in it, it runs once per file (artifacts
first, the manifest last); otherwise once per set. Placeholders: ``{set_dir}`` (the local set
directory), ``{set_id}``, ``{file}`` (one file's local path). Optional templates:
``list_command`` (prints the ids of complete copies, one a line), ``fetch_command`` (fills the
empty local ``{set_dir}`` with the copy ``{set_id}``), ``delete_command`` (``{set_id}``).
Each runs in its own process group, killed after ``timeout`` seconds; its output is redacted
of secrets before it is shown. A copy is trusted on the command's exit status (the command
must publish atomically itself); ``dcb verify --from`` proves it when ``fetch_command`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dcb.services.destinations.base import (
    MAX_MANIFEST_BYTES,
    Destination,
    SetFile,
    Transfer,
    last_line,
    manifest_last,
    run_bounded,
)
from dcb.services.store import MANIFEST, SET_ID_RE


def expand(template: Sequence[str], **values: str) -> list[str]:
    """Substitute only our placeholders; other braces stay as they are."""
    out = []
    for part in template:
        for k, v in values.items():
            part = part.replace("{" + k + "}", v)
        out.append(part)
    return out


class CommandDestination(Destination):
    type = "command"

    def describe(self) -> str:
        return " ".join(self.dcfg.command)[:80]

    def _run(self, template: Sequence[str], what: str, transfer: Transfer | None = None,
             **values: str) -> str:
        argv = expand(template, **values)
        ran = run_bounded(argv, self.dcfg.timeout, transfer.cancel if transfer else None)
        if ran.code != 0:
            raise self.error(f"{what}: `{argv[0]}` exited {ran.code}"
                             + (f": {last_line(ran.output)}" if ran.output.strip() else ""))
        return ran.output

    def list_sets(self) -> list[str] | None:
        if not self.dcfg.list_command:
            return None
        out = self._run(self.dcfg.list_command, "listing")
        return sorted({ln.strip().rstrip("/") for ln in out.splitlines()
                       if SET_ID_RE.match(ln.strip().rstrip("/"))})

    def put_set(self, set_dir: Path, set_id: str, files: Sequence[SetFile],
                transfer: Transfer) -> None:
        values = {"set_dir": str(set_dir), "set_id": set_id}
        if any("{file}" in p for p in self.dcfg.command):
            for f in manifest_last(files):
                self._run(self.dcfg.command, f"copying {f.name}", transfer,
                          file=str(set_dir / f.name), **values)
                transfer.add(f.size_bytes)
        else:
            self._run(self.dcfg.command, f"copying {set_id}", transfer, file="", **values)
            transfer.add(sum(f.size_bytes for f in files))

    def _need(self, template: Sequence[str], key: str) -> Sequence[str]:
        if not template:
            raise self.error(f"this needs {key} in [replication.{self.name}]")
        return template

    def read_manifest(self, set_id: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="dcb-manifest-") as tmp:
            self.fetch_files(set_id, [MANIFEST], Path(tmp), None)
            p = Path(tmp) / MANIFEST
            if not p.is_file():
                raise self.error(f"fetch_command left no {MANIFEST} for {set_id}")
            with open(p, "rb") as f:
                return f.read(MAX_MANIFEST_BYTES + 1)

    def fetch_files(self, set_id: str, names: Sequence[str], dest: Path,
                    transfer: Transfer | None) -> None:
        template = self._need(self.dcfg.fetch_command, "fetch_command")
        self._run(template, f"fetching {set_id}", transfer, set_dir=str(dest), set_id=set_id,
                  file="")
        # Whatever else the command wrote is ignored: only the named files are used.

    def delete_set(self, set_id: str) -> None:
        template = self._need(self.dcfg.delete_command, "delete_command")
        self._run(template, f"deleting {set_id}", set_id=set_id, set_dir="", file="")


DESTINATION = CommandDestination
