"""The ``"torch"`` backend: explicit Runge–Kutta integration that stays on the problem's device and dtype.

``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` — the contract of :mod:`pyrod.integrate.base`, except
that the state is a **torch tensor**: this backend declares :data:`TENSORS` ``= True``, so ``problem.rhs(t, y)``,
``project``, ``on_accept``, ``diverged`` and every event function receive ``y`` as a 1-D tensor on ``y0``'s device
and dtype, ``rhs`` returns one, and ``Segment.y_save`` (``(len(t_save), n)``) and ``Segment.y_end`` are tensors.
A NumPy ``y0`` is taken as a float64 CPU tensor. ``t`` is a Python float in optimizer steps.

Methods (``problem.method``, case-insensitive):

* ``"dopri5"`` (default): Dormand–Prince 5(4), 7 stages with first-same-as-last (6 right-hand sides per accepted
  step). Dense output: the method's own 4th-order continuous extension (exact at the step ends).
* ``"bosh3"``: Bogacki–Shampine 3(2) (the pair of SciPy's ``RK23``), 4 stages with first-same-as-last (3
  right-hand sides per accepted step). Dense output: the cubic Hermite interpolant of the step's end values and
  slopes (3rd order, exact at the step ends; the slope at the new end is the FSAL stage, so it costs nothing).
* ``"rk4"``: the classical fourth-order method on the fixed grid ``j / substeps``; dense output its 3rd-order
  continuous extension.
* ``"euler"``: explicit Euler on the grid ``j / substeps`` (as :mod:`.fixed_step`); linear dense output.

The adaptive methods (dopri5, bosh3) share the error control: error norm
``sqrt(mean((err / (atol + rtol·max(|y|, |y_new|)))²))`` of the embedded estimate ``err`` (order ``q``: 4 for
dopri5, 2 for bosh3), a step accepted when the norm is ≤ 1, and a PI step-size controller
``h ← h · clamp(0.9 · err^−α · err_prev^β, 0.2, 10)`` with ``β = 0.04``, ``α = 1/(q+1) − 0.75·β`` (Hairer's
DOPRI5 choice; β small, so close to SciPy's pure ``err^−1/(q+1)`` control) and no growth right after a
rejection. Their starting step is Hairer–Nørsett–Wanner's estimate with the exponent ``1/(q+1)``.

Fixed-step methods anchor their grid at 0 (a run split into segments takes the steps of one long run);
``options["substeps"]`` (default 4) steps per unit time.

**Host synchronisation.** The right-hand side is never copied to the host. Each step *attempt* makes exactly one
device→host transfer: a single ``.tolist()`` of a small stacked tensor holding the error norm (adaptive methods),
a finiteness flag and ``‖y_new‖₂`` (for ``max_norm``), and — when ``problem.diverged`` is a *tensor score* (a
callable with attribute ``tensor_score = True`` returning a 0-dim tensor; ``> 0`` or non-finite is divergence, and
its optional attribute ``explain(t, y)`` gives the message) — that score. So an accepted step costs one transfer
(plus one per rejected attempt before it). Per segment, one more checks the start (finite ``y0``, and for an
adaptive method a finite right-hand side there); an adaptive method without ``first_step`` makes two instead, for
its initial step-size estimate (and one extra right-hand side). Hooks the caller supplies may sync on their own: an
event function returns a float (one transfer per event per step), ``project`` is compared with ``torch.equal``, a
plain ``diverged`` returns a string.

Everything else is :func:`pyrod.integrate.driver.drive` itself, run on tensors (``_TensorOps``): saves from the dense output (or the step end when a
step lands there; ``options["exact_saves"]=True`` makes adaptive steps land on every save time, ``"integers"`` on
the integer ones), events located with ``brentq`` on the dense output (:func:`.driver.locate`, far side of the
crossing), projection after each accepted step, ``on_accept`` after each accepted step and at a terminal event, and the bounds ``max_norm``,
``diverged``, ``min_step`` (ten small steps in a row), ``max_rhs_per_unit`` (also checked between rejected attempts,
so a stiff flow on which every attempt is rejected fails cleanly) and ``options["max_steps"]``, each ending the
segment with ``status="failed"`` and a message naming the bound.

Stepping state carried between segments: ``Segment.h_last`` (the step the controller proposes next); pass it back
as ``problem.first_step``. The PI controller's memory restarts at each segment, so a run resumed at a segment
boundary takes exactly the steps of an uninterrupted one (bit-identical on the same machine).

Why not torchdiffeq / torchode: neither locates several directional, non-terminal events on the dense output with
the driver's far-side convention, lands steps on save times, calls a per-accepted-step hook that can change the
state (projection) or stop on pyrod's divergence / step-floor / evaluation-budget bounds, nor returns the proposed
next step for a bit-identical restart; torchdiffeq also syncs in its step loop. What is ours here is the steppers
(Dormand–Prince with its interpolant, Bogacki–Shampine, RK4, Euler); the accepted-step loop is the shared driver's.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import host
from .base import FlowProblem, Segment
from .driver import (
    NUMERIC_ERRORS,
    ArrayOps,
    Counter,
    StepFailure,
    check_length,
    drive,
    next_stop,
    prepare_times,
    save_stops,
)
from .fixed_step import next_grid_time
from .registry import Backend, check_keys

__all__ = ["integrate_segment", "TENSORS", "METHODS", "ADAPTIVE", "DEFAULT_METHOD", "OPTIONS", "DEFAULT_SUBSTEPS",
           "BACKEND"]

#: this backend passes torch tensors (not NumPy arrays) to the problem's callables
TENSORS = True
METHODS = ("dopri5", "bosh3", "rk4", "euler")
#: the embedded-pair methods (error control, PI step-size controller)
ADAPTIVE = ("dopri5", "bosh3")
DEFAULT_METHOD = "dopri5"
DEFAULT_SUBSTEPS = 4
OPTIONS = {
    "substeps": "rk4 / euler: steps per unit time (int >= 1, default 4); the step is 1/substeps",
    "max_steps": "accepted steps per segment (default unlimited)",
    "exact_saves": "dopri5 / bosh3: False (default), True or 'integers': steps land on every save time, or on the "
                   "integer ones, instead of interpolating",
}

# ---------------------------------------------------------------------------------- Dormand–Prince 5(4)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
      (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84))
_B = _A[6] + (0.0,)
# b − b̂ (5th minus embedded 4th order weights)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
# continuous extension: y(t_old + θh) = y_old + h Σ_i K_i Σ_j P[i][j] θ^(j+1)
_P = ((1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
      (0.0, 0.0, 0.0, 0.0),
      (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
      (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
      (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
      (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
      (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423))

# ------------------------------------------------------------------------------- Bogacki–Shampine 3(2)
# Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321–325: third-order weights b (= the last row of A: first same
# as last), embedded second-order weights b̂ = (7/24, 1/4, 1/3, 1/8) on (K1, K2, K3, K4 = f(t + h, y_new)).
_C3 = (0.0, 1 / 2, 3 / 4, 1.0)
_A3 = ((),
       (1 / 2,),
       (0.0, 3 / 4),
       (2 / 9, 1 / 3, 4 / 9))
# b − b̂
_E3 = (2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8)


def _dopri5_interp(y_old, y_new, h, th, K):
    """Dormand–Prince's continuous extension at ``t_old + th·h`` (4th order)."""
    pw = (th, th * th, th ** 3, th ** 4)
    coeffs = [sum(p * q for p, q in zip(row, pw, strict=True)) for row in _P]
    return _comb(y_old, h, coeffs, K)


