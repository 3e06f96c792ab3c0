"""pyrod.simulate: discrete and midpoint runs, output schema, reproducibility, stops, bad input."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import pyrod


def small_problem(**kw):
    return pyrod.problem(model="mlp", data="digits", classes=3, n=120, seed=0,
                         model_kwargs={"width": 12, "depth": 1}, **kw)


def test_discrete_schema_and_values(tmp_path):
    prob = small_problem()
    opt = pyrod.optimizers.GD(lr=0.1)
    path = tmp_path / "gd.nc"
    tree = pyrod.simulate(prob, opt, steps=23, runs=["discrete"], eigs=2, eig_every=5, path=path, chunk=10)
    ds = tree["discrete"].ds
    assert ds["t"].values.tolist() == list(range(23))
    assert ds["t"].attrs["units"] == "optimizer steps"
    for v in ds.data_vars:
        assert ds[v].attrs.get("long_name") and "units" in ds[v].attrs, v
    # loss matches an independent GD loop
    w = prob.w0.clone()
    losses = []
    for _ in range(23):
        L, g = prob.loss_and_grad(w)
        losses.append(float(L))
        w = w - 0.1 * g
    np.testing.assert_allclose(ds["loss"].values, losses, rtol=1e-12)
    # eigenvalues only every 5 steps, NaN elsewhere; sharpness equals dense eigvalsh at those steps
    measured = np.isfinite(ds["sharpness"].values)
    assert measured.tolist() == [k % 5 == 0 for k in range(23)]
    assert ds["eigs"].shape == (23, 2)
    w = prob.w0.clone()
    for k in range(11):
        if k == 10:
            lam = torch.linalg.eigvalsh(prob.hessian(w))
            assert ds["sharpness"].values[10] == pytest.approx(float(lam[-1]), rel=1e-6)
            np.testing.assert_allclose(ds["eigs"].values[10], lam.flip(0)[:2].numpy(), rtol=1e-6)
        w = w - 0.1 * prob.grad(w)
    thr = ds["threshold"].values[measured]
    np.testing.assert_allclose(thr, 2 / 0.1)
    np.testing.assert_allclose(ds["effective_sharpness"].values[measured],
                               ds["sharpness"].values[measured] / 20.0, rtol=1e-12)
    assert tree.attrs["stop_reason"].startswith("steps")
    assert tree["discrete"].attrs["n_grad"] >= 23


def test_reopen_and_reproduce_from_config(tmp_path):
    prob = small_problem()
    opt = pyrod.optimizers.Adam(lr=3e-3)
    path = tmp_path / "adam.nc"
    tree = pyrod.simulate(prob, opt, steps=15, runs=["discrete"], eigs=1, eig_every=7, path=path)
    back = pyrod.open(path)
    np.testing.assert_array_equal(back["discrete"].ds["loss"].values, tree["discrete"].ds["loss"].values)
    cfg = pyrod.config_of(path)
    assert cfg["optimizer"]["name"] == "Adam" and cfg["steps"] == 15
    again = pyrod.simulate(**cfg)
    np.testing.assert_array_equal(again["discrete"].ds["loss"].values, tree["discrete"].ds["loss"].values)
    np.testing.assert_allclose(again["discrete"].ds["preconditioned_sharpness"].values,
                               tree["discrete"].ds["preconditioned_sharpness"].values, rtol=1e-7)
    assert back.attrs["pyrod_version"] == pyrod.__version__


def test_adaptive_preconditioned_sharpness_matches_dense():
    prob = small_problem()
    opt = pyrod.optimizers.RMSProp(lr=1e-3, beta2=0.99, eps=1e-8)
    tree = pyrod.simulate(prob, opt, steps=4, runs=["discrete"], eigs=1, eig_every=3)
    ds = tree["discrete"].ds
    # replay: P used in step 3
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    for _ in range(3):
        st, _ = opt.step(st, prob.grad(st.w))
    w3 = st.w
    st, nu_p = opt.step(st, prob.grad(w3))
    P = opt.preconditioner(nu_p, 3)
    H = prob.hessian(w3)
    S = H / torch.sqrt(P)[:, None] / torch.sqrt(P)[None, :]
    assert ds["preconditioned_sharpness"].values[3] == pytest.approx(float(torch.linalg.eigvalsh(S)[-1]), rel=1e-6)
    assert ds["sharpness"].values[3] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)
    assert np.isfinite(ds["nu_norm"].values).all()


def test_midpoint_run():
    prob = small_problem()
    opt = pyrod.optimizers.GD(lr=0.2)
    tree = pyrod.simulate(prob, opt, steps=12, runs=["discrete", "midpoint"], eigs=1, eig_every=4, chunk=5)
    w = [prob.w0.clone()]
    for _ in range(13):
        w.append(w[-1] - 0.2 * prob.grad(w[-1]))
    mid = tree["midpoint"].ds
    assert mid["distance_to_discrete"].values[0] == 0.0
    for k in (1, 5, 6, 11):  # across chunk boundaries
        ws = 0.25 * (w[k - 1] + 2 * w[k] + w[k + 1])
        assert mid["loss"].values[k] == pytest.approx(float(prob.loss(ws)), rel=1e-12)
        assert mid["distance_to_discrete"].values[k] == pytest.approx(float(torch.linalg.vector_norm(ws - w[k])),
                                                                      rel=1e-10)


def test_divergence_stops_cleanly(tmp_path):
    prob = small_problem()
    path = tmp_path / "div.nc"
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=50.0), steps=400, runs=["discrete"], eigs=1,
                          eig_every=50, path=path)
    assert tree.attrs["stop_reason"].startswith("diverged")
    n = tree.attrs["steps_completed"]
    assert n < 400
    assert pyrod.open(path)["discrete"].ds.sizes["t"] >= n


def test_loss_target_stop():
    prob = small_problem()
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.2), steps=500, runs=["discrete"], eigs=1, eig_every=100,
                          loss_target=0.3)
    ds = tree["discrete"].ds
    assert tree.attrs["stop_reason"].startswith("loss_target")
    assert ds["loss"].values[-1] <= 0.3 and (ds["loss"].values[:-1] > 0.3).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps=0"),
    (dict(eigs=0), "eigs=0"),
    (dict(eig_every=-1), "eig_every=-1"),          # 0 is valid: never
    (dict(runs=["nope"]), "run 'nope' is unknown; valid names"),
    (dict(runs=[]), "runs"),
    (dict(loss_target=float("nan")), "loss_target"),
    (dict(divergence_factor=0.5), "divergence_factor"),
    (dict(runs=["discrete", "rod"], method="Heun"), "method='Heun' is not a method of backend 'scipy' or 'torch'"),
    (dict(runs=["discrete", "rod"], method="euler", substeps=0), "substeps=0"),
    (dict(runs=["discrete", "central"], sdcp_threshold=1.5), "sdcp_threshold=1.5"),
    (dict(runs=["discrete", "central"], bea=True), "bea=True"),
])
def test_bad_simulate_arguments(kwargs, match):
    prob = small_problem()
    args = dict(steps=5, runs=["discrete"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), **args)


def test_central_options_refused_without_central_run():
    with pytest.raises(TypeError, match="sdcp_threshold.*no 'central' run"):
        pyrod.simulate(small_problem(), pyrod.optimizers.GD(lr=0.1), steps=5, runs=["discrete", "rod"],
                       sdcp_threshold=0.9)


def test_rod_flow_with_euler_substeps_runs_and_records_it():
    tree = pyrod.simulate(small_problem(), pyrod.optimizers.GD(lr=0.1), steps=6, runs=["discrete", "rod"], eigs=1,
                          eig_every=100, method="euler", substeps=8, progress=False)
    rod = tree["rod"]
    assert rod.attrs["method"] == "euler" and rod.attrs["substeps"] == 8
    assert rod.attrs["n_rhs"] == 8 * 5   # t = 0 … 5 (the last read-out), 8 Euler steps of one RHS per unit time
    assert np.isfinite(rod.ds["centre_distance"].values).all()


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="lr=-1"):
        pyrod.optimizers.GD(lr=-1)
    with pytest.raises(ValueError, match="beta1=1.0"):
        pyrod.optimizers.Adam(lr=1e-3, beta1=1.0)
    with pytest.raises(ValueError, match="eps=-1"):
        pyrod.optimizers.Adam(lr=1e-3, eps=-1e-8)
    with pytest.raises(ValueError, match="model='resnet999'.*valid names"):
        pyrod.problem(model="resnet999")
    with pytest.raises(ValueError, match="data='mnist'.*valid names"):
        pyrod.problem(data="mnist")
    with pytest.raises(ValueError, match="dtype='float16'"):
        pyrod.problem(dtype="float16")
    with pytest.raises(ValueError, match="optimizer='Nope'.*valid names"):
        pyrod.optimizers.get("Nope")
    with pytest.raises(TypeError, match="optimizer must be"):
        pyrod.simulate(small_problem(), "adam", steps=3)
    prob = small_problem()
    with pytest.raises(TypeError, match="dtype"):
        prob.check_vector(prob.w0.float())


def test_existing_file_refused_and_overwrite(tmp_path):
    prob = small_problem()
    path = tmp_path / "x.nc"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="x.nc"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, path=path)
    assert path.read_bytes() == b"precious"  # nothing already written is lost
    pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, path=path, overwrite=True)
    assert pyrod.open(path)["discrete"].ds.sizes["t"] == 3


def test_snapshots(tmp_path):
    prob = small_problem()
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=10, snapshot_every=4, eigs=1, eig_every=5)
    ds = tree["discrete"].ds
    assert ds["t_snap"].values.tolist() == [0.0, 4.0, 8.0]
    np.testing.assert_array_equal(ds["w"].values[0], prob.w0.numpy())


def test_killed_simulation_leaves_valid_file(tmp_path):
    """A simulate() process killed with SIGKILL mid-run leaves a readable file with whole chunks."""
    path = tmp_path / "killed.nc"
    script = textwrap.dedent(f"""
        import sys, pyrod
        prob = pyrod.problem(model="mlp", data="digits", classes=3, n=120, seed=0,
                             model_kwargs={{"width": 12, "depth": 1}})
        import pyrod.io.writer as out
        orig = out.RunWriter._flush_group
        def flush(self, g):
            orig(self, g)
            print("flushed", flush=True)
        out.RunWriter._flush_group = flush
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=10**6, eigs=1, eig_every=1000,
                       path={str(path)!r}, chunk=20, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    flushed = 0
    deadline = time.time() + 120
    while flushed < 3 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("flushed"):
            flushed += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert flushed >= 3
    tree = pyrod.open(path)
    ds = tree["discrete"].ds
    n = ds.sizes["t"]
    assert n >= 40 and n % 20 == 0
    assert ds["t"].values.tolist() == list(range(n))
    assert np.isfinite(ds["loss"].values).all()
    assert json.loads(tree.attrs["pyrod_config"])["stop"]["steps"] == 10**6


