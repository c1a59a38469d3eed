"""Who else may read the backup store. dcb creates everything 0700/0600 whatever the umask,
but a backup dir made by hand, restored from elsewhere or copied with ``cp -r`` may be open to
the group or to everyone: dumps hold every row and password hash of the database, so that is
reported (``dcb status``, ``dcb check``), never silently accepted or silently changed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

SCAN_LIMIT = 2000
"""Entries looked at (the dir, its sets and their files): enough for any real store, cheap."""


def lax_modes(root: Path, shown: int = 3) -> str | None:
    """One line naming what in ``root`` group or others may read (files) or change
    (directories), or None."""
    found: list[str] = []
    n_found = seen = 0

    def look(path: Path, st: os.stat_result) -> None:
        nonlocal n_found
        # A file others may read, or a directory others may change: a directory that only
        # lists names (0755, as Docker creates a bind mount's) exposes no data.
        lax = 0o022 if stat.S_ISDIR(st.st_mode) else 0o077
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & lax:
            return
        n_found += 1
        if len(found) < shown:
            found.append(f"{path} ({stat.filemode(st.st_mode)})")

    try:
        look(root, root.lstat())
        with os.scandir(root) as top:
            for entry in top:
                seen += 1
                if seen > SCAN_LIMIT:
                    break
                st = entry.stat(follow_symlinks=False)
                look(Path(entry.path), st)
                if stat.S_ISDIR(st.st_mode):
                    with os.scandir(entry.path) as inner:
                        for sub in inner:
                            seen += 1
                            if seen > SCAN_LIMIT:
                                break
                            look(Path(sub.path), sub.stat(follow_symlinks=False))
    except OSError:
        pass  # an unreadable or missing store is reported elsewhere
    if not n_found:
        return None
    more = f" and {n_found - len(found)} more" if n_found > len(found) else ""
    return (f"the backup store is open to other users: {', '.join(found)}{more}; "
            f"fix with `chmod -R go-rwx {root}`")
