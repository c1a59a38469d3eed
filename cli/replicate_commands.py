"""``dcb replicate``, ``dcb keygen``, and the ``--from NAME`` side of list/verify/restore."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from dcb.cli.commands import AddCommand
from dcb.cli.progress import ProgressPrinter
from dcb.cli.render import print_json, table
from dcb.cli.signals import CancelOnSignals
from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.encryption import keygen
from dcb.services.errors import UsageError
from dcb.services.progress import Reporter
from dcb.services.replicate import (
    DestinationState,
    ReplicationResult,
    destination_states,
    fetch,
    list_remote,
    remove_fetched,
    replicate,
    watch,
)
from dcb.services.store import BackupStore


def register(add: AddCommand) -> None:
    p = add("replicate", "copy complete sets to the [replication] destinations", cmd_replicate,
            "Copy complete sets to each destination configured as [replication.NAME] (local "
            "dir, rsync over SSH, S3, or a command). Sets already there are skipped; each copy "
            "appears only whole and is verified (size and SHA-256); then each destination's "
            "retention runs (its keep_*, else [retention]; never its newest verified copy).\n"
            "One failing destination is reported and the others go on; exit 1 if any failed.")
    p.add_argument("id", nargs="?", metavar="ID", help="one set (default with --all: every "
                   "complete backup)")
    p.add_argument("--all", action="store_true", help="every complete backup set")
    p.add_argument("--to", action="append", metavar="NAME", help="only this destination")
    p.add_argument("--watch", action="store_true", help="replicate new sets until stopped")
    p.add_argument("--interval", type=float, metavar="S",
                   help="seconds between --watch rounds (default [replication] watch_interval)")
    p.add_argument("--no-prune", action="store_true",
                   help="do not apply the destinations' retention")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("keygen", "write a new age identity (0600) and print its recipient", cmd_keygen,
            "Write a new age identity to PATH (mode 0600, never overwriting) and print its "
            "recipient. Put the recipient in [encryption] recipients on the backup host and "
            "keep the identity elsewhere (a password manager, an offline copy): it is needed "
            "for deep verify and restore ([encryption] identity_file).")
    p.add_argument("path", nargs="?", default="dcb-identity.txt", metavar="PATH",
                   help="where to write the identity (default ./dcb-identity.txt)")
    p.add_argument("--json", action="store_true",
                   help="print the identity file and the recipient as JSON")


def _result_text(r: ReplicationResult) -> str:
    rows = [[d.name, "FAILED" if d.error else "ok", str(len(d.copied)), str(len(d.skipped)),
             str(len(d.pruned)), fmt.size(d.bytes), fmt.duration(d.seconds), (d.error or "")[:70]]
            for d in r.destinations]
    return table(rows, ["DESTINATION", "RESULT", "COPIED", "ALREADY THERE", "PRUNED", "BYTES",
                        "TOOK", "ERROR"])


def cmd_replicate(args: argparse.Namespace, cfg: Config) -> int:
    if args.id and args.all:
        raise UsageError("give a set id or --all, not both")
    if args.watch and args.id:
        raise UsageError("--watch replicates every new set: no set id")
    if not (args.id or args.all or args.watch):
        raise UsageError("say which sets: an ID, --all or --watch")
    printer = ProgressPrinter(quiet=args.json)
    cancel = threading.Event()
    with CancelOnSignals(cancel, (signal.SIGINT, signal.SIGTERM),
                         "\ndcb: stopping replication...\n"):
        try:
            if args.watch:
                if args.to or args.no_prune:
                    raise UsageError("--watch replicates to every destination, with retention")
                watch(cfg, args.interval, printer, cancel)
                return 130 if cancel.is_set() else 0
            result = replicate(cfg, [args.id] if args.id else None, args.to,
                               prune=not args.no_prune, reporter=printer, cancel=cancel)
        finally:
            printer.close()
    if args.json:
        print_json(result.to_json())
    else:
        print(_result_text(result))
    for d in result.destinations:
        if d.error:
            sys.stderr.write(f"dcb: replication to {d.name} failed: {d.error}\n")
    return 0 if result.ok else 1


def cmd_keygen(args: argparse.Namespace, cfg: Config) -> int:
    path = Path(args.path).expanduser()
    recipient = keygen(path)
    sys.stderr.write(f"wrote the identity to {path} (mode 0600): keep it safe and off this "
                     "host if you can; without it encrypted sets cannot be restored\n")
    if getattr(args, "json", False):
        print_json({"identity_file": str(path.resolve()), "recipient": recipient})
    else:
        print(recipient)
    return 0


# -- --from NAME ---------------------------------------------------------------------------------
def lag_text(states: list[DestinationState]) -> str:
    rows = [[s.name, s.type, s.newest_copy or "-",
             "-" if s.lag_seconds is None else fmt.duration(s.lag_seconds),
             str(s.pending), (s.last_error or "")[:60]] for s in states]
    return table(rows, ["DESTINATION", "TYPE", "NEWEST COPY", "LAG", "PENDING", "LAST ERROR"])


def replication_status(cfg: Config) -> list[DestinationState]:
    return destination_states(cfg)


def cmd_list_from(args: argparse.Namespace, cfg: Config) -> int:
    sets = list_remote(cfg, args.from_)
    if args.json:
        data = []
        for s in sets:
            d = s.to_json()
            d.pop("path", None)
            d["destination"] = args.from_
            data.append(d)
        print_json(data)
        return 0
    if not sets:
        print(f"no sets at {args.from_}")
        return 0
    rows = [[s.id, fmt.age(s.created_at), s.status, fmt.size(s.size_bytes),
             str(len(s.artifacts)), s.error or ""] for s in sets]
    print(table(rows, ["ID", "CREATED", "STATUS", "SIZE", "ARTIFACTS", "NOTE"]))
    return 0


@contextlib.contextmanager
def fetched_store(cfg: Config, name: str, set_id: str | None,
                  reporter: Reporter) -> Iterator[BackupStore]:
    """Fetch a copy (verified) into the local cache; the cache's store, removed afterwards."""
    if not set_id:
        raise UsageError("--from needs a set id (`dcb list --from NAME` shows them)")
    cancel = threading.Event()
    with CancelOnSignals(cancel):
        s = fetch(cfg, name, set_id, reporter, cancel)
    try:
        yield BackupStore(s.path.parent)
    finally:
        remove_fetched(cfg, name, set_id)
        (s.path.parent / "history.jsonl").unlink(missing_ok=True)  # verify's, of the copy


def cmd_verify_from(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.cli.store_commands import cmd_verify

    if args.all:
        raise UsageError("--from verifies one set: give its id")
    printer = ProgressPrinter(quiet=args.json)
    try:
        with fetched_store(cfg, args.from_, args.id, printer) as store:
            printer.close()
            local = dataclasses.replace(cfg, storage=dataclasses.replace(
                cfg.storage, backup_dir=str(store.root)))
            return cmd_verify(_without_from(args), local)
    finally:
        printer.close()


def _without_from(args: argparse.Namespace) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    ns.from_ = None
    return ns
