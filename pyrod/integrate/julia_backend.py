"""Julia backend: DifferentialEquations.jl (OrdinaryDiffEq) through juliacall, lazily and optionally.

``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` hands one segment to
``PyrodFlows.integrate_segment`` (the Julia package in ``julia/``), whose right-hand side, J·v, event
functions, projection and ``on_accept`` call back into Python:

* methods (``problem.method``, case-insensitive): ``"Tsit5"`` (default), ``"Vern7"``, ``"Vern9"`` (non-stiff),
  ``"FBDF"``, ``"KenCarp47"`` (stiff; Jacobian-free Newton–Krylov with ``KrylovJL_GMRES`` and
  ``autodiff=AutoFiniteDiff()``; the J·v is ``problem.jvp`` when given, e.g. a torch HVP, else a finite
  difference of the RHS). ``problem.options["julia_linsolve"] = "dense"`` factorises a finite-difference
  Jacobian instead (small problems);
* events: one ``VectorContinuousCallback`` over all ``problem.events`` (``SciMLBase.RightRootFind``: the
  reported time is on the far side of the crossing, as in the SciPy backend; ``direction`` filters
  crossings; ``terminal`` stops the segment there);
* ``problem.project`` after every accepted step (a ``DiscreteCallback``; the terminal-event state is
  projected too); saved states inside a step come from the solver's interpolant and are projected here,
  as the SciPy backend does;
* ``problem.on_accept`` after every accepted (projected) step (``DiffEqCallbacks.FunctionCallingCallback``);
* saving: ``saveat=t_save`` (dense output; exact step ends are not forced);
* ``max_step`` -> ``dtmax``; ``first_step`` -> ``dt``; ``problem.options["max_steps"]`` -> ``maxiters``
  (OrdinaryDiffEq counts rejected steps too); other option keys raise TypeError (:data:`OPTIONS`);
* failures: an exception in a callback ends the solve; numerical ones (``FloatingPointError``,
  ``ZeroDivisionError``, ``OverflowError``, ``LinAlgError``) become ``status="failed"`` with the last
  accepted state, others are re-raised; a non-success OrdinaryDiffEq return code is ``status="failed"``.

Arrays: the solver state is a Julia ``Vector{Float64}``; Python callbacks receive it as a zero-copy, read-only
NumPy view (``numpy.asarray`` of juliacall's ``VectorValue``) and write ``du``/``Jv``/event values straight
into the solver's buffers. ``project`` and ``on_accept`` receive copies (they may keep them).

Nothing here imports juliacall at module import. :func:`init_julia` first runs the file-system probe
(:mod:`pyrod.integrate.julia_probe`) and raises :class:`BackendUnavailable` with the offline recipe within
milliseconds when no local Julia is configured, so the network is never tried; only then is
``juliacall`` imported (any exception, e.g. ``URLError`` from juliapkg, becomes BackendUnavailable too).
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

from . import julia_probe
from .base import BackendUnavailable, EventRecord, FlowProblem, Segment
from .driver import NUMERIC_ERRORS, first_step_for, prepare, resolve_method
from .registry import Backend, check_keys

__all__ = ["integrate_segment", "init_julia", "check_available", "available", "METHODS", "DEFAULT_METHOD", "BACKEND"]

DEFAULT_METHOD = "Tsit5"
METHODS = ("Tsit5", "Vern7", "Vern9", "FBDF", "KenCarp47")
LINSOLVERS = ("gmres", "dense")
#: ``FlowProblem.options`` keys accepted (any other key is a TypeError)
OPTIONS = {
    "julia_linsolve": 'stiff methods: "gmres" (Jacobian-free Newton-Krylov, default) or "dense"',
    "max_steps": "OrdinaryDiffEq maxiters (counts rejected steps too; default unlimited)",
    "exact_saves": "accepted for compatibility; a no-op (saves come from the dense output)",
}

_LOCK = threading.Lock()
_STATE: dict = {"module": None, "error": None}


def check_available() -> None:
    """Raise :class:`BackendUnavailable` (with the offline recipe) unless the probe finds a local Julia and
    juliacall.  File-system checks only: never imports juliacall, never touches the network."""
    julia_probe.require_julia()


def available() -> bool:
    """True when the probe finds a local Julia and juliacall (does not start Julia)."""
    return julia_probe.julia_available()[0]


def _threads_default():
    """As PySR does: Julia with more than one thread needs juliacall's signal handling (else segfaults)."""
    threads = os.environ.get("PYTHON_JULIACALL_THREADS") or os.environ.get("JULIA_NUM_THREADS") or "1"
    if threads.strip() not in ("1", "") and "PYTHON_JULIACALL_HANDLE_SIGNALS" not in os.environ:
        os.environ["PYTHON_JULIACALL_HANDLE_SIGNALS"] = "yes"


