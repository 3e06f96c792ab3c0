"""Stiff backend: SUNDIALS CVODE (through scikit-sundae), BDF with matrix-free GMRES.

``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` drives ``sksundae.cvode.CVODE`` one internal
step at a time (``init_step`` then ``step(t1, method="onestep", tstop=t1)``) through the same step driver
as the SciPy backend (:func:`pyrod.integrate.driver.drive`), so saving, event location (brentq on
CVODE's own interpolant, queried with ``step(t)`` inside the last step), projection, ``on_accept`` and
failure reporting have identical semantics on both backends.  CVODE's rootfinder is not used: its state
does not survive interpolation queries after a root return.

Linear solver: ``linsolver="gmres"`` (default; also ``"bicgstab"``, ``"tfqmr"``, or the direct ``"dense"``),
unpreconditioned, ``krylov_dim`` 20 by default.  With ``problem.jvp`` the Newton–Krylov iterations use the
user's J·v (``CVODEJacTimes(None, jv)``, counted in ``n_jvp``); without it SUNDIALS forms difference
quotients, one RHS evaluation per J·v (counted in ``n_rhs``).

``problem.method``: ``"BDF"`` (default) or ``"Adams"``.  ``problem.options`` keys read here:
``linsolver``, ``krylov_dim``, ``max_order``, ``max_nonlin_iters``, ``max_conv_fails``, ``min_step``,
``max_steps`` (accepted steps per segment, default unlimited), ``exact_saves`` (True: steps land on the save
times through CVODE's ``tstop`` instead of interpolating, no restart needed; ``"integers"``: on the integer save
times only, :func:`pyrod.integrate.driver.save_stops`); any other key raises TypeError
(:data:`OPTIONS`). Note ``options["min_step"]`` is CVODE's own absolute step floor; the driver's relative floor
is ``FlowProblem.min_step``.

Projection: when ``problem.project`` changes the state CVODE is re-initialised there, which restarts BDF
at order 1.  A projection that is active at *every* step (e.g. a clamp held against the flow) therefore
runs CVODE as backward Euler with small error-limited steps (measured: y0' = -1 clamped at 0, rtol 1e-8:
~1.4e4 steps per time unit and ~1e-4 relative error in the other component); use the scipy backend with
an explicit method for such flows.

SUNDIALS' callback arrays are read-only views of its own memory: ``problem.rhs``/``problem.jvp`` receive
copies, and results are written into the output arrays in place.  A step that makes no progress
(``t + h == t``, which CVODE otherwise repeats indefinitely, e.g. when the RHS returns NaN) is reported
as ``status="failed"`` after a few repetitions.

Requires ``pip install pyrod[stiff]`` (scikit-sundae); without it :class:`BackendUnavailable` is raised.
scikit-sundae is imported only when this backend is used.
"""
from __future__ import annotations

import math

import numpy as np

from .base import BackendUnavailable, FlowProblem, Segment
from .driver import (
    NUMERIC_ERRORS,
    Counter,
    StepFailure,
    drive,
    first_step_for,
    next_stop,
    prepare,
    resolve_method,
    save_stops,
)
from .registry import Backend, check_keys

__all__ = ["integrate_segment", "available", "METHODS", "DEFAULT_METHOD", "OPTIONS", "BACKEND"]

#: ``FlowProblem.options`` keys accepted (any other key is a TypeError)
OPTIONS = {
    "linsolver": 'linear solver: "gmres" (default), "bicgstab", "tfqmr" or "dense"',
    "krylov_dim": "Krylov subspace dimension (default 20)",
    "max_order": "largest BDF / Adams order",
    "max_nonlin_iters": "Newton iterations per step",
    "max_conv_fails": "Newton convergence failures per step",
    "min_step": "CVODE's absolute step floor (steps)",
    "max_steps": "accepted steps per segment (default unlimited)",
    "exact_saves": "False (default), True or 'integers': steps land on every save time, or on the integer ones, "
                   "through CVODE's tstop",
}

DEFAULT_METHOD = "BDF"
METHODS = ("BDF", "Adams")
_INSTALL = ("the 'sundials' backend needs scikit-sundae: pip install pyrod[stiff]  "
            "(or: pip install scikit-sundae)")
_NO_PROGRESS_LIMIT = 5


def _import_cvode():
    try:
        from sksundae.cvode import CVODE, CVODEJacTimes
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailable(f"{_INSTALL} ({type(e).__name__}: {e})") from None
    return CVODE, CVODEJacTimes


def available() -> bool:
    """True when scikit-sundae can be imported (imports it)."""
    try:
        _import_cvode()
    except BackendUnavailable:
        return False
    return True


def _scalar(x) -> float:
    return float(np.asarray(x).reshape(-1)[-1])


