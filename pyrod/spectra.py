"""Top-k eigenpairs of the Hessian ``H(w)`` or of ``S = P^{-1/2} H P^{-1/2}`` from batched HVPs.

Algorithm
---------
Block LOBPCG for the largest *algebraic* eigenvalues (Knyazev 2001), in the orthonormal-basis form of
Hetmaniuk & Lehoucq (2006) / Duersch et al. (2018), written here on plain torch tensors:

* a block ``X`` of ``b = k + guard`` orthonormal columns (the ``guard = max(2, ceil(k/2))`` extra columns
  speed up convergence when λ_k is close to λ_{k+1}, or inside a cluster); only the first ``k`` must converge;
* each iteration builds the residual block ``R = AX − XΘ`` of the columns that are not yet converged
  (soft locking), orthonormalises it against ``[X, P]`` and itself (projection — twice only when a column lost
  most of its norm — then SVQB with dropping of dependent columns, repeated only when that SVQB was
  ill-conditioned), applies the operator to it **once, as one batched call**, and does a
  Rayleigh–Ritz step on ``[X, R, P]`` (≤ 3b columns);
* ``AX`` and ``AP`` are never recomputed: they are carried as the same small linear combinations as ``X``,
  ``P``; the direction block ``P`` is taken inside the Ritz problem, orthonormal to the new ``X`` by
  construction (the orthogonal complement of the retained Ritz vectors), so ``AP`` stays consistent.

**Cost**: ``b`` HVPs to start, then **at most b HVPs per iteration** (fewer as columns converge and lock),
plus ``k`` HVPs for a final check of the residuals with a freshly computed ``AX`` (the reported residuals are
always true residuals, never the recurrence's). Dense work per iteration is ``O(d·b²)`` plus ``O(b³)``.
For comparison, the reference LOBPCG costs ``4k`` HVPs per iteration.

Warm starts: ``init`` (any number of columns) seeds ``X``; :class:`EigTracker` keeps the whole last block
(guard columns included) between calls, so a slightly moved ``w`` (or ``P``) converges in a few iterations.

Convergence: eigenpair ``(λ_i, u_i)`` has relative residual ``‖A u_i − λ_i u_i‖ / max(|λ_i|, floor)`` with
``floor = 1e-3·‖A‖_est`` (``‖A‖_est`` = largest |Ritz value| seen, including those of the 3b-dimensional
Rayleigh–Ritz problems, hence also an estimate of the most negative end). The floor keeps eigenvalues near
zero from requiring residuals below machine precision; for them the criterion is an absolute one,
``‖r‖ ≤ 1e-3·tol·‖A‖``. Converged means the first ``k`` relative residuals are all ``≤ tol``. Tolerances
below what the dtype can deliver are raised to ``_MIN_TOL[dtype]`` (float32: 5e-5, as round-off in a float32 HVP
leaves residuals of about 1e-6 to 1e-5; float64: 1e-13); the report carries the
tolerance actually used. For a well separated eigenvalue the eigenvalue error is ≈ ``‖r‖²/gap``, far below
``tol``; for clustered ones it is ≤ ``‖r‖``.

Small problems: when ``3·b ≥ dim`` (in particular ``k ≥ dim/3``) the Rayleigh–Ritz basis would be most of the
space, so the operator is formed densely from ``dim`` HVPs (in column chunks) and ``torch.linalg.eigh`` is used
(``method="dense"`` in the report). That is also what ``EigTracker(method="dense")`` forces.

Round-off floor: a fresh ``A X`` check that denies the recurrence's claim of convergence means the carried ``AX``
has drifted below the true residual; when that happens ``_STAGNATION_CLAIMS`` (3) times without the true residual
halving, the solve stops there (seen with float32 HVPs, whose round-off can exceed the 5e-5 floor: a cold solve on a
d = 99k MLP took all 200 iterations before, 15 now), reported as not converged with its true residuals.

Non-convergence is never silent: :class:`EigReport` has ``converged=False`` and the true residuals, and
:class:`EigTracker` emits :class:`EigenConvergenceWarning` (unless ``warn=False``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .host import to_device

__all__ = ["EigReport", "EigenConvergenceWarning", "top_eigs", "hessian_operator", "preconditioner_scale",
           "EigTracker"]

_REL_FLOOR = 1e-3                                              # floor of |λ| in the relative residual, × ‖A‖_est
_MIN_TOL = {torch.float64: 1e-13, torch.float32: 5e-5}        # smallest tolerance each dtype can deliver
_DENSE_CHUNK = 256                                             # columns per matvec call when forming A densely
_STAGNATION_CLAIMS = 3                                         # false convergence claims in a row: round-off floor
_MAX_LEARNED_FLOOR = 1e-2                                      # a stalled residual above this is not learned as a floor


class EigenConvergenceWarning(UserWarning):
    """An eigen-solve stopped before all requested residuals reached the tolerance."""


@dataclass
class EigReport:
    """What an eigen-solve did.

    ``residuals[i] = ‖A u_i − λ_i u_i‖ / max(|λ_i|, floor)`` (true residuals, ``(k,)``), ``converged`` is
    ``all(residuals <= tol)``; ``tol`` is the tolerance actually used; ``method`` is ``"lobpcg"`` or ``"dense"``;
    ``n_hvp`` counts operator columns applied (HVPs); ``iterations`` the Rayleigh–Ritz iterations (0 for dense).
    """

    iterations: int
    n_hvp: int
    residuals: np.ndarray
    converged: bool
    tol: float
    method: str
    block: int = 0          # block size b used by LOBPCG (dim for dense)
    warm: bool = False      # whether a warm start was given
    stalled: bool = False   # stopped at the round-off floor (repeated false convergence claims), not at max_iter

    @property
    def max_residual(self) -> float:
        return float(np.max(self.residuals)) if len(self.residuals) else 0.0


# ----------------------------------------------------------------------------- small helpers
def _sym(G: torch.Tensor) -> torch.Tensor:
    return 0.5 * (G + G.T)


def _eigh_desc(G: torch.Tensor):
    e, Z = torch.linalg.eigh(_sym(G))
    return e.flip(0), Z.flip(1)


def _project_out(V: torch.Tensor, bases) -> torch.Tensor:
    for Q in bases:
        if Q is not None and Q.shape[1] and V.shape[1]:
            V = torch.addmm(V, Q, Q.T @ V, alpha=-1.0)     # V − Q QᵀV without a temporary of V's size
    return V


def _svqb(V: torch.Tensor, drop: float, *, with_cond: bool = False):
    """Orthonormal basis of span(V) by SVQB (Stathopoulos & Wu 2002), dropping near-dependent directions.
    ``with_cond``: also return ``e_min/e_max`` of the kept part of the column-normalised Gram matrix (1 for
    orthonormal columns; its inverse square root bounds how much SVQB amplifies any error already in ``V``)."""
    if V.shape[1] == 0:
        return (V, 1.0) if with_cond else V
    d = torch.linalg.vector_norm(V, dim=0)
    ok = torch.isfinite(d) & (d > 0)
    V = V / d if bool(ok.all()) else V[:, ok] / d[ok]
    if V.shape[1] == 0:
        return (V, 1.0) if with_cond else V
    e, Z = torch.linalg.eigh(_sym(V.T @ V))
    sel = e > drop * e.max()
    out = V @ (Z[:, sel] * e[sel].rsqrt())
    if not with_cond:
        return out
    es = e[sel]
    return out, float(es.min() / es.max())


def _drop_tol(dtype) -> float:
    return 100.0 * torch.finfo(dtype).eps


#: the second projection + SVQB round of :func:`_orthonormalize_against` is skipped when the first round kept at
#: least this fraction of every column's norm and SVQB's Gram matrix had at least this condition ratio: the
#: components along ``bases`` left after two projections (≈ eps·‖v‖ / kept fraction) are then amplified at most
#: ``ratio^-1/2`` = 10× by SVQB, so orthogonality stays within ~100·eps (the second round would not change it)
_ORTH_SKIP_KEPT, _ORTH_SKIP_COND = 0.1, 1e-2
_TWICE_IS_ENOUGH = 1.0 / math.sqrt(2.0)


def _orthonormalize_against(V: torch.Tensor, bases, dtype) -> torch.Tensor:
    """Orthonormal basis of the part of span(V) orthogonal to the orthonormal ``bases``: one projection (two when a
    column lost most of its norm), SVQB, and (only when that round was ill-conditioned, see ``_ORTH_SKIP_*``) a
    second projection + SVQB."""
    if V.shape[1] == 0:
        return V
    n0 = torch.linalg.vector_norm(V, dim=0)
    V = _project_out(V, bases)
    n1 = torch.linalg.vector_norm(V, dim=0)
    # "twice is enough" (Kahan–Parlett): a second projection only when some column lost more than 1 − 1/√2 of
    # its norm in the first (otherwise one pass already leaves components along ``bases`` of O(eps)·‖v‖)
    if not bool((n1 >= _TWICE_IS_ENOUGH * n0).all()):
        V = _project_out(V, bases)
        n1 = torch.linalg.vector_norm(V, dim=0)
    # a column that (numerically) lay in span(bases) is noise: drop it
    keep = n1 > math.sqrt(torch.finfo(dtype).eps) * n0
    if bool(keep.all()):
        kept = float((n1 / n0).min())
    else:
        kept = float((n1[keep] / n0[keep]).min()) if bool(keep.any()) else 1.0
        V = V[:, keep]
    V, cond = _svqb(V, _drop_tol(dtype), with_cond=True)
    if kept >= _ORTH_SKIP_KEPT and cond >= _ORTH_SKIP_COND:
        return V
    V = _project_out(V, bases)
    return _svqb(V, _drop_tol(dtype))


def _check_k(k, dim):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k={k!r} must be an int")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (number of eigenpairs requested)")
    if k > dim:
        raise ValueError(f"k={k} exceeds the operator dimension dim={dim}")


def _check_out(AX, dim, b):
    if not isinstance(AX, torch.Tensor) or tuple(AX.shape) != (dim, b):
        raise ValueError(f"matvec returned {getattr(AX, 'shape', type(AX).__name__)} for a ({dim}, {b}) block; "
                         f"expected shape ({dim}, {b})")


def _default_block(k: int) -> int:
    return k + max(2, math.ceil(k / 2))


def _rel_residuals(AX, X, theta, anorm, dtype, *, with_block: bool = False):
    """Relative residuals (see the module docstring); ``with_block``: also the residual block ``AX − XΘ``."""
    Rb = torch.addcmul(AX, X, theta, value=-1.0)
    floor = max(_REL_FLOOR * anorm, torch.finfo(dtype).tiny)
    rel = torch.linalg.vector_norm(Rb, dim=0) / theta.abs().clamp_min(floor)
    return (rel, Rb) if with_block else rel


# ----------------------------------------------------------------------------- dense fallback
def _dense(matvec, dim, k, dtype, device, tol, warm):
    eye = torch.eye(dim, dtype=dtype, device=device)
    cols = [matvec(eye[:, i:i + _DENSE_CHUNK]) for i in range(0, dim, _DENSE_CHUNK)]
    for c, i in zip(cols, range(0, dim, _DENSE_CHUNK), strict=False):
        _check_out(c, dim, min(_DENSE_CHUNK, dim - i))
    A = _sym(torch.cat(cols, dim=1))
    if not bool(torch.isfinite(A).all()):
        return _nonfinite(dim, k, dtype, device, dim, 0, tol, "dense", dim, warm)
    e, V = _eigh_desc(A)
    anorm = float(e.abs().max())
    evals, evecs = e[:k].clone(), V[:, :k].clone()
    res = _rel_residuals(A @ evecs, evecs, evals, anorm, dtype).cpu().numpy()
    return evals, evecs, EigReport(0, dim, res, bool(np.all(res <= tol)), tol, "dense", dim, warm)


def _nonfinite(dim, k, dtype, device, n_hvp, it, tol, method, b, warm):
    nan = torch.full((k,), math.nan, dtype=dtype, device=device)
    V = torch.full((dim, k), math.nan, dtype=dtype, device=device)
    return nan, V, EigReport(it, n_hvp, np.full(k, np.nan), False, tol, method, b, warm)


# ----------------------------------------------------------------------------- LOBPCG
def _lobpcg(matvec, dim, k, b, dtype, device, init, tol, max_iter, seed):
    """Returns (theta (b,), X (dim, b), report, finite). Only the first k columns are converged."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    warm = init is not None and init.shape[1] > 0

    def randn(m):
        return torch.randn(dim, m, generator=gen, dtype=dtype, device=device)

    # --- starting block: the warm columns first, random columns to fill; orthonormal
    X = randn(b)
    if warm:
        j = min(init.shape[1], b)
        X[:, :j] = init[:, :j]
    X = _svqb(_svqb(X, _drop_tol(dtype)), _drop_tol(dtype))
    for _ in range(5):
        if X.shape[1] >= b:
            break
        X = torch.cat([X, _orthonormalize_against(randn(b - X.shape[1]), [X], dtype)], dim=1)
    X = X[:, :b]
    b = X.shape[1]

    AX = matvec(X)
    n_hvp = b
    _check_out(AX, dim, b)
    if not bool(torch.isfinite(AX).all()):
        return None, None, EigReport(0, n_hvp, np.full(k, np.nan), False, tol, "lobpcg", b, warm), False
    theta, Z = _eigh_desc(X.T @ AX)
    X, AX = X @ Z, AX @ Z
    anorm = float(theta.abs().max())
    fresh = True                     # AX[:, :k] is A X[:, :k] computed directly (not by the recurrence)
    pending = None                   # (S, AS, T Zc, W) to build P lazily once the active set is known
    P = AP = None
    it = 0
    converged = False
    checked = False                  # rel below is the true residual right after a fresh check
    false_claims, last_true = 0, math.inf
    stalled = False
    while True:
        rel, Rb = _rel_residuals(AX, X, theta, anorm, dtype, with_block=True)
        if checked:
            checked = False
            r_true = float(rel[:k].max())
            if r_true > tol:
                # the recurrence claimed convergence that the fresh A X denies: its residual has drifted below the
                # true one. When that happens _STAGNATION_CLAIMS times without the true residual halving, the
                # iteration sits at its round-off floor: stop (reported as not converged, with the true residuals)
                false_claims = false_claims + 1 if r_true > 0.5 * last_true else 0
                last_true = min(last_true, r_true)
                if false_claims >= _STAGNATION_CLAIMS:
                    max_iter = it
                    stalled = True
        if bool((rel[:k] <= tol).all()) or it >= max_iter:
            if not fresh:            # check with a fresh A X before believing (or reporting) the recurrence
                AXk = matvec(X[:, :k])
                n_hvp += k
                if not bool(torch.isfinite(AXk).all()):
                    return None, None, EigReport(it, n_hvp, np.full(k, np.nan), False, tol, "lobpcg", b, warm), False
                AX = torch.cat([AXk, AX[:, k:]], dim=1)
                theta = torch.cat([(X[:, :k] * AXk).sum(0), theta[k:]])
                fresh = True
                checked = True
                continue
            converged = bool((rel[:k] <= tol).all())
            break
        it += 1
        active = rel > tol
        # --- direction block P from the previous Rayleigh–Ritz problem, for the still-active columns
        if pending is not None:
            S, AS, TZc, W = pending
            W = W[:, active]
            P = AP = None
            if W.shape[1] and W.shape[0]:
                U, s, _ = torch.linalg.svd(W, full_matrices=False)
                keep = s > _drop_tol(dtype)
                if bool(keep.any()):
                    Q = TZc @ U[:, keep]
                    P, AP = S @ Q, AS @ Q
            pending = None
        # --- residual block of the active columns, orthonormal to [X, P]
        R = _orthonormalize_against(Rb if bool(active.all()) else Rb[:, active], [X, P], dtype)
        if R.shape[1] == 0:          # no new direction: stagnation (reported as not converged if so)
            max_iter = it
            continue
        AR = matvec(R)
        n_hvp += R.shape[1]
        fresh = False
        if not bool(torch.isfinite(AR).all()):
            return None, None, EigReport(it, n_hvp, np.full(k, np.nan), False, tol, "lobpcg", b, warm), False
        parts = [X, R] + ([P] if P is not None else [])
        aparts = [AX, AR] + ([AP] if AP is not None else [])
        S, AS = torch.cat(parts, dim=1), torch.cat(aparts, dim=1)
        # --- Rayleigh–Ritz on span(S). S is orthonormal up to round-off; whiten by the Cholesky factor of
        # SᵀS (upper-triangular T keeps the first b columns spanning X exactly).
        M = _sym(S.T @ S)
        L, info = torch.linalg.cholesky_ex(M)
        if int(info) != 0:           # should not happen (R is orthonormalised); rebuild S without P
            S, AS = torch.cat([X, R], dim=1), torch.cat([AX, AR], dim=1)
            L = torch.linalg.cholesky(_sym(S.T @ S))
        m = S.shape[1]
        T = torch.linalg.solve_triangular(L.T, torch.eye(m, dtype=dtype, device=device), upper=True)
        G = T.T @ _sym(S.T @ AS) @ T
        th_all, Z = _eigh_desc(G)
        anorm = max(anorm, float(th_all.abs().max()))
        C = T @ Z[:, :b]
        X, AX, theta = S @ C, AS @ C, th_all[:b]
        # complement of the kept Ritz vectors, and the old-X components of the new ones in it
        pending = (S, AS, T @ Z[:, b:], Z[:b, b:].T @ Z[:b, :b])
        if int(info) != 0:
            P = AP = None
    # sort the first k (fresh Rayleigh quotients may swap nearly equal neighbours)
    order = torch.argsort(theta[:k], descending=True)
    theta = torch.cat([theta[:k][order], theta[k:]])
    X = torch.cat([X[:, :k][:, order], X[:, k:]], dim=1)
    rel = rel[:k][order]
    rep = EigReport(it, n_hvp, rel.detach().cpu().numpy(), converged, tol, "lobpcg", b, warm,
                    stalled=stalled and not converged)
    return theta, X, rep, True


