"""Top-k eigenpairs of the Hessian ``H(w)`` or of ``S = P^{-1/2} H P^{-1/2}`` from batched HVPs.

Algorithm
---------
Block LOBPCG for the largest *algebraic* eigenvalues (Knyazev 2001), in the orthonormal-basis form of
Hetmaniuk & Lehoucq (2006) / Duersch et al. (2018), written here on plain torch tensors:

* a block ``X`` of ``b = k + guard`` orthonormal columns (the ``guard = max(2, ceil(k/2))`` extra columns
  speed up convergence when λ_k is close to λ_{k+1}, or inside a cluster); only the first ``k`` must converge;
* each iteration takes the residual block ``R = AX − XΘ`` of the columns that are not yet converged
  (soft locking), orthonormalises it against ``[X, P]`` and itself, applies the operator to it **once, as one
  batched call**, and does a Rayleigh–Ritz step on ``[X, R, P]`` (≤ 3b columns);
* ``AX`` and ``AP`` are never recomputed: they are carried as the same small linear combinations as ``X``,
  ``P``; the direction block ``P`` is taken inside the Ritz problem, orthonormal to the new ``X`` by
  construction (the orthogonal complement of the retained Ritz vectors), so ``AP`` stays consistent.

**Cost**: ``b`` HVPs to start (fewer when ``init_AX`` gives the operator's products for warm columns), then **at
most b HVPs per iteration** (fewer as columns converge and lock), plus ``k`` HVPs for each check of the residuals
with a freshly computed ``AX`` (the reported residuals are always true residuals, never the recurrence's). Dense
work per iteration is ``O(d·b²)`` on the device plus ``O(b³)`` on the host. For comparison, the reference LOBPCG
costs ``4k`` HVPs per iteration.

Device and host
---------------
Everything of size ``d`` stays on the operator's device; it only ever computes tall-skinny products (``d×m`` by
``m×m``), Gram matrices and column norms. Every decision and every small dense factorisation (Cholesky, ``eigh``,
SVD, the Rayleigh–Ritz problem, SVQB, the choice of active columns, convergence) is made on the host in float64
NumPy, from small matrices that cross in **one device→host transfer per iteration** (:func:`_to_host`, the only
place the solver synchronises a GPU; tests count its calls and the CUDA test allows synchronisation nowhere else);
coefficient matrices go back as one host→device copy (pinned memory, non-blocking). A call makes ``iterations +
2 + checks`` transfers (``EigReport.n_host``): one to choose the start block, one per Rayleigh–Ritz step (the start
block's included), one per residual check. To need only one transfer per iteration the iteration is ordered so:

1. after the batched HVP of the new directions ``V``, the device has the basis ``S = [X, P, V]``, ``AS``, and forms
   ``M = SᵀS``, ``G = SᵀAS``, ``Y = AS − S G`` and ``YᵀY``, and sends ``(M, G, YᵀY)``;
2. the host whitens ``S`` with ``M`` (block upper-triangular, so the first ``b`` whitened vectors span ``X``: a
   Cholesky factor of ``M_XX``, then SVQB of the Schur complement of ``[P, V]`` with dropping of dependent
   directions), solves the Ritz problem (coefficients ``C``), and *predicts the residual block of the new Ritz
   vectors* ``R = AS C − S C Θ = Y C + S Z`` (``Z = GC − CΘ``): its Gram matrix
   ``CᵀYᵀYC + CᵀKᵀZ + ZᵀKC + ZᵀMZ`` (``K = SᵀY = G − MG``) gives the residual norms that decide convergence and
   the active columns, and the SVQB coefficients that orthonormalise the active residuals; it also builds the
   coefficients of the next ``P``;
3. the device forms the next basis ``[X, P, V]`` (``X = SC``, ``P``, the orthonormalised active residuals ``V``)
   in one product and its image ``[AX, AP, ·]`` in another, projects ``V`` once against ``[X, P]`` in place and
   writes ``AV`` (one batched operator call) into the image, with no concatenation.

``Y = AS − SG`` is what makes step 2 accurate: the residual norms are not computed by the cancellation-prone
``‖ASc‖² − 2θ cᵀSᵀASc + θ²`` but from a block whose columns are already the parts of ``AS`` outside ``span(S)``;
a converging Ritz vector is mostly ``X``, whose columns of ``Y`` are at round-off level, so the error of a predicted
norm is about ``eps·(‖A‖/gap)`` relative. The predictions only steer (claims of convergence and the active set):
a claim is always checked with freshly computed true residuals, and the orthonormalisation they give is refined
by the next whitening with the exact ``M`` (Cholesky-QR done twice, the second time with the basis the Ritz
problem uses), so their errors cost at most an iteration, never accuracy.

Differences from the previous form, which decided on the device (same iterations and HVPs, eigenvalues equal to
round-off, measured in ``benchmarks/eig_solves.py``): the residual block is projected against ``[X, P]`` once, with
no "twice is enough" test (that decision needed a transfer; a Galerkin residual is orthogonal to ``span(S)`` up to
round-off, and what one projection leaves is removed exactly by the next whitening), and its second SVQB round
(when the first was ill-conditioned) is that whitening too; a dependent direction is dropped from the whitening
instead of rebuilding the basis without ``P``; the start block takes the warm columns in order, skipping any that
adds no new direction (dependent, zero or non-finite), and fills up with random columns; a residual check also
verifies that the first ``k`` columns are orthonormal to ``max(1e3, 10·sqrt(dim))·eps`` (the ``sqrt(dim)`` term
allows for the round-off of a float32 Gram matrix over millions of rows; else the iteration goes on: the next
whitening restores orthonormality).

Warm starts: ``init`` (any number of columns) seeds ``X``; ``init_AX`` (optional, ``A·init`` for its first
columns, computed by the same operator) saves those HVPs. :class:`EigTracker` keeps the whole last block (guard
columns included) between calls, so a slightly moved ``w`` (or ``P``) converges in a few iterations.

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
space, so the operator is formed densely from ``dim`` HVPs (in column chunks), copied to the host once and
diagonalised there in float64 (``method="dense"`` in the report). That is also what ``EigTracker(method="dense")``
forces.

Round-off floor: a fresh ``A X`` check that denies the recurrence's claim of convergence means the carried ``AX``
has drifted below the true residual; when that happens ``_STAGNATION_CLAIMS`` (3) times without the true residual
halving, the solve stops there (seen with float32 HVPs, whose round-off can exceed the 5e-5 floor: a cold solve on a
d = 99k MLP took all 200 iterations before, 15 now), reported as not converged with its true residuals.

Non-convergence is never silent: :class:`EigReport` has ``converged=False`` and the true residuals, and
:class:`EigTracker` emits :class:`EigenConvergenceWarning` (unless ``warn=False``).

Why one module of ~830 lines: LOBPCG, its stopping rules (round-off floor, stall) and the tracker that
warm-starts it are one algorithm whose pieces share the same small-algebra helpers and report type; split, each
part would import the others' internals.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.linalg import solve_triangular

from . import host
from .columns import as_columns, cat_columns, mm_columns, take_columns

__all__ = ["EigReport", "EigenConvergenceWarning", "top_eigs", "hessian_operator", "preconditioner_scale",
           "EigTracker"]

_REL_FLOOR = 1e-3                                              # floor of |λ| in the relative residual, × ‖A‖_est
_MIN_TOL = {torch.float64: 1e-13, torch.float32: 5e-5}        # smallest tolerance each dtype can deliver
_DENSE_CHUNK = 256                                             # columns per matvec call when forming A densely
_STAGNATION_CLAIMS = 3                                         # false convergence claims in a row: round-off floor
_MAX_LEARNED_FLOOR = 1e-2                                      # a stalled residual above this is not learned as a floor
_ORTH_TOL = 1e3                                                # a checked block is orthonormal to this × eps ...
_ORTH_TOL_SQRT_D = 10.0                                        # ... or to this × sqrt(dim) × eps, if larger


class EigenConvergenceWarning(UserWarning):
    """An eigen-solve stopped before all requested residuals reached the tolerance."""


@dataclass
class EigReport:
    """What an eigen-solve did.

    ``residuals[i] = ‖A u_i − λ_i u_i‖ / max(|λ_i|, floor)`` (true residuals, ``(k,)``), ``converged`` is
    ``all(residuals <= tol)``; ``tol`` is the tolerance actually used; ``method`` is ``"lobpcg"`` or ``"dense"``;
    ``n_hvp`` counts operator columns applied (HVPs); ``iterations`` the Rayleigh–Ritz iterations (0 for dense);
    ``n_host`` the device→host transfers (:func:`_to_host` calls: ``iterations + 2 + checks`` for LOBPCG, 1 for
    dense); ``checks`` the residual checks (each with ``k`` fresh HVPs unless ``AX`` was fresh).
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
    n_host: int = 0         # device→host transfers
    checks: int = 0         # residual checks
    #: every Ritz value of the final block (``(b,)``; dense: the whole spectrum): the first ``k`` are the returned
    #: eigenvalues, the rest unconverged Ritz values, each part descending, which (in exact arithmetic) bound the
    #: next eigenvalues from below (``θ_j ≤ λ_j``, Cauchy interlacing); None when the solve failed
    block_values: np.ndarray | None = None

    @property
    def max_residual(self) -> float:
        return float(np.max(self.residuals)) if len(self.residuals) else 0.0

    @property
    def learned_floor(self) -> float | None:
        """The tolerance a later solve of the same operator should ask for when this one stalled at the
        operator's round-off floor (``stalled``, residual below ``_MAX_LEARNED_FLOOR``): 1.5× the residual it
        reached; None otherwise (converged, stopped at ``max_iter``, or a residual too large to be round-off)."""
        if self.stalled and self.max_residual < _MAX_LEARNED_FLOOR:
            return 1.5 * self.max_residual
        return None


