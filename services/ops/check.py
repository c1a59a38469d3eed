"""``dcb check``: is the backup system healthy? Nagios plugin conventions.

Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN; one status line (``DCB WARNING - ... | perfdata``).
Conditions, each a ``Finding``:

- ``rpo``: the newest complete backup is older than ``[objectives] rpo_hours`` (or there is
  none): CRITICAL.
- ``failures``: consecutive failures, of backups in the history or of any one scheduled job
  (the daemon's heartbeat file counts them, lock timeouts included):
  ``[check] failures_warning`` / ``failures_critical``.
- ``free_space``: below ``[storage] min_free_percent`` WARNING, below ``[check]
  min_free_percent`` CRITICAL.
- ``heartbeat``: with jobs in ``[schedule]``, the daemon's heartbeat missing, stopped or older
  than ``heartbeat_stale_minutes``: CRITICAL.
- ``duration`` / ``size``: the last backup took more than ``duration_factor`` times the median
  of the last ``baseline_runs`` complete runs of the same scope, or its size moved by more than
  ``size_factor`` either way: WARNING (needs 3 earlier runs).
- ``replication``: a destination's lag above ``replication_lag_hours``, or its last round
  failed (the ledger's last error): WARNING.
- ``stopped``: a container dcb stopped and a killed run never started again: CRITICAL.
- ``permissions``: the backup store open to other users (files others may read,
  directories others may change): WARNING.
- ``coverage``: a database or volume of the stack that no backup takes (services/coverage.py):
  WARNING; the Docker engine not answering: UNKNOWN. PostgreSQL down or missing is said but
  stays OK here: the backups it breaks show in ``rpo`` and ``failures``.
- the backup dir cannot be read: UNKNOWN.

The overall status is the worst finding, ranked CRITICAL > WARNING > UNKNOWN > OK.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dcb.services import formatting as fmt
from dcb.services.backup import read_history
from dcb.services.config import Config
from dcb.services.disk import DiskUsage, disk_usage
from dcb.services.errors import DcbError, DockerUnavailable
from dcb.services.ops.heartbeat import DaemonState, read_state
from dcb.services.store import BackupSet, BackupStore

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_RANK = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


@dataclass(frozen=True)
class Finding:
    name: str
    status: int
    message: str
    perf: tuple[tuple[str, float, str], ...] = ()
    """Nagios performance data: (label, value, "warn;crit")."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "status": NAMES[self.status], "code": self.status,
                "message": self.message}


@dataclass(frozen=True)
class CheckReport:
    findings: tuple[Finding, ...]
    checked_at: datetime

    @property
    def status(self) -> int:
        if not self.findings:
            return OK
        return max((f.status for f in self.findings), key=lambda s: _RANK[s])

    @property
    def alerts(self) -> tuple[Finding, ...]:
        """Findings that are not OK, worst first."""
        bad = [f for f in self.findings if f.status != OK]
        return tuple(sorted(bad, key=lambda f: -_RANK[f.status]))

    def summary(self) -> str:
        """The one Nagios status line."""
        shown = self.alerts or tuple(f for f in self.findings if f.name == "rpo")
        text = "; ".join(f.message for f in shown) or "all checks passed"
        perf = " ".join(f"{label}={value:g};{thresholds}" for f in self.findings
                        for label, value, thresholds in f.perf)
        return f"DCB {NAMES[self.status]} - {text}" + (f" | {perf}" if perf else "")

    def to_json(self) -> dict[str, Any]:
        return {"status": NAMES[self.status], "code": self.status, "summary": self.summary(),
                "checked_at": self.checked_at.isoformat(timespec="seconds"),
                "findings": [f.to_json() for f in self.findings]}


def span(seconds: float) -> str:
    """A compact age for one status line: 45s, 12 min, 30.5h, 3.2 days."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f} days"


def replication_lags(cfg: Config, now: datetime) -> list[tuple[str, float | None]]:
    """Per replication destination: how long the newest local data has waited for it
    (services/replicate.py ``DestinationState.lag_seconds``; None: nothing copied yet)."""
    from dcb.services.replicate import destination_states

    out: list[tuple[str, float | None]] = []
    for d in destination_states(cfg, now):
        out.append((d.name, None if d.newest_copy is None else d.lag_seconds))
    return out


def _ts(entry: dict[str, Any]) -> datetime | None:
    for key in ("started_at", "at"):
        v = entry.get(key)
        if isinstance(v, str):
            try:
                t = datetime.fromisoformat(v)
            except ValueError:
                continue
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    return None


def scope_key(entry: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a backup run held (its artifacts' kinds and names): runs compare within a scope."""
    return tuple(sorted((str(a.get("kind")), str(a.get("name")))
                        for a in entry.get("artifacts") or ()))


