"""age encryption at the artifact seam (no Docker): streams encrypted, decrypts by dcb and by
the age CLI, refuses a missing, wrong or group-readable identity, detects truncation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from dcb.services import encryption as enc
from dcb.services.artifacts import ArtifactWriter, open_decompressed, sha256_file
from dcb.services.config import load_config
from dcb.services.errors import ConfigError
from tests.conftest import run_dcb

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="needs age (deploy/setup.sh)")
CANARY = b"CANARY-" + os.urandom(6).hex().encode()


@pytest.fixture
def keys(tmp_path: Path):  # type: ignore[no-untyped-def]
    r = run_dcb("keygen", str(tmp_path / "id.txt"))
    assert r.code == 0, r.err
    assert oct((tmp_path / "id.txt").stat().st_mode & 0o777) == "0o600"
    # Never overwrites an identity.
    again = run_dcb("keygen", str(tmp_path / "id.txt"))
    assert again.code == 1 and "refusing to overwrite" in again.err
    yield tmp_path / "id.txt", r.out.strip()
    enc.use_identity_file(None)


def write(path: Path, recipient: str, compression: str = "zstd") -> bytes:
    data = b"".join(CANARY + b" %d\n" % i for i in range(200_000))
    with ArtifactWriter(path, compression, 3, (recipient,)) as w:
        for i in range(0, len(data), 65536):
            w.write(data[i:i + 65536])
        written = w.commit()
    assert (written.size_bytes, written.sha256) == sha256_file(path)  # checksums of stored bytes
    return data


def test_round_trip_and_the_age_cli(keys, tmp_path: Path):  # type: ignore[no-untyped-def]
    key, recipient = keys
    art = tmp_path / "volume-x.tar.zst"
    data = write(art, recipient)
    stored = art.read_bytes()
    assert stored.startswith(b"age-encryption.org/v1\n") and CANARY not in stored
    assert not list(tmp_path.glob(".*.tmp"))
    enc.use_identity_file(key)
    with open_decompressed(art, "zstd") as f:
        assert f.read() == data
    # By hand, as the README says: age -d -i KEY FILE | zstd -d
    p = subprocess.run(["age", "-d", "-i", str(key), str(art)], capture_output=True, check=True)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(p.stdout) == data


def test_missing_wrong_or_readable_identity_and_truncation(keys, tmp_path: Path):  # type: ignore[no-untyped-def]
    key, recipient = keys
    art = tmp_path / "db.sql.zst"
    write(art, recipient)
    enc.use_identity_file(None)
    with pytest.raises(enc.EncryptionError, match="no identity is configured"):
        open_decompressed(art, "zstd").read()
    other = tmp_path / "other.txt"
    enc.keygen(other)
    enc.use_identity_file(other)
    with pytest.raises(enc.EncryptionError, match="no identity matched"), \
            open_decompressed(art, "zstd") as f:
        f.read()
    os.chmod(key, 0o640)
    enc.use_identity_file(key)
    with pytest.raises(enc.EncryptionError, match="let others read it"):
        open_decompressed(art, "zstd").read()
    os.chmod(key, 0o600)
    cut = tmp_path / "cut.sql.zst"
    cut.write_bytes(art.read_bytes()[:-100])
    with pytest.raises(enc.EncryptionError, match=r"cannot decrypt cut\.sql\.zst"), \
            open_decompressed(cut, "zstd") as f:
        f.read()


def test_bad_recipient_fails_and_leaves_nothing(tmp_path: Path):
    cfg = tmp_path / "dcb.toml"
    cfg.write_text('[encryption]\nrecipients = ["not-a-key"]\n')
    with pytest.raises(ConfigError, match="is not an age recipient"):
        load_config(str(cfg))
    bogus = "age1" + "q" * 58
    with pytest.raises(enc.EncryptionError), \
            ArtifactWriter(tmp_path / "a.zst", "zstd", 3, (bogus,)) as w:
        w.write(b"x" * 1000)
        w.commit()
    assert list(tmp_path.iterdir()) == [cfg]
