"""Semidefinite complementarity problem (SDCP) solver used by the central flow.

Problem ``SDCP(A, B)``: find a symmetric ``X ⪰ 0`` with ``Z = A + B[X] ⪰ 0`` and ``⟨X, Z⟩ = 0``.

``A`` is a symmetric k×k matrix and ``B`` a linear operator on symmetric k×k matrices. For PSD ``B`` this is
exactly the KKT system of the convex QP ::

    minimize_X  ½⟨X, B[X]⟩ + ⟨A, X⟩    subject to  X ⪰ 0,           (Z = A + B[X] is the dual slack)

(docs/theory/central_flows.md, "How X is chosen"). The central flow solves it at every right-hand-side
evaluation with ``A = α`` (k×k) and ``B = β`` (k×k×k×k), k = number of critical eigenvalues (1–3 usually).

Coordinates
-----------
Symmetric matrices are flattened with the *isometric* ``svec``: the upper triangle in row-major order
(``torch.triu_indices`` order: (0,0), (0,1), …, (0,k-1), (1,1), …), off-diagonal entries scaled by √2, so that
``svec(X)·svec(Y) = ⟨X, Y⟩``. ``m = k(k+1)/2``. ``B`` may be given as

* a ``(k, k, k, k)`` tensor, ``B[X]_ab = Σ_cd B_abcd X_cd`` (the reference's ``β``),
* a ``(k², k²)`` matrix acting on row-major ``vec(X)`` (the tensor reshaped), or
* an ``(m, m)`` matrix ``Q`` acting on ``svec(X)`` (``svec(B[X]) = Q svec(X)``).

The first two are compressed to the symmetric subspace, ``Q = Sᵀ B S`` with ``S`` the k²×m matrix whose columns
are ``vec`` of the orthonormal basis of symmetric matrices (:func:`svec_operator`).

Regularisation of ``B`` (as the reference, ``src/sdcp.py``)
-----------------------------------------------------------
``Q`` is symmetrised, ``(Q + Qᵀ)/2``, and its negative eigenvalues are clipped to 0 (eigenvalues below
``m·ε·λ_max``, i.e. round-off, are set to 0 as well). The reference symmetrises and clips the k²×k² matrix
instead; the two agree whenever ``B`` has the pair symmetries ``B_abcd = B_bacd = B_abdc`` (always the case for
the central flow's β, built with ``upper_to_mat`` on both index pairs). **The reported ``Z`` is ``A + B₊[X]``
with this regularised operator** ``B₊``, so ``⟨X, Z⟩``, ``Z ⪰ 0`` refer to the problem actually solved.
``A`` is symmetrised, ``(A + Aᵀ)/2``.

Algorithm
---------
1. ``k = 0``: empty answer. ``k = 1``: closed form ``X = max(0, −A/B)``.
2. Early exit ``X = 0`` when ``λ_min(A) ≥ 0`` (``Z = A``).
3. The data are normalised (``‖A‖_F = 1``, ``λ_max(Q) = 1``; the SDCP is homogeneous, ``X ↦ X·‖A‖/λ_max``).
4. Warm start (``X0`` given): Newton's method on the *active face* from ``X0`` (step 6). Accepted when it
   meets the tolerances, which is the usual case along a trajectory (the rank of X does not change between
   consecutive substeps); otherwise the solve continues cold (the failed attempt's steps are counted).
5. Primal–dual interior-point method for the monotone semidefinite LCP ``Z = A + Q[X]``, ``X, Z ≻ 0``,
   ``XZ → 0``: infeasible start ``X = Z = I``, Nesterov–Todd scaling, Mehrotra predictor–corrector, equal
   primal/dual step lengths (0.99 of the step to the boundary). Each iteration solves one SPD m×m system
   ``(I + Q̃) Δx̃ = r`` (Q̃ = Q in the NT-scaled coordinates) by Cholesky, used for both predictor and corrector.
   Z is updated as ``Z + α(Q ΔX + r_d)`` so that the residual ``A + Q[X] − Z`` contracts exactly by ``1 − α``.
6. Newton polish on the face, tried once when the IPM's relative gap first drops below 1e-6 (the IPM stops
   if it succeeds) and again from the final IPM point otherwise. With ``r = rank X`` (read off the iterate:
   eigen-directions of X with ``x_i > (VᵀZV)_ii``) the solution is parametrised as ``X = P₁ Y P₁ᵀ``,
   ``Z = P₂ W P₂ᵀ`` with ``P = [P₁ P₂]`` orthogonal; Newton's method on ``(Y, W, rotation of P)`` (Cayley
   retraction) — a square m×m system — solves ``A + Q[X] − Z = 0`` to machine precision, quadratically under
   strict complementarity. A numerically singular Jacobian (rank-deficient B, non-unique X) gets the
   minimum-norm least-squares (Gauss–Newton) step. The result has exact rank r and ``⟨X, Z⟩ = 0`` up to
   round-off; it is accepted only if it meets the tolerances below (so ``Y ⪰ 0`` and ``Z ⪰ 0``: a KKT point of
   the convex QP, hence optimal) or at least beats the IPM point.

BLAS/LAPACK run single-threaded inside the solver (``threadpoolctl``; the calls are on ≤ m×m matrices, and
OpenBLAS's threads made k = 8–12 solves 5–30× slower on a loaded 2-core machine).

Convergence is judged on the reported ``(X, Z = A + B₊[X])`` (``scale_Z = ‖A‖_F + ‖B₊[X]‖_F``)::

    complementarity = |⟨X, Z⟩| / (‖X‖_F · scale_Z)      (0 when X = 0)
    primal_infeas   = max(0, −λ_min(X)),   dual_infeas = max(0, −λ_min(Z))      (absolute)
    converged  ⇔  complementarity ≤ tol,  primal_infeas ≤ tol·‖X‖_F,  dual_infeas ≤ tol·scale_Z

Failure is never raised: the best iterate (smallest of the three relative measures) is returned with
``converged=False`` and a message, e.g. when the QP is unbounded below (B singular along a PSD direction of
negative ⟨A,·⟩: no SDCP solution exists). Bad shapes / non-finite input raise ``ValueError``.

Cost (2-core dev machine, loaded; random well-posed instances): cold 5–11 IPM iterations + 2–3 Newton steps,
≈1.5 ms (k = 2), 2 ms (k = 4), 3.3 ms (k = 8), 7 ms (k = 12), 30 ms (k = 20); warm 2–3 Newton steps, ≈0.3 ms
(k = 2), 0.6 ms (k = 4), 1 ms (k = 8), 2 ms (k = 12), 11 ms (k = 20). The reference (cvxpy + CVXOPT) takes
7–20 ms for k ≤ 8. numpy/scipy only — no cvxpy at run time.
Known limit: when B is nearly singular (condition ≳ 1e9) along the solution the achievable accuracy is
~1e-10–1e-9 relative, so such solves may return ``converged=False`` with a merit just above ``tol``.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

__all__ = ["SDCPResult", "solve_sdcp", "svec", "smat", "svec_operator", "sdcp_objective"]

_SQRT2 = math.sqrt(2.0)


@dataclass
class SDCPResult:
    """Solution of ``SDCP(A, B)``. ``Z = A + B₊[X]`` with the symmetrised, PSD-clipped operator ``B₊``."""

    X: np.ndarray
    Z: np.ndarray
    iterations: int
    complementarity: float  # |⟨X, Z⟩| / (‖X‖_F (‖A‖_F + ‖B₊[X]‖_F))
    primal_infeas: float  # max(0, −λ_min(X))
    dual_infeas: float  # max(0, −λ_min(Z))
    converged: bool
    method: str
    message: str


# ----------------------------------------------------------------------------------------------- svec helpers

@functools.lru_cache(maxsize=64)
def _basis(k: int):
    """(iu, ju, w, S, idx): triu indices, svec weights, S (k²×m, columns vec(E_p)), idx[i,j] -> svec position."""
    iu, ju = np.triu_indices(k)
    w = np.where(iu == ju, 1.0, _SQRT2)
    m = iu.size
    S = np.zeros((k * k, m))
    p = np.arange(m)
    S[iu * k + ju, p] = 1.0 / w
    S[ju * k + iu, p] = 1.0 / w
    idx = np.zeros((k, k), dtype=np.intp)
    idx[iu, ju] = p
    idx[ju, iu] = p
    for a in (iu, ju, w, S, idx):
        a.setflags(write=False)
    return iu, ju, w, S, idx


def svec(X: np.ndarray) -> np.ndarray:
    """Isometric svec of a symmetric matrix: upper triangle row-major, off-diagonals ×√2."""
    X = np.asarray(X, dtype=float)
    iu, ju, w, _, _ = _basis(X.shape[0])
    return X[iu, ju] * w


def smat(x: np.ndarray, k: int | None = None) -> np.ndarray:
    """Inverse of :func:`svec`."""
    x = np.asarray(x, dtype=float)
    if k is None:
        k = int(round((math.sqrt(8 * x.size + 1) - 1) / 2))
    iu, ju, w, _, _ = _basis(k)
    X = np.empty((k, k))
    v = x / w
    X[iu, ju] = v
    X[ju, iu] = v
    return X


def svec_operator(B, k: int) -> np.ndarray:
    """The m×m matrix ``Q`` with ``svec(B[X]) = Q svec(X)`` on symmetric X (not symmetrised or clipped).

    ``B``: ``(k,k,k,k)`` tensor, ``(k², k²)`` matrix on row-major vec, or ``(m, m)`` matrix on svec.
    """
    B = np.asarray(B, dtype=float)
    m = k * (k + 1) // 2
    _, _, _, S, _ = _basis(k)
    if B.shape == (k, k, k, k):
        return S.T @ B.reshape(k * k, k * k) @ S
    if B.shape == (m, m):
        return B.copy()
    if B.shape == (k * k, k * k):
        return S.T @ B @ S
    raise ValueError(f"B has shape {B.shape}; expected ({k},{k},{k},{k}), ({m},{m}) (svec) or "
                     f"({k * k},{k * k}) (vec) for k={k} (the size of A)")


def sdcp_objective(A, B, X) -> float:
    """QP objective ``½⟨X, B₊[X]⟩ + ⟨A, X⟩`` with the same symmetrised, PSD-clipped ``B₊`` as the solver."""
    A = np.asarray(A, dtype=float)
    k = A.shape[0]
    Q, _ = _psd_part(svec_operator(B, k))
    x = svec((np.asarray(X, dtype=float) + np.asarray(X, dtype=float).T) / 2)
    return float(0.5 * x @ Q @ x + svec((A + A.T) / 2) @ x)


def _symkron(G: np.ndarray) -> np.ndarray:
    """m×m matrix of ``Y ↦ G Y Gᵀ`` in svec coordinates (elementwise; no BLAS):
    ``[(ij),(pq)] = w_ij w_pq (G_ip G_jq + G_iq G_jp) / 2``."""
    iu, ju, w, _, _ = _basis(G.shape[0])
    Gi, Gj = G[iu], G[ju]
    M = Gi[:, iu] * Gj[:, ju]
    M += Gi[:, ju] * Gj[:, iu]
    M *= w[:, None] * (0.5 * w)[None, :]
    return M


def _psd_part(Q: np.ndarray):
    """Symmetrise and clip to PSD; returns (Q₊, λ_max)."""
    Q = 0.5 * (Q + Q.T)
    if Q.size == 0:
        return Q, 0.0
    lam, V = np.linalg.eigh(Q)
    lmax = max(float(lam[-1]), 0.0)
    cut = Q.shape[0] * np.finfo(float).eps * lmax
    if lam[0] >= cut:  # already PSD: keep Q itself (no eigendecomposition round-off)
        return Q, lmax
    lam = np.where(lam > cut, lam, 0.0)
    Qp = (V * lam) @ V.T
    return 0.5 * (Qp + Qp.T), lmax


_CONTROLLER = None


def _one_blas_thread():
    """Context running BLAS/LAPACK single-threaded (threadpoolctl, if present).

    The work is a few dozen calls on ≤ m×m matrices (m ≤ ~200): threads gain nothing, and on a loaded machine
    OpenBLAS's busy-waiting threads made a k = 8 solve 5× and a k = 12 solve 30× slower.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
            _CONTROLLER = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or broken
            _CONTROLLER = False
    if _CONTROLLER is False:  # pragma: no cover
        return contextlib.nullcontext()
    return _CONTROLLER.limit(limits=1, user_api="blas")