def _hermite_interp(y_old, y_new, h, th, K):
    """Cubic Hermite interpolant of ``(y_old, K[0])`` and ``(y_new, K[-1])`` (the end slopes; FSAL) at
    ``t_old + th·h``: ``y_old + (3θ² − 2θ³)(y_new − y_old) + h[(θ − 2θ² + θ³) K₁ + (θ³ − θ²) K_last]``."""
    h01 = 3 * th * th - 2 * th ** 3
    h10 = th - 2 * th * th + th ** 3
    h11 = th ** 3 - th * th
    return y_old + h01 * (y_new - y_old) + (h * h10) * K[0] + (h * h11) * K[-1]


class _Pair:
    """An explicit embedded Runge–Kutta pair with first-same-as-last: nodes ``C``, rows ``A[1:]`` (the last row
    is the propagating weights ``b``, so the last stage is ``f(t + h, y_new)``), error weights ``E = b − b̂``,
    embedded order ``q`` (the error estimate is ``O(h^(q+1))``), and its dense output
    ``interp(y_old, y_new, h, θ, K)``."""

    def __init__(self, name, C, A, E, q, interp):
        self.name, self.C, self.A, self.E, self.q, self.interp = name, C, A, E, q, interp
        self.stages = len(C)
        self.expo = 1.0 / (q + 1) - 0.75 * _BETA    # PI controller: err^−α · err_prev^β


