"""Data imbalance and Muon's curvature advantage ("Why Muon Outperforms Adam: A Curvature Perspective", arXiv
2606.04662, Fig. 3): sweep of the Zipf exponent α, several seeds.

For each α and each seed, Adam and Muon train the same network full batch and their updates are decomposed as in
``muon-curvature`` (NDS only: one HVP per analysed step). Default setting (the paper's): the causal transformer
on next-token prediction over Zipf-PCFG sequences whose rule and terminal probabilities are Zipf(α) (α = 0 is
the balanced grammar); ``--set model=mlp data=zipf n=500 width=64 activation=tanh`` gives the MLP on Zipf-imbalanced digit classes.

Within one seed the grammar's structure (right-hand sides, emission lists) is the same for every α, so only the
probabilities — the imbalance — change; seeds change the grammar, the sample and the initialisation. The number
of sequences ``n`` is the same for every α.

At matched training-loss levels (per α and seed) the Adam-to-Muon ratios of NDS, of the curvature penalty and of
‖Δw‖² are taken (median over the levels); the summary gives per α their mean, standard deviation and standard
error over seeds, the slope of the NDS ratio against α (per seed; mean ± sd) and a Spearman correlation. The paper
reports that larger α widens Muon's NDS advantage (ratio further above 1, rising with α).

Files: ``runs/zipf_alpha{α}_seed{s}.nc`` (same layout as ``muon-curvature``), ``muon_zipf.png``; summary from the
files. Each (α, seed) point is one task of :meth:`Context.map <pyrod.experiments.common.Context.map>`: in worker
processes with ``--jobs N`` (N > 1) or ``--scheduler``, with the same files as ``--jobs 1``; a rerun recomputes every
point.

``--scale medium`` (:mod:`pyrod.experiments.muon_stream`): mini-batches of fresh sentences from the grammar's
stream, matched on held-out loss, each optimizer at its best rate from a small grid per α (chosen on a separate
tuning seed), five seeds, 95% t intervals for the ratio per α and for its slope against α, a verdict. Every run is
a ``pyrod.sweep`` point (``tune/`` and ``runs/``, one file each; a rerun resumes the unfinished ones).
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..papers import cite
from . import muon_curvature as mc
from . import muon_stream as ms
from .common import ExperimentError, figure, require_positive, savefig

NAME = "muon-zipf"
TITLE = "Zipf imbalance sweep: Adam-to-Muon NDS and curvature-penalty ratios vs α (several seeds)"
PAPER = cite("muon-curvature", "Fig. 3")
RUNTIME = "~2 min (~70 s with --jobs 2 on idle cores); medium: ~1 h with --jobs 2"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP; the rest: muon-curvature's)
PARAM_HELP = {**mc.PARAM_HELP,
              "alphas": "Zipf exponents α swept", "seeds": "seeds per α (mean ± sd over them)"}

_BASE = {**mc._BASE, "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1, 2]}

DEFAULTS = {
    "tiny": {**mc.DEFAULTS["tiny"], "alphas": [0.0, 1.5], "seeds": [0, 1], "steps": 10, "analyze_every": 2,
             "levels": 4},
    "small": {**_BASE, "steps": 120, "analyze_every": 4, "levels": 16},
    "medium": {**ms.MEDIUM, "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1, 2, 3, 4]},
    "paper": {**mc.DEFAULTS["paper"], "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1, 2, 3, 4]},
}
PRESETS = ms.PRESETS

#: the smallest trend of the Adam/Muon NDS ratio against α that the medium verdict calls an effect: a change of 10%
#: of the mean ratio over α = 0 … 2, i.e. a slope of 5% of the mean ratio per unit α
SMALLEST_EFFECT = 0.05

_KEYS = ("adam_over_muon_nds_median", "adam_over_muon_curvature_median", "adam_over_muon_update_norm_sq_median",
         "fraction_levels_muon_smaller_nds", "adam_final_loss", "muon_final_loss", "n_levels")


def _medium(p) -> bool:
    return "batch_size" in p


def check_params(p):
    if _medium(p):
        ms.check_params(p)
    else:
        mc.check_params(p)
        require_positive(p, "n")
    if not p["alphas"] or any(a < 0 for a in p["alphas"]):
        raise ExperimentError(f"alphas={p['alphas']!r}: give one or more exponents >= 0")
    if not p["seeds"] or any(not isinstance(s, int) or isinstance(s, bool) for s in p["seeds"]):
        raise ExperimentError(f"seeds={p['seeds']!r}: give one or more integer seeds")


def filename(alpha, seed):
    return f"runs/zipf_alpha{alpha:g}_seed{seed}.nc"


def run_point(p: dict, point: tuple) -> str:
    """One point ``(α, seed, path)`` of the grid (one task of :meth:`Context.map`; plain data in and out): builds
    the problem at α and seed from the parameters ``p``, trains Adam and Muon with NDS analysis and writes the
    file ``path`` (absolute). Returns ``path``."""
    alpha, seed, path = point
    ctx = mc.worker_context(NAME, p)
    prob = mc.make_problem(ctx, alpha=alpha, seed=seed)
    opts = mc.make_optimizers(p, prob)
    runs = {name: mc.train_and_analyze(prob, opt, p["steps"], p["analyze_every"], blocks=())
            for name, opt in opts.items()}
    split = mc.muon_split_names(opts["muon"], prob)
    config = {"problem": prob.config, "optimizers": {k: o.config() for k, o in opts.items()},
              "steps": p["steps"], "analyze_every": p["analyze_every"], "experiment": NAME, "alpha": alpha,
              "seed": seed, "muon_split": split}
    mc.write(path, config, runs, attrs={"title": TITLE, "alpha": alpha, "seed": seed, "dim": prob.dim})
    return path


def run(ctx):
    p = ctx.p
    if _medium(p):
        return run_medium(ctx)
    # the α × seed grid, one task per point: in parallel with --jobs / --scheduler (each point writes its file)
    grid = [(alpha, seed, str(ctx.path(filename(alpha, seed)).resolve())) for seed in p["seeds"]
            for alpha in p["alphas"]]
    ctx.map(functools.partial(run_point, p), grid, "α × seed grid")
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def _imbalance(p, alpha, seed) -> float | None:
    """Normalised entropy (1 = uniform) of the grammar's expected token frequencies (gpt/zipf_pcfg only)."""
    if p["model"] != "gpt":
        return None
    from pyrod.problems.pcfg import expected_token_frequencies, make_grammar

    g = {**mc.GRAMMAR, **p["grammar"]}
    gs = seed if g["grammar_seed"] is None else g["grammar_seed"]
    f = expected_token_frequencies(make_grammar(alpha=alpha, grammar_seed=gs, **{
        k: g[k] for k in ("n_terminals", "n_nonterminals", "depth", "n_rules", "rhs_min", "rhs_max", "n_emit")}))
    f = f[f > 0]
    return float(-(f * np.log(f)).sum() / np.log(len(f))) if len(f) > 1 else None