def _load_pyrodflows(jl):
    """``PyrodFlows`` from the Julia environment (juliapkg devs it from ``pyrod/juliapkg.json``), else by
    ``include`` of the bundled source (its dependencies must be in the environment)."""
    try:
        jl.seval("import PyrodFlows")
        return jl.seval("PyrodFlows")
    except Exception as first:  # noqa: BLE001 - juliacall raises JuliaError
        src_dir = julia_probe.julia_source_dir()
        if src_dir is None:
            raise BackendUnavailable(
                f"Julia started, but the PyrodFlows package is neither in the Julia environment nor bundled "
                f"with pyrod ({type(first).__name__}: {first})") from None
        src = str(src_dir / "src" / "PyrodFlows.jl")
        try:
            jl.seval(f"Base.include(Main, {_julia_string(src)})")
            return jl.seval("Main.PyrodFlows")
        except Exception as second:  # noqa: BLE001
            raise BackendUnavailable(
                "Julia started, but PyrodFlows could not be loaded: `import PyrodFlows` failed "
                f"({first}) and including {src} failed ({type(second).__name__}: {second}). The Julia "
                "environment needs OrdinaryDiffEq, OrdinaryDiffEqSDIRK, SciMLBase, DiffEqCallbacks, "
                "LinearSolve and ADTypes (see pyrod/juliapkg.json).\n" + julia_probe.OFFLINE_RECIPE) from None


def _julia_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def init_julia():
    """Start Julia (once per process) and return the ``PyrodFlows`` module (a juliacall object).

    Raises :class:`BackendUnavailable` quickly when the probe finds no local Julia, and also when starting
    juliacall fails for any reason (the message keeps the original error and adds the offline recipe).
    Later calls after a failure re-raise the same error without retrying.
    """
    if _STATE["module"] is not None:
        return _STATE["module"]
    with _LOCK:
        if _STATE["module"] is not None:
            return _STATE["module"]
        if _STATE["error"] is not None:
            raise BackendUnavailable(_STATE["error"])
        julia_probe.require_julia()   # fast; nothing cached: a later call may find a newly configured Julia
        _threads_default()
        try:
            import juliacall  # noqa: F401 - resolves the Julia environment and starts Julia
            jl = juliacall.Main
        except Exception as e:  # noqa: BLE001 - URLError, juliapkg's Exception, ValueError, ImportError…
            _STATE["error"] = (f"the 'julia' backend could not start juliacall ({type(e).__name__}: {e}).\n"
                               + julia_probe.OFFLINE_RECIPE)
            raise BackendUnavailable(_STATE["error"]) from e
        try:
            mod = _load_pyrodflows(jl)
        except BackendUnavailable as e:
            _STATE["error"] = str(e)
            raise
        _STATE["module"] = mod
        return mod


# -------------------------------------------------------------------------------------- the bridge
class _Bridge:
    """Python callbacks with the in-place signatures PyrodFlows expects; remembers the first exception."""

    def __init__(self, problem: FlowProblem):
        self.problem = problem
        self.n = problem.n
        self.exc: BaseException | None = None
        self.events = list(problem.events)

    def _fail(self, e: BaseException):
        if self.exc is None:
            self.exc = e

    @staticmethod
    def _view(a) -> np.ndarray:
        v = np.asarray(a)
        v.flags.writeable = False
        return v

    def _write(self, out, value, what):
        dst = np.asarray(out)
        src = np.asarray(value, dtype=np.float64)
        if src.size != dst.size:
            raise ValueError(f"problem.{what} returned shape {src.shape}, expected ({dst.size},)")
        dst[...] = src.reshape(dst.shape)

    def rhs(self, du, u, t):
        try:
            self._write(du, self.problem.rhs(float(t), self._view(u)), "rhs")
        except BaseException as e:
            self._fail(e)
            raise

    def jvp(self, jv, u, v, t):
        try:
            self._write(jv, self.problem.jvp(float(t), self._view(u), self._view(v)), "jvp")
        except BaseException as e:
            self._fail(e)
            raise

    def event_values(self, g, u, t):
        try:
            y, t = self._view(u), float(t)
            out = np.asarray(g)
            for i, ev in enumerate(self.events):
                out[i] = float(ev.fn(t, y))
        except BaseException as e:
            self._fail(e)
            raise

    def project(self, w, t):
        try:
            buf = np.asarray(w)
            yp = np.asarray(self.problem.project(float(t), np.array(buf)), dtype=np.float64).reshape(-1)
            if yp.shape != buf.shape:
                raise ValueError(f"problem.project returned shape {yp.shape}, expected {buf.shape}")
            buf[...] = yp
        except BaseException as e:
            self._fail(e)
            raise

    def on_accept(self, u, t):
        try:
            self.problem.on_accept(float(t), np.array(np.asarray(u), dtype=np.float64))
        except BaseException as e:
            self._fail(e)
            raise


