"""Where the rod flow for Adam holds: a map over (β1, β2, η, bias correction) with the ν-variation diagnostic
(rod-flow paper, Regis & Chewi, arXiv 2605.06821, Figs. 3 and 12, and its referee's question; results and how to
read them: docs/rod_adam_map.md).

For every point of the grid β2 × β1 × η × bias correction (and the paper's three settings):

1. **Into the AEoS.** Adam runs ``aeos_steps`` steps with λmax(P⁻¹H) measured every ``eig_every`` steps; the AEoS
   onset is the first measurement at or above ``aeos_level`` × the threshold (:func:`.common.eos_stats`).
2. **Restart.** The stable and the rod flow are started from the discrete state at the even step
   ``k0 = onset + restart_after`` (``simulate(restart_at=k0)``, the rod-tracking experiment's restart test) and
   compared with the discrete run over the next ``window`` steps.
3. **Numbers**, in units of the discrete half-length h = mean over the window of ½‖w_k − w_{k+1}‖: the mean
   centre distance of each flow over the window and its mean over the last ``end_steps`` steps ("end"), their
   ratio stable/rod (> 1: the rod flow is closer), and the ν variation over one rod length of the discrete run
   (``nu_variation_max``, ``nu_variation_norm``: mean and peak over the window; pyrod/runs/nu_variation.py).

η is set per β1 through the threshold-equivalent step η̃ (``lr_effs``): η = η̃ (1+β1)/(1−β1), so that Adam's
threshold (2+2β1)/((1−β1)η) = 2/η̃ is the same for every β1 at one η̃.

Summary (from the files): one row per point (onset, k0, effective sharpness at k0, the fraction of the window's
measurements at the AEoS, relative distances, ratios, ν variation, gradients per step, flow status), the points
where the rod flow is ≥ 3× closer, Spearman rank correlations between the ν variation and the ratio (and the rod's
own error; pooled and within each β2), per-β2 / β1 / bias-correction / η̃ medians, and the paper settings' ratios.
Figure: the ratio against the ν variation, coloured by β2 (``rod_adam_map.png``).
"""
from __future__ import annotations

import math

import numpy as np

from .common import ExperimentError, figure, finite, require_positive, savefig
from .rod_tracking import _LRS_PAPER, _LRS_SMALL, _MODELS_PAPER, _MODELS_SMALL, point_key

NAME = "rod-adam-map"
TITLE = "Where the rod flow for Adam holds: rod vs stable flow inside the AEoS over (β1, β2, η, bias correction)"
PAPER = "Regis & Chewi, rod flow for Adam (arXiv 2605.06821), Figs. 3, 12 and the referee's ν diagnostic"
RUNTIME = "~20 min with --jobs 2 (60 points; measured 19 min on a shared 2-core machine)"

ARCHS = ["mlp", "cnn", "vit"]

#: the paper's Adam settings (captions of Figs. 3 and 12): β1 per architecture, β2 = 0.999, bias correction
PAPER_BETA1 = {"mlp": 0.8, "cnn": 0.5, "vit": 0.4}
PAPER_BETA2 = 0.999
#: the paper's η (Figs. 3, 12) and, at small scale, the η at which the small nets on digits reach the AEoS early
#: (the rod-tracking experiment's Adam learning rates; the paper's η does not reach it there, see the summary)
_PAPER_LRS = {a: _LRS_PAPER[a]["Adam"] for a in ARCHS}
_SMALL_LRS = {a: _LRS_SMALL[a]["Adam"] for a in ARCHS}


def _lr_effs_paper():
    """η̃ = η(1−β1)/(1+β1) of the paper's setting per architecture, × {½, 1, 2}."""
    out = {}
    for a in ARCHS:
        b1 = PAPER_BETA1[a]
        base = _PAPER_LRS[a] * (1 - b1) / (1 + b1)
        out[a] = [float(f"{base * f:.3g}") for f in (0.5, 1.0, 2.0)]
    return out


