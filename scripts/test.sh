#!/usr/bin/env bash
# Set up with test dependencies, lint the Python code (ruff) and the Julia package (fatou), run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
PY=.venv/bin/python; { [ -n "${VIRTUAL_ENV:-}" ] || [ "${PYROD_USE_CURRENT_ENV:-0}" = 1 ]; } && PY="${PYTHON:-python}"
BIN="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")"
echo "[test] ruff check (rules in pyproject.toml [tool.ruff]; never --fix here)"
"$PY" -m ruff check --no-fix .
echo "[test] fatou lint julia/ (static gate: syntax + lint rules in julia/fatou.toml)"
"$BIN/fatou" lint --config julia/fatou.toml julia/
echo "[test] pytest"
# one torch thread per process: the suite's problems are small, and on a shared 2-core machine torch's default
# (a thread per core) made it many times slower (docs/howto/threads.md); the tests' subprocesses inherit it
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" -m pytest "$@"
