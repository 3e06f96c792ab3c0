"""Eigen-subspace tracking for the central flow (a mixin of :class:`~pyrod.flows.central.CentralFlow`).

A basis ``Y`` (d × ``k_track``, P̃-orthonormal at its refresh) of the top eigenvectors of the pencil (H, P̃) is kept
between steps: every evaluation does a Rayleigh–Ritz on it (``k_track`` HVPs, cached per state; between the whole
checks at integer times only on its watched leading columns, :meth:`SubspaceTracking._plan_checks`); after every
accepted step :meth:`SubspaceTracking.track` checks the Ritz residuals and improves the basis by one Davidson
expansion, or re-solves it by warm LOBPCG (:func:`pyrod.spectra.top_eigs`) when the tracked set must grow or shrink
or a residual is large. Tracked: every eigenvalue with ``λ̃ ≥ s_track`` plus one below it (at most ``max_track``).

**Host transfers.** A Rayleigh–Ritz step computes on the device only the tall-skinny products (``HY``, the Gram
matrices ``SᵀP̃S``, ``SᵀHS`` and ``(HS)ᵀP̃⁻¹HS``, in float64) and reads the three small matrices with one
:func:`pyrod.host.to_host`; the small eigenproblems, the Ritz values ``λ̃`` and the residual norms are computed on
the host, and the coefficient matrix goes back with :func:`pyrod.host.to_device` (no wait). Every decision (the
critical count, grow / shrink / refresh, the event values, "far from critical") reads those host values, so a
right-hand side never waits on the device except in that one transfer. The residual of Ritz pair
``(λ_i, u_i = S c_i)`` comes from the Gram matrices: ``‖P̃^{-1/2}(Hu − λP̃u)‖² = cᵀG₃c − 2λ cᵀG_Hc + λ² cᵀG_Pc``,
accurate to ``~1e-16/rel`` relative in float64, far below any tolerance used here.

**Caches** are keyed by the state tensor's identity (:class:`pyrod.tensor_identity.TensorKey`: the integrator
hands the same tensor to the right-hand side, the event checks and the accepted-step hook) and the time, never by
content on a GPU; on the CPU, where reading values costs no synchronisation, a content-equal copy of the state also
hits (the NumPy backends hand the flow a new tensor per callback). The cache is pure and cleared at every chunk.

**Products** ``HY``, ``HZ`` of the Rayleigh–Ritz steps and Davidson expansions (:meth:`SubspaceTracking._products`):
the problem's exact HVPs, or with ``tracking_hvp="difference"`` one-sided differences of gradients from ``∇L`` at the
state (:mod:`pyrod.flows.difference_hvp`, float64, ~5e-8 relative: enough for ``refresh_tol``). LOBPCG refreshes and
the products a measurement starts from (:meth:`SubspaceTracking.exact_products`) are always exact.

State between chunks (``tracking_state``): ``Y``, ``k_track``, ``lam_last`` (λ̃ at the last accepted step, host
float64) and ``lam_t`` (the time it belongs to), ``eig_floor``, and the plan of watched checks (``n_near``,
``full_next``, ``full_prev``, ``watch_until``). The event values at a chunk's first state, the last accepted state
of the chunk before, are read from ``lam_last`` (:meth:`lam_at`) when nothing has been evaluated there yet (the
fixed-step methods: no Rayleigh–Ritz is redone there); an adaptive method evaluates its first right-hand side there
before the first event check, which then reads that right-hand side's Rayleigh–Ritz. Either way a resumed run does
the same arithmetic as an uninterrupted one. The mixin needs from its host: ``problem``, ``d``, ``P_tilde(ν, t)``,
``s_sdcp``, ``s_track``, ``max_track``, ``track_threshold``, ``eig_tol``, ``eig_max_iter``, ``refresh_tol``,
``watch_margin``, ``tracking_hvp``, ``grad`` (∇L, uncounted), ``tensor_states``, ``stats``, ``layout`` and
``_warned``.
"""
from __future__ import annotations

import math
import time
import warnings
import weakref

import numpy as np
import torch

from .. import host
from ..columns import cat_columns, mm_columns, take_columns
from ..tensor_identity import TensorKey
from .difference_hvp import hvp_by_difference

__all__ = ["SubspaceTracking", "Ritz", "StateCache", "gram_matrices", "ritz_from_grams", "pencil_rayleigh_ritz"]


class Ritz:
    """Ritz pairs of the pencil (H, P̃) at one state: ``lam`` (host, float64, descending), ``rel`` (host, relative
    residuals ``‖P̃^{-1/2}(Hu − λP̃u)‖/|λ|``), ``U`` (d × k, P̃-orthonormal, device) and ``HU`` (device).
    ``expanded``: from the basis and its Davidson expansion (2k columns), not the basis alone; and the
    residuals of the basis's own Ritz pairs (``plain``; the pairs themselves when not expanded). ``basis_HY``:
    the products ``H Y`` of the basis columns it started from (the first ``n_basis``; device), kept by a plain
    Rayleigh–Ritz on them so that a later expansion at the same state starts from exactly the products a fresh one
    would compute."""

    __slots__ = ("lam", "rel", "U", "HU", "expanded", "plain", "basis_HY", "space", "n_basis", "basis")

    def __init__(self, lam, rel, U, HU, expanded=False, plain=None, basis_HY=None, n_basis=None, basis=None):
        self.lam, self.rel, self.U, self.HU, self.expanded = lam, rel, U, HU, expanded
        #: a weak reference to the tracked basis tensor (``Y``, all its columns) this Rayleigh–Ritz started from:
        #: ``basis_HY`` holds products with its columns, usable only while it is still the tracked basis (checked
        #: by identity; weak, so that the cache does not keep old bases alive)
        self.basis = None if basis is None else weakref.ref(basis)
        #: the leading columns of the tracked basis this Rayleigh–Ritz started from (all of them, or the watched
        #: ones between whole checks: :meth:`SubspaceTracking._basis_cols`)
        self.n_basis = n_basis
        #: ``(lam, rel)`` of the basis alone (its Rayleigh–Ritz from the same Gram matrices; these pairs unexpanded)
        self.plain = (lam, rel) if plain is None else plain
        self.basis_HY = basis_HY
        #: ``(S, HS, G)``: the whole search space of an expanded Rayleigh–Ritz and its host Gram matrices, kept on
        #: the newest expanded pairs only (a measurement's refinement starts from it; see ``_refine``)
        self.space = None


