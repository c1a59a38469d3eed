"""Local images for places no registry answers: the demo stack's and the test suite's.

PostgreSQL comes from Debian's own packages: ``debootstrap`` of bookworm with
``postgresql-15`` from the apt mirror this machine already uses, an entrypoint that takes the
official image's environment (``POSTGRES_PASSWORD``, ``POSTGRES_USER``, ``POSTGRES_DB``,
``PGDATA``), then ``docker import``. Images are cached by tag, and a build is reused under
another tag (the tests' and the demo's) through its recipe label, so a machine debootstraps
once. ``python -m dcb.services.images`` builds the test suite's images (tests/images/build.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from dcb.services.docker_gateway import DockerGateway
from dcb.services.errors import DcbError
from dcb.services.progress import (
    ByteMeter,
    LogLine,
    Reporter,
    StageFailed,
    StageFinished,
    StageStarted,
    null_reporter,
)

PG_IMAGE = "dcb-postgres:15"
"""The demo's locally built PostgreSQL image."""
OFFICIAL_PG_IMAGE = "postgres:16-bookworm"
"""Used instead where it is present locally or a registry answers."""
RECIPE_LABEL = "dcb.image.recipe"
PULL_TIMEOUT = 20

ENTRYPOINT = """\
#!/bin/sh
# Minimal stand-in for the official postgres image's entrypoint: same env vars
# (POSTGRES_PASSWORD, POSTGRES_USER, POSTGRES_DB, PGDATA), same data path.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
export PGDATA
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown -R postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:-postgres}" > "$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" \\
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
        createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
        pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_LISTEN:-*}" \\
    -c port="${PGPORT:-5432}" -c unix_socket_directories=/run/postgresql "$@"
"""

PG_CHANGES = (
    "ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
    ":/sbin:/bin",
    "ENV PGDATA=/var/lib/postgresql/data",
    "ENV LANG=C.UTF-8",
    'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
)
PG_RECIPE = "debian-bookworm-postgresql-15/" + hashlib.sha256(
    (ENTRYPOINT + "\n".join(PG_CHANGES)).encode()).hexdigest()[:12]
"""Identifies what a build holds: the same recipe under another tag is the same image."""

# debootstrap's phases, in order, for a progress line a person can follow.
_PHASES = (("Retrieving", "downloading packages"), ("Validating", "checking packages"),
           ("Extracting", "extracting the base system"), ("Installing", "installing"),
           ("Unpacking", "unpacking"), ("Configuring", "configuring"))


class ImageError(DcbError):
    """An image could not be found, pulled or built."""


def have_image(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _same_recipe(client: docker.DockerClient, recipe: str) -> str | None:
    """The id of a local image built from ``recipe`` under any tag, if there is one."""
    found = client.images.list(filters={"label": f"{RECIPE_LABEL}={recipe}"})
    return found[0].id if found else None


def try_pull(client: docker.DockerClient, image: str, report: Reporter,
             timeout: float = PULL_TIMEOUT) -> bool:
    """Pull ``image``; False (quickly) when no registry answers."""
    repo, _, tag = image.partition(":")
    report(LogLine(f"trying to pull {image} (at most {timeout:.0f}s)"))
    done = threading.Event()
    result: dict[str, bool] = {}

    def pull() -> None:
        try:
            client.api.pull(repo, tag=tag or "latest")
            result["ok"] = True
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            report(LogLine(f"no registry: {str(e).splitlines()[0][:160]}"))
        finally:
            done.set()

    threading.Thread(target=pull, daemon=True, name="dcb-pull").start()
    if not done.wait(timeout):
        report(LogLine(f"no answer from a registry in {timeout:.0f}s"))
        return False
    return bool(result.get("ok")) and have_image(client, image)


def debian_mirror(sources: Iterator[Path] | None = None) -> str | None:
    """The Debian mirror this machine's apt uses (classic or deb822 sources), not -security."""
    paths = sources or (Path(p) for p in [
        "/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
        *sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))])
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not (line.startswith("deb ") or line.startswith("URIs:")) or "-security" in line:
                continue
            m = re.search(r"https?://\S+/debian/?(?=\s|$)", line)
            if m:
                return m.group(0)
    return None


def build_postgres_image(client: docker.DockerClient, tag: str,
                         report: Reporter = null_reporter, reuse: bool = True) -> None:
    """Debian's PostgreSQL 15 as ``tag``: debootstrap, then ``docker import``. Needs root,
    ``debootstrap`` and the apt mirror; reports each phase and the import's bytes. With
    ``reuse``, an existing build of the same recipe is tagged instead."""
    existing = _same_recipe(client, PG_RECIPE) if reuse else None
    if existing is not None:
        repo, _, version = tag.partition(":")
        client.api.tag(existing, repo, version or "latest")
        report(LogLine(f"tagged the existing build {existing[7:19]} as {tag}"))
        return
    if os.geteuid() != 0:
        raise ImageError(f"building {tag} needs root (debootstrap)",
                         hint="run it once as root, e.g. sudo .venv/bin/dcb demo up")
    deboot = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)),
        None)
    if deboot is None:
        raise ImageError(f"building {tag} needs debootstrap",
                         hint="apt-get install debootstrap (deploy/setup.sh installs it)")
    mirror = debian_mirror()
    if mirror is None:
        raise ImageError("no Debian mirror found in /etc/apt/sources*",
                         hint="building the PostgreSQL image uses the machine's apt mirror")
    stage = f"build {tag}"
    report(StageStarted(stage))
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="dcb-pgroot.", dir="/var/tmp"))
    try:
        _debootstrap(deboot, root, mirror, report)
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                     "usr/share/locale", "var/lib/postgresql/15", "etc/postgresql/15"):
            shutil.rmtree(root / junk, ignore_errors=True)
        (root / "var/cache/apt").mkdir(parents=True, exist_ok=True)
        ep = root / "usr/local/bin/docker-entrypoint.sh"
        ep.parent.mkdir(parents=True, exist_ok=True)
        ep.write_text(ENTRYPOINT)
        ep.chmod(0o755)
        size = _import(client, root, tag, report)
    except BaseException as e:
        report(StageFailed(stage, str(e)[:200]))
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(StageFinished(stage, size, time.monotonic() - t0))