# ----------------------------------------------------------------------------------------------- diagnostics

def _evaluate(X: np.ndarray, a: np.ndarray, Q: np.ndarray, k: int):
    """Return (Z, complementarity, primal_infeas, dual_infeas, merit) for X (same units as a, Q)."""
    x = svec(X)
    qx = Q @ x
    Z = smat(a + qx, k)
    nx = float(np.linalg.norm(x))
    sz = float(np.linalg.norm(a) + np.linalg.norm(qx))
    pinf = max(0.0, -float(np.linalg.eigvalsh(X)[0])) if k else 0.0
    dinf = max(0.0, -float(np.linalg.eigvalsh(Z)[0])) if k else 0.0
    comp = abs(float(x @ (a + qx))) / (nx * sz) if nx > 0 and sz > 0 else 0.0
    merit = max(comp, pinf / nx if nx > 0 else 0.0, dinf / sz if sz > 0 else 0.0)
    return Z, comp, pinf, dinf, merit


# ----------------------------------------------------------------------------------------------- IPM

def _max_step(d: np.ndarray, D: np.ndarray) -> float:
    """Largest α with diag(d) + α·D ⪰ 0 (d > 0)."""
    s = 1.0 / np.sqrt(d)
    lmin = float(np.linalg.eigvalsh(D * s[:, None] * s[None, :])[0])
    return math.inf if lmin >= 0 else -1.0 / lmin


