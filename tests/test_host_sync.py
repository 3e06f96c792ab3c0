"""The central flow's step loop reads the device only in declared transfers (:mod:`pyrod.host`), on any device.

On the CPU :func:`tests.host_reads.forbid_host_reads` stands in for ``torch.cuda.set_sync_debug_mode("error")``:
every host read of a tensor outside :func:`pyrod.host.to_host` and the torch backend's ``_to_host`` raises. The
CUDA version of the same check is in tests/test_cuda.py. What one accepted Euler step of the central flow reads:

* every step: one transfer, the torch backend's, which also carries the tracking's Rayleigh–Ritz matrices
  (:meth:`~pyrod.flows.central_tracking.SubspaceTracking.probe`); one more when the tracked basis, accurate enough
  on its own at the last check, needs its Davidson expansion after all;
* with two or more critical directions, one more: the k×k SDCP's data (with one, the SDCP is solved on the device);
* at integer times, the read-out's (one) and the eigen-diagnostics' (one per LOBPCG iteration, none when the tracked
  Ritz pairs already meet the tolerance);
* a refresh of the tracked subspace (a warm LOBPCG, when the tracked set grows or shrinks): one per iteration, and
  one for the first Rayleigh–Ritz on the new basis, at the next evaluation.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from host_reads import HostRead, forbid_host_reads  # tests/ is on sys.path (pytest rootdir)

import pyrod
import pyrod.integrate as integ
from pyrod import host, spectra
from pyrod.flows.central import CentralFlow
from pyrod.flows.central_tracking import SubspaceTracking
from pyrod.integrate import torch_backend
from pyrod.optimizers import GD
from pyrod.spectra import hessian_operator, top_eigs

#: the declared transfers: pyrod.host.to_host and the names it is bound to in the modules whose calls are counted
DECLARED = ((host, "to_host"), (torch_backend, "_to_host"), (spectra, "_to_host"))


def _allow_syncs_in_declared_transfers(monkeypatch):
    """Inside the declared transfers the CUDA sync debug mode is lifted (and restored to "error" after)."""
    for owner, name in DECLARED:
        fn = getattr(owner, name)

        def allowed(*a, _fn=fn, **k):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return _fn(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        monkeypatch.setattr(owner, name, allowed)


@contextlib.contextmanager
def _cuda_sync_errors():
    """``torch.cuda.set_sync_debug_mode("error")`` for the block."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _gd_at_eos(monkeypatch, eigs=2, eig_every=1, width=16, steps=30, restart=12, device="cpu", **central):
    """GD at η = 2.2/λ0 on a small digits MLP, discrete + central from ``restart``, the central flow on the torch
    backend (Euler ×4) with every host read outside the declared transfers an error (CPU: :func:`forbid_host_reads`;
    CUDA: the sync debug mode). Returns (tree, log): the log holds, in order, ``("T",)`` per declared transfer,
    ``("accept", t)`` per accepted step, ``("refresh",)``, ``("kc", k)`` per evaluation. ``central``: the central
    flow's options (``third_derivative``, ``tracking_hvp``)."""
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=64, seed=0, device=device,
                         model_kwargs={"width": width, "depth": 2, "activation": "gelu"})
    lam = float(top_eigs(hessian_operator(prob, prob.w0), prob.dim, 1, dtype=prob.dtype, device=device)[0][0])
    log = []
    orig_backend = integ.BACKENDS["torch"]
    for owner, name in DECLARED:
        fn = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _fn=fn, **k: (log.append(("T",)), _fn(*a, **k))[1])
    in_probe = [False]
    probe, expansion = SubspaceTracking.probe, SubspaceTracking._expansion_grams

    def probing(self, *a, **k):
        in_probe[0] = True
        try:
            return probe(self, *a, **k)
        finally:
            in_probe[0] = False

    def expanding(self, *a, **k):
        if not in_probe[0]:
            log.append(("expand",))      # an expansion decided after the step's transfer: a transfer of its own
        return expansion(self, *a, **k)
    monkeypatch.setattr(SubspaceTracking, "probe", probing)
    monkeypatch.setattr(SubspaceTracking, "_expansion_grams", expanding)
    for name, tag in (("on_accept", "accept"), ("_refresh", "refresh"), ("_evaluate", "kc")):
        fn = getattr(CentralFlow, name)

        def wrapped(self, *a, _fn=fn, _tag=tag, **k):
            out = _fn(self, *a, **k)
            log.append((_tag, float(a[0])) if _tag == "accept" else (_tag, out.kc) if _tag == "kc" else (_tag,))
            return out
        monkeypatch.setattr(CentralFlow, name, wrapped)

    def strict(problem, t0, y0, t1, t_save):
        log.append(("segment",))
        guard = _cuda_sync_errors() if device == "cuda" else forbid_host_reads(DECLARED)
        with guard:
            return orig_backend(problem, t0, y0, t1, t_save)
    strict.TENSORS = True
    if device == "cuda":
        _allow_syncs_in_declared_transfers(monkeypatch)
    monkeypatch.setitem(integ.BACKENDS, "torch", strict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = pyrod.simulate(prob, GD(lr=2.2 / lam), steps=steps, runs=["discrete", "central"], eigs=eigs,
                              eig_every=eig_every, restart_at=restart, backend="torch", chunk=6,
                              **central)
    return tree, log


def _per_step(log):
    """Split the log at the accepted steps: [(t, transfers, refreshed, max kc, expansions decided after the step's
    transfer)] for each accepted step that is not the first of an integration segment (what happens between two
    segments, e.g. the discrete run's chunk, is logged too)."""
    out, n, refreshed, kc, late, first = [], 0, False, 0, 0, True
    for entry in log:
        if entry[0] == "segment":
            n, refreshed, kc, late, first = 0, False, 0, 0, True
        elif entry[0] == "T":
            n += 1
        elif entry[0] == "refresh":
            refreshed = True
        elif entry[0] == "kc":
            kc = max(kc, entry[1])
        elif entry[0] == "expand":
            late += 1
        else:
            if not first:
                out.append((entry[1], n, refreshed, kc, late))
            n, refreshed, kc, late, first = 0, False, 0, 0, False
    return out


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU here: torch.cuda.is_available() is False")])]


@pytest.mark.parametrize("central", [{}, {"third_derivative": "difference"},
                                     {"third_derivative": "difference", "tracking_hvp": "difference"}],
                         ids=["autograd", "difference", "difference-tracking"])
@pytest.mark.parametrize("device", DEVICES)
def test_central_flow_reads_the_device_once_per_step(monkeypatch, device, central):
    """Between two integer times (no read-out due) and without a refresh, an accepted step makes exactly one
    transfer with at most one critical direction, two with more (the SDCP's). On CUDA any other synchronisation
    raises (sync debug mode). The same with the third derivatives, and the tracked basis's products, from
    differences of gradients."""
    tree, log = _gd_at_eos(monkeypatch, eig_every=6, device=device, **central)
    assert tree["central"].ds.attrs["flow_status"] == "ok"
    steps = _per_step(log)
    assert len(steps) >= 4 * 15
    assert np.any(tree["central"].ds["n_critical"].values > 0)       # the projection was exercised
    # steps between integer times, not at or right after a refresh (whose new basis has its first Rayleigh–Ritz at
    # the next evaluation, a transfer of its own)
    plain = [(t, n, kc, late) for (t, n, refreshed, kc, late), before in zip(steps[1:], steps[:-1], strict=True)
             if t != round(t) and not refreshed and not before[2]]
    assert len(plain) >= 30
    for t, n, kc, late in plain:
        assert n == 1 + (kc >= 2) + late, (t, n, kc, late)
    # the tracking's expansion rides in the step's transfer on most steps (a late one follows a step whose basis
    # was still accurate on its own and then drifted)
    assert sum(late for *_, late in plain) <= len(plain) // 2


@pytest.mark.parametrize("device", DEVICES)
def test_central_flow_with_eigenvalues_every_step_stays_in_declared_transfers(monkeypatch, device):
    """Eigen-diagnostics every step (the benchmark's setting): still no host read outside the declared transfers
    (the guard would raise), and the integer-time steps add a bounded number of them."""
    tree, log = _gd_at_eos(monkeypatch, eig_every=1, device=device)
    assert tree["central"].ds.attrs["flow_status"] == "ok"
    assert np.isfinite(tree["central"].ds["eigs"].values[12:]).all()
    for t, n, refreshed, _kc, _late in _per_step(log):
        if t == round(t) and not refreshed:
            assert n <= 2 + 1 + 30, (t, n)   # step + SDCP + read-out + at most 30 LOBPCG iterations


def test_forbid_host_reads_catches_implicit_reads():
    """The stand-in catches what synchronises a CUDA device."""
    x = torch.arange(4.0)
    with forbid_host_reads([]):
        for read in (lambda: float(x[0]), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x.cpu(),
                     lambda: x[x > 1], lambda: torch.equal(x, x), lambda: torch.linalg.eigh(torch.eye(2)),
                     lambda: x.sum().item(), lambda: x.numpy()):
            with pytest.raises(HostRead):
                read()
        y = x * 2 + 1                                        # device work is fine
    assert torch.equal(y, torch.tensor([1.0, 3.0, 5.0, 7.0]))
