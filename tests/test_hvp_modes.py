"""The HVP / third-derivative modes of ``Problem`` (``hvp_mode``) against dense autograd, and the identity-keyed
graph cache (no value comparison on a hit)."""
import pytest
import torch

import pyrod
from pyrod.problems.models import MODELS
from pyrod.problems.problem import AUTO_HVP_MODES, HVP_MODES, auto_hvp_mode

MODES = [m for m in HVP_MODES if m != "auto"]


def _data(n, in_shape, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *in_shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(hvp_mode="auto", batch_size=None):
    X, y = _data(12, (5,), 3)
    torch.manual_seed(0)
    net = MODELS["mlp"](in_shape=(5,), out_dim=3, width=6, depth=2, activation="gelu")
    return pyrod.Problem.from_module(net, X, y, "mse", dtype="float64", device="cpu", hvp_mode=hvp_mode,
                                     batch_size=batch_size)


def _cnn(hvp_mode="auto", batch_size=None):
    X, y = _data(6, (2, 6, 6), 3)
    torch.manual_seed(0)
    net = MODELS["cnn"](in_shape=(2, 6, 6), out_dim=3, channels=(2, 3), activation="tanh")
    return pyrod.Problem.from_module(net, X, y, "ce", dtype="float64", device="cpu", hvp_mode=hvp_mode,
                                     batch_size=batch_size)


def _dense_third(p, w):
    """T[i, j, l] = ∂³L / ∂w_i ∂w_j ∂w_l, dense: forward-mode Jacobian of the reverse-mode dense Hessian
    (``torch.func.jacfwd(jacrev(jacrev(L)))``; no mode's code path)."""
    jr = torch.func.jacrev
    return torch.func.jacfwd(jr(jr(p.loss_fn)))(w)


@pytest.mark.parametrize("make", [_mlp, _cnn], ids=["mlp", "cnn"])
def test_every_mode_matches_dense_hessian_and_third_derivative(make):
    base = make()
    torch.manual_seed(1)
    w = base.w0 + 0.1 * torch.randn(base.dim, dtype=torch.float64)
    H = torch.autograd.functional.hessian(base.loss_fn, w)
    T = _dense_third(base, w)
    assert base.dim < 150 and H.abs().max() > 1e-3 and T.abs().max() > 1e-3
    V = torch.randn(base.dim, 4, dtype=torch.float64)
    U = torch.randn(base.dim, 4, dtype=torch.float64)
    d3_dense = torch.einsum("ijl,im,jm->lm", T, U, V)            # column m: ∇_w (u_mᵀ H v_m)
    scale_h, scale_t = float((H @ V).abs().max()), float(d3_dense.abs().max())
    for mode in MODES:
        p = make(hvp_mode=mode)
        assert p.hvp_mode == mode
        assert float((p.hvp(w, V) - H @ V).abs().max()) <= 1e-12 * scale_h, mode
        assert float((p.hvp(w, V[:, 1]) - H @ V[:, 1]).abs().max()) <= 1e-12 * scale_h, mode
        assert float((p.hvp(w, V[:, :1]) - H @ V[:, :1]).abs().max()) <= 1e-12 * scale_h, mode
        assert float((p.d3(w, U, V) - d3_dense).abs().max()) <= 1e-11 * scale_t, mode
        assert float((p.d3(w, U[:, 2], V[:, 2]) - d3_dense[:, 2]).abs().max()) <= 1e-11 * scale_t, mode
        assert p.hvp(w, V[:, :0]).shape == (p.dim, 0) and p.d3(w, U[:, :0], V[:, :0]).shape == (p.dim, 0)
        assert (p._hcache.entry is None) == (mode == "forward")   # only the graph modes keep a graph
    # finite differences of uᵀ H(w) v along e (independent of every derivative code path but the HVP)
    e = torch.randn(base.dim, dtype=torch.float64)
    h = 1e-4
    fd = (U[:, 0] @ base.hvp(w + h * e, V[:, 0]) - U[:, 0] @ base.hvp(w - h * e, V[:, 0])) / (2 * h)
    assert abs(float(fd - e @ d3_dense[:, 0])) <= 1e-6 * max(1.0, abs(float(fd)))


def test_micro_batched_forward_equals_full_batch_graph():
    full, mb = _mlp(hvp_mode="graph"), _mlp(batch_size=5)
    assert mb.batches and mb.hvp_mode == "auto" and mb._mode("hvp_block") == "forward"
    w = full.w0 + 0.05
    V = torch.randn(full.dim, 3, dtype=torch.float64)
    U = torch.randn(full.dim, 3, dtype=torch.float64)
    assert torch.allclose(mb.hvp(w, V), full.hvp(w, V), rtol=1e-10, atol=1e-13)
    assert torch.allclose(mb.d3(w, U, V), full.d3(w, U, V), rtol=1e-9, atol=1e-13)
    assert mb._hcache.entry is None
    explicit = _mlp(hvp_mode="forward", batch_size=5)
    assert torch.equal(explicit.hvp(w, V), mb.hvp(w, V))


def test_batched_mode_falls_back_to_the_loop_when_autograd_cannot_batch(monkeypatch):
    p = _mlp(hvp_mode="batched")
    w = p.w0
    V = torch.randn(p.dim, 3, dtype=torch.float64)
    want = _mlp(hvp_mode="graph").hvp(w, V)
    real = torch.autograd.grad
    calls = []

    def grad(*a, **kw):
        calls.append(kw.get("is_grads_batched", False))
        if kw.get("is_grads_batched"):
            raise RuntimeError("no batching rule for this op (simulated)")
        return real(*a, **kw)

    monkeypatch.setattr(torch.autograd, "grad", grad)
    assert torch.allclose(p.hvp(w, V), want, rtol=1e-12, atol=1e-14)
    assert calls.count(True) == 1 and calls.count(False) >= 3       # tried once batched, then one per column


def test_hvp_mode_is_validated_and_recorded():
    with pytest.raises(ValueError, match="hvp_mode='fast' is unknown"):
        _mlp(hvp_mode="fast")
    with pytest.raises(ValueError, match="hvp_mode=3 is unknown"):
        pyrod.Problem(loss_fn=lambda w: (w ** 2).sum(), w0=torch.zeros(3, dtype=torch.float64), hvp_mode=3)
    for mode in ("graph", "batched"):
        with pytest.raises(ValueError, match=f"hvp_mode='{mode}'.*batch_size=5"):
            _mlp(hvp_mode=mode, batch_size=5)
    assert _mlp(hvp_mode="graph", batch_size=100).hvp_mode == "graph"     # one batch: nothing is split
    with pytest.raises(ValueError, match="hvp_mode='Graph' is unknown"):
        pyrod.problem(model="mlp", n=20, device="cpu", hvp_mode="Graph")
    p = pyrod.problem(model="mlp", n=20, device="cpu", model_kwargs={"width": 4}, hvp_mode="forward")
    assert p.hvp_mode == "forward" and p.config["hvp_mode"] == "forward"
    assert pyrod.problem(**p.replay_config()).hvp_mode == "forward"
    q = pyrod.problem(model="mlp", n=20, device="cpu", model_kwargs={"width": 4})
    assert q.hvp_mode == "auto" and "hvp_mode" not in q.config              # default: configs unchanged
    toy = pyrod.problem(toy="quadratic", device="cpu", hvp_mode="batched")
    assert toy.hvp_mode == "batched" and toy.config["hvp_mode"] == "batched"
    f = pyrod.Problem.from_factory("factories:mlp_regression", hvp_mode="forward")     # (model, X, Y, loss)
    assert f.hvp_mode == "forward" and f.config["hvp_mode"] == "forward"
    assert pyrod.problem(**f.replay_config()).hvp_mode == "forward"
    g = pyrod.Problem.from_factory("factories:named_problem", hvp_mode="batched")      # a ready Problem
    assert g.hvp_mode == "batched" and g.config["hvp_mode"] == "batched"
    assert "hvp_mode" not in pyrod.Problem.from_factory("factories:named_problem").config
    with pytest.raises(ValueError, match="hvp_mode='x' is unknown"):
        pyrod.Problem.from_factory("factories:named_problem", hvp_mode="x")


def test_auto_rule_is_a_table_by_device_type(monkeypatch):
    for dev, row in AUTO_HVP_MODES.items():
        assert set(row) == {"hvp", "hvp_block", "d3"} and set(row.values()) <= set(MODES), dev
    assert auto_hvp_mode("cpu", "hvp") == AUTO_HVP_MODES["cpu"]["hvp"]
    assert auto_hvp_mode("mps", "d3") == AUTO_HVP_MODES["cpu"]["d3"]          # unlisted device type: the CPU row
    monkeypatch.setitem(AUTO_HVP_MODES, "cpu", {"hvp": "forward", "hvp_block": "batched", "d3": "forward"})
    p = _mlp()
    assert (p._mode("hvp"), p._mode("hvp_block"), p._mode("d3")) == ("forward", "batched", "forward")
    w = p.w0
    p.hvp(w, torch.randn(p.dim, dtype=torch.float64))
    assert p._hcache.entry is None                    # "forward": no graph built
    p.hvp(w, torch.randn(p.dim, 2, dtype=torch.float64))
    assert p._hcache.entry is not None                # "batched" for blocks: graph built


# ----------------------------------------------------------------------------- identity-keyed graph cache
def test_cache_hit_never_compares_values(monkeypatch):
    p = _mlp(hvp_mode="graph")
    w = p.w0 + 0.1
    V = torch.randn(p.dim, 3, dtype=torch.float64)
    H = torch.autograd.functional.hessian(p.loss_fn, w)
    first = p.hvp(w, V[:, 0])
    entry = p._hcache.entry

    def no_equal(*a, **k):
        raise AssertionError("torch.equal called on the HVP path")

    monkeypatch.setattr(torch, "equal", no_equal)
    assert torch.allclose(p.hvp(w, V), H @ V, rtol=1e-12, atol=1e-14)
    p.d3(w, V, V)
    p.hvp(w.detach(), V[:, 1])                        # same memory, new tensor object: a hit
    p.hvp(w[:], V[:, 2])
    assert p._hcache.entry is entry                   # all at the same point: the graph was never rebuilt
    assert torch.allclose(first, H @ V[:, 0], rtol=1e-12, atol=1e-14)


def test_cache_misses_on_in_place_write_and_on_a_copy(monkeypatch):
    p = _mlp(hvp_mode="graph")
    w = p.w0.clone()
    v = torch.randn(p.dim, dtype=torch.float64)
    p.hvp(w, v)
    entry = p._hcache.entry
    monkeypatch.setattr(torch, "equal", lambda *a, **k: (_ for _ in ()).throw(AssertionError("torch.equal")))
    c = w.clone()                                     # equal values, other memory: a new graph (by design)
    p.hvp(c, v)
    assert p._hcache.entry is not entry
    entry = p._hcache.entry
    c.add_(0.3)                                       # written in place: must not reuse the graph of the old values
    got = p.hvp(c, v)
    assert p._hcache.entry is not entry
    assert torch.allclose(got, torch.autograd.functional.hessian(p.loss_fn, c) @ v, rtol=1e-12, atol=1e-14)
    y = torch.cat([c, torch.zeros(3, dtype=torch.float64)])
    p.hvp(y[:p.dim], v)                               # a view into a state vector
    entry = p._hcache.entry
    y[-1] = 1.0                                       # a write elsewhere in the same base: conservatively a miss
    p.hvp(y[:p.dim], v)
    assert p._hcache.entry is not entry


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: torch.cuda.is_available() is False")
@pytest.mark.parametrize("mode", MODES)
def test_no_device_sync_at_a_cached_point_on_cuda(mode):
    """At a point whose graph is cached (or in "forward" mode, at any point), hvp and d3 queue their kernels without
    synchronising the device (the old value-keyed cache synchronised on every call)."""
    p = pyrod.problem(model="mlp", n=40, dtype="float32", device="cuda", model_kwargs={"width": 16}, hvp_mode=mode)
    w = p.w0 + 0.01
    V = torch.randn(p.dim, 3, device="cuda")
    p.hvp(w, V[:, 0])                                 # builds the graph (a first call may sync: allocator, setup)
    p.hvp(w, V)
    p.d3(w, V, V)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        p.hvp(w, V[:, 1])
        p.hvp(w, V)
        p.d3(w, V, V)
        p.d3(w, V[:, 0], V[:, 1])
        p.d3_pairs(w, V, [0, 0, 1], [0, 1, 1])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_flow_run_hands_equal_numpy_states_over_as_the_same_tensor():
    """A SciPy backend passes the accepted state to on_accept, the divergence check and the next right-hand side as
    separate NumPy arrays: FlowRun._to_torch returns one tensor for them, so the identity-keyed graph cache hits."""
    import types

    import numpy as np

    from pyrod.flows.run import FlowRun
    run = types.SimpleNamespace(problem=types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.float64))
    y = np.linspace(0.0, 1.0, 7)
    a = FlowRun._to_torch(run, y)
    assert FlowRun._to_torch(run, y.copy()) is a                   # equal values, another array: same tensor
    y2 = y.copy()
    y2[3] += 1e-12
    b = FlowRun._to_torch(run, y2)
    assert b is not a and float(b[3]) == y2[3]                     # other values: a new tensor
    assert FlowRun._to_torch(run, y) is not a                      # (the memo holds the last state only)
    c = FlowRun._to_torch(run, y)
    c.add_(1.0)                                                     # a consumer wrote the tensor in place
    d = FlowRun._to_torch(run, y)
    assert d is not c and torch.equal(d, torch.as_tensor(y))        # never handed out with stale values
    y[0] = 5.0                                                      # the caller's array is copied, not aliased
    assert float(d[0]) == 0.0


