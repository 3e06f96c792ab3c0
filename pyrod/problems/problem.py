"""The `Problem`: a full-batch loss over one flat parameter vector.

Everything numerical in pyrod works on flat vectors ``w`` of shape ``(d,)``. A `Problem`
wraps a pure, differentiable function ``loss_fn(w) -> scalar`` (built from a
``torch.nn.Module`` + tensors + loss by :meth:`Problem.from_module`, or written directly
for analytic toys) and exposes the derivatives pyrod needs through ``torch.func``:

=========================  ============================================  ==================
method                     returns                                       shape
=========================  ============================================  ==================
``loss(w)``                L(w)                                          ``()``
``grad(w)``                ∇L(w)                                         ``(d,)``
``loss_and_grad(w)``       (L(w), ∇L(w))                                 ``()``, ``(d,)``
``hvp(w, v)``              H(w) v  (``v`` of shape (d,) or (d, k))       same as ``v``
``jvp_grad``               alias of ``hvp`` (the Jacobian of ∇L is H)
``d3(w, u, v)``            ∇_w (uᵀ H(w) v)   (third derivative)          ``(d,)``
``d3_pairs(w, U, i, j)``   columns ∇_w (U_iᵀ H(w) U_j), pairs (i, j)     ``(d, m)``
``accuracy(w)``            classification accuracy, NaN for regression   ``()`` float
=========================  ============================================  ==================

HVPs and third derivatives are computed in one of the modes of :data:`HVP_MODES` (``Problem.hvp_mode``, same values
up to rounding): by default (``"auto"``, :data:`AUTO_HVP_MODES`) they differentiate a graph of ``∇L`` built once per
point ``w`` (reverse over reverse; one backward pass per vector at that point), the point being recognised by tensor
identity and version, never by reading its values (:class:`pyrod.tensor_identity.TensorKey`); with micro-batches
they are forward-over-reverse (``jvp`` of ``grad``), a batch of ``k`` vectors being one ``vmap`` call
(``benchmarks/hvp_modes.py`` measures the modes). The device defaults to CUDA when available, the dtype to float64.

Micro-batching (``batch_size``): the loss is a mean over the ``n`` samples, so
``L(w) = Σ_b (n_b / n) L_b(w)`` over consecutive micro-batches ``b`` of ``n_b ≤ batch_size`` samples, and
the same holds for every derivative. A problem built with ``batch_size`` evaluates each micro-batch in turn
and sums the weighted results, so ``loss``, ``grad``, ``loss_and_grad``, ``hvp`` (``(d,)`` and ``(d, k)``),
``d3`` and ``accuracy`` are the exact full-batch values (up to float rounding of the sum) while the
activations held at any time are those of one micro-batch (times ``k`` for blocked HVPs).

Reproducibility: ``Problem.config`` is the dict that rebuilds the problem (``pyrod.problem(**config)``);
:meth:`Problem.replay_config` returns it or raises a ValueError saying why the problem cannot be rebuilt
(built by :meth:`Problem.from_module`; use :meth:`Problem.from_factory` instead).

Why one module of ~850 lines: it is one class whose methods share its private state (the flattened model, the
micro-batch plan, the cached Hessian graph, the counters); the model and data builders, the toys and the
registry live elsewhere (``models.py``, ``data.py``, ``toys.py``, ``registry.py``).
"""
from __future__ import annotations

import copy
import importlib
import json
import math
import numbers
import operator
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from ..columns import stack_columns
from ..tensor_identity import TensorKey

__all__ = ["Problem", "Block", "Samples", "resolve_device", "resolve_dtype", "check_batch_size", "check_hvp_mode",
           "auto_hvp_mode", "HVP_MODES", "AUTO_HVP_MODES", "UNREPRODUCIBLE_KEY", "FROM_MODULE_MESSAGE"]

#: key of ``Problem.config`` marking a problem that no config can rebuild (its value says why)
UNREPRODUCIBLE_KEY = "unreproducible"
FROM_MODULE_MESSAGE = ("built with Problem.from_module: use Problem.from_factory('module:function', ...) to make it "
                       "reproducible")
_DIRECT_MESSAGE = ("built directly from a loss function (Problem(loss_fn=..., w0=...)): use "
                   "Problem.from_factory('module:function', ...) to make it reproducible")

#: How a Problem computes HVPs and third derivatives (``Problem.hvp_mode``); every mode gives the same values up to
#: float rounding. "graph": a graph of ∇L cached per point, one backward pass per HVP column and two per d3 column;
#: "batched": the same graph, the columns of a (d, k) HVP in one batched backward pass (d3 as "graph");
#: "forward": nothing cached, HVP = jvp of ∇L (forward-over-reverse), d3 = gradient of uᵀ(jvp of ∇L along v)
#: (reverse-over-forward-over-reverse), columns in one vmap; "auto": by device type from AUTO_HVP_MODES.
#: Micro-batched problems always use "forward" (bounded memory).
HVP_MODES = ("auto", "graph", "batched", "forward")

