"""Side-by-side accuracy of rod vs stable flows (docs/theory/stable_and_rod_flows.md), events, backends through
simulate."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import pyrod
from pyrod.problems import Problem


def scalar_factorization(a0=2.0, b0=0.2):
    return Problem(loss_fn=lambda w: 0.5 * (w[0] * w[1] - 1.0) ** 2,
                   w0=torch.tensor([a0, b0], dtype=torch.float64), name="scalar_factorization")


def _median(ds, name, sl=slice(None)):
    v = ds[name].sel(t=sl).values
    return float(np.median(v[np.isfinite(v)]))


def test_quartic_toy_rod_beats_stable():
    """½(ab−1)², GD η = 0.75 from (2.0, 0.2): GD oscillates, slides along ab = 1 to a flatter
    minimum; the stable flow ends at the sharp one. Spec: median centre error rod 0.31 vs stable 1.2 (3.8×) at
    rtol 1e-10 over 600 steps."""
    prob = scalar_factorization()
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.75), steps=600, runs=["discrete", "stable", "rod"],
                          eigs=1, eig_every=10, rtol=1e-10, atol=1e-12)
    rod = _median(tree["rod"].ds, "centre_distance")
    stable = _median(tree["stable"].ds, "centre_distance")
    print(f"quartic toy: median centre distance rod {rod:.3g}, stable {stable:.3g}, ratio {stable / rod:.2f}")
    # measured here: rod 0.308, stable 1.17 (ratio 3.79); the spec's prototype: 0.31 / 1.2 (its "3.8x")
    assert rod == pytest.approx(0.31, rel=0.05) and stable == pytest.approx(1.2, rel=0.05)
    assert stable / rod >= 3.5
    # the discrete run and the rod flow end at the flat minimum (effective sharpness < 1), the stable flow does not
    d_es = tree["discrete"].ds["effective_sharpness"].values
    r_es = tree["rod"].ds["effective_sharpness"].values
    s_es = tree["stable"].ds["effective_sharpness"].values
    last = lambda v: v[np.isfinite(v)][-1]  # noqa: E731
    assert last(d_es) < 1 and last(r_es) < 1 and last(s_es) > 1.5


def test_restart_inside_eos_rod_beats_stable():
    """Restart both flows from the discrete state inside the EoS (docs/theory/stable_and_rod_flows.md, restarts): GD on
    the digits MLP."""
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=300, seed=0,
                         model_kwargs={"width": 32, "depth": 2})
    k0, n = 300, 100
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=1.0), steps=k0 + n, runs=["discrete", "stable", "rod"],
                          eigs=1, eig_every=20, restart_at=k0, rtol=1e-8, atol=1e-10)
    d = tree["discrete"].ds
    es = d["effective_sharpness"].values[k0 - 40:k0 + 1]
    assert np.nanmax(es) > 0.95, "the discrete run must be at the EoS at the restart"
    sl = slice(k0, k0 + n - 1)
    rod = _median(tree["rod"].ds, "centre_distance", sl)
    stable = _median(tree["stable"].ds, "centre_distance", sl)
    it = _median(tree["rod"].ds, "iterate_distance", sl)
    print(f"MLP restart at {k0}: median centre distance rod {rod:.3g}, stable {stable:.3g}, "
          f"ratio {stable / rod:.1f}; rod iterate distance {it:.3g}")
    assert stable / rod >= 10
    assert tree["rod"].ds["t"].values[0] == k0 and tree["stable"].ds["t"].values[0] == k0


def test_eos_event_located_on_quadratic_closed_form():
    """Stable flow of GD on L = ½ wᵀ A(w) w is linear; we use a Problem whose sharpness grows in closed form:
    L(w) = ½ exp(w_2) w_1² + ½ (w_2 − c)²-free drift, so λmax(H) ≈ e^{w_2} with w_2(t) = w_2(0) + v t."""
    # L = ½ s(w2) w1² + v·(−w2), with tiny w1: H ≈ diag(s(w2), 0) and w2' = η v ⇒ s(w2(t)) = exp(w2_0 + η v t)
    eta, v = 0.1, 1.0
    prob = Problem(loss_fn=lambda w: 0.5 * torch.exp(w[1]) * w[0] ** 2 - v * w[1],
                   w0=torch.tensor([1e-6, 0.0], dtype=torch.float64), name="growing_sharpness")
    # effective sharpness η e^{w2}/2 = 1 ⇔ w2 = ln(2/η) ⇔ t* = ln(2/η) / (η v)
    t_star = math.log(2 / eta) / (eta * v)
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=eta), steps=40, runs=["discrete", "stable"], eigs=1,
                          eig_every=1, events=["eos"], rtol=1e-10, atol=1e-14)
    events = json.loads(tree["stable"].attrs["events"])
    assert [e["kind"] for e in events] == ["eos"]
    # the Hessian also has the term exp(w2) w1²/2 in the (2,2) entry and w1 e^{w2} off-diagonal: O(w1²) ~ 1e-12
    assert abs(events[0]["t"] - t_star) < 1e-6, (events[0]["t"], t_star)


def test_loss_target_event_terminal_stops_flow():
    prob = Problem(loss_fn=lambda w: 0.5 * (w * w).sum(), w0=torch.ones(3, dtype=torch.float64), name="bowl")
    eta = 0.1
    # stable flow of GD: w(t) = e^{-ηt} w0, L(t) = 1.5 e^{-2ηt}; L = 1e-3 at t = ln(1500)/(2η)
    t_star = math.log(1500) / (2 * eta)
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=eta), steps=60, runs=["discrete", "stable"], eigs=1,
                          eig_every=10, events=["loss<1e-3!"], rtol=1e-10, atol=1e-14)
    ev = json.loads(tree["stable"].attrs["events"])
    assert len(ev) == 1 and abs(ev[0]["t"] - t_star) < 1e-7
    assert tree["stable"].attrs["flow_status"].startswith("terminal event")
    t = tree["stable"].ds["t"].values
    loss = tree["stable"].ds["loss"].values
    assert np.isfinite(loss[t < t_star - 0.5]).all() and np.isnan(loss[t > t_star + 0.5]).all()


def test_sundials_backend_through_simulate_matches_scipy():
    pytest.importorskip("sksundae")
    prob = pyrod.problem(model="mlp", data="digits", classes=3, n=60, seed=0, model_kwargs={"width": 6, "depth": 1})
    kw = dict(steps=10, runs=["discrete", "rod"], eigs=1, eig_every=10, rtol=1e-7, atol=1e-10)
    a = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), backend="scipy", **kw)
    b = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), backend="sundials", **kw)
    np.testing.assert_allclose(b["rod"].ds["loss"].values, a["rod"].ds["loss"].values, rtol=1e-5)
    assert b["rod"].attrs["backend"] == "sundials"


def test_flow_options_validated():
    prob = scalar_factorization()
    with pytest.raises(ValueError, match="rtol=0"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, runs=["rod"], rtol=0)
    with pytest.raises(ValueError, match="backend"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, runs=["rod"], backend="matlab")
    with pytest.raises(ValueError, match="event 'eso'"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, runs=["rod"], events=["eso"])
    with pytest.raises(ValueError, match="AMSGrad"):
        pyrod.simulate(prob, pyrod.optimizers.AMSGrad(lr=0.1), steps=3, runs=["rod"])
    with pytest.raises(TypeError, match="flow runs"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=3, runs=["discrete"], rtol=1e-3)


def test_bea_correction_improves_quartic_rod():
    """BEA-1 (docs/theory/stable_and_rod_flows.md) is ~100× better than the plain rod flow on the quartic toy at
    EoS (spec, 600 steps: 0.31 vs 0.0029). Measured here over 100 steps: 0.308 vs 0.0029."""
    prob = scalar_factorization()
    kw = dict(steps=100, runs=["discrete", "rod"], eigs=1, eig_every=50, rtol=1e-10, atol=1e-12)
    plain = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.75), **kw)
    bea = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.75), bea=True, **kw)
    e_plain = _median(plain["rod"].ds, "centre_distance")
    e_bea = _median(bea["rod"].ds, "centre_distance")
    print(f"quartic toy, 100 steps: rod {e_plain:.3g}, rod+BEA {e_bea:.3g}")
    assert e_bea < e_plain / 50
