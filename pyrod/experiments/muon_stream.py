"""The ``medium`` scale of ``muon-zipf`` and ``muon-curvature``: the curvature paper's setting (arXiv 2606.04662) with mini-batches from a stream.

At ``--scale small`` the two experiments train full batch on a fixed set of 32 windows (1,024 tokens), which the
models memorise, and match Adam and Muon on *training* loss. The paper trains on a stream of Zipf-PCFG sentences
with mini-batches and compares at matched *validation* loss. The medium scale does that:

* **Data.** Every step draws ``batch_size`` fresh windows of ``context`` tokens from the grammar's stream
  (``RunSpec.minibatch.source="stream"``, docs/minibatch.md): nothing is seen twice, so nothing can be memorised.
  A held-out sample of ``heldout`` windows (an independent stream) is evaluated every ``heldout_every`` steps; the
  NDS of the update actually taken is measured at the same steps on a fixed held-out batch (its first
  ``measure_size`` windows).
* **No memorisation, checked.** At every matched level the held-out loss must lie within
  ``memorisation_tolerance`` (5%) of the training loss there, estimated as the mean mini-batch loss over the
  ``heldout_every`` steps centred on that evaluation; the summary reports the largest gap (:func:`memorisation`).
* **Learning rates.** Each optimizer runs at its best rate from a small grid (``adam_lrs``, ``muon_lrs``) *per α*,
  chosen on a separate tuning seed (``tune_seed``, not one of the reported seeds): the rate with the lowest mean
  held-out loss over the last ``select_last`` evaluations; a run that diverged scores +∞. Muon's Adam part
  (embeddings, head, gains) keeps ``muon_adam_lr``.
* **Matching.** Adam and Muon of one (α, seed) are compared at ``levels`` log-spaced held-out loss levels between
  the larger of their final losses and the smaller of their initial ones (:func:`pyrod.analysis.matched_levels`);
  at each level the NDS is the mean over ``match_window`` evaluations from the first one at or below the level.
* **Statistics** (:func:`t_interval`): per α the mean of the per-seed median ratios with a 95% Student-t interval;
  the slope of the ratio against α per seed (least squares) and the mean slope with its 95% t interval.

Sizes (``size``): ``"cpu"`` (the default: sized to finish in about an hour on 2 idle cores with ``--jobs 2``) and
``"gpu"`` (a larger model and batch for ``--device cuda``), see :data:`PRESETS`. All runs are ``pyrod.sweep``
points (one NetCDF file each, resumed when the experiment is rerun).
"""
from __future__ import annotations

import math

import numpy as np

from .common import ExperimentError, require_positive

__all__ = ["MEDIUM", "PRESETS", "problem_config", "optimizer_config", "run_spec", "tune", "evaluate",
           "matched_on_heldout", "memorisation", "t_interval", "load_group"]

#: the Zipf-PCFG grammar of the small scale of ``muon-zipf`` / ``muon-curvature`` and of the medium scale on a CPU
#: (``muon_curvature.GRAMMAR`` is this dict)
GRAMMAR_CPU = dict(n_terminals=32, n_nonterminals=8, depth=3, n_rules=4, rhs_min=2, rhs_max=3, n_emit=8, context=32,
                   grammar_seed=None)

#: parameters of the medium scale (both experiments add their own)
MEDIUM = dict(model="gpt", data="zipf_pcfg", loss="ce", dtype="float32", grammar=GRAMMAR_CPU, width=32, depth=2,
              heads=2, mlp_ratio=4, activation="gelu", batch_size=16, heldout=128, measure_size=32, heldout_every=20,
              steps=4000, adam_lrs=[3e-4, 1e-3, 3e-3, 1e-2], muon_lrs=[0.001, 0.003, 0.01, 0.03], adam_beta1=0.9,
              adam_beta2=0.999,
              muon_momentum=0.95, muon_ns_dtype="float32", muon_split="hidden", muon_adam_lr=3e-3, tune_seed=100,
              select_last=5, levels=16, match_window=3, memorisation_tolerance=0.05, size="cpu")