def _debootstrap(deboot: str, root: Path, mirror: str, report: Reporter) -> None:
    report(LogLine(f"debootstrap bookworm with postgresql-15 from {mirror} (a minute or two)"))
    proc = subprocess.Popen(
        [deboot, "--variant=minbase", "--include=postgresql-15", "bookworm", str(root), mirror],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        errors="replace")
    assert proc.stdout is not None
    tail: list[str] = []
    phase = ""
    try:
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            word = line[3:].split(" ", 1)[0] if line.startswith(("I: ", "W: ")) else ""
            for key, text in _PHASES:
                if word == key and text != phase:
                    phase = text
                    report(LogLine(f"debootstrap: {text}"))
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        raise ImageError(f"debootstrap exited {code}: " + " | ".join(tail[-3:]),
                         hint="is the apt mirror reachable? (`apt-get update`)")


def _import(client: docker.DockerClient, root: Path, tag: str, report: Reporter) -> int:
    """Stream a tar of ``root`` into ``docker import``; the bytes sent."""
    repo, _, version = tag.partition(":")
    tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert tar.stdout is not None
    meter = ByteMeter(f"import {tag}", report)
    stdout = tar.stdout

    def chunks() -> Iterator[bytes]:
        while block := stdout.read(1 << 20):
            meter.add(len(block))
            yield block

    try:
        changes = [*PG_CHANGES, f"LABEL {RECIPE_LABEL}={PG_RECIPE}"]
        out = client.api.import_image(src=chunks(), repository=repo, tag=version or "latest",
                                      changes=changes, stream_src=True)
    finally:
        with contextlib.suppress(OSError):
            stdout.close()
        code = tar.wait()
    if code != 0:
        raise ImageError(f"tar of the image root exited {code}")
    if "error" in str(out).lower() or not have_image(client, tag):
        raise ImageError(f"docker import of {tag} failed: {str(out)[:200]}")
    meter.flush()
    return meter.done


def ensure_postgres_image(gw: DockerGateway, report: Reporter = null_reporter,
                          official: str = OFFICIAL_PG_IMAGE, local: str = PG_IMAGE) -> str:
    """A PostgreSQL image to run: the official one if present or pullable, else ``local``
    (built once, then cached by tag). Returns the image's name."""
    client = gw.client
    for image in (official, local):
        if have_image(client, image):
            return image
    if _same_recipe(client, PG_RECIPE) is None and try_pull(client, official, report):
        return official
    build_postgres_image(client, local, report)
    return local


def build_busybox_image(client: docker.DockerClient, tag: str) -> None:
    """busybox-static with its applets linked, for the tests' helper and backend containers."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise ImageError("busybox not found", hint="apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "tmp", "data"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin/busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                                 check=True).stdout.split()
        for a in applets:
            if a != "busybox":
                (root / "bin" / a).symlink_to("busybox")
        data = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True,
                              check=True).stdout
        repo, _, version = tag.partition(":")
        client.api.import_image_from_data(data, repository=repo, tag=version or "latest",
                                          changes=["ENV PATH=/bin", 'CMD ["sh"]'])


def _main(argv: list[str] | None = None) -> int:
    """The test suite's images (tests/images/build.sh), cached by tag; FORCE=1 rebuilds."""
    ap = argparse.ArgumentParser(prog="python -m dcb.services.images")
    ap.add_argument("--postgres", default="dcb-test-postgres:15", metavar="TAG")
    ap.add_argument("--busybox", default="dcb-test-busybox:1", metavar="TAG")
    args = ap.parse_args(argv)
    force = os.environ.get("FORCE") == "1"
    client = docker.from_env(timeout=600)

    def say(e: object) -> None:
        if isinstance(e, LogLine | StageFinished | StageFailed):
            print(getattr(e, "message", None) or e, file=sys.stderr, flush=True)

    try:
        if force or not have_image(client, args.busybox):
            build_busybox_image(client, args.busybox)
            print(f"built {args.busybox}", file=sys.stderr)
        if force or not have_image(client, args.postgres):
            if not args.postgres.startswith("dcb-"):
                print(f"{args.postgres} is not a local image; pull it with docker pull first",
                      file=sys.stderr)
                return 1
            build_postgres_image(client, args.postgres, say, reuse=not force)
            print(f"built {args.postgres}", file=sys.stderr)
    except DcbError as e:
        print(f"error: {e.message}" + (f" ({e.hint})" if e.hint else ""), file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