def _spearman(x, y):
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx, ry = np.argsort(np.argsort(x[ok])), np.argsort(np.argsort(y[ok]))
    c = np.corrcoef(rx, ry)[0, 1]
    return float(c) if np.isfinite(c) else None


def summarize(out, p) -> dict:
    a = np.array(p["alphas"], float)
    seeds = list(p["seeds"])
    per_run = {}
    R = np.full((len(seeds), len(a)), np.nan)      # median Adam/Muon NDS ratio per (seed, α)
    C = np.full_like(R, np.nan)
    U = np.full_like(R, np.nan)
    for i, seed in enumerate(seeds):
        for j, alpha in enumerate(p["alphas"]):
            s = mc.summarize_file(out / filename(alpha, seed), p["levels"], p["match_window"])
            row = {k: s[k] for k in _KEYS}
            row["adam_over_muon_final_loss"] = s["adam_final_loss"] / s["muon_final_loss"]
            row["token_entropy_normalised"] = _imbalance(p, alpha, seed)
            per_run[f"alpha{alpha:g}_seed{seed}"] = row
            for M, k in ((R, "adam_over_muon_nds_median"), (C, "adam_over_muon_curvature_median"),
                         (U, "adam_over_muon_update_norm_sq_median")):
                M[i, j] = row[k] if row[k] is not None else np.nan

    def stats(M, j):
        x = M[:, j][np.isfinite(M[:, j])]
        if not len(x):
            return None, None, None
        sd = float(np.std(x, ddof=1)) if len(x) > 1 else None
        return float(np.mean(x)), sd, (sd / np.sqrt(len(x)) if sd is not None else None)

    per_alpha = {}
    for j, alpha in enumerate(p["alphas"]):
        d = {"n_seeds": int(np.isfinite(R[:, j]).sum())}
        for name, M in (("nds_ratio", R), ("curvature_ratio", C), ("update_norm_sq_ratio", U)):
            m, sd, se = stats(M, j)
            d.update({f"{name}_mean": m, f"{name}_sd": sd, f"{name}_sem": se})
        d["fraction_seeds_muon_smaller_nds"] = float(np.mean(R[:, j][np.isfinite(R[:, j])] > 1)) \
            if np.isfinite(R[:, j]).any() else None
        ents = [per_run[f"alpha{alpha:g}_seed{s}"]["token_entropy_normalised"] for s in seeds]
        d["token_entropy_normalised_mean"] = float(np.mean(ents)) if all(e is not None for e in ents) else None
        per_alpha[f"{alpha:g}"] = d
    slopes = [float(np.polyfit(a[np.isfinite(r)], r[np.isfinite(r)], 1)[0]) for r in R if np.isfinite(r).sum() >= 2]
    spear = [_spearman(a, r) for r in R]
    spear = [x for x in spear if x is not None]
    mean_r = np.array([per_alpha[f"{x:g}"]["nds_ratio_mean"] or np.nan for x in p["alphas"]], float)
    return {
        "per_alpha": per_alpha, "per_run": per_run,
        "nds_ratio_slope_vs_alpha_per_seed": slopes,
        "nds_ratio_slope_vs_alpha_mean": float(np.mean(slopes)) if slopes else None,
        "nds_ratio_slope_vs_alpha_sd": float(np.std(slopes, ddof=1)) if len(slopes) > 1 else None,
        "nds_ratio_spearman_vs_alpha_per_seed": spear,
        "nds_ratio_spearman_vs_alpha_of_mean": _spearman(a, mean_r),
        "fraction_seeds_positive_slope": float(np.mean(np.array(slopes) > 0)) if slopes else None,
        "nds_ratio_increases_with_alpha": bool(slopes and np.mean(slopes) > 0
                                               and (len(slopes) < 2 or np.mean(slopes) > 2 * np.std(slopes, ddof=1)
                                                    / np.sqrt(len(slopes)))),
        "n_alphas_muon_smaller_mean_nds": int(np.sum(mean_r[np.isfinite(mean_r)] > 1)),
        "criterion_increases": "mean per-seed slope of the NDS ratio vs α > 0 and more than 2 standard errors",
    }


