"""Standard figures of a simulation (matplotlib, headless-safe).

* ``plot_runs(tree, path)`` draws, for every run in the tree: the training loss, λmax(P⁻¹H) with the
  stability threshold, and the effective sharpness (1 = edge of stability); flows add their centre
  distance to the discrete run when present. The sharpness panels get robust y-limits (an early transient,
  such as Adam's first step with an empty second-moment buffer, does not flatten the rest).
* ``plot_flows(tree, path)`` is the side-by-side figure of the discrete run and its flows on shared time
  axes: (a) losses (discrete, its running mean, the central flow's predicted loss, each flow's loss),
  (b) effective sharpness, (c) each flow's distance to the discrete centre (log scale).

Time is in optimizer steps everywhere.
"""
from __future__ import annotations

import numpy as np

from . import run_kinds

__all__ = ["plot_runs", "plot_flows", "running_mean", "robust_limits"]


def _style(name: str) -> dict:
    """How a run is drawn: its run kind's colour, label, line style and width (:mod:`pyrod.run_kinds`); a group
    that is no registered kind gets matplotlib's next colour and its own name."""
    try:
        kind = run_kinds.run_kind(name)
    except ValueError:
        return {"color": None, "label": name, "ls": "-", "lw": 1.4}
    return {"color": kind.color, "label": kind.label or name, "ls": kind.linestyle, "lw": kind.linewidth}


def _series(ds, name):
    if name not in ds:
        return None, None
    v = ds[name]
    keep = np.isfinite(v.values)
    return ds["t"].values[keep], v.values[keep]


def _pyplot(path):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def robust_limits(values, *, include=(), q: float = 0.02, pad: float = 0.08, skip: int = 0):
    """Y-limits ``(lo, hi)`` covering the ``q``…``1−q`` quantiles of the finite ``values`` (after the first
    ``skip`` entries), widened by ``pad`` of their span and to contain every value in ``include``.
    Returns None when there is nothing finite to bound."""
    v = np.concatenate([np.asarray(x, dtype=float).ravel()[skip:] for x in values]) if len(values) else np.array([])
    v = v[np.isfinite(v)]
    if not len(v):
        return None
    lo, hi = np.quantile(v, [q, 1 - q])
    for x in include:
        lo, hi = min(lo, x), max(hi, x)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    return float(lo - pad * span), float(hi + pad * span)


def running_mean(t, y, window: int):
    """Centred running mean of ``y`` over ``window`` consecutive samples (``t``, ``y``: 1-D, same length);
    returns ``(t, mean)`` for the centres where the window is complete (empty when ``len(y) < window``).
    For GD at the edge of stability, a window of an even number of steps averages out the period-2
    oscillation: that is the time-averaged loss the central flow predicts."""
    t, y = np.asarray(t, dtype=float), np.asarray(y, dtype=float)
    if window < 1:
        raise ValueError(f"window={window!r} must be >= 1")
    if len(y) < window:
        return t[:0], y[:0]
    c = np.cumsum(np.concatenate([[0.0], y]))
    m = (c[window:] - c[:-window]) / window
    tc = np.convolve(t, np.ones(window) / window, mode="valid")
    return tc, m


