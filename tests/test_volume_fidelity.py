"""Every set that backs up and verifies restores, exactly: against the real test stack.

A volume holding everything a volume can hold (symlinks absolute, relative, leaving the volume,
looping; hard links; user/trusted/security extended attributes; access and default ACLs made
with setfacl; a file capability made with setcap; a sparse file; setuid/setgid/sticky bits;
empty dirs; names with newlines and non-UTF-8 bytes) goes through `dcb backup`, `dcb verify
--deep` and `dcb restore` into the emptied volume, and comes back identical, as a full listing
and as getfacl/getcap print it. What a restore would refuse fails the backup instead. The
PostgreSQL data volume is recognised from the container's mounts whatever its name. A deep
verify reads volume archives with the restore's strict reader and reports measured times.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from dcb.services.config import load_config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.postgres import PgGateway
from dcb.services.progress import BytesProgress, Event, StageFinished, StageStarted
from dcb.services.store import BackupStore
from dcb.services.verify import verify_set
from tests.conftest import run_dcb
from tests.stackkit import LABEL, TestStack
from tests.test_safe_tar import build_tree, snapshot, tools_view


def _supports_metadata(directory: Path) -> str | None:
    """Why the filesystem under Docker's volumes cannot hold the test's metadata, or None."""
    probe = directory / ".probe"
    probe.write_text("x")
    try:
        os.setxattr(probe, "user.probe", b"1")
        os.setxattr(probe, "trusted.probe", b"1")
        subprocess.run(["setfacl", "-m", "u:1234:r", str(probe)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"the volume filesystem at {directory} lacks xattrs/ACLs: {e}"
    finally:
        probe.unlink()
    return None


@dataclass
class Volume:
    name: str
    path: Path


def _make_volume(stack: TestStack, suffix: str) -> Volume:
    name = f"{stack.prefix}_{suffix}"
    v = stack.client.volumes.create(name, labels=LABEL)
    stack.created.append(("volume", name))
    return Volume(name, Path(v.attrs["Mountpoint"]))


@pytest.fixture(scope="module")
def rich(stack: TestStack) -> Volume:
    vol = _make_volume(stack, "rich")
    why = _supports_metadata(vol.path)
    if why:
        pytest.skip(why)
    build_tree(vol.path)
    return vol


def _config(stack: TestStack, directory: Path, volumes: list[str], **storage: str) -> Path:
    return stack.write_config(directory, stack={"volumes": volumes}, storage=storage)


def _backup(cfg: Path, volume: str) -> dict[str, object]:
    r = run_dcb("backup", "--volume", volume, "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    data: dict[str, object] = json.loads(r.out)
    return data


@dataclass
class RichSet:
    config: Path
    id: str
    path: Path
    before: dict[str, tuple[object, ...]]
    tools: str


@pytest.fixture(scope="module")
def rich_set(stack: TestStack, rich: Volume, tmp_path_factory: pytest.TempPathFactory
             ) -> RichSet:
    cfg = _config(stack, tmp_path_factory.mktemp("rich"), [rich.name])
    before, tools = snapshot(rich.path), tools_view(rich.path)
    made = _backup(cfg, rich.name)
    return RichSet(cfg, str(made["id"]), Path(str(made["path"])), before, tools)


def _empty(rich: Volume) -> None:
    for entry in rich.path.iterdir():  # the volume is lost...
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (rich.path / "junk").write_text("left by someone")
    os.chmod(rich.path, 0o777)


def _restore_into_emptied(stack: TestStack, rich: Volume, cfg: Path, set_id: str) -> str:
    """Restore the volume into its emptied self; the restore step's detail."""
    _empty(rich)
    r = run_dcb("restore", set_id, "--volume", rich.name, "--yes", "--no-safety-backup",
                "--json", "--config", str(cfg), timeout=600)  # ...and restored
    assert r.code == 0, r.err + r.out
    step = next(s for s in json.loads(r.out)["report"]["steps"] if s["key"].startswith("volume:"))
    detail: str = step["detail"]
    return detail


def test_everything_a_volume_holds_survives_backup_verify_restore(
        stack: TestStack, rich: Volume, rich_set: RichSet) -> None:
    r = run_dcb("verify", rich_set.id, "--deep", "--config", str(rich_set.config))
    assert r.code == 0, r.err + r.out
    assert "entries read and checked as a restore would" in r.out
    detail = _restore_into_emptied(stack, rich, rich_set.config, rich_set.id)
    assert detail.startswith(f"{len(rich_set.before) - 1} entries"), detail
    assert snapshot(rich.path) == rich_set.before
    assert tools_view(rich.path) == rich_set.tools
    assert "user:1234:rw-" in rich_set.tools and "cap_net_bind_service" in rich_set.tools
    assert os.readlink(rich.path / "current") == "/data/releases/42"
    assert (rich.path / "data/sparse.img").stat().st_blocks * 512 < 1024 * 1024  # still sparse


