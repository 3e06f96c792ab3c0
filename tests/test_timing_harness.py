"""benchmarks/_timing.py, the harness every benchmark times with: per-chunk times and derivative counts of each run,
flow seconds that exclude the discrete run, and the patched methods restored after the block (also on an error)."""
import os
import sys
import time

import pytest
from test_flows import quadratic

import pyrod
from pyrod.flows.run import FlowRun
from pyrod.optimizers import GD
from pyrod.runs.discrete import DiscreteRun

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import _timing  # noqa: E402


def _timed(steps):
    prob = quadratic([3.0, 1.0, 0.5])
    with _timing.chunk_times("cpu") as chunks:
        pyrod.simulate(prob, GD(lr=0.1), steps=steps, runs=["discrete", "rod"], eigs=1, eig_every=10 ** 6,
                       progress=False)
    return prob, chunks


def test_chunk_times_counts_each_runs_own_work_and_restores_the_methods():
    orig = DiscreteRun.run_chunk, FlowRun.advance
    (p6, c6), (p12, c12) = _timed(6), _timed(12)
    assert (DiscreteRun.run_chunk, FlowRun.advance) == orig
    for steps, prob, chunks in ((6, p6, c6), (12, p12, c12)):
        assert chunks.flows == {"rod"} and set(chunks) == {"discrete", "rod"}
        for rows in chunks.values():
            assert sum(r[1] for r in rows) == steps                               # every step in one chunk or another
            assert [r[0] for r in rows] == sorted(r[0] for r in rows)             # in order of their first step
            assert all(r[2] >= 0 for r in rows)
        # the runs' counts are parts of the problem's counters (the rest: set-up and read-out outside the chunks)
        assert sum(r[3] for rows in chunks.values() for r in rows) <= prob.n_grad
        assert sum(r[4] for rows in chunks.values() for r in rows) <= prob.n_hvp
        assert sum(r[3] for r in chunks["rod"]) % 2 == 0                          # the rod flow: gradient pairs
    # GD's discrete run takes one gradient per step: six more steps, six more gradients in its chunks
    grads = {n: sum(r[3] for r in c["discrete"]) for n, c in ((6, c6), (12, c12))}
    assert grads[12] - grads[6] == 6


def test_chunk_times_restores_the_methods_after_an_error():
    orig = DiscreteRun.run_chunk, FlowRun.advance
    with pytest.raises(RuntimeError, match="inside the block"), _timing.chunk_times("cpu"):
        raise RuntimeError("inside the block")
    assert (DiscreteRun.run_chunk, FlowRun.advance) == orig


def test_run_times_the_flows_in_wall_seconds_apart_from_the_discrete_run(monkeypatch):
    orig = DiscreteRun.run_chunk, FlowRun.advance
    slow_advance = FlowRun.advance

    def advance(self, chunk):          # every flow chunk takes at least 20 ms of wall time (and no CPU time)
        time.sleep(0.02)
        return slow_advance(self, chunk)
    monkeypatch.setattr(FlowRun, "advance", advance)
    tree, wall, flow = _timing.run(quadratic([3.0, 1.0, 0.5]), GD(lr=0.1), 6, ["discrete", "rod"], None)
    assert (DiscreteRun.run_chunk, FlowRun.advance) == (orig[0], advance)       # only its own patch undone
    assert 0.02 <= flow < wall                                                   # wall seconds: the sleep counts
    assert "rod" in tree.children and "discrete" in tree.children
