"""The backend contract: a flow is described once (:class:`FlowProblem`); a backend only integrates it.

A backend is a function ``integrate_segment(problem, t0, y0, t1, t_save) -> Segment``. The driver in
:mod:`pyrod.integrate.driver` calls it segment by segment (so results can be written incrementally and
terminal events stop the run), handles the projection hook between steps when a backend cannot, and
collects event records. Units: ``t`` in optimizer steps; ``y`` is a float64 NumPy vector of length ``n``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

__all__ = ["Event", "EventRecord", "FlowProblem", "Segment", "BackendUnavailable"]


class BackendUnavailable(RuntimeError):
    """The requested integration backend cannot run here (missing package or runtime); the message says how
    to make it available."""


@dataclass
class Event:
    """A scalar event function ``fn(t, y) -> float`` whose zero crossing is located to the tolerance.

    ``direction``: +1 (upward crossings only), −1 (downward) or 0 (both). ``terminal``: stop the run.
    ``kind`` is what is recorded (``"eos"``, ``"loss_target"``, ``"divergence"``, ``"critical_set"``, …).
    ``xtol``: how finely the crossing time is located, in steps (None: ``1e-12·max(1, |t|)``, as fine as float64
    times allow); the recorded time is within ``2·xtol`` of the crossing (bracketed to ``xtol``, then moved at most
    that far again to the side where the function has its new sign). An event whose function is costly and only
    known to a few digits (the central flow's eigenvalue crossings) sets a coarser one: the location then costs a
    few evaluations instead of twenty or more. The Julia backend's callback root-finder uses its own tolerance and
    does not read ``xtol``.
    """

    name: str
    fn: Callable[[float, np.ndarray], float]
    direction: int = 0
    terminal: bool = False
    kind: str = "custom"
    xtol: float | None = None


@dataclass
class EventRecord:
    """A located event: time (steps), kind, name, and the value of the monitored quantity there."""

    t: float
    name: str
    kind: str
    value: float = float("nan")

    def as_dict(self) -> dict:
        return {"t": float(self.t), "name": self.name, "kind": self.kind, "value": float(self.value)}


@dataclass
class FlowProblem:
    """Backend-independent description of ``dy/dt = rhs(t, y)``.

    rhs : ``(t, y) -> dy/dt``, NumPy float64 ``(n,)`` in and out (one host copy per evaluation).
    jvp : optional ``(t, y, v) -> J(t, y) v`` for matrix-free stiff solvers (from torch HVPs/JVPs).
    events : located zero crossings (see :class:`Event`).
    project : optional ``(t, y) -> y`` applied after every accepted step (e.g. a state clamp); the central
        flow solves its complementarity problem inside ``rhs`` instead.
    method : backend-specific integrator name (``None`` = the backend's default).
    rtol, atol : tolerances. max_step : largest step (steps), ``inf`` = unlimited.
    on_accept : optional ``(t, y) -> None`` called after each accepted step (eigen-tracking warm starts).
    on_save : optional ``(t, y) -> None`` called with each state of ``t_save`` as it is saved, before the
        ``on_accept`` of the step that reached it (``y`` the saved state: the step end where the step landed there,
        else the step's interpolant). The central flow reads out there. The Python backends call it (the shared
        step driver); the Julia backend does not.
    probe : optional ``(t, y) -> (values, consume) | None``, for backends that read the device once per step (the
        torch backend's fixed-step methods, where every step is accepted): called on the step end before that
        read, ``values`` (a flat tensor on the state's device) joins it and ``consume(host values)`` is called
        right after, before the event checks and ``on_accept`` (the central flow reads its Rayleigh–Ritz
        matrices there instead of in a transfer of its own). Other backends ignore it.
    options : backend-specific keys; each backend declares the keys it accepts in its ``OPTIONS`` and refuses
        others (:func:`pyrod.integrate.check_options`).

    Bounds on the work spent on a diverging or stiff flow, checked by the step driver after every accepted step
    (:mod:`pyrod.integrate.driver`; the Julia backend honours only ``options["max_steps"]``); each ends the
    segment with ``status="failed"`` and a message naming the bound:

    max_norm : ``‖y‖₂`` above this is divergence (``None``: no bound; non-finite states always fail).
    diverged : optional ``(t, y) -> str | None``; a returned string is the divergence reason.
    min_step : relative step-size floor: the next step ``h < min_step · max(1, |t|)`` is "step size collapsed"
        (default 1e-9; 0 disables).
    max_rhs_per_unit : evaluation budget: more than ``max_rhs_per_unit · max(1, t − t0)`` right-hand-side
        evaluations in one segment ``[t0, t]`` fail (default 2000 per optimizer step; ``None`` disables).
    """

    rhs: Callable[[float, np.ndarray], np.ndarray]
    n: int
    jvp: Callable[[float, np.ndarray, np.ndarray], np.ndarray] | None = None
    events: Sequence[Event] = ()
    project: Callable[[float, np.ndarray], np.ndarray] | None = None
    method: str | None = None
    rtol: float = 1e-6
    atol: float = 1e-9
    max_step: float = float("inf")
    first_step: float | None = None
    on_accept: Callable[[float, np.ndarray], None] | None = None
    on_save: Callable[[float, np.ndarray], None] | None = None
    probe: Callable | None = None
    options: dict = field(default_factory=dict)
    max_norm: float | None = None
    diverged: Callable[[float, np.ndarray], str | None] | None = None
    min_step: float = 1e-9
    max_rhs_per_unit: float | None = 2000.0

    def __post_init__(self):
        if not (isinstance(self.min_step, (int, float)) and not isinstance(self.min_step, bool)
                and 0 <= self.min_step < 1):
            raise ValueError(f"min_step={self.min_step!r} must be a number in [0, 1) (relative step-size floor)")
        m = self.max_rhs_per_unit
        if m is not None and not (isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0):
            raise ValueError(f"max_rhs_per_unit={m!r} must be a positive number or None")
        if self.max_norm is not None and not (isinstance(self.max_norm, (int, float)) and self.max_norm > 0):
            raise ValueError(f"max_norm={self.max_norm!r} must be a positive number or None")


@dataclass
class Segment:
    """What a backend returns for one segment ``[t0, t_end]``.

    ``t_save``/``y_save``: the requested save times reached and the states there ``(len(t_save), n)``;
    ``t_end``/``y_end``: where integration stopped (``t1``, or a terminal event's time);
    ``events``: located events in the segment; ``n_rhs``/``n_jvp``: evaluation counts;
    ``status``: ``"ok"``, ``"event"`` (terminal event) or ``"failed"`` with ``message``;
    ``h_last``: the step size the backend would take next (``None`` if unknown), to warm-start the next
    segment through ``FlowProblem.first_step``; ``n_steps``: accepted steps in the segment.
    """

    t_save: np.ndarray
    y_save: np.ndarray
    t_end: float
    y_end: np.ndarray
    events: list = field(default_factory=list)
    n_rhs: int = 0
    n_jvp: int = 0
    status: str = "ok"
    message: str = ""
    h_last: float | None = None
    n_steps: int = 0
    n_rejected: int = 0