#: What ``hvp_mode="auto"`` uses, by device type (``w.device.type``) and operation: "hvp" (one vector), "hvp_block"
#: (k ≥ 2 columns), "d3". Device types not listed use the "cpu" row. Measured with benchmarks/hvp_modes.py (ratios
#: to a gradient; docs/notes in the benchmark's docstring); change a row here when a device measures otherwise.
AUTO_HVP_MODES = {
    "cpu": {"hvp": "graph", "hvp_block": "graph", "d3": "graph"},
    "cuda": {"hvp": "graph", "hvp_block": "graph", "d3": "graph"},
}

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


@dataclass(frozen=True)
class Samples:
    """The training samples of a problem built from a model (:meth:`Problem.from_module`), kept so that the same
    loss can be evaluated on other samples (:meth:`Problem.on_samples`: mini-batches, held-out splits, fresh
    samples from a stream).

    ``X (n, …)``, ``Y (n, …)``: the problem's samples, already on its device and dtype; ``forward(w, x)``: the
    model's outputs for inputs ``x`` at flat parameters ``w``; ``loss_of(outputs, y)``: the loss, a mean over the
    samples; ``classification``: integer labels (accuracy defined)."""

    X: torch.Tensor
    Y: torch.Tensor
    forward: Callable
    loss_of: Callable
    classification: bool

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def prepare(self, X, Y) -> tuple[torch.Tensor, torch.Tensor]:
        """``X``, ``Y`` (tensors or NumPy arrays) on this problem's device, inputs in its dtype, labels as integers
        (classification) or in its dtype (regression): what :meth:`Problem.from_module` does to its data."""
        X = torch.as_tensor(X).to(device=self.X.device, dtype=self.X.dtype)
        Y = torch.as_tensor(Y).to(device=self.Y.device, dtype=self.Y.dtype)
        return X, Y


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
    config : JSON-able dict such that ``pyrod.problem(**config)`` rebuilds the problem (see
        :meth:`replay_config`).
    name : short description used in outputs.
    batches : optional micro-batch decomposition ``((c_b, loss_b), …)`` with ``loss_fn(w) = Σ_b c_b loss_b(w)``
        (``c_b = n_b / n`` for a mean over samples). When given, every derivative is accumulated term by
        term, so at most one term's intermediate tensors are alive at a time (module docstring).
    batch_size : the micro-batch size the terms were made with (information; ``None`` = one full batch).
    hvp_mode : how :meth:`hvp` and :meth:`d3` are computed, one of :data:`HVP_MODES` (``"auto"``: by device type,
        :data:`AUTO_HVP_MODES`); all give the same values up to rounding; micro-batched problems take ``"auto"``
        or ``"forward"`` only.
    samples : the :class:`Samples` (data, forward, loss) of a problem built from a model, else None; needed by
        :meth:`on_samples` (mini-batch runs).
    parent : the problem whose gradient/HVP counters also count this one's (set by :meth:`on_samples`).
    """

    loss_fn: Callable[[torch.Tensor], torch.Tensor]
    w0: torch.Tensor
    output_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    labels: torch.Tensor | None = None
    blocks: Sequence[Block] = ()
    config: dict = field(default_factory=dict)
    name: str = "problem"
    batches: Sequence[tuple] = ()
    batch_size: int | None = None
    hvp_mode: str = "auto"
    samples: Samples | None = field(default=None, repr=False, compare=False)
    parent: "Problem | None" = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.w0, torch.Tensor) or self.w0.ndim != 1:
            raise TypeError(f"w0 must be a 1-D torch.Tensor, got {type(self.w0).__name__} "
                            f"with shape {getattr(self.w0, 'shape', None)}")
        if self.w0.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"w0.dtype={self.w0.dtype}: pyrod supports float32 and float64")
        if not self.blocks:
            self.blocks = (Block("w", 0, self.dim, (self.dim,)),)
        self.batches = tuple((float(c), f) for c, f in self.batches)
        self.hvp_mode = check_hvp_mode(self.hvp_mode, self.batch_size if self.batches else None)
        if self.batches:
            # one (weight, ∇L_b, (∇L_b, L_b)) per micro-batch; sums of pure torch.func functions stay pure
            terms = tuple((c, grad(f), grad_and_value(f)) for c, f in self.batches)
            self._terms = tuple((c, g) for c, g, _ in terms)

            def grad_sum(w):
                total = None
                for c, g, _ in terms:
                    t = c * g(w)
                    total = t if total is None else total + t
                return total

            def grad_and_value_sum(w):
                gt = vt = None
                for c, _, gv in terms:
                    g, v = gv(w)
                    gt = c * g if gt is None else gt + c * g
                    vt = c * v if vt is None else vt + c * v
                return gt, vt

            self._grad = grad_sum
            self._grad_and_value = grad_and_value_sum
        else:
            self._grad = grad(self.loss_fn)
            self._grad_and_value = grad_and_value(self.loss_fn)
            self._terms = ((None, self._grad),)
        self.n_grad = 0  # counters, for cost reports
        self.n_hvp = 0
        self._hcache = _HessianGraphCache()   # graph of ∇L at the last HVP point (not state: never copied)

    def _count(self, grads: int = 0, hvps: int = 0) -> None:
        """Add to the gradient / HVP counters of this problem and of its parents (cost reports)."""
        p = self
        while p is not None:
            p.n_grad += grads
            p.n_hvp += hvps
            p = p.parent

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
        self._count(grads=1)
        return self._grad(w).detach()

    def graph_grad(self, w: torch.Tensor):
        """∇L(w) taken from the graph of ∇L that the HVP graph modes keep for the last point (:meth:`_hessian_graph`),
        when that point is ``w`` (:class:`~pyrod.tensor_identity.TensorKey`); None otherwise. No work and not
        counted: a caller that needs the gradient at a point where it has just done HVPs (the central flow's
        right-hand side) saves one backward pass, and counts the gradient as its own."""
        hit = self._hcache.entry
        if hit is not None and hit[0].matches(w):
            return hit[2].detach()
        return None

    def loss_and_grad(self, w: torch.Tensor):
        """(L(w), ∇L(w)) in one backward pass."""
        self._count(grads=1)
        g, value = self._grad_and_value(w)
        return value.detach(), g.detach()

    def hvp(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(w) v for ``v`` of shape ``(d,)``, or H(w) V for ``V`` of shape ``(d, k)`` (same shape out).

        How, by :attr:`hvp_mode` (see :data:`HVP_MODES`; ``"auto"`` resolves by :func:`auto_hvp_mode`):
        ``"graph"`` one backward pass per column through a graph of ∇L built once per point ``w`` and kept until
        the next point (:meth:`_hessian_graph`; eigen-solvers and the central flow do many HVPs at one point);
        ``"batched"`` the same graph, all ``k`` columns in one batched backward pass; ``"forward"``
        forward-over-reverse, ``jvp`` of ``∇L`` with the ``k`` columns in one ``vmap`` (nothing cached). With
        micro-batches, or for ``w`` inside a ``torch.func`` transform or requiring grad, it is always
        ``"forward"``: through the weighted sum of per-batch gradients the activations alive at a time are those
        of one micro-batch (``k`` of them for ``(d, k)``)."""
        if v.ndim not in (1, 2):
            raise ValueError(f"v must have shape (d,) or (d, k), got {tuple(v.shape)}")
        k = 1 if v.ndim == 1 else v.shape[1]
        self._count(hvps=k)
        if k == 0:
            return v.clone()
        mode = self._mode("hvp" if k == 1 else "hvp_block")
        gr = self._hessian_graph(w) if mode != "forward" else None
        if gr is not None:
            ww, g = gr
            vv = v.to(ww.dtype)
            with torch.enable_grad():
                if v.ndim == 1:
                    return torch.autograd.grad(g, ww, vv, retain_graph=True)[0].detach().to(self.dtype)
                if mode == "batched" and k > 1:
                    out = _batched_backward(g, ww, vv.T)
                    if out is not None:
                        return out.T.detach().to(self.dtype)
                out = stack_columns(torch.autograd.grad(g, ww, vv[:, i], retain_graph=True)[0] for i in range(k))
            return out.detach().to(self.dtype)
        if v.ndim == 1:
            return jvp(self._grad, (w,), (v,))[1].detach().to(self.dtype)
        f = lambda col: jvp(self._grad, (w,), (col,))[1]  # noqa: E731
        return vmap(f, in_dims=1, out_dims=0)(v).T.detach().to(self.dtype)

    jvp_grad = hvp

    def _mode(self, op: str) -> str:
        """The mode used for ``op`` (``"hvp"``: one vector, ``"hvp_block"``: ``k ≥ 2`` columns, ``"d3"``)."""
        if self.batches:
            return "forward"
        if self.hvp_mode != "auto":
            return self.hvp_mode
        return auto_hvp_mode(self.device.type, op)

    def _hessian_graph(self, w: torch.Tensor):
        """``(w_leaf, ∇L(w_leaf))`` with the graph of ∇L kept for higher derivatives (``create_graph``), cached for
        the last point ``w``. A later ``w`` reuses it when it is the same tensor memory, unchanged since
        (:class:`pyrod.tensor_identity.TensorKey`: same storage, offset, shape, strides, dtype, device and version
        counter; the values are never read, so a CUDA device is never synchronised); a copy with equal values
        builds a new graph. Writes to ``w`` that bypass torch's version counter (``w.data``, a NumPy array
        sharing its memory) are not seen. None where this path does not apply: micro-batches (bounded memory),
        ``w`` inside a ``torch.func`` transform or requiring grad, or a loss that cannot be differentiated twice
        by autograd (then the ``torch.func`` path is used from then on)."""
        cache = self._hcache
        if self.batches or cache.disabled or torch._C._functorch.is_functorch_wrapped_tensor(w) or w.requires_grad:
            return None
        hit = cache.entry
        if hit is not None and hit[0].matches(w):
            return hit[1], hit[2]
        cache.entry = None
        try:
            with torch.enable_grad():
                ww = w.detach().clone().requires_grad_(True)
                g = torch.autograd.grad(self.loss_fn(ww), ww, create_graph=True)[0]
            if g.grad_fn is None:            # ∇L does not depend on w (linear loss): H = 0, nothing to cache
                raise RuntimeError("gradient has no graph")
        except RuntimeError:
            cache.disabled = True
            return None
        cache.entry = (TensorKey(w), ww, g)
        return ww, g

    def d3(self, w: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇_w (uᵀ H(w) v), shape ``(d,)``: the third derivative contracted twice.

        ``u, v`` may be ``(d, m)`` (paired columns), returning ``(d, m)``. By :attr:`hvp_mode`: ``"graph"`` and
        ``"batched"`` two backward passes per column on the cached graph of ∇L (:meth:`_hessian_graph`; torch has
        no batched form of this double backward); ``"forward"`` (always with micro-batches) the gradient of
        ``uᵀ (jvp of ∇L along v)`` (reverse-over-forward-over-reverse), all ``m`` pairs in one ``vmap``, one
        micro-batch at a time (memory: one micro-batch's activations times ``m``).
        """
        if u.shape != v.shape or u.ndim not in (1, 2):
            raise ValueError(f"u and v must both have shape (d,) or (d, m), got {tuple(u.shape)} and "
                             f"{tuple(v.shape)}")
        m = 1 if u.ndim == 1 else u.shape[1]
        self._count(hvps=2 * m)
        if m == 0:
            return u.new_zeros(u.shape)
        gr = self._hessian_graph(w) if self._mode("d3") != "forward" else None
        if gr is not None:
            uu, vv = (u[:, None], v[:, None]) if u.ndim == 1 else (u, v)
            out = _d3_on_graph(*gr, [(vv[:, i], [(i, uu[:, i])]) for i in range(m)], m).to(self.dtype)
            return out[:, 0] if u.ndim == 1 else out
        total = None
        for c, grad_b in self._terms:      # one term per micro-batch (reverse mode over all would keep them all)
            def quad(w_, a, b, grad_b=grad_b):
                return torch.dot(a, jvp(grad_b, (w_,), (b,))[1])

            g3 = grad(quad)
            t = g3(w, u, v) if u.ndim == 1 else vmap(g3, in_dims=(None, 1, 1), out_dims=0)(w, u, v).T
            t = t.detach()
            if c is not None:
                t = c * t
            total = t if total is None else total + t
        return total.to(self.dtype)

    def d3_pairs(self, w: torch.Tensor, U: torch.Tensor, iu, ju) -> torch.Tensor:
        """``(d, m)``: column ``p`` is ∇_w (U[:, iu[p]]ᵀ H(w) U[:, ju[p]]), the third derivative along pairs of
        columns of one basis ``U`` of shape ``(d, k)`` (e.g. the upper triangle ``iu ≤ ju`` of a symmetric k×k
        matrix). The same values as ``d3(w, U[:, iu], U[:, ju])``; in the graph modes each distinct column
        ``U[:, j]`` gets one first backward pass (``H u_j`` with its graph), shared by every pair with that ``j``:
        ``m + len(set(ju))`` backward passes instead of ``2m``, and ``n_hvp`` counts those. ``iu``, ``ju``: host
        integers (lists, tuples or CPU integer tensors) of one length ``m``, each in ``[0, k)``; being on the host,
        grouping them needs no device synchronisation."""
        if not isinstance(U, torch.Tensor) or U.ndim != 2:
            raise ValueError(f"U must be a (d, k) tensor, got {type(U).__name__} of shape {getattr(U, 'shape', None)}")
        iu, ju = _host_indices("iu", iu, U.shape[1]), _host_indices("ju", ju, U.shape[1])
        if len(iu) != len(ju):
            raise ValueError(f"iu and ju must have one length, got {len(iu)} and {len(ju)}")
        m = len(iu)
        gr = self._hessian_graph(w) if m and self._mode("d3") != "forward" else None
        if gr is None:
            return self.d3(w, U[:, list(iu)], U[:, list(ju)])
        groups = {}
        for p, (i, j) in enumerate(zip(iu, ju, strict=True)):
            groups.setdefault(j, []).append((p, U[:, i]))
        self._count(hvps=m + len(groups))
        return _d3_on_graph(*gr, [(U[:, j], pairs) for j, pairs in groups.items()], m).to(self.dtype)

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
        return float(self.accuracy_tensor(w))

    def accuracy_tensor(self, w: torch.Tensor) -> torch.Tensor:
        """:meth:`accuracy` as a 0-d float64 tensor on the problem's device (read it with other values in one
        transfer; NaN for regression/toys)."""
        if self.output_fn is None or self.labels is None:
            return torch.full((), math.nan, dtype=torch.float64, device=w.device)
        out = self.outputs(w)
        return (out.argmax(dim=-1) == self.labels).to(torch.float64).mean()

    def unflatten(self, w: torch.Tensor) -> dict:
        """Named views of ``w`` reshaped as the model's tensors."""
        return {b.name: w[b.slice].view(b.shape) for b in self.blocks}

    def to(self, device=None, dtype=None) -> "Problem":
        """Not supported in place: rebuild with ``pyrod.problem(..., device=, dtype=)``."""
        raise NotImplementedError("rebuild the problem with pyrod.problem(..., device=..., dtype=...)")

    def replay_config(self) -> dict:
        """The config dict that rebuilds this problem: ``pyrod.problem(**prob.replay_config())`` (a deep copy).

        Raises ValueError when no config can rebuild the problem: it was built by :meth:`from_module` (the message
        says to use :meth:`from_factory` instead) or directly from a loss function (``Problem(loss_fn=…)``).
        """
        cfg = dict(self.config or {})
        if UNREPRODUCIBLE_KEY in cfg:
            raise ValueError(f"problem {self.name!r} cannot be replayed: {cfg[UNREPRODUCIBLE_KEY]}")
        if not cfg:
            raise ValueError(f"problem {self.name!r} cannot be replayed: {_DIRECT_MESSAGE}")
        return json.loads(json.dumps(cfg))

    # ---------------------------------------------------------- construction
    @classmethod
    def from_module(cls, model: torch.nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str | Callable = "mse",
                    *, dtype="float64", device=None, name: str | None = None, config: dict | None = None,
                    batch_size: int | None = None, hvp_mode: str = "auto") -> "Problem":
        """Build a problem from any ``torch.nn.Module`` and full-batch tensors ``X (n, …)``, ``Y (n, …)``.

        ``loss`` is ``"mse"`` (targets one-hot for integer labels; ½·mean over points of the squared
        error summed over outputs, the EoS papers' convention), ``"ce"`` (mean cross-entropy), or a
        callable ``(outputs, Y) -> scalar`` that is a mean over the samples. The model's parameters (in
        ``named_parameters`` order) become the flat vector; buffers are held fixed.

        * The model is copied (``copy.deepcopy``) before being cast to ``dtype``/``device``: the caller's module
          is never modified.
        * Every sample's output must depend on that sample only, deterministically. A submodule in training mode
          whose output depends on the batch or on random numbers (``BatchNorm*``, ``Dropout*``/``AlphaDropout``,
          ``RReLU``, ``InstanceNorm*`` tracking running statistics, ``MultiheadAttention`` with dropout) raises
          ValueError naming it: call ``model.eval()`` first. In eval mode BatchNorm normalises with its running
          statistics (buffers, held fixed), so it is a fixed per-sample affine map — batch-independent, which is
          also what makes micro-batching exact.
        * ``batch_size``: ``None`` (one full batch) or an int ≥ 1; values, gradients, HVPs, third derivatives
          and accuracy are then accumulated over consecutive micro-batches of at most ``batch_size`` samples,
          each weighted by its share ``n_b / n`` of the mean (module docstring). A callable ``loss`` must be a
          mean over samples for this to be exact; this is checked on the first micro-batch (ValueError if not).
        * ``config``: recorded as ``Problem.config`` (the registry passes the dict that rebuilds the problem),
          with ``batch_size`` added. Without it the config is ``{"unreproducible": "built with
          Problem.from_module: …"}`` and :meth:`replay_config` refuses; use :meth:`from_factory` for custom
          problems that can be replayed.
        * ``hvp_mode``: how HVPs and third derivatives are computed (:data:`HVP_MODES`; class docstring). Recorded
          in the config when it is not ``"auto"``.
        """
        dt = resolve_dtype(dtype)
        dev = resolve_device(device)
        batch_size = check_batch_size(batch_size)
        check_hvp_mode(hvp_mode)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(X, torch.Tensor) or not isinstance(Y, torch.Tensor):
            raise TypeError(f"X and Y must be torch tensors, got {type(X).__name__} and {type(Y).__name__}")
        if X.ndim == 0 or Y.ndim == 0:
            raise ValueError(f"X and Y need a leading sample dimension, got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        if X.shape[0] == 0:
            raise ValueError("X and Y have no samples (0 rows)")
        offenders = _training_mode_offenders(model)
        if offenders:
            raise ValueError(f"model {type(model).__name__} has modules in training mode whose output depends on the "
                             f"batch or on random numbers: {', '.join(offenders)}; call model.eval() (or pass the model "
                             f"in eval mode) — pyrod needs a deterministic, per-sample loss")
        model = copy.deepcopy(model).to(device=dev, dtype=dt)
        X = X.to(device=dev, dtype=dt)
        classification = not torch.is_floating_point(Y)
        Y = Y.to(device=dev) if classification else Y.to(device=dev, dtype=dt)
        blocks, start = [], 0
        for pname, p in model.named_parameters():
            blocks.append(Block(pname, start, start + p.numel(), tuple(p.shape)))
            start += p.numel()
        buffers = {k: b for k, b in model.named_buffers()}
        w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

        def unflat(w):
            return {b.name: w[b.start:b.stop].view(b.shape) for b in blocks}

        def forward(w, x):
            return functional_call(model, ({**unflat(w), **buffers},), (x,))

        loss_of = make_loss(loss, classification)
        if callable(loss) and batch_size is not None and batch_size < X.shape[0]:
            _check_mean_loss(loss_of, forward, w0, X[:batch_size], Y[:batch_size])
        samples = Samples(X=X, Y=Y, forward=forward, loss_of=loss_of, classification=classification)
        cfg = dict(config) if config is not None else {UNREPRODUCIBLE_KEY: FROM_MODULE_MESSAGE}
        cfg["batch_size"] = batch_size
        if hvp_mode != "auto":
            cfg["hvp_mode"] = hvp_mode
        return cls._over_samples(samples, X, Y, w0=w0, blocks=tuple(blocks), config=cfg,
                                 name=name or type(model).__name__, batch_size=batch_size, hvp_mode=hvp_mode)

    @classmethod
    def _over_samples(cls, samples: Samples, X, Y, *, w0, blocks, config, name, batch_size, parent=None,
                      hvp_mode: str = "auto"):
        """The problem ``L(w) = loss_of(forward(w, X), Y)`` (micro-batched with ``batch_size``) over the model of
        ``samples``: the common part of :meth:`from_module` and :meth:`on_samples`."""
        forward, loss_of = samples.forward, samples.loss_of
        n = X.shape[0]
        batches = ()
        if batch_size is None or batch_size >= n:
            def output_fn(w):
                return forward(w, X)

            def loss_fn(w):
                return loss_of(output_fn(w), Y)
        else:
            parts = list(zip(X.split(batch_size), Y.split(batch_size), strict=True))

            def term(xb, yb):
                return lambda w: loss_of(forward(w, xb), yb)

            batches = tuple((len(yb) / n, term(xb, yb)) for xb, yb in parts)

            def output_fn(w):
                return torch.cat([forward(w, xb) for xb, _ in parts])

            def loss_fn(w):
                total = None
                for c, f in batches:
                    t = c * f(w)
                    total = t if total is None else total + t
                return total

        classification = samples.classification
        return cls(loss_fn=loss_fn, w0=w0, output_fn=output_fn if classification else None,
                   labels=Y if classification else None, blocks=blocks, config=config, name=name,
                   batches=batches, batch_size=None if not batches else batch_size, samples=samples, parent=parent,
                   hvp_mode=hvp_mode)

    def on_samples(self, X, Y, name: str | None = None) -> "Problem":
        """The same model and loss over other samples ``X (m, …)``, ``Y (m, …)`` (tensors or NumPy arrays, cast as
        :meth:`Samples.prepare` does): a mini-batch, a held-out split, fresh samples from a stream. Same ``w0``,
        blocks and micro-batch size; its gradient and HVP counts are added to this problem's counters too. It has
        no replay config of its own (it is part of a run, rebuilt from the run's spec). ValueError for a problem
        without samples (analytic toys, problems written as a loss function)."""
        if self.samples is None:
            raise ValueError(f"problem {self.name!r} has no samples to draw from (analytic toys and problems built "
                             f"from a loss function have none); build it from a model and data "
                             f"(pyrod.problem(model=..., data=...) or Problem.from_module)")
        X, Y = self.samples.prepare(X, Y)
        if X.shape[0] != Y.shape[0] or X.shape[0] == 0:
            raise ValueError(f"on_samples: X has {X.shape[0]} rows and Y {Y.shape[0]}; need the same number, >= 1")
        cfg = {UNREPRODUCIBLE_KEY: f"samples drawn from problem {self.name!r} (rebuilt from the run's spec)"}
        return Problem._over_samples(self.samples, X, Y, w0=self.w0, blocks=tuple(self.blocks), config=cfg,
                                     name=name or self.name, parent=self,
                                     batch_size=(self.config or {}).get("batch_size") or self.batch_size,
                                     hvp_mode=self.hvp_mode)

    @classmethod
    def from_factory(cls, factory: str, *, factory_kwargs: dict | None = None, dtype=None, device=None,
                     batch_size: int | None = None, name: str | None = None, hvp_mode: str = "auto",
                     **kwargs) -> "Problem":
        """Build a custom problem from an importable function, recording how so that it can be rebuilt.

        ``factory`` is ``"package.module:function"`` (the part after the colon may be dotted,
        ``"module:Class.method"``). The module is imported with :func:`importlib.import_module` (it must be on
        ``sys.path``) and the function is called as ``function(**kwargs)``; the keyword arguments are given as
        ``**kwargs`` and/or as the dict ``factory_kwargs`` (use it for arguments named ``dtype``, ``device``,
        ``batch_size`` or ``name``, which are this method's own). They must be JSON-able (None, bool, int,
        float, str, lists/tuples, dicts with str keys; NumPy scalars are converted); anything else raises
        TypeError naming the key. The function receives their JSON form (tuples as lists) so that the first
        build and every replay make the very same call. It must return either

        * a :class:`Problem` — built as wanted inside the function; ``dtype``/``device``/``batch_size`` given
          here must then be None or equal to the problem's (ValueError otherwise); or
        * a tuple ``(model, X, Y, loss)`` — passed to :meth:`from_module` with ``dtype`` (None = float64),
          ``device`` and ``batch_size``.

        The function must be deterministic in its arguments (seed torch inside it, e.g. with a ``seed``
        argument, and draw data from a fixed generator). The result's ``config`` is
        ``{"factory": factory, "kwargs": {…}, "dtype": "float64"|"float32", "batch_size": …}`` and
        ``pyrod.problem(**config)`` rebuilds the identical problem (same ``w0``, data and values). The device
        is not recorded: like every pyrod config, a replay uses CUDA when available unless ``device=`` is given.
        ``hvp_mode`` (:data:`HVP_MODES`), when not ``"auto"``, is set on the result and recorded in the config
        (``"auto"`` leaves the mode of a returned Problem as the factory set it).
        """
        fn = _import_factory(factory)
        given = dict(factory_kwargs or {})
        if not isinstance(factory_kwargs, (dict, type(None))):
            raise TypeError(f"factory_kwargs must be a dict, got {type(factory_kwargs).__name__}")
        clash = sorted(set(given) & set(kwargs))
        if clash:
            raise ValueError(f"factory argument(s) {clash} given both in factory_kwargs and as keywords")
        given.update(kwargs)
        fkw = _json_kwargs(given)
        batch_size = check_batch_size(batch_size)
        check_hvp_mode(hvp_mode)
        made = fn(**fkw)
        if isinstance(made, Problem):
            prob = made
            if dtype is not None and resolve_dtype(dtype) != prob.dtype:
                raise ValueError(f"dtype={dtype!r}, but factory {factory!r} returned a {prob.dtype} problem; leave "
                                 f"dtype=None or build the problem with that dtype inside the factory")
            if device is not None and resolve_device(device) != prob.device:
                raise ValueError(f"device={device!r}, but factory {factory!r} returned a problem on {prob.device}")
            if batch_size is not None and batch_size != prob.batch_size:
                raise ValueError(f"batch_size={batch_size!r}, but factory {factory!r} returned a problem with "
                                 f"batch_size={prob.batch_size!r}; set it inside the factory")
            if name is not None:
                prob.name = name
        elif isinstance(made, tuple) and len(made) == 4:
            model, X, Y, loss = made
            prob = cls.from_module(model, X, Y, loss, dtype="float64" if dtype is None else dtype, device=device,
                                   batch_size=batch_size, name=name or factory.rpartition(":")[2],
                                   hvp_mode=hvp_mode)
        else:
            raise TypeError(f"factory {factory!r} returned {type(made).__name__}"
                            + (f" of length {len(made)}" if isinstance(made, tuple) else "")
                            + "; expected a pyrod Problem or a tuple (model, X, Y, loss)")
        prob.config = {"factory": factory, "kwargs": fkw, "dtype": str(prob.dtype).replace("torch.", ""),
                       "batch_size": prob.batch_size}
        if hvp_mode != "auto":
            prob.hvp_mode = check_hvp_mode(hvp_mode, prob.batch_size if prob.batches else None)
            prob.config["hvp_mode"] = hvp_mode
        return prob


class _HessianGraphCache:
    """Holder of the cached graph of ∇L at one point (see :meth:`Problem._hessian_graph`). A cache, not state:
    copies and pickles of a problem start empty (a non-leaf tensor with a graph can be neither copied nor pickled)."""

    def __init__(self):
        self.entry = None        # (TensorKey of the caller's w, w leaf, ∇L(w leaf) with graph)
        self.disabled = False

    def __deepcopy__(self, memo):
        return _HessianGraphCache()

    def __copy__(self):
        return _HessianGraphCache()

    def __reduce__(self):
        return (_HessianGraphCache, ())


def check_hvp_mode(hvp_mode, batch_size=None) -> str:
    """A valid ``hvp_mode`` (one of :data:`HVP_MODES`) for a problem with ``batch_size`` micro-batches; ValueError
    naming the value otherwise (micro-batched problems take only "auto" or "forward": the cached graph of the
    other modes would hold every micro-batch's activations at once)."""
    if not isinstance(hvp_mode, str) or hvp_mode not in HVP_MODES:
        raise ValueError(f"hvp_mode={hvp_mode!r} is unknown; valid values: {list(HVP_MODES)}")
    if batch_size is not None and hvp_mode in ("graph", "batched"):
        raise ValueError(f"hvp_mode={hvp_mode!r} keeps a graph of the full batch, which micro-batches "
                         f"(batch_size={batch_size!r}) exist to avoid; use hvp_mode='auto' or 'forward'")
    return hvp_mode


def auto_hvp_mode(device_type: str, op: str) -> str:
    """The mode ``hvp_mode="auto"`` uses on ``device_type`` for ``op`` ("hvp", "hvp_block" or "d3"):
    :data:`AUTO_HVP_MODES`, the "cpu" row for device types it does not list."""
    return AUTO_HVP_MODES.get(device_type, AUTO_HVP_MODES["cpu"])[op]


def _batched_backward(g: torch.Tensor, ww: torch.Tensor, cotangents: torch.Tensor):
    """``(k, d)``: row i = (∂g/∂ww)ᵀ cotangents[i], in one batched backward pass through the retained graph of ``g``
    (``is_grads_batched``); None when autograd cannot batch some operation of the graph (then loop)."""
    try:
        return torch.autograd.grad(g, ww, cotangents, retain_graph=True, is_grads_batched=True)[0]
    except RuntimeError:
        return None


def _d3_on_graph(ww: torch.Tensor, g: torch.Tensor, groups, m: int) -> torch.Tensor:
    """``(d, m)`` third-derivative columns on the retained graph of ``g = ∇L(ww)``. ``groups``: ``[(b, [(p, a), …]),
    …]``; for each ``b`` one backward pass with ``create_graph`` gives ``H b`` with its graph, then one backward
    pass per ``(p, a)`` gives column ``p`` = ∇(aᵀ H b). Only one group's graph of ``H b`` is alive at a time."""
    cols = [None] * m
    with torch.enable_grad():
        for b, pairs in groups:
            hb = torch.autograd.grad(g, ww, b.to(ww.dtype), retain_graph=True, create_graph=True)[0]
            for p, a in pairs:
                col = None
                if hb.requires_grad:              # else H is constant (quadratic loss): no third derivative
                    col = torch.autograd.grad(hb, ww, a.to(ww.dtype), retain_graph=True, allow_unused=True)[0]
                cols[p] = torch.zeros_like(ww) if col is None else col
            del hb
    return stack_columns(cols).detach()


def _host_indices(name: str, idx, k: int) -> tuple:
    """Host integer indices in ``[0, k)`` as a tuple of ints (ValueError naming ``name`` otherwise)."""
    if isinstance(idx, torch.Tensor):
        if idx.device.type != "cpu" or idx.is_floating_point() or idx.ndim != 1:
            raise ValueError(f"{name} must be host (CPU) integers of one dimension, got a {idx.dtype} tensor of shape "
                             f"{tuple(idx.shape)} on {idx.device}: grouping device indices would synchronise")
        idx = idx.tolist()
    try:
        out = tuple(operator.index(i) for i in idx)
    except TypeError:
        raise ValueError(f"{name}={idx!r} must be a sequence of ints") from None
    bad = [i for i in out if not 0 <= i < k]
    if bad:
        raise ValueError(f"{name} has indices {bad[:5]} outside [0, {k})")
    return out


def check_batch_size(batch_size) -> int | None:
    """``None`` or an int ≥ 1 (NumPy integers accepted) -> ``None``/``int``; ValueError naming the value."""
    if batch_size is None:
        return None
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int or None")
    return int(batch_size)


def _training_mode_offenders(model: torch.nn.Module) -> list[str]:
    """Names (with types) of submodules in training mode whose output depends on the batch or on randomness."""
    nn = torch.nn
    out = []
    for mname, m in model.named_modules():
        if not m.training:
            continue
        bad = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.RReLU))
        bad = bad or (isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats)
        bad = bad or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
        if bad:
            out.append(f"{mname or '(the model itself)'} ({type(m).__name__})")
    return out