def test_a_staged_restore_keeps_the_same(stack: TestStack, rich: Volume, rich_set: RichSet
                                         ) -> None:
    """With an undo point (the default), the archive is checked and written aside in one
    read (a big file around the page cache) and swapped in: the same tree, attributes, ACLs,
    capabilities, hard links and sparseness."""
    _empty(rich)
    r = run_dcb("restore", rich_set.id, "--volume", rich.name, "--yes", "--json",
                "--config", str(rich_set.config), timeout=600)
    assert r.code == 0, r.err + r.out
    titles = [s["title"] for s in json.loads(r.out)["report"]["steps"]]
    assert any(t.startswith(f"stage volume {rich.name}") for t in titles), titles
    assert snapshot(rich.path) == rich_set.before
    assert tools_view(rich.path) == rich_set.tools
    assert (rich.path / "data/sparse.img").stat().st_blocks * 512 < 1024 * 1024


def test_helper_container_keeps_the_same_but_trusted_attributes(
        stack: TestStack, rich: Volume, rich_set: RichSet, tmp_path: Path) -> None:
    """Without root beside the engine: GNU tar in the PostgreSQL image, same flags. A
    container may not read trusted.* attributes (documented)."""
    cfg = _config(stack, tmp_path, [rich.name], volume_access="helper")
    made = _backup(cfg, rich.name)
    art = next(a for a in made["artifacts"] if a["kind"] == "volume")  # type: ignore[attr-defined]
    assert art["source"]["method"] == "helper" and "tar" not in art["source"]
    _restore_into_emptied(stack, rich, cfg, str(made["id"]))

    def untrusted(snap: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
        return {p: (*v[:6], tuple(x for x in v[6] if not x[0].startswith("trusted.")),  # type: ignore[attr-defined]
                    *v[7:]) for p, v in snap.items()}

    assert untrusted(snapshot(rich.path)) == untrusted(rich_set.before)
    assert tools_view(rich.path) == rich_set.tools


def test_what_a_restore_would_refuse_fails_the_backup(stack: TestStack, tmp_path: Path) -> None:
    vol = _make_volume(stack, "unrestorable")
    (vol.path / "ok.txt").write_text("fine")
    os.mkfifo(vol.path / "pipe")
    os.mknod(vol.path / "null", 0o666 | 0o020000, os.makedev(1, 3))
    cfg = _config(stack, tmp_path, [vol.name])
    r = run_dcb("backup", "--volume", vol.name, "-q", "--config", str(cfg))
    assert r.code == 1, r.err
    [line] = [x for x in r.err.splitlines() if x.startswith("dcb:")]
    assert line.startswith(f"dcb: volume {vol.name} holds what a restore could not recreate")
    assert "'./pipe': a fifo" in line and "'./null': a character device" in line
    listed = json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)
    assert [s["status"] for s in listed] == ["failed"]
    assert not [p for p in Path(listed[0]["path"]).iterdir() if p.name != "manifest.json"]
    assert stack.client.containers.get(stack.backend_container).status == "running"


def _without_data_volume_key(stack: TestStack, directory: Path, volumes: list[str]) -> Path:
    cfg = _config(stack, directory, volumes)
    cfg.write_text(re.sub(r"(?m)^postgres_data_volume = .*\n", "", cfg.read_text()))
    return cfg


def test_postgres_data_volume_found_from_the_mounts_whatever_its_name(
        stack: TestStack, tmp_path: Path) -> None:
    """Compose prefixes names (here dcbt..._postgres_data): the default postgres_data_volume
    ("postgres_data") names nothing, yet the live cluster is never copied raw."""
    assert stack.postgres_volume != "postgres_data"
    cfg = _without_data_volume_key(stack, tmp_path / "default", [stack.postgres_volume])
    made = _backup(cfg, stack.postgres_volume)
    art = next(a for a in made["artifacts"] if a["kind"] == "volume")  # type: ignore[attr-defined]
    assert art["source"]["method"] == "pg_basebackup"
    assert art["source"]["entries"] > 100

    for wrong in ("postgres_data", stack.functions_volume):
        d = tmp_path / wrong
        cfg = _without_data_volume_key(stack, d, [stack.postgres_volume, stack.functions_volume])
        cfg.write_text(cfg.read_text().replace("[stack]\n",
                                               f'[stack]\npostgres_data_volume = "{wrong}"\n'))
        r = run_dcb("backup", "-q", "--config", str(cfg))
        assert r.code == 2, r.err
        assert [x for x in r.err.splitlines() if x.startswith("dcb:")] == [(
            f"dcb: [stack] postgres_data_volume is {wrong!r}, but PostgreSQL's data directory "
            f"/var/lib/postgresql/data is on volume {stack.postgres_volume!r} (mounts of "
            f"container {stack.postgres_container})")]
        assert not any((d / "backups").glob("2*")), "nothing may be written"


