"""One definition per optimizer, from which discrete steps and every flow are derived.

Conventions (docs/theory/optimizers.md):

* one time unit = one optimizer step; step ``k = 0, 1, …``; ``t`` is continuous time.
* phase-space state ``z = (w, m)`` (``m`` absent without momentum); the second moment ``ν`` is an
  auxiliary state. Buffers are stored *before* the step (``m_0 = 0``).
* ``ν_used(k) = nu_update(ν_k, g_k, k)`` is the value in the denominator of step ``k`` (PyTorch semantics:
  the current gradient enters ``ν`` before the parameter update); it is also ``ν_{k+1}``.
* one discrete step is ``z_{k+1} = z_k + D(z_k; ν_used(k), k)`` exactly, with ``D = direction(...)``.
* ``P(ν, t) = preconditioner(ν, t)`` excludes ``η``; the step is ``−η P⁻¹(·)`` and the stability threshold
  (``threshold()``) is on ``λmax(P⁻¹H)``, so ``effective sharpness = λmax(P⁻¹H) / threshold``.

Every optimizer is a frozen dataclass of hyper-parameters. Subclasses supply the pieces; the generic
``step`` here, and the flows in :mod:`pyrod.flows`, only ever call these pieces.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch

__all__ = ["Optimizer", "OptState", "bias_factor", "normalize_blocks"]


def bias_factor(beta: float, x) -> float:
    """``1 − β^x`` for real ``x`` (``β^x = exp(x ln β)``); 1 for ``β = 0``."""
    if beta == 0.0:
        return 1.0
    return -math.expm1(float(x) * math.log(beta))


def bias_factor_log_rate(beta: float, x) -> float:
    """``d/dx ln(1 − β^x) = −β^x ln β / (1 − β^x)``, the relative rate of :func:`bias_factor`; 0 for ``β = 0``."""
    if beta == 0.0:
        return 0.0
    lb = math.log(beta)
    return -math.exp(float(x) * lb) * lb / -math.expm1(float(x) * lb)


@dataclass
class OptState:
    """Discrete optimizer state *before* step ``k``.

    ``w``: parameters ``(d,)``; ``m``: first moment ``(d,)`` or None; ``nu``: second moment ``(d,)`` or
    ``(1,)`` (scalar methods) or None; ``k``: step index; ``extra``: optimizer-specific buffers.
    """

    w: torch.Tensor
    m: torch.Tensor | None = None
    nu: torch.Tensor | None = None
    k: int = 0
    extra: dict = field(default_factory=dict)

    def clone(self) -> "OptState":
        c = lambda x: None if x is None else x.clone()  # noqa: E731
        return OptState(c(self.w), c(self.m), c(self.nu), self.k, {k: c(v) for k, v in self.extra.items()})


def normalize_blocks(blocks) -> tuple:
    """``((start, stop, shape), …)`` with int entries from ``Problem.blocks`` (objects with ``start``, ``stop``,
    ``shape``), dicts with those keys, or ``[start, stop, [shape…]]`` lists (a JSON round-trip of
    ``config()``). Blocks must be ordered, contiguous from 0 and ``prod(shape) == stop − start``."""
    out = []
    for b in blocks or ():
        if isinstance(b, dict):
            start, stop, shape = b["start"], b["stop"], b["shape"]
        elif hasattr(b, "start") and hasattr(b, "shape"):
            start, stop, shape = b.start, b.stop, b.shape
        else:
            start, stop, shape = b
        out.append((int(start), int(stop), tuple(int(s) for s in shape)))
    pos = 0
    for start, stop, shape in out:
        if start != pos or stop < start or math.prod(shape) != stop - start:
            raise ValueError(f"blocks={out!r}: expected contiguous (start, stop, shape) triples from 0 with "
                             f"prod(shape) == stop - start; bad entry {(start, stop, shape)!r}")
        pos = stop
    return tuple(out)


def _check_range(name, value, lo, hi, lo_open=False, hi_open=True):
    bad = (not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value)
           or (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}={value!r} must lie in {lb}{lo}, {hi}{rb}")


def _annotation_kinds(f: dataclasses.Field) -> set:
    """The names in a field's annotation: ``"float | None"`` -> ``{"float", "None"}``."""
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return {a.strip() for a in str(ann).split("|")}


