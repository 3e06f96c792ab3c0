"""Adam at the adaptive edge of stability (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability", Fig. 1 and Fig. 8).

Full-batch Adam (no bias correction, as in the paper's Fig. 1) on a tanh MLP at several (η, β1, β2):

* panel (a) varies η at β1 = 0.9, β2 = 0.999; panel (b) varies β1 at fixed η; panel (c) varies β2 at fixed η;
* the preconditioned sharpness λmax(P⁻¹H) rises and equilibrates at (2+2β1)/((1−β1)η) (dashed lines),
  while the raw sharpness λmax(H) keeps rising (Fig. 8).

Summary (from the NetCDF files): per setting the threshold, the late-run mean of λmax(P⁻¹H)/threshold (the
"late ratio", ≈ 1 at the AEoS), the EoS onset step, and the raw-sharpness growth after the onset.
"""
from __future__ import annotations

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

NAME = "aeos"
TITLE = "Adam at the adaptive EoS: λmax(P⁻¹H) equilibrates at (2+2β1)/((1−β1)η); raw λmax(H) alongside"
PAPER = cite("aeos", "Fig. 1 (+ Fig. 8)")
RUNTIME = "~5-8 min"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "lrs": "panel (a): learning rates η at beta1, beta2",
    "beta1": "panel (a): Adam's β1", "beta2": "panels (a, b): Adam's β2",
    "eps": "Adam's ε", "bias_correction": "Adam's bias correction (the paper's Fig. 1: off)",
    "lr_beta1": "panel (b): the η at which β1 varies", "beta1s": "panel (b): the β1 values",
    "lr_beta2": "panel (c): the η at which β2 varies", "beta2s": "panel (c): the β2 values",
}

_BASE = dict(model="mlp", data="digits", classes=4, n=500, loss="mse", width=32, depth=3, activation="tanh",
             eps=1e-8, bias_correction=False, eigs=1, eig_every=10, late_fraction=0.25)

DEFAULTS = {
    "tiny": {**_BASE, "n": 120, "width": 16, "depth": 2, "steps": 60, "eig_every": 10,
             "lrs": [0.03], "beta1": 0.9, "beta2": 0.999, "lr_beta1": 0.03, "beta1s": [0.5],
             "lr_beta2": 0.03, "beta2s": [0.9]},
    # small: all 10 digit classes (1000 points) so that training goes on; β2 = 0.99 in panels (a, b) so that ν
    # adapts within the run (the paper's runs are thousands of steps long)
    "small": {**_BASE, "classes": 10, "n": 1000, "steps": 700, "lrs": [0.01, 0.02, 0.04], "beta1": 0.9,
              "beta2": 0.99, "lr_beta1": 0.02, "beta1s": [0.5, 0.8, 0.9], "lr_beta2": 0.02,
              "beta2s": [0.9, 0.99, 0.999]},
    # the paper: FC net (5 hidden layers of 200, tanh) on CIFAR-10, MSE; here a 5000-image subset (full-batch)
    "paper": {**_BASE, "data": "cifar10", "classes": 10, "n": 5000, "width": 200, "depth": 5, "steps": 3000,
              "eig_every": 20, "lrs": [2e-5, 5e-5, 1e-4, 2e-4], "beta1": 0.9, "beta2": 0.999, "lr_beta1": 1e-4,
              "beta1s": [0.5, 0.7, 0.9], "lr_beta2": 5e-5, "beta2s": [0.9, 0.99, 0.999], "eps": 1e-7},
}


def check_params(p):
    require_positive(p, "lrs", "lr_beta1", "lr_beta2", "steps", "eig_every", "n", "width")
    for k in ("beta1s", "beta2s"):
        for b in p[k]:
            if not 0 <= b < 1:
                raise ExperimentError(f"{k}={p[k]!r}: every value must lie in [0, 1)")
    if not (0 <= p["beta1"] < 1 and 0 <= p["beta2"] < 1):
        raise ExperimentError(f"beta1={p['beta1']!r}, beta2={p['beta2']!r} must lie in [0, 1)")
    if not p["lrs"] and not p["beta1s"] and not p["beta2s"]:
        raise ExperimentError("nothing to run: lrs, beta1s and beta2s are all empty")


def settings(p) -> dict:
    """panel -> list of (lr, beta1, beta2)."""
    return {
        "a": [(lr, p["beta1"], p["beta2"]) for lr in p["lrs"]],
        "b": [(p["lr_beta1"], b1, p["beta2"]) for b1 in p["beta1s"]],
        "c": [(p["lr_beta2"], p["beta1"], b2) for b2 in p["beta2s"]],
    }


def filename(lr, b1, b2) -> str:
    return f"runs/adam_lr{lr:g}_b1{b1:g}_b2{b2:g}.nc"


def problem_of(ctx):
    p = ctx.p
    return ctx.problem(model=p["model"], data=p["data"], classes=p["classes"], n=p["n"], loss=p["loss"],
                       model_kwargs={"width": p["width"], "depth": p["depth"], "activation": p["activation"]}
                       if p["model"] == "mlp" else None)


