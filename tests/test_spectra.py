"""Tests for pyrod.spectra: block LOBPCG for top-k eigenpairs of H and P^{-1/2} H P^{-1/2} from HVPs.

Tolerances (float64, solver tol = 1e-8 relative residual unless stated)
----------------------------------------------------------------------
* eigenvalues vs dense ``torch.linalg.eigh``: relative error ≤ 1e-6 required. For a relative residual r the
  eigenvalue error is ≤ r·|λ| and, for a separated eigenvalue, ≈ r²|λ|²/gap, so ~1e-14 is what is measured.
* eigenvectors: true residual ``‖Au − λu‖/|λ| ≤ 2·tol`` (tol plus round-off), and the largest principal angle
  between the computed span and the exact top-k span ≤ 1e-6 (Davis–Kahan: sin θ ≤ ‖R‖/gap ≈ 1e-8·λ/gap).
* orthonormality ``‖VᵀV − I‖ ≤ 1e-10``; generalized eigenvectors ``‖UᵀPU − I‖ ≤ 1e-10``.
* float32: the tolerance is raised to 5e-5 (round-off floor); eigenvalues vs the float64 reference ≤ 1e-5.

The module runs torch single-threaded (restored afterwards): the work is small dense algebra on tall-skinny
blocks, where a second OpenMP thread gains nothing and, on a shared 2-core machine, busy-waiting made the module
several times slower (≈20 s single-threaded vs ≈110 s with 2 threads under load).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import pyrod
from pyrod.spectra import EigenConvergenceWarning, EigReport, EigTracker, hessian_operator, top_eigs

F64 = torch.float64
CPU = torch.device("cpu")
MLP = dict(model="mlp", data="digits", classes=4, n=200, model_kwargs={"width": 16, "depth": 2})


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- helpers
def _sym_matrix(top, n=300, seed=0, rest=(-3.0, 2.0), extra=()):
    """Q diag(e) Qᵀ with the given top eigenvalues, the rest uniform in ``rest`` plus ``extra`` ones."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    m = n - len(top) - len(extra)
    lo, hi = rest
    e = torch.cat([torch.tensor(top, dtype=F64), torch.tensor(extra, dtype=F64),
                   lo + (hi - lo) * torch.rand(m, generator=g, dtype=F64)])
    A = (Q * e) @ Q.T
    return 0.5 * (A + A.T)


def _rel_err(ev, ref):
    return float(((ev - ref).abs() / ref.abs()).max())


def _sin_angle(V, Q):
    """sin of the largest principal angle between span(V) and span(Q) (both orthonormal)."""
    return float(torch.linalg.matrix_norm(V - Q @ (Q.T @ V), ord=2))


def _check_pairs(A, ev, V, k, tol):
    """Eigenvalues vs eigh, residuals, orthonormality, subspace angle (when λ_k > λ_{k+1} clearly)."""
    e, Q = torch.linalg.eigh(A)
    e, Q = e.flip(0), Q.flip(1)
    assert ev.shape == (k,) and V.shape == (A.shape[0], k)
    assert torch.all(ev[:-1] >= ev[1:]), "eigenvalues must be descending"
    err = _rel_err(ev, e[:k])
    assert err <= 1e-6, err
    res = torch.linalg.vector_norm(A @ V - V * ev, dim=0) / ev.abs()
    assert float(res.max()) <= 2 * tol, res
    assert float((V.T @ V - torch.eye(k, dtype=F64)).abs().max()) <= 1e-10
    gap = float(e[k - 1] - e[k]) if k < len(e) else math.inf
    ang = _sin_angle(V, Q[:, :k]) if gap > 1e-3 else math.nan
    if gap > 1e-3:
        assert ang <= 1e-6, (ang, gap)
    return err, float(res.max()), ang


@pytest.fixture(scope="module")
def mlp():
    prob = pyrod.problem(**MLP)
    w = prob.w0
    H = prob.hessian(w)
    return prob, w, H


