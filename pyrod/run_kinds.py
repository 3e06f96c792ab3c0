"""Run kinds: the one registry of what a run of :func:`pyrod.simulate` can be.

A *run kind* is declared once, as a :class:`RunKind`: its name, whether it is a flow (a continuous-time model
integrated with the spec's ``integrator`` section) or a run that follows the discrete trajectory some other way
(``midpoint``), its options and how it is drawn. Everything else derives from the registry: the valid names of
``RunSpec.runs`` and which of them are flows, the options section of each run and the check that options are only
given for runs that are asked for, the ``--runs`` help of the command line, the plots' colours and labels, and how
:func:`pyrod.simulate` builds each run.

Built in: ``discrete`` (the optimizer itself; it leads: every other run follows its trajectory), ``midpoint``,
``stable``, ``rod`` and ``central``. A flow of your own is a :class:`pyrod.flows.FlowModel` subclass (state layout,
initial state, right-hand side, read-outs) plus one call::

    from dataclasses import dataclass
    import pyrod

    @dataclass(frozen=True)
    class ScaledOptions:            # the run's options: a (frozen) dataclass; unknown names are refused
        scale: float = 1.0

    pyrod.register_run_kind(pyrod.RunKind("scaled", "gradient flow at scale × the step size", flow=True,
                                          model=ScaledFlow, options=ScaledOptions))
    pyrod.simulate(problem, pyrod.optimizers.GD(lr=0.1), steps=100, runs=["discrete", "scaled"],
                   scaled={"scale": 0.5}, path="run.nc")

The options of a registered kind are stored in the spec's ``run_options`` (``{"scaled": {"scale": 0.5}}``);
built-in flows keep their own sections (``stable``, ``rod``, ``central``). To replay or resume a file that has a
run of a registered kind, register the kind first (e.g. import the module that registers it): the registry is the
program's, not the file's. docs/architecture.md ("Adding a flow") walks through an example.

This module is standard library only (the command line reads it before any heavy import); models and builders of
the built-in kinds are named as ``"module:attribute"`` strings and imported when a run is built.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .keys import suggest
from .plugins import failure_hint, load_installed, resolve

__all__ = ["Run", "FollowingRun", "RunKind", "register_run_kind", "unregister_run_kind", "run_kind", "is_registered", "run_kinds",
           "run_names", "flow_names", "flow_models", "resolve", "BUILTIN_RUNS"]


@runtime_checkable
class Run(Protocol):
    """What :func:`pyrod.simulate` asks of every run (one NetCDF group each; one time unit = one optimizer step).

    * ``name``: the group's name (the run kind's name);
    * ``variables()``: the group's variables (:class:`pyrod.schema.Var`; first dimension ``t``);
    * ``dims()``: dimensions of its variables besides ``t`` and ``eig``, ``{name: length}`` (central: ``track``);
    * ``attrs()`` / ``final_attrs()``: group attributes written at the start / at the end of the run;
    * ``state_dict()`` / ``load_state_dict(state)``: everything that affects what comes next (called only between
      chunks; saved in the checkpoint, so that :func:`pyrod.resume` continues bit for bit).
    """

    name: str

    def variables(self) -> list: ...

    def dims(self) -> dict: ...

    def attrs(self) -> dict: ...

    def final_attrs(self) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class FollowingRun(Run, Protocol):
    """A run that follows the discrete trajectory: ``advance(chunk)`` consumes a chunk of discrete states
    (:class:`pyrod.runs.discrete.Chunk`, steps ``k0 … k0+n``) and returns its rows ``[(t, {variable: value})]``."""

    def advance(self, chunk) -> list: ...


def _fields_of(options, spec) -> dict:
    """Default ``model_kwargs``: the options' fields as keyword arguments of the model (none without options)."""
    return {} if options is None else {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


@dataclass(frozen=True)
class RunKind:
    """One kind of run, declared once.

    name : the run's name in ``RunSpec.runs`` and its NetCDF group.
    summary : one line for ``--help``, the docs and error messages.
    flow : a flow: ``model`` (a :class:`pyrod.flows.FlowModel` subclass, or ``"module:Class"``) is built as
        ``model(problem, optimizer, **model_kwargs(options, spec))`` and integrated by
        :class:`pyrod.flows.FlowRun` with the spec's ``integrator`` section, ``events`` and ``restart_at``.
    build : a run that is not a flow: ``build(problem, optimizer, measurer, spec)`` (or ``"module:function"``)
        returns a :class:`FollowingRun`.
    options : the run's options, a dataclass (frozen) whose ``__post_init__`` checks values; None: no options.
    section : the ``RunSpec`` field that holds the options (the built-in flows' ``stable``, ``rod``, ``central``;
        its section class is then the options); None: they live in ``RunSpec.run_options[name]`` (every kind
        registered from outside pyrod).
    model_kwargs : ``(options, spec) -> dict`` of the model's keyword arguments (default: the options' fields).
    check : ``(options, spec) -> None`` (or ``"module:function"``): checks that need more than the options (raise
        ValueError), run when the spec is validated against the problem, before anything is computed or written.
    leads : the run whose trajectory every other run follows (``discrete`` only).
    color, label, linestyle, linewidth : how :mod:`pyrod.plotting` draws it.
    """

    name: str
    summary: str
    flow: bool = False
    model: Any = None
    build: Any = None
    options: type | None = None
    section: str | None = None
    model_kwargs: Callable = _fields_of
    check: Callable | None = None
    leads: bool = False
    color: str | None = None
    label: str | None = None
    linestyle: str = "-"
    linewidth: float = 1.4

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"RunKind name={self.name!r} must be a Python identifier (it names a NetCDF group, a "
                             f"keyword of pyrod.simulate and a spec key)")
        if self.flow and self.model is None:
            raise ValueError(f"RunKind {self.name!r}: a flow needs model= (a pyrod.flows.FlowModel subclass)")
        if not self.flow and not self.leads and self.build is None:
            raise ValueError(f"RunKind {self.name!r}: a run that is not a flow needs build=(problem, optimizer, "
                             f"measurer, spec) -> run")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise ValueError(f"RunKind {self.name!r}: options={self.options!r} must be a dataclass")

    @property
    def origin(self) -> str:
        """The module that defines the kind's model or builder (``"__main__"`` for a script): what has to be
        imported to register it again."""
        obj = self.model if self.flow else self.build
        if isinstance(obj, str):
            return obj.partition(":")[0]
        return getattr(obj, "__module__", None) or "__main__"

    def register(self) -> "RunKind":
        """Register this kind unless it already is (what a plug-in's entry point ``module:KIND`` does)."""
        if _REGISTRY.get(self.name) is not self:
            register_run_kind(self)
        return self

    def model_class(self):
        """The flow's model class (imported when named as ``"module:Class"``)."""
        return resolve(self.model)

    def builder(self):
        """The builder of a run that is not a flow (imported when named as ``"module:function"``)."""
        return resolve(self.build)

    def checker(self):
        """The extra check (imported when named as ``"module:function"``), or None."""
        return resolve(self.check)

    def options_of(self, spec):
        """The options of this run in ``spec`` (an instance of :attr:`options`), or None for a kind without any."""
        if self.section is not None:
            return getattr(spec, self.section)
        if self.options is None:
            return None
        return make_options(self, spec.run_options.get(self.name) or {})


