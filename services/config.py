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
import enum
import os
import re
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
# Docker's own rule for container and volume names.
DOCKER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
PG_NAME_MAX = 63
ENV_PREFIX = "DCB_"
COMPRESSIONS = ("zstd", "gzip", "none")


class AllDatabases(enum.Enum):
    """``[stack] databases = "all"``: every database of the cluster except templates and
    ``exclude_databases``, resolved at each backup (services/coverage.py).

    A member, not the string ``"all"``: code that iterates ``databases`` without resolving
    it first is a type error instead of a loop over the letters a, l, l.
    """

    ALL = "all"


ALL_DATABASES = AllDatabases.ALL


@dataclass(frozen=True)
class StackConfig:
    """The Docker Compose stack dcb protects."""

    postgres_container: str = "dart-cloud-postgres"
    postgres_user: str = "postgres"
    password_file: str = ""
    databases: tuple[str, ...] | AllDatabases = ("dart_cloud", "functions_db")
    """A list, or ``ALL_DATABASES`` (``"all"`` in the file)."""
    volumes: tuple[str, ...] = ("postgres_data", "functions_data")
    app_containers: tuple[str, ...] = ("dart-cloud-backend",)
    postgres_data_volume: str = "postgres_data"
    stop_during_backup: tuple[str, ...] = ("dart-cloud-backend",)
    lock_wait_timeout: int = 120
    """Seconds a dump waits for a table lock before failing (0: wait forever)."""
    exclude_databases: tuple[str, ...] = ()
    """Left out on purpose: never backed up by ``"all"``, never reported as unprotected."""
    exclude_volumes: tuple[str, ...] = ()
    """Volumes the stack mounts that are left out on purpose (not reported as unprotected)."""

    @property
    def all_databases(self) -> bool:
        return self.databases is ALL_DATABASES

    @property
    def listed_databases(self) -> tuple[str, ...]:
        """The databases named in the configuration (none with ``"all"``)."""
        return () if isinstance(self.databases, AllDatabases) else self.databases
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
    state_dir: str = ""
    """Where the lock, run history, incident logs and stopped-container ledger live; empty:
    the backup dir when writable, else a per-backup-dir directory under the user's state dir
    (services/state.py)."""


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
class TimeoutsConfig:
    """Explicit time limits. Nothing else limits a running process or its output stream."""

    docker_api: int = 120
    """Seconds one Docker API request (inspect, start, stop, disk usage) may take; never
    applies to a running process's output."""
    step: int = 0
    """Seconds one long step (a dump, an archive, reading an artifact through) may run before
    it is stopped and the run fails; 0: no limit."""
    postgres_ready: int = 120
    """Seconds to wait for PostgreSQL to answer a query before a run gives up."""
    container_ready: int = 120
    """Seconds a restore or undo waits for an app container it started again to run (and be
    healthy, if it has a health check) before it reports a failure; 0: no limit."""


@dataclass(frozen=True)
class ObjectivesConfig:
    """Recovery targets the console measures against."""

    rpo_hours: float = 24.0
    """Newest verified backup older than this: the recovery point objective is missed."""
    rto_minutes: float = 60.0
    """Last drill's measured time to recover above this: the objective is missed."""


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[replication.NAME]`` table: where off-site copies go (services/destinations/).

    Only the keys of its ``type`` apply; credentials never live here (S3: boto3's standard
    chain; rsync: ``identity_file``). ``keep_*`` of -1 means unset (see ``retention``)."""

    type: str = ""
    path: str = ""
    """local: the directory; rsync: the directory on the remote host."""
    host: str = ""
    user: str = ""
    port: int = 22
    identity_file: str = ""
    known_hosts: str = ""
    """rsync: the known_hosts file holding the host's key (host-key checking is always on)."""
    bucket: str = ""
    prefix: str = ""
    """s3: key prefix; empty means the host name, so several hosts can share a bucket."""
    endpoint_url: str = ""
    region: str = ""
    storage_class: str = ""
    request_checksum_calculation: str = "when_supported"
    """s3: boto3's ``when_supported`` (new default checksums) or ``when_required`` (for
    S3-compatible servers that reject them)."""
    retries: int = 5
    """s3/rsync: attempts per request for transient errors (backoff between them)."""
    command: tuple[str, ...] = ()
    """command: argv template with {set_dir} {set_id} {file}; run without a shell."""
    list_command: tuple[str, ...] = ()
    fetch_command: tuple[str, ...] = ()
    delete_command: tuple[str, ...] = ()
    timeout: float = 3600.0
    """command/rsync: seconds before the process group is killed; s3: seconds one request
    waits for an answer (at most 60) before it is retried."""
    keep_last: int = -1
    keep_daily: int = -1
    keep_weekly: int = -1
    keep_monthly: int = -1

    def retention(self, default: RetentionConfig) -> RetentionConfig:
        """This destination's policy: ``[retention]`` (with its per-group tables) when it
        sets no keep_*; otherwise its keep_* for every item, each unset one falling back to
        ``[retention]``'s."""
        keys = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly")
        own = {k: getattr(self, k) for k in keys if getattr(self, k) >= 0}
        if not own:
            return default
        return RetentionConfig(**{k: own.get(k, getattr(default, k)) for k in keys})


