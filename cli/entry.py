"""The ``dcb`` console script. Importing the CLI takes about half a second; Ctrl-C in that
time is "interrupted" (exit 130) like Ctrl-C later, never a traceback."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from dcb.cli.main import main
    except KeyboardInterrupt:
        sys.stderr.write("dcb: interrupted\n")
        sys.exit(130)
    sys.exit(main())
