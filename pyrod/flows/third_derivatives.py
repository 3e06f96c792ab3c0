"""The central flow's third derivatives ``T_p = ∇_w(u_iᵀ H(w) u_j)`` from differences of gradients.

``∇_w(uᵀH(w)u)`` is the second derivative of the gradient along ``u``: ``D²(∇L)(w)[u, u]``. A central second
difference of gradients estimates it,

    T_uu ≈ (∇L(w + h u) − 2 ∇L(w) + ∇L(w − h u)) / h²,

with a truncation error ``h²/12 · D⁴(∇L)[u, u, u, u]`` and a rounding error of about ``ε |∇L| / h²``; the step
that balances the two for directions of unit length is ``h = ε^(1/4)`` (:func:`difference_step`: 1.2e-4 in
float64). Directions of any length are stepped by ``h/|u|`` (a step of length ``h`` in parameter space): with a
preconditioner the central flow's directions are normalised in the metric of ``P̃``, not to unit length.
Off-diagonal pairs come by polarisation, ``T_ij = ½ (T_(u_i+u_j) − T_ii − T_jj)``, from the diagonal ones and one
more pair of gradients. For ``k`` directions and all ``k(k+1)/2`` pairs ``i ≤ j`` this costs
``k(k + 1)`` gradients (2 for one critical direction), where autograd computes each pair by reverse over reverse
through the graph of ∇L: a backward pass that on convolutions and attention cost 7–25 gradients.

Only float64 is accepted (:func:`check_dtype`): measured on the CIFAR-shaped MLP, CNN and ViT of
``benchmarks/gpu.py`` (n = 200, the top two Hessian eigenvectors at initialisation, two runs), the relative error
of every pair against autograd was 1e-9 to 5e-8 in float64, below the error of autograd itself in float32, but
4e-5 to 5e-4 in float32 even at the step that suited each pair best (``benchmarks/third_derivatives.py``; the
numbers are in docs/central_flows.md, "Third derivatives").
"""
from __future__ import annotations

import torch

from ..central_options import THIRD_DERIVATIVES  # noqa: F401  (the option's values, declared there once)

__all__ = ["THIRD_DERIVATIVES", "difference_step", "check_dtype", "d3_pairs_by_difference"]


def difference_step(dtype: torch.dtype) -> float:
    """``ε^(1/4)`` of ``dtype`` (parameter units, for directions of unit length): 1.2e-4 in float64."""
    return float(torch.finfo(dtype).eps) ** 0.25


def check_dtype(dtype: torch.dtype) -> None:
    """ValueError unless ``dtype`` is float64 (the only precision in which the differences are accurate)."""
    if dtype != torch.float64:
        raise ValueError(f"central.third_derivative='difference' needs a float64 problem, not {dtype}: in float32 "
                         f"the second difference of gradients was off by 4e-5 to 5e-4 (relative) even at the best "
                         f"step for each pair (docs/central_flows.md, 'Third derivatives'); use "
                         f"third_derivative='autograd'")


def d3_pairs_by_difference(grad, w: torch.Tensor, g: torch.Tensor, U: torch.Tensor, iu, ju,
                           h: float | None = None) -> torch.Tensor:
    """``(d, m)``: column ``p`` ≈ ∇_w(U[:, iu[p]]ᵀ H(w) U[:, ju[p]]), the same columns as
    ``Problem.d3_pairs(w, U, iu, ju)``, from second differences of gradients (module docstring).

    ``grad``: ``w -> ∇L(w)`` (``(d,) -> (d,)``, e.g. ``Problem.grad``: each call counts as one gradient);
    ``g``: ``∇L(w)``, already computed; ``U``: ``(d, k)``, nonzero columns of any length (each is stepped by
    ``h/|u|``); ``iu``, ``ju``: host integers of one length ``m``, each in ``[0, k)``; ``h``: the length of each
    step in parameter units (default :func:`difference_step` of ``w``'s dtype). Calls ``grad`` twice per distinct
    direction: twice per diagonal pair used and twice more per off-diagonal pair."""
    iu, ju = [int(i) for i in iu], [int(j) for j in ju]
    if len(iu) != len(ju):
        raise ValueError(f"iu and ju must have one length, got {len(iu)} and {len(ju)}")
    if not iu:
        return U.new_zeros(U.shape[0], 0)
    h = difference_step(w.dtype) if h is None else float(h)
    if not h > 0:
        raise ValueError(f"h={h!r} must be positive")
    twice_g = 2.0 * g

    def second_difference(v):
        # the step along v is h in parameter units whatever |v| (the central flow's directions are P̃-normalised,
        # not unit vectors, with a preconditioner): s = h/|v|, a device scalar (no transfer)
        step = h / torch.linalg.vector_norm(v)
        return (grad(w + step * v) - twice_g + grad(w - step * v)) / (step * step)

    diag = {}

    def diagonal(i):
        if i not in diag:
            diag[i] = second_difference(U[:, i])
        return diag[i]

    cols = []
    for i, j in zip(iu, ju, strict=True):
        if i == j:
            cols.append(diagonal(i))
        else:
            cols.append(0.5 * (second_difference(U[:, i] + U[:, j]) - diagonal(i) - diagonal(j)))
    return torch.stack(cols, dim=1)
