"""Restore benchmark: `dcb restore` and `dcb undo` against the old scripts' method, on the backup
bench stack.

Run: .venv/bin/python bench/restore_bench.py [--scale small|full] [--rounds N] [--keep] [--delta]

Same scope for every method: the two databases and the app's volume (the old scripts had no safe
way to restore PostgreSQL's own data volume under a running server, so nobody does it here).
Interleaved in one run, rounds rotating which goes first:

* old, emptying: for each database `DROP/CREATE DATABASE` then `gunzip -c db.sql.gz | docker
  exec -i psql`; the app stopped, its volume emptied, `docker run busybox tar xzf` from a
  bind-mounted file, the app started.
* old, fresh targets (the stricter baseline): each dump into a new database, the archive into a
  new empty volume: nothing to drop or empty first.
* dcb: `dcb restore ID --db ... --volume ... --yes`: validation of the set (checksums, every tar
  member, the dumps read through), the undo point (databases renamed, the volume's directory
  moved aside), temporary databases swapped in, row counts, database properties and file
  lists verified. Then `dcb undo RESTORE_ID --yes`, timed on its own, then (untimed)
  `dcb undo --release` so the next round starts clean.

Each timed run starts at least ``--fs-quiet`` seconds (65) after the previous run and its
untimed cleanup ended (FS_QUIET). Medians are printed. A figure, never an assertion.

FS_QUIET: the bench's own cleanup deletes 20k files per run (the fresh volume, dcb's released
undo point). On ext4 without a journal (this machine's), the inode allocator skips every inode
freed in the last 60 s, one buffer lookup each (fs/ext4/ialloc.c, recently_deleted()): a run
creating 20k files right after another run's cleanup spends most of its CPU there, whichever
method it is. No method pays for the benchmark's housekeeping; the old scripts' own `rm -rf`
before their `tar xzf` stays in their time (it is their method).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backup_bench as bb


def old_backup(st: bb.Stack, outdir: Path) -> None:
    """What the old scripts left behind: gzip'd plain dumps and a tar.gz of the volume."""
    outdir.mkdir(parents=True, exist_ok=True)
    for db in bb.DATABASES:
        bb.sh(["bash", "-o", "pipefail", "-c",
               f"docker exec {st.pg} pg_dump -U postgres {db} | gzip > {outdir}/{db}.sql.gz"])
    bb.sh(["docker", "run", "--rm", "--network", "none", "--log-driver", "none",
           "-v", f"{st.app_volume}:/v", "-v", f"{outdir}:/out", bb.BUSYBOX_IMAGE,
           "tar", "czf", "/out/app.tar.gz", "-C", "/v", "."])


def _load(st: bb.Stack, outdir: Path, db: str, into: str) -> None:
    bb.sh(["bash", "-o", "pipefail", "-c",
           f"gunzip -c {outdir}/{db}.sql.gz | docker exec -i {st.pg} psql -q -U postgres "
           f"-d {into} -v ON_ERROR_STOP=1 -o /dev/null"])


def run_old(st: bb.Stack, outdir: Path) -> dict[str, Any]:
    """The old scripts: replace in place (drop, create, replay; empty, extract)."""
    steps: dict[str, float] = {}
    busy = bb.settle()
    t0 = time.perf_counter()
    for db in bb.DATABASES:
        t = time.perf_counter()
        bb.psql(st, "postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE); "
                                f"CREATE DATABASE {db};")
        _load(st, outdir, db, db)
        steps[f"database {db}"] = time.perf_counter() - t
    t = time.perf_counter()
    bb.sh(["docker", "stop", st.app])
    bb.sh(["docker", "run", "--rm", "--network", "none", "--log-driver", "none",
           "-v", f"{st.app_volume}:/v", "-v", f"{outdir}:/in", bb.BUSYBOX_IMAGE, "sh", "-c",
           "rm -rf /v/* /v/.[!.]* /v/..?* && tar xzf /in/app.tar.gz -C /v"])
    bb.sh(["docker", "start", st.app])
    steps["volume app_data"] = time.perf_counter() - t
    return {"wall": time.perf_counter() - t0, "steps": steps, "busy_before": busy}