# ----------------------------------------------------------------------------- host ↔ device
#: the solver's only device→host transfer (:func:`pyrod.host.to_host`, bound here so that tests can count and guard
#: the calls made from this module: every synchronisation of a solve goes through it)
_to_host = host.to_host


def _send(arrays, dtype, device) -> list:
    """Several host arrays in one host→device copy, as views of one buffer (same shapes)."""
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    buf = host.to_device(flat, dtype=dtype, device=device)
    out, i = [], 0
    for a in arrays:
        n = int(np.size(a))
        out.append(buf[i:i + n].view(np.shape(a)))
        i += n
    return out


def _finite_cols(V: torch.Tensor) -> torch.Tensor:
    """``V`` with its non-finite columns set to zero (device only; such columns are then dropped as zero)."""
    return torch.where(torch.isfinite(V).all(0), V, 0.0)


# ----------------------------------------------------------------------------- small helpers
def _project_out(V: torch.Tensor, bases) -> torch.Tensor:
    for Q in bases:
        if Q is not None and Q.shape[1] and V.shape[1]:
            V = V - mm_columns(Q, Q.T @ V)       # (faster on the CPU than addmm with beta = 1, measured)
    return V


def _drop_tol(dtype) -> float:
    return 100.0 * torch.finfo(dtype).eps


