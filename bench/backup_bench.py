#!/usr/bin/env python3
"""Backup benchmark: the old bash method against ``dcb backup`` on the same, deterministic data.

    .venv/bin/python bench/backup_bench.py [--scale small|full] [--rounds N] [--keep]

1. Builds a disposable stack on the local Docker engine (names ``dcbbench<hex>-...``, label
   ``dcb.bench=1``, ``--network none``): a PostgreSQL container whose data lives in a named
   volume, with ``dart_cloud`` (pgbench scale 30 + a 200k-row JSON table, ~0.42 GB as plain
   SQL) and ``functions_db`` (~40 MB); and an "app" busybox container with a second volume of
   ~1 GB (20k small text/JSON/log files, rotated logs, ~300 MB of seeded pseudo-random data).
   ``--scale small`` is about 10x smaller. Every byte comes from fixed seeds.
2. Times the old method: ``docker exec pg_dump | gzip`` per database, then
   ``docker run busybox tar czf`` per volume (the PostgreSQL data volume too, as the old
   scripts did), one after the other.
3. Times ``dcb backup --config CFG -q`` and its peak RSS (``getrusage(RUSAGE_CHILDREN)`` in a
   fresh Python wrapper, so nothing else pollutes the figure), and reads dcb's per-stage
   figures from the new set's manifest (``dcb show ID --json``).
4. Interleaves old and new for ``--rounds`` rounds (alternating which goes first) and prints
   medians, throughput over the raw data size, output sizes and the speed-up.

It never asserts anything: it prints figures. The stack is torn down at the end (also on
Ctrl-C, SIGTERM and errors) unless ``--keep``; a kept stack is found by its labels and reused
by the next run of the same scale, which saves about half a minute of data generation.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PG_IMAGE = os.environ.get("DCB_BENCH_PG_IMAGE", "dcb-test-postgres:15")
BUSYBOX_IMAGE = os.environ.get("DCB_BENCH_BUSYBOX_IMAGE", "dcb-test-busybox:1")
PREFIX = "dcbbench"
LABEL = "dcb.bench"
DATA_VERSION = "4"
"""Bump when the generated data changes: kept stacks of another version are rebuilt."""
DATABASES = ("dart_cloud", "functions_db")
SEED = 20240611
MTIME = 1_700_000_000
BATCH_BYTES = 128 * 1024 * 1024
"""Data goes into the app volume through put_archive, one tar file on disk at a time."""
MB = 1_000_000
QUIET = 0.25
LOCK_PATH = Path(tempfile.gettempdir()) / "dcbbench.lock"
"""Machine CPU busy fraction under which a timed run may start."""


# -- what gets generated ---------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    name: str
    pgbench_scale: int
    events_rows: int
    """rows in dart_cloud.function_events (JSON)"""
    functions: int
    """rows in functions_db.functions (source code text)"""
    invocations: int
    """rows in functions_db.invocations"""
    function_dirs: int
    """8 small files each in the app volume"""
    log_files: int
    log_file_bytes: int
    blob_files: int
    blob_file_bytes: int


SCALES = {
    "full": Scale("full", pgbench_scale=30, events_rows=200_000, functions=3_000,
                  invocations=150_000, function_dirs=2_500, log_files=80,
                  log_file_bytes=8_750_000, blob_files=30, blob_file_bytes=10_000_000),
    "small": Scale("small", pgbench_scale=3, events_rows=20_000, functions=300,
                   invocations=15_000, function_dirs=250, log_files=8,
                   log_file_bytes=8_750_000, blob_files=3, blob_file_bytes=10_000_000),
}

EVENTS_SQL = """
CREATE TABLE function_events (
    id bigint PRIMARY KEY,
    function_id integer NOT NULL,
    created_at timestamptz NOT NULL,
    payload jsonb NOT NULL
);
INSERT INTO function_events
SELECT i, 1 + (i::bigint * 7919) % 5000,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '13 seconds',
       jsonb_build_object(
           'event', (ARRAY['deploy', 'invoke', 'log', 'error', 'scale'])[1 + i % 5],
           'user', 'user-' || (i * 31) % 20000,
           'request_id', md5(i::text),
           'duration_ms', (i * 37) % 5000,
           'status', (ARRAY[200, 200, 200, 201, 204, 400, 404, 500])[1 + i % 8],
           'region', (ARRAY['eu-west-1', 'us-east-1', 'ap-south-1'])[1 + i % 3],
           'headers', jsonb_build_object(
               'content-type', 'application/json',
               'user-agent', 'dart-cloud-cli/' || (i % 17) || '.' || (i % 5) || '.0',
               'x-trace-id', md5((i * 3)::text),
               'x-span-id', substr(md5((i * 5)::text), 1, 16)),
           'message', 'function ' || (1 + (i::bigint * 7919) % 5000) || ' handled request '
                      || md5((i * 11)::text) || ' for tenant ' || (i * 13) % 977
                      || ' in ' || (i * 37) % 5000 || ' ms',
           'client', jsonb_build_object(
               'ip', '10.' || (i % 256) || '.' || ((i / 256) % 256) || '.' || ((i * 7) % 256),
               'path', '/v1/functions/fn-' || lpad(((i::bigint * 7919) % 5000)::text, 5, '0')
                       || '/invoke',
               'sdk', 'dart-cloud-client/2.' || (i % 7) || '.' || (i % 3) || ' (linux; x64)',
               'cache', (ARRAY['hit', 'miss', 'stale'])[1 + i % 3]),
           'tags', jsonb_build_array('fn', 'v' || (i % 9), 'shard-' || (i % 64)))
