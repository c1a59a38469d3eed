"""A ledger of containers dcb has stopped, kept in the backup dir's state dir
(services/state.py).

Written before a container is stopped and cleared once it runs again, so a dcb killed in
between (kill -9, power loss) leaves a record: the next backup or restore starts those
containers again, and ``dcb status`` warns about them until then.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from dcb.services.artifacts import atomic_write_bytes

STOPPED_MARKER = ".stopped-containers.json"


class StoppedLedger:
    def __init__(self, root: Path) -> None:
        self.path = root / STOPPED_MARKER
        self._lock = threading.Lock()

    def pending(self) -> dict[str, str]:
        """Container name -> what stopped it (``backup``/``restore``)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("containers", {})
        if isinstance(entries, list):  # first format: a plain list
            return {str(n): "backup" for n in entries}
        return {str(k): str(v) for k, v in entries.items()}

    def mark(self, name: str, by: str) -> None:
        with self._lock:
            entries = self.pending()
            entries[name] = by
            atomic_write_bytes(self.path, json.dumps({"containers": entries}).encode())

    def clear(self, names: list[str]) -> None:
        with self._lock:
            entries = {k: v for k, v in self.pending().items() if k not in names}
            if entries:
                atomic_write_bytes(self.path, json.dumps({"containers": entries}).encode())
            else:
                with contextlib.suppress(OSError):
                    self.path.unlink()