def _sym_np(A: np.ndarray) -> np.ndarray:
    return 0.5 * (A + A.T)


def _svqb_coeffs(gram: np.ndarray, drop: float, ref=None, min_ratio: float = 0.0):
    """SVQB (Stathopoulos & Wu 2002) from a Gram matrix ``VᵀV`` (``(n, n)``, host float64): ``(N (n, r), cond)``
    with ``(VN)ᵀ(VN) = I``. Columns with zero or non-finite squared norm (or, given ``ref``, one ``≤ min_ratio·ref``)
    are left out; directions of the column-normalised Gram with eigenvalue ``≤ drop·max`` are dropped. ``cond`` is
    ``e_min/e_max`` of the kept part (1 for orthonormal columns; its inverse square root bounds how much SVQB
    amplifies any error already in ``V``)."""
    n = gram.shape[0]
    g = np.diag(gram).copy()
    ok = np.isfinite(g) & (g > 0)
    if ref is not None:
        ok &= g > min_ratio * np.asarray(ref)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return np.zeros((n, 0)), 1.0
    d = 1.0 / np.sqrt(g[idx])
    e, Z = np.linalg.eigh(_sym_np(gram[np.ix_(idx, idx)] * d[:, None] * d[None, :]))
    sel = e > drop * e[-1]
    N = np.zeros((n, int(sel.sum())))
    N[idx] = (Z[:, sel] / np.sqrt(e[sel])) * d[:, None]
    return N, float(e[sel][0] / e[-1])


def _svqb(V: torch.Tensor, drop: float, *, with_cond: bool = False):
    """Orthonormal basis of span(V) by SVQB, dropping near-dependent directions (one transfer: the Gram matrix).
    ``with_cond``: also return ``cond`` of :func:`_svqb_coeffs`."""
    if V.shape[1] == 0:
        return (V, 1.0) if with_cond else V
    V = _finite_cols(V)
    N, cond = _svqb_coeffs(_to_host(V.T @ V), drop)
    out = mm_columns(V, host.to_device(N, V))
    return (out, cond) if with_cond else out


#: the second projection + SVQB round of :func:`_orthonormalize_against` is skipped when the first round kept at
#: least this fraction of every column's norm and SVQB's Gram matrix had at least this condition ratio: the
#: components along ``bases`` left after two projections (≈ eps·‖v‖ / kept fraction) are then amplified at most
#: ``ratio^-1/2`` = 10× by SVQB, so orthogonality stays within ~100·eps (the second round would not change it)
_ORTH_SKIP_KEPT, _ORTH_SKIP_COND = 0.1, 1e-2


def _orthonormalize_against(V: torch.Tensor, bases, dtype) -> torch.Tensor:
    """Orthonormal basis of the part of span(V) orthogonal to the orthonormal ``bases``: two projections (always:
    deciding whether the second is needed would cost a transfer), SVQB from the Gram matrix sent with the norms
    before projection (one transfer), and — only when that round was ill-conditioned, see ``_ORTH_SKIP_*`` — a
    second projection + SVQB (a second transfer). Columns that (numerically) lay in span(bases) are dropped."""
    if V.shape[1] == 0:
        return V
    V = _finite_cols(V)
    n0 = torch.linalg.vector_norm(V, dim=0)
    V = _project_out(_project_out(V, bases), bases)
    h = _to_host(torch.cat([n0[None, :], V.T @ V]))
    n0, gram = h[0], h[1:]
    eps = torch.finfo(dtype).eps
    n1 = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    keep = n1 > math.sqrt(eps) * n0
    kept = float((n1[keep] / n0[keep]).min()) if keep.any() else 1.0
    N, cond = _svqb_coeffs(gram, _drop_tol(dtype), ref=n0 ** 2, min_ratio=eps)
    V = mm_columns(V, host.to_device(N, V))
    if kept >= _ORTH_SKIP_KEPT and cond >= _ORTH_SKIP_COND:
        return V
    return _svqb(_project_out(V, bases), _drop_tol(dtype))


