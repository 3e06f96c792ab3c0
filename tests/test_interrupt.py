"""A checkpoint at the first chunk end, and resume hints only when a checkpoint exists: runs killed or stopped
(Ctrl-C twice) about a second after they start, in real subprocesses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyrod
from pyrod.checkpoint import CheckpointError, path_for

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = {"model": "mlp", "data": "digits", "classes": 2, "n": 40, "model_kwargs": {"width": 8}}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _cli_run(path, steps, chunk):
    return subprocess.Popen([sys.executable, "-m", "pyrod", "run", "--problem", json.dumps(PROBLEM), "--optimizer",
                             '{"name": "GD", "lr": 0.5}', "--eig.every", "1", "--stop.steps", str(steps),
                             "--output.chunk", str(chunk), "--output.path", str(path), "--no-progress"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(what, proc, timeout=120.0):
    t0 = time.monotonic()
    while not what():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: rc={proc.returncode}\n{proc.communicate()[1][-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)
    return time.monotonic() - t0


def _ctrl_c_twice(proc, after=None) -> str:
    """Wait for ``after()`` (if given), press Ctrl-C twice 0.3 s apart and return the run's stderr; the process is
    killed if it is still alive."""
    try:
        if after is not None:
            after()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killed_a_second_after_it_starts_the_run_resumes(tmp_path):
    """Default checkpointing (at most once a minute, and now also at the first chunk end): killed with SIGKILL
    about a second after the file appears, well inside the first minute, the run has a checkpoint and resumes to
    the same numbers as a run never stopped."""
    path = tmp_path / "k.nc"
    proc = _cli_run(path, steps=100000, chunk=5)
    try:
        _wait_for(path.exists, proc)
        time.sleep(1.0)
        waited = _wait_for(lambda: os.path.exists(path_for(path)), proc, timeout=30.0)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert waited < 30.0            # before: the first checkpoint waited for a minute of wall time
    tree = pyrod.resume(path, steps=40)
    ref = pyrod.simulate(pyrod.spec_of(path).replace({"output.path": str(tmp_path / "ref.nc")}))
    for v in ref["discrete"].ds.data_vars:
        np.testing.assert_array_equal(tree["discrete"].ds[v].values, ref["discrete"].ds[v].values)


def test_ctrl_c_twice_before_the_first_checkpoint_promises_no_resume(tmp_path):
    """Stopped at once (Ctrl-C twice) inside a first chunk of 100000 steps: no checkpoint exists, so the message
    says the run cannot be resumed instead of naming a resume command that would fail."""
    path = tmp_path / "early.nc"
    proc = _cli_run(path, steps=100000, chunk=100000)
    err = _ctrl_c_twice(proc, after=lambda: (_wait_for(path.exists, proc), time.sleep(1.0)))
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "stopped at once" in last and "cannot be resumed" in last and "no checkpoint had been written" in last
    assert "pyrod resume" not in last and "pyrod.resume" not in last
    assert not os.path.exists(path_for(path))
    assert pyrod.open(path).attrs["pyrod_status"] == "interrupted"
    with pytest.raises(CheckpointError, match=r"no checkpoint .*stopped before the end of its first chunk"):
        pyrod.resume(path)


def test_ctrl_c_twice_after_a_checkpoint_gives_the_cli_command_that_continues(tmp_path):
    path = tmp_path / "later.nc"
    proc = _cli_run(path, steps=100000, chunk=50)      # the second Ctrl-C comes inside the second chunk
    err = _ctrl_c_twice(proc, after=lambda: _wait_for(lambda: os.path.exists(path_for(path)), proc))
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"continue with python -m pyrod resume {path}"), last
    p = subprocess.run([sys.executable, "-m", "pyrod", "resume", str(path), "--steps", "60", "--no-progress"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["steps_completed"] == 60
