"""The central flow's third derivatives from differences of gradients (pyrod.flows.third_derivatives,
``central.third_derivative="difference"``): against autograd's exact pairs and the quartic toy's closed form, the
gradient count and the central flow's answers with either (the refusals, the spec round trip and the resume:
tests/test_difference_options.py). Numbers quoted were measured on the 2-core development machine (float64, one
torch thread)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pyrod
from pyrod.flows.central import CentralFlow
from pyrod.flows.cost import CountingProblem
from pyrod.flows.third_derivatives import d3_pairs_by_difference, difference_step
from pyrod.optimizers import GD, RMSProp


def _small_mlp(dtype="float64"):
    return pyrod.problem(model="mlp", data="digits", classes=4, n=64, seed=0, dtype=dtype,
                         model_kwargs={"width": 8, "depth": 2, "activation": "gelu"})


def _top_eigenvectors(prob, k):
    H = prob.hessian(prob.w0)
    lam, V = torch.linalg.eigh(H)
    return lam.flip(0)[:k], V.flip(1)[:, :k].contiguous()


def test_step_is_the_fourth_root_of_the_precision():
    assert difference_step(torch.float64) == pytest.approx(np.finfo(np.float64).eps ** 0.25)
    assert 1e-4 < difference_step(torch.float64) < 1.3e-4


def test_pairs_equal_autograd_on_an_mlp_diagonal_and_off_diagonal():
    """All 6 pairs i ≤ j of the top 3 Hessian eigenvectors of the small digits MLP (float64): each column within 1e-6
    relative of autograd's ``Problem.d3_pairs`` (measured: 6.6e-9 to 2.1e-8), for 3·4 = 12 gradients."""
    prob = _small_mlp()
    _, U = _top_eigenvectors(prob, 3)
    w = prob.w0
    iu, ju = np.triu_indices(3)
    exact = prob.d3_pairs(w, U, iu.tolist(), ju.tolist())
    counted = CountingProblem(prob)
    approx = d3_pairs_by_difference(counted.grad, w, prob.grad(w), U, iu, ju)
    assert counted.n_grad == 12 and counted.n_hvp == 0
    rel = (approx - exact).norm(dim=0) / exact.norm(dim=0)
    print(f"relative errors of the 6 pairs: {rel.tolist()}")
    assert approx.shape == exact.shape == (prob.dim, 6)
    assert float(rel.max()) <= 1e-6


@pytest.mark.parametrize("scale", [1e-2, 1e2])
def test_directions_of_any_length_are_stepped_by_h(scale):
    """With a preconditioner the flow's directions are P̃-normalised, not unit vectors: columns scaled by 1e-2 or 1e2
    give pairs scaled by their square, within 1e-6 of autograd (each direction is stepped by h/|u|; a step of
    h·|u| would be 1e2 too long or short: measured errors 1e-4 and 1e-4 without the per-direction step)."""
    prob = _small_mlp()
    _, U = _top_eigenvectors(prob, 2)
    w = prob.w0
    exact = prob.d3_pairs(w, U, [0, 0, 1], [0, 1, 1]) * scale ** 2
    approx = d3_pairs_by_difference(prob.grad, w, prob.grad(w), scale * U, [0, 0, 1], [0, 1, 1])
    rel = (approx - exact).norm(dim=0) / exact.norm(dim=0)
    print(f"scale {scale}: relative errors {rel.tolist()}")
    assert float(rel.max()) <= 1e-6


def test_rmsprop_directions_at_a_small_epsilon_match_autograd():
    """RMSProp with ε = 1e-8: the critical direction's Euclidean length is about 10 (P̃-normalised); the flow's
    difference pairs at that direction equal autograd's to 1e-6 (measured 1.2e-7)."""
    prob = _small_mlp()
    w, g = prob.w0, prob.grad(prob.w0)
    p = g.abs() + 1e-8
    lam = float(torch.linalg.eigvalsh(prob.hessian(w) / torch.sqrt(p[:, None] * p[None, :]))[-1])
    flow = CentralFlow(prob, RMSProp(lr=2.1 / lam, beta2=0.99, eps=1e-8), third_derivative="difference")
    ev = flow.evaluate(0.0, torch.cat([w, g * g]))
    assert ev.kc >= 1 and float(ev.U[:, 0].norm()) > 5
    exact = prob.d3_pairs(w, ev.U, [0], [0])
    rel = float((ev.That[:, :1] - exact).norm() / exact.norm())
    print(f"|u| = {float(ev.U[:, 0].norm()):.2f}, relative error {rel:.2e}")
    assert rel <= 1e-6


