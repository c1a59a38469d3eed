"""The shape of the house: one import package, headless layers that never load Textual.

The scheduler, cron and CI run the CLI and services alone, so those must never import Textual;
import-linter's contracts in pyproject.toml say so and a subprocess proves it at run time.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("services", "cli", "tui", "widgets")


@pytest.mark.parametrize("module", ["dcb.services.status", "dcb.services.config",
                                    "dcb.cli.main", "dcb.cli.commands", "dcb.services.store",
                                    "dcb.services.du", "dcb.cli.du_command"])
def test_headless_modules_do_not_import_textual(module: str):
    code = (f"import sys, {module}; "
            "bad = [m for m in sys.modules if m.split('.')[0] == 'textual' "
            "or m.startswith(('dcb.tui', 'dcb.widgets'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(exe)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_code_imports_only_through_the_dcb_package():
    """``import services.x`` would load a second copy of a module under another name (two
    registries, two locks); everything goes through ``dcb.``."""
    bad = []
    for folder in (*LAYERS, "tests", "bench", "dcb"):
        for path in (REPO / folder).rglob("*.py"):
            if folder == "dcb" and path.parent != REPO / "dcb":
                continue  # the links to the layers, checked as the layers themselves
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom)
                         and node.level == 0 else [])
                bad += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names
                        if n.split(".")[0] in LAYERS]
    assert bad == []


def test_the_package_links_every_layer():
    for layer in (*LAYERS, "styles.tcss"):
        link = REPO / "dcb" / layer
        assert link.is_symlink() and link.resolve() == (REPO / layer).resolve(), layer
