#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, the two ignored folders that benchmarks/gpu_checks.sh needs on a GPU
# machine that reaches nothing (this project's lent GPUs):
#
#   bash benchmarks/gpu_prepare.sh REFERENCE_GIT [PYTHON_VERSION]     # from the repository root
#
# REFERENCE_GIT: a clone of the reference central-flows code (github.com/mahyarjn80/centralflows; bare or not)
# holding commit 1f074fb. Its src/ at that commit is written to .ref/centralflows/src. It has no license: it is run
# from there, never committed (.ref/ is in .gitignore).
# PYTHON_VERSION (default 3.12, the GPU image's python3): .whl/ gets the wheels of what that image lacks, pinned:
# netCDF4 and cftime (NetCDF output), cvxpy with CVXOPT, OSQP, QDLDL and Clarabel (the reference's SDCP solver), and
# tyro with docstring-parser, typeguard and typing-extensions 4.16 (the experiments' typed parameters: the mini-batch
# part; typeguard needs typing-extensions >= 4.14, a version the image was not seen to have). The image has
# torch, numpy, scipy, xarray, pytest, certifi, jinja2, joblib, rich (its package list of 2026-11); pyrod imports
# without dask, which the checks do not use, and cvxpy without scs, highspy and sparsediffpy.
# Checked on the CPU: DEVICE=cpu SMOKE=1 bash benchmarks/gpu_checks.sh ran every part in a Python 3.11 environment
# holding only such image packages and these wheels for 3.11 (tests/test_gpu_scripts.py runs the smoke run, -m slow).
#
# Then copy the checkout with .whl/ and .ref/ (about 40 MB) to the GPU machine and run there, from its root:
#   OUT=results/gpu bash benchmarks/gpu_checks.sh      # about 8.5 minutes at most
set -euo pipefail
cd "$(dirname "$0")/.."
REF_GIT=${1:?usage: bash benchmarks/gpu_prepare.sh REFERENCE_GIT [PYTHON_VERSION]}
PYV=${2:-3.12}
REF_COMMIT=1f074fb
WHEELS=(netCDF4==1.7.5.1.post1 cftime==1.6.6.1 cvxpy==1.9.3 cvxopt==1.3.3 osqp==1.1.3 qdldl==0.1.9.post1
        clarabel==0.11.1 tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1 typing-extensions==4.16.0)

if ! git -C "$REF_GIT" cat-file -e "$REF_COMMIT^{commit}" 2>/dev/null; then     # bare or not
  echo "gpu_prepare: $REF_GIT is not a git clone holding the reference's commit $REF_COMMIT" >&2
  exit 2
fi
# both are written to temporary folders first: a failed step leaves what an earlier run prepared as it was
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ref" "$tmp/whl"
git -C "$REF_GIT" archive "$REF_COMMIT" src | tar -x -C "$tmp/ref"
test -f "$tmp/ref/src/processes.py" || { echo "gpu_prepare: no src/processes.py at $REF_COMMIT" >&2; exit 2; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$tmp/whl" "${WHEELS[@]}"
n=$(ls "$tmp"/whl/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_prepare: expected ${#WHEELS[@]} wheels, pip downloaded $n" >&2
  exit 1
fi
if ! { git check-ignore -q .whl && git check-ignore -q .ref; }; then
  echo "gpu_prepare: .whl/ and .ref/ must be ignored by git" >&2
  exit 1
fi
rm -rf .ref/centralflows .whl
mkdir -p .ref
mv "$tmp/ref" .ref/centralflows
mv "$tmp/whl" .whl
size=$(du -shc .whl .ref | tail -1 | cut -f1)
echo "gpu_prepare: .ref/centralflows ($REF_COMMIT) and $n wheels for Python $PYV; $size to carry"
