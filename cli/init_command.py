"""``dcb init``: write a commented dcb.toml for a running Docker Compose project."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcb.cli.commands import AddCommand
from dcb.cli.render import print_json
from dcb.services.artifacts import atomic_write_bytes
from dcb.services.config import CONFIG_FILENAME, load_config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import ConfigError, DcbError, UsageError
from dcb.services.init_config import discover, render_toml


def register(add: AddCommand) -> None:
    p = add("init", "write a dcb.toml for a running Docker Compose project", cmd_init,
            "Discover a running Docker Compose project from the labels Compose puts on its "
            "containers and volumes: the PostgreSQL service (image, POSTGRES_* environment, "
            "pg_isready), its databases (listed by query), the named volumes and which "
            "services mount them, and the services that use the database (Compose's "
            "depends_on label, else their environment or mounts). Writes a commented "
            "dcb.toml saying where each value came from (never a secret: it says where the "
            "password comes from instead) and shows it.\n\n"
            "An existing file is not overwritten without --force. With several projects "
            "running, name one with --project.")
    p.set_defaults(needs_config=False)
    p.add_argument("--project", metavar="NAME", help="the Compose project (when several run)")
    p.add_argument("--output", metavar="PATH", default=CONFIG_FILENAME,
                   help="where to write (default ./dcb.toml; - prints it only)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--json", action="store_true",
                   help="print what was discovered and the file as JSON")


def cmd_init(args: argparse.Namespace, _cfg: object) -> int:
    to_stdout = args.output == "-"
    out = Path(args.output).expanduser()
    if not to_stdout and out.is_dir():
        out = out / CONFIG_FILENAME
    gw = DockerGateway.connect()
    try:
        found = discover(gw, args.project)
    finally:
        gw.close()
    text = render_toml(found)
    exists = not to_stdout and (out.exists() or out.is_symlink())
    write = not to_stdout and (not exists or args.force)
    if write:
        _check_and_write(out, text)
    if args.json:
        print_json({"path": None if to_stdout else str(out.resolve()), "written": write,
                    "discovered": found.to_json(), "toml": text})
    else:
        print(text, end="")
    if exists and not args.force:
        raise UsageError(f"{out} exists: not overwritten", hint="--force overwrites it; "
                         "--output PATH writes elsewhere")
    if write:
        sys.stderr.write(f"wrote {out} for Compose project {found.project!r}: "
                         f"{len(found.databases)} databases, {len(found.volumes)} volumes. "
                         f"Next: dcb --config {out} status\n")
    return 0


def _check_and_write(out: Path, text: str) -> None:
    """Write only what loads back as a valid configuration."""
    tmp = out.with_name(f".{out.name}.dcb-init")
    try:
        atomic_write_bytes(tmp, text.encode(), mode=0o600)
        load_config(str(tmp), environ={})
        tmp.replace(out)
    except ConfigError as e:
        raise DcbError(f"the discovered configuration does not load: {e.message}",
                       hint="please report this; nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)
