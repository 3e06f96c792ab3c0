"""Tests for pyrod.sdcp: the semidefinite complementarity problem of the central flow.

SDCP(A, B): X ⪰ 0, Z = A + B[X] ⪰ 0, ⟨X, Z⟩ = 0 — the KKT system of min ½⟨X,B[X]⟩ + ⟨A,X⟩ s.t. X ⪰ 0.

Tolerances (solver tol = 1e-10)
-------------------------------
* complementarity |⟨X,Z⟩| / (‖X‖_F(‖A‖_F + ‖B[X]‖_F)) ≤ 1e-7 required; ≤ 6e-16 measured over the 240
  instances (the face-Newton polish makes ⟨X,Z⟩ zero up to round-off).
* X ⪰ −1e-9 (absolute, data O(1)) and Z ⪰ −1e-7·(‖A‖_F + ‖B[X]‖_F) required; the polished X is exactly PSD
  (λ_min(X) ≥ −5e-15 measured) and λ_min(Z) ≥ −2e-15·scale measured.
* objective vs cvxpy (CLARABEL, tight tolerances): |f − f_cvx| ≤ 1e-6·|f_cvx| + 1e-9·‖A‖_F(‖X‖_F + ‖A‖_F/λ_max(B))
  + 1e-10 (CLARABEL's absolute gap; data are O(1)), and
  f ≤ f_cvx + the same slack (ours must not be worse). For planted instances the exact optimum is known and
  |f − f*| ≤ 1e-9·(|f*| + ‖A‖_F‖X*‖_F) is required. Measured: |f − f_cvx|/|f_cvx| ≤ 2e-9 (CLARABEL's
  accuracy), |f − f*|/|f*| ≤ 3e-13.

Measured on the 2-core dev box (loaded), cold solve / warm solve from a nearby problem's solution:
k = 2: ~1.5 ms / ~0.3–0.7 ms, k = 4: ~2 ms / ~0.5 ms, k = 8: ~3.3 ms / ~0.7–1 ms (reference cvxpy+CVXOPT:
7–20 ms); ~7–11 IPM iterations + 2–3 Newton steps cold, 2–3 Newton steps warm.
``test_timing_report`` prints the numbers (``pytest -s``); nothing asserts on time.
"""
from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from pyrod.sdcp import SDCPResult, sdcp_objective, smat, solve_sdcp, svec, svec_operator

TOL = 1e-10
N_PER_K = 30  # 8 sizes × 30 = 240 random instances against cvxpy


# ----------------------------------------------------------------------------------------------- helpers

def sym(M):
    return 0.5 * (M + M.T)


def rand_orth(rng, k):
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))


def upper_to_mat_operator(Bpair: np.ndarray, k: int) -> np.ndarray:
    """Central-flow β: an m×m matrix on upper-pair coordinates (acting on metric⊙vech X, metric 1 on the diagonal
    and 2 off it) reshaped to a k×k×k×k tensor by upper_to_mat on both index pairs (reference §3, step 6)."""
    iu, ju = np.triu_indices(k)
    m = iu.size
    T4 = np.zeros((k, k, k, k))
    for p in range(m):
        for q in range(m):
            a, b, c, d = iu[p], ju[p], iu[q], ju[q]
            for (x, y) in {(a, b), (b, a)}:
                for (u, v) in {(c, d), (d, c)}:
                    T4[x, y, u, v] = Bpair[p, q]
    return T4


def vec_operator(Q: np.ndarray, k: int) -> np.ndarray:
    """k²×k² matrix on row-major vec(X) equal to Q (m×m on svec) on symmetric matrices."""
    iu, ju = np.triu_indices(k)
    w = np.where(iu == ju, 1.0, np.sqrt(2.0))
    S = np.zeros((k * k, iu.size))
    S[iu * k + ju, np.arange(iu.size)] = 1 / w
    S[ju * k + iu, np.arange(iu.size)] = 1 / w
    return S @ Q @ S.T


def apply_op(B, X):
    """B[X] for a (k,k,k,k) tensor."""
    return np.einsum("abcd,cd->ab", B, X)


