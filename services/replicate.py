"""Replication: copy complete sets to every ``[replication.NAME]`` destination, verified,
recorded, pruned per destination; and the way back (``--from``): list, fetch and verify a copy.

The engine only talks to the ``Destination`` interface (services/destinations/). What was
copied where, and when, is recorded in the ledger ``replication.json`` of the state dir (the
backup dir unless it is read-only); the manifests stay as the backup wrote them. One
destination failing is recorded as its last error and leaves the others going. After a
round, each destination's own retention runs (its ``keep_*``, else ``[retention]``) and never
removes its newest verified copy.

A set fetched from a destination is untrusted input: its manifest must parse and name the set
asked for, every file must be a plain name, every byte must match the manifest's size and
SHA-256 before the set is used, and it lands in a cache directory under its final name only
then (``.fetched/<destination>/<id>`` in the state dir).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dcb.services.artifacts import atomic_write_bytes, fsync_dir, sha256_file
from dcb.services.config import Config
from dcb.services.destinations import Destination, DestinationError, open_destination
from dcb.services.destinations.base import (
    MAX_MANIFEST_BYTES,
    SetFile,
    Transfer,
    safe_file_name,
)
from dcb.services.errors import Cancelled, DcbError, NotFound, UsageError
from dcb.services.lock import StoreLock
from dcb.services.progress import (
    ByteMeter,
    LogLine,
    Reporter,
    StageFailed,
    StageFinished,
    StageStarted,
    locked,
    null_reporter,
)
from dcb.services.retention import plan as retention_plan
from dcb.services.state import state_for
from dcb.services.store import (
    DIR_MODE,
    MANIFEST,
    SET_ID_RE,
    Artifact,
    BackupSet,
    BackupStore,
    parse_set_id,
    read_manifest,
)

LEDGER = "replication.json"
REPLICATE_LOCK = ".replicate.lock"
FETCH_DIR = ".fetched"


# -- the ledger --------------------------------------------------------------------------------
class Ledger:
    """``replication.json``: per destination, each set copied and when; the last error."""

    def __init__(self, root: Path) -> None:
        self.path = root / LEDGER

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _update(self, dest: str, change: Any) -> None:
        data = self.load()
        d = data.setdefault("destinations", {}).setdefault(dest, {})
        d.setdefault("sets", {})
        change(d)
        atomic_write_bytes(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def record(self, dest: str, s: BackupSet, size: int, seconds: float) -> None:
        now = _now_iso()
        items = sorted({(a.kind, a.name) for a in s.artifacts})

        def change(d: dict[str, Any]) -> None:
            d["sets"][s.id] = {"at": now, "bytes": size, "seconds": round(seconds, 3),
                               "items": [list(i) for i in items]}
            d["last_ok_at"] = now
            d.pop("last_error", None)

        self._update(dest, change)

    def error(self, dest: str, message: str) -> None:
        self._update(dest, lambda d: d.update(last_error={"at": _now_iso(), "error": message}))

    def ok(self, dest: str) -> None:
        def change(d: dict[str, Any]) -> None:
            d["last_ok_at"] = _now_iso()
            d.pop("last_error", None)

        self._update(dest, change)

    def forget(self, dest: str, set_ids: Sequence[str]) -> None:
        self._update(dest, lambda d: [d["sets"].pop(i, None) for i in set_ids])

    def sync(self, dest: str, present: Sequence[str]) -> None:
        """Align with a destination's listing: copies that vanished are forgotten."""
        keep = set(present)
        self._update(dest, lambda d: [d["sets"].pop(i) for i in list(d["sets"])
                                      if i not in keep])

    def copies(self, dest: str) -> dict[str, dict[str, Any]]:
        d = self.load().get("destinations", {}).get(dest, {})
        sets = d.get("sets", {})
        return sets if isinstance(sets, dict) else {}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- state and lag (no network: from the ledger) --------------------------------------------
@dataclass(frozen=True)
class DestinationState:
    name: str
    type: str
    where: str
    newest_copy: str | None
    newest_copy_at: str | None
    lag_seconds: float | None
    """How long the newest local data has waited: the age of the oldest local complete set
    newer than the destination's newest copy (0: up to date; None: no local set)."""
    pending: int
    """Local complete sets newer than the newest copy, not yet at the destination."""
    last_error: str | None = None
    last_error_at: str | None = None
    last_ok_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "where": self.where,
                "newest_copy": self.newest_copy, "newest_copy_at": self.newest_copy_at,
                "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds),
                "pending": self.pending, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "last_ok_at": self.last_ok_at}


