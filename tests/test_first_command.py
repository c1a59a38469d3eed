"""The README's first command, typed as a new user types it: in a terminal (tmux), in a fresh
clone of the repository (its committed tree), with nothing of this checkout's venv.

``deploy/setup.sh`` finds the Debian packages and the Docker engine in place and builds a new
``.venv`` in the clone; ``dcb demo`` makes the demo stack and opens the console on it. The
demo's data dir is the test's (``XDG_DATA_HOME``), so a demo a person runs here is untouched.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import run_dcb
from tests.test_e2e_tmux import TMUX, Tmux, poll

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(TMUX is None, reason="tmux is not installed")]


def readme_first_command() -> str:
    """The first line of the README's "Two commands" block, without its comment."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Two commands\n.*?```sh\n(.*?)```", text, re.S)
    assert block, "README.md: no ```sh block under '## Two commands'"
    return block.group(1).splitlines()[0].split("#")[0].strip()


def test_readme_first_command_from_a_fresh_clone(tmp_path: Path):
    command = readme_first_command()
    assert "dcb demo" in command, command
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    xdg = tmp_path / "xdg"
    config = xdg / "dcb" / "demo" / "dcb.toml"
    exit_file = tmp_path / "exit-code"
    # What the user types, nothing redirected (the console draws on the terminal); a failure
    # stays on the screen for 5 s (the `sleep`), for the assertion messages.
    line = (f"cd {shlex.quote(str(clone))} && export TERM=xterm-256color "
            f"XDG_DATA_HOME={shlex.quote(str(xdg))} && {command}; "
            f"echo $? > {shlex.quote(str(exit_file))}; sleep 5")
    tmux = Tmux()
    try:
        tmux.start(line)
        assert poll(config.exists, timeout=1200), (
            "no demo config was written; screen:\n" + tmux.screen())
        postgres = tomllib.loads(config.read_text())["stack"]["postgres_container"]
        assert poll(lambda: postgres in tmux.screen(), timeout=300), (
            "the console never showed the demo stack; screen:\n" + tmux.screen())
        tmux.run("send-keys", "-t", tmux.name, "q")
        assert poll(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                    timeout=30), tmux.screen()
        assert exit_file.read_text().strip() == "0", tmux.screen()
        assert (clone / ".venv" / "bin" / "dcb").exists()  # the clone's own install ran
    finally:
        tmux.close()
        if config.exists():
            r = run_dcb("demo", "down", env={"XDG_DATA_HOME": str(xdg)}, timeout=300)
            assert r.code == 0, r.err