def _greedy_basis(gram: np.ndarray, b: int, drop: float):
    """The start block from candidate columns ``V`` (their Gram matrix, host float64): columns taken in order while
    each adds a new direction (squared norm left after removing the kept ones ``> drop ×`` its own; zero or
    non-finite columns are skipped), at most ``b``. Returns ``(idx, N)``: ``V[:, idx] @ N`` is orthonormal
    (``N = R⁻¹``, ``R`` the Cholesky factor of the kept columns' Gram matrix)."""
    idx: list[int] = []
    R = np.zeros((0, 0))
    for j in range(gram.shape[0]):
        gjj = gram[j, j]
        col = gram[idx, j]
        if not (np.isfinite(gjj) and gjj > 0 and np.all(np.isfinite(col))):
            continue
        r = solve_triangular(R, col, trans="T", lower=False) if idx else np.zeros(0)
        rem = gjj - float(r @ r)
        if not rem > drop * gjj:
            continue
        n = len(idx)
        R2 = np.zeros((n + 1, n + 1))
        R2[:n, :n], R2[:n, n], R2[n, n] = R, r, math.sqrt(rem)
        R = R2
        idx.append(j)
        if len(idx) == b:
            break
    N = solve_triangular(R, np.eye(len(idx)), lower=False) if idx else np.zeros((0, 0))
    return idx, N


def _rayleigh_ritz(M: np.ndarray, G: np.ndarray, YY: np.ndarray, b: int, drop: float, eps: float):
    """The host part of an iteration (float64): Rayleigh–Ritz on ``span(S)``, ``S = [X (b columns), rest]``, from
    ``M = SᵀS``, ``G = SᵀAS`` and ``YᵀY`` (``Y = AS − S G``), all as computed on the device.

    Whitening ``T`` (``(SΤ)ᵀ(ST) = I``) is block upper triangular: ``L⁻ᵀ`` for ``M_XX = LLᵀ`` (so the first ``b``
    whitened vectors span ``X``), then SVQB of the Schur complement of the rest (its columns that lost all but
    ``sqrt(eps)`` of their norm to ``X``, and dependent directions, are dropped). Returns ``(theta (b,) descending,
    C (m, b) with X_new = S C, Gr (b, b) the predicted Gram matrix of the residual block AS C − S C Θ, pend, anorm)``
    where ``pend = (T Z_c, W)`` builds the next direction block (None when the basis has no complement) and
    ``anorm`` is the largest |Ritz value| of the whole problem."""
    m = M.shape[0]
    Ms = _sym_np(M)
    try:
        T11 = solve_triangular(np.linalg.cholesky(Ms[:b, :b]), np.eye(b), lower=True).T
    except np.linalg.LinAlgError:            # X numerically dependent (should not happen): whiten it by eigh
        e, Z = np.linalg.eigh(Ms[:b, :b])
        T11 = Z / np.sqrt(np.maximum(e, eps * max(float(e[-1]), np.finfo(float).tiny)))
    if m > b:
        F = -(T11 @ (T11.T @ Ms[:b, b:]))                         # −M_XX⁻¹ M_X,rest
        schur = Ms[b:, b:] + Ms[:b, b:].T @ F
        N2, _ = _svqb_coeffs(schur, drop, ref=np.diag(Ms[b:, b:]), min_ratio=eps)
        T = np.zeros((m, b + N2.shape[1]))
        T[:b, :b], T[:b, b:], T[b:, b:] = T11, F @ N2, N2
    else:
        T = T11
    th, Z = np.linalg.eigh(_sym_np(T.T @ _sym_np(G) @ T))
    th, Z = th[::-1], Z[:, ::-1]
    C = T @ Z[:, :b]
    theta = th[:b].copy()
    # predicted residual block R = AS C − S C Θ = Y C + S Zr, with Zr = G C − C Θ and SᵀY = G − M G
    Zr = G @ C - C * theta
    K = G - M @ G
    KC = K @ C
    Gr = C.T @ (_sym_np(YY) @ C) + Zr.T @ KC + KC.T @ Zr + Zr.T @ (Ms @ Zr)
    pend = (T @ Z[:, b:], Z[:b, b:].T @ Z[:b, :b]) if Z.shape[1] > b else None
    return theta, C, _sym_np(Gr), pend, float(np.abs(th).max())


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