def plot(ctx, results):
    p = ctx.p
    a = np.array(p["alphas"], float)
    per = results["per_alpha"]
    fig, ax = figure(1, 2, width=4.6, height=3.5)
    for k, c, lab, dx in (("nds_ratio", "tab:purple", "NDS", 0.0), ("curvature_ratio", "tab:red",
                                                                     "curvature penalty C", 0.03),
                          ("update_norm_sq_ratio", "tab:gray", "‖Δw‖²", -0.03)):
        m = np.array([per[f"{x:g}"][f"{k}_mean"] if per[f"{x:g}"][f"{k}_mean"] is not None else np.nan for x in a])
        sd = np.array([per[f"{x:g}"][f"{k}_sd"] if per[f"{x:g}"][f"{k}_sd"] is not None else 0.0 for x in a])
        ax[0, 0].errorbar(a + dx, m, yerr=sd, fmt="o-", color=c, capsize=3, label=f"{lab} (mean ± sd over seeds)")
    for seed in p["seeds"]:
        r = [results["per_run"][f"alpha{x:g}_seed{seed}"]["adam_over_muon_nds_median"] for x in a]
        ax[0, 0].plot(a, [v if v is not None else np.nan for v in r], ".", color="tab:purple", alpha=0.4)
    ax[0, 0].axhline(1.0, color="k", ls="--", lw=0.8)
    ax[0, 0].set(xlabel="Zipf exponent α of the data", ylabel="Adam / Muon (median over loss levels)",
                 title=f"Adam-to-Muon ratios, {len(p['seeds'])} seeds (dots: NDS per seed)", yscale="log")
    ax[0, 0].legend(fontsize=7)
    import pyrod

    cs = ["C%d" % i for i in range(len(a))]
    seed = p["seeds"][0]
    for c, x in zip(cs, a, strict=True):
        tr = pyrod.open(ctx.out / filename(x, seed))
        ax[0, 1].plot(tr["adam"].ds["t"], tr["adam"].ds["loss"], color=c, ls="-", lw=1, label=f"Adam α={x:g}")
        ax[0, 1].plot(tr["muon"].ds["t"], tr["muon"].ds["loss"], color=c, ls="--", lw=1, label=f"Muon α={x:g}")
    ax[0, 1].set(yscale="log", xlabel="step", ylabel="training loss",
                 title=f"training loss, seed {seed} (solid Adam, dashed Muon)")
    ax[0, 1].legend(fontsize=6, ncol=2)
    savefig(ctx, fig, "muon_zipf.png")