def replicable(sets: Sequence[BackupSet]) -> list[BackupSet]:
    """What ``--all`` copies: complete backups (not legacy sets, not safety snapshots)."""
    return [s for s in sets if s.status == "complete" and s.purpose == "backup"]


def _where(cfg: Config, name: str) -> str:
    d = cfg.replication.destinations[name]
    if d.type == "s3":
        import socket

        return f"s3://{d.bucket}/{(d.prefix or socket.gethostname()).strip('/')}/"
    if d.type == "rsync":
        return f"{d.user + '@' if d.user else ''}{d.host}:{d.path}"
    if d.type == "local":
        return str(cfg.resolve_path(d.path))
    return " ".join(d.command)[:60]


def destination_lag(cfg: Config, name: str, now: datetime | None = None,
                    sets: Sequence[BackupSet] | None = None) -> DestinationState:
    """One destination's replication state and lag, from the ledger (no network)."""
    if name not in cfg.replication.destinations:
        raise UsageError(f"no destination {name!r} in [replication]")
    now = now or datetime.now(UTC)
    local = replicable(sets if sets is not None
                       else BackupStore.for_config(cfg).list_sets())
    data = Ledger(state_for(cfg).root).load().get("destinations", {}).get(name, {})
    copies: dict[str, Any] = data.get("sets", {}) or {}
    newest = max(copies, default=None)
    newest_at = parse_set_id(newest) if newest else None
    pending = [s for s in local if s.id not in copies
               and (newest_at is None or s.created_at > newest_at)]
    if not local:
        lag = None
    elif pending:
        lag = max(0.0, (now - min(s.created_at for s in pending)).total_seconds())
    else:
        lag = 0.0
    err = data.get("last_error") or {}
    return DestinationState(
        name=name, type=cfg.replication.destinations[name].type, where=_where(cfg, name),
        newest_copy=newest, newest_copy_at=copies[newest].get("at") if newest else None,
        lag_seconds=lag, pending=len(pending), last_error=err.get("error"),
        last_error_at=err.get("at"), last_ok_at=data.get("last_ok_at"))


def destination_states(cfg: Config, now: datetime | None = None,
                       sets: Sequence[BackupSet] | None = None) -> list[DestinationState]:
    if not cfg.replication.destinations:
        return []
    if sets is None:
        sets = BackupStore.for_config(cfg).list_sets()
    return [destination_lag(cfg, n, now, sets) for n in cfg.replication.destinations]


def replicated_summary(cfg: Config) -> dict[str, list[str]]:
    """Set id -> the destinations holding a copy (from the ledger), for the console."""
    out: dict[str, list[str]] = {}
    data = Ledger(state_for(cfg).root).load().get("destinations", {})
    for name in cfg.replication.destinations:
        for set_id in (data.get(name, {}).get("sets") or {}):
            out.setdefault(set_id, []).append(name)
    return out


# -- replicate ----------------------------------------------------------------------------------
@dataclass
class DestinationResult:
    name: str
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    error: str | None = None
    bytes: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"destination": self.name, "copied": self.copied, "skipped": self.skipped,
                "pruned": self.pruned, "error": self.error, "bytes": self.bytes,
                "seconds": round(self.seconds, 3)}


@dataclass
class ReplicationResult:
    destinations: list[DestinationResult]

    @property
    def ok(self) -> bool:
        return all(d.error is None for d in self.destinations)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "destinations": [d.to_json() for d in self.destinations]}


def _replicate_lock(root: Path) -> StoreLock:
    lock = StoreLock(root, "dcb replicate")
    lock.path = root / REPLICATE_LOCK
    return lock


def set_files(s: BackupSet) -> list[SetFile]:
    files = []
    for a in s.artifacts:
        if not safe_file_name(a.file):
            raise DcbError(f"set {s.id}: artifact name {a.file!r} cannot be replicated")
        files.append(SetFile(a.file, a.size_bytes, a.sha256))
    size, digest = sha256_file(s.path / MANIFEST)
    files.append(SetFile(MANIFEST, size, digest))
    return files