FROM generate_series(1, {rows}) AS i;
CREATE INDEX function_events_fn ON function_events (function_id, created_at);
"""

FUNCTIONS_SQL = """
CREATE TABLE functions (
    id integer PRIMARY KEY,
    name text NOT NULL UNIQUE,
    runtime text NOT NULL,
    source text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO functions
SELECT i, 'fn-' || lpad(i::text, 5, '0'), 'dart-3.' || (i % 6),
       (SELECT string_agg(format('  final v%s = await call%s(%L); // %s', j, (i * j) % 97,
                                 md5((i * 1000 + j)::text), md5((i + j)::text)), E'\\n')
        FROM generate_series(1, 50 + i % 40) AS j),
       timestamptz '2023-06-01 00:00:00+00' + i * interval '17 minutes'
FROM generate_series(1, {functions}) AS i;
CREATE TABLE invocations (
    id bigint PRIMARY KEY,
    function_id integer NOT NULL REFERENCES functions,
    started_at timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    status integer NOT NULL,
    log text NOT NULL
);
INSERT INTO invocations
SELECT i, 1 + (i::bigint * 104729) % {functions},
       timestamptz '2024-03-01 00:00:00+00' + i * interval '7 seconds',
       (i * 53) % 3000, (ARRAY[200, 200, 200, 500, 404])[1 + i % 5],
       'invocation ' || md5(i::text) || ' cold=' || (i % 2 = 0) || ' mem='
       || (64 + i % 448) || 'MB trace=' || md5((i * 7)::text)
FROM generate_series(1, {invocations}) AS i;
"""

WORDS = ("function", "deploy", "invoke", "request", "response", "handler", "cloud", "dart",
    "runtime", "worker", "queue", "token", "session", "user", "project", "build", "cache",
    "timeout", "retry", "error", "status", "metric", "trace", "region", "bucket", "object",
    "stream", "event", "payload", "schema", "record", "index", "snapshot", "volume",
    "container", "image", "layer", "config", "secret", "route", "domain", "client", "server",
    "latency", "memory", "instance", "scale", "update", "create", "delete", "fetch", "parse",
    "encode", "decode", "validate", "tenant", "quota", "billing", "webhook", "cron", "schedule")
LEVELS = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
COMPONENTS = ("api", "runtime", "scheduler", "builder", "gateway", "auth", "storage", "billing")


def _log_pool(rng: random.Random, n: int = 3000) -> list[str]:
    pool = []
    for _ in range(n):
        w = rng.sample(WORDS, 4)
        pool.append(
            f"{rng.choice(LEVELS):5} [{rng.choice(COMPONENTS)}] {w[0]} {w[1]} for "
            f"fn-{rng.randrange(5000):05d} tenant={rng.randrange(977)} {w[2]}={w[3]}"
            f"{'' if rng.random() < 0.7 else ' status=' + str(rng.choice((400, 404, 500)))}")
    return pool


_LOG_POOL = _log_pool(random.Random(f"{SEED}:log-pool"))


def log_text(rng: random.Random, size: int, start: int) -> bytes:
    """About ``size`` bytes of timestamped log lines, ending with a newline."""
    blocks: list[str] = []
    n, ms, last_sec, stamp = 0, start * 1000, -1, ""
    while n < size:
        k = max(1, min(512, (size - n) // 120 + 1))
        bodies = rng.choices(_LOG_POOL, k=k)
        rids = rng.getrandbits(32 * k).to_bytes(4 * k, "little").hex()
        lines = []
        for j, body in enumerate(bodies):
            ms += 17 + (j * 7919 + ms) % 480
            sec, milli = divmod(ms, 1000)
            if sec != last_sec:
                last_sec, stamp = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            lines.append(f"{stamp}.{milli:03d}Z {body} req={rids[8 * j:8 * j + 8]} "
                         f"dur={(j * 131 + ms) % 2000}ms\n")
        block = "".join(lines)
        blocks.append(block)
        n += len(block)
    return "".join(blocks).encode()


def dart_source(rng: random.Random, lines: int) -> bytes:
    out = ["import 'dart:async';", "import 'package:dart_cloud/runtime.dart';", ""]
    for k in range(lines):
        a, b, c = rng.choice(WORDS), rng.choice(WORDS).capitalize(), rng.choice(WORDS)
        t = k % 5
        if t == 0:
            out.append(f"Future<{b}> {a}{c.capitalize()}{k}(Request req) async {{")
        elif t == 1:
            out.append(f"  final {a}{k} = await req.{c}('{a}-{rng.randrange(1 << 20):x}');")
        elif t == 2:
            out.append(f"  if ({a}{k - 1}.{c} == null) throw StateError('{b} missing');")
        elif t == 3:
            out.append(f"  return {b}.from{c.capitalize()}({a}{k - 2});")
        else:
            out.append("}")
    return ("\n".join(out) + "\n").encode()


def function_dir_files(i: int) -> list[tuple[str, bytes]]:
    """The 8 small files of one function's directory in the app volume."""
    rng = random.Random(f"{SEED}:fn:{i}")
    name = f"fn-{i:05d}"
    words = " ".join(rng.choices(WORDS, k=rng.randrange(150, 450)))
    config = {"name": name, "runtime": f"dart-3.{i % 6}", "memory_mb": 64 << (i % 4),
              "timeout_s": 5 + i % 55, "env": {f"VAR_{k}": rng.choice(WORDS) for k in range(8)},
              "routes": [f"/{rng.choice(WORDS)}/{rng.choice(WORDS)}" for _ in range(6)],
              "owner": f"user-{rng.randrange(20000)}", "checksum": f"{rng.getrandbits(128):032x}"}
    metrics = [{"t": MTIME + k * 60, "invocations": rng.randrange(1000),
                "p50_ms": rng.randrange(5, 300), "p99_ms": rng.randrange(300, 3000),
                "errors": rng.randrange(20)} for k in range(rng.randrange(10, 60))]
    return [
        (f"functions/{name}/main.dart", dart_source(rng, rng.randrange(40, 150))),
        (f"functions/{name}/lib/handler.dart", dart_source(rng, rng.randrange(30, 110))),
        (f"functions/{name}/lib/models.dart", dart_source(rng, rng.randrange(10, 60))),
        (f"functions/{name}/pubspec.yaml",
         f"name: {name.replace('-', '_')}\nversion: 1.{i % 7}.{i % 13}\nenvironment:\n"
         f"  sdk: '>=3.0.0 <4.0.0'\ndependencies:\n  dart_cloud: ^2.{i % 4}.0\n".encode()),
        (f"functions/{name}/config.json", json.dumps(config, indent=2).encode()),
        (f"functions/{name}/README.md", f"# {name}\n\n{words}\n".encode()),
        (f"functions/{name}/metrics.json", json.dumps(metrics).encode()),
        (f"functions/{name}/deploy.log",
         log_text(rng, rng.randrange(1500, 9000), MTIME + i * 3600)),
    ]


class SeededReader:
    """A file-like source of ``size`` pseudo-random (incompressible) bytes from a seed."""

    def __init__(self, seed: str, size: int) -> None:
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def volume_entries(scale: Scale) -> Iterator[tuple[str, bytes | SeededReader | None, int]]:
    """``(path, content, size)`` for the app volume; content None is a directory."""
    for d in ("functions", "logs", "logs/app", "logs/archive", "cache", "cache/builds"):
        yield d, None, 0
    for i in range(scale.function_dirs):
        yield f"functions/fn-{i:05d}", None, 0
        yield f"functions/fn-{i:05d}/lib", None, 0
        for path, data in function_dir_files(i):
            yield path, data, len(data)
    for k in range(scale.log_files):
        rng = random.Random(f"{SEED}:log:{k}")
        day = time.strftime("%Y-%m-%d", time.gmtime(MTIME + k * 86400))
        where = "app" if k % 4 else "archive"
        data = log_text(rng, scale.log_file_bytes, MTIME + k * 86400)
        yield f"logs/{where}/dart-cloud-{day}.log", data, len(data)
    for k in range(scale.blob_files):
        yield (f"cache/builds/build-{k:03d}.snapshot",
               SeededReader(f"{SEED}:blob:{k}", scale.blob_file_bytes), scale.blob_file_bytes)


# -- the stack -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    prefix: str
    scale: Scale

    @property
    def pg(self) -> str:
        return f"{self.prefix}-postgres"

    @property
    def app(self) -> str:
        return f"{self.prefix}-app"

    @property
    def pg_volume(self) -> str:
        return f"{self.prefix}_postgres_data"

    @property
    def app_volume(self) -> str:
        return f"{self.prefix}_app_data"

    @property
    def volumes(self) -> tuple[str, str]:
        return (self.pg_volume, self.app_volume)

    def labels(self, role: str) -> dict[str, str]:
        return {LABEL: "1", f"{LABEL}.prefix": self.prefix, f"{LABEL}.scale": self.scale.name,
                f"{LABEL}.data": DATA_VERSION, f"{LABEL}.role": role}

    def short(self, name: str) -> str:
        """A volume's name without the stack's prefix, for tables."""
        return name.removeprefix(self.prefix + "_")

    @property
    def fingerprint(self) -> str:
        return f"{self.scale.name}:{DATA_VERSION}"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], *, input_: bytes | None = None, timeout: float | None = 3600,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    r = run_child(cmd, input_=input_, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed (exit {r.returncode}): "
                           f"{r.stderr.decode(errors='replace')[-1500:]}")
    return r


