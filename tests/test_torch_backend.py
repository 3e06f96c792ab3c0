"""The ``"torch"`` integration backend (pyrod.integrate.torch_backend): accuracy against closed forms and SciPy,
convergence orders, events, bounds, host synchronisation per step, flows through ``pyrod.simulate`` and resume;
Bogacki–Shampine 3(2) (``"bosh3"``); the default backend (``backend=None``: torch on CUDA, SciPy otherwise) and the
per-flow default integrators on both backends."""
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
    check_method("torch", "BOSH3")
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


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_event_location_direction_and_terminal(method):
    """cos t has zeros at π/2 (downward) and 3π/2 (upward): located to 1e-9, directions respected."""
    down = Event("down", lambda t, y: float(y[1]), -1, False, "down")
    up = Event("up", lambda t, y: float(y[1]), +1, True, "up")
    # (bosh3 needs ~2700 right-hand sides per unit time at rtol 1e-10: above the default budget of 2000)
    fp = FlowProblem(rhs=_decay_oscillator, n=3, rtol=1e-10, atol=1e-12, events=[down, up], method=method,
                     max_rhs_per_unit=None)
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


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4", "euler"])
def test_one_host_transfer_per_step(monkeypatch, method):
    """No host copy per evaluation: transfers = accepted + rejected attempts, + 2 per segment for an adaptive
    method's first-step estimate (+1 for the start check of the fixed-step methods)."""
    A, y0 = _linear()

    def rhs(t, y):
        return A @ y
    fp = FlowProblem(rhs=rhs, n=y0.numel(), method=method, rtol=1e-8, atol=1e-10, max_norm=1e6)
    counter = _SyncCounter(monkeypatch)
    seg = get_backend("torch")(fp, 0.0, y0, 5.0, np.arange(1, 11) / 2.0)
    n_syncs = counter.n
    monkeypatch.undo()
    assert seg.status == "ok" and seg.n_steps > 10
    extra = 2 if method in ("dopri5", "bosh3") else 1   # per segment: the first-step estimate / the start check
    assert n_syncs == seg.n_steps + seg.n_rejected + extra, (n_syncs, seg.n_steps, seg.n_rejected)
    assert n_syncs <= 1.2 * seg.n_steps + extra
    if method != "euler":   # right-hand sides per step: 6 (dopri5), 3 (bosh3), 4 (rk4); one transfer each
        assert n_syncs < seg.n_rhs / {"dopri5": 3, "bosh3": 2, "rk4": 3}[method]
    exact = torch.linalg.matrix_exp(5.0 * A) @ y0
    tol = {"dopri5": 1e-6, "bosh3": 1e-6, "rk4": 1e-3, "euler": 0.5}[method]
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


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
@pytest.mark.parametrize("mode", [True, "integers"])
def test_exact_saves_land_on_every_save_or_the_integer_ones(method, mode):
    """``exact_saves=True``: every save time is a step end; ``"integers"`` (the central flow's former hint): the integer
    ones only, the half-integer saves interpolated, and fewer steps; saves within 1e-4 of matrix_exp either way."""
    A, y0, _ = _linear_problem()
    ts = np.arange(1, 13) / 2.0
    seen = []
    fp = FlowProblem(rhs=lambda t, y: A @ y, n=y0.numel(), method=method, rtol=1e-6, atol=1e-9,
                     on_accept=lambda t, y: seen.append(float(t)), options={"exact_saves": mode})
    seg = solve(fp, 0.0, y0, 6.0, ts, backend="torch")
    ints, halves = set(ts[ts == np.round(ts)]), set(ts[ts != np.round(ts)])
    assert seg.status == "ok" and ints <= set(seen)
    assert (halves <= set(seen)) if mode is True else not (halves & set(seen))
    exact = torch.stack([torch.linalg.matrix_exp(float(t) * A) @ y0 for t in ts])
    assert float((seg.y_save - exact).abs().max()) < 1e-4 * float(exact.abs().max())


# ------------------------------------------------------------------------------- Bogacki–Shampine 3(2)
def _linear_problem(d=20, seed=3):
    """y' = A y with A symmetric negative definite (eigenvalues in [−2, −0.1]); exact solution by matrix_exp."""
    A, y0 = _linear(d, seed)
    return A, y0, A.numpy()


