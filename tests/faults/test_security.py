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
  local copy), its output, and the notification received.

Every path dcb created is 0600/0700 though the umask would give 0644/0755; a backup dir that
already exists open to others is reported by ``dcb status`` and ``dcb check``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dcb.services import encryption
from dcb.services.drill import DRILL_LABEL
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
                "S3 secret key": "s3canary" + secrets.token_hex(12),
                "SMTP password": "smtpcanary" + secrets.token_hex(12),
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
        sec = Secured(cfg, where / "backups", replica, canaries, mails=mails)
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
