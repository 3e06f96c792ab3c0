"""The shared accepted-step loop of the Python backends (SciPy, fixed-step Euler, SUNDIALS).

:func:`drive` takes a *stepper* (one accepted step per ``step()``, an interpolant for the last step) and does,
identically for every backend:

* saving: states at ``t_save`` (from the step's interpolant, or the step end when a step lands there);
* event location: after every accepted step each :class:`~pyrod.integrate.base.Event` is evaluated at the step
  end; a sign change matching ``ev.direction`` is located with ``brentq`` on the interpolant to ``ev.xtol``
  (default ``1e-12·max(1, |t|)``) in ``t``; the reported time is on the far side of the crossing (``ev.fn`` has its new
  sign or is 0), so a run restarted at a terminal event's state does not fire it again. A crossing is
  ``g_old < 0 <= g_new`` (upward) or ``g_old > 0 >= g_new`` (downward); two crossings inside one step cancel;
* projection (``problem.project``) after every accepted step, restarting the stepper when it changes ``y``;
* ``problem.on_save(t, y)`` with each state as it is saved (the step end when the step lands there, else the
  step's interpolant), before that step's ``on_accept``;
* ``problem.on_accept(t, y)`` after every accepted step and once at a terminal event's state;
* bounded work on a diverging or stiff flow, checked after every accepted step (each gives
  ``status="failed"`` with the last good state and a message saying which bound was hit):

  - non-finite state, or ``‖y‖₂ > problem.max_norm`` (when given);
  - ``problem.diverged(t, y)`` returning a reason (a string) — e.g. FlowRun's loss bound at the flow centre;
  - step-size floor: the stepper's next step ``h < problem.min_step · max(1, |t|)`` after 10 accepted steps in a
    row ("step size collapsed"; one small step may follow a step shortened to land on a save time);
  - evaluation budget: more than ``problem.max_rhs_per_unit · max(1, t − t0)`` right-hand-side evaluations in
    the segment (``t`` in optimizer steps);
  - ``max_steps`` accepted steps in the segment (the backends' ``options["max_steps"]``);
* failures raised by the right-hand side (floating-point / linear-algebra errors) become ``status="failed"``;
  other exceptions propagate.

Helpers shared with the backends: :func:`prepare` (argument checks), :func:`first_step_for`,
:func:`next_stop`, :func:`resolve_method`, :class:`Counter`, :class:`StepFailure`, :func:`crossed`,
:func:`locate`. Units: ``t`` in optimizer steps.
"""
from __future__ import annotations

import math

import numpy as np

from .base import EventRecord, FlowProblem, Segment

__all__ = ["drive", "ArrayOps", "NUMPY_OPS", "StepFailure", "Counter", "prepare", "prepare_times", "check_length",
           "first_step_for", "next_stop", "resolve_method", "crossed", "locate", "NUMERIC_ERRORS"]

_EPS = np.finfo(float).eps
#: accepted steps in a row below the step-size floor that count as a collapse
_SMALL_STEPS = 10

#: exceptions from the user's RHS that mean "this trajectory cannot go on" rather than a bug (every backend
#: turns them into a failed segment)
NUMERIC_ERRORS = (FloatingPointError, ZeroDivisionError, OverflowError, np.linalg.LinAlgError)


class StepFailure(Exception):
    """Raised by a stepper when the solver cannot take a step (message says why)."""


class Counter:
    def __init__(self):
        self.rhs = 0
        self.jvp = 0


# ---------------------------------------------------------------------------------------------- helpers
def resolve_method(name, valid, default):
    if name is None:
        return default
    for m in valid:
        if str(name).lower() == m.lower():
            return m
    raise ValueError(f"method={name!r} is not supported by this backend; valid methods: {list(valid)}")


def prepare_times(problem: FlowProblem, t0, t1, t_save):
    """Validate the times and events of a segment (every backend); return ``(t0, t1, t_save)``, the save times
    sorted, as float64, restricted to ``(t0, t1]``."""
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t0={t0!r} and t1={t1!r} must be finite")
    if t1 < t0:
        raise ValueError(f"t1={t1!r} < t0={t0!r}: only forward integration is supported")
    ts = np.sort(np.asarray(t_save if t_save is not None else [], dtype=np.float64).reshape(-1))
    ts = ts[(ts > t0) & (ts <= t1)]
    for ev in problem.events:
        if ev.direction not in (-1, 0, 1):
            raise ValueError(f"event {ev.name!r}: direction={ev.direction!r} must be -1, 0 or +1")
    return t0, t1, ts


