#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: setup, static checks, then pytest
# against a real Docker engine and PostgreSQL. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --test
echo "==> ruff" >&2
.venv/bin/ruff check .
echo "==> mypy" >&2
.venv/bin/mypy
echo "==> pytest" >&2
exec .venv/bin/pytest "$@"
