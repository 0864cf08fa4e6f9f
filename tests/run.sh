#!/usr/bin/env bash
# Set up the host and run wirt's whole test suite, linters and type checks.
# This is the command the README gives and the one CI runs.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${WIRT_VENV:-/opt/wirt-test}
bash "$REPO/tests/setup-host.sh"
cd "$REPO"
"$VENV/bin/ruff" check wirt_wrapper tests bench
"$VENV/bin/mypy" wirt_wrapper bench
"$VENV/bin/python" -m pytest "$@"
