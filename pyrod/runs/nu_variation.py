"""The variation of the second moment ν over one rod length (docs/theory/stable_and_rod_flows.md, §4).

The rod flow shares one smooth ``ν`` between the rod's two ends, which assumes that ``ν`` changes little from one
iterate to the next. This module measures how much it does. For consecutive second-moment buffers ``ν_k`` (before
step ``k``) and ``ν_{k+1}`` (after it; ``ν_{k+1} = ν_used(k)``, the value step ``k`` divides by), i.e. the buffers the
two ends of the rod ``[z_k, z_{k+1}]`` carry,

    nu_variation_max  = max_i |ν_{k+1,i} − ν_{k,i}| / ν_{k,i}          (the largest relative change of a component)
    nu_variation_norm = ‖ν_{k+1} − ν_k‖₂ / ‖ν_k‖₂                    (the norm-wise relative change)

both dimensionless, recorded at ``t = k``. A component with ``ν_{k,i} = ν_{k+1,i} = 0`` (a parameter whose gradient
is always zero) changes by 0; one with ``ν_{k,i} = 0 < ν_{k+1,i}`` by ``inf`` (e.g. step 0 of Adam with bias
correction, whose ``ν_0 = 0``). Scalar methods have one component, so both numbers agree.

The same two numbers are recorded on rod runs, from the rod's two ends: the buffer the end that models ``z_k``
carries before its step and after it (:meth:`pyrod.flows.models.RodFlow.nu_over_rod`). Nothing here is specific to
an optimizer: the discrete buffers are ``OptState.nu`` before and after :meth:`pyrod.optimizers.Optimizer.step`.
"""
from __future__ import annotations

import torch

from ..schema import Var

__all__ = ["relative_change", "relative_change_tensors", "variables", "NAMES"]

NAMES = ("nu_variation_max", "nu_variation_norm")


def variables() -> list:
    """The two output variables (``(t,)``, dimensionless)."""
    return [
        Var("nu_variation_max", ("t",), "largest relative change of a second-moment component over one rod "
            "length, max_i |nu_{k+1,i} - nu_{k,i}| / nu_{k,i}", "1"),
        Var("nu_variation_norm", ("t",), "norm-wise relative change of the second moment over one rod length, "
            "||nu_{k+1} - nu_k|| / ||nu_k||", "1"),
    ]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` elementwise for ``num, den ≥ 0``, with ``0/0 = 0`` and ``x/0 = inf`` (``x > 0``)."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)),
                       torch.where(num > 0, torch.full_like(num, float("inf")), torch.zeros_like(num)))

def relative_change_tensors(nu_from: torch.Tensor, nu_to: torch.Tensor) -> dict:
    """The two numbers as 0-dim tensors on the buffers' device, nothing read to the host (a discrete run reads them
    in its step's one transfer: :meth:`pyrod.runs.measure.Measurer.measure`'s ``extra``). Same conventions as
    :func:`relative_change`."""
    diff = (nu_to - nu_from).abs()
    ratio = _ratio(diff, nu_from)
    norm = _ratio(torch.linalg.vector_norm(diff), torch.linalg.vector_norm(nu_from))
    vmax = ratio.max() if ratio.numel() else torch.full((), float("nan"), dtype=diff.dtype, device=diff.device)
    return {"nu_variation_max": vmax, "nu_variation_norm": norm}


def relative_change(nu_from: torch.Tensor, nu_to: torch.Tensor) -> dict:
    """``{"nu_variation_max": …, "nu_variation_norm": …}`` (floats) for buffers ``nu_from`` → ``nu_to`` of the same
    shape ``(d,)`` or ``(1,)`` (non-negative). ``0/0`` counts as 0, ``x/0`` (``x > 0``) as ``inf``."""
    from ..host import stack_scalars, to_host
    parts = relative_change_tensors(nu_from, nu_to)
    vals = to_host(stack_scalars(list(parts.values()), nu_from))
    return dict(zip(parts, (float(v) for v in vals), strict=True))