def test_bosh3_matches_matrix_exp_and_scipy_rk23():
    """bosh3 is the Bogacki–Shampine pair of SciPy's RK23 with the same error norm: at rtol 1e-5 … 1e-8
    (atol = 1e-3·rtol) its end state is within rtol (relative) of matrix_exp and of SciPy's RK23 result, and it
    accepts within 10% as many steps (the controllers differ: PI with β = 0.04 here, pure I in SciPy). The step
    count grows like rtol^(−1/3) (a 2nd-order error estimate: local error ∝ h³) and the global error falls like
    n_steps^(−3) (a 3rd-order method); dopri5 would show 1/5 and 5, a 2nd-order propagator 2."""
    A, y0, An = _linear_problem()
    T = 5.0
    exact = torch.linalg.matrix_exp(T * A) @ y0
    nrm = float(torch.linalg.vector_norm(exact))
    rtols = (1e-5, 1e-6, 1e-7, 1e-8)
    steps, errs = [], []
    for rtol in rtols:
        seg = solve(FlowProblem(rhs=lambda t, y: A @ y, n=y0.numel(), method="bosh3", rtol=rtol, atol=1e-3 * rtol),
                    0.0, y0, T, backend="torch")
        ref = solve(FlowProblem(rhs=lambda t, y: An @ y, n=y0.numel(), method="RK23", rtol=rtol, atol=1e-3 * rtol),
                    0.0, y0.numpy(), T, backend="scipy")
        assert seg.status == "ok" and ref.status == "ok"
        err = float(torch.linalg.vector_norm(seg.y_end - exact)) / nrm
        assert err < rtol, (rtol, err)
        assert np.linalg.norm(seg.y_end.numpy() - ref.y_end) < rtol * nrm, rtol
        assert abs(seg.n_steps / ref.n_steps - 1) < 0.1, (rtol, seg.n_steps, ref.n_steps)
        # first-same-as-last: 3 right-hand sides per attempt, + 2 at the start (f(y0), the first-step estimate)
        assert seg.n_rhs == 3 * (seg.n_steps + seg.n_rejected) + 2
        steps.append(seg.n_steps)
        errs.append(err)
    step_slope = np.polyfit(np.log(rtols), np.log(steps), 1)[0]
    err_order = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(-step_slope - 1 / 3) < 0.03, steps
    assert abs(err_order - 3) < 0.3, (steps, errs)


def test_bosh3_on_a_fixed_grid_is_third_order_with_third_order_dense_output():
    """A huge atol accepts every step, so with first_step = max_step = 1/sub the steps are exactly 1/sub: halving
    them divides the error at t=2 (a step end) and at off-grid save times (cubic Hermite dense output) by ~8
    (within 15%); a linear interpolant would give ~4 at the saves."""
    errs_end, errs_save = [], []
    t_save = [0.3, 1.7]
    for sub in (8, 16, 32):
        fp = FlowProblem(rhs=_decay_oscillator, n=3, method="bosh3", rtol=1e-3, atol=1e6, max_step=1 / sub,
                         first_step=1 / sub)
        seg = solve(fp, 0.0, Y0, 2.0, t_save, backend="torch")
        assert seg.n_steps == 2 * sub and seg.n_rejected == 0 and seg.n_rhs == 3 * 2 * sub + 1
        errs_end.append(np.abs(seg.y_end.numpy() - _exact(2.0)).max())
        errs_save.append(np.abs(seg.y_save.numpy() - _exact(t_save)).max())
    for errs in (errs_end, errs_save):
        for a, b in zip(errs, errs[1:], strict=False):
            assert abs(a / b / 8 - 1) < 0.15, errs


