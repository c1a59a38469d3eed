"""Install as users do: build the wheel, install it into a fresh venv, run what they run.

Tests of the editable checkout once hid a console that crashed when installed from a wheel (the
stylesheet was not shipped). Here the wheel is built the way pip, pipx or ``uv tool`` build it,
installed into a new venv away from the repository, and its ``dcb`` runs ``--version``,
``status --json`` against the real stack and the console under tmux.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stackkit import TestStack
from tests.test_e2e_tmux import TMUX, Tmux, poll

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``dcb`` executable of a fresh venv holding only the built wheel and its deps."""
    root = tmp_path_factory.mktemp("wheel")
    # A clean copy of the tree as git sees it (committed or not, ignored files left out):
    # a stale build/ of the checkout must not supply files the real build would miss.
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    src = root / "src"
    for name in filter(None, files):
        s, d = REPO / name, src / name
        if not s.exists() and not s.is_symlink():
            continue  # deleted in the work tree
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink():
            d.symlink_to(os.readlink(s))
        else:
            shutil.copy2(s, d)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w",
                            str(root / "dist"), str(src)], check=True, capture_output=True,
                           text=True, cwd=root, timeout=600)
    (root / "build.log").write_text(built.stdout + built.stderr)
    (wheel,) = (root / "dist").glob("dcb-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c",
                    str(REPO / "deploy" / "constraints.txt"), str(wheel)],
                   check=True, capture_output=True, cwd=root, timeout=900)
    yield venv / "bin" / "dcb"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DCB_", "PYTHON", "TMUX", "VIRTUAL_ENV"))}


def test_the_build_has_no_deprecation_warnings(installed: Path):
    """pyproject.toml as the build backend wants it today (an SPDX ``license`` string...)."""
    log = (installed.parent.parent.parent / "build.log").read_text()
    assert "Successfully built dcb" in log or "Created wheel for dcb" in log
    assert "Deprecat" not in log, [x for x in log.splitlines() if "Deprecat" in x]


def test_wheel_ships_one_package_and_the_stylesheet(installed: Path):
    (wheel,) = (installed.parent.parent.parent / "dist").glob("dcb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"dcb"}
    assert "dcb/styles.tcss" in names
    assert "dcb/services/restore.py" in names and "dcb/tui/app.py" in names


def test_installed_dcb_runs_outside_the_repository(installed: Path, stack: TestStack,
                                                   tmp_path: Path):
    r = subprocess.run([str(installed), "--version"], capture_output=True, text=True,
                       cwd=tmp_path, env=_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("dcb "), r.stderr
    cfg = stack.write_config(tmp_path)
    r = subprocess.run([str(installed), "status", "--json", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    names = {c["name"] for c in json.loads(r.stdout)["containers"]}
    assert stack.postgres_container in names


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_installed_console_starts_and_quits(installed: Path, stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path)
    exit_file = tmp_path / "exit-code"
    command = (f"cd {shlex.quote(str(tmp_path))} && env TERM=xterm-256color "
               f"DCB_CONFIG={shlex.quote(str(cfg))} {shlex.quote(str(installed))}; "
               f"echo $? > {shlex.quote(str(exit_file))}; sleep 5")
    tmux = Tmux()
    try:
        tmux.start(command)
        # A crash leaves its traceback on the screen for 5 s (the `sleep` above).
        assert poll(lambda: stack.postgres_container in tmux.screen(), timeout=30), (
            "the installed console never showed the stack; screen:\n" + tmux.screen())
        tmux.run("send-keys", "-t", tmux.name, "q")
        assert poll(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                    timeout=15), tmux.screen()
        assert exit_file.read_text().strip() == "0", tmux.screen()
    finally:
        tmux.close()
