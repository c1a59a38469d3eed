"""Coverage: what dcb does not protect is said (status, console), ``databases = "all"``, and
volumes written while they are archived.

One module fixture adds to the shared test stack what an app grows over time: a database
created after the config (``orphan_db``), a Compose project whose containers mount volumes
the config does not list, and a container writing a volume in a loop. All of it is removed
at the end.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from dcb.services.config import ALL_DATABASES, load_config
from dcb.services.coverage import (
    EXCLUDED,
    MISSING,
    PROTECTED,
    UNPROTECTED,
    Coverage,
    CoverageItem,
    DatabaseFact,
    Writer,
    database_items,
    volume_tar_error,
)
from dcb.services.errors import ConfigError
from dcb.tui.app import DcbApp
from dcb.tui.screens.dashboard import DashboardScreen
from dcb.widgets.coverage_line import CoverageLine
from tests.conftest import run_dcb
from tests.stackkit import BUSYBOX_IMAGE, DATABASES, LABEL, TestStack

ORPHAN = "orphan_db"

# Appends 1, 2, 3, ... to log.txt (continuing after a restart); on SIGTERM it records the
# last line it wrote in stopped_at, so a test knows the volume's exact state at the stop.
WRITER_SCRIPT = (
    "f=/data/log.txt; i=$(tail -n 1 $f 2>/dev/null); i=${i:-0}; "
    "trap 'tail -n 1 $f > /data/stopped_at; exit 0' TERM; "
    "while true; do i=$((i+1)); echo $i >> $f; sleep 0.01; done"
)


@dataclass
class Extras:
    project: str
    writer: str
    sidecar: str
    writer_volume: str
    side_volume: str


@pytest.fixture(scope="module")
def extras(stack: TestStack) -> Iterator[Extras]:
    p = stack.prefix
    ex = Extras(project=f"{p}proj", writer=f"{p}-writer", sidecar=f"{p}-sidecar",
                writer_volume=f"{p}_writer_data", side_volume=f"{p}_side_data")
    client = stack.client
    compose = {**LABEL, "com.docker.compose.project": ex.project}
    made: list[Any] = []
    try:
        for v in (ex.writer_volume, ex.side_volume):
            made.append(client.volumes.create(v, labels=LABEL))
        made.append(client.containers.run(
            BUSYBOX_IMAGE, ["sh", "-c", WRITER_SCRIPT], name=ex.writer, detach=True,
            network_mode="none", init=True, labels=compose,
            volumes={ex.writer_volume: {"bind": "/data", "mode": "rw"}}))
        # Not named in any config: found only as a member of the writer's Compose project.
        made.append(client.containers.run(
            BUSYBOX_IMAGE, ["sleep", "2147483647"], name=ex.sidecar, detach=True,
            network_mode="none", init=True, labels=compose,
            volumes={ex.side_volume: {"bind": "/side", "mode": "rw"}}))
        stack.psql("postgres", f"CREATE DATABASE {ORPHAN};")
        stack.psql(ORPHAN, "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO "
                           "notes SELECT g, 'note ' || g FROM generate_series(1, 500) g;")
        yield ex
    finally:
        stack.psql("postgres", f"DROP DATABASE IF EXISTS {ORPHAN} WITH (FORCE);", check=False)
        for obj in reversed(made):  # containers first, then their volumes
            with contextlib.suppress(docker.errors.NotFound):
                obj.remove(force=True)


def status_json(cfg: Path) -> dict[str, Any]:
    r = run_dcb("status", "--json", "--config", str(cfg))
    assert r.code == 0, r.err  # a gap in coverage is a warning, not a failure
    data: dict[str, Any] = json.loads(r.out)
    return data


def states(data: dict[str, Any], kind: str) -> dict[str, str]:
    return {i["name"]: i["state"] for i in data["coverage"][kind]}


def test_status_names_what_is_not_backed_up(stack: TestStack, extras: Extras, tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={
        "app_containers": [stack.backend_container, extras.writer]})
    data = status_json(cfg)
    dbs = states(data, "databases")
    assert dbs[ORPHAN] == UNPROTECTED
    assert {dbs[d] for d in DATABASES} == {PROTECTED}
    assert dbs["postgres"] == EXCLUDED  # PostgreSQL's own, empty maintenance database
    assert "template0" not in dbs and "template1" not in dbs
    vols = states(data, "volumes")
    assert vols[stack.functions_volume] == vols[stack.postgres_volume] == PROTECTED
    # Mounted by a configured container / by another container of its Compose project.
    assert vols[extras.writer_volume] == UNPROTECTED
    assert vols[extras.side_volume] == UNPROTECTED
    assert data["coverage"]["compose_projects"] == [extras.project]
    assert {(u["kind"], u["name"]) for u in data["coverage"]["unprotected"]} == {
        ("database", ORPHAN), ("volume", extras.writer_volume),
        ("volume", extras.side_volume)}
    assert any(ORPHAN in w and "[stack] databases" in w for w in data["warnings"])
    assert data["problems"] == []

    r = run_dcb("status", "--config", str(cfg))
    assert r.code == 0, r.err
    warnings = [line for line in r.out.splitlines() if line.startswith("WARNING")]
    assert any(ORPHAN in w and 'databases = "all"' in w for w in warnings), r.out
    assert any(extras.writer_volume in w and extras.side_volume in w
               and "[stack] volumes" in w for w in warnings), r.out
    assert "3 unprotected" in r.out

    # dcb check (Nagios): the same gaps are a WARNING finding, named with the setting to change.
    r = run_dcb("check", "--json", "--config", str(cfg))
    (cov,) = [f for f in json.loads(r.out)["findings"] if f["name"] == "coverage"]
    assert cov["status"] == "WARNING", cov
    assert ORPHAN in cov["message"] and extras.writer_volume in cov["message"], cov


def test_configured_database_that_is_gone_is_missing(stack: TestStack, tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={"databases": ["dart_cloud", "no_such_db"]})
    r = run_dcb("status", "--config", str(cfg))
    assert r.code == 4  # missing, as a configured container or volume is
    assert f"dcb: database 'no_such_db' not found in {stack.postgres_container}" in r.err
    assert "1 missing" in r.out


def test_excluded_and_inconsistent_writers(stack: TestStack, extras: Extras, tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={
        "app_containers": [stack.backend_container, extras.writer],
        "volumes": [*stack.volumes, extras.writer_volume],
        "exclude_volumes": [extras.side_volume], "exclude_databases": [ORPHAN]})
    data = status_json(cfg)
    assert states(data, "databases")[ORPHAN] == EXCLUDED
    vols = states(data, "volumes")
    assert vols[extras.side_volume] == EXCLUDED
    assert vols[extras.writer_volume] == PROTECTED
    assert data["coverage"]["unprotected"] == []
    # The writer keeps running while its volume is archived; PostgreSQL writing its own
    # data volume is fine (pg_basebackup), the backend is stopped during the backup.
    assert data["coverage"]["may_be_inconsistent"] == [
        {"volume": extras.writer_volume, "container": extras.writer}]
    [warning] = data["warnings"]
    assert extras.writer in warning and "[stack] stop_during_backup" in warning

    r = run_dcb("status", "--config", str(cfg))
    assert r.code == 0, r.err
    assert "1 may be inconsistent" in r.out
    assert f"WARNING     volume {extras.writer_volume} may be inconsistent" in r.out


def test_all_databases_backs_up_a_new_database_and_restores_it(stack: TestStack,
                                                               extras: Extras, tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={"databases": "all", "volumes": []})
    data = status_json(cfg)
    assert states(data, "databases")[ORPHAN] == PROTECTED
    assert not any(ORPHAN in w for w in data["warnings"])
    r = run_dcb("backup", "--config", str(cfg))
    assert r.code == 0, r.err
    set_id = r.out.strip()
    assert '[stack] databases = "all": ' in r.err and ORPHAN in r.err
    shown = json.loads(run_dcb("show", set_id, "--json", "--config", str(cfg)).out)
    names = {a["name"] for a in shown["artifacts"] if a["kind"] == "database"}
    assert names == {*DATABASES, ORPHAN}  # "postgres" is empty here: left out

    stack.psql(ORPHAN, "UPDATE notes SET body = 'lost' WHERE id = 42; DELETE FROM notes "
                       "WHERE id > 400;")
    r = run_dcb("restore", set_id, "--db", ORPHAN, "--yes", "--config", str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    assert stack.psql(ORPHAN, "SELECT body FROM notes WHERE id = 42").strip() == "note 42"
    assert stack.psql(ORPHAN, "SELECT count(*) FROM notes").strip() == "500"
    # A named database still works as before.
    r = run_dcb("backup", "-q", "--db", "functions_db", "--config", str(cfg))
    assert r.code == 0, r.err


def test_writers_are_named_before_and_after_a_failed_archive(stack: TestStack,
                                                            extras: Extras, tmp_path: Path):
    # A second writer touches a 64 MiB file in a tight loop: GNU tar, reading it, sees it
    # change every time (10 of 10 runs here).
    toucher = stack.client.containers.run(
        BUSYBOX_IMAGE, ["sh", "-c", "dd if=/dev/zero of=/data/big bs=1M count=64 2>/dev/null; "
                        "touch /data/ready; while :; do touch /data/big; done"],
        name=f"{stack.prefix}-toucher", detach=True, network_mode="none", labels=LABEL,
        volumes={extras.writer_volume: {"bind": "/data", "mode": "rw"}})
    try:
        deadline = time.monotonic() + 60
        while toucher.exec_run(["test", "-f", "/data/ready"]).exit_code != 0:
            assert time.monotonic() < deadline, "toucher did not start"
            time.sleep(0.1)
        cfg = stack.write_config(tmp_path, stack={"volumes": [extras.writer_volume]})
        r = run_dcb("backup", "--volume", extras.writer_volume, "--config", str(cfg))
        assert r.code == 1, r.err
        both = ", ".join(sorted([extras.writer, toucher.name]))
        [warning] = [line for line in r.err.splitlines() if " warning " in line]
        assert f"{extras.writer_volume} may be inconsistent: {both} keep writing" in warning
        assert f"add {both} to [stack] stop_during_backup" in warning
        error, hint = r.err.splitlines()[-2:]
        assert error.startswith(f"dcb: archiving volume {extras.writer_volume} failed: {both} "
                                "wrote to it while it was archived (tar: ./big: file changed")
        assert hint == f"hint: add {both} to [stack] stop_during_backup"
        listed = json.loads(run_dcb("list", "--json", "--config", str(cfg)).out)
        assert [s["status"] for s in listed] == ["failed"]
    finally:
        toucher.exec_run(["rm", "-f", "/data/big", "/data/ready"])
        toucher.remove(force=True)


def test_writer_stopped_during_backup_gives_the_state_at_the_stop(stack: TestStack,
                                                                  extras: Extras,
                                                                  tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={
        "volumes": [extras.writer_volume],
        "stop_during_backup": [stack.backend_container, extras.writer]})
    assert status_json(cfg)["coverage"]["may_be_inconsistent"] == []
    r = run_dcb("backup", "--volume", extras.writer_volume, "--config", str(cfg))
    assert r.code == 0, r.err
    assert "may be inconsistent" not in r.err
    set_id = r.out.strip()
    writer = stack.client.containers.get(extras.writer)
    assert writer.status == "running"  # started again, and it writes on
    time.sleep(0.3)
    writer.stop(timeout=10)

    r = run_dcb("restore", set_id, "--volume", extras.writer_volume, "--yes",
                "--config", str(cfg), timeout=900)
    assert r.code == 0, r.err + r.out
    restored = read_volume(stack, extras.writer_volume)
    stop = int(restored["stopped_at"])
    assert stop > 0
    assert restored["log.txt"] == "".join(f"{i}\n" for i in range(1, stop + 1))
    writer.start()  # as it was; it continues counting from the restored state


def read_volume(stack: TestStack, volume: str) -> dict[str, str]:
    out = stack.client.containers.run(
        BUSYBOX_IMAGE, ["sh", "-c", "cd /v && for f in *; do printf '%s\\0' \"$f\"; "
                        "cat \"$f\"; printf '\\0'; done"],
        remove=True, network_mode="none", labels=LABEL,
        volumes={volume: {"bind": "/v", "mode": "ro"}}).decode()
    parts = out.split("\0")
    return dict(zip(parts[0::2], parts[1::2], strict=False))


async def test_dashboard_shows_the_coverage_warning(stack: TestStack, extras: Extras,
                                                    tmp_path: Path):
    cfg = stack.write_config(tmp_path, stack={
        "app_containers": [stack.backend_container, extras.writer]})
    app = DcbApp(load_config(str(cfg)))
    async with app.run_test(size=(120, 40)) as pilot:
        line = None
        for _ in range(600):
            await pilot.pause(0.05)
            if isinstance(app.screen, DashboardScreen):
                line = app.screen.query_one(CoverageLine)
                if line.display:
                    break
        assert line is not None and line.display, "no coverage warning shown"
        text = str(line.render())
        assert ORPHAN in text and extras.writer_volume in text
        await pilot.press("q")


# -- pure logic -------------------------------------------------------------------------------
def test_config_databases_all_from_file_env_and_show(tmp_path: Path):
    f = tmp_path / "dcb.toml"
    f.write_text('[stack]\ndatabases = "all"\nexclude_databases = ["scratch"]\n')
    cfg = load_config(str(f), environ={})
    assert cfg.stack.databases is ALL_DATABASES and cfg.stack.listed_databases == ()
    assert load_config(environ={"DCB_STACK_DATABASES": "all"}).stack.all_databases
    assert load_config(environ={"DCB_STACK_DATABASES": "a, b"}).stack.databases == ("a", "b")
    r = run_dcb("config", "--show", "--config", str(f))
    assert r.code == 0, r.err
    line = next(x for x in r.out.splitlines() if x.startswith("stack.databases "))
    assert " all " in line and "file" in line
    r = run_dcb("config", "--json", "--config", str(f))
    assert json.loads(r.out)["settings"]["stack.databases"]["value"] == "all"


@pytest.mark.parametrize(("content", "expected"), [
    ('[stack]\ndatabases = "every"\n', '[stack] databases: expected a list of strings or "all"'),
    ('[stack]\ndatabases = ["a"]\nexclude_databases = ["a"]\n',
     "[stack] exclude_databases names a, which [stack] databases also lists"),
    ('[stack]\nexclude_volumes = ["postgres_data"]\n',
     "[stack] exclude_volumes names postgres_data, which [stack] volumes also lists"),
])
def test_bad_coverage_config_is_one_line(tmp_path: Path, content: str, expected: str):
    f = tmp_path / "dcb.toml"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_config(str(f), environ={})
    assert expected in e.value.message
    r = run_dcb("status", "--config", str(f))
    assert r.code == 2 and expected in r.err and "Traceback" not in r.err


def test_database_states(tmp_path: Path):
    f = tmp_path / "dcb.toml"
    facts = [DatabaseFact("app", 1, True, None), DatabaseFact("new", 1, True, None),
             DatabaseFact("skip", 1, True, None), DatabaseFact("postgres", 1, True, 0),
             DatabaseFact("app__dcb_restore", 1, True, None),
             DatabaseFact("locked", 1, False, None)]
    f.write_text('[stack]\ndatabases = ["app", "gone"]\nexclude_databases = ["skip"]\n')
    got = {i.name: i.state for i in database_items(load_config(str(f), environ={}), facts)}
    assert got == {"app": PROTECTED, "new": UNPROTECTED, "skip": EXCLUDED,
                   "postgres": EXCLUDED, "app__dcb_restore": EXCLUDED,
                   "locked": UNPROTECTED, "gone": MISSING}
    f.write_text('[stack]\ndatabases = "all"\nexclude_databases = ["skip"]\n')
    facts[3] = DatabaseFact("postgres", 1, True, 3)  # the app keeps tables in it: taken
    got = {i.name: i.state for i in database_items(load_config(str(f), environ={}), facts)}
    assert got == {"app": PROTECTED, "new": PROTECTED, "skip": EXCLUDED,
                   "postgres": PROTECTED, "app__dcb_restore": EXCLUDED, "locked": UNPROTECTED}


def test_tar_error_names_the_writer_and_the_setting():
    # GNU tar's own words (seen with a writer on the bench volume).
    shrank = "tar: ./bench/big.bin: File shrank by 202752 bytes; padding with zeros"
    e = volume_tar_error("bench", 2, shrank, ["app-worker"])
    assert "app-worker wrote to it while it was archived" in e.message
    assert "File shrank by 202752 bytes" in e.message
    assert e.hint == "add app-worker to [stack] stop_during_backup"
    e = volume_tar_error("bench", 1, "tar: ./log.txt: file changed as we read it", [])
    assert "something wrote to it" in e.message and "stop_during_backup" in (e.hint or "")
    e = volume_tar_error("bench", 2, "tar: ./x: Cannot open: Permission denied\n"
                                     "tar: Exiting with failure status due to previous errors")
    assert e.message.startswith("archiving volume bench failed (exit 2): ")
    assert e.hint is None


def test_warning_lines():
    cov = Coverage(
        databases=(CoverageItem("database", "a", PROTECTED, ""),
                   CoverageItem("database", "b", UNPROTECTED, "")),
        volumes=(CoverageItem("volume", "v", PROTECTED, ""),
                 CoverageItem("volume", "w", UNPROTECTED, ""),
                 CoverageItem("volume", "x", UNPROTECTED, "")),
        writers=(Writer("v", "c1"), Writer("v", "c2")))
    assert cov.warnings == (
        'not backed up: database b: add to [stack] databases (or set databases = "all"), '
        "or to [stack] exclude_databases",
        "not backed up: volumes w, x: add to [stack] volumes, or to [stack] exclude_volumes",
        "volume v may be inconsistent: c1, c2 keep writing it while it is archived; "
        "add c1, c2 to [stack] stop_during_backup")
