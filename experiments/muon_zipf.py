"""Data imbalance and Muon's curvature advantage (seed 003 Fig. 3): sweep of the Zipf exponent α.

For each α (class frequency ∝ rank^−α; α = 0 is balanced) Adam and Muon train the same MLP (full batch) and
their updates are decomposed as in ``muon-curvature``. At matched training-loss levels the Adam-to-Muon ratios
of NDS and of the curvature penalty are taken; the paper reports that larger α (more imbalance) widens Muon's
NDS advantage (ratio further above 1).

The data set size ``n`` is the same for every α (the largest the ~180 digits per class allow at the largest α),
so only the class frequencies change.

Files: ``runs/zipf_alpha{α}.nc`` (same layout as ``muon-curvature``), ``muon_zipf.png``; summary from the files.
"""
from __future__ import annotations

import numpy as np

from . import muon_curvature as mc
from .common import ExperimentError, figure, require_positive, savefig

NAME = "muon-zipf"
TITLE = "Zipf imbalance sweep: Adam-to-Muon NDS and curvature-penalty ratios vs α"
PAPER = "Muon vs Adam curvature paper (seed 003) Fig. 3"
RUNTIME = "~1 min"

_BASE = {**mc._BASE, "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "n": 270}

DEFAULTS = {
    "tiny": {**_BASE, "alphas": [0.0, 1.5], "n": 60, "width": 8, "depth": 1, "steps": 10, "analyze_every": 2,
             "levels": 4},
    "small": {**_BASE, "steps": 250, "analyze_every": 2, "levels": 16},
    "paper": {**_BASE, "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "n": 270, "width": 256, "depth": 3,
              "steps": 3000, "analyze_every": 10, "levels": 40},
}


def check_params(p):
    mc.check_params(p)
    require_positive(p, "n")
    if not p["alphas"] or any(a < 0 for a in p["alphas"]):
        raise ExperimentError(f"alphas={p['alphas']!r}: give one or more exponents >= 0")


def filename(alpha):
    return f"runs/zipf_alpha{alpha:g}.nc"


def run(ctx):
    p = ctx.p
    for alpha in ctx.iterate(p["alphas"], "α sweep"):
        prob = mc.make_problem(ctx, alpha=alpha)
        opts = mc.make_optimizers(p, prob)
        runs = {name: mc.train_and_analyze(prob, opt, p["steps"], p["analyze_every"]) for name, opt in opts.items()}
        config = {"problem": prob.config, "optimizers": {k: o.config() for k, o in opts.items()},
                  "steps": p["steps"], "analyze_every": p["analyze_every"], "experiment": NAME, "alpha": alpha}
        mc.write(ctx.path(filename(alpha)), config, runs, attrs={"title": TITLE, "alpha": alpha, "dim": prob.dim})
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def summarize(out, p) -> dict:
    per = {}
    for alpha in p["alphas"]:
        s = mc.summarize_file(out / filename(alpha), p["levels"], p["match_window"])
        per[f"{alpha:g}"] = {k: s[k] for k in ("adam_over_muon_nds_median", "adam_over_muon_curvature_median",
                                               "adam_over_muon_update_norm_sq_median",
                                               "fraction_levels_muon_smaller_nds", "adam_final_loss",
                                               "muon_final_loss", "n_levels")}
        per[f"{alpha:g}"]["adam_over_muon_final_loss"] = s["adam_final_loss"] / s["muon_final_loss"]
    a = np.array(p["alphas"], float)
    r = np.array([per[f"{x:g}"]["adam_over_muon_nds_median"] or np.nan for x in p["alphas"]], float)
    ok = np.isfinite(r)
    slope = float(np.polyfit(a[ok], r[ok], 1)[0]) if ok.sum() >= 2 else None
    spear = None
    if ok.sum() >= 3:
        ra = np.argsort(np.argsort(a[ok]))
        rr = np.argsort(np.argsort(r[ok]))
        spear = float(np.corrcoef(ra, rr)[0, 1])
    fl = np.array([per[f"{x:g}"]["adam_over_muon_final_loss"] for x in p["alphas"]], float)
    fl_spear = None
    if len(a) >= 3 and np.isfinite(fl).all():
        fl_spear = float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(fl)))[0, 1])
    return {"per_alpha": per, "nds_ratio_slope_vs_alpha": slope, "nds_ratio_spearman_vs_alpha": spear,
            "nds_ratio_increases_with_alpha": bool(slope is not None and slope > 0),
            "n_alphas_muon_smaller_median_nds": int(np.sum(r[ok] > 1)),
            "final_loss_ratio_adam_over_muon_spearman_vs_alpha": fl_spear}


def plot(ctx, results):
    p = ctx.p
    a = np.array(p["alphas"], float)
    per = results["per_alpha"]
    fig, ax = figure(1, 2, width=4.5, height=3.4)
    for k, c, lab in (("adam_over_muon_nds_median", "tab:purple", "NDS"),
                      ("adam_over_muon_curvature_median", "tab:red", "curvature penalty C"),
                      ("adam_over_muon_update_norm_sq_median", "tab:gray", "‖Δw‖²")):
        ax[0, 0].plot(a, [per[f"{x:g}"][k] if per[f"{x:g}"][k] is not None else np.nan for x in a], "o-", color=c,
                      label=lab)
    ax[0, 0].axhline(1.0, color="k", ls="--", lw=0.8)
    ax[0, 0].set(xlabel="Zipf exponent α (class frequency ∝ rank^−α)", ylabel="Adam / Muon (median over loss levels)",
                 title="Adam-to-Muon ratios at matched loss", yscale="log")
    ax[0, 0].legend(fontsize=8)
    import pyrod

    cs = ["C%d" % i for i in range(len(a))]
    for c, x in zip(cs, a):
        tr = pyrod.open(ctx.out / filename(x))
        ax[0, 1].plot(tr["adam"].ds["t"], tr["adam"].ds["loss"], color=c, ls="-", lw=1, label=f"Adam α={x:g}")
        ax[0, 1].plot(tr["muon"].ds["t"], tr["muon"].ds["loss"], color=c, ls="--", lw=1, label=f"Muon α={x:g}")
    ax[0, 1].set(yscale="log", xlabel="step", ylabel="training loss", title="training loss (solid Adam, dashed Muon)")
    ax[0, 1].legend(fontsize=6, ncol=2)
    savefig(ctx, fig, "muon_zipf.png")
