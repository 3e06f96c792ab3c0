#!/usr/bin/env bash
# Set up with test dependencies, lint the Python code (ruff) and the Julia package (fatou), run the test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow`; `-n 0` for one process).
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
# test processes (pytest-xdist): one per core this process may use, at most 4 (each holds its own torch; the suite
# is made of small problems, subprocesses and file I/O). PYROD_TEST_WORKERS overrides it; so does a later `-n N`.
WORKERS="${PYROD_TEST_WORKERS:-$("$PY" -c 'from pyrod.threads import available_cores; print(min(4, available_cores()))')}"
case "$WORKERS" in ''|*[!0-9]*|0) echo "[test] PYROD_TEST_WORKERS must be a whole number >= 1, got '$WORKERS'" >&2; exit 2;; esac
echo "[test] $WORKERS test process(es)"
if [ "$WORKERS" -gt 1 ]; then exec "$PY" -m pytest -n "$WORKERS" "$@"; fi
exec "$PY" -m pytest "$@"
