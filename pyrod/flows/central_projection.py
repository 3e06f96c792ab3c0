"""The central flow's projection: the semidefinite complementarity problem (SDCP) for the oscillation covariance.

Given the critical eigenpairs at ``(t, y)`` (``U`` (d×k), ``HU``, ``λ̃``; see :mod:`.central_tracking`) this builds the
affine map ``dA/dt = α + β[X]`` of ``A = Uᵀ(2P̃ − H)U`` — third derivatives ``T_ij = ∇(u_iᵀHu_j)`` (one batched
``Problem.d3`` call), the linear maps of ``svec(X)`` into ``dw/dt`` and, for a preconditioner, ``dP̃/dt`` through
``dν/dt`` — solves ``X ⪰ 0, α + β[X] ⪰ 0, ⟨X, α + β[X]⟩ = 0`` with :func:`pyrod.sdcp.solve_sdcp` (warm-started
from the last ``X``) and returns the averaged velocity ``dy/dt``. The derivation is in docs/central_flows.md and
in :mod:`pyrod.flows.central`.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch.func import jvp, vmap

__all__ = ["Eval", "cols", "project"]

_SQRT2 = math.sqrt(2.0)


class Eval:
    """Everything one evaluation of the central flow computes at ``(t, y)``."""

    __slots__ = ("t", "w", "m", "nu", "g", "Pt", "lam", "U", "HU", "kc", "X", "x", "That", "Ghat",
                 "sdcp", "dy", "rr_hvp", "alpha", "beta")


def cols(fn, M):
    """Apply a vector function to each column of ``M`` (vmap; a loop if the function does not vmap)."""
    if M.shape[1] == 0:
        return M
    try:
        return vmap(fn, in_dims=1, out_dims=1)(M)
    except Exception:  # noqa: BLE001 - any vmap limitation: fall back to a loop over (few) columns
        return torch.stack([fn(M[:, i]) for i in range(M.shape[1])], dim=1)


def project(flow, ev: Eval, tgt0) -> Eval:
    """Solve the SDCP at the evaluation ``ev`` (``ev.U``/``ev.HU`` the ``kc ≥ 1`` critical pairs, ``ev.g`` the
    gradient, ``tgt0`` the ν target without oscillation) and fill ``ev.That``, ``ev.Ghat``, ``ev.alpha``,
    ``ev.beta``, ``ev.X`` (``kc×kc``), ``ev.x = svec(X)``, ``ev.sdcp`` and ``ev.dy``. ``flow`` is the
    :class:`~pyrod.flows.central.CentralFlow` (optimizer, τ, counters, the SDCP warm start ``_X_prev``)."""
    from ..sdcp import solve_sdcp

    opt, prob = flow.opt, flow.problem
    t, w, m, nu, g, Pt, lam, kc = ev.t, ev.w, ev.m, ev.nu, ev.g, ev.Pt, ev.lam, ev.kc
    Uc, HUc = ev.U, ev.HU
    iu, ju = torch.triu_indices(kc, kc, device=g.device)
    s = torch.where(iu == ju, 1.0, _SQRT2).to(dtype=g.dtype, device=g.device)
    # --- third derivatives T_p = ∇(u_iᵀ H u_j), all pairs in one batched call
    t0 = time.perf_counter()
    T = prob.d3(w, Uc[:, iu], Uc[:, ju])
    flow.stats["t_t3"] += time.perf_counter() - t0
    flow.stats["n_t3"] += int(iu.numel())
    flow.stats["n_t3_calls"] += 1
    That = T * s                                           # (d, m): Σ_ij X_ij T_ij = That @ svec(X)
    ev.That = That
    # --- velocities: stable parts and the linear maps of svec(X)
    Dw0 = lambda gg: opt.direction(w, m, gg, nu, t + flow.tshift)[0]  # noqa: E731
    zero = torch.zeros_like(g)
    Dw_zero = Dw0(zero)
    a_w = Dw0(g)
    B_w = cols(lambda v: Dw0(v) - Dw_zero, 0.5 * That)        # (d, m): X-part of dw/dt
    dA_stable = -(That.T @ a_w)                                      # svec(−Uᵀ dH/dt U), stable part
    dA_X = -(That.T @ B_w)                                           # (m, m)
    if flow.has_nu:
        hp, hq = HUc[:, iu], HUc[:, ju]
        q = opt.nu_target
        Ghat = cols(lambda a: q(a), hp + hq) - cols(lambda a: q(a), hp - hq)
        Ghat = 0.25 * Ghat * s                             # (ν, m): E[tgt(Hδ)] = Ghat @ svec(X)
        ev.Ghat = Ghat
        rho = opt.nu_velocity(nu, nu + 1.0) - opt.nu_velocity(nu, nu)     # d(ν-velocity)/d(target)
        a_nu = opt.nu_velocity(nu, tgt0)
        P, dP = jvp(lambda n: opt.preconditioner(n, t + flow.tshift), (nu,), (torch.ones_like(nu),))
        bad = ~torch.isfinite(dP)          # ν = 0 (e.g. weights of always-zero inputs): √ν has no derivative;
        if bool(bad.any()):                # there ν̇ = 0 too (zero gradient row), so the term is dropped
            dP = torch.where(bad, torch.zeros_like(dP), dP)
        h = 1e-4
        dPdt = (opt.preconditioner(nu, t + flow.tshift + h) - opt.preconditioner(nu, t + flow.tshift - h)) / (2 * h)
        dPt_stable = (flow.c * (dP * a_nu + dPdt)).reshape(-1)
        dPt_X = flow.c * (dP * rho).reshape(-1, 1) * Ghat    # (|P|, m)
        if Pt.numel() > 1:
            What = (Uc[:, iu] * Uc[:, ju]) * s               # (d, m): svec(Uᵀ diag(p) U) = Whatᵀ p
        else:
            What = ((Uc[:, iu] * Uc[:, ju]).sum(0) * s)[None, :]
        dA_stable = dA_stable + 2.0 * (What.T @ dPt_stable)
        dA_X = dA_X + 2.0 * (What.T @ dPt_X)
    else:
        ev.Ghat = None
    # --- SDCP: X ⪰ 0, α + β[X] ⪰ 0, complementary
    from ..sdcp import smat
    lam_c = lam[:kc]
    alpha = np.diag((2.0 - lam_c).double().cpu().numpy()) + flow.tau * smat(dA_stable.double().cpu().numpy(), kc)
    beta = flow.tau * dA_X.double().cpu().numpy()
    ev.alpha, ev.beta = alpha, beta
    if kc > 1:   # the ν-feedback part of β is not exactly symmetric (Hu_i ≠ 2P̃u_i off the threshold); the
        # solver uses its symmetric part (as the reference does): record how far that is from the true operator
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
        if merit > 1e-6 and "sdcp" not in flow._warned:
            flow._warned.add("sdcp")
            warnings.warn(f"central flow: SDCP not converged at t={t:.6g} (k={kc}): {res.message}",
                          RuntimeWarning, stacklevel=2)
    X = 0.5 * (res.X + res.X.T)
    flow._X_prev = X
    ev.X, ev.sdcp = X, res
    from ..sdcp import svec
    x = torch.as_tensor(svec(X), dtype=g.dtype, device=g.device)
    ev.x = x
    tgt = None
    if flow.has_nu:
        tgt = tgt0 + (ev.Ghat @ x).reshape(tgt0.shape)
    ev.dy = flow._velocity(w, m, nu, t, g + 0.5 * (That @ x), tgt)
    return ev
