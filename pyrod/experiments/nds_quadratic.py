"""The stylized heterogeneous-curvature quadratic where Muon's NDS is provably below GD's
("Why Muon Outperforms Adam: A Curvature Perspective", arXiv 2606.04662, §5; docs/theory/nds.md).

``L(W) = ½ Σ_i h_i ⟨M_i, W⟩²`` over W ∈ R^{m×m} with orthonormal rank-one matrices ``M_i = u_i v_iᵀ``
(i = 1..q; U, V random orthogonal), curvatures ``h_i`` spread geometrically over a ratio κ (heterogeneity), and
the gradient aligned with the high-curvature modes: ``W_0 = Σ_i c M_i`` so ``G = Σ_i h_i c M_i`` (σ_i ∝ h_i).

Closed forms at W_0 (the unit test in tests/test_experiments.py checks the measured values against them):

* GD (Δ ∝ −G): ``NDS_GD = Σ h_i σ_i² / Σ σ_i² = Σ h³ / Σ h²``;
* Muon (Δ ∝ −polar(G) = −Σ sign(σ_i) M_i, equal energy on every mode): ``NDS_Muon = mean(h)``;
* so ``NDS_GD ≥ NDS_Muon`` with equality iff κ = 1 (Chebyshev's sum inequality), and the gap grows with κ.

Measured with :func:`pyrod.analysis.one_step_decomposition` (HVPs only) for GD, Muon (pyrod's ``Muon``, float64
Newton–Schulz, no momentum or decay: the orthogonalised gradient) and Adam's first step (sign(G)), each scaled
to the same ‖Δw‖: NDS, the one-step loss decrease at that norm, and the decrease at each direction's best step
size, (gᵀd)²/(2·NDS) — for Muon ``c²Σh/2`` ≥ GD's ``c²(Σh²)²/(2Σh³)`` by Cauchy–Schwarz. Then short training runs
with equal steps (step k has norm 0.05·‖W0‖·0.9^k for both) for GD and Muon: NDS along the way and the loss
reached.

Files: ``nds_quadratic.nc`` (dims ``kappa``, ``direction``, ``run``, ``step``), ``nds_quadratic.png``; summary from
the file.
"""
from __future__ import annotations

import math

import numpy as np

from ..papers import cite
from .common import ExperimentError, figure, require_positive, savefig

NAME = "nds-quadratic"
TITLE = "Stylized heterogeneous quadratic: Muon's NDS below GD's (closed form vs measured, κ sweep)"
PAPER = cite("muon-curvature", "§5, theorem and Fig. 7")
RUNTIME = "~10 s"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "m": "the parameter W is an m × m matrix", "q": "number of orthonormal rank-one curvature modes (q ≤ m)",
    "kappas": "curvature ratios κ = h_max / h_min swept (heterogeneity)",
    "h_max": "largest curvature", "c": "W0 = c Σ M_i (the gradient is aligned with the modes)",
    "steps": "steps of the short GD and Muon training runs",
    "step_norm": "update norm of the one-step comparison (every direction scaled to it)",
}

METHODS = ["GD", "Adam", "Muon"]

DEFAULTS = {
    "tiny": {"m": 6, "q": 4, "kappas": [1.0, 10.0], "h_max": 1.0, "c": 1.0, "steps": 5, "step_norm": 0.1},
    "small": {"m": 16, "q": 12, "kappas": [1.0, 2.0, 5.0, 10.0, 30.0, 100.0], "h_max": 1.0, "c": 1.0,
              "steps": 50, "step_norm": 0.1},
    "paper": {"m": 64, "q": 48, "kappas": [1.0, 2.0, 5.0, 10.0, 30.0, 100.0, 1000.0], "h_max": 1.0, "c": 1.0,
              "steps": 200, "step_norm": 0.1},
}


def check_params(p):
    require_positive(p, "m", "q", "kappas", "h_max", "c", "steps", "step_norm")
    if p["q"] > p["m"]:
        raise ExperimentError(f"q={p['q']} must be <= m={p['m']} (q orthonormal rank-one modes of an m×m matrix)")
    if any(k < 1 for k in p["kappas"]):
        raise ExperimentError(f"kappas={p['kappas']!r}: curvature ratios must be >= 1")


