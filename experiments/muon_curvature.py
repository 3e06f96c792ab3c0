"""Why Muon beats Adam, a curvature view (seed 003 Figs. 1, 2, 4): one-step decomposition along training.

Adam and Muon train the same network (full batch) on Zipf-imbalanced classes. Every ``analyze_every`` steps the
update actually taken, Δw, is decomposed with :func:`pyrod.analysis.one_step_decomposition` (nds.md):
first-order gain G = −gᵀΔw, curvature penalty C = ½ΔwᵀHΔw = ½‖Δw‖²·NDS, the normalized directional sharpness
NDS, ‖Δw‖², the predicted decrease G − C against the actual decrease, and the within-layer / cross-layer split
of ΔwᵀHΔw over the model's tensors (one batched HVP per analysed step).

The two runs are compared at matched training-loss levels (the first analysed step at which each run's loss
falls below the level; the paper matches validation loss): Adam-to-Muon ratios of C, NDS and ‖Δw‖² (Fig. 2c), the
decomposition itself (Fig. 1), and within- vs cross-layer NDS (Fig. 4).

Muon here: pyrod's ``Muon`` (torch's update; Newton–Schulz in ``muon_ns_dtype``) on the 2-D weights, AdamW(λ=0)
on biases; weight decay 0 for both optimizers, so that only the update directions differ.

Files: ``muon_curvature.nc`` (groups ``adam``, ``muon``; coordinate ``t``; variables ``loss``, ``gain``,
``curvature``, ``nds``, ``update_norm_sq``, ``predicted_decrease``, ``actual_decrease``, ``gap``, ``within_nds``,
``cross_nds``, ``block_within_nds (t, block)``), PNGs; summary from the file.
"""
from __future__ import annotations

import math

import numpy as np

from .common import ExperimentError, figure, require_positive, savefig

NAME = "muon-curvature"
TITLE = "Muon vs Adam: one-step gain / curvature penalty / NDS / ‖Δw‖² at matched loss, within vs cross layer"
PAPER = "Muon vs Adam curvature paper (seed 003) Figs. 1, 2, 4"
RUNTIME = "~1 min"

SCALARS = ("loss", "gain", "curvature", "nds", "update_norm_sq", "grad_norm", "predicted_decrease",
           "actual_decrease", "gap", "within", "cross", "within_nds", "cross_nds")
_UNITS = {"loss": "training loss L(w)", "gain": "first-order gain G = -g.dw", "curvature":
          "curvature penalty C = dw.H.dw/2", "nds": "normalized directional sharpness dw.H.dw/|dw|^2",
          "update_norm_sq": "squared update norm |dw|^2", "grad_norm": "gradient norm |g|",
          "predicted_decrease": "predicted decrease G - C", "actual_decrease": "actual decrease L(w) - L(w+dw)",
          "gap": "actual - predicted decrease", "within": "within-layer part of dw.H.dw",
          "cross": "cross-layer part of dw.H.dw", "within_nds": "within-layer part / |dw|^2",
          "cross_nds": "cross-layer part / |dw|^2"}

_BASE = dict(model="mlp", data="zipf", data_base="digits", alpha=1.0, classes=10, loss="ce", width=64, depth=2,
             activation="tanh", adam_lr=0.01, adam_beta1=0.9, adam_beta2=0.999, muon_lr=0.01, muon_momentum=0.95,
             muon_ns_dtype="float32", analyze_every=2, levels=24, match_window=3)

DEFAULTS = {
    "tiny": {**_BASE, "n": 100, "width": 8, "depth": 1, "steps": 12, "analyze_every": 2, "levels": 4},
    "small": {**_BASE, "n": 500, "steps": 400},
    # the paper trains LLMs on Zipf-PCFG data; here: the same MLP analysis on the largest Zipf digits set
    "paper": {**_BASE, "n": None, "width": 256, "depth": 3, "steps": 3000, "analyze_every": 10, "levels": 40},
}


def check_params(p):
    require_positive(p, "steps", "analyze_every", "adam_lr", "muon_lr", "levels", "width")
    if p["alpha"] < 0:
        raise ExperimentError(f"alpha={p['alpha']!r} must be >= 0")
    if p["muon_ns_dtype"] not in ("bfloat16", "float32", "float64"):
        raise ExperimentError(f"muon_ns_dtype={p['muon_ns_dtype']!r}: choose bfloat16, float32 or float64")