def make_options(kind: RunKind, values: dict):
    """``kind.options(**values)``, refusing unknown names (with the closest valid one) and naming the run in a
    bad value's error."""
    from .keys import SpecError, unknown

    if kind.options is None:
        raise SpecError(f"run {kind.name!r} has no options; got {sorted(values)}")
    if not isinstance(values, dict):
        raise SpecError(f"run_options[{kind.name!r}] must be a dict of options, got {type(values).__name__}")
    valid = [f.name for f in dataclasses.fields(kind.options)]
    msg = unknown(values, valid, f"run_options[{kind.name!r}]")
    if msg:
        raise SpecError(msg)
    try:
        return kind.options(**values)
    except (TypeError, ValueError) as e:
        raise type(e)(f"run_options[{kind.name!r}]: {e}") from None


def _central_kwargs(options, spec) -> dict:
    return options.model_options(spec.integrator.substeps)


_REGISTRY: dict[str, RunKind] = {}

#: the run kinds that ship with pyrod (in this order in help texts and plots)
BUILTIN_RUNS = (
    RunKind("discrete", "the optimizer itself, step by step (every other run follows its trajectory)", leads=True,
            color="k", label="discrete", linewidth=0.9),
    RunKind("midpoint", "the second-order midpoint (w_{k-1} + 2 w_k + w_{k+1})/4 of the discrete run",
            build="pyrod.runs.discrete:MidpointRun.build", color="0.5", label="midpoint"),
    RunKind("stable", "stable flow dz/dt = D(z): the smooth flow of the update", flow=True,
            model="pyrod.flows.models:StableFlow", options=None, section="stable", color="tab:blue",
            label="stable flow", linestyle="--"),
    RunKind("rod", "rod flow: consecutive iterates as the two ends of a rod (explicit, two gradients)", flow=True,
            model="pyrod.flows.models:RodFlow", section="rod", color="tab:red", label="rod flow (centre)"),
    RunKind("central", "central flow: the time-averaged trajectory, oscillation covariance from a complementarity "
            "problem", flow=True, model="pyrod.flows.central:CentralFlow", section="central",
            model_kwargs=_central_kwargs, check="pyrod.flows.central:check_options", color="tab:green", label="central flow",
            linewidth=2.2),
)