def replicate(cfg: Config, set_ids: Sequence[str] | None = None,
              to: Sequence[str] | None = None, *, prune: bool = True,
              reporter: Reporter = null_reporter,
              cancel: threading.Event | None = None) -> ReplicationResult:
    """Copy sets (``set_ids``, or every complete backup) to destinations (``to``, or all).

    Raises only for bad input (no destinations, unknown set); a destination that fails is
    reported in the result (and the ledger) and the others go on."""
    report = locked(reporter)
    cancel = cancel or threading.Event()
    names = list(to) if to else list(cfg.replication.destinations)
    if not names:
        raise UsageError("no destinations configured",
                         hint="add a [replication.NAME] table (see dcb.example.toml)")
    for n in names:
        if n not in cfg.replication.destinations:
            raise UsageError(f"no destination {n!r} in [replication]",
                             hint="configured: " + ", ".join(cfg.replication.destinations))
    root = cfg.backup_dir
    # The ledger, the lock and the history live in the state dir: the store itself may be
    # a read-only mount (a dead host's disk) and still be replicated from.
    state = state_for(cfg)
    store = BackupStore.for_config(cfg)
    all_sets = store.list_sets()
    if set_ids:
        by_id = {s.id: s for s in all_sets}
        chosen = []
        for i in set_ids:
            s = by_id.get(i)
            if s is None:
                raise NotFound(f"backup set {i!r} not found in {root}",
                               hint="`dcb list` shows the sets")
            if s.status != "complete":
                raise UsageError(f"set {i} is {s.status}: only complete sets are replicated")
            chosen.append(s)
    else:
        chosen = replicable(all_sets)
    chosen.sort(key=lambda s: s.created_at)  # oldest first: the newest is never half-sent
    # Imported here: the backup engine pulls in Docker and PostgreSQL modules that a
    # replication round never needs (start-up time of `dcb replicate --all`).
    state.ensure()
    results = []
    with _replicate_lock(state.root):
        ledger = Ledger(state.root)
        for name in names:
            if cancel.is_set():
                raise Cancelled("replication cancelled")
            results.append(_to_destination(cfg, name, chosen, ledger, prune and not set_ids,
                                           report, cancel))
    for r in results:
        if r.copied or r.error or r.pruned:
            with contextlib.suppress(OSError):
                state.append_history({"kind": "replicate", "at": _now_iso(), **r.to_json(),
                                      "status": "failed" if r.error else "complete"})
    return ReplicationResult(results)


def _to_destination(cfg: Config, name: str, sets: Sequence[BackupSet], ledger: Ledger,
                    prune: bool, report: Reporter,
                    cancel: threading.Event) -> DestinationResult:
    result = DestinationResult(name)
    t0 = time.monotonic()
    dest: Destination | None = None
    try:
        dest = open_destination(cfg, name)
        dest.sweep()
        present = dest.list_sets()
        if present is not None:
            ledger.sync(name, present)
            have = set(present)
        else:
            have = set(ledger.copies(name))
        wanted = set(s.id for s in sets)
        if prune:  # never send what this destination's retention would remove at once
            local = {s.id: s for s in sets}
            wanted = _kept(cfg, dest, sorted(have | wanted), local, ledger) & wanted
        for s in sets:
            if s.id in have or s.id not in wanted:
                result.skipped.append(s.id)
                continue
            result.bytes += _copy_one(dest, s, ledger, report, cancel)
            result.copied.append(s.id)
        if prune:
            now_there = None if present is None else sorted(set(present) | set(result.copied))
            result.pruned = _prune_destination(cfg, dest, ledger, report, now_there,
                                               {s.id: s for s in sets})
        ledger.ok(name)
    except Cancelled:
        raise
    except DcbError as e:
        result.error = e.message
        with contextlib.suppress(DcbError):
            ledger.error(name, e.message)
    finally:
        if dest is not None:
            dest.close()
        result.seconds = time.monotonic() - t0
    return result


def _copy_one(dest: Destination, s: BackupSet, ledger: Ledger, report: Reporter,
              cancel: threading.Event) -> int:
    files = set_files(s)
    total = sum(f.size_bytes for f in files)
    stage = f"replicate {s.id} to {dest.name}"
    report(StageStarted(stage, total))
    meter = ByteMeter(stage, report, total)
    try:
        dest.put_set(s.path, s.id, files, Transfer(meter, cancel))
    except BaseException as e:
        report(StageFailed(stage, e.message if isinstance(e, DcbError) else str(e)))
        raise
    meter.flush()
    ledger.record(dest.name, s, total, meter.seconds)
    report(StageFinished(stage, total, meter.seconds, detail=dest.describe()))
    return total


