"""Streams from processes in containers, against the real engine."""

from __future__ import annotations

import http.client
import time

import pytest

from dcb.services.docker_exec import ExecProcess
from dcb.services.docker_gateway import DockerGateway
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