def _rpo(cfg: Config, sets: Sequence[BackupSet], now: datetime) -> Finding:
    rpo = timedelta(hours=cfg.objectives.rpo_hours)
    good = [s for s in sets if s.status == "complete" and s.purpose == "backup"]
    if not good:
        return Finding("rpo", CRITICAL, f"no complete backup in {cfg.backup_dir}")
    newest = max(s.created_at for s in good)
    age = now - newest
    hours = age.total_seconds() / 3600
    perf = (("backup_age_hours", round(hours, 2), f";{cfg.objectives.rpo_hours:g}"),)
    if age > rpo:
        return Finding("rpo", CRITICAL, f"newest complete backup is "
                       f"{span(age.total_seconds())} old (RPO {cfg.objectives.rpo_hours:g}h)",
                       perf)
    return Finding("rpo", OK, f"newest backup {span(age.total_seconds())} ago", perf)


def _failures(cfg: Config, history: Sequence[dict[str, Any]],
              state: DaemonState | None) -> Finding:
    c = cfg.check
    n, last_error, what = 0, None, "backups"
    for h in reversed([h for h in history if h.get("kind") == "backup"]):
        if h.get("status") == "failed":
            n += 1
            last_error = last_error or h.get("error")
        else:
            break
    if state is not None:
        for j in state.jobs.values():
            if j.name in cfg.schedule.jobs and j.consecutive_failures > n:
                n, last_error, what = j.consecutive_failures, j.last_error, f"job {j.name}"
    perf = (("consecutive_failures", n, f"{c.failures_warning};{c.failures_critical}"),)
    if n < c.failures_warning:
        return Finding("failures", OK, "no recent failures", perf)
    status = CRITICAL if n >= c.failures_critical else WARNING
    err = f": {str(last_error)[:160]}" if last_error else ""
    plural = "failure" if n == 1 else "consecutive failures"
    return Finding("failures", status, f"{n} {plural} of {what}{err}", perf)


def _free_space(cfg: Config, disk: DiskUsage) -> Finding:
    pct = disk.free_percent
    warn, crit = cfg.storage.min_free_percent, cfg.check.min_free_percent
    perf = (("free_percent", round(pct, 1), f"{warn:g};{crit:g}"),)
    text = f"{pct:.0f}% free on the backup disk ({fmt.size(disk.free_bytes)})"
    if pct < crit:
        return Finding("free_space", CRITICAL, text + f", below {crit:g}%", perf)
    if pct < warn:
        return Finding("free_space", WARNING, text + f", below {warn:g}%", perf)
    return Finding("free_space", OK, text, perf)


def _heartbeat(cfg: Config, state: DaemonState | None, now: datetime) -> Finding | None:
    if not cfg.schedule.jobs:
        return None
    stale = timedelta(minutes=cfg.check.heartbeat_stale_minutes)
    if state is None:
        return Finding("heartbeat", CRITICAL, "schedule daemon not running (no heartbeat; "
                       "start `dcb schedule`)")
    if state.stopped:
        return Finding("heartbeat", CRITICAL, f"schedule daemon stopped at {state.updated_at}")
    t = state.updated()
    if t is None or now - t > stale:
        age = span((now - t).total_seconds()) if t else "unknown"
        return Finding("heartbeat", CRITICAL, f"schedule daemon heartbeat is {age} old "
                       f"(stale after {cfg.check.heartbeat_stale_minutes:g} min)")
    return Finding("heartbeat", OK, "schedule daemon alive")


def _anomalies(cfg: Config, history: Sequence[dict[str, Any]]) -> list[Finding]:
    done = [h for h in history if h.get("kind") == "backup" and h.get("status") == "complete"]
    if not done:
        return []
    last = done[-1]
    scope = scope_key(last)
    earlier = [h for h in done[:-1] if scope_key(h) == scope][-cfg.check.baseline_runs:]
    if len(earlier) < 3:
        return []
    out = []
    n = len(earlier)
    durations = [float(h["duration_seconds"]) for h in earlier
                 if isinstance(h.get("duration_seconds"), int | float)]
    d = last.get("duration_seconds")
    f = cfg.check.duration_factor
    if len(durations) >= 3 and isinstance(d, int | float):
        med = statistics.median(durations)
        if med > 0 and d > f * med:
            out.append(Finding("duration", WARNING,
                               f"last backup took {fmt.duration(d)}, {d / med:.1f}x the median "
                               f"{fmt.duration(med)} of the last {n} (limit {f:g}x)"))
        else:
            out.append(Finding("duration", OK, f"last backup took {fmt.duration(d)}"))
    sizes = [int(h["size_bytes"]) for h in earlier if isinstance(h.get("size_bytes"), int)]
    s = last.get("size_bytes")
    f = cfg.check.size_factor
    if len(sizes) >= 3 and isinstance(s, int):
        med = statistics.median(sizes)
        if med > 0 and (s > f * med or s * f < med):
            out.append(Finding("size", WARNING,
                               f"last backup is {fmt.size(s)}, {s / med:.2f}x the median "
                               f"{fmt.size(int(med))} of the last {n} (limit {f:g}x either way)"))
        else:
            out.append(Finding("size", OK, f"last backup is {fmt.size(s)}"))
    return out