#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "archs": "architectures of the map (mlp, cnn, vit)",
    "models": "each architecture's model options (JSON: {arch: {width, depth, ...}})",
    "beta2s": "Adam's β2 values of the map",
    "beta1s": "Adam's β1 values of the map",
    "bias_corrections": "bias correction on (true) and/or off (false)",
    "lr_effs": "threshold-equivalent steps η̃ per architecture (JSON); η = η̃ (1+β1)/(1−β1), threshold 2/η̃",
    "aeos_steps": "Adam steps of the run into the AEoS",
    "aeos_level": "the AEoS onset: first measurement with λmax(P⁻¹H) at or above this fraction of the threshold",
    "restart_after": "the flows restart this many steps after the onset (rounded up to an even step)",
    "window": "steps over which the flows are compared with the discrete run after the restart",
    "end_steps": "last steps of the window averaged for the end-of-window distances",
    "flow_eig_every": "steps between eigenvalue measurements on the flow runs",
    "backend": "integrator backend of the flows (None: the default for the device)",
    "method": "integration method of the flows (None: the backend's default)",
    "rtol": "relative tolerance of the flows' integrator",
    "atol": "absolute tolerance of the flows' integrator",
    "paper_archs": "architectures whose rod-flow paper setting (β1 0.8/0.5/0.4, β2 0.999, bias correction) is run",
    "paper_lrs": "η of each paper setting (JSON: {arch: η}); at small scale a larger η, so that Adam reaches the AEoS",
    "paper_literal": "also run each paper setting at the paper's own η where paper_lrs holds another one",
}

_BASE = dict(data="digits", classes=4, n=256, loss="mse", archs=["mlp"], models=_MODELS_SMALL,
             beta2s=[0.99, 0.995, 0.999], beta1s=[0.4, 0.8, 0.9], bias_corrections=[True, False],
             lr_effs={"mlp": [0.0015, 0.003, 0.006]}, aeos_steps=1200, aeos_level=0.95, restart_after=100,
             window=100, end_steps=10, eigs=1, eig_every=10, flow_eig_every=50, backend=None, method=None,
             rtol=1e-6, atol=1e-9, paper_archs=list(ARCHS),
             paper_lrs=dict(_SMALL_LRS), paper_literal=True)

DEFAULTS = {
    "tiny": {**_BASE, "n": 64, "models": {**_MODELS_SMALL, "mlp": {"width": 6, "depth": 1, "activation": "tanh"}},
             "beta2s": [0.99], "beta1s": [0.8], "bias_corrections": [True], "lr_effs": {"mlp": [0.011]},
             "aeos_steps": 100, "restart_after": 6, "window": 12, "end_steps": 4, "eig_every": 5,
             "flow_eig_every": 10, "paper_archs": ["mlp"],
             "paper_lrs": {**_SMALL_LRS, "mlp": 0.1}, "paper_literal": False},
    "small": dict(_BASE),
    "paper": {**_BASE, "data": "cifar10", "n": 1000, "archs": list(ARCHS), "models": _MODELS_PAPER,
              "lr_effs": _lr_effs_paper(), "aeos_steps": 3000, "restart_after": 200, "paper_lrs": dict(_PAPER_LRS),
              "paper_literal": False},
}


def check_params(p):
    require_positive(p, "n", "aeos_steps", "aeos_level", "window", "end_steps", "eig_every", "flow_eig_every",
                     "rtol", "atol", "beta2s", "beta1s")
    if not isinstance(p["restart_after"], int) or p["restart_after"] < 0:
        raise ExperimentError(f"restart_after={p['restart_after']!r} must be an int >= 0")
    if p["end_steps"] > p["window"]:
        raise ExperimentError(f"end_steps={p['end_steps']} must not exceed window={p['window']}")
    for key in ("beta2s", "beta1s"):
        bad = [b for b in p[key] if not 0 < b < 1]
        if bad:
            raise ExperimentError(f"{key}={p[key]!r}: {bad} not in (0, 1)")
    for key in ("archs", "paper_archs"):
        bad = [a for a in p[key] if a not in ARCHS]
        if bad:
            raise ExperimentError(f"{key}={p[key]!r}: unknown {bad}; valid: {ARCHS}")
        for a in p[key]:
            if a not in p["models"]:
                raise ExperimentError(f"models has no entry for arch {a!r}")
    for a in p["archs"]:
        if a not in p["lr_effs"]:
            raise ExperimentError(f"lr_effs has no entry for arch {a!r}")
        require_positive(p["lr_effs"], a)
    for a in p["paper_archs"]:
        if a not in p["paper_lrs"]:
            raise ExperimentError(f"paper_lrs has no entry for arch {a!r}")
    if not p["bias_corrections"] or any(not isinstance(b, bool) for b in p["bias_corrections"]):
        raise ExperimentError(f"bias_corrections={p['bias_corrections']!r} must be a non-empty list of true/false")


