"""Replication to S3: moto in server mode on 127.0.0.1 (a real HTTP server, no mocks in
process), with a fault-injecting proxy in front for 503s and a server that goes away."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import BIN, run_dcb
from tests.replkit import SECRET_KEY, FaultProxy, make_set, moto_server, s3_env, set_ids


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def proxy(moto: str) -> Iterator[FaultProxy]:
    p = FaultProxy(int(moto.rsplit(":", 1)[1]))
    yield p
    p.down()


def s3(url: str):  # type: ignore[no-untyped-def]
    env = s3_env(url)
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def config(tmp: Path, url: str, bucket: str, retries: int = 3) -> Path:
    c = tmp / "dcb.toml"
    c.write_text(f'[storage]\nbackup_dir = "{tmp / "backups"}"\n'
                 f'[replication.offsite]\ntype = "s3"\nbucket = "{bucket}"\n'
                 f'prefix = "host-a"\nendpoint_url = "{url}"\nregion = "us-east-1"\n'
                 f'retries = {retries}\nrequest_checksum_calculation = "when_required"\n')
    return c


def test_replicate_list_verify_and_damage(tmp_path: Path, moto: str):
    bucket = "b" + os.urandom(4).hex()
    s3(moto).create_bucket(Bucket=bucket)
    ids = set_ids(2)
    big = os.urandom(40 * 1024 * 1024 + 5)  # multipart (16 MiB parts)
    make_set(tmp_path / "backups", ids[0])
    make_set(tmp_path / "backups", ids[1], {"volume-big.tar.zst": big,
                                            "db-app.pgdump": b"PGDMP" + os.urandom(999)})
    cfg = config(tmp_path, moto, bucket)
    env = s3_env(moto)
    r = run_dcb("replicate", "--all", "--json", "--config", str(cfg), env=env)
    assert r.code == 0, r.err
    assert json.loads(r.out)["destinations"][0]["copied"] == ids
    head = s3(moto).head_object(Bucket=bucket, Key=f"host-a/{ids[1]}/volume-big.tar.zst")
    import hashlib
    assert head["Metadata"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert head["ContentLength"] == len(big)

    r = run_dcb("list", "--from", "offsite", "--json", "--config", str(cfg), env=env)
    assert [s["id"] for s in json.loads(r.out)] == ids[::-1]
    r = run_dcb("verify", ids[1], "--from", "offsite", "--config", str(cfg), env=env)
    assert r.code == 0, r.err

    # A corrupted object (same size, same metadata): the fetch names it and keeps nothing.
    bad = bytearray(big)
    bad[12345] ^= 0xFF
    s3(moto).put_object(Bucket=bucket, Key=f"host-a/{ids[1]}/volume-big.tar.zst",
                        Body=bytes(bad), Metadata={"sha256": head["Metadata"]["sha256"]})
    r = run_dcb("verify", ids[1], "--from", "offsite", "--config", str(cfg), env=env)
    assert r.code == 1
    assert "volume-big.tar.zst does not match its manifest" in r.err
    assert not list((tmp_path / "backups" / ".fetched" / "offsite").iterdir())
    # The secret key never shows in output, ledger, history or manifests.
    blob = r.out + r.err + "".join(p.read_text(errors="replace")
                                   for p in (tmp_path / "backups").rglob("*.json*"))
    assert SECRET_KEY not in blob


def test_missing_bucket_is_one_clear_line(tmp_path: Path, moto: str):
    make_set(tmp_path / "backups", set_ids(1)[0])
    cfg = config(tmp_path, moto, "no-such-bucket-dcb")
    r = run_dcb("replicate", "--all", "--config", str(cfg), env=s3_env(moto))
    assert r.code == 1
    assert "bucket 'no-such-bucket-dcb' does not exist" in r.err
    assert "Traceback" not in r.err


def test_transient_errors_are_retried_permanent_ones_bounded(tmp_path: Path, moto: str,
                                                            proxy: FaultProxy):
    bucket = "b" + os.urandom(4).hex()
    s3(moto).create_bucket(Bucket=bucket)
    ids = set_ids(1)
    make_set(tmp_path / "backups", ids[0])
    env = s3_env(proxy.url)
    proxy.fail_next = 2  # 503 twice, then OK
    r = run_dcb("replicate", "--all", "--config", str(config(tmp_path, proxy.url, bucket)),
                env=env)
    assert r.code == 0, r.err
    assert proxy.failed == 2
    # 500 always: bounded retries, then a clear failure; nothing listed.
    ids2 = set_ids(1, end=None)
    make_set(tmp_path / "backups", ids2[0] + "-2")
    proxy.fail_status, proxy.fail_next, proxy.failed = "500 Internal Error", -1, 0
    t0 = time.monotonic()
    r = run_dcb("replicate", "--all", "--config", str(config(tmp_path, proxy.url, bucket)),
                env=env)
    assert r.code == 1 and "offsite" in r.err and "Traceback" not in r.err
    assert time.monotonic() - t0 < 120
    assert 3 <= proxy.failed <= 10  # retries = 3 attempts per request
    proxy.fail_next = 0
    keys = [o["Key"] for o in s3(moto).list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not any(k.startswith(f"host-a/{ids2[0]}-2/") for k in keys)


def test_server_gone_mid_upload_leaves_nothing_listed(tmp_path: Path, moto: str,
                                                      proxy: FaultProxy):
    bucket = "b" + os.urandom(4).hex()
    client = s3(moto)
    client.create_bucket(Bucket=bucket)
    set_id = set_ids(1)[0]
    make_set(tmp_path / "backups", set_id, {"volume-big.tar.zst": os.urandom(120 << 20)})
    cfg = config(tmp_path, proxy.url, bucket, retries=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCB_")} | s3_env(proxy.url)
    p = subprocess.Popen([str(BIN / "dcb"), "replicate", "--all", "--config", str(cfg)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert time.monotonic() < deadline and p.poll() is None, "upload never started"
        time.sleep(0.05)
    proxy.down()
    _out, err = p.communicate(timeout=180)
    assert p.returncode == 1
    assert "cannot reach" in err or "offsite" in err
    assert "Traceback" not in err
    proxy.up()
    r = run_dcb("list", "--from", "offsite", "--json", "--config", str(cfg), env=s3_env(proxy.url))
    assert r.code == 0 and json.loads(r.out) == []
    # The next run aborts the upload the outage left open, and completes.
    r = run_dcb("replicate", "--all", "--config", str(cfg), env=s3_env(proxy.url))
    assert r.code == 0, r.err
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    r = run_dcb("list", "--from", "offsite", "--json", "--config", str(cfg), env=s3_env(proxy.url))
    assert [s["id"] for s in json.loads(r.out)] == [set_id]


def test_a_stalled_server_is_given_up_on_within_the_timeout(tmp_path: Path, moto: str,
                                                            proxy: FaultProxy):
    """A server that accepts and never answers: each request gives up after [replication]
    timeout, retries are bounded, one clear line, nothing listed at the destination."""
    bucket = "b" + os.urandom(4).hex()
    s3(moto).create_bucket(Bucket=bucket)
    set_id = set_ids(1)[0]
    make_set(tmp_path / "backups", set_id)
    cfg = config(tmp_path, proxy.url, bucket, retries=2)
    cfg.write_text(cfg.read_text() + "timeout = 2\n")
    proxy.stall = True
    t0 = time.monotonic()
    r = run_dcb("replicate", "--all", "--config", str(cfg), env=s3_env(proxy.url), timeout=120)
    took = time.monotonic() - t0
    assert r.code == 1 and "offsite" in r.err and "Traceback" not in r.err, r.err
    assert proxy.stalled >= 2 and took < 60, (proxy.stalled, took)
    proxy.stall = False
    keys = [o["Key"] for o in s3(moto).list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == []
    r = run_dcb("replicate", "--all", "--config", str(cfg), env=s3_env(proxy.url))
    assert r.code == 0, r.err