# --------------------------------------------------------------------------------------------- medium scale
def run_medium(ctx) -> dict:
    """Tune the rates per α on the tuning seed, run the chosen pairs for every α and seed (two sweeps), summarise."""
    p = ctx.p
    alphas, seeds = [float(a) for a in p["alphas"]], list(p["seeds"])
    if p["tune_seed"] in seeds:
        raise ExperimentError(f"tune_seed={p['tune_seed']} is one of seeds={seeds}: the rates are chosen on a seed "
                              f"that is not reported")
    ctx.log(f"tuning: {len(alphas)} α × {len(p['adam_lrs'])} Adam + {len(p['muon_lrs'])} Muon rates")
    chosen = ms.tune(ctx, alphas)
    ctx.log(f"evaluation: {len(alphas)} α × {len(seeds)} seeds × Adam, Muon")
    res = ms.evaluate(ctx, alphas, seeds, chosen)
    results = summarize_medium(ctx.out, p, chosen, res.points)
    plot_medium(ctx, results)
    return results


def _medium_files(points) -> dict:
    """``{(α, seed, "adam"|"muon"): file}`` of the evaluation sweep's points."""
    out = {}
    for pt in points:
        par = pt["params"]
        kind = "adam" if par["optimizer"]["name"] == "Adam" else "muon"
        out[(float(par["problem.data_kwargs.alpha"]), int(par["problem.seed"]), kind)] = pt["file"]
    return out


