"""Central flows for GD and RMSProp (Cohen, Damian et al., ICLR 2025; Damian's talk "Understanding Adaptive
Optimizers with Central Flows"; docs/theory/central_flows.md, "Predictions").

For GD and RMSProp the discrete run and the central flow (and optionally the stable flow) run side by side:

* (a) training loss: the discrete loss oscillates at the EoS; the central flow's *predicted* loss
  L(w̄) + ½⟨H, Σ⟩ (variable ``predicted_loss`` of the ``central`` group) follows its time average, while the stable
  flow departs;
* (b) the top eigenvalues of the effective Hessian η·P⁻¹H (threshold 2): the central flow holds the critical ones
  at 2, the discrete run oscillates around it;
* (c) RMSProp: coordinates of ν, true (the discrete run, replayed here step by step) and predicted (the central
  flow's ν); GD: distance of each flow to the discrete run.

The flows start from
the discrete state after ``*_warm_start`` steps (``restart_at``; the reference's ``--warm-start``): RMSProp's first
steps, with ν_0 = g_0⊙g_0, are far above its threshold, a transient no smooth flow is meant to follow.

ν coordinates: pyrod's central group records ‖ν‖ (``nu_norm``) but no per-coordinate ν, so panel (c) shows the
true coordinates with ‖ν‖ true vs predicted; a central group variable with "nu" in its name and a second dimension
(per-coordinate ν) is used when present.

Summary (from the files): median relative error of the predicted loss against the discrete loss smoothed over
``smooth`` steps, the same for the central flow's own loss L(w̄) and the stable flow's loss, the late effective
sharpness of each run, and for RMSProp the median relative error of the predicted ν coordinates.
"""
from __future__ import annotations

import numpy as np

from ..papers import cite
from .common import ExperimentError, figure, finite, fmt, require_positive, savefig

NAME = "central-flow"
TITLE = "Central flow for GD and RMSProp: predicted loss, effective-Hessian eigenvalues at 2, ν coordinates"
PAPER = (cite("central-flows") + "; " + cite("central-flows-adaptive", "slides 'Validating the RMSProp central flow'"))
RUNTIME = "~10-15 min"

#: help of this experiment's own parameters (shared ones: common.PARAM_HELP)
PARAM_HELP = {
    "optimizers": "optimizers: GD and/or RMSProp",
    "gd_lr": "GD's learning rate", "rmsprop_lr": "RMSProp's learning rate", "rmsprop_beta2": "RMSProp's β2",
    "rmsprop_eps": "RMSProp's ε", "rmsprop_bias_correction": "RMSProp's bias correction",
    "gd_warm_start": "GD steps before the flows start from the discrete state (restart_at)",
    "rmsprop_warm_start": "RMSProp steps before the flows start from the discrete state (restart_at)",
    "include_stable": "also run the stable flow",
    "nu_coords": "RMSProp: number of ν coordinates shown true vs predicted",
    "smooth": "window (steps) of the running mean of the discrete loss that the predicted loss is compared with",
    "flow_options": "extra pyrod.simulate keywords for the flows (JSON), e.g. {\"method\": \"RK45\"}",
}

# small: Gaussian blobs rather than digits: digits have constant (zero) pixels, so some gradient coordinates and ν
# entries are exactly 0, where ∂√ν/∂ν is infinite and pyrod's RMSProp central flow currently breaks down (NaN)
_BASE = dict(model="mlp", data="synthetic_classification", data_kwargs={"dim": 16}, classes=4, n=256, loss="mse",
             width=32, depth=2, activation="tanh", optimizers=["GD", "RMSProp"], gd_lr=0.6, rmsprop_lr=0.003,
             rmsprop_beta2=0.99, rmsprop_eps=1e-8,
             rmsprop_bias_correction=False, gd_warm_start=0, rmsprop_warm_start=20, eigs=4, eig_every=1,
             include_stable=True, nu_coords=4, smooth=10, flow_options={})

