"""Configuration loading: layers, strict validation, secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dcb.services.config import load_config
from dcb.services.errors import ConfigError
from tests.conftest import run_dcb


def test_defaults_match_the_dart_cloud_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    cfg = load_config(environ={})
    assert cfg.path is None
    assert cfg.stack.postgres_container == "dart-cloud-postgres"
    assert cfg.stack.databases == ("dart_cloud", "functions_db")
    assert cfg.stack.volumes == ("postgres_data", "functions_data")
    assert cfg.stack.app_containers == ("dart-cloud-backend",)
    assert cfg.backup_dir == tmp_path / "backups"
    assert cfg.storage.compression == "zstd"
    assert cfg.sources["stack.databases"] == "default"


def test_file_env_and_flag_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    f = tmp_path / "conf" / "dcb.toml"
    f.parent.mkdir()
    f.write_text('[stack]\npostgres_container = "pg"\ndatabases = ["a"]\n'
                 '[storage]\nbackup_dir = "bk"\n')
    cfg = load_config(str(f), environ={"DCB_STACK_DATABASES": "x, y"},
                      overrides={"stack.postgres_user": "admin"})
    assert cfg.stack.postgres_container == "pg"
    assert cfg.stack.databases == ("x", "y")
    assert cfg.stack.postgres_user == "admin"
    # A relative backup_dir in a file is relative to that file, not the cwd.
    assert cfg.backup_dir == f.parent / "bk"
    assert cfg.sources["stack.postgres_container"] == f"file {f}"
    assert cfg.sources["stack.databases"] == "env DCB_STACK_DATABASES"
    assert cfg.sources["stack.postgres_user"] == "command line"


def test_dcb_config_env_var_finds_file(tmp_path: Path):
    f = tmp_path / "elsewhere.toml"
    f.write_text('[stack]\npostgres_container = "from-env-file"\n')
    r = run_dcb("config", "--json", env={"DCB_CONFIG": str(f)}, cwd=tmp_path)
    assert r.code == 0, r.err
    assert '"from-env-file"' in r.out


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[stack]\npostgres_contaner = "x"\n', "unknown key [stack] postgres_contaner"),
        ('[stacks]\nx = 1\n', "unknown section [stacks]"),
        ('[stack]\ndatabases = "dart_cloud"\n', "[stack] databases: expected a list of strings"),
        ('[storage]\ncompression_level = "high"\n',
         "[storage] compression_level: expected an integer"),
        ('[storage]\ncompression = "lz4"\n', "[storage] compression must be one of"),
        ('[retention]\nkeep_daily = -1\n', "[retention] keep_daily must be >= 0"),
        ('[stack\n', "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_line_naming_file_and_key(tmp_path: Path, content: str,
                                                          expected: str):
    f = tmp_path / "dcb.toml"
    f.write_text(content)
    r = run_dcb("--config", str(f), "status")
    assert r.code == 2
    first = r.err.splitlines()[0]
    assert first.startswith(f"dcb: {f}")
    assert expected in first
    assert "Traceback" not in r.err


def test_missing_config_file_named_by_flag(tmp_path: Path):
    r = run_dcb("status", "--config", str(tmp_path / "nope.toml"))
    assert r.code == 2
    assert "nope.toml: configuration file not found (named by --config)" in r.err


def test_password_from_env_or_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    os.chmod(pw, 0o600)
    f = tmp_path / "dcb.toml"
    f.write_text('[stack]\npassword_file = "pw"\n')
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    cfg = load_config(str(f), environ={})
    assert cfg.postgres_password() == "s3cret"
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-env")
    assert cfg.postgres_password() == "from-env"
    monkeypatch.delenv("POSTGRES_PASSWORD")
    os.chmod(pw, 0o644)
    with pytest.raises(ConfigError) as e:
        cfg.postgres_password()
    assert "let others read it" in e.value.message
    assert "s3cret" not in e.value.message
    assert e.value.hint == f"chmod 600 {pw}"


def test_config_show_lists_sources(tmp_path: Path):
    f = tmp_path / "dcb.toml"
    f.write_text('[retention]\nkeep_daily = 3\n')
    r = run_dcb("config", "--show", "--config", str(f), env={"DCB_RETENTION_KEEP_WEEKLY": "2"})
    assert r.code == 0, r.err
    lines = {line.split()[0]: line for line in r.out.splitlines()[1:]}
    assert "file" in lines["retention.keep_daily"] and " 3 " in lines["retention.keep_daily"]
    assert "env DCB_RETENTION_KEEP_WEEKLY" in lines["retention.keep_weekly"]
    assert "default" in lines["retention.keep_monthly"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[stack]\ndatabases = ["dart/cloud"]\n', "[stack] databases: 'dart/cloud' is not a "
                                                  "plain name"),
        ('[stack]\ndatabases = ["-dfoo"]\n', "[stack] databases: '-dfoo' starts with '-'"),
        ('[stack]\ndatabases = ["=x"]\n', "[stack] databases: '=x' starts with '='"),
        ('[stack]\ndatabases = ["host=evil dbname=x"]\n', "contains '='"),
        ('[stack]\ndatabases = ["a\\nb"]\n', "[stack] databases: 'a\\nb' contains a control"),
        ('[stack]\ndatabases = ["a\\u0000b"]\n', "contains a control character"),
        ('[stack]\ndatabases = ["' + "x" * 64 + '"]\n', "longer than 63 bytes"),
        ('[stack]\npostgres_user = "-U"\n', "[stack] postgres_user: '-U' starts with '-'"),
        ('[stack]\nvolumes = ["../etc"]\n', "[stack] volumes: '../etc' is not a Docker name"),
        ('[stack]\nvolumes = ["-v"]\n', "[stack] volumes: '-v' is not a Docker name"),
        ('[stack]\npostgres_data_volume = "a/b"\n', "[stack] postgres_data_volume: 'a/b'"),
        ('[stack]\npostgres_container = "pg\\n"\n', "[stack] postgres_container: 'pg\\n'"),
        ('[stack]\napp_containers = ["my app"]\n', "[stack] app_containers: 'my app'"),
        ('[stack]\nstop_during_backup = ["=x"]\n', "[stack] stop_during_backup: '=x'"),
        ('[stack]\ndatabases = "all"\nexclude_databases = ["-x"]\n',
         "[stack] exclude_databases: '-x' starts with '-'"),
        ('[stack]\nexclude_volumes = ["a/b"]\n', "[stack] exclude_volumes: 'a/b'"),
        ('[timeouts]\nstep = -1\n', "[timeouts] step must be >= 0"),
        ('[timeouts]\ndocker_api = 0\n', "[timeouts] docker_api must be > 0"),
    ],
)
def test_names_that_could_be_read_as_options_or_paths_are_refused(
        tmp_path: Path, content: str, expected: str):
    """Names end up in argv, SQL, file names and Docker references: exit 2, one line."""
    f = tmp_path / "dcb.toml"
    f.write_text(content)
    r = run_dcb("--config", str(f), "status")
    assert r.code == 2, r.err
    lines = r.err.splitlines()
    assert lines[0].startswith(f"dcb: {f}: ") and expected in lines[0], r.err
    assert all(line.startswith("hint:") for line in lines[1:]), r.err


def test_names_from_the_environment_are_checked_too(tmp_path: Path):
    r = run_dcb("status", cwd=tmp_path, env={"DCB_STACK_DATABASES": "ok,-evil",
                                             "XDG_CONFIG_HOME": str(tmp_path)})
    assert r.code == 2
    assert r.err.splitlines()[0] == ("dcb: configuration: [stack] databases: '-evil' starts "
                                     "with '-' (would read as an option)")


def test_ordinary_names_pass(tmp_path: Path):
    f = tmp_path / "dcb.toml"
    f.write_text('[stack]\ndatabases = ["dart_cloud", "Functions DB", "café"]\n'
                 'volumes = ["myproj_postgres_data", "app.data-1"]\n'
                 'postgres_data_volume = ""\n')
    cfg = load_config(str(f), environ={})
    assert cfg.stack.databases == ("dart_cloud", "Functions DB", "café")


def test_state_dir_is_relative_to_the_config_file(tmp_path: Path):
    f = tmp_path / "conf" / "dcb.toml"
    f.parent.mkdir()
    f.write_text('[storage]\nstate_dir = "state"\n')
    cfg = load_config(str(f), environ={})
    assert cfg.state_dir == f.parent / "state"
    assert load_config(str(f), environ={"DCB_STORAGE_STATE_DIR": ""}).state_dir == \
        f.parent / "state"
    f.write_text("")
    assert load_config(str(f), environ={}).state_dir is None