def test_pairs_equal_the_quartic_closed_form():
    """L = ½y²x² + κ/2(y−y*)²: the toy's hand-written ∇(uᵀHv), for a unit u and the pair (u, v) of an orthonormal
    basis (float64; the differences are exact to rounding here but for the h² term of a polynomial of degree 4)."""
    prob = pyrod.problem(toy="quartic", kappa=0.05, ystar=2.0, x0=0.3, y0=1.7)
    w = prob.w0
    U = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    out = d3_pairs_by_difference(prob.grad, w, prob.grad(w), U, [0, 0, 1], [0, 1, 1])
    for p, (i, j) in enumerate(((0, 0), (0, 1), (1, 1))):
        want = prob.closed_form.d3(w, U[:, i], U[:, j])
        torch.testing.assert_close(out[:, p], want, rtol=1e-6, atol=1e-9)


def test_bad_arguments_are_named():
    prob = _small_mlp()
    U = torch.eye(prob.dim, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="one length"):
        d3_pairs_by_difference(prob.grad, prob.w0, prob.grad(prob.w0), U, [0, 1], [0])
    with pytest.raises(ValueError, match="h=0.0"):
        d3_pairs_by_difference(prob.grad, prob.w0, prob.grad(prob.w0), U, [0], [0], h=0.0)
    assert d3_pairs_by_difference(prob.grad, prob.w0, prob.grad(prob.w0), U, [], []).shape == (prob.dim, 0)


@pytest.mark.parametrize("opt_name", ["GD", "RMSProp"])
def test_central_flow_answers_equal_autograd_with_fewer_hvps(opt_name):
    """The small MLP restarted at step 10 at 2.1× its top eigenvalue's threshold, 30 steps (2 then 3 critical
    directions for GD): the central flow with ``third_derivative="difference"`` gives the same critical counts,
    predicted loss and predicted variances as with autograd, to 1e-6 relative (measured: 5.7e-9 (GD) and 3.5e-8
    (RMSProp) on the loss), with no third-derivative HVPs and more gradients."""
    prob = _small_mlp()
    lam = float(torch.linalg.eigvalsh(prob.hessian(prob.w0))[-1])
    if opt_name == "GD":
        opt = GD(lr=2.1 / lam)
    else:       # 2.1 × the threshold of λmax(P⁻¹H) with P = √(g²) + ε at w0
        g = prob.grad(prob.w0)
        p = g.abs() + 1e-2
        lam = float(torch.linalg.eigvalsh(prob.hessian(prob.w0) / torch.sqrt(p[:, None] * p[None, :]))[-1])
        opt = RMSProp(lr=2.1 / lam, beta2=0.99, eps=1e-2)

    def run(**central):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pyrod.simulate(prob, opt, steps=40, runs=["discrete", "central"], restart_at=10,
                                  central=central)["central"]
    auto, diff = run(), run(third_derivative="difference")
    assert diff.attrs["central_n_t3"] == auto.attrs["central_n_t3"] > 0
    assert int(np.nanmax(auto.ds["n_critical"].values)) >= (2 if opt_name == "GD" else 1)
    np.testing.assert_array_equal(diff.ds["n_critical"].values, auto.ds["n_critical"].values)
    rel = np.abs(diff.ds["predicted_loss"].values / auto.ds["predicted_loss"].values - 1)
    print(f"{opt_name}: predicted loss, largest relative difference {rel.max():.2e}")
    assert rel.max() <= 1e-6
    X_a, X_d = auto.ds["predicted_variances"].values, diff.ds["predicted_variances"].values
    np.testing.assert_array_equal(np.isnan(X_a), np.isnan(X_d))
    ok = np.isfinite(X_a) & (X_a > 0)
    assert ok.any()
    # (variances of directions just leaving the critical set are zeros to rounding, ~1e-17: the atol)
    np.testing.assert_allclose(X_d[ok], X_a[ok], rtol=1e-5, atol=1e-10 * X_a[ok].max())
    # the pairs' HVPs are gone, paid for with gradients
    assert diff.attrs["n_hvp"] < auto.attrs["n_hvp"] and diff.attrs["n_grad"] > auto.attrs["n_grad"]


def test_the_benchmark_shows_float64_differences_beat_float32_autograd_and_float32_differences_do_not():
    """``benchmarks/third_derivatives.py``'s accuracy part on the CNN at 4 images, the claim behind refusing float32:
    in float64 the differences are within 1e-6 of autograd (measured 2e-9 to 8e-9), closer than autograd in float32
    (2e-7 to 5e-7), while in float32 even the best step per pair (chosen knowing the answer) is farther off than
    float32 autograd (measured 3e-5 to 3e-4)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import third_derivatives as bench
    _, acc = bench.accuracy("cnn", 4)
    print(acc)
    f64 = np.array(acc["difference float64 (h = ε^(1/4))"])
    auto32 = np.array(acc["autograd float32"])
    best32 = np.array(acc["difference float32, best step per pair"])
    assert f64.max() <= 1e-6 and np.all(f64 < auto32)
    assert np.all(best32 > 10 * auto32)
