"""A synthetic backup store for the health check, metrics and the history screen: set
manifests and history lines written directly, relative to a given time. No Docker."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dcb.services.store import MANIFEST, MANIFEST_VERSION

MiB = 1024**2


@dataclass
class Run:
    hours_ago: float
    status: str = "complete"
    seconds: float = 60.0
    size: int = 100 * MiB
    error: str = ""
    artifacts: Sequence[tuple[str, str]] = (("database", "dart_cloud"),
                                            ("volume", "functions_data"))
    purpose: str = "backup"
    extra: dict[str, Any] = field(default_factory=dict)


def write_runs(root: Path, now: datetime, runs: Sequence[Run],
               others: Sequence[dict[str, Any]] = ()) -> None:
    """Sets and history for ``runs`` (oldest first in the history), plus ``others`` history
    entries appended after them. Private modes, as dcb writes them (a store open to others
    is a finding of its own)."""
    old = os.umask(0o077)
    try:
        _write_runs(root, now, runs, others)
    finally:
        os.umask(old)


def _write_runs(root: Path, now: datetime, runs: Sequence[Run],
                others: Sequence[dict[str, Any]]) -> None:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = []
    for r in sorted(runs, key=lambda r: -r.hours_ago):
        when = now - timedelta(hours=r.hours_ago)
        sid = when.strftime("%Y%m%dT%H%M%SZ")
        d = root / sid
        d.mkdir(exist_ok=True)
        per = r.size // max(1, len(r.artifacts))
        arts = [] if r.status == "failed" else [
            {"kind": k, "name": n, "file": f"{k}-{n}", "size_bytes": per, "sha256": "0" * 64,
             "compression": "none", "source": {"seconds": r.seconds / len(r.artifacts)}}
            for k, n in r.artifacts]
        manifest = {"manifest_version": MANIFEST_VERSION, "id": sid, "status": r.status,
                    "purpose": r.purpose, "created_at": when.isoformat(),
                    "duration_seconds": r.seconds, "artifacts": arts,
                    **({"error": r.error} if r.error else {})}
        (d / MANIFEST).write_text(json.dumps(manifest))
        entry: dict[str, Any] = {"kind": "backup", "id": sid, "status": r.status,
                                 "started_at": when.isoformat(), "duration_seconds": r.seconds,
                                 **r.extra}
        if r.status == "complete":
            entry["size_bytes"] = per * len(r.artifacts)
            entry["artifacts"] = [{"kind": a["kind"], "name": a["name"],
                                   "size_bytes": a["size_bytes"]} for a in arts]
        else:
            entry["error"] = r.error or "pg_dump failed"
        lines.append(json.dumps(entry))
    lines += [json.dumps(o) for o in others]
    with (root / "history.jsonl").open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def steady_runs(n: int = 10, every_hours: float = 24.0, start_hours: float = 1.0,
                seconds: float = 60.0, size: int = 100 * MiB) -> list[Run]:
    """``n`` similar complete runs, the newest ``start_hours`` ago."""
    return [Run(start_hours + i * every_hours, seconds=seconds + (i % 3),
                size=size + (i % 4) * MiB) for i in range(n)]