def check_kkt(res: SDCPResult, A, tag=""):
    k = A.shape[0]
    assert res.converged, f"{tag}: {res.message}"
    assert res.X.shape == (k, k) and res.Z.shape == (k, k)
    assert np.all(np.isfinite(res.X)) and np.all(np.isfinite(res.Z))
    X, Z = res.X, res.Z
    nx = np.linalg.norm(X)
    scale = np.linalg.norm(A) + np.linalg.norm(Z - A)
    comp = abs(np.sum(X * Z)) / (nx * scale) if nx > 0 else 0.0
    assert comp <= 1e-7, f"{tag}: complementarity {comp:.2e}"
    assert res.complementarity <= 1e-7
    lx = np.linalg.eigvalsh(X)[0] if k else 0.0
    lz = np.linalg.eigvalsh(Z)[0] if k else 0.0
    assert lx >= -1e-9, f"{tag}: λmin(X) = {lx:.2e}"
    assert lz >= -1e-7 * scale, f"{tag}: λmin(Z) = {lz:.2e}"
    return comp, max(0.0, -lx), max(0.0, -lz) / scale if scale > 0 else 0.0


# ----------------------------------------------------------------------------------------------- instances

def make_instance(rng, k, kind):
    """(A, B given to the solver, Q = PSD svec operator, planted X* or None)."""
    m = k * (k + 1) // 2
    iu, ju = np.triu_indices(k)
    planted = None
    if kind == "full":  # random PSD B, full rank, random A (mixed signs)
        T = rng.standard_normal((m, m + 2))
        Q = T @ T.T / m
        A = sym(rng.standard_normal((k, k)))
    elif kind in ("deficient", "gram_deficient", "degenerate"):  # rank-deficient B, planted solution
        r = rng.integers(1, m) if m > 1 else 1
        if kind == "gram_deficient":  # central-flow style β = dt·½ T Tᵀ on upper pairs, n < m parameters
            T = rng.standard_normal((m, r))
            Bpair = 0.05 * 0.5 * T @ T.T
            metric = np.where(iu == ju, 1.0, np.sqrt(2.0))
            Q = metric[:, None] * Bpair * metric[None, :]
        else:
            T = rng.standard_normal((m, r))
            Q = T @ T.T / r
        U = rand_orth(rng, k)
        p = int(rng.integers(1, k + 1))  # rank of X* (≥ 1 so that A has a negative direction)
        q = k - p if kind != "degenerate" else int(rng.integers(0, k - p + 1) if k - p > 0 else 0)
        Xs = (U[:, :p] * rng.uniform(0.2, 2.0, p)) @ U[:, :p].T
        Zs = (U[:, p:p + q] * rng.uniform(0.2, 2.0, q)) @ U[:, p:p + q].T if q else np.zeros((k, k))
        A = sym(Zs - smat(Q @ svec(Xs), k))
        planted = Xs
    elif kind == "gram":  # central flow: A = diag(2 − λ) + dt·(stable drift), β = dt·½ T P⁻¹ Tᵀ, n ≥ m
        n = int(rng.integers(m, 3 * m + 2))
        T = rng.standard_normal((m, n)) * rng.uniform(0.5, 2.0, n)
        dt = rng.choice([0.01, 0.1, 1.0])
        Bpair = dt * 0.5 * T @ T.T
        metric = np.where(iu == ju, 1.0, np.sqrt(2.0))
        Q = metric[:, None] * Bpair * metric[None, :]
        lam = 2.0 + rng.uniform(-0.05, 0.03, k)
        A = np.diag(2.0 - lam) + dt * sym(rng.standard_normal((k, k)))
    elif kind == "psd_A":  # A ⪰ 0: X = 0
        T = rng.standard_normal((m, m))
        Q = T @ T.T / m
        G = rng.standard_normal((k, k))
        A = G @ G.T / k + 1e-3 * np.eye(k)
    else:  # pragma: no cover
        raise ValueError(kind)
    Q = sym(Q)
    # present B in one of the three accepted forms; tensors with the central-flow pair symmetries
    form = rng.integers(3)
    if kind.startswith("gram"):
        B = upper_to_mat_operator(Bpair, k)
    elif form == 0:
        B = Q
    elif form == 1:
        B = vec_operator(Q, k)
    else:
        B = vec_operator(Q, k).reshape(k, k, k, k)
    return A, B, Q, planted


KINDS = ["full", "deficient", "gram", "gram_deficient", "psd_A", "degenerate"]
WEIGHTS = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])


# ----------------------------------------------------------------------------------------------- cvxpy reference

