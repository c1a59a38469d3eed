"""The headless subcommands: each takes the parsed args and the config, returns an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from dcb.cli.render import print_json, status_text, table
from dcb.services.config import Config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import NotFound
from dcb.services.status import collect_status

AddCommand = Callable[..., argparse.ArgumentParser]


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    gw = DockerGateway.connect(cfg.timeouts.docker_api)
    try:
        st = collect_status(cfg, gw)
    finally:
        gw.close()
    from dcb.cli.replicate_commands import lag_text, replication_status

    dests = replication_status(cfg)
    if args.json:
        print_json({**st.to_json(), "replication": [d.to_json() for d in dests]})
    else:
        print(status_text(st))
        if dests:
            print("\nReplication\n" + lag_text(dests))
    if st.problems:
        for p in st.problems:
            sys.stderr.write(f"dcb: {p}\n")
        return NotFound.exit_code
    return 0


def cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    values = cfg.as_dict()
    if args.json:
        print_json({
            "file": str(cfg.path) if cfg.path else None,
            "settings": {
                f"{s}.{k}": {"value": v, "source": cfg.sources[f"{s}.{k}"]}
                for s in values for k, v in values[s].items()
            },
        })
        return 0
    print(f"# file: {cfg.path or '(none: built-in defaults)'}")
    rows: list[list[str]] = []
    for s in values:  # the sections, then named sub-tables ([schedule.NAME])
        for k, v in values[s].items():
            rows.append([f"{s}.{k}", _show(v), cfg.sources[f"{s}.{k}"]])
    print(table(rows, ["KEY", "VALUE", "SOURCE"]))
    return 0


def _show(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(v) + "]"
    return str(v)


def register_more(add: AddCommand) -> None:
    """The backup-store commands (kept apart so main.py stays small)."""
    from dcb.cli import (
        automation_commands,
        completion,
        demo_commands,
        du_command,
        init_command,
        replicate_commands,
        restore_commands,
        store_commands,
    )

    store_commands.register(add)
    restore_commands.register(add)
    du_command.register(add)
    replicate_commands.register(add)
    automation_commands.register(add)
    demo_commands.register(add)
    init_command.register(add)
    completion.register(add)
