"""Rod flow vs stable flow for GD and the eight optimizers of the rod-flow paper (Regis & Chewi, "A Rod Flow
Model for Adam at the Edge of Stability", Figs. 3, 6–13; docs/theory/stable_and_rod_flows.md).

For each architecture (MLP, CNN, ViT) and optimizer (GD, HeavyBall, Nesterov, ScalarRMSProp, RMSProp,
ScalarAdam, Adam, ScalarNAdam, NAdam) one simulation runs the discrete optimizer, the stable flow and the rod
flow side by side: training loss, effective sharpness λmax(P⁻¹H)/threshold (1 = EoS) and the distance of each
flow's centre to the discrete centre (w_k + w_{k+1})/2 relative to its norm (the paper's bottom row).

Restart-inside-EoS table (docs/theory/stable_and_rod_flows.md, restarts): both flows are restarted from the discrete state at even steps k0
inside the EoS (fractions ``restart_fracs`` of the way from the discrete EoS onset to the end) and compared over
the next ``restart_window`` steps: median centre distance of each flow and the ratio stable/rod (> 1: the rod
flow is closer).

Hyper-parameters: the β's are the paper's per architecture (captions of Figs. 3, 6–13); learning rates are
tuned for the small problems here (digits, tiny nets) so that the discrete run reaches the EoS early; the paper
scale uses the captions' learning rates on CIFAR-10 (GD: our choice).

Summary (from the files): per architecture × optimizer the EoS onsets, late effective sharpness of each run,
median centre distances and their ratio, gradients per step of each flow, and the restart table.
"""
from __future__ import annotations

import math

import numpy as np

from ..papers import cite
from .common import ExperimentError, figure, finite, fmt, require_positive, savefig

NAME = "rod-tracking"
TITLE = "Rod flow vs stable flow tracking the discrete run (9 optimizers × MLP/CNN/ViT) + restart table"
PAPER = cite("rod-flow-adam", "Figs. 3, 6-13")
RUNTIME = "~35 min (27 flow runs + 27 restarts; ~10 min with --set archs=mlp)"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "archs": "architectures: mlp, cnn, vit",
    "optimizers": "optimizers: GD, HeavyBall, Nesterov, ScalarRMSProp, RMSProp, ScalarAdam, Adam, ScalarNAdam, NAdam",
    "models": "model options per architecture (JSON: {arch: {option: value}})",
    "hyper": "optimizer options per architecture and optimizer (JSON: {arch: {optimizer: {name: value}}})",
    "backend": "integrator backend of the flows (scipy, torch, …)", "method": "integration method of the flows",
    "rtol": "relative tolerance of the flows' integrator", "atol": "absolute tolerance of the flows' integrator",
    "restart": "also restart both flows inside the EoS (the restart table)",
    "restart_fracs": "restart points as fractions of the way from the EoS onset to the end of the run",
    "restart_window": "steps over which a restarted flow is compared with the discrete run",
}

OPTIMIZERS = ["GD", "HeavyBall", "Nesterov", "ScalarRMSProp", "RMSProp", "ScalarAdam", "Adam", "ScalarNAdam",
              "NAdam"]
ARCHS = ["mlp", "cnn", "vit"]

_MODELS_SMALL = {
    "mlp": {"width": 16, "depth": 2, "activation": "tanh"},
    "cnn": {"channels": [4, 8], "activation": "tanh"},
    "vit": {"patch_size": 4, "dim": 8, "depth": 1, "heads": 2, "mlp_ratio": 2},
}
_MODELS_PAPER = {
    "mlp": {"width": 256, "depth": 2, "activation": "tanh"},                 # "3-layer MLP"
    "cnn": {"channels": [32, 64], "activation": "tanh"},
    "vit": {"patch_size": 4, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2},
}


