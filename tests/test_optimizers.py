"""pyrod's optimizers against torch.optim, hand-written loops and the increment D of docs/theory/optimizers.md.

Trajectory comparisons run pyrod and torch.optim side by side for STEPS steps on a real model (an MLP on
4 digits classes, float64, tensors (80,64), (80,), (80,80), (80,), (4,80), (4,): square, tall and wide
matrices). Both sides get their gradient from the same ``problem.grad`` at their own weights, so the
comparison isolates the optimizer arithmetic. Tolerance: max_k max_i |w_pyrod − w_torch| ≤ TOL·scale with
TOL = 1e-12 and scale = max(1, max_k ‖w_k‖_∞) (observed ≤ 1e-15; Adafactor and the Muon matrix part are
bit-identical). Every run must also move the weights by ≥ MOVE so the comparison is not vacuous.
"""
from __future__ import annotations

import dataclasses
import json
import math

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
    from_config,
)
from pyrod.optimizers.base import bias_factor
from pyrod.optimizers.muon import newton_schulz
from pyrod.problems.problem import Block, Problem

STEPS = 60
TOL = 1e-12
MOVE = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _float64_one_thread():
    # torch's NAdam keeps mu_product in the *default* dtype: float64 needed for the exact comparison.
    # One thread: these tiny problems are dominated by thread overhead (and oversubscription on 2 cores).
    dt, nt = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dt)
    torch.set_num_threads(nt)


@pytest.fixture(scope="module")
def prob():
    return pyrod.problem(model="mlp", data="digits", classes=4, n=200,
                         model_kwargs={"width": 80, "depth": 2})


def side_by_side(prob, opt, make_torch, steps=STEPS, state=None):
    """Max |Δw| over the run, the scale, and how far the weights moved."""
    opt = opt.bind(prob)
    w0 = prob.w0
    st = opt.init_state(w0, prob.grad(w0)) if state is None else state
    params = [torch.nn.Parameter(w0[b.slice].view(b.shape).clone()) for b in prob.blocks]
    topt = make_torch(params)
    err, scale = 0.0, 1.0
    for _ in range(steps):
        st, _ = opt.step(st, prob.grad(st.w))
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        g = prob.grad(flat)
        for p, b in zip(params, prob.blocks, strict=False):
            p.grad = g[b.slice].view(b.shape).clone()
        topt.step()
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        err = max(err, float((flat - st.w).abs().max()))
        scale = max(scale, float(st.w.abs().max()))
    moved = float((st.w - w0).abs().max())
    return err, scale, moved


class _Both:
    def __init__(self, *opts):
        self.opts = opts

    def step(self):
        for o in self.opts:
            o.step()


def _torch_optim_or_skip(*names):
    """Skip, naming this torch's version, where ``torch.optim`` lacks one of ``names`` (older torch releases have
    no ``Adafactor`` or ``Muon``): pyrod's optimizer still runs there, but torch has nothing to compare it with."""
    missing = [n for n in names if not hasattr(torch.optim, n)]
    if missing:
        pytest.skip(f"torch {torch.__version__} has no torch.optim.{' or '.join(missing)} to compare with")


def _muon_torch(params, lr, adam_lr, adam_wd, **kw):
    mat = [p for p in params if p.ndim == 2]
    other = [p for p in params if p.ndim != 2]
    return _Both(torch.optim.Muon(mat, lr=lr, **kw), torch.optim.AdamW(other, lr=adam_lr, weight_decay=adam_wd))


