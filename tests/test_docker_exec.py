"""Streams from processes in containers, against the real engine."""

from __future__ import annotations

import http.client
import threading
import time

import pytest

from dcb.services.docker_exec import ExecProcess, StepGuard, StepTimeout
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled
from dcb.services.postgres import PgGateway
from tests.stackkit import TestStack


def test_output_that_arrives_with_the_headers_is_not_lost(stack: TestStack,
                                                          monkeypatch: pytest.MonkeyPatch):
    """dcb descheduled (or SIGSTOPped) between sending `exec start` and reading the reply:
    the process's whole output is already buffered behind the headers. Seen in CI as an
    empty pg_dumpall stream after a frozen run resumed."""
    begin = http.client.HTTPResponse.begin

    def late_begin(self: http.client.HTTPResponse) -> None:
        time.sleep(0.3)
        begin(self)

    gw = DockerGateway.connect()
    try:
        monkeypatch.setattr(http.client.HTTPResponse, "begin", late_begin)
        with ExecProcess(gw, stack.postgres_container,
                         ["pg_dumpall", "-U", "postgres", "--globals-only"]) as p:
            out = p.read_all()
            assert p.wait() == 0
    finally:
        gw.close()
    assert b"CREATE ROLE dart_app" in out
    assert out.rstrip().endswith(b"--")


def _backends(stack: TestStack, marker: str) -> int:
    return int(stack.psql("postgres", "SELECT count(*) FROM pg_stat_activity "
                                      f"WHERE query LIKE '%{marker}%' "
                                      "AND pid <> pg_backend_pid()").strip())


def test_a_silent_process_outlives_the_docker_client_timeout(stack: TestStack):
    """The Docker client's request timeout (here 2 s) never cuts a process's output stream:
    a silent exec (a dump waiting for a lock, pg_restore building an index) runs on."""
    gw = DockerGateway.connect(timeout=2)
    try:
        t0 = time.monotonic()
        with ExecProcess(gw, stack.postgres_container,
                         ["sh", "-c", "sleep 4; echo done; sleep 3"]) as p:
            out = p.read_all()
            code = p.wait()
        took = time.monotonic() - t0
    finally:
        gw.close()
    assert (out, code) == (b"done\n", 0)
    assert took >= 7


def test_a_step_limit_stops_a_silent_query_and_its_session(stack: TestStack):
    """An explicit limit ([timeouts] step) ends a silent query: the reader returns, the
    error names the step and the key, and the server session is gone (not left waiting)."""
    gw = DockerGateway.connect()
    marker = "dcb_guard_test_sleep"
    try:
        pg = PgGateway(gw, stack.postgres_container, "postgres")
        t0 = time.monotonic()
        with pytest.raises(StepTimeout) as info, StepGuard("a test query", 2) as guard:
            pg.with_guard(guard).query(f"SELECT pg_sleep(60) AS {marker}")
        took = time.monotonic() - t0
    finally:
        gw.close()
    assert 2 <= took < 15, took
    assert "a test query did not finish within 2s ([timeouts] step)" in str(info.value)
    deadline = time.monotonic() + 10
    while _backends(stack, marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _backends(stack, marker) == 0


def test_cancel_stops_a_silent_stream(stack: TestStack):
    gw = DockerGateway.connect()
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(Cancelled), StepGuard("a silent exec", 0, cancel.is_set) as guard, \
                guard.watch(ExecProcess(gw, stack.postgres_container,
                                        ["sleep", "61"])) as p:
            p.read_all()
            p.wait()
        took = time.monotonic() - t0
    finally:
        gw.close()
    assert took < 10, took
    # The process itself was stopped too (the engine runs on this host).
    procs = stack.client.containers.get(stack.postgres_container).exec_run(
        ["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"]).output.decode()
    assert "sleep 61" not in procs