# ----------------------------------------------------------------------------- dense fallback
def _dense(matvec, dim, k, dtype, device, tol, warm):
    """The operator formed from ``dim`` HVPs, copied to the host once and diagonalised there in float64; residuals
    of the returned eigenvectors (rounded to ``dtype``) with that matrix."""
    eye = torch.eye(dim, dtype=dtype, device=device)
    cols = [matvec(eye[:, i:i + _DENSE_CHUNK]) for i in range(0, dim, _DENSE_CHUNK)]
    for c, i in zip(cols, range(0, dim, _DENSE_CHUNK), strict=False):
        _check_out(c, dim, min(_DENSE_CHUNK, dim - i))
    A = _to_host(torch.cat(cols, dim=1))
    if not np.isfinite(A).all():
        ev, V, rep = _nonfinite(dim, k, dtype, device, dim, 0, tol, "dense", dim, warm)
        rep.n_host = 1
        return ev, V, rep
    A = _sym_np(A)
    e, Z = np.linalg.eigh(A)
    anorm = float(np.abs(e).max())
    spectrum = e[::-1].copy()
    e, Z = e[::-1][:k], Z[:, ::-1][:, :k]
    npd = host.NUMPY_DTYPE[dtype]
    ev_r, V_r = e.astype(npd).astype(np.float64), Z.astype(npd).astype(np.float64)
    floor = max(_REL_FLOOR * anorm, float(torch.finfo(dtype).tiny))
    res = np.linalg.norm(A @ V_r - V_r * ev_r, axis=0) / np.maximum(np.abs(ev_r), floor)
    spectrum[:k] = ev_r                     # the returned eigenvalues as returned (rounded to dtype)
    evals, evecs = _send([ev_r, V_r], dtype, device)
    return evals, evecs, EigReport(0, dim, res, bool(np.all(res <= tol)), tol, "dense", dim, warm, n_host=1,
                                   block_values=spectrum)


def _nonfinite(dim, k, dtype, device, n_hvp, it, tol, method, b, warm):
    nan = torch.full((k,), math.nan, dtype=dtype, device=device)
    V = torch.full((dim, k), math.nan, dtype=dtype, device=device)
    return nan, V, EigReport(it, n_hvp, np.full(k, np.nan), False, tol, method, b, warm)


# ----------------------------------------------------------------------------- LOBPCG
class _LOBPCG:
    """One solve (state of the iteration; see the module docstring for the device/host split)."""

    def __init__(self, matvec, dim, k, b, dtype, device, tol, max_iter):
        self.matvec, self.dim, self.k, self.b = matvec, dim, k, b
        self.dtype, self.device, self.tol, self.max_iter = dtype, device, tol, max_iter
        self.eps = torch.finfo(dtype).eps
        self.drop = _drop_tol(dtype)
        self.n_hvp = self.n_host = self.checks = self.it = 0

    # -- transfers and operator applications, counted
    def pull(self, x: torch.Tensor) -> np.ndarray:
        self.n_host += 1
        return _to_host(x)

    def send(self, *arrays) -> list:
        return _send(arrays, self.dtype, self.device)

    def apply(self, V: torch.Tensor) -> torch.Tensor:
        AV = self.matvec(V)
        _check_out(AV, self.dim, V.shape[1])
        self.n_hvp += V.shape[1]
        return AV

    def report(self, residuals, converged, warm, stalled=False) -> EigReport:
        return EigReport(self.it, self.n_hvp, residuals, converged, self.tol, "lobpcg", self.b, warm,
                         stalled=stalled, n_host=self.n_host, checks=self.checks)

    # -- the start block: warm columns in order, random ones to fill; one transfer
    def start(self, init, init_AX, gen):
        dim, b = self.dim, self.b
        j = 0 if init is None else min(init.shape[1], 2 * b)
        jA = 0 if init_AX is None else min(init_AX.shape[1], j)
        rand = as_columns(torch.randn(dim, b, generator=gen, dtype=self.dtype, device=self.device))
        cand = rand if j == 0 else cat_columns([init[:, :j], rand])
        AXkn = None
        if j:
            ok = torch.isfinite(cand[:, :j]).all(0)
            if jA:
                AXkn = init_AX[:, :jA]
                ok = torch.cat([ok[:jA] & torch.isfinite(AXkn).all(0), ok[jA:]])
                AXkn = torch.where(ok[:jA], AXkn, 0.0)
            cand[:, :j].masked_fill_(~ok, 0.0)
        idx, N = _greedy_basis(self.pull(cand.T @ cand), b, self.drop)
        if len(idx) < self.k:
            return None, None
        self.b = b = len(idx)
        nc = cand.shape[1]
        Nfull = np.zeros((nc, b))
        Nfull[idx] = N
        unknown = [r for r, i in enumerate(idx) if i >= jA]
        if not jA or not any(i < jA for i in idx):
            (Nd,) = self.send(Nfull)
            X = mm_columns(cand, Nd)
            return X, self.apply(X)
        E = np.zeros((nc, len(unknown)))
        E[[idx[r] for r in unknown], range(len(unknown))] = 1.0
        Nd, Ed, Nu = self.send(Nfull, E, N[unknown])
        X = mm_columns(cand, Nd)
        AX = mm_columns(AXkn, Nd[:jA])
        if unknown:
            AX = AX + mm_columns(self.apply(mm_columns(cand, Ed)), Nu)
        return X, AX

    # -- one host point: Grams of the basis, Rayleigh–Ritz, predicted residuals
    def rayleigh_ritz(self, S, AS):
        M, G = S.T @ S, S.T @ AS
        Y = AS - mm_columns(S, G)
        h = self.pull(torch.stack([M, G, Y.T @ Y]))
        if not np.isfinite(h).all():
            return None
        return _rayleigh_ritz(h[0], h[1], h[2], self.b, self.drop, self.eps)


