"""Which volumes hold the live cluster, from the PostgreSQL container's mounts (pure logic;
the real stack is in test_volume_fidelity.py)."""

from __future__ import annotations

import pytest

from dcb.services.docker_gateway import ContainerInfo, Mount
from dcb.services.errors import ConfigError
from dcb.services.volumes import cluster_volumes, resolve_pg_data_volume

DATA = "/var/lib/postgresql/data"


def vol(name: str, dest: str) -> Mount:
    return Mount(name, f"/var/lib/docker/volumes/{name}/_data", dest, False)


def bind(src: str, dest: str) -> Mount:
    return Mount(None, src, dest, False)


def pgc(*mounts: Mount) -> ContainerInfo:
    return ContainerInfo("proj-postgres-1", "abc", "running", None, "postgres:16", None,
                         tuple(mounts))


def test_the_volume_holding_the_data_directory_whatever_its_name() -> None:
    c = pgc(vol("myproj_postgres_data", DATA), vol("myproj_backups", "/backups"),
            bind("/etc/pg.conf", "/etc/postgresql/postgresql.conf"))
    layout = cluster_volumes(c.mounts, DATA)
    assert (layout.data_volume, layout.data_subdir, layout.parts) == (
        "myproj_postgres_data", ".", {})
    # the default name is only a guess: the mounts win
    assert resolve_pg_data_volume("postgres_data", False, c, layout,
                                  ("myproj_postgres_data", "myproj_backups")) == \
        "myproj_postgres_data"
    assert resolve_pg_data_volume("myproj_postgres_data", True, c, layout, ()) == \
        "myproj_postgres_data"


def test_pgdata_below_the_mount_and_the_deepest_mount_wins() -> None:
    c = pgc(vol("outer", "/var/lib/postgresql"), vol("inner", DATA))
    assert cluster_volumes(c.mounts, f"{DATA}/pgdata").data_volume == "inner"
    layout = cluster_volumes(c.mounts, f"{DATA}/pgdata/")
    assert (layout.data_volume, layout.data_subdir) == ("inner", "pgdata")
    # a volume whose destination merely starts with the same characters does not hold it
    assert cluster_volumes((vol("x", "/var/lib/postgresql/da"),), DATA).data_volume is None


def test_explicit_value_contradicting_the_mounts_is_refused() -> None:
    c = pgc(vol("myproj_postgres_data", DATA))
    layout = cluster_volumes(c.mounts, DATA)
    with pytest.raises(ConfigError) as e:
        resolve_pg_data_volume("postgres_data", True, c, layout, ("postgres_data",))
    assert e.value.exit_code == 2
    assert str(e.value) == ("[stack] postgres_data_volume is 'postgres_data', but PostgreSQL's "
                            f"data directory {DATA} is on volume 'myproj_postgres_data' "
                            "(mounts of container proj-postgres-1)")
    assert e.value.hint == 'set postgres_data_volume = "myproj_postgres_data"'
    on_bind = pgc(bind("/srv/pg", DATA))
    with pytest.raises(ConfigError, match="is on no named volume"):
        resolve_pg_data_volume("pgdata", True, on_bind, cluster_volumes(on_bind.mounts, DATA),
                               ())
    assert resolve_pg_data_volume("postgres_data", False, on_bind,
                                  cluster_volumes(on_bind.mounts, DATA), ("postgres_data",)) \
        is None


def test_volumes_holding_other_files_of_the_live_cluster_are_refused() -> None:
    c = pgc(vol("pgdata", DATA), vol("pgwal", f"{DATA}/pg_wal"), vol("space", "/mnt/fast"),
            vol("app", "/srv/app"))
    layout = cluster_volumes(c.mounts, DATA, ("/mnt/fast/ts1",))
    assert set(layout.parts) == {"pgwal", "space"}
    for v, words in (("pgwal", "inside the data directory"), ("space", "tablespace")):
        with pytest.raises(ConfigError, match=words) as e:
            resolve_pg_data_volume("pgdata", True, c, layout, ("pgdata", v, "app"))
        assert "never copies a live cluster raw" in str(e.value)
    assert resolve_pg_data_volume("pgdata", True, c, layout, ("pgdata", "app")) == "pgdata"
