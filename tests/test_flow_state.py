"""Flow state: ``FlowRun.state_dict`` / ``load_state_dict`` resume bit-identically; per-run cost counters;
bounded time on a diverging flow; float32 central flow."""
from __future__ import annotations

import io
import math
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import pyrod
from pyrod.optimizers import GD, Adam, RMSProp
from pyrod.runs.discrete import DiscreteRun
from pyrod.runs.measure import Measurer
from pyrod.simulation import prepare_flows

CHUNK, N_CHUNKS = 3, 4


def _mlp(dtype="float64"):
    # 64 -> 4 -> 4: d = 280
    return pyrod.problem(model="mlp", data="digits", classes=4, n=60, dtype=dtype, seed=0, device="cpu",
                         model_kwargs={"width": 4, "depth": 1})


def _mlp_watched():
    # 64 -> 8 -> 8 -> 4: d = 628; GD at 2.1/λ1(w0) tracks 5 pairs with 1-3 critical and others far below: the
    # central flow's watched checks leave some pairs to the whole checks at integer times
    return pyrod.problem(model="mlp", data="digits", classes=4, n=64, seed=0, device="cpu",
                         model_kwargs={"width": 8, "depth": 2, "activation": "gelu"})


def _gd_above_threshold(prob, factor=2.1):
    return GD(lr=factor / float(torch.linalg.eigvalsh(prob.hessian(prob.w0))[-1]))


def _quartic(dtype=torch.float64):
    # L = ½y²x² + κ/2(y−y*)²: GD at η = 2/2.25 enters the EoS (y → 1.5) within a few steps
    return pyrod.problem(toy="quartic", kappa=0.05, ystar=2.0, x0=0.05, y0=1.45, dtype=dtype)


def _chunks(prob, opt, n=N_CHUNKS):
    run = DiscreteRun(prob, opt, Measurer(prob, opt, 1, 1000))
    return [run.run_chunk(CHUNK)[1] for _ in range(n)]


def _build(name, prob, opt, kw):
    spec = prepare_flows(prob, opt, [name], **kw)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spec.build(Measurer(prob, opt, 2, 3, eig_tol=1e-6))


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _assert_records_equal(r1, r2):
    assert len(r1) == len(r2)
    for (t1, v1), (t2, v2) in zip(r1, r2, strict=True):
        assert t1 == t2
        assert sorted(v1) == sorted(v2), t1
        for k in v1:
            assert _same(v1[k], v2[k]), (t1, k, v1[k], v2[k])


CASES = [
    # (id, run, problem, optimizer, flow options)
    pytest.param(("stable-GD-DOP853", "stable", _mlp, lambda: GD(lr=0.5), dict(method="DOP853", events=["eos"])),
                 marks=pytest.mark.slow),
    ("stable-Adam-RK45-f32", "stable", lambda: _mlp("float32"), lambda: Adam(lr=0.01), dict(method="RK45")),
    ("rod-Adam-DOP853", "rod", _mlp, lambda: Adam(lr=0.01),
     dict(method="DOP853", events=["eos", "loss<1e-9"])),
    ("rod-GD-euler", "rod", _mlp, lambda: GD(lr=0.5), dict(method="euler", substeps=2)),
    pytest.param(("rod-GD-bea-RK45", "rod", _mlp, lambda: GD(lr=0.5), dict(method="RK45", bea=True)),
                 marks=pytest.mark.slow),
    ("rod-GD-bea-euler", "rod", _mlp, lambda: GD(lr=0.5), dict(method="euler", bea=True, substeps=1)),
    ("rod-RMSProp-DOP853-f32", "rod", lambda: _mlp("float32"), lambda: RMSProp(lr=0.003), dict(method="DOP853")),
    ("central-GD-euler", "central", _quartic, lambda: GD(lr=2 / 2.25), dict(method="euler", events=["eos"])),
    pytest.param(("central-GD-RK45", "central", _quartic, lambda: GD(lr=2 / 2.25), dict(method="RK45")),
                 marks=pytest.mark.slow),
    ("central-GD-DOP853-mlp", "central", _mlp, lambda: GD(lr=0.5), dict(method="DOP853")),
    ("central-RMSProp-euler", "central", _quartic, lambda: RMSProp(lr=0.1, beta2=0.9), dict(method="euler")),
    ("central-RMSProp-euler-f32", "central", lambda: _quartic(torch.float32),
     lambda: RMSProp(lr=0.1, beta2=0.9), dict(method="euler")),
    ("central-GD-euler-watched-mlp", "central", _mlp_watched, None, dict(method="euler")),
    # adaptive methods: right-hand sides past an integer time keep the watched columns until the plan's watch_until
    ("central-GD-RK45-watched-mlp", "central", _mlp_watched, None, dict(method="RK45")),
    ("central-GD-dopri5-watched-mlp", "central", _mlp_watched, None, dict(method="dopri5", backend="torch")),
]


