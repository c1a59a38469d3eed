"""kill -9 (and SIGINT/SIGTERM) at random points of a real backup, many seeds on one store.

Each seed starts ``dcb backup`` on the test stack and, after a random delay spread over a whole
run (start-up included), freezes it, records where it was (no set yet, dumping, the app stopped
for its volume, after the manifest), and kills it; every fourth seed sends SIGINT or SIGTERM
instead. After each seed the store must hold no corrupt set listed as complete: every set
listed complete passes a quick verify at once, and a deep verify at the end. The next run
never waits for a dead run's lock; at the end a run completes at once and leaves no temp
file, helper container, stopped app, PostgreSQL session or replication slot behind.

The store the seeds leave (complete, failed and incomplete sets interleaved) then meets
retention with a damaged history: the newest good set is never deleted.

``DCB_FAULT_SEEDS=N`` (or ``DCB_FAULT_LONG=1``: 200) runs more seeds; a failure names its
seed, and ``DCB_FAULT_SEED_BASE`` replays the same delays.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import time
from pathlib import Path

from dcb.services.config import load_config
from dcb.services.store import MANIFEST, BackupStore
from dcb.services.verify import verify_set
from tests.conftest import run_dcb
from tests.faults import kit
from tests.stackkit import TestStack
from tests.test_backup_faults import (
    MARKER,
    Run,
    container_state,
    ensure_running,
    freeze,
    set_dirs,
    stack_helpers,
    statuses,
    temp_files,
    wait_until,
)


def _where(root: Path, before: set[str], stack: TestStack) -> str:
    """Where a frozen run stands, from what it has left in the store and the stack."""
    new = set_dirs(root) - before
    if not new:
        return "before its set"
    (set_id,) = new
    d = root / set_id
    if (d / MANIFEST).exists():
        return "after its manifest"
    if container_state(stack, stack.backend_container)["Status"] != "running":
        return "app stopped for its volume"
    if any(p.name.startswith(".") and p.name.endswith(".tmp") for p in d.iterdir()):
        return "writing an artifact"
    return "between artifacts"


def _check_store(cfg_path: Path, checked: set[str]) -> list[str]:
    """Every set listed complete passes a quick verify (in-process, each set once); returns
    the problems found."""
    cfg = load_config(str(cfg_path), environ={})
    problems = []
    for s in BackupStore.for_config(cfg).list_sets():
        if s.status != "complete" or s.id in checked:
            continue
        r = verify_set(s)
        if not r.ok:
            problems.append(f"{s.id} is listed complete but fails verify: {r.problems()}")
        checked.add(s.id)
    return problems


def test_kill_at_random_points_never_lists_a_corrupt_set(stack: TestStack,
                                                          tmp_path: Path) -> None:
    cfg = stack.write_config(tmp_path)
    root = tmp_path / "backups"
    try:
        # A first run measures the phases: start-up and pre-checks, then the work on a set.
        t0 = time.monotonic()
        first = Run(tmp_path, "first", cfg, "-q")
        try:
            wait_until("the first set", lambda: set_dirs(root), first, interval=0.01)
            t_set = time.monotonic() - t0
            assert first.wait(180) == 0, first.err
            span = time.monotonic() - t0
        finally:
            first.kill()
        landed: collections.Counter[str] = collections.Counter()
        checked: set[str] = set()
        outcomes: list[str] = []
        for i in range(kit.SEEDS):
            seed = kit.SEED_BASE + i
            rng = random.Random(seed)
            # A third of the seeds count from the start (start-up, pre-checks), the others
            # from the moment the set exists, spread over the work and a little beyond.
            from_start = i % 3 == 0
            delay = rng.uniform(0, span) if from_start else rng.uniform(0, (span - t_set) * 1.15)
            polite = (signal.SIGINT, signal.SIGTERM)[i // 4 % 2] if i % 4 == 3 else None
            before = set_dirs(root)
            run = Run(tmp_path, f"seed{i}", cfg, "-q")
            try:
                ended = run.proc.poll()
                if not from_start:
                    while ended is None and not set_dirs(root) - before:
                        time.sleep(0.005)
                        ended = run.proc.poll()
                deadline = time.monotonic() + delay
                while ended is None and time.monotonic() < deadline:
                    time.sleep(0.005)
                    ended = run.proc.poll()
                if ended is None and not freeze(run.pid):
                    ended = run.wait(30)  # it ended between the last poll and the stop
                if ended is None:
                    where = _where(root, before, stack)
                    if polite is None:
                        run.proc.send_signal(signal.SIGKILL)
                        code = run.wait(30)
                    else:
                        run.proc.send_signal(polite)
                        run.proc.send_signal(signal.SIGCONT)
                        t_sig = time.monotonic()
                        code = run.wait(60)
                        assert time.monotonic() - t_sig < 30, f"seed {seed}: slow to stop"
                else:
                    where, code = "finished first", ended
            finally:
                run.kill()
            label = "kill -9" if polite is None else polite.name
            landed[f"{label} {where}"] += 1
            why = f"seed {seed} ({label} after {delay:.2f}s, {where}): exit {code}\n{run.err}"
            assert "Traceback" not in run.err, why
            assert "locked" not in run.err, f"a dead run's lock held up the next: {why}"
            if where == "finished first":
                assert code == 0, why
            elif polite is None:
                assert code == -signal.SIGKILL, why
            else:
                # Stopped at a safe point (130); or, before its handlers were set, by the
                # signal itself, which can only happen before it changed anything; or, once
                # its work had succeeded (the signal came as it exited), exit 0 with its
                # set complete.
                new = set_dirs(root) - before
                sts = statuses(cfg)
                assert code == 130 or (code in (-signal.SIGTERM, -signal.SIGINT)
                                       and where == "before its set") or (
                    code == 0 and where == "after its manifest"
                    and all(sts[n] == "complete" for n in new)), (why, sts)
                assert all(sts[n] in ("failed", "complete") for n in new), (why, sts)
                assert container_state(stack, stack.backend_container)["Status"] == \
                    "running", f"the app was left stopped: {why}"
                assert not (root / MARKER).exists(), why
            outcomes.append(why.split("\n")[0])
            problems = _check_store(cfg, checked)
            assert not problems, f"{why}\n{problems}"

        # The next run succeeds at once and cleans up after all of them.
        t0 = time.monotonic()
        r = run_dcb("backup", "-q", "--config", str(cfg), timeout=180)
        assert r.code == 0, r.err
        assert time.monotonic() - t0 < 60
        final_id = r.out.strip()
        assert container_state(stack, stack.backend_container)["Status"] == "running"
        assert stack_helpers(stack) == []
        assert not (root / MARKER).exists()
        assert temp_files(root) == [], "temp files left in the backup dir"
        assert kit.dcb_sessions(stack) == []
        sts = statuses(cfg)
        complete = sorted(k for k, v in sts.items() if v == "complete")
        assert final_id in complete
        v = run_dcb("verify", "--all", "--deep", "--json", "--config", str(cfg), timeout=600)
        assert v.code == 0, v.out + v.err
        assert sorted(x["id"] for x in json.loads(v.out) if x["ok"]) == complete
        bad = sorted(k for k, v in sts.items() if v != "complete")
        kit.figure("kill -9 at random points of a backup",
                   f"{kit.SEEDS} seeds (base {kit.SEED_BASE}), {len(complete)} sets listed "
                   f"complete, all deep-verified, 0 corrupt; {len(bad)} listed incomplete or "
                   f"failed; landed: " + ", ".join(f"{k} {n}" for k, n in sorted(landed.items())))

        _retention_with_bad_history(cfg, root, final_id, sts)
    finally:
        ensure_running(stack)


def _retention_with_bad_history(cfg: Path, root: Path, newest: str,
                                sts: dict[str, str]) -> None:
    """Failed and incomplete runs interleaved with good ones, a history with torn and foreign
    lines: prune keeps the newest good set (which still verifies), removes only what the
    rules say, and list and check still read the store."""
    history = root / "history.jsonl"
    with history.open("ab") as f:
        f.write(b'{"kind": "backup", "id": "' + newest.encode() + b'", "status": "comp')
        f.write(b"\n\x00\xff garbage\n[1, 2]\n\"a string\"\n{}\n")
        f.write(json.dumps({"kind": "backup", "id": "20991231T000000Z", "status": "complete",
                            "started_at": "2099-12-31T00:00:00+00:00"}).encode() + b"\n")
        f.write(b'{"kind": "restore", "id": "../../etc", "ok": "yes"}\n')
        f.write(b'{"kind": "backup", "status": "complete", "artifacts": "x", '
                b'"duration_seconds": "long", "size_bytes": [1], "started_at": 5}\n')
    for args in (["list", "--json"], ["check", "--json"], ["metrics"], ["history", "--json"]):
        r = run_dcb(*args, "--config", str(cfg))
        assert "Traceback" not in r.err and "internal error" not in r.err, (args, r.err)
        assert r.code in ((0, 1, 2) if args[0] == "check" else (0,)), (args, r.out, r.err)
        if args[0] == "check":
            assert "UNKNOWN" not in r.out, r.out
    policy = {"DCB_RETENTION_KEEP_LAST": "1", "DCB_RETENTION_KEEP_DAILY": "0",
              "DCB_RETENTION_KEEP_WEEKLY": "0", "DCB_RETENTION_KEEP_MONTHLY": "0"}
    r = run_dcb("prune", "--yes", "--json", "--config", str(cfg), env=policy)
    assert r.code == 0, r.err
    after = statuses(cfg)
    assert after.get(newest) == "complete", "prune deleted the newest good set"
    assert [k for k, v in after.items() if v == "complete"] == [newest]
    # Failed runs go; incomplete ones younger than a day stay (they may be running).
    assert not [k for k, v in after.items() if v == "failed"]
    assert {k for k, v in sts.items() if v == "incomplete"} <= set(after)
    v = run_dcb("verify", newest, "--deep", "--config", str(cfg))
    assert v.code == 0, v.out + v.err
    kit.figure("retention with bad history",
               f"{len(sts)} sets ({list(sts.values()).count('failed')} failed, "
               f"{list(sts.values()).count('incomplete')} incomplete) and a torn history: "
               "the newest good set kept and verified")
