"""The central flow's projection: the semidefinite complementarity problem (SDCP) for the oscillation covariance.

Given the critical eigenpairs at ``(t, y)`` (``U`` (d×k), ``HU``, ``λ̃``; see :mod:`.central_tracking`) this builds the
affine map ``dA/dt = α + β[X]`` of ``A = Uᵀ(2P̃ − H)U`` — third derivatives ``T_ij = ∇(u_iᵀHu_j)`` (one batched
``Problem.d3_pairs`` call, or differences of gradients: :mod:`.third_derivatives`), the linear maps of ``svec(X)``
into ``dw/dt`` and, for a preconditioner, ``dP̃/dt`` through ``dν/dt`` — solves ``X ⪰ 0, α + β[X] ⪰ 0,
⟨X, α + β[X]⟩ = 0`` with :func:`pyrod.sdcp.solve_sdcp` (warm-started from the last ``X``) and returns the averaged
velocity ``dy/dt``. The derivation is in docs/central_flows.md and
in :mod:`pyrod.flows.central`.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.func import jvp, vmap

from .. import host
from ..columns import cat_columns, stack_columns, take_columns
from .third_derivatives import d3_pairs_by_difference

__all__ = ["Eval", "cols", "project"]

_SQRT2 = math.sqrt(2.0)


class Eval:
    """Everything one evaluation of the central flow computes at ``(t, y)``.

    ``X``, ``alpha``, ``beta`` and ``sdcp`` are host values (NumPy, :class:`~pyrod.sdcp.SDCPResult`). With one
    critical direction the SDCP is solved on the device in closed form (no transfer): then ``X_dev``, ``alpha_dev``,
    ``beta_dev`` hold the 1×1 device values and the host ones are read on first access (a transfer: read-outs and
    tests only)."""

    __slots__ = ("t", "w", "m", "nu", "g", "Pt", "lam", "U", "HU", "kc", "x", "X_dev", "That", "Ghat", "dy",
                 "alpha_dev", "beta_dev", "_X", "_alpha", "_beta", "_sdcp", "sdcp_tol")

    def __init__(self):
        self.X_dev = self.alpha_dev = self.beta_dev = None
        self._X = self._alpha = self._beta = self._sdcp = None

    def set_host(self, X=None, alpha=None, beta=None, sdcp=None):
        """Host values known without a transfer (the host SDCP solve, or a read-out's batched transfer)."""
        if X is not None:
            self._X = X
        if alpha is not None:
            self._alpha, self._beta = alpha, beta
        if sdcp is not None:
            self._sdcp = sdcp

    def _read(self):
        if self._alpha is None and self.alpha_dev is not None:
            a, b, x = host.to_host(torch.stack([self.alpha_dev.reshape(()), self.beta_dev.reshape(()),
                                           self.X_dev.reshape(()).to(torch.float64)]))
            self._alpha, self._beta, self._X = np.array([[a]]), np.array([[b]]), np.array([[x]])

    @property
    def X(self):
        self._read()
        return self._X

    @property
    def alpha(self):
        self._read()
        return self._alpha

    @property
    def beta(self):
        self._read()
        return self._beta

    @property
    def sdcp(self):
        """The SDCP solution (:class:`~pyrod.sdcp.SDCPResult`); for the device closed form, the host solver's own
        closed form on the same α, β (identical X up to round-off)."""
        if self._sdcp is None and self.alpha_dev is not None:
            from ..sdcp import solve_sdcp
            self._sdcp = solve_sdcp(self.alpha, self.beta, tol=self.sdcp_tol)
        return self._sdcp


def cols(fn, M):
    """Apply a vector function to each column of ``M`` (vmap; a loop if the function does not vmap)."""
    if M.shape[1] == 0:
        return M
    try:
        return vmap(fn, in_dims=1, out_dims=0)(M).T
    except Exception:  # noqa: BLE001 - any vmap limitation: fall back to a loop over (few) columns
        return stack_columns(fn(M[:, i]) for i in range(M.shape[1]))


def project(flow, ev: Eval, tgt0) -> Eval:
    """Solve the SDCP at the evaluation ``ev`` (``ev.U``/``ev.HU`` the ``kc ≥ 1`` critical pairs, ``ev.g`` the
    gradient, ``tgt0`` the ν target without oscillation) and fill ``ev.That``, ``ev.Ghat``, ``ev.alpha``,
    ``ev.beta``, ``ev.X`` (``kc×kc``), ``ev.x = svec(X)``, ``ev.sdcp`` and ``ev.dy``. ``flow`` is the
    :class:`~pyrod.flows.central.CentralFlow` (optimizer, τ, counters, the SDCP warm start ``_X_prev``)."""
    opt, prob = flow.opt, flow.problem
    t, w, m, nu, g, Pt, lam, kc = ev.t, ev.w, ev.m, ev.nu, ev.g, ev.Pt, ev.lam, ev.kc
    Uc, HUc = ev.U, ev.HU
    iu, ju = torch.triu_indices(kc, kc, device=g.device)
    s = torch.where(iu == ju, 1.0, _SQRT2).to(dtype=g.dtype, device=g.device)
    # --- third derivatives T_p = ∇(u_iᵀ H u_j): all pairs in one batched call, or from differences of gradients
    t0 = time.perf_counter()
    iu_h, ju_h = np.triu_indices(kc)                       # the same (row-major upper-triangle) order, on the host
    if flow.third_derivative == "difference":
        T = d3_pairs_by_difference(prob.grad, w, g, Uc, iu_h.tolist(), ju_h.tolist())
    else:
        T = prob.d3_pairs(w, Uc, iu_h.tolist(), ju_h.tolist())
    flow.stats["t_t3"] += time.perf_counter() - t0
    flow.stats["n_t3"] += int(iu.numel())
    flow.stats["n_t3_calls"] += 1
    That = T * s                                           # (d, m): Σ_ij X_ij T_ij = That @ svec(X)
    ev.That = That
    # --- velocities: stable parts and the linear maps of svec(X)
    # D is affine in g (checked when the flow is built): D(0), D(g) and D(That/2) − D(0) in one vmap, so that
    # the preconditioner P(ν, t) inside D is evaluated once for all of them
    Dw0 = lambda gg: opt.direction(w, m, gg, nu, t + flow.tshift)[0]  # noqa: E731
    D = cols(Dw0, cat_columns([torch.zeros_like(g)[:, None], g[:, None], 0.5 * That]))
    a_w = D[:, 1]
    B_w = D[:, 2:] - D[:, :1]                                        # (d, m): X-part of dw/dt
    dA_stable = -(That.T @ a_w)                                      # svec(−Uᵀ dH/dt U), stable part
    dA_X = -(That.T @ B_w)                                           # (m, m)
    if flow.has_nu:
        hp, hq = take_columns(HUc, iu), take_columns(HUc, ju)
        q = opt.nu_target
        Gpm = cols(q, cat_columns([hp + hq, hp - hq]))          # q(h_p + h_q) and q(h_p − h_q) in one vmap
        Ghat = Gpm[:, :hp.shape[1]] - Gpm[:, hp.shape[1]:]
        Ghat = 0.25 * Ghat * s                             # (ν, m): E[tgt(Hδ)] = Ghat @ svec(X)
        ev.Ghat = Ghat
        rho = opt.nu_velocity(nu, nu + 1.0) - opt.nu_velocity(nu, nu)     # d(ν-velocity)/d(target)
        a_nu = opt.nu_velocity(nu, tgt0)
        P, dP = jvp(lambda n: opt.preconditioner(n, t + flow.tshift), (nu,), (torch.ones_like(nu),))
        # ν = 0 (e.g. weights of always-zero inputs): √ν has no derivative; there ν̇ = 0 too (zero gradient row),
        # so the term is dropped
        dP = torch.where(torch.isfinite(dP), dP, torch.zeros_like(dP))
        dPdt = opt.preconditioner_rate(nu, t + flow.tshift, P)
        dPt_stable = (flow.c * (dP * a_nu + dPdt)).reshape(-1)
        dPt_X = flow.c * (dP * rho).reshape(-1, 1) * Ghat    # (|P|, m)
        if Pt.numel() > 1:
            What = (take_columns(Uc, iu) * take_columns(Uc, ju)) * s   # (d, m): svec(Uᵀ diag(p) U) = Whatᵀ p
        else:
            What = ((take_columns(Uc, iu) * take_columns(Uc, ju)).sum(0) * s)[None, :]
        dA_stable = dA_stable + 2.0 * (What.T @ dPt_stable)
        dA_X = dA_X + 2.0 * (What.T @ dPt_X)
    else:
        ev.Ghat = None
    # --- SDCP: X ⪰ 0, α + β[X] ⪰ 0, complementary
    ev.sdcp_tol = flow.sdcp_tol
    if kc == 1:
        x = _closed_form_on_device(flow, ev, lam, dA_stable, dA_X, g)
    else:
        x = _solve_on_host(flow, ev, lam, kc, dA_stable, dA_X, g)
    ev.x = x
    tgt = None
    if flow.has_nu:
        tgt = tgt0 + (ev.Ghat @ x).reshape(tgt0.shape)
    ev.dy = flow._velocity(w, m, nu, t, g + 0.5 * (That @ x), tgt)
    return ev


def _closed_form_on_device(flow, ev, lam, dA_stable, dA_X, g):
    """k = 1: ``X = max(0, −α/β)`` on the device (:func:`pyrod.sdcp.solve_sdcp`'s closed form: ``X = 0`` when
    ``α ≥ 0``; no solution when ``α < 0`` and ``β ≤ 0``, then ``X = 0`` and the solve counts as unconverged, read
    with the flow's next flush of its device counters). No host transfer. Returns ``svec(X)`` (1,)."""
    a = (2.0 - float(lam[0])) + flow.tau * dA_stable.reshape(()).to(torch.float64)
    b = flow.tau * dA_X.reshape(()).to(torch.float64)
    act, bpos = a < 0, b > 0
    xv = torch.where(act & bpos, -a / torch.where(bpos, b, torch.ones_like(b)), torch.zeros_like(a))
    flow.count_device_failures(act & ~bpos)
    flow.stats["n_sdcp"] += 1
    flow._X_prev = None
    ev.alpha_dev, ev.beta_dev, ev.X_dev = a.reshape(1, 1), b.reshape(1, 1), xv.reshape(1, 1)
    return xv.reshape(1).to(g.dtype)


def _solve_on_host(flow, ev, lam, kc, dA_stable, dA_X, g):
    """k ≥ 2: :func:`pyrod.sdcp.solve_sdcp` on the host, warm-started from the last X; the ``m + m²`` numbers of
    dA/dt are read in one transfer. Returns ``svec(X)`` (m,) on the device."""
    from ..sdcp import smat, solve_sdcp, svec

    nm = dA_stable.numel()
    dA = host.to_host(host.stack_scalars([dA_stable, dA_X], g))
    alpha = np.diag(2.0 - np.asarray(lam[:kc], dtype=np.float64)) + flow.tau * smat(dA[:nm], kc)
    beta = flow.tau * dA[nm:].reshape(nm, nm)
    # the ν-feedback part of β is not exactly symmetric (Hu_i ≠ 2P̃u_i off the threshold); the solver uses its
    # symmetric part (as the reference does): record how far that is from the true operator
    asym = np.linalg.norm(beta - beta.T) / max(np.linalg.norm(beta), 1e-300)
    flow.stats["sdcp_max_asymmetry"] = max(flow.stats["sdcp_max_asymmetry"], float(asym))
    X0 = flow._X_prev if (flow._X_prev is not None and flow._X_prev.shape == (kc, kc)) else None
    t0 = time.perf_counter()
    res = solve_sdcp(alpha, beta, tol=flow.sdcp_tol, X0=X0)
    flow.stats["t_sdcp"] += time.perf_counter() - t0
    flow.stats["n_sdcp"] += 1
    flow.stats["sdcp_iterations"] += int(res.iterations)
    merit = max(res.complementarity, res.primal_infeas / max(np.linalg.norm(res.X), 1e-300),
                res.dual_infeas / max(np.linalg.norm(alpha) + np.linalg.norm(res.Z - alpha), 1e-300))
    flow.stats["sdcp_max_merit"] = max(flow.stats["sdcp_max_merit"], float(merit))
    if not res.converged:
        flow.stats["sdcp_unconverged"] += 1
        if merit > 1e-6:
            flow.warn_once("sdcp", f"central flow: SDCP not converged at t={ev.t:.6g} (k={kc}): {res.message}")
    X = 0.5 * (res.X + res.X.T)
    flow._X_prev = X
    ev.set_host(X=X, alpha=alpha, beta=beta, sdcp=res)
    ev.X_dev = host.to_device(X, g)
    return host.to_device(svec(X), g)