DEFAULTS = {
    "tiny": {**_BASE, "n": 64, "width": 8, "depth": 1, "steps": 12, "eigs": 2, "eig_every": 2, "nu_coords": 2,
             "smooth": 4, "gd_lr": 0.5, "rmsprop_lr": 0.001, "rmsprop_warm_start": 4},
    "small": {**_BASE, "steps": 300},
    # the paper's setting: MLP on CIFAR-10 (4 classes, n = 1000, MSE); GD lr 0.02, RMSProp lr 2e-5, β2 0.99
    "paper": {**_BASE, "data": "cifar10", "data_kwargs": {}, "n": 1000, "width": 256, "depth": 2, "activation": "gelu",
              "gd_lr": 0.02, "rmsprop_lr": 2e-5, "rmsprop_beta2": 0.99, "rmsprop_eps": 1e-7,
              "rmsprop_bias_correction": True, "rmsprop_warm_start": 5, "steps": 1000, "eig_every": 1},
}


def check_params(p):
    require_positive(p, "steps", "eig_every", "eigs", "gd_lr", "rmsprop_lr", "n", "width", "smooth")
    for k in ("gd_warm_start", "rmsprop_warm_start"):
        if not isinstance(p[k], int) or not 0 <= p[k] < p["steps"]:
            raise ExperimentError(f"{k}={p[k]!r} must be an int in [0, steps)")
    bad = [o for o in p["optimizers"] if o not in ("GD", "RMSProp")]
    if bad or not p["optimizers"]:
        raise ExperimentError(f"optimizers={p['optimizers']!r}: choose from ['GD', 'RMSProp']")


def make_optimizer(p, name):
    import pyrod

    if name == "GD":
        return pyrod.optimizers.GD(lr=p["gd_lr"])
    return pyrod.optimizers.RMSProp(lr=p["rmsprop_lr"], beta2=p["rmsprop_beta2"], eps=p["rmsprop_eps"],
                                    bias_correction=p["rmsprop_bias_correction"])


def filename(name):
    return f"runs/central_{name}.nc"


def replay_nu(prob, opt, steps, coords):
    """ν_used(k) at ``coords`` and the loss of a plain discrete replay (to check it is the same trajectory)."""
    loss, g = prob.loss_and_grad(prob.w0)
    state = opt.init_state(prob.w0, g)
    nus, losses = [], []
    for _ in range(steps):
        losses.append(float(loss))
        state, nu = opt.step(state, g)
        nus.append(nu[coords].detach().cpu().numpy())
        loss, g = prob.loss_and_grad(state.w)
    return np.array(nus), np.array(losses)


