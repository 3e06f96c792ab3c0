"""Default backend: SciPy's ``OdeSolver`` classes stepped by hand.

``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` integrates ``dy/dt = problem.rhs(t, y)``
from ``t0`` to ``t1`` one accepted step at a time (``solver.step()``), so that pyrod does its own

* saving: states at ``t_save`` from the step's dense output (exact solver state at a step end);
* event location: after every accepted step each :class:`~pyrod.integrate.base.Event` is evaluated at
  the step end; a sign change of ``ev.fn`` across the step that matches ``ev.direction`` is located on
  the dense output with ``brentq`` to ``1e-12·max(1, |t|)`` in ``t``.  The reported time is on the far
  side of the crossing (``ev.fn`` already has its new sign, or is 0), so restarting a run at a terminal
  event's state does not fire the same event again.  A crossing is ``g_old < 0 <= g_new`` (upward) or
  ``g_old > 0 >= g_new`` (downward): an event function that starts a segment exactly at 0 does not fire.
  Two crossings of one event inside one step cancel and are missed (bound ``max_step`` if that matters);
* projection: ``problem.project(t, y)`` after every accepted step; if it changes ``y`` the solver is
  restarted from the projected state with the step size it would have used next (multistep methods
  BDF/LSODA restart at order 1).  Saved states inside a step are projected too.  An event whose sign
  flips only through the projection is recorded at the step end;
* ``problem.on_accept(t, y)`` after every accepted step (with the projected state), and once at a
  terminal event's state;
* failures (step-size collapse, non-finite state, too many steps, floating-point / linear-algebra errors
  raised by the RHS) become ``status="failed"`` with the last good state; other exceptions propagate.

Methods (``problem.method``, case-insensitive): ``"DOP853"`` (default), ``"RK45"``, ``"RK23"`` (explicit),
``"euler"`` (fixed step, handed to :mod:`.fixed_step`), ``"Radau"``, ``"BDF"``, ``"LSODA"`` (implicit).
SciPy's implicit methods factorise a *dense* Jacobian
(they cannot use a matrix-free J·v): by default it is built by SciPy's finite differences (``n`` RHS
evaluations per Jacobian, counted in ``n_rhs``); ``problem.options["jac"] = "jvp"`` builds it from ``n``
calls of ``problem.jvp`` (counted in ``n_jvp``), and a callable ``(t, y) -> (n, n)`` or a constant
matrix is passed to SciPy as is.  Use the ``sundials`` backend for large stiff problems.

``problem.options`` keys read here: ``jac`` (above), ``max_steps`` (accepted steps per segment, default
unlimited), ``exact_saves`` (default False: states at ``t_save`` come from the dense output; True: steps
land on the save times, restarting the solver there — one extra RHS per save for the RK methods, order
reset for BDF/LSODA; ``"integers"``: on the integer save times only, :func:`pyrod.integrate.driver.save_stops`).
DOP853's dense output is not error-controlled: for a stiff component integrated near the explicit stability
limit it can be off by ~100×rtol (measured 2e-4 at rtol 1e-6, λh ≈ -3, same as ``solve_ivp(t_eval=...)``) while
step-end values are accurate; ``exact_saves=True`` removes that.
Any other key raises TypeError (:data:`OPTIONS`); ``method="euler"`` takes :data:`pyrod.integrate.fixed_step.OPTIONS`.

The accepted-step loop (saving, events, projection, divergence / step-size / budget bounds) is
:func:`pyrod.integrate.driver.drive`, shared with the Euler and SUNDIALS backends.
"""
from __future__ import annotations

import math

import numpy as np

from . import fixed_step
from .base import FlowProblem, Segment
from .driver import (  # noqa: F401
    NUMERIC_ERRORS,
    Counter,
    StepFailure,
    crossed,
    drive,
    first_step_for,
    locate,
    next_stop,
    prepare,
    resolve_method,
    save_stops,
)
from .registry import Backend, check_keys

__all__ = ["integrate_segment", "METHODS", "DEFAULT_METHOD", "OPTIONS", "BACKEND", "drive"]

DEFAULT_METHOD = "DOP853"
METHODS = ("DOP853", "RK45", "RK23", "Radau", "BDF", "LSODA")
#: every ``method`` this backend accepts: SciPy's, plus ``"euler"`` (handed to :mod:`.fixed_step`)
ALL_METHODS = METHODS + ("euler",)
_IMPLICIT = ("Radau", "BDF", "LSODA")

#: ``FlowProblem.options`` keys this backend accepts (any other key is a TypeError, see
#: :func:`pyrod.integrate.check_options`)
OPTIONS = {
    "jac": 'implicit methods: "fd" (SciPy finite differences, default), "jvp" (n calls of problem.jvp), '
           "a callable (t, y) -> (n, n) or a constant matrix",
    "max_steps": "accepted steps per segment (default unlimited)",
    "exact_saves": "False (default), True or 'integers': steps land on every save time, or on the integer ones, "
                   "instead of interpolating",
}
# method="euler" is handed to .fixed_step, which accepts its own keys (fixed_step.OPTIONS)

