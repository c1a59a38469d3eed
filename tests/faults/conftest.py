"""Fixtures of the fault suite; the figures it proved are printed at the end of the run."""

from __future__ import annotations

from typing import Any

from tests.faults import kit


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not kit.FIGURES:
        return
    terminalreporter.section("figures proven by the fault suite")
    for topic, lines in sorted(kit.FIGURES.items()):
        for line in lines:
            terminalreporter.write_line(f"{topic}: {line}")