def register_run_kind(kind: RunKind, *, replace: bool = False) -> RunKind:
    """Add ``kind`` to the registry (``replace=True``: over a kind of the same name that was registered from
    outside pyrod; the built-in kinds cannot be replaced). Returns ``kind``."""
    if not isinstance(kind, RunKind):
        raise TypeError(f"register_run_kind needs a pyrod.RunKind, got {type(kind).__name__}")
    old = _REGISTRY.get(kind.name)
    if old is not None:
        if old in BUILTIN_RUNS:
            raise ValueError(f"run kind {kind.name!r} is built into pyrod; choose another name")
        if not replace:
            raise ValueError(f"run kind {kind.name!r} is already registered; pass replace=True to replace it")
    if kind.section is not None and kind not in BUILTIN_RUNS:
        raise ValueError(f"RunKind {kind.name!r}: section= is for pyrod's own kinds; the options of a registered "
                         f"kind live in RunSpec.run_options[{kind.name!r}] (leave section=None)")
    if kind.leads and kind not in BUILTIN_RUNS:
        raise ValueError(f"RunKind {kind.name!r}: only the discrete run leads")
    _REGISTRY[kind.name] = kind
    return kind


def unregister_run_kind(name: str) -> None:
    """Remove a kind registered from outside pyrod (for tests and notebooks)."""
    kind = run_kind(name)
    if kind in BUILTIN_RUNS:
        raise ValueError(f"run kind {name!r} is built into pyrod and cannot be removed")
    del _REGISTRY[name]


def _lookup(name) -> RunKind | None:
    """The registered kind called ``name``, after loading the installed plug-ins (once) if it is not; or None."""
    if not isinstance(name, str):
        return None
    kind = _REGISTRY.get(name)
    if kind is None and load_installed():       # installed plug-ins (entry points), loaded once, may provide it
        kind = _REGISTRY.get(name)
    return kind


def is_registered(name: str) -> bool:
    """Whether a kind called ``name`` is registered (installed plug-ins included)."""
    return _lookup(name) is not None


def run_kind(name: str) -> RunKind:
    """The registered kind called ``name``; an unknown name fails with the closest one and the valid names."""
    kind = _lookup(name)
    if kind is None:
        names = run_names()
        raise ValueError(f"run {name!r} is unknown{suggest(name, names)}; valid names: {list(names)} (a run kind "
                         f"from outside pyrod must be registered first, with pyrod.register_run_kind: import the module "
                         f"that registers it, or --plugin MODULE on the command line){failure_hint()}")
    return kind


def run_kinds() -> tuple:
    """Every registered kind, built-in ones first."""
    return tuple(_REGISTRY.values())


def run_names() -> tuple:
    return tuple(_REGISTRY)


def flow_names() -> tuple:
    return tuple(k.name for k in _REGISTRY.values() if k.flow)


def flow_models() -> dict:
    """``{flow name: FlowModel subclass}`` of every registered flow (imports the models)."""
    return {k.name: k.model_class() for k in _REGISTRY.values() if k.flow}


for _kind in BUILTIN_RUNS:
    _REGISTRY[_kind.name] = _kind
del _kind
