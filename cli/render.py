"""Plain-text rendering of service results for the terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from dcb.services import formatting as fmt
from dcb.services.coverage import Coverage
from dcb.services.status import StackStatus


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def print_json(data: Any, out: TextIO = sys.stdout) -> None:
    json.dump(data, out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def status_text(st: StackStatus) -> str:
    now = st.collected_at
    crows = []
    for c in st.containers:
        if c.info is None:
            crows.append([c.name, c.role, "MISSING", "-", "-", "-"])
        else:
            crows.append([c.name, c.role, c.info.state, c.info.health or "-", c.info.image,
                          fmt.uptime(c.info.uptime_seconds(now))])
    vrows = [
        [v.name, fmt.size(v.size_bytes) if v.exists else "MISSING", ", ".join(v.used_by) or "-"]
        for v in st.volumes
    ]
    d = st.disk
    out = [
        table(crows, ["CONTAINER", "ROLE", "STATE", "HEALTH", "IMAGE", "UPTIME"]),
        "",
        table(vrows, ["VOLUME", "SIZE", "USED BY"]),
        "",
        f"Backup dir  {st.backup_dir}",
        f"Disk        {fmt.size(d.used_bytes)} used, {fmt.size(d.free_bytes)} free of "
        f"{fmt.size(d.total_bytes)} ({d.free_percent:.0f}% free)",
    ]
    b = st.backups
    if b.count == 0:
        out.append("Backups     no backups yet")
    else:
        out.append(f"Backups     {b.count} sets; newest {b.newest_id} "
                   f"({fmt.age(b.newest_created_at, now)})")
    if st.coverage is not None:
        out.append(f"Coverage    {coverage_summary(st.coverage)}")
    out += [f"WARNING     {w}" for w in st.warnings]
    if st.undo_points:
        out += ["", table([[u.restore_id, u.state, fmt.size(u.held_bytes), u.keeps,
                            u.expires_at[:16].replace("T", " ") if u.expires_at else "-",
                            u.command] for u in st.undo_points],
                          ["UNDO POINT", "STATE", "HOLDS", "KEEPS", "RELEASED AFTER",
                           "COMMAND"])]
    return "\n".join(out)


def coverage_summary(cov: Coverage) -> str:
    """``2 databases, 2 volumes protected; 1 excluded; 1 unprotected``."""
    def count(kind: str, state: str) -> int:
        return sum(1 for i in cov.items if i.kind == kind and i.state == state)

    def n(k: int, word: str) -> str:
        return f"{k} {word}{'' if k == 1 else 's'}"

    dbs = n(count('database', 'protected'), 'database') if cov.databases else \
        "databases not checked"
    parts = [f"{dbs}, {n(count('volume', 'protected'), 'volume')} protected"]
    for state in ("excluded", "unprotected", "missing"):
        k = sum(1 for i in cov.items if i.state == state)
        if k:
            parts.append(f"{k} {state}")
    if cov.writers:
        parts.append(f"{len({w.volume for w in cov.writers})} may be inconsistent")
    return "; ".join(parts)