def _as_init(init, dim: int, dtype, device):
    """A warm start as a ``(dim, j)`` tensor of ``dtype`` on ``device`` (``(dim,)`` is one column), or None for
    None or a non-finite one. TypeError / ValueError naming a wrong type or shape."""
    if init is None:
        return None
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"init must be a torch.Tensor, got {type(init).__name__}")
    if init.ndim == 1:
        init = init[:, None]
    if init.ndim != 2 or init.shape[0] != dim:
        raise ValueError(f"init has shape {tuple(init.shape)}, expected ({dim}, j)")
    init = init.detach().to(dtype=dtype, device=device)
    return init if bool(torch.isfinite(init).all()) else None


def _solve(matvec, dim, k, *, dtype, device, init, tol, max_iter, block, seed, method="lobpcg"):
    dim = int(dim)
    _check_k(k, dim)
    k = int(k)
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol={tol!r} must be a positive finite number")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter={max_iter!r} must be a non-negative int")
    if dtype not in _MIN_TOL:
        raise ValueError(f"dtype={dtype!r}: expected torch.float32 or torch.float64")
    device = torch.device(device)
    tol_eff = max(float(tol), _MIN_TOL[dtype])
    b = _default_block(k) if block is None else int(block)
    if b < k:
        raise ValueError(f"block={block} must be >= k={k}")
    b = min(b, dim)
    init = _as_init(init, dim, dtype, device)
    warm = init is not None and init.shape[1] > 0
    if method == "dense" or 3 * b >= dim:
        ev, V, rep = _dense(matvec, dim, k, dtype, device, tol_eff, warm)
        return ev, V, rep, V
    if method != "lobpcg":
        raise ValueError(f"method={method!r}: expected 'lobpcg' or 'dense'")
    theta, X, rep, ok = _lobpcg(matvec, dim, k, b, dtype, device, init, tol_eff, max_iter, seed)
    if not ok:
        ev, V, _ = _nonfinite(dim, k, dtype, device, rep.n_hvp, rep.iterations, tol_eff, "lobpcg", b, warm)
        return ev, V, rep, None
    return theta[:k].clone(), X[:, :k].clone(), rep, X


