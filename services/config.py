"""Configuration: defaults < ``dcb.toml`` < ``DCB_<SECTION>_<KEY>`` env < command-line flags.

Every key has a default matching the Dart Cloud stack, so dcb runs with no file at all.
Validation is strict: an unknown section or key, or a value of the wrong type, is a
``ConfigError`` naming the file and the key. Where each value came from is recorded so
``dcb config --show`` can explain it.

Secrets never live in the TOML: the PostgreSQL password comes from ``$POSTGRES_PASSWORD`` or a
``password_file`` that only its owner may read.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from dcb.services.errors import ConfigError

CONFIG_FILENAME = "dcb.toml"
ENV_PREFIX = "DCB_"
COMPRESSIONS = ("zstd", "gzip", "none")


@dataclass(frozen=True)
class StackConfig:
    """The Docker Compose stack dcb protects."""

    postgres_container: str = "dart-cloud-postgres"
    postgres_user: str = "postgres"
    password_file: str = ""
    databases: tuple[str, ...] = ("dart_cloud", "functions_db")
    volumes: tuple[str, ...] = ("postgres_data", "functions_data")
    app_containers: tuple[str, ...] = ("dart-cloud-backend",)
    postgres_data_volume: str = "postgres_data"
    stop_during_backup: tuple[str, ...] = ("dart-cloud-backend",)
    lock_wait_timeout: int = 120
    """Seconds a dump waits for a table lock before failing (0: wait forever)."""
    demo: str = ""
    """The demo stack's id (``dcb demo`` writes it): dcb then refuses every container and
    volume not labelled ``dcb.demo=<id>`` (services/guard.py). Empty: a real stack."""


@dataclass(frozen=True)
class StorageConfig:
    """Where and how backup sets are stored."""

    backup_dir: str = "./backups"
    compression: str = "zstd"
    compression_level: int = 3
    min_free_percent: int = 10
    """Below this much free space the console warns in colour."""
    db_format: str = "custom"
    """``custom`` (pg_dump -Fc, parallel pg_restore) or ``plain`` (SQL through the compressor)."""
    volume_access: str = "auto"
    """``mountpoint`` (host tar on the volume's directory; needs root beside the engine),
    ``helper`` (a throwaway container), or ``auto`` (mountpoint when possible)."""
    helper_image: str = ""
    """Image with ``tar`` for helper containers; empty: the PostgreSQL container's image."""
    space_estimate_ratio: float = 1.0
    """Expected backup size as a fraction of the raw data; a run needing more space than
    free refuses before writing anything."""


@dataclass(frozen=True)
class RetentionOverride:
    """``[retention.databases]`` or ``[retention.volumes]``: a key set here replaces
    ``[retention]``'s for those items; a key left out (None) inherits it."""

    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None


RETENTION_GROUPS = ("databases", "volumes")
"""Item groups with their own optional policy: ``databases`` (each database and the roles)
and ``volumes``."""


@dataclass(frozen=True)
class RetentionConfig:
    """How many copies of each database and volume ``dcb prune`` keeps (restic's
    ``forget --keep-*`` semantics, applied to each item separately)."""

    keep_last: int = 0
    keep_daily: int = 7
    keep_weekly: int = 4
    keep_monthly: int = 12
    databases: RetentionOverride = field(default_factory=RetentionOverride)
    """``[retention.databases]``: for each database and the roles (default: as above)."""
    volumes: RetentionOverride = field(default_factory=RetentionOverride)
    """``[retention.volumes]``: for each volume (default: as above)."""

    def counts(self) -> tuple[int, int, int, int]:
        return (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly)

    def for_group(self, group: str) -> RetentionConfig:
        """The effective policy of ``databases`` or ``volumes`` (overrides applied)."""
        if group not in RETENTION_GROUPS:
            raise ValueError(f"unknown retention group {group!r}")
        o: RetentionOverride = getattr(self, group)

        def pick(key: str) -> int:
            v = getattr(o, key)
            return int(getattr(self, key) if v is None else v)

        return RetentionConfig(keep_last=pick("keep_last"), keep_daily=pick("keep_daily"),
                               keep_weekly=pick("keep_weekly"),
                               keep_monthly=pick("keep_monthly"))


@dataclass(frozen=True)
class RestoreConfig:
    """How restores keep their way back."""

    keep_undo_hours: float = 24.0
    """A verified restore's undo point (and its safety set) is kept this long, then released;
    retention never counts safety sets, it keeps them until this window ends."""


@dataclass(frozen=True)
class ObjectivesConfig:
    """Recovery targets the console measures against."""

    rpo_hours: float = 24.0
    """Newest verified backup older than this: the recovery point objective is missed."""
    rto_minutes: float = 60.0
    """Last drill's measured time to recover above this: the objective is missed."""


SECTIONS: dict[str, type] = {
    "stack": StackConfig,
    "storage": StorageConfig,
    "retention": RetentionConfig,
    "restore": RestoreConfig,
    "objectives": ObjectivesConfig,
}


@dataclass(frozen=True)
class Config:
    stack: StackConfig = field(default_factory=StackConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    path: Path | None = None
    """The file the configuration was read from, if any."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """``"section.key"`` -> where its value came from: default, file, env var or flag."""

    @property
    def backup_dir(self) -> Path:
        """The backup directory; a relative path is relative to the config file's directory."""
        p = Path(self.storage.backup_dir).expanduser()
        if p.is_absolute():
            return p
        base = self.path.parent if self.path and self.sources.get(
            "storage.backup_dir", ""
        ).startswith("file") else Path.cwd()
        return (base / p).resolve()

    def postgres_password(self) -> str | None:
        """The PostgreSQL password from ``$POSTGRES_PASSWORD`` or ``password_file``, else None."""
        env = os.environ.get("POSTGRES_PASSWORD")
        if env:
            return env
        if not self.stack.password_file:
            return None
        pf = Path(self.stack.password_file).expanduser()
        if not pf.is_absolute() and self.path is not None:
            pf = self.path.parent / pf
        where = f"[stack] password_file ({pf})"
        try:
            st = pf.stat()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{where}: permissions {stat.filemode(st.st_mode)} let others read it",
                hint=f"chmod 600 {pf}",
            )
        try:
            return pf.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read: {e.strerror}") from None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting by section; a sub-table's keys are dotted (``volumes.keep_daily``)
        and show their effective value (inherited from the section when unset)."""
        return {name: _flatten(getattr(self, name)) for name in SECTIONS}


def _flatten(obj: Any, prefix: str = "", parent: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(_flatten(v, f"{prefix}{f.name}.", obj))
            continue
        if v is None and parent is not None:
            v = getattr(parent, f.name, None)
        out[prefix + f.name] = list(v) if isinstance(v, tuple) else v
    return out


def find_config_file(explicit: str | None = None) -> Path | None:
    """``--config PATH``, then ``$DCB_CONFIG``, then ``./dcb.toml``, then the user config dir.

    A file named explicitly (flag or env) must exist; the implicit ones are optional.
    """
    for origin, value in (("--config", explicit), ("DCB_CONFIG", os.environ.get("DCB_CONFIG"))):
        if value:
            p = Path(value).expanduser()
            if not p.is_file():
                raise ConfigError(f"{p}: configuration file not found (named by {origin})")
            return p.resolve()
    for p in (Path.cwd() / CONFIG_FILENAME,
              Path(platformdirs.user_config_dir("dcb")) / CONFIG_FILENAME):
        if p.is_file():
            return p.resolve()
    return None


def load_config(
    explicit: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration from every layer.

    ``overrides`` maps ``"section.key"`` to a value given on the command line.
    """
    env = os.environ if environ is None else environ
    path = find_config_file(explicit)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read: {e}") from None

    where = str(path) if path else "configuration"
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section [{section}]",
                hint="known sections: " + ", ".join(f"[{s}]" for s in SECTIONS),
            )
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{where}: [{section}] must be a table")

    layers = _Layers(where, path, env, overrides or {})
    built = {section: _build(cls, section, raw.get(section, {}), layers)
             for section, cls in SECTIONS.items()}
    cfg = Config(**built, path=path, sources=layers.sources)
    _validate(cfg, where)
    return cfg


