#!/usr/bin/env bash
# One GPU session's checks, in priority order, each under its own time limit (about 8.5 minutes in all at most).
#
#   OUT=results/gpu bash benchmarks/gpu_checks.sh           # from the repository root, on a machine with a CUDA GPU
#
# Logs go to $OUT/<part>.log (and stdout); the exit status is 0 when every part exited 0, and the last line names
# the others. A GPU machine without internet access (this project's lent GPUs) needs two ignored folders beside the
# code, which `bash benchmarks/gpu_prepare.sh REFERENCE_GIT` writes where PyPI can be reached: .whl/ (pinned wheels
# of what the machine's image lacks, installed here into /tmp/pyrod_site; PYROD_WHL names another folder, empty:
# none) and .ref/centralflows/ (the reference central-flows code, mahyarjn80/centralflows at commit 1f074fb; no
# license: run from there, never copied into pyrod; PYROD_REF names another checkout).
# A dry run on the CPU, every part at a toy size (about 3 minutes on two cores; the reference's part where .ref/ is
# there and cvxpy has CVXOPT, else pyrod's columns alone); DEVICE applies to such runs only:
#   DEVICE=cpu SMOKE=1 PYROD_WHL= OUT=/tmp/gpu_smoke bash benchmarks/gpu_checks.sh
# (with PYTHON=<a Python holding only what the image holds> and PYROD_WHL unset, it tries the wheels too: they must
# then be for that Python's version, `bash benchmarks/gpu_prepare.sh REFERENCE_GIT 3.11` for 3.11).
# Parts (limit in seconds): vs_reference (180): pyrod vs the reference, widths 2048/512/32, GD and RMSProp, on the
# GPU, each row printed when done; cuda_tests (70): tests marked cuda, each named as it ends, the central flow under
# torch.cuda.set_sync_debug_mode("error") first (tests/test_cuda.py, last, may not finish); gpu_flows (140):
# benchmarks/gpu.py, rod vs central per unit time on the CIFAR-shaped CNN, ViT and MLP (in that order), a model's
# rows printed as they are done (at the earlier code's H200 speeds, about 2 minutes for the MLP and CNN and 4 for
# the ViT: the MLP's rows, and some of the ViT's, may not fit); hvp_modes (50): HVP and third-derivative modes on
# CUDA, a model's rows as they are done, the CNN and the ViT first (the last of its five models may not fit);
# minibatch (35): the per-step cost of the mini-batch experiments' medium scale (its simulated steps within 15 s;
# it prints at its end). A part stopped at its limit keeps what it printed. 475 s of limits, plus the wheel install
# and up to 5 s of grace per part.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
WHL=${PYROD_WHL-.whl}             # PYROD_WHL= (empty): install nothing (a smoke run in this environment as it is)
if [ "$SMOKE" != 1 ] && [ "$DEVICE" != cuda ]; then
  echo "gpu_checks: DEVICE=$DEVICE needs SMOKE=1 (the full parts are sized for one CUDA GPU)" >&2
  exit 2
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PYTHON:-python3}
if [ -n "$WHL" ] && [ -d "$WHL" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pyrod_site \
    "$WHL"/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/pyrod_site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import torch, numpy, xarray, netCDF4, importlib.metadata as md; \
print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device', \
'numpy', numpy.__version__, 'xarray', xarray.__version__, 'netCDF4', netCDF4.__version__, \
'typing_extensions', md.version('typing_extensions'))" 2>&1 | tee "$OUT/env.log"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/env.log"
fi

FAILED=()
part() {   # part NAME LIMIT COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 60 "$OUT/$name.log"
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || FAILED+=("$name")
}
finish() {   # the exit status says whether every part exited 0 (each part's log says why one did not)
  echo "=== all parts done in $SECONDS s; failed or stopped: ${FAILED[*]:-none}"
  [ "${#FAILED[@]}" = 0 ]
  exit
}

REF=${PYROD_REF:-.ref/centralflows}
# the central flow's host-free step loop (tests/test_host_sync.py) first: tests/test_cuda.py alone takes 1-2
# minutes on a GPU (its docstring), so where this part reaches its limit, it is test_cuda.py's last tests that are cut
CUDA_TESTS=("$PY" -m pytest -p no:cacheprovider -v -m cuda tests/test_host_sync.py tests/test_hvp_modes.py
            tests/test_cuda.py)
if [ "$SMOKE" = 1 ]; then          # every part at a toy size on $DEVICE: the arguments, imports and wheels work
  REFARG=(--skip-reference)        # the reference where it is there and its solver (CVXOPT) can be imported
  if [ -f "$REF/src/processes.py" ] && "$PY" -c "import cvxpy, sys; sys.exit('CVXOPT' not in \
cvxpy.installed_solvers())" >/dev/null 2>&1; then
    REFARG=(--reference "$REF")
  fi
  part vs_reference 300 "$PY" benchmarks/vs_reference.py "${REFARG[@]}" --device "$DEVICE" --widths 8 --n 24 \
    --opts gd,rmsprop --steps 4 --steady 2 --chunk 2 --probe-steps 60
  part cuda_tests 300 "${CUDA_TESTS[@]}"
  part gpu_flows 300 "$PY" benchmarks/gpu.py --device "$DEVICE" --n 8 --cpu-n 0 --models mlp,cnn,vit \
    --regimes eos,start --flow-steps 2 --chunk 1 --threads 1
  part hvp_modes 120 "$PY" benchmarks/hvp_modes.py --device "$DEVICE" --n 8 --ref-n 8 --models mlp,cnn,vit,ref32 \
    --ks 1,2 --ms 1 --pair-ks 2 --max-reps 1 --min-time 0
  part minibatch 120 "$PY" benchmarks/minibatch_cost.py --device "$DEVICE" --size tiny --steps 4 --reps 2 --budget 30
  finish
fi
# widest first: the rows the scale question is about, kept where the part reaches its limit
part vs_reference 180 "$PY" benchmarks/vs_reference.py --reference "$REF" --device cuda --widths 2048,512,32 \
  --opts gd,rmsprop --steps 30 --steady 10 --chunk 5 --probe-steps 100
part cuda_tests 70 "${CUDA_TESTS[@]}"
# the CNN and the ViT first: their central flows are the ones far from the rod's cost (the MLP's was 2.6x)
part gpu_flows 140 "$PY" benchmarks/gpu.py --cpu-n 0 --models cnn,vit,mlp --regimes eos,start --flow-steps 4
part hvp_modes 50 "$PY" benchmarks/hvp_modes.py --device cuda --models cnn,vit,mlp,ref512,ref32 --ks 1,4 --ms 1,3 \
  --pair-ks 2 --max-reps 3 --min-time 0.2
part minibatch 35 "$PY" benchmarks/minibatch_cost.py --device cuda --size gpu --budget 15
finish
