"""Hold points for fault tests (tests/test_restore_faults.py, test_backup_faults.py):
deterministic places to deliver SIGINT or SIGKILL to a running restore or backup.

With ``DCB_TEST_HOLD=<point>:<file>`` in the environment, a run reaching ``<point>`` creates
``<file>`` and waits while it exists (or until the run is cancelled). Without the variable a
hold point costs one dictionary lookup. Points: ``validate``, ``undo-point-start`` (before
the undo point is recorded), ``undo-point``, ``volume``,
``database``, ``swap``, ``verify``; in a backup, ``backup-app-stopped`` (a volume's users
stopped, its archive started); in a replication to a local destination, ``replicate-copy``
(a file's first MiB written).
"""

from __future__ import annotations

import os
import threading
import time

ENV = "DCB_TEST_HOLD"


def hold(point: str, cancel: threading.Event | None = None) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, path = spec.partition(":")
    if name != point or not path:
        return
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(path):
        if cancel is not None and cancel.is_set():
            return
        time.sleep(0.02)