def plot_runs(tree, path=None, *, title: str | None = None):
    """Plot every run in ``tree`` (an ``xarray.DataTree`` from :func:`pyrod.simulate`); save to ``path``.

    Returns the matplotlib Figure.
    """
    plt = _pyplot(path)
    names = [n for n in tree.children]
    has_dist = any("centre_distance" in tree[n].ds for n in names)
    ncols = 4 if has_dist else 3
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), constrained_layout=True)
    thr_drawn = False
    seen = {1: [], 2: []}
    for name in names:
        ds = tree[name].ds
        c = _style(name)["color"]
        t, y = _series(ds, "loss")
        if t is not None:
            axes[0].plot(t, y, color=c, lw=1, label=name)
        t, y = _series(ds, "preconditioned_sharpness")
        if t is not None:
            axes[1].plot(t, y, color=c, lw=1, label=name)
            seen[1].append(y)
            if not thr_drawn:
                tt, thr = _series(ds, "threshold")
                if tt is not None and len(thr):
                    axes[1].axhline(float(np.median(thr)), color="k", ls="--", lw=1, label="threshold")
                    seen[1].append([float(np.median(thr))])
                    thr_drawn = True
        t, y = _series(ds, "effective_sharpness")
        if t is not None:
            axes[2].plot(t, y, color=c, lw=1, label=name)
            seen[2].append(y)
        if has_dist:
            t, y = _series(ds, "centre_distance")
            if t is not None:
                axes[3].plot(t, y, color=c, lw=1, label=name)
    for i, inc in ((1, ()), (2, (1.0,))):
        lim = robust_limits(seen[i], include=inc)
        if lim is not None:
            axes[i].set_ylim(*lim)
    axes[0].set(yscale="log", xlabel="step", ylabel="training loss", title="loss")
    axes[1].set(xlabel="step", ylabel="λmax(P⁻¹H)", title="preconditioned sharpness")
    axes[2].axhline(1.0, color="k", ls="--", lw=1)
    axes[2].set(xlabel="step", ylabel="λmax(P⁻¹H) / threshold", title="effective sharpness")
    if has_dist:
        axes[3].set(yscale="log", xlabel="step", ylabel="‖w̄(k) − (w_k+w_{k+1})/2‖", title="distance to discrete centre")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_flows(tree, path=None, *, title: str | None = None, window: int = 20, restart_at: float | None = None):
    """The discrete run and its flows on three shared time axes; save to ``path``; return the Figure.

    (a) ``loss``: the discrete loss (oscillating), its centred ``window``-step running mean, the central
    flow's ``predicted_loss`` (the time-averaged loss it predicts), and the other flows' loss at their own
    state (the rod at its centre); log scale.
    (b) ``effective sharpness`` λmax(P⁻¹H)/threshold of every run (1 = edge of stability), NaN gaps dropped.
    (c) each flow's ``centre_distance`` ‖w̄(k) − (w_k+w_{k+1})/2‖ to the discrete run (log scale).
    ``restart_at`` draws a dotted vertical line where the flows start from the discrete state.
    Lines carry labels (``discrete``, ``discrete, N-step mean``, ``central flow: predicted loss``, ``stable
    flow``, ``rod flow (centre)``, ``central flow``) so a caller can find them in ``fig.axes[i].get_lines()``.
    """
    plt = _pyplot(path)
    if "discrete" not in tree.children:
        raise ValueError(f"plot_flows needs a 'discrete' run; the tree has {list(tree.children)}")
    flows = [n for n in run_kinds.flow_names() if n in tree.children]     # registered flows, in registry order
    flows += [n for n in tree.children if n not in flows and n not in run_kinds.run_names()]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5), sharex=True, constrained_layout=True)
    ax_l, ax_s, ax_d = axes
    d = tree["discrete"].ds

    t, y = _series(d, "loss")
    ax_l.plot(t, y, color="0.6", lw=0.7, label="discrete")
    tm, m = running_mean(t, y, window)
    for name in flows:
        ds = tree[name].ds
        style = _style(name)
        if "predicted_loss" in ds:  # the central flow's prediction of the time-averaged loss (L at its own w is lower)
            t, y = _series(ds, "predicted_loss")
            label = f"{style['label']}: predicted loss"
        else:
            t, y = _series(ds, "loss")
            label = style["label"]
        if t is not None:
            ax_l.plot(t, y, color=style["color"], lw=style["lw"], ls=style["ls"], label=label)
    if len(tm):  # drawn over the central flow's prediction, which should lie on it
        ax_l.plot(tm, m, color="k", lw=1.0, ls="--", label=f"discrete, {window}-step mean")
    ax_l.set(yscale="log", ylabel="training loss (MSE)", title="(a) loss")

    seen = []
    for name in ["discrete", *flows]:
        t, y = _series(tree[name].ds, "effective_sharpness")
        if t is not None and len(t):
            seen.append(y)
            style = _style(name)
            ax_s.plot(t, y, color=style["color"] if name != "discrete" else "0.4",
                      lw=0.9 if name == "discrete" else 1.4, marker="." if name == "discrete" else None, ms=2,
                      label=style["label"])
    ax_s.axhline(1.0, color="k", ls=":", lw=1)
    lim = robust_limits(seen, include=(1.0,))
    if lim is not None:
        ax_s.set_ylim(*lim)
    ax_s.set(ylabel="λmax(P⁻¹H) / threshold", title="(b) effective sharpness (1 = edge of stability)")

    for name in flows:
        t, y = _series(tree[name].ds, "centre_distance")
        if t is not None:
            keep = y > 0
            ax_d.plot(t[keep], y[keep], color=_style(name)["color"], lw=1.4, label=_style(name)["label"])
    ax_d.set(yscale="log", xlabel="step (time unit = one optimizer step)", ylabel="‖w̄(k) − (w_k+w_{k+1})/2‖",
             title="(c) distance of each flow to the discrete run's centre")
    for ax in axes:
        if restart_at is not None:
            ax.axvline(restart_at, color="0.5", ls=":", lw=1)
        if ax.get_lines():
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
