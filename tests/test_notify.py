"""Notifications reach real servers on loopback: an SMTP server (aiosmtpd, with AUTH) and an
HTTP server standing in for a JSON webhook and a healthchecks-style ping endpoint. A dead
webhook is logged and never fails the job; no secret from a URL reaches the log.

The job runs are real: a backup of the test stack (and one that fails, against a PostgreSQL
container that does not exist), through the daemon's own job path (``dcb schedule --run``'s
``Scheduler.run_now``).
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dcb.services.config import Config, load_config
from dcb.services.ops.notify import Event, Notifier
from dcb.services.ops.schedule import Scheduler
from dcb.services.store import BackupStore
from tests.automation_fixtures import Run, write_runs
from tests.conftest import run_dcb
from tests.stackkit import TestStack
from tests.test_schedule import Recorder

SECRET = "s3cretPASSw0rd"
TOKEN = "tok3nINpath9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HttpSink:
    port: int
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    def bodies(self, path: str) -> list[bytes]:
        return [b for _m, p, b in self.requests if p == path]

    def wait_for(self, path: str, n: int = 1, timeout: float = 20) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.bodies(path)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.bodies(path)


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink(0)

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            sink.requests.append((self.command, self.path, self.rfile.read(n)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_POST = do_GET = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.port = server.server_address[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield sink
    server.shutdown()
    server.server_close()


@dataclass
class SmtpSink:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[bytes, bytes]] = field(default_factory=list)

    def wait_for(self, n: int, timeout: float = 20) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            sink.messages.append(msg)  # type: ignore[arg-type]
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            sink.logins.append((auth_data.login, auth_data.password))
            ok = auth_data.password == SECRET.encode()
            return AuthResult(success=ok)
        return AuthResult(success=False)

    ctl = Controller(Handler(), hostname="127.0.0.1", port=sink.port,
                     authenticator=authenticator, auth_require_tls=False)
    ctl.start()
    yield sink
    ctl.stop()


def urls(tmp_path: Path, http: HttpSink, smtp: SmtpSink, dead_port: int) -> Path:
    f = tmp_path / "notify-urls"
    f.write_text(
        "# alert targets\n"
        f"json://hook:{SECRET}@127.0.0.1:{http.port}/hook/{TOKEN}\n"
        f"mailto://ops:{SECRET}@127.0.0.1:{smtp.port}?mode=insecure&from=dcb@example.org"
        "&to=oncall@example.org\n"
        f"json://127.0.0.1:{dead_port}/dead\n")
    f.chmod(0o600)
    return f


def config(tmp_path: Path, body: str) -> Config:
    path = tmp_path / "dcb.toml"
    path.write_text(body)
    return load_config(str(path), environ={})


def test_events_reach_smtp_and_json_webhook_and_a_dead_one_is_only_logged(
        tmp_path: Path, http_sink: HttpSink, smtp_sink: SmtpSink):
    f = urls(tmp_path, http_sink, smtp_sink, free_port())
    cfg = config(tmp_path, f'[notify]\nurls_file = "{f}"\nhost = "backup-host"\n'
                           'on = ["failure", "recovery", "success"]\ntimeout = 3\n')
    log: list[str] = []
    n = Notifier(cfg, log.append)
    event = Event(event="backup", status="failed", host="backup-host", job="nightly",
                  message="job nightly (backup) failed: pg_dump died", set_id="20261203T020000Z",
                  started_at="2026-12-03T02:00:00+00:00", duration_seconds=12.5,
                  size_bytes=None, error="pg_dump died", durations={"database a": 12.0},
                  sizes={"database a": 0})
    assert n.send(event) == 2  # the dead target is the third
    (body,) = http_sink.wait_for(f"/hook/{TOKEN}")
    data = json.loads(body)
    assert data["event"] == "backup" and data["status"] == "failed"
    assert data["host"] == "backup-host" and data["set_id"] == "20261203T020000Z"
    assert data["error"] == "pg_dump died" and data["duration_seconds"] == 12.5
    assert data["durations"] == {"database a": 12.0} and data["type"] == "failure"
    assert data["title"] == "dcb on backup-host: nightly FAILED"
    (mail,) = smtp_sink.wait_for(1)
    assert mail["Subject"] == "dcb on backup-host: nightly FAILED"
    assert mail["To"] == "oncall@example.org" and "dcb@example.org" in mail["From"]
    assert "pg_dump died" in mail.get_body().get_content()  # type: ignore[union-attr]
    assert smtp_sink.logins == [(b"ops", SECRET.encode())]
    assert any("notification target #3 (json)" in line and "not delivered" in line
               for line in log), log
    assert not any(SECRET in line or TOKEN in line for line in log)

    quiet = Notifier(config(tmp_path, f'[notify]\nurls_file = "{f}"\n'), log.append)
    ok = Event(event="backup", status="ok", host="h", message="fine")
    assert quiet.send(ok) == 0  # default: failures and recoveries only
    assert quiet.send(Event(event="backup", status="recovered", host="h", message="ok")) == 2


def test_urls_file_readable_by_others_is_refused(tmp_path: Path):
    f = tmp_path / "urls"
    f.write_text(f"json://u:{SECRET}@127.0.0.1:9/x\n")
    f.chmod(0o644)
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(f'[notify]\nurls_file = "{f}"\n')
    r = run_dcb("notify", "--config", str(cfg))
    assert r.code == 2 and "let others read it" in r.err and "chmod 600" in r.err
    assert SECRET not in r.err + r.out
    f.chmod(0o600)
    r = run_dcb("notify", "--config", str(cfg))
    assert r.code == 0 and "notification target #1 (json)" in r.out and SECRET not in r.out


def test_daemon_notifies_check_transitions_and_others_runs(tmp_path: Path,
                                                           http_sink: HttpSink):
    root = tmp_path / "backups"
    from datetime import UTC, datetime

    write_runs(root, datetime.now(UTC), [Run(30)])  # RPO (24h) missed
    f = tmp_path / "urls"
    f.write_text(f"json://127.0.0.1:{http_sink.port}/hook\n")
    f.chmod(0o600)
    cfg = config(tmp_path, f'[storage]\nbackup_dir = "{root}"\n[notify]\nurls_file = "{f}"\n'
                           '[schedule]\nheartbeat_seconds = 0.2\n'
                           '[schedule.yearly]\nrun = "backup"\ncron = "@yearly"\n')
    sched = Scheduler(cfg, lambda _m: None, runner=Recorder())
    t = threading.Thread(target=sched.run)
    t.start()
    try:
        (first,) = http_sink.wait_for("/hook")
        assert json.loads(first)["event"] == "check"
        assert json.loads(first)["status"] == "critical"
        assert "newest complete backup is 30.0h old" in json.loads(first)["error"]
        # Someone restores by hand, and it fails: the daemon tells.
        with (root / "history.jsonl").open("a") as h:
            h.write(json.dumps({"kind": "restore", "id": "restore-1", "set_id": "S1",
                                "ok": False, "seconds": 3.0, "error": "row counts differ",
                                "at": datetime.now(UTC).isoformat()}) + "\n")
        bodies = http_sink.wait_for("/hook", 2)
        restore = json.loads(bodies[1])
        assert restore["event"] == "restore" and restore["status"] == "failed"
        assert restore["error"] == "row counts differ" and restore["set_id"] == "S1"
        # A fresh backup appears: the check is back to OK.
        write_runs(root, datetime.now(UTC), [Run(0.01)])
        bodies = http_sink.wait_for("/hook", 3)
        back = json.loads(bodies[-1])
        assert back["event"] == "check" and back["status"] == "recovered"
    finally:
        sched.request_stop()
        t.join(10)


@pytest.mark.docker
def test_failed_then_recovered_backup_job_notifies_and_pings(
        stack: TestStack, tmp_path: Path, http_sink: HttpSink, smtp_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch):
    f = urls(tmp_path, http_sink, smtp_sink, free_port())
    monkeypatch.setenv("NIGHTLY_PING", f"http://127.0.0.1:{http_sink.port}/ping/{TOKEN}")
    automation = {"notify": {"urls_file": str(f), "host": "backup-host", "timeout": 3}}
    # Every database, so that one left in the shared stack by another test is no coverage
    # WARNING here (the check must go from critical to recovered).
    good = stack.write_config(tmp_path, stack={"databases": "all"}, **automation)
    job = ('\n[schedule.nightly]\nrun = "backup"\ncron = "0 2 * * *"\n'
           'ping_url_env = "NIGHTLY_PING"\n')
    good.write_text(good.read_text() + job)
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace(f'"{stack.postgres_container}"',
                                            '"dcbt-no-such-postgres"', 1))
    log: list[str] = []

    failed = Scheduler(load_config(str(bad), environ={}), log.append).run_now("nightly")
    assert failed.status == "failed" and "dcbt-no-such-postgres" in (failed.error or "")
    ok = Scheduler(load_config(str(good), environ={}), log.append).run_now("nightly")
    assert ok.status == "ok", ok.error  # the dead webhook did not fail it
    s = BackupStore(tmp_path / "backups").get(ok.set_id or "")
    assert s.status == "complete"

    base = f"/ping/{TOKEN}"
    assert [p for _m, p, _b in http_sink.requests if p.startswith(base)] == [
        f"{base}/start", f"{base}/fail", f"{base}/start", base]
    (fail_body,) = http_sink.bodies(f"{base}/fail")
    assert b"dcbt-no-such-postgres" in fail_body
    (ok_body,) = http_sink.bodies(base)
    assert s.id.encode() in ok_body

    # The check's own transitions (no backup yet: critical; then OK) come as "check" events.
    events = [json.loads(b) for b in http_sink.wait_for(f"/hook/{TOKEN}", 4)]
    assert [e["status"] for e in events if e["event"] == "check"] == ["critical", "recovered"]
    first, second = (e for e in events if e["event"] == "backup")
    assert first["event"] == "backup" and first["status"] == "failed"
    assert first["job"] == "nightly" and first["host"] == "backup-host"
    assert "dcbt-no-such-postgres" in first["error"]
    assert second["status"] == "recovered" and second["set_id"] == s.id
    assert second["size_bytes"] == s.size_bytes and second["error"] is None
    assert second["duration_seconds"] > 0
    assert second["sizes"] == {f"{a.kind} {a.name}": a.size_bytes for a in s.artifacts}
    assert set(second["durations"]) == set(second["sizes"])

    mails = smtp_sink.wait_for(4)
    assert [m["Subject"] for m in mails if "nightly" in m["Subject"]] == [
        "dcb on backup-host: nightly FAILED", "dcb on backup-host: nightly back to OK"]
    assert any("notification target #3 (json)" in line for line in log)
    assert not any(SECRET in line or TOKEN in line for line in log)