def _recession_note(X: np.ndarray, a: np.ndarray, Q: np.ndarray) -> str:
    """Message suffix when the (normalised) iterate has run off along N = X/‖X‖ with B[N] ≈ 0, ⟨A,N⟩ < 0."""
    if not np.all(np.isfinite(X)):
        return ""
    x = svec(X)
    nx = float(np.linalg.norm(x))
    if nx < 1e6:  # normalised data: solutions of bounded problems of moderate conditioning are far smaller
        return ""
    n = x / nx
    qn, an = float(np.linalg.norm(Q @ n)), float(a @ n)
    if an < 0 and qn <= 1e-6:
        return (f"; the QP appears unbounded below (no SDCP solution) or nearly so (B almost singular): the iterates "
                f"run off along N = X/‖X‖ ⪰ 0 with ‖B[N]‖/λ_max(B) = {qn:.1e} and ⟨A,N⟩/‖A‖ = {an:.2f}")
    return ""


def _ipm(a: np.ndarray, Q: np.ndarray, k: int, tol: float, max_iter: int, polish=None, polish_at: float = 1e-6):
    """Primal–dual NT interior-point method on normalised data. Returns (best X, iterations, message).

    ``polish(X, Z, it) -> bool`` is called once, when the relative gap first drops below ``polish_at``; if it
    returns True (a converged point was found from there) the IPM stops early.
    """
    m = a.size
    I_m = np.eye(m)
    I_k = np.eye(k)
    X = I_k.copy()
    Z = I_k.copy()
    best_X, best_merit = X.copy(), math.inf
    msg = f"interior point: no convergence in max_iter={max_iter} iterations"
    stalls = 0
    it = 0
    for it in range(1, max_iter + 1):
        x = svec(X)
        qx = Q @ x
        rd = qx + a - svec(Z)
        nx = float(np.linalg.norm(x))
        sz = 1.0 + float(np.linalg.norm(qx))
        gap = float(np.sum(X * Z))
        # track the best iterate on the reported quantities (X, A + Q[X])
        _, _, _, _, merit = _evaluate(X, a, Q, k)
        if merit < best_merit:
            best_X, best_merit = X.copy(), merit
        if gap <= 0.05 * tol * nx * sz and np.linalg.norm(rd) <= 0.05 * tol * sz:
            return best_X, it, "interior point converged"
        if polish is not None and gap <= polish_at * nx * sz:
            if polish(X, Z, it):
                return best_X, it, f"interior point stopped at relative gap {gap / (nx * sz):.1e}"
            polish = None
        if nx > 1e13:
            return best_X, it, "interior point: iterates diverge (‖X‖ > 1e13·‖A‖/λ_max(B))" + _recession_note(X, a, Q)
        try:
            Lx = np.linalg.cholesky(X)
            Lz = np.linalg.cholesky(Z)
            _, s, Vt = np.linalg.svd(Lz.T @ Lx)
            if not (np.all(np.isfinite(s)) and s[-1] > 0):
                raise np.linalg.LinAlgError("singular scaling")
            G = (Lx @ Vt.T) / np.sqrt(s)[None, :]  # W = G Gᵀ, Gᵀ Z G = G⁻¹ X G⁻ᵀ = diag(s)
            Gs = _symkron(G)
            Qt = Gs.T @ Q @ Gs
            cf = sla.cho_factor(I_m + 0.5 * (Qt + Qt.T), lower=True, check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            msg = f"interior point: numerical breakdown at iteration {it} (loss of definiteness)"
            break
        rdt = Gs.T @ rd
        D = np.diag(s)
        mu = gap / k
        # predictor (σ = 0)
        dxa = sla.cho_solve(cf, svec(-D) - rdt, check_finite=False)
        dza = Qt @ dxa + rdt
        dXa, dZa = smat(dxa, k), smat(dza, k)
        al = min(1.0, _max_step(s, dXa), _max_step(s, dZa))
        mu_aff = float(np.sum((D + al * dXa) * (D + al * dZa))) / k
        sigma = min(1.0, max(0.0, mu_aff / mu)) ** 3 if mu > 0 else 0.0
        # corrector (Mehrotra): D∘(ΔX̃+ΔZ̃) = σμI − D² − ΔX̃a∘ΔZ̃a
        C = dXa @ dZa
        R = sigma * mu * I_k - D * D - 0.5 * (C + C.T)
        R = 2.0 * R / (s[:, None] + s[None, :])
        dx = sla.cho_solve(cf, svec(R) - rdt, check_finite=False)
        dz = Qt @ dx + rdt
        dXt, dZt = smat(dx, k), smat(dz, k)
        alpha = min(1.0, 0.99 * min(_max_step(s, dXt), _max_step(s, dZt)))
        if not np.isfinite(alpha) or alpha < 1e-10:
            stalls += 1
            if stalls >= 5:
                msg = f"interior point: stalled (step lengths < 1e-10) at iteration {it}"
                break
        else:
            stalls = 0
        dX = G @ dXt @ G.T
        dX = 0.5 * (dX + dX.T)
        dZ = smat(Q @ svec(dX) + rd, k)  # consistent with the residual: rd ← (1 − α) rd
        X = X + alpha * dX
        Z = Z + alpha * dZ
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(Z))):
            msg = f"interior point: non-finite iterate at iteration {it}"
            break
    else:
        _, _, _, _, merit = _evaluate(X, a, Q, k)
        if merit < best_merit:
            best_X = X.copy()
    return best_X, it, msg + _recession_note(X, a, Q)


