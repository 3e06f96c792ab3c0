"""Standard figures of a simulation (matplotlib, headless-safe).

``plot_runs(tree, path)`` draws, for every run in the tree: the training loss, λmax(P⁻¹H) with the
stability threshold, and the effective sharpness (1 = edge of stability); flows add their centre
distance to the discrete run when present.
"""
from __future__ import annotations

import numpy as np

__all__ = ["plot_runs"]

_COLORS = {"discrete": "k", "midpoint": "0.5", "stable": "tab:blue", "rod": "tab:red", "central": "tab:green"}


def _series(ds, name):
    if name not in ds:
        return None, None
    v = ds[name]
    keep = np.isfinite(v.values)
    return ds["t"].values[keep], v.values[keep]


def plot_runs(tree, path=None, *, title: str | None = None):
    """Plot every run in ``tree`` (an ``xarray.DataTree`` from :func:`pyrod.simulate`); save to ``path``.

    Returns the matplotlib Figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [n for n in tree.children]
    has_dist = any("centre_distance" in tree[n].ds for n in names)
    ncols = 4 if has_dist else 3
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), constrained_layout=True)
    thr_drawn = False
    for name in names:
        ds = tree[name].ds
        c = _COLORS.get(name, None)
        t, y = _series(ds, "loss")
        if t is not None:
            axes[0].plot(t, y, color=c, lw=1, label=name)
        t, y = _series(ds, "preconditioned_sharpness")
        if t is not None:
            axes[1].plot(t, y, color=c, lw=1, label=name)
            if not thr_drawn:
                tt, thr = _series(ds, "threshold")
                if tt is not None and len(thr):
                    axes[1].axhline(float(np.median(thr)), color="k", ls="--", lw=1, label="threshold")
                    thr_drawn = True
        t, y = _series(ds, "effective_sharpness")
        if t is not None:
            axes[2].plot(t, y, color=c, lw=1, label=name)
        if has_dist:
            t, y = _series(ds, "centre_distance")
            if t is not None:
                axes[3].plot(t, y, color=c, lw=1, label=name)
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
