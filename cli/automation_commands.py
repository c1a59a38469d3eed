"""``dcb schedule``, ``check``, ``metrics``, ``notify``: running by itself and saying when it
fails."""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, datetime

from dcb.cli.commands import AddCommand
from dcb.cli.render import print_json, table
from dcb.services.config import Config
from dcb.services.errors import DcbError
from dcb.services.ops.check import NAMES, UNKNOWN, run_check
from dcb.services.ops.heartbeat import read_state


def register(add: AddCommand) -> None:
    p = add("schedule", "run the [schedule] jobs in the foreground (the backup daemon)",
            cmd_schedule,
            "Run the jobs of [schedule] (cron expressions in [schedule] tz) one at a time, in "
            "the foreground, logging plain timestamped lines to stdout. A run missed while "
            "the daemon was down runs once at start-up (catch_up). SIGTERM or Ctrl-C cancels "
            "the current job at its next safe point and exits 0.")
    p.add_argument("--list", action="store_true", help="list jobs and their next run times")
    p.add_argument("--run", metavar="NAME", help="run one job now and exit (no daemon "
                   "may be running for this backup dir)")
    p.add_argument("-n", type=int, default=3, metavar="N", help="--list: next N runs per job")
    p.add_argument("--json", action="store_true", help="--list/--run: print JSON")

    p = add("check", "health check with Nagios exit codes (0 OK 1 WARNING 2 CRITICAL "
                     "3 UNKNOWN)", cmd_check,
            "Check the newest complete backup against [objectives] rpo_hours, consecutive "
            "failures, free space on the backup disk, the schedule daemon's heartbeat, the "
            "last backup's duration and size against the median of recent runs, and "
            "replication lag. Prints one status line; exits 0 OK, 1 WARNING, 2 CRITICAL, "
            "3 UNKNOWN (a bad configuration exits 2 like every command). Thresholds: "
            "[check].")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per condition")

    p = add("metrics", "print Prometheus metrics (text format)", cmd_metrics,
            "Print the metrics in Prometheus' text format: last success per kind, last "
            "duration and size, failures, backup dir and free bytes, replication lag, undo "
            "points, the daemon's heartbeat and jobs. --textfile writes them atomically for "
            "node_exporter's textfile collector (the daemon does so after each job when "
            "[metrics] textfile is set).")
    p.add_argument("--textfile", metavar="PATH", help="write to this file instead of stdout")
    p.add_argument("--json", action="store_true",
                   help="the same samples as JSON: name, labels, value")

    p = add("notify", "show the notification targets; --test sends a test message",
            cmd_notify,
            "List the configured notification targets (by scheme only: URLs hold secrets and "
            "are never printed) and problems with them. --test sends one test event to "
            "every target and exits 1 unless all accepted it.")
    p.add_argument("--test", action="store_true", help="send a test notification")
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_schedule(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.services.ops.schedule import LineLog, Scheduler, upcoming

    if args.list:
        rows = upcoming(cfg, max(1, args.n))
        state = read_state(cfg.backup_dir)
        if args.json:
            print_json([{"name": j.name, "run": j.job.run, "cron": j.job.cron,
                         "next": [t.isoformat() for t in times],
                         "last_status": (state.jobs[j.name].last_status
                                         if state and j.name in state.jobs else None)}
                        for j, times in rows])
            return 0
        if not rows:
            print("no jobs in [schedule]")
            return 0
        print(table([[j.name, j.job.run, j.job.cron, ", ".join(
            t.strftime("%Y-%m-%d %H:%M:%S %Z") for t in times)] for j, times in rows],
            ["JOB", "RUN", "CRON", "NEXT RUNS"]))
        return 0
    log = LineLog(sys.stdout)
    sched = Scheduler(cfg, log)
    if args.run:
        out = sched.run_now(args.run)
        if args.json:
            print_json(out.__dict__)
        return 0 if out.status == "ok" else 1
    # SIGTERM (docker stop) and Ctrl-C: cancel the job at a safe point, then exit 0.
    def stop(_sig: int, _frame: object) -> None:
        sched.request_stop()

    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return sched.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def cmd_check(args: argparse.Namespace, cfg: Config) -> int:
    try:
        report = run_check(cfg)
    except Exception as e:  # Nagios: anything unexpected is UNKNOWN, never a traceback
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        if args.json:
            print_json({"status": "UNKNOWN", "code": UNKNOWN, "summary": first,
                        "findings": []})
        else:
            print(f"DCB UNKNOWN - {first}")
        return UNKNOWN
    if args.json:
        print_json(report.to_json())
    else:
        print(report.summary())
        if args.verbose:
            for f in report.findings:
                print(f"{NAMES[f.status]:8}  {f.name:12}  {f.message}")
    return report.status


def cmd_metrics(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.services.ops.metrics import exposition, write_textfile

    if args.textfile:
        try:
            p = write_textfile(cfg, args.textfile)
        except OSError as e:
            raise DcbError(f"cannot write {args.textfile}: {e.strerror or e}") from None
        sys.stderr.write(f"metrics written to {p}\n")
        return 0
    if getattr(args, "json", False):
        from dcb.services.ops.metrics import samples

        print_json(samples(cfg))
        return 0
    sys.stdout.write(exposition(cfg))
    return 0


def cmd_notify(args: argparse.Namespace, cfg: Config) -> int:
    from dcb.services.ops.notify import Event, Notifier, host_name, target_label, validate_notify

    problems = validate_notify(cfg)
    def say(message: str) -> None:
        sys.stderr.write(f"dcb: {message}\n")

    notifier = Notifier(cfg, say)
    as_json = getattr(args, "json", False)
    targets = [target_label(i, u) for i, u in enumerate(notifier.urls)]
    if not as_json:
        if not notifier.urls:
            print("no notification targets ([notify] urls_env / urls_file)")
        for t in targets:
            print(t)
        print(f"events: {', '.join(cfg.notify.on) or 'none'}")
    for p in problems:
        sys.stderr.write(f"dcb: {p}\n")
    sent: int | None = None
    if args.test:
        event = Event(event="test", status="ok", host=host_name(cfg),
                      message=f"test notification from dcb at "
                              f"{datetime.now(UTC).isoformat(timespec='seconds')}")
        notifier.on = {"success"}
        sent = notifier.send(event)
        if not as_json:
            print(f"test sent to {sent} of {len(notifier.urls)} target(s)")
    if as_json:
        print_json({"targets": targets, "events": list(cfg.notify.on),
                    "problems": list(problems), "test_sent": sent})
    if sent is None:
        return 1 if problems else 0
    return 0 if notifier.urls and sent == len(notifier.urls) else 1