def _on_sigterm(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


_lock_fd: int | None = None


def bench_lock(wait: float = 3600) -> None:
    """One benchmark at a time on this host, held until the process exits.

    Benchmarks share kept stacks (``restore_bench.py`` uses this module too) and would skew
    each other's timings; a second one waits here instead of removing a stack the first is
    still building.
    """
    global _lock_fd
    if _lock_fd is not None:
        return
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _lock_fd = fd
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise SystemExit(f"another benchmark still holds {LOCK_PATH}") from None
            if not warned:
                log(f"another benchmark is running (it holds {LOCK_PATH}): waiting for it")
                warned = True
            time.sleep(2)


def run_child(cmd: list[str], *, input_: bytes | None = None, timeout: float | None = None,
              env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a child in its own session; on Ctrl-C/SIGTERM give it one SIGINT and time to clean up.

    A session of its own keeps the terminal's SIGINT from reaching it twice (dcb would cut its
    own cleanup short on a second one).
    """
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if input_ is not None else subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(input_, timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(60)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def psql(st: Stack, db: str, sql: str) -> str:
    r = sh(["docker", "exec", "-i", st.pg, "psql", "-U", "postgres", "-d", db, "-X", "-q",
            "-At", "-v", "ON_ERROR_STOP=1"], input_=sql.encode())
    return r.stdout.decode()


def wait_for_postgres(client: docker.DockerClient, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = client.containers.get(name)
        if c.status != "running":
            raise RuntimeError(f"{name} exited: {c.logs().decode(errors='replace')[-2000:]}")
        if c.exec_run(["psql", "-U", "postgres", "-Atc", "select 1"]).exit_code == 0:
            return
        time.sleep(0.3)
    raise TimeoutError(f"PostgreSQL in {name} not ready after {timeout:.0f}s")


def destroy(client: docker.DockerClient, prefix: str) -> None:
    flt: dict[str, Any] = {"label": f"{LABEL}.prefix={prefix}"}
    for c in client.containers.list(all=True, filters=flt):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=True)
    for v in client.volumes.list(filters=flt):
        with contextlib.suppress(docker.errors.NotFound):
            v.remove(force=True)


def remove_helpers(client: docker.DockerClient) -> None:
    """Old-method tar containers left by an interrupted run."""
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}.role=helper"}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True)


def is_ready(client: docker.DockerClient, st: Stack) -> bool:
    """Both containers and volumes exist, PostgreSQL answers and holds the ready marker."""
    try:
        for v in st.volumes:
            client.volumes.get(v)
        for name in (st.pg, st.app):
            c = client.containers.get(name)
            if c.status != "running":
                c.start()
        wait_for_postgres(client, st.pg, timeout=60)
        r = client.containers.get(st.pg).exec_run(
            ["psql", "-U", "postgres", "-Atc", "SELECT fingerprint FROM dcbbench_ready"])
        out = r.output if isinstance(r.output, bytes) else b""
        return r.exit_code == 0 and out.decode().strip() == st.fingerprint
    except (docker.errors.DockerException, RuntimeError, TimeoutError):
        return False


def find_or_create(client: docker.DockerClient, scale: Scale, workdir: Path) -> tuple[Stack, bool]:
    """Reuse a ready stack of this scale (kept by ``--keep``); remove broken leftovers."""
    bench_lock()
    remove_helpers(client)
    found: dict[str, dict[str, str]] = {}
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        found.setdefault(c.labels.get(f"{LABEL}.prefix", ""), dict(c.labels))
    for v in client.volumes.list(filters={"label": LABEL}):
        found.setdefault((v.attrs.get("Labels") or {}).get(f"{LABEL}.prefix", ""),
                         dict(v.attrs.get("Labels") or {}))
    reuse: Stack | None = None
    for prefix, labels in sorted(found.items()):
        if not prefix.startswith(PREFIX):
            continue
        other = SCALES.get(labels.get(f"{LABEL}.scale", ""))
        if other is not None and labels.get(f"{LABEL}.data") == DATA_VERSION:
            st = Stack(prefix, other)
            if is_ready(client, st):
                if other == scale and reuse is None:
                    reuse = st
                continue  # a kept stack of another scale stays
        log(f"removing incomplete or outdated benchmark stack {prefix}")
        destroy(client, prefix)
    if reuse is not None:
        log(f"reusing kept stack {reuse.prefix} ({scale.name})")
        return reuse, True
    return create_stack(client, scale, workdir), False


def create_stack(client: docker.DockerClient, scale: Scale, workdir: Path) -> Stack:
    st = Stack(PREFIX + secrets.token_hex(3), scale)
    log(f"creating stack {st.prefix} ({scale.name}); about half a minute at full scale on 2 cores")
    t0 = time.monotonic()
    try:
        client.volumes.create(st.pg_volume, labels=st.labels("postgres-data"))
        client.volumes.create(st.app_volume, labels=st.labels("app-data"))
        client.containers.run(
            PG_IMAGE, name=st.pg, detach=True, network_mode="none", labels=st.labels("postgres"),
            environment={"POSTGRES_PASSWORD": secrets.token_urlsafe(16)},
            volumes={st.pg_volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
            stop_signal="SIGINT")
        client.containers.run(
            BUSYBOX_IMAGE, ["sleep", "2147483647"], name=st.app, detach=True, init=True,
            network_mode="none", labels=st.labels("app"),
            volumes={st.app_volume: {"bind": "/data", "mode": "rw"}})
        wait_for_postgres(client, st.pg)
        fill_databases(st)
        fill_volume(client, st, workdir)
        settle_wal(st)
        psql(st, "postgres", "CREATE TABLE dcbbench_ready (fingerprint text);"
                             f"INSERT INTO dcbbench_ready VALUES ('{st.fingerprint}');")
    except BaseException:
        log(f"stack creation failed or interrupted: removing {st.prefix}")
        destroy(client, st.prefix)
        raise
    log(f"stack {st.prefix} ready in {time.monotonic() - t0:.0f} s")
    return st


def settle_wal(st: Stack) -> None:
    """Bring pg_wal to a quiet server's size (about min_wal_size, 80 MB).

    A bulk load leaves ~0.7 GB of recycled WAL segments behind, which checkpoints (one per
    pg_basebackup) then trim bit by bit: the data volume would shrink from one benchmark
    round to the next. Each WAL switch consumes one recycled segment and each checkpoint
    lowers PostgreSQL's estimate of the WAL it needs, so a few dozen cycles reach the steady
    state.
    """
    size = 0
    for _ in range(20):
        psql(st, "postgres", "SELECT pg_switch_wal(); CHECKPOINT;\n" * 20)
        size = int(psql(st, "postgres", "SELECT sum(size) FROM pg_ls_waldir();").strip())
        if size <= 100 * 1024 * 1024:
            break
    log(f"pg_wal settled at {size / MB:.0f} MB")


def fill_databases(st: Stack) -> None:
    s = st.scale
    for db in DATABASES:
        psql(st, "postgres", f"CREATE DATABASE {db};")
    t0 = time.monotonic()
    sh(["docker", "exec", st.pg, "pgbench", "-i", "-q", "-s", str(s.pgbench_scale),
        "-U", "postgres", "dart_cloud"])
    psql(st, "dart_cloud", EVENTS_SQL.format(rows=s.events_rows))
    psql(st, "functions_db", FUNCTIONS_SQL.format(functions=s.functions,
                                                  invocations=s.invocations))
    for db in DATABASES:
        psql(st, db, "VACUUM (FREEZE, ANALYZE);")
    log(f"databases filled in {time.monotonic() - t0:.0f} s")


def fill_volume(client: docker.DockerClient, st: Stack, workdir: Path) -> None:
    """Write the app volume through put_archive, one bounded tar file on disk at a time."""
    t0 = time.monotonic()
    batch = workdir / "fill.tar"
    total = files = 0
    entries = enumerate(volume_entries(st.scale))
    done = False
    while not done:
        in_batch = 0
        with tarfile.open(batch, "w", format=tarfile.PAX_FORMAT) as tf:
            for i, (path, content, size) in entries:
                ti = tarfile.TarInfo(path)
                ti.uid = ti.gid = 1000
                ti.mtime = MTIME + i
                if content is None:
                    ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                    tf.addfile(ti)
                    continue
                ti.size, ti.mode = size, 0o644
                tf.addfile(ti, content if isinstance(content, SeededReader)
                           else io.BytesIO(content))
                total += size
                files += 1
                in_batch += size
                if in_batch >= BATCH_BYTES:
                    break
            else:
                done = True
        with open(batch, "rb") as f:
            if not client.api.put_archive(st.app, "/data", f):
                raise RuntimeError("put_archive into the app volume failed")
        batch.unlink()
    log(f"app volume filled: {files} files, {total / MB:.0f} MB in "
        f"{time.monotonic() - t0:.0f} s")


# -- measurements ----------------------------------------------------------------------------
def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [float(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


class CpuMeter:
    def __enter__(self) -> CpuMeter:
        self.start = cpu_times()
        self.busy = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        end = cpu_times()
        total = end[1] - self.start[1]
        self.busy = (end[0] - self.start[0]) / total if total else 0.0


def settle(max_wait: float = 180) -> float:
    """Untimed, before each timed run: flush the previous run's dirty pages, then wait (up to
    ``max_wait`` s) until the machine is quiet: other work on a shared host skews the figures.

    Returns the CPU busy fraction of the last second waited.
    """
    subprocess.run(["sync"], check=False)
    t0 = time.monotonic()
    warned = False
    while True:
        a = cpu_times()
        time.sleep(1)
        b = cpu_times()
        busy = (b[0] - a[0]) / max(b[1] - a[1], 1e-9)
        if busy < QUIET:
            return busy
        if time.monotonic() - t0 > max_wait:
            log(f"machine still {busy * 100:.0f}% busy after {max_wait:.0f} s: measuring anyway")
            return busy
        if not warned:
            log(f"waiting for a quiet machine (CPU {busy * 100:.0f}% busy)")
            warned = True


def measure_data(client: docker.DockerClient, st: Stack) -> dict[str, dict[str, int]]:
    """Raw sizes: plain SQL per database, tar stream per volume (also warms the page cache)."""
    out: dict[str, dict[str, int]] = {}
    for db in DATABASES:
        r = sh(["docker", "exec", st.pg, "sh", "-c",
                f"pg_dump -U postgres -d {db} | wc -c"])
        out[f"database {db}"] = {"bytes": int(r.stdout.split()[0])}
    for v in st.volumes:
        r = sh(["docker", "run", "--rm", "--network", "none", "--log-driver", "none",
                "--label", f"{LABEL}.role=helper", "--label", f"{LABEL}.prefix={st.prefix}",
                "-v", f"{v}:/v:ro", BUSYBOX_IMAGE, "sh", "-c",
                "tar cf - -C /v . | wc -c; find /v -type f | wc -l"])
        nbytes, nfiles = (int(x) for x in r.stdout.split()[:2])
        out[f"volume {st.short(v)}"] = {"bytes": nbytes, "files": nfiles}
    return out


def run_old(st: Stack, outdir: Path, round_no: int) -> dict[str, Any]:
    """The bash scripts dcb replaces: one step after the other, gzip everywhere."""
    outdir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    warnings: list[str] = []
    busy_before = settle()
    with CpuMeter() as cpu:
        t0 = time.perf_counter()
        for db in DATABASES:
            t = time.perf_counter()
            sh(["bash", "-o", "pipefail", "-c",
                f"docker exec {st.pg} pg_dump -U postgres {db} | gzip > {outdir}/{db}.sql.gz"])
            steps[f"database {db}"] = time.perf_counter() - t
        for i, v in enumerate(st.volumes):
            t = time.perf_counter()
            r = run_child(["docker", "run", "--rm", "--name", f"{st.prefix}-old-{round_no}-{i}",
                           "--label", f"{LABEL}.role=helper",
                           "--label", f"{LABEL}.prefix={st.prefix}",
                           "--network", "none", "-v", f"{v}:/v", "-v", f"{outdir}:/out",
                           BUSYBOX_IMAGE, "tar", "czf", f"/out/{st.short(v)}.tar.gz",
                           "-C", "/v", "."])
            steps[f"volume {st.short(v)}"] = time.perf_counter() - t
            if r.returncode != 0:
                msg = (f"tar czf {st.short(v)} exit {r.returncode}: "
                       f"{r.stderr.decode(errors='replace').strip()[-300:]}")
                if v != st.pg_volume:
                    raise RuntimeError(msg)
                warnings.append(msg + " (a live data directory, as the old scripts did)")
        total = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in outdir.iterdir())
    shutil.rmtree(outdir)
    return {"wall": total, "steps": steps, "output_bytes": size, "cpu_busy": cpu.busy,
            "busy_before": busy_before, "warnings": warnings}


# Runs dcb as its only child and reports its peak RSS: RUSAGE_CHILDREN of a fresh process
# covers exactly that child (and what it waited for). SIGINT is left to dcb's own cleanup.
WRAPPER = r"""
import json, resource, signal, subprocess, sys, time
signal.signal(signal.SIGINT, lambda *a: None)
t0 = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"rc": p.returncode, "wall": wall, "maxrss_kb": ru.ru_maxrss, "utime": ru.ru_utime,
           "stime": ru.ru_stime, "stdout": p.stdout.decode(errors="replace"),
           "stderr": p.stderr.decode(errors="replace")[-3000:]}, sys.stdout)