_SAFETY, _FAC_MIN, _FAC_MAX, _BETA = 0.9, 0.2, 10.0, 0.04
_PAIRS = {"dopri5": _Pair("dopri5", _C, _A, _E, 4, _dopri5_interp),
          "bosh3": _Pair("bosh3", _C3, _A3, _E3, 2, _hermite_interp)}


#: the backend's only device→host transfer (:func:`pyrod.host.to_host`, bound here so that tests can count the
#: calls made from this module; the CUDA test allows synchronisation only inside it)
_to_host = host.to_host


def _comb(y, h, coeffs, K):
    """``y + h Σ c_i K_i`` over the nonzero coefficients (device ops only)."""
    out = y
    for c, k in zip(coeffs, K, strict=True):
        if c != 0.0:
            out = out + (h * c) * k
    return out


class _NonFiniteStart(Exception):
    """The initial state is not finite (found in the stepper's first host transfer)."""


class _Stepper:
    """Common state: ``t_old``, ``t``, ``y``; ``step()`` makes one accepted step; ``stats`` the synced values."""

    def __init__(self, problem, t0, y0, t1, counter, score):
        self.problem, self.t1, self.counter, self.score = problem, float(t1), counter, score
        self.t, self.y = float(t0), y0
        self.t_old, self.y_old = self.t, y0
        self.t0 = float(t0)
        self.budget = problem.max_rhs_per_unit
        self.norm_y = self.score_val = 0.0
        self.finite, self.n_rejected = True, 0

    @property
    def finished(self):
        return self.t >= self.t1

    def f(self, t, y):
        self.counter.rhs += 1
        out = self.problem.rhs(t, y)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"problem.rhs returned {type(out).__name__}; the torch backend needs a tensor")
        if out.shape != y.shape:
            out = out.reshape(-1)
            if out.shape != y.shape:
                raise ValueError(f"problem.rhs returned shape {tuple(out.shape)}, expected {tuple(y.shape)}")
        return out

    def _sync(self, y_new, extra=(), with_score=True, tail=None):
        """One device→host transfer: ``extra`` values, finiteness of ``y_new``, ``‖y_new‖``, divergence score, and
        the flat tensor ``tail`` (a :attr:`FlowProblem.probe`'s values; returned instead of ``extra``'s)."""
        parts = [torch.as_tensor(e, dtype=y_new.dtype, device=y_new.device).reshape(()) for e in extra]
        parts.append(torch.isfinite(y_new).all().to(y_new.dtype))
        parts.append(torch.linalg.vector_norm(y_new))
        with_score = with_score and self.score is not None
        if with_score:
            parts.append(torch.as_tensor(self.score(self._t_new, y_new)).to(y_new).reshape(()))
        head = torch.stack(parts)
        if tail is not None:            # float64 throughout: the tail must not be rounded to the state's dtype
            head = torch.cat([head.to(torch.float64), tail.reshape(-1).to(torch.float64)])
        vals = _to_host(head)
        k = len(extra)
        self.finite, self.norm_y = bool(vals[k]), vals[k + 1]
        self.score_val = vals[k + 2] if with_score else 0.0
        if tail is not None:
            return vals[len(parts):]
        return vals[:k]

    def _check_budget(self):
        if self.budget is not None and self.counter.rhs > self.budget * max(1.0, self.t - self.t0):
            raise StepFailure(f"evaluation budget exceeded: {self.counter.rhs} right-hand sides for "
                              f"{self.t - self.t0:.3g} time units from t={self.t0:.10g} "
                              f"(max_rhs_per_unit={self.budget:g})")