@pytest.mark.parametrize("case", CASES, ids=[(c.values[0] if hasattr(c, "values") else c)[0] for c in CASES])
def test_resume_is_bit_identical(case):
    """N chunks uninterrupted == N/2 chunks, state_dict -> torch.save -> torch.load -> fresh FlowRun -> N/2 chunks:
    every record value equal (NaN-equal), and the final attributes' counters too."""
    case_id, name, make_prob, make_opt, kw = case
    prob = make_prob()
    opt = _gd_above_threshold(prob) if make_opt is None else make_opt()
    chunks = _chunks(prob, opt)
    ref = _build(name, prob, opt, kw)
    r_ref = [rec for c in chunks for rec in ref.advance(c)]
    assert ref.stopped is None, ref.stopped

    first = _build(name, prob, opt, kw)
    r_a = [rec for c in chunks[:N_CHUNKS // 2] for rec in first.advance(c)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    second = _build(name, prob, opt, kw)
    second.load_state_dict(state)
    r_b = [rec for c in chunks[N_CHUNKS // 2:] for rec in second.advance(c)]
    _assert_records_equal(r_ref, r_a + r_b)
    fa, fb = ref.final_attrs(), second.final_attrs()
    for key in ("events", "n_rhs", "n_jvp", "flow_status"):
        assert fa[key] == fb[key], key
    assert ref.cum == second.cum
    if "watched" in case_id:                  # the resumed half runs watched checks, from the saved plan
        assert second.model.stats["n_watched_check"] > 0 and state["model"]["n_near"] is not None
    if name == "central" and (prob.dim == 2 or "watched" in case_id):   # the projection runs (EoS reached)
        assert any(v["n_critical"] > 0 for _, v in r_ref), "central flow never critical: the test is too easy"
        for key, v in fa.items():
            if key.startswith("central_") and not key.startswith("central_t_"):  # not wall times
                assert fb[key] == v, key


def test_state_dict_is_a_snapshot_and_checks_its_run():
    prob, opt = _quartic(), GD(lr=2 / 2.25)
    chunks = _chunks(prob, opt, 2)
    run = _build("central", prob, opt, dict(method="euler"))
    run.advance(chunks[0])
    st = run.state_dict()
    y = st["y"].clone()
    run.advance(chunks[1])
    assert torch.equal(st["y"], y)                      # later advances do not change a taken state
    rod = _build("rod", prob, opt, {})
    with pytest.raises(ValueError, match="run 'central' cannot be loaded into run 'rod'"):
        rod.load_state_dict(st)


def test_cost_counters_belong_to_each_run():
    """Two runs sharing one Problem count their own gradients: the same flow twice, interleaved, gives the
    same n_grad / n_hvp in each (they used to be diffs of the shared problem's counters)."""
    prob, opt = _mlp(), GD(lr=0.5)
    chunks = _chunks(prob, opt, 2)
    a, b = _build("rod", prob, opt, {}), _build("rod", prob, opt, {})
    g0 = prob.n_grad
    for c in chunks:
        ra, rb = a.advance(c), b.advance(c)
        assert ra[-1][1]["n_grad"] == rb[-1][1]["n_grad"] > 0
    # rod: two gradients per RHS, plus the measurer's loss_and_grad per step
    assert a.cum[0] == 2 * a.n_rhs + 2 * CHUNK
    assert a.cum[1] > 0                                # eigen-solves every 2 steps
    assert prob.n_grad - g0 == a.cum[0] + b.cum[0]    # the shared problem still counts everything


# ------------------------------------------------------------------------------------------- divergence
def test_diverging_rod_flow_stops_fast_with_reason():
    """GD far above the threshold (ηλ = 60 on a quadratic): the rod flow's endpoints explode; the flow stops
    within seconds with its reason recorded (issue 10), instead of shrinking its step forever."""
    code = """
import time, pyrod
prob = pyrod.problem(toy="quadratic", spectrum=(30.0, 1.0, 0.1))
t0 = time.perf_counter()
tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=2.0), steps=40, runs=["discrete", "rod"], chunk=10,
                      divergence_factor=1e6)
print("WALL", time.perf_counter() - t0)
print("STATUS", tree["rod"].attrs["flow_status"])
print("NRHS", tree["rod"].attrs["n_rhs"])
"""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert time.perf_counter() - t0 < 60
    status = lines["STATUS"]
    assert status.startswith("integration failed") and ("diverged" in status or "budget" in status
                                                         or "collapsed" in status), status
    assert int(lines["NRHS"]) < 2000 * 40


def test_evaluation_budget_and_step_floor_in_the_driver():
    from pyrod.integrate import FlowProblem, solve

    # y' = y²: blows up at t = 1 from y(0) = 1; each bound ends the segment with a message naming it
    rhs = lambda t, y: y ** 2  # noqa: E731
    seg = solve(FlowProblem(rhs=rhs, n=1, max_rhs_per_unit=None, min_step=0.0), 0.0, [1.0], 2.0)
    assert seg.status == "failed"                       # SciPy's own failure (or non-finite), eventually
    seg = solve(FlowProblem(rhs=rhs, n=1, max_norm=1e3, max_rhs_per_unit=None, min_step=0.0), 0.0, [1.0], 2.0)
    assert seg.status == "failed" and "max_norm" in seg.message and 0.99 < seg.t_end < 1.0
    assert abs(seg.y_end[0] - 1 / (1 - seg.t_end)) < 1e-4 * seg.y_end[0]   # the last good state is returned
    seg = solve(FlowProblem(rhs=rhs, n=1, max_rhs_per_unit=200.0, min_step=0.0), 0.0, [1.0], 2.0)
    assert seg.status == "failed" and "evaluation budget" in seg.message and seg.n_rhs <= 200 + 13
    seg = solve(FlowProblem(rhs=rhs, n=1, max_rhs_per_unit=None, min_step=1e-4), 0.0, [1.0], 2.0)
    assert seg.status == "failed" and "step size collapsed" in seg.message
    seg = solve(FlowProblem(rhs=rhs, n=1, diverged=lambda t, y: "big" if y[0] > 50 else None), 0.0, [1.0], 2.0)
    assert seg.status == "failed" and "big" in seg.message and seg.y_end[0] <= 50   # the last good state
    # a healthy problem is untouched by the defaults
    seg = solve(FlowProblem(rhs=lambda t, y: -y, n=1), 0.0, [1.0], 50.0, [50.0])
    assert seg.status == "ok" and abs(seg.y_save[0, 0] - math.exp(-50)) < 1e-9
    with pytest.raises(ValueError, match="max_rhs_per_unit=0"):
        FlowProblem(rhs=rhs, n=1, max_rhs_per_unit=0)
    with pytest.raises(ValueError, match="min_step=-1"):
        FlowProblem(rhs=rhs, n=1, min_step=-1)


def test_integrator_options_are_checked():
    from pyrod.integrate import check_options, options_of

    check_options("scipy", {"jac": "jvp", "max_steps": 10, "exact_saves": True})
    check_options("scipy", {"substeps": 4}, method="euler")
    check_options("sundials", {"linsolver": "dense", "krylov_dim": 5})
    with pytest.raises(TypeError, match=r"\['substep'\].*valid options: \['exact_saves', 'jac', 'max_steps'\]"):
        check_options("scipy", {"substep": 4})
    with pytest.raises(TypeError, match="linsolver"):
        check_options("scipy", {"linsolver": "gmres"})
    assert "julia_linsolve" in options_of("julia")
    from pyrod.integrate import FlowProblem, solve
    with pytest.raises(TypeError, match="krylov_dim"):
        solve(FlowProblem(rhs=lambda t, y: -y, n=1, options={"krylov_dim": 3}), 0.0, [1.0], 1.0)
    prob = _quartic()
    with pytest.raises(TypeError, match="max_step"):
        prepare_flows(prob, GD(lr=0.5), ["rod"], options={"max_step": 3})


# ------------------------------------------------------------------------------------------- float32 central
def test_float32_central_flow_agrees_with_float64():
    """The central flow runs in float32 (the affine check scales its tolerance to the dtype) and agrees with
    float64 on the quartic toy at the EoS: predicted loss and X to 1e-4 relative after 12 steps (float32 round-off
    is 6e-8; the Euler scheme and the SDCP amplify it little)."""
    out = {}
    for dt in (torch.float64, torch.float32):
        tree = pyrod.simulate(_quartic(dt), GD(lr=2 / 2.25), steps=12, runs=["central"], eigs=1, eig_every=4,
                              method="euler")
        out[dt] = tree["central"].ds
    a, b = out[torch.float64], out[torch.float32]
    assert np.all(b["n_critical"].values[4:] == 1)
    np.testing.assert_allclose(b["predicted_loss"].values, a["predicted_loss"].values, rtol=1e-4)
    np.testing.assert_allclose(b["predicted_variances"].values[4:, 0], a["predicted_variances"].values[4:, 0],
                               rtol=1e-3)


def test_save_stops_values_and_a_bad_value_named():
    from pyrod.integrate import check_options
    from pyrod.integrate.driver import save_stops

    ts = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_array_equal(save_stops({"exact_saves": True}, ts), ts)
    np.testing.assert_array_equal(save_stops({"exact_saves": "integers"}, ts), [1.0, 2.0])
    for off in ({}, None, {"exact_saves": False}, {"max_steps": 3}):
        assert save_stops(off, ts).size == 0
    with pytest.raises(ValueError, match=r"options\['exact_saves'\]='half'; valid: \[False, True, 'integers'\]"):
        save_stops({"exact_saves": "half"}, ts)
    with pytest.raises(ValueError, match=r"exact_saves'\]=1; .*\(backend 'scipy'\)"):     # 1 is not True
        check_options("scipy", {"exact_saves": 1})
    prob = pyrod.Problem(loss_fn=lambda w: 0.5 * (w * w).sum(), w0=torch.ones(3, dtype=torch.float64), name="bowl")
    with pytest.raises(ValueError, match="'half'"):        # refused when the run is specified, not mid-run
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, runs=["discrete", "stable"],
                       exact_saves="half", progress=False)


@pytest.mark.parametrize("backend,method", [("scipy", "RK45"), ("scipy", "euler"), ("torch", "dopri5"),
                                            ("torch", "bosh3"), ("sundials", None)])
def test_on_save_gets_each_saved_state_before_its_steps_on_accept(backend, method):
    """``FlowProblem.on_save`` (the shared step driver): called once per save time, in order, with the very state
    that is saved, after the ``on_accept`` of the steps before it and before that of the step that reached it; the
    steps need not land there (a long adaptive step passes several save times, from its interpolant)."""
    if backend == "sundials":
        pytest.importorskip("sksundae")
    from pyrod.integrate import FlowProblem, solve

    log = []

    def host(y):
        return np.array(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)

    fp = FlowProblem(rhs=lambda t, y: -0.1 * y, n=2, method=method, rtol=1e-6, atol=1e-9,
                     on_save=lambda t, y: log.append(("save", t, host(y))),
                     on_accept=lambda t, y: log.append(("accept", t, None)),
                     options={"substeps": 4} if method == "euler" else {})
    ts = np.arange(1, 17) / 2.0
    seg = solve(fp, 0.0, np.array([1.0, -2.0]), 8.0, ts, backend=backend)
    assert seg.status == "ok"
    saves = [(t, y) for kind, t, y in log if kind == "save"]
    np.testing.assert_array_equal([t for t, _ in saves], ts)
    np.testing.assert_array_equal(np.stack([y for _, y in saves]), host(seg.y_save))
    decay = (1 - 0.1 / 4) ** (4 * ts) if method == "euler" else np.exp(-0.1 * ts)   # Euler ×4's own recursion
    np.testing.assert_allclose(np.stack([y for _, y in saves]), decay[:, None] * np.array([1.0, -2.0]), rtol=1e-5)
    accepts = [t for kind, t, _ in log if kind == "accept"]
    for i, (kind, t, _) in enumerate(log):
        if kind == "save":
            before = [a for kind_, a, _ in log[:i] if kind_ == "accept"]
            after = [a for kind_, a, _ in log[i:] if kind_ == "accept"]
            assert (not before or before[-1] < t) and after and after[0] >= t, (t, before[-1:], after[:1])
    inside = [t for t in ts if t not in accepts]    # saves from a step's interpolant (Euler ×4 lands on all)
    assert (inside == []) if method == "euler" else len(inside) >= 4, (inside, accepts)