def run(ctx):
    import pyrod

    p = ctx.p
    prob = problem_of(ctx)
    todo = []
    for panel in settings(p).values():
        for s in panel:
            if s not in todo:
                todo.append(s)
    # one sweep over the settings (paired η, β1, β2): parallel with --jobs, resumed when rerun
    lr0, b10, b20 = todo[0]
    opt = pyrod.optimizers.Adam(lr=lr0, beta1=b10, beta2=b20, eps=p["eps"], bias_correction=p["bias_correction"])
    base = ctx.spec(prob, opt, steps=p["steps"], eigs=p["eigs"], eig_every=p["eig_every"])
    keys = ("optimizer.lr", "optimizer.beta1", "optimizer.beta2")
    ctx.sweep(base, {keys: todo}, "runs",
              name=lambda pt: filename(*(pt[k] for k in keys))[len("runs/"):-len(".nc")])
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def summarize(out, p) -> dict:
    """Per-setting AEoS numbers, read from the NetCDF files in ``out``."""
    import pyrod

    rows = {}
    for panel, ss in settings(p).items():
        for lr, b1, b2 in ss:
            f = filename(lr, b1, b2)
            ds = pyrod.open(out / f)["discrete"].ds
            st = eos_stats(ds, p["late_fraction"])
            st.update({"lr": lr, "beta1": b1, "beta2": b2, "file": f,
                       "threshold_formula": (2 + 2 * b1) / ((1 - b1) * lr)})
            rows.setdefault(panel, []).append(st)
    flat = [r for rs in rows.values() for r in rs if not r["diverged"]]
    ratios = np.array([r["late_ratio"] for r in flat], dtype=float)
    grows = np.array([r.get("raw_sharpness_growth", np.nan) for r in flat], dtype=float)
    at_eos = [r for r in flat if r["eos_onset"] is not None]
    return {
        "panels": rows,
        "late_ratio_min": float(np.nanmin(ratios)), "late_ratio_max": float(np.nanmax(ratios)),
        "late_ratio_mean": float(np.nanmean(ratios)),
        "n_settings": sum(len(rs) for rs in rows.values()), "n_diverged": sum(r["diverged"] for rs in rows.values()
                                                                               for r in rs),
        "n_reached_eos": len(at_eos),
        "n_equilibrated_0.85_1.15": int(np.sum((ratios > 0.85) & (ratios < 1.15))),
        "n_raw_sharpness_rising_after_onset": int(np.sum(grows > 1.05)),
        "raw_sharpness_growth_median": float(np.nanmedian(grows)) if np.isfinite(grows).any() else None,
    }


def plot(ctx, results):
    import pyrod

    p = ctx.p
    titles = {"a": "(a) vary η (β1={}, β2={})".format(p["beta1"], p["beta2"]),
              "b": "(b) vary β1 (η={}, β2={})".format(fmt(p["lr_beta1"]), p["beta2"]),
              "c": "(c) vary β2 (η={}, β1={})".format(fmt(p["lr_beta2"]), p["beta1"])}
    panels = [k for k in ("a", "b", "c") if results["panels"].get(k)]
    fig, ax = figure(3, len(panels), width=4.4, height=3.0)
    for j, panel in enumerate(panels):
        rows = results["panels"][panel]
        cs = colors(len(rows), "plasma")
        pre, raw = [], []
        for c, r in zip(cs, rows, strict=False):
            ds = pyrod.open(ctx.out / r["file"])["discrete"].ds
            lab = {"a": f"η={fmt(r['lr'])}", "b": f"β1={r['beta1']:g}", "c": f"β2={r['beta2']:g}"}[panel]
            t, y = finite(ds["preconditioned_sharpness"])
            ax[0, j].plot(t, y, color=c, lw=1.2, label=lab)
            pre.append((t, y))
            threshold_line(ax[0, j], r["threshold"], color=c)
            t, y = finite(ds["sharpness"])
            ax[1, j].plot(t, y, color=c, lw=1.2, label=lab)
            raw.append((t, y))
            t, y = finite(ds["loss"])
            ax[2, j].plot(t, y, color=c, lw=1.0, label=lab)
        ax[0, j].set(title=titles[panel], xlabel="step", ylabel="preconditioned sharpness λmax(P⁻¹H)",
                     yscale="log")
        auto_ylim(ax[0, j], pre, [r["threshold"] for r in rows])
        ax[1, j].set(xlabel="step", ylabel="raw sharpness λmax(H)", title="raw sharpness")
        late = [y[t >= 10] for t, y in raw if (t >= 10).any()]
        if late:
            ax[1, j].set_ylim(0.9 * min(float(y.min()) for y in late), 1.1 * max(float(y.max()) for y in late))
        ax[2, j].set(xlabel="step", ylabel="training loss", yscale="log")
        for i in range(3):
            ax[i, j].legend(fontsize=7)
    fig.suptitle("Full-batch Adam (no bias correction), MLP on %s: λmax(P⁻¹H) at the AEoS; dashed lines: "
                 "(2+2β1)/((1−β1)η)" % p["data"])
    savefig(ctx, fig, "aeos.png")