class _FixedStepper(_Stepper):
    """Euler or classical RK4 on the grid ``j / substeps``."""

    def __init__(self, problem, method, t0, y0, t1, counter, score, substeps):
        super().__init__(problem, t0, y0, t1, counter, score)
        self.method, self.n, self.h = method, substeps, 1.0 / substeps
        self.K = None

    def step(self):
        tn = next_grid_time(self.t, self.t1, self.n)
        if not tn > self.t:
            raise StepFailure(f"{self.method}: no progress at t={self.t!r}")
        t, y, h = self.t, self.y, tn - self.t
        k1 = self.f(t, y)
        if self.method == "euler":
            y_new, self.K = y + h * k1, (k1,)
        else:
            k2 = self.f(t + h / 2, y + (h / 2) * k1)
            k3 = self.f(t + h / 2, y + (h / 2) * k2)
            k4 = self.f(t + h, y + h * k3)
            y_new = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            self.K = (k1, k2, k3, k4)
        self._t_new = tn
        probe = self.problem.probe(tn, y_new) if self.problem.probe is not None else None
        if probe is None:
            self._sync(y_new)
        else:                         # the problem's values at the step end ride along in the step's one transfer
            vals, consume = probe
            consume(self._sync(y_new, tail=vals))
        self.t_old, self.y_old, self.t, self.y = t, y, tn, y_new

    def interp(self, s):
        h = self.t - self.t_old
        if h == 0:
            return self.y
        th = (float(s) - self.t_old) / h
        if self.method == "euler":
            return self.y_old + (th * h) * self.K[0]
        b1 = th - 1.5 * th ** 2 + (2 / 3) * th ** 3
        b23 = th ** 2 - (2 / 3) * th ** 3
        b4 = -0.5 * th ** 2 + (2 / 3) * th ** 3
        return _comb(self.y_old, h, (b1, b23, b23, b4), self.K)

    def h_next(self):
        return self.h

    def restart(self, t, y, first_step):
        self.t, self.y = float(t), y
        self.t_old, self.y_old = self.t, y


