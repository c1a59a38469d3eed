"""``python -m dcb``: the same as the ``dcb`` console script."""

import sys

from dcb.cli.main import main

sys.exit(main())
