"""End to end in a real terminal: the installed ``dcb`` in tmux, as the engineer on call runs it.

Launch ``dcb`` (no subcommand: the console) in a detached tmux session against the real test
stack, read the screen with ``tmux capture-pane`` until the stack's PostgreSQL container and the
backup made beforehand are on it, press ``q`` and check the app exits 0 and the session ends.
A private tmux server (``-L``) keeps this away from any tmux the user runs.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.stackkit import TestStack

DCB = Path(sys.executable).parent / "dcb"
TMUX = shutil.which("tmux")

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


class Tmux:
    """One detached session on a private tmux server."""

    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.socket = f"dcb-e2e-{token}"
        self.name = f"dcb-e2e-{token}"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DCB_", "TMUX"))}
        return subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30, check=check, env=env)

    def start(self, command: str, width: int = 120, height: int = 40) -> None:
        self.run("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
                 command)

    def screen(self) -> str:
        r = self.run("capture-pane", "-p", "-t", self.name, check=False)
        return r.stdout if r.returncode == 0 else ""

    def alive(self) -> bool:
        return self.run("has-session", "-t", self.name, check=False).returncode == 0

    def close(self) -> None:
        self.run("kill-session", "-t", self.name, check=False)
        self.run("kill-server", check=False)  # only this test's private server


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_console_in_tmux_shows_stack_and_backup_then_quits(stack: TestStack,
                                                          tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    exit_file = tmp_path / "exit-code"
    command = (f"cd {shlex.quote(str(tmp_path))} && "
               f"env TERM=xterm-256color DCB_CONFIG={shlex.quote(str(cfg))} "
               f"{shlex.quote(str(DCB))}; echo $? > {shlex.quote(str(exit_file))}")
    tmux = Tmux()
    try:
        tmux.start(command)
        shown = poll(lambda: stack.postgres_container in (s := tmux.screen()) and set_id in s,
                     timeout=30)
        assert shown, ("the console never showed the PostgreSQL container and the set "
                       f"{set_id}; last screen:\n{tmux.screen()}")
        screen = tmux.screen()
        assert "complete" in screen and "Containers" in screen, screen
        tmux.run("send-keys", "-t", tmux.name, "q")
        assert poll(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                    timeout=15), f"dcb did not exit after q; screen:\n{tmux.screen()}"
        assert exit_file.read_text().strip() == "0"
        assert poll(lambda: not tmux.alive(), timeout=10), "the tmux session did not end"
    finally:
        tmux.close()