class _EmbeddedStepper(_Stepper):
    """An embedded pair (:class:`_Pair`: dopri5, bosh3) with PI step-size control (one host transfer per attempt)."""

    def __init__(self, problem, pair, t0, y0, t1, counter, score, first_step, stops):
        super().__init__(problem, t0, y0, t1, counter, score)
        self.pair = pair
        self.rtol, self.atol = float(problem.rtol), float(problem.atol)
        ms = problem.max_step
        self.max_step = float(ms) if ms is not None and math.isfinite(ms) and ms > 0 else math.inf
        self.stops = stops
        self.K = None
        self.restart(t0, y0, first_step)

    def restart(self, t, y, first_step):
        self.t, self.y = float(t), y
        self.t_old, self.y_old = self.t, y
        self.fy = self.f(self.t, y)
        self.err_prev, self.rejected = 1e-4, False
        if first_step is not None and first_step > 0:
            self.h = min(float(first_step), self.max_step)
            # one check that the start is finite (as the SciPy backend: a NaN RHS at the start cannot be stepped)
            self._t_new = self.t
            (fin,) = self._sync(y, (torch.isfinite(self.fy).all(),), with_score=False)
            if not self.finite:
                raise _NonFiniteStart
            if not fin:
                raise FloatingPointError(f"the right-hand side is not finite at t={self.t!r}")
        else:
            self.h = self._initial_step()

    def _initial_step(self):
        """Hairer–Nørsett–Wanner's starting step (two host transfers, one extra right-hand side)."""
        y, f0, t = self.y, self.fy, self.t
        scale = self.atol + self.rtol * y.abs()
        d0, d1, fin, fin_y = (_to_host(torch.stack([torch.linalg.vector_norm(y / scale), torch.linalg.vector_norm(f0 / scale),
                                           torch.isfinite(f0).all().to(y.dtype),
                                           torch.isfinite(y).all().to(y.dtype)])))
        if not fin_y:
            raise _NonFiniteStart
        if not fin:
            raise FloatingPointError(f"the right-hand side is not finite at t={t!r}")
        rn = math.sqrt(y.numel())
        d0, d1 = d0 / rn, d1 / rn
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, self.t1 - t, self.max_step)
        f1 = self.f(t + h0, y + h0 * f0)
        d2 = float(_to_host(torch.linalg.vector_norm((f1 - f0) / scale))) / rn / h0
        if not math.isfinite(d2):
            d2 = 1e300
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / (self.pair.q + 1))
        return min(100 * h0, h1, self.max_step)

    def step(self):
        t, y, f0 = self.t, self.y, self.fy
        P = self.pair
        bound = next_stop(self.stops, t, self.t1) if len(self.stops) else self.t1
        while True:
            h = min(self.h, self.max_step)
            t_new = t + h
            if t_new >= bound or (bound - t_new) < 1e-12 * max(1.0, abs(bound)):
                t_new = bound
                h = bound - t
            if not h > 10 * np.finfo(float).eps * max(1.0, abs(t)):
                raise StepFailure(f"{P.name}: step size {h:.3g} too small")
            K = [f0]
            for i in range(1, P.stages - 1):
                K.append(self.f(t + P.C[i] * h, _comb(y, h, P.A[i], K)))
            y_new = _comb(y, h, P.A[-1], K)             # the propagating weights b (the last row: FSAL)
            K.append(self.f(t + P.C[-1] * h, y_new))
            err = _comb(torch.zeros_like(y), h, P.E, K)
            scale = self.atol + self.rtol * torch.maximum(y.abs(), y_new.abs())
            err_norm = torch.linalg.vector_norm(err / scale) / math.sqrt(y.numel())
            self._t_new = t_new
            (e,) = self._sync(y_new, (err_norm,))
            if math.isfinite(e) and e <= 1.0:
                fac11 = e ** P.expo if e > 0 else 0.0
                fac = fac11 / self.err_prev ** _BETA / _SAFETY
                fac = min(1.0 / _FAC_MIN, max(1.0 / _FAC_MAX, fac)) if fac > 0 else 1.0 / _FAC_MAX
                h_prop = h / fac
                if self.rejected:
                    h_prop = min(h_prop, h)
                self.err_prev, self.rejected = max(e, 1e-4), False
                self.h = h_prop
                self.t_old, self.y_old = t, y
                self.t, self.y, self.fy, self.K = t_new, y_new, K[-1], K
                return
            # rejected attempt (NaN / inf error counts as a large one)
            shrink = _FAC_MIN if not math.isfinite(e) else max(_FAC_MIN, _SAFETY / e ** P.expo)
            self.h, self.rejected = h * min(1.0, shrink), True
            self.n_rejected += 1
            self._check_budget()

    def interp(self, s):
        h = self.t - self.t_old
        if h == 0:
            return self.y
        th = (float(s) - self.t_old) / h
        return self.pair.interp(self.y_old, self.y, h, th, self.K)

    def h_next(self):
        return self.h


# ------------------------------------------------------------------------------------------------ loop
def _resolve(method):
    if method is None:
        return DEFAULT_METHOD
    for m in METHODS:
        if str(method).lower() == m:
            return m
    raise ValueError(f"method={method!r} is not supported by the torch backend; valid methods: {list(METHODS)}")


