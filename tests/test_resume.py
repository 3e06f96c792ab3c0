"""Checkpoints and bit-identical resume: a run killed with SIGKILL at a random moment, interrupted with Ctrl-C, or
finished and extended, continues with ``pyrod.resume`` to exactly the bits of a run that was never stopped.

Each case runs the simulation in a real subprocess (one torch thread, like this test process: results are
bit-identical only for the same thread count), kills it at a random moment after its first checkpoint, resumes
it here and compares every variable of every group with an uninterrupted run made here.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import pyrod
from pyrod.checkpoint import path_for

ROOT = Path(__file__).resolve().parents[1]

MLP = {"model": "mlp", "data": "digits", "classes": 2, "n": 40, "model_kwargs": {"width": 8}}

CASES = {
    # name: (problem config, optimizer config, simulate keywords)
    "discrete-midpoint-stable-rod-f64-DOP853": (
        MLP, {"name": "Adam", "lr": 0.02}, {"runs": ["discrete", "midpoint", "stable", "rod"]}),
    "rod-bea-f64-RK45": (MLP, {"name": "GD", "lr": 0.5}, {"runs": ["discrete", "rod"], "bea": True,
                                                          "method": "RK45", "rtol": 1e-5}),
    "stable-rod-f32-euler": ({**MLP, "dtype": "float32"}, {"name": "RMSProp", "lr": 0.01},
                             {"runs": ["discrete", "stable", "rod"], "method": "euler", "substeps": 2}),
    "central-gd-f64-euler": (MLP, {"name": "GD", "lr": 1.0}, {"runs": ["discrete", "central"], "method": "euler",
                                                               "substeps": 2}),
    "central-rmsprop-f64-RK45": (MLP, {"name": "RMSProp", "lr": 0.03}, {"runs": ["discrete", "central"],
                                                                         "method": "RK45", "rtol": 1e-4}),
    "central-gd-f32-euler": ({**MLP, "dtype": "float32"}, {"name": "GD", "lr": 1.0},
                             {"runs": ["discrete", "central"], "method": "euler", "substeps": 2}),
}
STEPS, CHUNK = 40, 4


def _kwargs(case, path, steps=STEPS):
    prob, opt, kw = CASES[case]
    return dict(problem=prob, optimizer=opt, steps=steps, eigs=2, eig_every=3, chunk=CHUNK, checkpoint_every=CHUNK,
                path=str(path), overwrite=True, **kw)


def _script(kwargs) -> str:
    return textwrap.dedent(f"""
        import json, torch
        torch.set_num_threads(1)
        import pyrod
        kw = json.loads({json.dumps(json.dumps(kwargs))})
        pyrod.simulate(**kw)
    """)


def _start(kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", _script(kwargs)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, path, timeout=120.0):
    ck = path_for(path)
    t0 = time.monotonic()
    while not os.path.exists(ck):
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before its first checkpoint: rc={proc.returncode}\n{err[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("no checkpoint within the time limit")
        time.sleep(0.02)


def _kill9_after_checkpoint(proc, path, delay: float) -> None:
    """Wait for the run's first checkpoint, then ``delay`` s, and kill it with SIGKILL (it must still be running)."""
    try:
        _wait_for_checkpoint(proc, path)
        time.sleep(delay)
        assert proc.poll() is None, "the run finished before it could be killed: make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_same_run(a, b, groups):
    """Every variable of every group equal bit for bit (NaN where NaN)."""
    for g in groups:
        da, db = a[g].ds, b[g].ds
        assert set(da.data_vars) == set(db.data_vars), g
        assert da.sizes == db.sizes, (g, dict(da.sizes), dict(db.sizes))
        for v in da.data_vars:
            x, y = da[v].values, db[v].values
            assert x.dtype == y.dtype, (g, v)
            same = (x == y) | (np.isnan(x) & np.isnan(y)) if x.dtype.kind == "f" else (x == y)
            assert bool(np.all(same)), f"{g}.{v} differs at {np.argwhere(~same)[:5].tolist()}"
        np.testing.assert_array_equal(da["t"].values, db["t"].values)
        assert json.loads(da.attrs.get("events", "[]")) == json.loads(db.attrs.get("events", "[]")), g