def test_bosh3_carries_the_stepping_state_bit_for_bit():
    """As dopri5: two segments joined through h_last equal the same run restarted from the same state."""
    A, y0, _ = _linear_problem(30)
    mk = lambda: FlowProblem(rhs=lambda t, y: A @ y, n=30, method="bosh3", rtol=1e-5, atol=1e-8)  # noqa: E731
    first = solve(mk(), 0.0, y0, 1.5, backend="torch")
    fp, fp2 = mk(), mk()
    fp.first_step, fp2.first_step = first.h_last, float(first.h_last)
    a = solve(fp, 1.5, first.y_end, 3.0, [2.0, 2.5], backend="torch")
    b = solve(fp2, 1.5, first.y_end.clone(), 3.0, [2.0, 2.5], backend="torch")
    assert torch.equal(a.y_end, b.y_end) and torch.equal(a.y_save, b.y_save) and a.h_last == b.h_last


# ------------------------------------------------------------------- default backend and flow defaults
def test_default_backend_is_torch_on_cuda_and_scipy_otherwise():
    from pyrod.integrate import get_backend as gb
    from pyrod.integrate import resolve_backend
    from pyrod.spec import IntegratorSpec, RunSpec

    assert resolve_backend(None, "cuda") == "torch" and resolve_backend(None, torch.device("cuda", 1)) == "torch"
    assert resolve_backend(None, "cpu") == "scipy" and resolve_backend(None) == "scipy"
    assert resolve_backend("auto", "cuda:0") == "torch" and resolve_backend("SciPy", "cuda") == "scipy"
    assert gb(resolve_backend("auto", "cpu")) is gb("auto")      # "auto" off CUDA: a concrete name
    assert resolve_backend("auto", "cpu") in ("scipy", "julia")
    with pytest.raises(ValueError, match="'fortran'"):
        resolve_backend("fortran", "cpu")
    spec = IntegratorSpec()
    assert spec.backend is None and spec.backend_for("cuda") == "torch" and spec.backend_for("cpu") == "scipy"
    assert IntegratorSpec(backend="TORCH").backend == "torch"
    with pytest.raises(ValueError, match="backend=3"):
        IntegratorSpec(backend=3)
    rs = RunSpec(runs=("discrete", "rod"))
    assert rs.integrator.backend is None and RunSpec.from_json(rs.to_json()) == rs
    # validation: without the device, a method of either candidate; with it, the chosen backend's
    IntegratorSpec(method="bosh3").validate()
    IntegratorSpec(method="RK23").validate()
    IntegratorSpec(method="bosh3").validate("cuda")
    with pytest.raises(ValueError, match="method='bosh3' is not a method of backend 'scipy'"):
        IntegratorSpec(method="bosh3").validate("cpu")
    with pytest.raises(ValueError, match="'nope'.*'scipy'.*'torch'"):
        IntegratorSpec(method="nope").validate()
    with pytest.raises(TypeError, match="jac"):
        IntegratorSpec(options={"jac": "jvp"}).validate("cuda")


def test_cli_leaves_the_backend_unset_by_default():
    from pyrod.cli import parse_run

    spec, _ = parse_run(["--runs", "discrete", "rod"])
    assert spec.integrator.backend is None
    spec, _ = parse_run(["--runs", "discrete", "rod", "--integrator.backend", "torch"])
    assert spec.integrator.backend == "torch"


def test_flow_run_checks_the_method_against_the_backend_it_uses():
    prob = pyrod.problem(**PROB)
    with pytest.raises(ValueError, match="method='bosh3' is not a method of backend 'scipy'"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), steps=2, runs=["discrete", "rod"], method="bosh3")