#: help of the medium scale's own parameters (both experiments)
PARAM_HELP = {
    "size": "medium-scale size preset: cpu (about an hour on 2 cores with --jobs 2) or gpu (a larger model, --device cuda)",
    "batch_size": "fresh windows of the grammar's stream per step (mini-batch size)",
    "heldout": "held-out windows (an independent stream) evaluated every heldout_every steps",
    "heldout_every": "steps between held-out evaluations (and NDS measurements)",
    "measure_size": "windows of the fixed held-out batch on which the NDS of the update is measured",
    "adam_lrs": "Adam's learning-rate grid (the best per α on tune_seed is used)",
    "muon_lrs": "Muon's learning-rate grid (the best per α on tune_seed is used)",
    "muon_adam_lr": "learning rate of Muon's Adam part (embeddings, head, gains)",
    "tune_seed": "seed of the learning-rate tuning runs (not one of the reported seeds)",
    "select_last": "held-out evaluations at the end of a tuning run averaged into its score",
    "memorisation_tolerance": "largest relative gap between held-out and training loss at a matched level",
}

#: ``size`` presets: applied before the other ``--set`` values (which override them)
PRESETS = {"size": {
    "cpu": {},
    "gpu": dict(grammar={**GRAMMAR_CPU, "context": 64, "n_terminals": 128, "n_nonterminals": 16, "n_emit": 16},
                width=128, depth=4, heads=4, batch_size=64, heldout=512, measure_size=128, steps=6000),
}}


def check_params(p) -> None:
    """The medium scale's own parameters."""
    require_positive(p, "batch_size", "heldout", "measure_size", "heldout_every", "steps", "adam_lrs", "muon_lrs",
                     "select_last", "levels", "match_window", "muon_adam_lr", "memorisation_tolerance")
    if p["size"] not in PRESETS["size"]:
        raise ExperimentError(f"size={p['size']!r}: choose one of {sorted(PRESETS['size'])}")
    if p["measure_size"] > p["heldout"]:
        raise ExperimentError(f"measure_size={p['measure_size']} is more than heldout={p['heldout']}")
    if p["model"] != "gpt" or p["data"] != "zipf_pcfg":
        raise ExperimentError("the medium scale trains the gpt on the Zipf-PCFG stream (model=gpt, data=zipf_pcfg)")


# --------------------------------------------------------------------------------------------- the runs
def problem_config(p, alpha: float, seed: int) -> dict:
    """The ``pyrod.problem`` config of one (α, seed): the gpt over the grammar at α (``n`` = 8 windows: the problem's
    own fixed data is not trained on, a stream run draws its own)."""
    g = {**GRAMMAR_CPU, **p["grammar"]}
    device = None if p["device"] == "auto" else p["device"]
    return {"model": "gpt", "data": "zipf_pcfg", "n": 8, "loss": p["loss"], "classes": None, "dtype": p["dtype"],
            "seed": int(seed), "device": device, "data_kwargs": {"alpha": float(alpha), **g},
            "model_kwargs": {"dim": p["width"], "depth": p["depth"], "heads": p["heads"],
                             "mlp_ratio": p["mlp_ratio"], "activation": p["activation"],
                             "vocab": g["n_terminals"] + 1}}


def optimizer_config(p, name: str, lr: float) -> dict:
    """Adam (ν₀ = 0, bias correction) or Muon (the hidden matrices; embeddings, head and gains on Adam at
    ``muon_adam_lr``; weight decay 0) at learning rate ``lr``: the optimizers of ``muon-curvature``."""
    from pyrod.problems.gpt import MUON_ADAM_PARAMS

    if name == "adam":
        return {"name": "Adam", "lr": float(lr), "beta1": p["adam_beta1"], "beta2": p["adam_beta2"], "eps": 1e-8,
                "bias_correction": True, "nu0": "zero"}
    return {"name": "Muon", "lr": float(lr), "momentum": p["muon_momentum"], "weight_decay": 0.0,
            "ns_dtype": p["muon_ns_dtype"], "adam_lr": p["muon_adam_lr"], "adam_beta1": p["adam_beta1"],
            "adam_beta2": p["adam_beta2"],
            "adam_params": list(MUON_ADAM_PARAMS) if p["muon_split"] == "hidden" else []}


