"""Adafactor, exactly as ``torch.optim.Adafactor`` (torch 2.13, single-tensor path).

For step ``k`` (torch's counter ``t = k + 1``) and each tensor (block) ``W`` of the model, with gradient ``G``:

* ``1 − β̂2_t = t^τ`` (``τ = beta2_decay = −0.8``), ``ρ_t = min(lr, 1/√t)``,
  ``α_t = max(ε2, RMS(W)) · ρ_t`` (RMS of ``W`` *before* the weight decay);
* decoupled weight decay ``W ← (1 − lr·λ) W``;
* ``≥ 2``-D tensors (factored over the last two dimensions, leading ones batched):
  ``R ← lerp(R, mean_{-1}(G⊙G), t^τ)``, ``C ← lerp(C, mean_{-2}(G⊙G), t^τ)``,
  ``V̂ = R C / max(mean_{-2}(R), ε1)``; vectors and scalars: ``V ← lerp(V, G⊙G, t^τ)``, ``V̂ = V``;
* ``U = G / max(√V̂, ε1)``, ``Û = U / max(1, RMS(U)/d)`` (update clipping), ``W ← W − α_t Û``.

``ε1 = None`` means ``torch.finfo(w.dtype).eps`` (torch's default). The arithmetic uses the same torch
operations in the same order as torch, so trajectories agree with torch to the last bit in practice
(tests/test_optimizers.py).

Block shapes. Adafactor factors matrices, so it must know the model's tensor shapes. They are a
dataclass field, ``blocks = ((start, stop, shape), …)`` (slices of the flat ``w``), filled from the problem by
``opt = opt.bind(problem)`` (:meth:`pyrod.optimizers.Optimizer.bind`); being a field, the layout is part of
``config()`` and survives ``from_config``. ``init_state`` raises if ``blocks`` is empty.

State. ``OptState.extra`` holds the torch buffers per block ``i``: ``row{i}``/``col{i}`` (factored) or
``var{i}``; ``OptState.nu`` holds the ``(d,)`` estimate ``V̂`` used in the previous step (zeros before step 0).
``step`` returns ``nu_p = V̂`` of this step, and ``preconditioner(V̂, t) = max(√V̂, ε1)`` — the Adam-like
denominator. Like ``η`` for Adam, the per-block step ``α_t / max(1, RMS(U)/d)`` is *not* part of ``P``.

Threshold: NaN. There is no Cohen-type linear threshold on ``λmax(P⁻¹H)``: (i) the step size
``α_t = max(ε2, RMS(W))·min(lr, 1/√t)`` is set per block by the weights themselves and decays like
``1/√t``, so there is no fixed ``η``, and it differs between blocks, so no single scalar multiplies
``P⁻¹H``; (ii) update clipping makes the step a non-smooth, norm-bounded function of ``G`` — with ``V̂``
tracking ``G⊙G`` one has ``RMS(U) ≈ 1 = d`` at the default, so clipping is active or borderline in
practice, and an oscillation cannot grow geometrically the way a linear flip does; (iii) ``β̂2_t → 1``
changes with ``t``. ``supports_flows = False`` (the max/clipping make ``D`` non-smooth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Optimizer, OptState, _check_range, normalize_blocks

__all__ = ["Adafactor"]


@dataclass(frozen=True, repr=False)
class Adafactor(Optimizer):
    """``torch.optim.Adafactor(lr, beta2_decay, eps=(eps1, eps2), d, weight_decay)`` on the problem's tensors.

    See the module docstring for the update, the block layout (``blocks``, set by ``bind(problem)``),
    ``P`` and why ``threshold()`` is NaN.
    """

    lr: float = 1e-2
    beta2_decay: float = -0.8
    eps1: float | None = None
    eps2: float = 1e-3
    d: float = 1.0
    weight_decay: float = 0.0
    blocks: tuple = ()

    name: ClassVar[str] = "Adafactor"
    has_nu: ClassVar[bool] = True
    supports_flows: ClassVar[bool] = False
    uses_blocks: ClassVar[bool] = True

    def validate(self):
        _check_range("beta2_decay", self.beta2_decay, -math.inf, 0.0, hi_open=False)
        if self.eps1 is not None:
            _check_range("eps1", self.eps1, 0.0, math.inf)
        _check_range("eps2", self.eps2, 0.0, math.inf)
        _check_range("d", self.d, 1.0, math.inf)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        object.__setattr__(self, "blocks", normalize_blocks(self.blocks))

    def threshold(self) -> float:
        """NaN: no linear stability threshold (module docstring)."""
        return math.nan

    def _eps1(self, dtype) -> float:
        return torch.finfo(dtype).eps if self.eps1 is None else self.eps1

    def preconditioner(self, nu, t):
        """``max(√V̂, ε1)`` (per component) for the ``V̂`` returned by :meth:`step`."""
        e1 = self._eps1(nu.dtype)
        return nu.clamp(min=e1 * e1).sqrt()

    # ------------------------------------------------------------ discrete
    def init_state(self, w0, g0):
        blocks = self._blocks_for(w0.numel())
        extra = {}
        for i, (_, _, shape) in enumerate(blocks):
            if len(shape) > 1:
                extra[f"row{i}"] = w0.new_zeros(shape[:-1] + (1,))
                extra[f"col{i}"] = w0.new_zeros(shape[:-2] + (1, shape[-1]))
            else:
                extra[f"var{i}"] = w0.new_zeros(shape)
        return OptState(w0.clone(), None, torch.zeros_like(w0), 0, extra)

    def step(self, state: OptState, g: torch.Tensor):
        blocks = self._blocks_for(state.w.numel())
        t = float(state.k + 1)                       # torch's step counter
        one_minus_beta2_t = t ** self.beta2_decay
        rho_t = min(self.lr, 1 / (t ** 0.5))
        eps1 = self._eps1(state.w.dtype)
        w = state.w.clone()
        vhat = torch.empty_like(w)
        extra = {}
        for i, (a, b, shape) in enumerate(blocks):
            param = w[a:b].view(shape)               # a view: in-place ops below update w
            grad = g[a:b].view(shape)
            alpha = max(self.eps2, param.norm(2).item() / (param.numel() ** 0.5)) * rho_t
            if self.weight_decay != 0:
                param.mul_(1 - self.lr * self.weight_decay)
            if len(shape) > 1:
                row_var = state.extra[f"row{i}"].clone()
                col_var = state.extra[f"col{i}"].clone()
                row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))
                row_var.lerp_(row_mean, one_minus_beta2_t)
                col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))
                col_var.lerp_(col_mean, one_minus_beta2_t)
                var_estimate = row_var @ col_var
                var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
                extra[f"row{i}"], extra[f"col{i}"] = row_var, col_var
            else:
                variance = state.extra[f"var{i}"].clone()
                variance.lerp_(grad * grad, one_minus_beta2_t)
                var_estimate = variance.clone()
                extra[f"var{i}"] = variance
            vhat[a:b] = var_estimate.reshape(-1)
            update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
            update.mul_(grad)
            denom = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * self.d))
            param.add_(update, alpha=-alpha / denom)
        return OptState(w, None, vhat, state.k + 1, extra), vhat
