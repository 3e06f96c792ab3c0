"""Eight adaptive optimizers at the adaptive edge of stability (Cohen et al. 2022, Fig. 5).

The same MLP trained full-batch by Adam (bias correction), AdamW, Adafactor, AMSGrad, Padam (p = ¼), NAdam,
RMSProp and Adagrad, each at several learning rates (colours). The preconditioned sharpness λmax(P⁻¹H)
equilibrates at, or just above, each optimizer's stability threshold (dashed, same colour): (2+2β1)/((1−β1)η)
for the Adam family, (2+2β1)/((1−β1)(1+2β1)η) for NAdam, 2/η for RMSProp and Adagrad.

Adafactor is the Flax form the paper used (momentum 0.9 on the scaled update, factored second moment with
decay rate 0.8, ε1 = 1e-7, parameter scale, update clipping): its step is lr·P⁻¹G with P = √V̂·(clip)/(RMS(W)
scale) per tensor, an EMA heavy ball on that P, so its threshold is 38/η too (``pyrod/optimizers/adafactor.py``).

Summary (from the files): per optimizer and learning rate the threshold, the late-run mean of
λmax(P⁻¹H)/threshold, the EoS onset, the fraction of post-onset steps above the threshold (hover above vs
oscillate around), whether the run has settled and the late growth of ‖ν‖; per optimizer a verdict
(reproduces / partly / does not) by the rules of :func:`verdict`. Results: docs/adaptive_thresholds.md.
"""
from __future__ import annotations

import math

import numpy as np

from ..papers import cite
from .common import (
    ExperimentError,
    auto_ylim,
    colors,
    eos_stats,
    figure,
    finite,
    fmt,
    require_positive,
    savefig,
    threshold_line,
)

NAME = "aeos-optimizers"
TITLE = "Eight adaptive optimizers at the AEoS: λmax(P⁻¹H) equilibrates at each optimizer's threshold"
PAPER = cite("aeos", "Fig. 5")
RUNTIME = "~6 min with --jobs 2"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "lrs": "learning rates per optimizer (JSON: {optimizer: [η, …]})",
    "hyper": "fixed hyper-parameters per optimizer (JSON: {optimizer: {name: value}}; the paper's Appendix G.2)",
    "optimizers": "optimizers to run, among Adam, AdamW, Adafactor, AMSGrad, Padam, NAdam, RMSProp, Adagrad",
}

#: a run is at its threshold when its late ratio is within ±TOLERANCE of 1, settled when that ratio moved by at
#: most SETTLED between the last two late windows (:func:`verdict`)
TOLERANCE = 0.10
SETTLED = 0.05

OPTIMIZERS = ["Adam", "AdamW", "Adafactor", "AMSGrad", "Padam", "NAdam", "RMSProp", "Adagrad"]

#: fixed hyper-parameters per optimizer: the paper's Appendix G.2. Where bias correction is off, ν starts at 0
#: (``nu0="zero"``, what standard implementations do; pyrod's ``"auto"`` would start at g0⊙g0, which AMSGrad's
#: running max then never forgets). Adafactor is the Flax optimizer the paper used: decay rate 0.8 (β̂2_t =
#: 1 − t^−0.8), momentum 0.9, ε1 = 1e-7 added to G⊙G, parameter scale, update clipping at 1, matrices factored
#: when both sides are ≥ 128 (Flax's default); on the small network 16, so that the hidden and input matrices are
#: factored and the 4-row output matrix and the biases are not, as in the paper's width-200 network.
_ADAFACTOR = {"style": "flax", "beta1": 0.9, "beta2_decay": -0.8, "eps1": 1e-7, "eps2": 1e-3, "d": 1.0,
              "scale_by_param": True}
_HYPER_PAPER = {
    "Adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": True},
    "AdamW": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": True, "weight_decay": 1e-2},
    "Adafactor": {**_ADAFACTOR, "min_dim_size_to_factor": 128},
    "AMSGrad": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False, "nu0": "zero"},
    "Padam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False, "p": 0.25, "nu0": "zero"},
    "NAdam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False, "nu0": "zero"},
    "RMSProp": {"beta2": 0.995, "eps": 1e-7, "nu0": "zero"},
    "Adagrad": {},
}
#: small/tiny scale: the paper's hyper-parameters (Adafactor: factor matrices with both sides ≥ 16)
_HYPER_SMALL = {**_HYPER_PAPER, "Adafactor": {**_ADAFACTOR, "min_dim_size_to_factor": 16}}

