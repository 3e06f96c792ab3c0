"""Shared by the benchmark scripts: run ``pyrod.simulate`` and time each flow run's own work.

A flow run's wall time is the time spent in its ``FlowRun.advance`` (integration + read-out at integer steps), so it
excludes the discrete run that ``simulate`` always carries alongside; the discrete run is timed as a whole run.

:func:`device_clock` and :func:`chunk_times` time chunk by chunk on a device (``gpu.py``, ``vs_reference.py``).
"""
from __future__ import annotations

import contextlib
import time
import warnings

import pyrod


def device_clock(device):
    """A function giving seconds for timing on ``device``: process CPU seconds on the CPU (with one thread, little
    disturbed by other work); wall seconds after ``torch.cuda.synchronize()`` on CUDA."""
    if not str(device).startswith("cuda"):
        return time.process_time
    import torch

    def now():
        torch.cuda.synchronize()
        return time.perf_counter()
    return now


class _Chunks(dict):
    """``{run name: [chunk rows]}`` with ``flows``, the names of the flow runs among them, and ``stats``: for a flow
    whose model keeps counters (``model.stats``, e.g. the central flow's), ``{name: [(k0 + steps, copy of the
    counters at the chunk's end)]}``."""

    def __init__(self):
        super().__init__()
        self.flows = set()
        self.stats = {}


@contextlib.contextmanager
def chunk_times(device, clock=None):
    """Inside the block, every chunk of the discrete run (``DiscreteRun.run_chunk``) and of each flow run
    (``FlowRun.advance``) is timed with ``clock`` (default :func:`device_clock`). Yields ``{run name: [(k0, steps,
    seconds, gradients, HVPs)]}``, one entry per chunk from step ``k0``, with the run's own derivative counts over that
    chunk; its ``flows`` attribute is the set of names timed in ``FlowRun.advance`` and ``stats`` the flow models'
    counters at each chunk end (:class:`_Chunks`). The original methods are back when the block ends, also on an
    error."""
    from pyrod.flows.run import FlowRun
    from pyrod.runs.discrete import DiscreteRun
    now, chunks = clock or device_clock(device), _Chunks()
    orig_chunk, orig_advance = DiscreteRun.run_chunk, FlowRun.advance

    def mark(self):
        return now(), self.problem.n_grad, self.problem.n_hvp

    def record(self, k0, n, t0, g0, h0):
        chunks.setdefault(self.name, []).append((k0, n, now() - t0, self.problem.n_grad - g0,
                                                 self.problem.n_hvp - h0))

    def run_chunk(self, n):
        k0, start = self.state.k, mark(self)
        out = orig_chunk(self, n)
        record(self, k0, out[1].n_steps, *start)
        return out

    def advance(self, ck):
        chunks.flows.add(self.name)
        start = mark(self)
        out = orig_advance(self, ck)
        record(self, ck.k0, ck.n_steps, *start)
        stats = getattr(self.model, "stats", None)
        if isinstance(stats, dict):
            chunks.stats.setdefault(self.name, []).append((ck.k0 + ck.n_steps, dict(stats)))
        return out

    DiscreteRun.run_chunk, FlowRun.advance = run_chunk, advance
    try:
        yield chunks
    finally:
        DiscreteRun.run_chunk, FlowRun.advance = orig_chunk, orig_advance


def run(prob, opt, steps, runs, restart, **kw):
    """``(tree, wall seconds of the whole simulate, wall seconds inside the flow runs' advance)``; eigenvalue
    diagnostics off (``eig_every`` longer than the run) so that only the dynamics are timed."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(), chunk_times("cpu", clock=time.perf_counter) as chunks:
        warnings.simplefilter("ignore")
        tree = pyrod.simulate(prob, opt, steps=steps, runs=runs, eigs=1, eig_every=10 ** 6, restart_at=restart,
                              progress=False, **kw)
    wall = time.perf_counter() - t0
    return tree, wall, sum(row[2] for name in chunks.flows for row in chunks[name])