class _CvodeStepper:
    def __init__(self, problem: FlowProblem, method, t0, y0, t1, counter: Counter, first_step, stops=()):
        CVODE, CVODEJacTimes = _import_cvode()
        self.stops = stops
        self.CVODE = CVODE
        self.problem, self.t1, self.counter = problem, t1, counter
        n = problem.n
        opts = problem.options

        def rhs(t, y, yp):
            counter.rhs += 1
            f = np.asarray(problem.rhs(t, np.array(y)), dtype=np.float64).reshape(-1)
            if f.shape != (n,):
                raise ValueError(f"problem.rhs returned {f.shape[0]} values, expected {n}")
            yp[:] = f

        linsolver = str(opts.get("linsolver", "gmres")).lower()
        kw = dict(method=method, rtol=float(problem.rtol), atol=problem.atol, linsolver=linsolver)
        if linsolver in ("gmres", "bicgstab", "tfqmr"):
            kw["krylov_dim"] = int(opts.get("krylov_dim", 20))
            if problem.jvp is not None:
                def jv(t, y, yp, v, Jv):
                    counter.jvp += 1
                    Jv[:] = np.asarray(problem.jvp(t, np.array(y), np.array(v)), dtype=np.float64).reshape(-1)

                kw["jactimes"] = CVODEJacTimes(None, jv)
        if problem.max_step is not None and math.isfinite(problem.max_step) and problem.max_step > 0:
            kw["max_step"] = float(problem.max_step)
        for key in ("max_order", "max_nonlin_iters", "max_conv_fails", "min_step"):
            if key in opts:
                kw[key] = opts[key]
        kw["max_num_steps"] = 100_000  # per call; one call is one step here
        self.rhs, self.kw = rhs, kw
        self._make(t0, y0, first_step)

    def _make(self, t0, y0, first_step):
        kw = dict(self.kw)
        if first_step is not None and first_step > 0:
            kw["first_step"] = float(min(first_step, self.t1 - t0))
        self.solver = self.CVODE(self.rhs, **kw)
        r = self.solver.init_step(float(t0), np.array(y0, dtype=np.float64))
        if r.status < 0:
            raise StepFailure(f"CVODE init_step: {r.message}")
        self.t = float(t0)
        self.bound = next_stop(self.stops, self.t, self.t1)
        self._queried = False
        self._h = None
        self._h_full = None

    @property
    def finished(self):
        return self.t >= self.t1

    def step(self):
        stuck = 0
        while True:
            if self.t >= self.bound:
                self.bound = next_stop(self.stops, self.t, self.t1)
            r = self.solver.step(self.t1, method="onestep", tstop=self.bound)
            if r.status < 0:
                raise StepFailure(f"CVODE: {r.message} (status {r.status})")
            t_new = _scalar(r.t)
            if t_new > self.t:
                break
            if self._queried:  # CVODE first returns its current time after an interpolation query
                self._queried = False
                continue
            stuck += 1
            if stuck >= _NO_PROGRESS_LIMIT:
                raise StepFailure("CVODE step size collapsed (t + h == t)")
        self._queried = False
        self.t_old, self.t = self.t, t_new
        self.y = np.array(np.asarray(r.y, dtype=np.float64).reshape(-1))
        h = self.t - self.t_old
        self._h = h
        if self.t < self.bound or self._h_full is None:
            self._h_full = h  # the last step not shortened by tstop
        else:
            self._h_full = max(self._h_full, h)

    def interp(self, s):
        r = self.solver.step(float(s))
        self._queried = True
        if r.status < 0:
            raise StepFailure(f"CVODE interpolation at t={s!r}: {r.message}")
        return np.array(np.asarray(r.y, dtype=np.float64).reshape(-1))

    def h_next(self):
        return self._h_full

    def restart(self, t, y, first_step):
        # a re-initialised CVODE starts again at order 1; its first step is error-tested, so offer it a
        # larger one than the last (otherwise a projection active at every step pins h for good)
        self._make(t, y, None if first_step is None else 1.5 * first_step)


def integrate_segment(problem: FlowProblem, t0: float, y0: np.ndarray, t1: float, t_save) -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` with CVODE; see the module docstring."""
    check_keys(OPTIONS, problem.options, "backend 'sundials'")
    _import_cvode()
    method = resolve_method(problem.method, METHODS, DEFAULT_METHOD)
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    counter = Counter()
    if t1 == t0 or not np.all(np.isfinite(y0)):
        return drive(None, problem, t0, y0, t1, ts, counter)
    try:
        stepper = _CvodeStepper(problem, method, t0, y0, t1, counter, first_step_for(problem, t0, t1),
                                stops=save_stops(problem.options, ts))
    except (StepFailure, *NUMERIC_ERRORS) as e:
        seg = drive(None, problem, t0, y0, t0, ts, counter)
        seg.status, seg.message = "failed", f"CVODE could not start at t0={t0:.10g}: {e}"
        return seg
    return drive(stepper, problem, t0, y0, t1, ts, counter, max_steps=problem.options.get("max_steps"))


#: this backend's descriptor (:mod:`pyrod.integrate.registry`); scikit-sundae is imported when it is selected
BACKEND = Backend(name="sundials", integrate_segment=integrate_segment, methods=METHODS,
                  default_method=DEFAULT_METHOD, options=OPTIONS, check_available=_import_cvode)
