#!/usr/bin/env python3
"""Encryption benchmark: ``dcb backup`` with and without ``[encryption] recipients``, and the
choice of age engine (the ``age`` binary in the pipeline against pyrage).

    .venv/bin/python bench/encryption_bench.py [--scale small|full] [--rounds N] [--keep]
    .venv/bin/python bench/encryption_bench.py --engines [--mb 500]

Default: on the bench stack of ``backup_bench.py`` (reused when kept), plain and encrypted
backups alternate for ``--rounds`` rounds; medians of wall time, CPU and peak RSS are printed
with the overhead (target: at most +15 %).

``--engines``: streams ``--mb`` MB (60 % random, 40 % text) through each engine in the push
shape ArtifactWriter needs (the compressor writes, the engine encrypts, a hash and the file
receive the ciphertext), then decrypts it; wall, CPU, peak RSS; and how much a second Python
thread is slowed while each engine encrypts (the backup runs two stage threads). pyrage is
measured only when importable (``pip install pyrage`` into a scratch venv).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 1 << 20


def keypair(workdir: Path) -> tuple[Path, str]:
    key = workdir / "identity.txt"
    p = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True,
                       check=True)
    return key, p.stderr.split("Public key:")[1].strip()


# -- --engines ----------------------------------------------------------------------------------
def make_data(path: Path, mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mb * 600_000 // CHUNK):
            f.write(os.urandom(CHUNK))
        line = b'{"ts": 1700000000, "level": "info", "msg": "function invoked", "ms": 12}\n'
        block = line * (CHUNK // len(line))
        for _ in range(mb * 400_000 // len(block)):
            f.write(block)


def spin(stop: threading.Event, out: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
    out.append(n)


def timed(fn: Any, with_spinner: bool = False) -> dict[str, float]:
    stop, counts = threading.Event(), []
    th = threading.Thread(target=spin, args=(stop, counts)) if with_spinner else None
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    if th:
        th.start()
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    stop.set()
    if th:
        th.join()
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
           + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    return {"wall": wall, "cpu": cpu, "spin_per_s": counts[0] / wall if counts else 0.0,
            "rss_mb": max(r1.ru_maxrss, c1.ru_maxrss) / 1024}


def engines(mb: int) -> int:
    from dcb.services import encryption as enc
    from dcb.services.artifacts import ArtifactWriter, open_decompressed

    work = Path(tempfile.mkdtemp(prefix="dcbenc-"))
    try:
        data = work / "data"
        make_data(data, mb)
        key, recipient = keypair(work)
        enc.use_identity_file(key)

        def plain() -> None:
            with ArtifactWriter(work / "plain.out", "none") as w:
                with open(data, "rb") as f:
                    while b := f.read(CHUNK):
                        w.write(b)
                w.commit()

        def binary() -> None:
            with ArtifactWriter(work / "age.out", "none", recipients=(recipient,)) as w:
                with open(data, "rb") as f:
                    while b := f.read(CHUNK):
                        w.write(b)
                w.commit()

        def binary_dec() -> None:
            with open_decompressed(work / "age.out", "none") as f:
                while f.read(CHUNK):
                    pass

        cases: list[tuple[str, Any]] = [("plain write + SHA-256", plain),
                                        ("age binary: encrypt", binary),
                                        ("age binary: decrypt", binary_dec)]
        try:
            import pyrage  # type: ignore[import-not-found]

            rec = pyrage.x25519.Recipient.from_str(recipient)
            ident = pyrage.x25519.Identity.from_str(
                next(ln for ln in key.read_text().splitlines() if ln.startswith("AGE-SECRET")))

            class Sink(io.RawIOBase):
                def __init__(self, path: Path) -> None:
                    self.f = open(path, "wb")  # noqa: SIM115
                    self.h = hashlib.sha256()

                def writable(self) -> bool:
                    return True

                def write(self, b: Any) -> int:
                    self.h.update(b)
                    return self.f.write(b)

            def py_enc() -> None:
                # pyrage pulls from a reader: the push side needs a pipe and a thread.
                r, w = os.pipe()
                sink = Sink(work / "pyrage.out")
                t = threading.Thread(target=lambda: pyrage.encrypt_io(
                    os.fdopen(r, "rb"), sink, [rec]))
                t.start()
                with os.fdopen(w, "wb") as pw, open(data, "rb") as f:
                    while b := f.read(CHUNK):
                        pw.write(b)
                t.join()
                sink.f.close()

            def py_dec() -> None:
                class Null(io.RawIOBase):
                    def writable(self) -> bool:
                        return True

                    def write(self, b: Any) -> int:
                        return len(b)

                with open(work / "pyrage.out", "rb") as f:
                    pyrage.decrypt_io(f, Null(), [ident])

            cases += [("pyrage: encrypt", py_enc), ("pyrage: decrypt", py_dec)]
        except ImportError:
            print("(pyrage not importable: its rows are skipped)")
        rows = []
        idle = timed(lambda: time.sleep(2), with_spinner=True)["spin_per_s"]
        for name, fn in cases:
            fig = timed(fn)
            spun = timed(fn, with_spinner=True)["spin_per_s"] if "encrypt" in name else 0
            rows.append([name, f"{fig['wall']:.2f} s", f"{mb / fig['wall']:.0f} MB/s",
                         f"{fig['cpu']:.2f} s", f"{fig['rss_mb']:.0f} MB",
                         f"{100 * spun / idle:.0f} %" if spun else "-"])
        from backup_bench import table

        print(table(rows, ["case", "wall", "throughput", "CPU", "peak RSS",
                           "other thread's speed"]))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- backups ------------------------------------------------------------------------------------
def backups(args: argparse.Namespace) -> int:
    import backup_bench as bb
    import docker

    dcb = bb.find_dcb()
    client = docker.from_env(timeout=600)
    workdir = Path(tempfile.mkdtemp(prefix="dcbencbench-"))
    stack = None
    try:
        stack, _ = bb.find_or_create(client, bb.SCALES[args.scale], workdir)
        bb.measure_data(client, stack)
        _key, recipient = keypair(workdir)
        (workdir / "plain").mkdir()
        (workdir / "enc").mkdir()
        plain_cfg, plain_dir = bb.write_config(stack, workdir / "plain", [])
        enc_cfg, enc_dir = bb.write_config(stack, workdir / "enc",
                                           [f'encryption.recipients=["{recipient}"]'])
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "encrypted": []}
        for r in range(1, args.rounds + 1):
            order = ("plain", "encrypted") if r % 2 else ("encrypted", "plain")
            for which in order:
                cfg, bdir = (plain_cfg, plain_dir) if which == "plain" else (enc_cfg, enc_dir)
                res = bb.run_new(stack, dcb, cfg, bdir)
                runs[which].append(res)
                bb.log(f"round {r}: {which} {res['wall']:.1f} s, peak RSS "
                       f"{res['maxrss_kb'] / 1024:.0f} MB, CPU "
                       f"{res['cpu_user'] + res['cpu_sys']:.1f} s")
        med = {k: statistics.median(x["wall"] for x in v) for k, v in runs.items()}
        print()
        print(bb.table([[k, f"{med[k]:.1f} s",
                         f"{statistics.median(x['cpu_user'] + x['cpu_sys'] for x in v):.1f} s",
                         f"{max(x['maxrss_kb'] for x in v) / 1024:.0f} MB",
                         f"{v[0]['output_bytes'] / 1e6:.0f} MB"] for k, v in runs.items()],
                       ["backup", "median wall", "dcb CPU", "peak RSS", "output"]))
        print(f"\nencryption overhead: {100 * (med['encrypted'] / med['plain'] - 1):+.1f} % "
              f"(target <= +15 %; {args.rounds} rounds, scale {args.scale})")
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))
        return 0
    finally:
        if stack is not None and not args.keep:
            bb.destroy(client, stack.prefix)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scale", choices=("full", "small"), default="full")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the bench stack for the next run")
    p.add_argument("--engines", action="store_true", help="compare the age binary and pyrage")
    p.add_argument("--mb", type=int, default=500, help="--engines: MB streamed")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    args = p.parse_args()
    return engines(args.mb) if args.engines else backups(args)


if __name__ == "__main__":
    sys.exit(main())
