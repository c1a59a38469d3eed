#!/usr/bin/env bash
# Build the dcb service image (deploy/Dockerfile) with no registry:
#   1. the base, dcb-base:bookworm: Debian bookworm minbase with python3, python3-venv and
#      tzdata via debootstrap from this machine's apt mirror (cached by tag);
#   2. a wheelhouse of dcb and its pinned dependencies, built on this host (pip wheel);
#   3. `docker build --network none` FROM the base, installing from the wheelhouse only.
# The image is cached by a hash of the sources (dcb:src-<hash>) and tagged TAG (default
# dcb:latest). FORCE=1 rebuilds both. Prints the tag it built.
#   deploy/build-image.sh --base-only   only step 1 (deploy/setup.sh --test does this, so the
#                                       test suite never waits minutes for it)
set -euo pipefail
cd "$(dirname "$0")/.."
base_only=0
if [ "${1:-}" = --base-only ]; then base_only=1; shift; fi
TAG=${1:-dcb:latest}
BASE=${DCB_BASE_IMAGE:-dcb-base:bookworm}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
log() { printf '==> %s\n' "$*" >&2; }
have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
    local m
    m=$(grep -hsE '^(deb |URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n1)
    echo "${m:-}"
}

if ! have "$BASE"; then
    m=$(mirror)
    [ -n "$m" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
    command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
    log "building $BASE (debootstrap bookworm from $m)"
    root=$(mktemp -d /var/tmp/dcb-baseroot.XXXXXX)
    trap 'rm -rf "$root" "$root.log"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,tzdata bookworm "$root" "$m" \
        >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
        "$root"/usr/share/man "$root"/usr/share/locale
    tar -C "$root" --numeric-owner -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$root" "$root.log"
    trap - EXIT
fi

[ $base_only = 1 ] && { echo "$BASE"; exit 0; }

# The sources as git sees them (committed or not, ignored files left out).
hash=$( { git ls-files -z --cached --others --exclude-standard | sort -z \
          | xargs -0 -r sha256sum 2>/dev/null; docker image inspect -f '{{.Id}}' "$BASE"; } \
        | sha256sum | cut -c1-12)
SRC_TAG="dcb:src-$hash"
if ! have "$SRC_TAG"; then
    ctx=$(mktemp -d /var/tmp/dcb-image.XXXXXX)
    trap 'rm -rf "$ctx"' EXIT
    mkdir -p "$ctx/src" "$ctx/wheels"
    git ls-files -z --cached --others --exclude-standard \
        | tar --null -T - --ignore-failed-read -c 2>/dev/null | tar -x -C "$ctx/src"
    log "building wheels of dcb and its pinned dependencies"
    "$PY" -m pip wheel -q --disable-pip-version-check -c deploy/constraints.txt \
        -w "$ctx/wheels" "$ctx/src" >"$ctx/pip.log" 2>&1 || { tail -20 "$ctx/pip.log" >&2; exit 1; }
    cp deploy/Dockerfile "$ctx/Dockerfile"
    rm -rf "$ctx/src"
    log "docker build --network none -t $SRC_TAG"
    docker build -q --network none --build-arg "BASE=$BASE" -t "$SRC_TAG" "$ctx" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
    # Older source builds are superseded: keep one.
    for old in $(docker images --format '{{.Repository}}:{{.Tag}}' dcb | grep '^dcb:src-' \
                 | grep -vx "$SRC_TAG"); do
        docker rmi "$old" >/dev/null 2>&1 || true
    done
fi
docker tag "$SRC_TAG" "$TAG"
echo "$TAG"