@dataclass
class _Layers:
    """What ``_build`` reads each value from, and where it records the value's source."""

    where: str
    path: Path | None
    env: Mapping[str, str]
    overrides: Mapping[str, Any]
    sources: dict[str, str] = field(default_factory=dict)


def _build(cls: type, section: str, file_values: dict[str, Any], layers: _Layers,
           parent: str | None = None) -> Any:
    """One section (``stack``) or sub-table (``retention.volumes``, a dataclass-typed field)
    from the layers. In a sub-table a key left unset (None) inherits the parent's key of the
    same name; its source says so."""
    hints = typing.get_type_hints(cls)
    where = layers.where
    for key in file_values:
        if key not in hints:
            known = [f"[{section}.{k}]" if dataclasses.is_dataclass(t) else k
                     for k, t in hints.items()]
            raise ConfigError(f"{where}: unknown key [{section}] {key}",
                              hint="known keys: " + ", ".join(known))
    values: dict[str, Any] = {}
    subtables: list[tuple[str, type]] = []
    for key, typ in hints.items():
        dotted = f"{section}.{key}"
        if isinstance(typ, type) and dataclasses.is_dataclass(typ):
            subtables.append((key, typ))
            continue
        layers.sources[dotted] = "default"
        if key in file_values:
            values[key] = _coerce(typ, file_values[key], f"{where}: [{section}] {key}")
            layers.sources[dotted] = f"file {layers.path}"
        env_name = ENV_PREFIX + dotted.upper().replace(".", "_")
        if layers.env.get(env_name) not in (None, ""):
            values[key] = _coerce_env(typ, layers.env[env_name], f"environment {env_name}")
            layers.sources[dotted] = f"env {env_name}"
        if layers.overrides.get(dotted) is not None:
            values[key] = _coerce(typ, layers.overrides[dotted], f"option for {dotted}")
            layers.sources[dotted] = "command line"
        if parent is not None and values.get(key) is None:
            inherited = f"{parent}.{key}"
            layers.sources[dotted] = (f"as {inherited} "
                                      f"({layers.sources.get(inherited, 'default')})")
    for key, typ in subtables:
        sub = file_values.get(key, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}: [{section}] {key} must be a table "
                              f"([{section}.{key}])")
        values[key] = _build(typ, f"{section}.{key}", sub, layers, parent=section)
    return cls(**values)


