"""Muon on the 2-D weight matrices, Adam/AdamW on every other tensor (``torch.optim.Muon`` + ``AdamW``).

Matrix blocks (``len(shape) == 2``), exactly as ``torch.optim.Muon`` (torch 2.13):

* momentum buffer ``B ← lerp(B, G, 1−μ) = μB + (1−μ)G`` (torch's code uses this EMA form; its docstring's
  ``B ← μB + G`` differs from the code only by the factor ``1−μ``, which the Newton–Schulz normalisation
  removes except in the ``eps`` clamp);
* ``B̃ = lerp(G, B, μ) = (1−μ)G + μB`` with ``nesterov=True`` (default), else ``B̃ = B``;
* ``O = NS_k^{(a,b,c)}(B̃)``: transpose if rows > cols, ``X = B̃/max(‖B̃‖_F, eps)``, then ``k = 5`` quintic
  steps ``X ← aX + (bA + cA²)X``, ``A = XXᵀ``, with ``(a, b, c) = (3.4445, −4.7750, 2.0315)`` — in
  **bfloat16** as torch does (``ns_dtype="bfloat16"``, the default); ``"float32"``/``"float64"`` run the
  same iteration in that precision (not torch; smoother for float64 studies);
* ``W ← (1 − lr·λ) W − lr·s·O`` with ``λ = weight_decay`` (0.1, decoupled, *unscaled* lr) and the scale
  ``s = √max(1, rows/cols)`` (``adjust_lr_fn=None``/``"original"``, Keller Jordan) or ``0.2·√max(rows, cols)``
  (``"match_rms_adamw"``, Moonshot).

Other blocks (biases, norms' gains, conv kernels unless ``flatten_nd``) use pyrod's :class:`AdamW`
(``torch.optim.AdamW(lr=adam_lr or lr, betas=(adam_beta1, adam_beta2), eps=adam_eps,
weight_decay=adam_weight_decay)``, bias correction on, ``ν_0 = 0``; ``adam_weight_decay = 0`` is Adam).
``flatten_nd=True`` treats every ``≥ 2``-D block as the matrix ``(shape[0], prod(shape[1:]))`` (Keller
Jordan's handling of conv kernels; torch's Muon refuses non-2-D tensors).

**The Muon/Adam split.** By default every 2-D block goes to Muon. ``adam_params`` (fnmatch patterns of the
problem's parameter names, e.g. :data:`pyrod.problems.gpt.MUON_ADAM_PARAMS` = embeddings and output head, the
common practice for transformers) keeps matching 2-D blocks on Adam; ``bind(problem)`` resolves them to block
indices in ``adam_blocks`` (a pattern that matches no parameter raises ValueError). Both fields are part of
``config()``, so the split is recorded; :meth:`Muon.split` lists it by name.

Block shapes come from the ``blocks`` field, set by ``opt = opt.bind(problem)`` (see
:meth:`pyrod.optimizers.Optimizer.bind`); ``init_state`` raises if it is empty.

State: ``OptState.m`` is the flat ``(d,)`` concatenation of the Muon buffers ``B`` (matrix blocks) and Adam's
first moment (other blocks); ``extra["nu"]`` is Adam's second moment (``(d,)``, zero on matrix blocks);
``OptState.nu`` is None.

No preconditioner, no threshold: ``has_nu = False``, ``preconditioner`` returns ``ones(1)``, so the
measured "preconditioned sharpness" of a Muon run is the raw sharpness ``λmax(H)``. ``threshold()`` is NaN:
the orthogonalised step ``−lr·s·O(B̃)`` has a fixed spectral size whatever the curvature, so its
linearisation is not a ``P⁻¹H``-type map with a flip at a fixed eigenvalue; ``supports_flows = False``.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Optimizer, OptState, _check_range, normalize_blocks
from .family import AdamW

__all__ = ["Muon", "newton_schulz"]

_NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def newton_schulz(G: torch.Tensor, coefficients=(3.4445, -4.7750, 2.0315), steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """torch 2.13's ``_zeropower_via_newtonschulz`` with the working precision as a parameter.

    Returns the result in ``dtype`` (as torch does for bfloat16)."""
    if G.ndim != 2:
        raise ValueError(f"newton_schulz needs a 2-D matrix, got shape {tuple(G.shape)}")
    a, b, c = coefficients
    X = G.to(dtype, copy=True)  # never normalise the caller's tensor (the momentum buffer) in place
    if G.size(0) > G.size(1):
        X = X.T
    X.div_(X.norm().clamp(min=eps))
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    if G.size(0) > G.size(1):
        X = X.T
    return X


@dataclass(frozen=True, repr=False)
class Muon(Optimizer):
    """Muon on 2-D weights + AdamW elsewhere; see the module docstring for the exact update."""

    lr: float = 1e-3
    momentum: float = 0.95
    nesterov: bool = True
    weight_decay: float = 0.1
    ns_coefficients: tuple = (3.4445, -4.7750, 2.0315)
    ns_steps: int = 5
    eps: float = 1e-7
    adjust_lr_fn: str | None = None
    ns_dtype: str = "bfloat16"
    flatten_nd: bool = False
    adam_lr: float | None = None
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    adam_weight_decay: float = 0.0
    blocks: tuple = ()
    adam_params: tuple = ()
    adam_blocks: tuple = ()

    name: ClassVar[str] = "Muon"
    has_momentum: ClassVar[bool] = True
    supports_flows: ClassVar[bool] = False
    uses_blocks: ClassVar[bool] = True

    def validate(self):
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_range("eps", self.eps, 0.0, math.inf)
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov={self.nesterov!r} must be a bool")
        if not isinstance(self.flatten_nd, bool):
            raise ValueError(f"flatten_nd={self.flatten_nd!r} must be a bool")
        coeffs = tuple(self.ns_coefficients)
        if len(coeffs) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in coeffs):
            raise ValueError(f"ns_coefficients={self.ns_coefficients!r} must be three finite numbers")
        object.__setattr__(self, "ns_coefficients", tuple(float(x) for x in coeffs))
        if not isinstance(self.ns_steps, int) or isinstance(self.ns_steps, bool) or not 0 <= self.ns_steps < 100:
            raise ValueError(f"ns_steps={self.ns_steps!r} must be an int in [0, 100)")
        if self.adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn={self.adjust_lr_fn!r}: expected one of [None, 'match_rms_adamw', "
                             f"'original']")
        if self.ns_dtype not in _NS_DTYPES:
            raise ValueError(f"ns_dtype={self.ns_dtype!r}: expected one of {sorted(_NS_DTYPES)}")
        if self.adam_lr is not None:
            _check_range("adam_lr", self.adam_lr, 0.0, math.inf, lo_open=True)
        self.adam_part()  # validates adam_beta1, adam_beta2, adam_eps, adam_weight_decay
        object.__setattr__(self, "blocks", normalize_blocks(self.blocks))
        pats = (self.adam_params,) if isinstance(self.adam_params, str) else tuple(self.adam_params or ())
        if not all(isinstance(x, str) and x for x in pats):
            raise ValueError(f"adam_params={self.adam_params!r} must be parameter-name patterns (strings)")
        object.__setattr__(self, "adam_params", pats)
        idx = tuple(self.adam_blocks or ())
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx):
            raise ValueError(f"adam_blocks={self.adam_blocks!r} must be block indices (ints >= 0)")
        if self.blocks and any(i >= len(self.blocks) for i in idx):
            raise ValueError(f"adam_blocks={self.adam_blocks!r}: only {len(self.blocks)} blocks")
        object.__setattr__(self, "adam_blocks", tuple(sorted(set(idx))))

    def bind(self, problem) -> "Muon":
        """A copy with ``blocks`` = the problem's tensor layout and ``adam_params`` resolved into ``adam_blocks``."""
        opt = super().bind(problem)
        names = [b.name for b in problem.blocks]
        idx = set(opt.adam_blocks)
        for pat in opt.adam_params:
            hit = [i for i, nm in enumerate(names) if fnmatch.fnmatchcase(nm, pat)]
            if not hit:
                raise ValueError(f"adam_params pattern {pat!r} matches no parameter of the problem; names: {names}")
            idx.update(hit)
        return dataclasses.replace(opt, adam_blocks=tuple(sorted(idx)))

    def split(self, names=None) -> dict:
        """``{"muon": [...], "adam": [...]}``: which blocks (names when ``names`` lists them, else indices) each
        rule updates (needs ``blocks``)."""
        out = {"muon": [], "adam": []}
        for i, (_, _, shape) in enumerate(self.blocks):
            key = "adam" if (i in self.adam_blocks or self.matrix_shape(shape) is None) else "muon"
            out[key].append(names[i] if names is not None else i)
        return out

    def adam_part(self) -> AdamW:
        """The pyrod optimizer used on the non-matrix blocks."""
        try:
            return AdamW(lr=self.lr if self.adam_lr is None else self.adam_lr, beta1=self.adam_beta1,
                         beta2=self.adam_beta2, eps=self.adam_eps, weight_decay=self.adam_weight_decay,
                         bias_correction=True, nu0="zero")
        except ValueError as exc:  # name the Muon field
            msg = str(exc)
            for f in ("beta1", "beta2", "eps", "weight_decay", "lr"):
                if msg.startswith(f + "="):
                    msg = "adam_" + msg
                    break
            raise ValueError(msg) from None

    def threshold(self) -> float:
        """NaN: no linear stability threshold (module docstring)."""
        return math.nan

    def preconditioner(self, nu, t):
        """``ones(1)``: Muon's measured preconditioned sharpness is the raw sharpness ``λmax(H)``."""
        return torch.ones(1, dtype=torch.float64)

    def matrix_shape(self, shape: tuple) -> tuple | None:
        """The matrix a block is orthogonalised as, or None for an Adam block."""
        if len(shape) == 2:
            return shape
        if self.flatten_nd and len(shape) > 2:
            return (shape[0], math.prod(shape[1:]))
        return None

    def _scale(self, shape) -> float:
        A, B = shape[:2]
        if self.adjust_lr_fn is None or self.adjust_lr_fn == "original":
            return math.sqrt(max(1, A / B))
        return 0.2 * math.sqrt(max(A, B))

    # ------------------------------------------------------------ discrete
    def init_state(self, w0, g0):
        self._blocks_for(w0.numel())
        return OptState(w0.clone(), torch.zeros_like(w0), None, 0, {"nu": torch.zeros_like(w0)})

    def step(self, state: OptState, g: torch.Tensor):
        blocks = self._blocks_for(state.w.numel())
        w, m = state.w.clone(), state.m.clone()
        mu, dtype = self.momentum, _NS_DTYPES[self.ns_dtype]
        adam_idx = []
        for i, (a, b, shape) in enumerate(blocks):
            mshape = None if i in self.adam_blocks else self.matrix_shape(shape)
            if mshape is None:
                adam_idx.append(torch.arange(a, b, device=w.device))
                continue
            param, grad, buf = w[a:b].view(mshape), g[a:b].view(mshape), m[a:b].view(mshape)
            buf.lerp_(grad, 1 - mu)
            update = grad.lerp(buf, mu) if self.nesterov else buf
            update = newton_schulz(update, self.ns_coefficients, self.ns_steps, self.eps, dtype)
            param.mul_(1 - self.lr * self.weight_decay)
            param.add_(update, alpha=-self.lr * self._scale(mshape))
        nu = state.extra["nu"]
        if adam_idx:
            idx = torch.cat(adam_idx)
            adam = self.adam_part()
            nu_sub = adam.nu_update(nu[idx], g[idx], state.k)
            dw, dm = adam.direction(w[idx], m[idx], g[idx], nu_sub, state.k)
            w[idx] = w[idx] + dw
            m[idx] = m[idx] + dm
            nu = nu.clone()
            nu[idx] = nu_sub
        return OptState(w, m, None, state.k + 1, {**state.extra, "nu": nu}), None