def test_flow_defaults_on_torch_record_bosh3_and_euler_and_agree_with_scipy_defaults():
    """No method, no tolerances: rod → bosh3 (torch) / RK23 (SciPy) at rtol 1e-3, atol 1e-6, central → Euler on
    both, all recorded with method_is_flow_default = 1, and the group attribute ``backend`` is the backend used.

    Tolerances: both rod runs integrate the same flow with the same 3(2) pair at rtol 1e-3, so each is within a
    global error of order rtol of the exact flow; the loss (relative to its largest value) must be within rtol of
    a tight reference (DOP853, rtol 1e-11) for the torch default, and the two defaults within rtol of each other
    (measured: 3e-4 and 1e-4). Same pair, same tolerance: the work is the same within 25% (measured 91 vs 94
    right-hand sides). The central flow's Euler steps are the same arithmetic on both backends (1e-12)."""
    prob = pyrod.problem(**PROB)
    opt = pyrod.optimizers.GD(lr=1.0)
    kw = dict(steps=16, runs=["discrete", "rod", "central"], eigs=1, eig_every=8, chunk=8)
    tt = pyrod.simulate(prob, opt, backend="torch", **kw)
    sp = pyrod.simulate(prob, opt, **kw)              # backend=None on a CPU problem: SciPy
    ref = pyrod.simulate(prob, opt, runs=["discrete", "rod"], method="DOP853", rtol=1e-11, atol=1e-13,
                         **{k: v for k, v in kw.items() if k != "runs"})
    a, b, r = tt["rod"].ds, sp["rod"].ds, ref["rod"].ds
    assert (a.attrs["backend"], a.attrs["method"], a.attrs["rtol"], a.attrs["atol"],
            a.attrs["method_is_flow_default"]) == ("torch", "bosh3", 1e-3, 1e-6, 1)
    assert (b.attrs["backend"], b.attrs["method"], b.attrs["rtol"], b.attrs["atol"],
            b.attrs["method_is_flow_default"]) == ("scipy", "RK23", 1e-3, 1e-6, 1)
    assert a.attrs["flow_status"] == b.attrs["flow_status"] == "ok"
    scale = np.abs(r.loss.values).max()
    assert np.abs(a.loss.values - r.loss.values).max() <= 1e-3 * scale
    assert np.abs(a.loss.values - b.loss.values).max() <= 1e-3 * scale
    assert abs(a.attrs["n_rhs"] / b.attrs["n_rhs"] - 1) < 0.25, (a.attrs["n_rhs"], b.attrs["n_rhs"])
    ca, cb = tt["central"].ds, sp["central"].ds
    for c, backend in ((ca, "torch"), (cb, "scipy")):
        assert (c.attrs["backend"], c.attrs["method"], c.attrs["substeps"], c.attrs["method_is_flow_default"]) == \
            (backend, "euler", 4, 1)
        assert c.attrs["flow_status"] == "ok"
    np.testing.assert_allclose(ca.loss.values, cb.loss.values, rtol=1e-12)
    # a tolerance given without a method: the torch backend's own default method (dopri5), not the flow's
    c = pyrod.simulate(prob, opt, steps=4, runs=["discrete", "rod"], backend="torch", rtol=1e-5)["rod"].ds
    assert (c.attrs["method"], c.attrs["method_is_flow_default"], c.attrs["rtol"]) == ("default", 0, 1e-5)
    # bea=True keeps the backend's tight default (dopri5 at 1e-6 / 1e-9), as on SciPy (DOP853)
    c = pyrod.simulate(prob, opt, steps=4, runs=["discrete", "rod"], backend="torch", bea=True)["rod"].ds
    assert (c.attrs["method"], c.attrs["method_is_flow_default"], c.attrs["rtol"], c.attrs["atol"]) == \
        ("default", 0, 1e-6, 1e-9)


def test_files_written_with_backend_scipy_or_none_replay_identically(tmp_path):
    """A spec that names "scipy" (every file written before backend=None) replays on SciPy bit for bit; a file
    written with the default stores backend=None in its spec and "scipy" (the backend used) in the group."""
    from test_resume import assert_same_run

    kw = dict(problem={k: v for k, v in PROB.items() if k != "device"}, optimizer={"name": "GD", "lr": 1.0},
              runs=["discrete", "rod"], eigs=1, eig_every=4, chunk=4, steps=8)
    old = pyrod.simulate(**kw, backend="scipy", path=str(tmp_path / "old.nc"))
    spec = pyrod.spec_of(tmp_path / "old.nc")
    assert spec.integrator.backend == "scipy"
    again = pyrod.simulate(spec.replace({"output.path": str(tmp_path / "again.nc")}))
    assert again["rod"].ds.attrs["backend"] == "scipy"
    assert_same_run(again, old, ["discrete", "rod"])
    new = pyrod.simulate(**kw, path=str(tmp_path / "new.nc"))
    assert pyrod.spec_of(tmp_path / "new.nc").integrator.backend is None
    assert new["rod"].ds.attrs["backend"] == "scipy"
    assert_same_run(new, old, ["discrete", "rod"])