def curvatures(q: int, kappa: float, h_max: float) -> np.ndarray:
    """``q`` curvatures from ``h_max`` down to ``h_max/κ``, geometric."""
    return h_max * np.geomspace(1.0, 1.0 / kappa, q) if q > 1 else np.array([h_max])


def make_problem(m: int, q: int, kappa: float, h_max: float, c: float, seed: int, dtype="float64"):
    """The stylized quadratic as a :class:`pyrod.Problem` with one (m, m) block ``W``; returns (problem, h)."""
    import torch

    from pyrod.problems import Problem
    from pyrod.problems.problem import Block, resolve_dtype

    dt = resolve_dtype(dtype)
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((m, m)))
    h = curvatures(q, kappa, h_max)
    Ut = torch.as_tensor(U[:, :q], dtype=dt)
    Vt = torch.as_tensor(V[:, :q], dtype=dt)
    ht = torch.as_tensor(h, dtype=dt)
    W0 = c * (Ut @ Vt.T)                           # ⟨M_i, W0⟩ = c for every mode

    def loss_fn(w):
        W = w.reshape(m, m)
        coef = ((Ut.T @ W) * Vt.T).sum(dim=1)      # ⟨u_i v_iᵀ, W⟩ = u_iᵀ W v_i
        return 0.5 * (ht * coef ** 2).sum()

    prob = Problem(loss_fn=loss_fn, w0=W0.reshape(-1).clone(), blocks=(Block("W", 0, m * m, (m, m)),),
                   name=f"stylized_quadratic_m{m}_q{q}_kappa{kappa:g}")
    return prob, h


def closed_form_nds(h: np.ndarray, sigma: np.ndarray) -> dict:
    """NDS of the GD and Muon directions for curvatures ``h`` and gradient coefficients ``σ``."""
    return {"GD": float(np.sum(h * sigma ** 2) / np.sum(sigma ** 2)), "Muon": float(np.mean(h[sigma != 0]))}


def directions(prob, w, g, method: str):
    """Unit-norm update direction of ``method`` at ``w`` (gradient ``g``)."""
    import torch

    import pyrod

    if method == "GD":
        d = -g
    elif method == "Adam":
        d = -torch.sign(g)                         # Adam's first step (bias-corrected m̂/√ν̂ = g/|g|)
    elif method == "Muon":
        opt = pyrod.optimizers.Muon(lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                                    ns_dtype="float64", ns_steps=30, ns_coefficients=(1.5, -0.5, 0.0))
        opt = opt.bind(prob)
        st = opt.init_state(w, g)
        new, _ = opt.step(st, g)
        d = new.w - w
    else:
        raise ExperimentError(f"unknown method {method!r}")
    return d / torch.linalg.vector_norm(d)


