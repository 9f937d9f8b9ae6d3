#!/usr/bin/env bash
# The main job: set up (once) and run the offline demo comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${LTBENCH_VENV:-.venv}
exec "$VENV/bin/python" -m ltbench demo "$@"