B = 0.9
CASES = {
    "GD=SGD": (GD(lr=0.5), lambda ps: torch.optim.SGD(ps, lr=0.5)),
    "HeavyBall(standard)=SGD(momentum)": (
        HeavyBall(lr=0.05, beta=B, parameterization="standard"),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=B)),
    "Nesterov(standard)=SGD(nesterov)": (
        Nesterov(lr=0.05, beta=B, parameterization="standard"),
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=B, nesterov=True)),
    "RMSProp(nu0=zero)=RMSprop": (
        RMSProp(lr=1e-3, beta2=0.99, eps=1e-8, nu0="zero"),
        lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.99, eps=1e-8)),
    "Adam": (Adam(lr=2e-3, beta1=B, beta2=0.99, eps=1e-8),
             lambda ps: torch.optim.Adam(ps, lr=2e-3, betas=(B, 0.99), eps=1e-8)),
    "AMSGrad=Adam(amsgrad)": (
        AMSGrad(lr=2e-3, beta1=B, beta2=0.99),
        lambda ps: torch.optim.Adam(ps, lr=2e-3, betas=(B, 0.99), amsgrad=True)),
    "AdamW": (AdamW(lr=2e-3, beta1=B, beta2=0.99, weight_decay=0.5),
              lambda ps: torch.optim.AdamW(ps, lr=2e-3, betas=(B, 0.99), weight_decay=0.5)),
    "NAdam=NAdam(momentum_decay=1e12)": (
        NAdam(lr=2e-3, beta1=B, beta2=0.99),
        lambda ps: torch.optim.NAdam(ps, lr=2e-3, betas=(B, 0.99), momentum_decay=1e12)),
    "Adagrad": (Adagrad(lr=0.01), lambda ps: torch.optim.Adagrad(ps, lr=0.01)),
    "Adagrad(initial_accumulator_value)": (
        Adagrad(lr=0.01, eps=1e-6, initial_accumulator_value=0.1),
        lambda ps: torch.optim.Adagrad(ps, lr=0.01, eps=1e-6, initial_accumulator_value=0.1)),
    "Adafactor(defaults)": (Adafactor(), lambda ps: torch.optim.Adafactor(ps)),
    "Adafactor(options)": (
        Adafactor(lr=0.05, beta2_decay=-0.5, eps1=1e-10, eps2=1e-2, d=1.5, weight_decay=0.1),
        lambda ps: torch.optim.Adafactor(ps, lr=0.05, beta2_decay=-0.5, eps=(1e-10, 1e-2), d=1.5,
                                         weight_decay=0.1)),
    "Muon+AdamW": (
        Muon(lr=0.02, adam_lr=3e-3, adam_weight_decay=0.01),
        lambda ps: _muon_torch(ps, 0.02, 3e-3, 0.01)),
    "Muon(no nesterov, match_rms_adamw)+Adam": (
        Muon(lr=0.02, momentum=0.9, nesterov=False, weight_decay=0.05, adjust_lr_fn="match_rms_adamw",
             adam_lr=3e-3),
        lambda ps: _muon_torch(ps, 0.02, 3e-3, 0.0, momentum=0.9, nesterov=False, weight_decay=0.05,
                               adjust_lr_fn="match_rms_adamw")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(prob, case):
    opt, make_torch = CASES[case]
    _torch_optim_or_skip(*[n for n in ("Adafactor", "Muon") if case.startswith(n)])
    err, scale, moved = side_by_side(prob, opt, make_torch)
    assert moved > MOVE, f"{case}: the run barely moved ({moved:.2e}); the comparison would be vacuous"
    assert err <= TOL * scale, f"{case}: max |Δw| = {err:.3e} > {TOL:g}·{scale:.3g}"


def test_ema_heavy_ball_vs_sgd_dampening(prob):
    """torch.optim.SGD(momentum=β, dampening=β) sets m_1 = g_0 on its first step (no dampening), which is our
    EMA heavy ball started from m_0 = g_0 (m_1 = β g_0 + (1−β) g_0). With our default m_0 = 0 the runs differ
    (checked, so the m_0 = g_0 start is what makes them agree)."""
    opt = HeavyBall(lr=0.2, beta=B)
    g0 = prob.grad(prob.w0)
    st = opt.init_state(prob.w0, g0)
    st.m = g0.clone()
    make = lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=B, dampening=B)  # noqa: E731
    err, scale, moved = side_by_side(prob, opt, make, state=st)
    assert moved > MOVE and err <= TOL * scale, (err, moved)
    err0, _, _ = side_by_side(prob, opt, make, steps=3)  # m_0 = 0: not torch's run
    assert err0 > 1e-6