def run(ctx):
    import torch
    import xarray as xr

    from pyrod.analysis import one_step_decomposition

    p = ctx.p
    K, M = len(p["kappas"]), len(METHODS)
    nds = np.full((K, M), np.nan)
    dec = np.full((K, M), np.nan)
    best = np.full((K, M), np.nan)
    cf_gd, cf_muon = np.full(K, np.nan), np.full(K, np.nan)
    traj_nds = np.full((K, 2, p["steps"]), np.nan)
    traj_loss = np.full((K, 2, p["steps"] + 1), np.nan)
    # serial on purpose, whatever --jobs says: one κ takes 0.06 s at --scale small and 0.4 s at paper (2-core CPU),
    # while a 2-worker LocalCluster takes ~1.8 s to start, ~1.8 s for its workers' first imports and ~1.2 s to
    # close, so Context.map could only make this experiment slower
    for i, kappa in enumerate(ctx.iterate(p["kappas"], "κ sweep")):
        prob, h = make_problem(p["m"], p["q"], kappa, p["h_max"], p["c"], p["seed"], p["dtype"])
        w = prob.w0
        loss, g = prob.loss_and_grad(w)
        cf = closed_form_nds(h, h * p["c"])
        cf_gd[i], cf_muon[i] = cf["GD"], cf["Muon"]
        for j, meth in enumerate(METHODS):
            d = directions(prob, w, g, meth)
            r = one_step_decomposition(prob, w, p["step_norm"] * d, loss=loss, grad=g)
            nds[i, j], dec[i, j] = r.nds, r.actual_decrease
            gain_unit = -float(torch.dot(g, d))
            best[i, j] = gain_unit ** 2 / (2 * r.nds) if r.nds > 0 else math.nan  # max over the step size
        # trajectories with equal steps: step k has the norm 0.05·‖W0‖·0.9^k for both (total path < ‖W0‖/2)
        s0 = 0.05 * float(torch.linalg.vector_norm(prob.w0))
        for j, meth in enumerate(("GD", "Muon")):
            w = prob.w0.clone()
            for k in range(p["steps"]):
                loss, g = prob.loss_and_grad(w)
                traj_loss[i, j, k] = float(loss)
                dw = s0 * 0.9 ** k * directions(prob, w, g, meth)
                traj_nds[i, j, k] = one_step_decomposition(prob, w, dw, loss=loss, grad=g, blocks=()).nds
                w = w + dw
            traj_loss[i, j, -1] = float(prob.loss(w))
    ds = xr.Dataset(
        {"nds": (("kappa", "direction"), nds, {"long_name": "NDS of the unit direction at W0", "units": "1"}),
         "decrease": (("kappa", "direction"), dec, {"long_name": "actual one-step loss decrease at equal step norm",
                                                 "units": "1"}),
         "best_decrease": (("kappa", "direction"), best,
                           {"long_name": "quadratic-model decrease at the best step size, (gᵀd)²/(2 NDS)",
                            "units": "1"}),
         "nds_gd_closed_form": (("kappa",), cf_gd, {"long_name": "Σh³/Σh² (GD direction)", "units": "1"}),
         "nds_muon_closed_form": (("kappa",), cf_muon, {"long_name": "mean(h) (Muon direction)", "units": "1"}),
         "trajectory_nds": (("kappa", "run", "step"), traj_nds, {"long_name": "NDS along training", "units": "1"}),
         "trajectory_loss": (("kappa", "run", "step_plus"), traj_loss, {"long_name": "loss along training",
                                                                         "units": "1"})},
        coords={"kappa": p["kappas"], "direction": METHODS, "run": ["GD", "Muon"], "step": np.arange(p["steps"]),
                "step_plus": np.arange(p["steps"] + 1)},
        attrs={"title": TITLE, "m": p["m"], "q": p["q"], "h_max": p["h_max"], "c": p["c"],
               "step_norm": p["step_norm"], "seed": p["seed"]})
    path = ctx.path("nds_quadratic.nc")
    ds.to_netcdf(path)
    results = summarize(path)
    plot(ctx, path)
    return results


