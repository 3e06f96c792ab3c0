"""Problems: input validation, reproducible custom problems (from_factory, replay_config), micro-batched exact
full-batch values (batch_size).

Tolerances: batched vs unbatched values are the same sums in a different order (float64), so they agree to
rounding: ≤ 1e-12 relative. Replays of a config must be bit-for-bit identical (torch.equal).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jvp

import pyrod
from pyrod.problems import Problem
from pyrod.problems.problem import FROM_MODULE_MESSAGE

F64 = torch.float64


def rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def vec(p, seed, k=None):
    g = torch.Generator().manual_seed(seed)
    shape = (p.dim,) if k is None else (p.dim, k)
    return torch.randn(*shape, generator=g, dtype=p.dtype)


# ============================================================================================ NumPy inputs
def test_numpy_integers_accepted_and_recorded_as_python_ints():
    p = pyrod.problem(model="mlp", data="digits", classes=np.int64(3), n=np.int64(50), seed=np.int64(2),
                      device="cpu", model_kwargs={"width": np.int64(8), "depth": np.int32(1)},
                      batch_size=np.int64(20))
    q = pyrod.problem(model="mlp", data="digits", classes=3, n=50, seed=2, device="cpu",
                      model_kwargs={"width": 8, "depth": 1}, batch_size=20)
    assert p.config == q.config
    assert json.dumps(p.config) == json.dumps(q.config)
    assert all(type(p.config[k]) is int for k in ("classes", "n", "seed", "batch_size"))
    assert torch.equal(p.w0, q.w0) and float(p.loss(p.w0)) == float(q.loss(q.w0))
    # data options and toy options too
    s = pyrod.problem(model="mlp", data="synthetic_classification", classes=3, n=np.int64(30), device="cpu",
                      data_kwargs={"dim": np.int64(4), "std": np.float32(0.5)}, model_kwargs={"width": 4})
    assert s.labels.shape == (30,) and json.dumps(s.config)
    t = pyrod.problem(toy="quadratic", spectrum=np.array([3.0, 1.0]), dim=np.int64(4), seed=np.int64(1))
    assert t.dim == 4 and json.dumps(t.config) and type(t.config["dim"]) is int


@pytest.mark.parametrize("kw,name", [({"n": 2.5}, "n"), ({"classes": True}, "classes"), ({"n": "10"}, "n"),
                                     ({"n": np.float64(10.0)}, "n"), ({"batch_size": 0}, "batch_size"),
                                     ({"batch_size": 3.0}, "batch_size"), ({"batch_size": True}, "batch_size")])
def test_bad_counts_are_named(kw, name):
    with pytest.raises(ValueError) as e:
        pyrod.problem(model="mlp", data="digits", device="cpu", **kw)
    assert str(e.value).startswith(f"{name}=") and repr(list(kw.values())[0]) in str(e.value)
    with pytest.raises(TypeError, match=r"seed=1\.5"):
        pyrod.problem(seed=1.5)


# ============================================================================================ n recorded
def test_n_larger_than_available_records_the_n_used_and_replays():
    with pytest.raises(ValueError, match=r"n=1000: data='digits' has only 720 points of classes 0–3"):
        pyrod.problem(model="mlp", data="digits", classes=4, n=1000, device="cpu", model_kwargs={"width": 8})
    p = pyrod.problem(model="mlp", data="digits", classes=4, device="cpu", model_kwargs={"width": 8})  # default n
    assert p.labels.shape == (720,) and p.config["n"] == 720        # digits has 720 points of classes 0-3
    q = pyrod.problem(**p.replay_config())
    assert torch.equal(q.labels, p.labels) and torch.equal(q.w0, p.w0)
    assert torch.equal(q.outputs(q.w0), p.outputs(p.w0))             # same X (outputs depend on it)
    r = pyrod.problem(model="mlp", data="digits", classes=4, n=100, device="cpu", model_kwargs={"width": 8})
    assert r.config["n"] == 100                                       # enough points: n kept as given
    assert pyrod.problem(model="mlp", data="digits", classes=2, n=None, device="cpu",
                         model_kwargs={"width": 8}).config["n"] is None


# ============================================================================================ from_module
class _Drop(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.1), nn.Tanh(), nn.Linear(6, 2))

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("make,offender", [
    (lambda: _Drop(), "body.1 (Dropout)"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)), "1 (BatchNorm1d)"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.RReLU(), nn.Linear(6, 2)), "1 (RReLU)"),
    (lambda: nn.Sequential(nn.Linear(4, 6), nn.AlphaDropout(0.2), nn.Linear(6, 2)), "1 (AlphaDropout)"),
])
def test_training_mode_batch_dependent_modules_are_refused(make, offender):
    X, Y = torch.randn(10, 4, dtype=F64), torch.randint(0, 2, (10,))
    model = make()
    with pytest.raises(ValueError) as e:
        Problem.from_module(model, X, Y, "ce", device="cpu")
    assert offender in str(e.value) and "model.eval()" in str(e.value)
    p = Problem.from_module(model.eval(), X, Y, "ce", device="cpu")     # eval mode: accepted, deterministic
    assert float(p.loss(p.w0)) == float(p.loss(p.w0))


def test_plain_model_in_training_mode_is_fine():
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2))
    assert model.training
    Problem.from_module(model, torch.randn(8, 4), torch.randint(0, 2, (8,)), device="cpu")


def test_from_module_leaves_the_users_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))       # float32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    p = Problem.from_module(model, torch.randn(8, 4), torch.randint(0, 2, (8,)), dtype="float64", device="cpu")
    assert p.dtype == F64
    assert all(q.dtype == torch.float32 for q in model.parameters())
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(p.w0, torch.cat([t.reshape(-1) for t in before.values()]).double())


# ================================================================================ replay / from_factory
def test_from_module_is_marked_unreproducible():
    model, X, Y, loss = __import__("factories").mlp_regression()
    p = Problem.from_module(model, X, Y, loss, device="cpu")
    with pytest.raises(ValueError) as e:
        p.replay_config()
    assert FROM_MODULE_MESSAGE in str(e.value)
    assert "Problem.from_factory('module:function', ...)" in str(e.value)
    with pytest.raises(ValueError, match="built with Problem.from_module"):
        pyrod.problem(**p.config)                    # the registry's replay path refuses with the same words
    direct = Problem(loss_fn=lambda w: (w ** 2).sum(), w0=torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="from_factory"):
        direct.replay_config()
    named = pyrod.problem(model="mlp", data="digits", classes=3, n=20, device="cpu", model_kwargs={"width": 4})
    assert named.replay_config() == named.config


def _same(p, q, outputs=True):
    assert torch.equal(p.w0, q.w0)
    assert float(p.loss(p.w0)) == float(q.loss(q.w0))
    assert torch.equal(p.grad(p.w0), q.grad(q.w0))
    v = vec(p, 1)
    assert torch.equal(p.hvp(p.w0, v), q.hvp(q.w0, v))
    if outputs and p.output_fn is not None:
        assert torch.equal(p.outputs(p.w0), q.outputs(q.w0)) and torch.equal(p.labels, q.labels)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_factory_tuple_round_trip(batch_size):
    p = Problem.from_factory("factories:mlp_regression", seed=np.int64(3), dims=(3, 2), n=40, device="cpu",
                             batch_size=batch_size)
    cfg = p.replay_config()
    assert cfg == {"factory": "factories:mlp_regression", "kwargs": {"seed": 3, "dims": [3, 2], "n": 40},
                   "dtype": "float64", "batch_size": batch_size}
    q = pyrod.problem(**json.loads(json.dumps(cfg)), device="cpu")
    _same(p, q)
    assert q.config == cfg and q.batch_size == batch_size
    # the factory's arguments are really used
    r = pyrod.problem(**{**cfg, "kwargs": {**cfg["kwargs"], "seed": 4}}, device="cpu")
    assert not torch.equal(r.w0, p.w0)
    f32 = Problem.from_factory("factories:mlp_regression", factory_kwargs={"seed": 3}, dtype="float32", device="cpu")
    assert f32.dtype == torch.float32 and f32.config["dtype"] == "float32"
    assert pyrod.problem(**f32.config, device="cpu").dtype == torch.float32


def test_factory_with_batchnorm_and_returning_a_problem():
    p = Problem.from_factory("factories:bn_classifier", seed=1, device="cpu")
    q = pyrod.problem(**p.replay_config(), device="cpu")
    _same(p, q)
    with pytest.raises(ValueError, match="model.eval()"):
        Problem.from_factory("factories:bn_classifier", eval_mode=False, device="cpu")
    a = Problem.from_factory("factories:named_problem", width=6)
    b = pyrod.problem(**a.replay_config())
    _same(a, b)
    assert a.config["factory"] == "factories:named_problem" and a.config["kwargs"] == {"width": 6}
    with pytest.raises(ValueError, match="dtype='float32'"):
        Problem.from_factory("factories:named_problem", dtype="float32")
    with pytest.raises(ValueError, match="batch_size=5"):
        Problem.from_factory("factories:named_problem", batch_size=5)


@pytest.mark.parametrize("factory,kw,exc,words", [
    ("factories", {}, ValueError, "'package.module:function'"),
    ("no_such_module_xyz:f", {}, ValueError, "cannot import module 'no_such_module_xyz'"),
    ("factories:nope", {}, ValueError, "has no attribute 'nope'"),
    ("factories:not_a_problem", {}, TypeError, "returned int"),
    ("factories:mlp_regression", {"seed": object()}, TypeError, "factory argument seed=object"),
    ("factories:mlp_regression", {"dims": [3, {"a": torch.ones(1)}]}, TypeError, "dims[1]['a']=Tensor"),
    ("factories:mlp_regression", {"n": math.nan}, ValueError, "n=nan"),
])
def test_factory_errors_are_named(factory, kw, exc, words):
    with pytest.raises(exc) as e:
        Problem.from_factory(factory, device="cpu", **kw)
    assert words in str(e.value), str(e.value)


def test_factory_problem_replays_through_simulate(tmp_path):
    p = Problem.from_factory("factories:mlp_regression", seed=2, device="cpu", batch_size=20)
    path = tmp_path / "f.nc"
    tree = pyrod.simulate(p, pyrod.optimizers.GD(lr=0.05), steps=4, runs=["discrete"], eigs=1, eig_every=2,
                          path=path)
    again = pyrod.simulate(**pyrod.config_of(path))
    np.testing.assert_array_equal(again["discrete"].ds["loss"].values, tree["discrete"].ds["loss"].values)


# ================================================================================ micro-batching
def _check_batched_equals_full(full, bat, k=3, tol=1e-12):
    assert bat.batches and not full.batches
    w = full.w0 + 0.3 * vec(full, 7)
    assert rel(bat.loss(w), full.loss(w)) <= tol
    assert rel(bat.grad(w), full.grad(w)) <= tol
    Lb, gb = bat.loss_and_grad(w)
    Lf, gf = full.loss_and_grad(w)
    assert rel(Lb, Lf) <= tol and rel(gb, gf) <= tol
    v, V = vec(full, 8), vec(full, 9, k)
    assert rel(bat.hvp(w, v), full.hvp(w, v)) <= tol
    assert rel(bat.hvp(w, V), full.hvp(w, V)) <= tol
    u, U = vec(full, 10), vec(full, 11, 2)
    assert rel(bat.d3(w, u, v), full.d3(w, u, v)) <= tol
    assert rel(bat.d3(w, U, V[:, :2]), full.d3(w, U, V[:, :2])) <= tol
    assert rel(jvp(bat.grad_fn, (w,), (v,))[1], jvp(full.grad_fn, (w,), (v,))[1]) <= tol   # what flows use
    assert bat.accuracy(w) == full.accuracy(w) or (math.isnan(bat.accuracy(w)) and math.isnan(full.accuracy(w)))
    assert bat.n_grad == full.n_grad and bat.n_hvp == full.n_hvp


@pytest.mark.parametrize("model,kw,loss,bs", [
    ("mlp", {"width": 8}, "mse", 13),
    ("mlp", {"width": 8}, "ce", 1),
    ("cnn", {"channels": [2, 3]}, "mse", 7),
    ("vit", {"dim": 8, "depth": 1}, "ce", 11),
])
def test_batched_values_equal_full_batch(model, kw, loss, bs):
    args = dict(model=model, data="digits", classes=3, n=30, loss=loss, device="cpu", seed=1, model_kwargs=kw)
    full = pyrod.problem(**args)
    bat = pyrod.problem(**args, batch_size=bs)
    assert len(bat.batches) == math.ceil(30 / bs) and bat.config["batch_size"] == bs
    assert torch.equal(bat.w0, full.w0)
    _check_batched_equals_full(full, bat)
    # the weights are the micro-batches' shares of the mean (a wrong weight or a missing batch fails above)
    assert sum(c for c, _ in bat.batches) == pytest.approx(1.0, abs=1e-15)
    assert pyrod.problem(**bat.replay_config()).batch_size == bs


def test_batched_regression_and_batchnorm_eval():
    model, X, Y, loss = __import__("factories").mlp_regression(n=37)
    _check_batched_equals_full(Problem.from_module(model, X, Y, loss, device="cpu"),
                               Problem.from_module(model, X, Y, loss, device="cpu", batch_size=10))
    model, X, Y, loss = __import__("factories").bn_classifier(n=37)
    _check_batched_equals_full(Problem.from_module(model, X, Y, loss, device="cpu"),
                               Problem.from_module(model, X, Y, loss, device="cpu", batch_size=8))
    big = Problem.from_module(model, X, Y, loss, device="cpu", batch_size=100)     # ≥ n: one batch
    assert not big.batches and big.config["batch_size"] == 100


def test_batched_callable_loss_must_be_a_mean():
    model, X, Y, _ = __import__("factories").mlp_regression(n=20)
    mean = lambda out, y: ((out - y) ** 2).mean()           # noqa: E731
    total = lambda out, y: ((out - y) ** 2).sum()           # noqa: E731
    full = Problem.from_module(model, X, Y, mean, device="cpu")
    _check_batched_equals_full(full, Problem.from_module(model, X, Y, mean, device="cpu", batch_size=6))
    with pytest.raises(ValueError, match="mean over samples"):
        Problem.from_module(model, X, Y, total, device="cpu", batch_size=6)
    Problem.from_module(model, X, Y, total, device="cpu")    # fine without micro-batches


def test_batch_size_refused_for_toys():
    with pytest.raises(ValueError, match="batch_size=4"):
        pyrod.problem(toy="quartic", batch_size=4)
