"""Integration backends for flows.

A backend is ``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` (see :mod:`.base`):

* ``"scipy"``: SciPy ``OdeSolver`` stepped by hand (DOP853 default; RK45, RK23, Radau, BDF, LSODA; ``"euler"``);
* ``"torch"``: explicit Runge–Kutta (dopri5 default; bosh3, rk4, euler) on the problem's device and dtype, with
  torch tensors in and out (:data:`torch_backend.TENSORS`; no host copy per evaluation, one transfer per step);
* ``"sundials"``: CVODE BDF + matrix-free GMRES with the problem's J·v (``pip install pyrod[stiff]``);
* ``"julia"``: DifferentialEquations.jl through juliacall (needs a local Julia);
* ``"auto"``: ``"torch"`` for a problem on a CUDA device, else ``"julia"`` when a local Julia is found (no
  network), else ``"scipy"``.

The default (``backend=None``, e.g. ``IntegratorSpec.backend``) depends on where the problem lives
(:func:`resolve_backend` with ``device``): ``"torch"`` for a problem on a CUDA device (the state never leaves it:
on an H200, float64, the rod flow inside the EoS on torch's dopri5 took 0.61–0.79× (GD) / 0.48–0.49× (Adam)
the wall time of SciPy's DOP853 at the same accuracy), ``"scipy"`` otherwise (on a CPU the torch backend is not
faster).
Without a device, ``None`` is ``"scipy"``.

:func:`takes_tensors` says whether a backend's callables receive torch tensors (``TENSORS = True``).

``get_backend(name)`` returns the callable; :func:`solve` is a one-call convenience.  Importing this
package does not import scikit-sundae or juliacall.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..keys import suggest
from . import scipy_backend, sundials_backend, torch_backend
from .base import BackendUnavailable, Event, EventRecord, FlowProblem, Segment

__all__ = ["BACKENDS", "BACKEND_NAMES", "get_backend", "resolve_backend", "takes_tensors", "methods_of", "check_method", "check_options", "options_of",
           "solve", "julia_available",
           "BackendUnavailable", "Event", "EventRecord", "FlowProblem", "Segment"]

BACKENDS = {"scipy": scipy_backend.integrate_segment, "sundials": sundials_backend.integrate_segment,
            "torch": torch_backend.integrate_segment}
BACKEND_NAMES = ("scipy", "sundials", "julia", "torch", "auto")


def _is_cuda(device) -> bool:
    return device is not None and str(device).startswith("cuda")


def resolve_backend(name, device=None) -> str:
    """The concrete backend name (``"scipy"``, ``"torch"``, ``"sundials"``, ``"julia"``) for ``name`` and a
    problem on ``device`` (a ``torch.device`` or its string; ``None``: unknown, taken as the CPU).

    ``None`` (the default of ``IntegratorSpec.backend``): ``"torch"`` on a CUDA device, else ``"scipy"``.
    ``"auto"``: ``"torch"`` on a CUDA device, else ``"julia"`` when a local Julia can start without any download,
    else ``"scipy"`` (the choice :func:`get_backend` makes). Other names are returned lower-cased. Raises
    ValueError naming an unknown ``name``."""
    if name is None:
        return "torch" if _is_cuda(device) else "scipy"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is unknown; valid backends: {list(BACKEND_NAMES)} or None (torch for "
                         f"a problem on a CUDA device, else scipy)")
    name = name.lower()
    if name != "auto":
        return name
    if _is_cuda(device):
        return "torch"
    from . import julia_probe
    if julia_probe.select_backend("auto") == "julia":
        try:
            _julia_backend()
            return "julia"
        except BackendUnavailable:
            pass
    return "scipy"


def takes_tensors(backend) -> bool:
    """Whether backend ``backend`` (a name or an ``integrate_segment`` callable) passes torch tensors to the
    problem's callables and returns tensors in its :class:`Segment` (it declares ``TENSORS = True``)."""
    fn = get_backend(backend) if isinstance(backend, str) or backend is None else backend
    return bool(getattr(fn, "TENSORS", False))


def _probe_result(res):
    """Normalise a probe's answer (bool, (bool, reason), or an object with ok/available + reason)."""
    if isinstance(res, tuple) and res:
        return bool(res[0]), (str(res[1]) if len(res) > 1 else "")
    for attr in ("ok", "available"):
        if hasattr(res, attr) and not callable(getattr(res, attr)):
            reason = getattr(res, "reason", None) or getattr(res, "message", None) or ""
            return bool(getattr(res, attr)), str(reason)
    return bool(res), ""