@pytest.mark.parametrize("case", list(CASES))
def test_kill9_then_resume_is_bit_identical(tmp_path, case):
    rng = random.Random(hash(case) & 0xFFFF)
    path = tmp_path / "killed.nc"
    kw = _kwargs(case, path)
    proc = _start(kw)
    _kill9_after_checkpoint(proc, path, rng.uniform(0.0, 0.5))      # a random moment after the first checkpoint
    killed = pyrod.open(path)
    assert killed.attrs["pyrod_status"] == "running"          # it really died mid-run
    killed_at = killed["discrete"].ds.sizes["t"]
    resumed = pyrod.resume(path)
    assert resumed.attrs["pyrod_status"] == "complete" and resumed.attrs["steps_completed"] == STEPS
    ref = pyrod.simulate(**{**kw, "path": str(tmp_path / "ref.nc")})
    assert_same_run(resumed, ref, CASES[case][2]["runs"])
    assert killed_at < STEPS


def test_ctrl_c_leaves_valid_file_and_checkpoint_then_resumes_bit_identically(tmp_path):
    case = "discrete-midpoint-stable-rod-f64-DOP853"
    path = tmp_path / "int.nc"
    kw = _kwargs(case, path, steps=400)
    proc = _start(kw)
    try:
        _wait_for_checkpoint(proc, path)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert "interrupted at step" in last and str(path) in last and "pyrod.resume" in last
    assert "pyrod.run_stops.RunInterrupted" in last      # not a raw KeyboardInterrupt from inside a solver
    tree = pyrod.open(path)
    assert tree.attrs["pyrod_status"] == "interrupted"
    k = tree.attrs["steps_completed"]
    assert 0 < k < 400 and k % CHUNK == 0
    resumed = pyrod.resume(path, steps=60 if k < 60 else k + 8)
    ref = pyrod.simulate(**{**kw, "steps": resumed.attrs["steps_completed"], "path": str(tmp_path / "ref.nc")})
    assert_same_run(resumed, ref, CASES[case][2]["runs"])


@pytest.mark.parametrize("case", ["discrete-midpoint-stable-rod-f64-DOP853", "central-gd-f64-euler"])
def test_finished_run_is_extended_bit_identically(tmp_path, case):
    kw = _kwargs(case, tmp_path / "short.nc", steps=20)
    short = pyrod.simulate(**kw)
    assert short.attrs["steps_completed"] == 20
    longer = pyrod.resume(tmp_path / "short.nc", steps=32)
    ref = pyrod.simulate(**{**kw, "steps": 32, "path": str(tmp_path / "ref.nc")})
    assert longer["discrete"].ds.sizes["t"] == 32
    assert_same_run(longer, ref, CASES[case][2]["runs"])
    with pytest.raises(ValueError, match=r"steps=10 is fewer than the 32 steps already done"):
        pyrod.resume(tmp_path / "short.nc", steps=10)


def test_resume_without_checkpoint_says_why(tmp_path):
    pyrod.simulate(pyrod.problem(toy="quadratic"), pyrod.optimizers.GD(lr=0.1), steps=4, path=tmp_path / "n.nc",
                   checkpoint_every=0)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*n.nc.ckpt.*checkpoint_every=0"):
        pyrod.resume(tmp_path / "n.nc")


def test_checkpoint_replaced_atomically(tmp_path):
    """Only the latest checkpoint is kept, and no temporary file is left behind."""
    path = tmp_path / "a.nc"
    pyrod.simulate(pyrod.problem(toy="quadratic"), pyrod.optimizers.GD(lr=0.1), steps=12, chunk=3,
                   checkpoint_every=3, path=path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["a.nc", "a.nc.ckpt"], files
    from pyrod.checkpoint import load
    assert load(path_for(path))["k"] == 12


def test_sundials_flow_resumes_bit_identically(tmp_path):
    """Every backend restarts at each chunk from (t, y, last step size), so the SUNDIALS (CVODE BDF) rod flow
    extended from its checkpoint equals the uninterrupted run bit for bit."""
    pytest.importorskip("sksundae")
    kw = dict(problem={"toy": "quartic"}, optimizer={"name": "GD", "lr": 0.2}, runs=["discrete", "rod"],
              backend="sundials", chunk=4, checkpoint_every=4, eigs=1, eig_every=3)
    pyrod.simulate(**kw, steps=8, path=str(tmp_path / "s.nc"))
    resumed = pyrod.resume(tmp_path / "s.nc", steps=16)
    ref = pyrod.simulate(**kw, steps=16, path=str(tmp_path / "ref.nc"))
    assert resumed["rod"].ds.attrs["backend"] == "sundials"
    assert_same_run(resumed, ref, ["discrete", "rod"])
