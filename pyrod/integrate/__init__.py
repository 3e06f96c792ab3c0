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

Each backend module declares one :class:`Backend` descriptor (``BACKEND``: name, methods, options, the method per
flow trait, tensors, the device it is the default on, availability); this package registers the built-in ones and
only looks things up (:mod:`.registry`). :func:`register_backend` adds a backend from anywhere.

``get_backend(name)`` returns the callable; :func:`solve` is a one-call convenience.  Importing this
package does not import scikit-sundae or juliacall.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import julia_backend, scipy_backend, sundials_backend, torch_backend
from .base import BackendUnavailable, Event, EventRecord, FlowProblem, Segment
from .registry import _LISTENERS as _REGISTRY_LISTENERS
from .registry import Backend, backend_named, check_keys, registered_backends, unregister_backend
from .registry import register_backend as _register

__all__ = ["BACKENDS", "BACKEND_NAMES", "Backend", "register_backend", "unregister_backend", "backend_named",
           "registered_backends", "backend_names", "get_backend", "resolve_backend", "takes_tensors", "methods_of",
           "check_method", "check_options", "options_of", "default_backends", "trait_method",
           "solve", "julia_available",
           "BackendUnavailable", "Event", "EventRecord", "FlowProblem", "Segment"]

#: ``{name: integrate_segment}`` of every registered backend (kept in step with the registry; :func:`get_backend`
#: returns the callable from here, so a test may wrap one with ``monkeypatch.setitem``)
BACKENDS: dict = {}
#: the registered backend names, then "auto" (kept in step with the registry)
BACKEND_NAMES: tuple = ()


def _sync(_backend=None) -> None:
    global BACKEND_NAMES
    regs = registered_backends()
    for name in [n for n in BACKENDS if n not in regs]:
        del BACKENDS[name]
    for name, b in regs.items():
        if name not in BACKENDS or _backend is not None and _backend.name == name:
            BACKENDS[name] = b.integrate_segment
    BACKEND_NAMES = (*regs, "auto")


