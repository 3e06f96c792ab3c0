"""Continuous-time models of the optimizers, derived from their one definition.

* ``stable`` — ``dz/dt = D(z; ν, t)`` (the Euler-inverse of the map), :class:`~.models.StableFlow`;
* ``rod`` — rod flow in endpoint form with a smooth auxiliary ν, :class:`~.models.RodFlow`;
* ``central`` — central flow with the complementarity projection (registered by :mod:`.central`).

``pyrod.simulate(..., runs=[...], backend=, rtol=, atol=, method=, events=, bea=, restart_at=)`` builds
them through :func:`prepare_flows`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .events import EventSpec, parse_events
from .models import FlowModel, Layout, RodFlow, StableFlow, bea_correction
from .run import FlowRun

__all__ = ["FLOW_RUNS", "prepare_flows", "FlowRun", "FlowModel", "StableFlow", "RodFlow", "Layout",
           "EventSpec", "parse_events", "bea_correction"]

#: flow name -> FlowModel subclass
FLOW_RUNS: dict = {"stable": StableFlow, "rod": RodFlow}

try:  # the central flow registers itself when available
    from .central import CentralFlow  # noqa: F401
    FLOW_RUNS["central"] = CentralFlow
except ImportError:  # pragma: no cover
    pass


@dataclass
class FlowSpec:
    """A validated flow configuration; ``build(measurer)`` makes the run object."""

    model_cls: type
    problem: object
    optimizer: object
    options: dict
    model_options: dict

    def build(self, measurer):
        model = self.model_cls(self.problem, self.optimizer, **self.model_options)
        return FlowRun(model, measurer, **self.options)


def prepare_flows(problem, optimizer, flows, *, restart_at=None, backend: str = "scipy", method=None,
                  rtol: float = 1e-6, atol: float = 1e-9, max_step: float = math.inf, events=None,
                  bea: bool = False, divergence_factor: float = 1e6, substeps=None, min_step: float = 1e-9,
                  max_rhs_per_unit: float | None = 2000.0, options: dict | None = None, **model_options) -> dict:
    """Validate flow options (before any work) and return ``{name: FlowSpec}``.

    ``substeps``: Euler steps per unit time for ``method="euler"`` (default 4); for the central flow it also sets
    the default relaxation time ``τ = 1/substeps``. ``options``: backend-specific integrator keys (TypeError for a
    key the backend does not accept, :func:`pyrod.integrate.check_options`). Bounds on the work spent on a
    diverging flow: ``min_step`` (relative step-size floor), ``max_rhs_per_unit`` (right-hand sides per optimizer
    step of progress; None disables) and ``divergence_factor`` (see :class:`FlowRun`). Other keyword options are
    model options: only the central flow has any (:data:`pyrod.flows.central.CENTRAL_OPTIONS`); they are refused
    when no central run is asked for.
    """
    from ..integrate import check_method, check_options, get_backend
    from ..integrate.fixed_step import check_substeps

    if not optimizer.supports_flows:
        raise ValueError(f"optimizer={optimizer.name!r} has no smooth increment D (flows are defined for "
                         f"{sorted(_flow_optimizers())})")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(v, (int, float)) and 0 < v < 1):
            raise ValueError(f"{name}={v!r} must be a number in (0, 1)")
    if not (isinstance(max_step, (int, float)) and max_step > 0):
        raise ValueError(f"max_step={max_step!r} must be > 0")
    if substeps is not None:
        substeps = check_substeps(substeps)
    if not (isinstance(min_step, (int, float)) and not isinstance(min_step, bool) and 0 <= min_step < 1):
        raise ValueError(f"min_step={min_step!r} must be a number in [0, 1) (relative step-size floor)")
    if max_rhs_per_unit is not None and not (isinstance(max_rhs_per_unit, (int, float))
                                             and not isinstance(max_rhs_per_unit, bool) and max_rhs_per_unit > 0):
        raise ValueError(f"max_rhs_per_unit={max_rhs_per_unit!r} must be a positive number or None")
    get_backend(backend)  # raises for unknown / unavailable backends
    check_method(backend, method)
    check_options(backend, options, method)
    specs = parse_events(events)
    if model_options and "central" not in flows:
        raise TypeError(f"unexpected flow options {sorted(model_options)} (central-flow options; runs={list(flows)} "
                        f"has no 'central' run)")
    out = {}
    for name in flows:
        cls = FLOW_RUNS[name]
        if name == "central":
            opts = dict(model_options, bea=bea)
            if substeps is not None:
                opts["substeps"] = substeps
            opts = cls.validate_options(**opts)  # TypeError / ValueError naming the option (bea=True refused)
        else:
            opts = {"bea": bool(bea)}
        run_opts = dict(backend=backend, method=method, rtol=rtol, atol=atol, max_step=max_step, events=specs,
                        restart_at=restart_at, divergence_factor=divergence_factor, min_step=min_step,
                        max_rhs_per_unit=max_rhs_per_unit, options=dict(options or {}))
        if substeps is not None:
            run_opts["substeps"] = substeps
        out[name] = FlowSpec(cls, problem, optimizer, run_opts, opts)
    return out


def _flow_optimizers():
    from .. import optimizers
    return [n for n, c in optimizers.REGISTRY.items() if c.supports_flows]