DESTINATION_TYPES = ("local", "rsync", "s3", "command")


@dataclass(frozen=True)
class ReplicationConfig:
    """``[replication]``: flat keys; each ``[replication.NAME]`` sub-table is a destination."""

    after_backup: bool = False
    """Replicate each new set to every destination right after a successful backup."""
    watch_interval: float = 300.0
    """``dcb replicate --watch``: seconds between rounds."""
    destinations: Mapping[str, DestinationConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class EncryptionConfig:
    """``[encryption]``: age encryption at rest (services/encryption.py)."""

    recipients: tuple[str, ...] = ()
    """age recipients (``age1...``): every artifact is encrypted to them as it streams."""
    identity_file: str = ""
    """age identity (mode 0600) for deep verify and restore; not needed to back up."""



JOB_KINDS = ("backup", "prune", "verify", "drill", "replicate")
BACKUP_SCOPES = ("all", "databases", "volumes")
NOTIFY_EVENTS = ("failure", "recovery", "success")


@dataclass(frozen=True)
class JobConfig:
    """One ``[schedule.NAME]`` table: what ``dcb schedule`` runs and when (services/ops/).

    Ping URLs (healthchecks-style: ``/start``, success, ``/fail``) are secrets: they come from
    an environment variable or a 0600 file, never from this table."""

    run: str = "backup"
    """``backup``, ``prune``, ``verify``, ``drill`` or ``replicate``."""
    cron: str = ""
    """Five cron fields (a sixth, seconds, is accepted), or @hourly/@daily/@weekly/@monthly."""
    what: str = "all"
    """backup: ``all``, ``databases`` or ``volumes``."""
    databases: tuple[str, ...] = ()
    """backup: these databases only (empty: every configured one, when ``what`` includes
    databases)."""
    volumes: tuple[str, ...] = ()
    deep: bool = False
    """verify: read every archive through (``dcb verify --deep``)."""
    then: tuple[str, ...] = ()
    """backup: run these after a successful backup, in order: ``prune``, ``verify``,
    ``replicate``."""
    ping_url_env: str = ""
    """Name of an environment variable holding this job's ping URL."""
    ping_url_file: str = ""
    """A file (mode 0600) holding this job's ping URL."""


@dataclass(frozen=True)
class ScheduleConfig:
    """``[schedule]``: flat keys; each ``[schedule.NAME]`` sub-table is a job."""

    tz: str = ""
    """Time zone of the cron expressions (e.g. ``Europe/Berlin``); empty: the host's."""
    catch_up: bool = True
    """A run missed while the daemon was down runs once at start-up."""
    jitter_seconds: float = 0.0
    """Each run starts up to this many seconds late, at random (spreads load)."""
    heartbeat_seconds: float = 30.0
    """How often the daemon updates its heartbeat (and the check it notifies on)."""
    lock_wait_seconds: float = 600.0
    """A job finding the backup dir locked by another run waits this long, then fails."""
    jobs: Mapping[str, JobConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckConfig:
    """``[check]``: when ``dcb check`` warns (exit 1) or is critical (exit 2)."""

    heartbeat_stale_minutes: float = 5.0
    """The daemon's heartbeat older than this (with jobs configured): critical."""
    failures_warning: int = 1
    """This many consecutive failures of backups (or of one scheduled job): warning."""
    failures_critical: int = 3
    min_free_percent: float = 5.0
    """Free space below this: critical (below ``[storage] min_free_percent``: warning)."""
    duration_factor: float = 2.0
    """Last backup took more than this times the median of the recent runs: warning."""
    size_factor: float = 2.0
    """Last backup's size above this times, or below 1/this of, the recent median: warning."""
    baseline_runs: int = 10
    """How many earlier complete runs of the same scope make the median (at least 3)."""
    replication_lag_hours: float = 48.0
    """A destination's newest copy older than this: warning."""


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus text format for node_exporter's textfile collector."""

    textfile: str = ""
    """Written atomically after each scheduled job (e.g.
    ``/var/lib/node_exporter/textfile_collector/dcb.prom``); empty: not written."""


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: where alerts go (apprise URLs). URLs hold secrets, so they never live in
    this file: they come from the environment variables named here or a 0600 file."""

    urls_env: tuple[str, ...] = ()
    """Names of environment variables, each holding one or more apprise URLs."""
    urls_file: str = ""
    """A file (mode 0600) with one apprise URL per line (# comments allowed)."""
    on: tuple[str, ...] = ("failure", "recovery")
    """Which events notify: ``failure``, ``recovery`` (back to OK), ``success``."""
    host: str = ""
    """The host name in messages; empty: this machine's (set it in a container)."""
    timeout: float = 10.0
    """Seconds each notification or ping may take."""


# Sections that may hold named sub-tables ([replication.NAME], [schedule.NAME]) and the type
# of each table.
NAMED_TABLES: dict[str, tuple[str, type]] = {
    "replication": ("destinations", DestinationConfig),
    "schedule": ("jobs", JobConfig),
}

SECTIONS: dict[str, type] = {
    "stack": StackConfig,
    "storage": StorageConfig,
    "retention": RetentionConfig,
    "restore": RestoreConfig,
    "timeouts": TimeoutsConfig,
    "objectives": ObjectivesConfig,
    "replication": ReplicationConfig,
    "encryption": EncryptionConfig,
    "schedule": ScheduleConfig,
    "check": CheckConfig,
    "metrics": MetricsConfig,
    "notify": NotifyConfig,
}


@dataclass(frozen=True)
class Config:
    stack: StackConfig = field(default_factory=StackConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    path: Path | None = None
    """The file the configuration was read from, if any."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """``"section.key"`` -> where its value came from: default, file, env var or flag."""

    @property
    def backup_dir(self) -> Path:
        """The backup directory; a relative path is relative to the config file's directory."""
        return self._path_setting("storage.backup_dir", self.storage.backup_dir)

    @property
    def state_dir(self) -> Path | None:
        """``[storage] state_dir`` as a path, or None (services/state.py decides)."""
        if not self.storage.state_dir:
            return None
        return self._path_setting("storage.state_dir", self.storage.state_dir)

    def _path_setting(self, key: str, value: str) -> Path:
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        base = self.path.parent if self.path and self.sources.get(
            key, "").startswith("file") else Path.cwd()
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

    def resolve_path(self, value: str) -> Path:
        """A path from the file: ``~`` expanded, relative to the config file's directory."""
        p = Path(value).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def secret_file(self, value: str, where: str) -> str:
        """The text of a secret file named in the configuration, refused when group or
        others may read it (like ``password_file``). ``where`` names the key in errors."""
        pf = self.resolve_path(value)
        where = f"{where} ({pf})"
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
            return pf.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}: cannot read: {e}") from None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting by section; a sub-table's keys are dotted (``volumes.keep_daily``)
        and show their effective value (inherited from the section when unset). Each named
        table (``[replication.NAME]``, ``[schedule.NAME]``) is a section of its own."""
        out = {name: _flatten(getattr(self, name)) for name in SECTIONS}
        for name, (attr, _cls) in NAMED_TABLES.items():
            out[name].pop(attr, None)
            for sub, table in getattr(getattr(self, name), attr).items():
                out[f"{name}.{sub}"] = _flatten(table)
        return out


def _flatten(obj: Any, prefix: str = "", parent: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(_flatten(v, f"{prefix}{f.name}.", obj))
            continue
        if v is None and parent is not None:
            v = getattr(parent, f.name, None)
        out[prefix + f.name] = (list(v) if isinstance(v, tuple)
                                else v.value if isinstance(v, enum.Enum) else v)
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
    named = _named_tables(raw, where, path, layers.sources)
    built = {section: _build(cls, section, raw.get(section, {}), layers)
             for section, cls in SECTIONS.items()}
    for section, (attr, _cls) in NAMED_TABLES.items():
        layers.sources.pop(f"{section}.{attr}", None)
        built[section] = dataclasses.replace(built[section], **{attr: named.get(section, {})})
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
    named = NAMED_TABLES.get(section, ("",))[0] if parent is None else ""
    hints = {k: t for k, t in typing.get_type_hints(cls).items() if k != named}
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


def _named_tables(raw: dict[str, Any], where: str, path: Path | None,
                  sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Pop ``[section.NAME]`` sub-tables out of ``raw`` and build them strictly.

    Only from the file: a sub-table has no environment variables or flags (its name is
    free-form). Returns section -> {NAME: table}."""
    out: dict[str, dict[str, Any]] = {}
    for section, (_attr, cls) in NAMED_TABLES.items():
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        hints = typing.get_type_hints(cls)
        tables: dict[str, Any] = {}
        for name in [k for k, v in values.items() if isinstance(v, dict)]:
            table = values.pop(name)
            label = f"[{section}.{name}]"
            if not name.replace("-", "_").isidentifier():
                raise ConfigError(f"{where}: {label}: a name of letters, digits, - and _ only")
            for key in table:
                if key not in hints:
                    raise ConfigError(f"{where}: unknown key {label} {key}",
                                      hint="known keys: " + ", ".join(hints))
            kwargs = {k: _coerce(hints[k], v, f"{where}: {label} {k}") for k, v in table.items()}
            for key in hints:
                sources[f"{section}.{name}.{key}"] = (f"file {path}" if key in table
                                                      else "default")
            tables[name] = cls(**kwargs)
        out[section] = tables
    return out


def _type_name(typ: Any) -> str:
    typ = _optional_inner(typ)
    if isinstance(typ, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(typ))
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        return " or ".join(f'"{m.value}"' for m in typ)
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
    if isinstance(typ, types.UnionType):  # e.g. a list of names, or "all"
        for member in typing.get_args(typ):
            try:
                return _coerce(member, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        for m in typ:
            if value == m.value:
                return m
        raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")
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
    if isinstance(typ, types.UnionType):
        # A list of names or a keyword: the keyword wins when it is the whole value
        # (DCB_STACK_DATABASES=all); "all," is a list holding one database named "all".
        for member in typing.get_args(typ):
            if isinstance(member, type) and issubclass(member, enum.Enum):
                for m in member:
                    if value.strip() == m.value:
                        return m
        for member in typing.get_args(typ):
            if typing.get_origin(member) is tuple:
                return _coerce_env(member, value, where)
        raise ConfigError(f"{where}: expected {_type_name(typ)}, got {value!r}")
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
    st = cfg.stack
    for key, listed, excluded in (("databases", st.listed_databases, st.exclude_databases),
                                  ("volumes", st.volumes, st.exclude_volumes)):
        both = sorted(set(listed) & set(excluded))
        if both:
            raise ConfigError(f"{where}: [stack] exclude_{key} names {', '.join(both)}, "
                              f"which [stack] {key} also lists: back it up or exclude it")
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
    for key, value in dataclasses.asdict(cfg.timeouts).items():
        if value < 0:
            raise ConfigError(f"{where}: [timeouts] {key} must be >= 0, got {value}")
    if cfg.timeouts.docker_api == 0:
        raise ConfigError(f"{where}: [timeouts] docker_api must be > 0")
    for rcp in cfg.encryption.recipients:
        if not (rcp.startswith("age1") or rcp.startswith("ssh-")):
            raise ConfigError(f"{where}: [encryption] recipients: {rcp[:20]!r} is not an age "
                              "recipient (age1...)", hint="`dcb keygen` makes one")
    if cfg.replication.watch_interval <= 0:
        raise ConfigError(f"{where}: [replication] watch_interval must be > 0")
    for name, d in cfg.replication.destinations.items():
        _validate_destination(name, d, f"{where}: [replication.{name}]")
    _validate_automation(cfg, where)
    _validate_names(cfg.stack, where)


def _validate_names(st: StackConfig, where: str) -> None:
    """Names become argv, SQL identifiers, file names and Docker references: refuse what
    could be read as an option, a path, a connection string or a second line."""
    for key in ("postgres_container", "app_containers", "stop_during_backup", "volumes",
                "exclude_volumes", "postgres_data_volume"):
        for name in _values(getattr(st, key)):
            if key == "postgres_data_volume" and not name:
                continue  # none configured
            if not DOCKER_NAME_RE.fullmatch(name):
                raise ConfigError(
                    f"{where}: [stack] {key}: {name!r} is not a Docker name",
                    hint="letters, digits, _ . - only, starting with a letter or digit")
    for key in ("databases", "exclude_databases", "postgres_user"):
        value = st.listed_databases if key == "databases" else getattr(st, key)
        for name in _values(value):
            problem = pg_name_problem(name)
            if problem:
                raise ConfigError(f"{where}: [stack] {key}: {name!r} {problem}")


def _values(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def pg_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a database or role name dcb works with, or None."""
    if not name:
        return "is empty"
    if len(name.encode()) > PG_NAME_MAX:
        return f"is longer than {PG_NAME_MAX} bytes (PostgreSQL would cut it)"
    if name[0] in "-=":
        return f"starts with {name[0]!r} (would read as an option)"
    if "=" in name:
        return "contains '=' (libpq would read it as a connection string)"
    if "/" in name or "\\" in name or name in (".", ".."):
        return "is not a plain name (it becomes a file name)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character (NUL, newline...)"
    return None


_REQUIRED = {"local": ("path",), "rsync": ("host", "path", "known_hosts"),
             "s3": ("bucket",), "command": ("command",)}


def _validate_destination(name: str, d: DestinationConfig, where: str) -> None:
    if d.type not in DESTINATION_TYPES:
        raise ConfigError(f"{where} type must be one of {', '.join(DESTINATION_TYPES)}, "
                          f"got {d.type!r}")
    for key in _REQUIRED[d.type]:
        if not getattr(d, key):
            raise ConfigError(f"{where} {key} is required for type {d.type!r}")
    if d.request_checksum_calculation not in ("when_supported", "when_required"):
        raise ConfigError(f"{where} request_checksum_calculation must be when_supported or "
                          f"when_required, got {d.request_checksum_calculation!r}")
    if not 1 <= d.port <= 65535 or d.retries < 1 or d.timeout <= 0:
        raise ConfigError(f"{where} port must be 1-65535, retries >= 1, timeout > 0")
    for key in ("keep_last", "keep_daily", "keep_weekly", "keep_monthly"):
        if getattr(d, key) < -1:
            raise ConfigError(f"{where} {key} must be >= 0")


def _validate_automation(cfg: Config, where: str) -> None:
    """[schedule] jobs, [check], [notify]: cron syntax and time zone are checked by
    services/ops/schedule.py when the schedule is loaded (it owns croniter)."""
    sch = cfg.schedule
    if sch.jitter_seconds < 0 or sch.heartbeat_seconds <= 0 or sch.lock_wait_seconds < 0:
        raise ConfigError(f"{where}: [schedule] jitter_seconds and lock_wait_seconds must be "
                          ">= 0, heartbeat_seconds > 0")
    for name, job in sch.jobs.items():
        label = f"{where}: [schedule.{name}]"
        if job.run not in JOB_KINDS:
            raise ConfigError(f"{label} run must be one of {', '.join(JOB_KINDS)}, "
                              f"got {job.run!r}")
        if not job.cron.strip():
            raise ConfigError(f"{label} cron is required", hint='e.g. cron = "0 2 * * *"')
        if job.what not in BACKUP_SCOPES:
            raise ConfigError(f"{label} what must be one of {', '.join(BACKUP_SCOPES)}, "
                              f"got {job.what!r}")
        for d in job.databases:
            if not cfg.stack.all_databases and d not in cfg.stack.listed_databases:
                raise ConfigError(f"{label} databases: {d!r} is not in [stack] databases")
        for v in job.volumes:
            if v not in cfg.stack.volumes:
                raise ConfigError(f"{label} volumes: {v!r} is not in [stack] volumes")
        for t in job.then:
            if t not in ("prune", "verify", "replicate"):
                raise ConfigError(f"{label} then: {t!r} is not prune, verify or replicate")
        if job.then and job.run != "backup":
            raise ConfigError(f"{label} then applies to backup jobs only")
    c = cfg.check
    if c.failures_warning < 1 or c.failures_critical < c.failures_warning:
        raise ConfigError(f"{where}: [check] needs 1 <= failures_warning <= failures_critical")
    if c.duration_factor <= 1 or c.size_factor <= 1 or c.baseline_runs < 3:
        raise ConfigError(f"{where}: [check] duration_factor and size_factor must be > 1, "
                          "baseline_runs >= 3")
    if c.heartbeat_stale_minutes <= 0 or c.replication_lag_hours <= 0:
        raise ConfigError(f"{where}: [check] heartbeat_stale_minutes and "
                          "replication_lag_hours must be > 0")
    for e in cfg.notify.on:
        if e not in NOTIFY_EVENTS:
            raise ConfigError(f"{where}: [notify] on: {e!r} is not one of "
                              f"{', '.join(NOTIFY_EVENTS)}")
    if cfg.notify.timeout <= 0:
        raise ConfigError(f"{where}: [notify] timeout must be > 0")