class CvxReference:
    """cvxpy model per k as in the reference (DPP parameters A and L, B ≈ L Lᵀ on vec(X)), solved by CLARABEL."""

    def __init__(self, cp):
        self.cp = cp
        self.models = {}
        solvers = cp.installed_solvers()
        if "CLARABEL" in solvers:
            self.solver = "CLARABEL"
            # tight settings first (at 1e-10 a rank-deficient gram instance still differed by 2e-6 relative),
            # then looser ones if CLARABEL reports them unreachable
            self.opts = [dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10, max_iter=500),
                         dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500), {}]
        elif "SCS" in solvers:  # pragma: no cover
            self.solver = "SCS"
            self.opts = [dict(eps_abs=1e-10, eps_rel=1e-10, max_iters=200000), {}]
        else:  # pragma: no cover
            pytest.skip("no cvxpy SDP solver (CLARABEL/SCS) installed")

    def solve(self, A, Q):
        cp = self.cp
        k = A.shape[0]
        if k not in self.models:
            X = cp.Variable((k, k), PSD=True)
            Ap = cp.Parameter((k, k), symmetric=True)
            Lp = cp.Parameter((k * k, k * k))
            obj = 0.5 * cp.sum_squares(Lp.T @ cp.vec(X, order="C")) + cp.trace(Ap @ X)
            self.models[k] = (cp.Problem(cp.Minimize(obj)), X, Ap, Lp)
        prob, X, Ap, Lp = self.models[k]
        # normalised data (the reference scales B too): ‖A‖ = 1, λ_max(B) = 1, X = X'·‖A‖/λ_max. Without it
        # CLARABEL's absolute tolerances cost up to ~5e-7 relative on the small gram instances.
        sa, sq = np.linalg.norm(A), np.linalg.eigvalsh(Q)[-1]
        lam, V = np.linalg.eigh(vec_operator(Q / sq, k))
        Ap.value = sym(A) / sa
        Lp.value = V * np.sqrt(np.clip(lam, 0, None))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for opts in self.opts:
                prob.solve(solver=self.solver, **opts)
                if prob.status == "optimal":
                    break
        # CLARABEL reports one benign instance (full-rank B) as optimal_inaccurate at every setting tried;
        # the objective comparison below still applies to it
        assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
        return sym(X.value) * sa / sq


@pytest.fixture(scope="module")
def cvx():
    cp = pytest.importorskip("cvxpy")
    return CvxReference(cp)


def objective(A, Q, X):
    x = svec(X)
    return 0.5 * x @ Q @ x + svec(A) @ x


# ----------------------------------------------------------------------------------------------- tests

def test_against_cvxpy_random(cvx):
    """≥ 200 random instances, k = 1…8, all instance kinds and all three input forms of B."""
    rng = np.random.default_rng(20241124)
    worst = dict(comp=0.0, pinf=0.0, dinf=0.0, gap=0.0, gap_scaled=0.0, abs_gap=0.0, planted_gap=0.0, its=0)
    n = 0
    for k in range(1, 9):
        for i in range(N_PER_K):
            kind = KINDS[rng.choice(len(KINDS), p=WEIGHTS)] if k > 1 else rng.choice(["full", "psd_A", "gram"])
            A, B, Q, planted = make_instance(rng, k, kind)
            tag = f"k={k} #{i} {kind}"
            res = solve_sdcp(A, B, tol=TOL)
            comp, pinf, dinf = check_kkt(res, A, tag)
            # Z is A + B[X] with the (here already PSD) operator, whatever form B was given in
            np.testing.assert_allclose(res.Z, A + smat(Q @ svec(res.X), k), atol=1e-12 * (1 + np.abs(A).max()))
            f = objective(A, Q, res.X)
            Xc = cvx.solve(A, Q)
            fc = objective(A, Q, Xc)
            fscale = np.linalg.norm(A) * (max(np.linalg.norm(res.X), np.linalg.norm(Xc))
                                          + np.linalg.norm(A) / np.linalg.eigvalsh(Q)[-1])
            slack = 1e-6 * abs(fc) + 1e-9 * fscale + 1e-10  # + CLARABEL's absolute gap tolerance
            assert abs(f - fc) <= slack, f"{tag}: f={f!r} cvxpy={fc!r}"
            assert f <= fc + slack
            if abs(fc) > 1e-6 * fscale:  # nontrivial optimum (X ≠ 0)
                worst["gap"] = max(worst["gap"], abs(f - fc) / abs(fc))
            worst["gap_scaled"] = max(worst["gap_scaled"], abs(f - fc) / fscale)
            worst["abs_gap"] = max(worst["abs_gap"], abs(f - fc))
            worst["its"] = max(worst["its"], res.iterations)
            if planted is not None:
                fs = objective(A, Q, planted)
                assert abs(f - fs) <= 1e-9 * (abs(fs) + np.linalg.norm(A) * np.linalg.norm(planted)), tag
                worst["planted_gap"] = max(worst["planted_gap"], abs(f - fs) / max(abs(fs), 1e-12))
            if kind == "psd_A":
                assert res.method in ("early-exit", "closed-form") and not res.X.any()
            worst["comp"] = max(worst["comp"], comp)
            worst["pinf"] = max(worst["pinf"], pinf)
            worst["dinf"] = max(worst["dinf"], dinf)
            n += 1
    assert n >= 200
    print(f"\n[sdcp vs cvxpy] {n} instances: max complementarity {worst['comp']:.1e}, max λ⁻(X) "
          f"{worst['pinf']:.1e}, max λ⁻(Z)/scale {worst['dinf']:.1e}, max |f−f_cvx|/|f_cvx| {worst['gap']:.1e} "
          f"(abs {worst['abs_gap']:.1e}, /fscale {worst['gap_scaled']:.1e}), "
          f"max planted |f−f*|/|f*| {worst['planted_gap']:.1e}, "
          f"max iterations {worst['its']}")


