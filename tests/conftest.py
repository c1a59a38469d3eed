"""Shared fixtures. Integration tests run against a real Docker engine and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests import stackkit

BIN = Path(sys.executable).parent


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_dcb(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600, input: str | None = None) -> Result:
    """Run the installed ``dcb`` console script as a user would."""
    exe = BIN / "dcb"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dcb"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    full_env.update(env or {})
    p = subprocess.run([*cmd, *args], capture_output=True, text=True, env=full_env, cwd=cwd,
                       timeout=timeout, input=input)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"integration tests need a running Docker engine ({e}); "
                    "run deploy/test.sh, which starts one", pytrace=False)
    stackkit.ensure_images()
    stackkit.sweep(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def stack(docker_client: docker.DockerClient) -> Iterator[stackkit.TestStack]:
    st = stackkit.create_stack(docker_client)
    try:
        yield st
    finally:
        stackkit.destroy_stack(st)


def pytest_configure(config: pytest.Config) -> None:
    """A suite started in the background (``cmd &`` in a script, as CI may) inherits SIGINT
    ignored, and so would every dcb it starts: the tests that press Ctrl-C would see it
    ignored. A handler here gives each child the default disposition again (exec resets
    handled signals, never ignored ones)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _release_undo_points(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared stack, what its restores kept for undo (renamed
    databases, undo volumes) is dropped: one test's undo points are never the next one's
    unprotected database, extra undo volume or full disk."""
    yield
    if "stack" in request.fixturenames:
        stackkit.release_undo_points(request.getfixturevalue("stack"))


@pytest.fixture
def stack_config(stack: stackkit.TestStack, tmp_path: Path) -> Path:
    """A dcb.toml for the test stack, with a fresh backup dir under tmp_path."""
    return stack.write_config(tmp_path)


@pytest.fixture(scope="session")
def docker_junk(docker_client: docker.DockerClient,
                stack: stackkit.TestStack) -> Iterator[Any]:
    """Disk hogs on the real engine beside the test stack (tests/dockerjunk.py)."""
    from tests import dockerjunk

    if os.geteuid() != 0:
        pytest.skip("the Docker disk view's log files need root beside the engine")
    dockerjunk.sweep_images(docker_client)
    junk = dockerjunk.make_junk(docker_client, stack)
    try:
        yield junk
    finally:
        dockerjunk.destroy_junk(junk)
