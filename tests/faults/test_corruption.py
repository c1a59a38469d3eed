"""Bit flips and truncation of every kind of file a set holds, detected by ``dcb verify``.

Real sets are made once (a full backup; a plain-SQL dump; an age-encrypted set) and copied;
each corruption is made on a copy of one file and checked in-process with the CLI's own
verify (``verify_set``), a few through the CLI itself:

- **quick verify** (size + SHA-256 against the manifest) must detect 100 % of the random bit
  flips (``DCB_FAULT_FLIPS`` per kind, 50 in CI) and of the truncations to 0, 1, 512 bytes,
  half and size-1;
- **the manifest** carries its own digest: a flip anywhere in it makes the set unreadable
  (listed incomplete with the reason) or fails verify, unless it changed nothing dcb reads;
- **deep verify with a forged checksum** (the file damaged before it was hashed, or a
  destination that rewrote the manifest): what the content itself proves, measured per kind
  (``DCB_FAULT_DEEP_FLIPS``); age and zstd's frame checksum make it 100 % for encrypted and
  zstd-compressed artifacts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from dcb.services import encryption
from dcb.services.config import Config, load_config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError
from dcb.services.postgres import PgGateway
from dcb.services.store import MANIFEST, BackupSet, BackupStore, manifest_bytes
from dcb.services.verify import verify_set
from tests.conftest import run_dcb
from tests.faults import kit
from tests.stackkit import TestStack

TRUNCATIONS = ("0", "1", "512", "half", "size-1")


def _truncations(size: int) -> list[str]:
    """The truncations that make ``size`` shorter (a 485-byte file has no 512-byte cut)."""
    cut = {"0": 0, "1": 1, "512": 512, "half": size // 2, "size-1": size - 1}
    return [how for how in TRUNCATIONS if cut[how] < size]


@dataclass(frozen=True)
class Specimen:
    kind: str
    cfg: Path
    set_id: str
    file: str


def _backup(stack: TestStack, where: Path, *args: str, **extra: dict[str, Any]) -> tuple[Path,
                                                                                          str]:
    cfg = stack.write_config(where, **extra)
    r = run_dcb("backup", "-q", *args, "--config", str(cfg), timeout=300)
    assert r.code == 0, r.err
    return cfg, r.out.strip()


@pytest.fixture(scope="module")
def specimens(stack: TestStack, tmp_path_factory: pytest.TempPathFactory) -> list[Specimen]:
    base = tmp_path_factory.mktemp("specimens")
    full_cfg, full = _backup(stack, base / "full")
    plain_cfg, plain = _backup(stack, base / "plain", "--db", "functions_db",
                               storage={"db_format": "plain"})
    identity = base / "identity.txt"
    recipient = encryption.keygen(identity)
    enc_cfg, enc = _backup(stack, base / "enc", "--db", "dart_cloud", "--volume",
                           stack.functions_volume,
                           encryption={"recipients": [recipient],
                                       "identity_file": str(identity)})
    fv, pv = stack.functions_volume, stack.postgres_volume
    return [
        Specimen("roles (globals.sql.zst)", full_cfg, full, "globals.sql.zst"),
        Specimen("custom dump (.pgdump)", full_cfg, full, "db-dart_cloud.pgdump"),
        Specimen("plain dump (.sql.zst)", plain_cfg, plain, "db-functions_db.sql.zst"),
        Specimen("volume tar (.tar.zst)", full_cfg, full, f"volume-{fv}.tar.zst"),
        Specimen("pg_basebackup tar (.tar.zst)", full_cfg, full, f"volume-{pv}.tar.zst"),
        Specimen("age-encrypted dump", enc_cfg, enc, "db-dart_cloud.pgdump"),
        Specimen("age-encrypted volume tar", enc_cfg, enc, f"volume-{fv}.tar.zst"),
        Specimen("manifest.json", full_cfg, full, MANIFEST),
    ]


@pytest.fixture(scope="module")
def pg(stack: TestStack) -> Iterator[PgGateway]:
    gw = DockerGateway.connect(120)
    try:
        yield PgGateway(gw, stack.postgres_container, "postgres")
    finally:
        gw.close()


class Lab:
    """A private copy of a specimen's set, corrupted and restored in place."""

    def __init__(self, sp: Specimen, tmp: Path) -> None:
        self.sp = sp
        self.cfg: Config = load_config(str(sp.cfg), environ={})
        encryption.use_config(self.cfg)
        self.root = tmp / "backups"
        shutil.copytree(self.cfg.backup_dir / sp.set_id, self.root / sp.set_id)
        self.dir = self.root / sp.set_id
        self.path = self.dir / sp.file
        self.pristine = self.path.read_bytes()
        self.manifest = (self.dir / MANIFEST).read_bytes()
        self.store = BackupStore(self.root)
        self.reference = self.store.get(sp.set_id)

    def reset(self) -> None:
        self.path.write_bytes(self.pristine)
        (self.dir / MANIFEST).write_bytes(self.manifest)

    def flip(self, offset: int, bit: int) -> None:
        data = bytearray(self.pristine)
        data[offset] ^= 1 << bit
        self.path.write_bytes(bytes(data))

    def truncate(self, how: str) -> None:
        n = len(self.pristine)
        size = {"0": 0, "1": 1, "512": 512, "half": n // 2, "size-1": n - 1}[how]
        self.path.write_bytes(self.pristine[:size])

    def forge(self) -> None:
        """Rewrite the manifest so it vouches for the damaged file, as a file damaged before
        it was hashed would be (or a destination that rewrote the manifest)."""
        data = json.loads(self.manifest)
        body = self.path.read_bytes()
        for a in data["artifacts"]:
            if a["file"] == self.sp.file:
                a["sha256"] = hashlib.sha256(body).hexdigest()
                a["size_bytes"] = len(body)
        data.pop("manifest_sha256", None)
        (self.dir / MANIFEST).write_bytes(manifest_bytes(data))

    def detected(self, deep: bool = False, pg: PgGateway | None = None) -> bool:
        """Whether dcb would notice: the set no longer lists complete, or verify fails; a
        manifest flip that changed nothing dcb reads counts as harmless (None below)."""
        try:
            s = self.store.get(self.sp.set_id)
        except DcbError:
            return True
        if s.status != "complete":
            return True
        try:
            return not verify_set(s, deep=deep, pg=pg).ok
        except DcbError:
            return True

    def unchanged(self) -> bool:
        """The set as dcb reads it is exactly the pristine one: a manifest flip that only
        renamed the digest's own key leaves a key nobody reads."""
        s = self.store.get(self.sp.set_id)
        known = self.reference.extra
        return _facts(s, known) == _facts(self.reference, known)

    def same_content(self) -> bool:
        """A zstd artifact whose damage does not change what it decompresses to (a flip in
        a field the decoder ignores): harmless."""
        def plain(data: bytes) -> bytes | None:
            try:
                return zstandard.ZstdDecompressor().stream_reader(
                    io.BytesIO(data), read_across_frames=True).read()
            except zstandard.ZstdError:
                return None
        return self.sp.file.endswith(".zst") and plain(self.path.read_bytes()) == plain(
            self.pristine)


def _facts(s: BackupSet, known: dict[str, Any]) -> Any:
    return (s.id, s.status, s.created_at, s.artifacts, s.host, s.dcb_version,
            s.duration_seconds, s.error, {k: v for k, v in s.extra.items() if k in known},
            set(known) - set(s.extra))


def test_every_flip_and_truncation_is_detected(specimens: list[Specimen], pg: PgGateway,
                                               tmp_path: Path) -> None:
    misses: list[str] = []
    lines: list[str] = []
    for n, sp in enumerate(specimens):
        lab = Lab(sp, tmp_path / f"k{n}")
        size = len(lab.pristine)
        rng = random.Random(kit.SEED_BASE + n)
        caught = harmless = 0
        for _ in range(kit.FLIPS):
            offset, bit = rng.randrange(size), rng.randrange(8)
            lab.flip(offset, bit)
            if lab.detected():
                caught += 1
            elif sp.file == MANIFEST and lab.unchanged():
                harmless += 1
            else:
                misses.append(f"{sp.kind}: flip of bit {bit} at {offset} not detected")
            lab.reset()
        truncated = 0
        for how in _truncations(size):
            lab.truncate(how)
            if lab.detected():
                truncated += 1
            else:
                misses.append(f"{sp.kind}: truncation to {how} not detected")
            lab.reset()
        lines.append(f"{sp.kind} ({size} bytes): quick verify detected {caught}/{kit.FLIPS} "
                     f"flips" + (f" ({harmless} changed nothing dcb reads)" if harmless else "")
                     + f", {truncated}/{len(_truncations(size))} truncations")
    for line in lines:
        kit.figure("bit flips / truncation", line)
    assert not misses, "\n".join(misses)


def test_deep_verify_reads_the_content_itself(specimens: list[Specimen], pg: PgGateway,
                                              tmp_path: Path) -> None:
    """With the manifest forged to match the damage, only the content can tell: measured per
    kind; encrypted (age) and zstd-compressed artifacts must be caught every time."""
    must = ("age-encrypted", "roles", "plain dump", "volume tar (")
    misses: list[str] = []
    for n, sp in enumerate(specimens):
        if sp.file == MANIFEST:
            continue
        lab = Lab(sp, tmp_path / f"k{n}")
        size = len(lab.pristine)
        rng = random.Random(kit.SEED_BASE + 1000 + n)
        caught = harmless = 0
        cases = [("flip", rng.randrange(size), rng.randrange(8)) for _ in range(kit.DEEP_FLIPS)]
        cases += [("truncate", how, 0) for how in _truncations(size)]
        for what, where, bit in cases:
            if what == "flip":
                assert isinstance(where, int)
                lab.flip(where, bit)
            else:
                lab.truncate(str(where))
            lab.forge()
            assert not lab.detected(), "the forged manifest must pass a quick verify"
            if lab.detected(deep=True, pg=pg):
                caught += 1
            elif lab.same_content():
                harmless += 1
            elif any(m in sp.kind for m in must):
                misses.append(f"{sp.kind}: {what} {where}/{bit} passed a deep verify")
            lab.reset()
        kit.figure("deep verify, checksum forged",
                   f"{sp.kind}: {caught}/{len(cases) - harmless} flips and truncations found "
                   "by reading the content"
                   + (f" ({harmless} more changed nothing it decompresses to)" if harmless
                      else ""))
    assert not misses, "\n".join(misses)


def test_the_cli_names_the_damage(specimens: list[Specimen], tmp_path: Path) -> None:
    """What the engineer on call sees: exit 1 and the damaged file named; a damaged manifest
    makes the set incomplete with the reason, never complete."""
    sp = specimens[1]
    cfg = load_config(str(sp.cfg), environ={})
    root = tmp_path / "backups"
    shutil.copytree(cfg.backup_dir / sp.set_id, root / sp.set_id)
    conf = tmp_path / "dcb.toml"
    conf.write_text(sp.cfg.read_text().replace(str(cfg.backup_dir), str(root)))
    art = root / sp.set_id / sp.file
    data = bytearray(art.read_bytes())
    data[len(data) // 3] ^= 0x10
    art.write_bytes(bytes(data))
    r = run_dcb("verify", sp.set_id, "--config", str(conf))
    assert r.code == 1, r.out + r.err
    assert f"{sp.file}: checksum mismatch (corrupted)" in r.err, r.err
    with open(art, "r+b") as f:
        f.truncate(512)
    r = run_dcb("verify", sp.set_id, "--config", str(conf))
    assert r.code == 1 and "truncated" in r.err, r.err

    manifest = root / sp.set_id / MANIFEST
    text = manifest.read_bytes()
    i = text.index(b'"host": "') + len(b'"host": "')
    manifest.write_bytes(text[:i] + bytes([text[i] ^ 0x01]) + text[i + 1:])
    r = run_dcb("list", "--json", "--config", str(conf))
    (s,) = json.loads(r.out)
    assert s["status"] == "incomplete" and "manifest_sha256" in (s.get("error") or ""), s
    r = run_dcb("verify", sp.set_id, "--config", str(conf))
    assert r.code == 1, r.out + r.err
    os.unlink(manifest)
