"""Volumes whose storage is mounted by Docker, and a disk that fills up mid-restore.

- A volume with driver options (``type=none,o=bind,device=DIR`` here; ``type=nfs`` or
  ``tmpfs`` alike) is mounted by Docker only while a container uses it; in between, its
  mountpoint on the host is an empty directory. With the app stopped for the backup, dcb read
  that empty directory and listed an empty archive complete; it now reads such a volume
  through a helper container, which has Docker mount it. A restore into one is refused before
  anything changes (it would write beneath the mount, and verify what it wrote there).
- The disk filling up in the middle of a restore: the volume's directory is a tmpfs of 8 MB
  mounted on the host, the restore's free-space check passes, then a filler written at the
  hold point (services/faults.py) takes what is left. The restore fails in one line naming
  the lack of space and is never reported finished; once the space is freed, the next dcb run
  (``dcb undo``) puts back exactly the volume as it was before the restore.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest
import zstandard

from tests.conftest import BIN, run_dcb
from tests.faults import kit
from tests.stackkit import BUSYBOX_IMAGE, LABEL, TestStack, release_undo_points
from tests.test_backup_faults import error_line


def _sh(stack: TestStack, vol: str, script: str) -> None:
    stack.client.containers.run(BUSYBOX_IMAGE, ["sh", "-c", script], remove=True,
                                network_mode="none", labels=LABEL,
                                volumes={vol: {"bind": "/v", "mode": "rw"}})


def _listing(stack: TestStack, vol: str) -> str:
    out = stack.client.containers.run(
        BUSYBOX_IMAGE, ["sh", "-c", "cd /v && find . | sort | while read -r f; do "
                                    "[ -f \"$f\" ] && md5sum \"$f\" || echo \"$f\"; done"],
        remove=True, network_mode="none", labels=LABEL,
        volumes={vol: {"bind": "/v", "mode": "ro"}})
    return str(out.decode())


@contextlib.contextmanager
def _volume(stack: TestStack, **opts: str) -> Iterator[str]:
    vol = f"{stack.prefix}_fault{secrets.token_hex(2)}"
    stack.client.volumes.create(vol, driver="local", labels=LABEL, driver_opts=opts or None)
    try:
        yield vol
    finally:
        release_undo_points(stack)
        with contextlib.suppress(docker.errors.APIError):
            stack.client.volumes.get(vol).remove(force=True)


def test_a_volume_mounted_by_docker_is_read_through_docker(stack: TestStack,
                                                           tmp_path: Path) -> None:
    share = tmp_path / "share"  # stands in for an NFS export
    share.mkdir()
    with _volume(stack, type="none", o="bind", device=str(share)) as vol:
        _sh(stack, vol, "mkdir -p /v/a && echo one > /v/a/one && echo two > /v/two")
        app = stack.client.containers.run(
            BUSYBOX_IMAGE, ["sleep", "2147483647"], detach=True, init=True,
            network_mode="none", labels=LABEL, volumes={vol: {"bind": "/v", "mode": "rw"}})
        try:
            cfg = stack.write_config(tmp_path, stack={
                "volumes": [*stack.volumes, vol], "app_containers": [app.name],
                "stop_during_backup": [app.name]})
            r = run_dcb("backup", "-q", "--volume", vol, "--config", str(cfg), timeout=300)
            assert r.code == 0, r.err
            set_id = r.out.strip()
            art = tmp_path / "backups" / set_id / f"volume-{vol}.tar.zst"
            raw = zstandard.ZstdDecompressor().stream_reader(art.read_bytes()).read()
            with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
                names = tf.getnames()
            assert {"./a/one", "./two"} <= set(names), names  # not the empty dir below

            before = _listing(stack, vol)
            r = run_dcb("restore", set_id, "--volume", vol, "--yes", "--config", str(cfg))
            assert r.code != 0, r.out
            line = error_line(r)
            assert "mounted by Docker" in r.err and "type=none" in r.err, r.err
            assert _listing(stack, vol) == before
            assert stack.client.containers.get(app.id).status == "running"
            kit.figure("volumes mounted by Docker", f"read through a helper; restore refused "
                                                    f"before any change: {line[:90]}...")
        finally:
            app.remove(force=True)


@pytest.fixture
def small_disk_volume(stack: TestStack) -> Iterator[str]:
    """A plain volume whose directory is a tmpfs of 8 MB mounted on the host."""
    with _volume(stack) as vol:
        mp = stack.client.volumes.get(vol).attrs["Mountpoint"]
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", mp],
                       check=True)
        try:
            yield vol
        finally:
            subprocess.run(["umount", "-l", mp], check=False)


def test_disk_full_in_the_middle_of_a_restore(stack: TestStack, tmp_path: Path,
                                              small_disk_volume: str) -> None:
    vol = small_disk_volume
    _sh(stack, vol, "mkdir -p /v/a && for i in 1 2 3; do "
                    "dd if=/dev/urandom of=/v/a/f$i bs=1k count=1024 2>/dev/null; done")
    cfg = stack.write_config(tmp_path, stack={"volumes": [*stack.volumes, vol]})
    r = run_dcb("backup", "-q", "--volume", vol, "--config", str(cfg), timeout=300)
    assert r.code == 0, r.err
    set_id = r.out.strip()
    _sh(stack, vol, "rm /v/a/f2 && echo changed > /v/changed.txt")
    before = _listing(stack, vol)

    hold = tmp_path / "held"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")}
    env["DCB_TEST_HOLD"] = f"volume:{hold}"
    err = tmp_path / "restore.err"
    with open(err, "w") as errf:
        p = subprocess.Popen([str(BIN / "dcb"), "restore", set_id, "--volume", vol, "--yes",
                              "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=errf,
                             stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not hold.exists():
            assert p.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "never reached the volume"
            time.sleep(0.02)
        # Someone else takes every byte left.
        _sh(stack, vol, "dd if=/dev/zero of=/v/.filler bs=64k 2>/dev/null; true")
        hold.unlink()
        code = p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    stderr = err.read_text()
    assert code == 1, (code, stderr)
    line = error_line(stderr)
    assert "space" in line.lower(), line
    logs = sorted((tmp_path / "backups" / "restores").glob("restore-*.json"))
    report = json.loads(logs[-1].read_text())["report"]
    assert report["state"] != ["nothing was changed"] or report["finished"], report
    assert not any(s["key"] == "verify" and s["outcome"] == "ok" for s in report["steps"])

    _sh(stack, vol, "rm -f /v/.filler")  # the space is freed
    u = run_dcb("undo", logs[-1].stem, "--yes", "--config", str(cfg), timeout=300)
    assert u.code == 0, u.err + u.out
    assert _listing(stack, vol) == before
    kit.figure("full disk during a restore",
               f"failed with: {line[:100]}; dcb undo put the volume back exactly")