def _check_mean_loss(loss_of, forward, w0, xb, yb):
    """A callable loss must satisfy L(batch) = Σ (n_h/n) L(half h): check it on one micro-batch."""
    m = len(yb)
    if m < 2:
        return
    with torch.no_grad():
        out = forward(w0, xb)
        whole = float(loss_of(out, yb))
        h = m // 2
        split = float((h / m) * loss_of(out[:h], yb[:h]) + ((m - h) / m) * loss_of(out[h:], yb[h:]))
    tol = (1e-9 if w0.dtype == torch.float64 else 1e-4) * max(abs(whole), abs(split), 1e-30)
    if not abs(whole - split) <= tol:
        raise ValueError(f"batch_size needs a loss that is a mean over samples, but the loss callable gives "
                         f"{whole!r} on {m} samples and {split!r} as the size-weighted mean over its two halves; "
                         f"make it a mean (e.g. reduction='mean') or use batch_size=None")


def _import_factory(factory):
    if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
        raise ValueError(f"factory={factory!r} must be a string 'package.module:function'")
    modname, attr = factory.split(":")
    try:
        obj = importlib.import_module(modname)
    except ImportError as exc:
        raise ValueError(f"factory={factory!r}: cannot import module {modname!r} ({exc}); it must be importable "
                         f"(on sys.path) wherever the problem is rebuilt") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory={factory!r}: {modname!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"factory={factory!r} is a {type(obj).__name__}, not a callable")
    return obj