# ------------------------------------------------------------------------------------------------ points
def _lr(lr_eff: float, beta1: float) -> float:
    """Adam's η with the threshold 2/η̃: η = η̃ (1+β1)/(1−β1) (4 significant digits)."""
    return float(f"{lr_eff * (1 + beta1) / (1 - beta1):.4g}")


def points(p) -> list:
    """Every setting: the map (kind "map") and the paper's settings (kind "paper"; "paper_literal": the paper's η
    itself where ``paper_lrs`` holds another one)."""
    out = []
    for arch in p["archs"]:
        for b2 in p["beta2s"]:
            for b1 in p["beta1s"]:
                for bc in p["bias_corrections"]:
                    for lre in p["lr_effs"][arch]:
                        out.append({"kind": "map", "arch": arch, "beta1": b1, "beta2": b2, "bias_correction": bc,
                                    "lr_eff": lre, "lr": _lr(lre, b1)})
    for arch in p["paper_archs"]:
        b1 = PAPER_BETA1[arch]
        lrs = [("paper", p["paper_lrs"][arch])]
        if p["paper_literal"] and not math.isclose(p["paper_lrs"][arch], _PAPER_LRS[arch]):
            lrs.append(("paper_literal", _PAPER_LRS[arch]))
        for kind, lr in lrs:
            out.append({"kind": kind, "arch": arch, "beta1": b1, "beta2": PAPER_BETA2, "bias_correction": True,
                        "lr_eff": float(f"{lr * (1 - b1) / (1 + b1):.4g}"), "lr": lr})
    seen, unique = set(), []
    for q in out:                       # a paper setting that is also a map point is run once
        key = (q["arch"], q["beta1"], q["beta2"], q["bias_correction"], q["lr"])
        if key not in seen:
            seen.add(key)
            unique.append(q)
    return unique


def stem(q) -> str:
    return (f"{q['arch']}_b1={q['beta1']:g}_b2={q['beta2']:g}_bc={int(q['bias_correction'])}_lr={q['lr']:.4g}")


def _optimizer(q):
    import pyrod

    return pyrod.optimizers.Adam(lr=q["lr"], beta1=q["beta1"], beta2=q["beta2"], bias_correction=q["bias_correction"])


def restart_step(onset: float, p) -> int:
    """The even step ``onset + restart_after`` (rounded up)."""
    k0 = int(math.ceil(onset)) + p["restart_after"]
    return k0 + (k0 % 2)


