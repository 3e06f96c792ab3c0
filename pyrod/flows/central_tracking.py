"""Eigen-subspace tracking for the central flow (a mixin of :class:`~pyrod.flows.central.CentralFlow`).

A basis ``Y`` (d × ``k_track``, P̃-orthonormal at its refresh) of the top eigenvectors of the pencil (H, P̃) is kept
between steps: every evaluation does a Rayleigh–Ritz on it (``k_track`` HVPs, cached per state within a chunk);
after every accepted step :meth:`SubspaceTracking.track` checks the Ritz residuals and improves the basis by one
Davidson expansion, or re-solves it by warm LOBPCG (:func:`pyrod.spectra.top_eigs`) when the tracked set must grow
or shrink or a residual is large. Tracked: every eigenvalue with ``λ̃ ≥ s_track`` plus one below it (at most
``max_track``).

State between chunks (``tracking_state``): ``Y``, ``k_track``, ``lam_last`` (λ̃ at the last accepted step); the
cache ``_cache`` is pure and cleared at every chunk. The mixin needs from its host: ``problem``, ``d``,
``P_tilde(ν, t)``, ``s_sdcp``, ``s_track``, ``max_track``, ``track_threshold``, ``eig_tol``, ``eig_max_iter``,
``refresh_tol``, ``stats`` and ``_warned``.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings

import torch

__all__ = ["SubspaceTracking"]


class SubspaceTracking:
    """Tracked eigen-subspace of the pencil (H, P̃) (see the module docstring)."""

    def _init_tracking(self):
        self.k_track = 1
        self.Y = None               # (d, k_track) tracked basis in w-coordinates (P̃-orthonormal at its refresh)
        self.lam_last = None        # λ̃ at the last accepted step (Rayleigh–Ritz) or refresh
        self.eig_floor = 0.0        # tolerance floor learned from an unconverged refresh (≤ refresh_tol)
        self._cache = {}            # (kind, t, y-digest) -> Ritz / evaluation data (pure; cleared per chunk)

    def tracking_state(self) -> dict:
        return {"Y": self.Y, "k_track": self.k_track, "lam_last": self.lam_last, "eig_floor": self.eig_floor}

    def load_tracking_state(self, state: dict) -> None:
        dev, dt = self.problem.device, self.problem.dtype
        self.Y = None if state["Y"] is None else state["Y"].to(device=dev, dtype=dt)
        self.lam_last = None if state["lam_last"] is None else state["lam_last"].to(device=dev, dtype=dt)
        self.k_track = int(state["k_track"])
        self.eig_floor = float(state.get("eig_floor", 0.0))
        self._cache = {}

    def track(self, t, y) -> bool:
        """After each accepted step: check the tracked subspace at the new state (Rayleigh–Ritz, usually cached
        from the step's last stage). When a Ritz residual of a critical pair (or of the next candidate) exceeds
        ``refresh_tol`` the basis is improved by one Davidson expansion with the residuals (``k_track`` HVPs); a
        full warm LOBPCG solve is used when the tracked set must grow or shrink, or the residual is large.
        Returns False when there was no basis yet (the first refresh was done instead of a check)."""
        p = self.layout.unpack(y)
        t = float(t)
        w, nu = p["w"], p.get("nu")
        with torch.no_grad():
            if self.Y is None:
                self._refresh(t, w, nu)
                return False
            Pt = self.P_tilde(nu, t)
            lam, U, HU, rel = self._ritz(t, w, nu, Pt, key=self._key(t, y))
            self.lam_last = lam
            k = lam.numel()
            kc = int((lam > self.s_sdcp).sum())
            j = min(kc + 1, k)
            r = float(rel[:j].max())
            reason = None
            if not (bool(torch.isfinite(lam).all()) and math.isfinite(r)):
                reason = "nonfinite"
            elif float(lam[-1]) >= self.s_track and k < self.max_track:
                reason = "grow"
            elif k > 1 and float(lam[-2]) < 0.9 * self.s_track:
                reason = "shrink"
            elif r > 30 * self.refresh_tol:
                reason = "residual"
            if reason is not None:
                self.stats["refresh_" + reason] += 1
                self._refresh(t, w, nu)
            elif r > self.refresh_tol:
                self._expand(w, Pt, lam, U, HU)
        return True

    def _refresh(self, t, w, nu):
        """Warm LOBPCG (:func:`pyrod.spectra.top_eigs`) at ``(w, ν, t)`` started from the current basis; grow /
        shrink the tracked set; store the basis ``Y = P̃^{-1/2}V`` (P̃-orthonormal)."""
        from ..spectra import hessian_operator, top_eigs

        Pt = self.P_tilde(nu, t)
        t0 = time.perf_counter()
        op = hessian_operator(self.problem, w, Pt)
        sq = Pt.sqrt()[:, None]
        init = None if self.Y is None else sq * self.Y
        for _ in range(self.max_track + 2):
            k = self.k_track
            evals, V, rep = top_eigs(op, self.d, k, dtype=self.problem.dtype, device=self.problem.device,
                                     init=init, tol=max(self.eig_tol, self.eig_floor), max_iter=self.eig_max_iter,
                                     seed=self.stats["n_refresh"])
            self.stats["refresh_hvp"] += rep.n_hvp
            self.stats["n_refresh"] += 1
            if not rep.converged:
                self.stats["refresh_unconverged"] += 1
                if math.isfinite(rep.max_residual):
                    # the operator could not deliver eig_tol (a round-off floor, e.g. float32 HVPs of a large model,
                    # stalled or at eig_max_iter): later refreshes ask for 1.5× what this one reached, never more
                    # than refresh_tol (the accuracy the tracking keeps between refreshes anyway)
                    self.eig_floor = min(self.refresh_tol, max(self.eig_floor, 1.5 * rep.max_residual))
            init = V
            if not bool(torch.isfinite(evals).all()):
                break
            if float(evals[-1]) >= self.s_track and k < self.max_track:
                self.k_track = k + 1         # the smallest tracked is still above the track threshold: grow
                continue
            if float(evals[-1]) >= self.s_track and "max_track" not in self._warned:
                self._warned.add("max_track")
                warnings.warn(f"central flow: more than max_track={self.max_track} eigenvalues above "
                              f"track_threshold={self.track_threshold}; raise max_track", RuntimeWarning,
                              stacklevel=3)
            if k > 1 and float(evals[-2]) < 0.9 * self.s_track:
                self.k_track = k - 1         # two below the threshold (with hysteresis): shrink
                evals, V = evals[:-1], V[:, :-1]
            break
        self.Y = (V / sq).detach()
        self.lam_last = evals.detach()
        self._cache.clear()
        self.stats["t_eig"] += time.perf_counter() - t0
        self.stats["max_tracked"] = max(self.stats["max_tracked"], self.k_track)

    @staticmethod
    def _pencil_rr(S, HS, Pt):
        """Rayleigh–Ritz of the pencil (H, P̃) on span(S) (columns may be dependent): ``(λ desc, C)`` with
        ``(SC)ᵀP̃(SC) = I``."""
        GP = S.T @ (Pt[:, None] * S) if Pt.numel() > 1 else Pt[0] * (S.T @ S)
        GP = 0.5 * (GP + GP.T)
        e, Q = torch.linalg.eigh(GP)
        keep = e > 1e-12 * e.max()
        W = Q[:, keep] * e[keep].rsqrt()                  # whitening: Wᵀ GP W = I
        GH = S.T @ HS
        M = W.T @ (0.5 * (GH + GH.T)) @ W
        lam, Z = torch.linalg.eigh(0.5 * (M + M.T))
        return lam.flip(0), W @ Z.flip(1)

    def _expand(self, w, Pt, lam, U, HU):
        """One Davidson step: Rayleigh–Ritz on ``[U, P̃⁻¹R]`` (R the Ritz residuals); keeps the top ``k_track``."""
        t0 = time.perf_counter()
        R = HU - (Pt[:, None] * U) * lam
        Z = R / Pt[:, None]
        for _ in range(2):                                  # P̃-orthogonalise against U (twice)
            Z = Z - U @ (U.T @ (Pt[:, None] * Z))
        nz = torch.sqrt((Z * (Pt[:, None] * Z)).sum(0))
        ok = nz > 1e-12 * nz.max().clamp_min(1e-300)
        Z = Z[:, ok] / nz[ok]
        if Z.shape[1]:
            HZ = self.problem.hvp(w, Z)
            self.stats["expand_hvp"] += Z.shape[1]
            S, HS = torch.cat([U, Z], dim=1), torch.cat([HU, HZ], dim=1)
            lam2, C = self._pencil_rr(S, HS, Pt)
            k = min(self.k_track, C.shape[1])
            self.Y = (S @ C[:, :k]).detach()
            self.lam_last = lam2[:k]
            self._cache.clear()
        self.stats["n_expand"] += 1
        self.stats["t_eig"] += time.perf_counter() - t0

    def _ritz(self, t, w, nu, Pt, key=None):
        """Rayleigh–Ritz of the pencil (H, P̃) on the tracked basis: ``(λ̃ desc, U (P̃-orthonormal), HU, rel)``
        with ``rel`` the relative residuals of the Ritz pairs."""
        if key is not None and ("rr", key) in self._cache:
            return self._cache[("rr", key)]
        if self.Y is None:
            self._refresh(t, w, nu)
        t0 = time.perf_counter()
        Y = self.Y
        HY = self.problem.hvp(w, Y)
        self.stats["rr_hvp"] += Y.shape[1]
        lam, C = self._pencil_rr(Y, HY, Pt)
        U, HU = Y @ C, HY @ C
        # relative residuals in the symmetric form: ‖P̃^{-1/2}(Hu − λP̃u)‖ / |λ|
        R = HU - (Pt[:, None] * U) * lam
        rel = torch.linalg.vector_norm(R * Pt.rsqrt()[:, None], dim=0) / lam.abs().clamp_min(1e-300)
        out = (lam, U, HU, rel)
        self.stats["t_eig"] += time.perf_counter() - t0
        if key is not None:
            self._remember(("rr", key), out)
        return out

    def _remember(self, key, value):
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[key] = value

    def _far(self) -> bool:
        """All tracked eigenvalues were below the track threshold at the last accepted step: no eigenvalue can
        reach the critical one within a step, the right-hand side is the stable flow's (no HVPs)."""
        return self.lam_last is not None and float(self.lam_last[0]) < self.s_track

    def _key(self, t, y):
        """Cache key ``(t, digest of y)``. Hashing the whole state costs more than comparing it, and the same state
        comes back many times per step (as a new tensor: event checks, the accepted-step check, the read-out), so
        the last few keys are memoised by exact comparison of the values (a pure cache, not state)."""
        t = float(t)
        memo = self.__dict__.setdefault("_key_memo", [])
        for tm, ym, key in memo:
            if tm == t and ym.shape == y.shape and ym.dtype == y.dtype and torch.equal(ym, y):
                return key
        h = hashlib.blake2b(y.detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()
        key = (t, h)
        memo.insert(0, (t, y.detach().clone(), key))
        del memo[4:]
        return key
