"""The README's first command from a fresh clone, in a real terminal:
``deploy/setup.sh && .venv/bin/dcb demo`` must end in the console showing the demo stack and its
first backup; ``q`` quits; ``dcb demo down`` then leaves nothing behind.

The clone is made with ``git clone`` (what a new user has: committed files only), its setup
creates its own venv (pip may reuse its cache), and the demo dir is pointed into the test's tmp
dir through ``XDG_DATA_HOME``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import docker
import pytest

from dcb.services.guard import DEMO_LABEL
from tests.test_e2e_tmux import TMUX, Tmux, poll

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(TMUX is None, reason="tmux is not installed")]


def test_readme_first_command_from_a_fresh_clone(docker_client: docker.DockerClient,
                                                  tmp_path: Path):
    readme = (REPO / "README.md").read_text()
    assert "deploy/setup.sh && .venv/bin/dcb demo" in readme
    clone = tmp_path / "dcb"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DCB_", "PYTHON", "VIRTUAL_ENV", "TMUX"))}
    env["XDG_DATA_HOME"] = str(xdg)
    exit_file = tmp_path / "exit-code"
    command = (f"cd {shlex.quote(str(clone))} && env XDG_DATA_HOME={shlex.quote(str(xdg))} "
               "TERM=xterm-256color sh -c 'deploy/setup.sh && .venv/bin/dcb demo'; "
               f"echo $? > {shlex.quote(str(exit_file))}; sleep 5")
    tmux = Tmux()
    demo_id = None
    try:
        tmux.start(command, width=140, height=40)
        shown = poll(lambda: "dcb-demo-" in (s := tmux.screen()) and "complete" in s
                     and "Backups" in s, timeout=900, interval=1)
        assert shown, f"the console never showed the demo stack; screen:\n{tmux.screen()}"
        screen = tmux.screen()
        assert "DEMO stack" in screen and "-postgres" in screen and "running" in screen
        state = json.loads((xdg / "dcb" / "demo" / "demo.json").read_text())
        demo_id = state["id"]
        assert f"dcb-demo-{demo_id}-postgres" in screen
        tmux.run("send-keys", "-t", tmux.name, "q")
        assert poll(lambda: exit_file.exists() and exit_file.read_text().strip() != "",
                    timeout=30), tmux.screen()
        assert exit_file.read_text().strip() == "0", tmux.screen()
    finally:
        tmux.close()
        r = subprocess.run([str(clone / ".venv" / "bin" / "dcb"), "demo", "down"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    if demo_id is not None:
        flt = {"label": f"{DEMO_LABEL}={demo_id}"}
        assert docker_client.containers.list(all=True, filters=flt) == []
        assert docker_client.volumes.list(filters=flt) == []
        assert docker_client.networks.list(filters=flt) == []
    assert not (xdg / "dcb" / "demo").exists()