def top_eigs(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, *, dtype, device, init=None,
             tol: float = 1e-8, max_iter: int = 200, block: int | None = None, seed: int = 0):
    """The ``k`` largest (algebraic) eigenpairs of the symmetric operator ``matvec: (dim, b) -> (dim, b)``.

    Parameters
    ----------
    init : optional ``(dim, j)`` warm start (any ``j``; the first ``min(j, block)`` columns are used, random
        columns fill the rest).
    tol : relative residual tolerance (see the module docstring); raised to the dtype's floor if smaller.
    max_iter : LOBPCG iterations (each costs at most ``block`` HVPs).
    block : block size ``b ≥ k`` (default ``k + max(2, ceil(k/2))``).
    seed : seeds the random filler columns (results are deterministic).

    Returns ``(evals (k,) descending, evecs (dim, k) orthonormal, EigReport)``. When ``3·block ≥ dim`` the
    operator is formed densely (``dim`` HVPs) and diagonalised with ``torch.linalg.eigh``.
    Raises ValueError for ``k < 1`` or ``k > dim``. Non-finite operator output gives NaN results and
    ``converged=False``.
    """
    ev, V, rep, _ = _solve(matvec, dim, k, dtype=dtype, device=device, init=init, tol=tol, max_iter=max_iter,
                           block=block, seed=seed)
    return ev, V, rep