def _lobpcg(matvec, dim, k, b, dtype, device, init, tol, max_iter, seed, init_AX=None):
    """Returns (theta (b,), X (dim, b), report, finite). Only the first k columns are converged."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    warm = init is not None and init.shape[1] > 0
    s = _LOBPCG(matvec, dim, k, b, dtype, device, tol, max_iter)

    def failed():
        return None, None, s.report(np.full(k, np.nan), False, warm), False

    def finish(thd, X, rel, converged, stalled):
        # the first k in descending order (fresh Rayleigh quotients may swap nearly equal neighbours)
        order = np.argsort(-theta[:k], kind="stable")
        X = cat_columns([take_columns(X[:, :k], order), X[:, k:]])
        thd = torch.cat([take_columns(thd[None, :k], order)[0], thd[k:]])
        rep = s.report(rel[:k][order], converged, warm, stalled and not converged)
        rep.block_values = np.concatenate([np.asarray(theta[:k], dtype=np.float64)[order],
                                           np.asarray(theta[k:], dtype=np.float64)])
        return thd, X, rep, True

    X, AX = s.start(init, init_AX, gen)
    if X is None:
        return failed()
    b = s.b
    S, AS = X, AX                   # the Rayleigh–Ritz basis; its first b columns are the current block
    fresh = True                    # AX[:, :k] of the block is A X[:, :k] computed directly (not by the recurrence)
    anorm = 0.0
    false_claims, last_true = 0, math.inf
    stalled = False
    solve_rr = True
    while True:
        if solve_rr:
            rr = s.rayleigh_ritz(S, AS)
            if rr is None:
                return failed()
            theta, C, Gres, pend, an = rr
            anorm = max(anorm, an)
            floor = max(_REL_FLOOR * anorm, float(torch.finfo(dtype).tiny))
            # predicted residuals of the new Ritz vectors: they steer, a check confirms
            rel = np.sqrt(np.clip(np.diag(Gres), 0.0, None)) / np.maximum(np.abs(theta), floor)
            Rb = None               # the residual block on the device, once computed directly (by a check)
        solve_rr = True
        reorth = False
        if Rb is None and (bool(np.all(rel[:k] <= tol)) or s.it >= max_iter):
            # --- check: fresh A X[:, :k] (unless AX is fresh), true residuals, orthonormality; one transfer
            Cd, thd = s.send(C, theta)
            X, AX = mm_columns(S, Cd), mm_columns(AS, Cd)
            checked = not fresh
            if checked:
                AXk = s.apply(X[:, :k])
                AX = cat_columns([AXk, AX[:, k:]])
                thd = torch.cat([(X[:, :k] * AXk).sum(0), thd[k:]])
            Rb = torch.addcmul(AX, X, thd, value=-1.0)
            h = s.pull(torch.cat([thd[:k], (Rb.T @ Rb).reshape(-1), (X[:, :k].T @ X[:, :k]).reshape(-1)]))
            s.checks += 1
            fresh = True
            if not np.isfinite(h).all():
                return failed()
            theta[:k] = h[:k]
            Gres = h[k:k + b * b].reshape(b, b)
            orth = float(np.abs(h[k + b * b:].reshape(k, k) - np.eye(k)).max())
            rel = np.sqrt(np.clip(np.diag(Gres), 0.0, None)) / np.maximum(np.abs(theta), floor)
            r_true = float(rel[:k].max())
            if checked and r_true > tol:
                # the recurrence claimed convergence that the fresh A X denies: its residual has drifted below the
                # true one. When that happens _STAGNATION_CLAIMS times without the true residual halving, the
                # iteration sits at its round-off floor: stop (reported as not converged, with the true residuals)
                false_claims = false_claims + 1 if r_true > 0.5 * last_true else 0
                last_true = min(last_true, r_true)
                stalled = stalled or false_claims >= _STAGNATION_CLAIMS
            converged = r_true <= tol and orth <= max(_ORTH_TOL, _ORTH_TOL_SQRT_D * math.sqrt(dim)) * s.eps
            if converged or stalled or s.it >= max_iter:
                return finish(thd, X, rel, converged, stalled)
            reorth = r_true <= tol          # only the orthonormality failed: a Rayleigh–Ritz step restores it
        # --- expand: residual block of the active columns (soft locking), direction block P, one batched HVP
        act = [i for i in range(b) if rel[i] > tol]
        Q = None
        if pend is not None and act:
            TZc, W = pend
            U, sv, _ = np.linalg.svd(W[:, act], full_matrices=False)
            if np.any(sv > s.drop):
                Q = TZc @ U[:, sv > s.drop]
        Nr = _svqb_coeffs(Gres[np.ix_(act, act)], s.drop)[0] if act else np.zeros((0, 0))
        a, p = Nr.shape[1], 0 if Q is None else Q.shape[1]
        if a == 0 and not reorth:   # no new direction: stagnation (reported as not converged if so)
            if Rb is not None:
                return finish(thd, X, rel, False, stalled)
            max_iter = s.it         # check the block of this Rayleigh–Ritz problem, then stop
            solve_rr = False
            continue
        s.it += 1
        fresh = False
        if Rb is None:
            # the next basis [X, P, V] in one product each: X = S C, P = S Q and the orthonormalised active residuals
            # V = (AS C − S C Θ) N (written over S·(CΘN) in place), and their images AX, AP, AV (over AS·(CN))
            K1 = C[:, act] @ Nr
            K2 = (C[:, act] * theta[act]) @ Nr
            qs = np.zeros((C.shape[0], p)) if Q is None else Q
            cS, cA = s.send(np.hstack([C, qs, K2]), np.hstack([C, qs, K1]))
            S, AS = mm_columns(S, cS), mm_columns(AS, cA)
            if a:
                V = S[:, b + p:]
                V.neg_().add_(AS[:, b + p:])
        else:
            # after a check: the residuals computed there (first k fresh), orthonormalised by their exact Gram
            E = np.zeros((b, a))
            E[act] = Nr
            if Q is None:
                (Ed,) = s.send(E)
                S, AS = cat_columns([X, mm_columns(Rb, Ed)]), cat_columns([AX, AX.new_empty(a, dim).T])
            else:
                Ed, Qd = s.send(E, Q)
                S = cat_columns([X, mm_columns(S, Qd), mm_columns(Rb, Ed)])
                AS = cat_columns([AX, mm_columns(AS, Qd), AX.new_empty(a, dim).T])
        if a:
            # one projection against [X, P] (the residuals are orthogonal to span(S) up to round-off; the
            # whitening of the next Rayleigh–Ritz problem, with the exact Gram matrix, does the rest)
            V, XP = S[:, b + p:], S[:, :b + p]
            V.sub_(mm_columns(XP, XP.T @ V))
            AS[:, b + p:].copy_(s.apply(V))


def _as_init(init, dim: int, dtype, device, name: str = "init"):
    """A warm start as a ``(dim, j)`` tensor of ``dtype`` on ``device`` (``(dim,)`` is one column), or None.
    TypeError / ValueError naming a wrong type or shape. Non-finite columns are not checked here (that would
    synchronise a GPU): the start block skips them."""
    if init is None:
        return None
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(init).__name__}")
    if init.ndim == 1:
        init = init[:, None]
    if init.ndim != 2 or init.shape[0] != dim:
        raise ValueError(f"{name} has shape {tuple(init.shape)}, expected ({dim}, j)")
    device = torch.device(device)
    return init.detach().to(dtype=dtype, device=device, non_blocking=device.type != "cpu")   # no sync host→GPU


def _as_init_pair(init, init_AX, dim, dtype, device):
    init = _as_init(init, dim, dtype, device)
    init_AX = _as_init(init_AX, dim, dtype, device, "init_AX")
    if init_AX is not None and (init is None or init_AX.shape[1] > init.shape[1]):
        raise ValueError(f"init_AX has {init_AX.shape[1]} columns but init has "
                         f"{0 if init is None else init.shape[1]}: init_AX holds A·init for the first columns of init")
    return init, init_AX


def _solve(matvec, dim, k, *, dtype, device, init, tol, max_iter, block, seed, method="lobpcg", init_AX=None):
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
    init, init_AX = _as_init_pair(init, init_AX, dim, dtype, device)
    warm = init is not None and init.shape[1] > 0
    if method == "dense" or 3 * b >= dim:
        ev, V, rep = _dense(matvec, dim, k, dtype, device, tol_eff, warm)
        return ev, V, rep, (V if np.isfinite(rep.residuals).all() else None)
    if method != "lobpcg":
        raise ValueError(f"method={method!r}: expected 'lobpcg' or 'dense'")
    theta, X, rep, ok = _lobpcg(matvec, dim, k, b, dtype, device, init, tol_eff, max_iter, seed, init_AX=init_AX)
    if not ok:
        ev, V, _ = _nonfinite(dim, k, dtype, device, rep.n_hvp, rep.iterations, tol_eff, "lobpcg", rep.block, warm)
        return ev, V, rep, None
    return theta[:k].clone(), X[:, :k].clone(), rep, X


def top_eigs(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, k: int, *, dtype, device, init=None,
             tol: float = 1e-8, max_iter: int = 200, block: int | None = None, seed: int = 0, init_AX=None,
             return_block: bool = False):
    """The ``k`` largest (algebraic) eigenpairs of the symmetric operator ``matvec: (dim, b) -> (dim, b)``.

    Parameters
    ----------
    init : optional ``(dim, j)`` warm start (any ``j``): its columns are taken in order, skipping any that adds no
        new direction (dependent, zero or non-finite), up to ``block``; random columns fill the rest.
    init_AX : optional ``(dim, j')``, ``j' ≤ j``: ``matvec(init[:, :j'])`` already known (e.g. a flow's ``HU``,
        computed by the same operator at the same point); those HVPs are not recomputed and they count as fresh.
    tol : relative residual tolerance (see the module docstring); raised to the dtype's floor if smaller.
    max_iter : LOBPCG iterations (each costs at most ``block`` HVPs).
    block : block size ``b ≥ k`` (default ``k + max(2, ceil(k/2))``).
    seed : seeds the random filler columns (results are deterministic).
    return_block : also return the final block ``(dim, b)`` (its first ``k`` columns are ``evecs``, the rest the
        unconverged Ritz vectors of ``EigReport.block_values[k:]``; ``evecs`` for dense; None when the solve
        failed): a warm start for a solve with a larger ``k``.

    Returns ``(evals (k,) descending, evecs (dim, k) orthonormal, EigReport)`` (and the block). When
    ``3·block ≥ dim`` the operator is formed densely (``dim`` HVPs) and diagonalised on the host. On a GPU the solve synchronises only
    in :func:`_to_host` (``EigReport.n_host`` times). Raises ValueError for ``k < 1`` or ``k > dim``. Non-finite
    operator output gives NaN results and ``converged=False``.
    """
    ev, V, rep, X = _solve(matvec, dim, k, dtype=dtype, device=device, init=init, tol=tol, max_iter=max_iter,
                           block=block, seed=seed, init_AX=init_AX)
    return (ev, V, rep, X) if return_block else (ev, V, rep)


# ----------------------------------------------------------------------------- the Hessian operators
def preconditioner_scale(P, dim: int, dtype, device) -> torch.Tensor | None:
    """``P^{-1/2}`` as a ``(dim, 1)`` or ``(1, 1)`` tensor (broadcasts over a ``(dim, b)`` block); None for None.

    ``P`` is a positive tensor of shape ``(dim,)``, ``(1,)`` or ``()`` (a Python number is accepted too).
    """
    if P is None:
        return None
    if not isinstance(P, torch.Tensor):
        P = torch.as_tensor(P, dtype=dtype)
    device = torch.device(device)
    P = P.detach().to(dtype=dtype, device=device, non_blocking=device.type != "cpu")
    if P.ndim == 0:
        P = P.reshape(1)
    if P.ndim != 1 or P.shape[0] not in (1, dim):
        raise ValueError(f"P has shape {tuple(P.shape)}, expected ({dim},), (1,) or ()")
    if not _to_host((torch.isfinite(P) & (P > 0)).all()):       # one declared transfer
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
        return cat_columns(problem.hvp(w, V[:, i:i + chunk]) for i in range(0, V.shape[1], chunk))

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

    def __call__(self, problem, w: torch.Tensor, P=None, init=None, init_AX=None):
        """``(evals (k,) descending, evecs (d, k) orthonormal eigenvectors of S, EigReport)``.

        ``init``: optional ``(d, j)`` vectors of ``S`` known to be good at this ``w`` (e.g. a flow's own tracked
        eigenvectors, in the coordinates of ``S``); they start the block ahead of the tracker's own warm block,
        whose first ``j`` columns (the older estimates of the same eigenvectors) go last. ``init_AX``: optional
        ``S·init`` for the first ``j' ≤ j`` columns of ``init`` (saves those HVPs; see :func:`top_eigs`)."""
        op = hessian_operator(problem, w, P)
        d, dt, dev = problem.dim, problem.dtype, problem.device
        own = self._block
        if own is not None and (own.shape[0] != d or own.dtype != dt or own.device != dev):
            own = None
        init, init_AX = _as_init_pair(init, init_AX, d, dt, dev)
        if init is None:
            init = own
        elif own is not None:
            j = init.shape[1]
            init = cat_columns([init, own[:, j:], own[:, :j]])
        block = self.block if self.block is not None else _default_block(self.k)
        ev, V, rep, X = _solve(op, d, self.k, dtype=dt, device=dev, init=init, tol=max(self.tol, self.floor),
                               max_iter=self.max_iter, block=max(block, self.k), seed=self.seed + self.calls,
                               method=self.method, init_AX=init_AX)
        self.calls += 1
        self.n_hvp += rep.n_hvp
        self.last_report = rep
        if rep.learned_floor is not None:
            # the operator cannot deliver ``tol`` here (round-off, e.g. float32 HVPs of a large model): later calls
            # ask for 1.5× the residual this one reached, so they stop at convergence instead of stalling each time
            # (their reports carry that tolerance); the warning below is given once, for this call
            self.floor = max(self.floor, rep.learned_floor)
        if X is not None:                                 # a finite result (else the warm start is kept)
            prev = self._prev
            if prev is not None and prev.shape == V.shape and prev.dtype == V.dtype and prev.device == V.device:
                sgn = torch.where((prev * V).sum(0) < 0, -1.0, 1.0).to(V.dtype)
                V = V * sgn
                X = cat_columns([X[:, :self.k] * sgn, X[:, self.k:]])
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
        self._block = cat_columns([V, evecs[:, k:]])
        self._prev = V
        self.calls += 1
        rep = EigReport(0, 0, res[:k].copy(), True, tol, "known", evecs.shape[1], True)
        self.last_report = rep
        return host.to_device(evals[:k], V), V, rep

    @staticmethod
    def generalized(evecs: torch.Tensor, P) -> torch.Tensor:
        """``U = P^{-1/2} V``: right eigenvectors of ``P^{-1} H`` (same eigenvalues), normalised so ``UᵀPU = I``."""
        if P is None:
            return evecs
        s = preconditioner_scale(P, evecs.shape[0], evecs.dtype, evecs.device)
        return s * evecs if evecs.ndim == 2 else (s[:, 0] * evecs)
