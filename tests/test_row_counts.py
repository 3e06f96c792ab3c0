"""The flows' per-row work counters ``n_grad`` / ``n_hvp``: each row counts the integration up to the first step
that reached its time plus the read-outs of its chunk so far, not the whole chunk's integration (they used to be
the same for every row of a chunk)."""
from __future__ import annotations

import numpy as np
import pytest
from test_flows import quadratic

import pyrod
from pyrod.run_stops import NotReproducible


def _run(runs, **kw):
    return pyrod.simulate(quadratic([1.0, 0.5, 0.2]), pyrod.optimizers.GD(lr=0.5), steps=20,
                          runs=["discrete", *runs], chunk=10, progress=False, **kw)


def test_fixed_step_rows_count_their_own_step():
    """Euler with 4 substeps: 4 gradients per unit time, plus the read-out's one gradient per row (loss and
    gradient norm), so consecutive rows differ by exactly 5, inside a chunk as across chunks."""
    tree = _run(["stable"], method="euler", substeps=4)
    g = tree["stable"].ds["n_grad"].values
    np.testing.assert_array_equal(np.diff(g), 5.0)
    assert g[-1] == tree["stable"].attrs["n_grad"]          # the last row has the run's whole count


@pytest.mark.parametrize("flow, backend", [("stable", None), ("rod", None), ("central", None), ("rod", "torch"),
                                           ("central", "torch")])
def test_rows_count_up_to_the_run_total(flow, backend):
    """Each flow with its default integrator (adaptive RK23 / bosh3 for stable and rod, Euler for central), on the
    SciPy-based default backend and on the torch backend (whose steps report through its tensor divergence
    score): the counts rise with t, differ between the rows of one chunk, and the last row holds the group
    attributes' totals."""
    tree = _run([flow], eigs=1, **({"backend": backend} if backend else {}))
    ds, attrs = tree[flow].ds, tree[flow].attrs
    for var in ("n_grad", "n_hvp"):
        c = ds[var].values
        assert np.all(np.diff(c) >= 0), (var, c)
        assert c[-1] == attrs[var], (var, c[-1], attrs[var])
    g = ds["n_grad"].values
    # two chunks of 10 rows: between the first and the last row of each, more than its 9 read-outs' gradients (the
    # chunk's integration); the old per-chunk counts differed by exactly those 9
    assert g[9] - g[0] > 9 and g[19] - g[10] > 9, g


def test_rows_after_resume_are_the_same(tmp_path):
    """A run stopped after its first chunk and resumed writes the same counts as one run straight through. (The
    problem is built in memory, so resuming needs it passed again, and says so without it.)"""
    path = tmp_path / "r.nc"
    whole = _run(["rod"])["rod"].ds["n_grad"].values
    pyrod.simulate(quadratic([1.0, 0.5, 0.2]), pyrod.optimizers.GD(lr=0.5), steps=10, runs=["discrete", "rod"],
                   chunk=10, progress=False, path=str(path))
    with pytest.raises(NotReproducible, match=r"built in memory \(Problem\(loss_fn=\.\.\., w0=\.\.\.\)"):
        pyrod.resume(str(path), steps=20, progress=False)
    resumed = pyrod.resume(str(path), steps=20, progress=False, problem=quadratic([1.0, 0.5, 0.2]))
    np.testing.assert_array_equal(resumed["rod"].ds["n_grad"].values, whole)