def run_old_fresh(client: docker.DockerClient, st: bb.Stack, outdir: Path) -> dict[str, Any]:
    """The old commands into fresh targets: new databases, a new empty volume."""
    steps: dict[str, float] = {}
    fresh_vol = f"{st.prefix}_fresh"
    busy = bb.settle()
    t0 = time.perf_counter()
    try:
        for db in bb.DATABASES:
            t = time.perf_counter()
            bb.psql(st, "postgres", f"CREATE DATABASE {db}_fresh;")
            _load(st, outdir, db, f"{db}_fresh")
            steps[f"database {db}"] = time.perf_counter() - t
        t = time.perf_counter()
        client.volumes.create(fresh_vol, labels=st.labels("fresh"))
        bb.sh(["docker", "run", "--rm", "--network", "none", "--log-driver", "none",
               "-v", f"{fresh_vol}:/v", "-v", f"{outdir}:/in", bb.BUSYBOX_IMAGE,
               "tar", "xzf", "/in/app.tar.gz", "-C", "/v"])
        steps["volume app_data"] = time.perf_counter() - t
        wall = time.perf_counter() - t0
    finally:
        for db in bb.DATABASES:
            bb.psql(st, "postgres", f"DROP DATABASE IF EXISTS {db}_fresh WITH (FORCE);")
        with contextlib.suppress(docker.errors.NotFound):
            client.volumes.get(fresh_vol).remove(force=True)
    return {"wall": wall, "steps": steps, "busy_before": busy}


def _wrapped(dcb: str, cfg: Path, *args: str) -> dict[str, Any]:
    r = bb.run_child([sys.executable, "-c", bb.WRAPPER, dcb, *args, "--config", str(cfg)],
                     env=bb.dcb_env(), cwd=cfg.parent)
    res: dict[str, Any] = json.loads(r.stdout)
    if res["rc"] != 0:
        raise RuntimeError(f"dcb {args[0]} failed (exit {res['rc']}): {res['stderr']}")
    return res


