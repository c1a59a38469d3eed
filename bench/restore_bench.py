"""Restore benchmark: `dcb restore` against the old scripts' method, on the backup bench stack.

Run: .venv/bin/python bench/restore_bench.py [--scale small|full] [--rounds N] [--keep]

Same scope for both: the two databases and the app's volume (the old scripts had no safe way
to restore PostgreSQL's own data volume under a running server, so neither side does it here).

* old: for each database `DROP/CREATE DATABASE` then `gunzip -c db.sql.gz | docker exec -i
  psql`; the volume emptied, then `docker run busybox tar xzf` from a bind-mounted file.
* dcb: `dcb restore ID --db ... --volume ... --yes --no-safety-backup` (validation of the set,
  temporary database and swap, verification of row counts and file lists all included).

Rounds alternate which goes first; medians are printed. A figure, never an assertion.
"""

from __future__ import annotations

import argparse
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


def run_old(st: bb.Stack, outdir: Path) -> dict[str, Any]:
    steps: dict[str, float] = {}
    bb.settle()
    t0 = time.perf_counter()
    for db in bb.DATABASES:
        t = time.perf_counter()
        bb.psql(st, "postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE); "
                                f"CREATE DATABASE {db};")
        bb.sh(["bash", "-o", "pipefail", "-c",
               f"gunzip -c {outdir}/{db}.sql.gz | docker exec -i {st.pg} psql -q -U postgres "
               f"-d {db} -v ON_ERROR_STOP=1 -o /dev/null"])
        steps[f"database {db}"] = time.perf_counter() - t
    t = time.perf_counter()
    bb.sh(["docker", "stop", st.app])
    bb.sh(["docker", "run", "--rm", "--network", "none", "--log-driver", "none",
           "-v", f"{st.app_volume}:/v", "-v", f"{outdir}:/in", bb.BUSYBOX_IMAGE, "sh", "-c",
           "rm -rf /v/* /v/.[!.]* /v/..?* && tar xzf /in/app.tar.gz -C /v"])
    bb.sh(["docker", "start", st.app])
    steps["volume app_data"] = time.perf_counter() - t
    return {"wall": time.perf_counter() - t0, "steps": steps}


def run_new(st: bb.Stack, dcb: str, cfg: Path, set_id: str, delta: bool) -> dict[str, Any]:
    bb.settle()
    r = bb.run_child([sys.executable, "-c", bb.WRAPPER, dcb, "restore", set_id, "--db",
                      bb.DATABASES[0], "--db", bb.DATABASES[1], "--volume", st.app_volume,
                      "--yes", "--no-safety-backup", "--json", "--config", str(cfg),
                      *(["--delta"] if delta else [])],
                     env=bb.dcb_env(), cwd=cfg.parent)
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise RuntimeError(f"dcb restore failed (exit {res['rc']}): {res['stderr']}")
    report = json.loads(res["stdout"])["report"]
    steps = {s["title"]: s["seconds"] for s in report["steps"]}
    return {"wall": res["wall"], "maxrss_kb": res["maxrss_kb"], "steps": steps,
            "ok": report["ok"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scale", choices=sorted(bb.SCALES), default="full")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the stack for the next run")
    p.add_argument("--delta", action="store_true",
                   help="dcb restore --delta (the volume still holds most of its files)")
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
        olds, news = [], []
        for i in range(1, args.rounds + 1):
            for which in (("old", "new") if i % 2 else ("new", "old")):
                if which == "old":
                    olds.append(run_old(stack, workdir / "old"))
                    bb.log(f"round {i}: old {olds[-1]['wall']:.1f} s " + json.dumps(
                        {k: round(v, 1) for k, v in olds[-1]["steps"].items()}))
                else:
                    news.append(run_new(stack, dcb, cfg, set_id, args.delta))
                    bb.log(f"round {i}: dcb {news[-1]['wall']:.1f} s, peak RSS "
                           f"{news[-1]['maxrss_kb'] / 1024:.0f} MB " + json.dumps(
                               {k: round(v, 1) for k, v in news[-1]["steps"].items()}))
        old_med = statistics.median(o["wall"] for o in olds)
        new_med = statistics.median(n["wall"] for n in news)
        print()
        print(bb.table([
            ["old (gunzip | psql, tar xzf)", f"{old_med:.1f} s", "-"],
            ["dcb restore" + (" --delta" if args.delta else ""), f"{new_med:.1f} s",
             f"{max(n['maxrss_kb'] for n in news) / 1024:.0f} MB"],
        ], ["method", "median wall", "peak RSS"]))
        print(f"\nspeed-up: {old_med / new_med:.2f}x  (target >= 2x; {len(olds)} rounds, "
              f"scale {args.scale})")
        for key in olds[0]["steps"]:
            print(f"  old {key}: {statistics.median(o['steps'][key] for o in olds):.1f} s")
        for key in news[0]["steps"]:
            print(f"  dcb {key}: {statistics.median(n['steps'][key] for n in news):.1f} s")
        return 0
    finally:
        if stack is not None and not args.keep:
            bb.destroy(client, stack.prefix)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
