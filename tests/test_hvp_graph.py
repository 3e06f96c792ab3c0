"""The cached reverse-over-reverse HVP / third-derivative path of ``Problem`` against the ``torch.func`` path and
dense autograd (closed forms would not exercise the graph cache)."""
import copy
import pickle

import torch

import pyrod


def _problem(batch_size=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
    X = torch.randn(12, 5)
    y = torch.randint(0, 3, (12,))
    return pyrod.Problem.from_module(model, X, y, "mse", dtype="float64", device="cpu", batch_size=batch_size)


def test_hvp_and_d3_match_dense_and_micro_batched_paths():
    p, pb = _problem(), _problem(batch_size=5)     # pb: micro-batches, torch.func path (no graph cache)
    w = p.w0 + 0.1 * torch.randn(p.dim, dtype=torch.float64)
    H = torch.autograd.functional.hessian(p.loss_fn, w)
    V = torch.randn(p.dim, 3, dtype=torch.float64)
    assert torch.allclose(p.hvp(w, V), H @ V, rtol=1e-10, atol=1e-12)
    assert torch.allclose(p.hvp(w, V[:, 0]), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    assert p._hcache.entry is not None                       # the graph is kept for this point
    assert torch.allclose(p.hvp(w.clone(), V), pb.hvp(w, V), rtol=1e-10, atol=1e-12)   # same values: reused
    U = torch.randn(p.dim, 3, dtype=torch.float64)
    T = p.d3(w, U, V)
    Tb = pb.d3(w, U, V)
    assert T.shape == (p.dim, 3)
    assert torch.allclose(T, Tb, rtol=1e-9, atol=1e-12)
    # finite difference of u^T H v along e: (u^T H(w+he) v - u^T H(w-he) v) / 2h = e . d3
    e = torch.randn(p.dim, dtype=torch.float64)
    h = 1e-4
    fd = (U[:, 0] @ p.hvp(w + h * e, V[:, 0]) - U[:, 0] @ p.hvp(w - h * e, V[:, 0])) / (2 * h)
    assert abs(float(fd - e @ T[:, 0])) < 1e-6 * max(1.0, abs(float(fd)))
    assert torch.allclose(p.d3(w, U[:, 1], V[:, 1]), T[:, 1], rtol=1e-12, atol=1e-14)


def test_new_point_rebuilds_and_copies_start_empty():
    p = _problem()
    w1 = p.w0.clone()
    w2 = w1 + 0.5
    v = torch.randn(p.dim, dtype=torch.float64)
    a = p.hvp(w1, v)
    b = p.hvp(w2, v)                       # a different point must not reuse the first graph
    H2 = torch.autograd.functional.hessian(p.loss_fn, w2)
    assert torch.allclose(b, H2 @ v, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(a, b)
    q = copy.deepcopy(p)
    assert q._hcache.entry is None
    r = pickle.loads(pickle.dumps(p._hcache))
    assert r.entry is None


def test_quadratic_toy_has_zero_third_derivative():
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    p = pyrod.Problem(loss_fn=lambda w: 0.5 * w @ A @ w, w0=torch.tensor([1.0, -1.0], dtype=torch.float64))
    w = p.w0
    assert torch.allclose(p.hvp(w, torch.eye(2, dtype=torch.float64)), A)
    assert torch.equal(p.d3(w, torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)),
                       torch.zeros(2, 2, dtype=torch.float64))