# --------------------------------------------------------------------------------------- Muon / Adafactor
def test_newton_schulz_is_torchs():
    _torch_optim_or_skip("Muon")
    from torch.optim._muon import _zeropower_via_newtonschulz

    gen = torch.Generator().manual_seed(0)
    for shape in ((7, 5), (5, 7), (6, 6)):
        G = torch.randn(shape, generator=gen)
        ref = _zeropower_via_newtonschulz(G, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        assert torch.equal(newton_schulz(G), ref)
        # float64 variant: U f(S/‖G‖_F) Vᵀ with f the 5-fold composition of x ↦ ax + bx³ + cx⁵
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        x = S / torch.linalg.matrix_norm(G)
        for _ in range(5):
            x = 3.4445 * x - 4.7750 * x ** 3 + 2.0315 * x ** 5
        assert torch.allclose(newton_schulz(G, dtype=torch.float64), U @ torch.diag(x) @ Vh, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_notes_form_equals_torch_form(nesterov):
    """The textbook form (and torch's Muon docstring) write M ← μM + G and B̃ = G + μM; torch's *code* uses the EMA
    M ← μM + (1−μ)G and B̃ = (1−μ)G + μM, i.e. (1−μ)× the former. Newton–Schulz starts with B̃/‖B̃‖_F, so the two
    are the same optimizer (unless ‖B̃‖_F < eps): checked in float64 NS on a matrix-only problem (tall + wide
    blocks) against a hand loop in the notes' form, to 1e-12·scale."""
    p = pyrod.problem(toy="matrix_factorization", rows=7, cols=4, rank=3, init_scale=0.5)
    lr, mu, wd, a, b, c = 0.02, 0.9, 0.05, 3.4445, -4.7750, 2.0315
    opt = Muon(lr=lr, momentum=mu, weight_decay=wd, nesterov=nesterov, ns_dtype="float64").bind(p)
    st = _run(p, opt, 40)
    w = p.w0.clone()
    M = {blk.name: torch.zeros(blk.shape) for blk in p.blocks}
    for _ in range(40):
        g = p.grad(w)
        new = w.clone()
        for blk in p.blocks:
            G = g[blk.slice].view(blk.shape)
            M[blk.name] = mu * M[blk.name] + G
            Bt = G + mu * M[blk.name] if nesterov else M[blk.name]
            X = Bt.T if Bt.shape[0] > Bt.shape[1] else Bt
            X = X / torch.linalg.matrix_norm(X)
            for _ in range(5):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            O = X.T if Bt.shape[0] > Bt.shape[1] else X
            scale = math.sqrt(max(1, blk.shape[0] / blk.shape[1]))
            new[blk.slice] = ((1 - lr * wd) * w[blk.slice].view(blk.shape) - lr * scale * O).reshape(-1)
        w = new
    assert _close(st.w, w), float((st.w - w).abs().max())
    assert float((w - p.w0).abs().max()) > MOVE


def test_muon_flatten_nd_and_nd_adafactor():
    """A problem with 3-D, 4-D, 1-D and 0-D tensors: Adafactor factors the last two dims (batched over the
    rest) exactly as torch; Muon(flatten_nd=True) = torch Muon on the (shape[0], −1) view."""
    _torch_optim_or_skip("Adafactor", "Muon")
    gen = torch.Generator().manual_seed(1)
    shapes = [(3, 4, 5), (2, 3, 2, 2), (6,), ()]
    blocks, start = [], 0
    for i, s in enumerate(shapes):
        n = math.prod(s)
        blocks.append(Block(f"p{i}", start, start + n, s))
        start += n
    A = torch.randn(start, start, generator=gen)
    H = A @ A.T / start + torch.eye(start)
    c = torch.randn(start, generator=gen)
    p = Problem(loss_fn=lambda w: 0.5 * w @ (H @ w) - c @ w + 0.1 * (w ** 4).sum(),
                w0=torch.randn(start, generator=gen), blocks=tuple(blocks))
    err, scale, moved = side_by_side(p, Adafactor(lr=0.05, weight_decay=0.01),
                                     lambda ps: torch.optim.Adafactor(ps, lr=0.05, weight_decay=0.01), steps=40)
    assert moved > MOVE and err <= TOL * scale, (err, moved)

    opt = Muon(lr=0.02, flatten_nd=True, adam_lr=0.01).bind(p)
    st = opt.init_state(p.w0, p.grad(p.w0))
    params = [torch.nn.Parameter(p.w0[b.slice].view(opt.matrix_shape(b.shape) or b.shape).clone())
              for b in p.blocks]
    tor = _muon_torch(params, 0.02, 0.01, 0.0)
    for _ in range(30):
        st, _ = opt.step(st, p.grad(st.w))
        g = p.grad(torch.cat([q.detach().reshape(-1) for q in params]))
        for q, b in zip(params, p.blocks, strict=False):
            q.grad = g[b.slice].view(q.shape).clone()
        tor.step()
    flat = torch.cat([q.detach().reshape(-1) for q in params])
    assert float((flat - st.w).abs().max()) <= TOL * max(1.0, float(st.w.abs().max()))
    assert float((st.w - p.w0).abs().max()) > MOVE


def test_blocks_contract(prob):
    for opt in (Adafactor(), Muon()):
        with pytest.raises(ValueError, match="bind"):
            opt.init_state(prob.w0, prob.w0)
        bound = opt.bind(prob)
        assert bound.blocks == tuple((b.start, b.stop, tuple(b.shape)) for b in prob.blocks)
        assert not opt.supports_flows
        assert math.isnan(opt.threshold()) == (opt.name == "Muon")  # Adafactor: 2/lr (β1 = 0)
        with pytest.raises(ValueError, match="cover"):
            bound.init_state(prob.w0[:-1], prob.w0[:-1])
    with pytest.raises(ValueError, match="blocks"):
        Muon(blocks=((0, 3, (2, 2)),))
    assert GD(lr=0.1).bind(prob) == GD(lr=0.1)  # no-op for the family
    assert torch.equal(Muon().preconditioner(None, 3.0), torch.ones(1))
    assert not Muon.has_nu  # → Measurer uses H: preconditioned sharpness = raw sharpness
    # Adafactor: state.nu is the V̂ of the step; nu_p = P² with P = max(√V̂, ε1)·c·lr/α (tests below)
    opt = Adafactor().bind(prob)
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    g = prob.grad(st.w)
    new, nu_p = opt.step(st, g)
    assert nu_p.shape == new.nu.shape == prob.w0.shape
    b = prob.blocks[1]  # a bias: unfactored, first step V̂ = g⊙g
    assert torch.equal(new.nu[b.slice], g[b.slice] ** 2)


# --------------------------------------------------------------------------------------- hand-written loops
def _hand(prob, steps, update):
    w = prob.w0.clone()
    s = {}
    for k in range(steps):
        w = update(w, prob.grad(w), k, s)
    return w


def _run(prob, opt, steps):
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    for _ in range(steps):
        st, _ = opt.step(st, prob.grad(st.w))
    return st


def _close(a, b, tol=TOL):
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("norm", ["sum", "mean"])
def test_scalar_variants_equal_hand_loops(prob, norm):
    lr, b1, b2, eps, n = 1e-3, 0.9, 0.99, 1e-8, 40
    d = prob.dim

    def tgt(g):
        s = float(g @ g)
        return s / d if norm == "mean" else s

    def rms(w, g, k, s):  # no bias correction, nu_0 = tgt(g_0) (nu0="auto")
        s["nu"] = b2 * s.get("nu", tgt(g)) + (1 - b2) * tgt(g)
        return w - lr * g / (math.sqrt(s["nu"]) + eps)

    def adam(w, g, k, s, nesterov=False):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["nu"] = b2 * s.get("nu", 0.0) + (1 - b2) * tgt(g)
        c1, c1n, c2 = 1 - b1 ** (k + 1), 1 - b1 ** (k + 2), 1 - b2 ** (k + 1)
        den = math.sqrt(s["nu"] / c2) + eps
        num = b1 * s["m"] / c1n + (1 - b1) * g / c1 if nesterov else s["m"] / c1
        return w - lr * num / den

    moved = []
    for opt, upd in ((ScalarRMSProp(lr=lr, beta2=b2, eps=eps, scalar_norm=norm), rms),
                     (ScalarAdam(lr=lr, beta1=b1, beta2=b2, eps=eps, scalar_norm=norm), adam),
                     (ScalarNAdam(lr=lr, beta1=b1, beta2=b2, eps=eps, scalar_norm=norm),
                      lambda *a: adam(*a, nesterov=True))):
        st = _run(prob, opt, n)
        ref = _hand(prob, n, upd)
        assert st.nu.shape == (1,)
        assert _close(st.w, ref), (opt.name, float((st.w - ref).abs().max()))
        moved.append(float((ref - prob.w0).abs().max()))
    assert min(moved) > MOVE


def test_bias_correction_off(prob):
    """Adam/NAdam/RMSProp with bias_correction=False: nu0="auto" starts at ν_0 = g_0⊙g_0; hand loops.
    RMSProp with bias_correction=True divides ν by 1−β2^{k+1} and starts at ν_0 = 0."""
    lr, b1, b2, eps, n = 1e-3, 0.9, 0.99, 1e-8, 40
    g0 = prob.grad(prob.w0)

    def adam(w, g, k, s, nesterov=False):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["nu"] = b2 * s.get("nu", g0 * g0) + (1 - b2) * g * g
        num = b1 * s["m"] + (1 - b1) * g if nesterov else s["m"]
        return w - lr * num / (s["nu"].sqrt() + eps)

    def rms_bc(w, g, k, s):
        s["nu"] = b2 * s.get("nu", 0.0) + (1 - b2) * g * g
        return w - lr * g / ((s["nu"] / (1 - b2 ** (k + 1))).sqrt() + eps)

    for opt, upd in ((Adam(lr=lr, beta1=b1, beta2=b2, eps=eps, bias_correction=False), adam),
                     (NAdam(lr=lr, beta1=b1, beta2=b2, eps=eps, bias_correction=False),
                      lambda *a: adam(*a, nesterov=True)),
                     (RMSProp(lr=lr, beta2=b2, eps=eps, bias_correction=True), rms_bc)):
        st = _run(prob, opt, n)
        ref = _hand(prob, n, upd)
        assert _close(st.w, ref), (opt.name, float((st.w - ref).abs().max()))
        assert float((ref - prob.w0).abs().max()) > MOVE
    # and bias correction on differs from off (the flag is not ignored)
    on = _run(prob, Adam(lr=lr, beta1=b1, beta2=b2, eps=eps), 5).w
    off = _run(prob, Adam(lr=lr, beta1=b1, beta2=b2, eps=eps, bias_correction=False), 5).w
    assert float((on - off).abs().max()) > 1e-4


@pytest.mark.parametrize("make", [
    lambda nu: RMSProp(lr=1e-3, frozen_nu=nu),
    lambda nu: Adam(lr=1e-3, bias_correction=False, frozen_nu=nu),
    lambda nu: NAdam(lr=1e-3, bias_correction=False, frozen_nu=nu),
    lambda nu: ScalarAdam(lr=1e-3, bias_correction=False, frozen_nu=nu[:1]),
    lambda nu: Padam(lr=1e-3, bias_correction=False, frozen_nu=nu),
    lambda nu: Adagrad(lr=1e-2, frozen_nu=nu),
], ids=["RMSProp", "Adam", "NAdam", "ScalarAdam", "Padam", "Adagrad"])
def test_frozen_nu_holds_nu_and_P(prob, make):
    nu = 1e-4 + prob.grad(prob.w0) ** 2
    opt = make(nu)
    nu = opt.frozen_nu
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    P0 = opt.preconditioner(nu, 0)
    for k in range(20):
        st, nu_p = opt.step(st, prob.grad(st.w))
        assert torch.equal(nu_p, nu) and torch.equal(st.nu, nu)
        assert torch.equal(opt.preconditioner(nu_p, k), P0)
    assert float((st.w - prob.w0).abs().max()) > 1e-4
    # the hand loop with that fixed P (and m_0 = 0, momentum EMA where present)
    b1 = getattr(opt, "beta1", 0.0)
    nesterov = opt.momentum == "ema_nesterov"

    def upd(w, g, k, s):
        if not opt.has_momentum:
            return w - opt.lr * g / P0
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        num = b1 * s["m"] + (1 - b1) * g if nesterov else s["m"]
        return w - opt.lr * num / P0
    assert _close(st.w, _hand(prob, 20, upd))


# --------------------------------------------------------------------------------------- validation
BAD = [
    (GD, {"lr": 0.0}, "lr"), (GD, {"lr": -1.0}, "lr"), (GD, {"lr": math.nan}, "lr"), (GD, {"lr": math.inf}, "lr"),
    (HeavyBall, {"lr": 0.1, "beta": 1.0}, "beta"), (HeavyBall, {"lr": 0.1, "beta": -0.1}, "beta"),
    (Nesterov, {"lr": 0.1, "beta": math.nan}, "beta"),
    (HeavyBall, {"lr": 0.1, "parameterization": "polyak"}, "parameterization"),
    (Adam, {"lr": 0.1, "beta1": 1.5}, "beta1"), (Adam, {"lr": 0.1, "beta2": 1.0}, "beta2"),
    (Adam, {"lr": 0.1, "eps": -1e-8}, "eps"), (RMSProp, {"lr": 0.1, "beta2": -0.5}, "beta2"),
    (RMSProp, {"lr": 0.1, "nu0": "ones"}, "nu0"), (Adam, {"lr": 0.1, "nu_rate": "fast"}, "nu_rate"),
    (ScalarAdam, {"lr": 0.1, "scalar_norm": "max"}, "scalar_norm"),
    (ScalarRMSProp, {"lr": 0.1, "scalar_norm": "l1"}, "scalar_norm"),
    (NAdam, {"lr": 0.1, "beta1": 1.0}, "beta1"), (AdamW, {"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
    (Padam, {"lr": 0.1, "p": 0.0}, "p"), (Padam, {"lr": 0.1, "p": 1.5}, "p"),
    (Adagrad, {"lr": 0.1, "eps": -1.0}, "eps"),
    (Adagrad, {"lr": 0.1, "initial_accumulator_value": -1.0}, "initial_accumulator_value"),
    (Adafactor, {"lr": -0.1}, "lr"), (Adafactor, {"beta2_decay": 0.5}, "beta2_decay"),
    (Adafactor, {"eps1": -1.0}, "eps1"), (Adafactor, {"eps2": math.nan}, "eps2"), (Adafactor, {"d": 0.5}, "d"),
    (Adafactor, {"weight_decay": -0.1}, "weight_decay"),
    (Muon, {"momentum": 1.0}, "momentum"), (Muon, {"weight_decay": -0.1}, "weight_decay"),
    (Muon, {"eps": -1.0}, "eps"), (Muon, {"ns_steps": 100}, "ns_steps"),
    (Muon, {"adjust_lr_fn": "sqrt"}, "adjust_lr_fn"), (Muon, {"ns_dtype": "float16"}, "ns_dtype"),
    (Muon, {"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"),
    (Muon, {"adam_beta1": 1.0}, "adam_beta1"), (Muon, {"adam_beta2": math.nan}, "adam_beta2"),
    (Muon, {"adam_eps": -1.0}, "adam_eps"), (Muon, {"adam_lr": 0.0}, "adam_lr"),
    (Muon, {"adam_weight_decay": -1.0}, "adam_weight_decay"),
]


@pytest.mark.parametrize("cls,kw,name", BAD, ids=[f"{c.name}-{n}-{list(k.values())[-1]}" for c, k, n in BAD])
def test_bad_hyperparameters(cls, kw, name):
    with pytest.raises(ValueError) as exc:
        cls(**kw)
    msg = str(exc.value)
    value = list(kw.values())[-1]
    assert msg.startswith(f"{name}="), msg
    assert repr(value) in msg, msg


# --------------------------------------------------------------------------------------- config round trip
def _all_optimizers(prob):
    nu = torch.tensor([0.25, 0.5])
    return [GD(lr=0.3), HeavyBall(lr=0.1, beta=0.7, parameterization="standard"), Nesterov(lr=0.1, beta=0.5),
            RMSProp(lr=1e-3, beta2=0.9, eps=1e-6, nu0="zero", nu_rate="(1-beta2)/beta2", frozen_nu=nu),
            ScalarRMSProp(lr=1e-3, scalar_norm="mean"), Adam(lr=1e-3, beta1=0.8, bias_correction=False),
            ScalarAdam(lr=1e-3, frozen_nu=nu[:1]), NAdam(lr=2e-3, beta2=0.95), ScalarNAdam(lr=1e-3, eps=0.0),
            AdamW(lr=1e-3, weight_decay=0.3), AMSGrad(lr=1e-3, beta1=0.5), Padam(lr=1e-3, p=0.125),
            Adagrad(lr=0.1, initial_accumulator_value=0.5),
            Adafactor(lr=0.02, eps1=1e-12, d=2.0).bind(prob),
            Muon(lr=0.03, nesterov=False, ns_coefficients=(2.0, -1.5, 0.5), ns_dtype="float64",
                 adjust_lr_fn="match_rms_adamw", adam_lr=1e-3, adam_weight_decay=0.1).bind(prob)]


def test_config_round_trip(prob):
    opts = _all_optimizers(prob)
    assert {o.name for o in opts} == set(pyrod.optimizers.REGISTRY)  # every registered optimizer covered
    for opt in opts:
        cfg = opt.config()
        text = json.dumps(cfg)  # JSON-able
        for c in (cfg, json.loads(text)):
            back = from_config(c)
            assert type(back) is type(opt)
            assert json.dumps(back.config()) == text
            assert back.threshold() == opt.threshold() or math.isnan(opt.threshold())


# --------------------------------------------------------------------------------------- the increment D
FLOW9 = {
    "GD": GD(lr=0.3), "HeavyBall": HeavyBall(lr=0.1, beta=0.8), "Nesterov": Nesterov(lr=0.1, beta=0.8),
    "ScalarRMSProp": ScalarRMSProp(lr=1e-3, beta2=0.9), "RMSProp": RMSProp(lr=1e-3, beta2=0.9),
    "ScalarAdam": ScalarAdam(lr=1e-3, beta1=0.8, beta2=0.9), "Adam": Adam(lr=1e-3, beta1=0.8, beta2=0.9),
    "ScalarNAdam": ScalarNAdam(lr=1e-3, beta1=0.8, beta2=0.9), "NAdam": NAdam(lr=1e-3, beta1=0.8, beta2=0.9),
}


def _hand_increment(opt, w, m, g, nu, k):
    """The increment table of docs/theory/optimizers.md, written out."""
    eta = opt.lr
    b1 = getattr(opt, "beta1", 0.0)
    if opt.has_nu:
        c2 = bias_factor(opt.beta2, k + 1) if opt.bias_correction else 1.0
        P = (nu / c2).sqrt() + opt.eps
    else:
        P = 1.0
    if not opt.has_momentum:
        return -eta * g / P, None
    c1 = bias_factor(b1, k + 1) if getattr(opt, "bias_correction", False) else 1.0
    c1n = bias_factor(b1, k + 2) if getattr(opt, "bias_correction", False) else 1.0
    mp = b1 * m + (1 - b1) * g
    if opt.momentum.endswith("nesterov"):
        dw = -eta * (b1 * mp / c1n + (1 - b1) * g / c1) / P
    else:
        dw = -eta * mp / (c1 * P)
    return dw, (1 - b1) * (g - m)


@pytest.mark.parametrize("name", list(FLOW9))
def test_step_is_z_plus_increment(prob, name):
    """z_{k+1} = z_k + D(z_k; ν_used(k), k) bit for bit along a run, ν_used(k) = nu_update(ν_k, g_k, k) is the
    returned nu_p and ν_{k+1}; and D equals the §3 formulas (to 1e-14 relative)."""
    opt = FLOW9[name]
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    for k in range(25):
        g = prob.grad(st.w)
        nu_used = opt.nu_update(st.nu, g, k) if opt.has_nu else None
        dw, dm = opt.direction(st.w, st.m, g, nu_used, k)
        new, nu_p = opt.step(st, g)
        assert new.k == k + 1
        assert torch.equal(new.w, st.w + dw)
        if opt.has_momentum:
            assert torch.equal(new.m, st.m + dm)
        if opt.has_nu:
            assert torch.equal(nu_p, nu_used) and torch.equal(new.nu, nu_used)
        hw, hm = _hand_increment(opt, st.w, st.m, g, nu_used, k)
        assert float((dw - hw).abs().max()) <= 1e-14 * float(hw.abs().max())
        if opt.has_momentum:
            assert float((dm - hm).abs().max()) <= 1e-14 * float(hm.abs().max())
        st = new
    assert float((st.w - prob.w0).abs().max()) > 1e-4


# --------------------------------------------------------------------------------------- Adafactor (AEoS form)
def _flax_adafactor_loop(prob, lr, beta1, eps1, eps2, min_dim, steps, decay_rate=0.8, clip=1.0):
    """Hand loop of Flax's ``optim.Adafactor`` update (row-factor form, ε1 added to G⊙G, parameter scale,
    update clipping, momentum on the scaled update), written from its formulas, not from pyrod's code."""
    w = prob.w0.clone()
    st = {}
    for k in range(steps):
        g = prob.grad(w)
        new = w.clone()
        mix = float(k + 1) ** (-decay_rate)
        for blk in prob.blocks:
            W, G = w[blk.slice].view(blk.shape), g[blk.slice].view(blk.shape)
            s = st.setdefault(blk.name, {})
            scale = lr * max(float(torch.sqrt(torch.mean(W * W))), eps2)
            gsq = G * G + eps1
            if len(blk.shape) == 2 and min(blk.shape) >= min_dim:
                s["r"] = (1 - mix) * s.get("r", 0.0) + mix * gsq.mean(dim=1)
                s["c"] = (1 - mix) * s.get("c", 0.0) + mix * gsq.mean(dim=0)
                y = G * ((s["r"] / s["r"].mean()) ** -0.5)[:, None] * (s["c"] ** -0.5)[None, :]
            else:
                s["v"] = (1 - mix) * s.get("v", 0.0) + mix * gsq
                y = G * s["v"] ** -0.5
            y = y / max(1.0, float(torch.sqrt(torch.mean(y * y))) / clip)
            s["m"] = beta1 * s.get("m", 0.0) + (1 - beta1) * scale * y
            new[blk.slice] = (W - s["m"]).reshape(-1)
        w = new
    return w


@pytest.mark.parametrize("beta1,min_dim", [(0.9, 0), (0.9, 1000), (0.0, 0)])
def test_adafactor_flax_style_matches_hand_loop(prob, beta1, min_dim):
    """``style="flax"`` is Flax's Adafactor (the AEoS paper's configuration: decay 0.8, momentum 0.9, ε 1e-7),
    factored (min_dim 0) and unfactored (1000), against an independent hand loop."""
    lr = 0.05
    opt = Adafactor(lr=lr, style="flax", beta1=beta1, eps1=1e-7, min_dim_size_to_factor=min_dim).bind(prob)
    st = _run(prob, opt, 25)
    ref = _flax_adafactor_loop(prob, lr, beta1, 1e-7, 1e-3, min_dim, 25)
    assert _close(st.w, ref, 1e-11), float((st.w - ref).abs().max())
    assert float((ref - prob.w0).abs().max()) > MOVE
    # the factoring is live: factored and unfactored runs differ
    if min_dim == 0:
        other = _flax_adafactor_loop(prob, lr, beta1, 1e-7, 1e-3, 1000, 25)
        assert float((other - ref).abs().max()) > 1e-6


@pytest.mark.parametrize("style,beta1", [("torch", 0.0), ("torch", 0.9), ("flax", 0.0), ("flax", 0.9)])
def test_adafactor_measured_P_is_what_the_step_divides_by(prob, style, beta1):
    """``preconditioner(nu_p)`` is the P of the step: the step's scaled update equals lr·G/P, and P equals
    r(V̂)·c·lr/α computed by hand per block (ε1, the clip factor c, the parameter scale and, torch, the
    relative step inside P). The run includes steps where clipping is active."""
    lr, eps1, eps2 = 0.3, 1e-7, 1e-3
    opt = Adafactor(lr=lr, style=style, beta1=beta1, eps1=eps1).bind(prob)
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    clipped = 0
    for _ in range(15):
        g = prob.grad(st.w)
        new, nu_p = opt.step(st, g)
        P = opt.preconditioner(nu_p, st.k)
        u = (st.w - new.w) if beta1 == 0 else (new.m - beta1 * st.m) / (1 - beta1)
        if beta1:
            assert torch.allclose(st.w - new.w, new.m, rtol=1e-9, atol=1e-15)  # (w − m) − w: round-off only
        assert torch.allclose(u, lr * g / P, rtol=1e-8, atol=1e-15)
        rho = min(lr, (st.k + 1) ** -0.5) if style == "torch" else lr
        for blk in prob.blocks:  # P by hand from V̂ (new.nu)
            G, W, V = g[blk.slice], st.w[blk.slice], new.nu[blk.slice]
            r = V.sqrt() if style == "flax" else V.sqrt().clamp(min=eps1)
            c = max(1.0, float((G / r).square().mean().sqrt()))
            clipped += c > 1
            alpha = max(eps2, float(W.square().mean().sqrt())) * rho
            assert torch.allclose(P[blk.slice], r * c * lr / alpha, rtol=1e-12, atol=0)
        st = new
    assert clipped > 0


_PAPER_FAMILY = {   # the AEoS paper's Fig. 5 settings (aeos-optimizers); p: the exponent of ν in P
    "Adam": (dict(beta1=0.9, beta2=0.999, eps=1e-7, bias_correction=True), 0.5, True),
    "AMSGrad": (dict(beta1=0.9, beta2=0.999, eps=1e-7, bias_correction=False, nu0="zero"), 0.5, True),
    "Padam": (dict(beta1=0.9, beta2=0.999, eps=1e-7, bias_correction=False, p=0.25, nu0="zero"), 0.25, True),
    "RMSProp": (dict(beta2=0.995, eps=1e-7, nu0="zero"), 0.5, False),
    "Adagrad": (dict(), 0.5, False),
}


@pytest.mark.parametrize("name", sorted(_PAPER_FAMILY))
def test_measured_P_is_what_the_step_divides_by(prob, name):
    """The P measured for λmax(P⁻¹H) (``preconditioner(nu_p, k)``) is the step's denominator, with ε, bias
    correction, AMSGrad's running maximum and Padam's exponent, against ν, ν_max and m kept by hand here:
    Δw = −η m⁺/P (EMA heavy ball, m⁺ = β1 m + (1−β1) g) or −η g/P."""
    hyper, p, heavy_ball = _PAPER_FAMILY[name]
    lr = 0.01
    opt = pyrod.optimizers.get(name)(lr=lr, **hyper)
    b1, b2 = hyper.get("beta1", 0.0), hyper.get("beta2", 1.0)
    eps = opt.eps
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    nu = torch.zeros_like(prob.w0)
    nu_max = torch.zeros_like(prob.w0)
    m = torch.zeros_like(prob.w0)
    max_active = 0
    for k in range(40):
        g = prob.grad(st.w)
        new, nu_p = opt.step(st, g)
        nu = g * g + nu if name == "Adagrad" else b2 * nu + (1 - b2) * g * g
        nu_max = torch.maximum(nu_max, nu)
        max_active += int((nu_max > nu).any())
        v = nu_max if name == "AMSGrad" else nu
        c1 = 1 - b1 ** (k + 1) if hyper.get("bias_correction") else 1.0
        c2 = 1 - b2 ** (k + 1) if hyper.get("bias_correction") else 1.0
        P = c1 * ((v / c2) ** p + eps)
        assert torch.allclose(opt.preconditioner(nu_p, k).expand_as(P), P, rtol=1e-12, atol=0)
        m = b1 * m + (1 - b1) * g
        assert torch.allclose(st.w - new.w, lr * (m if heavy_ball else g) / P, rtol=1e-9, atol=1e-15)
        st = new
    if name == "AMSGrad":
        assert max_active > 0          # the running maximum differs from ν on some steps of this run


@pytest.mark.parametrize("style", ["torch", "flax"])
def test_adafactor_frozen_nu_is_constant_P(prob, style):
    nu = torch.full_like(prob.w0, 0.04)
    opt = Adafactor(lr=0.01, style=style, frozen_nu=nu, d=math.inf, scale_by_param=False).bind(prob)
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    for _ in range(3):
        st, nu_p = opt.step(st, prob.grad(st.w))
        assert torch.allclose(opt.preconditioner(nu_p, st.k), torch.full_like(nu, 0.2), rtol=1e-14)
    with pytest.raises(ValueError, match="frozen_nu"):
        Adafactor(frozen_nu=-nu)
    with pytest.raises(ValueError, match="style"):
        Adafactor(style="optax")


def test_increment_is_a_deprecated_alias_of_direction(prob):
    """``Optimizer.increment`` (the old name) warns and returns exactly ``direction``."""
    opt = FLOW9["Adam"]
    st = opt.init_state(prob.w0, prob.grad(prob.w0))
    g = prob.grad(st.w)
    nu = opt.nu_update(st.nu, g, 0)
    with pytest.warns(DeprecationWarning, match="Optimizer.direction"):
        old = opt.increment(st.w, st.m, g, nu, 0)
    new = opt.direction(st.w, st.m, g, nu, 0)
    assert all(torch.equal(a, b) for a, b in zip(old, new, strict=True))


def _rate_cases():
    """Every registered optimizer that gives ∂P/∂t in closed form, with and without bias correction (where it has
    the option), a non-default ε (the c1·ε term) and Padam's exponent."""
    from pyrod.optimizers.base import Optimizer as _Base
    out = []
    for name, cls in pyrod.optimizers.REGISTRY.items():
        if cls.preconditioner_rate is _Base.preconditioner_rate or not cls.has_nu:
            continue
        fields = {f.name for f in dataclasses.fields(cls)}
        for bc in ((False, True) if "bias_correction" in fields else (None,)):
            kw = {"lr": 1e-3}
            if bc is not None:
                kw["bias_correction"] = bc
            if "eps" in fields:
                kw["eps"] = 0.03
            if "beta1" in fields:
                kw["beta1"] = 0.8
            if "beta2" in fields:
                kw["beta2"] = 0.9
            out.append((name, kw))
    return out


@pytest.mark.parametrize("name,kw", _rate_cases(), ids=lambda v: v if isinstance(v, str) else str(v.get("bias_correction")))
def test_preconditioner_rate_closed_form_is_the_time_derivative(name, kw):
    """``preconditioner_rate`` (``∂P/∂t`` at fixed ν, closed form) against a central difference of
    ``preconditioner`` over ±1e-4 steps in float64 (truncation ~1e-8 relative here), at early steps where the
    bias-correction factors move fastest and later; ν with exact zeros (where only the c1·ε part of P moves)."""
    opt = pyrod.optimizers.get(name)(**kw)
    gen = torch.Generator().manual_seed(3)
    n = 1 if opt.scalar_nu else 50
    nu = torch.rand(n, generator=gen, dtype=torch.float64) ** 3
    if n > 1:
        nu[::7] = 0.0
    moving = False
    for t in (0.0, 0.3, 2.5, 11.0, 40.0):
        P = opt.preconditioner(nu, t)
        rate = opt.preconditioner_rate(nu, t, P)
        h = 1e-4
        fd = (opt.preconditioner(nu, t + h) - opt.preconditioner(nu, t - h)) / (2 * h)
        assert rate.shape == P.shape
        assert torch.allclose(rate, fd, rtol=1e-6, atol=1e-10 * float(P.abs().max())), (t, rate, fd)
        assert torch.equal(opt.preconditioner_rate(nu, t), rate)          # P computed inside when not given
        moving |= bool(fd.abs().max() > 1e-3 * P.abs().max())
    # bias correction makes P move at early steps; without it (and without a t-dependent factor) it is constant
    assert moving == bool(kw.get("bias_correction", False) and (opt.second_moment == "ema"
                                                                 or opt.momentum == "ema_heavy_ball"))


def test_counter_clock_scales_the_preconditioner_rate():
    """The central flow's mapped step counter (``counter_rate``): ∂P/∂t of the mapped optimizer is ``rate`` times
    the optimizer's own at the mapped time, equal to a central difference of the mapped ``preconditioner``."""
    from pyrod.flows.central import _CounterClock
    opt = pyrod.optimizers.Adam(lr=1e-3, beta1=0.8, beta2=0.9, eps=0.01, bias_correction=True)
    clocked = _CounterClock(opt, 1 / 0.9)
    clocked.t0 = 2.0
    nu = torch.linspace(0.0, 1.0, 20, dtype=torch.float64)
    t, h = 3.7, 1e-4
    fd = (clocked.preconditioner(nu, t + h) - clocked.preconditioner(nu, t - h)) / (2 * h)
    rate = clocked.preconditioner_rate(nu, t)
    assert torch.allclose(rate, fd, rtol=1e-6, atol=1e-12)
    assert torch.allclose(rate, opt.preconditioner_rate(nu, clocked.clock(t)) / 0.9, rtol=1e-12, atol=0)


def test_preconditioner_rate_in_float32_is_accurate_where_a_difference_quotient_is_not():
    """In float32 a central difference of P over ±1e-4 steps loses ~eps32·P/(2h) ≈ 3e-4·P to round-off, 0.5–1 %
    of ∂P/∂t at RMSProp's bias-correction drift (the central flow used it for dP̃/dt before the closed form); the
    closed form in float32 agrees with float64 to ~1e-7 relative."""
    from pyrod.optimizers.base import Optimizer as _Base
    opt = pyrod.optimizers.RMSProp(lr=5e-5, beta2=0.99, eps=1e-7, bias_correction=True)
    nu64 = torch.rand(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-6 + 1e-9
    t = 30.0
    exact = opt.preconditioner_rate(nu64, t)
    nu32 = nu64.to(torch.float32)
    closed = opt.preconditioner_rate(nu32, t).double()
    quotient = _Base.preconditioner_rate(opt, nu32, t).double()
    rel = lambda a: float(((a - exact).abs() / exact.abs()).median())  # noqa: E731
    assert rel(closed) < 1e-6
    assert rel(quotient) > 1e-3        # why the closed form: the difference quotient's round-off in float32


def test_a_subclass_with_its_own_preconditioner_gets_the_difference_quotient_of_its_own_P():
    """The closed form is the family's ``P``: a subclass that redefines ``preconditioner`` (as docs/architecture.md
    invites) must not inherit it; its ``preconditioner_rate`` is the central difference of its own ``P``."""
    from dataclasses import dataclass

    @dataclass(frozen=True, repr=False)
    class Drifting(RMSProp):
        def preconditioner(self, nu, t):
            return super().preconditioner(nu, t) * (1.0 + 1.0 / (t + 1.0))

    opt = Drifting(lr=1e-3, beta2=0.9, bias_correction=True)
    nu = torch.linspace(0.0, 1.0, 30, dtype=torch.float64)
    t, h = 3.0, 1e-4
    fd = (opt.preconditioner(nu, t + h) - opt.preconditioner(nu, t - h)) / (2 * h)
    assert torch.allclose(opt.preconditioner_rate(nu, t), fd, rtol=1e-6, atol=1e-12)
    # what inheriting the family's closed form would give (the plain RMSProp's ∂P/∂t) is far from it
    plain = RMSProp(lr=1e-3, beta2=0.9, bias_correction=True)
    assert not torch.allclose(plain.preconditioner_rate(nu, t), fd, rtol=1e-2, atol=0)