def _hyper(lrs: dict, betas: dict) -> dict:
    """arch -> optimizer -> constructor kwargs, from per-arch learning rates and the paper's β's."""
    out = {}
    for arch in ARCHS:
        b = betas[arch]
        out[arch] = {
            "GD": {"lr": lrs[arch]["GD"]},
            "HeavyBall": {"lr": lrs[arch]["HeavyBall"], "beta": b["HeavyBall"]},
            "Nesterov": {"lr": lrs[arch]["Nesterov"], "beta": b["Nesterov"]},
            "ScalarRMSProp": {"lr": lrs[arch]["ScalarRMSProp"], "beta2": 0.99, "bias_correction": False},
            "RMSProp": {"lr": lrs[arch]["RMSProp"], "beta2": 0.99, "bias_correction": False},
            "ScalarAdam": {"lr": lrs[arch]["ScalarAdam"], "beta1": b["ScalarAdam"], "beta2": 0.99,
                           "bias_correction": True},
            "Adam": {"lr": lrs[arch]["Adam"], "beta1": b["Adam"], "beta2": 0.999, "bias_correction": True},
            "ScalarNAdam": {"lr": lrs[arch]["ScalarNAdam"], "beta1": b["ScalarNAdam"], "beta2": 0.99,
                            "bias_correction": True},
            "NAdam": {"lr": lrs[arch]["NAdam"], "beta1": b["NAdam"], "beta2": 0.999, "bias_correction": True},
        }
    return out


#: the paper's β's (captions of Figs. 3, 6-13)
_BETAS = {
    "mlp": {"HeavyBall": 0.4, "Nesterov": 0.8, "ScalarAdam": 0.8, "Adam": 0.8, "ScalarNAdam": 0.5, "NAdam": 0.6},
    "cnn": {"HeavyBall": 0.4, "Nesterov": 0.4, "ScalarAdam": 0.6, "Adam": 0.5, "ScalarNAdam": 0.5, "NAdam": 0.5},
    "vit": {"HeavyBall": 0.3, "Nesterov": 0.4, "ScalarAdam": 0.4, "Adam": 0.4, "ScalarNAdam": 0.4, "NAdam": 0.4},
}
#: the paper's learning rates (captions; GD not given there: our choice)
_LRS_PAPER = {
    "mlp": {"GD": 0.02, "HeavyBall": 0.05, "Nesterov": 0.08, "ScalarRMSProp": 1e-4, "RMSProp": 1e-4,
            "ScalarAdam": 1e-3, "Adam": 1e-4, "ScalarNAdam": 5e-4, "NAdam": 1e-4},
    "cnn": {"GD": 0.05, "HeavyBall": 0.125, "Nesterov": 0.125, "ScalarRMSProp": 1e-4, "RMSProp": 1e-4,
            "ScalarAdam": 1e-3, "Adam": 1e-4, "ScalarNAdam": 1e-3, "NAdam": 1e-4},
    "vit": {"GD": 0.02, "HeavyBall": 0.04, "Nesterov": 0.02, "ScalarRMSProp": 7.5e-5, "RMSProp": 7.5e-5,
            "ScalarAdam": 1e-4, "Adam": 7.5e-5, "ScalarNAdam": 1e-4, "NAdam": 7.5e-5},
}
#: tuned on digits (4 classes, 256 points) with the small models above: EoS within the first ~150 steps
_LRS_SMALL = {
    "mlp": {"GD": 0.7, "HeavyBall": 1.5, "Nesterov": 2.4, "ScalarRMSProp": 0.2, "RMSProp": 0.003,
            "ScalarAdam": 0.4, "Adam": 0.015, "ScalarNAdam": 0.1, "NAdam": 0.004},
    "cnn": {"GD": 0.4, "HeavyBall": 0.8, "Nesterov": 0.8, "ScalarRMSProp": 0.15, "RMSProp": 0.003,
            "ScalarAdam": 0.3, "Adam": 0.01, "ScalarNAdam": 0.1, "NAdam": 0.003},
    "vit": {"GD": 0.03, "HeavyBall": 0.05, "Nesterov": 0.04, "ScalarRMSProp": 0.1, "RMSProp": 0.001,
            "ScalarAdam": 0.1, "Adam": 0.003, "ScalarNAdam": 0.03, "NAdam": 0.001},
}

_BASE = dict(data="digits", classes=4, n=256, loss="mse", archs=list(ARCHS), optimizers=list(OPTIMIZERS),
             eigs=1, eig_every=5, backend="scipy", method="DOP853", rtol=1e-6, atol=1e-9, restart=True,
             restart_fracs=[0.3, 0.7], late_fraction=0.1)