def _substeps(problem):
    n = problem.options.get("substeps", DEFAULT_SUBSTEPS)
    n = DEFAULT_SUBSTEPS if n is None else n
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"substeps={n!r} must be an int >= 1 (steps per unit time)")
    return int(n)


def integrate_segment(problem: FlowProblem, t0: float, y0, t1: float, t_save) -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` on ``y0``'s device and dtype; see the module docstring."""
    check_keys(OPTIONS, problem.options, "backend 'torch'")
    method = _resolve(problem.method)
    t0, t1, ts = prepare_times(problem, t0, t1, t_save)
    y0 = torch.as_tensor(y0).reshape(-1) if isinstance(y0, torch.Tensor) else torch.as_tensor(
        np.array(y0, dtype=np.float64)).reshape(-1)
    if not y0.is_floating_point():
        raise ValueError(f"y0 has dtype {y0.dtype}; a floating-point state is needed")
    check_length(problem, y0)
    counter = Counter()
    score = problem.diverged if getattr(problem.diverged, "tensor_score", False) else None
    first = problem.first_step
    first = float(min(first, t1 - t0)) if first is not None and first > 0 and math.isfinite(first) else None
    max_steps = problem.options.get("max_steps")
    budget = problem.max_rhs_per_unit
    stepper = None
    if t1 > t0:
        try:
            if method in ADAPTIVE:   # checks that y0 is finite in its first transfer
                stops = save_stops(problem.options, ts)
                stepper = _EmbeddedStepper(problem, _PAIRS[method], t0, y0, t1, counter, score, first, stops)
            elif _to_host(torch.isfinite(y0).all()):
                n = _substeps(problem)
                if budget is not None:  # the cost per unit time is fixed
                    budget = max(float(budget), 2.0 * n * (4 if method == "rk4" else 1))
                stepper = _FixedStepper(problem, method, t0, y0, t1, counter, score, n)
                stepper.budget = budget
        except _NonFiniteStart:
            stepper = None
        except NUMERIC_ERRORS as e:
            seg = drive(None, problem, t0, y0, t0, ts, counter, max_rhs_per_unit=budget, ops=_TensorOps(score))
            seg.status, seg.message = "failed", f"right-hand side raised {type(e).__name__} at t0: {e}"
            return seg
    return drive(stepper, problem, t0, y0, t1, ts, counter, max_steps=max_steps, max_rhs_per_unit=budget,
                 ops=_TensorOps(score))


class _TensorOps(ArrayOps):
    """:func:`pyrod.integrate.driver.drive` on tensors: states stay on the device; finiteness, ``‖y‖`` and the
    divergence score come from the stepper's one host transfer of the step (``_Stepper._sync``)."""

    def __init__(self, score):
        self.score = score

    def finite_start(self, stepper, y0) -> bool:
        return stepper is not None or bool(_to_host(torch.isfinite(y0).all()))  # (a stepper exists only for a finite y0)

    def finite(self, stepper, y) -> bool:
        return stepper.finite

    def norm(self, stepper, y) -> float:
        return stepper.norm_y

    def divergence(self, stepper, problem, t, y):
        if self.score is None:
            return super().divergence(stepper, problem, t, y)
        if stepper.score_val <= 0:
            return None
        explain = getattr(self.score, "explain", None)
        return (explain(t, y) if explain is not None else None) or f"divergence score {stepper.score_val:.3g} > 0"

    def cast(self, x, like):
        return torch.as_tensor(x).to(like).reshape(-1)

    def equal(self, a, b) -> bool:
        return torch.equal(a, b)

    def keep(self, y):
        return y

    def stack(self, ys, n, y0):
        return torch.stack(ys) if ys else y0.new_zeros((0, n))


integrate_segment.TENSORS = True

#: this backend's descriptor (:mod:`pyrod.integrate.registry`): tensors in and out; the default on CUDA
BACKEND = Backend(name="torch", integrate_segment=integrate_segment, methods=METHODS, default_method=DEFAULT_METHOD,
                  options=OPTIONS, trait_methods={"low_order": "bosh3", "fixed_step": "euler"}, tensors=True,
                  device_default="cuda")
