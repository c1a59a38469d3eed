"""Security, checked on one real run: a backup (helper containers reading the volumes, age
encryption), replication to S3 (moto server) and to a local directory, deep verify and a
notification through SMTP (aiosmtpd), all under a caller's umask of 022, with four canary
secrets given the ways dcb takes them:

- the PostgreSQL password (``$POSTGRES_PASSWORD``), the S3 secret key
  (``$AWS_SECRET_ACCESS_KEY``), the SMTP password (in the 0600 ``urls_file``), the age
  identity (its 0600 file);
- while the commands run, every process's argv (``/proc/*/cmdline``, which on this host shows
  the processes in the containers too) is sampled, and the helper container is inspected;
- afterwards every byte dcb wrote (store, state, history, replicas in the bucket and the
  local copy), its output, and the notification received;
- the console on the same configuration (plus a destination that fails, for its error and the
  check's banner), driven with Pilot through every screen (dashboard, help, set details,
  objectives, history, disk usage, the Docker view and an item, prune, verify, deep verify,
  replicate, backup, the restore wizard's scope, checks and plan, the command palette): each
  screenshot holds no canary, whole or any 8 characters of it.

Every path dcb created is 0600/0700 though the umask would give 0644/0755; a backup dir that
already exists open to others is reported by ``dcb status`` and ``dcb check``.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from textual.command import CommandPalette
from textual.widgets import Button

from dcb.services import encryption
from dcb.services.config import load_config
from dcb.services.drill import DRILL_LABEL
from dcb.tui.app import DcbApp
from dcb.tui.screens.common import HelpScreen
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.tui.screens.docker_du import DockerItemScreen
from dcb.tui.screens.du import DuScreen
from dcb.tui.screens.history import HistoryScreen
from dcb.tui.screens.objectives import ObjectivesScreen
from dcb.tui.screens.restore import RestoreWizard
from dcb.tui.screens.tasks import (
    BackupScopeScreen,
    BackupScreen,
    PruneScreen,
    ReplicateScreen,
    SetDetailScreen,
    VerifyScreen,
)
from dcb.widgets.backups_table import BackupsTable
from dcb.widgets.docker_usage import DockerUsageView
from dcb.widgets.status_panes import AlertBanner
from tests.conftest import BIN, run_dcb
from tests.faults import kit
from tests.replkit import free_port, moto_server
from tests.stackkit import TestStack
from tests.test_backup_faults import (
    Run,
    dcb_env,
    ensure_running,
    freeze,
    stack_helpers,
    wait_until,
)


@dataclass
class Secured:
    cfg: Path
    root: Path
    replica: Path
    canaries: dict[str, str]
    argv_seen: set[str] = field(default_factory=set)
    inspected: list[dict[str, Any]] = field(default_factory=list)
    sandboxes: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    mails: list[bytes] = field(default_factory=list)
    bucket_objects: dict[str, bytes] = field(default_factory=dict)
    created: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


class ArgvSampler:
    """Every distinct argv on the host, sampled every few milliseconds."""

    def __init__(self, seen: set[str]) -> None:
        self.seen = seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for p in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    self.seen.add(p.read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                              "replace"))
            time.sleep(0.005)

    def __enter__(self) -> ArgvSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


@contextlib.contextmanager
def smtp_server(password: str, mails: list[bytes]) -> Iterator[int]:
    port = free_port()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            mails.append(envelope.content)
            return "250 OK"

    def auth(server: Any, session: Any, envelope: Any, mechanism: str,
             data: Any) -> AuthResult:
        return AuthResult(success=isinstance(data, LoginPassword)
                          and data.password == password.encode())

    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=auth,
                     auth_require_tls=False)
    ctl.start()
    try:
        yield port
    finally:
        ctl.stop()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def drill(stack: TestStack, cfg: Path, env: dict[str, str], sec: Secured) -> None:
    """``dcb drill`` of the new set, its sandbox PostgreSQL inspected while it runs."""
    p = subprocess.Popen([str(BIN / "dcb"), "drill", "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dcb_env(env))
    try:
        while p.poll() is None:
            for c in stack.client.api.containers(filters={"label": DRILL_LABEL}):
                if not any(i["Id"] == c["Id"] for i in sec.sandboxes):
                    with contextlib.suppress(Exception):
                        sec.sandboxes.append(stack.client.api.inspect_container(c["Id"]))
            time.sleep(0.05)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    sec.outputs += [out, err]
    assert p.returncode == 0, err


@pytest.fixture(scope="module")
def secured(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    base = tmp_path_factory.mktemp("secured")
    identity = base / "age-identity.txt"
    recipient = encryption.keygen(identity)
    age_secret = next(line for line in identity.read_text().splitlines()
                      if line.startswith("AGE-SECRET-KEY-"))
    canaries = {"PostgreSQL password": stack.password,
                # Random from the first character: a form masked but for its first few
                # characters must show a secret part.
                "S3 secret key": secrets.token_hex(16),
                "SMTP password": secrets.token_hex(16),
                "age identity": age_secret}
    mails: list[bytes] = []
    with moto_server() as endpoint, smtp_server(canaries["SMTP password"], mails) as port:
        env = {"POSTGRES_PASSWORD": stack.password, "AWS_ACCESS_KEY_ID": "dcbsec",
               "AWS_SECRET_ACCESS_KEY": canaries["S3 secret key"],
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="dcbsec",
                          aws_secret_access_key=canaries["S3 secret key"],
                          region_name="us-east-1")
        bucket = "sec" + secrets.token_hex(4)
        s3.create_bucket(Bucket=bucket)
        urls = base / "notify-urls"
        urls.write_text(f"mailto://ops:{canaries['SMTP password']}@127.0.0.1:{port}"
                        "?mode=insecure&from=dcb@example.org&to=oncall@example.org\n")
        urls.chmod(0o600)
        where = base / "new" / "deeper"  # parents dcb itself creates
        replica = base / "replica" / "copies"
        cfg = stack.write_config(
            base, storage={"backup_dir": str(where / "backups"), "volume_access": "helper"},
            encryption={"recipients": [recipient], "identity_file": str(identity)},
            **{"replication.offsite": {"type": "s3", "bucket": bucket, "prefix": "h",
                                       "endpoint_url": endpoint, "region": "us-east-1",
                                       "request_checksum_calculation": "when_required"},
               "replication.near": {"type": "local", "path": str(replica)},
               "notify": {"urls_file": str(urls)}})
        sec = Secured(cfg, where / "backups", replica, canaries, mails=mails, env=env)
        with umask(0o022), ArgvSampler(sec.argv_seen):
            run = Run(base, "backup", cfg, env=env)
            try:
                # The helper reading a volume, inspected while it runs (dcb held still).
                wait_until("a helper container", lambda: stack_helpers(stack), run,
                           timeout=120)
                freeze(run.pid)
                try:
                    for name in stack_helpers(stack):
                        with contextlib.suppress(Exception):
                            sec.inspected.append(stack.client.api.inspect_container(name))
                finally:
                    os.kill(run.pid, signal.SIGCONT)
                assert run.wait(300) == 0, run.err
            finally:
                run.kill()
                ensure_running(stack)
            sec.outputs += [run.out, run.err]
            drill(stack, cfg, env, sec)
            for argv in (["replicate", "--all"], ["verify", "--all", "--deep"],
                         ["notify", "--test"], ["history"], ["list", "--json"],
                         ["status"], ["check"]):
                r = run_dcb(*argv, "--config", str(cfg), env=env, timeout=300)
                sec.outputs += [r.out, r.err]
                assert r.code in (0, 1) if argv[0] == "check" else r.code == 0, (argv, r.err)
        for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            sec.bucket_objects[obj["Key"]] = s3.get_object(Bucket=bucket,
                                                           Key=obj["Key"])["Body"].read()
        assert sec.bucket_objects, "nothing was replicated to S3"
        deadline = time.monotonic() + 20
        while not mails and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mails, "the test notification never arrived"
        sec.created = [*kit.all_paths(base / "new"), *kit.all_paths(base / "replica")]
        yield sec


def test_every_path_dcb_creates_is_private_under_umask_022(secured: Secured) -> None:
    lax = [f"{p} {stat.filemode(p.lstat().st_mode)}" for p in secured.created
           if not p.is_symlink() and p.lstat().st_mode & 0o077]
    assert secured.root.is_dir() and secured.replica.is_dir()
    assert not lax, "\n".join(lax)
    kit.figure("security", f"{len(secured.created)} paths created under umask 022 (store, "
                           "state, history, parents, a local replica): all 0600/0700")


def test_a_lax_backup_dir_is_reported(stack: TestStack, tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # made by hand, or copied with cp -r
    (root / "notes.txt").write_text("x")
    (root / "notes.txt").chmod(0o644)
    st = run_dcb("status", "--config", str(cfg))
    assert "open to other users" in st.out + st.err and str(root) in st.out + st.err, st.out
    ck = run_dcb("check", "--config", str(cfg))
    assert ck.code != 0 and "open to other users" in ck.out and str(root) in ck.out, ck.out
    # Reported, never silently changed.
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    root.chmod(0o700)
    (root / "notes.txt").chmod(0o600)
    st = run_dcb("status", "--config", str(cfg))
    assert "open to other users" not in st.out + st.err


def _leaks(secured: Secured, where: str, text: bytes | str) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{name} in {where}" for name, value in secured.canaries.items()
            if value.encode() in data]


def test_canary_secrets_appear_nowhere(secured: Secured) -> None:
    leaks: list[str] = []
    for argv in secured.argv_seen:
        leaks += _leaks(secured, f"argv {argv[:120]!r}", argv)
    for i in secured.inspected + secured.sandboxes:
        leaks += _leaks(secured, f"docker inspect {i['Name']}", repr(i))
    for p in secured.created:
        if p.is_file() and not p.is_symlink():
            leaks += _leaks(secured, str(p), p.read_bytes())
    for key, body in secured.bucket_objects.items():
        leaks += _leaks(secured, f"s3 object {key}", body)
    for out in secured.outputs:
        leaks += _leaks(secured, "dcb's output", out)
    for mail in secured.mails:
        leaks += _leaks(secured, "the notification", mail)
    assert not leaks, "\n".join(leaks)
    # The sampling did see dcb's own processes (it is not vacuous).
    assert any("pg_dump" in a for a in secured.argv_seen), "no pg_dump seen"
    assert any(" age " in f" {a} " or "/age " in a for a in secured.argv_seen), "no age seen"
    files = sum(1 for p in secured.created if p.is_file())
    inspections = len(secured.inspected) + len(secured.sandboxes)
    kit.figure("security", f"4 canary secrets in none of {len(secured.argv_seen)} sampled "
                           f"argv, {inspections} helper/sandbox inspections, {files} files "
                           f"written, {len(secured.bucket_objects)} S3 objects, "
                           f"{len(secured.mails)} notification(s), dcb's output")


def test_helper_containers_are_confined(secured: Secured) -> None:
    assert secured.inspected, "no helper container was caught running"
    for i in secured.inspected:
        hc = i["HostConfig"]
        assert hc["NetworkMode"] == "none", hc["NetworkMode"]
        assert hc["CapDrop"] == ["ALL"] and set(hc["CapAdd"] or []) <= {"DAC_READ_SEARCH"}, hc
        assert "no-new-privileges" in (hc["SecurityOpt"] or []), hc["SecurityOpt"]
        assert hc["ReadonlyRootfs"] is True
        assert not hc["Privileged"]
        mounts = i["Mounts"]
        assert mounts and all(m["RW"] is False for m in mounts), mounts
        assert i["Config"]["Env"] is None or not any(
            k.split("=", 1)[0] in ("POSTGRES_PASSWORD", "PGPASSWORD",
                                   "AWS_SECRET_ACCESS_KEY") for k in i["Config"]["Env"])


def test_drill_sandboxes_are_confined(secured: Secured) -> None:
    assert secured.sandboxes, "no drill sandbox was caught running"
    for i in secured.sandboxes:
        hc = i["HostConfig"]
        assert hc["NetworkMode"] == "none" and not hc["PortBindings"], hc
        assert hc["CapDrop"] == ["ALL"], hc["CapDrop"]
        assert set(hc["CapAdd"] or []) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID",
                                           "SETGID"}, hc["CapAdd"]
        assert "no-new-privileges" in (hc["SecurityOpt"] or []) and not hc["Privileged"]
        env = dict(e.split("=", 1) for e in i["Config"]["Env"] or [])
        assert env.get("POSTGRES_PASSWORD") != secured.canaries["PostgreSQL password"]


# -- the console ----------------------------------------------------------------------------
SCREEN_TEXT_RE = re.compile(r'<text[^>]*clip-path="url\(#[^"]*-line-(\d+)\)"[^>]*>(.*?)</text>',
                            re.S)
NOT_SECRET = "AGE-SECRET-KEY-1"
"""The age identity's fixed beginning (the other canaries are random throughout)."""


