"""The run specification: everything a run needs, as typed, frozen, JSON-able data.

A :class:`RunSpec` describes one call of :func:`pyrod.simulate` completely: the problem (its replay config),
the optimizer (its ``config()``), the runs, the eigen measurement, the integrator, each flow's options, the
events, the stopping rules and the output. It is what is stored in the NetCDF file (root attribute
``pyrod_spec``, JSON), what :func:`pyrod.spec_of` gives back, what a sweep ships to a worker, and what
:func:`pyrod.resume` continues. One time unit = one optimizer step everywhere.

Every section is a frozen dataclass; unknown or misplaced options fail at once, naming the option and the
valid names of the section where it was given (with the closest name when there is one)::

    spec = pyrod.RunSpec(problem={"model": "mlp", "data": "digits", "n": 300},
                         optimizer={"name": "GD", "lr": 0.5}, runs=("discrete", "rod"),
                         stop=pyrod.spec.StopSpec(steps=200))
    spec2 = spec.replace({"optimizer.lr": 0.6, "output.path": "run.nc"})   # dotted keys, a new spec
    pyrod.simulate(spec2)

The keyword form ``pyrod.simulate(problem, optimizer, steps=..., eigs=..., backend=..., bea=...)`` builds the
same object (:func:`spec_from_kwargs`); the table of flat keywords and where each lands is
:data:`FLAT_KEYWORDS`.

Why one module of ~800 lines: the sections, :class:`RunSpec` (whose checks read every section), the checks of
names at every depth and the keyword form that maps onto the sections are one declaration; split, the pieces
would import each other (a cycle the import contracts forbid).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

from .central_options import COUNTER_RATES, CentralOptions  # noqa: F401  (spec.COUNTER_RATES, as before)
from .checks import check_bool as _bool
from .checks import check_float as _float
from .checks import check_int as _int
from .checks import set_frozen as _set
from .keys import SpecError, suggest, unknown
from .run_kinds import BUILTIN_RUNS, flow_names, make_options, run_kind, run_kinds

__all__ = ["RunSpec", "EigSpec", "IntegratorSpec", "StableSpec", "RodSpec", "CentralSpec", "StopSpec",
           "OutputSpec", "MiniBatchSpec", "MINIBATCH_SOURCES", "MEASURE_ON", "SpecError", "spec_from_kwargs", "FLAT_KEYWORDS", "RUN_NAMES", "SPEC_VERSION"]

SPEC_VERSION = 1

#: options added to a section after files were written, with the value that reproduces what the pyrod before them
#: did: a stored spec (``pyrod.resume``, ``pyrod.spec_of``) whose section lacks one gets this value, not today's
#: default (a spec a user writes gets the default)
ADDED_OPTIONS = {("central", "watch_margin"): None}


def stored_spec(d: dict) -> dict:
    """A spec dict read from a file or checkpoint, with :data:`ADDED_OPTIONS` filled in where its section lacks
    them (so a resumed or replayed run goes on as the pyrod that wrote it did)."""
    d = dict(d)
    for (section, name), value in ADDED_OPTIONS.items():
        sec = d.get(section)
        if isinstance(sec, dict) and name not in sec:
            d[section] = {**sec, name: value}
    return d


#: the names of pyrod's own runs (every registered kind is valid: :func:`pyrod.run_kinds.run_names`)
RUN_NAMES = tuple(k.name for k in BUILTIN_RUNS)


# ----------------------------------------------------------------------------------------- value checks
_suggest = suggest


def _unknown(names, valid, where: str):
    raise SpecError(unknown(names, valid, where))


class _Section:
    """Common behaviour of the spec sections: strict construction from dicts, JSON form."""

    _where = "spec"

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise SpecError(f"{cls._where} must be a {cls.__name__} or a dict, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        bad = set(d) - set(valid)
        if bad:
            _unknown(bad, valid, cls._where)
        return cls(**d)

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _plain(v)
        return out


def _plain(v):
    if isinstance(v, _Section):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, float) and v == math.inf:
        return "inf"
    return v


# ----------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class EigSpec(_Section):
    """Eigen measurement of every run: the top eigenvalues of P⁻¹H by warm-started LOBPCG (non-convergence is
    recorded, never silent). The measurement is a read-out, not part of any flow."""

    k: int = 1
    """number of top eigenvalues of P⁻¹H measured (the ``eig`` dimension)"""
    every: int = 10
    """measure every this many optimizer steps (NaN in between; 0: never)"""
    tol: float = 1e-6
    """relative residual at which LOBPCG stops"""
    max_iter: int = 200
    """most LOBPCG iterations per measurement"""
    flow_every: int | None = None
    """the flow runs' own spacing (None: ``every``); measuring flows less often saves its cost (the central flow's
    tracked eigenvalues are recorded every step anyway, in ``critical_sharpness``)"""
    raw: bool = True
    """with a preconditioner, also measure the raw sharpness λmax(H) (a second solve; False: ``sharpness`` is NaN)"""

    _where = "eig"

    def __post_init__(self):
        _set(self, "k", _int("eig", "k", self.k, lo=1))
        _set(self, "every", _int("eig", "every", self.every, lo=0))
        _set(self, "tol", _float("eig", "tol", self.tol, lo=0, hi=1))
        _set(self, "max_iter", _int("eig", "max_iter", self.max_iter, lo=1))
        _set(self, "flow_every", _int("eig", "flow_every", self.flow_every, lo=1, none=True))
        _bool("eig", "raw", self.raw)


@dataclass(frozen=True)
class IntegratorSpec(_Section):
    """How flows are integrated (every flow run of the spec uses it). Each flow group's attributes record the
    backend, method and tolerances used (``backend``, ``method``, ``rtol``, ``atol``, ``method_is_flow_default``)."""

    backend: str | None = None
    """None: torch for a problem on a CUDA device, else scipy; or scipy, torch, sundials, julia, auto (torch on
    CUDA, Julia when a local Julia is found, else SciPy)"""
    method: str | None = None
    """the backend's method; None (and no rtol/atol): each flow's default (stable, rod: RK23 / bosh3 at rtol 1e-3;
    with bea DOP853 / dopri5 at 1e-6; central: Euler with 4 substeps); euler: fixed steps, ``substeps`` per step"""
    rtol: float | None = None
    """relative tolerance of adaptive methods (None: the flow's default with its default method, else 1e-6)"""
    atol: float | None = None
    """absolute tolerance of adaptive methods (None: the flow's default with its default method, else 1e-9)"""
    max_step: float = math.inf
    """largest integration step (optimizer steps)"""
    substeps: int | None = None
    """Euler steps per optimizer step (None: 4); for the central flow also the default relaxation time 1/substeps"""
    min_step: float = 1e-9
    """a flow whose step size stays below min_step·max(1, |t|) for ten steps stops (``flow_status`` says so)"""
    max_rhs_per_unit: int | None = 2000
    """a flow stops when it needs more right-hand sides than this per optimizer step (None: no budget)"""
    options: dict = field(default_factory=dict)
    """the backend's own options, checked against what it accepts (e.g. {"jac": "jvp"} for SciPy's implicit
    methods, {"linsolver": "gmres", "krylov_dim": 30} for SUNDIALS)"""

    _where = "integrator"

    def __post_init__(self):
        if self.backend is not None:
            if not isinstance(self.backend, str):
                raise ValueError(f"integrator.backend={self.backend!r} must be a string or None")
            _set(self, "backend", self.backend.lower())
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"integrator.method={self.method!r} must be a string or None")
        _set(self, "rtol", _float("integrator", "rtol", self.rtol, lo=0, hi=1, none=True))
        _set(self, "atol", _float("integrator", "atol", self.atol, lo=0, hi=1, none=True))
        ms = self.max_step
        if isinstance(ms, str) and ms == "inf":
            ms = math.inf
        _set(self, "max_step", _float("integrator", "max_step", ms, lo=0, allow_inf=True))
        _set(self, "substeps", _int("integrator", "substeps", self.substeps, lo=1, none=True))
        _set(self, "min_step", _float("integrator", "min_step", self.min_step, lo=0, hi=1, open_lo=False))
        _set(self, "max_rhs_per_unit", _int("integrator", "max_rhs_per_unit", self.max_rhs_per_unit, lo=1,
                                            none=True))
        if not isinstance(self.options, dict):
            raise ValueError(f"integrator.options={self.options!r} must be a dict of backend options")
        _set(self, "options", dict(self.options))

    def backend_for(self, device=None) -> str:
        """The concrete backend for a problem on ``device`` (:func:`pyrod.integrate.resolve_backend`)."""
        from . import integrate
        return integrate.resolve_backend(self.backend, device)

    def validate(self, device=None) -> None:
        """Check the backend, method and backend options against what the backend accepts (imports it).

        ``device``: the problem's device, which decides ``backend=None`` (torch on CUDA, else SciPy). Without it,
        ``backend=None`` accepts a method and options that either of SciPy and torch accepts (the flow run checks
        them against the backend it uses)."""
        from . import integrate

        if self.backend is None and device is None:
            candidates = tuple(integrate.default_backends().values())
        else:
            candidates = (self.backend_for(device),)
        errors = []
        for name in candidates:
            try:
                integrate.get_backend(name)
                integrate.check_method(name, self.method)
                integrate.check_options(name, self.options, self.method)
                return
            except (ValueError, TypeError) as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise type(errors[0])(f"integrator with backend=None ({_none_rule(integrate)}): "
                              + "; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class StableSpec(_Section):
    """Stable flow ``dz/dt = D(z; ν, t)``."""

    bea: bool = False
    """add the second-order backward-error correction (exact JVPs)"""

    _where = "stable"

    def __post_init__(self):
        _bool("stable", "bea", self.bea)


@dataclass(frozen=True)
class RodSpec(_Section):
    """Rod flow (endpoint form)."""

    bea: bool = False
    """add the second-order backward-error correction (exact JVPs)"""

    _where = "rod"

    def __post_init__(self):
        _bool("rod", "bea", self.bea)


@dataclass(frozen=True)
class CentralSpec(_Section, CentralOptions):
    """Central flow (docs/central_flows.md). Thresholds are fractions of the stability threshold (effective
    sharpness); the reference implementation's 1.95 and 1.5 are 0.975 and 0.75 here. The fields, defaults and
    checks are :class:`pyrod.central_options.CentralOptions` (declared once, read by the flow too)."""

    _where = "central"


@dataclass(frozen=True)
class StopSpec(_Section):
    """When the run stops (the root attribute ``stop_reason`` says why)."""

    steps: int = 100
    """optimizer steps of the run"""
    loss_target: float | None = None
    """stop when the discrete loss falls to this value"""
    divergence_factor: float = 1e6
    """stop when the loss is not finite or exceeds this × the initial loss (flows: their own loss and state norm)"""

    _where = "stop"

    def __post_init__(self):
        _set(self, "steps", _int("stop", "steps", self.steps, lo=1))
        _set(self, "loss_target", _float("stop", "loss_target", self.loss_target, none=True))
        _set(self, "divergence_factor", _float("stop", "divergence_factor", self.divergence_factor, lo=1))


@dataclass(frozen=True)
class OutputSpec(_Section):
    """Where and how the run is written. Only the latest checkpoint ``PATH.ckpt`` is kept, replaced atomically."""

    path: str | None = None
    """the NetCDF file (None: a temporary file; the result is returned in memory)"""
    overwrite: bool = False
    """replace an existing file (only once the new run has written its header)"""
    chunk: int = 50
    """steps per write and per integration segment of the flows"""
    checkpoint_every: int | None = None
    """save the complete run state to PATH.ckpt every this many steps (at the chunk end at or after each multiple);
    None: at the first chunk end, then at chunk ends at most once a minute; always at the end and on Ctrl-C;
    0: never (no resume)"""
    snapshot_every: int | None = None
    """also store the discrete parameters w every this many steps (variable ``w``)"""

    _where = "output"

    def __post_init__(self):
        import os

        if self.path is not None:
            if not isinstance(self.path, (str, os.PathLike)):
                raise ValueError(f"output.path={self.path!r} must be a path (str) or None")
            p = os.fspath(self.path)
            if p.strip() == "":
                raise ValueError("output.path='' is empty; give a file name such as 'run.nc' (or None)")
            _set(self, "path", p)
        _bool("output", "overwrite", self.overwrite)
        _set(self, "chunk", _int("output", "chunk", self.chunk, lo=1))
        _set(self, "checkpoint_every", _int("output", "checkpoint_every", self.checkpoint_every, lo=0, none=True))
        _set(self, "snapshot_every", _int("output", "snapshot_every", self.snapshot_every, lo=1, none=True))


#: values of ``minibatch.source`` and ``minibatch.measure_on``
MINIBATCH_SOURCES = ("dataset", "stream")
MEASURE_ON = ("heldout", "train")


@dataclass(frozen=True)
class MiniBatchSpec(_Section):
    """Mini-batch training (docs/minibatch.md). ``size=None`` (the default): full batch, and every other option of
    this section must stay at its default."""

    size: int | None = None
    """samples per step (None: full batch; for the gpt model a sample is one window of context tokens)"""
    seed: int = 0
    """the sampling seed (independent of the problem's seed, which fixes the model, the data and the grammar)"""
    source: str = "dataset"
    """"dataset": mini-batches of the problem's own samples in shuffled epochs (every training sample exactly once
    per epoch, no sample twice in a batch); "stream": fresh samples from the data set's generator at every step,
    never reused (zipf_pcfg; pyrod.problems.data.STREAMS)"""
    heldout: int = 0
    """held-out samples, never trained on: "dataset": the last heldout samples of the problem's data (the first
    n − heldout are the training split); "stream": heldout fresh samples from an independent stream (required)"""
    heldout_every: int = 10
    """every this many steps the loss on the held-out split (heldout_loss) and, for "dataset", on the whole
    training split (train_loss)"""
    measure_on: str | None = None
    """where sharpness, preconditioned sharpness, NDS of the update and eigenvalues are measured: "heldout" (a fixed
    held-out batch, the first measure_size held-out samples) or "train" (the whole training split; "dataset" only);
    None: "heldout" when there is a held-out split, else "train"; recorded in the group attribute measured_on"""
    measure_size: int | None = None
    """samples of the fixed held-out measurement batch (None: the whole held-out split)"""
    nds_every: int | None = None
    """the NDS of the update actually taken, ΔwᵀH_MΔw/‖Δw‖² on the measurement set M, every this many steps (None:
    with the eigenvalues, every eig.every; 0: never)"""
    batch_sharpness: int = 0
    """with the eigenvalues (every eig.every steps), the batch sharpness mean_B ⟨g_B, H_B g_B⟩/‖g_B‖² over this
    many fresh mini-batches B of size samples (0: off)"""

    _where = "minibatch"

    def __post_init__(self):
        _set(self, "size", _int("minibatch", "size", self.size, lo=1, none=True))
        _set(self, "seed", _int("minibatch", "seed", self.seed, lo=0))
        if self.source not in MINIBATCH_SOURCES:
            raise ValueError(f"minibatch.source={self.source!r} is not one of {list(MINIBATCH_SOURCES)}")
        _set(self, "heldout", _int("minibatch", "heldout", self.heldout, lo=0))
        _set(self, "heldout_every", _int("minibatch", "heldout_every", self.heldout_every, lo=1))
        if self.measure_on is not None and self.measure_on not in MEASURE_ON:
            raise ValueError(f"minibatch.measure_on={self.measure_on!r} is not one of {list(MEASURE_ON)} or None")
        _set(self, "measure_size", _int("minibatch", "measure_size", self.measure_size, lo=1, none=True))
        _set(self, "nds_every", _int("minibatch", "nds_every", self.nds_every, lo=0, none=True))
        _set(self, "batch_sharpness", _int("minibatch", "batch_sharpness", self.batch_sharpness, lo=0))
        if self.size is None:
            changed = [f.name for f in fields(self) if getattr(self, f.name) != f.default]
            if changed:
                raise SpecError(f"minibatch options {changed} apply to mini-batch runs; set minibatch.size (the "
                                f"samples per step) too, or leave them out for a full-batch run")
            return
        if self.source == "stream" and self.heldout == 0:
            raise ValueError("minibatch.source='stream' needs minibatch.heldout >= 1: a stream has no training set to "
                             "evaluate or measure on, so give a held-out split of that many fresh samples")
        if self.measure_on == "heldout" and self.heldout == 0:
            raise ValueError("minibatch.measure_on='heldout' needs minibatch.heldout >= 1 held-out samples")
        if self.measure_on == "train" and self.source == "stream":
            raise ValueError("minibatch.measure_on='train' needs a finite training set (source='dataset'); a stream "
                             "is measured on a fixed held-out batch (measure_on='heldout')")
        if self.measure_size is not None:
            if self.measured_on != "heldout":
                raise ValueError(f"minibatch.measure_size={self.measure_size} sets the held-out measurement batch; "
                                 f"measurements are on the training split here (measure_on='train' or no held-out "
                                 f"split)")
            if self.measure_size > self.heldout:
                raise ValueError(f"minibatch.measure_size={self.measure_size} is more than the "
                                 f"minibatch.heldout={self.heldout} held-out samples")

    @property
    def active(self) -> bool:
        """Whether this is a mini-batch run (``size`` set)."""
        return self.size is not None

    @property
    def measured_on(self) -> str:
        """``"heldout"`` or ``"train"``: where the measurements are taken (``measure_on`` resolved)."""
        if self.measure_on is not None:
            return self.measure_on
        return "heldout" if self.heldout > 0 else "train"


def _run_options(values) -> dict:
    """``RunSpec.run_options`` checked: each key a registered kind whose options live there (not one of pyrod's
    sections), each value accepted by the kind's options class. Kept as given (plain JSON-able values)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SpecError(f"run_options must be a dict {{run name: {{option: value}}}}, got {type(values).__name__}")
    out = {}
    for name, opts in values.items():
        kind = run_kind(name)
        if kind.section is not None:
            raise SpecError(f"run_options[{name!r}]: the {name!r} run's options are the spec section {kind.section!r}"
                            f" (e.g. {kind.section}={{...}})")
        make_options(kind, opts)
        out[name] = {k: _plain(v) for k, v in opts.items()}
    return out


def _events_tuple(events) -> tuple:
    if not events:
        return ()
    from .flows.events import parse_events

    return tuple(parse_events(events))


@dataclass(frozen=True)
class RunSpec(_Section):
    """One run of :func:`pyrod.simulate`, as data.

    problem : the problem's replay config (``pyrod.problem(**problem)``; ``Problem.replay_config()``), or
        None for a problem given as an object that has no reproducible config (runnable, not replayable).
    optimizer : ``optimizer.config()`` (``{"name": "Adam", "lr": ..., ...}``).
    runs : names of registered run kinds (:mod:`pyrod.run_kinds`): ``discrete``, ``midpoint``, ``stable``, ``rod``,
        ``central``, and any registered with :func:`pyrod.register_run_kind`.
    restart_at : flows start from the discrete state at this step (None: at 0).
    events : flow events (``"eos"``, ``"loss<1e-3"``, ``"divergence"``; ``!`` = terminal; or EventSpec).
    eig, integrator, stable, rod, central, stop, output : the sections above.
    threads : CPU threads of torch for this run (None: one thread for a small problem, every core for a large one,
        torch's own setting when the environment sets ``OMP_NUM_THREADS``; :mod:`pyrod.threads`). Not part of
        the experiment: it changes the speed and the last bits of floating-point sums, never the maths.
    minibatch : the mini-batch section (``minibatch``: full batch
        unless ``minibatch.size`` is set; files written before it existed read as full batch).
    run_options : options of run kinds registered from outside pyrod, ``{run name: {option: value}}`` (checked by
        the kind's options class; pyrod's own runs have their sections). Written to JSON only when not empty.
    """

    problem: dict | None = None
    optimizer: dict = field(default_factory=lambda: {"name": "GD", "lr": 0.1})
    runs: tuple = ("discrete",)
    restart_at: int | None = None
    events: tuple = ()
    eig: EigSpec = field(default_factory=EigSpec)
    integrator: IntegratorSpec = field(default_factory=IntegratorSpec)
    stable: StableSpec = field(default_factory=StableSpec)
    rod: RodSpec = field(default_factory=RodSpec)
    central: CentralSpec = field(default_factory=CentralSpec)
    stop: StopSpec = field(default_factory=StopSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    threads: int | None = None
    minibatch: MiniBatchSpec = field(default_factory=MiniBatchSpec)
    run_options: dict = field(default_factory=dict)

    _where = "RunSpec"
    _sections = {"eig": EigSpec, "integrator": IntegratorSpec, "stable": StableSpec, "rod": RodSpec,
                 "central": CentralSpec, "stop": StopSpec, "output": OutputSpec, "minibatch": MiniBatchSpec}

    def __post_init__(self):
        wrong = name_errors({f.name: getattr(self, f.name) for f in fields(self)})
        if wrong:    # every unknown name at every depth at once, each with the closest valid one
            raise SpecError("; ".join(wrong))
        for name, cls in self._sections.items():
            _set(self, name, cls.from_dict(getattr(self, name)))
        if self.problem is not None and not isinstance(self.problem, dict):
            raise SpecError(f"RunSpec.problem must be a problem config dict or None, got "
                            f"{type(self.problem).__name__} (pyrod.simulate(problem, ...) accepts a Problem)")
        if not isinstance(self.optimizer, dict) or "name" not in self.optimizer:
            raise SpecError(f"RunSpec.optimizer={self.optimizer!r} must be an optimizer config dict with a 'name' "
                            f"(optimizer.config())")
        runs = self.runs
        if isinstance(runs, str):
            runs = (runs,)
        runs = tuple(runs)
        if not runs:
            raise ValueError(f"runs=() is empty; valid names: {[k.name for k in run_kinds()]}")
        for r in runs:
            run_kind(r)     # an unknown name fails here, with the closest registered one
        if len(set(runs)) != len(runs):
            raise ValueError(f"runs={list(runs)!r} lists a run twice")
        _set(self, "runs", runs)
        _set(self, "run_options", _run_options(self.run_options))
        _set(self, "restart_at", _int("RunSpec", "restart_at", self.restart_at, lo=0, none=True))
        if self.restart_at is not None and self.restart_at >= self.stop.steps:
            raise ValueError(f"restart_at={self.restart_at} must be < steps={self.stop.steps}")
        _set(self, "events", _events_tuple(self.events))
        _set(self, "threads", _int("RunSpec", "threads", self.threads, lo=1, none=True))
        if self.events and not self.flows:
            raise SpecError(f"events={[e.name for e in self.events]} apply to flow runs; runs={list(runs)} has none")
        if self.minibatch.batch_sharpness and self.eig.every == 0:
            raise ValueError(f"minibatch.batch_sharpness={self.minibatch.batch_sharpness} is measured with the "
                             f"eigenvalues, every eig.every steps; eig.every=0 measures never: give eig.every >= 1")
        if self.minibatch.active:
            model_runs = [r for r in runs if r != "discrete"]
            if model_runs:
                raise SpecError(f"runs={list(runs)}: {model_runs} model full-batch training (the flows follow the "
                                f"full-batch gradient, the midpoint averages full-batch iterates), so they have no "
                                f"meaning for a mini-batch run (minibatch.size={self.minibatch.size}); pyrod does not "
                                f"approximate them: run them full batch (minibatch.size=None), or the mini-batch run "
                                f"alone (runs=['discrete'])")

    # ------------------------------------------------------------------ views
    @property
    def flows(self) -> tuple:
        """The runs that are flows (integrated with the ``integrator`` section), in the order of ``runs``."""
        return tuple(r for r in self.runs if run_kind(r).flow)

    @property
    def steps(self) -> int:
        return self.stop.steps

    def to_dict(self) -> dict:
        out = super().to_dict()
        if not out["run_options"]:     # files of pyrod's own runs keep the JSON they had before run kinds
            del out["run_options"]
        out["events"] = [{"kind": e.kind, "value": e.value, "terminal": e.terminal} for e in self.events]
        out["spec_version"] = SPEC_VERSION
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_call(cls, problem, optimizer, steps=None, runs=None, **options) -> RunSpec:
        """The spec of the keyword form ``pyrod.simulate(problem, optimizer, steps, runs, **options)``: the one
        conversion of keywords to a spec (``simulate``, ``prepare_flows``, the experiments and ``sweep`` use it).

        ``problem``: a :class:`pyrod.Problem` (its replay config is stored; ``None`` for ``Problem.from_module``) or
        its config dict; ``optimizer``: an optimizer (its ``config()``) or its config dict; ``options``: the flat
        keywords (:data:`FLAT_KEYWORDS`), backend options and whole sections (:func:`spec_from_kwargs`). Misplaced
        options (for a run that is not asked for) are checked separately (:func:`check_placement`)."""
        kw = dict(options)
        if steps is not None:
            kw["steps"] = steps
        if runs is not None:
            kw["runs"] = runs
        prob = problem if problem is None or isinstance(problem, dict) else problem_config(problem)
        opt = optimizer if isinstance(optimizer, dict) else optimizer.config()
        return spec_from_kwargs(prob, opt, kw)

    @classmethod
    def from_dict(cls, d):
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise SpecError(f"a RunSpec must be built from a dict, got {type(d).__name__}")
        d = dict(d)
        v = d.pop("spec_version", SPEC_VERSION)
        if v != SPEC_VERSION:
            raise SpecError(f"spec_version={v!r} is not supported by this pyrod (expects {SPEC_VERSION})")
        wrong = name_errors(d)
        if wrong:
            raise SpecError("; ".join(wrong))
        return super().from_dict(d)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        return cls.from_dict(json.loads(text))

    def replace(self, changes: dict | None = None, **top) -> "RunSpec":
        """A new spec with ``changes`` applied: dotted keys into sections and into the problem/optimizer
        configs (``{"optimizer.lr": 0.1, "problem.seed": 1, "output.path": "b.nc", "stop.steps": 500}``) or
        top-level names as keywords (``runs=("discrete",)``). Unknown keys fail, naming them."""
        d = self.to_dict()
        d.pop("spec_version")
        d.setdefault("run_options", {})
        for key, value in {**(changes or {}), **top}.items():
            parts = str(key).split(".")
            node, where = d, "RunSpec"
            if len(parts) == 3 and parts[0] == "run_options":   # a registered run's option, set for the first time
                d["run_options"].setdefault(parts[1], {})
            for p in parts[:-1]:
                if p not in node or not isinstance(node[p], dict):
                    valid = [k for k, x in node.items() if isinstance(x, dict)]
                    raise SpecError(f"key {key!r}: {where} has no section {p!r}{_suggest(p, valid)}; "
                                    f"sections: {sorted(valid)}")
                node, where = node[p], p
            last = parts[-1]
            free = len(parts) == 2 and parts[0] in ("problem", "optimizer", "run_options") or (
                len(parts) == 3 and parts[0] == "run_options") or (
                len(parts) >= 3 and parts[0] == "integrator" and parts[1] == "options") or (
                len(parts) >= 3 and parts[0] == "problem")
            if last not in node and not free:
                raise SpecError(f"key {key!r}: {where} has no option {last!r}{_suggest(last, node)}; "
                                f"valid names: {sorted(node)}")
            if last == "name" and parts[0] == "optimizer" and len(parts) == 2:
                node.clear()          # a different optimizer: its own defaults, not the old one's fields
            node[last] = _plain(value) if not isinstance(value, _Section) else value.to_dict()
        return RunSpec.from_dict(d)

    def get(self, key: str):
        """The value at a dotted key (``spec.get("optimizer.lr")``)."""
        node = self.to_dict()
        for p in str(key).split("."):
            if not isinstance(node, dict) or p not in node:
                raise SpecError(f"key {key!r} is not in the spec")
            node = node[p]
        return node


def name_errors(d: dict) -> list[str]:
    """Every unknown name in a spec given as a dict (sections may be dicts or sections), at every depth: top-level
    keys, section options, the problem config (keys, model, data set, toy, model and data options), the optimizer
    config (name, options), the integrator's backend, method and backend options, and the events. Each message
    names the key, where it was given and the closest valid name. Values are checked by the sections. Installed
    plug-ins (:mod:`pyrod.plugins`) are loaded, once, before a name is called unknown."""
    from .plugins import load_installed

    out = _name_errors(d)
    if out and load_installed():
        out = _name_errors(d)
    return out


def _name_errors(d: dict) -> list[str]:
    out = []
    top = [f.name for f in fields(RunSpec)]
    msg = unknown(d, top, "RunSpec")
    if msg:
        out.append(msg)
    for name, cls in RunSpec._sections.items():
        v = d.get(name)
        if isinstance(v, dict):
            msg = unknown(v, [f.name for f in fields(cls)], cls._where)
            if msg:
                out.append(msg)
    problem, optimizer = d.get("problem"), d.get("optimizer")
    if isinstance(problem, dict):
        from .problems.registry import check_config
        out += check_config(problem, "problem")
    if isinstance(optimizer, dict) and "name" in optimizer:
        from .optimizers import check_config
        out += check_config(optimizer, "optimizer")
    out += _integrator_name_errors(d.get("integrator"))
    events = d.get("events")
    if events:
        try:
            _events_tuple(events)
        except (TypeError, ValueError) as e:
            out.append(str(e))
    return out


def _none_rule(integrate) -> str:
    """What ``backend=None`` means, from the registry (e.g. "torch for a problem on a CUDA device, else scipy")."""
    d = integrate.default_backends()
    return f"{d['cuda']} for a problem on a CUDA device, else {d['cpu']}" if "cuda" in d else d["cpu"]


def _integrator_name_errors(ig) -> list[str]:
    """Unknown backend, method or backend option names of an integrator section (dict or IntegratorSpec). With
    ``backend=None`` a name is valid when a backend that ``None`` may mean (SciPy or torch) accepts it; "auto" is
    checked when used."""
    if ig is None:
        return []
    get = ig.get if isinstance(ig, dict) else lambda k, default=None: getattr(ig, k, default)
    backend, method, options = get("backend"), get("method"), get("options") or {}
    if backend is None and method is None and not options:
        return []
    from . import integrate

    if backend is not None:
        valid_names = integrate.backend_names()
        if not isinstance(backend, str) or backend.lower() not in valid_names:
            return [f"integrator.backend={backend!r} is not a known backend{suggest(backend, valid_names)};"
                    f" valid names: {list(valid_names)} or None"]
        if backend.lower() == "auto":
            return []
    names = (backend.lower(),) if backend is not None else tuple(integrate.default_backends().values())
    which = f"{names[0]!r}" if backend is not None else " or ".join(map(repr, names)) + " (backend=None)"
    out = []
    if isinstance(method, str):
        methods = [m for b in names for m in integrate.methods_of(b)]
        if method.lower() not in {m.lower() for m in methods}:
            out.append(f"integrator.method={method!r} is not a method of backend {which}"
                       f"{suggest(method, methods)}; valid methods: {sorted(set(methods))}")
    if isinstance(options, dict) and options:
        valid = {k for b in names for k in integrate.options_of(b, method if isinstance(method, str) else None)}
        msg = unknown(options, valid, f"integrator.options of backend {which}")
        if msg:
            out.append(msg)
    return out


# ----------------------------------------------------------------------------------------- keyword form
#: flat keyword of ``pyrod.simulate`` -> dotted place in the spec (``bea`` sets both stable.bea and rod.bea)
FLAT_KEYWORDS = {
    "steps": "stop.steps", "loss_target": "stop.loss_target", "divergence_factor": "stop.divergence_factor",
    "eigs": "eig.k", "eig_every": "eig.every", "eig_tol": "eig.tol", "eig_max_iter": "eig.max_iter",
    "flow_eig_every": "eig.flow_every", "eig_raw": "eig.raw",
    "path": "output.path", "overwrite": "output.overwrite", "chunk": "output.chunk",
    "checkpoint_every": "output.checkpoint_every", "snapshot_every": "output.snapshot_every",
    "backend": "integrator.backend", "method": "integrator.method", "rtol": "integrator.rtol",
    "atol": "integrator.atol", "max_step": "integrator.max_step", "substeps": "integrator.substeps",
    "min_step": "integrator.min_step", "max_rhs_per_unit": "integrator.max_rhs_per_unit",
    "bea": ("stable.bea", "rod.bea"),
    "sdcp_threshold": "central.sdcp_threshold", "track_threshold": "central.track_threshold",
    "tau": "central.tau", "max_track": "central.max_track", "sdcp_tol": "central.sdcp_tol",
    "refresh_tol": "central.refresh_tol", "watch_margin": "central.watch_margin",
    "counter_rate": "central.counter_rate", "third_derivative": "central.third_derivative",
    "tracking_hvp": "central.tracking_hvp",
    "runs": "runs", "restart_at": "restart_at", "events": "events", "threads": "threads",
    "minibatch_size": "minibatch.size", "minibatch_seed": "minibatch.seed", "minibatch_source": "minibatch.source",
    "heldout": "minibatch.heldout", "heldout_every": "minibatch.heldout_every", "measure_on": "minibatch.measure_on",
    "measure_size": "minibatch.measure_size", "nds_every": "minibatch.nds_every",
    "batch_sharpness": "minibatch.batch_sharpness",
}


def backend_option_keywords() -> tuple:
    """Backend options accepted as flat keywords too (they land in ``integrator.options``): every option key of
    every registered backend (:mod:`pyrod.integrate.registry`) that is not itself a flat keyword (``substeps``,
    ``min_step`` are integrator fields)."""
    from . import integrate

    keys: list = []
    for b in integrate.registered_backends().values():
        for opts in (b.options, *b.method_options.values()):
            keys += [k for k in opts if k not in FLAT_KEYWORDS and k not in keys]
    return tuple(keys)


_SECTION_KEYWORDS = tuple(RunSpec._sections)


def problem_config(problem) -> dict | None:
    """The replay config of ``problem`` (``None`` when it has none: ``Problem.from_module``)."""
    replay = getattr(problem, "replay_config", None)
    if replay is not None:
        try:
            return replay()
        except ValueError:
            return None
    return dict(problem.config) if problem.config else None


def spec_from_kwargs(problem_config, optimizer_config, kwargs: dict) -> RunSpec:
    """Build a :class:`RunSpec` from :func:`pyrod.simulate`'s keyword form.

    ``kwargs`` may hold flat keywords (:data:`FLAT_KEYWORDS`, backend options such as ``jac``), whole sections
    (``central=CentralSpec(...)`` or a dict, ``integrator={...}``), or both (a flat keyword wins over the same
    field of a section given as a dict). Unknown keywords fail with the closest valid name.
    """
    sections: dict = {}
    top: dict = {}
    for name in _SECTION_KEYWORDS:
        if name in kwargs:
            v = kwargs[name]
            sections[name] = v.to_dict() if isinstance(v, _Section) else dict(v or {})
    kwargs = dict(kwargs)
    plugin_options = dict(kwargs.pop("run_options", None) or {})
    for kind in run_kinds():    # a registered run's options as a keyword named after it: scaled={"scale": 2}
        if kind.section is None and kind.options is not None and kind.name in kwargs:
            v = kwargs.pop(kind.name)
            plugin_options[kind.name] = ({f.name: getattr(v, f.name) for f in fields(v)}
                                         if isinstance(v, kind.options) else dict(v or {}))
    if plugin_options:
        top["run_options"] = plugin_options
    opts = dict(sections.get("integrator", {}).get("options", {}) or {})
    backend_keywords = backend_option_keywords()
    for key, value in kwargs.items():
        if key in _SECTION_KEYWORDS:
            continue
        if key in backend_keywords:
            opts[key] = value
            continue
        if key not in FLAT_KEYWORDS:
            valid = sorted(set(FLAT_KEYWORDS) | set(_SECTION_KEYWORDS) | set(backend_keywords)
                           | {k.name for k in run_kinds() if k.section is None and k.options is not None})
            raise SpecError(f"unknown option {key!r}{_suggest(key, valid)}; valid keywords of pyrod.simulate: "
                            f"{valid} (central-flow eig_tol/eig_max_iter: central=dict(eig_tol=...))")
        places = FLAT_KEYWORDS[key]
        for place in (places if isinstance(places, tuple) else (places,)):
            if "." in place:
                sec, fld = place.split(".")
                sections.setdefault(sec, {})[fld] = value
            else:
                top[place] = value
    if opts:
        sections.setdefault("integrator", {})["options"] = opts
    try:
        return RunSpec(problem=problem_config, optimizer=optimizer_config, **top, **sections)
    except ValueError as e:   # name the value as the caller wrote it (eigs=0, not eig.k=0)
        msg = str(e)
        for key in kwargs:
            places = FLAT_KEYWORDS.get(key, ())
            for place in (places if isinstance(places, tuple) else (places,)):
                if "." in place and msg.startswith(f"{place}="):
                    raise type(e)(f"{key}={msg[len(place) + 1:]} ({place} of the run spec)") from None
        raise


def sections_used(spec: RunSpec) -> dict:
    """Which sections apply to the runs of ``spec`` (a section set away from its defaults for a run that is
    not asked for is a misplaced option: refused by :func:`check_placement`)."""
    return {"integrator": bool(spec.flows), **{k.section: k.name in spec.runs for k in run_kinds() if k.section}}


def check_placement(spec: RunSpec) -> None:
    """Refuse options given for runs that are not requested (e.g. ``bea=True`` with ``runs=["discrete"]``)."""
    used = sections_used(spec)
    defaults = RunSpec(problem=spec.problem, optimizer=spec.optimizer)
    if spec.stable.bea and spec.rod.bea and "stable" not in spec.flows and "rod" not in spec.flows:
        raise SpecError(f"bea=True applies to the stable and rod flows; runs={list(spec.runs)} has neither "
                        f"(the central flow has no backward-error correction)")
    for name, is_used in used.items():
        if is_used:
            continue
        if name == "integrator" and spec.integrator != defaults.integrator:
            changed = _changed(spec.integrator, defaults.integrator)
            raise SpecError(f"integrator options {changed} apply to flow runs ({', '.join(flow_names())}); "
                            f"runs={list(spec.runs)} has none")
        if name in RunSpec._sections and getattr(spec, name) != getattr(defaults, name):
            changed = _changed(getattr(spec, name), getattr(defaults, name))
            # bea given as a flat keyword sets stable and rod together: fine when either is requested
            if name in ("stable", "rod") and changed == ["bea"] and (
                    "stable" in spec.flows or "rod" in spec.flows):
                continue
            raise SpecError(f"{name} options {changed} apply to the {name!r} run; runs={list(spec.runs)} has no "
                            f"{name!r} run")
    for name in spec.run_options:
        if name not in spec.runs:
            raise SpecError(f"run_options[{name!r}] apply to the {name!r} run; runs={list(spec.runs)} has no "
                            f"{name!r} run")
    if spec.restart_at is not None and not spec.flows:
        raise SpecError(f"restart_at={spec.restart_at} applies to flow runs; runs={list(spec.runs)} has none")


def _changed(a, b) -> list:
    return [f.name for f in fields(a) if getattr(a, f.name) != getattr(b, f.name)]