DEFAULTS = {
    "tiny": {**_BASE, "n": 64, "archs": ["mlp"], "optimizers": ["GD", "Adam"], "steps": 16, "eig_every": 4,
             "restart_window": 6, "restart_fracs": [0.5],
             "models": {"mlp": {"width": 6, "depth": 1, "activation": "tanh"}, **{k: v for k, v in
                                                                                  _MODELS_SMALL.items() if k != "mlp"}},
             "hyper": _hyper(_LRS_SMALL, _BETAS)},
    "small": {**_BASE, "steps": 200, "eig_every": 10, "restart_window": 40, "restart_fracs": [0.5],
              "models": _MODELS_SMALL, "hyper": _hyper(_LRS_SMALL, _BETAS)},
    "paper": {**_BASE, "data": "cifar10", "classes": 4, "n": 1000, "steps": 2000, "eig_every": 10,
              "restart_window": 100, "restart_fracs": [0.25, 0.5, 0.75], "models": _MODELS_PAPER,
              "hyper": _hyper(_LRS_PAPER, _BETAS), "rtol": 1e-7, "atol": 1e-10},
}


def check_params(p):
    require_positive(p, "steps", "eig_every", "n", "restart_window", "rtol", "atol")
    bad = [a for a in p["archs"] if a not in ARCHS]
    if bad:
        raise ExperimentError(f"archs={p['archs']!r}: unknown {bad}; valid: {ARCHS}")
    bad = [o for o in p["optimizers"] if o not in OPTIMIZERS]
    if bad:
        raise ExperimentError(f"optimizers={p['optimizers']!r}: unknown {bad}; valid: {OPTIMIZERS}")
    for f in p["restart_fracs"]:
        if not 0 <= f < 1:
            raise ExperimentError(f"restart_fracs={p['restart_fracs']!r}: every value must lie in [0, 1)")
    for a in p["archs"]:
        if a not in p["models"]:
            raise ExperimentError(f"models has no entry for arch {a!r}")
        for o in p["optimizers"]:
            if o not in p["hyper"].get(a, {}):
                raise ExperimentError(f"hyper[{a!r}] has no entry for optimizer {o!r}")


def make_optimizer(name, kwargs):
    import pyrod

    kw = dict(kwargs)
    try:
        return pyrod.optimizers.get(name)(**kw)
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"hyper for {name}: {kw!r}: {e}") from None


def filename(arch, opt, k0=None):
    return f"runs/{arch}_{opt}.nc" if k0 is None else f"restarts/{arch}_{opt}_restart{k0}.nc"


def restart_points(ds, p) -> tuple[list, int | None]:
    """Even steps k0 inside the discrete EoS (fractions of the way from the onset to the end)."""
    from .common import eos_stats

    st = eos_stats(ds, 0.1)
    T = int(st["steps_completed"])
    onset = st["eos_onset"]
    start = int(onset) if onset is not None else 0
    ks = []
    for f in p["restart_fracs"]:
        k0 = int(start + f * (T - start))
        k0 -= k0 % 2
        k0 = max(0, min(k0, T - 2))
        if k0 not in ks:
            ks.append(k0)
    return ks, onset


def run(ctx):
    p = ctx.p
    flow_kw = dict(backend=p["backend"], method=p["method"], rtol=p["rtol"], atol=p["atol"])
    import pyrod

    # sweep 1: every arch × optimizer (paired problem and optimizer configs); sweep 2: the restarts inside the
    # EoS, which depend on sweep 1's discrete runs. Both run in parallel with --jobs and resume when rerun.
    problems = {a: ctx.problem(model=a, data=p["data"], classes=p["classes"], n=p["n"], loss=p["loss"],
                               model_kwargs=p["models"][a]) for a in p["archs"]}
    todo = [(a, o) for a in p["archs"] for o in p["optimizers"]]
    specs = {(a, o): ctx.spec(problems[a], make_optimizer(o, p["hyper"][a][o]), steps=p["steps"],
                              runs=["discrete", "stable", "rod"], eigs=p["eigs"], eig_every=p["eig_every"], **flow_kw)
             for a, o in todo}
    keys = ("problem", "optimizer")
    stems = {point_key(specs[t].problem, specs[t].optimizer): filename(*t)[len("runs/"):-3] for t in todo}
    ctx.sweep(specs[todo[0]], {keys: [(specs[t].problem, specs[t].optimizer) for t in todo]}, "runs",
              name=lambda pt: stems[point_key(pt["problem"], pt["optimizer"])])
    if p["restart"]:
        rows, rstems = [], {}
        for arch, name in todo:
            ks, _ = restart_points(pyrod.open(ctx.out / filename(arch, name))["discrete"].ds, p)
            for k0 in ks:
                sp = specs[(arch, name)]
                rows.append((sp.problem, sp.optimizer, k0, k0 + p["restart_window"]))
                rstems[point_key(sp.problem, sp.optimizer, k0)] = filename(arch, name, k0)[len("restarts/"):-3]
        if rows:
            ctx.sweep(specs[todo[0]], {("problem", "optimizer", "restart_at", "stop.steps"): rows}, "restarts",
                      name=lambda pt: rstems[point_key(pt["problem"], pt["optimizer"], pt["restart_at"])])
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def point_key(*parts) -> str:
    """A hashable text key of spec parts (problem and optimizer configs, restart step, ...): names sweep points."""
    import json

    return json.dumps(parts, sort_keys=True, default=str)


