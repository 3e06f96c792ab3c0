"""Blocks of parameter-space vectors stored column by column (:mod:`pyrod.columns`).

The helpers give the same values as the plain tensor operations, in column-major storage; the producers of
``(d, k)`` blocks on the eigen and central-flow paths (HVPs in every mode, third derivatives, LOBPCG's
eigenvectors, the tracking's Ritz vectors) return them column-major, which is what makes their products and
element-wise work fast on the CPU (module docstring of :mod:`pyrod.columns`). The speed itself is measured in the
benchmarks (docs/central_flows.md §8), not here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pyrod
from pyrod.columns import as_columns, cat_columns, is_columns, mm_columns, stack_columns, take_columns
from pyrod.flows.central_tracking import combine, joined
from pyrod.spectra import hessian_operator, top_eigs


def _rows(d, m, seed=0, dtype=torch.float64):
    return torch.randn(d, m, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_helpers_equal_the_plain_operations_and_are_column_major():
    S, Z = _rows(500, 3, 0), _rows(500, 2, 1)
    C = _rows(3, 4, 2)
    assert not is_columns(S)                                  # torch's default for a new (d, m) tensor
    for out, ref in [(as_columns(S), S), (cat_columns([S, Z]), torch.cat([S, Z], dim=1)),
                     (stack_columns([S[:, 0], Z[:, 1]]), torch.stack([S[:, 0], Z[:, 1]], dim=1)),
                     (take_columns(S, [2, 0, 2]), S[:, [2, 0, 2]]),
                     (take_columns(S, torch.tensor([1, 1])), S[:, [1, 1]]),
                     (take_columns(S, np.array([2, 1])), S[:, [2, 1]])]:
        assert is_columns(out)
        assert torch.equal(out, ref)
    out = mm_columns(S, C)
    assert is_columns(out)
    torch.testing.assert_close(out, S @ C, rtol=1e-14, atol=1e-14)
    Sc = as_columns(S)
    view = take_columns(Sc, [1, 2])                           # consecutive host indices: a slice, no copy
    assert view.data_ptr() == Sc[:, 1].data_ptr() and torch.equal(view, S[:, 1:3]) and is_columns(view)
    assert as_columns(Sc) is Sc                               # no copy when already column-major
    assert is_columns(Sc * torch.rand(500, 1, dtype=torch.float64))   # element-wise work keeps the layout
    assert is_columns(_rows(7, 1)) and is_columns(Sc[:, 1:])


def test_combine_of_column_blocks_equals_the_joined_product():
    U, Z = as_columns(_rows(400, 3, 3)), as_columns(_rows(400, 2, 4))
    C = _rows(5, 3, 5)
    out = combine((U, Z), C)
    assert is_columns(out)
    torch.testing.assert_close(out, torch.cat([U, Z], dim=1) @ C, rtol=1e-13, atol=1e-13)
    assert is_columns(joined((U, Z))) and torch.equal(joined((U, Z)), torch.cat([U, Z], dim=1))


@pytest.fixture(scope="module")
def mlp():
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=60, model_kwargs={"width": 6, "depth": 2},
                         dtype="float64")
    return prob, prob.w0


@pytest.mark.parametrize("mode", ["graph", "batched", "forward"])
def test_hvp_and_third_derivative_blocks_are_column_major(mlp, mode):
    prob, w = mlp
    V = _rows(prob.dim, 3, 6)
    ref = prob.hessian(w) @ V
    old = prob.hvp_mode
    try:
        prob.hvp_mode = mode
        HV = prob.hvp(w, V)
        T = prob.d3_pairs(w, V, [0, 0, 1], [0, 1, 1])
    finally:
        prob.hvp_mode = old
    assert is_columns(HV) and is_columns(T)
    torch.testing.assert_close(HV, ref, rtol=1e-10, atol=1e-10)
    # the third derivative along (u0, u1) against a central difference of u0ᵀ H u1 along the gradient's direction
    e = _rows(prob.dim, 1, 7)[:, 0]
    h = 1e-4
    fd = ((V[:, 0] @ (prob.hessian(w + h * e) @ V[:, 1])) - (V[:, 0] @ (prob.hessian(w - h * e) @ V[:, 1]))) / (2 * h)
    assert abs(float(T[:, 1] @ e) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))


def test_lobpcg_eigenvectors_are_column_major_and_match_dense(mlp):
    prob, w = mlp
    H = prob.hessian(w)
    ev, V, rep = top_eigs(hessian_operator(prob, w), prob.dim, 3, dtype=prob.dtype, device=prob.device,
                          tol=1e-9, max_iter=500)
    assert rep.method == "lobpcg" and rep.converged
    assert is_columns(V)
    ref = np.linalg.eigvalsh(H.numpy())[::-1][:3]
    np.testing.assert_allclose(ev.numpy(), ref, rtol=1e-7)
    torch.testing.assert_close(H @ V, V * ev, rtol=0, atol=1e-6 * float(ev.abs().max()))
