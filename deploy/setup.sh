#!/usr/bin/env bash
# One-step setup on a Debian machine (run as root, or with sudo available):
#   Debian packages, the Python venv (.venv) with dcb installed, and a Docker engine.
#   deploy/setup.sh            what `dcb` needs
#   deploy/setup.sh --test     also what the test suite needs (test images, tools)
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if [ -t 2 ] && [ -z "${NO_COLOR:-}" ]; then
    log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
    log() { printf '==> %s\n' "$*" >&2; }
fi

# age: encryption at rest; rsync + openssh-client: rsync destinations ([replication]);
# debootstrap: `dcb demo` builds Debian's PostgreSQL image where no registry answers.
pkgs=(python3 python3-venv python3-pip ca-certificates age rsync openssh-client debootstrap)
# Only install Debian's engine where no engine is installed (never fight docker-ce).
command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
command -v docker >/dev/null 2>&1 || pkgs+=(docker.io)
if [ $want_test = 1 ]; then
    pkgs+=(busybox-static tmux zsh fish openssh-server \
           postgresql-client e2fsprogs util-linux procps acl libcap2-bin faketime)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq || log "apt-get update reported errors; trying anyway"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# The venv: reinstall only when pyproject.toml changed.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.dcb-installed
sum=$(cat pyproject.toml deploy/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ] || ! .venv/bin/python -c 'import dcb.cli.main' 2>/dev/null; then
    log "installing dcb and its dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -c deploy/constraints.txt -e '.[dev]'
    echo "$sum" > "$stamp"
fi

# A Docker engine: use the one that answers; otherwise start Debian's dockerd without
# touching the host's firewall or creating a bridge network.
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (--iptables=false --ip6tables=false --bridge=none)"
    $SUDO mkdir -p /var/log
    # setsid + redirected output: the engine must not hold our stdout open.
    $SUDO setsid dockerd --iptables=false --ip6tables=false --bridge=none \
        >/var/log/dcb-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 /var/log/dcb-dockerd.log >&2; exit 1; }
fi

if [ $want_test = 1 ]; then
    log "building test images (cached by tag)"
    bash tests/images/build.sh
    # The service container's base (debootstrap, minutes once; cached by tag).
    bash deploy/build-image.sh --base-only >/dev/null
fi