def check_length(problem: FlowProblem, y0):
    if y0.shape[0] != problem.n:
        raise ValueError(f"y0 has length {y0.shape[0]}, problem.n={problem.n}")
    return y0


def prepare(problem: FlowProblem, t0, y0, t1, t_save):
    """Validate the common arguments; return ``(t0, y0, t1, t_save)`` as floats / float64 arrays."""
    t0, t1, ts = prepare_times(problem, t0, t1, t_save)
    return t0, check_length(problem, np.array(y0, dtype=np.float64).reshape(-1)), t1, ts


def first_step_for(problem: FlowProblem, t0, t1):
    h = problem.first_step
    if h is None or not (h > 0) or not math.isfinite(h):
        return None
    return float(min(h, t1 - t0))


#: the values of the backends' ``exact_saves`` option (:func:`save_stops`)
EXACT_SAVES = (False, True, "integers")


def save_stops(options, ts) -> np.ndarray:
    """Where an adaptive backend's steps must land, from its ``options["exact_saves"]``: ``True``: every save time
    of ``ts``; ``"integers"``: the integer ones only (the other saves come from the step's interpolant); ``False``
    / absent: none (the default; the central flow reads out at interpolated states too, through ``on_save``). Any
    other value raises ValueError naming it."""
    mode = options.get("exact_saves", False) if options else False
    if mode is None or (isinstance(mode, (bool, np.bool_)) and not mode):
        return np.empty(0)
    if isinstance(mode, (bool, np.bool_)):
        return np.asarray(ts, dtype=np.float64)
    if mode == "integers":
        ts = np.asarray(ts, dtype=np.float64)
        return ts[ts == np.round(ts)]
    raise ValueError(f"options['exact_saves']={mode!r}; valid: {list(EXACT_SAVES)}")


def next_stop(stops, t, t1) -> float:
    """The first of ``stops`` (sorted) after ``t``, else ``t1``: where a step must land exactly."""
    i = int(np.searchsorted(stops, t, side="right"))
    return float(stops[i]) if i < len(stops) and stops[i] < t1 else t1


def crossed(g0, g1, direction) -> bool:
    """Sign change of an event function across a step, direction-aware (NaNs never cross)."""
    if direction >= 0 and g0 < 0 <= g1:
        return True
    if direction <= 0 and g0 > 0 >= g1:
        return True
    return False


def _event_value(ev, t, y) -> float:
    return float(ev.fn(t, y))


def locate(ev, Y, ta, tb, ga, gb):
    """Crossing time of ``ev`` in ``[ta, tb]`` (``ga``, ``gb`` of opposite signs), on the interpolant ``Y``.

    Returns ``(t, g(t))`` with ``t`` on the far side of the crossing (``g`` has its new sign or is 0), located to
    ``ev.xtol`` steps (default ``1e-12·max(1, |t|)``). ``g`` is evaluated once per time: ``brentq`` returns a time it
    has evaluated, and asking again would cost a whole evaluation where the event function cannot recognise the
    state (a new interpolated tensor each call, as on the torch backend: the central flow's critical-set events are
    a Rayleigh–Ritz each).
    """
    from scipy.optimize import brentq

    upward = ga < 0
    pre = (lambda g: g < 0) if upward else (lambda g: g > 0)
    tol = 1e-12 * max(1.0, abs(ta), abs(tb))
    if ev.xtol is not None:
        tol = max(tol, float(ev.xtol))
    seen = {}

    def f(t):
        if t not in seen:
            seen[t] = _event_value(ev, t, Y(t))
        return seen[t]
    try:
        r = brentq(f, ta, tb, xtol=tol, rtol=4 * _EPS, maxiter=200)
    except (ValueError, RuntimeError):
        return tb, gb
    gr = f(r)
    step = tol
    while (pre(gr) or not math.isfinite(gr)) and r < tb:
        r = min(r + step, tb)
        gr = gb if r == tb else f(r)
        step *= 2.0
    return r, gr