_LRS_PAPER = {
    "Adam": np.logspace(np.log10(3e-5), -3, 5).tolist(), "AdamW": np.logspace(np.log10(3e-5), -3, 5).tolist(),
    "Adafactor": np.logspace(-5, -3, 5).tolist(), "AMSGrad": np.logspace(-5, -3, 5).tolist(),
    "Padam": np.logspace(-3, -1, 5).tolist(), "NAdam": np.logspace(-5, -3, 5).tolist(),
    "RMSProp": np.logspace(-4, -3, 5).tolist(), "Adagrad": np.logspace(-2, -1, 5).tolist(),
}


def _geom(lo, hi):
    return [float(f"{x:.3g}") for x in np.geomspace(lo, hi, 5)]


#: small scale: five geometric learning rates per optimizer, a factor 7-8 apart end to end like the paper's
#: grids, but larger: the paper's own values are far too small for this 4-class width-32 network (Adam at
#: η = 1e-3, the paper's largest, reaches 0.21 of 38/η after 1000 steps). The paper's values do work on the
#: paper's network (5 × 200 tanh) with digits in place of CIFAR-10: ``--scale paper --data digits --n 1000``
#: (docs/adaptive_thresholds.md).
LRS_SMALL_FIVE = {
    "Adam": _geom(0.004, 0.03), "AdamW": _geom(0.004, 0.03), "Adafactor": _geom(0.02, 0.15),
    "AMSGrad": _geom(0.004, 0.03), "Padam": _geom(0.15, 1.2), "NAdam": _geom(0.002, 0.015),
    "RMSProp": _geom(0.0007, 0.005), "Adagrad": _geom(0.1, 0.8),
}
_BASE = dict(model="mlp", data="digits", classes=4, n=500, loss="mse", width=32, depth=3, activation="tanh",
             eigs=1, eig_every=10, late_fraction=0.25, optimizers=list(OPTIMIZERS))

DEFAULTS = {
    "tiny": {**_BASE, "n": 120, "width": 16, "depth": 2, "steps": 40, "optimizers": ["Adam", "RMSProp"],
             "lrs": {k: v[2:3] for k, v in LRS_SMALL_FIVE.items()}, "hyper": _HYPER_SMALL},
    # 2000 steps: at 1000 the lowest Adam/AdamW η are still rising (ν decays after the loss has converged and
    # pushes λmax(P⁻¹H) up); Padam's P ∝ ν^¼ decays 4× slower still and needs ~5000 (`python -m pyrod resume
    # runs/Padam_lr0.15.nc --steps 5000` extends a finished run bit for bit)
    "small": {**_BASE, "steps": 2000, "lrs": LRS_SMALL_FIVE, "hyper": _HYPER_SMALL},
    "paper": {**_BASE, "data": "cifar10", "classes": 10, "n": 5000, "width": 200, "depth": 5, "steps": 3000,
              "eig_every": 20, "lrs": _LRS_PAPER, "hyper": _HYPER_PAPER},
}


def check_params(p):
    import pyrod

    require_positive(p, "steps", "eig_every", "n", "width")
    valid = set(pyrod.optimizers.REGISTRY)
    bad = [o for o in p["optimizers"] if o not in valid]
    if bad:
        raise ExperimentError(f"optimizers={p['optimizers']!r}: unknown {bad}; valid: {sorted(valid)}")
    for o in p["optimizers"]:
        lrs = p["lrs"].get(o)
        if not lrs:
            raise ExperimentError(f"lrs has no learning rates for optimizer {o!r} (lrs={{'{o}': [...]}})")
        require_positive({f"lrs[{o}]": lrs}, f"lrs[{o}]")


def make_optimizer(name: str, lr: float, hyper: dict, problem):
    import pyrod

    cls = pyrod.optimizers.get(name)
    try:
        opt = cls(lr=lr, **hyper.get(name, {}))
    except TypeError as e:
        raise ExperimentError(f"hyper[{name!r}]={hyper.get(name)!r}: {e}") from None
    return opt.bind(problem) if hasattr(opt, "bind") else opt


def filename(name: str, lr: float) -> str:
    return f"runs/{name}_lr{lr:g}.nc"


