"""Every documented option of the run specification reaches the component it names.

Each option is set away from its default through ``pyrod.simulate``'s keyword form and read back from the
object that uses it (measurer, flow run, flow model, integrator problem, writer) or from the file.
"""
from __future__ import annotations

import numpy as np
import pytest

import pyrod
from pyrod.simulation import _build_runs
from pyrod.spec import spec_from_kwargs

PROB = {"toy": "quartic"}


def build(opt, problem=PROB, **kw):
    spec = spec_from_kwargs(problem, opt, {"steps": 8, **kw})
    prob = pyrod.problem(**problem)
    return spec, _build_runs(spec, prob, pyrod.optimizers.from_config(opt).bind(prob))


def test_measurement_options_reach_every_runs_measurer():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "midpoint", "stable", "rod", "central"],
                       eigs=2, eig_every=3, eig_tol=1e-7, eig_max_iter=33)
    for name, run in runs.items():
        m = run.measurer
        assert (m.n_eig, m.eig_every, m.eig_tol, m.eig_max_iter) == (2, 3, 1e-7, 33), name
        assert (m.tracker.tol, m.tracker.max_iter) == (1e-7, 33), name


def test_stop_options_reach_the_discrete_run_and_the_flows():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "rod"], loss_target=1e-3,
                       divergence_factor=50.0)
    assert runs["discrete"].loss_target == 1e-3 and runs["discrete"].divergence_factor == 50.0
    assert runs["rod"].divergence_factor == 50.0


def test_integrator_options_reach_the_flow_and_its_integrator_problem():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "stable"], method="Radau", rtol=1e-5,
                       atol=1e-8, max_step=0.25, min_step=1e-7, max_rhs_per_unit=700, jac="jvp", max_steps=10**5,
                       restart_at=2, events=["loss<1e-9"])
    run = runs["stable"]
    assert (run.backend_name, run.method, run.rtol, run.atol, run.max_step) == ("scipy", "Radau", 1e-5, 1e-8, 0.25)
    assert (run.min_step, run.max_rhs_per_unit, run.k_start) == (1e-7, 700, 2)
    assert [e.name for e in run.event_specs] == ["loss<1e-09"]
    records, chunk = runs["discrete"].run_chunk(8)
    run.advance(chunk)
    fp = run.fp
    assert (fp.method, fp.rtol, fp.atol, fp.max_step, fp.min_step, fp.max_rhs_per_unit) == \
        ("Radau", 1e-5, 1e-8, 0.25, 1e-7, 700)
    assert fp.options["jac"] == "jvp" and fp.options["max_steps"] == 10**5
    assert run.n_jvp > 0          # jac="jvp": SciPy's Radau got its Jacobian from J·v products


def test_substeps_reach_euler_and_the_central_relaxation_time():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "rod", "central"], method="euler",
                       substeps=8)
    assert runs["rod"].substeps == 8
    assert runs["central"].model.tau == pytest.approx(1 / 8)
    records, chunk = runs["discrete"].run_chunk(4)
    runs["rod"].advance(chunk)
    assert runs["rod"].fp.options["substeps"] == 8
    assert runs["rod"].n_rhs == 8 * 3      # 3 unit times (t = 0 … 3) at 8 Euler steps each


def test_bea_reaches_stable_and_rod_models():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "stable", "rod"], bea=True)
    assert runs["stable"].model.bea and runs["rod"].model.bea
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "stable", "rod"], rod={"bea": True})
    assert runs["rod"].model.bea and not runs["stable"].model.bea


def test_central_options_reach_the_central_model():
    opts = dict(sdcp_threshold=0.95, track_threshold=0.7, tau=0.125, max_track=5, sdcp_tol=1e-9, refresh_tol=1e-2)
    spec, runs = build({"name": "GD", "lr": 0.1}, {"toy": "quadratic", "dim": 10, "spectrum": [10.0, 0.1]},
                       runs=["discrete", "central"], central={"eig_tol": 1e-5,
                                                                                          "eig_max_iter": 31},
                       eig_tol=1e-7, **opts)
    model = runs["central"].model
    for k, v in opts.items():
        assert getattr(model, k) == v, k
    # watch_margin: a flat keyword too, held on the λ̃ scale (2 = the threshold), None turns the watched checks off
    for wm, held in ((0.1, 0.2), (None, None)):
        _, r = build({"name": "GD", "lr": 0.1}, {"toy": "quadratic", "dim": 10, "spectrum": [10.0, 0.1]},
                     runs=["discrete", "central"], watch_margin=wm)
        assert r["central"].model.watch_margin == (held if held is None else pytest.approx(held))
    # the central flow's own eigen options are not the measurement's (they were conflated before)
    assert (model.eig_tol, model.eig_max_iter) == (1e-5, 31)
    assert runs["central"].measurer.eig_tol == 1e-7


