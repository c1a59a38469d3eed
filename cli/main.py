"""``dcb``: with no subcommand, the TUI; with one, a headless command.

Exit codes: 0 ok, 1 failure, 2 bad usage or configuration, 3 Docker unreachable,
4 something configured is missing, 5 another run holds the lock, 130 interrupted.

Errors are one line on stderr (plus a hint), never a traceback. An exception nobody expected
is a bug: its traceback goes to a crash log in the user's log dir
(``~/.local/state/dcb/log/crash-*.log``) and the line says where.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import argcomplete
import docker.errors
import platformdirs
import requests.exceptions

from dcb import __version__
from dcb.cli.completion import complete_set_ids
from dcb.cli.examples import examples_block, overview_block
from dcb.cli.progress import quiet_progress
from dcb.services import encryption
from dcb.services.config import Config, load_config
from dcb.services.errors import DcbError, DockerUnavailable
from dcb.services.guard import demo_guard

EPILOG = """\
configuration:
  dcb.toml is found by --config, then $DCB_CONFIG, then ./dcb.toml, then the user's
  config dir (~/.config/dcb/dcb.toml). Every key has a default for the Dart Cloud stack.
  Any key can be overridden by DCB_<SECTION>_<KEY>, e.g. DCB_STORAGE_BACKUP_DIR=/srv/backups.
  The PostgreSQL password comes from $POSTGRES_PASSWORD or [stack] password_file (mode 0600).
  `dcb init` writes one for a running Compose project; `dcb demo` tries dcb on a sandbox.

the same flags everywhere:
  --json      machine-readable results on stdout (every command that reports)
  -q, --quiet no progress on stderr (every long command); errors and warnings still show
  --yes       no confirmation prompt;  --dry-run  show the plan, change nothing
  NO_COLOR    set it to turn colour off (the console too)

exit codes:
  0 ok, 1 failed, 2 bad usage/config, 3 Docker unreachable, 4 not found, 5 locked, 130 interrupted

"""

LONG_COMMANDS = ("backup", "verify", "prune", "restore", "undo", "drill", "du", "demo",
                 "replicate")
"""Commands that report progress: each takes -q/--quiet."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"dcb: {message}\n")
        sys.exit(2)


def _common() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                   help="configuration file (default: $DCB_CONFIG, ./dcb.toml, user config dir)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="dcb",
        description="Backup and disaster recovery for a Docker Compose stack "
        "(PostgreSQL databases and named volumes). Without a command, opens the console.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"dcb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    from dcb.cli import commands

    def add(name: str, help_: str, func: Callable[[argparse.Namespace, Config], int],
            description: str | None = None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_, description=description or help_, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        return p

    p = add("status", "show containers, volumes, disk usage and backups", commands.cmd_status,
            "Show each configured container (state, health, image, uptime), each volume (size, "
            "users), the backup directory's filesystem and the newest backup.\n"
            "Exits 3 when Docker is unreachable, 4 when a configured container or volume is "
            "missing.")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = add("config", "show the effective configuration", commands.cmd_config,
            "Print every setting with its value and where it came from "
            "(default, file, environment, command line).")
    p.add_argument("--show", action="store_true", help="show values and sources (the default)")
    p.add_argument("--json", action="store_true", help="print JSON")

    commands.register_more(add)
    _same_flags_everywhere(sub.choices)
    parser.epilog = EPILOG + overview_block()
    return parser


def crash_log(exc: BaseException, where: str = "") -> Path | None:
    """Write ``exc``'s traceback to a new file in the user's log dir (a temp file when that
    is not writable); its path, or None when nothing could be written."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = (f"dcb {__version__} {where}\nargv: {sys.argv[1:]}\n\n"
            + "".join(traceback.format_exception(exc)))
    for d in (Path(platformdirs.user_log_dir("dcb")), Path(tempfile.gettempdir())):
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".log", dir=d)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return Path(name)
        except OSError:
            continue
    return None


def _unexpected(exc: BaseException, what: str = "") -> None:
    """One line for an exception no service translated; the traceback goes to a log."""
    log = crash_log(exc, what)
    if isinstance(exc, OSError) and exc.strerror:
        target = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"dcb: {what}{target}{exc.strerror}\n")
    else:
        first = (str(exc).splitlines() or [""])[0][:300]
        sys.stderr.write(f"dcb: {what}internal error: {type(exc).__name__}"
                         + (f": {first}" if first else "") + "\n")
    where = f"the full traceback is in {log}" if log else "no crash log could be written"
    sys.stderr.write(f"hint: {where}; please report it\n")


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "a thread"
    _unexpected(args.exc_value, f"in {name}: ")


def _same_flags_everywhere(parsers: Mapping[str, argparse.ArgumentParser]) -> None:
    """Every long command takes -q/--quiet and every --help ends with examples, whichever
    module registered the command (a command that defines its own -q keeps it)."""
    for name, p in parsers.items():
        own = p._option_string_actions
        if name in LONG_COMMANDS and "-q" not in own and "--quiet" not in own:
            p.add_argument("-q", "--quiet", action="store_true",
                           help="no progress output (errors and warnings still show)")
            p.set_defaults(func=_quiet_progress(p.get_default("func")))
        if "examples:" not in (p.description or "") + (p.epilog or ""):
            p.epilog = examples_block(name)
        for action in p._actions:
            if action.dest == "id" and not action.option_strings:
                action.completer = complete_set_ids  # type: ignore[attr-defined]


def _quiet_progress(func: Callable[[argparse.Namespace, Config], int]
                    ) -> Callable[[argparse.Namespace, Config], int]:
    def run(args: argparse.Namespace, cfg: Config) -> int:
        with quiet_progress(getattr(args, "quiet", False)):
            return func(args, cfg)

    return run


def open_console(cfg: Config) -> int:
    """The full-screen console (the one place the CLI loads Textual), under the demo guard
    when ``cfg`` is the demo's."""
    from dcb.tui.app import run_tui

    with demo_guard(cfg.stack.demo):
        return run_tui(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)  # answers a shell's TAB and exits; otherwise nothing
    args = parser.parse_args(argv)
    threading.excepthook = _thread_crashed
    try:
        # demo, init and completion need no configuration (and must work when it is broken).
        needs = getattr(args, "needs_config", True)
        cfg = load_config(getattr(args, "config", None)) if needs else Config()
        encryption.use_config(cfg)  # readers decrypt with [encryption] identity_file
        if args.command is None:
            return open_console(cfg)
        with demo_guard(cfg.stack.demo):  # a demo config acts on the demo stack only
            code: int = args.func(args, cfg)
        return code
    except DcbError as e:
        sys.stderr.write(f"dcb: {e.message}\n")
        if e.hint:
            sys.stderr.write(f"hint: {e.hint}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dcb: interrupted\n")
        return 130
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        # Anything the gateways did not translate: still one line, never a traceback.
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        sys.stderr.write(f"dcb: Docker engine error: {first}\n")
        return DockerUnavailable.exit_code
    except BrokenPipeError:
        return 1
    except Exception as e:  # the last resort: a bug, reported in one line and logged
        _unexpected(e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