class StateCache:
    """A few values per ``(kind, t, state)``: the state matched by :class:`~pyrod.tensor_identity.TensorKey`
    (identity and version), or, with ``by_value`` (states that are fresh conversions for each call, on the CPU),
    also by value. Newest first; at most ``size`` entries."""

    def __init__(self, size: int = 16, by_value: bool = False):
        self.size, self.by_value, self.entries = size, by_value, []

    def get(self, kind, t, y):
        for kind_, t_, key, value in self.entries:
            if kind_ == kind and t_ == t and (key.matches(y) or (self.by_value and _same_on_cpu(key.tensor, y))):
                return value
        return None

    def put(self, kind, t, y, value):
        self.entries.insert(0, (kind, t, TensorKey(y), value))
        del self.entries[self.size:]

    def clear(self):
        self.entries.clear()


def _same_on_cpu(a, b) -> bool:
    return (a.device.type == "cpu" and b.device.type == "cpu" and a.shape == b.shape and a.dtype == b.dtype
            and torch.equal(a, b))


def _sym(G):
    return 0.5 * (G + G.T)


def _blocks(S) -> tuple:
    """A search space given as one ``(d, m)`` tensor or as a tuple of ``(d, m_i)`` column blocks (the tracked basis
    and its expansion are kept apart: joining them would copy ``d × m`` values for nothing) -> the blocks."""
    return S if isinstance(S, tuple) else (S,)


def n_cols(S) -> int:
    """The number of columns of ``S`` (a tensor or a tuple of column blocks, :func:`_blocks`)."""
    return sum(b.shape[1] for b in _blocks(S))


def combine(S, C: torch.Tensor) -> torch.Tensor:
    """``S C`` for ``S`` a tensor or a tuple of column blocks (``[U, Z] C = U C_U + Z C_Z``), ``C``: (m, r)."""
    bl = _blocks(S)
    out = C[:bl[0].shape[1]].T @ bl[0].T         # (r, d): the result column-major (pyrod.columns)
    o = bl[0].shape[1]
    for b in bl[1:]:
        out.addmm_(C[o:o + b.shape[1]].T, b.T)
        o += b.shape[1]
    return out.T


def joined(S) -> torch.Tensor:
    """``S`` as one ``(d, m)`` tensor."""
    bl = _blocks(S)
    return bl[0] if len(bl) == 1 else cat_columns(bl)


def gram_matrices(S, HS, Pt) -> torch.Tensor:
    """The device half of a Rayleigh–Ritz step of the pencil (H, P̃) on span(S): ``(3, m, m)`` float64 holding
    ``SᵀP̃S``, ``SᵀHS`` and ``(HS)ᵀP̃⁻¹HS`` (``S``, ``HS``: (d, m), or tuples of column blocks; ``Pt``: P̃ as (d,) or
    (1,)). One product: with ``M = [P̃^{1/2}S, P̃^{-1/2}HS]ᵀ`` (:func:`gram_rows`: 2m × d, float64, rows contiguous)
    ``MMᵀ`` holds the three blocks."""
    first = _blocks(S)[0]
    m, d = n_cols(S), first.shape[0]
    sq = _sqrt_p64(Pt)
    if first.device.type == "cpu" and 2 * m * d * 8 > _GRAM_BLOCKED_BYTES:
        G = _blocked_gram(S, HS, sq)
    else:
        M = gram_rows(S, HS, sq)
        G = M @ M.T
    return torch.stack([G[:m, :m], G[:m, m:], G[m:, m:]])


#: on the CPU, above this size of the float64 rows (2m·d·8 bytes, more than a last-level cache holds) the Gram
#: product is summed over blocks of rows (:func:`_blocked_gram`): the same numbers to ~1e-15 relative, without
#: writing and re-reading the whole float64 copy (width 512, d = 1.84M, m = 8: 0.23 -> 0.08 s; width 32, m = 3: the
#: plain product stays, it is faster there)
_GRAM_BLOCKED_BYTES = 24_000_000
_GRAM_BLOCK = 16384


def _blocked_gram(S, HS, sq) -> torch.Tensor:
    """``MMᵀ`` of :func:`gram_rows` (``(2m, 2m)`` float64) summed over blocks of ``_GRAM_BLOCK`` parameters: each
    block's float64 rows stay in cache."""
    m, first = n_cols(S), _blocks(S)[0]
    G = torch.zeros(2 * m, 2 * m, dtype=torch.float64, device=first.device)
    for i in range(0, first.shape[0], _GRAM_BLOCK):
        block = slice(i, i + _GRAM_BLOCK)
        M = gram_rows(tuple(b[block] for b in _blocks(S)), tuple(b[block] for b in _blocks(HS)),
                      sq[:, block] if sq.dim() else sq)
        G.addmm_(M, M.T)
    return G


