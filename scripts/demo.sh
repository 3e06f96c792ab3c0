#!/usr/bin/env bash
# Set up, then run the built-in default job: GD on the digits MLP at the edge of stability, with its
# stable, rod and central flows side by side (~1.5 min on a 2-core CPU).
# Writes results/demo/demo.nc and results/demo/demo.png. Extra arguments go to `python -m pyrod demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python; { [ -n "${VIRTUAL_ENV:-}" ] || [ "${PYROD_USE_CURRENT_ENV:-0}" = 1 ]; } && PY="${PYTHON:-python}"
exec "$PY" -m pyrod demo "$@"
