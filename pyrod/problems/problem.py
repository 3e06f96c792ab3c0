"""The `Problem`: a full-batch loss over one flat parameter vector.

Everything numerical in pyrod works on flat vectors ``w`` of shape ``(d,)``. A `Problem`
wraps a pure, differentiable function ``loss_fn(w) -> scalar`` (built from a
``torch.nn.Module`` + tensors + loss by :meth:`Problem.from_module`, or written directly
for analytic toys) and exposes the derivatives pyrod needs through ``torch.func``:

=====================  ===========================================  ==================
method                 returns                                      shape
=====================  ===========================================  ==================
``loss(w)``            L(w)                                         ``()``
``grad(w)``            ∇L(w)                                        ``(d,)``
``loss_and_grad(w)``   (L(w), ∇L(w))                                ``()``, ``(d,)``
``hvp(w, v)``          H(w) v  (``v`` of shape (d,) or (d, k))      same as ``v``
``jvp_grad``           alias of ``hvp`` (the Jacobian of ∇L is H)
``d3(w, u, v)``        ∇_w (uᵀ H(w) v)   (third derivative)          ``(d,)``
``accuracy(w)``        classification accuracy, NaN for regression  ``()`` float
=====================  ===========================================  ==================

HVPs are forward-over-reverse (``jvp`` of ``grad``); a batch of ``k`` vectors is one
``vmap`` call. The device defaults to CUDA when available, the dtype to float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

__all__ = ["Problem", "Block", "resolve_device", "resolve_dtype"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32, "double": torch.float64, "float": torch.float32}


def resolve_dtype(dtype) -> torch.dtype:
    """``"float64"``/``"float32"``/``torch.dtype`` -> ``torch.dtype`` (ValueError otherwise)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype!r}: pyrod supports float32 and float64")
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r}: expected one of {sorted(set(_DTYPES))} or a torch float dtype")


def resolve_device(device) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available else CPU; otherwise validated ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available on this machine")
    return dev