def _cut_at_member_boundary(tar: bytes) -> bytes:
    """The archive up to the start of its last member's header: every member whole, no
    end-of-archive marker. Plain tarfile reads it as a shorter, valid archive."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        members = tf.getmembers()
    # the header block(s) of the last member start where the previous member's data ended
    prev = members[-2]
    end = prev.offset_data + -(-prev.size // 512) * 512
    with tarfile.open(fileobj=io.BytesIO(tar[:end]), mode="r|") as tf:
        assert len(list(tf)) == len(members) - 1  # what `verify --deep` accepted before
    return tar[:end]


def test_deep_verify_reads_volume_archives_with_the_restores_reader(
        rich_set: RichSet, tmp_path: Path) -> None:
    root = tmp_path / "backups"
    shutil.copytree(rich_set.path, root / rich_set.id)
    cfg = tmp_path / "dcb.toml"
    cfg.write_text(rich_set.config.read_text().replace(
        str(rich_set.config.parent / "backups"), str(root)))
    manifest_path = root / rich_set.id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    art = next(a for a in manifest["artifacts"] if a["kind"] == "volume")
    path = root / rich_set.id / art["file"]
    cut = zstandard.ZstdCompressor().compress(
        _cut_at_member_boundary(zstandard.ZstdDecompressor().stream_reader(
            path.read_bytes()).read()))
    path.write_bytes(cut)
    import hashlib

    art["size_bytes"], art["sha256"] = len(cut), hashlib.sha256(cut).hexdigest()
    manifest.pop("manifest_sha256")  # a hand-edited manifest carries no digest
    manifest_path.write_text(json.dumps(manifest))

    assert run_dcb("verify", rich_set.id, "--config", str(cfg)).code == 0  # checksums agree
    r = run_dcb("verify", rich_set.id, "--deep", "--config", str(cfg))
    assert r.code == 1
    assert (f"dcb: verify {rich_set.id}: {art['file']}: unreadable: tar stream ends without "
            "an end-of-archive marker (truncated?)") in r.err


@pytest.fixture
def pg(stack: TestStack) -> Iterator[PgGateway]:
    gw = DockerGateway.connect()
    try:
        yield PgGateway(gw, stack.postgres_container, "postgres", stack.password)
    finally:
        gw.close()


def test_verify_reports_measured_time_and_streams_progress(
        stack: TestStack, rich_set: RichSet, tmp_path: Path, pg: PgGateway) -> None:
    cfg = load_config(str(rich_set.config))
    s = BackupStore.for_config(cfg).get(rich_set.id)
    # a bigger set too: the whole stack, so a dump and a large archive are read
    big_cfg = stack.write_config(tmp_path)
    r = run_dcb("backup", "-q", "--config", str(big_cfg))
    assert r.code == 0, r.err
    big = BackupStore.for_config(load_config(str(big_cfg))).get(r.out.strip())
    for backup_set in (s, big):
        events: list[Event] = []
        t0 = time.monotonic()
        check = verify_set(backup_set, deep=True, pg=pg, reporter=events.append)
        wall = time.monotonic() - t0
        assert check.ok, check.problems()
        for a, c in zip(backup_set.artifacts, check.checks, strict=True):
            stage = f"verify {a.file}"
            assert StageStarted(stage, a.size_bytes) in events
            progress = [e for e in events if isinstance(e, BytesProgress) and e.stage == stage]
            assert progress and progress[-1].done_bytes == a.size_bytes
            assert progress[-1].total_bytes == a.size_bytes and progress[-1].rate > 0
            done = [e for e in events if isinstance(e, StageFinished) and e.stage == stage]
            assert len(done) == 1 and done[0].seconds == c.seconds
            assert 0 < c.seconds <= wall
        assert sum(c.seconds for c in check.checks) <= wall
    # the dump's check waits on pg_restore in the container: far from instantaneous
    dump = next(c for c in check.checks if c.artifact.kind == "database")
    assert dump.seconds > 0.05