def test_k1_closed_form_exact():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, b = rng.standard_normal(), rng.uniform(0.01, 10)
        for B in (np.array([[b]]), np.full((1, 1, 1, 1), b)):
            res = solve_sdcp(np.array([[a]]), B)
            assert res.method == "closed-form" and res.converged and res.iterations == 0
            assert res.X[0, 0] == max(0.0, -a / b)
            assert res.Z[0, 0] == a + b * res.X[0, 0]
    assert solve_sdcp([[-3.0]], [[2.0]]).X[0, 0] == 1.5
    res = solve_sdcp([[-1.0]], [[-2.0]])  # B clipped to 0: unbounded, no solution
    assert not res.converged and "unbounded" in res.message and res.X[0, 0] == 0.0


def test_hand_made_2x2():
    # B[X] = X + tr(X)·I (PSD), A = diag(−2, 1): X = diag(1, 0), Z = diag(0, 2).
    k = 2
    B = np.zeros((k, k, k, k))
    for a in range(k):
        for b in range(k):
            B[a, b, a, b] += 0.5
            B[a, b, b, a] += 0.5
            if a == b:
                for c in range(k):
                    B[a, a, c, c] += 1.0
    A = np.diag([-2.0, 1.0])
    res = solve_sdcp(A, B)
    np.testing.assert_allclose(res.X, np.diag([1.0, 0.0]), atol=1e-13)
    np.testing.assert_allclose(res.Z, np.diag([0.0, 2.0]), atol=1e-13)
    np.testing.assert_allclose(res.Z, A + apply_op(B, res.X), atol=1e-13)
    # the same in a rotated basis, and with the identity operator: X = Π₊(−A), Z = Π₊(A)
    R = rand_orth(np.random.default_rng(3), 2)
    Ar = R @ np.diag([-3.0, 0.5]) @ R.T
    res = solve_sdcp(Ar, np.eye(3))
    np.testing.assert_allclose(res.X, R @ np.diag([3.0, 0.0]) @ R.T, atol=1e-12)
    np.testing.assert_allclose(res.Z, R @ np.diag([0.0, 0.5]) @ R.T, atol=1e-12)
    # both negative: B[X] = X + tr(X) I, A = −I: X = I/3
    res = solve_sdcp(-np.eye(2), B)
    np.testing.assert_allclose(res.X, np.eye(2) / 3, atol=1e-13)
    np.testing.assert_allclose(res.Z, 0.0, atol=1e-13)


