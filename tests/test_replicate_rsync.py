"""Replication by rsync over SSH to Debian's sshd on a loopback port, with keys the test
makes: a round trip, unknown and changed host keys refused, an interrupted transfer."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BIN, run_dcb
from tests.replkit import free_port, make_set, set_ids, wait_port

pytestmark = pytest.mark.skipif(not shutil.which("sshd") and not Path("/usr/sbin/sshd").exists(),
                                reason="needs openssh-server (deploy/setup.sh --test)")


@dataclass
class Sshd:
    port: int
    dir: Path
    known_hosts: Path
    identity: Path
    remote: Path


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    d = tmp_path_factory.mktemp("sshd")
    keygen(d / "hostkey")
    keygen(d / "id")
    (d / "authorized_keys").write_text((d / "id.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'hostkey'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    p = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_port(port)
        kh = d / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{port} " + (d / "hostkey.pub").read_text())
        yield Sshd(port, d, kh, d / "id", d / "remote")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def config(tmp: Path, s: Sshd, known_hosts: Path | None = None) -> Path:
    c = tmp / "dcb.toml"
    c.write_text(f'[storage]\nbackup_dir = "{tmp / "backups"}"\n'
                 f'[replication.far]\ntype = "rsync"\nhost = "127.0.0.1"\n'
                 f'user = "{getpass.getuser()}"\nport = {s.port}\npath = "{s.remote / tmp.name}"\n'
                 f'identity_file = "{s.identity}"\nknown_hosts = "{known_hosts or s.known_hosts}"\n'
                 "retries = 2\n")
    return c


def test_round_trip(tmp_path: Path, sshd: Sshd):
    ids = set_ids(2)
    for i in ids:
        make_set(tmp_path / "backups", i)
    cfg = config(tmp_path, sshd)
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    assert json.loads(r.out)["destinations"][0]["copied"] == ids
    remote = sshd.remote / tmp_path.name
    assert sorted(p.name for p in remote.iterdir()) == ids
    for f in (tmp_path / "backups" / ids[1]).iterdir():
        assert (remote / ids[1] / f.name).read_bytes() == f.read_bytes()
    r = run_dcb("list", "--from", "far", "--json", "--config", str(cfg))
    assert [s["id"] for s in json.loads(r.out)] == ids[::-1]
    r = run_dcb("verify", ids[0], "--from", "far", "--config", str(cfg))
    assert r.code == 0, r.err
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg))
    assert json.loads(r.out)["destinations"][0]["copied"] == []


def test_unknown_or_changed_host_key_is_refused(tmp_path: Path, sshd: Sshd):
    make_set(tmp_path / "backups", set_ids(1)[0])
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    other = tmp_path / "other"
    keygen(other)
    changed = tmp_path / "changed_known_hosts"
    changed.write_text(f"[127.0.0.1]:{sshd.port} " + (tmp_path / "other.pub").read_text())
    for kh in (empty, changed):
        r = run_dcb("replicate", "--all", "--config", str(config(tmp_path, sshd, kh)))
        assert r.code == 1
        assert "host key of 127.0.0.1 is unknown or changed: refused" in r.err
        assert not (sshd.remote / tmp_path.name).exists()
    assert "127.0.0.1" not in empty.read_text()  # nothing was learnt silently


def test_interrupted_transfer_leaves_no_file_under_its_final_name(tmp_path: Path, sshd: Sshd):
    set_id = set_ids(1)[0]
    make_set(tmp_path / "backups", set_id, {"volume-big.tar.zst": os.urandom(400 << 20),
                                            "db-app.pgdump": os.urandom(1000)})
    cfg = config(tmp_path, sshd)
    remote = sshd.remote / tmp_path.name
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    p = subprocess.Popen([str(BIN / "dcb"), "replicate", "--all", "--config", str(cfg)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    incoming = remote / f".incoming-{set_id}"
    deadline = time.monotonic() + 60
    while not (incoming.is_dir() and any(f.name.startswith(".volume-big")
                                         for f in incoming.iterdir())):
        assert time.monotonic() < deadline and p.poll() is None, "transfer never started"
        time.sleep(0.02)
    # A crash mid-transfer: dcb and its local rsync and ssh killed at once (no clean-up by
    # dcb); the receiving rsync on the "remote" side is left to notice the cut by itself.
    p.kill()
    for pid in _pids(f"{tmp_path.name}", server=False):
        os.kill(pid, signal.SIGKILL)
    p.communicate(timeout=30)
    deadline = time.monotonic() + 60
    while _pids(tmp_path.name, server=True):
        assert time.monotonic() < deadline, "the receiving rsync never exited"
        time.sleep(0.1)
    assert not (remote / set_id).exists()
    for f in remote.rglob("volume-big.tar.zst"):
        raise AssertionError(f"a partial file under its final name was left: {f}")
    # The next round sweeps what the killed one left, even with that set gone locally
    # meanwhile (pruned: never sent again).
    assert incoming.is_dir()
    aside = tmp_path / "aside"
    (tmp_path / "backups" / set_id).rename(aside)
    r = run_dcb("replicate", "--all", "--config", str(cfg))
    assert r.code == 0 and not incoming.exists(), r.err
    aside.rename(tmp_path / "backups" / set_id)
    # The next run sends the set whole.
    r = run_dcb("replicate", "--all", "--config", str(cfg))
    assert r.code == 0, r.err
    assert (remote / set_id / "volume-big.tar.zst").stat().st_size == 400 << 20


def _pids(pattern: str, server: bool) -> list[int]:
    """rsync/ssh processes of this test: the receiving end (``rsync --server``) or ours."""
    out = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, cmd = line.partition(" ")
        if ("rsync" in cmd or cmd.startswith("ssh")) and ("--server" in cmd) == server \
                and "pgrep" not in cmd:
            pids.append(int(pid))
    return pids