# ----------------------------------------------------------------------------------------------- driver
class ArrayOps:
    """How :func:`drive` touches states. This one is for the NumPy backends (SciPy, Euler, SUNDIALS): states are
    float64 vectors, finiteness and norms are computed here. The torch backend passes its own
    (``torch_backend._TensorOps``): tensors on the problem's device, finiteness, norm and divergence score taken
    from the stepper's one host transfer per step."""

    def finite_start(self, stepper, y0) -> bool:
        return bool(np.all(np.isfinite(y0)))

    def finite(self, stepper, y) -> bool:
        return bool(np.all(np.isfinite(y)))

    def norm(self, stepper, y) -> float:
        return float(np.linalg.norm(y))

    def divergence(self, stepper, problem, t, y):
        """``problem.diverged(t, y)`` (a reason or None); its numeric failures are a reason too."""
        if problem.diverged is None:
            return None
        try:
            return problem.diverged(t, y)
        except NUMERIC_ERRORS as e:
            return f"divergence check raised {type(e).__name__}: {e}"

    def cast(self, x, like):
        """``x`` (e.g. a projection's result) as a state like ``like``."""
        return np.asarray(x, dtype=np.float64).reshape(-1)

    def equal(self, a, b) -> bool:
        return bool(np.array_equal(a, b))

    def keep(self, y):
        """A state to store (saves, segment end): a copy here, the tensor itself for the torch backend."""
        return np.array(y)

    def stack(self, ys, n, y0):
        return np.asarray(ys, dtype=np.float64).reshape(len(ys), n)


NUMPY_OPS = ArrayOps()