_REGISTRY_LISTENERS.append(_sync)


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Register an integrator backend (:class:`Backend`); afterwards ``integrator.backend=backend.name`` selects it
    everywhere (spec checks, :func:`pyrod.simulate`, the command line). ``replace=True`` replaces one of the same
    name. Returns ``backend``."""
    return _register(backend, replace=replace)


for _module in (scipy_backend, sundials_backend, julia_backend, torch_backend):
    register_backend(_module.BACKEND)


def backend_names() -> tuple:
    """The valid ``integrator.backend`` values now: every registered backend, then ``"auto"``."""
    return BACKEND_NAMES


def default_backends() -> dict:
    """``{device type: backend name}`` of the backends ``backend=None`` picks (``"cpu"``, ``"cuda"``)."""
    return {b.device_default: n for n, b in registered_backends().items() if b.device_default is not None}


def _is_cuda(device) -> bool:
    return device is not None and str(device).startswith("cuda")


def _unknown(name) -> ValueError:
    return ValueError(f"backend={name!r} is unknown; valid backends: {list(BACKEND_NAMES)}")


def resolve_backend(name, device=None) -> str:
    """The concrete backend name (``"scipy"``, ``"torch"``, ``"sundials"``, ``"julia"``, or a registered one) for
    ``name`` and a problem on ``device`` (a ``torch.device`` or its string; ``None``: unknown, taken as the CPU).

    ``None`` (the default of ``IntegratorSpec.backend``): the backend that is the default on the device's type
    (``device_default``: ``"torch"`` on a CUDA device, else ``"scipy"``).
    ``"auto"``: ``"torch"`` on a CUDA device, else ``"julia"`` when a local Julia can start without any download,
    else ``"scipy"`` (the choice :func:`get_backend` makes). Other names are returned lower-cased. Raises
    ValueError naming an unknown ``name``."""
    defaults = default_backends()
    if name is None:
        return defaults["cuda" if _is_cuda(device) else "cpu"]
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is unknown; valid backends: {list(BACKEND_NAMES)} or None (torch for "
                         f"a problem on a CUDA device, else scipy)")
    name = name.lower()
    if name != "auto":
        return name
    if _is_cuda(device):
        return defaults["cuda"]
    from . import julia_probe
    if julia_probe.select_backend("auto") == "julia":
        try:
            backend_named("julia").require()
            return "julia"
        except BackendUnavailable:
            pass
    return defaults["cpu"]


def takes_tensors(backend) -> bool:
    """Whether backend ``backend`` (a name or an ``integrate_segment`` callable) passes torch tensors to the
    problem's callables and returns tensors in its :class:`Segment` (its descriptor's ``tensors``; a callable:
    its ``TENSORS`` attribute)."""
    if isinstance(backend, str) or backend is None:
        return backend_named(resolve_backend(backend)).tensors
    return bool(getattr(backend, "TENSORS", False))


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


def get_backend(name: str | None = "scipy"):
    """The ``integrate_segment`` callable of backend ``name`` (a registered name or ``"auto"``; ``None``: the CPU
    default, as :func:`resolve_backend` without a device). Raises ValueError for an unknown name and
    :class:`BackendUnavailable` when the backend cannot run here (the message says how to install it)."""
    if name is not None and (not isinstance(name, str) or name.lower() not in BACKEND_NAMES):
        raise _unknown(name)
    chosen = resolve_backend(name)   # auto (no device here: never the CUDA default): Julia only when it can start
    backend_named(chosen).require()
    return BACKENDS[chosen]


def _concrete(backend) -> str:
    """``backend`` (None: the CPU default; "auto": the backend it would pick here, without a device) as a
    registered name; ValueError for an unknown name."""
    name = (backend or default_backends()["cpu"]).lower()
    if name == "auto":
        from . import julia_probe
        name = julia_probe.select_backend("auto")
    if name not in BACKENDS:
        raise _unknown(backend)
    return name


def methods_of(backend: str) -> tuple:
    """Valid ``method`` names of ``backend`` (``"auto"``: those of the backend it would pick here)."""
    return tuple(backend_named(_concrete(backend)).methods)


def trait_method(backend: str, trait: str | None):
    """The method backend ``backend`` runs for a flow with ``method_trait`` ``trait`` when the user names none
    (None: the backend's own default, with the default tolerances)."""
    return backend_named(_concrete(backend)).trait_methods.get(trait) if trait else None


def check_method(backend: str, method) -> None:
    """Raise ValueError naming ``method`` when ``backend`` has no such method (None = the backend's default)."""
    if method is None:
        return
    valid = methods_of(backend)
    if not isinstance(method, str) or method.lower() not in {m.lower() for m in valid}:
        raise ValueError(f"method={method!r} is not a method of backend {backend!r}; valid methods: {list(valid)}")


def options_of(backend: str, method=None) -> dict:
    """``{key: description}`` of the ``FlowProblem.options`` keys ``backend`` accepts with ``method`` (SciPy's
    ``method="euler"``, or ``backend="euler"``: the fixed-step integrator's keys; ``"auto"``: the backend it would
    pick)."""
    if isinstance(backend, str) and backend.lower() == "euler":
        backend, method = "scipy", "euler"
    return backend_named(_concrete(backend)).options_for(method)


def check_options(backend: str, options, method=None) -> None:
    """Raise TypeError naming each key of ``options`` that ``backend`` (with ``method``) does not accept, listing
    the valid keys (:func:`options_of`), and ValueError naming a value of ``exact_saves`` that is not one of
    :data:`pyrod.integrate.driver.EXACT_SAVES`. ``options=None`` or ``{}`` is always valid."""
    if not options:
        return
    if not isinstance(options, dict):
        raise TypeError(f"options={options!r} must be a dict")
    what = f"backend {backend!r}" + (f" with method={method!r}" if method is not None else "")
    check_keys(options_of(backend, method), options, what)
    if "exact_saves" in options:
        from .driver import save_stops
        try:
            save_stops(options, ())
        except ValueError as e:
            raise ValueError(f"{e} ({what})") from None


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