def coerce_fields(opt) -> None:
    """Check and normalise an optimizer's hyper-parameters by their declared types (in place on the frozen
    dataclass): ``bool`` fields must be ``True``/``False`` (NumPy bools accepted; ``"no"``, ``0``, ``1`` refused);
    ``int`` fields take Python or NumPy integers (not bools, not floats); ``float`` fields take any real number
    except bools (NumPy floats and integers included) and are stored as Python ``float``. ``None`` passes where
    the annotation allows it. Other fields (str, tuples, tensors) are left to ``validate``. ValueError names the
    field and the value."""
    for f in dataclasses.fields(opt):
        v = getattr(opt, f.name)
        kinds = _annotation_kinds(f)
        if v is None and "None" in kinds:
            continue
        if "bool" in kinds:
            if type(v).__module__ == "numpy" and type(v).__name__.startswith("bool"):
                v = bool(v)
            if not isinstance(v, bool):
                raise ValueError(f"{f.name}={v!r} must be True or False (a bool), got {type(v).__name__}")
        elif "int" in kinds:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{f.name}={v!r} must be an int, got {type(v).__name__}")
            v = int(v)
        elif "float" in kinds:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{f.name}={v!r} must be a real number, got {type(v).__name__}")
            v = float(v)
        else:
            continue
        object.__setattr__(opt, f.name, v)


