"""The dashboard's coverage warnings: what no backup takes, what may be copied inconsistently.

A line of its own under the status line (services/coverage.py builds the text), hidden when
everything is protected.
"""

from __future__ import annotations

from textual.markup import escape
from textual.widgets import Static


class CoverageLine(Static):
    def show(self, warnings: tuple[str, ...]) -> None:
        self.display = bool(warnings)
        self.update("\n".join(f"[b $warning]⚠ {escape(w)}[/]" for w in warnings))