"""


def dcb_env() -> dict[str, str]:
    """The caller's environment without DCB_* overrides or a password: only the file counts."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("DCB_") and k != "POSTGRES_PASSWORD"}


def run_new(st: Stack, dcb: str, cfg: Path, backup_dir: Path) -> dict[str, Any]:
    busy_before = settle()
    with CpuMeter() as cpu:
        r = run_child([sys.executable, "-c", WRAPPER, dcb, "backup", "--config", str(cfg), "-q"],
                      env=dcb_env(), cwd=cfg.parent)
    try:
        res = json.loads(r.stdout)
    except ValueError:
        raise RuntimeError(f"the RSS wrapper failed: {r.stderr.decode(errors='replace')}") from None
    if res["rc"] != 0:
        raise RuntimeError(f"dcb backup failed (exit {res['rc']}): {res['stderr']}")
    set_id = res["stdout"].strip().splitlines()[-1]
    show = sh([dcb, "--config", str(cfg), "show", set_id, "--json"], env=dcb_env())
    manifest = json.loads(show.stdout)
    stages: dict[str, dict[str, Any]] = {}
    for a in manifest["artifacts"]:
        src = a.get("source") or {}
        name = st.short(a["name"])
        stages[a["kind"] if a["kind"] == name else f"{a['kind']} {name}"] = {
            "seconds": src.get("seconds"), "size_bytes": a["size_bytes"],
            "raw_bytes": src.get("raw_bytes"),
            "how": src.get("method") or f"{src.get('tool', '')} {src.get('format', '')}".strip(),
        }
    shutil.rmtree(backup_dir / set_id, ignore_errors=True)
    return {"wall": res["wall"], "maxrss_kb": res["maxrss_kb"], "cpu_user": res["utime"],
            "cpu_sys": res["stime"], "output_bytes": manifest["size_bytes"], "set": set_id,
            "manifest_seconds": manifest.get("duration_seconds"), "stages": stages,
            "cpu_busy": cpu.busy, "busy_before": busy_before}