def test_input_forms_agree_and_symmetrisation():
    """Tensor, vec and svec forms give the same answer; B is symmetrised and clipped like the reference."""
    rng = np.random.default_rng(7)
    k, m = 3, 6
    T = rng.standard_normal((m, m))
    Q = T @ T.T / m
    A = sym(rng.standard_normal((k, k))) - 0.5 * np.eye(k)
    sols = [solve_sdcp(A, B).X for B in (Q, vec_operator(Q, k), vec_operator(Q, k).reshape(k, k, k, k))]
    for X in sols[1:]:
        np.testing.assert_allclose(X, sols[0], atol=1e-12)
    # a non-symmetric, indefinite operator: solve with the symmetrised PSD part (as the reference, which
    # symmetrises and clips the k²×k² matrix — identical for pair-symmetric tensors)
    N = rng.standard_normal((m, m))
    Bbad = Q + 0.3 * (N - N.T) - 0.2 * np.outer(svec(np.eye(k)), svec(np.eye(k)))
    lam, V = np.linalg.eigh(sym(Bbad))
    Qclip = (V * np.clip(lam, 0, None)) @ V.T
    assert lam[0] < 0  # really indefinite
    Mbad = vec_operator(Bbad, k)  # pair-symmetric k²×k² form; reference: sym + clip in k² space
    lv, Vv = np.linalg.eigh(sym(Mbad))
    Mclip = (Vv * np.clip(lv, 0, None)) @ Vv.T
    np.testing.assert_allclose(svec_operator(Mclip, k), Qclip, atol=1e-12)
    r1, r2 = solve_sdcp(A, Bbad), solve_sdcp(A, Qclip)
    assert r1.converged
    np.testing.assert_allclose(r1.X, r2.X, atol=1e-10)
    np.testing.assert_allclose(r1.Z, A + smat(Qclip @ svec(r1.X), k), atol=1e-10)
    assert abs(sdcp_objective(A, Bbad, r1.X) - objective(A, Qclip, r1.X)) < 1e-12


def test_early_exit_and_trivial():
    res = solve_sdcp(np.diag([1.0, 0.0, 2.0]), np.eye(6))
    assert res.method == "early-exit" and res.converged and not res.X.any()
    np.testing.assert_array_equal(res.Z, np.diag([1.0, 0.0, 2.0]))
    res = solve_sdcp(np.zeros((0, 0)), np.zeros((0, 0)))
    assert res.converged and res.X.shape == (0, 0)


def test_warm_start_reduces_iterations():
    """Central-flow-like sequence of nearby problems: warm start from the previous solution."""
    rng = np.random.default_rng(11)
    for k in (2, 4, 8):
        m = k * (k + 1) // 2
        T = rng.standard_normal((m, 2 * m))
        Q0 = T @ T.T / m
        A0 = sym(rng.standard_normal((k, k)))
        dA = sym(rng.standard_normal((k, k)))
        N = rng.standard_normal((m, m))
        X = None
        cold_its, warm_its = [], []
        for t in range(8):
            A = A0 + 1e-3 * t * dA
            Q = Q0 + 1e-3 * t * sym(N @ N.T) / m
            cold = solve_sdcp(A, Q)
            if X is not None:
                warm = solve_sdcp(A, Q, X0=X)
                check_kkt(warm, A, f"warm k={k} t={t}")
                np.testing.assert_allclose(warm.X, cold.X, atol=1e-8 * (1 + np.abs(cold.X).max()))
                cold_its.append(cold.iterations)
                warm_its.append(warm.iterations)
                assert warm.method == "warm-newton", warm.message
            X = cold.X
        assert max(warm_its) < min(cold_its), (k, warm_its, cold_its)
    # a useless warm start (wrong rank, far away) still converges
    A = np.diag([-1.0, -2.0, 3.0])
    res = solve_sdcp(A, np.eye(6), X0=np.diag([0.0, 0.0, 5.0]))
    check_kkt(res, A)
    np.testing.assert_allclose(res.X, np.diag([1.0, 2.0, 0.0]), atol=1e-12)


def test_larger_k_kkt():
    """k = 12 and 20 (no cvxpy): KKT conditions and the planted optimum."""
    rng = np.random.default_rng(5)
    for k in (12, 20):
        for kind in ("full", "deficient"):
            A, B, Q, planted = make_instance(rng, k, kind)
            res = solve_sdcp(A, B)
            check_kkt(res, A, f"k={k} {kind}")
            if planted is not None:
                f, fs = objective(A, Q, res.X), objective(A, Q, planted)
                assert abs(f - fs) <= 1e-9 * (abs(fs) + np.linalg.norm(A) * np.linalg.norm(planted))


def test_scale_invariance():
    """The SDCP is homogeneous: (cA, bB) ↦ X·c/b. Works for tiny and huge data."""
    rng = np.random.default_rng(13)
    A, B, Q, _ = make_instance(rng, 4, "full")
    base = solve_sdcp(A, Q)
    for c, b in ((1e-8, 1.0), (1.0, 1e-9), (1e6, 1e-6), (1e-5, 1e7)):
        res = solve_sdcp(c * A, b * Q)
        check_kkt(res, c * A)
        np.testing.assert_allclose(res.X, base.X * c / b, rtol=1e-8, atol=1e-12 * abs(c / b))