@dataclass(frozen=True)
class Optimizer:
    """Base class: hyper-parameters + the pieces every run and flow is derived from.

    Subclasses set the class flags and override ``direction`` (and, for ν-methods, ``nu_target``,
    ``nu_update``, ``nu_velocity``, ``preconditioner``) and ``threshold``.
    """

    lr: float

    name: ClassVar[str] = "optimizer"
    has_momentum: ClassVar[bool] = False
    has_nu: ClassVar[bool] = False
    scalar_nu: ClassVar[bool] = False
    #: optimizers whose D is smooth and defined on the whole phase space support flows
    supports_flows: ClassVar[bool] = True
    #: optimizers that treat the problem's tensors (``Problem.blocks``) differently (Adafactor, Muon):
    #: they carry a ``blocks`` field, filled by :meth:`bind`
    uses_blocks: ClassVar[bool] = False

    def __post_init__(self):
        coerce_fields(self)
        _check_range("lr", self.lr, 0.0, math.inf, lo_open=True)
        self.validate()

    def validate(self) -> None:
        """Check hyper-parameters; raise ValueError naming the bad one."""

    # ------------------------------------------------------------- metadata
    def config(self) -> dict:
        """JSON-able hyper-parameters; ``pyrod.optimizers.from_config(cfg)`` rebuilds the optimizer."""
        out = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().tolist()
            out[f.name] = v
        return out

    def replace(self, **changes) -> "Optimizer":
        return dataclasses.replace(self, **changes)

    def bind(self, problem) -> "Optimizer":
        """The optimizer to run on ``problem``. Callers (``pyrod.simulate``, runs) should always use
        ``opt = opt.bind(problem)`` before ``init_state``. Identity here; optimizers with ``uses_blocks``
        return a copy whose ``blocks`` field holds ``problem.blocks`` as ``(start, stop, shape)`` triples
        (so the block layout is part of ``config()`` and survives ``from_config``)."""
        if self.uses_blocks:
            return dataclasses.replace(self, blocks=normalize_blocks(problem.blocks))
        return self

    def _blocks_for(self, d: int) -> tuple:
        """The ``blocks`` field checked against the parameter dimension ``d`` (``uses_blocks`` optimizers)."""
        blocks = getattr(self, "blocks", ())
        if not blocks:
            raise ValueError(f"{self.name} needs the problem's tensor shapes: use opt.bind(problem) or pass "
                             f"blocks=((start, stop, shape), ...) (e.g. from problem.blocks)")
        if blocks[-1][1] != d:
            raise ValueError(f"blocks cover {blocks[-1][1]} parameters but w has {d}")
        return blocks

    # -------------------------------------------------------------- pieces
    def threshold(self) -> float:
        """Stability threshold on ``λmax(P⁻¹H)`` (t → ∞), Cohen et al. 2022 Table 1. NaN if none."""
        return 2.0 / self.lr

    def nu_target(self, g: torch.Tensor) -> torch.Tensor:
        """What the second moment tracks: ``g⊙g`` ``(d,)`` or ``‖g‖²`` ``(1,)`` (scalar methods)."""
        raise NotImplementedError

    def nu_init(self, g0: torch.Tensor) -> torch.Tensor | None:
        """``ν_0`` (before step 0)."""
        return None

    def nu_update(self, nu: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
        """``ν_used(k)``: the buffer after absorbing ``g_k`` (used in the denominator of step ``k``)."""
        raise NotImplementedError

    def nu_velocity(self, nu: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``dν/dt`` of the flows for a (possibly rod-averaged) ``target = tgt(g)``."""
        raise NotImplementedError

    def preconditioner(self, nu: torch.Tensor | None, t: float) -> torch.Tensor:
        """``P(ν, t)`` without ``η``; shape ``(d,)``, ``(1,)``; ``ones(1)`` for non-adaptive methods.

        Must be positive. ``t`` is the (continuous) step index; bias-correction factors use it.
        """
        return torch.ones(1, dtype=torch.float64)

    def preconditioner_rate(self, nu: torch.Tensor | None, t: float, P: torch.Tensor | None = None) -> torch.Tensor:
        """``∂P/∂t`` at fixed ``ν``, per step (the drift of the bias-correction factors), shaped as ``P``; ``P``:
        ``P(ν, t)`` when the caller has it. The central flow's ``dP̃/dt`` needs it. Here a central difference over
        ±1e-4 steps (two evaluations of :meth:`preconditioner`); optimizers with a closed form override it."""
        h = 1e-4
        return (self.preconditioner(nu, t + h) - self.preconditioner(nu, t - h)) / (2 * h)

    def direction(self, w, m, g, nu, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The increment ``D(z; ν, t) = (D_w, D_m)`` for ``z = (w, m)`` and ``g = ∇L(w)``."""
        raise NotImplementedError

    def increment(self, w, m, g, nu, t):
        """Deprecated alias of :meth:`direction` (one name per concept); warns, then returns the same ``D``."""
        warnings.warn("Optimizer.increment is deprecated: use Optimizer.direction (the same D(z; nu, t))",
                      DeprecationWarning, stacklevel=2)
        return self.direction(w, m, g, nu, t)

    def effective_nu(self, state: OptState, nu_used: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Hook (AMSGrad): the ν that enters ``P`` given ``ν_used``, and updated ``extra`` buffers."""
        return nu_used, state.extra

    # ------------------------------------------------------------ discrete
    def init_state(self, w0: torch.Tensor, g0: torch.Tensor) -> OptState:
        """State before step 0 (``m_0 = 0``, ``ν_0 = nu_init(g0)``)."""
        m = torch.zeros_like(w0) if self.has_momentum else None
        nu = self.nu_init(g0) if self.has_nu else None
        return OptState(w0.clone(), m, nu, 0, self.init_extra(w0))

    def init_extra(self, w0: torch.Tensor) -> dict:
        return {}

    def step(self, state: OptState, g: torch.Tensor) -> tuple[OptState, torch.Tensor | None]:
        """One discrete step from ``state`` with ``g = ∇L(state.w)``.

        Returns the new state and the ν that entered ``P`` in this step (``None`` without ν), so callers
        can measure ``λmax(P⁻¹H)`` with the preconditioner this step actually used.
        """
        nu_p = None
        extra = state.extra
        new_nu = None
        if self.has_nu:
            new_nu = self.nu_update(state.nu, g, state.k)
            nu_p, extra = self.effective_nu(state, new_nu)
        dw, dm = self.direction(state.w, state.m, g, nu_p, state.k)
        m = state.m + dm if self.has_momentum else None
        return OptState(state.w + dw, m, new_nu, state.k + 1, extra), nu_p

    def __repr__(self):
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                         if not isinstance(getattr(self, f.name), torch.Tensor))
        return f"{type(self).__name__}({args})"