def drive(stepper, problem: FlowProblem, t0, y0, t1, ts, counter: Counter, max_steps=None,
          max_rhs_per_unit=None, ops: ArrayOps = NUMPY_OPS) -> Segment:
    """Generic accepted-step loop: saving (``on_save``), events, projection, ``on_accept``, bounds, failure reporting.

    ``max_rhs_per_unit`` overrides ``problem.max_rhs_per_unit`` (the fixed-step backends raise it to their fixed
    cost). ``ops``: how states are handled (:class:`ArrayOps`; the torch backend passes its own). See the module
    docstring for the bounds.

    ``stepper`` provides ``step()`` (one accepted step; sets ``t_old``, ``t``, ``y``; raises
    :class:`StepFailure`), ``interp(t)`` (state for ``t`` in the last step), ``h_next()``,
    ``restart(t, y, first_step)`` and ``finished``; ``None`` when there is nothing to integrate (``t1 == t0``, a
    non-finite ``y0``, or a failure at the start).
    """
    n = problem.n
    events = list(problem.events)
    project, on_accept, on_save = problem.project, problem.on_accept, problem.on_save
    t_out, y_out, records = [], [], []
    si = 0
    t, y = t0, y0
    h_last = problem.first_step if (problem.first_step or 0) > 0 else None
    n_steps = 0
    max_norm = problem.max_norm
    min_step = float(problem.min_step or 0.0)
    max_rhs = problem.max_rhs_per_unit if max_rhs_per_unit is None else max_rhs_per_unit
    small = 0

    def seg(status, message="", t_end=None, y_end=None):
        return Segment(t_save=np.asarray(t_out, dtype=np.float64), y_save=ops.stack(y_out, n, y0),
                       t_end=float(t if t_end is None else t_end), y_end=ops.keep(y if y_end is None else y_end),
                       events=records, n_rhs=counter.rhs, n_jvp=counter.jvp, status=status, message=message,
                       h_last=None if h_last is None else float(h_last), n_steps=n_steps,
                       n_rejected=getattr(stepper, "n_rejected", 0))

    if not ops.finite_start(stepper, y0):
        return seg("failed", f"non-finite initial state at t={t0:.10g}")
    if t1 == t0 or stepper is None:
        return seg("ok")
    try:
        g_prev = [_event_value(ev, t0, y0) for ev in events]
    except NUMERIC_ERRORS as e:
        return seg("failed", f"event function raised {type(e).__name__}: {e}")

    while not stepper.finished:
        if max_steps is not None and n_steps >= max_steps:
            return seg("failed", f"max_steps={max_steps} accepted steps reached at t={t:.10g} before t1={t1:.10g}")
        try:
            stepper.step()
        except StepFailure as e:
            return seg("failed", f"{e} (at t={t:.10g})")
        except NUMERIC_ERRORS as e:
            return seg("failed", f"right-hand side raised {type(e).__name__} near t={t:.10g}: {e}")
        t_old, t_new, y_new = stepper.t_old, stepper.t, stepper.y
        if not ops.finite(stepper, y_new):
            return seg("failed", f"non-finite state after the step {t_old:.10g} -> {t_new:.10g}")
        n_steps += 1
        h = stepper.h_next()
        if h is not None and h > 0 and math.isfinite(h):
            h_last = h
        # --- bounds on a diverging / stiff flow (the state is left at the last good step)
        if max_norm is not None:
            ny = ops.norm(stepper, y_new)
            if ny > max_norm:
                return seg("failed", f"diverged: |y| = {ny:.3g} > max_norm = {max_norm:.3g} at t={t_new:.10g}")
        why = ops.divergence(stepper, problem, t_new, y_new)
        if why:
            return seg("failed", f"diverged at t={t_new:.10g}: {why}")
        if min_step > 0 and h is not None and t_new < t1:
            # consecutive small steps (a single one can follow a step shortened to land on a save time)
            small = small + 1 if h < min_step * max(1.0, abs(t_new)) else 0
            if small >= _SMALL_STEPS:
                return seg("failed", f"step size collapsed: {small} steps in a row with next step {h:.3g} < "
                                     f"min_step={min_step:g} x max(1, |t|) at t={t_new:.10g}")
        if max_rhs is not None and counter.rhs > max_rhs * max(1.0, t_new - t0):
            return seg("failed", f"evaluation budget exceeded: {counter.rhs} right-hand sides for "
                                 f"{t_new - t0:.3g} time units from t={t0:.10g} (max_rhs_per_unit={max_rhs:g})")

        def Y(s, _t_old=t_old, _t_new=t_new, _y_old=y, _y_new=y_new):
            if s >= _t_new:
                return _y_new
            if s <= _t_old:
                return _y_old
            return stepper.interp(s)

        try:
            # --- events on the step's own trajectory
            g_new = [_event_value(ev, t_new, y_new) for ev in events]
            hits = []
            for i, ev in enumerate(events):
                if crossed(g_prev[i], g_new[i], ev.direction):
                    r, gr = locate(ev, Y, t_old, t_new, g_prev[i], g_new[i])
                    hits.append((r, i, gr))
            hits.sort()
            term = next((h_ for h_ in hits if events[h_[1]].terminal), None)
            t_stop = term[0] if term is not None else t_new

            # --- projection of the step end
            y_acc, changed = y_new, False
            if project is not None and term is None:
                yp = ops.cast(project(t_new, y_new), y_new)
                if not ops.equal(yp, y_new):
                    y_acc, changed = yp, True

            # --- saves up to t_stop
            while si < len(ts) and ts[si] <= t_stop:
                s = float(ts[si])
                if s == t_new and term is None:
                    ys = y_acc
                else:
                    ys = Y(s)
                    if project is not None:
                        ys = ops.cast(project(s, ys), y_new)
                t_out.append(s)
                y_out.append(ops.keep(ys))
                si += 1
                if on_save is not None:
                    on_save(s, y_out[-1])

            for r, i, gr in hits:
                if r <= t_stop:
                    ev = events[i]
                    records.append(EventRecord(t=float(r), name=ev.name, kind=ev.kind, value=float(gr)))

            if term is not None:
                r = term[0]
                y_end = ops.keep(Y(r))
                if project is not None:
                    y_end = ops.cast(project(r, y_end), y_new)
                t, y = r, y_end
                if on_accept is not None:
                    on_accept(t, y)
                return seg("event", f"terminal event {events[term[1]].name!r} at t={r:.12g}")

            # --- events whose sign flips only through the projection
            if changed:
                g_p = [_event_value(ev, t_new, y_acc) for ev in events]
                for i, ev in enumerate(events):
                    if crossed(g_new[i], g_p[i], ev.direction):
                        records.append(EventRecord(t=float(t_new), name=ev.name, kind=ev.kind, value=float(g_p[i])))
                        if ev.terminal:
                            t, y = t_new, y_acc
                            if on_accept is not None:
                                on_accept(t, y)
                            return seg("event", f"terminal event {ev.name!r} (by projection) at t={t_new:.12g}")
                g_new = g_p
        except NUMERIC_ERRORS as e:
            return seg("failed", f"{type(e).__name__} in event/save/projection near t={t_new:.10g}: {e}")

        t, y, g_prev = t_new, y_acc, g_new
        if on_accept is not None:
            on_accept(t, y)
        if changed and not stepper.finished:
            try:
                stepper.restart(t, y, min(h_last, t1 - t) if h_last else None)
            except NUMERIC_ERRORS as e:
                return seg("failed", f"right-hand side raised {type(e).__name__} near t={t:.10g}: {e}")

    return seg("ok")