def summarize_medium(out, p, chosen: dict, points, folder: str = "runs") -> dict:
    """The medium scale's numbers, from the run files: per run the median Adam/Muon NDS ratio at matched held-out
    loss and the memorisation gap; per α the mean ratio with its 95% t interval; the per-seed slopes against α and
    their mean with its interval; the verdict."""
    alphas, seeds = [float(a) for a in p["alphas"]], list(p["seeds"])
    files = _medium_files(points)
    h = p["heldout_every"]
    R = np.full((len(seeds), len(alphas)), np.nan)
    U = np.full_like(R, np.nan)
    per_run, gaps = {}, []
    for i, seed in enumerate(seeds):
        for j, a in enumerate(alphas):
            A = ms.load_group(out / folder / files[(a, seed, "adam")])
            M = ms.load_group(out / folder / files[(a, seed, "muon")])
            mt = ms.matched_on_heldout(A, M, p["levels"], p["match_window"], h)
            R[i, j] = mt["nds_ratio_median"] if mt["nds_ratio_median"] is not None else np.nan
            U[i, j] = mt["update_norm_sq_ratio_median"] if mt["update_norm_sq_ratio_median"] is not None else np.nan
            if mt["memorisation_gap_max"] is not None:
                gaps.append(mt["memorisation_gap_max"])
            per_run[f"alpha{a:g}_seed{seed}"] = {
                "adam_over_muon_nds_median": mt["nds_ratio_median"],
                "adam_over_muon_update_norm_sq_median": mt["update_norm_sq_ratio_median"],
                "fraction_levels_muon_smaller_nds": mt["fraction_levels_muon_smaller_nds"],
                "n_levels": int(np.isfinite(mt["nds_ratio"]).sum()),
                "loss_levels": [float(x) for x in mt["levels"]],
                "memorisation_gap_max": mt["memorisation_gap_max"],
                "adam_final_heldout_loss": float(A["heldout_loss"].dropna("t").values[-1]),
                "muon_final_heldout_loss": float(M["heldout_loss"].dropna("t").values[-1]),
                "adam_stop_reason": str(A.attrs.get("stop_reason", "")),
                "muon_stop_reason": str(M.attrs.get("stop_reason", "")),
            }
    per_alpha = {}
    for j, a in enumerate(alphas):
        ci = ms.t_interval(R[:, j])
        per_alpha[f"{a:g}"] = {"nds_ratio": ci, "update_norm_sq_ratio": ms.t_interval(U[:, j]),
                               "adam_lr": chosen[f"{a:g}"]["adam"], "muon_lr": chosen[f"{a:g}"]["muon"],
                               "fraction_seeds_muon_smaller_nds": float(np.mean(R[:, j][np.isfinite(R[:, j])] > 1))
                               if np.isfinite(R[:, j]).any() else None}
    a_arr = np.array(alphas)
    slopes = [float(np.polyfit(a_arr[np.isfinite(r)], r[np.isfinite(r)], 1)[0]) for r in R
              if np.isfinite(r).sum() >= 2]
    slope = ms.t_interval(slopes)
    mean_ratio = float(np.nanmean(R)) if np.isfinite(R).any() else None
    gap_max = float(max(gaps)) if gaps else None
    results = {
        "per_alpha": per_alpha, "per_run": per_run, "tuning": chosen,
        "nds_ratio_slope_vs_alpha_per_seed": slopes, "nds_ratio_slope_vs_alpha": slope,
        "nds_ratio_mean_over_all": mean_ratio,
        "memorisation_gap_max": gap_max,
        "memorisation_check_passed": bool(gap_max is not None and gap_max <= p["memorisation_tolerance"]),
        "smallest_effect_slope": SMALLEST_EFFECT * mean_ratio if mean_ratio is not None else None,
        "seeds_to_resolve_slope": ms.seeds_to_resolve(slopes),
        "choice_rule": (f"per α and optimizer, the rate of the grid (adam {p['adam_lrs']}, muon {p['muon_lrs']}) with "
                        f"the lowest mean held-out loss over the last {p['select_last']} evaluations on tuning seed "
                        f"{p['tune_seed']} (not a reported seed)"),
    }
    results["tuning_seed_ratio_by_rates"] = rate_sensitivity(out, p, alphas)
    results["verdict"] = verdict(results, alphas)
    return results


def rate_sensitivity(out, p, alphas, folder: str = "tune") -> dict:
    """On the tuning seed, the median Adam/Muon NDS ratio at matched held-out loss for *every* pair of rates of the
    grids (``{α: {"adam lr / muon lr": ratio}}``): how much the ratio depends on the rates, beside the chosen pair.
    From the tuning runs (no extra run)."""
    res = {}
    for a in alphas:
        row = {}
        for la in p["adam_lrs"]:
            A = ms.load_group(out / folder / f"alpha{a:g}_adam_lr{la:g}.nc")
            for lm in p["muon_lrs"]:
                M = ms.load_group(out / folder / f"alpha{a:g}_muon_lr{lm:g}.nc")
                row[f"{la:g} / {lm:g}"] = ms.matched_on_heldout(A, M, p["levels"], p["match_window"],
                                                               p["heldout_every"])["nds_ratio_median"]
        res[f"{a:g}"] = row
    return res


def verdict(r: dict, alphas) -> str:
    """Plain verdict on the paper's Fig. 3 claim (larger α widens Muon's NDS advantage: the Adam/Muon NDS ratio
    above 1 and rising with α) from the slope's 95% interval."""
    s = r["nds_ratio_slope_vs_alpha"]
    if s["lo"] is None:
        return "cannot tell: fewer than two seeds with a slope"
    above = [a for a in r["per_alpha"] if (r["per_alpha"][a]["nds_ratio"]["lo"] or 0) > 1]
    level = (f"the ratio is above 1 with 95% confidence at α = {', '.join(above)}" if above else
             "at no α is the ratio above 1 with 95% confidence")
    delta = r["smallest_effect_slope"]
    if s["lo"] > 0:
        return f"reproduces: the slope of the ratio against α is positive (95% interval {s['lo']:.3g} … " \
               f"{s['hi']:.3g}); {level}"
    if s["hi"] < 0:
        return f"does not reproduce: the ratio falls with α (slope 95% interval {s['lo']:.3g} … {s['hi']:.3g}); {level}"
    if delta is not None and -delta < s["lo"] and s["hi"] < delta:
        return (f"does not reproduce: no trend of the size that would matter (slope 95% interval {s['lo']:.3g} … "
                f"{s['hi']:.3g} lies within ±{delta:.3g}, a 10% change of the mean ratio over α = 0 … 2); {level}")
    need = r["seeds_to_resolve_slope"]
    return (f"cannot tell at this power: the slope's 95% interval {s['lo']:.3g} … {s['hi']:.3g} contains 0 and "
            f"effects larger than ±{delta:.3g}" + (f"; about {need} seeds would resolve a slope of the observed size"
                                                   if need else "") + f"; {level}")