def _optional_inner(typ: Any) -> Any:
    """``int`` for ``int | None``; other types unchanged."""
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        inner = [t for t in typing.get_args(typ) if t is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return typ


def _type_name(typ: Any) -> str:
    typ = _optional_inner(typ)
    if typ is float:
        return "a number"
    if typ is str:
        return "a string"
    if typ is int:
        return "an integer"
    if typ is bool:
        return "true or false"
    return "a list of strings"


def _coerce(typ: Any, value: Any, where: str) -> Any:
    typ = _optional_inner(typ)
    if typing.get_origin(typ) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")
        return tuple(value)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")
    if isinstance(typ, type) and not isinstance(typ, types.GenericAlias) and isinstance(value, typ):
        return value
    raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")


def _coerce_env(typ: Any, value: str, where: str) -> Any:
    typ = _optional_inner(typ)
    if typing.get_origin(typ) is tuple:
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if typ is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typ is int:
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _validate(cfg: Config, where: str) -> None:
    s = cfg.storage
    if s.compression not in COMPRESSIONS:
        raise ConfigError(
            f"{where}: [storage] compression must be one of {', '.join(COMPRESSIONS)}, "
            f"got {s.compression!r}"
        )
    limits = {"zstd": (1, 19), "gzip": (1, 9), "none": (0, 99)}[s.compression]
    if not limits[0] <= s.compression_level <= limits[1]:
        raise ConfigError(
            f"{where}: [storage] compression_level {s.compression_level} out of range "
            f"{limits[0]}-{limits[1]} for {s.compression}"
        )
    r = cfg.retention
    for table, policy in (("retention", r), *((f"retention.{g}", getattr(r, g))
                                              for g in RETENTION_GROUPS)):
        for key in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
            value = getattr(policy, key)
            if value is not None and value < 0:
                raise ConfigError(f"{where}: [{table}] {key} must be >= 0, got {value}")
    if cfg.restore.keep_undo_hours < 0:
        raise ConfigError(f"{where}: [restore] keep_undo_hours must be >= 0")
    if not cfg.stack.postgres_container:
        raise ConfigError(f"{where}: [stack] postgres_container must not be empty")
    if s.db_format not in ("custom", "plain"):
        raise ConfigError(f"{where}: [storage] db_format must be custom or plain, "
                          f"got {s.db_format!r}")
    if s.volume_access not in ("auto", "mountpoint", "helper"):
        raise ConfigError(f"{where}: [storage] volume_access must be auto, mountpoint or "
                          f"helper, got {s.volume_access!r}")
    if not 0 < s.space_estimate_ratio <= 10:
        raise ConfigError(f"{where}: [storage] space_estimate_ratio must be in (0, 10]")
    if not 0 <= s.min_free_percent <= 90:
        raise ConfigError(f"{where}: [storage] min_free_percent must be 0-90")
