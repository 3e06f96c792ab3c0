"""The built-in demo (``python -m pyrod demo``) and its figure, at a tiny size; the full-size claims are slow."""
import math

import numpy as np
import pytest

import pyrod
from pyrod.__main__ import FLOWS, demo, main
from pyrod.plotting import plot_flows, plot_runs, robust_limits, running_mean

TINY = dict(steps=24, lr=1.2, restart_at=8, n=80, width=8, eig_every=4, window=4, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo(out=str(out), **TINY)


def test_demo_writes_files_and_a_numeric_summary(tiny):
    out, summary = tiny
    assert (out / "demo.nc").stat().st_size > 0 and (out / "demo.png").stat().st_size > 0
    for key, value in summary.items():
        if key in ("netcdf", "plot"):
            continue
        if key == "eos_onset_step" and value is None:
            continue
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    for run in ("discrete", *FLOWS):
        assert math.isfinite(summary[f"{run}_final_loss"]), run
    for flow in FLOWS:
        assert math.isfinite(summary[f"{flow}_median_centre_distance"]), flow
    assert summary["restart_at"] == 8 and summary["steps"] == 24


def test_demo_summary_matches_the_file(tiny):
    out, summary = tiny
    tree = pyrod.open(out / "demo.nc")
    assert set(tree.children) == {"discrete", *FLOWS}
    for flow in FLOWS:
        ds = tree[flow].ds
        assert float(ds["t"][0]) == 8.0                    # started from the discrete state at restart_at
        assert summary[f"{flow}_median_centre_distance"] == pytest.approx(
            float(np.nanmedian(ds["centre_distance"].values)))
    es = tree["discrete"].ds["effective_sharpness"].values
    assert summary["max_effective_sharpness"] == pytest.approx(float(np.nanmax(es)))
    assert summary["initial_effective_sharpness"] == pytest.approx(1.2 * tree["discrete"].ds["sharpness"].values[0] / 2)
    assert summary["discrete_final_loss"] == pytest.approx(float(tree["discrete"].ds["loss"].values[-1]))


def test_flows_figure_has_three_shared_panels_with_every_run(tiny):
    out, _ = tiny
    tree = pyrod.open(out / "demo.nc")
    fig = plot_flows(tree, restart_at=8, window=4, title="t")
    try:
        assert len(fig.axes) == 3
        ax_l, ax_s, ax_d = fig.axes
        assert ax_l.get_shared_x_axes().joined(ax_l, ax_d) and ax_s.get_shared_x_axes().joined(ax_s, ax_d)
        labels = [{ln.get_label() for ln in ax.get_lines()} for ax in fig.axes]
        assert {"discrete", "discrete, 4-step mean", "stable flow", "rod flow (centre)",
                "central flow: predicted loss"} <= labels[0]
        assert {"discrete", "stable flow", "rod flow (centre)", "central flow"} <= labels[1]
        assert {"stable flow", "rod flow (centre)", "central flow"} <= labels[2]
        assert ax_l.get_yscale() == "log" and ax_d.get_yscale() == "log"
        assert all(ax.get_ylabel() for ax in fig.axes) and ax_d.get_xlabel()
        # the central flow's line in (a) is its predicted loss, not its loss at w
        pred = next(ln for ln in ax_l.get_lines() if ln.get_label() == "central flow: predicted loss")
        p = tree["central"].ds["predicted_loss"].values
        np.testing.assert_allclose(pred.get_ydata(), p[np.isfinite(p)])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_plot_flows_needs_a_discrete_run(tiny):
    out, _ = tiny
    tree = pyrod.open(out / "demo.nc")
    with pytest.raises(ValueError, match="discrete"):
        plot_flows(tree.drop_nodes("discrete"))


def test_running_mean_against_direct_sums():
    rng = np.random.default_rng(0)
    t, y = np.arange(11.0), rng.normal(size=11)
    tm, m = running_mean(t, y, 4)
    assert len(m) == 8
    np.testing.assert_allclose(m, [y[i:i + 4].mean() for i in range(8)])
    np.testing.assert_allclose(tm, np.arange(8) + 1.5)     # centred: half-integer times for an even window
    assert len(running_mean(t[:3], y[:3], 4)[1]) == 0
    with pytest.raises(ValueError, match="window=0"):
        running_mean(t, y, 0)


def test_robust_limits_ignore_a_single_spike():
    v = np.concatenate([[77.0], 1 + 0.05 * np.sin(np.arange(200))])
    lo, hi = robust_limits([v], include=(1.0,))
    assert hi < 2 and lo < 0.96 and hi > 1.04
    assert robust_limits([[np.nan]]) is None


def test_plot_runs_is_not_flattened_by_adams_first_step():
    """Adam's first step (bias-corrected ν from one gradient) has a huge effective sharpness; the panel's
    y-range must follow the rest of the run."""
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=60, seed=0,
                         model_kwargs={"width": 8, "depth": 2, "activation": "gelu"})
    tree = pyrod.simulate(prob, pyrod.optimizers.Adam(lr=3e-2), steps=60, eigs=1, eig_every=2)
    es = tree["discrete"].ds["effective_sharpness"].dropna("t").values
    assert es[0] > 5 * np.median(es)                       # the spike is there
    fig = plot_runs(tree)
    try:
        hi = fig.axes[2].get_ylim()[1]
        assert hi < es[0] and hi >= np.quantile(es, 0.9)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_cli_keeps_steps_lr_out(tmp_path, monkeypatch, capsys):
    import pyrod.__main__ as m

    seen = {}
    monkeypatch.setattr(m, "demo", lambda out, steps, lr, restart_at=None, threads=None, progress=None: seen.update(
        out=out, steps=steps, lr=lr, restart_at=restart_at, threads=threads) or {"ok": 1})
    assert main(["demo", "--steps", "7", "--lr", "0.5", "--out", str(tmp_path), "--restart-at", "3",
                 "--threads", "2"]) == 0
    assert seen == {"out": str(tmp_path), "steps": 7, "lr": 0.5, "restart_at": 3, "threads": 2}
    assert '"ok": 1' in capsys.readouterr().out


@pytest.mark.slow
def test_demo_at_full_size_shows_what_the_readme_says(tmp_path):
    """Default demo (~1.5–2 min): the rod stays closest to the discrete centre, the central flow next, the
    stable flow drifts; rod and central hold the effective sharpness at 1, the stable flow passes it."""
    s = demo(out=str(tmp_path), progress=False)
    assert s["eos_onset_step"] is not None and s["eos_onset_step"] < 100
    assert s["rod_median_centre_distance"] < s["central_median_centre_distance"] < s["stable_median_centre_distance"]
    assert s["stable_median_centre_distance"] > 10 * s["central_median_centre_distance"]
    assert s["stable_es_max"] > 1.05
    for flow in ("rod", "central"):
        assert abs(s[f"{flow}_es_max"] - 1) < 0.01, flow
    assert s["central_predicted_loss_median_rel_error"] < 0.05
