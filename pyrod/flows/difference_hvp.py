"""Hessian-vector products from one-sided differences of gradients, for the central flow's tracked basis
(``central.tracking_hvp="difference"``).

    H(w) v ≈ (∇L(w + s v) − ∇L(w)) / s,        s = h / |v|,  h = √ε,

a step of length ``h`` in parameter space whatever ``|v|`` (with a preconditioner the flow's directions are
normalised in the metric of ``P̃``, not to unit length). The truncation error is ``h/2 · |D³L[v, v, ·]|`` and the
rounding error about ``ε |∇L| / h``; ``h = √ε`` (1.5e-8 in float64, :func:`difference_step`) balances the two. One
gradient per column, ``∇L(w)`` given (the central flow's right-hand side needs it anyway), where autograd's
reverse over reverse cost 2.1 to 2.7 gradients on convolutions and attention on a CPU.

Only float64 is accepted (:func:`check_dtype`). Measured on the CIFAR-shaped CNN and ViT of ``benchmarks/gpu.py``
(n = 200, float64, the top six Hessian eigenvectors at initialisation, ``benchmarks/difference_hvp.py``): relative
error 2e-8 to 6e-8 against autograd; 2e-7 to 3e-7 along random directions, whose ``|Hv|`` is smaller. In float32
the same formula was off by 3e-4 to 1.5e-3 even at the best step per column (``√ε₃₂`` = 3e-4). The central flow uses these products only where it needs
``refresh_tol`` (1e-3) accuracy: the Rayleigh–Ritz steps and Davidson expansions of the tracked basis; LOBPCG
refreshes and the eigenvalue measurements at ``eig_tol`` use autograd.
"""
from __future__ import annotations

import torch

from ..central_options import TRACKING_HVPS  # noqa: F401  (the option's values, declared there once)

__all__ = ["TRACKING_HVPS", "difference_step", "check_dtype", "hvp_by_difference"]


def difference_step(dtype: torch.dtype) -> float:
    """``√ε`` of ``dtype`` (parameter units): 1.5e-8 in float64."""
    return float(torch.finfo(dtype).eps) ** 0.5


def check_dtype(dtype: torch.dtype) -> None:
    """ValueError unless ``dtype`` is float64 (the only precision in which the differences are accurate)."""
    if dtype != torch.float64:
        raise ValueError(f"central.tracking_hvp='difference' needs a float64 problem, not {dtype}: in float32 a "
                         f"one-sided difference of gradients is off by about 3e-4 (relative) at best "
                         f"(docs/central_flows.md, 'Hessian-vector products of the tracked basis'); use "
                         f"tracking_hvp='autograd'")


def hvp_by_difference(grad, w: torch.Tensor, g: torch.Tensor, V: torch.Tensor, h: float | None = None) -> torch.Tensor:
    """``H(w) V`` (``(d, k)``, or ``(d,)`` for ``V`` of shape ``(d,)``) from one-sided differences of gradients
    (module docstring).

    ``grad``: ``w -> ∇L(w)`` (``(d,) -> (d,)``, e.g. ``Problem.grad``: each call counts as one gradient); ``g``:
    ``∇L(w)``, already computed; ``V``: nonzero columns of any length (each stepped by ``h/|v|``; a zero column
    gives a zero product); ``h``: the length of each step in parameter units (default :func:`difference_step` of
    ``w``'s dtype). Calls ``grad`` once per column; the steps stay on the device (no host transfer)."""
    if V.ndim not in (1, 2):
        raise ValueError(f"V must have shape (d,) or (d, k), got {tuple(V.shape)}")
    h = difference_step(w.dtype) if h is None else float(h)
    if not h > 0:
        raise ValueError(f"h={h!r} must be positive")
    if V.ndim == 1:
        return hvp_by_difference(grad, w, g, V[:, None], h)[:, 0]
    norms = torch.linalg.vector_norm(V, dim=0)
    steps = h / norms.clamp_min(torch.finfo(V.dtype).tiny)   # (k,) device scalars; a zero column: ∇L(w) − ∇L(w)
    cols = [(grad(w + steps[j] * V[:, j]) - g) / steps[j] for j in range(V.shape[1])]
    return torch.stack(cols, dim=1) if cols else V.new_zeros(V.shape)