def test_hvp_modes_benchmark_runs_at_a_tiny_size(capsys):
    """benchmarks/hvp_modes.py end to end on the CPU (tiny sizes): a markdown table with every mode, and the modes'
    results agree (its last column)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import hvp_modes
    hvp_modes.main(["--device", "cpu", "--models", "cnn,ref8", "--n", "4", "--ref-n", "8", "--ks", "1,3", "--pair-ks", "2",
                    "--ms", "2", "--min-time", "0", "--max-reps", "1", "--dtype", "float64"])
    torch.set_num_threads(1)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| model | d | n | grad s | build / grad | op | k | graph | batched | forward |")
    rows = lines[2:]
    assert len(rows) == 2 * 4 and rows[0].startswith("| cnn |") and rows[4].startswith("| ref8 |")
    for row in rows:
        diff = float(row.rstrip(" |").rsplit("|", 1)[1])
        assert diff < 1e-10, row                       # float64: the modes agree to round-off


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: torch.cuda.is_available() is False")
@pytest.mark.parametrize("mode", MODES)
def test_no_device_sync_at_a_new_point_on_cuda(mode):
    """A new point (graph built afresh in the graph modes; a content-equal copy and an in-place write included)
    costs no device synchronisation either, once the first call has set up the device."""
    p = pyrod.problem(model="mlp", n=40, dtype="float32", device="cuda", model_kwargs={"width": 16}, hvp_mode=mode)
    V = torch.randn(p.dim, 3, device="cuda")
    p.hvp(p.w0, V)
    p.d3(p.w0, V, V)
    w = p.w0 + 0.01
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        p.hvp(w, V[:, 0])
        p.hvp(w.clone(), V)
        w.add_(0.01)
        p.d3(w, V, V)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("mode", MODES)
def test_d3_pairs_equals_d3_on_gathered_columns_and_counts_its_passes(mode):
    from pyrod.flows.cost import CountingProblem
    p = _cnn(hvp_mode=mode)
    w = p.w0 + 0.05
    U = torch.randn(p.dim, 3, dtype=torch.float64)
    iu, ju = torch.triu_indices(3, 3)                  # the 6 pairs i ≤ j of a symmetric 3×3 matrix (CPU tensors)
    want = p.d3(w, U[:, iu], U[:, ju])
    view = CountingProblem(p)
    n0 = p.n_hvp
    got = view.d3_pairs(w, U, iu, ju)
    passes = 6 + 3 if mode != "forward" else 2 * 6   # graph: one first pass per distinct column U[:, j]
    assert p.n_hvp - n0 == passes and view.n_hvp == passes
    if mode == "forward":
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)
    else:
        assert torch.equal(got, want)                  # the same backward passes, shared: bit for bit
    some = p.d3_pairs(w, U, [2, 0], (1, 1))                # lists / tuples of ints, unsorted, repeated j
    assert torch.allclose(some, p.d3(w, U[:, [2, 0]], U[:, [1, 1]]), rtol=1e-12, atol=1e-15)
    assert p.d3_pairs(w, U, [], []).shape == (p.dim, 0)
    with pytest.raises(ValueError, match=r"ju has indices \[3\] outside \[0, 3\)"):
        p.d3_pairs(w, U, [0], [3])
    with pytest.raises(ValueError, match="iu and ju must have one length"):
        p.d3_pairs(w, U, [0, 1], [1])
    with pytest.raises(ValueError, match="host"):
        p.d3_pairs(w, U, torch.tensor([0.0]), [1])
    with pytest.raises(ValueError, match=r"U must be a \(d, k\) tensor"):
        p.d3_pairs(w, U[:, 0], [0], [0])