# ------------------------------------------------------------------------------------------------ run
def run(ctx):
    import pyrod

    from .common import eos_stats

    p = ctx.p
    pts = points(p)
    problems = {a: ctx.problem(model=a, data=p["data"], classes=p["classes"], n=p["n"], loss=p["loss"],
                               model_kwargs=p["models"][a]) for a in {q["arch"] for q in pts}}
    flow_kw = dict(backend=p["backend"], method=p["method"], rtol=p["rtol"], atol=p["atol"])
    specs = {stem(q): ctx.spec(problems[q["arch"]], _optimizer(q), steps=p["aeos_steps"], eigs=p["eigs"],
                               eig_every=p["eig_every"]) for q in pts}
    names = {point_key(s.problem, s.optimizer): n for n, s in specs.items()}
    first = specs[stem(pts[0])]
    # 1. every point into the AEoS (discrete only)
    ctx.sweep(first, {("problem", "optimizer"): [(s.problem, s.optimizer) for s in specs.values()]}, "aeos",
              name=lambda pt: names[point_key(pt["problem"], pt["optimizer"])])
    restarts = []
    for q in pts:
        st = eos_stats(pyrod.open(ctx.out / "aeos" / f"{stem(q)}.nc")["discrete"].ds, 0.1, level=p["aeos_level"])
        if st["eos_onset"] is not None and not st["diverged"]:
            restarts.append((q, restart_step(st["eos_onset"], p)))
    if not restarts:
        ctx.note("no point reached the AEoS: nothing to restart")
        results = summarize(ctx.out, p)
        plot(ctx, results)
        return results
    # 2. the stable and the rod flow restarted inside the AEoS
    base = ctx.spec(problems[restarts[0][0]["arch"]], _optimizer(restarts[0][0]), steps=restarts[0][1] + 2,
                    runs=["discrete", "stable", "rod"], restart_at=restarts[0][1], eigs=p["eigs"],
                    eig_every=p["eig_every"], flow_eig_every=p["flow_eig_every"], **flow_kw)
    rows, rnames = [], {}
    for q, k0 in restarts:
        s = specs[stem(q)]
        rows.append((s.problem, s.optimizer, k0, k0 + p["window"] + 1))
        rnames[point_key(s.problem, s.optimizer, k0)] = stem(q)
    ctx.sweep(base, {("problem", "optimizer", "restart_at", "stop.steps"): rows}, "restarts",
              name=lambda pt: rnames[point_key(pt["problem"], pt["optimizer"], pt["restart_at"])])
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


# ------------------------------------------------------------------------------------------------ summary
def _window(da, k0, k1):
    """Finite values of ``da`` at ``k0 < t ≤ k1`` (the restart step itself is distance 0 by construction)."""
    t, y = finite(da)
    return y[(t > k0) & (t <= k1)]


def _mean(y):
    return float(np.mean(y)) if len(y) else math.nan


def _flow_numbers(ds, k0, k1, h, end_steps) -> dict:
    cd = _window(ds["centre_distance"], k0, k1)
    n_grad = float(ds.attrs.get("n_grad", math.nan))
    return {"mean": _mean(cd) / h, "end": _mean(cd[-end_steps:]) / h,
            "grads_per_step": n_grad / max(k1 - k0, 1), "status": str(ds.attrs.get("flow_status", ""))}


def point_numbers(tree, k0, p) -> dict:
    """The numbers of one restart file (module docstring, step 3)."""
    k1 = k0 + p["window"]
    d, rod = tree["discrete"].ds, tree["rod"].ds
    h = _mean(_window(rod["discrete_half_length"], k0, k1))
    out = {"k0": k0, "discrete_half_length": h}
    t_es, es = finite(d["effective_sharpness"])
    before = t_es <= k0
    out["effective_sharpness_at_k0"] = float(es[before][-1]) if before.any() else math.nan
    win = es[(t_es > k0) & (t_es <= k1)]
    out["aeos_fraction"] = float(np.mean(win >= p["aeos_level"])) if len(win) else math.nan
    for name in ("nu_variation_max", "nu_variation_norm"):
        y = _window(d[name], k0, k1)
        out[f"discrete_{name}"] = _mean(y)
        out[f"discrete_{name}_peak"] = float(np.max(y)) if len(y) else math.nan
        out[f"rod_{name}"] = _mean(_window(rod[name], k0, k1))
    for run in ("stable", "rod"):
        if run in tree.children:
            for k, v in _flow_numbers(tree[run].ds, k0, k1, h, p["end_steps"]).items():
                out[f"{run}_{k}"] = v
    if "stable" in tree.children:
        out["ratio_mean"] = out["stable_mean"] / out["rod_mean"] if out["rod_mean"] > 0 else math.nan
        out["ratio_end"] = out["stable_end"] / out["rod_end"] if out["rod_end"] > 0 else math.nan
    return out


def _spearman(x, y) -> dict:
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 4:
        return {"rho": None, "p_value": None, "n": int(keep.sum())}
    r = spearmanr(x[keep], y[keep])
    return {"rho": float(r.statistic), "p_value": float(r.pvalue), "n": int(keep.sum())}