# ----------------------------------------------------------------------------- (a) random symmetric matrices
SPECTRA = {
    # well separated top, negative eigenvalues below
    "separated": dict(top=[10.0, 8.0, 6.0, 5.0, 4.5, 4.0, 3.5]),
    # a tight cluster at the top (gaps 1e-4) followed by a gap
    "clustered": dict(top=[10.0, 10.0 - 1e-4, 10.0 - 2e-4, 10.0 - 3e-4, 9.0, 7.0, 6.9999]),
    # an exactly double top eigenvalue
    "degenerate": dict(top=[5.0, 5.0, 4.0, 3.0, 2.9]),
    # largest |λ| is negative: the solver must return the largest *algebraic* ones
    "negative_dominant": dict(top=[3.0, 2.5, 2.4, 2.3, 2.2], extra=[-40.0, -39.0, -25.0], rest=(-10.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(SPECTRA))
@pytest.mark.parametrize("k", [1, 4, 6])
def test_random_symmetric_matches_eigh(name, k):
    A = _sym_matrix(**SPECTRA[name])
    n = A.shape[0]
    calls = []

    def mv(X):
        calls.append(X.shape[1])
        return A @ X

    ev, V, rep = top_eigs(mv, n, k, dtype=F64, device=CPU, tol=1e-8)
    assert rep.converged and rep.method == "lobpcg"
    assert rep.n_hvp == sum(calls) and max(calls) <= rep.block   # batched blocks, counted exactly
    err, res, ang = _check_pairs(A, ev, V, k, rep.tol)
    print(f"{name} k={k}: rel err {err:.1e}, residual {res:.1e}, sin angle {ang:.1e}, "
          f"{rep.iterations} iterations, {rep.n_hvp} matvecs (block {rep.block})")


def test_cluster_split_by_k_and_block_option():
    """k splits a tight cluster: eigenvalues are still right (eigenvectors are not unique there)."""
    A = _sym_matrix(**SPECTRA["clustered"])
    for block in (None, 2, 8):
        ev, V, rep = top_eigs(lambda X: A @ X, A.shape[0], 2, dtype=F64, device=CPU, block=block)
        ref = torch.linalg.eigvalsh(A).flip(0)[:2]
        assert rep.converged and _rel_err(ev, ref) <= 1e-6
        assert rep.block == (block or 4)
    with pytest.raises(ValueError, match="block"):
        top_eigs(lambda X: A @ X, A.shape[0], 3, dtype=F64, device=CPU, block=2)


# ----------------------------------------------------------------------------- (b) a real MLP Hessian
@pytest.mark.parametrize("k", [1, 4, 8])
def test_mlp_hessian_matches_dense(mlp, k):
    prob, w, H = mlp
    op = hessian_operator(prob, w)
    n0 = prob.n_hvp
    ev, V, rep = top_eigs(op, prob.dim, k, dtype=prob.dtype, device=prob.device)
    assert rep.converged
    assert prob.n_hvp - n0 == rep.n_hvp                      # the report counts the problem's HVPs
    err, res, ang = _check_pairs(H, ev, V, k, rep.tol)
    print(f"MLP d={prob.dim} k={k}: λ={ev.numpy().round(4)}, rel err {err:.1e}, residual {res:.1e}, "
          f"sin angle {ang:.1e}, {rep.iterations} iterations, {rep.n_hvp} HVPs")


def test_hessian_operator_forms(mlp):
    prob, w, H = mlp
    g = torch.Generator().manual_seed(3)
    V = torch.randn(prob.dim, 5, generator=g, dtype=F64)
    full = hessian_operator(prob, w)(V)
    assert torch.allclose(full, H @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(hessian_operator(prob, w, chunk=2)(V), full, rtol=1e-12, atol=1e-14)
    assert torch.allclose(hessian_operator(prob, w)(V[:, 0]), full[:, 0], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="positive"):
        hessian_operator(prob, w, -torch.ones(prob.dim, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        hessian_operator(prob, w, torch.ones(3, dtype=F64))


# ----------------------------------------------------------------------------- (c) preconditioned forms
@pytest.mark.parametrize("kind", ["vector", "scalar", "scalar_0d_float32"])
def test_preconditioned_matches_dense(mlp, kind):
    prob, w, H = mlp
    d, k = prob.dim, 4
    g = torch.Generator().manual_seed(7)
    if kind == "vector":
        P = torch.exp(torch.randn(d, generator=g, dtype=F64))           # spread over ~e^±3
        Pv = P
    elif kind == "scalar":
        P = torch.tensor([2.5], dtype=F64)
        Pv = P.expand(d)
    else:                                                                # as optimizers may hand it over
        P = torch.tensor(0.3, dtype=torch.float32)
        Pv = torch.full((d,), 0.3, dtype=torch.float32).to(F64)
    s = Pv.rsqrt()
    S = s[:, None] * H * s[None, :]
    tr = EigTracker(k)
    ev, V, rep = tr(prob, w, P)
    assert rep.converged
    err, res, ang = _check_pairs(S, ev, V, k, rep.tol)
    ref = torch.linalg.eigvalsh(S).flip(0)[:k]
    # eigenvalues of the non-symmetric P^{-1} H are the same
    lam = torch.linalg.eigvals(H / Pv[:, None])
    assert float(lam.imag.abs().max()) <= 1e-8 * float(lam.real.abs().max())
    top = torch.sort(lam.real, descending=True).values[:k]
    err_gen = _rel_err(ev, top)
    assert err_gen <= 1e-6
    # right eigenvectors of P^{-1} H, P-orthonormal
    U = tr.generalized(V, P)
    assert float((U.T @ (Pv[:, None] * U) - torch.eye(k, dtype=F64)).abs().max()) <= 1e-10
    gres = torch.linalg.vector_norm(H @ U / Pv[:, None] - U * ev, dim=0) / torch.linalg.vector_norm(U, dim=0)
    assert float((gres / ev.abs()).max()) <= 1e-6
    print(f"P {kind}: λ(S)={ev.numpy().round(4)}, rel err vs eigvalsh(S) {_rel_err(ev, ref):.1e}, "
          f"vs eigvals(P⁻¹H) {err_gen:.1e}, residual {res:.1e}, {rep.iterations} iterations")


def test_generalized_without_P_is_identity(mlp):
    V = torch.randn(mlp[0].dim, 2, dtype=F64)
    assert EigTracker.generalized(V, None) is V


# ----------------------------------------------------------------------------- warm starts and the tracker
def test_warm_start_cuts_iterations(mlp):
    prob, w, _ = mlp
    g = torch.Generator().manual_seed(11)
    w2 = w + 1e-3 * float(w.norm()) / math.sqrt(prob.dim) * torch.randn(prob.dim, generator=g, dtype=F64)
    H2 = prob.hessian(w2)
    lines = []
    for k in (1, 4):
        tr = EigTracker(k)
        _, V1, r1 = tr(prob, w)                       # cold at w
        ev_w, V_w, r_w = tr(prob, w2)                 # warm at w2
        ev_c, V_c, r_c = top_eigs(hessian_operator(prob, w2), prob.dim, k, dtype=F64, device=CPU)   # cold at w2
        assert r_w.converged and r_c.converged and r_w.warm and not r_c.warm
        lines.append(f"k={k}: cold {r_c.iterations} it / {r_c.n_hvp} HVPs, warm {r_w.iterations} it / "
                     f"{r_w.n_hvp} HVPs")
        assert r_w.iterations < r_c.iterations, lines[-1]
        assert r_w.n_hvp < r_c.n_hvp, lines[-1]
        _check_pairs(H2, ev_w, V_w, k, r_w.tol)
        assert bool(((V1 * V_w).sum(0) > 0).all()), "signs are aligned with the previous call"
        assert tr.n_hvp == r1.n_hvp + r_w.n_hvp and tr.last_report is r_w
        # the same point again: the warm block is already converged, no iteration needed
        _, _, r_same = tr(prob, w2)
        assert r_same.iterations == 0 and r_same.converged
    print("warm vs cold on w + 1e-3 perturbation: " + "; ".join(lines))


def test_init_any_width_and_bad_columns():
    A = _sym_matrix(**SPECTRA["separated"])
    n = A.shape[0]
    ref = torch.linalg.eigvalsh(A).flip(0)[:3]
    e, Q = torch.linalg.eigh(A)
    Q = Q.flip(1)
    for init in (Q[:, :1], Q[:, :20], Q[:, 0], torch.zeros(n, 3, dtype=F64),
                 torch.cat([Q[:, :2], Q[:, :2]], dim=1), torch.full((n, 2), math.nan, dtype=F64),
                 Q[:, :5].float()):
        ev, V, rep = top_eigs(lambda X: A @ X, n, 3, dtype=F64, device=CPU, init=init)
        assert rep.converged and _rel_err(ev, ref) <= 1e-6
    _, _, rep = top_eigs(lambda X: A @ X, n, 3, dtype=F64, device=CPU, init=Q[:, :10])
    assert rep.iterations <= 1     # an exact warm start converges at once
    with pytest.raises(ValueError, match="init"):
        top_eigs(lambda X: A @ X, n, 3, dtype=F64, device=CPU, init=torch.zeros(n + 1, 2, dtype=F64))


def test_tracker_k_change_and_reset(mlp):
    prob, w, H = mlp
    tr = EigTracker(2)
    tr(prob, w)
    tr.k = 5                                         # grow: warm block topped up
    ev, V, rep = tr(prob, w)
    assert rep.converged and ev.shape == (5,)
    _check_pairs(H, ev, V, 5, rep.tol)
    tr.k = 1                                         # shrink
    ev, V, rep = tr(prob, w)
    assert rep.converged and ev.shape == (1,) and rep.iterations == 0
    tr.reset()
    assert tr.last_report is None and tr.n_hvp == 0


# ----------------------------------------------------------------------------- reports and failures
def test_report_fields(mlp):
    prob, w, _ = mlp
    ev, V, rep = top_eigs(hessian_operator(prob, w), prob.dim, 3, dtype=F64, device=CPU, tol=1e-9)
    assert isinstance(rep, EigReport)
    assert isinstance(rep.iterations, int) and rep.iterations > 0
    assert isinstance(rep.n_hvp, int) and rep.n_hvp >= rep.block
    assert isinstance(rep.residuals, np.ndarray) and rep.residuals.shape == (3,)
    assert np.all(rep.residuals <= rep.tol) and rep.max_residual == float(rep.residuals.max())
    assert rep.converged is True and rep.tol == 1e-9 and rep.method == "lobpcg" and rep.block == 5
    # cost model: b HVPs to start, at most b per iteration, k for the final check
    assert rep.n_hvp <= rep.block * (rep.iterations + 1) + 3
    # a tolerance below float64 round-off is raised, and said so
    _, _, rep2 = top_eigs(hessian_operator(prob, w), prob.dim, 1, dtype=F64, device=CPU, tol=1e-20, max_iter=300)
    assert rep2.tol == 1e-13


def test_non_convergence_is_reported_and_warned(mlp):
    prob, w, _ = mlp
    ev, V, rep = top_eigs(hessian_operator(prob, w), prob.dim, 4, dtype=F64, device=CPU, tol=1e-12, max_iter=2)
    assert rep.converged is False and rep.iterations == 2
    assert rep.residuals.shape == (4,) and np.all(np.isfinite(rep.residuals)) and rep.max_residual > 1e-12
    assert torch.isfinite(ev).all()
    # the residuals are true residuals (fresh HVPs), not the recurrence's
    H = mlp[2]
    true = (torch.linalg.vector_norm(H @ V - V * ev, dim=0) / ev.abs()).numpy()
    np.testing.assert_allclose(rep.residuals, true, rtol=1e-6)
    with pytest.warns(EigenConvergenceWarning, match="did not converge"):
        _, _, r = EigTracker(4, tol=1e-12, max_iter=2)(prob, w)
    assert not r.converged
    assert issubclass(EigenConvergenceWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, r = EigTracker(4, tol=1e-12, max_iter=2, warn=False)(prob, w)
    assert not r.converged


def test_nonfinite_operator_is_not_silent():
    n = 60
    ev, V, rep = top_eigs(lambda X: X * math.nan, n, 2, dtype=F64, device=CPU)
    assert not rep.converged and torch.isnan(ev).all() and np.isnan(rep.residuals).all()


def test_invalid_k():
    A = torch.eye(10, dtype=F64)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k"):
            top_eigs(lambda X: A @ X, 10, k, dtype=F64, device=CPU)
        with pytest.raises(ValueError, match="k"):
            EigTracker(k)
    with pytest.raises(ValueError, match="matvec returned"):
        top_eigs(lambda X: X[:5], 10, 1, dtype=F64, device=CPU)
    with pytest.raises(ValueError, match="k=11"):
        top_eigs(lambda X: A @ X, 10, 11, dtype=F64, device=CPU)


# ----------------------------------------------------------------------------- small dimensions: dense path
@pytest.mark.parametrize("n,k", [(12, 4), (30, 10), (9, 9), (2, 1)])
def test_small_dim_falls_back_to_dense(n, k):
    A = _sym_matrix(top=[3.0, 2.0], n=n, seed=n) if n > 2 else torch.tensor([[1.0, 2.0], [2.0, -1.0]], dtype=F64)
    ev, V, rep = top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU)
    assert rep.method == "dense" and rep.converged and rep.n_hvp == n and rep.iterations == 0
    ref = torch.linalg.eigvalsh(A).flip(0)[:k]
    assert float((ev - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    assert float((V.T @ V - torch.eye(k, dtype=F64)).abs().max()) <= 1e-12


def test_forced_dense_method(mlp):
    prob, w, H = mlp
    ev, V, rep = EigTracker(3, method="dense")(prob, w)
    assert rep.method == "dense" and rep.converged
    _check_pairs(H, ev, V, 3, 1e-10)
    with pytest.raises(ValueError, match="method"):
        EigTracker(3, method="arnoldi")


# ----------------------------------------------------------------------------- float32
def test_float32_problem(mlp):
    H64 = mlp[2]
    prob = pyrod.problem(dtype="float32", **MLP)
    ev, V, rep = EigTracker(2)(prob, prob.w0)          # default tol 1e-8 is raised to the float32 floor
    assert rep.converged and rep.tol == 5e-5
    assert ev.dtype == torch.float32 and V.dtype == torch.float32
    ref = torch.linalg.eigvalsh(H64).flip(0)[:2]
    err = _rel_err(ev.double(), ref)
    assert err <= 1e-5
    print(f"float32: rel err vs float64 eigh {err:.1e}, residuals {rep.residuals}, {rep.iterations} iterations")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["well", "ill"])
def test_orthonormalize_against_is_orthonormal_with_or_without_second_round(dtype, case):
    """Both paths of ``_orthonormalize_against`` (one round when the first SVQB is well conditioned, two when not)
    give columns orthonormal and orthogonal to the bases to within 1e3·eps."""
    from pyrod.spectra import _orthonormalize_against, _svqb

    g = torch.Generator().manual_seed(3)
    d = 2000
    B1 = _svqb(torch.randn(d, 4, generator=g, dtype=torch.float64).to(dtype), 1e-12)
    B2 = _orthonormalize_against(torch.randn(d, 3, generator=g, dtype=torch.float64).to(dtype), [B1], dtype)
    V = torch.randn(d, 5, generator=g, dtype=torch.float64)
    if case == "ill":   # nearly dependent columns, mostly inside span(B1): the second round must run
        V[:, 1] = V[:, 0] + 1e-5 * V[:, 1]
        V = V + 1e3 * B1.double() @ torch.randn(4, 5, generator=g, dtype=torch.float64)
    V = V.to(dtype)
    Q = _orthonormalize_against(V, [B1, B2], dtype)
    eps = torch.finfo(dtype).eps
    assert Q.shape[1] >= 4
    assert float((Q.T @ Q - torch.eye(Q.shape[1], dtype=dtype)).abs().max()) < 1e3 * eps
    assert float(torch.cat([B1, B2], 1).T.matmul(Q).abs().max()) < 1e3 * eps


def test_lobpcg_at_the_float32_round_off_floor_of_a_real_model():
    """A float32 HVP near its round-off floor: the benchmark problem of benchmarks/vs_reference.py (CIFAR-shaped
    power-law images, MLP width 32, d = 99k) at its initial weights, cold start, tol 1e-9 (raised to float32's
    5e-5). The true residuals sit near that floor (measured ~4.6e-5 with the host-side small algebra of one transfer
    per iteration; ~5e-5 before, when the solve stalled): either way the solve stops early (before the stop rule it
    ran all 200 iterations, 712 HVPs), reports the truth — converged with fresh residuals ≤ its tolerance, or stalled
    and not converged — and its eigenvalues agree with a float64 solve to 1e-4."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import vs_reference as vr

    X, y = vr.make_data(200)
    out, ops = {}, {}
    for dt in ("float32", "float64"):
        prob = pyrod.Problem.from_module(vr.make_mlp(32), X, y, "mse", dtype=dt, device="cpu")
        ops[dt] = hessian_operator(prob, prob.w0)
        out[dt] = top_eigs(ops[dt], prob.dim, 2, dtype=prob.dtype, device="cpu", tol=1e-9, max_iter=200)
    ev, V, rep = out["float32"]
    assert rep.iterations < 50 and rep.n_hvp < 200, rep
    assert rep.tol == pytest.approx(5e-5)
    if rep.converged:
        assert rep.checks >= 1 and not rep.stalled and rep.max_residual <= rep.tol, rep
    else:
        assert rep.stalled and rep.max_residual > rep.tol, rep
    # the reported residuals are the true ones: recomputed here from fresh float32 products (round-off: 20%)
    R = ops["float32"](V) - V * ev
    anorm = max(abs(float(out["float64"][0][0])), 1e-30)
    fresh = (R.double().norm(dim=0) / torch.clamp(ev.double().abs(), min=1e-3 * anorm)).numpy()
    np.testing.assert_allclose(fresh, rep.residuals, rtol=0.2)
    np.testing.assert_allclose(ev.double().numpy(), out["float64"][0].numpy(), rtol=1e-4)
    assert not out["float64"][2].stalled and out["float64"][2].converged


def _rounded_operator(d: int, q: float):
    """A diagonal operator (eigenvalues 10·logspace(0, −3)) whose products are rounded to ``q`` × their largest entry:
    a deterministic round-off floor of relative size ~``q``, like float32 HVPs of a large model but placed where we
    want it."""
    lam = torch.logspace(0, -3, d, dtype=torch.float64) * 10

    def mv(X):
        Y = lam[:, None] * X.double()
        s = Y.abs().amax(0, keepdim=True) * q
        return (torch.round(Y / s) * s).to(X.dtype)
    return mv


def test_lobpcg_stops_at_a_round_off_floor_and_the_tracker_learns_it(monkeypatch):
    """An operator whose round-off floor (~6e-5, from rounding its products at 1e-5) lies just above float32's 5e-5
    tolerance: the carried recurrence keeps claiming convergence and the fresh ``A X`` keeps denying it. LOBPCG
    stops after a few such claims (well before max_iter = 200), reports ``converged=False``, ``stalled=True`` and the
    true residuals (above its tolerance), and the top eigenvalues are right to 1e-5 (exact: 10 and 10·10^(−3/2999)).
    An :class:`EigTracker` learns the floor (1.5× the stalled residual, saved in its state): its next call at the
    same point converges at that tolerance with far fewer HVPs instead of stalling again."""
    d = 3000
    mv = _rounded_operator(d, 1e-5)
    ev, V, rep = top_eigs(mv, d, 2, dtype=torch.float32, device="cpu", tol=1e-9, max_iter=200)
    assert rep.stalled and not rep.converged and rep.iterations < 100, rep
    assert rep.max_residual > rep.tol == pytest.approx(5e-5)
    exact = np.array([10.0, 10.0 * 10 ** (-3 / (d - 1))])
    np.testing.assert_allclose(ev.double().numpy(), exact, rtol=1e-5)

    import pyrod.spectra as spectra
    monkeypatch.setattr(spectra, "hessian_operator", lambda problem, w, P=None, **kw: mv)

    class Stand:                                 # what EigTracker reads from a problem
        dim, dtype, device = d, torch.float32, torch.device("cpu")
    w = torch.zeros(d)
    tr = EigTracker(2, tol=1e-9, warn=False)
    _, _, r1 = tr(Stand(), w)
    assert r1.stalled and tr.floor == pytest.approx(1.5 * r1.max_residual)
    ev2, _, r2 = tr(Stand(), w)
    assert r2.converged and not r2.stalled and r2.tol == pytest.approx(tr.floor) and r2.n_hvp < r1.n_hvp / 4
    np.testing.assert_allclose(ev2.double().numpy(), exact, rtol=1e-5)
    tr2 = EigTracker(2, tol=1e-9, warn=False)
    tr2.load_state_dict(tr.state_dict())
    assert tr2.floor == tr.floor


# ----------------------------------------------------------------------------- host transfers (GPU synchronisation)
class _NoImplicitSync:
    """On the CPU, what ``torch.cuda.set_sync_debug_mode("error")`` checks on a GPU: any operation that would
    synchronise a GPU (``.cpu()``, ``.item()``, ``.tolist()``, ``.numpy()``, ``bool/float/int`` of a tensor,
    boolean-mask indexing, ``torch.linalg`` factorisations with error checks) called from ``pyrod.spectra`` outside
    its declared transfer ``_to_host`` raises. ``transfers`` counts the ``_to_host`` calls; ``events`` records them
    ("H") and the operator applications ("A", with the width) in order."""

    TENSOR = ("cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
    LINALG = ("eigh", "eigvalsh", "svd", "cholesky", "cholesky_ex", "qr", "solve", "inv", "solve_triangular")

    def __init__(self, monkeypatch):
        import pyrod.spectra as sp

        self.mp, self.sp, self.inside, self.transfers, self.events = monkeypatch, sp, False, 0, []
        orig = sp._to_host

        def to_host(x):
            self.transfers += 1
            self.events.append("H")
            self.inside = True
            try:
                return orig(x)
            finally:
                self.inside = False
        monkeypatch.setattr(sp, "_to_host", to_host)
        for name in self.TENSOR:
            self._guard(torch.Tensor, name)
        self._guard(torch.Tensor, "__getitem__", lambda _t, idx: any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (idx if isinstance(idx, tuple) else (idx,))))
        for name in self.LINALG:
            self._guard(torch.linalg, name)

    def _guard(self, owner, name, test=None):
        import sys

        fn = getattr(owner, name)

        def wrapped(*a, **k):
            if (not self.inside and sys._getframe(1).f_globals.get("__name__") == "pyrod.spectra"
                    and (test is None or test(*a, **k))):
                raise AssertionError(f"{name} called in pyrod.spectra outside _to_host (a GPU would synchronise)")
            return fn(*a, **k)
        self.mp.setattr(owner, name, wrapped)

    def matvec(self, A):
        def mv(X):
            self.events.append(("A", X.shape[1]))
            return A @ X
        return mv


def test_sync_guard_detects_implicit_syncs(monkeypatch):
    """The guard used below can fail: code in pyrod.spectra that converts a tensor to a bool, indexes with a mask
    or calls torch.linalg.eigh outside _to_host raises; through _to_host it does not."""
    import pyrod.spectra as sp

    guard = _NoImplicitSync(monkeypatch)
    ns = {}
    exec("def probe_bool(t): return bool(t.all())\n"
         "def probe_mask(t): return t[:, t[0] > 0]\n"
         "def probe_eigh(t): return torch.linalg.eigh(t)\n"
         "def probe_host(t): return _to_host(t)\n", sp.__dict__, ns)
    t = torch.eye(3, dtype=F64)
    for name in ("probe_bool", "probe_mask", "probe_eigh"):
        with pytest.raises(AssertionError, match="outside _to_host"):
            ns[name](t)
    assert np.array_equal(ns["probe_host"](t), np.eye(3)) and guard.transfers == 1


@pytest.mark.parametrize("case", ["cold", "warm", "init_AX", "max_iter", "float32", "dense"])
def test_one_host_transfer_per_iteration(monkeypatch, case):
    """Every synchronisation point of a solve goes through ``_to_host`` (nothing else in pyrod.spectra would
    synchronise a GPU), and the count is ``iterations + 2 + checks``: one to choose the start block, one per
    Rayleigh–Ritz step (the start block's included), one per residual check; between two expansion HVPs
    (one per iteration) there is exactly one transfer."""
    A = _sym_matrix(**SPECTRA["clustered"])
    n, k = A.shape[0], 4
    e, Q = torch.linalg.eigh(A)
    Q = Q.flip(1)
    dtype = torch.float32 if case == "float32" else F64
    A = A.to(dtype)
    guard = _NoImplicitSync(monkeypatch)
    kw = dict(dtype=dtype, device=CPU, tol=1e-8)
    if case == "warm":
        kw["init"] = (Q[:, :6] + 1e-3 * torch.randn(n, 6, generator=torch.Generator().manual_seed(1),
                                                    dtype=F64)).to(dtype)
    if case == "init_AX":
        kw["init"] = (Q[:, :6] + 1e-3 * torch.randn(n, 6, generator=torch.Generator().manual_seed(1), dtype=F64))
        kw["init_AX"] = A @ kw["init"][:, :4]
    if case == "max_iter":
        kw.update(tol=1e-12, max_iter=3)
    if case == "dense":
        kw["block"] = n // 3
    ev, V, rep = top_eigs(guard.matvec(A), n, k, **kw)
    assert guard.transfers == rep.n_host
    if case == "dense":
        assert rep.method == "dense" and rep.n_host == 1
        return
    assert rep.n_host == rep.iterations + 2 + rep.checks and rep.checks >= 1
    assert rep.converged == (case != "max_iter")
    hvps = [i for i, ev_ in enumerate(guard.events) if ev_ != "H"]
    # the start HVP, then one expansion HVP per iteration, then one HVP per (non-fresh) check
    assert len(hvps) <= 1 + rep.iterations + rep.checks
    # exactly one transfer between two operator applications (iterations and checks alike)
    between = [guard.events[i + 1:j].count("H") for i, j in zip(hvps, hvps[1:], strict=False)]
    assert between and all(c == 1 for c in between), guard.events
    assert guard.events[0] == "H" and guard.events[-1] == "H"
    print(f"{case}: {rep.iterations} iterations, {rep.n_host} transfers, {rep.checks} checks, {rep.n_hvp} HVPs")


def test_init_AX_saves_the_start_hvps():
    """Known products for the warm columns are not recomputed: the same solve with ``init_AX`` for 4 of 6 warm
    columns costs exactly 4 HVPs fewer, and gives the same eigenpairs."""
    A = _sym_matrix(**SPECTRA["separated"])
    n, k = A.shape[0], 4
    e, Q = torch.linalg.eigh(A)
    Q = Q.flip(1)
    g = torch.Generator().manual_seed(2)
    init = Q[:, :6] + 1e-4 * torch.randn(n, 6, generator=g, dtype=F64)
    ev0, V0, r0 = top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU, init=init, block=6)
    ev1, V1, r1 = top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU, init=init, init_AX=A @ init[:, :4], block=6)
    assert r0.converged and r1.converged and r0.iterations == r1.iterations
    assert r1.n_hvp == r0.n_hvp - 4, (r0, r1)
    _check_pairs(A, ev1, V1, k, r1.tol)
    assert float((ev1 - ev0).abs().max()) <= 1e-12 * float(ev0.abs().max())
    # all warm columns known and converged: no HVP at all
    _, _, r2 = top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU, init=Q[:, :6], init_AX=A @ Q[:, :6], block=6)
    assert r2.converged and r2.n_hvp == 0 and r2.iterations == 0
    with pytest.raises(ValueError, match="init_AX"):
        top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU, init=init[:, :2], init_AX=A @ init)
    with pytest.raises(ValueError, match="init_AX"):
        top_eigs(lambda X: A @ X, n, k, dtype=F64, device=CPU, init_AX=A @ init)


def test_tracker_init_AX(mlp):
    """EigTracker passes ``init_AX`` through: a flow's own eigenvectors and their products at this point."""
    prob, w, H = mlp
    tr = EigTracker(3)
    tr(prob, w)
    g = torch.Generator().manual_seed(5)
    w2 = w + 1e-3 * float(w.norm()) / math.sqrt(prob.dim) * torch.randn(prob.dim, generator=g, dtype=F64)
    H2 = prob.hessian(w2)
    e, Q = torch.linalg.eigh(H2)
    U = Q.flip(1)[:, :3]
    st = tr.state_dict()
    ev_a, V_a, r_a = tr(prob, w2, init=U)
    tr.load_state_dict(st)
    ev_b, V_b, r_b = tr(prob, w2, init=U, init_AX=H2 @ U)
    assert r_a.converged and r_b.converged and r_b.n_hvp == r_a.n_hvp - 3
    _check_pairs(H2, ev_b, V_b, 3, r_b.tol)


def test_host_rayleigh_ritz_and_predicted_residuals():
    """The host part of an iteration against direct computation (float64, d = 500, a basis S = [X, P, V] with X
    orthonormal, the rest not, and one column dependent on the others): the Ritz values equal the eigenvalues of
    the projected pencil (eigvalsh of QᵀAQ for an orthonormal basis Q of span(S)) to 1e-12; the new block
    X = S C is orthonormal to 1e-12; the predicted Gram matrix of the residual block AS·C − S·C·Θ equals the one
    computed from the vectors within the rounding bound of its cancelling sum (m·eps times the terms' absolute
    products, ~1e-9 here) and to 1e-8 of its largest entry; and the dependent column is dropped."""
    from pyrod.spectra import _drop_tol, _rayleigh_ritz

    A = _sym_matrix(**SPECTRA["separated"], n=500)
    g = torch.Generator().manual_seed(4)
    b = 4
    X = torch.linalg.qr(torch.randn(500, b, generator=g, dtype=F64))[0]
    rest = torch.randn(500, 5, generator=g, dtype=F64)
    rest[:, 4] = rest[:, 0] - 2.0 * rest[:, 2]                     # dependent
    S = torch.cat([X, rest], dim=1)
    AS = A @ S
    M, G = S.T @ S, S.T @ AS
    Y = AS - S @ G
    theta, C, Gr, pend, anorm = _rayleigh_ritz(M.numpy(), G.numpy(), (Y.T @ Y).numpy(), b, _drop_tol(F64),
                                               torch.finfo(F64).eps)
    Q = torch.linalg.qr(S[:, :8])[0]
    ref = torch.linalg.eigvalsh(Q.T @ A @ Q).flip(0).numpy()
    np.testing.assert_allclose(theta, ref[:b], rtol=1e-12)
    assert anorm == pytest.approx(np.abs(ref).max(), rel=1e-12)
    Ct = torch.from_numpy(C)
    Xn = S @ Ct
    assert float((Xn.T @ Xn - torch.eye(b, dtype=F64)).abs().max()) < 1e-12
    R = AS @ Ct - Xn * torch.from_numpy(theta)
    direct = (R.T @ R).numpy()
    # Gr is a sum of four terms of size ~1e5 that cancel to O(1) (the non-orthonormal columns have norm ~sqrt(d));
    # rounding bound for such a sum: m·eps times the sum of the terms' absolute products
    Mn, Gn, YYn = M.numpy(), G.numpy(), (Y.T @ Y).numpy()
    Zr, Ka = Gn @ C - C * theta, np.abs(Gn - Mn @ Gn)
    scale = (np.abs(C).T @ np.abs(YYn) @ np.abs(C) + 2 * np.abs(Zr).T @ Ka @ np.abs(C)
             + np.abs(Zr).T @ np.abs(Mn) @ np.abs(Zr))
    assert np.all(np.abs(Gr - direct) <= S.shape[1] * torch.finfo(F64).eps * scale)
    assert np.abs(Gr - direct).max() <= 1e-8 * np.abs(direct).max()
    assert pend is not None and pend[0].shape[1] == 8 - b        # the complement: 8 independent columns − b


def test_host_greedy_start_block():
    """The start block takes candidate columns in order, skipping zero, non-finite-Gram and dependent ones, and
    gives coefficients that make the kept columns orthonormal."""
    from pyrod.spectra import _drop_tol, _greedy_basis

    g = torch.Generator().manual_seed(6)
    V = torch.randn(300, 7, generator=g, dtype=F64)
    V[:, 1] = 0.0                                   # zero
    V[:, 3] = 2.0 * V[:, 0] - V[:, 2]               # dependent on earlier kept columns
    gram = (V.T @ V).numpy()
    gram[5, :] = gram[:, 5] = np.nan                # non-finite
    idx, N = _greedy_basis(gram, 3, _drop_tol(F64))
    assert idx == [0, 2, 4]
    B = V[:, idx] @ torch.from_numpy(N)
    assert float((B.T @ B - torch.eye(3, dtype=F64)).abs().max()) < 1e-13


@pytest.mark.parametrize("d", [400, 12])
def test_block_values_bound_the_next_eigenvalues_and_the_block_warm_starts_a_larger_solve(d):
    """``EigReport.block_values``: the final block's Ritz values, descending, the first ``k`` the returned
    eigenvalues; the rest are Ritz values of a subspace, so (Cauchy interlacing) none exceeds the eigenvalue of its
    rank, to round-off (float64, 1e-12 relative). Dense (``3·block ≥ d``) gives the whole spectrum, exactly.
    ``return_block`` hands back the block (first ``k`` columns = the eigenvectors), and a solve for more pairs
    started from it needs fewer operator products than one started from the eigenvectors alone."""
    A = _sym_matrix(top=[5.0, 4.5, 4.0, 3.6, 3.3, 3.1], n=d) if d > 100 else _sym_matrix(top=[5.0, 4.5, 4.0], n=d)
    exact = torch.linalg.eigvalsh(A).flip(0).numpy()
    ev, V, rep, X = top_eigs(lambda Z: A @ Z, d, 2, dtype=F64, device=CPU, tol=1e-8, return_block=True)
    bv = rep.block_values
    np.testing.assert_array_equal(bv[:2], ev.numpy())
    assert np.all(np.diff(bv) <= 0)
    if rep.method == "dense":
        np.testing.assert_allclose(bv, exact, rtol=1e-12, atol=1e-12)
        assert torch.equal(X, V)
        ev32, _, rep32 = top_eigs(lambda Z: A.float() @ Z, d, 2, dtype=torch.float32, device=CPU)
        np.testing.assert_array_equal(rep32.block_values[:2], ev32.double().numpy())   # as returned (rounded)
        np.testing.assert_allclose(rep32.block_values, exact, rtol=1e-5, atol=1e-5)
        return
    assert len(bv) == rep.block == X.shape[1] and torch.equal(X[:, :2], V)
    assert np.all(bv[2:] <= exact[2:len(bv)] * (1 + 1e-12)), (bv, exact[:len(bv)])
    ev4, _, rep_block = top_eigs(lambda Z: A @ Z, d, 4, dtype=F64, device=CPU, tol=1e-8, init=X)
    _, _, rep_vecs = top_eigs(lambda Z: A @ Z, d, 4, dtype=F64, device=CPU, tol=1e-8, init=V)
    assert rep_block.converged and rep_vecs.converged and rep_block.n_hvp < rep_vecs.n_hvp
    np.testing.assert_allclose(ev4.numpy(), exact[:4], rtol=1e-8)