def make_problem(ctx, alpha=None, n="default"):
    p = ctx.p
    return ctx.problem(model=p["model"], data=p["data"], classes=p["classes"], n=p["n"] if n == "default" else n,
                       loss=p["loss"], model_kwargs={"width": p["width"], "depth": p["depth"],
                                                     "activation": p["activation"]},
                       data_kwargs={"alpha": p["alpha"] if alpha is None else alpha, "base": p["data_base"]})


def make_optimizers(p, problem) -> dict:
    import pyrod

    adam = pyrod.optimizers.Adam(lr=p["adam_lr"], beta1=p["adam_beta1"], beta2=p["adam_beta2"], eps=1e-8,
                                 bias_correction=True, nu0="zero")
    muon = pyrod.optimizers.Muon(lr=p["muon_lr"], momentum=p["muon_momentum"], weight_decay=0.0,
                                 ns_dtype=p["muon_ns_dtype"], adam_lr=p["adam_lr"], adam_beta1=p["adam_beta1"],
                                 adam_beta2=p["adam_beta2"]).bind(problem)
    return {"adam": adam, "muon": muon}


def train_and_analyze(problem, opt, steps: int, every: int, progress_desc=None):
    """Train with ``opt`` for ``steps`` full-batch steps; decompose the update every ``every`` steps.

    Returns ``(t, rows, block_names, block_nds)``: analysed steps, list of scalar dicts, tensor names,
    array (n_analysed, n_blocks) of the per-block within-layer NDS contributions Δw_lᵀH_llΔw_l/‖Δw‖²."""
    from pyrod.analysis import one_step_decomposition, optimizer_update

    loss, g = problem.loss_and_grad(problem.w0)
    state = opt.init_state(problem.w0, g)
    ts, rows, bnds = [], [], []
    names = [b.name for b in problem.blocks]
    it = range(steps)
    if progress_desc:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=progress_desc, unit="step", leave=False)
    for k in it:
        dw, new_state = optimizer_update(opt, state, g)
        if k % every == 0:
            r = one_step_decomposition(problem, state.w, dw, loss=loss, grad=g)
            if not math.isfinite(r.loss):
                break
            ts.append(k)
            rows.append(r.scalars())
            bnds.append([r.block_within[nm] / r.update_norm_sq for nm in names])
        state = new_state
        loss, g = problem.loss_and_grad(state.w)
        if not math.isfinite(float(loss)):
            break
    return np.array(ts, float), rows, names, np.array(bnds, float).reshape(len(ts), len(names))


def write(path, config: dict, runs: dict, attrs: dict | None = None):
    """Write ``{group: (t, rows, names, block_nds)}`` to one NetCDF file (pyrod's RunWriter)."""
    from pyrod.output import RunWriter, Var

    with RunWriter(path, config=config, attrs=attrs or {}, overwrite=True, chunk=64) as w:
        for group, (t, rows, names, bn) in runs.items():
            vars_ = [Var(k, ("t",), _UNITS.get(k, k), "1") for k in SCALARS]
            vars_.append(Var("block_within_nds", ("t", "block"), "per-tensor within-layer NDS contribution "
                             "dw_l.H_ll.dw_l/|dw|^2", "1"))
            w.add_group(group, vars_, dims={"block": max(1, len(names))},
                        attrs={"block_names": names, "optimizer": config["optimizers"][group]})
            for i, tt in enumerate(t):
                vals = {k: rows[i][k] for k in SCALARS}
                vals["block_within_nds"] = bn[i]
                w.append(group, tt, vals)


def matched(ds_a, ds_b, n_levels: int, window: int) -> dict:
    """Values of both runs at matched loss levels; ratios a/b."""
    from pyrod.analysis import matched_levels, value_at_levels

    la, lb = ds_a["loss"].values, ds_b["loss"].values
    levels = matched_levels([la, lb], n_levels)
    out = {"levels": levels}
    for k in ("gain", "curvature", "nds", "update_norm_sq", "predicted_decrease", "actual_decrease", "within_nds",
              "cross_nds", "gap"):
        va = value_at_levels(la, ds_a[k].values, levels, window=window)
        vb = value_at_levels(lb, ds_b[k].values, levels, window=window)
        out[f"a_{k}"], out[f"b_{k}"] = va, vb
    return out