def _json_kwargs(kwargs: dict) -> dict:
    """NumPy scalars -> Python, then a strict JSON round trip (tuples -> lists); TypeError naming the bad key."""
    def norm(v, where):
        if v is None or isinstance(v, (bool, str)):
            return v
        if type(v).__module__ == "numpy" and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            return norm(v.item(), where)
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            if not math.isfinite(v):
                raise ValueError(f"factory argument {where}={v!r} is not finite: not representable in JSON")
            return float(v)
        if isinstance(v, (list, tuple)):
            return [norm(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            bad = [k for k in v if not isinstance(k, str)]
            if bad:
                raise TypeError(f"factory argument {where} has a non-str key {bad[0]!r}: not JSON-able")
            return {k: norm(x, f"{where}[{k!r}]") for k, x in v.items()}
        raise TypeError(f"factory argument {where}={type(v).__name__} is not JSON-able (use None, bool, int, float, "
                        f"str, lists and dicts): the config must be able to rebuild the problem")

    return json.loads(json.dumps({k: norm(v, k) for k, v in kwargs.items()}, allow_nan=False))


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
        # classes on the last axis: (n, C) vs (n,), or sequence models' (n, T, C) vs (n, T) (mean over n·T)
        return lambda out, Y: torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), Y.reshape(-1))
    raise ValueError(f"loss={loss!r}: expected one of ['ce', 'mse'] or a callable (outputs, Y) -> scalar")
