"""Stable and rod flows derived from the optimizer definitions (docs/theory/stable_and_rod_flows.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import jacfwd

import pyrod
from pyrod.flows import RodFlow, StableFlow
from pyrod.optimizers import GD, Adam, HeavyBall, NAdam, Nesterov, RMSProp, ScalarAdam, ScalarNAdam, ScalarRMSProp
from pyrod.problems import Problem

NINE = {
    "GD": lambda lr, nu: GD(lr=lr),
    "HeavyBall": lambda lr, nu: HeavyBall(lr=lr, beta=0.9),
    "Nesterov": lambda lr, nu: Nesterov(lr=lr, beta=0.9),
    "ScalarRMSProp": lambda lr, nu: ScalarRMSProp(lr=lr, eps=0.0, frozen_nu=nu[:1]),
    "RMSProp": lambda lr, nu: RMSProp(lr=lr, eps=0.0, frozen_nu=nu),
    "ScalarAdam": lambda lr, nu: ScalarAdam(lr=lr, eps=0.0, bias_correction=False, frozen_nu=nu[:1]),
    "Adam": lambda lr, nu: Adam(lr=lr, eps=0.0, bias_correction=False, frozen_nu=nu),
    "ScalarNAdam": lambda lr, nu: ScalarNAdam(lr=lr, eps=0.0, bias_correction=False, frozen_nu=nu[:1]),
    "NAdam": lambda lr, nu: NAdam(lr=lr, eps=0.0, bias_correction=False, frozen_nu=nu),
}


def quadratic(lams):
    lams = torch.as_tensor(lams, dtype=torch.float64)
    return Problem(loss_fn=lambda w: 0.5 * (lams * w * w).sum(), w0=torch.ones(len(lams), dtype=torch.float64),
                   name="quadratic")


def _rod_abscissa(opt, scale, nu, d=1):
    """Spectral abscissa of the rod-flow Jacobian on L = ½ λ w² with λ = scale · P (so λ(P⁻¹H) = scale)."""
    P = opt.preconditioner(nu if opt.has_nu else None, 1e6)
    lam = scale * P.expand(d).clone()
    flow = RodFlow(quadratic(lam), opt)
    y0 = torch.zeros(flow.layout.size, dtype=torch.float64)
    if opt.has_nu:
        y0[-flow.nu_size:] = nu[:flow.nu_size]
    J = jacfwd(lambda y: flow.rhs(1e6, y))(y0)
    n = flow.layout.size - flow.nu_size  # the frozen ν block has zero rows
    return float(torch.linalg.eigvals(J[:n, :n]).real.max()), flow


@pytest.mark.parametrize("name", list(NINE))
def test_rod_flow_linear_threshold_equals_analytic(name):
    lr = 0.01
    nu = torch.tensor([0.25], dtype=torch.float64)
    opt = NINE[name](lr, nu)
    thr = opt.threshold()
    lo, hi = 0.5 * thr, 1.5 * thr
    assert _rod_abscissa(opt, lo, nu)[0] < 0 < _rod_abscissa(opt, hi, nu)[0]
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _rod_abscissa(opt, mid, nu)[0] < 0:
            lo = mid
        else:
            hi = mid
    assert abs(lo / thr - 1) < 1e-6, (name, lo, thr)


@pytest.mark.parametrize("name", list(NINE))
def test_stable_flow_never_destabilises(name):
    lr = 0.01
    nu = torch.tensor([0.25], dtype=torch.float64)
    opt = NINE[name](lr, nu)
    for scale in (0.5, 1.0, 2.0, 10.0, 50.0):
        P = opt.preconditioner(nu if opt.has_nu else None, 1e6)
        flow = StableFlow(quadratic(scale * opt.threshold() * P.expand(1).clone()), opt)
        y0 = torch.zeros(flow.layout.size, dtype=torch.float64)
        if opt.has_nu:
            y0[-1] = nu[0]
        J = jacfwd(lambda y, flow=flow: flow.rhs(1e6, y))(y0)
        n = flow.layout.size - flow.nu_size
        assert float(torch.linalg.eigvals(J[:n, :n]).real.max()) < 0, (name, scale)


def _trajectory(opt, prob, steps):
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    out = []
    for _ in range(steps + 1):
        g = prob.grad(st.w)
        new, nu_p = opt.step(st, g)
        out.append((st, g, nu_p))
        st = new
    return out


@pytest.mark.parametrize("name", ["GD", "HeavyBall", "Nesterov", "ScalarRMSProp", "RMSProp", "ScalarAdam", "Adam",
                                  "ScalarNAdam", "NAdam"])
def test_exact_rod_recurrence_along_trajectory(name):
    """docs/theory/stable_and_rod_flows.md, "The rod recurrence":
    z̄_{k+1} − z̄_k = ½[D₊ + D₋], δ_{k+1} − δ_k = −2δ_k − ½[D₊ − D₋], with each endpoint's
    D evaluated with its own step index and ν (exact, round-off only)."""
    prob = pyrod.problem(model="mlp", data="digits", classes=3, n=100, seed=1, model_kwargs={"width": 8, "depth": 1})
    opt = {"GD": GD(lr=0.5), "HeavyBall": HeavyBall(lr=0.5), "Nesterov": Nesterov(lr=0.3),
           "ScalarRMSProp": ScalarRMSProp(lr=0.05), "RMSProp": RMSProp(lr=1e-3), "ScalarAdam": ScalarAdam(lr=0.05),
           "Adam": Adam(lr=3e-3), "ScalarNAdam": ScalarNAdam(lr=0.05), "NAdam": NAdam(lr=3e-3)}[name]
    traj = _trajectory(opt, prob, 40)

    def z(i):
        s = traj[i][0]
        return torch.cat([s.w] + ([s.m] if opt.has_momentum else []))

    def D(i):
        s, g, nu_p = traj[i]
        dw, dm = opt.direction(s.w, s.m, g, nu_p, s.k)
        return torch.cat([dw] + ([dm] if opt.has_momentum else []))

    worst = 0.0
    for k in range(0, 38):
        zbar = lambda j: 0.5 * (z(j) + z(j + 1))  # noqa: E731
        delta = lambda j: (-1) ** j * 0.5 * (z(j) - z(j + 1))  # noqa: E731
        # the endpoint zbar+delta is z_k for even k and z_{k+1} for odd k
        plus, minus = (k, k + 1) if k % 2 == 0 else (k + 1, k)
        assert torch.allclose(zbar(k) + delta(k), z(plus), rtol=0, atol=1e-14 * float(z(plus).abs().max()))
        # z_{k+2} - z_{k+1} = D(z_{k+1}), z_{k+1} - z_k = D(z_k)
        r1 = (zbar(k + 1) - zbar(k)) - 0.5 * (D(plus) + D(minus))
        r2 = (delta(k + 1) - delta(k)) - (-2 * delta(k) - 0.5 * (D(plus) - D(minus)))
        scale = float(z(k).abs().max())
        worst = max(worst, float(r1.abs().max()) / scale, float(r2.abs().max()) / scale)
    assert worst < 1e-13, worst


def test_rod_initial_condition_and_rhs_reproduce_one_step():
    """At t=0 the rod endpoints are z_0, z_1; for a linear map the endpoint form's velocity is Φ(z∓) − z±."""
    prob = quadratic([1.0, 3.0, 7.0])
    opt = GD(lr=0.1)
    flow = RodFlow(prob, opt)
    from pyrod.runs.discrete import DiscreteState
    w0 = prob.w0
    w1 = w0 - 0.1 * prob.grad(w0)
    y0 = flow.initial_state(DiscreteState(0, w0, None, None), DiscreteState(1, w1, None, None), None)
    f = flow.rhs(0.0, y0)
    p = flow.layout.unpack(f)
    torch.testing.assert_close(p["wp"], (w1 - 0.1 * prob.grad(w1)) - w0)
    torch.testing.assert_close(p["wm"], (w0 - 0.1 * prob.grad(w0)) - w1)


def test_adam_rod_bea_finite_where_nu_is_exactly_zero():
    """Digits has pixels that are 0 in every image: their first-layer weights have g = 0 and ν = 0 exactly. √ν has an
    infinite derivative there, which made the BEA JVP through P(ν) NaN (and the run hang); P's derivative is taken as
    0 there (ν̇ = 0 on those coordinates too)."""
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=64, seed=0, model_kwargs={"width": 8, "depth": 1})
    opt = pyrod.optimizers.Adam(lr=1e-2, beta2=0.99)
    nu = opt.nu_target(prob.grad(prob.w0))
    assert int((nu == 0).sum()) > 0                      # the case this test is about
    P, dP = torch.func.jvp(lambda n: opt.preconditioner(n, 3.0), (nu,), (torch.ones_like(nu),))
    assert torch.isfinite(dP).all() and (dP[nu == 0] == 0).all() and (dP[nu > 0] > 0).all()
    tree = pyrod.simulate(prob, opt, steps=6, runs=["discrete", "rod"], eigs=1, eig_every=100, bea=True,
                          progress=False)
    assert tree["rod"].attrs["flow_status"] == "ok"
    assert np.isfinite(tree["rod"].ds["centre_distance"].values).all()
