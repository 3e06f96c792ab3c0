"""Continuous-time models of the optimizers, derived from their one definition.

* ``stable`` — ``dz/dt = D(z; ν, t)`` (the Euler-inverse of the map), :class:`~.models.StableFlow`;
* ``rod`` — rod flow in endpoint form with a smooth auxiliary ν, :class:`~.models.RodFlow`;
* ``central`` — central flow with the complementarity projection (registered by :mod:`.central`).

``pyrod.simulate(..., runs=[...], backend=, rtol=, atol=, method=, events=, bea=, restart_at=)`` builds them
from its run specification; :func:`prepare_flows` validates flow options the same way without running anything.
"""
from __future__ import annotations

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
    """One flow of a validated run specification; ``build(measurer)`` makes its :class:`FlowRun` (the same way
    ``pyrod.simulate`` does)."""

    name: str
    spec: object       # pyrod.spec.RunSpec
    problem: object
    optimizer: object

    def build(self, measurer):
        from ..simulation import _flow_run
        return _flow_run(self.name, self.spec, self.problem, self.optimizer, measurer)


def prepare_flows(problem, optimizer, flows, *, options: dict | None = None, **kwargs) -> dict:
    """Validate flow options exactly as :func:`pyrod.simulate` does — through the run specification — and return
    ``{name: FlowSpec}`` (nothing is computed).

    ``kwargs``: ``simulate``'s keywords for flows (:data:`pyrod.spec.FLAT_KEYWORDS`: ``backend``, ``method``,
    ``rtol``, ``atol``, ``max_step``, ``substeps``, ``min_step``, ``max_rhs_per_unit``, ``events``, ``bea``,
    ``restart_at``, ``divergence_factor``, the central flow's options, or whole sections such as ``central=``);
    ``options``: the backend's own options (``integrator.options``). An unknown or misplaced option fails with the
    same message as in ``simulate``.
    """
    from ..simulation import _validate
    from ..spec import RunSpec, check_placement

    kw = dict(kwargs)
    if options:
        kw["integrator"] = {**dict(kw.get("integrator") or {}), "options": dict(options)}
    kw.setdefault("steps", (kw.get("restart_at") or 0) + 1)   # the spec needs a length; flows do not use it
    spec = RunSpec.from_call(problem, optimizer, runs=["discrete", *flows], **kw)
    check_placement(spec)
    _validate(spec, problem, optimizer)
    return {name: FlowSpec(name, spec, problem, optimizer) for name in spec.flows}
