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
"""
from __future__ import annotations

import functools

import numpy as np

from ..papers import cite
from . import muon_curvature as mc
from .common import ExperimentError, figure, require_positive, savefig

NAME = "muon-zipf"
TITLE = "Zipf imbalance sweep: Adam-to-Muon NDS and curvature-penalty ratios vs α (several seeds)"
PAPER = cite("muon-curvature", "Fig. 3")
RUNTIME = "~2 min (~70 s with --jobs 2 on idle cores)"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP; the rest: muon-curvature's)
PARAM_HELP = {**mc.PARAM_HELP,
              "alphas": "Zipf exponents α swept", "seeds": "seeds per α (mean ± sd over them)"}

_BASE = {**mc._BASE, "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1, 2]}

DEFAULTS = {
    "tiny": {**mc.DEFAULTS["tiny"], "alphas": [0.0, 1.5], "seeds": [0, 1], "steps": 10, "analyze_every": 2,
             "levels": 4},
    "small": {**_BASE, "steps": 120, "analyze_every": 4, "levels": 16},
    "paper": {**mc.DEFAULTS["paper"], "alphas": [0.0, 0.5, 1.0, 1.5, 2.0], "seeds": [0, 1, 2, 3, 4]},
}

_KEYS = ("adam_over_muon_nds_median", "adam_over_muon_curvature_median", "adam_over_muon_update_norm_sq_median",
         "fraction_levels_muon_smaller_nds", "adam_final_loss", "muon_final_loss", "n_levels")


def check_params(p):
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
