"""``dcb backup``, ``list``, ``show``, ``verify``, ``prune``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from dcb.cli.commands import AddCommand
from dcb.cli.progress import ProgressPrinter
from dcb.cli.render import print_json, table
from dcb.cli.signals import CancelOnSignals
from dcb.services import formatting as fmt
from dcb.services.backup import BackupRequest, BackupRun
from dcb.services.config import Config
from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.postgres import PgGateway
from dcb.services.prune import PlanChanged, PrunePlan, PruneResult, execute, preview, prune
from dcb.services.running import running_sets
from dcb.services.state import state_for
from dcb.services.store import BackupStore
from dcb.services.verify import SetCheck, verified_now, verify_set


def register(add: AddCommand) -> None:
    p = add("backup", "back up databases and volumes into a new set", cmd_backup,
            "Dump each configured database (one consistent snapshot each, plus the cluster's "
            "roles) and archive each configured volume, compressed, into a new set under the "
            "backup dir. Prints the new set's id.\n\n"
            "With --db/--volume only those are backed up (--db alone: no volumes).\n"
            "Containers in [stack] stop_during_backup are stopped while their volumes are "
            "archived and always started again. PostgreSQL's data volume is taken online "
            "with pg_basebackup.")
    p.add_argument("--db", action="append", metavar="NAME", help="back up this database")
    p.add_argument("--volume", action="append", metavar="NAME", help="back up this volume")
    p.add_argument("--prune", action="store_true",
                   help="apply the retention policy after a successful run")
    p.add_argument("--json", action="store_true", help="print the new set as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = add("list", "list backup sets, newest first", cmd_list,
            "List every set in the backup dir: complete, failed, incomplete (an interrupted "
            "run), running (a backup in progress: who runs it, since when, bytes written so "
            "far) and legacy sets made by the old bash scripts.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--from", dest="from_", metavar="NAME",
                   help="list the copies at this [replication] destination instead")

    p = add("show", "show one set's artifacts, checksums and row counts", cmd_show)
    p.add_argument("id", metavar="ID", help="set id (see `dcb list`)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("verify", "check sets' sizes and checksums (--deep: read every archive)",
            cmd_verify,
            "Verify a set (default: the newest complete set): every artifact must exist with "
            "the size and SHA-256 its manifest records. --deep also decompresses every "
            "artifact to its end, reads each tar member and has pg_restore read each dump.\n"
            "Exits 1 and names each bad artifact when anything is wrong.")
    p.add_argument("id", nargs="?", metavar="ID", help="set id (default: newest complete)")
    p.add_argument("--all", action="store_true", help="verify every set")
    p.add_argument("--deep", action="store_true", help="also read every archive through")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--from", dest="from_", metavar="NAME",
                   help="fetch the set from this [replication] destination (verified) and "
                        "verify that copy")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    p = add("prune", "remove sets the retention policy no longer keeps", cmd_prune,
            "Apply [retention] to each database, each volume and the roles separately "
            "(restic's --keep-last/daily/weekly/monthly semantics, per item): a set is "
            "removed only when no rule keeps any of its items, and the newest copy of each "
            "item is never removed. A restore's safety snapshot is kept until its undo window "
            "ends ([restore] keep_undo_hours). Failed sets and incomplete sets older than a "
            "day are removed.\n\n"
            "The plan is shown first: every set with the items and rules that keep it. On a "
            "terminal, type yes to remove exactly the sets it shows (without one, pass "
            "--yes). If the store changes before you confirm so that a shown removal no "
            "longer holds, nothing is removed and the new plan is shown.")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed")
    p.add_argument("--yes", action="store_true", help="remove without asking")
    p.add_argument("--json", action="store_true", help="print JSON (needs --dry-run or --yes)")


def cmd_backup(args: argparse.Namespace, cfg: Config) -> int:
    dbs = tuple(args.db) if args.db else None
    vols = tuple(args.volume) if args.volume else None
    if dbs is not None and vols is None:
        vols = ()
    if vols is not None and dbs is None:
        dbs = ()
    printer = ProgressPrinter(quiet=args.quiet)
    cancel = threading.Event()
    try:
        with CancelOnSignals(cancel):  # SIGINT arrives as KeyboardInterrupt
            s = BackupRun(cfg, printer, cancel).run(BackupRequest(databases=dbs, volumes=vols))
    finally:
        printer.close()
    if args.json:
        print_json(s.to_json())
    else:
        print(s.id)
    if not args.quiet:
        sys.stderr.write(f"backup {s.id} complete: {len(s.artifacts)} artifacts, "
                         f"{fmt.size(s.size_bytes)} in {fmt.duration(s.duration_seconds)}\n")
    code = 0
    if cfg.replication.after_backup and cfg.replication.destinations:
        from dcb.services.replicate import replicate_after_backup

        printer = ProgressPrinter(quiet=args.quiet)
        try:
            with CancelOnSignals(cancel, (signal.SIGINT, signal.SIGTERM),
                                 "\ndcb: stopping replication...\n"):
                rep = replicate_after_backup(cfg, s, printer, cancel)
        except Cancelled:
            # The set stays complete (and is copied by the next replication round).
            raise Cancelled(f"backup {s.id} is complete; its replication was interrupted",
                            hint="`dcb replicate --all` copies it later") from None
        finally:
            printer.close()
        for d in rep.destinations if rep else ():
            if d.error:
                sys.stderr.write(f"dcb: backup {s.id} is complete, but replication to "
                                 f"{d.name} failed: {d.error}\n")
                code = 1
    if args.prune:
        pruned = prune(cfg)
        if pruned.removed and not args.quiet:
            sys.stderr.write(f"pruned {len(pruned.removed)} sets, freed "
                             f"{fmt.size(pruned.freed_bytes)}\n")
    return code


def _verified_index(cfg: Config) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for h in state_for(cfg).read_history():
        if h.get("kind") == "verify":
            out[h["id"]] = h
    return out


def cmd_list(args: argparse.Namespace, cfg: Config) -> int:
    if getattr(args, "from_", None):
        from dcb.cli.replicate_commands import cmd_list_from

        return cmd_list_from(args, cfg)
    sets = BackupStore.for_config(cfg).list_sets()
    verified = _verified_index(cfg)
    running = running_sets(state_for(cfg).root, sets)  # where the lock lives
    if args.json:
        data = []
        for s in sets:
            d = s.to_json()
            v = verified.get(s.id)
            d["verified"] = None if v is None else {"ok": v["ok"], "deep": v["deep"],
                                                    "at": v["at"]}
            r = running.get(s.id)
            if r is not None:  # being written now, not an interrupted run
                d.update(status="running", error=None, size_bytes=r.bytes_written,
                         running=r.to_json())
            data.append(d)
        print_json(data)
        return 0
    if not sets:
        print(f"no backups yet in {cfg.backup_dir}")
        return 0
    rows = []
    for s in sets:
        v = verified.get(s.id)
        vtext = "-" if v is None else ("ok" if v["ok"] else "FAILED") + (" deep" if v["deep"]
                                                                          else "")
        r = running.get(s.id)
        if r is not None:
            since = f", started {r.since:%H:%M:%S} UTC ({fmt.age(r.since)})" if r.since else ""
            rows.append([s.id, fmt.age(s.created_at), "running", fmt.size(r.bytes_written),
                         str(len(r.done)), vtext, r.describe() + since])
            continue
        rows.append([s.id, fmt.age(s.created_at), s.status, fmt.size(s.size_bytes),
                     str(len(s.artifacts)), vtext, s.error or ""])
    print(table(rows, ["ID", "CREATED", "STATUS", "SIZE", "ARTIFACTS", "VERIFIED", "NOTE"]))
    return 0


def cmd_show(args: argparse.Namespace, cfg: Config) -> int:
    s = BackupStore.for_config(cfg).get(args.id)
    if args.json:
        print_json(s.to_json())
        return 0
    print(f"set       {s.id} ({s.status})")
    print(f"created   {s.created_at.isoformat()} ({fmt.age(s.created_at)})")
    if s.duration_seconds is not None:
        print(f"duration  {fmt.duration(s.duration_seconds)}")
    print(f"path      {s.path}")
    if s.error:
        print(f"error     {s.error}")
    print()
    rows = [[a.kind, a.name, a.file, fmt.size(a.size_bytes), (a.sha256 or "-")[:16]]
            for a in s.artifacts]
    print(table(rows, ["KIND", "NAME", "FILE", "SIZE", "SHA256"]))
    for a in s.artifacts:
        counts = a.source.get("row_counts")
        if counts:
            print(f"\nrows in {a.name} at dump time:")
            print(table([[t, str(n)] for t, n in counts.items()], ["TABLE", "ROWS"]))
    return 0


def cmd_verify(args: argparse.Namespace, cfg: Config) -> int:
    if getattr(args, "from_", None):
        from dcb.cli.replicate_commands import cmd_verify_from

        return cmd_verify_from(args, cfg)
    store = BackupStore.for_config(cfg)
    sets = store.list_sets()
    if args.all and args.id:
        raise UsageError("give a set id or --all, not both")
    if args.all:
        targets = [s for s in sets if s.status in ("complete", "legacy")]
    elif args.id:
        targets = [store.get(args.id)]
    else:
        targets = [s for s in sets if s.status == "complete"][:1]
    if not targets:
        raise NotFound(f"no complete backup sets in {cfg.backup_dir}")
    pg: PgGateway | None = None
    gw: DockerGateway | None = None
    needs_pg = args.deep and any(a.source.get("format") == "custom"
                                 for s in targets for a in s.artifacts)
    if needs_pg:
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        pg = PgGateway(gw, cfg.stack.postgres_container, cfg.stack.postgres_user,
                       cfg.postgres_password())
    printer = ProgressPrinter(quiet=args.json or args.quiet)
    results: list[SetCheck] = []
    try:
        for s in targets:
            r = verify_set(s, deep=args.deep, pg=pg, reporter=printer)
            results.append(r)
            if s.status in ("complete", "legacy"):
                state_for(cfg).append_history({"kind": "verify", "id": s.id, "ok": r.ok,
                                               "deep": args.deep, "at": verified_now(),
                                               "problems": r.problems()})
    finally:
        printer.close()
        if gw is not None:
            gw.close()
    if args.json:
        print_json([r.to_json() for r in results])
    else:
        for r in results:
            print(f"{r.set_id}: {'ok' if r.ok else 'FAILED'}{' (deep)' if r.deep else ''}")
            for c in r.checks:
                if c.note and c.ok:
                    print(f"  {c.artifact.file}: {c.note}")
            for problem in r.problems():
                print(f"  {problem}")
    bad = [r for r in results if not r.ok]
    if bad:
        for r in bad:
            for problem in r.problems():
                sys.stderr.write(f"dcb: verify {r.set_id}: {problem}\n")
        return 1
    return 0


def prune_text(plan: PrunePlan) -> str:
    """Every set, and under it the items and rules that keep it (or why it goes)."""
    rows, notes = [], []
    for d in plan.decisions:
        s = d.set
        status = s.status if s.purpose == "backup" else f"{s.status} ({s.purpose})"
        rows.append([s.id, s.created_at.strftime("%Y-%m-%d %H:%M"), status,
                     fmt.size(s.size_bytes), "keep" if d.keep else "REMOVE"])
        notes.append([r for r in d.reasons if r != "remove"])
    lines = table(rows, ["ID", "CREATED", "STATUS", "SIZE", "DECISION"]).splitlines()
    indent = " " * (max(len(r[0]) for r in rows) + 2) if rows else ""
    out = lines[:1]
    for line, reasons in zip(lines[1:], notes, strict=True):
        out.append(line)
        out += [indent + r for r in reasons]
    return "\n".join(out)


def _prune_json(plan: PrunePlan, dry_run: bool, result: PruneResult | None) -> dict[str, Any]:
    return {"dry_run": dry_run, **plan.to_json(),
            "removed": list(result.removed) if result else [],
            "freed_bytes": result.freed_bytes if result else 0,
            "also_removable": list(result.also_removable) if result else []}


def _prune_summary(res: PruneResult) -> str:
    text = f"removed {len(res.removed)} sets, freed {fmt.size(res.freed_bytes)}"
    if res.also_removable:
        text += (f"; {len(res.also_removable)} more can go now that the store changed "
                 "(not shown before, so left alone): run dcb prune again")
    return text


def cmd_prune(args: argparse.Namespace, cfg: Config) -> int:
    if args.dry_run or args.yes:
        if args.dry_run:
            plan, res = preview(cfg), None
        else:
            res = prune(cfg)
            plan = res.plan
        if args.json:
            print_json(_prune_json(plan, args.dry_run, res))
        elif not plan.decisions:
            print(f"no backups in {cfg.backup_dir}")
        else:
            print(prune_text(plan))
            print(f"\n{len(plan.removals)} of {len(plan.decisions)} sets would be removed "
                  "(dry run)" if res is None else "\n" + _prune_summary(res))
        return 0
    if args.json:
        raise UsageError("dcb prune --json needs --dry-run or --yes", hint="nothing was removed")
    if not sys.stdin.isatty():
        raise UsageError("refusing to prune without confirmation: no terminal to ask on; "
                         "pass --yes (or --dry-run to see the plan)", hint="nothing was removed")
    plan = preview(cfg)
    while True:
        if not plan.decisions:
            print(f"no backups in {cfg.backup_dir}")
            return 0
        print(prune_text(plan))
        if not plan.removals:
            print("\nnothing to remove")
            return 0
        try:
            answer = input(f"\nRemove these {len(plan.removals)} sets "
                           f"({fmt.size(plan.bytes_to_free)})? Type yes to remove them, "
                           "anything else cancels: ").strip()
        except EOFError:  # Ctrl-D
            answer = ""
        if answer != "yes":
            sys.stderr.write("dcb: cancelled, nothing was removed\n")
            return 1
        try:
            res = execute(cfg, plan)
        except PlanChanged as e:
            sys.stderr.write(f"dcb: {e.message}; nothing was removed. The new plan:\n\n")
            plan = e.current
            continue
        print(_prune_summary(res))
        return 0


__all__ = ["DcbError", "register"]