def julia_available() -> tuple:
    """``(ok, reason)``: whether the Julia backend can run here, without network and without juliacall.

    Uses ``pyrod.integrate.julia_probe.julia_available()`` when that module exists; otherwise False.
    """
    try:
        probe = importlib.import_module(".julia_probe", __name__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith("julia_probe"):
            return False, "pyrod.integrate.julia_probe is not installed"
        raise
    fn = getattr(probe, "julia_available", None) or getattr(probe, "available", None)
    if fn is None:
        return False, "pyrod.integrate.julia_probe has no julia_available()"
    try:
        return _probe_result(fn())
    except Exception as e:  # a failing probe means "not available", never a crash
        return False, f"Julia probe failed: {type(e).__name__}: {e}"


def _julia_backend():
    try:
        mod = importlib.import_module(".julia_backend", __name__)
    except ModuleNotFoundError as e:
        if e.name and e.name.endswith("julia_backend"):
            raise BackendUnavailable("the 'julia' backend (pyrod.integrate.julia_backend) is not part of this "
                                     "installation; use backend='scipy' or 'sundials'") from None
        raise BackendUnavailable(f"the 'julia' backend cannot be imported: {e}") from None
    fn = getattr(mod, "integrate_segment", None)
    if fn is None:
        raise BackendUnavailable("pyrod.integrate.julia_backend has no integrate_segment")
    return fn


def get_backend(name: str | None = "scipy"):
    """The ``integrate_segment`` callable of backend ``name`` (``"scipy"``, ``"torch"``, ``"sundials"``,
    ``"julia"``, ``"auto"``; ``None``: ``"scipy"``, as :func:`resolve_backend` without a device). Raises ValueError
    for an unknown name and :class:`BackendUnavailable` when the backend cannot run here (the message says how to
    install it)."""
    if name is None:
        name = "scipy"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is unknown; valid backends: {list(BACKEND_NAMES)}")
    name = name.lower()
    if name == "scipy":
        return BACKENDS["scipy"]
    if name == "torch":
        return BACKENDS["torch"]
    if name == "sundials":
        sundials_backend._import_cvode()  # BackendUnavailable with the install hint
        return BACKENDS["sundials"]
    if name == "julia":
        from . import julia_probe
        julia_probe.require_julia()  # BackendUnavailable with the offline recipe, at selection time
        return _julia_backend()
    # auto (no device here: never "torch"): Julia only when it is present and can start without any download
    chosen = resolve_backend("auto")
    return _julia_backend() if chosen == "julia" else BACKENDS[chosen]


def methods_of(backend: str) -> tuple:
    """Valid ``method`` names of ``backend`` (``"auto"``: those of the backend it would pick here)."""
    name = (backend or "scipy").lower()
    if name == "auto":
        from . import julia_probe
        name = julia_probe.select_backend("auto")
    if name == "scipy":
        return scipy_backend.ALL_METHODS
    if name == "torch":
        return torch_backend.METHODS
    if name == "sundials":
        return sundials_backend.METHODS
    if name == "julia":
        from . import julia_backend
        return julia_backend.METHODS
    raise ValueError(f"backend={backend!r} is unknown; valid backends: {list(BACKEND_NAMES)}")


def check_method(backend: str, method) -> None:
    """Raise ValueError naming ``method`` when ``backend`` has no such method (None = the backend's default)."""
    if method is None:
        return
    valid = methods_of(backend)
    if not isinstance(method, str) or method.lower() not in {m.lower() for m in valid}:
        raise ValueError(f"method={method!r} is not a method of backend {backend!r}; valid methods: {list(valid)}")


def options_of(backend: str, method=None) -> dict:
    """``{key: description}`` of the ``FlowProblem.options`` keys ``backend`` accepts (``method="euler"`` of the
    SciPy backend, or ``backend="euler"``: the fixed-step integrator's keys; ``"auto"``: the backend it would pick)."""
    name = (backend or "scipy").lower()
    if name == "auto":
        from . import julia_probe
        name = julia_probe.select_backend("auto")
    if name == "euler" or (name == "scipy" and isinstance(method, str) and method.lower() == "euler"):
        from . import fixed_step
        return dict(fixed_step.OPTIONS)
    if name == "scipy":
        return dict(scipy_backend.OPTIONS)
    if name == "torch":
        return dict(torch_backend.OPTIONS)
    if name == "sundials":
        return dict(sundials_backend.OPTIONS)
    if name == "julia":
        from . import julia_backend
        return dict(julia_backend.OPTIONS)
    raise ValueError(f"backend={backend!r} is unknown; valid backends: {list(BACKEND_NAMES)}")


def check_options(backend: str, options, method=None) -> None:
    """Raise TypeError naming each key of ``options`` that ``backend`` (with ``method``) does not accept, listing
    the valid keys (:func:`options_of`). ``options=None`` or ``{}`` is always valid."""
    if not options:
        return
    if not isinstance(options, dict):
        raise TypeError(f"options={options!r} must be a dict")
    valid = options_of(backend, method)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        what = f"backend {backend!r}" + (f" with method={method!r}" if method is not None else "")
        hint = suggest(unknown[0], valid) if len(unknown) == 1 else ""
        raise TypeError(f"integrator option(s) {unknown} are not accepted by {what}{hint}; valid options: "
                        f"{sorted(valid)}")


def solve(problem: FlowProblem, t0: float, y0, t1: float, t_save=(), backend: str = "scipy") -> Segment:
    """Integrate ``problem`` from ``t0`` to ``t1`` in one segment; states at ``t_save`` (in ``(t0, t1]``).
    A tensor backend (``"torch"``) gets ``y0`` as a tensor (a NumPy ``y0`` becomes float64 on the CPU)."""
    fn = get_backend(backend)
    if getattr(fn, "TENSORS", False):
        import torch
        y0 = y0 if isinstance(y0, torch.Tensor) else torch.as_tensor(np.asarray(y0, dtype=np.float64))
        return fn(problem, float(t0), y0, float(t1), np.asarray(t_save, dtype=np.float64))
    return fn(problem, float(t0), np.asarray(y0, dtype=np.float64), float(t1),
                                np.asarray(t_save, dtype=np.float64))
