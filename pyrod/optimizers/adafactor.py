"""Adafactor: ``torch.optim.Adafactor`` (``style="torch"``, default) or the Flax form the AEoS paper used
(``style="flax"``, with momentum), with the preconditioner ``P`` and threshold the step really has.

For step ``k`` (counter ``t = k + 1``) and each tensor (block) ``W`` of the model, with gradient ``G``:

* second moment, averaging weight ``t^τ`` (``τ = beta2_decay = −0.8``: ``β̂2_t = 1 − t^τ → 1``; Flax's
  ``decay_rate = 0.8`` is the same schedule). The averaged quantity is ``S = G⊙G`` (torch) or ``S = G⊙G + ε1``
  (flax). ``≥ 2``-D tensors that are factored keep a row mean and a column mean,
  ``R ← lerp(R, mean_{-1}(S), t^τ)``, ``C ← lerp(C, mean_{-2}(S), t^τ)`` and use ``V̂ = R C / mean_{-2}(R)``
  (last two dimensions, leading ones batched); other tensors keep the full ``V ← lerp(V, S, t^τ)``, ``V̂ = V``.
  ``min_dim_size_to_factor``: a tensor is factored only if its second-largest dimension is at least this
  (torch: 0, every ``≥ 2``-D tensor; Flax's default 128);
* ``U = G / r(V̂)`` with ``r(V̂) = max(√V̂, ε1)`` (torch) or ``√V̂`` (flax: ε1 is already inside ``S``);
* update clipping ``Û = U / c``, ``c = max(1, RMS(U)/d)`` (``d = inf``: no clipping);
* block step size ``α = s · ρ_t`` with ``s = max(ε2, RMS(W))`` (``scale_by_param=True``, else 1) taken before the
  weight decay, and ``ρ_t = min(lr, 1/√t)`` (torch's relative step) or ``lr`` (flax);
* weight decay ``W ← (1 − lr·λ) W`` (both styles; the AEoS runs use none);
* ``beta1 = 0``: ``W ← W − α Û``. ``beta1 > 0`` (Flax's ``beta1``, AEoS: 0.9): an EMA of the *scaled* update,
  ``m⁺ = β1 m + (1−β1) α Û``, ``W ← W − m⁺`` (``OptState.m``, ``m_0 = 0``, no bias correction).

``style="torch", beta1=0`` is ``torch.optim.Adafactor`` with the same torch operations in the same order, so
trajectories agree with torch to the last bit in practice (tests/test_optimizers.py). ``ε1 = None`` means
``torch.finfo(dtype).eps`` (torch) or ``1e-30`` (flax's default).

Preconditioner and threshold. Every block's step is ``α Û = lr · P⁻¹ G`` with

    P = r(V̂) · c · lr / α        (per component, shape (d,); η = lr is not part of P),

so with ``P`` held fixed the map is exactly an EMA heavy ball (``β1 > 0``; the buffer ``m`` in update units is
``η P⁻¹`` times Adam's ``m``) or preconditioned GD (``β1 = 0``) on ``P⁻¹H``, and ``threshold()`` is
``(2+2β1)/((1−β1)·lr)`` (``2/lr`` without momentum), docs/theory/optimizers.md §3. ``P`` moves with the state
(``V̂``, the clip factor ``c`` and ``RMS(W)``) as Adam's moves with ``ν``; the threshold is the one for the ``P`` of
the step being measured. ``step`` returns ``nu_p = P²`` (an "effective second moment") and
``preconditioner(ν, t) = √ν``, so the measured ``P`` is, to rounding, what the step divided by — ε, clip factor,
parameter scale and relative step included (tested). ``OptState.nu`` holds ``V̂`` (zeros before step 0).

``frozen_nu`` ``(d,)``: hold ``V̂`` fixed at this value (the buffers are not updated): with ``d = inf`` and
``scale_by_param=False`` (flax style) ``P`` is then constant — the frozen-``P`` map of the threshold test.

Block shapes: the ``blocks`` field, ``((start, stop, shape), …)``, filled by ``opt = opt.bind(problem)``
(:meth:`pyrod.optimizers.Optimizer.bind`); part of ``config()``. ``supports_flows = False`` (max/clipping make
``D`` non-smooth).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Optimizer, OptState, _check_range, normalize_blocks

__all__ = ["Adafactor"]

_STYLES = ("flax", "torch")


@dataclass(frozen=True, repr=False)
class Adafactor(Optimizer):
    """Adafactor on the problem's tensors (module docstring). ``style="torch"`` with the defaults is
    ``torch.optim.Adafactor(lr, beta2_decay, eps=(eps1, eps2), d, weight_decay)``; the AEoS paper's configuration
    (Flax, decay rate 0.8, momentum 0.9, ε 1e-7) is ``Adafactor(lr, style="flax", beta1=0.9, eps1=1e-7,
    min_dim_size_to_factor=128)``. Threshold ``(2+2β1)/((1−β1)·lr)`` on ``λmax(P⁻¹H)``.
    """

    lr: float = 1e-2
    beta2_decay: float = -0.8
    eps1: float | None = None
    eps2: float = 1e-3
    d: float = 1.0
    weight_decay: float = 0.0
    beta1: float = 0.0
    style: str = "torch"
    scale_by_param: bool = True
    min_dim_size_to_factor: int = 0
    frozen_nu: torch.Tensor | None = None
    blocks: tuple = ()

    name: ClassVar[str] = "Adafactor"
    has_nu: ClassVar[bool] = True
    supports_flows: ClassVar[bool] = False
    uses_blocks: ClassVar[bool] = True

    def validate(self):
        if self.style not in _STYLES:
            raise ValueError(f"style={self.style!r}: expected one of {list(_STYLES)}")
        _check_range("beta2_decay", self.beta2_decay, -math.inf, 0.0, hi_open=False)
        if self.eps1 is not None:
            _check_range("eps1", self.eps1, 0.0, math.inf)
        _check_range("eps2", self.eps2, 0.0, math.inf)
        _check_range("d", self.d, 1.0, math.inf, hi_open=False)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_range("beta1", self.beta1, 0.0, 1.0)
        if self.min_dim_size_to_factor < 0:
            raise ValueError(f"min_dim_size_to_factor={self.min_dim_size_to_factor!r} must be >= 0")
        fz = self.frozen_nu
        if fz is not None:
            if not isinstance(fz, torch.Tensor):
                raise ValueError(f"frozen_nu={fz!r} must be a torch.Tensor of shape (d,)")
            if not bool(torch.isfinite(fz).all()) or bool((fz <= 0).any()):
                raise ValueError("frozen_nu must be finite and positive")
        object.__setattr__(self, "blocks", normalize_blocks(self.blocks))

    def threshold(self) -> float:
        """``(2+2β1)/((1−β1)·lr)`` (``2/lr`` for ``beta1 = 0``): the flip of the frozen-``P`` map."""
        b = self.beta1
        return (2 + 2 * b) / ((1 - b) * self.lr)

    def _eps1(self, dtype) -> float:
        if self.eps1 is not None:
            return self.eps1
        return torch.finfo(dtype).eps if self.style == "torch" else 1e-30

    def _factored(self, shape) -> bool:
        return len(shape) > 1 and sorted(shape)[-2] >= self.min_dim_size_to_factor

    def preconditioner(self, nu, t):
        """``P = √ν`` for ``ν = nu_p`` returned by :meth:`step` (``nu_p = P²``, module docstring)."""
        return nu.sqrt()

    # ------------------------------------------------------------ discrete
    def init_state(self, w0, g0):
        blocks = self._blocks_for(w0.numel())
        if self.frozen_nu is not None and self.frozen_nu.numel() != w0.numel():
            raise ValueError(f"frozen_nu has {self.frozen_nu.numel()} entries but w has {w0.numel()}")
        extra = {}
        for i, (_, _, shape) in enumerate(blocks):
            if self._factored(shape):
                extra[f"row{i}"] = w0.new_zeros(shape[:-1] + (1,))
                extra[f"col{i}"] = w0.new_zeros(shape[:-2] + (1, shape[-1]))
            else:
                extra[f"var{i}"] = w0.new_zeros(shape)
        m = torch.zeros_like(w0) if self.beta1 > 0 else None
        return OptState(w0.clone(), m, torch.zeros_like(w0), 0, extra)

    def _vhat(self, i, shape, grad, state, mix, eps1, extra, fz):
        """``V̂`` of block ``i`` (a new tensor) and the updated buffers in ``extra``."""
        if fz is not None:
            for key in (f"row{i}", f"col{i}", f"var{i}"):
                if key in state.extra:
                    extra[key] = state.extra[key]
            return fz.to(grad).view(shape).clone()
        sq = None if self.style == "torch" else grad * grad + eps1
        if self._factored(shape):
            row_var = state.extra[f"row{i}"].clone()
            col_var = state.extra[f"col{i}"].clone()
            if sq is None:  # torch's exact operations
                row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))
                col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))
            else:
                row_mean = sq.mean(dim=-1, keepdim=True)
                col_mean = sq.mean(dim=-2, keepdim=True)
            row_var.lerp_(row_mean, mix)
            col_var.lerp_(col_mean, mix)
            var_estimate = row_var @ col_var
            denom = row_var.mean(dim=-2, keepdim=True)
            var_estimate.div_(denom.clamp_(min=eps1) if sq is None else denom)
            extra[f"row{i}"], extra[f"col{i}"] = row_var, col_var
            return var_estimate
        variance = state.extra[f"var{i}"].clone()
        variance.lerp_(grad * grad if sq is None else sq, mix)
        extra[f"var{i}"] = variance
        return variance.clone()

    def step(self, state: OptState, g: torch.Tensor):
        """One step; returns the new state and ``nu_p = P²`` ``(d,)`` of this step (module docstring)."""
        blocks = self._blocks_for(state.w.numel())
        t = float(state.k + 1)                       # torch's step counter
        mix = t ** self.beta2_decay                  # 1 − β̂2_t
        rho_t = min(self.lr, 1 / (t ** 0.5)) if self.style == "torch" else self.lr
        eps1 = self._eps1(state.w.dtype)
        b1 = self.beta1
        w = state.w.clone()
        m = None if state.m is None else state.m.clone()
        vhat = torch.empty_like(w)
        p_sq = torch.empty_like(w)
        extra = {}
        for i, (a, b, shape) in enumerate(blocks):
            param = w[a:b].view(shape)               # a view: in-place ops below update w
            grad = g[a:b].view(shape)
            scale = max(self.eps2, param.norm(2).item() / (param.numel() ** 0.5)) if self.scale_by_param else 1.0
            alpha = scale * rho_t
            if self.weight_decay != 0:
                param.mul_(1 - self.lr * self.weight_decay)
            fz = None if self.frozen_nu is None else self.frozen_nu[a:b]
            var_estimate = self._vhat(i, shape, grad, state, mix, eps1, extra, fz)
            vhat[a:b] = var_estimate.reshape(-1)
            if self.style == "torch":
                root = var_estimate.clamp_(min=eps1 * eps1).sqrt()
                update = var_estimate.rsqrt_()
            else:
                root = var_estimate.sqrt()
                update = 1.0 / root
            update.mul_(grad)
            clip = max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * self.d))
            # P: what the step divides lr·G by (alpha·Û = lr·G/P)
            p_sq[a:b] = (root * (clip * self.lr / alpha)).square().reshape(-1)
            if b1 == 0:
                param.add_(update, alpha=-alpha / clip)
            else:
                mb = m[a:b].view(shape)
                mb.mul_(b1).add_(update, alpha=(1 - b1) * alpha / clip)
                param.sub_(mb)
        return OptState(w, m, vhat, state.k + 1, extra), p_sq
