"""Continuous-time models of the optimizers, derived from their one definition.

* ``stable`` — ``dz/dt = D(z; ν, t)`` (the Euler-inverse of the map), :class:`~.models.StableFlow`;
* ``rod`` — rod flow in endpoint form with a smooth auxiliary ν, :class:`~.models.RodFlow`;
* ``central`` — central flow with the complementarity projection, :class:`~.central.CentralFlow`.

Which flows exist is the run-kind registry's (:mod:`pyrod.run_kinds`; ``run_kinds.flow_models()`` lists their
models).

``pyrod.simulate(..., runs=[...], backend=, rtol=, atol=, method=, events=, bea=, restart_at=)`` builds them
from its run specification; :func:`pyrod.simulation.prepare_flows` validates flow options the same way without
running anything.
"""
from __future__ import annotations

from .events import EventSpec, parse_events
from .models import FlowModel, Layout, RodFlow, StableFlow, bea_correction
from .run import FlowRun

__all__ = ["FlowRun", "FlowModel", "StableFlow", "RodFlow", "Layout",
           "EventSpec", "parse_events", "bea_correction"]


def __getattr__(name):
    if name == "FLOW_RUNS":   # the old table of the built-in flow models; which flows exist is pyrod.run_kinds'
        import warnings

        from .central import CentralFlow
        warnings.warn("pyrod.flows.FLOW_RUNS is replaced by the run-kind registry: pyrod.run_kinds.flow_models()",
                      DeprecationWarning, stacklevel=2)
        return {"stable": StableFlow, "rod": RodFlow, "central": CentralFlow}
    # prepare_flows / FlowSpec moved to pyrod.simulation (they build runs from a spec: the layer above flows);
    # the old names stay as deprecated aliases, resolved on first use so that this package imports nothing above it
    if name in ("prepare_flows", "FlowSpec"):
        import importlib
        import warnings
        warnings.warn(f"pyrod.flows.{name} moved to pyrod.simulation.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("pyrod.simulation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
