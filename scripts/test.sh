#!/usr/bin/env bash
# Set up (once) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${LTBENCH_VENV:-.venv}
exec "$VENV/bin/python" -m pytest "$@"