def run_spec(p, alpha: float, seed: int, optimizer: dict):
    """The :class:`pyrod.RunSpec` of one run: ``steps`` mini-batch steps on the stream, held-out loss and NDS of
    the update every ``heldout_every`` steps, no eigen-solves (``eig.every = 0``)."""
    from pyrod.spec import RunSpec

    h = p["heldout_every"]
    return RunSpec(problem=problem_config(p, alpha, seed), optimizer=optimizer, eig={"k": 1, "every": 0},
                   stop={"steps": p["steps"]}, output={"chunk": 10 * h},
                   minibatch={"size": p["batch_size"], "seed": 0, "source": "stream", "heldout": p["heldout"],
                              "heldout_every": h, "measure_size": p["measure_size"], "nds_every": h})


def _lr_of(point: dict) -> float:
    return float(point["optimizer"]["lr"])


def _point_name(point: dict) -> str:
    opt = point["optimizer"]
    alpha = point["problem.data_kwargs.alpha"]
    seed = point.get("problem.seed")
    return (f"alpha{alpha:g}_{opt['name'].lower()}_lr{opt['lr']:g}" + ("" if seed is None else f"_seed{seed}"))


def tune(ctx, alphas, folder: str = "tune") -> dict:
    """Both optimizers at every rate of their grid, per α, on ``tune_seed``; ``{f"{α:g}": {"adam": lr, "muon": lr,
    "adam_at_grid_edge": bool, "muon_at_grid_edge": bool, "scores": {"adam": {lr: score}, "muon": {...}}}}`` with
    score = the mean held-out loss over the last ``select_last`` evaluations (+∞ for a run that stopped early or has
    non-finite losses)."""
    p = ctx.p
    cfgs = [optimizer_config(p, "adam", lr) for lr in p["adam_lrs"]] + \
           [optimizer_config(p, "muon", lr) for lr in p["muon_lrs"]]
    base = run_spec(p, alphas[0], p["tune_seed"], cfgs[0])
    pairs = [(float(a), c) for a in alphas for c in cfgs]
    res = ctx.sweep(base, {("problem.data_kwargs.alpha", "optimizer"): pairs}, folder, name=_point_name)
    out = {}
    for pt in res.points:
        alpha, cfg = pt["params"]["problem.data_kwargs.alpha"], pt["params"]["optimizer"]
        kind = "adam" if cfg["name"] == "Adam" else "muon"
        ds = load_group(ctx.out / folder / pt["file"])
        h = ds["heldout_loss"].dropna("t").values
        ok = pt.get("status") == "complete" and len(h) >= p["select_last"] and np.isfinite(h).all()
        score = float(np.mean(h[-p["select_last"]:])) if ok else math.inf
        out.setdefault(f"{alpha:g}", {"scores": {"adam": {}, "muon": {}}})["scores"][kind][f"{cfg['lr']:g}"] = score
    for a, d in out.items():
        for kind, grid in (("adam", p["adam_lrs"]), ("muon", p["muon_lrs"])):
            sc = d["scores"][kind]
            best = min(sc, key=lambda k: sc[k])
            if not math.isfinite(sc[best]):
                raise ExperimentError(f"every {kind} learning rate diverged at α={a}: {sc}")
            d[kind] = float(best)
            # the best rate at an end of the grid: the optimum may lie outside it (reported, not hidden)
            d[f"{kind}_at_grid_edge"] = float(best) in (float(min(grid)), float(max(grid)))
    return out


def evaluate(ctx, alphas, seeds, chosen: dict, folder: str = "runs"):
    """Adam and Muon at their chosen rates (``tune``'s result) for every α and seed: one sweep; returns its
    :class:`pyrod.sweep.SweepResult`."""
    p = ctx.p
    pairs = [(float(a), optimizer_config(p, kind, chosen[f"{a:g}"][kind])) for a in alphas for kind in ("adam", "muon")]
    base = run_spec(p, alphas[0], seeds[0], pairs[0][1])
    return ctx.sweep(base, {("problem.data_kwargs.alpha", "optimizer"): pairs, "problem.seed": list(seeds)}, folder,
                     name=_point_name)


def load_group(path):
    """The ``discrete`` group of a run file as a Dataset."""
    import pyrod

    return pyrod.open(path)["discrete"].ds


