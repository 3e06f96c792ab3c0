"""Stability thresholds: the table of docs/theory/optimizers.md, and the flip of the *implemented* step on a quadratic.

(a) ``threshold()`` equals that table (Cohen et al. 2022, Table 1) to 1e-14 relative.
(b) On L = ½λw² (d = 1) with frozen ν (P = √0.25 + ε = 0.501, or ν^p + ε for Padam) and bias correction
    off, one step is linear in z = (w, m). Its matrix J(λ) is built by calling ``opt.step`` on the basis
    states (w, m) = (1, 0), (0, 1) — the Jacobian of the implemented step, no hand formula. Scanning
    λ/P upwards on a geometric grid finds the first λ where the spectral radius ρ(J) exceeds 1; bisection
    pins it to 1e-14 relative. Asserted: the crossing equals ``threshold()`` within 1e-8 relative (AdamW:
    ``decay_threshold() = threshold()·(1 − ηλ_wd/2)``), and the eigenvalue of largest modulus at the
    crossing is −1 within 1e-6 (a period-2 flip, not a complex or +1 crossing). Observed: crossings within
    7e-16 relative, multipliers within 1e-12 of −1.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyrod
from pyrod.optimizers import (
    GD,
    Adafactor,
    Adagrad,
    Adam,
    AdamW,
    AMSGrad,
    HeavyBall,
    Muon,
    NAdam,
    Nesterov,
    Padam,
    RMSProp,
    ScalarAdam,
    ScalarNAdam,
    ScalarRMSProp,
)

BETAS = (0.0, 0.5, 0.9, 0.99)
ETA = 0.01


# ------------------------------------------------------------------------------------------- (a) table
def hb_ema(eta, b):
    return (2 + 2 * b) / (eta * (1 - b))


def nag_ema(eta, b):
    return (2 + 2 * b) / (eta * (1 - b) * (1 + 2 * b))


TABLE = {  # name -> (constructor(eta, beta), formula(eta, beta))
    "GD": (lambda e, b: GD(lr=e), lambda e, b: 2 / e),
    "HeavyBall(ema)": (lambda e, b: HeavyBall(lr=e, beta=b), hb_ema),
    "HeavyBall(standard)": (lambda e, b: HeavyBall(lr=e, beta=b, parameterization="standard"),
                            lambda e, b: (2 + 2 * b) / e),
    "Nesterov(ema)": (lambda e, b: Nesterov(lr=e, beta=b), nag_ema),
    "Nesterov(standard)": (lambda e, b: Nesterov(lr=e, beta=b, parameterization="standard"),
                           lambda e, b: (2 + 2 * b) / (e * (1 + 2 * b))),
    "RMSProp": (lambda e, b: RMSProp(lr=e, beta2=b), lambda e, b: 2 / e),
    "ScalarRMSProp": (lambda e, b: ScalarRMSProp(lr=e, beta2=b), lambda e, b: 2 / e),
    "Adam": (lambda e, b: Adam(lr=e, beta1=b), hb_ema),
    "ScalarAdam": (lambda e, b: ScalarAdam(lr=e, beta1=b), hb_ema),
    "NAdam": (lambda e, b: NAdam(lr=e, beta1=b), nag_ema),
    "ScalarNAdam": (lambda e, b: ScalarNAdam(lr=e, beta1=b), nag_ema),
    "AdamW": (lambda e, b: AdamW(lr=e, beta1=b, weight_decay=0.1), hb_ema),
    "AMSGrad": (lambda e, b: AMSGrad(lr=e, beta1=b), hb_ema),
    "Padam": (lambda e, b: Padam(lr=e, beta1=b), hb_ema),
    "Adagrad": (lambda e, b: Adagrad(lr=e), lambda e, b: 2 / e),
    "Adafactor": (lambda e, b: Adafactor(lr=e), lambda e, b: 2 / e),
    "Adafactor(momentum)": (lambda e, b: Adafactor(lr=e, beta1=b, style="flax"), hb_ema),
    "Muon": (lambda e, b: Muon(lr=e, momentum=b), lambda e, b: math.nan),
}


def test_table_covers_registry():
    assert {k.split("(")[0] for k in TABLE} == set(pyrod.optimizers.REGISTRY)


@pytest.mark.parametrize("name", list(TABLE))
def test_threshold_formula(name):
    make, formula = TABLE[name]
    for eta in (0.01, 0.3, 2.0):
        for b in BETAS:
            got, want = make(eta, b).threshold(), formula(eta, b)
            if math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, rel=1e-14, abs=0), (name, eta, b)


def test_headline_numbers():
    assert Adam(lr=1e-3, beta1=0.9).threshold() == pytest.approx(38000.0, rel=1e-14)
    assert NAdam(lr=0.01, beta1=0.9).threshold() == pytest.approx(1357.142857142857, rel=1e-14)
    assert AdamW(lr=0.01, beta1=0.9, weight_decay=0.5).decay_threshold() == pytest.approx(3800 * (1 - 0.0025))


# ------------------------------------------------------------------------------------------- (b) flips
NU = torch.tensor([0.25], dtype=torch.float64)
EPS = 1e-3
P_SQRT = 0.5 + EPS


def _frozen(cls, b, **kw):
    return cls(lr=ETA, beta1=b, eps=EPS, bias_correction=False, frozen_nu=NU, **kw)


# name -> (constructor(beta), P by hand, uses beta)
FLIP = {
    "GD": (lambda b: GD(lr=ETA), 1.0, False),
    "HeavyBall(ema)": (lambda b: HeavyBall(lr=ETA, beta=b), 1.0, True),
    "Nesterov(ema)": (lambda b: Nesterov(lr=ETA, beta=b), 1.0, True),
    "ScalarRMSProp": (lambda b: ScalarRMSProp(lr=ETA, eps=EPS, frozen_nu=NU), P_SQRT, False),
    "RMSProp": (lambda b: RMSProp(lr=ETA, eps=EPS, frozen_nu=NU), P_SQRT, False),
    "ScalarAdam": (lambda b: _frozen(ScalarAdam, b), P_SQRT, True),
    "Adam": (lambda b: _frozen(Adam, b), P_SQRT, True),
    "ScalarNAdam": (lambda b: _frozen(ScalarNAdam, b), P_SQRT, True),
    "NAdam": (lambda b: _frozen(NAdam, b), P_SQRT, True),
    "HeavyBall(standard)": (lambda b: HeavyBall(lr=ETA, beta=b, parameterization="standard"), 1.0, True),
    "Nesterov(standard)": (lambda b: Nesterov(lr=ETA, beta=b, parameterization="standard"), 1.0, True),
    "AdamW": (lambda b: _frozen(AdamW, b, weight_decay=3.0), P_SQRT, True),
    "AMSGrad": (lambda b: _frozen(AMSGrad, b), P_SQRT, True),
    "Padam": (lambda b: _frozen(Padam, b, p=0.25), 0.25 ** 0.25 + EPS, True),
    "Adagrad": (lambda b: Adagrad(lr=ETA, eps=EPS, frozen_nu=NU), P_SQRT, False),
}
FLIP_CASES = [(n, b) for n, (_, _, uses) in FLIP.items() for b in (BETAS if uses else (None,))]


def step_matrix(opt, lam: float, k: int = 0) -> np.ndarray:
    """The matrix of one implemented step on L = ½ λ w² (d = 1) in the basis of z = (w, m)."""
    zero = torch.zeros(1, dtype=torch.float64)
    base = opt.init_state(zero, zero)  # ν_0 = frozen ν; no momentum, or m_0 = 0
    n = 2 if opt.has_momentum else 1
    cols = []
    for j in range(n):
        st = base.clone()
        st.k = k
        st.w = torch.tensor([1.0 if j == 0 else 0.0], dtype=torch.float64)
        if opt.has_momentum:
            st.m = torch.tensor([1.0 if j == 1 else 0.0], dtype=torch.float64)
        new, _ = opt.step(st, lam * st.w)
        cols.append(torch.cat([new.w, new.m]) if opt.has_momentum else new.w)
    return torch.stack(cols, 1).numpy()


def flip_point(opt, P: float, k: int = 0):
    """First λ/P at which ρ(J) exceeds 1, and the eigenvalue of largest modulus there (the one crossing)."""
    rho = lambda s: float(np.max(np.abs(np.linalg.eigvals(step_matrix(opt, s * P, k)))))  # noqa: E731
    grid = np.geomspace(0.1, 1e5, 241) / ETA
    above = [s for s in grid if rho(s) > 1.0]
    assert above, "no instability found on the grid"
    hi = above[0]
    lo = grid[np.searchsorted(grid, hi) - 1]
    assert rho(lo) <= 1.0
    while hi - lo > 1e-15 * hi:
        mid = 0.5 * (lo + hi)
        if rho(mid) > 1.0:
            hi = mid
        else:
            lo = mid
    crossing = 0.5 * (lo + hi)
    ev = np.linalg.eigvals(step_matrix(opt, crossing * P, k))
    return crossing, ev[np.argmax(np.abs(ev))]


@pytest.mark.parametrize("name,beta", FLIP_CASES, ids=[f"{n}-{b}" for n, b in FLIP_CASES])
def test_flip_of_implemented_step(name, beta):
    make, P, _ = FLIP[name]
    opt = make(beta)
    if opt.has_nu:  # the hand P is the optimizer's P
        assert float(opt.preconditioner(opt.frozen_nu, 0)) == pytest.approx(P, rel=1e-15)
    crossing, mult = flip_point(opt, P)
    want = opt.decay_threshold() if isinstance(opt, AdamW) else opt.threshold()
    assert crossing == pytest.approx(want, rel=1e-8), (name, beta, crossing, want)
    assert abs(mult - (-1.0)) <= 1e-6, (name, beta, mult)


def test_adamw_flip_is_shifted():
    """The decay moves the flip: AdamW's crossing is *not* Adam's threshold (the shift is real)."""
    opt = _frozen(AdamW, 0.9, weight_decay=3.0)
    crossing, _ = flip_point(opt, P_SQRT)
    assert abs(crossing / opt.threshold() - 1) > 0.01  # ηλ/2 = 0.015


@pytest.mark.parametrize("cls", [Adam, NAdam])
def test_flip_with_bias_correction_at_large_t(cls):
    """With bias correction on, the factors → 1 as t → ∞: at k = 10⁶ the crossing is the table value."""
    opt = cls(lr=ETA, beta1=0.9, eps=EPS, frozen_nu=NU)
    crossing, mult = flip_point(opt, P_SQRT, k=10 ** 6)
    assert crossing == pytest.approx(opt.threshold(), rel=1e-8)
    assert abs(mult + 1.0) <= 1e-6
    # ...and at k = 0 the factors matter (the flag is live in the step)
    crossing0, _ = flip_point(opt, P_SQRT, k=0)
    assert abs(crossing0 / opt.threshold() - 1) > 0.1


# ------------------------------------------------------------------------------------------- (c) Adafactor
@pytest.mark.parametrize("style,beta1", [("torch", 0.0), ("flax", 0.0), ("flax", 0.9)])
def test_adafactor_threshold_on_quadratic(style, beta1):
    """Adafactor's own step on L = ½ wᵀHw (a 3×4 matrix block + a 5-vector block) with V̂ frozen, no clipping
    and no parameter scale, so P = √ν is constant: just below the threshold (λmax(P⁻¹H) = 0.97·threshold) the
    iterates decay, just above (1.03·threshold) they grow — the period-2 flip sits at threshold()."""
    from pyrod.problems.problem import Block, Problem

    d = 17
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    H = 1e3 * (A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64))  # lr ≪ 1/√t: torch's ρ_t = lr throughout
    nu = torch.rand(d, generator=gen, dtype=torch.float64) + 0.05
    Pm = nu.sqrt()
    lam = float(torch.linalg.eigvalsh(H / torch.outer(Pm, Pm).sqrt()).max())  # λmax(P⁻¹H), dense
    blocks = (Block("W", 0, 12, (3, 4)), Block("b", 12, 17, (5,)))
    prob = Problem(loss_fn=lambda w: 0.5 * w @ (H @ w), w0=torch.randn(d, generator=gen, dtype=torch.float64),
                   blocks=blocks)
    base = (2 + 2 * beta1) / (1 - beta1)
    ratio_end = {}
    for ratio in (0.97, 1.03):
        lr = ratio * base / lam  # threshold = base/lr = λ/ratio
        opt = Adafactor(lr=lr, style=style, beta1=beta1, frozen_nu=nu, d=math.inf, scale_by_param=False).bind(prob)
        assert lam / opt.threshold() == pytest.approx(ratio, rel=1e-12)
        st = opt.init_state(prob.w0, prob.grad(prob.w0))
        _, nu_p = opt.step(st.clone(), prob.grad(st.w))
        assert torch.allclose(opt.preconditioner(nu_p, 0), Pm, rtol=1e-14)  # the P whose λmax we set
        for _ in range(1500):
            st, _ = opt.step(st, prob.grad(st.w))
        ratio_end[ratio] = float(st.w.norm() / prob.w0.norm())
    assert ratio_end[0.97] < 1e-2, ratio_end
    assert ratio_end[1.03] > 1e2, ratio_end