def run(ctx):
    p = ctx.p
    prob = ctx.problem(model=p["model"], data=p["data"], classes=p["classes"], n=p["n"], loss=p["loss"],
                       model_kwargs={"width": p["width"], "depth": p["depth"], "activation": p["activation"]})
    # one sweep over (optimizer, lr): parallel with --jobs, resumed when rerun
    configs = [make_optimizer(o, lr, p["hyper"], prob).config() for o in p["optimizers"] for lr in p["lrs"][o]]
    base = ctx.spec(prob, make_optimizer(p["optimizers"][0], p["lrs"][p["optimizers"][0]][0], p["hyper"], prob),
                    steps=p["steps"], eigs=p["eigs"], eig_every=p["eig_every"])
    ctx.sweep(base, {"optimizer": configs}, "runs",
              name=lambda pt: filename(pt["optimizer"]["name"], pt["optimizer"]["lr"])[len("runs/"):-len(".nc")])
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def late_drift(t, y, late_fraction: float) -> float | None:
    """Mean of ``y`` over the last ``late_fraction`` of the time span over its mean in the window of the same
    length just before (None when either window is empty or that mean is not positive)."""
    if len(t) < 4:
        return None
    t0, span = t.max(), t.max() - t.min()
    late = y[t >= t0 - late_fraction * span]
    before = y[(t >= t0 - 2 * late_fraction * span) & (t < t0 - late_fraction * span)]
    if not len(late) or not len(before) or not np.mean(before) > 0:
        return None
    return float(np.mean(late) / np.mean(before))


def post_onset_stats(ds, onset, late_fraction: float) -> dict:
    """``above_fraction``: fraction of the measured steps after the EoS onset with λmax(P⁻¹H) > threshold (the
    paper's "hovers above" (≳ 0.5) vs "oscillates around" distinction; None without an onset);
    ``late_nu_growth``: ‖ν‖ at the end over ‖ν‖ at the start of the late window (> 1: the preconditioner is
    still growing at the end of the run); ``late_ratio_drift``: mean λmax(P⁻¹H)/threshold over the late window
    over its mean in the window of the same length before it (≈ 1: settled; a run that drifts by more than
    ``SETTLED`` has not settled and its late ratio is not an equilibrium value); ``late_raw_sharpness_drift``:
    the same for the raw sharpness λmax(H) (> 1: still rising at the end, the AEoS papers' Fig. 1 observation)."""
    t, es = finite(ds["effective_sharpness"])
    out = {"above_fraction": None, "late_nu_growth": None, "late_ratio_drift": None}
    if onset is not None:
        sel = t >= onset
        if sel.any():
            out["above_fraction"] = float(np.mean(es[sel] > 1.0))
    out["late_ratio_drift"] = late_drift(t, es, late_fraction)
    if "sharpness" in ds:
        out["late_raw_sharpness_drift"] = late_drift(*finite(ds["sharpness"]), late_fraction)
    if "nu_norm" in ds:
        tn, nu = finite(ds["nu_norm"])
        if len(nu) > 4:
            k = int(len(nu) * (1 - late_fraction))
            out["late_nu_growth"] = float(nu[-1] / nu[k]) if nu[k] > 0 else None
    return out


def summarize(out, p) -> dict:
    """Per optimizer and learning rate: threshold, late-run λmax(P⁻¹H)/threshold, the above-threshold fraction
    after the onset and the late ν growth, read from the NetCDF files in ``out``."""
    import pyrod

    rows = {}
    for name in p["optimizers"]:
        for lr in p["lrs"][name]:
            f = filename(name, lr)
            ds = pyrod.open(out / f)["discrete"].ds
            st = eos_stats(ds, p["late_fraction"])
            st.update(post_onset_stats(ds, st["eos_onset"], p["late_fraction"]))
            st.update({"lr": lr, "file": f})
            rows.setdefault(name, []).append(st)
    per_opt = {}
    for name, rs in rows.items():
        ok = [r for r in rs if not r["diverged"]]
        ratios = np.array([r["late_ratio"] for r in ok] or [np.nan], dtype=float)
        above = np.array([r["above_fraction"] for r in ok if r["above_fraction"] is not None] or [np.nan])
        per_opt[name] = {
            "threshold_formula": f"{rs[0]['threshold'] * rs[0]['lr']:.4g}/η",
            "late_ratio_per_lr": {fmt(r["lr"]): r["late_ratio"] for r in rs},
            "above_fraction_per_lr": {fmt(r["lr"]): r["above_fraction"] for r in rs},
            "late_nu_growth_per_lr": {fmt(r["lr"]): r["late_nu_growth"] for r in rs},
            "late_ratio_min": float(np.nanmin(ratios)), "late_ratio_max": float(np.nanmax(ratios)),
            "above_fraction_median": float(np.nanmedian(above)),
            "late_ratio_drift_per_lr": {fmt(r["lr"]): r["late_ratio_drift"] for r in rs},
            "late_raw_sharpness_drift_per_lr": {fmt(r["lr"]): r.get("late_raw_sharpness_drift") for r in rs},
            "n_within_10pct": int(np.sum(np.abs(ratios - 1) <= TOLERANCE)),
            "n_reached_eos": sum(r["eos_onset"] is not None for r in ok),
            "n_settled": sum(is_settled(r) for r in ok),
            "n_diverged": len(rs) - len(ok),
            "n_runs": len(rs),
        }
        per_opt[name].update(verdict(ok))
    return {"per_optimizer": per_opt, "runs": rows}


