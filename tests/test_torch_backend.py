"""The ``"torch"`` integration backend (pyrod.integrate.torch_backend): accuracy against closed forms and SciPy,
convergence orders, events, bounds, host synchronisation per step, flows through ``pyrod.simulate`` and resume."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch

import pyrod
from pyrod.integrate import Event, FlowProblem, check_method, get_backend, solve, takes_tensors

Y0 = np.array([1.0, 1.0, 0.0])


def _decay_oscillator(t, y):
    """y0' = −y0 (exp decay), (y1, y2)' = (y2, −y1) (harmonic oscillator): y = (e^−t, cos t, −sin t)."""
    return torch.stack([-y[0], y[2], -y[1]])


def _exact(t):
    t = np.asarray(t, dtype=np.float64)
    return np.stack([np.exp(-t), np.cos(t), -np.sin(t)], axis=-1)


def test_registered_and_validated():
    assert takes_tensors("torch") and not takes_tensors("scipy")
    check_method("torch", "DOPRI5")
    with pytest.raises(ValueError, match="'dop853'"):
        check_method("torch", "dop853")
    fp = FlowProblem(rhs=_decay_oscillator, n=3, method="rk45")
    with pytest.raises(ValueError, match="method='rk45'"):
        solve(fp, 0, Y0, 1.0, backend="torch")
    fp = FlowProblem(rhs=_decay_oscillator, n=3, options={"jac": "jvp"})
    with pytest.raises(TypeError, match="jac"):
        solve(fp, 0, Y0, 1.0, backend="torch")
    fp = FlowProblem(rhs=_decay_oscillator, n=3, method="rk4", options={"substeps": 0})
    with pytest.raises(ValueError, match="substeps=0"):
        solve(fp, 0, Y0, 1.0, backend="torch")


def test_dopri5_matches_closed_form_and_scipy_dop853():
    """Step ends and dense-output saves (save times off the step grid) within 1e-8 of the closed form at
    rtol=1e-10, atol=1e-12, and of SciPy's DOP853 at the same tolerances."""
    t_save = np.linspace(0.37, 6.0, 17)
    fp = FlowProblem(rhs=_decay_oscillator, n=3, rtol=1e-10, atol=1e-12)
    seg = solve(fp, 0.0, Y0, 6.0, t_save, backend="torch")
    assert seg.status == "ok" and isinstance(seg.y_save, torch.Tensor) and seg.y_save.dtype == torch.float64
    np.testing.assert_array_equal(seg.t_save, t_save)
    assert np.abs(seg.y_save.numpy() - _exact(t_save)).max() < 1e-8
    assert np.abs(seg.y_end.numpy() - _exact(6.0)).max() < 1e-8
    ref = solve(FlowProblem(rhs=lambda t, y: np.array([-y[0], y[2], -y[1]]), n=3, rtol=1e-10, atol=1e-12,
                            method="DOP853"), 0.0, Y0, 6.0, t_save, backend="scipy")
    assert np.abs(seg.y_save.numpy() - ref.y_save).max() < 1e-8
    # the error control is real: a loose tolerance gives a visibly larger error, and fewer evaluations
    loose = solve(FlowProblem(rhs=_decay_oscillator, n=3, rtol=1e-4, atol=1e-6), 0.0, Y0, 6.0, t_save,
                  backend="torch")
    assert loose.n_rhs < seg.n_rhs / 3
    assert 1e-8 < np.abs(loose.y_save.numpy() - _exact(t_save)).max() < 1e-3


@pytest.mark.parametrize("method,order", [("euler", 1), ("rk4", 4)])
def test_fixed_step_convergence_order(method, order):
    """Halving h divides the global error at t=2 by ~2^order (measured ratios within 15% of it)."""
    errs = []
    for sub in (8, 16, 32):
        fp = FlowProblem(rhs=_decay_oscillator, n=3, method=method, options={"substeps": sub})
        seg = solve(fp, 0.0, Y0, 2.0, [1.0, 2.0], backend="torch")
        assert seg.n_steps == 2 * sub and seg.n_rhs == 2 * sub * (4 if method == "rk4" else 1)
        errs.append(np.abs(seg.y_end.numpy() - _exact(2.0)).max())
    for a, b in zip(errs, errs[1:], strict=False):
        assert abs(a / b / 2 ** order - 1) < 0.15, errs


def test_rk4_dense_output_is_third_order():
    """Saves between grid points come from RK4's continuous extension (error O(h^3)), not the step end."""
    errs = []
    for sub in (4, 8):
        fp = FlowProblem(rhs=_decay_oscillator, n=3, method="rk4", options={"substeps": sub})
        seg = solve(fp, 0.0, Y0, 1.0, [0.1, 0.6], backend="torch")
        errs.append(np.abs(seg.y_save.numpy() - _exact([0.1, 0.6])).max())
    assert errs[0] < 1e-3 and 6 < errs[0] / errs[1] < 20, errs