def _trivial(problem, t0, y0, status="ok", message=""):
    h = problem.first_step if (problem.first_step or 0) > 0 else None
    return Segment(t_save=np.zeros(0), y_save=np.zeros((0, problem.n)), t_end=float(t0), y_end=np.array(y0),
                   status=status, message=message, h_last=h)


def integrate_segment(problem: FlowProblem, t0: float, y0: np.ndarray, t1: float, t_save) -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` with OrdinaryDiffEq through juliacall (module docstring).

    Raises :class:`BackendUnavailable` (within milliseconds, without network) when no local Julia is
    configured; the message gives the environment variables that point pyrod at an existing Julia.
    """
    check_keys(OPTIONS, problem.options, "backend 'julia'")
    method = resolve_method(problem.method, METHODS, DEFAULT_METHOD)
    linsolve = str(problem.options.get("julia_linsolve", "gmres")).lower()
    if linsolve not in LINSOLVERS:
        raise ValueError(f"options['julia_linsolve']={linsolve!r}; valid: {list(LINSOLVERS)}")
    t0, y0, t1, ts = prepare(problem, t0, y0, t1, t_save)
    pf = init_julia()
    if not np.all(np.isfinite(y0)):
        return _trivial(problem, t0, y0, "failed", f"non-finite initial state at t={t0:.10g}")
    if t1 == t0:
        return _trivial(problem, t0, y0)

    br = _Bridge(problem)
    events = br.events
    max_steps = problem.options.get("max_steps")
    max_step = problem.max_step if problem.max_step is not None else math.inf
    h0 = first_step_for(problem, t0, t1)
    try:
        res = pf.integrate_segment(
            br.rhs, br.jvp if problem.jvp is not None else None, y0, t0, t1, ts,
            alg=method, rtol=float(problem.rtol), atol=float(problem.atol),
            events=br.event_values if events else None, nevents=len(events),
            directions=np.array([int(ev.direction) for ev in events], dtype=np.int64),
            terminal=np.array([bool(ev.terminal) for ev in events], dtype=bool),
            maxstep=float(max_step), dt=None if h0 is None else float(h0),
            project=br.project if problem.project is not None else None,
            on_accept=br.on_accept if problem.on_accept is not None else None,
            maxiters=int(max_steps) if max_steps else 10**9, linsolve=linsolve)
    except Exception as e:  # noqa: BLE001 - a JuliaError outside the solve (argument conversion, …)
        if br.exc is not None:
            raise br.exc from e
        raise RuntimeError(f"PyrodFlows.integrate_segment failed: {type(e).__name__}: {e}") from e

    status, message = str(res.status), str(res.message)
    if bool(res.error):
        if br.exc is None:
            raise RuntimeError(f"PyrodFlows.integrate_segment raised inside the solve: {message}")
        if not isinstance(br.exc, NUMERIC_ERRORS):
            raise br.exc
        status = "failed"
        message = (f"a callback raised {type(br.exc).__name__} near t={float(res.t_end):.10g}: {br.exc}")

    t_out = np.array(res.t_save, dtype=np.float64).reshape(-1)
    y_out = np.array(res.y_save, dtype=np.float64).reshape(problem.n, len(t_out)).T.copy()
    if problem.project is not None:
        for i, s in enumerate(t_out):
            y_out[i] = np.asarray(problem.project(float(s), y_out[i].copy()), dtype=np.float64).reshape(-1)
    records = []
    ev_t = np.array(res.ev_t, dtype=np.float64).reshape(-1)
    ev_i = np.array(res.ev_index, dtype=np.int64).reshape(-1)
    ev_v = np.array(res.ev_value, dtype=np.float64).reshape(-1)
    for t_e, i, v in zip(ev_t, ev_i, ev_v, strict=False):
        ev = events[int(i) - 1]
        records.append(EventRecord(t=float(t_e), name=ev.name, kind=ev.kind, value=float(v)))
    term = int(res.terminal_index)
    if status == "event" and term > 0:
        message = f"terminal event {events[term - 1].name!r} at t={float(res.t_end):.12g}"
    h_last = float(res.h_last)
    return Segment(t_save=t_out, y_save=y_out, t_end=float(res.t_end),
                   y_end=np.array(res.y_end, dtype=np.float64).reshape(-1), events=records,
                   n_rhs=int(res.n_rhs), n_jvp=int(res.n_jvp), status=status, message=message,
                   h_last=h_last if math.isfinite(h_last) and h_last > 0 else None, n_steps=int(res.n_steps))


def _require_julia() -> None:
    julia_probe.require_julia()   # BackendUnavailable with the offline recipe, at selection time


#: this backend's descriptor (:mod:`pyrod.integrate.registry`); juliacall is imported at the first solve
BACKEND = Backend(name="julia", integrate_segment=integrate_segment, methods=METHODS,
                  default_method=DEFAULT_METHOD, options=OPTIONS, check_available=_require_julia)
