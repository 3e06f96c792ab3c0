"""The ``threads`` option: in the spec, ``simulate``, the command line and sweeps, and its default rule
(pyrod/threads.py). Speed itself is measured by benchmarks/threads.py, not here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyrod
from pyrod import threads as pt
from pyrod.spec import RunSpec, SpecError

ROOT = Path(__file__).resolve().parents[1]
QUARTIC = {"toy": "quartic"}


def test_threads_is_a_spec_field_a_keyword_and_recorded(tmp_path):
    spec = RunSpec(problem=QUARTIC, optimizer={"name": "GD", "lr": 0.1}, stop={"steps": 6}, threads=2)
    assert RunSpec.from_json(spec.to_json()).threads == 2
    assert RunSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "threads"}).threads is None  # old JSON
    with pytest.raises(ValueError, match=r"threads=0 must be an int >= 1"):
        spec.replace({"threads": 0})
    before = torch.get_num_threads()
    tree = pyrod.simulate(pyrod.problem(**QUARTIC), pyrod.optimizers.GD(lr=0.1), steps=6, threads=2,
                          path=tmp_path / "a.nc")
    assert torch.get_num_threads() == before                     # restored after the run
    assert tree.attrs["threads"] == 2 and tree.attrs["threads_rule"] == "threads given"
    assert pyrod.spec_of(tmp_path / "a.nc").threads == 2
    with pytest.raises(SpecError, match=r"did you mean 'threads'"):
        pyrod.simulate(pyrod.problem(**QUARTIC), pyrod.optimizers.GD(lr=0.1), steps=6, thread=2)


def test_the_run_uses_the_count_while_it_runs(monkeypatch):
    seen = []
    from pyrod.runs import discrete

    orig = discrete.DiscreteRun.run_chunk

    def spy(self, n):
        seen.append(torch.get_num_threads())
        return orig(self, n)

    monkeypatch.setattr(discrete.DiscreteRun, "run_chunk", spy)
    pyrod.simulate(pyrod.problem(**QUARTIC), pyrod.optimizers.GD(lr=0.1), steps=4, chunk=2, threads=2)
    assert seen == [2, 2]


def test_default_rule(monkeypatch):
    small = pyrod.problem(**QUARTIC)
    assert pt.choose(3, small) == (3, "threads given")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    count, why = pt.choose(None, small)
    assert count is None and "OMP_NUM_THREADS=4" in why              # the environment's choice is kept
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(pt, "available_cores", lambda: 8)
    count, why = pt.choose(None, small)
    assert count == 1 and why.startswith("small problem")             # a toy gradient takes microseconds
    monkeypatch.setattr(pt, "gradient_cpu_seconds", lambda p: 10 * pt.SMALL_GRADIENT_SECONDS)
    monkeypatch.setattr(pt, "busy_cores", lambda: 0.3)
    assert pt.choose(None, small)[0] == 8                             # a large problem uses every core
    monkeypatch.setattr(pt, "busy_cores", lambda: 7.5)
    count, why = pt.choose(None, small)
    assert count == 1 and "busy" in why                               # unless other work keeps them busy
    monkeypatch.setattr(pt, "available_cores", lambda: 1)
    assert pt.choose(None, small) == (1, "one core available")


def test_gradient_timing_is_not_counted():
    prob = pyrod.problem(model="mlp", data="digits", classes=2, n=40, model_kwargs={"width": 8})
    before = torch.get_num_threads()
    sec = pt.gradient_cpu_seconds(prob)
    assert 0 < sec < 5 and prob.n_grad == 0 and torch.get_num_threads() == before


def test_resume_uses_the_count_the_run_started_with(tmp_path, monkeypatch):
    path = tmp_path / "r.nc"
    pyrod.simulate(pyrod.problem(**QUARTIC), pyrod.optimizers.GD(lr=0.1), steps=4, chunk=2, threads=2, path=path)
    spec = pyrod.spec_of(path).replace({"threads": None})   # as if the run had been started with the default rule
    pyrod.simulate(spec.replace({"output.overwrite": True}))
    from pyrod import checkpoint
    payload = checkpoint.load(checkpoint.path_for(path))
    payload["threads"] = 2
    checkpoint.save(checkpoint.path_for(path), payload)
    tree = pyrod.resume(path, steps=8)
    assert tree.attrs["threads"] == 2 and tree.attrs["threads_rule"] == "the count the run was started with"
    assert pyrod.resume(path, steps=10, threads=1).attrs["threads"] == 1


def test_sweep_points_get_one_thread_per_worker(tmp_path):
    from pyrod.sweep import run_point

    spec = RunSpec(problem=QUARTIC, optimizer={"name": "GD", "lr": 0.1}, stop={"steps": 4},
                   output={"path": str(tmp_path / "p.nc")})
    out = run_point(spec.to_dict(), threads=1)          # what a Dask worker runs
    assert out["status"] == "complete", out["error"]
    assert pyrod.open(tmp_path / "p.nc").attrs["threads"] == 1
    again = run_point(spec.to_dict(), threads=1)        # the stored threads=1 does not make the spec "different"
    assert again["action"] == "skip", again


def test_cli_flag(tmp_path):
    path = tmp_path / "c.nc"
    p = subprocess.run([sys.executable, "-m", "pyrod", "run", "--problem", json.dumps(QUARTIC), "--stop.steps", "4",
                        "--threads", "2", "--output.path", str(path), "--no-progress"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert pyrod.open(path).attrs["threads"] == 2