def test_event_location_direction_and_terminal():
    """cos t has zeros at π/2 (downward) and 3π/2 (upward): located to 1e-9, directions respected."""
    down = Event("down", lambda t, y: float(y[1]), -1, False, "down")
    up = Event("up", lambda t, y: float(y[1]), +1, True, "up")
    fp = FlowProblem(rhs=_decay_oscillator, n=3, rtol=1e-10, atol=1e-12, events=[down, up])
    seg = solve(fp, 0.0, Y0, 6.0, [1.0, 2.0, 5.0], backend="torch")
    assert seg.status == "event"
    assert [e.name for e in seg.events] == ["down", "up"]
    assert abs(seg.events[0].t - math.pi / 2) < 1e-9 and abs(seg.events[1].t - 3 * math.pi / 2) < 1e-9
    assert seg.events[1].value >= 0  # far side of the upward crossing
    assert abs(seg.t_end - 3 * math.pi / 2) < 1e-9
    np.testing.assert_array_equal(seg.t_save, [1.0, 2.0])  # the save at 5.0 lies after the terminal event


def test_stiff_problem_hits_the_budget_and_fails_cleanly():
    """y' = −1e6 (y − cos t) needs h ≲ 3e-6 with an explicit method: the evaluation budget ends the segment."""
    fp = FlowProblem(rhs=lambda t, y: -1e6 * (y - math.cos(t)), n=2, rtol=1e-6, atol=1e-9, max_rhs_per_unit=2000)
    seg = solve(fp, 0.0, np.zeros(2), 1.0, [0.5, 1.0], backend="torch")
    assert seg.status == "failed" and "evaluation budget exceeded" in seg.message
    assert seg.n_rhs <= 2000 + 7 and 0 < seg.t_end < 0.01
    assert torch.isfinite(seg.y_end).all() and len(seg.t_save) == 0


def test_divergence_bounds():
    grow = lambda t, y: y * y  # noqa: E731  blows up at t = 1 from y = 1
    seg = solve(FlowProblem(rhs=grow, n=1, max_norm=1e3), 0.0, np.ones(1), 2.0, backend="torch")
    assert seg.status == "failed" and "max_norm" in seg.message and 0.99 < seg.t_end < 1.0

    def score(t, y):
        return y[0] - 10.0
    score.tensor_score, score.explain = True, lambda t, y: f"y0={float(y[0]):.3g} above 10"
    seg = solve(FlowProblem(rhs=grow, n=1, diverged=score), 0.0, np.ones(1), 2.0, backend="torch")
    # y = 1/(1 − t) passes 10 at t = 0.9; the segment keeps the last good state (before 0.9)
    assert seg.status == "failed" and "above 10" in seg.message and 0.8 < seg.t_end < 0.9


class _SyncCounter:
    """Counts the tensor methods that copy device data to the host (or sync) while active."""

    NAMES = ("item", "cpu", "numpy", "tolist", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self, monkeypatch):
        self.n = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def wrapped(self_, *a, _orig=orig, **k):
                self.n += 1
                return _orig(self_, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, wrapped)


def _linear(d=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    A = Q @ torch.diag(-torch.linspace(0.1, 2.0, d, dtype=torch.float64)) @ Q.T
    return A, torch.randn(d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "euler"])
def test_one_host_transfer_per_step(monkeypatch, method):
    """No host copy per evaluation: transfers = accepted + rejected attempts, + 2 per segment for dopri5's
    first-step estimate (+1 for the start check of the fixed-step methods)."""
    A, y0 = _linear()

    def rhs(t, y):
        return A @ y
    fp = FlowProblem(rhs=rhs, n=y0.numel(), method=method, rtol=1e-8, atol=1e-10, max_norm=1e6)
    counter = _SyncCounter(monkeypatch)
    seg = get_backend("torch")(fp, 0.0, y0, 5.0, np.arange(1, 11) / 2.0)
    n_syncs = counter.n
    monkeypatch.undo()
    assert seg.status == "ok" and seg.n_steps > 10
    extra = 2 if method == "dopri5" else 1   # per segment: dopri5's first-step estimate / the start check
    assert n_syncs == seg.n_steps + seg.n_rejected + extra, (n_syncs, seg.n_steps, seg.n_rejected)
    assert n_syncs <= 1.2 * seg.n_steps + extra
    if method != "euler":
        assert n_syncs < seg.n_rhs / 3
    exact = torch.linalg.matrix_exp(5.0 * A) @ y0
    tol = {"dopri5": 1e-6, "rk4": 1e-3, "euler": 0.5}[method]
    assert float(torch.linalg.vector_norm(seg.y_end - exact)) < tol * float(torch.linalg.vector_norm(exact))


def test_float32_state_stays_float32():
    seen = set()

    def rhs(t, y):
        seen.add(y.dtype)
        return _decay_oscillator(t, y)
    y0 = torch.tensor(Y0, dtype=torch.float32)
    seg = solve(FlowProblem(rhs=rhs, n=3, rtol=1e-5, atol=1e-7), 0.0, y0, 2.0, [1.0], backend="torch")
    assert seen == {torch.float32} and seg.y_end.dtype == torch.float32 and seg.y_save.dtype == torch.float32
    assert np.abs(seg.y_end.double().numpy() - _exact(2.0)).max() < 1e-4


