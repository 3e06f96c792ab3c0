#!/usr/bin/env bash
# Set up pyrod: a virtual environment in ./.venv (unless one is active), the right torch, pyrod itself.
#   bash scripts/setup.sh            # runtime only
#   bash scripts/setup.sh test       # + test dependencies (pytest, pytest-xdist, ruff, cvxpy, fatou, scikit-sundae)
#   bash scripts/setup.sh test,julia # extras are pyproject.toml's optional-dependencies, comma-separated
# Runtime dependencies (torch, numpy, scipy, xarray, netCDF4, matplotlib, scikit-learn, tqdm, threadpoolctl,
# dask[distributed], tyro) come from pyproject.toml through `pip install -e`.
# torch: kept if already installed; a machine with an NVIDIA GPU gets PyPI's CUDA build; a CPU machine
# gets torch==2.13.0 (on our machines a local CPU wheel; elsewhere set PYROD_TORCH_INDEX to a CPU wheel
# index, e.g. PyTorch's /whl/cpu index, to avoid the multi-GB CUDA download).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ -n "${VIRTUAL_ENV:-}" ] || [ "${PYROD_USE_CURRENT_ENV:-0}" = 1 ]; then
  PY="${PYTHON:-python}"
else
  if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
  fi
  PY=.venv/bin/python
fi
pipq() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${PYROD_TORCH_INDEX:-}" ]; then
    echo "[setup] torch from $PYROD_TORCH_INDEX"; pipq torch --index-url "$PYROD_TORCH_INDEX"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: CUDA build of torch"; pipq torch
  else
    echo "[setup] no GPU: CPU build torch==2.13.0"; pipq "torch==2.13.0"
  fi
fi
if [ -n "$extras" ]; then pipq -e ".[$extras]"; else pipq -e .; fi
echo "[setup] ready: $("$PY" -c 'import torch, pyrod; print("pyrod", pyrod.__version__, "torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
