"""The README's "host lost" runbook, end to end, with encryption at rest: back up (age),
replicate to S3 (moto server on loopback), lose the backup dir, the volume's files and the
databases, restore from S3 on the "new host" with only the config and the key, verify.
Along the way: no plaintext canary in any stored byte (local or S3), the age CLI decrypts an
artifact by hand, a missing or wrong identity fails clearly and changes nothing, the S3
secret never appears in argv, output, ledger, history or manifests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import run_dcb
from tests.replkit import SECRET_KEY, moto_server, s3_env
from tests.stackkit import TestStack

CANARY = "CANARY-" + os.urandom(6).hex()
pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="needs age (deploy/setup.sh)")


@contextlib.contextmanager
def argv_watch(secret: str) -> Iterator[list[str]]:
    """Sample every process's argv while the block runs; yields the offending ones."""
    seen: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for p in Path("/proc").glob("[0-9]*/cmdline"):
                with contextlib.suppress(OSError):
                    if secret.encode() in p.read_bytes():
                        seen.append(p.read_bytes().replace(b"\0", b" ").decode()[:200])

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join()


def state(stack: TestStack) -> dict[str, object]:
    return {"dart_cloud": stack.table_digest("dart_cloud"),
            "functions_db": stack.table_digest("functions_db"),
            "functions_data": stack.volume_listing(stack.functions_volume)}


def all_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for p in root.rglob("*"):
        if p.is_file():
            yield p, p.read_bytes()


def test_host_lost_runbook_with_encryption(stack: TestStack, tmp_path: Path):
    with moto_server() as url:
        env = s3_env(url)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=SECRET_KEY)
        s3.create_bucket(Bucket="dcb-offsite")
        _runbook(stack, tmp_path, url, env, s3)


def _runbook(stack: TestStack, tmp_path: Path, url: str, env: dict[str, str], s3) -> None:  # type: ignore[no-untyped-def]
    # dcb keygen: the identity (0600) lives off the host; the host only has the recipient.
    key = tmp_path / "keys" / "dcb-identity.txt"
    key.parent.mkdir()
    r = run_dcb("keygen", str(key))
    assert r.code == 0, r.err
    recipient = r.out.strip()
    assert recipient.startswith("age1") and oct(key.stat().st_mode & 0o777) == "0o600"
    # Uncompressed, plain SQL: without encryption the canary would be there in clear.
    sections = {
        "storage": {"compression": "none", "db_format": "plain"},
        "encryption": {"recipients": [recipient]},
        "replication.offsite": {"type": "s3", "bucket": "dcb-offsite", "prefix": "host-a",
                                "endpoint_url": url, "region": "us-east-1"},
    }
    cfg = stack.write_config(tmp_path / "host", **sections)
    backups = tmp_path / "host" / "backups"
    stack.psql("dart_cloud", f"CREATE TABLE canary (v text); INSERT INTO canary VALUES "
                             f"('{CANARY}');")
    backend = stack.client.containers.get(stack.backend_container)
    assert backend.exec_run(["sh", "-c", f"echo {CANARY} > /data/canary.txt"]).exit_code == 0
    try:
        _steps(stack, tmp_path, cfg, backups, key, env, s3, sections)
    finally:
        stack.psql("dart_cloud", "DROP TABLE IF EXISTS canary;", check=False)
        backend = stack.client.containers.get(stack.backend_container)
        backend.exec_run(["rm", "-f", "/data/canary.txt"])