def _gmean(v):
    v = np.asarray([x for x in v if x is not None and np.isfinite(x) and x > 0], float)
    return float(np.exp(np.mean(np.log(v)))) if len(v) else None


def summarize(out, p) -> dict:
    import pyrod

    from .common import eos_stats

    rows = []
    for q in points(p):
        f = out / "aeos" / f"{stem(q)}.nc"
        if not f.exists():
            continue
        tree = pyrod.open(f)
        st = eos_stats(tree["discrete"].ds, 0.1, level=p["aeos_level"])
        row = {**q, "name": stem(q), "aeos_onset": st["eos_onset"], "max_effective_sharpness": st["max_ratio_after_skip"],
               "diverged": st["diverged"], "wall_s": float(tree.attrs.get("wall_time_s", math.nan))}
        r = out / "restarts" / f"{stem(q)}.nc"
        if st["eos_onset"] is not None and r.exists():
            k0 = restart_step(st["eos_onset"], p)
            tree = pyrod.open(r)
            row.update(point_numbers(tree, k0, p))
            row["wall_s"] += float(tree.attrs.get("wall_time_s", math.nan))
        rows.append(row)
    done = [r for r in rows if "ratio_mean" in r]
    grid = [r for r in done if r["kind"] == "map"]
    res = {"points": rows, "n_points": len(rows), "n_reached_aeos": sum(r["aeos_onset"] is not None for r in rows),
           "n_restarted": len(done), "n_map_restarted": len(grid),
           "runs_wall_s_total": float(np.nansum([r["wall_s"] for r in rows])),
           "runs_wall_s_median_per_point": float(np.nanmedian([r["wall_s"] for r in rows])) if rows else None}
    for q in ("mean", "end"):
        res[f"n_map_rod_3x_{q}"] = sum(r[f"ratio_{q}"] >= 3 for r in grid)
        res[f"n_map_rod_closer_{q}"] = sum(r[f"ratio_{q}"] > 1 for r in grid)
        res[f"geomean_map_ratio_{q}"] = _gmean([r[f"ratio_{q}"] for r in grid])
    res["map_rod_3x_mean"] = [r["name"] for r in grid if r["ratio_mean"] >= 3]
    corr = {}
    for nu in ("nu_variation_max", "nu_variation_norm", "nu_variation_max_peak", "nu_variation_norm_peak"):
        x = [r[f"discrete_{nu}"] for r in grid]
        for q in ("mean", "end"):
            corr[f"{nu}_vs_ratio_{q}"] = _spearman(x, [r[f"ratio_{q}"] for r in grid])
            corr[f"{nu}_vs_rod_{q}"] = _spearman(x, [r[f"rod_{q}"] for r in grid])
    for b2 in sorted({r["beta2"] for r in grid}):      # within one β2 (the variation scales with 1 − β2)
        sel = [r for r in grid if r["beta2"] == b2]
        for nu in ("nu_variation_max", "nu_variation_norm"):
            for y in ("ratio_mean", "rod_mean"):
                corr[f"{nu}_vs_{y}_beta2={b2:g}"] = _spearman([r[f"discrete_{nu}"] for r in sel], [r[y] for r in sel])
    aeos = [r for r in grid if r["aeos_fraction"] >= 0.5]   # windows at least half at the AEoS (by λmax(P⁻¹H))
    for y in ("ratio_mean", "rod_mean"):
        corr[f"nu_variation_max_vs_{y}_aeos_fraction>=0.5"] = _spearman([r["discrete_nu_variation_max"] for r in aeos],
                                                                      [r[y] for r in aeos])
    corr["aeos_fraction_vs_ratio_mean"] = _spearman([r["aeos_fraction"] for r in grid], [r["ratio_mean"] for r in grid])
    corr["discrete_half_length_vs_ratio_mean"] = _spearman([r["discrete_half_length"] for r in grid],
                                                          [r["ratio_mean"] for r in grid])
    res["spearman"] = corr
    groups = {}
    for key in ("beta2", "beta1", "bias_correction", "lr_eff"):
        g = {}
        for val in sorted({r[key] for r in grid}):
            sel = [r for r in grid if r[key] == val]
            g[str(val)] = {"n": len(sel), "median_ratio_mean": float(np.median([r["ratio_mean"] for r in sel])),
                           "median_ratio_end": float(np.median([r["ratio_end"] for r in sel])),
                           "n_rod_3x_mean": sum(r["ratio_mean"] >= 3 for r in sel),
                           "median_rod_mean": float(np.median([r["rod_mean"] for r in sel])),
                           "median_discrete_nu_variation_max": float(np.median([r["discrete_nu_variation_max"]
                                                                              for r in sel]))}
        groups[key] = g
    res["by"] = groups
    res["paper_settings"] = [{k: r.get(k) for k in ("arch", "kind", "beta1", "beta2", "lr", "aeos_onset",
                                                   "max_effective_sharpness", "k0", "rod_mean", "stable_mean",
                                                   "rod_end", "stable_end", "ratio_mean", "ratio_end",
                                                   "discrete_nu_variation_max", "discrete_nu_variation_norm")}
                             for r in rows if r["kind"] != "map"]
    return res