# ----------------------------------------------------------------------------------------------- scipy
class _ScipyStepper:
    def __init__(self, problem: FlowProblem, method, t0, y0, t1, counter: Counter, first_step, stops=()):
        import scipy.integrate as si

        self.cls = getattr(si, method)
        self.problem, self.method, self.t1, self.counter = problem, method, t1, counter
        n = problem.n

        def fun(t, y):
            counter.rhs += 1
            f = np.asarray(problem.rhs(t, y), dtype=np.float64)
            if f.shape != (n,):
                f = f.reshape(-1)
                if f.shape != (n,):
                    raise ValueError(f"problem.rhs returned shape {f.shape}, expected ({n},)")
            # A NaN RHS inside a step is fine (SciPy rejects the step and shrinks h, closing in on the bad region),
            # but at the start of a solver it makes the initial step size NaN, and SciPy then retries forever.
            if not math.isfinite(t) or (t == self._t_start and not np.all(np.isfinite(f))):
                raise FloatingPointError(f"the right-hand side is not finite at t={self._t_start!r} "
                                         f"({int(np.sum(~np.isfinite(f)))} of {n} entries)")
            return f

        self.fun = fun
        self.kw = dict(rtol=problem.rtol, atol=problem.atol)
        if problem.max_step is not None and math.isfinite(problem.max_step):
            self.kw["max_step"] = float(problem.max_step)
        if method in _IMPLICIT:
            jac = problem.options.get("jac")
            if isinstance(jac, str) and jac.lower() == "jvp":
                if problem.jvp is None:
                    raise ValueError('options["jac"]="jvp" needs problem.jvp')
                eye = np.eye(n)

                def jac_fn(t, y):
                    counter.jvp += n
                    return np.stack([np.asarray(problem.jvp(t, y, eye[j]), dtype=np.float64) for j in range(n)],
                                    axis=1)

                self.kw["jac"] = jac_fn
            elif isinstance(jac, str) and jac.lower() in ("fd", "finite_differences"):
                pass
            elif jac is not None:
                self.kw["jac"] = jac
        self.stops = stops
        self._make(t0, y0, first_step)

    def _make(self, t0, y0, first_step):
        kw = dict(self.kw)
        self.bound = next_stop(self.stops, t0, self.t1)
        self._t_start = float(t0)
        if first_step is not None and first_step > 0:
            kw["first_step"] = float(min(first_step, self.bound - t0))
        self.solver = self.cls(self.fun, t0, np.array(y0, dtype=np.float64), self.bound, **kw)
        self.t = t0
        self._dense = None

    @property
    def finished(self):
        return self.t >= self.t1

    def step(self):
        if self.solver.status == "finished":  # reached a save time (exact_saves): continue from it
            self._make(self.t, self.y, self.h_next())
        msg = self.solver.step()
        if self.solver.status == "failed":
            raise StepFailure(f"{self.method}: {msg}")
        self.t_old, self.t = float(self.solver.t_old), float(self.solver.t)
        self.y = np.array(self.solver.y)
        self._dense = None

    def interp(self, s):
        if self._dense is None:
            self._dense = self.solver.dense_output()
        return np.asarray(self._dense(s), dtype=np.float64)

    def h_next(self):
        h = getattr(self.solver, "h_abs", None)
        return float(h) if h is not None else self.t - self.t_old

    def restart(self, t, y, first_step):
        self._make(t, y, first_step)


def integrate_segment(problem: FlowProblem, t0: float, y0: np.ndarray, t1: float, t_save) -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` with SciPy; see the module docstring.

    ``problem.method == "euler"`` is handed to :mod:`pyrod.integrate.fixed_step` (explicit Euler with
    ``options["substeps"]`` steps per unit time, the central-flow reference's scheme)."""
    if isinstance(problem.method, str) and problem.method.lower() == "euler":
        return fixed_step.integrate_segment(problem, t0, y0, t1, t_save)
    check_keys(OPTIONS, problem.options, "backend 'scipy'")
    method = resolve_method(problem.method, ALL_METHODS, DEFAULT_METHOD)
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    counter = Counter()
    if t1 == t0 or not np.all(np.isfinite(y0)):
        return drive(None, problem, t0, y0, t1, ts, counter)
    try:
        stepper = _ScipyStepper(problem, method, t0, y0, t1, counter, first_step_for(problem, t0, t1),
                                stops=save_stops(problem.options, ts))
    except NUMERIC_ERRORS as e:
        seg = drive(None, problem, t0, y0, t0, ts, counter)
        seg.status, seg.message = "failed", f"right-hand side raised {type(e).__name__} at t0: {e}"
        return seg
    return drive(stepper, problem, t0, y0, t1, ts, counter, max_steps=problem.options.get("max_steps"))


#: this backend's descriptor (:mod:`pyrod.integrate.registry`): SciPy's methods plus "euler" (fixed steps);
#: the default on the CPU (``backend=None``)
BACKEND = Backend(name="scipy", integrate_segment=integrate_segment, methods=ALL_METHODS,
                  default_method=DEFAULT_METHOD, options=OPTIONS, method_options={"euler": fixed_step.OPTIONS},
                  trait_methods={"low_order": "RK23", "fixed_step": "euler"}, device_default="cpu")
