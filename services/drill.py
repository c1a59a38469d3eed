"""Restore drills: restore a set into a throwaway sandbox, verify it, measure the time to
recover (RTO), remove the sandbox. The live stack is never touched.

The sandbox is a clone of the live PostgreSQL container (its exact image, entrypoint,
command with its ``-c`` settings, environment, user, stop signal and shm size) on new volumes
with unique names: ``--network none``, no published ports, no other mounts, labelled, removed
after. Passwords in the environment are replaced (the sandbox trusts local connections). When
the set holds PostgreSQL's data volume, the sandbox server boots from that restored physical
backup (proving it recovers) and the logical dumps are then restored over it, exactly as a real
full restore does. The sandbox's command-line settings are compared with the live server's.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import docker.errors

from dcb.services.config import Config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError, NotFound
from dcb.services.postgres import PgGateway
from dcb.services.progress import LogLine, Reporter, null_reporter
from dcb.services.restore import RestoreFlow, RestoreReport, RestoreRequest, Target
from dcb.services.restore_model import pg_data_artifact
from dcb.services.state import state_for
from dcb.services.store import BackupStore
from dcb.services.volumes import cluster_layout

DRILL_LABEL = "dcb.drill"
# Settings given on the server's command line (``-c``): what a clone must reproduce.
SETTINGS_SQL = ("SELECT name || '=' || setting FROM pg_settings "
                "WHERE source = 'command line' ORDER BY 1")
SECRET_ENV = ("POSTGRES_PASSWORD", "PGPASSWORD")
SANDBOX_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID")
"""All the sandbox's PostgreSQL keeps of root's capabilities: what the image's entrypoint
needs to own its data dir and drop to the postgres user (gosu). A restored set is data from
a destination another party may control: the sandbox runs it with no network, nothing else."""


@dataclass(frozen=True)
class DrillResult:
    set_id: str
    ok: bool
    rto_seconds: float
    report: RestoreReport | None
    error: str | None
    sandbox: str
    settings: dict[str, str] = field(default_factory=dict)
    """The sandbox server's command-line settings (``-c``), as it reported them."""
    settings_differ: tuple[str, ...] = ()
    """Where they differ from the live server's (empty: the clone ran as the live one)."""

    def to_json(self) -> dict[str, Any]:
        return {"set_id": self.set_id, "ok": self.ok, "rto_seconds": round(self.rto_seconds, 2),
                "error": self.error, "sandbox": self.sandbox,
                "settings": self.settings, "settings_differ": list(self.settings_differ),
                "report": self.report.to_json() if self.report else None}