# --------------------------------------------------------------------------------------------- analysis
def _train_estimate(ds, h: int) -> tuple[np.ndarray, np.ndarray]:
    """At each held-out evaluation (steps ``t_e``), the mean mini-batch loss over the ``h`` steps centred on it."""
    t = ds["t"].values
    loss = ds["loss"].values
    te = ds["heldout_loss"].dropna("t")["t"].values
    est = np.array([np.nanmean(loss[(t >= e - h // 2) & (t < e - h // 2 + h)]) for e in te])
    return te, est


def memorisation(ds, levels, h: int) -> np.ndarray:
    """Relative gap held-out / training − 1 at the first evaluation at or below each held-out ``level`` (NaN where
    the level is not reached); training loss estimated from the mini-batch losses around it."""
    hl = ds["heldout_loss"].dropna("t")
    te, est = _train_estimate(ds, h)
    out = np.full(len(levels), np.nan)
    for i, lv in enumerate(levels):
        hit = np.flatnonzero(hl.values <= lv)
        if len(hit):
            out[i] = float(hl.values[hit[0]] / est[hit[0]] - 1.0)
    return out


def matched_on_heldout(A, M, n_levels: int, window: int, h: int) -> dict:
    """Adam (``A``) and Muon (``M``) groups of one (α, seed) at matched held-out loss: levels, both NDS, their ratio
    (median over levels), ‖Δw‖² ratio, and the memorisation gaps of both runs at those levels."""
    from pyrod.analysis import matched_levels, value_at_levels

    a, m = A[["heldout_loss", "nds", "update_norm_sq"]].dropna("t"), M[["heldout_loss", "nds", "update_norm_sq"]
                                                                        ].dropna("t")
    levels = matched_levels([a.heldout_loss.values, m.heldout_loss.values], n_levels)
    out = {"levels": levels}
    for k in ("nds", "update_norm_sq"):
        out[f"adam_{k}"] = value_at_levels(a.heldout_loss.values, a[k].values, levels, window=window)
        out[f"muon_{k}"] = value_at_levels(m.heldout_loss.values, m[k].values, levels, window=window)
    ratio = out["adam_nds"] / out["muon_nds"]
    out["nds_ratio"] = ratio
    out["nds_ratio_median"] = _median(ratio)
    out["update_norm_sq_ratio_median"] = _median(out["adam_update_norm_sq"] / out["muon_update_norm_sq"])
    out["fraction_levels_muon_smaller_nds"] = float(np.mean(ratio[np.isfinite(ratio)] > 1)) \
        if np.isfinite(ratio).any() else None
    gaps = np.concatenate([memorisation(A, levels, h), memorisation(M, levels, h)])
    out["memorisation_gap_max"] = float(np.nanmax(np.abs(gaps))) if np.isfinite(gaps).any() else None
    return out


def _median(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else None


def t_interval(x, level: float = 0.95) -> dict:
    """Mean of the finite values of ``x`` with its two-sided Student-t confidence interval (``n − 1`` degrees of
    freedom): ``{"mean", "sd", "n", "lo", "hi", "half_width"}`` (interval None for fewer than 2 values)."""
    from scipy import stats

    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "lo": None, "hi": None, "half_width": None}
    mean = float(np.mean(x))
    if n < 2:
        return {"mean": mean, "sd": None, "n": 1, "lo": None, "hi": None, "half_width": None}
    sd = float(np.std(x, ddof=1))
    hw = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - hw, "hi": mean + hw, "half_width": hw}


def seeds_to_resolve(slopes, level: float = 0.95):
    """Seeds needed for the t interval of the mean slope to exclude 0 if the true mean slope were the one observed
    (``(t·sd/|mean|)²`` with the normal quantile, rounded up; None when the mean is 0 or there is no spread)."""
    x = np.asarray(slopes, float)
    x = x[np.isfinite(x)]
    if len(x) < 2 or np.mean(x) == 0:
        return None
    from scipy import stats

    z = stats.norm.ppf(0.5 + level / 2)
    return int(math.ceil((z * np.std(x, ddof=1) / abs(np.mean(x))) ** 2))
