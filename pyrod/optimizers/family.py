"""The momentum × second-moment family: GD, heavy ball, Nesterov, RMSProp, Adam, NAdam and kin.

One generic class, :class:`PreconditionedMomentum`, composes

* a momentum rule (``None``, ``"ema_heavy_ball"``, ``"ema_nesterov"``, ``"heavy_ball"``, ``"nesterov"``),
* a second-moment rule (``None``, ``"ema"``, ``"sum"`` (Adagrad)), per component or scalar,
* ``P(ν, t) = c1-factor · ((ν / c2(t))^p + ε)`` with ``p = ½`` (Padam: any ``p``),
* decoupled weight decay (AdamW).

The named optimizers below only choose these components. ``D_w`` and ``D_m`` are tabulated in
docs/theory/optimizers.md, "Momentum rules".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import Optimizer, OptState, _check_range, bias_factor, bias_factor_log_rate

__all__ = [
    "PreconditionedMomentum", "GD", "HeavyBall", "Nesterov", "RMSProp", "ScalarRMSProp", "Adam", "ScalarAdam",
    "NAdam", "ScalarNAdam", "AdamW", "AMSGrad", "Padam", "Adagrad",
]

_MOMENTA = (None, "ema_heavy_ball", "ema_nesterov", "heavy_ball", "nesterov")


@dataclass(frozen=True, repr=False)
class PreconditionedMomentum(Optimizer):
    """Generic preconditioned momentum method (see module docstring).

    Subclasses fix ``momentum``/``second_moment``/``scalar_nu`` as class variables and expose the
    relevant hyper-parameters as dataclass fields. Fields read here (with defaults if a subclass
    lacks them): ``beta1``, ``beta2``, ``eps``, ``bias_correction``, ``nu0``, ``scalar_norm``, ``p``,
    ``weight_decay``, ``frozen_nu``, ``nu_rate``.
    """

    momentum: ClassVar[str | None] = None
    second_moment: ClassVar[str | None] = None

    # ---------------------------------------------------------- accessors
    def _get(self, name, default):
        return getattr(self, name, default)

    @property
    def beta1(self) -> float:  # overridden by a field where the optimizer has momentum
        return 0.0

    def validate(self):
        if self.has_momentum:
            _check_range("beta1", self.beta1, 0.0, 1.0)
        if self.has_nu:
            if self.second_moment == "ema":
                _check_range("beta2", self._get("beta2", 0.999), 0.0, 1.0)
            _check_range("eps", self._get("eps", 0.0), 0.0, math.inf)
            nu0 = self._get("nu0", "auto")
            if nu0 not in ("auto", "zero", "g0"):
                raise ValueError(f"nu0={nu0!r}: expected one of ['auto', 'g0', 'zero']")
            norm = self._get("scalar_norm", "sum")
            if norm not in ("sum", "mean"):
                raise ValueError(f"scalar_norm={norm!r}: expected one of ['mean', 'sum']")
            rate = self._get("nu_rate", "1-beta2")
            if rate not in ("1-beta2", "(1-beta2)/beta2"):
                raise ValueError(f"nu_rate={rate!r}: expected one of ['(1-beta2)/beta2', '1-beta2']")
            _check_range("p", self._get("p", 0.5), 0.0, 1.0, lo_open=True, hi_open=False)
        _check_range("weight_decay", self._get("weight_decay", 0.0), 0.0, math.inf)
        fz = self._get("frozen_nu", None)
        if fz is not None:
            if not isinstance(fz, torch.Tensor):
                raise TypeError(f"frozen_nu must be a torch.Tensor, got {type(fz).__name__}")
            if bool((fz < 0).any()) or not bool(torch.isfinite(fz).all()):
                raise ValueError("frozen_nu must be finite and non-negative")

    @property
    def bias_correction_on(self) -> bool:
        return bool(self._get("bias_correction", False))

    # ---------------------------------------------------------- threshold
    def threshold(self) -> float:
        """Cohen et al. 2022 Table 1 (docs/theory/optimizers.md, "Where the thresholds come from")."""
        eta, b = self.lr, self.beta1
        base = {
            None: 2.0,
            "ema_heavy_ball": (2 + 2 * b) / (1 - b),
            "ema_nesterov": (2 + 2 * b) / ((1 - b) * (1 + 2 * b)),
            "heavy_ball": 2 + 2 * b,
            "nesterov": (2 + 2 * b) / (1 + 2 * b),
        }[self.momentum]
        return base / eta

    # ------------------------------------------------------- second moment
    def nu_target(self, g):
        if self.scalar_nu:
            s = torch.dot(g, g)
            if self._get("scalar_norm", "sum") == "mean":
                s = s / g.numel()
            return s.reshape(1)
        return g * g

    def _nu0_mode(self) -> str:
        mode = self._get("nu0", "auto")
        if mode != "auto":
            return mode
        if self.second_moment == "sum":
            return "zero"
        return "zero" if self.bias_correction_on else "g0"

    def nu_init(self, g0):
        fz = self._get("frozen_nu", None)
        if fz is not None:
            return fz.to(dtype=g0.dtype, device=g0.device).reshape(-1).clone()
        tgt = self.nu_target(g0)
        if self._nu0_mode() == "g0":
            return tgt.clone()
        init = self._get("initial_accumulator_value", 0.0)
        return torch.full_like(tgt, float(init))

    def nu_update(self, nu, g, k):
        if self._get("frozen_nu", None) is not None:
            return nu
        if self.second_moment == "sum":
            return nu + self.nu_target(g)
        b2 = self.beta2
        return b2 * nu + (1 - b2) * self.nu_target(g)

    def relaxation_rate(self) -> float:
        """``r`` in ``dν/dt = r (tgt − ν)``: ``1−β2`` (default) or ``(1−β2)/β2``
        (docs/theory/optimizers.md, "Second-moment rules")."""
        b2 = self.beta2
        return (1 - b2) / b2 if self._get("nu_rate", "1-beta2") == "(1-beta2)/beta2" else 1 - b2

    def nu_velocity(self, nu, target):
        if self._get("frozen_nu", None) is not None:
            return torch.zeros_like(nu)
        if self.second_moment == "sum":
            return target
        return self.relaxation_rate() * (target - nu)

    # ----------------------------------------------------- preconditioner
    def _c1_moves(self) -> bool:
        """The first-moment bias correction ``c1(t) = 1 − β1^(t+1)`` is on (else ``c1 = 1``)."""
        return self.bias_correction_on and self.has_momentum

    def _c2_moves(self) -> bool:
        """The second-moment bias correction ``c2(t) = 1 − β2^(t+1)`` is on (else ``c2 = 1``)."""
        return self.bias_correction_on and self.second_moment == "ema"

    def _c1(self, t) -> float:
        return bias_factor(self.beta1, t + 1) if self._c1_moves() else 1.0

    def _c1n(self, t) -> float:
        return bias_factor(self.beta1, t + 2) if self._c1_moves() else 1.0

    def _c2(self, t) -> float:
        return bias_factor(self.beta2, t + 1) if self._c2_moves() else 1.0

    def preconditioner(self, nu, t):
        """``P(ν,t) = c1(t)·((ν/c2(t))^p + ε)`` for Adam-type methods (c1 folds the first-moment
        bias correction into ``P`` so that ``D_w = −η P⁻¹ m⁺`` and the threshold is on λmax(P⁻¹H));
        NAdam keeps its two factors inside the direction and uses ``(ν/c2)^p + ε``."""
        if not self.has_nu:
            return torch.ones(1, dtype=torch.float64)
        p = self._get("p", 0.5)
        base = nu / self._c2(t)
        # (ν/c2)^p with a zero derivative where ν = 0 (coordinates whose gradient is always 0, e.g. weights of a
        # constant-zero input: there ν̇ = 0 too, and the true derivative ∞·0 would make JVPs through P NaN)
        pos = base > 0
        safe = torch.where(pos, base, torch.ones_like(base))
        root = torch.where(pos, torch.sqrt(safe) if p == 0.5 else safe ** p, torch.zeros_like(base))
        P = root + self._get("eps", 0.0)
        if self.momentum == "ema_heavy_ball":
            P = P * self._c1(t)
        return P

    def preconditioner_rate(self, nu, t, P=None):
        """``∂P/∂t`` in closed form: with ``r_i = d ln c_i/dt`` (:func:`~pyrod.optimizers.base.bias_factor_log_rate`)
        and ``P = c1·((ν/c2)^p + ε)``, ``∂P/∂t = r1·P − p·r2·(P − c1·ε)`` (where ``ν = 0`` only the ``c1·ε`` part
        moves, as ``P`` itself there). One pass over ``P`` instead of the base class's two evaluations. A subclass
        that redefines :meth:`preconditioner`, ``_c1`` or ``_c2`` gets the base class's central difference of its
        own ``P`` instead (the closed form is this class's ``P``)."""
        cls = type(self)
        if any(getattr(cls, name) is not getattr(PreconditionedMomentum, name)
               for name in ("preconditioner", "_c1", "_c2")):
            return super().preconditioner_rate(nu, t, P)
        if not self.has_nu:
            return torch.zeros(1, dtype=torch.float64)
        if P is None:
            P = self.preconditioner(nu, t)
        c1_in_P = self.momentum == "ema_heavy_ball"              # as in preconditioner
        r1 = bias_factor_log_rate(self.beta1, t + 1) if c1_in_P and self._c1_moves() else 0.0
        c1 = self._c1(t) if c1_in_P else 1.0
        r2 = bias_factor_log_rate(self.beta2, t + 1) if self._c2_moves() else 0.0
        if r1 == 0.0 and r2 == 0.0:
            return torch.zeros_like(P)
        p, eps = self._get("p", 0.5), self._get("eps", 0.0)
        return r1 * P - (p * r2) * (P - c1 * eps)

    # ---------------------------------------------------------- direction
    def _numerator(self, m, g, t):
        """The vector that ``P⁻¹`` multiplies, and ``D_m``."""
        b = self.beta1
        mom = self.momentum
        if mom is None:
            return g, None
        if mom == "ema_heavy_ball":
            m_plus = b * m + (1 - b) * g
            return m_plus, (1 - b) * (g - m)
        if mom == "ema_nesterov":
            m_plus = b * m + (1 - b) * g
            u = b * m_plus / self._c1n(t) + (1 - b) * g / self._c1(t)
            return u, (1 - b) * (g - m)
        m_plus = b * m + g  # standard parameterization
        if mom == "heavy_ball":
            return m_plus, m_plus - m
        return b * m_plus + g, m_plus - m  # nesterov

    def direction(self, w, m, g, nu, t):
        u, dm = self._numerator(m, g, t)
        if self.has_nu:
            u = u / self.preconditioner(nu, t)
        dw = -self.lr * u
        wd = self._get("weight_decay", 0.0)
        if wd:
            dw = dw - self.lr * wd * w
        return dw, dm


# ---------------------------------------------------------------------------------------------
# named optimizers
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class GD(PreconditionedMomentum):
    """Gradient descent ``w ← w − η g``. Threshold ``2/η``."""

    name: ClassVar[str] = "GD"


@dataclass(frozen=True, repr=False)
class _Momentum(PreconditionedMomentum):
    beta: float = 0.9
    parameterization: str = "ema"
    has_momentum: ClassVar[bool] = True
    _kind: ClassVar[str] = "heavy_ball"

    @property
    def beta1(self) -> float:
        return self.beta

    @property
    def momentum(self) -> str:  # type: ignore[override]
        if self.parameterization not in ("ema", "standard"):
            raise ValueError(f"parameterization={self.parameterization!r}: expected one of ['ema', 'standard']")
        return ("ema_" if self.parameterization == "ema" else "") + self._kind

    def validate(self):
        _ = self.momentum
        _check_range("beta", self.beta, 0.0, 1.0)  # name the field the user set (not the internal beta1)
        super().validate()


@dataclass(frozen=True, repr=False)
class HeavyBall(_Momentum):
    """Heavy ball. ``parameterization="ema"``: ``m ← βm + (1−β)g; w ← w − ηm`` (threshold
    ``(2+2β)/(η(1−β))``); ``"standard"``: ``m ← βm + g`` (= ``torch.optim.SGD(momentum=β)``, threshold
    ``(2+2β)/η``). ``m_0 = 0``."""

    name: ClassVar[str] = "HeavyBall"
    _kind: ClassVar[str] = "heavy_ball"


@dataclass(frozen=True, repr=False)
class Nesterov(_Momentum):
    """Nesterov momentum in phase-space form (gradient at the current ``w``, look-ahead folded into
    ``m̂ = βm⁺ + (1−β)g``, or ``βm⁺ + g`` for ``"standard"`` = ``SGD(nesterov=True)``)."""

    name: ClassVar[str] = "Nesterov"
    _kind: ClassVar[str] = "nesterov"


@dataclass(frozen=True, repr=False)
class RMSProp(PreconditionedMomentum):
    """RMSProp: ``ν ← β2ν + (1−β2)g⊙g; w ← w − ηg/(√ν̂+ε)``. Threshold ``2/η``.

    ``nu0="auto"`` starts at ``ν_0 = g_0⊙g_0`` without bias correction (docs/theory/optimizers.md), ``"zero"``
    reproduces ``torch.optim.RMSprop(alpha=β2)``.
    """

    beta2: float = 0.999
    eps: float = 1e-8
    bias_correction: bool = False
    nu0: str = "auto"
    nu_rate: str = "1-beta2"
    frozen_nu: torch.Tensor | None = None
    name: ClassVar[str] = "RMSProp"
    has_nu: ClassVar[bool] = True
    second_moment: ClassVar[str] = "ema"


@dataclass(frozen=True, repr=False)
class ScalarRMSProp(RMSProp):
    """RMSProp with one scalar ``ν`` tracking ``‖g‖²`` (``scalar_norm="sum"``) or ``‖g‖²/d`` (``"mean"``)."""

    scalar_norm: str = "sum"
    name: ClassVar[str] = "ScalarRMSProp"
    scalar_nu: ClassVar[bool] = True


@dataclass(frozen=True, repr=False)
class Adam(PreconditionedMomentum):
    """Adam (EMA heavy-ball momentum, RMSProp second moment), bias correction on by default.

    ``D_w = −η m⁺ / (c1(t) P(ν,t))``, ``D_m = (1−β1)(g − m)``. Threshold ``(2+2β1)/(η(1−β1))``.
    """

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    bias_correction: bool = True
    nu0: str = "auto"
    nu_rate: str = "1-beta2"
    frozen_nu: torch.Tensor | None = None
    name: ClassVar[str] = "Adam"
    has_momentum: ClassVar[bool] = True
    has_nu: ClassVar[bool] = True
    momentum: ClassVar[str] = "ema_heavy_ball"
    second_moment: ClassVar[str] = "ema"


@dataclass(frozen=True, repr=False)
class ScalarAdam(Adam):
    """Adam with a scalar second moment (``‖g‖²``)."""

    scalar_norm: str = "sum"
    name: ClassVar[str] = "ScalarAdam"
    scalar_nu: ClassVar[bool] = True


@dataclass(frozen=True, repr=False)
class NAdam(Adam):
    """NAdam with constant ``β1`` (Dozat; ``torch.optim.NAdam(momentum_decay=∞)``).

    ``D_w = −η[β1 m⁺/c1n(t) + (1−β1)g/c1(t)]/P(ν,t)``. Threshold ``(2+2β1)/(η(1−β1)(1+2β1))``.
    """

    name: ClassVar[str] = "NAdam"
    momentum: ClassVar[str] = "ema_nesterov"


@dataclass(frozen=True, repr=False)
class ScalarNAdam(NAdam):
    """NAdam with a scalar second moment."""

    scalar_norm: str = "sum"
    name: ClassVar[str] = "ScalarNAdam"
    scalar_nu: ClassVar[bool] = True


@dataclass(frozen=True, repr=False)
class AdamW(Adam):
    """Adam with decoupled weight decay ``w ← w − ηλw`` (``torch.optim.AdamW``). The threshold is Adam's;
    the decay shifts the linearised map by ``−ηλ`` (``decay_shift()``)."""

    weight_decay: float = 1e-2
    name: ClassVar[str] = "AdamW"

    def decay_shift(self) -> float:
        """The decay's term in ``∂D_w/∂w``: ``−ηλ``."""
        return -self.lr * self.weight_decay

    def decay_threshold(self) -> float:
        """Discrete flip threshold on ``λmax(P⁻¹H)`` *with* the decay (frozen ``P``, ``c1 = c2 = 1``).

        The shift ``−ηλ`` in ``∂D_w/∂w`` turns the ``2`` of the flip condition ``det(J + I) = 0`` into
        ``2 − ηλ``: ``(2 − ηλ)(1 + β1)/(η(1 − β1)) = threshold()·(1 − ηλ/2)`` (tests/test_thresholds.py)."""
        return self.threshold() * (1 - self.lr * self.weight_decay / 2)


@dataclass(frozen=True, repr=False)
class AMSGrad(Adam):
    """Adam with ``P`` built from ``ν̂max = max(ν̂max, ν)`` (``torch.optim.Adam(amsgrad=True)``).

    The max makes ``D`` non-smooth in ``ν``: AMSGrad supports discrete runs only.
    """

    name: ClassVar[str] = "AMSGrad"
    supports_flows: ClassVar[bool] = False

    def init_extra(self, w0):
        return {"nu_max": None}

    def effective_nu(self, state: OptState, nu_used):
        prev = state.extra.get("nu_max")
        nu_max = nu_used.clone() if prev is None else torch.maximum(prev, nu_used)
        return nu_max, {**state.extra, "nu_max": nu_max}


@dataclass(frozen=True, repr=False)
class Padam(Adam):
    """Partially adaptive Adam: ``P = (ν̂)^p + ε`` (``p = ¼`` in the AEoS paper). Threshold as Adam."""

    p: float = 0.25
    name: ClassVar[str] = "Padam"


@dataclass(frozen=True, repr=False)
class Adagrad(PreconditionedMomentum):
    """Adagrad: ``ν ← ν + g⊙g; w ← w − ηg/(√ν+ε)`` (``torch.optim.Adagrad``, no lr decay). Threshold ``2/η``.

    Flows use ``dν/dt = tgt(g)``.
    """

    eps: float = 1e-10
    initial_accumulator_value: float = 0.0
    frozen_nu: torch.Tensor | None = None
    name: ClassVar[str] = "Adagrad"
    has_nu: ClassVar[bool] = True
    second_moment: ClassVar[str] = "sum"

    def validate(self):
        _check_range("initial_accumulator_value", self.initial_accumulator_value, 0.0, math.inf)
        super().validate()

    @property
    def beta2(self) -> float:
        return 1.0