def write_config(st: Stack, workdir: Path, extra: list[str]) -> tuple[Path, Path]:
    backup_dir = workdir / "backups"
    sections: dict[str, dict[str, Any]] = {
        "stack": {
            "postgres_container": st.pg,
            "postgres_user": "postgres",
            "databases": list(DATABASES),
            "volumes": list(st.volumes),
            "app_containers": [st.app],
            "postgres_data_volume": st.pg_volume,
            "stop_during_backup": [st.app],
        },
        "storage": {"backup_dir": str(backup_dir)},
    }
    for item in extra:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (eq and dot and section and name):
            raise SystemExit(f"--dcb-set expects SECTION.KEY=VALUE (TOML value), got {item!r}")
        sections.setdefault(section, {})[name] = _toml_value(value)
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v if isinstance(v, _Raw) else json.dumps(v)}"
                  for k, v in values.items()]
        lines.append("")
    path = workdir / "dcb.toml"
    path.write_text("\n".join(lines))
    return path, backup_dir


class _Raw(str):
    """A TOML value given on the command line, written as is."""


def _toml_value(text: str) -> _Raw:
    import tomllib

    try:
        tomllib.loads(f"x = {text}")
    except tomllib.TOMLDecodeError:
        return _Raw(json.dumps(text))  # a bare word: a string
    return _Raw(text)


