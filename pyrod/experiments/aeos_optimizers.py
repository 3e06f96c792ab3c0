"""Eight adaptive optimizers at the adaptive edge of stability (Cohen et al. 2022, Fig. 5).

The same MLP trained full-batch by Adam (bias correction), AdamW, Adafactor, AMSGrad, Padam (p = ¼), NAdam,
RMSProp and Adagrad, each at several learning rates (colours). The preconditioned sharpness λmax(P⁻¹H)
equilibrates at, or just above, each optimizer's stability threshold (dashed, same colour): (2+2β1)/((1−β1)η)
for the Adam family, (2+2β1)/((1−β1)(1+2β1)η) for NAdam, 2/η for RMSProp and Adagrad.

Adafactor is pyrod's ``torch.optim.Adafactor`` (no momentum; per-block step α_t = max(ε2, RMS(W))·min(lr, 1/√t),
update clipping): pyrod gives it no threshold (NaN, see ``pyrod/optimizers/adafactor.py``), so its panel shows
λmax(P⁻¹H) without a dashed line and it has no late ratio. (The paper's Adafactor had momentum 0.9.)

Summary (from the files): per optimizer and learning rate the threshold, the late-run mean of
λmax(P⁻¹H)/threshold and the EoS onset.
"""
from __future__ import annotations

import math

import numpy as np

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
PAPER = "Cohen et al. 2022 (AEoS) Fig. 5"
RUNTIME = "~3-4 min"

OPTIMIZERS = ["Adam", "AdamW", "Adafactor", "AMSGrad", "Padam", "NAdam", "RMSProp", "Adagrad"]

#: fixed hyper-parameters per optimizer (the paper's Appendix G.2 where pyrod has the same knob)
_HYPER_PAPER = {
    "Adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": True},
    "AdamW": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": True, "weight_decay": 1e-2},
    "Adafactor": {},
    "AMSGrad": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False},
    "Padam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False, "p": 0.25},
    "NAdam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "bias_correction": False},
    "RMSProp": {"beta2": 0.995, "eps": 1e-7},
    "Adagrad": {},
}
#: small/tiny scale: β2 = 0.99 so that ν adapts within a few hundred steps (the paper's runs are thousands)
_HYPER_SMALL = {k: ({**v, "beta2": 0.99} if "beta2" in v and k != "RMSProp" else dict(v))
                for k, v in _HYPER_PAPER.items()}

_LRS_PAPER = {
    "Adam": np.logspace(np.log10(3e-5), -3, 5).tolist(), "AdamW": np.logspace(np.log10(3e-5), -3, 5).tolist(),
    "Adafactor": np.logspace(-5, -3, 5).tolist(), "AMSGrad": np.logspace(-5, -3, 5).tolist(),
    "Padam": np.logspace(-3, -1, 5).tolist(), "NAdam": np.logspace(-5, -3, 5).tolist(),
    "RMSProp": np.logspace(-4, -3, 5).tolist(), "Adagrad": np.logspace(-2, -1, 5).tolist(),
}
_LRS_SMALL = {
    "Adam": [0.005, 0.01, 0.02], "AdamW": [0.005, 0.01, 0.02], "Adafactor": [0.01, 0.03, 0.1],
    "AMSGrad": [0.12, 0.16, 0.24], "Padam": [0.3, 0.5, 0.8], "NAdam": [0.003, 0.006, 0.012],
    "RMSProp": [0.001, 0.002, 0.004], "Adagrad": [0.1, 0.2, 0.4],
}
_BASE = dict(model="mlp", data="digits", classes=4, n=500, loss="mse", width=32, depth=3, activation="tanh",
             eigs=1, eig_every=10, late_fraction=0.25, optimizers=list(OPTIMIZERS))

DEFAULTS = {
    "tiny": {**_BASE, "n": 120, "width": 16, "depth": 2, "steps": 40, "optimizers": ["Adam", "RMSProp"],
             "lrs": {k: v[1:2] for k, v in _LRS_SMALL.items()}, "hyper": _HYPER_SMALL},
    "small": {**_BASE, "steps": 500, "lrs": _LRS_SMALL, "hyper": _HYPER_SMALL},
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
    todo = [(o, lr) for o in p["optimizers"] for lr in p["lrs"][o]]
    for name, lr in ctx.iterate(todo, "optimizer × lr"):
        opt = make_optimizer(name, lr, p["hyper"], prob)
        ctx.simulate(prob, opt, filename(name, lr), steps=p["steps"], eigs=p["eigs"], eig_every=p["eig_every"])
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def summarize(out, p) -> dict:
    import pyrod

    rows = {}
    for name in p["optimizers"]:
        for lr in p["lrs"][name]:
            f = filename(name, lr)
            ds = pyrod.open(out / f)["discrete"].ds
            st = eos_stats(ds, p["late_fraction"])
            st.update({"lr": lr, "file": f})
            rows.setdefault(name, []).append(st)
    per_opt = {}
    for name, rs in rows.items():
        ratios = np.array([r["late_ratio"] for r in rs if not r["diverged"]], dtype=float)
        ratios = ratios if len(ratios) else np.array([np.nan])
        has_thr = np.isfinite([r["threshold"] for r in rs]).all()
        per_opt[name] = {
            "threshold_known": bool(has_thr),
            "late_ratio_per_lr": {fmt(r["lr"]): r["late_ratio"] for r in rs} if has_thr else None,
            "late_ratio_min": float(np.nanmin(ratios)) if has_thr else None,
            "late_ratio_max": float(np.nanmax(ratios)) if has_thr else None,
            "n_reached_eos": sum(r["eos_onset"] is not None and not r["diverged"] for r in rs),
            "n_diverged": sum(r["diverged"] for r in rs),
            "n_runs": len(rs),
        }
    return {"per_optimizer": per_opt, "runs": rows}


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
        a.set(yscale="log", xlabel="step", ylabel="λmax(P⁻¹H)",
              title=f"{name} ({thr_txt})" if thr_txt else f"{name} (no fixed threshold)")
        a.legend(fontsize=7)
    for j in range(len(names), nrows * ncols):
        ax[j // ncols, j % ncols].axis("off")
    fig.suptitle("Adaptive optimizers at the AEoS: preconditioned sharpness vs threshold (dashed)")
    savefig(ctx, fig, "aeos_optimizers.png")