def replication_errors(cfg: Config) -> dict[str, str]:
    """Destinations whose last round failed (a full disk, unreachable...): their error, from
    the ledger; a round that succeeds clears it."""
    from dcb.services.replicate import destination_states

    return {d.name: d.last_error for d in destination_states(cfg) if d.last_error}


def _replication(cfg: Config, lags: Sequence[tuple[str, float | None]],
                 errors: dict[str, str] | None = None) -> list[Finding]:
    limit = cfg.check.replication_lag_hours * 3600
    out = []
    for name, lag in lags:
        if errors and name in errors:
            behind = "nothing copied yet" if lag is None else f"lags {span(lag)}"
            out.append(Finding("replication", WARNING, f"replication to {name} failed "
                               f"({behind}): {errors[name][:160]}"))
        elif lag is None:
            out.append(Finding("replication", WARNING, f"nothing replicated to {name} yet"))
        elif lag > limit:
            out.append(Finding("replication", WARNING,
                               f"replication to {name} lags {span(lag)} "
                               f"(limit {cfg.check.replication_lag_hours:g}h)"))
        else:
            out.append(Finding("replication", OK, f"{name} lags {span(lag)}"))
    return out


def _coverage(cfg: Config) -> Finding:
    from dcb.services.coverage import coverage
    from dcb.services.docker_gateway import DockerGateway

    try:
        gw = DockerGateway.connect(cfg.timeouts.docker_api)
        try:
            cov = coverage(cfg, gw)
        finally:
            gw.close()
    except DockerUnavailable as e:
        return Finding("coverage", UNKNOWN, f"coverage not checked: {e.message}")
    gaps = [w for w in cov.warnings if w not in cov.unchecked]
    n = len(cov.unprotected)
    perf = (("unprotected", float(n), "0;"),)
    if gaps:
        return Finding("coverage", WARNING, "; ".join(gaps), perf)
    text = "; ".join(cov.unchecked) or "every database and volume of the stack is backed up"
    return Finding("coverage", OK, text, perf)


def run_check(cfg: Config, now: datetime | None = None, *, heartbeat: bool = True,
              lags: Sequence[tuple[str, float | None]] | None = None,
              with_coverage: bool = True) -> CheckReport:
    """Every condition against the store, the history, the heartbeat and the stack.

    ``heartbeat=False``: the daemon checking itself (its own heartbeat means nothing).
    ``with_coverage=False``: leave the stack alone (no Docker or PostgreSQL call)."""
    now = now or datetime.now(UTC)
    findings: list[Finding] = []
    try:
        sets = BackupStore.for_config(cfg).list_sets()
        history = read_history(cfg.backup_dir)
    except (OSError, DcbError) as e:
        msg = e.message if isinstance(e, DcbError) else (e.strerror or str(e))
        return CheckReport((Finding("store", UNKNOWN,
                                    f"cannot read the backup dir {cfg.backup_dir}: {msg}"),), now)
    state = read_state(cfg.backup_dir)
    findings.append(_rpo(cfg, sets, now))
    findings.append(_failures(cfg, history, state))
    try:
        findings.append(_free_space(cfg, disk_usage(cfg.backup_dir)))
    except OSError as e:
        findings.append(Finding("free_space", UNKNOWN, f"free space unknown: {e.strerror}"))
    if heartbeat:
        hb = _heartbeat(cfg, state, now)
        if hb is not None:
            findings.append(hb)
    findings.extend(_anomalies(cfg, history))
    findings.extend(_replication(cfg, replication_lags(cfg, now), replication_errors(cfg))
                    if lags is None else _replication(cfg, lags))
    findings.extend(_left_behind(cfg))
    if with_coverage:
        findings.append(_coverage(cfg))
    return CheckReport(tuple(findings), now)


def _left_behind(cfg: Config) -> list[Finding]:
    """What a killed run left and the next run will fix, said loudly until then."""
    from dcb.services.permissions import lax_modes
    from dcb.services.state import state_for
    from dcb.services.stopped import StoppedLedger

    out = [Finding("stopped", CRITICAL,
                   f"{name} was stopped by an interrupted dcb {by} and not started again")
           for name, by in StoppedLedger(state_for(cfg).root).pending().items()]
    lax = lax_modes(cfg.backup_dir)
    if lax:
        out.append(Finding("permissions", WARNING, lax))
    return out


def history_times(history: Sequence[dict[str, Any]]) -> list[datetime | None]:
    """Each entry's time (``started_at`` or ``at``), for callers that sort or window."""
    return [_ts(h) for h in history]