@dataclass(frozen=True)
class Block:
    """A named slice of the flat parameter vector (one tensor of the model)."""

    name: str
    start: int
    stop: int
    shape: tuple

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class Problem:
    """A full-batch training problem over a flat parameter vector.

    Parameters
    ----------
    loss_fn : callable ``w -> scalar tensor``; pure and differentiable by ``torch.func``.
    w0 : initial parameters, shape ``(d,)``.
    output_fn : optional ``w -> model outputs (n, c)`` for accuracy (classification).
    labels : optional integer labels ``(n,)`` for accuracy.
    blocks : the named tensors making up ``w`` (for Muon and layer-wise analyses).
    config : JSON-able dict such that ``pyrod.problem(**config)`` rebuilds the problem.
    name : short description used in outputs.
    """

    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    w0: torch.Tensor
    output_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    labels: torch.Tensor | None = None
    blocks: Sequence[Block] = ()
    config: dict = field(default_factory=dict)
    name: str = "problem"

    def __post_init__(self):
        if not isinstance(self.w0, torch.Tensor) or self.w0.ndim != 1:
            raise TypeError(f"w0 must be a 1-D torch.Tensor, got {type(self.w0).__name__} "
                            f"with shape {getattr(self.w0, 'shape', None)}")
        if self.w0.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"w0.dtype={self.w0.dtype}: pyrod supports float32 and float64")
        if not self.blocks:
            self.blocks = (Block("w", 0, self.dim, (self.dim,)),)
        self._grad = grad(self.loss_fn)
        self._grad_and_value = grad_and_value(self.loss_fn)
        self.n_grad = 0  # counters, for cost reports
        self.n_hvp = 0

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return int(self.w0.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.w0.dtype

    @property
    def device(self) -> torch.device:
        return self.w0.device

    def check_vector(self, w: torch.Tensor, name: str = "w") -> torch.Tensor:
        """Raise TypeError/ValueError when ``w`` does not match this problem's shape, dtype, device."""
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
        if w.shape[0] != self.dim:
            raise ValueError(f"{name} has shape {tuple(w.shape)}, expected leading dimension {self.dim}")
        if w.dtype != self.dtype:
            raise TypeError(f"{name}.dtype={w.dtype} does not match the problem's dtype {self.dtype}")
        if w.device != self.device:
            raise ValueError(f"{name}.device={w.device} does not match the problem's device {self.device}")
        return w

    # ------------------------------------------------------------ derivatives
    @property
    def grad_fn(self):
        """The pure gradient function ``w -> ∇L(w)`` (``torch.func.grad``; composable with ``jvp``/``vmap``,
        not counted, not detached). Flows build differentiable right-hand sides from it."""
        return self._grad

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """L(w), a 0-d tensor."""
        with torch.no_grad():
            return self.loss_fn(w).detach()

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        """∇L(w), shape ``(d,)``."""
        self.n_grad += 1
        return self._grad(w).detach()

    def loss_and_grad(self, w: torch.Tensor):
        """(L(w), ∇L(w)) in one backward pass."""
        self.n_grad += 1
        g, value = self._grad_and_value(w)
        return value.detach(), g.detach()

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(w) v for ``v`` of shape ``(d,)``, or H(w) V for ``V`` of shape ``(d, k)`` (one vmap)."""
        if v.ndim == 1:
            self.n_hvp += 1
            return jvp(self._grad, (w,), (v,))[1].detach().to(self.dtype)
        if v.ndim != 2:
            raise ValueError(f"v must have shape (d,) or (d, k), got {tuple(v.shape)}")
        self.n_hvp += v.shape[1]
        if v.shape[1] == 0:
            return v.clone()
        f = lambda col: jvp(self._grad, (w,), (col,))[1]  # noqa: E731
        return vmap(f, in_dims=1, out_dims=1)(v).detach().to(self.dtype)

    jvp_grad = hvp

    def d3(self, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇_w (uᵀ H(w) v), shape ``(d,)``: the third derivative contracted twice.

        ``u, v`` may be ``(d, m)`` (paired columns), returning ``(d, m)`` in one vmap.
        """
        def quad(w_, a, b):
            return torch.dot(a, jvp(self._grad, (w_,), (b,))[1])

        g3 = grad(quad)
        if u.ndim == 1:
            self.n_hvp += 2
            return g3(w, u, v).detach().to(self.dtype)
        self.n_hvp += 2 * u.shape[1]
        return vmap(g3, in_dims=(None, 1, 1), out_dims=1)(w, u, v).detach().to(self.dtype)

    def hessian(self, w: torch.Tensor) -> torch.Tensor:
        """Dense Hessian ``(d, d)``; for small problems and tests only."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        H = self.hvp(w, eye)
        return 0.5 * (H + H.T)

    def outputs(self, w: torch.Tensor) -> torch.Tensor:
        if self.output_fn is None:
            raise ValueError(f"problem {self.name!r} has no model outputs")
        with torch.no_grad():
            return self.output_fn(w)

    def accuracy(self, w: torch.Tensor) -> float:
        """Fraction of correctly classified training points; NaN for regression/toys."""
        if self.output_fn is None or self.labels is None:
            return math.nan
        out = self.outputs(w)
        return float((out.argmax(dim=-1) == self.labels).to(torch.float64).mean())

    def unflatten(self, w: torch.Tensor) -> dict:
        """Named views of ``w`` reshaped as the model's tensors."""
        return {b.name: w[b.slice].view(b.shape) for b in self.blocks}

    def to(self, device=None, dtype=None) -> "Problem":
        """Not supported in place: rebuild with ``pyrod.problem(..., device=, dtype=)``."""
        raise NotImplementedError("rebuild the problem with pyrod.problem(..., device=..., dtype=...)")

    # ---------------------------------------------------------- construction
    @classmethod
    def from_module(cls, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str | Callable = "mse",
                    *, dtype="float64", device=None, name: str | None = None, config: dict | None = None,
                    ) -> "Problem":
        """Build a problem from any ``torch.nn.Module`` and full-batch tensors.

        ``loss`` is ``"mse"`` (targets one-hot for integer labels; ½·mean over points of the squared
        error summed over outputs, the EoS papers' convention), ``"ce"`` (mean cross-entropy), or a
        callable ``(outputs, Y) -> scalar``. The model's parameters (in ``named_parameters`` order)
        become the flat vector; buffers are held fixed.
        """
        dt = resolve_dtype(dtype)
        dev = resolve_device(device)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
            raise TypeError("X and Y must be torch tensors")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        model = model.to(device=dev, dtype=dt)
        X = X.to(device=dev, dtype=dt)
        classification = not torch.is_floating_point(Y)
        Y = Y.to(device=dev) if classification else Y.to(device=dev, dtype=dt)
        names, shapes, blocks, start = [], [], [], 0
        for pname, p in model.named_parameters():
            names.append(pname)
            shapes.append(tuple(p.shape))
            blocks.append(Block(pname, start, start + p.numel(), tuple(p.shape)))
            start += p.numel()
        buffers = {k: b for k, b in model.named_buffers()}
        w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

        def unflat(w):
            return {b.name: w[b.start:b.stop].view(b.shape) for b in blocks}

        def output_fn(w):
            return functional_call(model, ({**unflat(w), **buffers},), (X,))

        loss_of = make_loss(loss, classification)

        def loss_fn(w):
            return loss_of(output_fn(w), Y)

        return cls(loss_fn=loss_fn, w0=w0, output_fn=output_fn if classification else None,
                   labels=Y if classification else None, blocks=tuple(blocks),
                   config=dict(config or {}), name=name or type(model).__name__)


def make_loss(loss, classification: bool):
    """``"mse"`` / ``"ce"`` / callable -> ``(outputs, Y) -> scalar``."""
    if callable(loss):
        return loss
    if loss == "mse":
        def mse(out, Y):
            if classification:
                target = torch.nn.functional.one_hot(Y, out.shape[-1]).to(out.dtype)
            else:
                target = Y.reshape(out.shape)
            return 0.5 * ((out - target) ** 2).sum(-1).mean()
        return mse
    if loss == "ce":
        if not classification:
            raise ValueError("loss='ce' needs integer class labels")
        return lambda out, Y: torch.nn.functional.cross_entropy(out, Y)
    raise ValueError(f"loss={loss!r}: expected one of ['ce', 'mse'] or a callable (outputs, Y) -> scalar")
