"""``dcb demo [up|down|break]``: the sandbox stack of services/demo.py, from the terminal."""

from __future__ import annotations

import argparse
import sys

from dcb.cli.commands import AddCommand
from dcb.cli.progress import ProgressPrinter
from dcb.cli.render import print_json
from dcb.services.config import Config, load_config
from dcb.services.demo import Demo, UpResult
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import UsageError

ACTIONS = ("up", "down", "break")


def register(add: AddCommand) -> None:
    p = add("demo", "a sandbox Dart Cloud stack to back up, break and restore", cmd_demo,
            "A sandbox copy of the Dart Cloud stack on this Docker engine: PostgreSQL with "
            "dart_cloud and functions_db (a few MB of sample data), an app container, the "
            "functions_data volume with sample files; all --network none, labelled "
            "dcb.demo=<id> and named dcb-demo-<id>-..., so nothing touches a real stack. Its "
            "own dcb.toml and backups live in the demo dir (printed), and that configuration "
            "refuses every container and volume without the demo's label.\n\n"
            "  (none)  up if needed, then the console on the demo\n"
            "  up      make the stack, write its config, take a first backup\n"
            "  break   an accident: drop a table, delete files in the volume\n"
            "  down    remove exactly what up made, the config and the backups\n\n"
            "PostgreSQL's image: the official postgres image where present or a registry "
            "answers, else Debian's PostgreSQL built locally (debootstrap, a minute or two "
            "once; cached by tag).")
    p.set_defaults(needs_config=False)
    p.add_argument("action", nargs="?", choices=ACTIONS, metavar="ACTION",
                   help="up, down or break (none: up if needed, then the console)")
    p.add_argument("--no-backup", action="store_true", help="up: skip the first backup")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def cmd_demo(args: argparse.Namespace, _cfg: Config) -> int:
    if args.action is None and args.json:
        raise UsageError("dcb demo --json needs an action (up, down or break)")
    printer = ProgressPrinter(quiet=args.quiet or args.json)
    demo = Demo(reporter=printer)
    try:
        if args.action == "down":
            down = demo.down()
            printer.close()
            if args.json:
                print_json(down.to_json())
            elif down.id is None:
                print(f"no demo to remove in {demo.root}")
            else:
                print(f"demo {down.id} removed: {len(down.removed)} containers and volumes, "
                      f"its config and backups ({demo.root})")
            for s in down.skipped:
                sys.stderr.write(f"dcb: left {s} alone: it does not carry the demo's label\n")
            return 0
        if args.action == "break":
            br = demo.break_stack()
            printer.close()
            if args.json:
                print_json(br.to_json())
                return 0
            print(f"Broke the demo: dropped table {br.dropped} ({br.rows_lost:,} rows) and "
                  f"deleted {len(br.deleted_paths)} function directories ({br.files_lost} "
                  "files).\n\nRestore it:\n"
                  "  dcb demo                      the console: select the backup, press r\n"
                  f"  dcb --config {demo.config_path} restore {br.backup.id}")
            return 0
        up: UpResult | None = None
        if args.action == "up":
            up = demo.up(backup=not args.no_backup)
        else:
            gw = DockerGateway.connect()
            try:
                ready = demo.is_up(gw)
            finally:
                gw.close()
            if not ready:
                up = demo.up(backup=not args.no_backup)
        printer.close()
        if args.action == "up" and up is not None:
            if args.json:
                print_json(up.to_json())
            else:
                print(up_text(up))
            return 0
    finally:
        printer.close()
    from dcb.cli.main import open_console

    code = open_console(load_config(str(demo.config_path), environ={}))
    print(f"The demo's configuration: {demo.config_path}\n"
          "  dcb demo break    an accident to restore from\n"
          "  dcb demo down     remove the demo stack, its config and backups")
    return code


def up_text(up: UpResult) -> str:
    st = up.state
    lines = [f"Demo stack dcb-demo-{st.id} is "
             + ("already up" if up.already_up else f"up (image {st.image})") + ":",
             f"  {st.containers['postgres']}  PostgreSQL: dart_cloud, functions_db "
             "(sample data)",
             f"  {st.containers['app']}   the app, mounting {st.volumes['functions_data']}"]
    if up.first_backup is not None:
        lines.append(f"  first backup: {up.first_backup.id}")
    cfg = up.config_path
    lines += ["", f"Its configuration: {cfg}", f"Its backups:       {up.backup_dir}", "",
              "Try it:",
              "  dcb demo                        the console on the demo (b: back up, "
              "r: restore)",
              "  dcb demo break                  an accident: drops a table, deletes files",
              f"  dcb --config {cfg} list",
              f"  export DCB_CONFIG={cfg}   then any dcb command acts on the demo",
              "  dcb demo down                   remove the demo stack, config and backups"]
    return "\n".join(lines)