def _copy_as_set(set_id: str, local: dict[str, BackupSet], copies: dict[str, Any],
                 dest: Destination, scratch: Path) -> BackupSet:
    """What retention needs to know of a copy (its items): from the local set, the ledger,
    or, for a copy neither knows, its manifest at the destination. A copy whose manifest
    cannot be read is never removed (status ``unreadable``)."""
    if set_id in local:
        return local[set_id]
    created = parse_set_id(set_id)
    items = copies.get(set_id, {}).get("items")
    if isinstance(items, list) and items:
        arts = tuple(Artifact(kind=str(k), name=str(n), file="", size_bytes=0, sha256=None,
                              compression="none") for k, n in items)
        return BackupSet(id=set_id, path=scratch, status="complete", created_at=created,
                         artifacts=arts)
    try:
        return _parse_manifest(dest, set_id, scratch / set_id)
    except DcbError as e:
        return BackupSet(id=set_id, path=scratch, status="unreadable", created_at=created,
                         error=e.message)


def _kept(cfg: Config, dest: Destination, ids: Sequence[str], local: dict[str, BackupSet],
          ledger: Ledger) -> set[str]:
    """The ids the destination's retention keeps (per item, services/retention.py; its
    keep_*, else [retention])."""
    policy = cfg.replication.destinations[dest.name].retention(cfg.retention)
    copies = ledger.copies(dest.name)
    with _scratch(cfg) as tmp:
        sets = [_copy_as_set(i, local, copies, dest, tmp) for i in ids]
        decisions = retention_plan(sets, policy, datetime.now(UTC))
    return {d.set.id for d in decisions if d.keep}


def _prune_destination(cfg: Config, dest: Destination, ledger: Ledger, report: Reporter,
                       present: Sequence[str] | None,
                       local: dict[str, BackupSet]) -> list[str]:
    """The destination's retention over ``present`` (its listing; None: the ledger's);
    the newest verified copy (newest in the ledger) is always kept."""
    copies = ledger.copies(dest.name)
    ids = present if present is not None else sorted(copies)
    if not ids:
        return []
    newest_verified = max(copies, default=None)
    kept = _kept(cfg, dest, ids, local, ledger)
    doomed = [i for i in ids if i not in kept and i != newest_verified]
    removed = []
    for set_id in doomed:
        dest.delete_set(set_id)
        removed.append(set_id)
        report(LogLine(f"{dest.name}: removed {set_id} (retention)"))
    if removed:
        ledger.forget(dest.name, removed)
    return removed


def replicate_after_backup(cfg: Config, s: BackupSet, reporter: Reporter = null_reporter,
                           cancel: threading.Event | None = None) -> ReplicationResult | None:
    """``[replication] after_backup``: the new set to every destination; None when off."""
    if not cfg.replication.after_backup or not cfg.replication.destinations:
        return None
    return replicate(cfg, [s.id], reporter=reporter, cancel=cancel)


def watch(cfg: Config, interval: float | None = None, reporter: Reporter = null_reporter,
          cancel: threading.Event | None = None, rounds: int | None = None) -> int:
    """``dcb replicate --watch``: a round every ``interval`` seconds until cancelled.
    Returns the number of rounds in which something failed."""
    cancel = cancel or threading.Event()
    wait = interval or cfg.replication.watch_interval
    failed = done = 0
    while not cancel.is_set():
        try:
            r = replicate(cfg, reporter=reporter, cancel=cancel)
            failed += 0 if r.ok else 1
            for d in r.destinations:
                if d.error:
                    reporter(LogLine(f"replication to {d.name} failed: {d.error}", "error"))
                elif d.copied or d.pruned:
                    reporter(LogLine(f"{d.name}: copied {len(d.copied)}, pruned "
                                     f"{len(d.pruned)}"))
        except Cancelled:
            break
        except DcbError as e:
            if e.exit_code == 2:
                raise
            failed += 1
            reporter(LogLine(f"replication round failed: {e.message}", "error"))
        done += 1
        if rounds is not None and done >= rounds:
            break
        cancel.wait(wait)
    return failed


# -- the way back ---------------------------------------------------------------------------
def list_remote(cfg: Config, name: str) -> list[BackupSet]:
    """The complete copies at a destination, newest first, from their manifests (a manifest
    that does not parse is listed as ``incomplete`` with the reason)."""
    dest = open_destination(cfg, name)
    try:
        ids = dest.list_sets()
        if ids is None:
            ids = sorted(Ledger(state_for(cfg).root).copies(name))
        out = []
        with _scratch(cfg) as tmp:
            for set_id in ids:
                try:
                    out.append(_parse_manifest(dest, set_id, tmp / set_id))
                except DcbError as e:
                    out.append(BackupSet(id=set_id, path=tmp, status="incomplete",
                                         created_at=parse_set_id(set_id), error=e.message))
        out.sort(key=lambda s: (s.created_at, s.id), reverse=True)
        return out
    finally:
        dest.close()


