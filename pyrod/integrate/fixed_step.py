"""Fixed-step explicit Euler with ``substeps`` steps per unit time (the central-flow reference's scheme).

``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` — the same contract as the other backends
(:mod:`pyrod.integrate.base`), driven by the shared step loop :func:`pyrod.integrate.driver.drive`, so
saving, event location, projection, ``on_accept`` and failure reporting behave as in the SciPy backend.

* Steps land on the global grid ``t = j / substeps`` (anchored at 0, not at ``t0``): a run split into segments
  (pyrod integrates chunk by chunk) takes exactly the steps of one long run, and with ``substeps`` even the
  half-integer save times are grid points, so saved states are step ends (no interpolation). A segment that
  starts or ends off the grid takes one shorter step to reach the grid / ``t1``.
* Dense output (saves and event location between grid points) is the linear interpolant of the step, Euler's
  natural one.
* ``problem.on_accept(t, y)`` runs after every step (the central flow refreshes its eigen-subspace there, as the
  reference does at the start of each substep).

``problem.method``: ``"euler"`` (the only method; ``None`` means it too). ``problem.options`` keys read here:
``substeps`` (int ≥ 1, default 4; the step is ``1/substeps``), ``max_steps`` (accepted steps per segment),
``exact_saves`` (a no-op); any other key raises TypeError. The evaluation budget
``problem.max_rhs_per_unit`` is raised to at least ``2·substeps`` here (the cost per unit time is fixed).
``rtol``/``atol``/``max_step``/``first_step`` are ignored: the step is fixed.
"""
from __future__ import annotations

import math

import numpy as np

from .base import FlowProblem, Segment
from .driver import NUMERIC_ERRORS, Counter, StepFailure, drive, prepare
from .registry import check_keys

__all__ = ["integrate_segment", "METHODS", "DEFAULT_METHOD", "DEFAULT_SUBSTEPS", "OPTIONS", "check_substeps",
           "substeps_of"]

#: ``FlowProblem.options`` keys accepted (any other key is a TypeError)
OPTIONS = {
    "substeps": "Euler steps per unit time (int >= 1, default 4); the step is 1/substeps",
    "max_steps": "accepted steps per segment (default unlimited)",
    "exact_saves": "accepted for compatibility with the SciPy backend; a no-op (saves on the grid are step ends)",
}

METHODS = ("euler",)
DEFAULT_METHOD = "euler"
DEFAULT_SUBSTEPS = 4


def check_substeps(n) -> int:
    """``n`` as an int; ValueError naming it unless it is an int ≥ 1."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"substeps={n!r} must be an int >= 1 (Euler steps per unit time)")
    return int(n)


def next_grid_time(t: float, t1: float, substeps: int) -> float:
    """The next point of the grid ``j / substeps`` strictly after ``t`` (a point within 1e-9 of a step counts as
    on the grid), or ``t1`` when that comes first or is within 1e-9 of a step of it. Shared by every fixed-step
    stepper, so a run cut into segments takes exactly the steps of one long run."""
    h = 1.0 / substeps
    tn = (math.floor(t * substeps + 1e-9) + 1) / substeps
    if tn > t1 or (t1 - tn) < 1e-9 * h:
        tn = t1
    return tn


def substeps_of(problem: FlowProblem) -> int:
    """``problem.options["substeps"]`` validated (default 4)."""
    n = problem.options.get("substeps", DEFAULT_SUBSTEPS)
    return check_substeps(DEFAULT_SUBSTEPS if n is None else n)


class _EulerStepper:
    """One explicit Euler step per call, on the grid ``j / substeps``."""

    def __init__(self, problem: FlowProblem, t0, y0, t1, counter: Counter, substeps: int):
        self.problem, self.t1, self.counter, self.n = problem, float(t1), counter, substeps
        self.h = 1.0 / substeps
        self.t, self.y = float(t0), np.array(y0, dtype=np.float64)
        self.t_old, self.y_old = self.t, self.y

    @property
    def finished(self):
        return self.t >= self.t1

    def step(self):
        tn = next_grid_time(self.t, self.t1, self.n)
        if not tn > self.t:
            raise StepFailure(f"euler: no progress at t={self.t!r}")
        self.counter.rhs += 1
        f = np.asarray(self.problem.rhs(self.t, self.y), dtype=np.float64).reshape(-1)
        if f.shape != self.y.shape:
            raise ValueError(f"problem.rhs returned shape {f.shape}, expected {self.y.shape}")
        self.t_old, self.y_old = self.t, self.y
        self.t, self.y = tn, self.y + (tn - self.t) * f

    def interp(self, s):
        if self.t == self.t_old:
            return self.y
        a = (float(s) - self.t_old) / (self.t - self.t_old)
        return (1.0 - a) * self.y_old + a * self.y

    def h_next(self):
        return self.h

    def restart(self, t, y, first_step):
        self.t, self.y = float(t), np.array(y, dtype=np.float64)
        self.t_old, self.y_old = self.t, self.y


def integrate_segment(problem: FlowProblem, t0: float, y0: np.ndarray, t1: float, t_save) -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` by explicit Euler with ``options["substeps"]`` steps per unit."""
    m = problem.method
    if m is not None and str(m).lower() not in METHODS:
        raise ValueError(f"method={m!r} is not supported by the fixed-step backend; valid methods: {list(METHODS)}")
    check_keys(OPTIONS, problem.options, "backend 'euler'")
    substeps = substeps_of(problem)
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    counter = Counter()
    if t1 == t0 or not np.all(np.isfinite(y0)):
        return drive(None, problem, t0, y0, t1, ts, counter)
    stepper = _EulerStepper(problem, t0, y0, t1, counter, substeps)
    try:
        budget = problem.max_rhs_per_unit
        if budget is not None:
            budget = max(float(budget), 2.0 * substeps)
        return drive(stepper, problem, t0, y0, t1, ts, counter, max_steps=problem.options.get("max_steps"),
                     max_rhs_per_unit=budget)
    except NUMERIC_ERRORS as e:  # pragma: no cover - drive already converts these
        seg = drive(None, problem, t0, y0, t0, ts, counter)
        seg.status, seg.message = "failed", f"right-hand side raised {type(e).__name__}: {e}"
        return seg
