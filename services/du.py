"""Disk usage of a directory tree, like ``du -x`` / ncdu: the model behind ``dcb du`` and the
console's disk-usage browser.

``scan`` walks the tree with ``os.scandir``: symlinks are never followed (a link counts as
itself), directories on another filesystem are listed but not entered or counted (``du -x``),
a file with several hard links is counted once (where it is met first; later links are listed
with zero size and ``duplicate_link``), disk usage is ``st_blocks * 512`` and apparent size is
``st_size``. Each directory's own size counts, as with ``du``. Errors below the root (an
unreadable directory, an entry that vanished) are recorded on the node and counted, never
raised.

Progressive use: the tree is built in place while the scan runs and every ``ScanProgress``
carries the live root, so a front end can show the partial tree (sizes are added to every
ancestor as each entry is met, so partial totals are always consistent sums). Nodes are
mutated only by the scanning thread; readers in other threads should iterate a copy of
``children`` (``sorted_children`` does) and accept that numbers move while the scan runs.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dcb.services.errors import Cancelled, NotFound, UsageError

OTHER_FILESYSTEM = "other filesystem"
_CHECK_EVERY = 4096
"""Within one huge directory, look at the clock and the cancel event every this many entries."""


@dataclass(slots=True, eq=False)
class DuNode:
    """One entry of the tree. A directory's numbers include everything below it and itself."""

    name: str
    path: str
    is_dir: bool
    size_bytes: int = 0
    """Disk usage (``st_blocks * 512``)."""
    apparent_bytes: int = 0
    """Apparent size (``st_size``)."""
    file_count: int = 0
    """Non-directories at or below this node (a file counts itself; duplicate links don't)."""
    dir_count: int = 0
    """Directories below this node (not itself)."""
    error: str | None = None
    """Why this entry could not be read (e.g. ``Permission denied``), if it could not."""
    error_count: int = 0
    """Entries at or below this node with an ``error``."""
    is_link: bool = False
    """A symbolic link (never followed)."""
    duplicate_link: bool = False
    """A hard link to a file already counted elsewhere in the tree: listed with zero size."""
    excluded: str | None = None
    """Why the entry was not entered or counted (``other filesystem``)."""
    children: list[DuNode] = field(default_factory=list, repr=False)

    @property
    def item_count(self) -> int:
        """Files and directories below (ncdu's item count)."""
        return self.file_count + self.dir_count

    def size(self, apparent: bool = False) -> int:
        return self.apparent_bytes if apparent else self.size_bytes

    def child(self, name: str) -> DuNode | None:
        for c in list(self.children):
            if c.name == name:
                return c
        return None


@dataclass(frozen=True)
class ScanProgress:
    """Counts so far, emitted at most every ``interval`` seconds and once at the end."""

    root: DuNode
    """The live tree being built (mutable; see the module docstring)."""
    current: str
    """The directory just listed."""
    files: int
    dirs: int
    size_bytes: int
    apparent_bytes: int
    errors: int
    elapsed: float
    done: bool = False


ProgressCallback = Callable[[ScanProgress], None]


def scan(path: str | os.PathLike[str], on_progress: ProgressCallback | None = None,
         cancel: threading.Event | None = None, interval: float = 0.2,
         one_file_system: bool = True) -> DuNode:
    """Scan ``path`` and return its tree.

    ``path`` itself is followed if it is a symlink (like ``du -H``). ``on_progress`` is called
    in the scanning thread, after each directory is listed, at most every ``interval`` seconds
    (``interval <= 0``: after every directory), and always once with ``done=True``.

    Raises ``NotFound`` if ``path`` does not exist, ``UsageError`` if it is not a directory,
    ``Cancelled`` when ``cancel`` is set (checked between directories and every few thousand
    entries).
    """
    return _Scanner(path, on_progress, cancel, interval, one_file_system).run()


