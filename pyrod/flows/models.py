"""Flow models derived from one optimizer definition (docs/theory/stable_and_rod_flows.md).

A :class:`FlowModel` knows its state layout, initial condition (from the discrete run), right-hand side
(a pure torch function of ``(t, y)``, differentiable with ``torch.func.jvp`` for stiff solvers and the
BEA correction) and how to read the flow out at integer times. The optimizer supplies only
``direction`` (the increment ``D``), ``nu_target``, ``nu_velocity``, ``nu_update``, ``preconditioner``.

State vectors ``y`` are flat; ``w``, ``m`` have ``d`` entries, ``ν`` has ``d`` or 1.
Units: ``t`` in optimizer steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp

__all__ = ["Layout", "FlowModel", "PhaseSpaceState", "StableFlow", "RodFlow", "bea_correction", "rod_nu_offset"]


@dataclass(frozen=True)
class Layout:
    """Named consecutive slices of a flat state vector."""

    parts: tuple  # ((name, size), ...)

    @property
    def size(self) -> int:
        return sum(n for _, n in self.parts)

    def unpack(self, y: torch.Tensor) -> dict:
        out, i = {}, 0
        for name, n in self.parts:
            out[name] = y[i:i + n]
            i += n
        return out

    def pack(self, **parts) -> torch.Tensor:
        return torch.cat([parts[name].reshape(-1) for name, _ in self.parts])


def bea_correction(f):
    """Second-order backward-error correction ``Ẏ = F(Y) − ½ J_F(Y) F(Y)``
    (docs/theory/stable_and_rod_flows.md, "Backward-error (BEA-1) correction").

    The Jacobian-vector product is exact (forward-over-reverse through ``f``), not a finite difference.
    """
    def corrected(t, y):
        F, JF = jvp(lambda yy: f(t, yy), (y,), (f(t, y),))
        return F - 0.5 * JF
    return corrected


class FlowModel:
    """Base class. Subclasses define ``layout``, ``initial_state``, ``rhs``, ``centre``, ``nu_of``.

    Hooks :class:`~pyrod.flows.run.FlowRun` calls (all have defaults here; override what a model needs):

    * ``extra_variables()`` / ``readout(k, y_k, y_prev_half, discrete)``: model-specific output variables and
      their values at integer step ``k``;
    * ``integrator_options()``: option *hints* for the integrator (e.g. ``exact_saves``); FlowRun passes only
      the keys the chosen backend accepts;
    * ``on_accept(t, y)``: after every accepted integrator step (torch state); only called when overridden;
    * ``on_save(t, y)``: with each state the integrator saves (integer and half-integer times), before the
      ``on_accept`` of the step that reached it; only called when overridden, and not by the Julia backend;
    * ``begin_chunk(chunk)``: before integrating through a chunk of discrete states (``pyrod.runs.discrete.Chunk``);
      models with a pure cache clear it here, so that a resumed run does exactly the same work;
    * ``on_start(t, y)``: once, with the flow's first state, after the first chunk's ``begin_chunk`` and before
      any right-hand side (not again on resume; central: the first refresh and the read-out at that state);
    * ``flow_events()``: extra :class:`~pyrod.integrate.base.Event` s whose ``fn(t, y)`` takes the torch state;
    * ``run_attrs()`` / ``final_attrs()``: group attributes at the start / end of the run;
    * ``n_eig``: length of the ``eig`` dimension of model-specific ``(t, eig)`` variables (FlowRun sets it to the
      measurer's ``k``);
    * ``extra_dims()``: ``{name: length}`` of model-specific dimensions used by :meth:`extra_variables` besides
      ``t`` and ``eig`` (central: ``track``, sized by ``max_track``, so that nothing the flow computes is cut to
      ``eigs`` entries);
    * ``state_dict()`` / ``load_state_dict(d)``: everything mutable that affects what comes next (default: no
      state). Called only between chunks; values are tensors, arrays, scalars, strings, None and lists / dicts.
    """

    name = "flow"
    #: time shift of the bias-correction factors inside D (rod: ½, stable: 0)
    tshift = 0.0
    #: the flow at time k + compare_shift is compared with the discrete centre (z_k + z_{k+1})/2
    compare_shift = 0.0
    #: gradients per right-hand-side evaluation (for cost counters)
    grads_per_rhs = 1
    #: length of the "eig" dim of (t, eig) model variables (set by FlowRun)
    n_eig = 0
    #: what this flow asks of the integrator when the user gives no method and no tolerances: a flow trait of
    #: :data:`pyrod.integrate.registry.FLOW_TRAITS` (``"low_order"``, ``"fixed_step"``); each backend's descriptor
    #: names its method for a trait (``Backend.trait_methods``), a backend without one runs its own default
    #: method (at rtol 1e-6, atol 1e-9). None: always the backend's default.
    method_trait: str | None = None
    #: (rtol, atol) used with the trait's method (any backend); None: (1e-6, 1e-9)
    default_tolerances = None

    def __init__(self, problem, optimizer, *, bea: bool = False):
        self.problem, self.opt = problem, optimizer
        self.grad = problem.grad_fn
        d = problem.dim
        self.d = d
        self.has_m = optimizer.has_momentum
        self.has_nu = optimizer.has_nu
        self.nu_size = (1 if optimizer.scalar_nu else d) if self.has_nu else 0
        self.bea = bea

    def rhs_fn(self):
        """The right-hand side ``(t, y) -> dy/dt`` (torch), BEA-corrected when requested."""
        return bea_correction(self.rhs) if self.bea else self.rhs

    # ------------------------------------------------------------------ hooks (defaults)
    def extra_variables(self) -> list:
        return []

    def extra_dims(self) -> dict:
        """Model-specific dimensions ``{name: length}`` of :meth:`extra_variables` (besides ``t`` and ``eig``)."""
        return {}

    def readout(self, k: int, y_k: torch.Tensor, y_prev_half: torch.Tensor | None, discrete) -> dict:
        return {}

    def measure_time(self, k: int) -> float:
        """The optimizer time at which the read-out at integer time ``k`` evaluates the preconditioner."""
        return k + self.tshift

    #: set by FlowRun: ``spectrum_at(k, y, init)`` measures the run's eigen diagnostics at integer time ``k`` from
    #: the flow state ``y`` (``init``: the model's own eigenvectors there, or None); None where none are due at k
    spectrum_at = None
    #: set by FlowRun: ``spectrum_needs(k)`` -> ``(number of eigenpairs, relative residual tolerance)`` of the
    #: measurement due at integer time ``k``, or None where none is due
    spectrum_needs = None
    #: set by FlowRun: True when the backend hands the model's hooks its own state tensors (a tensor backend: the
    #: right-hand side, the event checks and ``on_accept`` at one state get the same tensor); False when each call
    #: gets a fresh conversion (NumPy backends), so that caches must compare states by value
    tensor_states = False

    def stashed_spectrum(self, k: int, y_k: torch.Tensor) -> dict | None:
        """The eigen diagnostics at integer time ``k`` if the model already measured them (via
        :attr:`spectrum_at`, during integration) at exactly ``y_k``; None: FlowRun measures them itself."""
        return None

    def integrator_options(self) -> dict:
        return {}

    def on_accept(self, t: float, y: torch.Tensor) -> None:
        return None

    def on_save(self, t: float, y: torch.Tensor) -> None:
        return None

    def begin_chunk(self, chunk) -> None:
        return None

    def on_start(self, t: float, y: torch.Tensor) -> None:
        """Called once with the flow's first state ``y`` at time ``t`` (after :meth:`begin_chunk` of its chunk),
        before any right-hand side; not called again when a run resumes."""
        return None

    def flow_events(self) -> list:
        return []

    def run_attrs(self) -> dict:
        return {}

    def final_attrs(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state; got keys {sorted(state)}")

    def has_on_accept(self) -> bool:
        """Whether :meth:`on_accept` is overridden (FlowRun skips the per-step conversion otherwise)."""
        return type(self).on_accept is not FlowModel.on_accept

    def has_on_save(self) -> bool:
        """Whether :meth:`on_save` is overridden (FlowRun passes no hook otherwise)."""
        return type(self).on_save is not FlowModel.on_save

    def probe(self, t: float, y: torch.Tensor):
        """Values at a step end that a tensor backend reads in its one host transfer of the step, and what to do
        with them: ``(flat tensor, consume)`` or None (:attr:`pyrod.integrate.base.FlowProblem.probe`)."""
        return None

    def has_probe(self) -> bool:
        """Whether :meth:`probe` is overridden."""
        return type(self).probe is not FlowModel.probe


class PhaseSpaceState:
    """State layout ``y = (w[, m][, ν])`` shared by the stable and central flows (a mixin for
    :class:`FlowModel`): IC ``w(0) = w_0``, ``m(0) = m_0``, ``ν(0) = ν_used(0)``; centre ``(w, m)``; and the
    velocity ``(D_w, D_m, ν-velocity)`` for a given gradient and ν target."""

    def _phase_layout(self) -> Layout:
        parts = [("w", self.d)]
        if self.has_m:
            parts.append(("m", self.d))
        if self.has_nu:
            parts.append(("nu", self.nu_size))
        return Layout(tuple(parts))

    def initial_state(self, s0, s1, nu_next) -> torch.Tensor:
        parts = {"w": s0.w}
        if self.has_m:
            parts["m"] = s0.m
        if self.has_nu:
            parts["nu"] = s0.nu_used
        return self.layout.pack(**parts)

    def centre(self, y):
        p = self.layout.unpack(y)
        return p["w"], p.get("m")

    def nu_of(self, y):
        return self.layout.unpack(y).get("nu")

    def _velocity(self, w, m, nu, t, g_eff, tgt):
        """``dy/dt`` with gradient ``g_eff`` in the increment ``D`` and ν target ``tgt``."""
        dw, dm = self.opt.direction(w, m, g_eff, nu, t + self.tshift)
        out = {"w": dw}
        if self.has_m:
            out["m"] = dm
        if self.has_nu:
            out["nu"] = self.opt.nu_velocity(nu, tgt)
        return self.layout.pack(**out)


class StableFlow(PhaseSpaceState, FlowModel):
    """``dz/dt = D(z; ν, t)``, ``dν/dt = ν-velocity(ν, tgt(g(w)))``: the Euler-inverse of the map.

    IC: ``w(0) = w_0``, ``m(0) = 0``, ``ν(0) = ν_used(0)``. Compared with the discrete centre at ``k + ½``.
    """

    name = "stable"
    tshift = 0.0
    compare_shift = 0.5
    grads_per_rhs = 1

    # Default integrator (no method given): RK23 at rtol 1e-3 costs ~7 gradients per unit time for the rod flow
    # inside the EoS at the same median centre distance as DOP853 at 1e-6 (~15); docs/central_flows.md §8. On the
    # torch backend the same Bogacki–Shampine 3(2) pair ("bosh3") at the same tolerances.
    # With bea=True the correction is second order in the step: keep the backend's tight default there
    # (DOP853 / dopri5 at rtol 1e-6, atol 1e-9).
    @property
    def method_trait(self):
        return None if self.bea else "low_order"

    @property
    def default_tolerances(self):
        return None if self.bea else (1e-3, 1e-6)

    def __init__(self, problem, optimizer, **kw):
        super().__init__(problem, optimizer, **kw)
        self.layout = self._phase_layout()

    def rhs(self, t, y):
        p = self.layout.unpack(y)
        w, m, nu = p["w"], p.get("m"), p.get("nu")
        g = self.grad(w)
        return self._velocity(w, m, nu, t, g, self.opt.nu_target(g) if self.has_nu else None)


def rod_nu_offset(opt, nu, target_plus, target_minus):
    """``Δ`` such that the ν the two ends' steps divide by are ``ν̄ + Δ`` (end ``+``) and ``ν̄ − Δ`` (end ``−``) in the
    two-cycle of the ν update driven by the ends' targets ``tgt(g₊)``, ``tgt(g₋)`` around the smooth ``ν̄``
    (docs/theory/stable_and_rod_flows.md, "The ν variation over one rod length").

    With the flows' ν increment ``v(ν, T) = opt.nu_velocity(ν, T)`` (componentwise and affine in ``ν`` for every
    optimizer with flows: ``r(T − ν)``, Adagrad's ``T``, frozen ``0``) and its slope ``J = ∂v/∂ν`` (a JVP with a
    tangent of ones)::

        Δ = ½ [v(ν̄, T₊) − v(ν̄, T₋)] / (2 + J)        (EMA: ½ (1−β2)(T₊ − T₋) / (1 + β2))

    This is the half-length of ν in the rod construction applied to the full state, at its quasi-steady value.
    Clipped to ``|Δ| ≤ ν̄`` (componentwise) so that both ends keep a non-negative ν. Shapes as ``nu``."""
    v_plus = opt.nu_velocity(nu, target_plus)
    v_minus = opt.nu_velocity(nu, target_minus)
    _, slope = jvp(lambda n: opt.nu_velocity(n, target_plus), (nu,), (torch.ones_like(nu),))
    delta = 0.5 * (v_plus - v_minus) / (2.0 + slope)
    return torch.minimum(torch.maximum(delta, -nu), nu)


class RodFlow(FlowModel):
    """Rod flow in endpoint form (docs/theory/stable_and_rod_flows.md, "Rod flow in endpoint form")::

        dz₊/dt = Φ(z₋; ν, t+½) − z₊,   dz₋/dt = Φ(z₊; ν, t+½) − z₋,
        dν/dt  = ν-velocity(ν, ½[tgt(g₊) + tgt(g₋)])

    with ``Φ(z) = z + D(z)``. IC ``z₊(0) = z_0``, ``z₋(0) = z_1``, ``ν(0) = ½[ν_used(0) + ν_used(1)]``.
    Read-out: centre ``z̄ = (z₊+z₋)/2``, half-length ``δ = (z₊−z₋)/2``; iterate predictor
    ``z_k ≈ z̄(k−½) + (−1)^k δ(k)``; with a second moment also the ν variation over the rod
    (:mod:`pyrod.runs.nu_variation`, :meth:`nu_over_rod`).
    """

    name = "rod"
    tshift = 0.5
    compare_shift = 0.0
    grads_per_rhs = 2
    method_trait = StableFlow.method_trait
    default_tolerances = StableFlow.default_tolerances

    def __init__(self, problem, optimizer, **kw):
        super().__init__(problem, optimizer, **kw)
        parts = [("wp", self.d)] + ([("mp", self.d)] if self.has_m else [])
        parts += [("wm", self.d)] + ([("mm", self.d)] if self.has_m else [])
        if self.has_nu:
            parts.append(("nu", self.nu_size))
        self.layout = Layout(tuple(parts))

    def initial_state(self, s0, s1, nu_next) -> torch.Tensor:
        # endpoint "+" holds the iterate with even index, so that z_k = z̄ + (-1)^k δ
        # (docs/theory/stable_and_rod_flows.md, "Initial conditions and restarts")
        even, odd = (s0, s1) if s0.k % 2 == 0 else (s1, s0)
        parts = {"wp": even.w, "wm": odd.w}
        if self.has_m:
            parts["mp"], parts["mm"] = even.m, odd.m
        if self.has_nu:
            parts["nu"] = 0.5 * (s0.nu_used + nu_next)
        return self.layout.pack(**parts)

    def rhs(self, t, y):
        p = self.layout.unpack(y)
        wp, wm, nu = p["wp"], p["wm"], p.get("nu")
        mp, mm = p.get("mp"), p.get("mm")
        gp, gm = self.grad(wp), self.grad(wm)
        tt = t + self.tshift
        dwp, dmp = self.opt.direction(wp, mp, gp, nu, tt)
        dwm, dmm = self.opt.direction(wm, mm, gm, nu, tt)
        out = {"wp": (wm + dwm) - wp, "wm": (wp + dwp) - wm}
        if self.has_m:
            out["mp"] = (mm + dmm) - mp
            out["mm"] = (mp + dmp) - mm
        if self.has_nu:
            target = 0.5 * (self.opt.nu_target(gp) + self.opt.nu_target(gm))
            out["nu"] = self.opt.nu_velocity(nu, target)
        return self.layout.pack(**out)

    def centre(self, y):
        p = self.layout.unpack(y)
        m = 0.5 * (p["mp"] + p["mm"]) if self.has_m else None
        return 0.5 * (p["wp"] + p["wm"]), m

    def half_length(self, y):
        p = self.layout.unpack(y)
        return 0.5 * (p["wp"] - p["wm"])

    def nu_of(self, y):
        return self.layout.unpack(y).get("nu")

    def nu_over_rod(self, k: int, y, gp, gm):
        """The second-moment buffer before and after the step of the end that models ``z_k`` (``+`` for even ``k``),
        ``(ν_k, ν_{k+1})``: the ν variation over one rod length (:mod:`pyrod.runs.nu_variation`). ``gp``, ``gm``: the
        gradients at the ends. The rod's one smooth ν implies a buffer at each end, its two-cycle value: before its
        step an end holds what the other end's step divided by, ``ν̄ ∓ Δ`` at ``±`` (:func:`rod_nu_offset`). After
        the step: ``ν_k + ν-velocity(ν_k, tgt(g))``, one step of the flows' ν increment (the discrete update for the
        default rate)."""
        nu = self.layout.unpack(y)["nu"]
        tp, tm = self.opt.nu_target(gp), self.opt.nu_target(gm)
        delta = rod_nu_offset(self.opt, nu, tp, tm)
        before, target = (nu - delta, tp) if k % 2 == 0 else (nu + delta, tm)
        return before, before + self.opt.nu_velocity(before, target)

    def extra_variables(self) -> list:
        from ..runs import nu_variation
        from ..schema import PARAMETER_UNITS, Var
        out = [
            Var("iterate_distance", ("t",), "distance of the predicted iterate zbar(k-1/2)+(-1)^k delta(k) "
                "to the discrete w_k", PARAMETER_UNITS),
            Var("relative_iterate_distance", ("t",), "iterate_distance / norm of w_k", "1"),
            Var("half_length", ("t",), "rod half-length norm ||delta_w(k)||", PARAMETER_UNITS),
            Var("discrete_half_length", ("t",), "discrete half-amplitude ||w_k - w_{k+1}||/2", PARAMETER_UNITS),
            Var("rod_loss", ("t",), "rod-averaged loss (L(w+) + L(w-))/2", "1"),
        ]
        return out + nu_variation.variables() if self.has_nu else out

    def readout(self, k, y_k, y_prev_half, discrete) -> dict:
        from ..runs import nu_variation
        wbar, _ = self.centre(y_k)
        delta = self.half_length(y_k)
        base = wbar if y_prev_half is None else self.centre(y_prev_half)[0]
        pred = base + (delta if k % 2 == 0 else -delta)
        wk, wk1 = discrete
        p = self.layout.unpack(y_k)
        out = {}
        if self.has_nu:   # the ends' gradients (counted) give the ν variation over the rod
            (lp, gp), (lm, gm) = self.problem.loss_and_grad(p["wp"]), self.problem.loss_and_grad(p["wm"])
            rod_loss = 0.5 * (lp + lm)
            out = nu_variation.relative_change(*self.nu_over_rod(k, y_k, gp, gm))
        else:
            with torch.no_grad():
                rod_loss = 0.5 * (self.problem.loss_fn(p["wp"]) + self.problem.loss_fn(p["wm"]))
        dist = float(torch.linalg.vector_norm(pred - wk))
        return {"iterate_distance": dist,
                "relative_iterate_distance": dist / max(float(torch.linalg.vector_norm(wk)), 1e-300),
                "half_length": float(torch.linalg.vector_norm(delta)),
                "discrete_half_length": 0.5 * float(torch.linalg.vector_norm(wk - wk1)),
                "rod_loss": float(rod_loss), **out}