# -- reporting -------------------------------------------------------------------------------
def machine_facts(client: docker.DockerClient, dcb: str) -> dict[str, str]:
    def cmd(args: list[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return "?"

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    info = client.info()
    ver = client.version()
    return {
        "nproc": cmd(["nproc"]),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "docker": f"engine {ver.get('Version')} (API {ver.get('ApiVersion')}), "
                  f"CLI {cmd(['docker', 'version', '--format', '{{.Client.Version}}'])}, "
                  f"storage driver {info.get('Driver')}",
        "python": platform.python_version(),
        "dcb": cmd([dcb, "--version"]),
        "user": "root" if os.geteuid() == 0 else f"uid {os.geteuid()}",
    }


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt_row(r: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt_row(header), "  ".join("-" * w for w in widths),
                      *(fmt_row(r) for r in rows)])


def report(facts: dict[str, str], st: Stack, data: dict[str, dict[str, int]],
           olds: list[dict[str, Any]], news: list[dict[str, Any]]) -> dict[str, Any]:
    raw = sum(d["bytes"] for d in data.values())
    print("\n== machine")
    for k, v in facts.items():
        print(f"{k:8} {v}")
    print(f"\n== data ({st.scale.name} scale, stack {st.prefix}); raw = plain SQL for a "
          "database, tar stream for a volume")
    rows = [[k, f"{d['bytes'] / MB:.1f}", str(d.get("files", "-"))] for k, d in data.items()]
    rows.append(["total", f"{raw / MB:.1f}", ""])
    print(table(rows, ["item", "raw MB", "files"]))

    old_wall = med([o["wall"] for o in olds])
    new_wall = med([n["wall"] for n in news])
    rss = max(n["maxrss_kb"] for n in news) / 1024
    print(f"\n== whole set: median of {len(olds)} rounds, old and new interleaved "
          "(MB = 10^6 bytes; MB/s over the raw size)")
    rows = [
        ["old (pg_dump|gzip, tar czf)", f"{old_wall:.1f}", f"{raw / MB / old_wall:.0f}",
         f"{med([o['output_bytes'] for o in olds]) / MB:.0f}", "-", "-",
         f"{med([o['cpu_busy'] for o in olds]) * 100:.0f}%"],
        ["dcb backup", f"{new_wall:.1f}", f"{raw / MB / new_wall:.0f}",
         f"{med([n['output_bytes'] for n in news]) / MB:.0f}", f"{rss:.0f}",
         f"{med([n['cpu_user'] + n['cpu_sys'] for n in news]):.1f}",
         f"{med([n['cpu_busy'] for n in news]) * 100:.0f}%"],
    ]
    print(table(rows, ["method", "wall s", "MB/s", "output MB", "peak RSS MB",
                       "dcb CPU s", "machine busy"]))
    speedup = old_wall / new_wall
    print(f"\nspeed-up: {speedup:.2f}x (target >= 3x: {'met' if speedup >= 3 else 'NOT met'}); "
          f"dcb peak RSS {rss:.0f} MB (target < 200 MB: {'met' if rss < 200 else 'NOT met'})")
    old_rounds = ", ".join(f"{o['wall']:.1f}" for o in olds)
    new_rounds = ", ".join(f"{n['wall']:.1f}" for n in news)
    print(f"per round: old {old_rounds} s; dcb {new_rounds} s")
    before = ", ".join(f"{x['busy_before'] * 100:.0f}%" for x in [*olds, *news])
    print(f"machine CPU busy in the second before each run (old runs, then dcb runs): {before}")
    no_pg = med([o["wall"] - o["steps"][f"volume {st.short(st.pg_volume)}"] for o in olds])
    print(f"old method without the postgres_data tar (what shared/PERFORMANCE.md timed): "
          f"{no_pg:.1f} s")

    print("\n== per item (median s). old: one after the other. dcb: the database stage "
          "(globals, then each database) and the volume stage run concurrently")
    rows = []
    for k, s0 in news[0]["stages"].items():
        secs = med([n["stages"][k]["seconds"] or 0.0 for n in news])
        raw_item = data.get(k, {}).get("bytes", 0)
        old_s = med([o["steps"][k] for o in olds]) if k in olds[0]["steps"] else None
        rows.append([
            k, f"{raw_item / MB:.1f}" if raw_item else "-",
            f"{old_s:.2f}" if old_s is not None else "-",
            f"{raw_item / MB / old_s:.0f}" if old_s and raw_item else "-",
            f"{secs:.2f}", f"{raw_item / MB / secs:.0f}" if raw_item and secs else "-",
            s0["how"], f"{(s0.get('raw_bytes') or 0) / MB:.1f}",
            f"{med([n['stages'][k]['size_bytes'] for n in news]) / MB:.1f}",
            f"{old_s / secs:.1f}x" if old_s and secs else "-",
        ])
    print(table(rows, ["item", "raw MB", "old s", "old MB/s", "dcb s", "dcb MB/s", "dcb how",
                       "stream MB", "dcb out MB", "ratio"]))
    print("(stream MB: bytes dcb received, before its own compression; custom-format dumps "
          "arrive compressed by pg_dump -Z1)")
    db_s = med([sum(v["seconds"] or 0 for k, v in n["stages"].items()
                    if not k.startswith("volume")) for n in news])
    vol_s = med([sum(v["seconds"] or 0 for k, v in n["stages"].items()
                     if k.startswith("volume")) for n in news])
    print(f"dcb: database stage {db_s:.1f} s, volume stage {vol_s:.1f} s, wall {new_wall:.1f} s "
          f"(run {med([n['manifest_seconds'] or 0 for n in news]):.1f} s by its manifest; the "
          "rest is start-up, pre-checks, container stop/start and the manifest)")
    for w in sorted({w for o in olds for w in o["warnings"]}):
        print(f"warning (old method): {w}")
    return {"raw_bytes": raw, "old_wall": old_wall, "dcb_wall": new_wall, "speedup": speedup,
            "dcb_peak_rss_mb": rss, "dcb_database_stage_s": db_s, "dcb_volume_stage_s": vol_s}


# -- main ------------------------------------------------------------------------------------
def find_dcb() -> str:
    for cand in (Path(sys.executable).parent / "dcb", REPO / ".venv" / "bin" / "dcb"):
        if cand.exists():
            return str(cand)
    found = shutil.which("dcb")
    if not found:
        raise SystemExit("dcb not found: run with .venv/bin/python")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="full",
                   help="full: ~0.46 GB of databases + ~1 GB volume; small: ~10x less")
    p.add_argument("--rounds", type=int, default=3, help="rounds of old + new (default 3)")
    p.add_argument("--keep", action="store_true",
                   help="keep the stack at the end for the next run (a kept stack of the "
                        "same scale is always reused)")
    p.add_argument("--workdir", metavar="DIR", help="where outputs go (default: $TMPDIR)")
    p.add_argument("--dcb-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra dcb config, e.g. storage.volume_access=helper (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--dcb", metavar="CMD", help="the dcb executable to measure "
                   "(default: dcb beside this Python, i.e. .venv/bin/dcb)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")

    signal.signal(signal.SIGTERM, _on_sigterm)
    dcb = args.dcb or find_dcb()
    client = docker.from_env(timeout=600)
    for image in (PG_IMAGE, BUSYBOX_IMAGE):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise SystemExit(f"image {image} not found: run tests/images/build.sh") from None
    workdir = Path(tempfile.mkdtemp(prefix="dcbbench-", dir=args.workdir))
    stack: Stack | None = None
    try:
        facts = machine_facts(client, dcb)
        stack, reused = find_or_create(client, SCALES[args.scale], workdir)
        log("measuring raw sizes (and warming the page cache)")
        data = measure_data(client, stack)
        cfg, backup_dir = write_config(stack, workdir, args.dcb_set)
        olds: list[dict[str, Any]] = []
        news: list[dict[str, Any]] = []
        for r in range(1, args.rounds + 1):
            order = ("old", "new") if r % 2 else ("new", "old")
            for which in order:
                if which == "old":
                    olds.append(run_old(stack, workdir / "old", r))
                    log(f"round {r}/{args.rounds}: old {olds[-1]['wall']:.1f} s  (steps: "
                        + ", ".join(f"{k} {v:.1f}" for k, v in olds[-1]["steps"].items()) + ")")
                else:
                    news.append(run_new(stack, dcb, cfg, backup_dir))
                    n = news[-1]
                    log(f"round {r}/{args.rounds}: dcb {n['wall']:.1f} s, peak RSS "
                        f"{n['maxrss_kb'] / 1024:.0f} MB  (stages: " + ", ".join(
                            f"{k} {v['seconds']:.1f}" for k, v in n["stages"].items()) + ")")
        summary = report(facts, stack, data, olds, news)
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"facts": facts, "scale": args.scale, "reused_stack": reused, "data": data,
                 "old": olds, "dcb": news, "summary": summary,
                 "dcb_config": cfg.read_text()}, indent=2))
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the teardown finish
        remove_helpers(client)
        if stack is not None and not args.keep:
            log(f"removing stack {stack.prefix}")
            destroy(client, stack.prefix)
        elif stack is not None:
            log(f"keeping stack {stack.prefix} for the next run (--keep)")
            with contextlib.suppress(docker.errors.DockerException):
                for name in (stack.pg, stack.app):  # an interrupted dcb may have left one stopped
                    c = client.containers.get(name)
                    if c.status != "running":
                        c.start()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
