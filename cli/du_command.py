"""``dcb du [PATH]``: disk usage of the backup dir (or PATH), like ``du -x`` / ncdu, headless."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TextIO

from dcb.cli.commands import AddCommand
from dcb.cli.render import print_json, table
from dcb.services import formatting as fmt
from dcb.services.config import Config
from dcb.services.docker_df import KIND_WORDS, DockerReport, collect_report
from dcb.services.docker_gateway import DockerGateway
from dcb.services.du import DuNode, ScanProgress, bar, display_name, percent, scan, sorted_children
from dcb.services.du import to_json as du_json
from dcb.services.errors import UsageError

TOP = 20
"""Without --all, each listed directory shows its this many largest entries."""
BAR_WIDTH = 10


def register(add: AddCommand) -> None:
    p = add("du", "disk usage of the backup dir (or PATH), largest first", cmd_du,
            "Scan PATH (default: the backup dir) like `du -x`: symlinks are not followed, "
            "other filesystems are not entered, a hard-linked file counts once. Sizes are "
            "disk usage (blocks) unless --apparent. Lists the entries of PATH, largest first, "
            "with a bar proportional to the largest entry, the share of the total and the "
            "number of files below, then the totals. Unreadable entries are reported (exit 1 "
            "when there were any).\n\n"
            "--depth N lists N levels (text: nested, indented; default 1). --json prints the "
            "tree to the same --depth (default 1; 0 is the totals alone); every entry has "
            "name, path, type, size_bytes, apparent_bytes, file_count, dir_count, error, "
            "and directories within the depth have children, largest first.\n\n"
            "--docker reports what Docker keeps on disk instead, like `docker system df -v`: "
            "per kind (images, containers' writable layers, volumes, build cache, container "
            "logs) the count, size and what is reclaimable, then every item largest first "
            "(images by unique size) with its state and whether the configured stack needs "
            "it or dcb backs it up. Log sizes need dcb to run as root beside the engine "
            "(else: unknown). --json prints kinds and items (every field) for scripts.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="directory to scan (default: the configured backup dir)")
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.add_argument("--docker", action="store_true",
                   help="Docker's disk usage by kind and item instead of a directory")
    p.add_argument("--depth", type=_depth, default=None, metavar="N",
                   help="levels to list (default 1; 0: totals only)")
    p.add_argument("--all", action="store_true",
                   help=f"list every entry (default: the {TOP} largest of each directory)")
    p.add_argument("--apparent", action="store_true",
                   help="sort and show apparent sizes (st_size) instead of disk usage")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _depth(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid depth {value!r}: expected 0 or more") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid depth {n}: expected 0 or more")
    return n


class _LiveLine:
    """Scan progress as one live line on stderr, only when stderr is a terminal."""

    def __init__(self, out: TextIO, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled and out.isatty()
        self._drawn = False

    def __call__(self, p: ScanProgress) -> None:
        if not self.enabled or p.done:
            return
        line = (f"scanning: {p.files:,} files, {p.dirs:,} dirs, {fmt.size(p.size_bytes)} "
                f"({p.elapsed:.0f}s) ")
        # One terminal line, or the next \r would not clear it: the path's tail fits the rest.
        room = shutil.get_terminal_size().columns - 1 - len(line)
        where = p.current if len(p.current) <= room else "..." + p.current[-max(room - 3, 0):]
        self.out.write("\r\x1b[2K" + (line + where)[:max(room + len(line), 0)])
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[2K")
            self.out.flush()


def cmd_du(args: argparse.Namespace, cfg: Config) -> int:
    if args.docker:
        return _docker(args, cfg)
    if args.depth is None:
        args.depth = 1
    if args.path == "":
        raise UsageError("PATH must not be empty")
    path = Path(args.path).expanduser() if args.path else cfg.backup_dir
    live = _LiveLine(sys.stderr, not args.quiet)
    try:
        root = scan(path, on_progress=live)
    finally:
        live.close()
    if args.json:
        print_json(du_json(root, args.depth, args.apparent), sys.stdout)
    else:
        print(du_text(root, depth=args.depth, limit=None if args.all else TOP,
                      apparent=args.apparent))
    if root.error_count:
        sys.stderr.write(f"dcb: du: {root.error_count} entries could not be read"
                         + (" (see the error fields)" if args.json else "") + "\n")
        return 1
    return 0


def du_text(root: DuNode, depth: int = 1, limit: int | None = TOP,
            apparent: bool = False) -> str:
    """The listing: a table of entries, largest first (nested to ``depth``), then totals."""
    rows: list[list[str]] = []
    _rows(root, rows, depth, limit, apparent, indent=0)
    out: list[str] = []
    if rows:
        headers = ["SIZE", "", "%", "FILES", "NAME"]
        for col in (0, 2, 3):  # numbers right-aligned, headers over them
            width = max(len(headers[col]), *(len(r[col]) for r in rows))
            headers[col] = headers[col].rjust(width)
            for r in rows:
                r[col] = r[col].rjust(width)
        out += [table(rows, headers), ""]
    elif depth > 0 and root.error is None:
        out += ["(empty directory)", ""]
    kind = "apparent size" if apparent else "on disk"
    other = (f"{fmt.size(root.size_bytes)} on disk" if apparent
             else f"{fmt.size(root.apparent_bytes)} apparent")
    out.append(f"total {fmt.size(root.size(apparent))} {kind} ({other}), "
               f"{root.file_count:,} files, {root.dir_count:,} dirs  {root.path}")
    if root.error:
        out.append(f"error: {root.path}: {root.error}")
    return "\n".join(out)


def _rows(node: DuNode, rows: list[list[str]], depth: int, limit: int | None, apparent: bool,
          indent: int) -> None:
    if depth <= 0:
        return
    children = sorted_children(node, apparent)
    shown = children if limit is None else children[:limit]
    largest = max((c.size(apparent) for c in children), default=0)
    total = node.size(apparent)
    for c in shown:
        size = c.size(apparent)
        note = ""
        if c.error:
            note = f"  [error: {c.error}]"
        elif c.excluded:
            note = f"  [{c.excluded}, not counted]"
        elif c.duplicate_link:
            note = "  [hard link, counted elsewhere]"
        rows.append([fmt.size(size), bar(size / largest if largest else 0, BAR_WIDTH),
                     percent(size, total),
                     f"{c.file_count:,}" if c.is_dir else "",
                     "  " * indent + display_name(c) + note])
        if c.is_dir:
            _rows(c, rows, depth - 1, limit, apparent, indent + 1)
    hidden = children[len(shown):]
    if hidden:
        rest = sum(c.size(apparent) for c in hidden)
        rows.append([fmt.size(rest), "", percent(rest, total), "",
                     "  " * indent + f"... {len(hidden):,} more (--all lists them)"])


def _docker(args: argparse.Namespace, cfg: Config) -> int:
    for given, flag in ((args.path is not None, "PATH"), (args.depth is not None, "--depth"),
                        (args.apparent, "--apparent")):
        if given:
            raise UsageError(f"--docker takes no {flag}: it reports Docker's disk usage")
    gw = DockerGateway.connect(timeout=60)
    try:
        report = collect_report(cfg, gw)
    finally:
        gw.close()
    if args.json:
        print_json(report.to_json(), sys.stdout)
    else:
        print(docker_text(report, limit=None if args.all else TOP))
    return 0


def docker_text(report: DockerReport, limit: int | None = TOP) -> str:
    """The kinds like ``docker system df``, then the items largest first."""
    krows = [[k.label, f"{k.count:,}", f"{k.active:,}",
              fmt.size(k.size_bytes) + (f" (+{k.unknown} unknown)" if k.unknown else ""),
              f"{fmt.size(k.reclaimable_bytes)} ({percent(k.reclaimable_bytes, k.size_bytes)})"]
             for k in report.kinds]
    headers = ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    _right(krows, headers, (1, 2))
    out = [table(krows, headers), ""]
    items = report.items()
    shown = items if limit is None else items[:limit]
    irows = [[fmt.size(i.size_bytes) if i.size_bytes is not None else "unknown",
              fmt.size(i.reclaimable_bytes) if i.reclaimable_bytes else "-",
              KIND_WORDS[i.kind], i.name, i.note()] for i in shown]
    if irows:
        headers = ["SIZE", "RECLAIMABLE", "KIND", "NAME", "NOTES"]
        _right(irows, headers, (0, 1))
        out.append(table(irows, headers))
    else:
        out.append("(Docker keeps nothing on disk)")
    if len(items) > len(shown):
        rest = sum(i.size_bytes or 0 for i in items[len(shown):])
        out.append(f"... {len(items) - len(shown):,} more, {fmt.size(rest)} (--all lists them)")
    out += ["", f"total {fmt.size(report.total_bytes)}, reclaimable "
                f"{fmt.size(report.reclaimable_bytes)}  (Docker root {report.docker_root})",
            "images are ranked by unique size (shared layers count once, in the Images line); "
            "\"stack\": the configured stack needs it; \"backup\": dcb backs it up; "
            "dcb never deletes volumes"]
    out += [f"note: {n}" for n in report.notes]
    return "\n".join(out)


def _right(rows: list[list[str]], headers: list[str], cols: tuple[int, ...]) -> None:
    """Right-align the number columns ``cols`` (headers over them)."""
    for col in cols:
        width = max(len(headers[col]), *(len(r[col]) for r in rows)) if rows else 0
        headers[col] = headers[col].rjust(width)
        for r in rows:
            r[col] = r[col].rjust(width)