def run_new(st: bb.Stack, dcb: str, cfg: Path, set_id: str, delta: bool,
            undo: bool) -> dict[str, Any]:
    busy = bb.settle()
    res = _wrapped(dcb, cfg, "restore", set_id, "--db", bb.DATABASES[0], "--db",
                   bb.DATABASES[1], "--volume", st.app_volume, "--yes", "--json",
                   *(["--delta"] if delta else []), *([] if undo else ["--no-safety-backup"]))
    report = json.loads(res["stdout"])["report"]
    out = {"wall": res["wall"], "maxrss_kb": res["maxrss_kb"], "busy_before": busy,
           "steps": {s["title"]: s["seconds"] for s in report["steps"]},
           "restore_seconds": report["seconds"], "ok": report["ok"]}
    if report.get("undo"):
        rid = report["restore_id"]
        out["undo_busy_before"] = bb.settle()
        u = _wrapped(dcb, cfg, "undo", rid, "--yes")
        out["undo_wall"] = u["wall"]
        t = time.perf_counter()
        _wrapped(dcb, cfg, "undo", "--release", rid, "--yes")
        out["release_wall"] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scale", choices=sorted(bb.SCALES), default="full")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the stack for the next run")
    p.add_argument("--delta", action="store_true",
                   help="dcb restore --delta (the volume still holds most of its files)")
    p.add_argument("--no-undo", action="store_true",
                   help="dcb restore --no-safety-backup (no undo point, no dcb undo)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--fs-quiet", type=float, default=65, metavar="SECONDS",
                   help="wait this long after the previous run (and its untimed cleanup) "
                        "before the next; default 65 (see FS_QUIET)")
    args = p.parse_args(argv)
    dcb = bb.find_dcb()
    client = docker.from_env(timeout=600)
    workdir = Path(tempfile.mkdtemp(prefix="dcbrestore-"))
    stack: bb.Stack | None = None
    try:
        stack, _ = bb.find_or_create(client, bb.SCALES[args.scale], workdir)
        cfg, _backup_dir = bb.write_config(stack, workdir, [])
        bb.log("making the old-style backup and the dcb set to restore from")
        old_backup(stack, workdir / "old")
        r = bb.sh([dcb, "backup", "-q", "--config", str(cfg)], env=bb.dcb_env())
        set_id = r.stdout.decode().strip().splitlines()[-1]
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "fresh": [], "dcb": []}
        methods = ["old", "fresh", "dcb"]
        last_end = 0.0
        for i in range(1, args.rounds + 1):
            k = (i - 1) % len(methods)
            for which in methods[k:] + methods[:k]:
                time.sleep(max(0.0, last_end + args.fs_quiet - time.monotonic()))
                before = _jiffies()
                if which == "old":
                    res = run_old(stack, workdir / "old")
                elif which == "fresh":
                    res = run_old_fresh(client, stack, workdir / "old")
                else:
                    res = run_new(stack, dcb, cfg, set_id, args.delta, not args.no_undo)
                res["steal"] = _steal_since(before)
                last_end = time.monotonic()
                runs[which].append(res)
                extra = (f", undo {res['undo_wall']:.1f} s (release {res['release_wall']:.0f} s"
                         " untimed)" if "undo_wall" in res else "")
                bb.log(f"round {i}: {which} {res['wall']:.1f} s{extra} (busy before "
                       f"{res['busy_before'] * 100:.0f}%, stolen {res['steal'] * 100:.0f}%) "
                       + json.dumps(
                           {k2: round(v, 1) for k2, v in res["steps"].items()}))
        med = {k: statistics.median(x["wall"] for x in v) for k, v in runs.items()}
        span = {k: (min(x["wall"] for x in v), max(x["wall"] for x in v))
                for k, v in runs.items()}
        name = "dcb restore" + (" --delta" if args.delta else "") + \
            (" --no-safety-backup" if args.no_undo else " (undo point)")
        rows = [["old, emptying (gunzip | psql, rm + tar xzf)", f"{med['old']:.1f} s",
                 "{:.1f}-{:.1f}".format(*span["old"]), "-"],
                ["old, fresh targets (new databases, new volume)", f"{med['fresh']:.1f} s",
                 "{:.1f}-{:.1f}".format(*span["fresh"]), "-"],
                [name, f"{med['dcb']:.1f} s", "{:.1f}-{:.1f}".format(*span["dcb"]),
                 f"{max(n['maxrss_kb'] for n in runs['dcb']) / 1024:.0f} MB"]]
        undos = [n["undo_wall"] for n in runs["dcb"] if "undo_wall" in n]
        if undos:
            rows.append(["dcb undo RESTORE_ID", f"{statistics.median(undos):.1f} s",
                         f"{min(undos):.1f}-{max(undos):.1f}", "-"])
        print()
        print(bb.table(rows, ["method", "median wall", "per round", "peak RSS"]))
        print(f"\nspeed-up of dcb: {med['old'] / med['dcb']:.2f}x against the old scripts, "
              f"{med['fresh'] / med['dcb']:.2f}x against the old commands into fresh targets "
              f"(target >= 2x; {args.rounds} rounds, scale {args.scale})")
        print("  CPU time stolen by the hypervisor during the runs (median): " + ", ".join(
            f"{w} {statistics.median(x['steal'] for x in runs[w]) * 100:.0f}%"
            for w in ("old", "fresh", "dcb")))
        for which in ("old", "fresh", "dcb"):
            for key in runs[which][0]["steps"]:
                vals = [x["steps"][key] for x in runs[which] if key in x["steps"]]
                print(f"  {which} {key}: {statistics.median(vals):.1f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"scale": args.scale, "runs": runs,
                                                   "medians": med}, indent=2))
        return 0
    finally:
        if stack is not None:
            remove_undo_leftovers(client, stack)
        if stack is not None and not args.keep:
            bb.destroy(client, stack.prefix)
        shutil.rmtree(workdir, ignore_errors=True)


def _jiffies() -> list[float]:
    with open("/proc/stat") as f:
        return [float(x) for x in f.readline().split()[1:9]]


def _steal_since(before: list[float]) -> float:
    """The share of the CPUs' time the hypervisor gave to other guests since ``before``: on
    a shared VM it slows every method, and a parallel one (dcb) most."""
    now = _jiffies()
    total = sum(now) - sum(before)
    return (now[7] - before[7]) / total if total > 0 else 0.0


def remove_undo_leftovers(client: docker.DockerClient, st: bb.Stack) -> None:
    """What an interrupted round's restore kept for undo (nothing after a complete run)."""
    for v in client.volumes.list(filters={"label": "dcb.undo"}):
        if v.name.startswith(st.prefix):
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)
    with contextlib.suppress(RuntimeError):
        for n in bb.psql(st, "postgres", "SELECT datname FROM pg_database WHERE datname "
                                         "LIKE '%\\_\\_dcb\\_%'").split():
            bb.psql(st, "postgres", f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE);')


if __name__ == "__main__":
    sys.exit(main())