def _med(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def summarize_file(path, n_levels: int, window: int) -> dict:
    import pyrod

    tree = pyrod.open(path)
    A, M = tree["adam"].ds, tree["muon"].ds
    mt = matched(A, M, n_levels, window)
    r = {}
    for k in ("curvature", "nds", "update_norm_sq", "gain", "within_nds", "cross_nds"):
        ratio = mt[f"a_{k}"] / mt[f"b_{k}"]
        r[f"adam_over_muon_{k}_median"] = _med(ratio)
    third = max(1, len(mt["levels"]) // 3)
    late = slice(len(mt["levels"]) - third, None)
    ratio_c = mt["a_curvature"] / mt["b_curvature"]
    ratio_n = mt["a_nds"] / mt["b_nds"]
    ratio_u = mt["a_update_norm_sq"] / mt["b_update_norm_sq"]
    ok = np.isfinite(ratio_c) & np.isfinite(ratio_n) & (ratio_c > 0) & (ratio_n > 0)
    corr = float(np.corrcoef(np.log(ratio_c[ok]), np.log(ratio_n[ok]))[0, 1]) if ok.sum() > 2 else None
    gap_w = mt["a_within_nds"] - mt["b_within_nds"]
    gap_c = mt["a_cross_nds"] - mt["b_cross_nds"]
    r.update({
        "n_levels": int(len(mt["levels"])),
        "loss_levels": [float(x) for x in mt["levels"]],
        "fraction_levels_muon_smaller_curvature": float(np.mean(ratio_c[np.isfinite(ratio_c)] > 1))
        if np.isfinite(ratio_c).any() else None,
        "fraction_levels_muon_smaller_nds": float(np.mean(ratio_n[np.isfinite(ratio_n)] > 1))
        if np.isfinite(ratio_n).any() else None,
        "corr_log_ratio_curvature_vs_nds": corr,
        "median_ratio_update_norm_sq": _med(ratio_u),
        "late_levels_nds_gap_within": _med(gap_w[late]), "late_levels_nds_gap_cross": _med(gap_c[late]),
        "adam_final_loss": float(A["loss"].values[-1]), "muon_final_loss": float(M["loss"].values[-1]),
        "adam_median_relative_taylor_gap": _med(np.abs(A["gap"].values) / np.abs(A["actual_decrease"].values)),
        "muon_median_relative_taylor_gap": _med(np.abs(M["gap"].values) / np.abs(M["actual_decrease"].values)),
        "adam_median_gain_minus_curvature_at_levels": _med(mt["a_predicted_decrease"]),
        "muon_median_gain_minus_curvature_at_levels": _med(mt["b_predicted_decrease"]),
    })
    return r


def run(ctx):
    p = ctx.p
    prob = make_problem(ctx)
    opts = make_optimizers(p, prob)
    runs = {}
    for name in ctx.iterate(list(opts), "optimizers"):
        runs[name] = train_and_analyze(prob, opts[name], p["steps"], p["analyze_every"],
                                       progress_desc=f"{name}" if ctx.progress else None)
    config = {"problem": prob.config, "optimizers": {k: o.config() for k, o in opts.items()}, "steps": p["steps"],
              "analyze_every": p["analyze_every"], "experiment": NAME}
    path = ctx.path("muon_curvature.nc")
    write(path, config, runs, attrs={"title": TITLE, "dim": prob.dim})
    results = summarize_file(path, p["levels"], p["match_window"])
    plot(ctx, path)
    return results


def plot(ctx, path):
    import pyrod

    p = ctx.p
    tree = pyrod.open(path)
    A, M = tree["adam"].ds, tree["muon"].ds
    mt = matched(A, M, p["levels"], p["match_window"])
    lv = mt["levels"]
    ca, cm = "tab:orange", "tab:green"
    # Fig. 1: one-step decomposition at matched loss
    fig, ax = figure(1, 4, width=3.8, height=3.3)
    for a, (k, lab) in zip(ax[0], [("gain", "first-order gain G = −gᵀΔw"),
                                   ("curvature", "curvature penalty C = ½ΔwᵀHΔw"),
                                   ("predicted_decrease", "predicted decrease G − C"),
                                   ("actual_decrease", "actual decrease L(w) − L(w+Δw)")]):
        a.plot(lv, mt[f"a_{k}"], "o-", ms=3, color=ca, label="Adam")
        a.plot(lv, mt[f"b_{k}"], "s-", ms=3, color=cm, label="Muon")
        a.set(xscale="log", yscale="log", xlabel="training loss level (matched)", ylabel=lab,
              title=lab.split(" =")[0])
        a.invert_xaxis()
        a.legend(fontsize=7)
    fig.suptitle("One-step decomposition along training at matched loss (MLP, Zipf α=%g)" % p["alpha"])
    savefig(ctx, fig, "muon_curvature_decomposition.png")
    # Fig. 2: NDS, update norm, ratios
    fig, ax = figure(1, 4, width=3.8, height=3.3)
    ax[0, 0].plot(A["t"], A["loss"], color=ca, label="Adam")
    ax[0, 0].plot(M["t"], M["loss"], color=cm, label="Muon")
    ax[0, 0].set(yscale="log", xlabel="step", ylabel="training loss", title="training loss")
    ax[0, 1].plot(lv, mt["a_nds"], "o-", ms=3, color=ca, label="Adam")
    ax[0, 1].plot(lv, mt["b_nds"], "s-", ms=3, color=cm, label="Muon")
    ax[0, 1].set(xscale="log", yscale="log", xlabel="training loss level", ylabel="NDS", title="(a) NDS")
    ax[0, 2].plot(lv, mt["a_update_norm_sq"], "o-", ms=3, color=ca, label="Adam")
    ax[0, 2].plot(lv, mt["b_update_norm_sq"], "s-", ms=3, color=cm, label="Muon")
    ax[0, 2].set(xscale="log", yscale="log", xlabel="training loss level", ylabel="‖Δw‖²", title="(b) update norm²")
    for k, c, lab in (("curvature", "tab:red", "curvature penalty C"), ("nds", "tab:purple", "NDS"),
                      ("update_norm_sq", "tab:gray", "‖Δw‖²")):
        ax[0, 3].plot(lv, mt[f"a_{k}"] / mt[f"b_{k}"], "o-", ms=3, color=c, label=lab)
    ax[0, 3].axhline(1.0, color="k", lw=0.8, ls="--")
    ax[0, 3].set(xscale="log", yscale="log", xlabel="training loss level", ylabel="Adam / Muon",
                 title="(c) Adam-to-Muon ratios")
    for a in ax[0, 1:]:
        a.invert_xaxis()
    for a in ax[0]:
        a.legend(fontsize=7)
    savefig(ctx, fig, "muon_curvature_nds.png")
    # Fig. 4: within vs cross layer
    fig, ax = figure(1, 3, width=4.0, height=3.3)
    for a, k, title in ((ax[0, 0], "within_nds", "(a) within-layer ΣΔw_lᵀH_llΔw_l / ‖Δw‖²"),
                        (ax[0, 1], "cross_nds", "(b) cross-layer ΣΔw_lᵀH_ll'Δw_l' / ‖Δw‖²")):
        a.plot(lv, mt[f"a_{k}"], "o-", ms=3, color=ca, label="Adam")
        a.plot(lv, mt[f"b_{k}"], "s-", ms=3, color=cm, label="Muon")
        a.axhline(0, color="k", lw=0.6)
        a.set(xscale="log", xlabel="training loss level", ylabel="NDS part", title=title)
        a.invert_xaxis()
        a.legend(fontsize=7)
    a = ax[0, 2]
    a.plot(lv, mt["a_within_nds"] - mt["b_within_nds"], "o-", ms=3, color="tab:blue", label="within-layer gap")
    a.plot(lv, mt["a_cross_nds"] - mt["b_cross_nds"], "s-", ms=3, color="tab:red", label="cross-layer gap")
    a.plot(lv, mt["a_nds"] - mt["b_nds"], "k--", lw=1, label="total NDS gap")
    a.axhline(0, color="k", lw=0.6)
    a.set(xscale="log", xlabel="training loss level", ylabel="Adam − Muon", title="(c) where the NDS gap comes from")
    a.invert_xaxis()
    a.legend(fontsize=7)
    savefig(ctx, fig, "muon_curvature_layers.png")
