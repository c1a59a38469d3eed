"""Docker's disk usage (services.docker_df, services.disk_picture) and ``dcb du --docker``.

The report's logic on fixed engine answers (fast), then against the real engine: a 50 MB log,
dangling images, stopped containers and an unused volume beside the test stack
(tests/dockerjunk.py) are ranked as they are, the stack's parts are never offered, a plan
removes exactly what it lists and refuses when an item changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from dcb.cli.du_command import docker_text
from dcb.services.config import StackConfig, load_config
from dcb.services.disk_picture import DiskPicture, Filesystem, Offender, measure, picture_from
from dcb.services.docker_df import (
    REMOVE_CONTAINERS,
    REMOVE_IMAGES,
    TRUNCATE_LOG,
    DockerReport,
    ImageItem,
    PlanChanged,
    build_report,
    collect_report,
    execute_cleanup,
    plan_cleanup,
)
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import UsageError
from tests.conftest import run_dcb
from tests.dockerjunk import Junk
from tests.snapshot_fixtures import (
    BACKEND,
    BASE_LAYERS,
    FIXED_NOW,
    POSTGRES,
    WORKER,
    GiB,
    MiB,
    docker_df,
    make_docker_report,
)

STACK = StackConfig(postgres_container=POSTGRES, app_containers=(BACKEND, WORKER),
                    stop_during_backup=(BACKEND,))


def by_name(report: DockerReport, kind: str, name: str) -> Any:
    found = [i for i in report.items(kind) if i.name == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


# -- the report on fixed engine answers -------------------------------------------------------
def test_items_ranked_largest_first_with_what_each_is():
    r = make_docker_report(STACK)
    sizes = [i.size_bytes for i in r.items()]
    assert sizes == sorted(sizes, key=lambda s: -(s or 0))
    assert r.items()[0].label == f"log {BACKEND}"  # 4.2 GiB of log beats every image

    big = next(i for i in r.images if i.total_bytes == int(1.2 * GiB))
    assert isinstance(big, ImageItem)
    assert big.status == "dangling" and big.offer == REMOVE_IMAGES
    assert big.size_bytes == int(1.2 * GiB) - BASE_LAYERS  # ranked by its own layers
    assert big.name.startswith("<none> ")
    current = by_name(r, "image", "dart-cloud-backend:1.8.2")
    assert current.status == "in use" and current.offer is None
    assert current.needed_by is not None and "image of dart-cloud-" in current.needed_by
    assert set(current.users) == {BACKEND, WORKER}
    old = by_name(r, "image", "dart-cloud-backend:1.8.1")
    assert old.status == "unused" and old.offer is None
    assert "tag" in old.why_not_offered()

    worker = by_name(r, "container", WORKER)
    assert worker.state == "exited" and worker.offer is None
    assert "app_containers" in worker.needed_by
    assert worker.backed_up == "volume functions_data"
    pg = by_name(r, "container", POSTGRES)
    assert "databases dart_cloud, functions_db" in pg.backed_up
    migrate = by_name(r, "container", "old-migrate")
    assert migrate.offer == REMOVE_CONTAINERS and migrate.needed_by is None
    assert migrate.reclaimable_bytes == migrate.size_bytes == 180 * MiB

    pgdata = by_name(r, "volume", "postgres_data")
    assert pgdata.needed_by and pgdata.backed_up and pgdata.offer is None
    cache = by_name(r, "volume", "old_cache")
    assert cache.status == "unused" and cache.offer is None
    assert cache.reclaimable_bytes == 640 * MiB
    assert "never" in cache.why_not_offered()

    log = by_name(r, "log", BACKEND)
    assert log.offer == TRUNCATE_LOG and log.running
    assert log.container_needed_by is not None and log.needed_by is None
    assert by_name(r, "log", "scratch-debug").offer is None  # empty


def test_reclaimable_per_kind_follows_docker_system_df():
    df = docker_df()
    r = build_report(STACK, df, {}, "/var/lib/docker", {}, FIXED_NOW)
    images = r.kind_usage("image")
    used = sum(i["Size"] - i["SharedSize"] for i in df["Images"] if i["Containers"])
    assert images.size_bytes == df["LayersSize"]
    assert images.reclaimable_bytes == df["LayersSize"] - used
    assert (images.count, images.active) == (len(df["Images"]), 3)
    containers = r.kind_usage("container")
    assert containers.reclaimable_bytes == sum(
        c["SizeRw"] for c in df["Containers"] if c["State"] != "running")
    assert r.kind_usage("volume").reclaimable_bytes == 640 * MiB  # the stack's are never
    assert r.kind_usage("build-cache").reclaimable_bytes == 310 * MiB  # idle, not shared
    # No inspect answers: no log files are known, none invented.
    assert r.logs == () and r.kind_usage("log").count == 0


def test_unknown_log_sizes_say_so_and_rank_last():
    df = docker_df()
    inspects = {c["Id"]: {"LogPath": f"/x/{c['Id']}-json.log",
                          "HostConfig": {"LogConfig": {"Type": "json-file"}}}
                for c in df["Containers"]}
    r = build_report(STACK, df, inspects, "/var/lib/docker", {}, FIXED_NOW,
                     log_unknown_why="not readable by this user")
    assert len(r.logs) == len(df["Containers"])
    assert all(g.size_bytes is None and g.offer is None for g in r.logs)
    assert r.kind_usage("log").unknown == len(r.logs)
    assert [i.kind for i in r.items()[-len(r.logs):]] == ["log"] * len(r.logs)
    assert "not readable by this user" in dict(r.logs[0].facts())["size unknown"]


def test_other_log_drivers_are_not_files():
    df = docker_df()
    inspects = {c["Id"]: {"LogPath": "", "HostConfig": {"LogConfig": {"Type": "journald"}}}
                for c in df["Containers"]}
    r = build_report(STACK, df, inspects, "/var/lib/docker", {}, FIXED_NOW)
    assert r.logs == ()
    c = by_name(r, "container", BACKEND)
    assert c.log_driver == "journald"
    with pytest.raises(UsageError, match="journald"):
        plan_cleanup(r, TRUNCATE_LOG, [c.key])


def test_compose_project_and_configured_volume_mark_containers_needed():
    df = docker_df()
    for c in df["Containers"]:
        if c["Names"] == [f"/{POSTGRES}"]:
            c["Labels"] = {"com.docker.compose.project": "dartcloud"}
    migrate = next(c for c in df["Containers"] if c["Names"] == ["/old-migrate"])
    migrate["Labels"] = {"com.docker.compose.project": "dartcloud"}
    scratch = next(c for c in df["Containers"] if c["Names"] == ["/scratch-debug"])
    scratch["Mounts"] = [{"Type": "volume", "Name": "postgres_data"}]
    r = build_report(STACK, df, {}, "/var/lib/docker", {}, FIXED_NOW)
    assert "Compose project dartcloud" in by_name(r, "container", "old-migrate").needed_by
    assert "postgres_data" in by_name(r, "container", "scratch-debug").needed_by
    assert plan_cleanup(r, REMOVE_CONTAINERS).items == ()
    # The busybox image is now needed too: its containers are.
    assert by_name(r, "image", "busybox:1.36").needed_by is not None


# -- plans ------------------------------------------------------------------------------------
def test_plans_list_exactly_what_is_offered():
    r = make_docker_report(STACK)
    images = plan_cleanup(r, REMOVE_IMAGES)
    assert [i.status for i in images.items] == ["dangling", "dangling"]
    assert [i.size_bytes for i in images.items] == sorted(
        (i.size_bytes for i in images.items), reverse=True)
    assert images.confirm_token == "remove 2"
    assert images.total_bytes == sum(i.reclaimable_bytes for i in images.items)

    containers = plan_cleanup(r, REMOVE_CONTAINERS)
    assert [i.name for i in containers.items] == ["old-migrate", "scratch-debug"]
    assert [n for n, _ in containers.not_offered] == [f"container {WORKER}"]
    assert "stack" in containers.not_offered[0][1]

    log = by_name(r, "log", BACKEND)
    truncate = plan_cleanup(r, TRUNCATE_LOG, [log.key])
    assert truncate.items == (log,) and truncate.confirm_token == BACKEND
    # The same, asked for by the container (the console's ``t`` on a container row).
    assert plan_cleanup(r, TRUNCATE_LOG, [by_name(r, "container", BACKEND).key]).items == (log,)


def test_plans_refuse_what_is_not_offered():
    r = make_docker_report(STACK)
    with pytest.raises(UsageError, match="running"):
        plan_cleanup(r, REMOVE_CONTAINERS, [by_name(r, "container", POSTGRES).key])
    with pytest.raises(UsageError, match="stack"):
        plan_cleanup(r, REMOVE_CONTAINERS, [by_name(r, "container", WORKER).key])
    with pytest.raises(UsageError, match="tag"):
        plan_cleanup(r, REMOVE_IMAGES, [by_name(r, "image", "dart-cloud-backend:1.8.1").key])
    with pytest.raises(UsageError, match="not in the report"):
        plan_cleanup(r, REMOVE_IMAGES, ["sha256:nope"])
    with pytest.raises(UsageError, match="exactly one"):
        plan_cleanup(r, TRUNCATE_LOG)
    with pytest.raises(UsageError, match="unknown cleanup action"):
        plan_cleanup(r, "remove-volumes")


def test_execution_needs_the_token_before_anything_else():
    r = make_docker_report(STACK)
    plan = plan_cleanup(r, REMOVE_IMAGES)
    gw: Any = None  # never reached: the token is checked first
    with pytest.raises(UsageError, match="type 'remove 2'"):
        execute_cleanup(gw, STACK, plan, "remove 3")
    empty = plan_cleanup(r, REMOVE_IMAGES, [])
    with pytest.raises(UsageError, match="nothing to do"):
        execute_cleanup(gw, STACK, empty, "")


def test_cli_text_lists_kinds_then_items():
    r = make_docker_report(STACK)
    text = docker_text(r, limit=5)
    lines = text.splitlines()
    assert lines[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert lines[1].startswith("Images") and lines[5].startswith("Container logs")
    first = next(n for n, s in enumerate(lines) if s.lstrip().startswith("SIZE"))
    assert BACKEND in lines[first + 1] and "truncatable" in lines[first + 1]
    assert f"... {len(r.items()) - 5} more" in text
    assert len(docker_text(r, limit=None).splitlines()) > len(lines)


# -- filesystems ------------------------------------------------------------------------------
def test_filesystems_are_deduplicated_by_device(tmp_path: Path):
    (tmp_path / "docker").mkdir()
    places = [("backups", str(tmp_path / "not-yet" / "backups")),
              ("docker", str(tmp_path / "docker")), ("volume v", "/dev/shm"),
              ("volume w", "/dev/shm")]
    fss, unreachable = measure(places)
    assert unreachable == ()
    assert [f.holds for f in fss] == [("backups", "docker"), ("volume v", "volume w")]
    assert fss[0].path == str(tmp_path)  # a backup dir not made yet: its nearest parent
    st = os.statvfs(tmp_path)
    assert fss[0].total_bytes == st.f_blocks * st.f_frsize


def test_picture_merges_the_store_into_the_offenders(tmp_path: Path):
    r = make_docker_report(STACK)
    p = picture_from(r, tmp_path, local_engine=False)
    assert [f.holds for f in p.filesystems] == [("backups",)]
    assert p.unreachable == ("docker and its volumes: the engine runs on another host",)
    assert [o.label for o in p.offenders(None)] == [
        f"log {BACKEND}", "volume postgres_data", r.items()[2].label]
    assert p.offenders(3 * GiB)[0] == Offender(f"log {BACKEND}", int(4.2 * GiB))
    assert p.offenders(3 * GiB)[1] == Offender("backup store", 3 * GiB)
    fs = Filesystem("/", 1, 100, 95, 5, ("backups", "docker", "volume a", "volume b",
                                          "volume c"))
    assert fs.low(10) and fs.holds_text() == "backups, docker, 3 volumes"
    assert DiskPicture((fs,)).fs_of("docker") is fs


# -- the real engine --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def junk_cfg(docker_junk: Junk, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return docker_junk.write_config(tmp_path_factory.mktemp("junk"))


def report_for(cfg_path: Path) -> DockerReport:
    gw = DockerGateway.connect()
    try:
        return collect_report(load_config(str(cfg_path), environ={}), gw)
    finally:
        gw.close()


def test_the_real_hogs_are_ranked_and_the_stack_is_never_offered(docker_junk: Junk,
                                                                  junk_cfg: Path):
    j = docker_junk
    r = report_for(junk_cfg)
    items = r.items()
    log = next(i for i in items if i.label == f"log {j.chatty}")
    image = next(i for i in items if i.key == j.dangling[0])
    stopped = next(i for i in items if i.label == f"container {j.stopped[0]}")
    volume = next(i for i in items if i.label == f"volume {j.unused_volume}")
    ranked = [items.index(x) for x in (log, image, stopped, volume)]
    assert ranked == sorted(ranked), [(x.label, x.size_bytes) for x in (log, image, stopped,
                                                                        volume)]
    assert log.size_bytes is not None and log.size_bytes >= 50 * MiB
    assert 18 * MiB < (image.size_bytes or 0) < 21 * MiB
    assert 9 * MiB < (stopped.size_bytes or 0) < 11 * MiB
    assert 4 * MiB < (volume.size_bytes or 0) < 6 * MiB
    assert (log.offer, image.offer, stopped.offer) == (TRUNCATE_LOG, REMOVE_IMAGES,
                                                        REMOVE_CONTAINERS)
    assert volume.offer is None and volume.status == "unused"
    assert volume.reclaimable_bytes == volume.size_bytes

    images = plan_cleanup(r, REMOVE_IMAGES)
    assert set(j.dangling) <= {i.key for i in images.items}
    assert j.tagged not in {i.key for i in images.items}
    containers = plan_cleanup(r, REMOVE_CONTAINERS)
    offered = {i.name for i in containers.items}
    assert set(j.stopped) <= offered
    stack_parts = {j.stack.postgres_container, j.stack.backend_container, j.stack_worker,
                   j.mounter}
    assert not stack_parts & offered
    left_out = dict(containers.not_offered)
    assert "stack" in left_out[f"container {j.stack_worker}"]
    assert "stack" in left_out[f"container {j.mounter}"]
    for v in (*j.stack.volumes, j.configured_volume):
        vol = next(i for i in r.volumes if i.name == v)
        assert vol.offer is None and vol.needed_by and vol.backed_up
    assert all(i.offer is None for i in r.volumes)  # dcb never deletes a volume


def test_cli_du_docker(docker_junk: Junk, junk_cfg: Path):
    j = docker_junk
    res = run_dcb("du", "--docker", "--json", "--config", str(junk_cfg))
    assert res.code == 0, res.err
    data = json.loads(res.out)
    labels = [f"{i['kind']} {i['name']}" for i in data["items"]]
    order = [labels.index(x) for x in (f"log {j.chatty}", f"container {j.stopped[0]}",
                                       f"volume {j.unused_volume}")]
    assert order == sorted(order)
    assert {k["kind"] for k in data["kinds"]} == {"image", "container", "volume",
                                                  "build-cache", "log"}
    chatty = data["items"][labels.index(f"log {j.chatty}")]
    assert chatty["path"] == j.log_path(j.chatty) and chatty["offer"] == TRUNCATE_LOG

    res = run_dcb("du", "--docker", "--all", "--config", str(junk_cfg))
    assert res.code == 0, res.err
    row = next(s for s in res.out.splitlines() if j.unused_volume in s)
    assert "unused" in row

    bad = run_dcb("du", "--docker", "/tmp", "--config", str(junk_cfg))
    assert bad.code == 2 and bad.err.strip() == \
        "dcb: --docker takes no PATH: it reports Docker's disk usage"
    down = run_dcb("du", "--docker", "--config", str(junk_cfg),
                   env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert down.code == 3 and "unreachable" in down.err and "Traceback" not in down.err


def test_a_plan_is_refused_whole_when_an_item_changed(docker_junk: Junk, junk_cfg: Path):
    j = docker_junk
    cfg = load_config(str(junk_cfg), environ={})
    r = report_for(junk_cfg)
    image = plan_cleanup(r, REMOVE_IMAGES, [j.dangling[2]])
    s3, s4 = (j.container_id(n) for n in j.stopped[2:4])
    both = plan_cleanup(r, REMOVE_CONTAINERS, [s3, s4])
    j.client.api.tag(j.dangling[2], f"{j.prefix}-retagged", "1")
    j.client.containers.get(j.stopped[2]).start()
    gw = DockerGateway.connect()
    try:
        with pytest.raises(PlanChanged, match="now tagged"):
            execute_cleanup(gw, cfg.stack, image, image.confirm_token)
        with pytest.raises(PlanChanged, match="is now running") as e:
            execute_cleanup(gw, cfg.stack, both, both.confirm_token)
        assert "nothing was done" in e.value.message
    finally:
        gw.close()
    j.client.images.get(j.dangling[2])  # still there
    for name in j.stopped[2:4]:  # both: the unchanged one too
        j.client.containers.get(name)


def test_a_plan_removes_exactly_its_items(docker_junk: Junk, junk_cfg: Path):
    j = docker_junk
    cfg = load_config(str(junk_cfg), environ={})
    r = report_for(junk_cfg)
    plan = plan_cleanup(r, REMOVE_CONTAINERS, [j.container_id(j.stopped[4])])
    images = plan_cleanup(r, REMOVE_IMAGES, [j.dangling[1]])
    seen: list[tuple[str, str]] = []
    gw = DockerGateway.connect()
    try:
        res = execute_cleanup(gw, cfg.stack, plan, plan.confirm_token,
                              lambda i, what: seen.append((i.label, what)))
        res_images = execute_cleanup(gw, cfg.stack, images, images.confirm_token)
    finally:
        gw.close()
    assert res.ok and res.done == plan.items
    assert seen == [(f"container {j.stopped[4]}", "done")]
    assert res_images.ok and [i.key for i in res_images.done] == [j.dangling[1]]
    assert res_images.freed_bytes == images.total_bytes > MiB * 9 // 10
    with pytest.raises(docker.errors.NotFound):
        j.client.containers.get(j.stopped[4])
    with pytest.raises(docker.errors.NotFound):
        j.client.images.get(j.dangling[1])
    # Its siblings, built the same way, are untouched.
    j.client.images.get(j.tagged)
    j.client.images.get(j.dangling[0])
    j.client.containers.get(j.stopped[0])
    after = report_for(junk_cfg)
    keys = {i.key for i in after.items()}
    assert j.dangling[1] not in keys and j.dangling[0] in keys