# ----------------------------------------------------------------------------------------------- face Newton

def _face_start(X: np.ndarray, Z: np.ndarray):
    """(P, r, Y, W) from an approximate solution (X, Z).

    Eigenvectors of X; inside the numerical null space of X (eigenvalues ≤ 1e-8·max) the basis is rotated to
    diagonalise Z. A direction is put on the face (range of X) when ``x_i > z_i = (VᵀZV)_ii``: this reads the
    rank off an interior-point iterate, and for a warm start also activates the directions where the new Z
    would be negative.
    """
    lam, V = np.linalg.eigh(X)
    null = lam <= 1e-8 * max(float(lam[-1]), 0.0)
    if null.any():
        Vn = V[:, null]
        zn, R = np.linalg.eigh(Vn.T @ Z @ Vn)
        V = np.concatenate([Vn @ R, V[:, ~null]], axis=1)
        lam = np.concatenate([np.zeros(null.sum()), lam[~null]])
    z = np.einsum("ij,jk,ki->i", V.T, Z, V)
    on = lam > z
    order = np.concatenate([np.nonzero(on)[0][::-1], np.nonzero(~on)[0]])
    P = V[:, order]
    r = int(on.sum())
    P1, P2 = P[:, :r], P[:, r:]
    Y = P1.T @ X @ P1
    W = P2.T @ Z @ P2
    return P, r, 0.5 * (Y + Y.T), 0.5 * (W + W.T)


