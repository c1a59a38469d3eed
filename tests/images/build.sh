#!/usr/bin/env bash
# Build the local images the integration tests use (no registry is reachable here).
#   dcb-test-busybox:1  busybox-static, for helper and "backend" containers
#   dcb-test-postgres:15  PostgreSQL 15 from Debian's packages (debootstrap + docker import)
# Images are cached by tag: an existing tag is kept. FORCE=1 rebuilds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
BUSYBOX_TAG=${DCB_TEST_BUSYBOX_IMAGE:-dcb-test-busybox:1}
PG_TAG=${DCB_TEST_PG_IMAGE:-dcb-test-postgres:15}

have() { [ "${FORCE:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

mirror() {
    # The Debian mirror this machine already uses (classic or deb822 sources).
    local m
    m=$(grep -hsE '^(deb |URIs:)' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -v -- '-security' | grep -oE 'https?://[^ ]+/debian/?' | head -n1)
    echo "${m:-}"
}

if ! have "$BUSYBOX_TAG"; then
    tmp=$(mktemp -d)
    mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/data"
    cp "$(command -v busybox)" "$tmp/bin/busybox"
    for a in $("$tmp/bin/busybox" --list); do
        [ "$a" = busybox ] || ln -s busybox "$tmp/bin/$a"
    done
    tar -C "$tmp" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$BUSYBOX_TAG" >/dev/null
    rm -rf "$tmp"
    echo "built $BUSYBOX_TAG"
fi

if ! have "$PG_TAG"; then
    if [[ "$PG_TAG" != dcb-test-* ]]; then
        echo "$PG_TAG is not a local image; pull it with docker pull first" >&2
        exit 1
    fi
    m=$(mirror)
    [ -n "$m" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
    root=$(mktemp -d /var/tmp/dcb-pgroot.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$m" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
        "$root"/usr/share/man "$root"/usr/share/locale "$root"/var/lib/postgresql/15 \
        "$root"/etc/postgresql/15
    install -m 0755 "$here/pg-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
    tar -C "$root" --numeric-owner -c . | docker import \
        -c 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV PGDATA=/var/lib/postgresql/data' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
        - "$PG_TAG" >/dev/null
    echo "built $PG_TAG"
fi