def run(ctx):
    import torch

    p = ctx.p
    prob = ctx.problem(model=p["model"], data=p["data"], classes=p["classes"], n=p["n"], loss=p["loss"],
                       model_kwargs={"width": p["width"], "depth": p["depth"], "activation": p["activation"]},
                       data_kwargs=p["data_kwargs"])
    import pyrod

    runs = ["discrete", "central"] + (["stable"] if p["include_stable"] else [])
    # one sweep over the optimizers (each with its own warm start): parallel with --jobs, resumed when rerun.
    # A flow that fails mid-run records its reason in the file (flow_status) and the point still completes.
    names = list(p["optimizers"])
    rows = [(make_optimizer(p, n).config(), (p["gd_warm_start"] if n == "GD" else p["rmsprop_warm_start"]) or None)
            for n in names]
    base = ctx.spec(prob, make_optimizer(p, names[0]), steps=p["steps"], runs=runs, eigs=p["eigs"],
                    eig_every=p["eig_every"], restart_at=rows[0][1], **p["flow_options"])
    by_config = {str(sorted(cfg.items())): n for n, (cfg, _) in zip(names, rows, strict=True)}
    ctx.sweep(base, {("optimizer", "restart_at"): rows}, "runs",
              name=lambda pt: filename(by_config[str(sorted(pt["optimizer"].items()))])[len("runs/"):-len(".nc")])
    for name in names:
        opt = make_optimizer(p, name)
        tree = pyrod.open(ctx.out / filename(name))
        status = tree["central"].ds.attrs.get("flow_status", "ok")
        if status != "ok":
            ctx.note(f"{name}: the central flow stopped early ({status}); the file keeps every step written before "
                     "(summary and plots use them)")
        if opt.has_nu:
            # the coordinates of ν with the largest final values, plus evenly spaced ones
            g0 = prob.grad(prob.w0)
            nu0 = (g0 * g0).abs()
            k = max(1, p["nu_coords"])
            top = torch.topk(nu0, k // 2 + k % 2).indices.tolist()
            even = np.linspace(0, prob.dim - 1, k // 2 + 2)[1:-1].astype(int).tolist()
            coords = sorted(set(top + even))[:k] if k > 1 else top
            nus, losses = replay_nu(prob, opt, p["steps"], coords)
            disc = tree["discrete"].ds["loss"].values[:len(losses)]
            np.savez(ctx.path(f"runs/replay_nu_{name}.npz"), coords=np.array(coords), nu=nus, loss=losses,
                     t=np.arange(len(losses)), max_loss_diff_vs_file=np.nanmax(np.abs(disc - losses[:len(disc)])))
    results = summarize(ctx.out, p)
    plot(ctx, results)
    return results


def _smooth(y, w):
    if w <= 1 or len(y) < w:
        return y
    k = np.ones(w) / w
    out = np.convolve(y, k, mode="same")
    half = w // 2
    out[:half] = np.nan
    out[len(y) - half:] = np.nan
    return out


def _nu_var(ds):
    """Name of the central group's ν-coordinate variable (2-D, name containing 'nu'), if any."""
    for v in ds.data_vars:
        if "nu" in v and ds[v].ndim == 2 and v != "eigs":
            return v
    return None


def summarize(out, p) -> dict:
    import pyrod

    res = {}
    for name in p["optimizers"]:
        tree = pyrod.open(out / filename(name))
        d = tree["discrete"].ds
        c = tree["central"].ds
        lr = float(pyrod.config_of(tree)["optimizer"]["lr"])
        T = min(d.sizes["t"], c.sizes["t"])
        ld = d["loss"].values[:T]
        smooth = _smooth(ld, p["smooth"])
        row = {"lr": lr, "central_status": str(c.attrs.get("flow_status", ""))}
        from .common import eos_stats
        st = eos_stats(d, 0.25)
        row["discrete_eos_onset"] = st["eos_onset"]
        on = int(st["eos_onset"] or 0)
        sel = np.arange(T) >= on

        def relerr(y, T=T, smooth=smooth, sel=sel):
            y = np.asarray(y, float)[:T]
            e = np.abs(y - smooth) / np.abs(smooth)
            e = e[sel & np.isfinite(e)]
            return float(np.median(e)) if len(e) else None

        if "predicted_loss" in c:
            row["predicted_loss_median_rel_error"] = relerr(c["predicted_loss"].values)
        row["central_loss_median_rel_error"] = relerr(c["loss"].values)
        if "stable" in tree.children:
            row["stable_loss_median_rel_error"] = relerr(tree["stable"].ds["loss"].values)
            row["stable_late_effective_sharpness"] = eos_stats(tree["stable"].ds, 0.25)["late_ratio"]
        row["discrete_late_effective_sharpness"] = st["late_ratio"]
        row["central_late_effective_sharpness"] = eos_stats(c, 0.25)["late_ratio"]
        if "centre_distance" in c:
            t, y = finite(c["centre_distance"])
            row["central_centre_distance_median"] = float(np.median(y)) if len(y) else None
        if "stable" in tree.children and "centre_distance" in tree["stable"].ds:
            t, y = finite(tree["stable"].ds["centre_distance"])
            row["stable_centre_distance_median"] = float(np.median(y)) if len(y) else None
        rp = out / f"runs/replay_nu_{name}.npz"
        if rp.exists():
            z = np.load(rp)
            row["replay_max_loss_diff_vs_file"] = float(z["max_loss_diff_vs_file"])
            v = _nu_var(c)
            if v is not None:
                pred = c[v].values[:T]
                if pred.shape[1] >= len(z["coords"]):
                    true = z["nu"][:T]
                    idx = z["coords"] if pred.shape[1] == 1 or pred.shape[1] > len(z["coords"]) else \
                        np.arange(len(z["coords"]))
                    pred = pred[:, idx] if pred.shape[1] > len(z["coords"]) else pred
                    e = np.abs(pred[:len(true)] - true) / np.abs(true)
                    row["nu_coordinates_median_rel_error"] = float(np.nanmedian(e[on:]))
                    row["nu_variable"] = v
            else:
                row["nu_coordinates_median_rel_error"] = None
                row["nu_note"] = "central group has no per-coordinate ν variable; compared ‖ν‖ only"
            if "nu_norm" in c and "nu_norm" in d:
                a, b = d["nu_norm"].values[:T], c["nu_norm"].values[:T]
                e = np.abs(b - _smooth(a, p["smooth"])) / np.abs(_smooth(a, p["smooth"]))
                e = e[sel & np.isfinite(e)]
                row["nu_norm_median_rel_error"] = float(np.median(e)) if len(e) else None
        res[name] = row
    return res


_C = {"discrete": "k", "stable": "tab:blue", "central": "tab:green"}


def plot(ctx, results):
    import pyrod

    p = ctx.p
    names = p["optimizers"]
    fig, ax = figure(len(names), 3, width=4.4, height=3.2)
    for i, name in enumerate(names):
        tree = pyrod.open(ctx.out / filename(name))
        lr = results[name]["lr"]
        for run in ("discrete", "stable", "central"):
            if run not in tree.children:
                continue
            ds = tree[run].ds
            t, y = finite(ds["loss"])
            ax[i, 0].plot(t, y, color=_C[run], lw=0.8 if run == "discrete" else 1.3,
                          label=f"{run}" + (" L(w̄)" if run == "central" else ""))
            if run == "central" and "predicted_loss" in ds:
                t, y = finite(ds["predicted_loss"])
                ax[i, 0].plot(t, y, color="tab:red", ls="--", lw=1.3, label="central: predicted L(w̄)+½⟨H,Σ⟩")
            if run != "stable":
                E = ds["eigs"].values * lr
                tt = ds["t"].values
                for j in range(E.shape[1]):
                    keep = np.isfinite(E[:, j])
                    ax[i, 1].plot(tt[keep], E[keep, j], color=_C[run], lw=0.7 if run == "discrete" else 1.4,
                                  alpha=0.8, label=run if j == 0 else None)
        ax[i, 1].axhline(2.0, color="k", ls="--", lw=0.8, label="2 (EoS)")
        ax[i, 0].set(yscale="log", xlabel="step", ylabel="training loss", title=f"{name} (η={fmt(lr)}): loss")
        ax[i, 1].set(xlabel="step", ylabel="η·λ_i(P⁻¹H)", title=f"top {p['eigs']} eigenvalues of the effective Hessian")
        a = ax[i, 2]
        rp = ctx.out / f"runs/replay_nu_{name}.npz"
        c = tree["central"].ds
        v = _nu_var(c)
        if rp.exists():
            z = np.load(rp)
            cs = ["C%d" % j for j in range(len(z["coords"]))]
            for j, col in enumerate(cs):
                a.plot(z["t"], z["nu"][:, j], color=col, lw=0.7, alpha=0.7,
                       label=f"true ν[{z['coords'][j]}]" if j < 4 else None)
            if v is not None:
                pred = c[v].values
                idx = z["coords"] if pred.shape[1] > len(z["coords"]) else np.arange(pred.shape[1])
                for j, col in zip(range(len(idx)), cs, strict=False):
                    a.plot(c["t"].values, pred[:, idx[j]], color=col, ls="--", lw=1.4,
                           label="predicted (central)" if j == 0 else None)
            else:
                t, y = finite(tree["discrete"].ds["nu_norm"])
                a.plot(t, y, color="k", lw=0.8, label="‖ν‖ discrete")
                t, y = finite(c["nu_norm"])
                a.plot(t, y, color="tab:green", lw=1.4, label="‖ν‖ central")
            a.set(yscale="log", xlabel="step", ylabel="ν coordinate", title="true vs predicted coordinates of ν")
        else:
            for run in ("stable", "central"):
                if run in tree.children and "centre_distance" in tree[run].ds:
                    t, y = finite(tree[run].ds["centre_distance"])
                    keep = y > 0
                    a.plot(t[keep], y[keep], color=_C[run], label=f"{run} flow")
            a.set(yscale="log", xlabel="step", ylabel="‖w_flow − w_centre‖", title="distance to the discrete run")
        for a in ax[i]:
            a.legend(fontsize=7)
    fig.suptitle("Central flows: discrete (black) vs central (green) vs stable (blue)")
    savefig(ctx, fig, "central_flow.png")