# ------------------------------------------------------------------------------------------------ figures
_MARKERS = {0.4: "o", 0.5: "D", 0.8: "s", 0.9: "^"}


def plot(ctx, results):
    import matplotlib.lines as mlines

    pts = [r for r in results["points"] if "ratio_mean" in r]
    b2s = sorted({r["beta2"] for r in pts} | set(ctx.p["beta2s"]))
    cols = {b: c for b, c in zip(b2s, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=False)}
    fig, ax = figure(1, 3, width=4.4, height=3.8)
    panels = [("discrete_nu_variation_max", "ratio_mean", "ν variation over one rod, max_i (window mean)"),
              ("discrete_nu_variation_norm", "ratio_mean", "ν variation over one rod, norm-wise (window mean)"),
              ("discrete_nu_variation_max", "ratio_end", "ν variation over one rod, max_i (window mean)")]
    for a, (xk, yk, xl) in zip(ax[0], panels, strict=True):
        for r in pts:
            x, y = r[xk], r[yk]
            if not (np.isfinite(x) and np.isfinite(y) and x > 0 and y > 0):
                continue
            paper = r["kind"] != "map"
            a.scatter([x], [y], s=90 if paper else 30, marker="*" if paper else _MARKERS.get(r["beta1"], "o"),
                      facecolors=cols.get(r["beta2"], "k") if (r["bias_correction"] or paper) else "none",
                      edgecolors="k" if paper else cols.get(r["beta2"], "k"), linewidths=1.0, zorder=3)
        a.axhline(1.0, color="k", lw=0.8)
        a.axhline(3.0, color="k", lw=0.8, ls="--")
        a.set(xscale="log", yscale="log", xlabel=xl,
              ylabel="stable / rod centre distance" + (" (window mean)" if yk == "ratio_mean" else " (window end)"))
    handles = [mlines.Line2D([], [], color=c, marker="o", ls="", label=f"β2 = {b:g}") for b, c in cols.items()]
    handles += [mlines.Line2D([], [], color="gray", marker=m, ls="", label=f"β1 = {b:g}") for b, m in _MARKERS.items()
                if b in {r["beta1"] for r in pts if r["kind"] == "map"}]
    handles += [mlines.Line2D([], [], color="gray", marker="o", ls="", mfc="none", label="no bias correction"),
                mlines.Line2D([], [], color="gray", marker="*", ls="", ms=10, label="paper setting")]
    ax[0, 0].legend(handles=handles, fontsize=7)
    rho = results["spearman"].get("nu_variation_max_vs_ratio_mean", {}).get("rho")
    ax[0, 0].set_title(f"rod vs stable flow inside the AEoS (Spearman ρ = {rho:.2f})" if rho is not None else
                       "rod vs stable flow inside the AEoS", fontsize=9)
    savefig(ctx, fig, "rod_adam_map.png")