def plot_medium(ctx, results):
    p = ctx.p
    alphas = np.array([float(a) for a in p["alphas"]])
    per = results["per_alpha"]
    fig, ax = figure(1, 3, width=4.6, height=3.5)
    m = np.array([per[f"{a:g}"]["nds_ratio"]["mean"] if per[f"{a:g}"]["nds_ratio"]["mean"] is not None else np.nan
                  for a in alphas])
    lo = np.array([per[f"{a:g}"]["nds_ratio"]["lo"] if per[f"{a:g}"]["nds_ratio"]["lo"] is not None else np.nan
                   for a in alphas])
    hi = np.array([per[f"{a:g}"]["nds_ratio"]["hi"] if per[f"{a:g}"]["nds_ratio"]["hi"] is not None else np.nan
                   for a in alphas])
    ax[0, 0].errorbar(alphas, m, yerr=[m - lo, hi - m], fmt="o-", color="tab:purple", capsize=3,
                      label="mean over seeds, 95% t interval")
    for seed in p["seeds"]:
        r = [results["per_run"][f"alpha{a:g}_seed{seed}"]["adam_over_muon_nds_median"] for a in alphas]
        ax[0, 0].plot(alphas, [v if v is not None else np.nan for v in r], ".", color="tab:purple", alpha=0.4)
    ax[0, 0].axhline(1.0, color="k", ls="--", lw=0.8)
    s = results["nds_ratio_slope_vs_alpha"]
    ax[0, 0].set(xlabel="Zipf exponent α", ylabel="Adam / Muon NDS (median over matched held-out levels)",
                 title=f"slope {s['mean']:.3g} (95%: {s['lo']:.3g} … {s['hi']:.3g})" if s["lo"] is not None
                 else "Adam / Muon NDS")
    ax[0, 0].legend(fontsize=7)
    files = _medium_files(ctx_points(ctx))
    seed = p["seeds"][0]
    for c, a in zip(["C%d" % i for i in range(len(alphas))], alphas, strict=True):
        for kind, ls in (("adam", "-"), ("muon", "--")):
            ds = ms.load_group(ctx.out / "runs" / files[(float(a), seed, kind)])
            h = ds["heldout_loss"].dropna("t")
            ax[0, 1].plot(h["t"], h.values, color=c, ls=ls, lw=1, label=f"{kind} α={a:g}")
    ax[0, 1].set(xlabel="step", ylabel="held-out loss", title=f"held-out loss, seed {seed} (solid Adam, dashed Muon)")
    ax[0, 1].legend(fontsize=6, ncol=2)
    for kind, mk in (("adam", "o"), ("muon", "s")):
        for a in alphas:
            sc = results["tuning"][f"{a:g}"]["scores"][kind]
            lrs = np.array([float(x) for x in sc])
            ax[0, 2].plot(lrs, [sc[x] if math.isfinite(sc[x]) else np.nan for x in sc], mk + "-", lw=0.8,
                          label=f"{kind} α={a:g}")
    ax[0, 2].set(xscale="log", xlabel="learning rate", ylabel=f"mean held-out loss, last {p['select_last']} evals",
                 title=f"rate grid on tuning seed {p['tune_seed']}")
    ax[0, 2].legend(fontsize=5, ncol=2)
    savefig(ctx, fig, "muon_zipf_medium.png")


def ctx_points(ctx) -> list:
    """The evaluation sweep's points, from its manifest."""
    from pyrod.sweep import read_manifest

    return read_manifest(ctx.out / "runs")["points"]
