"""The flows' per-row work counters ``n_grad`` / ``n_hvp``: each row counts the integration up to the last step
that ended at or before its time plus the read-outs of its chunk so far, not the whole chunk's integration (they
used to be the same for every row of a chunk)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
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


@pytest.mark.filterwarnings("ignore:central flow. SDCP not converged")    # a quadratic has no third derivative
@pytest.mark.parametrize("flow, backend", [("central", None), ("central", "torch"), ("stable", None),
                                           ("stable", "torch")])
def test_work_after_a_step_counts_in_its_row(flow, backend):
    """Inside the EoS (λ = 5 > 2/η = 4) with the ``eos`` event: the central flow's basis checks after each step and
    the event's eigen-solves are done after the step's own right-hand sides; they count in the row of the step,
    and the last row still holds the whole run's counts (the group attributes)."""
    tree = pyrod.simulate(quadratic([5.0, 3.0, 1.0, 0.2]), pyrod.optimizers.GD(lr=0.5), steps=20,
                          runs=["discrete", flow], chunk=10, eigs=1, events=["eos"], progress=False,
                          **({"backend": backend} if backend else {}))
    ds, attrs = tree[flow].ds, tree[flow].attrs
    for var in ("n_grad", "n_hvp"):
        c = ds[var].values
        assert np.all(np.diff(c) >= 0) and c[-1] == attrs[var], (var, c, attrs[var])
        assert len(c) > 11 and c[9] < c[10] < c[-1], (var, c)      # the discrete run diverges after step 18


def test_a_flow_stopped_by_a_terminal_event_inside_a_chunk():
    """The stable flow of GD on a bowl reaches its loss target at t = ln(1500)/0.2 ≈ 36.6, inside the chunk of
    steps 30–39: the rows up to there count up, and the last row written holds the run's counts."""
    prob = pyrod.Problem(loss_fn=lambda w: 0.5 * (w * w).sum(), w0=torch.ones(3, dtype=torch.float64), name="bowl")
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=60, runs=["discrete", "stable"], chunk=10,
                          events=["loss<1e-3!"], progress=False)
    ds, attrs = tree["stable"].ds, tree["stable"].attrs
    assert attrs["flow_status"].startswith("terminal event")
    g = ds["n_grad"].values
    written = np.isfinite(ds["loss"].values)
    assert written[:36].all() and not written[37:].any()
    assert np.all(np.diff(g[written]) > 0) and g[written][-1] == attrs["n_grad"], g


def test_a_backend_that_reports_no_steps_counts_whole_chunks(monkeypatch):
    """Without a step log (a backend that calls no ``on_accept``) each row counts its chunk's whole integration
    and its read-outs so far: rows of a chunk then differ only by their read-outs' one gradient each."""
    from pyrod.integrate import base

    real = base.FlowProblem.__init__

    def no_hook(self, *args, **kw):
        real(self, *args, **kw)
        self.on_accept = None

    monkeypatch.setattr(base.FlowProblem, "__init__", no_hook)
    tree = _run(["stable"], method="euler", substeps=4)
    g = tree["stable"].ds["n_grad"].values
    np.testing.assert_array_equal(np.diff(g[:10]), 1.0)
    np.testing.assert_array_equal(np.diff(g[10:]), 1.0)
    # the stable flow is read half a step on: chunk 1 integrates to t = 9.5 (38 right-hand sides), chunk 2 to 19.5
    assert g[0] == 38 + 1 and g[10] == 78 + 11 and g[-1] == tree["stable"].attrs["n_grad"] == 78 + 20


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


def test_a_step_past_a_rows_time_counts_in_the_next_row():
    """The central flow on an adaptive method asked to land its steps on the integer times only
    (``exact_saves="integers"``, where its read-outs are): the step that passes row k's time k + ½ ends at k + 1 and
    carries row k + 1's read-out (here the λmax measurement of ``eig_every=4`` at k = 4 and 8). That work counts in
    rows 4 and 8, not in rows 3 and 7 (measured, HVPs per row from row 2: 34, 2, 24, 2, 2, 2, 18, 2, 2, 2; the rule
    "the first step that reached the row's time" gave 24 and 18 to rows 3 and 7)."""
    prob = pyrod.problem(model="mlp", data="digits", classes=2, n=40, seed=0, model_kwargs={"width": 8})
    ds = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=12, runs=["discrete", "central"], method="RK45",
                        rtol=1e-4, chunk=12, eigs=1, eig_every=4, exact_saves="integers",
                        progress=False)["central"].ds
    assert np.all(ds["n_critical"].values == 0)
    d = np.diff(ds["n_hvp"].values)                  # d[k - 1]: the work of row k
    assert d[3] >= 10 and d[7] >= 10, d               # rows 4 and 8: the measurement's LOBPCG solve
    assert np.all(d[[2, 4, 5, 6, 8, 9, 10]] <= 4), d  # the other rows: the integer-time check (1 + 1 HVPs)


def test_without_landings_a_read_out_counts_in_the_row_its_step_ends_in():
    """By default an adaptive method's steps land on no integer time: the central flow reads out at the saved
    (interpolated) state of each integer time, in the ``on_accept`` of the step that passed it, so that work counts
    in the row where that step ended, never earlier. The eigen-measurement's own work (the difference between runs
    with ``eig_every=4`` and ``eig_every=0``, never, the flow itself unchanged) is 0 in rows 0–3 and shows from the
    row of the step that passed k = 4 on (measured: the steps end at 0.69, 3.27, 6.28, 9.77, 11.5, so rows 6 and 10
    carry the measurements at 4 and 8, 22 and 16 HVPs)."""
    prob = pyrod.problem(model="mlp", data="digits", classes=2, n=40, seed=0, model_kwargs={"width": 8})
    runs = {every: pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=12, runs=["discrete", "central"],
                                  method="RK45", rtol=1e-4, chunk=12, progress=False, eigs=1,
                                  eig_every=every)["central"]
            for every in (0, 4)}
    plain, measured = runs[0].ds, runs[4].ds
    np.testing.assert_array_equal(plain["predicted_loss"].values, measured["predicted_loss"].values)
    assert np.isfinite(measured["eigs"].values[[4, 8], 0]).all()
    extra = measured["n_hvp"].values - plain["n_hvp"].values          # the measurements' work, cumulative per row
    assert np.all(extra[:4] == 0), extra
    assert np.all(np.diff(extra) >= 0), extra
    jumps = np.flatnonzero(np.diff(extra) > 0) + 1                     # rows where a measurement's work shows
    # the rows of the steps that passed k = 4 and k = 8 (ending at 6.28 and 9.77; landing there would give 4 and 8)
    assert jumps.tolist() == [6, 10], extra
    # the steps did not land on the integer times: fewer right-hand sides than landing there
    landing = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=12, runs=["discrete", "central"],
                             method="RK45", rtol=1e-4, chunk=12, progress=False, exact_saves="integers")["central"]
    assert runs[0].attrs["n_rhs"] < landing.attrs["n_rhs"], (runs[0].attrs["n_rhs"], landing.attrs["n_rhs"])
