"""CUDA checks (marker ``cuda``; skipped with the reason where ``torch.cuda.is_available()`` is False).

    python -m pytest tests/test_cuda.py -m "cuda or not cuda" -q      # on a machine with a GPU (~1-2 min)

* every run type (discrete, midpoint, stable, rod, central) on CUDA, float32 and float64, equals the CPU result
  within a stated tolerance (SciPy and torch backends);
* a flow run with no ``backend`` on a CUDA problem uses the torch backend and its per-flow defaults (bosh3 for the
  stable and rod flows, Euler for the central flow);
* the torch backend makes no per-evaluation host copies on CUDA: ``torch.cuda.set_sync_debug_mode("error")`` around
  the step loop, with synchronisation allowed only inside its one per-step transfer (``torch_backend._to_host``);
* the eigen-solver (``pyrod.spectra.top_eigs``) and the SDCP solver work with CUDA tensors; the eigen-solver
  synchronises only inside its one transfer per iteration (``spectra._to_host``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pyrod

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA GPU here: torch.cuda.is_available() is False")]

PROB = {"model": "mlp", "data": "digits", "classes": 3, "n": 60, "seed": 0, "model_kwargs": {"width": 8}}
RUNS = ["discrete", "midpoint", "stable", "rod", "central"]
FLOWS = ("stable", "rod", "central")
# float64: CPU and GPU kernels differ only by reduction order (~1e-15 per op); float32: by ~1e-7 per op,
# amplified over the 16 steps at the edge of stability
TOL = {"float64": 1e-7, "float32": 2e-3}
RTOL = 1e-6        # the flows' integrator tolerance in _run
ADAPTIVE = ("dopri5", "bosh3", "RK45", "RK23", "DOP853")


def _tol(dtype, run, method):
    """float64 flows on an adaptive method: 10·rtol. The step-size controller turns the ~1e-15 round-off
    differences into different accept/reject decisions and step sizes, and two step sequences differ by the
    local error they leave, which the controller keeps at the tolerance scale (measured on an H200: the central
    flow on dopri5 differed by 1.14e-7 relative at rtol 1e-6). Fixed steps (Euler) and the discrete runs do the
    same arithmetic on both devices: round-off only (TOL)."""
    if dtype == "float64" and run in FLOWS and method in ADAPTIVE:
        return max(TOL[dtype], 10 * RTOL)
    return TOL[dtype]


def _run(device, dtype, backend, method):
    prob = pyrod.problem(**PROB, dtype=dtype, device=device)
    return pyrod.simulate(prob, pyrod.optimizers.GD(lr=1.0), steps=16, runs=RUNS, eigs=2, eig_every=4, chunk=8,
                          backend=backend, method=method, substeps=2, rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend,method", [("scipy", "euler"), ("torch", "euler"), ("torch", "dopri5")])
def test_every_run_type_on_cuda_equals_cpu(dtype, backend, method):
    cpu, gpu = _run("cpu", dtype, backend, method), _run("cuda", dtype, backend, method)
    for run in RUNS:
        if run in FLOWS:
            assert gpu[run].ds.attrs["flow_status"] == "ok", (run, gpu[run].ds.attrs["flow_status"])
        for var in ("loss", "grad_norm", "sharpness"):
            if var not in cpu[run].ds:
                continue
            a, b = gpu[run].ds[var].values, cpu[run].ds[var].values
            ok = np.isnan(b)
            assert np.array_equal(np.isnan(a), ok), (run, var)
            scale = np.nanmax(np.abs(b))
            assert np.nanmax(np.abs(a - b)) <= _tol(dtype, run, method) * scale, \
                (run, var, np.nanmax(np.abs(a - b)) / scale)


def test_default_backend_on_cuda_is_torch_with_the_flow_defaults():
    """No backend, no method, no tolerances on a CUDA problem: every flow runs on the torch backend (recorded in
    the group attribute ``backend``), stable and rod with bosh3 at rtol 1e-3 / atol 1e-6, central with Euler ×4,
    each with method_is_flow_default = 1. Their losses are within rtol = 1e-3 (relative to the largest loss) of the
    CPU default run (SciPy: RK23, the same pair, at the same tolerance; Euler, the same arithmetic): two runs at
    rtol 1e-3 each stay within a global error of order rtol of the flow (tests/test_torch_backend.py measured 1e-4
    between them on the CPU)."""
    runs = ["discrete", "stable", "rod", "central"]
    kw = dict(steps=12, runs=runs, eigs=1, eig_every=6, chunk=6)
    gpu = pyrod.simulate(pyrod.problem(**PROB, dtype="float64", device="cuda"), pyrod.optimizers.GD(lr=1.0), **kw)
    cpu = pyrod.simulate(pyrod.problem(**PROB, dtype="float64", device="cpu"), pyrod.optimizers.GD(lr=1.0), **kw)
    for run in ("stable", "rod"):
        a = gpu[run].ds.attrs
        assert (a["backend"], a["method"], a["rtol"], a["atol"], a["method_is_flow_default"]) == \
            ("torch", "bosh3", 1e-3, 1e-6, 1), run
        assert cpu[run].ds.attrs["backend"] == "scipy" and cpu[run].ds.attrs["method"] == "RK23"
    a = gpu["central"].ds.attrs
    assert (a["backend"], a["method"], a["substeps"], a["method_is_flow_default"]) == ("torch", "euler", 4, 1)
    for run in ("stable", "rod", "central"):
        assert gpu[run].ds.attrs["flow_status"] == "ok", (run, gpu[run].ds.attrs["flow_status"])
        x, y = gpu[run].ds.loss.values, cpu[run].ds.loss.values
        assert np.abs(x - y).max() <= 1e-3 * np.abs(y).max(), (run, np.abs(x - y).max() / np.abs(y).max())


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4", "euler"])
def test_torch_backend_makes_no_per_evaluation_sync(monkeypatch, method):
    """A linear system on the GPU: any synchronisation outside the one transfer per step raises."""
    from pyrod.integrate import FlowProblem, torch_backend

    g = torch.Generator().manual_seed(0)
    d = 500
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    A = (Q @ torch.diag(-torch.linspace(0.1, 2.0, d, dtype=torch.float64)) @ Q.T).cuda()
    y0 = torch.randn(d, generator=g, dtype=torch.float64).cuda()
    n_host = [0]
    orig = torch_backend._to_host

    def allowed(x):
        n_host[0] += 1
        torch.cuda.set_sync_debug_mode(0)
        try:
            return orig(x)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    monkeypatch.setattr(torch_backend, "_to_host", allowed)
    fp = FlowProblem(rhs=lambda t, y: A @ y, n=d, method=method, rtol=1e-8, atol=1e-10, max_norm=1e6)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        seg = torch_backend.integrate_segment(fp, 0.0, y0, 5.0, np.arange(1, 11) / 2.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert seg.status == "ok" and seg.y_end.is_cuda and seg.y_save.is_cuda
    assert n_host[0] == seg.n_steps + seg.n_rejected + (2 if method in ("dopri5", "bosh3") else 1)
    exact = torch.linalg.matrix_exp(5.0 * A) @ y0
    assert float(torch.linalg.vector_norm(seg.y_end - exact) / torch.linalg.vector_norm(exact)) < \
        {"dopri5": 1e-6, "bosh3": 1e-6, "rk4": 1e-3, "euler": 0.5}[method]


def test_rod_flow_integration_on_cuda_syncs_once_per_step(monkeypatch):
    """The rod flow through FlowRun on the torch backend: its right-hand side (gradients, optimizer direction) and
    divergence score run without host synchronisation inside the step loop."""
    import pyrod.integrate as integ
    from pyrod.integrate import torch_backend

    orig_host, orig_backend = torch_backend._to_host, integ.BACKENDS["torch"]

    def allowed(x):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return orig_host(x)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def strict(problem, t0, y0, t1, t_save):
        assert y0.is_cuda
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return orig_backend(problem, t0, y0, t1, t_save)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    strict.TENSORS = True
    monkeypatch.setattr(torch_backend, "_to_host", allowed)
    monkeypatch.setitem(integ.BACKENDS, "torch", strict)
    prob = pyrod.problem(**PROB, dtype="float64", device="cuda")
    tree = pyrod.simulate(prob, pyrod.optimizers.Adam(lr=0.02), steps=10, runs=["discrete", "stable", "rod"],
                          eigs=1, eig_every=5, backend="torch")
    assert tree["rod"].ds.attrs["flow_status"] == "ok" and tree["stable"].ds.attrs["flow_status"] == "ok"


def test_auto_backend_picks_torch_on_cuda():
    prob = pyrod.problem(**PROB, dtype="float64", device="cuda")
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), steps=4, runs=["discrete", "rod"], eigs=1, eig_every=2,
                          backend="auto")
    assert tree["rod"].ds.attrs["backend"] == "torch"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_eigs_on_cuda_matches_dense_cpu(dtype):
    from pyrod.spectra import top_eigs

    prob = pyrod.problem(**PROB, dtype="float64", device="cuda")
    w = prob.w0
    H = prob.hessian(w).cpu()
    ref = torch.linalg.eigvalsh(0.5 * (H + H.T)).flip(0)[:3]
    Hd = H.to(device="cuda", dtype=dtype)
    ev, V, rep = top_eigs(lambda X: Hd @ X, H.shape[0], 3, dtype=dtype, device="cuda", tol=1e-6, max_iter=300,
                          block=6)
    assert ev.is_cuda and V.is_cuda and V.shape == (H.shape[0], 3)
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    np.testing.assert_allclose(ev.double().cpu().numpy(), ref.numpy(), rtol=tol)
    # through the problem's own HVPs (the path the runs use)
    ev2, _, _ = top_eigs(lambda X: prob.hvp(w, X), prob.dim, 2, dtype=torch.float64, device="cuda", tol=1e-8)
    np.testing.assert_allclose(ev2.cpu().numpy(), ref[:2].numpy(), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_top_eigs_synchronises_only_in_to_host(monkeypatch, dtype):
    """LOBPCG on a CUDA operator under ``torch.cuda.set_sync_debug_mode("error")``: any synchronisation outside
    ``pyrod.spectra._to_host`` raises. Cold, warm with ``init_AX`` and the dense path; the transfers are
    ``iterations + 2 + checks`` (one per iteration; 1 for dense) and the eigenvalues equal the known spectrum
    (float64: 1e-8 relative, the residual tolerance 1e-6 gives eigenvalue errors ≈ r²·λ/gap; float32: 1e-5, the
    rounding of A and of the float32 HVPs)."""
    from pyrod import spectra

    g = torch.Generator().manual_seed(0)
    n, k = 600, 3
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    e = torch.cat([torch.tensor([10.0, 8.0, 6.0, 5.0, 4.5], dtype=torch.float64),
                   torch.linspace(-3.0, 2.0, n - 5, dtype=torch.float64)])
    A = (Q * e) @ Q.T
    Ad = (0.5 * (A + A.T)).to(device="cuda", dtype=dtype)
    init = (Q[:, :5] + 1e-3 * torch.randn(n, 5, generator=g, dtype=torch.float64)).to(device="cuda", dtype=dtype)
    init_AX = Ad @ init[:, :k]
    n_host = [0]
    orig = spectra._to_host

    def allowed(x):
        n_host[0] += 1
        torch.cuda.set_sync_debug_mode(0)
        try:
            return orig(x)
        finally:
            torch.cuda.set_sync_debug_mode("error")
    monkeypatch.setattr(spectra, "_to_host", allowed)
    cases = {"cold": {}, "warm": {"init": init, "init_AX": init_AX}, "dense": {"block": n // 3}}
    runs = {}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, kw in cases.items():
            before = n_host[0]
            ev, V, rep = spectra.top_eigs(lambda X: Ad @ X, n, k, dtype=dtype, device="cuda", tol=1e-6, **kw)
            runs[name] = (ev, V, rep, n_host[0] - before)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    ref = e[:k].numpy()
    for name, (ev, V, rep, transfers) in runs.items():
        assert ev.is_cuda and V.is_cuda and V.shape == (n, k) and rep.converged, (name, rep)
        assert transfers == rep.n_host == (1 if name == "dense" else rep.iterations + 2 + rep.checks), (name, rep)
        np.testing.assert_allclose(ev.double().cpu().numpy(), ref, rtol=1e-8 if dtype == torch.float64 else 1e-5)
        orth = (V.T @ V).double().cpu() - torch.eye(k, dtype=torch.float64)
        assert float(orth.abs().max()) <= 1e3 * torch.finfo(dtype).eps, name
    assert runs["warm"][2].n_hvp < runs["cold"][2].n_hvp


def test_sdcp_with_cuda_tensors():
    """solve_sdcp given CUDA tensors equals the solution for the same matrices on the CPU (closed form k = 1:
    X = max(0, −A/B))."""
    from pyrod.sdcp import solve_sdcp

    A1, B1 = torch.tensor([[-0.3]], device="cuda"), torch.tensor([[2.0]], device="cuda")
    res = solve_sdcp(A1.double(), B1.double())
    assert abs(float(np.asarray(res.X).reshape(-1)[0]) - 0.15) < 1e-8
    g = torch.Generator().manual_seed(1)
    k = 3
    M = torch.randn(k, k, generator=g, dtype=torch.float64)
    A = -(M @ M.T) - 0.1 * torch.eye(k, dtype=torch.float64)
    Z = torch.randn(k * k, k * k, generator=g, dtype=torch.float64)
    B = Z @ Z.T / (k * k)
    cpu = solve_sdcp(A, B)
    gpu = solve_sdcp(A.cuda(), B.cuda())
    np.testing.assert_allclose(np.asarray(gpu.X), np.asarray(cpu.X), atol=1e-10)


def test_real_cuda_out_of_memory_names_batch_size_and_batch_size_fixes_it(tmp_path):
    """A real CUDA out-of-memory error (this process limited to 1 GiB of the GPU): the run stops with
    pyrod.RunOutOfMemory naming batch_size, the file keeps the steps done; the same run with batch_size fits."""
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 2**30 / total))
    try:
        big = dict(model="mlp", data="synthetic_classification", classes=10, n=20000, data_kwargs={"dim": 2048},
                   model_kwargs={"width": 2048}, device="cuda")
        with pytest.raises(torch.cuda.OutOfMemoryError) as e:
            pyrod.simulate(pyrod.problem(**big), pyrod.optimizers.GD(lr=0.1), steps=4, eigs=1, eig_every=2,
                           chunk=2, path=tmp_path / "oom.nc")
        assert isinstance(e.value, pyrod.simulation.RunOutOfMemory) and "batch_size" in str(e.value), str(e.value)
        if (tmp_path / "oom.nc").exists():     # (out of memory at the first gradient: before the file is made)
            assert pyrod.open(tmp_path / "oom.nc").attrs["pyrod_status"].startswith("failed: RunOutOfMemory")
        torch.cuda.empty_cache()
        tree = pyrod.simulate(pyrod.problem(**big, batch_size=500), pyrod.optimizers.GD(lr=0.1), steps=4, eigs=1,
                              eig_every=2, chunk=2, path=tmp_path / "fits.nc")
        assert tree.attrs["steps_completed"] == 4
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