def run_drill(cfg: Config, set_id: str | None = None, reporter: Reporter = null_reporter,
              cancel: threading.Event | None = None) -> DrillResult:
    store = BackupStore.for_config(cfg)
    if set_id is None:
        complete = [s for s in store.list_sets() if s.status == "complete"]
        if not complete:
            raise NotFound(f"no complete backup set in {cfg.backup_dir} to drill")
        set_id = complete[0].id
    s = store.get(set_id)
    gw = DockerGateway.connect(cfg.timeouts.docker_api)
    remove_stale_sandboxes(gw)
    prefix = f"dcb-drill-{secrets.token_hex(4)}"
    created_containers: list[str] = []
    created_volumes: list[str] = []
    t0 = time.monotonic()
    report: RestoreReport | None = None
    error: str | None = None
    settings: dict[str, str] = {}
    differ: tuple[str, ...] = ()
    try:
        live = gw.find_container(cfg.stack.postgres_container)
        if live is None:
            raise NotFound(f"PostgreSQL container {cfg.stack.postgres_container!r} not found: "
                           "the drill clones it")
        labels = {DRILL_LABEL: prefix}
        volumes = {a.name: f"{prefix}-{a.name}" for a in s.artifacts if a.kind == "volume"}
        # PostgreSQL's data volume: the set's pg_basebackup, mounted where the live server
        # has its data directory's volume (PGDATA, cloned, may be below it).
        pg_art = pg_data_artifact(s.artifacts, cfg.stack.postgres_data_volume)
        pg_volume = volumes[pg_art.name] if pg_art else f"{prefix}-pgdata"
        for v in {*volumes.values(), pg_volume}:
            gw.client.volumes.create(v, labels=labels)
            created_volumes.append(v)
        pg_name = f"{prefix}-postgres"
        live_pg = PgGateway(gw, live.name, cfg.stack.postgres_user, cfg.postgres_password())
        layout = cluster_layout(gw, live, live_pg.query)
        mount = layout.data_mount or layout.data_directory
        clone = sandbox_spec(gw.client.api.inspect_container(live.id), cfg.stack.postgres_user)
        gw.client.api.create_container(
            name=pg_name, labels=labels, volumes=[mount],
            host_config=gw.client.api.create_host_config(
                binds={pg_volume: {"bind": mount, "mode": "rw"}}, network_mode="none",
                shm_size=clone.pop("shm_size"), port_bindings={},
                cap_drop=["ALL"], cap_add=list(SANDBOX_CAPS),
                security_opt=["no-new-privileges"]),
            network_disabled=True, **clone)
        created_containers.append(pg_name)
        reporter(LogLine(f"sandbox {prefix}: {pg_name} cloned from {live.name} "
                         f"({live.image}), {len(volumes)} volume(s)"))
        target = Target(postgres_container=pg_name, postgres_user=cfg.stack.postgres_user,
                        password=None, volumes=volumes, app_containers=(),
                        postgres_data_volume=pg_art.name if pg_art else "", sandbox=True)
        if pg_art is None:
            gw.client.containers.get(pg_name).start()
            PgGateway(gw, pg_name, cfg.stack.postgres_user).wait_ready(cfg.timeouts.postgres_ready)
        flow = RestoreFlow(cfg, reporter, cancel, target=target, gw=gw)
        plan = flow.prepare(RestoreRequest(set_id=s.id, safety_backup=False))
        report = flow.execute(plan, plan.confirm_token)
        if not report.ok:
            error = report.error
        else:
            settings, differ = _compare_settings(gw, cfg, pg_name, reporter)
    except DcbError as e:
        error = e.message
    finally:
        rto = time.monotonic() - t0
        for c in created_containers:
            with contextlib.suppress(docker.errors.APIError):
                gw.client.containers.get(c).remove(force=True, v=True)
        for v in created_volumes:
            with contextlib.suppress(docker.errors.APIError):
                gw.client.volumes.get(v).remove(force=True)
        gw.close()
    ok = error is None and report is not None and report.ok
    with contextlib.suppress(DcbError):
        state_for(cfg).append_history({"kind": "drill", "id": prefix, "set_id": s.id, "ok": ok,
                                       "rto_seconds": round(rto, 2), "error": error,
                                       "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                           time.gmtime())})
    return DrillResult(set_id=s.id, ok=ok, rto_seconds=rto, report=report, error=error,
                       sandbox=prefix, settings=settings, settings_differ=differ)


def sandbox_spec(attrs: dict[str, Any], postgres_user: str) -> dict[str, Any]:
    """``create_container`` arguments cloning a live PostgreSQL container: its exact image,
    entrypoint, command (with its ``-c`` settings), environment, user, working dir and stop
    signal; never its networks, ports or other mounts. Passwords are replaced: the sandbox
    trusts local connections (it has no network), and a secret read from a file that only
    the live container mounts (``*_FILE``) is dropped."""
    conf = attrs.get("Config") or {}
    env: dict[str, str] = {}
    for item in conf.get("Env") or []:
        key, _, value = item.partition("=")
        if key in SECRET_ENV or (key.startswith("POSTGRES_") and key.endswith("_FILE")):
            continue
        env[key] = value
    env.setdefault("POSTGRES_USER", postgres_user)
    env["POSTGRES_HOST_AUTH_METHOD"] = "trust"
    env["POSTGRES_PASSWORD"] = secrets.token_urlsafe(12)
    return {
        "image": attrs.get("Image") or conf.get("Image"),
        "entrypoint": conf.get("Entrypoint"),
        "command": conf.get("Cmd") or None,
        "environment": env,
        "user": conf.get("User") or "",
        "working_dir": conf.get("WorkingDir") or None,
        "stop_signal": conf.get("StopSignal") or "SIGINT",
        "shm_size": (attrs.get("HostConfig") or {}).get("ShmSize") or None,
    }


def _compare_settings(gw: DockerGateway, cfg: Config, sandbox: str, reporter: Reporter
                      ) -> tuple[dict[str, str], tuple[str, ...]]:
    """The sandbox's command-line settings, and where they differ from the live server's."""
    def read(container: str, password: str | None) -> dict[str, str]:
        out = PgGateway(gw, container, cfg.stack.postgres_user, password).query(SETTINGS_SQL)
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    mine = read(sandbox, None)
    try:
        live = read(cfg.stack.postgres_container, cfg.postgres_password())
    except DcbError as e:
        reporter(LogLine(f"could not read the live server's settings: {e.message}", "warning"))
        return mine, ()
    differ = tuple(f"{k}: sandbox {mine.get(k, '(unset)')}, live {live.get(k, '(unset)')}"
                   for k in sorted({*mine, *live}) if mine.get(k) != live.get(k))
    for d in differ:
        reporter(LogLine(f"the sandbox does not run as the live server: {d}", "warning"))
    return mine, differ


def remove_stale_sandboxes(gw: DockerGateway) -> None:
    for c in gw.client.containers.list(all=True, filters={"label": DRILL_LABEL}):
        with contextlib.suppress(docker.errors.APIError):
            c.remove(force=True, v=True)
    for v in gw.client.volumes.list(filters={"label": DRILL_LABEL}):
        with contextlib.suppress(docker.errors.APIError):
            v.remove(force=True)