def is_settled(row) -> bool:
    """The late ratio of a run is an equilibrium value: it moved by at most ``SETTLED`` between the last two late
    windows."""
    d = row.get("late_ratio_drift")
    return d is not None and abs(d - 1) <= SETTLED


def verdict(rows) -> dict:
    """The plain statement for one optimizer from its non-diverged runs (``rows``: :func:`summarize` rows).

    A run *at the threshold* has reached the EoS (``eos_onset``), settled (:func:`is_settled`) and has a late ratio
    within ±``TOLERANCE`` of 1. ``"reproduces"``: every settled run that reached the EoS is at the threshold (and
    there is at least one); ``"does not reproduce"``: none is; ``"partly"`` otherwise; ``"no run at the EoS"``:
    no settled run reached it (the claim is not tested). Runs that never reach the EoS (they converge first) or
    have not settled are listed but do not decide. ``behaviour``: ``"hovers above"`` when the median
    above-threshold fraction of the runs at the threshold is ≥ 0.5, else ``"oscillates around"``."""
    at_eos = [r for r in rows if r["eos_onset"] is not None and is_settled(r)]
    within = [r for r in at_eos if abs(r["late_ratio"] - 1) <= TOLERANCE]
    if not at_eos:
        word = "no run at the EoS"
    elif not within:
        word = "does not reproduce"
    elif len(within) == len(at_eos):
        word = "reproduces"
    else:
        word = "partly"
    above = [r["above_fraction"] for r in within if r["above_fraction"] is not None]
    behaviour = None if not above else ("hovers above" if np.median(above) >= 0.5 else "oscillates around")
    return {"verdict": word, "behaviour": behaviour, "n_at_threshold": len(within),
            "n_settled_at_eos": len(at_eos),
            "never_reached_eos": [r["lr"] for r in rows if r["eos_onset"] is None],
            "not_settled": [r["lr"] for r in rows if not is_settled(r)]}


def plot(ctx, results):
    import pyrod

    names = list(results["runs"])
    ncols = min(4, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, ax = figure(nrows, ncols, width=3.8, height=3.0)
    for i, name in enumerate(names):
        a = ax[i // ncols, i % ncols]
        rows = results["runs"][name]
        cs = colors(len(rows), "plasma")
        thr_txt = None
        series = []
        for c, r in zip(cs, rows, strict=False):
            ds = pyrod.open(ctx.out / r["file"])["discrete"].ds
            t, y = finite(ds["preconditioned_sharpness"])
            series.append((t, y))
            a.plot(t, y, color=c, lw=1.1, label=f"η={fmt(r['lr'])}")
            threshold_line(a, r["threshold"], color=c)
            if math.isfinite(r["threshold"]):
                thr_txt = f"{r['threshold'] * r['lr']:.3g}/η"
        auto_ylim(a, series, [r["threshold"] for r in rows])
        po = results["per_optimizer"].get(name, {})
        above = po.get("above_fraction_median")
        above_txt = f", above {above:.2f}" if above is not None and math.isfinite(above) else ""
        a.set(yscale="log", xlabel="step", ylabel="λmax(P⁻¹H)",
              title=(f"{name} ({thr_txt}{above_txt})" if thr_txt else f"{name} (no fixed threshold)"))
        a.legend(fontsize=7)
    for j in range(len(names), nrows * ncols):
        ax[j // ncols, j % ncols].axis("off")
    fig.suptitle("Adaptive optimizers at the AEoS: preconditioned sharpness vs threshold (dashed)")
    savefig(ctx, fig, "aeos_optimizers.png")
