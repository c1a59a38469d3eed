"""The ``dcb`` console script.

Signals over the whole life of the process, not only while a service runs:
- Importing the CLI takes about half a second; Ctrl-C in that time is "interrupted" (exit 130)
  like Ctrl-C later, never a traceback.
- SIGTERM (``docker stop``, a scheduler's timeout, ``kill``) is Ctrl-C: commands that can stop
  at a safe point install their own handlers (cli/signals.py); outside them, and between them
  (printing a result, replication after a backup), it is "interrupted", exit 130, not a kill
  by the signal's default action.
- Once a command has succeeded, a signal cannot turn that success into a kill: Python puts the
  default handlers back while the interpreter shuts down, and a Ctrl-C in those milliseconds
  used to end a finished backup with "killed by SIGINT". Ignored signals stay ignored there.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _terminate(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run() -> None:
    try:
        signal.signal(signal.SIGTERM, _terminate)
        from dcb.cli.main import main

        code = main()
        if code == 0:
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)
    except KeyboardInterrupt:
        sys.stderr.write("dcb: interrupted\n")
        code = 130
    sys.exit(code)
