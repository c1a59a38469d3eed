#!/usr/bin/env bash
# Build the local images the integration tests use (no registry is reachable here):
#   dcb-test-busybox:1    busybox-static, for helper and "backend" containers
#   dcb-test-postgres:15  PostgreSQL 15 from Debian's packages (debootstrap + docker import)
# The recipe lives in services/images.py, shared with `dcb demo`. Images are cached by tag
# (a build of the same recipe under another tag, e.g. the demo's, is reused); FORCE=1 rebuilds.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
exec "${PYTHON:-$repo/.venv/bin/python}" -m dcb.services.images \
    --postgres "${DCB_TEST_PG_IMAGE:-dcb-test-postgres:15}" \
    --busybox "${DCB_TEST_BUSYBOX_IMAGE:-dcb-test-busybox:1}"