# ----------------------------------------------------------------------------- the Hessian operators
def preconditioner_scale(P, dim: int, dtype, device) -> torch.Tensor | None:
    """``P^{-1/2}`` as a ``(dim, 1)`` or ``(1, 1)`` tensor (broadcasts over a ``(dim, b)`` block); None for None.

    ``P`` is a positive tensor of shape ``(dim,)``, ``(1,)`` or ``()`` (a Python number is accepted too).
    """
    if P is None:
        return None
    if not isinstance(P, torch.Tensor):
        P = torch.as_tensor(P, dtype=dtype)
    P = P.detach().to(dtype=dtype, device=device)
    if P.ndim == 0:
        P = P.reshape(1)
    if P.ndim != 1 or P.shape[0] not in (1, dim):
        raise ValueError(f"P has shape {tuple(P.shape)}, expected ({dim},), (1,) or ()")
    if not bool(torch.isfinite(P).all()) or not bool((P > 0).all()):
        raise ValueError("P must be positive and finite (a diagonal preconditioner)")
    return P.rsqrt()[:, None]


def hessian_operator(problem, w: torch.Tensor, P=None, *, chunk: int | None = None):
    """``matvec(V) = S V`` with ``S = P^{-1/2} H(w) P^{-1/2}`` (``H(w)`` when ``P`` is None).

    ``V`` is ``(d, b)`` (one batched ``problem.hvp`` call, or ``ceil(b/chunk)`` calls when ``chunk`` is given) or
    ``(d,)``. ``P`` is a positive diagonal: ``(d,)``, ``(1,)`` or a scalar. The returned callable carries
    ``dim``, ``dtype``, ``device`` attributes.
    """
    w = problem.check_vector(w, "w")
    d = problem.dim
    s = preconditioner_scale(P, d, problem.dtype, problem.device)

    def hv(V):
        if chunk is None or V.shape[1] <= chunk:
            return problem.hvp(w, V)
        return torch.cat([problem.hvp(w, V[:, i:i + chunk]) for i in range(0, V.shape[1], chunk)], dim=1)

    def matvec(V: torch.Tensor) -> torch.Tensor:
        one = V.ndim == 1
        if one:
            V = V[:, None]
        out = hv(V) if s is None else s * hv(s * V)
        return out[:, 0] if one else out

    matvec.dim, matvec.dtype, matvec.device = d, problem.dtype, problem.device
    return matvec


