"""``dcb restore``, ``dcb drill`` and ``dcb history``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from dcb.cli.commands import AddCommand
from dcb.cli.progress import ProgressPrinter
from dcb.cli.render import print_json, table
from dcb.cli.signals import CancelOnSignals
from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.restore import (
    BlastRadius,
    RestoreFlow,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
)
from dcb.services.state import state_for
from dcb.services.store import BackupStore
from dcb.services.undo import UndoPoint


def register(add: AddCommand) -> None:
    p = add("restore", "restore a set (guided: validate, plan, confirm, safety snapshot...)",
            cmd_restore,
            "Restore databases and/or volumes from a set. The set is validated first "
            "(checksums, every archive read through); then the plan is shown and must be "
            "confirmed by typing the set id (or --yes without a terminal). What is replaced is "
            "kept as an undo point, without copying it (databases renamed, volume contents "
            "moved aside), so `dcb undo RESTORE_ID` puts it back in seconds; where moving is "
            "impossible a safety set is taken instead. App containers are stopped and started "
            "again; databases are restored into a temporary database (with their encoding, "
            "locale, owner, settings, comment and grants) and swapped in only when complete; "
            "missing roles are created, existing ones left alone unless --roles; row counts, "
            "database properties and file lists are verified at the end. Ctrl-C stops at the "
            "next safe point (exit 130).\n\n"
            "examples:\n"
            "  dcb restore 20261126T020000Z --dry-run          # show the plan only\n"
            "  dcb restore 20261126T020000Z                    # everything, asks to confirm\n"
            "  dcb restore 20261126T020000Z --db dart_cloud    # one database only\n"
            "  dcb restore 20261126T020000Z --db dart_cloud --as dart_cloud_inspect\n"
            "                                                  # side by side, touches nothing")
    p.add_argument("id", metavar="ID", help="set id (see `dcb list`)")
    p.add_argument("--db", action="append", metavar="NAME", help="restore this database")
    p.add_argument("--volume", action="append", metavar="NAME", help="restore this volume")
    p.add_argument("--as", dest="as_name", metavar="NAME",
                   help="restore the one --db under this name, touching nothing else")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan, then stop")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--no-safety-backup", action="store_true",
                   help="keep no undo point (the restore cannot be undone; replaced data is "
                        "deleted, which needs no extra space)")
    p.add_argument("--roles", action="store_true",
                   help="also reset existing roles (attributes, passwords, memberships) to "
                        "the backup's; missing roles are always created")
    p.add_argument("--delta", action="store_true",
                   help="keep volume files that pass rsync's quick check (same size, mtime, "
                        "owner, mode) instead of rewriting every file: much faster when most "
                        "files are unchanged; a file altered without changing those is kept")
    p.add_argument("--json", action="store_true", help="print the plan/report as JSON")
    p.add_argument("--from", dest="from_", metavar="NAME",
                   help="fetch the set from this [replication] destination first (verified "
                        "before use): recovery on a new host with an empty backup dir")

    p = add("drill", "restore a set into a throwaway sandbox, verify it, measure the RTO",
            cmd_drill,
            "Restore drill: restores the set (default: the newest complete one) into a new "
            "PostgreSQL container and new volumes with unique names (--network none), "
            "verifies row counts and file lists, records the measured time to recover in the "
            "history, and removes the sandbox. The live stack is never touched.\n"
            "Exits 1 when the drill fails.")
    p.add_argument("id", nargs="?", metavar="ID", help="set id (default: newest complete)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("undo", "put back what a restore replaced (its undo point), or release it",
            cmd_undo,
            "Without an id: list the undo points. With one: put back exactly what that "
            "restore replaced (databases renamed back, volume contents moved back; a safety "
            "set is restored), in seconds. Changes made since the restore are discarded, so "
            "it asks to type the restore id (or --yes without a terminal). What the restore "
            "had written is dropped at the next run. --release drops the undo point instead "
            "(the restore can no longer be undone); points are released automatically "
            "[restore] keep_undo_hours after their restore verified.")
    p.add_argument("id", nargs="?", metavar="RESTORE_ID", help="the restore (see `dcb status`)")
    p.add_argument("--release", action="store_true",
                   help="drop the undo point: the restore can no longer be undone")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = add("history", "show the run history (backups, restores, verifies, drills)",
            cmd_history)
    p.add_argument("--restore", metavar="ID", help="one restore's incident log, as markdown")
    p.add_argument("--json", action="store_true", help="print JSON")


def plan_text(plan: RestorePlan, blast: BlastRadius | None = None) -> str:
    lines = [f"Restore plan for set {plan.set.id} ({plan.set.status}, "
             f"{fmt.age(plan.set.created_at)})"]
    for c in plan.checks:
        mark = "ok " if c.ok else "!! " if c.ok is False else "-- "
        lines.append(f"  {mark}{c.what}: {c.detail}" if c.what != "checksums"
                     else f"  {mark}{c.detail}")
    lines.append("")
    if blast is not None:
        lines.append("What will change:")
        lines += [f"  {line}" for line in blast.lines()]
    else:
        for a in plan.databases:
            target = f" as {plan.target_db}" if plan.target_db else ""
            lines.append(f"  database {a.name}{target}: {fmt.size(a.size_bytes)} dump")
        for a in plan.volumes:
            lines.append(f"  volume {a.name}: replaced by {fmt.size(a.source.get('raw_bytes'))} "
                         "archive")
        if plan.stop_containers:
            lines.append("  stops: " + ", ".join(plan.stop_containers))
        if plan.stops_postgres:
            lines.append("  stops PostgreSQL (its data volume is replaced)")
    lines.append("  way back: " + {
        "move": "undo point (what is replaced is kept, nothing copied): `dcb undo RESTORE_ID`",
        "safety": "safety snapshot of what is replaced: `dcb undo RESTORE_ID`",
        "none": "NONE (--no-safety-backup): the replaced data is deleted"}[plan.undo])
    if plan.globals is not None:
        lines.append("  roles: " + ("existing roles reset to the backup's (--roles)"
                                    if plan.roles else "missing roles created, existing ones "
                                                       "left as they are"))
    lines.append("")
    for i, s in enumerate(plan.steps, 1):
        source = f", {s.estimate_source}" if s.estimate_source else ""
        lines.append(f"  {i:2}. {s.title}  (~{fmt.duration(s.estimate_seconds)}{source})")
    lines.append(f"  estimated total {fmt.duration(plan.estimate_seconds)}")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def report_text(r: RestoreReport) -> str:
    head = "OK" if r.ok else "CANCELLED" if r.cancelled else "FAILED"
    lines = [f"restore {r.restore_id} of set {r.set_id}: {head} in {fmt.duration(r.seconds)}"]
    for s in r.steps:
        lines.append(f"  [{s.outcome:>6}] {s.title} ({fmt.duration(s.seconds)})"
                     + (f": {s.detail}" if s.detail else ""))
    for what in sorted({*r.verification, *r.not_checked}):
        parts = []
        if what in r.verification:
            diffs = r.verification[what]
            what_ = ", ".join(r.checked.get(what) or [])
            parts.append((f"equal ({what_})" if what_ else "equal") if not diffs
                         else "; ".join(diffs[:5]))
        if r.not_checked.get(what):
            parts.append("not checked: " + "; ".join(r.not_checked[what]))
        lines.append(f"  verify {what}: " + "; ".join(parts))
    if r.safety_set_id:
        lines.append(f"  safety snapshot: {r.safety_set_id}")
    lines += [f"  note: {n}" for n in r.notes]
    if r.error:
        lines.append(f"  error: {r.error}")
    lines += [f"  state: {s}" for s in r.state]
    if r.undo:
        lines.append(f"  undo: {r.undo}")
    return "\n".join(lines)


def cmd_restore(args: argparse.Namespace, cfg: Config) -> int:
    if not getattr(args, "from_", None):
        return _restore(args, cfg)
    from dcb.cli.replicate_commands import fetched_store

    printer = ProgressPrinter(quiet=args.json)
    with fetched_store(cfg, args.from_, args.id, printer) as store:
        printer.close()
        return _restore(args, cfg, store)


def _restore(args: argparse.Namespace, cfg: Config, store: BackupStore | None = None) -> int:
    request = RestoreRequest(
        set_id=args.id, databases=tuple(args.db) if args.db else None,
        volumes=tuple(args.volume) if args.volume else None, target_db=args.as_name,
        safety_backup=not args.no_safety_backup, delta=args.delta, roles=args.roles,
        validate_now=args.dry_run)
    printer = ProgressPrinter(quiet=args.json)
    cancel = threading.Event()
    flow = RestoreFlow(cfg, printer, cancel)
    blast = None
    with CancelOnSignals(cancel, (signal.SIGINT, signal.SIGTERM),
                         "\ndcb: stopping, nothing was changed...\n"):
        if store is not None:  # --from: the verified copy fetched from a destination
            flow.store = store
        try:
            plan = flow.prepare(request)
            problems = flow.preflight(plan)
            if args.dry_run or not args.json:
                blast = flow.blast_radius(plan)
        finally:
            printer.close()
    if args.json and args.dry_run:
        print_json({"plan": plan.to_json(), "problems": problems,
                    "blast_radius": blast.to_json() if blast else None})
    elif not args.json:
        print(plan_text(plan, blast))
    if problems:
        raise DcbError("preflight failed: " + "; ".join(problems), hint="nothing was changed")
    if args.dry_run:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to restore without confirmation: no terminal to ask "
                             "on; pass --yes", hint="nothing was changed")
        answer = input(f"\nType the set id ({plan.confirm_token}) to restore, anything else "
                       "cancels: ").strip()
        if answer != plan.confirm_token:
            sys.stderr.write("dcb: cancelled, nothing was changed\n")
            return 1
    with CancelOnSignals(cancel, (signal.SIGINT, signal.SIGTERM),
                         "\ndcb: stopping at the next safe point...\n"):
        try:
            report = flow.execute(plan, plan.confirm_token)
        finally:
            printer.close()
    if args.json:
        print_json({"plan": plan.to_json(), "report": report.to_json()})
    else:
        print(report_text(report))
    if not report.ok:
        what = "cancelled" if report.cancelled else "failed"
        sys.stderr.write(f"dcb: restore {what}: {report.error}"
                         + (f" (undo: {report.undo})" if report.undo else "") + "\n")
        return Cancelled.exit_code if report.cancelled else 1
    return 0


def cmd_undo(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.services.undo_flow import list_points, release, undo_restore

    if not args.id:
        if args.release:
            raise UsageError("--release needs the restore id (`dcb undo` lists them)")
        points = list_points(cfg)
        if args.json:
            print_json([p.to_json() for p in points])
        elif not points:
            print("no undo points")
        else:
            print(table([undo_row(p) for p in points],
                        ["RESTORE", "SET", "STATE", "KEEPS", "RELEASED"]))
        return 0
    verb = "release the undo point of" if args.release else "undo"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to {verb} {args.id} without confirmation: no terminal "
                             "to ask on; pass --yes", hint="nothing was changed")
        warn = ("the restore can no longer be undone" if args.release else
                "what changed since the restore is discarded")
        answer = input(f"{verb} {args.id} ({warn})? Type the restore id to go on: ").strip()
        if answer != args.id:
            sys.stderr.write("dcb: cancelled, nothing was changed\n")
            return 1
    printer = ProgressPrinter(quiet=args.json)
    cancel = threading.Event()
    try:
        if args.release:
            point = release(cfg, args.id, printer)
            printer.close()
            if args.json:
                print_json(point.to_json())
            else:
                print(f"undo point of {args.id} released: {point.describe()}")
            return 0
        with CancelOnSignals(cancel, (signal.SIGINT, signal.SIGTERM),
                             "\ndcb: stopping at the next safe point...\n"):
            result = undo_restore(cfg, args.id, printer, cancel)
    finally:
        printer.close()
    if args.json:
        print_json(result.to_json())
    else:
        head = f"undone in {fmt.duration(result.seconds)}"
        if result.already:
            nothing = any("nothing to undo" in s for s in result.steps)
            head = "nothing to undo" if nothing else "already undone"
        print(f"{args.id}: {head}")
        for s in result.steps:
            print(f"  {s}")
    return 0


def undo_row(p: UndoPoint) -> list[str]:
    if p.state == "undone":
        when = f"next run (undone {p.undone_at})"
    elif p.expires_at:
        when = p.expires_at[:16].replace("T", " ")
    else:
        when = "by `dcb undo --release`"
    return [p.restore_id, p.set_id, p.state, p.describe(), when]


def cmd_drill(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.services.drill import run_drill

    printer = ProgressPrinter(quiet=args.json)
    try:
        result = run_drill(cfg, args.id, printer)
    finally:
        printer.close()
    if args.json:
        print_json(result.to_json())
    else:
        if result.report is not None:
            print(report_text(result.report))
        print(f"drill of {result.set_id}: {'PASSED' if result.ok else 'FAILED'}, "
              f"time to recover {fmt.duration(result.rto_seconds)}")
    if not result.ok:
        sys.stderr.write(f"dcb: drill failed: {result.error}\n")
        return 1
    return 0


def cmd_history(args: argparse.Namespace, cfg: Config) -> int:
    if args.restore:
        path = state_for(cfg).incident_path(args.restore)
        if not path.exists():
            raise NotFound(f"no incident log {args.restore} in {path.parent}",
                           hint="`dcb history` lists restores")
        data = json.loads(path.read_text())
        if args.json:
            print_json(data)
        else:
            print(incident_markdown(data))
        return 0
    hist = state_for(cfg).read_history()
    if args.json:
        print_json(hist)
        return 0
    rows = []
    for h in reversed(hist):
        when = h.get("started_at") or h.get("at") or ""
        ok = h.get("status") or ("ok" if h.get("ok") else "failed")
        what = h.get("id", "")
        if h.get("set_id"):
            what += f" (set {h['set_id']})"
        detail = h.get("error") or (fmt.size(h["size_bytes"]) if h.get("size_bytes") else "")
        rows.append([when[:19], h.get("kind", "?"), what, ok,
                     fmt.duration(h.get("duration_seconds") or h.get("seconds")), detail])
    if not rows:
        print("no history yet")
        return 0
    print(table(rows, ["WHEN", "KIND", "ID", "RESULT", "DURATION", "DETAIL"]))
    return 0


def incident_markdown(data: dict[str, Any]) -> str:
    r, p = data["report"], data["plan"]
    out = [f"# {'Drill' if data.get('sandbox') else 'Restore'} {r['restore_id']}", "",
           f"- set: `{r['set_id']}`",
           f"- outcome: **{'success' if r['ok'] else 'FAILED'}**",
           f"- duration: {fmt.duration(r['seconds'])}",
           f"- databases: {', '.join(p['databases']) or '-'}",
           f"- volumes: {', '.join(p['volumes']) or '-'}"]
    if r.get("safety_set_id"):
        out.append(f"- safety snapshot: `{r['safety_set_id']}`")
    if r.get("undo"):
        out.append(f"- undo: `{r['undo']}`")
    if data.get("undone"):
        out.append(f"- undone at {data['undone'].get('at')} "
                   f"(in {fmt.duration(data['undone'].get('seconds'))})")
    if r.get("error"):
        out.append(f"- error: {r['error']}")
    out += [f"- note: {n}" for n in r.get("notes") or []]
    out += ["", "## Timeline", "", "| started | step | took | outcome | detail |",
            "|---|---|---|---|---|"]
    for s in r["steps"]:
        out.append(f"| {s['started_at']} | {s['title']} | {fmt.duration(s['seconds'])} | "
                   f"{s['outcome']} | {s['detail'].replace('|', '/')} |")
    checked = {**{k: None for k in r.get("not_checked") or {}}, **(r.get("verification") or {})}
    if checked:
        out += ["", "## Verification", ""]
        for k in sorted(checked):
            diffs = (r.get("verification") or {}).get(k)
            how = ", ".join((r.get("checked") or {}).get(k) or [])
            line = f"- {k}: " + ((f"equal ({how})" if how else "equal") if diffs == []
                                 else "; ".join(diffs[:5]) if diffs else "-")
            missing = (r.get("not_checked") or {}).get(k)
            if missing:
                line += "; not checked: " + "; ".join(missing)
            out.append(line)
    if r.get("state"):
        out += ["", "## State after failure", ""] + [f"- {s}" for s in r["state"]]
    return "\n".join(out)
