"""Diagnostics measured the same way for every run (discrete, midpoint, stable, rod, central).

One :class:`Measurer` per run holds the warm-started eigen-trackers; :meth:`Measurer.measure` returns a
dict of the standard variables at one integer time ``t`` (one time unit = one optimizer step):

* ``loss``, ``accuracy``, ``grad_norm`` every step;
* every ``eig_every`` steps (0: never): ``eigs`` (top-k of P⁻¹H, or of H without a preconditioner; shape ``(k,)``),
  ``sharpness`` = λmax(H), ``preconditioned_sharpness`` = λmax(P⁻¹H), ``threshold``,
  ``effective_sharpness`` = preconditioned_sharpness / threshold, ``eig_residual`` (max relative residual);
* ``nu_norm`` = ‖ν‖ where the optimizer has a second moment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .. import host
from ..schema import Var

__all__ = ["Measurer", "standard_variables"]


def standard_variables(k: int, has_nu: bool) -> list:
    """The :class:`~pyrod.schema.Var` list every run group starts with."""
    out = [
        Var("loss", ("t",), "training loss (full batch)", "1"),
        Var("accuracy", ("t",), "training accuracy", "1"),
        Var("grad_norm", ("t",), "Euclidean norm of the full-batch gradient", "1"),
        Var("eigs", ("t", "eig"), "top eigenvalues of the preconditioned Hessian P^-1 H (of H without P)", "1"),
        Var("sharpness", ("t",), "largest Hessian eigenvalue lambda_max(H)", "1"),
        Var("preconditioned_sharpness", ("t",), "largest eigenvalue of P^-1 H", "1"),
        Var("threshold", ("t",), "stability threshold on lambda_max(P^-1 H)", "1"),
        Var("effective_sharpness", ("t",), "preconditioned sharpness divided by the stability threshold", "1"),
        Var("eig_residual", ("t",), "largest relative residual of the computed eigenpairs", "1"),
    ]
    if has_nu:
        out.append(Var("nu_norm", ("t",), "Euclidean norm of the second-moment buffer nu", "1"))
    return out


@dataclass
class Measurer:
    """Measures the standard diagnostics of one run (holds warm starts between calls)."""

    problem: object
    optimizer: object
    n_eig: int
    """eigenpairs measured (the spec's ``eig.k``, ``simulate``'s ``eigs``; the length of the ``eig`` dimension)"""
    eig_every: int
    eig_tol: float = 1e-8
    eig_max_iter: int = 200
    raw: bool = True          # also λmax(H) when there is a preconditioner (a second solve)

    def __post_init__(self):
        from ..spectra import EigTracker

        self.adaptive = bool(self.optimizer.has_nu)
        self.tracker = EigTracker(self.n_eig, tol=self.eig_tol, max_iter=self.eig_max_iter)
        self.raw_tracker = EigTracker(1, tol=self.eig_tol, max_iter=self.eig_max_iter) \
            if self.adaptive and self.raw else None
        self.last_evecs = None  # eigenvectors of the symmetric form at the last eigen-solve

    def state_dict(self) -> dict:
        """The eigen-trackers' warm starts (see :meth:`pyrod.spectra.EigTracker.state_dict`)."""
        return {"tracker": self.tracker.state_dict(),
                "raw_tracker": None if self.raw_tracker is None else self.raw_tracker.state_dict(),
                "last_evecs": self.last_evecs}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state["tracker"])
        if self.raw_tracker is not None:
            self.raw_tracker.load_state_dict(state["raw_tracker"])
        self.last_evecs = state["last_evecs"]

    def wants_eigs(self, step: int) -> bool:
        return self.n_eig > 0 and self.eig_every > 0 and step % self.eig_every == 0

    def preconditioner(self, nu, t):
        """``P(ν, t)`` as a vector/scalar tensor, or None when the optimizer has no preconditioner."""
        if not self.adaptive or nu is None:
            return None
        return self.optimizer.preconditioner(nu, t)

    def measure(self, w: torch.Tensor, *, step: int, nu=None, t: float | None = None, loss=None,
                grad=None, eigs: bool | None = None, spectrum: dict | None = None, grad_finite: bool = False,
                extra: dict | None = None) -> dict:
        """Diagnostics at parameters ``w`` (``(d,)``); ``nu`` the second moment entering ``P`` at time ``t``.
        ``spectrum``: the result of :meth:`spectrum` at this very point, computed earlier (a flow computes it
        while its own eigenvectors there are at hand); used instead of a new eigen-solve. The scalars are read
        from the device in one transfer; ``grad_finite`` adds ``"grad_finite"`` (whether every gradient entry is
        finite) to that transfer and to the result (not a recorded variable: the caller removes it); ``extra``:
        ``{name: 0-d tensor}`` read in the same transfer and returned as floats under those names."""
        prob = self.problem
        t = float(step if t is None else t)
        if loss is None or grad is None:
            loss, grad = prob.loss_and_grad(w)
        # every scalar in one device → host transfer
        parts = [loss, prob.accuracy_tensor(w), torch.linalg.vector_norm(grad)]
        if nu is not None:
            parts.append(torch.linalg.vector_norm(nu))
        if grad_finite:
            parts.append(torch.isfinite(grad).all())
        names = list(extra or {})
        parts += [extra[n] for n in names]
        vals = host.to_host(host.stack_scalars(parts, w))
        extra_vals = dict(zip(names, (float(v) for v in vals[len(vals) - len(names):]), strict=True))
        vals = vals[:len(vals) - len(names)]
        out = {"loss": float(vals[0]), "accuracy": float(vals[1]), "grad_norm": float(vals[2])}
        if nu is not None:
            out["nu_norm"] = float(vals[3])
        if grad_finite:
            out["grad_finite"] = bool(vals[-1])
        out.update(extra_vals)
        if eigs is None:
            eigs = self.wants_eigs(step)
        if eigs and math.isfinite(out["loss"]) and out.get("grad_finite", True):
            out.update(spectrum if spectrum is not None else self.spectrum(w, nu, t))
        return out

    def spectrum(self, w, nu, t, init=None, init_AX=None, known=None) -> dict:
        """Eigen diagnostics at ``w`` (``eigs``, sharpnesses, ``threshold``, ``eig_residual``). ``init``: extra
        warm-start vectors of ``P^{-1/2} H P^{-1/2}`` at this point (``(d, j)``), ahead of the tracker's own;
        ``init_AX``: ``P^{-1/2} H P^{-1/2}`` times the first columns of ``init``, when known (saves those HVPs).
        ``known = (evals, residuals)``: the eigenvalues of the ``init`` vectors and their true relative residuals
        (host arrays, ``(j,)``, e.g. a flow's Ritz pairs); when the first ``k`` meet the tracker's tolerance they are
        the result (:meth:`pyrod.spectra.EigTracker.adopt`, no HVPs), exactly what a solve started from them would
        stop at; otherwise they warm-start the solve."""
        P = self.preconditioner(nu, t)
        adopted = None
        if known is not None and init is not None:
            adopted = self.tracker.adopt(init, *known)
        if adopted is not None:
            _, evecs, rep = adopted
            ev_host = np.asarray(known[0][:self.n_eig], dtype=np.float64)
        else:
            evals, evecs, rep = self.tracker(self.problem, w, P, init=init, init_AX=init_AX)
            ev_host = host.to_host(evals)
        self.last_evecs = evecs
        thr = float(self.optimizer.threshold())
        resid = float(np.max(rep.residuals)) if len(rep.residuals) else math.nan
        out = {"eigs": ev_host, "preconditioned_sharpness": float(ev_host[0]), "threshold": thr}
        if self.raw_tracker is not None:
            raw, _, rep2 = self.raw_tracker(self.problem, w, None)
            out["sharpness"] = float(host.to_host(raw[:1])[0])
            if len(rep2.residuals):
                resid = max(resid, float(np.max(rep2.residuals)))
        elif self.adaptive:
            out["sharpness"] = math.nan        # raw=False: λmax(H) not measured
        else:
            out["sharpness"] = float(ev_host[0])
        out["effective_sharpness"] = out["preconditioned_sharpness"] / thr if math.isfinite(thr) else math.nan
        out["eig_residual"] = resid
        return out
