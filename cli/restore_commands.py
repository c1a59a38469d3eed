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
from dcb.services.errors import DcbError, NotFound, UsageError
from dcb.services.restore import (
    RestoreFlow,
    RestorePlan,
    RestoreReport,
    RestoreRequest,
)
from dcb.services.state import state_for
from dcb.services.store import BackupStore


def register(add: AddCommand) -> None:
    p = add("restore", "restore a set (guided: validate, plan, confirm, safety snapshot...)",
            cmd_restore,
            "Restore databases and/or volumes from a set. The set is validated first "
            "(checksums, every archive read through); then the plan is shown and must be "
            "confirmed by typing the set id (or --yes without a terminal). Before anything is "
            "replaced, a safety snapshot of exactly what will be overwritten is taken, so\n"
            "`dcb restore SAFETY_ID --yes` undoes the restore. App containers are stopped and "
            "started again; databases are restored into a temporary database and swapped in "
            "only when complete; row counts and file lists are verified at the end.\n\n"
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
                   help="skip the safety snapshot (the restore cannot be undone)")
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

    p = add("history", "show the run history (backups, restores, verifies, drills)",
            cmd_history)
    p.add_argument("--restore", metavar="ID", help="one restore's incident log, as markdown")
    p.add_argument("--json", action="store_true", help="print JSON")


def plan_text(plan: RestorePlan) -> str:
    lines = [f"Restore plan for set {plan.set.id} ({plan.set.status}, "
             f"{fmt.age(plan.set.created_at)})"]
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
    lines.append("  safety snapshot: " + ("yes" if plan.safety_backup else "NO"))
    lines.append("")
    for i, s in enumerate(plan.steps, 1):
        lines.append(f"  {i:2}. {s.title}  (~{fmt.duration(s.estimate_seconds)})")
    lines.append(f"  estimated total {fmt.duration(plan.estimate_seconds)}")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def report_text(r: RestoreReport) -> str:
    lines = [f"restore {r.restore_id} of set {r.set_id}: "
             + ("OK" if r.ok else "FAILED") + f" in {fmt.duration(r.seconds)}"]
    for s in r.steps:
        lines.append(f"  [{s.outcome:>6}] {s.title} ({fmt.duration(s.seconds)})"
                     + (f": {s.detail}" if s.detail else ""))
    for what, diffs in r.verification.items():
        lines.append(f"  verify {what}: " + ("equal" if not diffs else "; ".join(diffs[:5])))
    if r.safety_set_id:
        lines.append(f"  safety snapshot: {r.safety_set_id}")
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
        safety_backup=not args.no_safety_backup, delta=args.delta)
    printer = ProgressPrinter(quiet=args.json)
    cancel = threading.Event()
    flow = RestoreFlow(cfg, printer, cancel)
    if store is not None:  # --from: the verified copy fetched from a destination
        flow.store = store
    try:
        plan = flow.prepare(request)
        problems = flow.preflight(plan)
    finally:
        printer.close()
    if args.json and args.dry_run:
        print_json({"plan": plan.to_json(), "problems": problems})
    elif not args.json:
        print(plan_text(plan))
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
        sys.stderr.write(f"dcb: restore failed: {report.error}\n")
        return 1
    return 0


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
    if r.get("error"):
        out.append(f"- error: {r['error']}")
    out += ["", "## Timeline", "", "| started | step | took | outcome | detail |",
            "|---|---|---|---|---|"]
    for s in r["steps"]:
        out.append(f"| {s['started_at']} | {s['title']} | {fmt.duration(s['seconds'])} | "
                   f"{s['outcome']} | {s['detail'].replace('|', '/')} |")
    if r.get("state"):
        out += ["", "## State after failure", ""] + [f"- {s}" for s in r["state"]]
    if r.get("undo"):
        out += ["", f"Undo: `{r['undo']}`"]
    return "\n".join(out)
