"""``python -m dcb``: the same as the ``dcb`` console script."""

from dcb.cli.entry import run

run()