@contextlib.contextmanager
def _scratch(cfg: Config) -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dcb-remote-") as tmp:
        yield Path(tmp)


def _parse_manifest(dest: Destination, set_id: str, where: Path) -> BackupSet:
    """Read and check a copy's manifest (untrusted) into ``where``; the parsed set."""
    if not SET_ID_RE.match(set_id):
        raise UsageError(f"{set_id!r} is not a set id")
    data = dest.read_manifest(set_id)
    if len(data) > MAX_MANIFEST_BYTES:
        raise DestinationError(f"{dest.name}: manifest of {set_id} is too large")
    where.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    atomic_write_bytes(where / MANIFEST, data)
    try:
        s = read_manifest(where)
    except DcbError as e:
        raise DestinationError(f"{dest.name}: manifest of {set_id} is unreadable: "
                               f"{e.message.split(': ', 1)[-1]}") from None
    if s.id != set_id:
        raise DestinationError(f"{dest.name}: the manifest under {set_id} names set {s.id}")
    seen = set()
    for a in s.artifacts:
        if not safe_file_name(a.file) or a.file == MANIFEST or a.file in seen:
            raise DestinationError(f"{dest.name}: set {set_id} names a file {a.file!r} that "
                                   "is not a plain, unique file name: refused")
        if a.sha256 is None or len(a.sha256) != 64 or a.size_bytes < 0:
            raise DestinationError(f"{dest.name}: set {set_id}: {a.file} has no valid "
                                   "size and SHA-256 in its manifest: refused")
        seen.add(a.file)
    return s


def fetch(cfg: Config, name: str, set_id: str, reporter: Reporter = null_reporter,
          cancel: threading.Event | None = None) -> BackupSet:
    """Fetch a copy into ``.fetched/<name>/<id>`` of the state dir, verified (size and SHA-256 of
    every file against its manifest) before it appears there; the local set."""
    cancel = cancel or threading.Event()
    report = locked(reporter)
    state = state_for(cfg)
    state.ensure()
    root = state.root
    cache = root / FETCH_DIR / name
    (root / FETCH_DIR).mkdir(exist_ok=True, mode=DIR_MODE)
    cache.mkdir(exist_ok=True, mode=DIR_MODE)
    final = cache / set_id
    # Under its own id (a manifest must match its directory), in a hidden directory until
    # every byte was checked.
    tmp = cache / ".incoming" / set_id
    tmp.parent.mkdir(exist_ok=True, mode=DIR_MODE)
    dest = open_destination(cfg, name)
    try:
        for p in (tmp, final):
            if p.exists():
                shutil.rmtree(p)
        s = _parse_manifest(dest, set_id, tmp)
        total = sum(a.size_bytes for a in s.artifacts)
        free = shutil.disk_usage(cache).free
        if total > free:
            raise DestinationError(f"not enough space in {cache} to fetch {set_id}: needs "
                                   f"{total} bytes, {free} free")
        stage = f"fetch {set_id} from {name}"
        report(StageStarted(stage, total))
        meter = ByteMeter(stage, report, total)
        dest.fetch_files(set_id, [a.file for a in s.artifacts], tmp, Transfer(meter, cancel))
        wanted = {a.file for a in s.artifacts} | {MANIFEST}
        for entry in os.scandir(tmp):  # whatever else arrived is not ours to keep
            if entry.name not in wanted:
                p = Path(entry.path)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        for a in s.artifacts:
            p = tmp / a.file
            if p.is_symlink() or not p.is_file():
                raise DestinationError(f"{name}: {set_id}/{a.file} did not arrive as a file")
            size, digest = _sha256(p, cancel)
            if size != a.size_bytes or digest != a.sha256:
                raise DestinationError(
                    f"{name}: {set_id}/{a.file} does not match its manifest "
                    f"({size} bytes, manifest says {a.size_bytes}; SHA-256 "
                    f"{'differs' if digest != a.sha256 else 'ok'}): the copy is damaged",
                    hint="nothing was changed; try another set or destination")
        meter.flush()
        fsync_dir(tmp)
        os.rename(tmp, final)
        report(StageFinished(stage, total, meter.seconds, detail="verified"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        dest.close()
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()  # only when no other fetch is under way
    return BackupStore(cache).get(set_id)


def _sha256(path: Path, cancel: threading.Event) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            if cancel.is_set():
                raise Cancelled("fetch cancelled")
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


def remove_fetched(cfg: Config, name: str, set_id: str) -> None:
    shutil.rmtree(state_for(cfg).root / FETCH_DIR / name / set_id, ignore_errors=True)
