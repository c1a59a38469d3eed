#!/usr/bin/env python3
"""Replication benchmark: ``dcb replicate`` of the bench set to a local S3 server (moto in
server mode on 127.0.0.1) against ``aws s3 cp --recursive`` of the same directory, interleaved
in one run; dcb's peak RSS; and ``dcb replicate --all`` with nothing new and 100 sets present.

    .venv/bin/python bench/replicate_bench.py [--rounds N] [--synthetic] [--aws CMD]

The set is a real one: ``dcb backup`` of the bench stack of ``backup_bench.py`` (reused when a
kept stack exists; ``--keep`` keeps it). ``--synthetic`` writes a set of the same size and mix
(about 475 MB: 60 % incompressible, 40 % text) without Docker. The aws CLI is taken from PATH
(``pip install awscli`` into a separate venv: it pins its own botocore) or ``--aws``.
Prints figures; asserts nothing. Targets: within 1.2x of aws; peak RSS < 200 MB; the no-op
``--all`` over 100 sets < 2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_bench as bb

CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                          str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("moto server did not start")


def write_set(root: Path, set_id: str, files: dict[str, int], text_share: float = 0.4) -> None:
    d = root / set_id
    d.mkdir(parents=True)
    arts = []
    line = b'{"ts": 1700000000, "level": "info", "msg": "function invoked", "ms": 12}\n'
    block = line * (CHUNK // len(line))
    for name, size in files.items():
        h = hashlib.sha256()
        with open(d / name, "wb") as f:
            left = size
            while left > 0:
                n = min(CHUNK, left)
                b = block[:n] if (left / size) < text_share else os.urandom(n)
                f.write(b)
                h.update(b)
                left -= n
        arts.append({"kind": "volume", "name": name, "file": name, "size_bytes": size,
                     "sha256": h.hexdigest(), "compression": "none", "source": {}})
    created = datetime.strptime(set_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    (d / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "id": set_id, "status": "complete", "purpose": "backup",
        "created_at": created.isoformat(), "artifacts": arts,
        "size_bytes": sum(files.values())}))


def config(path: Path, backup_dir: Path, url: str, prefix: str) -> Path:
    path.write_text(f'[storage]\nbackup_dir = "{backup_dir}"\n'
                    f'[replication.s3]\ntype = "s3"\nbucket = "bench"\nprefix = "{prefix}"\n'
                    f'endpoint_url = "{url}"\nregion = "us-east-1"\n'
                    "keep_last = 0\nkeep_daily = 0\nkeep_weekly = 0\nkeep_monthly = 0\n")
    return path


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DCB_")}, **CREDS}


def empty_prefix(url: str, prefix: str) -> None:
    import boto3

    c = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="bench", Prefix=prefix)
            .get("Contents", [])]
    if keys:
        c.delete_objects(Bucket="bench", Delete={"Objects": [{"Key": k} for k in keys]})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--synthetic", action="store_true", help="no Docker: a generated set")
    p.add_argument("--scale", choices=("full", "small"), default="full")
    p.add_argument("--keep", action="store_true", help="keep the bench stack")
    p.add_argument("--aws", default=shutil.which("aws"), help="the aws CLI (default: PATH)")
    args = p.parse_args()
    if not args.aws:
        raise SystemExit("no aws CLI: `python3 -m venv /tmp/awscli && /tmp/awscli/bin/pip "
                         "install awscli`, then --aws /tmp/awscli/bin/aws")
    dcb = bb.find_dcb()
    work = Path(tempfile.mkdtemp(prefix="dcbrepbench-"))
    moto, url = start_moto()
    stack = client = None
    try:
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                     aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"]
                     ).create_bucket(Bucket="bench")
        backups = work / "backups"
        if args.synthetic:
            set_id = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y%m%dT%H%M%SZ")
            write_set(backups, set_id, {"db-dart_cloud.pgdump": 150_000_000,
                                        "db-functions_db.pgdump": 20_000_000,
                                        "volume-functions_data.tar.zst": 225_000_000,
                                        "volume-postgres_data.tar.zst": 80_000_000})
        else:
            import docker

            client = docker.from_env(timeout=600)
            stack, _ = bb.find_or_create(client, bb.SCALES[args.scale], work)
            cfg, backups = bb.write_config(stack, work, [])
            r = bb.sh([dcb, "backup", "-q", "--config", str(cfg)], env=bb.dcb_env())
            set_id = r.stdout.decode().strip().splitlines()[-1]
        set_dir = backups / set_id
        size = sum(f.stat().st_size for f in set_dir.iterdir())
        bb.log(f"set {set_id}: {size / 1e6:.0f} MB in {len(list(set_dir.iterdir()))} files")
        aws, ours = [], []
        for r in range(1, args.rounds + 1):
            for which in (("aws", "dcb") if r % 2 else ("dcb", "aws")):
                if which == "aws":
                    t0 = time.perf_counter()
                    subprocess.run([args.aws, "--endpoint-url", url, "s3", "cp", "--recursive",
                                    "--only-show-errors", str(set_dir), f"s3://bench/aws-{r}/"],
                                   env=env(), check=True)
                    aws.append(time.perf_counter() - t0)
                    empty_prefix(url, f"aws-{r}/")
                    bb.log(f"round {r}: aws s3 cp --recursive {aws[-1]:.1f} s")
                else:
                    c = config(work / f"dcb-{r}.toml", backups, url, f"dcb-{r}")
                    res = bb.run_child([sys.executable, "-c", bb.WRAPPER, dcb, "replicate",
                                        set_id, "--config", str(c), "--json"], env=env())
                    fig: dict[str, Any] = json.loads(res.stdout)
                    if fig["rc"] != 0:
                        raise SystemExit(f"dcb replicate failed: {fig['stderr']}")
                    ours.append(fig)
                    empty_prefix(url, f"dcb-{r}/")
                    bb.log(f"round {r}: dcb replicate {fig['wall']:.1f} s, peak RSS "
                           f"{fig['maxrss_kb'] / 1024:.0f} MB")
        # 100 sets, nothing new.
        many = work / "many"
        ids = [(datetime.now(UTC) - timedelta(hours=i + 1)).strftime("%Y%m%dT%H%M%SZ")
               for i in range(100)]
        for i in ids:
            write_set(many, i, {"db-app.pgdump": 4096, "volume-data.tar.zst": 8192})
        c = config(work / "many.toml", many, url, "many")
        subprocess.run([dcb, "replicate", "--all", "--config", str(c), "--json"], env=env(),
                       check=True, capture_output=True)
        noop = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([dcb, "replicate", "--all", "--config", str(c), "--json"],
                           env=env(), check=True, capture_output=True)
            noop.append(time.perf_counter() - t0)
        a, d = statistics.median(aws), statistics.median(x["wall"] for x in ours)
        print()
        print(bb.table([
            ["aws s3 cp --recursive", f"{a:.1f} s", f"{size / 1e6 / a:.0f} MB/s", "-"],
            ["dcb replicate ID --to s3", f"{d:.1f} s", f"{size / 1e6 / d:.0f} MB/s",
             f"{max(x['maxrss_kb'] for x in ours) / 1024:.0f} MB"],
        ], ["method", "median wall", "throughput", "peak RSS"]))
        print(f"\ndcb / aws: {d / a:.2f}x (target <= 1.2x; {args.rounds} rounds interleaved, "
              f"{size / 1e6:.0f} MB set)")
        print(f"dcb replicate --all, nothing new, 100 sets: median {statistics.median(noop):.2f} s"
              f" (runs: {', '.join(f'{x:.2f}' for x in noop)}; target < 2 s)")
        return 0
    finally:
        os.killpg(moto.pid, signal.SIGKILL)
        moto.wait()
        if stack is not None and client is not None and not args.keep:
            bb.destroy(client, stack.prefix)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