def _median_last(da, frac):
    t, y = finite(da)
    if not len(t):
        return math.nan
    t0 = t.max() - frac * (t.max() - t.min())
    return float(np.median(y[t >= t0]))


def _median_window(da, k0, k1):
    t, y = finite(da)
    sel = (t > k0) & (t < k1)        # t = k0 is the restart point itself (distance 0 by construction)
    return float(np.median(y[sel])) if sel.any() else math.nan


def summarize(out, p) -> dict:
    import pyrod

    from .common import eos_stats

    table, restarts = {}, []
    for arch in p["archs"]:
        for name in p["optimizers"]:
            tree = pyrod.open(out / filename(arch, name))
            T = int(tree.attrs.get("steps_completed", p["steps"]))
            row = {"lr": pyrod.config_of(tree)["optimizer"]["lr"], "steps": T,
                   "threshold": float(tree.attrs.get("threshold", math.nan))}
            for run in ("discrete", "stable", "rod"):
                ds = tree[run].ds
                st = eos_stats(ds, p["late_fraction"])
                row[f"{run}_eos_onset"] = st["eos_onset"]
                row[f"{run}_late_effective_sharpness"] = st["late_ratio"]
                if run != "discrete":
                    row[f"{run}_centre_distance_median"] = _median_last(ds["centre_distance"], 1.0)
                    row[f"{run}_centre_distance_last10"] = _median_last(ds["centre_distance"], 0.1)
                    row[f"{run}_relative_centre_distance_median"] = _median_last(ds["relative_centre_distance"], 1.0)
                    n_grad = float(ds.attrs.get("n_grad", math.nan))
                    row[f"{run}_grads_per_step"] = n_grad / max(T, 1)
                    row[f"{run}_status"] = str(ds.attrs.get("flow_status", ""))
            for q in ("median", "last10"):
                row[f"ratio_stable_over_rod_{q}"] = (row[f"stable_centre_distance_{q}"]
                                                     / row[f"rod_centre_distance_{q}"])
            table.setdefault(arch, {})[name] = row
            if p["restart"]:
                ks, onset = restart_points(tree["discrete"].ds, p)
                for k0 in ks:
                    f = out / filename(arch, name, k0)
                    if not f.exists():
                        continue
                    rt = pyrod.open(f)
                    k1 = k0 + p["restart_window"]
                    rod = _median_window(rt["rod"].ds["centre_distance"], k0, k1)
                    stable = _median_window(rt["stable"].ds["centre_distance"], k0, k1)
                    rod_it = _median_window(rt["rod"].ds["iterate_distance"], k0, k1)
                    amp = _median_window(rt["rod"].ds["discrete_half_length"], k0, k1)
                    es_t, es = finite(rt["discrete"].ds["effective_sharpness"])
                    es_k0 = float(es[np.searchsorted(es_t, k0)]) if len(es) and es_t[-1] >= k0 else math.nan
                    restarts.append({"arch": arch, "optimizer": name, "k0": k0, "in_eos": onset is not None
                                     and k0 >= onset, "effective_sharpness_at_k0": es_k0,
                                     "rod_centre_distance": rod, "stable_centre_distance": stable,
                                     "ratio_stable_over_rod": stable / rod if rod > 0 else math.nan,
                                     "rod_iterate_distance": rod_it, "discrete_half_amplitude": amp,
                                     "file": filename(arch, name, k0)})
    ratios = np.array([r["ratio_stable_over_rod_median"] for a in table.values() for r in a.values()], float)
    rr = np.array([r["ratio_stable_over_rod"] for r in restarts], float)
    return {
        "table": table, "restarts": restarts,
        "n_runs": int(len(ratios)),
        "n_discrete_reached_eos": int(sum(r["discrete_eos_onset"] is not None for a in table.values()
                                          for r in a.values())),
        "n_rod_closer_full_run": int(np.sum(ratios > 1)),
        "geomean_ratio_stable_over_rod_full_run": float(np.exp(np.nanmean(np.log(ratios)))) if len(ratios) else None,
        "n_rod_closer_restart": int(np.sum(rr > 1)), "n_restarts": int(len(rr)),
        "geomean_ratio_stable_over_rod_restart": float(np.exp(np.nanmean(np.log(rr)))) if len(rr) else None,
        "median_ratio_stable_over_rod_restart": float(np.nanmedian(rr)) if len(rr) else None,
        "n_restart_rod_much_worse_below_0.2": int(np.sum(rr < 0.2)),
        "n_restart_rod_much_better_above_2": int(np.sum(rr > 2)),
        "median_grads_per_step_rod": float(np.nanmedian([r["rod_grads_per_step"] for a in table.values()
                                                          for r in a.values()])),
        "median_grads_per_step_stable": float(np.nanmedian([r["stable_grads_per_step"] for a in table.values()
                                                             for r in a.values()])),
        "n_rod_late_effective_sharpness_within_0.8_1.25": int(sum(0.8 <= r["rod_late_effective_sharpness"] <= 1.25
                                                                 for a in table.values() for r in a.values())),
        "n_stable_late_effective_sharpness_above_1.25": int(sum(r["stable_late_effective_sharpness"] > 1.25
                                                               for a in table.values() for r in a.values())),
    }