def test_block_optimizers_run_through_simulate():
    """Muon and Adafactor need the model's tensor shapes: simulate binds them to the problem."""
    prob = small_problem()
    for opt in (pyrod.optimizers.Muon(lr=0.02), pyrod.optimizers.Adafactor(lr=0.01)):
        tree = pyrod.simulate(prob, opt, steps=5, eigs=1, eig_every=4)
        loss = tree["discrete"].ds["loss"].values
        assert np.isfinite(loss).all() and loss[-1] < loss[0]
        es = tree["discrete"].ds["effective_sharpness"].values
        if opt.name == "Muon":
            assert np.isnan(es).all()                       # no threshold defined for Muon
        else:                                               # Adafactor: heavy-ball threshold on its own P
            assert np.isfinite(es[[0, 4]]).all() and np.isnan(es[1:4]).all()


def test_demo_entry_point_writes_files(tmp_path):
    from pyrod.__main__ import demo

    summary = demo(out=str(tmp_path), steps=30, n=80, width=8, progress=False)
    assert (tmp_path / "demo.nc").stat().st_size > 0 and (tmp_path / "demo.png").stat().st_size > 0
    ds = pyrod.open(tmp_path / "demo.nc")["discrete"].ds
    es = ds["effective_sharpness"].values
    assert summary["max_effective_sharpness"] == pytest.approx(float(np.nanmax(es)))
    assert summary["initial_effective_sharpness"] == pytest.approx(summary["lr"] * ds["sharpness"].values[0] / 2)
