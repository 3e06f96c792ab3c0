"""The backend registry: one :class:`Backend` descriptor per integrator backend, looked up by name.

Each backend module declares its descriptor (``BACKEND = Backend(...)``) next to what it describes; the package
registers the built-in ones (:mod:`pyrod.integrate`), and :func:`register_backend` adds one from anywhere (a user's
module, a test). Everything else derives from the descriptors: the valid backend names, each backend's methods and
option keys, which method a flow gets when the user names none (``trait_methods``), whether the backend hands
torch tensors to the flow (``tensors``), which backend ``backend=None`` means on a device (``device_default``),
and the flat keywords of :func:`pyrod.simulate` that are backend options.

Adding a backend: write ``integrate_segment(problem, t0, y0, t1, t_save) -> Segment`` (:mod:`.base`; the shared
step loop in :mod:`.driver` does saves, events, bounds and failures) and register its descriptor
(docs/architecture.md, "Adding an integrator backend").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..keys import suggest

__all__ = ["Backend", "register_backend", "unregister_backend", "backend_named", "registered_backends",
           "check_keys", "FLOW_TRAITS"]

#: what a flow model may ask of a backend's default method (``FlowModel.method_trait``):
#: ``"low_order"``: a cheap low-order adaptive pair (the stable and rod flows at rtol 1e-3: their right-hand side
#: is smooth); ``"fixed_step"``: fixed steps of ``substeps`` per unit time (the central flow, whose right-hand side
#: is not smooth where the critical set changes). A backend that lists no method for a trait runs its own default.
FLOW_TRAITS = ("low_order", "fixed_step")


@dataclass(frozen=True)
class Backend:
    """One integrator backend.

    name : the ``integrator.backend`` value that selects it (lower case).
    integrate_segment : ``(problem, t0, y0, t1, t_save) -> Segment`` (:mod:`pyrod.integrate.base`).
    methods : every ``integrator.method`` it accepts (matched case-insensitively); ``default_method``: the one it
        runs when given ``None``.
    options : ``{key: description}`` of the ``FlowProblem.options`` keys it accepts; ``method_options``:
        ``{method: {key: description}}`` for methods that take other keys (SciPy's ``"euler"``).
    trait_methods : ``{flow trait: method}``: the method a flow with that ``method_trait`` gets when the user
        names neither a method nor tolerances (:data:`FLOW_TRAITS`).
    tensors : the problem's callables get torch tensors on the problem's device (no host copy per evaluation).
    device_default : ``"cpu"`` or ``"cuda"``: ``backend=None`` picks this backend for a problem on that device
        type (at most one backend per device type).
    check_available : ``() -> object`` (the result is ignored), raises :class:`BackendUnavailable` saying how to install what is missing;
        called when the backend is selected. ``None``: always available.
    """

    name: str
    integrate_segment: Callable
    methods: tuple
    default_method: str
    options: Mapping[str, str]
    method_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    trait_methods: Mapping[str, str] = field(default_factory=dict)
    tensors: bool = False
    device_default: str | None = None
    check_available: Callable[[], None] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or self.name != self.name.lower():
            raise ValueError(f"Backend name={self.name!r} must be a non-empty lower-case string")
        if self.default_method not in self.methods:
            raise ValueError(f"Backend {self.name!r}: default_method={self.default_method!r} is not one of its "
                             f"methods {list(self.methods)}")
        for trait, method in self.trait_methods.items():
            if trait not in FLOW_TRAITS:
                raise ValueError(f"Backend {self.name!r}: trait {trait!r} is unknown; valid traits: {FLOW_TRAITS}")
            if method not in self.methods:
                raise ValueError(f"Backend {self.name!r}: trait_methods[{trait!r}]={method!r} is not one of its "
                                 f"methods {list(self.methods)}")
        if self.device_default not in (None, "cpu", "cuda"):
            raise ValueError(f"Backend {self.name!r}: device_default={self.device_default!r} must be None, 'cpu' "
                             f"or 'cuda'")

    def options_for(self, method=None) -> dict:
        """``{key: description}`` of the option keys accepted with ``method`` (None: the default method)."""
        if isinstance(method, str):
            for m, opts in self.method_options.items():
                if m.lower() == method.lower():
                    return dict(opts)
        return dict(self.options)

    def require(self) -> None:
        """Raise :class:`BackendUnavailable` (with how to install it) when this backend cannot run here."""
        if self.check_available is not None:
            self.check_available()


_REGISTRY: dict[str, Backend] = {}
#: callbacks told of every registration (the package keeps ``BACKENDS`` / ``BACKEND_NAMES`` in step)
_LISTENERS: list[Callable[[Backend], None]] = []


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry (``replace=True``: a backend of the same name is replaced). Returns it."""
    if not isinstance(backend, Backend):
        raise TypeError(f"register_backend needs a pyrod.integrate.Backend, got {type(backend).__name__}")
    if backend.name == "auto":
        raise ValueError("backend name 'auto' is reserved (it chooses among the registered backends)")
    if backend.name in _REGISTRY and not replace and _REGISTRY[backend.name] is not backend:
        raise ValueError(f"a backend named {backend.name!r} is already registered (replace=True replaces it)")
    if backend.device_default is not None:
        for other in _REGISTRY.values():
            if other.device_default == backend.device_default and other.name != backend.name:
                raise ValueError(f"backend {backend.name!r}: backend {other.name!r} is already the default on "
                                 f"{backend.device_default!r}")
    _REGISTRY[backend.name] = backend
    for fn in _LISTENERS:
        fn(backend)
    return backend


def unregister_backend(name: str) -> None:
    """Remove a registered backend (tests register toy backends and remove them again)."""
    _REGISTRY.pop(name, None)
    for fn in _LISTENERS:
        fn(None)


def registered_backends() -> dict[str, Backend]:
    """``{name: Backend}`` of every registered backend, in registration order."""
    return dict(_REGISTRY)


def backend_named(name: str) -> Backend:
    """The registered backend ``name`` (case-insensitive); ValueError naming it when there is none."""
    b = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if b is None:
        raise ValueError(f"backend={name!r} is unknown; valid backends: {list(_REGISTRY) + ['auto']}")
    return b


def check_keys(valid, options, what: str) -> None:
    """Raise TypeError naming each key of ``options`` not in ``valid``, with the closest valid key and the list
    (``what`` names who refuses them, e.g. ``"backend 'scipy'"``). ``None`` or ``{}`` is always valid."""
    if not options:
        return
    if not isinstance(options, dict):
        raise TypeError(f"options={options!r} must be a dict")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        hint = suggest(unknown[0], valid) if len(unknown) == 1 else ""
        raise TypeError(f"integrator option(s) {unknown} are not accepted by {what}{hint}; valid options: "
                        f"{sorted(valid)}")