def screen_text(svg: str) -> str:
    """The characters of a console screenshot (Textual's SVG export), line by line."""
    lines: dict[int, list[str]] = {}
    for m in SCREEN_TEXT_RE.finditer(svg):
        lines.setdefault(int(m.group(1)), []).append(html.unescape(m.group(2)))
    return "\n".join("".join(lines[i]) for i in sorted(lines)).replace("\xa0", " ")


def _screen_leaks(secured: Secured, screen: str, svg: str) -> list[str]:
    """A canary in the screenshot, whole or any 8 characters of its secret part (a form
    masked but for its first or last characters, or cut off by a column)."""
    text = screen_text(svg)
    out = []
    for name, value in secured.canaries.items():
        secret = value.removeprefix(NOT_SECRET)
        pieces = {secret[i:i + 8] for i in range(len(secret) - 7)}
        if value in svg or value in text:
            out.append(f"{name} on the {screen} screen")
        elif hit := next((p for p in sorted(pieces) if p in text), None):
            out.append(f"8 characters of the {name} ({hit!r}) on the {screen} screen")
    return out


async def test_canary_secrets_on_no_console_screen(secured: Secured, stack: TestStack,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The console on the same canary configuration (secrets in its environment and 0600
    files), plus a destination that fails (its error and the check's banner on screen),
    driven through every screen; each one's screenshot is scanned."""
    for k, v in secured.env.items():
        monkeypatch.setenv(k, v)
    cfg_path = tmp_path / "dcb.toml"
    cfg_path.write_text(secured.cfg.read_text() + '\n[replication.broken]\ntype = "s3"\n'
                        f'bucket = "gone"\nendpoint_url = "http://127.0.0.1:{free_port()}"\n'
                        'region = "us-east-1"\nretries = 1\n')
    cfg = load_config(str(cfg_path))
    app = DcbApp(cfg)
    shots: dict[str, str] = {}
    encryption.use_config(cfg)  # as `dcb` does before it starts the console
    try:
        await _drive_console(app, stack, shots)
    finally:
        encryption.use_identity_file(None)

    leaks = [leak for name, svg in shots.items() for leak in _screen_leaks(secured, name, svg)]
    assert not leaks, "\n".join(leaks)
    # The screens showed what they are for (the scan is not vacuous).
    text = {name: screen_text(svg) for name, svg in shots.items()}
    assert stack.postgres_container in text["dashboard"]
    assert "broken" in text["replicate"] and "127.0.0.1" in text["replicate"]
    assert "offsite" in text["dashboard"] and "replication to broken" in \
        text["dashboard with alerts"]
    assert "dart_cloud" in text["restore: plan"]
    kit.figure("security", f"4 canary secrets, whole or any 8 characters of them, on none of "
                           f"{len(shots)} console screenshots ({', '.join(shots)})")


async def _drive_console(app: DcbApp, stack: TestStack, shots: dict[str, str]) -> None:
    """Every screen of the console, each one's screenshot kept in ``shots``."""
    async with app.run_test(size=(160, 48)) as pilot:

        async def until(what: str, ready: Callable[[], bool], timeout: float = 120) -> None:
            deadline = time.monotonic() + timeout
            while not ready():
                assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s " \
                                                    f"(on {app.screen!r})"
                await pilot.pause(0.05)

        async def open_(name: str, keys: tuple[str, ...], kind: type[Any],
                        ready: Callable[[Any], bool] = lambda s: True) -> Any:
            await pilot.press(*keys)
            await until(name, lambda: isinstance(app.screen, kind) and ready(app.screen))
            await pilot.pause(0.1)
            shots[name] = app.export_screenshot()
            return app.screen

        async def dashboard() -> None:
            while not isinstance(app.screen, DashboardScreen):
                await pilot.press("escape")
                await pilot.pause(0.1)

        def dash() -> DashboardScreen:
            s = app.screen
            assert isinstance(s, DashboardScreen)
            return s

        def task_done(s: Any) -> bool:
            return not s.running and bool(str(s.query_one("#task-result").render()).strip())

        await open_("dashboard", (), DashboardScreen, lambda s: s.overview is not None
                    and s.status is not None and s.check is not None
                    and s.query_one(BackupsTable).row_count >= 1)
        await open_("help", ("question_mark",), HelpScreen)
        await dashboard()
        await open_("set details", ("enter",), SetDetailScreen)
        await dashboard()
        await open_("recovery objectives", ("o",), ObjectivesScreen)
        await dashboard()
        await open_("history", ("h",), HistoryScreen, lambda s: s.stats is not None)
        await dashboard()
        await open_("disk usage", ("d",), DuScreen,
                    lambda s: s.generation > 0 and not s.scanning)
        await dashboard()

        def docker_loaded(s: Any) -> bool:
            return bool(s.query(DockerUsageView)) and \
                s.query_one(DockerUsageView).report is not None

        view = (await open_("Docker disk usage", ("D",), DuScreen, docker_loaded)
                ).query_one(DockerUsageView)
        pg = next(i for i in view.table.items
              if i.kind == "container" and i.name == stack.postgres_container)
        app.push_screen(DockerItemScreen(pg))
        await open_("Docker item (the PostgreSQL container)", (), DockerItemScreen)
        await dashboard()
        await open_("prune", ("p",), PruneScreen, lambda s: s.plan is not None)
        await dashboard()
        await open_("verify", ("v",), VerifyScreen, task_done)
        await dashboard()
        await open_("deep verify", ("V",), VerifyScreen, task_done)
        await dashboard()
        await open_("replicate", ("R",), ReplicateScreen, task_done)
        await dashboard()
        await until("the failed destination in the banner",
                    lambda: "replication to broken failed" in str(
                        dash().query_one(AlertBanner).render()))
        await open_("dashboard with alerts", (), DashboardScreen)
        await open_("backup scope", ("b",), BackupScopeScreen)
        await pilot.press("down", "enter")  # databases only
        await pilot.click("#start")
        await open_("backup", (), BackupScreen, task_done)
        await dashboard()
        wizard = await open_("restore: scope", ("r",), RestoreWizard)
        await pilot.click("#scope-next")
        await open_("restore: checks", (), RestoreWizard, lambda s: s.plan is not None
                    or s.query_one("#checklist").has_class("failed"))
        assert not wizard.query_one("#checks-next", Button).disabled, \
            screen_text(shots["restore: checks"])
        await pilot.click("#checks-next")
        await open_("restore: plan", (), RestoreWizard, lambda s: s.step == "confirm"
                    and bool(str(s.query_one("#blast").render()).strip()))
        assert wizard.step == "confirm" and not wizard.running  # never started
        await dashboard()
        await open_("command palette", ("ctrl+p",), CommandPalette)
        await dashboard()
        await pilot.press("q")
