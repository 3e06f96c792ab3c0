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
reset for BDF/LSODA).  DOP853's dense output is not error-controlled: for a stiff component integrated
near the explicit stability limit it can be off by ~100×rtol (measured 2e-4 at rtol 1e-6, λh ≈ -3,
same as ``solve_ivp(t_eval=...)``) while step-end values are accurate; ``exact_saves`` removes that.
Other keys are ignored (they belong to other backends).

The generic step driver :func:`drive` is shared with the SUNDIALS backend.
"""
from __future__ import annotations

import math

import numpy as np

from .base import EventRecord, FlowProblem, Segment

__all__ = ["integrate_segment", "METHODS", "DEFAULT_METHOD", "drive"]

DEFAULT_METHOD = "DOP853"
METHODS = ("DOP853", "RK45", "RK23", "Radau", "BDF", "LSODA")
#: every ``method`` this backend accepts: SciPy's, plus ``"euler"`` (handed to :mod:`.fixed_step`)
ALL_METHODS = METHODS + ("euler",)
_IMPLICIT = ("Radau", "BDF", "LSODA")
_EPS = np.finfo(float).eps

# exceptions from the user's RHS that mean "this trajectory cannot go on" rather than a bug
_NUMERIC_ERRORS = (FloatingPointError, ZeroDivisionError, OverflowError, np.linalg.LinAlgError)


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


def prepare(problem: FlowProblem, t0, y0, t1, t_save):
    """Validate the common arguments; return ``(t0, y0, t1, t_save)`` as floats / float64 arrays."""
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t0={t0!r} and t1={t1!r} must be finite")
    if t1 < t0:
        raise ValueError(f"t1={t1!r} < t0={t0!r}: only forward integration is supported")
    y0 = np.array(y0, dtype=np.float64).reshape(-1)
    if y0.shape[0] != problem.n:
        raise ValueError(f"y0 has length {y0.shape[0]}, problem.n={problem.n}")
    ts = np.sort(np.asarray(t_save if t_save is not None else [], dtype=np.float64).reshape(-1))
    ts = ts[(ts > t0) & (ts <= t1)]
    for ev in problem.events:
        if ev.direction not in (-1, 0, 1):
            raise ValueError(f"event {ev.name!r}: direction={ev.direction!r} must be -1, 0 or +1")
    return t0, y0, t1, ts


def first_step_for(problem: FlowProblem, t0, t1):
    h = problem.first_step
    if h is None or not (h > 0) or not math.isfinite(h):
        return None
    return float(min(h, t1 - t0))


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

    Returns ``(t, g(t))`` with ``t`` on the far side of the crossing (``g`` has its new sign or is 0).
    """
    from scipy.optimize import brentq

    upward = ga < 0
    pre = (lambda g: g < 0) if upward else (lambda g: g > 0)
    tol = 1e-12 * max(1.0, abs(ta), abs(tb))
    f = lambda t: _event_value(ev, t, Y(t))  # noqa: E731
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
def drive(stepper, problem: FlowProblem, t0, y0, t1, ts, counter: Counter, max_steps=None) -> Segment:
    """Generic accepted-step loop: saving, events, projection, ``on_accept``, failure reporting.

    ``stepper`` provides ``step()`` (one accepted step; sets ``t_old``, ``t``, ``y``; raises
    :class:`StepFailure`), ``interp(t)`` (state for ``t`` in the last step), ``h_next()``,
    ``restart(t, y, first_step)`` and ``finished``.
    """
    n = problem.n
    events = list(problem.events)
    project, on_accept = problem.project, problem.on_accept
    t_out, y_out, records = [], [], []
    si = 0
    t, y = t0, y0
    h_last = problem.first_step if (problem.first_step or 0) > 0 else None
    n_steps = 0

    def seg(status, message="", t_end=None, y_end=None):
        return Segment(t_save=np.asarray(t_out, dtype=np.float64),
                       y_save=np.asarray(y_out, dtype=np.float64).reshape(len(t_out), n),
                       t_end=float(t if t_end is None else t_end), y_end=np.array(y if y_end is None else y_end),
                       events=records, n_rhs=counter.rhs, n_jvp=counter.jvp, status=status, message=message,
                       h_last=None if h_last is None else float(h_last), n_steps=n_steps)

    if not np.all(np.isfinite(y0)):
        return seg("failed", f"non-finite initial state at t={t0:.10g}")
    if t1 == t0:
        return seg("ok")
    try:
        g_prev = [_event_value(ev, t0, y0) for ev in events]
    except _NUMERIC_ERRORS as e:
        return seg("failed", f"event function raised {type(e).__name__}: {e}")

    while not stepper.finished:
        if max_steps is not None and n_steps >= max_steps:
            return seg("failed", f"max_steps={max_steps} accepted steps reached at t={t:.10g} before t1={t1:.10g}")
        try:
            stepper.step()
        except StepFailure as e:
            return seg("failed", f"{e} (at t={t:.10g})")
        except _NUMERIC_ERRORS as e:
            return seg("failed", f"right-hand side raised {type(e).__name__} near t={t:.10g}: {e}")
        t_old, t_new, y_new = stepper.t_old, stepper.t, stepper.y
        if not np.all(np.isfinite(y_new)):
            return seg("failed", f"non-finite state after the step {t_old:.10g} -> {t_new:.10g}")
        n_steps += 1
        h = stepper.h_next()
        if h is not None and h > 0 and math.isfinite(h):
            h_last = h

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
                yp = np.asarray(project(t_new, y_new), dtype=np.float64).reshape(-1)
                if not np.array_equal(yp, y_new):
                    y_acc, changed = yp, True

            # --- saves up to t_stop
            while si < len(ts) and ts[si] <= t_stop:
                s = ts[si]
                if s == t_new and term is None:
                    ys = y_acc
                else:
                    ys = Y(s)
                    if project is not None:
                        ys = np.asarray(project(s, ys), dtype=np.float64).reshape(-1)
                t_out.append(s)
                y_out.append(np.array(ys))
                si += 1

            for r, i, gr in hits:
                if r <= t_stop:
                    ev = events[i]
                    records.append(EventRecord(t=float(r), name=ev.name, kind=ev.kind, value=float(gr)))

            if term is not None:
                r = term[0]
                y_end = np.array(Y(r))
                if project is not None:
                    y_end = np.asarray(project(r, y_end), dtype=np.float64).reshape(-1)
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
        except _NUMERIC_ERRORS as e:
            return seg("failed", f"{type(e).__name__} in event/save/projection near t={t_new:.10g}: {e}")

        t, y, g_prev = t_new, y_acc, g_new
        if on_accept is not None:
            on_accept(t, y)
        if changed and not stepper.finished:
            stepper.restart(t, y, min(h_last, t1 - t) if h_last else None)

    return seg("ok")


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
        from . import fixed_step
        return fixed_step.integrate_segment(problem, t0, y0, t1, t_save)
    method = resolve_method(problem.method, ALL_METHODS, DEFAULT_METHOD)
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    counter = Counter()
    if t1 == t0 or not np.all(np.isfinite(y0)):
        return drive(None, problem, t0, y0, t1, ts, counter)
    try:
        stepper = _ScipyStepper(problem, method, t0, y0, t1, counter, first_step_for(problem, t0, t1),
                                stops=ts if problem.options.get("exact_saves") else ())
    except _NUMERIC_ERRORS as e:
        seg = drive(None, problem, t0, y0, t0, ts, counter)
        seg.status, seg.message = "failed", f"right-hand side raised {type(e).__name__} at t0: {e}"
        return seg
    return drive(stepper, problem, t0, y0, t1, ts, counter, max_steps=problem.options.get("max_steps"))