def _newton_step(J: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve J u = rhs by LU; when J is numerically singular (reciprocal condition < 1e-12: B rank-deficient,
    a non-unique solution) take the minimum-norm least-squares step instead (Gauss–Newton)."""
    lu, piv, info = sla.lapack.dgetrf(J)
    if info == 0:
        rcond, info2 = sla.lapack.dgecon(lu, float(np.abs(J).sum(axis=0).max()), norm="1")
        if info2 == 0 and rcond > 1e-12:
            u, info3 = sla.lapack.dgetrs(lu, piv, rhs)
            if info3 == 0 and np.all(np.isfinite(u)):
                return u
    return np.linalg.lstsq(J, rhs, rcond=1e-12)[0]


def _face_newton(a: np.ndarray, Q: np.ndarray, k: int, P: np.ndarray, r: int, Y: np.ndarray, W: np.ndarray,
                 max_steps: int = 20):
    """Newton on A + Q[P₁YP₁ᵀ] − P₂WP₂ᵀ = 0 over (Y, W, P). Returns (X, steps) or (None, steps)."""
    _, _, _, _, idx = _basis(k)
    q = k - r
    m = a.size
    ir, jr = np.triu_indices(r)
    iq, jq = np.triu_indices(q)
    posY = idx[ir, jr]
    posW = idx[r + iq, r + jq]
    nY, nW = posY.size, posW.size
    # index triples for the rotation columns
    I3, J3, L3 = np.meshgrid(np.arange(r), np.arange(q), np.arange(r), indexing="ij")  # X side: (i, j, l)
    rowsX = idx[I3, r + J3].ravel()
    colsX = (J3 * r + L3).ravel()
    I4, J4, L4 = np.meshgrid(np.arange(r), np.arange(q), np.arange(q), indexing="ij")  # Z side: (i, j, l)
    rowsZ = idx[I4, r + J4].ravel()
    colsZ = (L4 * r + I4).ravel()
    I_k = np.eye(k)

    def residual(P, Y, W):
        P1 = P[:, :r]
        X = P1 @ Y @ P1.T
        Zf = smat(a + Q @ svec(X), k)
        F = P.T @ Zf @ P
        F[r:, r:] -= W
        return X, F

    X, F = residual(P, Y, W)
    fn = float(np.linalg.norm(F))
    best = (fn, X)
    steps = slow = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 - the count is returned
        Ps = _symkron(P)
        Qh = Ps.T @ Q @ Ps
        JE = np.zeros((m, q * r))
        JE[rowsX, colsX] = _SQRT2 * Y[I3, L3].ravel()
        JE = Qh @ JE
        JE[rowsZ, colsZ] += _SQRT2 * W[L4, J4].ravel()
        Jac = np.empty((m, m))
        Jac[:, :nY] = Qh[:, posY]
        Jac[:, nY:nY + nW] = 0.0
        Jac[posW, nY + np.arange(nW)] = -1.0
        Jac[:, nY + nW:] = JE
        rhs = -svec(0.5 * (F + F.T))
        u = _newton_step(Jac, rhs)
        Y = Y + smat(u[:nY], r) if r else Y
        W = W + smat(u[nY:nY + nW], q) if q else W
        if r and q:
            E = u[nY + nW:].reshape(q, r)
            K = np.zeros((k, k))
            K[r:, :r] = E
            K[:r, r:] = -E.T
            P = P @ np.linalg.solve(I_k - 0.5 * K, I_k + 0.5 * K)  # Cayley retraction (orthogonal)
        X, F = residual(P, Y, W)
        fn_new = float(np.linalg.norm(F))
        if not np.isfinite(fn_new):
            break
        if fn_new < best[0]:
            best = (fn_new, X)
        scale = 1.0 + float(np.linalg.norm(Q @ svec(X)))
        if fn_new <= 1e-15 * scale or (fn_new > 0.5 * fn and fn_new <= 1e-12 * scale):
            break
        if fn_new > 1e3 * max(fn, 1e-8):  # diverging
            break
        slow = slow + 1 if fn_new > 0.25 * fn else 0
        if slow >= 3:  # not in the quadratic regime (wrong face, degenerate or ill-conditioned problem)
            break
        fn = fn_new
    Xb = best[1]
    if r:
        # exact PSD: clip round-off negatives of the face block (rejected later if they were not round-off)
        lam, V = np.linalg.eigh(0.5 * (Xb + Xb.T))
        tiny = 1e-12 * max(abs(lam).max(), 1e-300)
        if lam[0] < 0 and lam[0] >= -tiny:
            Xb = (V * np.maximum(lam, 0.0)) @ V.T
    return 0.5 * (Xb + Xb.T), steps


# ----------------------------------------------------------------------------------------------- driver

def _host(M):
    """A torch tensor (any device) as a NumPy array; anything else unchanged. The SDCP is a few-by-few problem
    solved on the host, so a CUDA caller pays one small copy per solve."""
    if hasattr(M, "detach") and hasattr(M, "cpu"):
        return M.detach().cpu().double().numpy()
    return M


def _check_matrix(name: str, M, k: int | None = None) -> np.ndarray:
    try:
        M = np.asarray(_host(M), dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a real array ({e})") from None
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {M.shape}")
    if k is not None and M.shape[0] != k:
        raise ValueError(f"{name} has shape {M.shape}; expected ({k}, {k}) to match A")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} contains non-finite entries")
    return 0.5 * (M + M.T)


def solve_sdcp(A, B, *, tol: float = 1e-10, max_iter: int = 500, X0=None) -> SDCPResult:
    """Solve ``SDCP(A, B)``: ``X ⪰ 0``, ``Z = A + B[X] ⪰ 0``, ``⟨X, Z⟩ = 0`` (see the module docstring).

    A: (k, k) symmetric. B: (k,k,k,k) tensor, (k², k²) on vec, or (m, m) on svec (m = k(k+1)/2); symmetrised
    and clipped to PSD. tol: relative tolerance on complementarity and infeasibilities. max_iter: bound on
    interior-point iterations. X0: optional warm start (k, k), e.g. the previous substep's solution.
    Never raises for non-convergence (``converged=False`` + message); raises ValueError for bad input.
    """
    A = _check_matrix("A", A)
    k = A.shape[0]
    try:
        B = np.asarray(_host(B), dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"B must be a real array ({e})") from None
    if not np.all(np.isfinite(B)):
        raise ValueError("B contains non-finite entries")
    if X0 is not None:
        X0 = _check_matrix("X0", X0, k)
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"tol={tol!r} must be a number in (0, 1)")
    if isinstance(max_iter, bool) or not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter={max_iter!r} must be an integer ≥ 1")
    Qraw = svec_operator(B, k)  # ValueError naming B for a bad shape
    with _one_blas_thread(), np.errstate(all="ignore"):  # failed trial steps are caught, not warned about
        return _solve(A, Qraw, k, float(tol), int(max_iter), X0)


def _solve(A, Qraw, k, tol, max_iter, X0) -> SDCPResult:
    Q, lmax = _psd_part(Qraw)
    a = svec(A)

    def result(X, iters, method, message, ok=None):
        X = 0.5 * (X + X.T)
        Z, comp, pinf, dinf, merit = _evaluate(X, a, Q, k)
        conv = merit <= tol if ok is None else ok
        return SDCPResult(X=X, Z=Z, iterations=int(iters), complementarity=comp, primal_infeas=pinf,
                          dual_infeas=dinf, converged=bool(conv), method=method, message=message)

    if k == 0:
        return result(np.zeros((0, 0)), 0, "trivial", "k = 0", ok=True)
    if k == 1:
        alpha, beta = float(A[0, 0]), float(Q[0, 0])
        if alpha >= 0:
            return result(np.zeros((1, 1)), 0, "closed-form", "A ≥ 0: X = 0", ok=True)
        if beta <= 0:
            return result(np.zeros((1, 1)), 0, "closed-form",
                          "A < 0 and B ≤ 0 (after clipping): the QP is unbounded below, no SDCP solution", ok=False)
        return result(np.array([[-alpha / beta]]), 0, "closed-form", "X = max(0, −A/B)", ok=True)
    if float(np.linalg.eigvalsh(A)[0]) >= 0:
        return result(np.zeros((k, k)), 0, "early-exit", "λ_min(A) ≥ 0: X = 0", ok=True)
    if lmax <= 0:
        return result(np.zeros((k, k)), 0, "none",
                      "B ⪯ 0 (zero after PSD clipping) and A has a negative eigenvalue: the QP is unbounded below, "
                      "no SDCP solution", ok=False)

    # normalise: ‖a‖ = 1, λ_max(Q) = 1; X = X'·sa/sq
    sa = float(np.linalg.norm(a))
    an, Qn = a / sa, Q / lmax
    unscale = sa / lmax

    iters = 0
    cand = []  # (merit, X normalised, method, message)
    if X0 is not None:
        Xw = X0 / unscale
        Zw = smat(an + Qn @ svec(Xw), k)
        P, r, Y, W = _face_start(Xw, Zw)
        Xn, steps = _face_newton(an, Qn, k, P, r, Y, W)
        iters += steps
        merit = _evaluate(Xn, an, Qn, k)[4]
        if merit <= tol:
            return result(Xn * unscale, iters, "warm-newton",
                          f"converged: face Newton from X0 (rank {r}, {steps} steps)")
        cand.append((merit, Xn, "warm-newton", f"face Newton from X0 (rank {r})"))

    polished = []

    def polish(X, Z, it):
        """Face Newton from an IPM iterate; records a candidate, True if it converged."""
        try:
            P, r, Y, W = _face_start(X, Z)
            Xp, steps = _face_newton(an, Qn, k, P, r, Y, W)
        except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - defensive
            return False
        merit_p = _evaluate(Xp, an, Qn, k)[4]
        polished.append((merit_p, Xp, steps, f"face Newton polish after IPM iteration {it} (rank {r}, "
                                            f"{steps} steps)"))
        return merit_p <= tol

    Xi, it, msg = _ipm(an, Qn, k, tol, max_iter, polish=polish)
    iters += it
    merit_i = _evaluate(Xi, an, Qn, k)[4]
    cand.append((merit_i, Xi, "ipm", msg))
    if not (polished and polished[-1][0] <= tol):  # final polish from the last IPM point
        polish(Xi, smat(an + Qn @ svec(Xi), k), it)
    iters += sum(p[2] for p in polished)
    for merit_p, Xp, _, pmsg in polished:
        if merit_p <= max(merit_i, tol):
            cand.append((merit_p, Xp, "ipm+newton", f"{msg}; {pmsg}"))
    # prefer the polished point when both converged (exact rank, ⟨X,Z⟩ ≈ 0); else the smallest merit
    conv = [c for c in cand if c[0] <= tol]
    pick = conv[-1] if conv else min(cand, key=lambda c: c[0])
    res = result(pick[1] * unscale, iters, pick[2], pick[3])
    if not res.converged:
        res.message = (f"not converged (best merit {pick[0]:.2e} > tol {tol:.1e}): {pick[3]}; "
                       "returning the best iterate")
    else:
        res.message = "converged: " + pick[3]
    return res