def _steps(stack: TestStack, tmp_path: Path, cfg: Path, backups: Path, key: Path,  # type: ignore[no-untyped-def]
           env: dict[str, str], s3, sections: dict[str, dict[str, object]]) -> None:
    # 1. Back up and replicate (the backup host has no identity configured).
    r = run_dcb("backup", "-q", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    for p, data in all_bytes(backups):
        assert CANARY.encode() not in data, f"plaintext canary in {p}"
    with argv_watch(SECRET_KEY) as leaks:
        r = run_dcb("replicate", "--all", "--config", str(cfg), env=env)
    assert r.code == 0, r.err
    assert leaks == []
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dcb-offsite")["Contents"]]
    assert f"host-a/{set_id}/manifest.json" in keys
    for k in keys:
        assert CANARY.encode() not in s3.get_object(Bucket="dcb-offsite", Key=k)["Body"].read()
    r = run_dcb("status", "--json", "--config", str(cfg), env=env)
    rep = json.loads(r.out)["replication"][0]
    assert rep["name"] == "offsite" and rep["lag_seconds"] == 0 and rep["newest_copy"] == set_id

    # The age CLI decrypts any artifact by hand (README): here the volume's tar.
    art = backups / set_id / f"volume-{stack.functions_volume}.tar"
    listing = subprocess.run(f"age -d -i {key} {art} | tar -xOf - ./canary.txt", shell=True,
                             capture_output=True, text=True)
    assert CANARY in listing.stdout, listing.stderr
    before = state(stack)

    # 2. The host is lost: the backup dir, the volume's files, the databases.
    shutil.rmtree(backups)
    backend = stack.client.containers.get(stack.backend_container)
    assert backend.exec_run(["sh", "-c", "rm -rf /data/* /data/.[!.]*"]).exit_code == 0
    for db in ("dart_cloud", "functions_db"):
        stack.psql("postgres", f"DROP DATABASE {db} WITH (FORCE);")
    lost = state_after_loss(stack)

    # 3. On the new host: the config, the S3 credentials and the identity. First without the
    #    identity, then with a wrong one: a clear error, nothing changed, no plaintext left.
    newhost = tmp_path / "newhost"
    wrong = tmp_path / "keys" / "wrong.txt"
    assert run_dcb("keygen", str(wrong)).code == 0
    for ident, expected in ((None, "no identity is configured"),
                            (wrong, "no identity matched any of the recipients")):
        extra = {"identity_file": str(ident)} if ident else {}
        c = stack.write_config(newhost, **{**sections, "encryption": {
            **sections["encryption"], **extra}})
        r = run_dcb("restore", set_id, "--from", "offsite", "--yes", "--no-safety-backup",
                    "--config", str(c), env=env, timeout=900)
        assert r.code == 1, r.out + r.err
        assert expected in r.err and "Traceback" not in r.err
        assert state_after_loss(stack) == lost
        for p, data in all_bytes(newhost / "backups"):
            assert CANARY.encode() not in data, f"plaintext left in {p}"
        assert not list((newhost / "backups" / ".fetched" / "offsite").iterdir())

    # 4. The runbook: list the copies, restore the newest, verify.
    c = stack.write_config(newhost, **{**sections, "encryption": {
        **sections["encryption"], "identity_file": str(key)}})
    r = run_dcb("list", "--from", "offsite", "--config", str(c), env=env)
    assert r.code == 0 and set_id in r.out
    with argv_watch(SECRET_KEY) as leaks:
        r = run_dcb("restore", set_id, "--from", "offsite", "--yes", "--no-safety-backup",
                    "--config", str(c), env=env, timeout=900)
    assert r.code == 0, r.out + r.err
    assert leaks == []
    assert state(stack) == before
    assert CANARY in stack.psql("dart_cloud", "SELECT v FROM canary;")
    r = run_dcb("verify", set_id, "--from", "offsite", "--deep", "--config", str(c), env=env)
    assert r.code == 0, r.out + r.err
    assert "(deep)" in r.out
    everything = r.out + r.err + "".join(
        p.read_text(errors="replace") for p in (newhost / "backups").rglob("*.json*"))
    assert SECRET_KEY not in everything


def state_after_loss(stack: TestStack) -> object:
    dbs = stack.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1;")
    return dbs, stack.volume_listing(stack.functions_volume)