def summarize(path) -> dict:
    import xarray as xr

    ds = xr.load_dataset(path)
    out = {"per_kappa": {}}
    for kappa in ds.kappa.values:
        s = ds.sel(kappa=kappa)
        n = {m: float(s.nds.sel(direction=m)) for m in METHODS}
        out["per_kappa"][f"{kappa:g}"] = {
            "nds": n, "nds_ratio_gd_over_muon": n["GD"] / n["Muon"], "nds_ratio_adam_over_muon": n["Adam"] / n["Muon"],
            "closed_form_gd": float(s.nds_gd_closed_form), "closed_form_muon": float(s.nds_muon_closed_form),
            "closed_form_error_gd": abs(n["GD"] - float(s.nds_gd_closed_form)),
            "closed_form_error_muon": abs(n["Muon"] - float(s.nds_muon_closed_form)),
            "decrease_ratio_muon_over_gd": float(s.decrease.sel(direction="Muon") / s.decrease.sel(direction="GD")),
            "best_decrease_ratio_muon_over_gd": float(s.best_decrease.sel(direction="Muon")
                                                      / s.best_decrease.sel(direction="GD")),
            "average_trajectory_nds_gd": float(s.trajectory_nds.sel(run="GD").mean()),
            "average_trajectory_nds_muon": float(s.trajectory_nds.sel(run="Muon").mean()),
            "final_trajectory_loss_gd": float(s.trajectory_loss.sel(run="GD")[-1]),
            "final_trajectory_loss_muon": float(s.trajectory_loss.sel(run="Muon")[-1]),
        }
    rows = out["per_kappa"].values()
    out["muon_nds_below_gd_for_all_kappa_gt_1"] = all(r["nds"]["Muon"] < r["nds"]["GD"]
                                                      for k, r in out["per_kappa"].items() if float(k) > 1)
    out["max_closed_form_error"] = max(max(r["closed_form_error_gd"], r["closed_form_error_muon"]) for r in rows)
    out["muon_best_step_decrease_above_gd_for_all_kappa_gt_1"] = all(
        r["best_decrease_ratio_muon_over_gd"] > 1 for k, r in out["per_kappa"].items() if float(k) > 1)
    out["trajectory_average_nds_muon_below_gd_for_all_kappa_gt_1"] = all(
        r["average_trajectory_nds_muon"] < r["average_trajectory_nds_gd"]
        for k, r in out["per_kappa"].items() if float(k) > 1)
    return out


def plot(ctx, path):
    import xarray as xr

    ds = xr.load_dataset(path)
    fig, ax = figure(1, 3, width=4.3, height=3.4)
    k = ds.kappa.values
    cols = {"GD": "tab:blue", "Adam": "tab:orange", "Muon": "tab:green"}
    a = ax[0, 0]
    for m in METHODS:
        a.plot(k, ds.nds.sel(direction=m), "o-", color=cols[m], label=f"{m} (measured)")
    a.plot(k, ds.nds_gd_closed_form, "k--", lw=1, label="Σh³/Σh² (GD, closed form)")
    a.plot(k, ds.nds_muon_closed_form, "k:", lw=1.5, label="mean h (Muon, closed form)")
    a.set(xscale="log", yscale="log", xlabel="curvature heterogeneity κ = h_max/h_min",
          ylabel="NDS = ΔᵀHΔ/‖Δ‖²", title="(a) NDS of each update direction")
    a.legend(fontsize=7)
    a = ax[0, 1]
    a.plot(k, ds.nds.sel(direction="GD") / ds.nds.sel(direction="Muon"), "o-", color=cols["GD"], label="GD / Muon")
    a.plot(k, ds.nds.sel(direction="Adam") / ds.nds.sel(direction="Muon"), "o-", color=cols["Adam"],
           label="Adam / Muon")
    a.plot(k, ds.decrease.sel(direction="Muon") / ds.decrease.sel(direction="GD"), "s--", color=cols["Muon"],
           label="loss decrease Muon / GD (equal ‖Δ‖)")
    a.plot(k, ds.best_decrease.sel(direction="Muon") / ds.best_decrease.sel(direction="GD"), "^-", color="tab:red",
           label="best-step decrease Muon / GD")
    a.axhline(1.0, color="k", lw=0.8)
    a.set(xscale="log", xlabel="κ", ylabel="ratio", title="(b) NDS ratio and loss-decrease ratio")
    a.legend(fontsize=7)
    a = ax[0, 2]
    ck = [0, len(k) // 2, len(k) - 1] if len(k) > 2 else list(range(len(k)))
    for i in sorted(set(ck)):
        for r, ls in (("GD", "-"), ("Muon", "--")):
            a.plot(ds.step, ds.trajectory_nds.isel(kappa=i).sel(run=r), ls=ls, color=cols[r],
                   alpha=0.4 + 0.6 * i / max(1, len(k) - 1), label=f"{r}, κ={k[i]:g}")
    a.set(yscale="log", xlabel="step", ylabel="NDS of the step", title="(c) NDS along training")
    a.legend(fontsize=6)
    fig.suptitle("Stylized quadratic ½Σ h_i⟨M_i,W⟩², gradient aligned with high curvature: Muon balances energy")
    savefig(ctx, fig, "nds_quadratic.png")
