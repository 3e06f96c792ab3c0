"""pyrod.analysis: the one-step decomposition (docs/theory/nds.md) against closed forms, distances, multi-file
loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyrod
from pyrod.analysis import (
    OneStep,
    config_value,
    distance,
    distances,
    first_crossing,
    late_mean,
    load_runs,
    matched_levels,
    one_step_decomposition,
    optimizer_update,
    resolve_blocks,
    value_at_levels,
)
from pyrod.problems.problem import Block


def quadratic(d=6, seed=0, spectrum=None):
    spec = spectrum if spectrum is not None else np.geomspace(10.0, 0.1, d).tolist()
    prob = pyrod.problem(toy="quadratic", spectrum=spec, seed=seed, w_star=0.3, w0=1.0)
    return prob, prob.closed_form.A


def rand(d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(d, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------ closed forms on a quadratic
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_terms_are_exact(seed):
    prob, A = quadratic(seed=seed)
    w = rand(prob.dim, seed + 10)
    dw = rand(prob.dim, seed + 20, 0.3)
    r = one_step_decomposition(prob, w, dw)
    g = A @ (w - 0.3)
    quad = float(dw @ A @ dw)
    assert isinstance(r, OneStep)
    assert r.gain == pytest.approx(-float(g @ dw), rel=1e-12, abs=1e-14)
    assert r.curvature == pytest.approx(0.5 * quad, rel=1e-12)       # C = ½ΔᵀAΔ exactly
    assert r.quad == pytest.approx(quad, rel=1e-12)
    assert r.nds == pytest.approx(quad / float(dw @ dw), rel=1e-12)
    assert r.update_norm_sq == pytest.approx(float(dw @ dw), rel=1e-14)
    # on a quadratic the second-order model is exact: actual decrease = G − C (gap at round-off)
    assert r.predicted_decrease == pytest.approx(r.gain - r.curvature, rel=1e-14)
    assert r.actual_decrease == pytest.approx(r.predicted_decrease, rel=1e-10, abs=1e-12)
    assert abs(r.gap) < 1e-10 * max(1.0, abs(r.actual_decrease))
    assert r.curvature == pytest.approx(0.5 * r.update_norm_sq * r.nds, rel=1e-12)


def test_nds_is_a_rayleigh_quotient_bounded_by_the_spectrum():
    prob, A = quadratic(d=5, spectrum=[7.0, 3.0, 1.0, 0.5, -2.0])
    lam = torch.linalg.eigvalsh(A)
    for s in range(5):
        r = one_step_decomposition(prob, prob.w0, rand(prob.dim, s), blocks=())
        assert float(lam.min()) - 1e-12 <= r.nds <= float(lam.max()) + 1e-12
    # along the top eigenvector the NDS is λmax
    v = prob.closed_form.eigenvectors[:, 0]
    r = one_step_decomposition(prob, prob.w0, 0.1 * v, blocks=())
    assert r.nds == pytest.approx(7.0, rel=1e-12)


def test_block_split_matches_dense_blocks_and_sums_to_total():
    prob, A = quadratic(d=7, seed=3)
    blocks = [Block("a", 0, 2, (2,)), Block("b", 2, 5, (3,)), Block("c", 5, 7, (2,))]
    w, dw = rand(7, 1), rand(7, 2, 0.1)
    r = one_step_decomposition(prob, w, dw, blocks=blocks)
    within_dense = sum(float(dw[b.slice] @ A[b.slice, b.slice] @ dw[b.slice]) for b in blocks)
    quad = float(dw @ A @ dw)
    assert r.within == pytest.approx(within_dense, rel=1e-12)
    assert r.cross == pytest.approx(quad - within_dense, rel=1e-10, abs=1e-14)
    assert r.within + r.cross == pytest.approx(r.quad, rel=1e-12)
    assert r.outside == pytest.approx(0.0, abs=1e-13)
    B = np.array([[float(dw[bi.slice] @ A[bi.slice, bj.slice] @ dw[bj.slice]) for bj in blocks] for bi in blocks])
    np.testing.assert_allclose(r.block_matrix, B, rtol=1e-11, atol=1e-14)
    assert r.block_names == ["a", "b", "c"]
    assert r.block_within == pytest.approx({b.name: B[i, i] for i, b in enumerate(blocks)})
    assert r.block_norm_sq["b"] == pytest.approx(float(dw[2:5] @ dw[2:5]))
    assert r.within_nds == pytest.approx(within_dense / float(dw @ dw))
    # one HVP per block (batched), nothing else
    prob.n_hvp = 0
    one_step_decomposition(prob, w, dw, blocks=blocks)
    assert prob.n_hvp == 3


def test_default_blocks_on_a_network_match_the_dense_hessian():
    prob = pyrod.problem(model="mlp", data="digits", classes=3, n=40, seed=0,
                         model_kwargs={"width": 4, "depth": 1})
    H = prob.hessian(prob.w0)
    dw = rand(prob.dim, 5, 0.05)
    r = one_step_decomposition(prob, prob.w0, dw)          # blocks = the model's tensors
    assert r.block_names == [b.name for b in prob.blocks]
    within = sum(float(dw[b.slice] @ H[b.slice, b.slice] @ dw[b.slice]) for b in prob.blocks)
    assert r.quad == pytest.approx(float(dw @ H @ dw), rel=1e-10)
    assert r.within == pytest.approx(within, rel=1e-9, abs=1e-15)
    assert r.within + r.cross == pytest.approx(r.quad, rel=1e-10, abs=1e-15)
    # a non-quadratic loss: the Taylor gap is small for a small step and shrinks like ‖Δw‖³
    r2 = one_step_decomposition(prob, prob.w0, 0.5 * dw)
    assert abs(r.gap) < 0.05 * abs(r.actual_decrease)
    assert abs(r2.gap) < 0.2 * abs(r.gap)


def test_blocks_forms_outside_part_and_errors():
    prob, A = quadratic(d=6)
    w, dw = rand(6, 0), rand(6, 1)
    r = one_step_decomposition(prob, w, dw, blocks={"x": slice(0, 2), "y": [3, 4]})   # 2 and 5 in no block
    assert r.block_names == ["x", "y"]
    idx = torch.tensor([0, 1, 3, 4])
    sub = float(dw[idx] @ A[idx][:, idx] @ dw[idx])
    assert r.within + r.cross == pytest.approx(sub, rel=1e-11)
    assert r.within + r.cross + r.outside == pytest.approx(r.quad, rel=1e-11)
    with pytest.raises(ValueError, match="overlaps"):
        one_step_decomposition(prob, w, dw, blocks=[slice(0, 3), slice(2, 4)])
    with pytest.raises(ValueError, match="outside"):
        resolve_blocks(prob, [[0, 9]])
    with pytest.raises(ValueError):
        one_step_decomposition(prob, w, torch.zeros(5, dtype=torch.float64))
    r0 = one_step_decomposition(prob, w, dw, blocks=())
    assert math.isnan(r0.within) and r0.block_names == []
    assert set(OneStep.SCALARS) <= set(r.as_dict())


def test_optimizer_update_is_the_step_taken():
    prob = pyrod.problem(model="mlp", data="digits", classes=3, n=40, seed=0,
                         model_kwargs={"width": 4, "depth": 1})
    opt = pyrod.optimizers.Adam(lr=1e-2)
    loss, g = prob.loss_and_grad(prob.w0)
    st = opt.init_state(prob.w0, g)
    dw, new = optimizer_update(opt, st, g)
    ref, _ = opt.step(st, g)
    assert torch.equal(dw, ref.w - st.w) and torch.equal(new.w, ref.w)


# ------------------------------------------------------------------ distances and files
def small_problem():
    return pyrod.problem(model="mlp", data="digits", classes=3, n=60, seed=0, model_kwargs={"width": 6, "depth": 1})


def test_distance_and_distances(tmp_path):
    prob = small_problem()
    a = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=12, runs=["discrete", "midpoint"], eigs=1,
                       eig_every=4, snapshot_every=3, path=tmp_path / "a.nc")
    b = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.2), steps=12, runs=["discrete"], eigs=1, eig_every=4,
                       snapshot_every=3, path=tmp_path / "b.nc")
    d = distance(a["discrete"], b["discrete"], "w")
    wa, wb = a["discrete"].ds["w"].values, b["discrete"].ds["w"].values
    np.testing.assert_allclose(d.values, np.linalg.norm(wa - wb, axis=1), rtol=1e-12)
    assert d.dims == ("t_snap",) and d.values[0] == 0.0
    dl = distance(tmp_path / "a.nc", tmp_path / "b.nc", "loss", group="discrete")
    np.testing.assert_allclose(dl.values, np.abs(a["discrete"].ds.loss.values - b["discrete"].ds.loss.values))
    rel = distance(a["discrete"], b["discrete"], "w", relative=True)
    np.testing.assert_allclose(rel.values[1:], (np.linalg.norm(wa - wb, axis=1) / np.linalg.norm(wb, axis=1))[1:])
    ds = distances(a, "loss", reference="discrete")
    assert list(ds.data_vars) == ["midpoint-discrete"]
    np.testing.assert_allclose(ds["midpoint-discrete"].values,
                               np.abs(a["midpoint"].ds.loss.values - a["discrete"].ds.loss.values))
    assert list(distances(a, "loss").data_vars) == ["discrete-midpoint"]
    with pytest.raises(KeyError):
        distance(a["discrete"], b["discrete"], "nope")


def test_load_runs_along_lr_and_beta(tmp_path):
    prob = small_problem()
    paths = []
    for i, lr in enumerate([0.05, 0.1, 0.2]):
        p = tmp_path / f"r{i}.nc"
        pyrod.simulate(prob, pyrod.optimizers.Adam(lr=lr, beta2=0.9 + 0.04 * i), steps=8 + 2 * i, eigs=1,
                       eig_every=4, path=p)
        paths.append(p)
    ds = load_runs(paths, dim="lr")                       # values read from each file's config
    assert ds["lr"].values.tolist() == [0.05, 0.1, 0.2]
    assert ds["loss"].dims == ("lr", "t") and ds.sizes["t"] == 12
    assert np.isnan(ds["loss"].sel(lr=0.05).values[-1])   # shorter run padded with NaN
    one = pyrod.open(paths[1])["discrete"].ds
    np.testing.assert_array_equal(ds["loss"].sel(lr=0.1).values[:10], one["loss"].values)
    ds2 = load_runs(paths, dim="beta2", key="optimizer.beta2")
    np.testing.assert_allclose(ds2["beta2"].values, [0.9, 0.94, 0.98])
    ds3 = load_runs(paths, dim="run", values=["a", "b", "c"])
    assert ds3["run"].values.tolist() == ["a", "b", "c"]
    tree = load_runs(paths, dim="lr", group=None)
    assert "discrete" in tree.children
    with pytest.raises(KeyError):
        load_runs(paths, dim="nonexistent")
    with pytest.raises(ValueError):
        load_runs(paths, dim="lr", values=[1, 2])
    cfg = pyrod.config_of(paths[0])
    assert config_value(cfg, "lr") == 0.05 and config_value(cfg, "optimizer.name") == "Adam"
    assert config_value(cfg, "classes") == 3


def test_small_statistics():
    import xarray as xr

    t = np.arange(10.0)
    da = xr.DataArray(np.r_[np.zeros(5), np.ones(4) * 2, np.nan], coords={"t": t}, dims="t")
    assert late_mean(da, 0.4) == pytest.approx(2.0)
    assert late_mean(da, 1.0, stat="median") == pytest.approx(0.0)
    assert first_crossing(da, 1.5) == 5.0 and first_crossing(da, 5.0) is None
    assert first_crossing(da, 0.5, direction="down") == 0.0
    la, lb = np.geomspace(1, 1e-3, 50), np.geomspace(2, 1e-2, 30)
    lv = matched_levels([la, lb], 5)
    assert lv[0] < 1 and lv[-1] > 1e-2 and np.all(np.diff(lv) < 0)
    v = value_at_levels(la, np.arange(50.0), [0.5, 1e-9])
    assert v[0] == float(np.argmax(la <= 0.5)) and np.isnan(v[1])