def test_h_last_carries_the_stepping_state_bit_for_bit():
    """Two segments joined through h_last / first_step equal one segment cut at the same place: the state
    carried between chunks is (t, y, h_last) and nothing else."""
    A, y0 = _linear(50)
    mk = lambda: FlowProblem(rhs=lambda t, y: A @ y, n=50, rtol=1e-7, atol=1e-9)  # noqa: E731
    ref1 = solve(mk(), 0.0, y0, 2.0, backend="torch")
    fp = mk()
    fp.first_step = ref1.h_last
    ref2 = solve(fp, 2.0, ref1.y_end, 4.0, backend="torch")
    fp2 = mk()
    fp2.first_step = float(ref1.h_last)   # as restored from a checkpoint (a Python float)
    again = solve(fp2, 2.0, ref1.y_end.clone(), 4.0, backend="torch")
    assert torch.equal(again.y_end, ref2.y_end) and again.h_last == ref2.h_last


PROB = {"model": "mlp", "data": "digits", "classes": 3, "n": 60, "dtype": "float64", "device": "cpu",
        "model_kwargs": {"width": 8}}


def test_simulate_torch_matches_scipy_rk45_for_stable_and_rod(monkeypatch):
    """dopri5 (torch) and RK45 (SciPy, the same Dormand–Prince pair) at rtol=1e-8 agree on the loss and the
    centre distance within 1e-7 (relative); the flow's integration makes one host transfer per attempt
    plus one per segment for its start check."""
    prob = pyrod.problem(**PROB)
    opt = pyrod.optimizers.GD(lr=0.5)
    kw = dict(steps=24, runs=["discrete", "stable", "rod"], eigs=1, eig_every=8, rtol=1e-8, atol=1e-10, chunk=8)
    ref = pyrod.simulate(prob, opt, backend="scipy", method="RK45", **kw)

    import pyrod.integrate as integ
    orig = integ.BACKENDS["torch"]
    stats = {"syncs": 0, "attempts": 0, "segments": 0}

    def counting(problem, t0, y0, t1, t_save):
        assert isinstance(y0, torch.Tensor)
        with contextlib.ExitStack():
            mp = pytest.MonkeyPatch()
            c = _SyncCounter(mp)
            try:
                seg = orig(problem, t0, y0, t1, t_save)
            finally:
                mp.undo()
        stats["syncs"] += c.n
        stats["attempts"] += seg.n_steps + seg.n_rejected
        stats["segments"] += 1
        return seg
    counting.TENSORS = True
    monkeypatch.setitem(integ.BACKENDS, "torch", counting)
    got = pyrod.simulate(prob, opt, backend="torch", **kw)
    monkeypatch.undo()
    for run in ("stable", "rod"):
        assert got[run].ds.attrs["flow_status"] == "ok" and got[run].ds.attrs["backend"] == "torch"
        for var in ("loss", "centre_distance"):
            a, b = got[run].ds[var].values, ref[run].ds[var].values
            assert np.abs(a - b).max() <= 1e-7 * np.abs(b).max(), (run, var, np.abs(a - b).max())
    # first segment of each flow: +2 (initial step estimate); later ones: +1 (start check with first_step)
    assert stats["attempts"] > 0
    assert stats["syncs"] <= stats["attempts"] + 2 * stats["segments"], stats


def test_simulate_central_euler_torch_equals_scipy_euler():
    """Fixed-step Euler does the same arithmetic on both backends: the central flow agrees to 1e-12."""
    prob = pyrod.problem(**PROB)
    kw = dict(steps=12, runs=["discrete", "central"], eigs=1, eig_every=4, method="euler", substeps=2, chunk=6)
    a = pyrod.simulate(prob, pyrod.optimizers.GD(lr=1.0), backend="torch", **kw)["central"].ds
    b = pyrod.simulate(prob, pyrod.optimizers.GD(lr=1.0), backend="scipy", **kw)["central"].ds
    assert a.attrs["flow_status"] == "ok"
    np.testing.assert_allclose(a.loss.values, b.loss.values, rtol=1e-12)


def test_resume_with_torch_backend_is_bit_identical(tmp_path):
    """steps=20 with checkpoints, resumed to 40, equals a 40-step run bit for bit (every variable, every group)."""
    from test_resume import assert_same_run

    kw = dict(problem={k: v for k, v in PROB.items() if k != "device"}, optimizer={"name": "Adam", "lr": 0.02},
              runs=["discrete", "stable", "rod"], eigs=1, eig_every=5, chunk=5, checkpoint_every=5,
              backend="torch", rtol=1e-6)
    pyrod.simulate(**kw, steps=20, path=str(tmp_path / "a.nc"), overwrite=True)
    resumed = pyrod.resume(tmp_path / "a.nc", steps=40)
    ref = pyrod.simulate(**kw, steps=40, path=str(tmp_path / "b.nc"), overwrite=True)
    assert resumed["rod"].ds.attrs["backend"] == "torch"
    assert_same_run(resumed, ref, ["discrete", "stable", "rod"])