def gram_rows(S, HS, sq) -> torch.Tensor:
    """``[P̃^{1/2}S, P̃^{-1/2}HS]ᵀ`` as a (2m, d) float64 tensor (``sq``: ``P̃^{1/2}`` in float64, (1, d) or a
    scalar; ``S``, ``HS`` tensors or tuples of column blocks): the rows whose inner products are the Gram matrices of
    :func:`gram_matrices`."""
    m, first = n_cols(S), _blocks(S)[0]
    M = torch.empty(2 * m, first.shape[0], dtype=torch.float64, device=first.device)
    for o, blocks in ((0, _blocks(S)), (m, _blocks(HS))):
        for b in blocks:
            M[o:o + b.shape[1]] = b.T
            o += b.shape[1]
    M[:m] *= sq
    M[m:] /= sq
    return M


def _sqrt_p64(Pt):
    sq = Pt.to(torch.float64).sqrt()
    return sq[None, :] if sq.numel() > 1 else sq[0]


def extend_grams(G: np.ndarray, cross: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The Gram matrices ``(3, m+j, m+j)`` of ``[S, Z]`` from those of ``S`` (``G``, (3, m, m)), the products of
    the rows of ``S`` with those of ``Z`` (``cross``: ``M_S M_Zᵀ``, (2m, 2j)) and of ``Z`` with themselves (``new``:
    (2j, 2j)), with ``M`` as in :func:`gram_rows`."""
    m, j = G.shape[1], new.shape[0] // 2
    out = np.empty((3, m + j, m + j))
    out[:, :m, :m] = G
    AA, AB, BA, BB = cross[:m, :j], cross[:m, j:], cross[m:, :j], cross[m:, j:]
    out[0, :m, m:], out[0, m:, :m], out[0, m:, m:] = AA, AA.T, new[:j, :j]
    out[1, :m, m:], out[1, m:, :m], out[1, m:, m:] = AB, BA.T, new[:j, j:]
    out[2, :m, m:], out[2, m:, :m], out[2, m:, m:] = BB, BB.T, new[j:, j:]
    return out


def ritz_from_grams(G: np.ndarray):
    """The host half: from :func:`gram_matrices` (as a host array), ``(lam (r,) descending, rel (r,), C (m, r))``
    with ``(SC)ᵀP̃(SC) = I`` and ``rel`` the relative residuals of the pairs ``(lam_i, S c_i)``; ``r ≤ m``
    (directions of S that are numerically dependent are dropped)."""
    GP, GH, G3 = _sym(G[0]), _sym(G[1]), _sym(G[2])
    m = GP.shape[0]
    if not (np.all(np.isfinite(GP)) and np.all(np.isfinite(GH)) and np.all(np.isfinite(G3))):
        return np.full(m, np.nan), np.full(m, np.nan), np.full((m, m), np.nan)
    e, Q = np.linalg.eigh(GP)
    keep = e > 1e-12 * max(e.max(), 1e-300)
    W = Q[:, keep] / np.sqrt(e[keep])                  # whitening: Wᵀ GP W = I
    lam, Z = np.linalg.eigh(_sym(W.T @ GH @ W))
    lam, C = lam[::-1].copy(), (W @ Z)[:, ::-1].copy()
    quad = lambda A: np.einsum("ir,ij,jr->r", C, A, C)  # noqa: E731  cᵀAc per column
    r2 = quad(G3) - 2.0 * lam * quad(GH) + lam ** 2 * quad(GP)
    rel = np.sqrt(np.maximum(r2, 0.0)) / np.maximum(np.abs(lam), 1e-300)
    return lam, rel, C


def pencil_rayleigh_ritz(S, HS, Pt):
    """Rayleigh–Ritz of the pencil (H, P̃) on span(S) (columns may be dependent), with one host transfer:
    :func:`ritz_from_grams` of :func:`gram_matrices`."""
    return ritz_from_grams(host.to_host(gram_matrices(S, HS, Pt)))


class SubspaceTracking:
    """Tracked eigen-subspace of the pencil (H, P̃) (see the module docstring)."""

    def _init_tracking(self):
        self.k_track = 1
        self.Y = None               # (d, k_track) tracked basis in w-coordinates (P̃-orthonormal at its refresh)
        self.lam_last = None        # λ̃ at the last accepted step (Rayleigh–Ritz) or refresh: host float64 array
        self.lam_t = None           # the time of lam_last (None: not from a check or refresh at a known time)
        self.eig_floor = 0.0        # tolerance floor learned from an unconverged refresh (see _refresh)
        self._cache = self._new_cache()  # ("rr" | "ev", t, state) -> Ritz / evaluation (pure; cleared per chunk)
        self._grad_memo = self._new_cache(size=1)  # ("grad", None, w) -> ∇L(w): base of the differences (base_grad)
        self.expand_due = True      # the next check expands the basis (see track)
        self.far_next = None        # far from critical: time of the next check (see _schedule)
        self.far_prev = None        # far from critical: (t, λ̃max) at the last check
        self.n_near = None          # leading basis columns checked at every evaluation (None: all; _plan_checks)
        self.full_next = None       # the time from which checks take the whole basis again (None: now)
        self.full_prev = None       # [(t, λ̃ of the whole basis)] at the last two whole checks: rates of the others
        self.watch_until = None     # past full_next, right-hand sides keep the watched columns until then

    def _new_cache(self, size: int = 16) -> StateCache:
        return StateCache(size=size, by_value=not self.tensor_states)

    def tracking_state(self) -> dict:
        return {"Y": self.Y, "k_track": self.k_track, "lam_last": self.lam_last, "lam_t": self.lam_t,
                "eig_floor": self.eig_floor,
                "far_next": self.far_next, "far_prev": self.far_prev, "expand_due": self.expand_due,
                "n_near": self.n_near, "full_next": self.full_next, "full_prev": self.full_prev,
                "watch_until": self.watch_until}

    def load_tracking_state(self, state: dict) -> None:
        dev, dt = self.problem.device, self.problem.dtype
        self.Y = None if state["Y"] is None else state["Y"].to(device=dev, dtype=dt)
        lam = state["lam_last"]
        if isinstance(lam, torch.Tensor):            # checkpoints written before the host bookkeeping
            lam = lam.detach().to(torch.float64).cpu().numpy()
        self.lam_last = None if lam is None else np.asarray(lam, dtype=np.float64)
        self.lam_t = state.get("lam_t")             # None in checkpoints written before it was kept
        self.k_track = int(state["k_track"])
        self.eig_floor = float(state.get("eig_floor", 0.0))
        self.far_next, self.far_prev = state.get("far_next"), state.get("far_prev")
        self.expand_due = bool(state.get("expand_due", True))
        # checkpoints written before the watched / whole checks: the next check takes the whole basis
        self.n_near, self.full_next, self.full_prev = (state.get("n_near"), state.get("full_next"),
                                                       state.get("full_prev"))
        # checkpoints written before it: right-hand sides past full_next take the whole basis (as they did then)
        self.watch_until = state.get("watch_until")
        self._cache = self._new_cache()
        self._grad_memo = self._new_cache(size=1)

    def track(self, t, y) -> bool:
        """After each accepted step: Rayleigh–Ritz at the new state on the tracked basis and its Davidson
        expansion (:meth:`_ritz` with ``expand=True``; usually already done by :meth:`probe` inside the step's host
        transfer, or half done by the step's event checks); the top ``k_track`` Ritz vectors become the basis (at a
        watched check, :meth:`_basis_cols`, the watched columns only, the others kept). A full warm LOBPCG solve
        replaces them when the tracked set must grow or shrink (decided at whole checks), or a critical pair (or the
        next candidate) still has a relative residual above ``30·refresh_tol``; then the plan of watched checks is
        made anew (:meth:`_plan_checks`). Returns False when there was no basis yet (the first refresh was done
        instead of a check)."""
        p = self.layout.unpack(y)
        t = float(t)
        w, nu = p["w"], p.get("nu")
        with torch.no_grad():
            if self.Y is None:
                self._refresh(t, w, nu)
                self._schedule(t)
                return False
            if self._skip(t):
                return True
            Pt = self.P_tilde(nu, t)
            planned = self.full_next is None or t >= self.full_next     # a whole check the plan asked for
            rr = self._ritz(t, y, w, nu, Pt, expand=self.expand_due)
            if not rr.expanded and self._watched_residual(rr.lam, rr.rel) > self.refresh_tol:
                rr = self._ritz(t, y, w, nu, Pt, expand=True)     # k more HVPs: the plain pairs are reused
            # expand at the next check too when this one needed it (a tensor backend then reads the expansion in the
            # step's own transfer); a basis that still meets refresh_tol on its own is only rotated next time
            self.expand_due = rr.expanded and self._watched_residual(*rr.plain) > self.refresh_tol
            whole = rr.n_basis >= self.Y.shape[1]
            lam, rel = rr.lam, rr.rel
            self.lam_last, self.lam_t = self.with_unwatched(lam, rr.n_basis), t
            k = lam.size
            r = self._watched_residual(lam, rel)
            reason = None
            if not (np.all(np.isfinite(lam)) and math.isfinite(r)):
                reason = "nonfinite"
            elif whole and lam[-1] >= self.s_track and k < self.max_track:
                reason = "grow"
            elif whole and k > 1 and lam[-2] < 0.9 * self.s_track:
                reason = "shrink"
            elif r > 30 * self.refresh_tol:
                reason = "residual"
            if reason is not None:
                self.stats["refresh_" + reason] += 1
                self._refresh(t, w, nu, grow=reason == "grow")
                whole = planned = True           # a new basis: plan from its values
            elif whole:
                self.Y = rr.U
            else:   # the watched pairs rotated, the others kept as the last whole check left them
                self.Y = cat_columns([rr.U, self.Y[:, rr.n_basis:]])
            self._plan_checks(t, whole and planned, rr.n_basis)
            if not whole and rr.U.shape[1] < rr.n_basis:         # a watched direction was dropped: re-plan
                self._whole_check_next(t)
            self._schedule(t)
        return True

    def with_unwatched(self, lam, n_basis):
        """The Ritz values ``lam`` of a Rayleigh–Ritz on the first ``n_basis`` columns of the basis (the watched
        ones) followed by those of the other columns at the last whole check (``lam`` itself after a whole one)."""
        k, last = self.Y.shape[1], self.lam_last
        if n_basis >= k or last is None or last.size != k:
            return lam
        return np.concatenate([lam, last[n_basis:]])

    def _basis_cols(self, t, check: bool = True) -> int:
        """How many leading columns of the tracked basis a Rayleigh–Ritz at time ``t`` takes: all of them at an
        integer time (the whole checks and the read-outs there) and before the first plan, else the watched ones
        (``n_near``), except from ``full_next`` on (a whole check :meth:`_plan_checks` asked for):

        * a ``check`` (the accepted step's, :meth:`track`, its device half :meth:`probe`, and the event checks, which
          read the same values) takes all of them;
        * a right-hand side (``check=False``) keeps the watched ones until ``watch_until``, the time from which the
          plan's projections no longer keep the other pairs below the margin (None: at once, as after a watched
          check that found the plan broken), so that an adaptive method's stages between the integer time and the
          step end that makes the whole check do not each take the whole basis.

        The answer depends on ``t`` and on state changed only by :meth:`track`, so the event checks and the check at
        one state agree; a right-hand side at a step end whose check takes more columns leaves the products of its
        watched ones for that check (:meth:`_hvp_basis`). A fixed-step method evaluates nothing past ``full_next``
        before its check there, so only adaptive methods take the second rule."""
        k = self.Y.shape[1]
        if self.n_near is None or self.full_next is None or t == math.floor(t):
            return k
        if t >= self.full_next and (check or self.watch_until is None or t >= self.watch_until):
            return k
        return min(self.n_near, k)

    def _plan_checks(self, t, planned: bool, n_basis: int):
        """After the check at ``t``: which tracked pairs the checks until the next integer time watch (``watch_margin``
        on λ̃; None: all of them, always). After a planned whole check (the first, each integer time, those a
        watched check asked for, and every refresh; a check that takes the whole basis only because every pair is
        watched does not count): the critical pairs, the next candidate, and every pair ``j`` with
        ``λ̃_j + 2·rate_j·(t_next − t) ≥ s_sdcp − watch_margin`` (``rate_j``: its rise since the last planned check
        and over the interval before, the larger, ``∞`` before there are two such intervals with the same number of
        pairs: a flow just started, or whose tracked set changed size, watches every pair), up to the last such
        pair; the others are only checked at ``t_next``, the next integer time. After a watched check: a whole check at the
        next accepted step when the critical set reached the last watched pair or a watched value fell below an
        unwatched one (the plan no longer holds)."""
        if self.watch_margin is None:
            return
        lam = self.lam_last
        if planned:
            # the rise of each pair over the last two intervals between whole checks (the larger; ∞ without two)
            hist = [h for h in (self.full_prev or ()) if h[1].size == lam.size and h[0] < t][-2:]
            rate = np.full(lam.size, np.inf)
            if len(hist) == 2:
                (t0, l0), (t1, l1) = hist
                rate = np.maximum(np.maximum((l1 - l0) / (t1 - t0), (lam - l1) / (t - t1)), 0.0)
                rate[~np.isfinite(rate)] = np.inf                 # a value without a rise: watched
            self.full_prev = [*hist, (t, np.array(lam, dtype=np.float64))][-2:]
            nxt = math.floor(t) + 1.0
            with np.errstate(invalid="ignore"):
                near = lam + 2.0 * rate * (nxt - t) >= self.s_sdcp - self.watch_margin
            near[:int((lam > self.s_sdcp).sum()) + 1] = True
            near |= ~np.isfinite(lam)
            self.n_near = int(np.flatnonzero(near).max()) + 1
            self.full_next = nxt
            # past nxt, until the step end that makes the whole check, right-hand sides keep the watched pairs while
            # every other one stays projected below the margin (its value plus twice its rise, as above)
            gap, rise = self.s_sdcp - self.watch_margin - lam[self.n_near:], 2.0 * rate[self.n_near:]
            with np.errstate(divide="ignore", invalid="ignore"):
                reach = np.where(rise > 0, t + gap / rise, math.inf)
            self.watch_until = float(reach.min()) if reach.size else math.inf
            self.stats["n_planned_check"] += 1
            return
        if n_basis >= lam.size:
            return                               # every pair watched: nothing to re-plan
        self.stats["n_watched_check"] += 1
        n = n_basis
        kc = int((lam[:n] > self.s_sdcp).sum())
        if kc + 1 > n or lam[n - 1] < lam[n:].max():
            self._whole_check_next(t)

    def _whole_check_next(self, t):
        """The plan made at the last whole check no longer holds at ``t``: the next accepted step (not this state
        again) makes a whole check, and every right-hand side until then takes the whole basis."""
        self.full_next, self.watch_until = math.nextafter(t, math.inf), None

    def lam_at(self, t):
        """λ̃ at time ``t`` when the last check or refresh was at ``t`` (the accepted state there: the integrator
        evaluates nothing else at that time afterwards but the next segment's first state, which is that state; a
        check at an integer time inside a step, ``CentralFlow.on_accept``, is at a time nothing evaluates again),
        else None."""
        return self.lam_last if self.lam_t is not None and self.lam_t == t else None

    def _watched_residual(self, lam, rel) -> float:
        """The largest relative residual among the critical pairs and the next candidate (NaN for no pairs)."""
        kc = int((lam > self.s_sdcp).sum())
        j = min(kc + 1, lam.size)
        return float(rel[:j].max()) if j else math.nan

    def _skip(self, t) -> bool:
        """Far from critical, checks are due only at the times :meth:`_schedule` set."""
        return self.far_next is not None and t < self.far_next and self._far()

    def _schedule(self, t):
        """After a check at ``t``: while every tracked eigenvalue is below the track threshold (the right-hand side is
        then the stable flow's and does not use the basis), the next check is at the next integer time, provided
        that the top eigenvalue, rising at twice the rate seen since the previous check, stays below the track
        threshold until then (the rate needs two checks); otherwise every accepted step is checked (as near the
        critical set)."""
        lam0 = float(self.lam_last[0]) if self.lam_last is not None and self.lam_last.size else math.nan
        if not (self._far() and math.isfinite(lam0)):
            self.far_next = self.far_prev = None
            return
        nxt, rate = math.floor(t) + 1.0, math.inf       # no rate yet: check again at the next step
        if self.far_prev is not None and t > self.far_prev[0]:
            rate = max(0.0, (lam0 - self.far_prev[1]) / (t - self.far_prev[0]))
        self.far_next = nxt if lam0 + 2.0 * rate * (nxt - t) < self.s_track else None
        self.far_prev = (t, lam0)

    def probe(self, t, y):
        """The device half of :meth:`track`'s Rayleigh–Ritz at a step end ``(t, y)`` about to be accepted, for a
        backend that reads it in its own host transfer of the step (:attr:`pyrod.integrate.base.FlowProblem.probe`):
        returns ``(flat float64 tensor, consume)``; ``consume(host values)`` finishes the Rayleigh–Ritz on the host
        and caches it for the event checks, :meth:`track` and the next right-hand side at this state. None when
        there is nothing to track yet."""
        t = float(t)
        if self.Y is None or self._skip(t):
            return None
        p = self.layout.unpack(y)
        n = self._basis_cols(t)
        base = self._cache.get("rr", t, y)           # the step end's right-hand side's (its watched columns)
        with torch.no_grad():
            Pt = self.P_tilde(p.get("nu"), t)
            if self.expand_due:
                G, S, HS = self._expansion_grams(p["w"], Pt, base, n)
            else:
                S, HS = self._basis(n), self._hvp_basis(p["w"], n, base)
                G = gram_matrices(S, HS, Pt)
        expanded, Y = self.expand_due, self.Y

        def consume(vals):
            self._cache.put("rr", t, y, self._finish(np.asarray(vals).reshape(G.shape), S, HS, expanded, n,
                                                     plain_basis=not expanded, basis=Y))
        return G.reshape(-1), consume

    def _refresh(self, t, w, nu, grow: bool = False):
        """Warm LOBPCG (:func:`pyrod.spectra.top_eigs`) at ``(w, ν, t)`` started from the current basis; grow /
        shrink the tracked set; store the basis ``Y = P̃^{-1/2}V`` (P̃-orthonormal).

        ``grow``: the check before it found the smallest tracked Ritz value above the track threshold (a lower
        bound of that eigenvalue), so the first solve already asks for one more pair. When a solve still ends with
        its smallest eigenvalue above the threshold, the next asks for one more than the number of the block's Ritz
        values above it (lower bounds of the next eigenvalues: those are above it too), warm-started from the whole
        block, instead of growing one pair per solve."""
        from ..spectra import hessian_operator, top_eigs

        Pt = self.P_tilde(nu, t)
        t0 = time.perf_counter()
        op = hessian_operator(self.problem, w, Pt)
        sq = Pt.sqrt()[:, None]
        init = None if self.Y is None else sq * self.Y
        if grow and self.k_track < self.max_track:
            self.k_track += 1
        for _ in range(self.max_track + 2):
            k = self.k_track
            evals, V, rep, block = top_eigs(op, self.d, k, dtype=self.problem.dtype, device=self.problem.device,
                                            init=init, tol=max(self.eig_tol, self.eig_floor),
                                            max_iter=self.eig_max_iter, seed=self.stats["n_refresh"],
                                            return_block=True)
            self.stats["refresh_hvp"] += rep.n_hvp
            self.stats["n_refresh"] += 1
            if not rep.converged:
                self.stats["refresh_unconverged"] += 1
                if math.isfinite(rep.max_residual):
                    # the operator could not deliver eig_tol: later refreshes ask for 1.5× what this one reached.
                    # A solve that stalled at the operator's round-off floor (e.g. float32 HVPs of a large model)
                    # below 1e-2 sets that floor even above refresh_tol (else every later refresh would run into it
                    # again, ~3 extra checks each), at most 10·refresh_tol (a third of the residual that triggers a
                    # refresh); any other, at most refresh_tol (the accuracy the tracking keeps between refreshes)
                    if rep.learned_floor is not None:
                        floor = min(10.0 * self.refresh_tol, rep.learned_floor)
                    else:
                        floor = min(self.refresh_tol, 1.5 * rep.max_residual)
                    self.eig_floor = max(self.eig_floor, floor)
            init = V if block is None else block
            ev = host.to_host(evals)
            if not np.all(np.isfinite(ev)):
                break
            if ev[-1] >= self.s_track and k < self.max_track:
                # the smallest tracked is still above the track threshold: grow past every block Ritz value above it
                above = k if rep.block_values is None else int((rep.block_values >= self.s_track).sum())
                self.k_track = min(self.max_track, max(k, above) + 1)
                continue
            if ev[-1] >= self.s_track and "max_track" not in self._warned:
                self._warned.add("max_track")
                warnings.warn(f"central flow: more than max_track={self.max_track} eigenvalues above "
                              f"track_threshold={self.track_threshold}; raise max_track", RuntimeWarning,
                              stacklevel=3)
            if k > 1 and ev[-2] < 0.9 * self.s_track:
                self.k_track = k - 1         # two below the threshold (with hysteresis): shrink
                ev, V = ev[:-1], V[:, :-1]
            break
        self.Y = (V / sq).detach()
        self.lam_last, self.lam_t = np.asarray(ev, dtype=np.float64), float(t)
        self._cache.clear()
        self.stats["t_eig"] += time.perf_counter() - t0
        self.stats["max_tracked"] = max(self.stats["max_tracked"], self.k_track)

    def _expansion_grams(self, w, Pt, base, n):
        """Device part of the expanded Rayleigh–Ritz: ``S = [U, Z]`` with ``U`` the basis (``HU`` taken from
        ``base``, a plain Rayleigh–Ritz at this state, when it kept them) and ``Z = P̃⁻¹HU`` P̃-orthogonalised against
        ``U`` (one pass) and normalised — the span of the Ritz residuals ``P̃⁻¹(HU − P̃UΛ)``, one Davidson step at once
        for the watched columns (the critical ones and the next candidate at the last check; the basis is ordered by
        eigenvalue): as many HVPs, plus ``n`` for ``HU`` without a ``base`` that kept them. ``U``: the first ``n``
        columns of the basis (all, or the watched ones, :meth:`_basis_cols`). ``Z`` is P̃-orthogonalised against
        ``U`` only: between whole checks the watched pairs may turn towards the other columns (a Rayleigh–Ritz on the
        whole basis, which whitens it, restores them at the next whole check; orthogonalising against the whole
        basis instead doubled the predicted loss's error on a flow started far above the threshold). Returns
        ``(grams, S, HS)``; a zero direction of ``Z`` stays 0 and the host Rayleigh–Ritz drops it."""
        # always the basis's first n columns themselves (products reused from a plain Rayleigh–Ritz at this state
        # on the same columns when there was one):
        # the same arithmetic whether the expansion is read in a tensor backend's step transfer (probe) or here
        U = self._basis(n)
        HU = self._hvp_basis(w, n, base)
        Pc = Pt[:, None] if Pt.numel() > 1 else Pt[0]
        Z = HU[:, :self._n_watched(n)] / Pc
        # one pass: the span of [U, Z] is what counts (the Rayleigh–Ritz on the host whitens S), so Z only needs the
        # part along U removed well enough that S stays well conditioned (|cos| ~ float round-off / residual)
        Z = Z - mm_columns(U, U.T @ (Pc * Z))
        nz = torch.sqrt((Z * (Pc * Z)).sum(0))
        Z = Z / nz.clamp_min(torch.finfo(Z.dtype).tiny)
        HZ = self._products(w, Z)
        self.stats["expand_hvp"] += Z.shape[1]
        self.stats["n_expand"] += 1
        S, HS = (U, Z), (HU, HZ)         # kept as column blocks (combine, gram_rows): no d × m copies
        return gram_matrices(S, HS, Pt), S, HS

    def _n_watched(self, k) -> int:
        """The critical pairs and the next candidate at the last check (all ``k`` before the first)."""
        lam = self.lam_last
        if lam is None or lam.size == 0 or not np.all(np.isfinite(lam)):
            return k
        return min(int((lam > self.s_sdcp).sum()) + 1, k)

    def _basis(self, n):
        """The first ``n`` columns of the tracked basis (the basis itself for all of them)."""
        return self.Y if n >= self.Y.shape[1] else self.Y[:, :n]

    def _hvp_basis(self, w, n, base: "Ritz | None" = None):
        """``H Y`` for the first ``n`` columns of the tracked basis (``(d, n)``), taking the products that ``base``, a
        plain Rayleigh–Ritz at this state on leading columns of the same basis, kept (:attr:`Ritz.basis_HY`): one
        HVP per column it lacks (a right-hand side at a step end on the watched columns, then the step's whole
        check). In the ``graph`` HVP mode (the default) the columns are the same numbers either way, one backward
        pass each; the ``batched`` and ``forward`` modes compute a block in one pass, equal up to rounding."""
        have = None
        if base is not None and base.basis_HY is not None and base.basis is not None and base.basis() is self.Y:
            have = base.basis_HY[:, :n]
        nb = 0 if have is None else have.shape[1]
        if nb >= n:
            return have
        self.stats["rr_hvp"] += n - nb
        rest = self._products(w, self.Y[:, nb:n])
        return rest if nb == 0 else cat_columns([have, rest])

    def _products(self, w, V):
        """``H V`` for the tracking's Rayleigh–Ritz steps and Davidson expansions: the problem's exact ``hvp``, or
        with ``tracking_hvp="difference"`` one-sided differences of gradients (:func:`.difference_hvp
        .hvp_by_difference`: one gradient per column, from :meth:`base_grad`)."""
        if self.tracking_hvp != "difference":
            return self.problem.hvp(w, V)
        return hvp_by_difference(self.problem.grad, w, self.base_grad(w), V)

    def base_grad(self, w):
        """``∇L(w)``, the base point of the difference products at ``w``, kept for the last point (a
        :class:`StateCache` of one entry): the right-hand side at that state takes it as its own gradient.
        Computed with the flow's uncounted ``grad`` (the run counts one gradient per right-hand side; a Rayleigh–
        Ritz where no right-hand side follows, such as a read-out inside a step, is then not counted, as autograd's
        graph of ∇L there is not)."""
        g = self._grad_memo.get("grad", None, w)
        if g is None:
            g = self.grad(w).detach()
            self._grad_memo.put("grad", None, w, g)
        return g

    def exact_products(self, w, Pt, rr: Ritz) -> Ritz:
        """``rr`` (Ritz pairs at ``w``) with its products from autograd: with ``tracking_hvp="difference"`` a
        measurement at ``eig_tol`` (finer than the differences' ~5e-8) recomputes ``H U`` exactly for the pairs it
        takes (one HVP each) and does the Rayleigh–Ritz on them again; otherwise ``rr`` itself."""
        if self.tracking_hvp != "difference":
            return rr
        U = rr.U
        HU = self.problem.hvp(w, U)
        self.stats["refine_hvp"] += U.shape[1]
        return self._finish(host.to_host(gram_matrices(U, HU, Pt)), U, HU, False, U.shape[1],
                            basis=None if rr.basis is None else rr.basis())

    def _finish(self, G, S, HS, expanded, k0, plain_basis=False, basis=None) -> Ritz:
        """Host part of a Rayleigh–Ritz on ``S``: the top ``k0`` Ritz pairs (device vectors ``S C``, ``HS C``; the
        coefficients go back without a wait). ``k0``: the number of basis columns the Rayleigh–Ritz started from
        (``S`` itself, or with ``expanded`` ``S = [U, Z]`` with them in its first ``k0`` columns, whose own Ritz
        pairs, ``Ritz.plain``, come from the leading blocks of the same matrices). ``plain_basis``: ``S`` is those
        basis columns themselves (``HS`` is kept as ``Ritz.basis_HY``). ``basis``: the tracked basis ``S`` came from
        (default: the current one)."""
        lam, rel, C = ritz_from_grams(G)
        # from the whole basis: the top k_track pairs (an expansion restores a column a dependent basis lost)
        k = min(self.k_track if k0 >= self.Y.shape[1] else k0, C.shape[1])
        Cd = host.to_device(C[:, :k], _blocks(S)[0])
        plain = None
        if expanded:
            lam_p, rel_p, _ = ritz_from_grams(G[:, :k0, :k0])
            plain = (lam_p[:k], rel_p[:k])
        out = Ritz(lam[:k], rel[:k], combine(S, Cd).detach(), combine(HS, Cd).detach(), expanded, plain,
                   basis_HY=HS if plain_basis and not expanded else None, n_basis=k0,
                   basis=self.Y if basis is None else basis)
        if expanded:                     # the newest expanded pairs keep their search space (memory: one at a time)
            last = getattr(self, "_last_space", None)
            if last is not None:
                last.space = None
            out.space = (S, HS, G)
            self._last_space = out
        return out

    def _ritz(self, t, y, w, nu, Pt, expand: bool = False, check: bool = True) -> Ritz:
        """Rayleigh–Ritz of the pencil (H, P̃) at the state ``y`` (``w``, ``ν`` its parts) on the tracked basis, or
        between whole checks on its watched leading columns (:meth:`_basis_cols`; one HVP a column), or with
        ``expand`` on those columns and their Davidson expansion (:meth:`_expansion_grams`; as many more HVPs as
        watched pairs when the plain one is cached here); cached per ``(t, y)``, one host transfer each."""
        hit = self._cache.get("rr", t, y)
        if self.Y is None:
            self._refresh(t, w, nu)
        n = self._basis_cols(t, check)
        if hit is not None and (hit.expanded or not expand) and hit.n_basis >= n:
            return hit
        t0 = time.perf_counter()
        if expand:
            G, S, HS = self._expansion_grams(w, Pt, hit, n)
        else:
            S, HS = self._basis(n), self._hvp_basis(w, n, hit)
            G = gram_matrices(S, HS, Pt)
        out = self._finish(host.to_host(G), S, HS, expand, n, plain_basis=not expand)
        self.stats["t_eig"] += time.perf_counter() - t0
        self._cache.put("rr", t, y, out)
        return out

    def _refine(self, w, Pt, rr: Ritz, k: int, tol: float, max_iter: int = 4) -> Ritz:
        """Davidson steps on the first ``k`` Ritz pairs of ``rr`` whose relative residual exceeds ``tol``, at most
        ``max_iter`` (one HVP per such pair and one transfer each; the search space keeps every direction added,
        so it grows like a block Krylov space): the pairs a measurement to ``tol`` needs, a few steps away from the
        tracking's ``refresh_tol``. The search space starts as ``rr``'s own when it kept it (the tracked basis and
        its Davidson expansion, :attr:`Ritz.space`), else as the pairs themselves; each step computes only the
        Gram entries of the new directions. Returns new Ritz pairs (possibly still above ``tol``: the caller's
        eigen-solve takes over from them); the tracked basis and the cache are left as they are."""
        if k > rr.lam.size:
            return rr
        if all(rr.rel[i] <= tol for i in range(k)):
            return rr
        sq = _sqrt_p64(Pt)
        if rr.space is not None:
            S, HS, G = rr.space
            S, HS = joined(S), joined(HS)
        else:
            S, HS = rr.U, rr.HU
            G = host.to_host(gram_matrices(S, HS, Pt))
        rows = [gram_rows(S, HS, sq)]
        Pc = Pt[:, None] if Pt.numel() > 1 else Pt[0]
        for _ in range(max_iter):
            act = [i for i in range(k) if not rr.rel[i] <= tol]
            if not act:
                break
            U, HU = rr.U, rr.HU
            Z = (take_columns(HU, act) - (Pc * take_columns(U, act)) * host.to_device(rr.lam[act], U)) / Pc
            for _ in range(2):                              # P̃-orthogonal to the whole search space
                Z = Z - mm_columns(S, S.T @ (Pc * Z))
            Z = Z / torch.sqrt((Z * (Pc * Z)).sum(0)).clamp_min(torch.finfo(Z.dtype).tiny)
            HZ = self.problem.hvp(w, Z)
            self.stats["refine_hvp"] += Z.shape[1]
            Mz = gram_rows(Z, HZ, sq)
            # the rows are kept per block, [A_b; B_b] (A = P̃^{1/2}S, B = P̃^{-1/2}HS): products with the new rows
            cross = torch.cat([Mo @ Mz.T for Mo in rows], dim=0) if len(rows) > 1 else rows[0] @ Mz.T
            vals = host.to_host(torch.cat([cross.reshape(-1), (Mz @ Mz.T).reshape(-1)]))
            m, j = S.shape[1], Z.shape[1]
            cross_h = vals[:4 * m * j].reshape(2 * m, 2 * j)
            if len(rows) > 1:                               # blocks [A_b; B_b] -> [A_all; B_all]
                sizes = [Mo.shape[0] // 2 for Mo in rows]
                parts, o = [], 0
                for n in sizes:
                    parts.append((cross_h[o:o + n], cross_h[o + n:o + 2 * n]))
                    o += 2 * n
                cross_h = np.concatenate([np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])])
            G = extend_grams(G, cross_h, vals[4 * m * j:].reshape(2 * j, 2 * j))
            rows.append(Mz)
            S, HS = cat_columns([S, Z]), cat_columns([HS, HZ])
            rr = self._finish(G, S, HS, False, rr.n_basis)
        return rr

    def _far(self) -> bool:
        """All tracked eigenvalues were below the track threshold at the last check: no eigenvalue can
        reach the critical one within a step, the right-hand side is the stable flow's (no HVPs)."""
        return self.lam_last is not None and self.lam_last.size > 0 and float(self.lam_last[0]) < self.s_track