# ----------------------------------------------------------------------------- the tracker
class EigTracker:
    """Top-``k`` eigenpairs of ``S = P^{-1/2} H(w) P^{-1/2}`` along a trajectory, warm-started.

    Holds the last LOBPCG block (the ``k`` eigenvectors and the guard vectors) and uses it as the next start;
    eigenvector signs are aligned with the previous call's. ``k`` may be changed between calls (the warm block
    is truncated or topped up with random columns). ``method="dense"`` forces dense ``eigh`` (small problems,
    debugging). When a solve stops at the operator's round-off floor (``EigReport.stalled``, residual below
    ``_MAX_LEARNED_FLOOR``), ``floor`` becomes 1.5× the residual it reached and later calls use ``max(tol, floor)``
    (reported as their ``tol``). ``last_report`` holds the last :class:`EigReport`; ``n_hvp`` the total HVPs spent.
    """

    def __init__(self, k: int, *, tol: float = 1e-8, max_iter: int = 200, method: str = "lobpcg",
                 warn: bool = True, block: int | None = None, seed: int = 0):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k={k!r} must be an int")
        if k < 1:
            raise ValueError(f"k={k} must be >= 1 (number of eigenpairs to track)")
        if method not in ("lobpcg", "dense"):
            raise ValueError(f"method={method!r}: expected 'lobpcg' or 'dense'")
        self.k, self.tol, self.max_iter, self.method, self.warn = int(k), tol, max_iter, method, warn
        self.block, self.seed = block, seed
        self.reset()

    def reset(self):
        """Forget the warm start."""
        self._block = None
        self._prev = None
        self.floor = 0.0           # round-off floor learned from a stalled solve (see __call__)
        self.last_report: EigReport | None = None
        self.n_hvp = 0
        self.calls = 0

    def state_dict(self) -> dict:
        """Everything that affects the next call: the warm block, the previous eigenvectors (sign alignment),
        the call count (it seeds the random filler columns) and the HVP total. Tensors are not copied."""
        return {"block": self._block, "prev": self._prev, "calls": int(self.calls), "n_hvp": int(self.n_hvp),
                "floor": float(self.floor)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (the next call is then bit-identical to the uninterrupted tracker's)."""
        self._block, self._prev = state["block"], state["prev"]
        self.calls, self.n_hvp = int(state["calls"]), int(state["n_hvp"])
        self.floor = float(state.get("floor", 0.0))

    def __call__(self, problem, w: torch.Tensor, P=None, init=None):
        """``(evals (k,) descending, evecs (d, k) orthonormal eigenvectors of S, EigReport)``.

        ``init``: optional ``(d, j)`` vectors of ``S`` known to be good at this ``w`` (e.g. a flow's own tracked
        eigenvectors, in the coordinates of ``S``); they start the block ahead of the tracker's own warm block."""
        op = hessian_operator(problem, w, P)
        d, dt, dev = problem.dim, problem.dtype, problem.device
        own = self._block
        if own is not None and (own.shape[0] != d or own.dtype != dt or own.device != dev):
            own = None
        init = _as_init(init, d, dt, dev)
        if init is None:
            init = own
        elif own is not None:
            init = torch.cat([init, own], dim=1)
        block = self.block if self.block is not None else _default_block(self.k)
        ev, V, rep, X = _solve(op, d, self.k, dtype=dt, device=dev, init=init, tol=max(self.tol, self.floor),
                               max_iter=self.max_iter, block=max(block, self.k), seed=self.seed + self.calls,
                               method=self.method)
        self.calls += 1
        self.n_hvp += rep.n_hvp
        self.last_report = rep
        if rep.stalled and rep.max_residual < _MAX_LEARNED_FLOOR:
            # the operator cannot deliver ``tol`` here (round-off, e.g. float32 HVPs of a large model): later calls
            # ask for 1.5× the residual this one reached, so they stop at convergence instead of stalling each time
            # (their reports carry that tolerance); the warning below is given once, for this call
            self.floor = max(self.floor, 1.5 * rep.max_residual)
        if X is not None and bool(torch.isfinite(V).all()):
            prev = self._prev
            if prev is not None and prev.shape == V.shape and prev.dtype == V.dtype and prev.device == V.device:
                sgn = torch.where((prev * V).sum(0) < 0, -1.0, 1.0).to(V.dtype)
                V = V * sgn
                X = torch.cat([X[:, :self.k] * sgn, X[:, self.k:]], dim=1)
            self._block = X if X.shape[1] < d else None   # a full dense basis is no useful warm start
            self._prev = V
        if not rep.converged and self.warn:
            warnings.warn(
                f"top-{self.k} eigenpairs ({rep.method}) did not converge in {rep.iterations} iterations "
                f"({rep.n_hvp} HVPs): max relative residual {rep.max_residual:.3e} > tol {rep.tol:.1e}; "
                f"residuals={np.array2string(rep.residuals, precision=2)}",
                EigenConvergenceWarning, stacklevel=2)
        return ev, V, rep

    def adopt(self, evecs: torch.Tensor, evals, residuals):
        """Take known eigenpairs at this point as the result of a call, without a solve, when they meet the
        tolerance: ``evecs`` ``(d, j)`` orthonormal eigenvector approximations of ``S`` (e.g. a flow's Ritz vectors),
        ``evals`` and ``residuals`` their Ritz values and true relative residuals (host, ``(j,)``, descending).
        When ``j ≥ k`` and the first ``k`` residuals are ``≤ max(tol, floor)`` — where a LOBPCG started from
        these vectors would stop before its first iteration — the tracker records them as its last result (warm
        block, sign alignment, call count) and returns ``(evals (k,), evecs (d, k), EigReport(method="known"))``;
        else None (the caller solves). No HVPs either way."""
        evals = np.asarray(evals, dtype=np.float64)
        res = np.asarray(residuals, dtype=np.float64)
        tol = max(self.tol, self.floor)
        k = self.k
        if evecs.ndim != 2 or evecs.shape[1] < k or evals.size < k or res.size < k or self.method == "dense" \
                or not (np.all(np.isfinite(evals[:k])) and np.all(res[:k] <= tol)) \
                or np.any(np.diff(evals[:k]) > 0):
            return None
        V = evecs[:, :k]
        prev = self._prev
        if prev is not None and prev.shape == V.shape and prev.dtype == V.dtype and prev.device == V.device:
            V = V * torch.where((prev * V).sum(0) < 0, -1.0, 1.0).to(V.dtype)
        self._block = torch.cat([V, evecs[:, k:]], dim=1)
        self._prev = V
        self.calls += 1
        rep = EigReport(0, 0, res[:k].copy(), True, tol, "known", evecs.shape[1], True)
        self.last_report = rep
        return to_device(evals[:k], V), V, rep

    @staticmethod
    def generalized(evecs: torch.Tensor, P) -> torch.Tensor:
        """``U = P^{-1/2} V``: right eigenvectors of ``P^{-1} H`` (same eigenvalues), normalised so ``UᵀPU = I``."""
        if P is None:
            return evecs
        s = preconditioner_scale(P, evecs.shape[0], evecs.dtype, evecs.device)
        return s * evecs if evecs.ndim == 2 else (s[:, 0] * evecs)