class _Scanner:
    def __init__(self, path: str | os.PathLike[str], on_progress: ProgressCallback | None,
                 cancel: threading.Event | None, interval: float,
                 one_file_system: bool) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.on_progress = on_progress
        self.cancel = cancel
        self.interval = interval
        self.one_file_system = one_file_system
        self.seen_inodes: set[tuple[int, int]] = set()
        self.started = time.monotonic()
        self._last_emit: float | None = None
        self.root = DuNode(os.path.basename(self.path.rstrip(os.sep)) or self.path, self.path,
                           True)

    def run(self) -> DuNode:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise NotFound(f"{self.path}: no such directory") from None
        except NotADirectoryError:
            raise NotFound(f"{self.path}: no such directory",
                           hint="a component of the path is not a directory") from None
        except OSError as e:
            raise UsageError(f"{self.path}: cannot read: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{self.path}: not a directory")
        root = self.root
        root.size_bytes = st.st_blocks * 512
        root.apparent_bytes = st.st_size
        dev = st.st_dev
        # Depth-first with an explicit stack (no recursion limit): (directory, its ancestors).
        pending: list[tuple[DuNode, tuple[DuNode, ...]]] = [(root, ())]
        while pending:
            self._check_cancel()
            node, ancestors = pending.pop()
            chain = (*ancestors, node)
            subdirs = self._list(node, chain, dev)
            self._tick(node.path)
            pending.extend((d, chain) for d in reversed(subdirs))
        self._emit(self.root.path, done=True)
        return root

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.path}: disk-usage scan cancelled")

    def _list(self, node: DuNode, chain: tuple[DuNode, ...], dev: int) -> list[DuNode]:
        """Add ``node``'s entries (sizes added along ``chain``); return its subdirectories."""
        subdirs: list[DuNode] = []
        try:
            with os.scandir(node.path) as it:
                for n, entry in enumerate(it, 1):
                    child = self._entry(entry, dev)
                    node.children.append(child)
                    _add(chain, child)
                    if child.is_dir and child.error is None and child.excluded is None:
                        subdirs.append(child)
                    if n % _CHECK_EVERY == 0:
                        self._check_cancel()
                        self._tick(node.path)
        except OSError as e:
            node.error = e.strerror or type(e).__name__
            for a in chain:
                a.error_count += 1
        return subdirs

    def _entry(self, entry: os.DirEntry[str], dev: int) -> DuNode:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            return DuNode(entry.name, entry.path, is_dir, error=e.strerror or type(e).__name__,
                          error_count=1)
        mode = st.st_mode
        is_dir = stat.S_ISDIR(mode)
        child = DuNode(entry.name, entry.path, is_dir, is_link=stat.S_ISLNK(mode))
        if self.one_file_system and st.st_dev != dev:
            child.excluded = OTHER_FILESYSTEM
            return child
        if not is_dir and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen_inodes:
                child.duplicate_link = True
                return child
            self.seen_inodes.add(key)
        child.size_bytes = st.st_blocks * 512
        child.apparent_bytes = st.st_size
        if not is_dir:
            child.file_count = 1
        return child

    def _tick(self, current: str) -> None:
        now = time.monotonic()
        if self._last_emit is None or self.interval <= 0 or now - self._last_emit >= self.interval:
            self._emit(current)

    def _emit(self, current: str, done: bool = False) -> None:
        self._last_emit = time.monotonic()
        if self.on_progress is None:
            return
        r = self.root
        self.on_progress(ScanProgress(
            root=r, current=current, files=r.file_count, dirs=r.dir_count,
            size_bytes=r.size_bytes, apparent_bytes=r.apparent_bytes, errors=r.error_count,
            elapsed=self._last_emit - self.started, done=done))


def _add(chain: tuple[DuNode, ...], child: DuNode) -> None:
    counted_dir = 1 if child.is_dir and child.excluded is None else 0
    for a in chain:
        a.size_bytes += child.size_bytes
        a.apparent_bytes += child.apparent_bytes
        a.file_count += child.file_count
        a.dir_count += counted_dir
        a.error_count += child.error_count


def sorted_children(node: DuNode, apparent: bool = False) -> list[DuNode]:
    """``node``'s children, largest first (ties: directories first, then by name).

    Safe to call while a scan is filling ``node`` in another thread (works on a copy).
    """
    return sorted(list(node.children),
                  key=lambda c: (-c.size(apparent), not c.is_dir, c.name))


def to_json(node: DuNode, depth: int | None = None, apparent: bool = False) -> dict[str, Any]:
    """``node`` as JSON-ready dicts, children largest first.

    ``depth``: levels of children to include (0: the node alone, 1: with its children,
    None: the whole tree). A directory whose children were cut off has no ``children`` key.
    """
    out: dict[str, Any] = {
        "name": node.name,
        "path": node.path,
        "type": "dir" if node.is_dir else ("symlink" if node.is_link else "file"),
        "size_bytes": node.size_bytes,
        "apparent_bytes": node.apparent_bytes,
        "file_count": node.file_count,
        "dir_count": node.dir_count,
        "error": node.error,
        "error_count": node.error_count,
    }
    if node.duplicate_link:
        out["duplicate_link"] = True
    if node.excluded:
        out["excluded"] = node.excluded
    if node.is_dir and node.excluded is None and (depth is None or depth > 0):
        sub = None if depth is None else depth - 1
        out["children"] = [to_json(c, sub, apparent) for c in sorted_children(node, apparent)]
    return out


BAR_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int = 10) -> str:
    """A bar of ``width`` cells filled to ``fraction`` (0-1) with eighth-block precision."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, rest = divmod(eighths, 8)
    text = "█" * full + (BAR_BLOCKS[rest] if rest else "")
    return text.ljust(width)


def percent(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, e.g. ``42.0%``."""
    return f"{100 * part / whole:.1f}%" if whole else "0.0%"


def display_name(node: DuNode) -> str:
    """The entry's name as listed: directories end in ``/``, symlinks in ``@`` (like ncdu)."""
    if node.is_dir:
        return node.name + "/"
    if node.is_link:
        return node.name + "@"
    return node.name


__all__ = ["DuNode", "ScanProgress", "bar", "display_name", "percent", "scan", "sorted_children",
           "to_json"]