def test_no_solution_and_fallback():
    """Unbounded QP (B singular along E₂₂ where ⟨A,E₂₂⟩ < 0): no SDCP solution; never raises."""
    k = 2
    Q = np.zeros((3, 3))
    Q[0, 0] = 1.0  # only X₁₁ is penalised
    res = solve_sdcp(np.diag([-1.0, -1.0]), Q, max_iter=200)
    assert not res.converged
    assert res.message and np.all(np.isfinite(res.X)) and np.all(np.isfinite(res.Z))
    res = solve_sdcp(np.diag([-1.0, 1.0]), np.zeros((k, k, k, k)))
    assert not res.converged and "unbounded" in res.message
    # tiny iteration budget: a defined answer either way
    rng = np.random.default_rng(2)
    A, B, Q, _ = make_instance(rng, 5, "full")
    res = solve_sdcp(A, B, max_iter=1)
    assert isinstance(res, SDCPResult) and np.all(np.isfinite(res.X))
    assert res.converged or "not converged" in res.message


@pytest.mark.parametrize("args, kwargs, name", [
    ((np.ones((2, 3)), np.eye(3)), {}, "A"),
    ((np.array([[np.nan, 0], [0, 1.0]]), np.eye(3)), {}, "A"),
    ((np.ones(3), np.eye(3)), {}, "A"),
    ((-np.eye(2), np.eye(5)), {}, "B"),
    ((-np.eye(2), np.ones((2, 2, 2))), {}, "B"),
    ((-np.eye(2), np.full((3, 3), np.inf)), {}, "B"),
    ((-np.eye(2), np.eye(3)), {"X0": np.eye(3)}, "X0"),
    ((-np.eye(2), np.eye(3)), {"X0": np.full((2, 2), np.nan)}, "X0"),
    ((-np.eye(2), np.eye(3)), {"tol": 0.0}, "tol"),
    ((-np.eye(2), np.eye(3)), {"max_iter": 0}, "max_iter"),
])
def test_bad_input(args, kwargs, name):
    with pytest.raises(ValueError, match=name):
        solve_sdcp(*args, **kwargs)


def test_svec_helpers():
    rng = np.random.default_rng(0)
    for k in (1, 2, 5):
        X, Y = sym(rng.standard_normal((k, k))), sym(rng.standard_normal((k, k)))
        assert abs(svec(X) @ svec(Y) - np.sum(X * Y)) < 1e-12
        np.testing.assert_allclose(smat(svec(X)), X, rtol=1e-15, atol=0)
        B = rng.standard_normal((k, k, k, k))
        B = 0.5 * (B + B.transpose(1, 0, 2, 3))
        B = 0.5 * (B + B.transpose(0, 1, 3, 2))  # pair symmetries: B[X] symmetric, depends on sym(X) only
        np.testing.assert_allclose(svec_operator(B, k) @ svec(X), svec(apply_op(B, X)), atol=1e-12)


def test_no_cvxpy_at_runtime():
    code = "import sys, pyrod.sdcp as s; s.solve_sdcp([[-1.0, 0], [0, -2.0]], [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]]); " \
           "assert 'cvxpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_timing_report():
    """Prints time per solve (cold and warm) for k = 2, 4, 8; informative only (run with -s)."""
    rng = np.random.default_rng(17)
    lines = []
    for k in (2, 4, 8):
        probs = [make_instance(rng, k, "full")[:3] for _ in range(10)]
        for A, _B, Q in probs:
            solve_sdcp(A, Q)  # warm caches
        t0 = time.perf_counter()
        sols = [solve_sdcp(A, Q) for A, B, Q in probs]
        cold = (time.perf_counter() - t0) / len(probs)
        pert = [(A + 1e-3 * sym(rng.standard_normal(A.shape)), Q) for A, B, Q in probs]
        t0 = time.perf_counter()
        warm = [solve_sdcp(A, Q, X0=s.X) for (A, Q), s in zip(pert, sols, strict=False)]
        tw = (time.perf_counter() - t0) / len(probs)
        assert all(s.converged for s in sols + warm)
        lines.append(f"k={k}: cold {cold * 1e3:.2f} ms ({np.mean([s.iterations for s in sols]):.1f} it), "
                     f"warm {tw * 1e3:.2f} ms ({np.mean([s.iterations for s in warm]):.1f} it)")
    print("\n[sdcp timing] " + "; ".join(lines))
