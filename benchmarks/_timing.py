"""Shared by the benchmark scripts: run ``pyrod.simulate`` and time each flow run's own work.

A flow run's wall time is the time spent in its ``FlowRun.advance`` (integration + read-out at integer steps), so it
excludes the discrete run that ``simulate`` always carries alongside; the discrete run is timed as a whole run.
"""
from __future__ import annotations

import time
import warnings

import pyrod

_FLOW_TIME: dict = {}


def _timed_advance():
    from pyrod.flows.run import FlowRun
    if getattr(FlowRun.advance, "_timed", False):
        return
    orig = FlowRun.advance

    def advance(self, chunk):
        t0 = time.perf_counter()
        try:
            return orig(self, chunk)
        finally:
            _FLOW_TIME[self.name] = _FLOW_TIME.get(self.name, 0.0) + time.perf_counter() - t0
    advance._timed = True
    FlowRun.advance = advance


def run(prob, opt, steps, runs, restart, **kw):
    """``(tree, wall seconds of the whole simulate, seconds inside the flow runs' advance)``; eigenvalue
    diagnostics off (``eig_every`` longer than the run) so that only the dynamics are timed."""
    _timed_advance()
    _FLOW_TIME.clear()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = pyrod.simulate(prob, opt, steps=steps, runs=runs, eigs=1, eig_every=10 ** 6, restart_at=restart,
                              progress=False, **kw)
    return tree, time.perf_counter() - t0, sum(_FLOW_TIME.values())