def test_output_options_reach_the_file(tmp_path):
    path = tmp_path / "o.nc"
    tree = pyrod.simulate(pyrod.problem(**PROB), pyrod.optimizers.GD(lr=0.1), steps=12, chunk=4,
                          snapshot_every=5, checkpoint_every=8, path=path)
    ds = tree["discrete"].ds
    np.testing.assert_array_equal(ds["t_snap"].values, [0.0, 5.0, 10.0])
    import netCDF4
    with netCDF4.Dataset(path) as nc:
        assert nc["discrete"]["loss"].chunking()[0] == 4          # chunk = rows per write = HDF5 chunk
    from pyrod.checkpoint import load, path_for
    assert load(path_for(path))["k"] == 12
    spec = pyrod.spec_of(path)
    assert (spec.output.chunk, spec.output.snapshot_every, spec.output.checkpoint_every) == (4, 5, 8)


def test_flow_eig_every_reaches_only_the_flows_measurers():
    spec, runs = build({"name": "GD", "lr": 0.1}, runs=["discrete", "rod"], eig_every=2, flow_eig_every=5)
    assert runs["discrete"].measurer.eig_every == 2 and runs["rod"].measurer.eig_every == 5


def test_eig_raw_reaches_every_measurer_and_skips_the_raw_solve():
    """``eig_raw=False``: no λmax(H) solve for a preconditioned optimizer (``sharpness`` NaN, fewer HVPs), the
    preconditioned eigenvalues unchanged; GD's ``sharpness`` is its only eigen-solve either way."""
    prob = pyrod.problem(model="mlp", data="digits", classes=3, n=40, seed=0, model_kwargs={"width": 6})
    spec, runs = build({"name": "RMSProp", "lr": 0.01}, problem={"model": "mlp", "data": "digits", "classes": 3,
                                                                  "n": 40, "seed": 0, "model_kwargs": {"width": 6}},
                       runs=["discrete", "rod"], eig_raw=False)
    assert all(r.measurer.raw is False and r.measurer.raw_tracker is None for r in runs.values())
    out = {}
    for raw in (True, False):
        out[raw] = pyrod.simulate(prob, pyrod.optimizers.RMSProp(lr=0.01), steps=6, eigs=1, eig_every=2,
                                  eig_raw=raw)["discrete"].ds
    assert np.isnan(out[False]["sharpness"].values[::2]).all() and np.isfinite(out[True]["sharpness"].values[::2]).all()
    np.testing.assert_array_equal(out[False]["eigs"].values, out[True]["eigs"].values)
    assert out[False].attrs["n_hvp"] < out[True].attrs["n_hvp"]
    gd = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=4, eigs=1, eig_every=2, eig_raw=False)["discrete"].ds
    assert np.isfinite(gd["sharpness"].values[::2]).all()


def test_flow_default_integrators_are_used_and_recorded(tmp_path):
    prob = pyrod.problem(**PROB)
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=6, runs=["discrete", "stable", "rod"])
    for g in ("stable", "rod"):
        a = tree[g].ds.attrs
        assert (a["method"], a["rtol"], a["atol"], a["method_is_flow_default"]) == ("RK23", 1e-3, 1e-6, 1), g
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=6, runs=["discrete", "rod"], rtol=1e-7)
    a = tree["rod"].ds.attrs        # a tolerance without a method: the backend's default method at that tolerance
    assert (a["rtol"], a["method_is_flow_default"]) == (1e-7, 0) and a["method"] in ("default", "DOP853")
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=6, runs=["discrete", "rod"], bea=True)
    assert tree["rod"].ds.attrs["method_is_flow_default"] == 0 and tree["rod"].ds.attrs["rtol"] == 1e-6