_C = {"discrete": "k", "stable": "tab:blue", "rod": "tab:red"}


def plot(ctx, results):
    import pyrod

    p = ctx.p
    for arch in p["archs"]:
        names = p["optimizers"]
        fig, ax = figure(len(names), 3, width=3.7, height=2.3)
        for i, name in enumerate(names):
            tree = pyrod.open(ctx.out / filename(arch, name))
            row = results["table"][arch][name]
            for run in ("discrete", "stable", "rod"):
                ds = tree[run].ds
                t, y = finite(ds["loss"])
                ax[i, 0].plot(t, y, color=_C[run], lw=1.0, label=run)
                t, y = finite(ds["effective_sharpness"])
                ax[i, 1].plot(t, y, color=_C[run], lw=1.0, label=run)
                if run != "discrete":
                    t, y = finite(ds["relative_centre_distance"])
                    keep = y > 0
                    ax[i, 2].plot(t[keep], y[keep], color=_C[run], lw=1.0, label=f"{run} flow")
            ax[i, 1].axhline(1.0, color="k", ls="--", lw=0.8)
            ax[i, 0].set(yscale="log", ylabel="loss", title=f"{name} (η={fmt(row['lr'])})")
            ax[i, 1].set(ylabel="λmax(P⁻¹H)/threshold", title="effective sharpness (1 = EoS)")
            ax[i, 2].set(yscale="log", ylabel="relative centre distance",
                         title=f"‖w̄−w_c‖/‖w_c‖ (stable/rod {row['ratio_stable_over_rod_median']:.2g}×)")
            for a in ax[i]:
                a.set_xlabel("step")
            if i == 0:
                for a in ax[i]:
                    a.legend(fontsize=7)
        fig.suptitle(f"{arch.upper()} on {p['data']}: discrete vs stable flow vs rod flow")
        savefig(ctx, fig, f"rod_tracking_{arch}.png", dpi=90)
    # overview: ratios per optimizer (full run and restarts)
    fig, ax = figure(1, 2, width=6.0, height=3.4)
    names = p["optimizers"]
    x = np.arange(len(names))
    wdt = 0.8 / max(1, len(p["archs"]))
    for j, arch in enumerate(p["archs"]):
        r = [results["table"][arch][n]["ratio_stable_over_rod_median"] for n in names]
        ax[0, 0].bar(x + j * wdt, r, width=wdt, label=arch)
        rs = []
        for n in names:
            v = [q["ratio_stable_over_rod"] for q in results["restarts"] if q["arch"] == arch and q["optimizer"] == n]
            rs.append(float(np.exp(np.nanmean(np.log(v)))) if v else np.nan)
        ax[0, 1].bar(x + j * wdt, rs, width=wdt, label=arch)
    for a, title in zip(ax[0], ["whole run: median centre distance", "restarts inside the EoS (geo-mean)"], strict=False):
        a.axhline(1.0, color="k", lw=0.8)
        a.set(yscale="log", ylabel="stable / rod centre distance", title=f"{title} (>1: rod closer)")
        a.set_xticks(x + 0.4 - wdt / 2, names, rotation=45, ha="right", fontsize=8)
        a.legend(fontsize=8)
    savefig(ctx, fig, "rod_tracking_ratios.png")
