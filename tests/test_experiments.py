"""experiments/: every experiment at --scale tiny produces its files; summaries come from the data; the CLI.

One experiment goes through the real command line (subprocess ``python -m experiments run ...``), the others
through the Python entry point :func:`experiments.run_experiment` (same code path after argument parsing).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyrod
from pyrod.experiments import EXPERIMENTS, ExperimentError, get_experiment, run_experiment
from pyrod.experiments.cli import parse_flags, parse_value
from pyrod.experiments.common import resolve_params

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _check_outputs(out: Path, summary: dict, name: str):
    assert (out / "summary.json").is_file()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["experiment"] == name and on_disk["scale"] == "tiny"
    assert on_disk["results"] == summary["results"]
    files = summary["files"]
    assert any(f.endswith(".nc") for f in files), files
    assert any(f.endswith(".png") for f in files), files
    for f in files:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    for f in files:
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["wall_time_s"] >= 0


# ------------------------------------------------------------------ the command line
def test_cli_list_and_errors(tmp_path):
    r = _cli("list")
    assert r.returncode == 0, r.stderr
    for name in EXPERIMENTS:
        assert name in r.stdout
    r = _cli("run", "nope", "--scale", "tiny", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr and "aeos" in r.stderr
    r = _cli("run", "aeos", "--scale", "tiny", "--out", str(tmp_path), "--set", "bogus=1", "--set", "lr_x=2")
    assert r.returncode == 2 and "'bogus'" in r.stderr and "'lr_x'" in r.stderr and "valid keys" in r.stderr
    r = _cli("run", "aeos", "--scale", "tiny", "--out", str(tmp_path), "--set", "steps=many")
    assert r.returncode == 2 and "steps" in r.stderr and "'many'" in r.stderr
    r = _cli("run", "aeos", "--scale", "tiny", "--out", str(tmp_path), "--set", "noequals")
    assert r.returncode == 2 and "key=value" in r.stderr
    r = _cli("run", "aeos", "--scale", "paper", "--out", str(tmp_path))      # CIFAR-10 without data_path
    assert r.returncode == 2 and "data_path" in r.stderr and "cifar-10-batches-py" in r.stderr
    r = _cli("run", "aeos", "--scale", "paper", "--out", str(tmp_path), "--set", f"data_path={tmp_path}/missing")
    assert r.returncode == 2 and "not a folder" in r.stderr
    assert not list(tmp_path.glob("**/*.nc"))                                   # failed before any work
    # an experiment flag that is a prefix of one of ours (--n of --no-progress) reaches the experiment
    r = _cli("run", "aeos-optimizers", "--scale", "tiny", "--out", str(tmp_path), "--n", "many")
    assert r.returncode == 2 and "Error parsing --n" in r.stderr and "'many'" in r.stderr


def test_cli_run_nds_quadratic(tmp_path):
    out = tmp_path / "nds"
    r = _cli("run", "nds-quadratic", "--scale", "tiny", "--out", str(out), "--set", "kappas=1,4,16")
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert printed["results"] and all(summary["results"][k] == v for k, v in printed["results"].items())
    assert printed["summary"] == str(out / "summary.json")
    _check_outputs(out, summary, "nds-quadratic")
    assert summary["params"]["kappas"] == [1.0, 4.0, 16.0]
    # measured NDS of the GD and Muon directions equal the closed forms Σh³/Σh² and mean(h)
    import xarray as xr

    from pyrod.experiments.nds_quadratic import curvatures
    ds = xr.load_dataset(out / "nds_quadratic.nc")
    p = summary["params"]
    for kappa in (1.0, 4.0, 16.0):
        h = curvatures(p["q"], kappa, p["h_max"])
        gd = float(ds.nds.sel(kappa=kappa, direction="GD"))
        mu = float(ds.nds.sel(kappa=kappa, direction="Muon"))
        assert gd == pytest.approx(np.sum(h ** 3) / np.sum(h ** 2), rel=1e-9)
        assert mu == pytest.approx(np.mean(h), rel=1e-9)
        # the summary's ratio is the file's numbers
        assert summary["results"]["per_kappa"][f"{kappa:g}"]["nds_ratio_gd_over_muon"] == pytest.approx(gd / mu)
    assert summary["results"]["muon_nds_below_gd_for_all_kappa_gt_1"] is True
    assert summary["results"]["muon_best_step_decrease_above_gd_for_all_kappa_gt_1"] is True


# ------------------------------------------------------------------ parameters
def test_typed_parameters_and_resolve_params():
    """Overrides go through the typed command line generated from the defaults (pyrod.experiments.cli)."""
    aeos = get_experiment("aeos")
    assert parse_flags(aeos, "tiny", ["--steps", "12", "--lrs", "1e-3", "2e-3", "--eig_tol", "1e-6"]) == \
        {"steps": 12, "lrs": [0.001, 0.002], "eig_tol": 1e-6}
    assert parse_value(aeos, "tiny", "lrs", "1e-3, 2e-3", [0.1]) == [0.001, 0.002]
    assert parse_value(aeos, "tiny", "lrs", "[1e-3, 2e-3]", [0.1]) == [0.001, 0.002]
    assert parse_value(aeos, "tiny", "bias_correction", "true", False) is True
    assert parse_value(aeos, "tiny", "data_path", "none", None) is None
    assert parse_value(aeos, "tiny", "data_path", "/x", None) == "/x"
    rod = get_experiment("rod_tracking")
    assert parse_value(rod, "tiny", "hyper", '{"a": 1}', {}) == {"a": 1}
    for key, text, like in (("steps", "1.5", 3), ("steps", "many", 3), ("lr_beta1", "fast", 0.1),
                            ("bias_correction", "maybe", True), ("lrs", "1e-3,x", [0.1])):
        with pytest.raises(ExperimentError, match=rf"--set {key}="):
            parse_value(aeos, "tiny", key, text, like)
    with pytest.raises(ExperimentError, match=r"hyper='\[1': expected JSON"):
        parse_value(rod, "tiny", "hyper", "[1", {})
    with pytest.raises(ValueError, match=r"--stesp.*did you mean --steps\?"):   # refused by the parser, one line
        parse_flags(aeos, "tiny", ["--stesp", "3"])
    mod = get_experiment("aeos")
    p = resolve_params(mod, "tiny", {"steps": "30", "lrs": "0.01,0.02"})
    assert p["steps"] == 30 and p["lrs"] == [0.01, 0.02] and p["threads"] == 1
    with pytest.raises(ExperimentError, match="'wat'"):
        resolve_params(mod, "tiny", {"wat": "1"})
    with pytest.raises(ExperimentError, match="lrs"):
        resolve_params(mod, "tiny", {"lrs": "-1"})
    with pytest.raises(ExperimentError, match="scale"):
        resolve_params(mod, "huge", {})
    # dict parameters are updated key by key
    rod = get_experiment("rod_tracking")
    p = resolve_params(rod, "tiny", {"hyper": '{"mlp": {"GD": {"lr": 0.3}}}'})
    assert p["hyper"]["mlp"]["GD"] == {"lr": 0.3} and p["hyper"]["mlp"]["Adam"]["beta1"] == 0.8
    assert get_experiment("rod-tracking") is rod
    for name in EXPERIMENTS:
        m = get_experiment(name)
        keys = {s: set(m.DEFAULTS[s]) for s in ("tiny", "small", "paper")}
        assert keys["tiny"] == keys["small"] == keys["paper"], name


# ------------------------------------------------------------------ every experiment at tiny scale
def test_aeos_tiny_and_summary_from_file(tmp_path):
    s = run_experiment("aeos", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "aeos")
    row = s["results"]["panels"]["a"][0]
    # recompute the late ratio from the NetCDF file alone
    ds = pyrod.open(tmp_path / row["file"])["discrete"].ds
    t = ds["t"].values
    es = ds["effective_sharpness"].values
    keep = np.isfinite(es)
    t, es = t[keep], es[keep]
    late = es[t >= t.max() - 0.25 * (t.max() - t.min())]
    assert row["late_ratio"] == pytest.approx(float(late.mean()), rel=1e-12)
    lr, b1 = row["lr"], row["beta1"]
    assert row["threshold"] == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr), rel=1e-12)
    assert pyrod.config_of(tmp_path / row["file"])["optimizer"]["lr"] == lr
    assert pyrod.spec_of(tmp_path / row["file"]).threads == 1       # the experiment's threads parameter, per run
    # the numbers change when the data change: not typed in
    s2 = run_experiment("aeos", scale="tiny", out=tmp_path / "b", progress=False,
                        overrides={"steps": "30", "beta1s": "", "beta2s": ""})
    assert s2["results"]["panels"]["a"][0]["late_ratio"] != row["late_ratio"]
    assert s2["results"]["n_settings"] == 1


def test_aeos_optimizers_tiny(tmp_path):
    s = run_experiment("aeos-optimizers", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "aeos-optimizers")
    for name in s["params"]["optimizers"]:
        assert s["results"]["per_optimizer"][name]["n_runs"] == len(s["params"]["lrs"][name])
    r = s["results"]["runs"]["RMSProp"][0]
    ds = pyrod.open(tmp_path / r["file"])["discrete"].ds
    assert r["threshold"] == pytest.approx(2 / r["lr"])
    assert r["final_loss"] == float(ds["loss"].values[-1])


def _es_dataset(t, ratio):
    import xarray as xr
    return xr.Dataset({"effective_sharpness": ("t", np.asarray(ratio, float))}, coords={"t": np.asarray(t, float)})


def test_aeos_optimizers_post_onset_stats_on_known_series():
    from pyrod.experiments.aeos_optimizers import post_onset_stats
    t = np.arange(0, 1000, 10.0)
    # a ramp to the onset at 300, then alternating 1.1 / 0.95 (3 of every 4 points above), then a late drift
    r = np.where(t < 300, t / 300 * 0.9, np.where((t // 10) % 4 == 0, 0.95, 1.1))
    st = post_onset_stats(_es_dataset(t, r), 300.0, 0.25)
    assert st["above_fraction"] == pytest.approx(np.mean(r[t >= 300] > 1))
    assert st["above_fraction"] == pytest.approx(0.75, abs=0.02)
    assert st["late_ratio_drift"] == pytest.approx(1.0, abs=1e-12)      # same pattern in both late windows
    r2 = r.copy()
    r2[t >= t.max() - 0.25 * (t.max() - t.min())] *= 1.2                  # the last quarter 20% higher
    assert post_onset_stats(_es_dataset(t, r2), 300.0, 0.25)["late_ratio_drift"] == pytest.approx(1.2, rel=1e-12)
    assert post_onset_stats(_es_dataset(t, r), None, 0.25)["above_fraction"] is None
    ds = _es_dataset(t, r).assign(sharpness=("t", 10 + t / 100))          # raw sharpness rising linearly
    late, before = t[t >= 742.5], t[(t >= 495) & (t < 742.5)]
    assert post_onset_stats(ds, 300.0, 0.25)["late_raw_sharpness_drift"] == pytest.approx(
        np.mean(10 + late / 100) / np.mean(10 + before / 100), rel=1e-12)


def test_aeos_optimizers_verdict_rules():
    from pyrod.experiments.aeos_optimizers import verdict

    def row(lr, ratio, onset=100.0, drift=1.0, above=0.3):
        return {"lr": lr, "late_ratio": ratio, "eos_onset": onset, "late_ratio_drift": drift, "above_fraction": above}

    v = verdict([row(1, 1.02), row(2, 0.93, above=0.2), row(3, 0.5, onset=None)])
    assert (v["verdict"], v["behaviour"], v["n_at_threshold"]) == ("reproduces", "oscillates around", 2)
    assert v["never_reached_eos"] == [3]
    assert verdict([row(1, 1.05, above=0.8), row(2, 1.08, above=0.9)])["behaviour"] == "hovers above"
    assert verdict([row(1, 1.02), row(2, 0.8)])["verdict"] == "partly"
    assert verdict([row(1, 0.45), row(2, 0.5)])["verdict"] == "does not reproduce"
    # an unsettled run does not decide: 0.6 still rising by 20% per window
    v = verdict([row(1, 1.0), row(2, 0.6, drift=1.2)])
    assert v["verdict"] == "reproduces" and v["not_settled"] == [2]
    assert verdict([row(1, 0.6, onset=None)])["verdict"] == "no run at the EoS"


def test_frozen_adam_tiny(tmp_path):
    s = run_experiment("frozen-adam", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "frozen-adam")
    r = s["results"]["frozen"]["runs"][0]
    cfg = pyrod.config_of(tmp_path / r["file"])
    nu = np.load(tmp_path / "frozen_nu.npy")
    np.testing.assert_allclose(cfg["optimizer"]["frozen_nu"], nu)
    tree = pyrod.open(tmp_path / r["file"])
    nn = tree["discrete"].ds["nu_norm"].values
    assert np.allclose(nn[np.isfinite(nn)], np.linalg.norm(nu))        # ν really held fixed
    assert "adaptive" in s["results"]


def test_rod_tracking_tiny(tmp_path):
    s = run_experiment("rod-tracking", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "rod-tracking")
    res = s["results"]
    assert res["n_runs"] == len(s["params"]["optimizers"]) * len(s["params"]["archs"])
    row = res["table"]["mlp"]["GD"]
    tree = pyrod.open(tmp_path / "runs/mlp_GD.nc")
    assert set(tree.children) == {"discrete", "stable", "rod"}
    for run in ("rod", "stable"):
        cd = tree[run].ds["centre_distance"].values
        assert row[f"{run}_centre_distance_median"] == pytest.approx(float(np.median(cd[np.isfinite(cd)])))
    assert row["ratio_stable_over_rod_median"] == pytest.approx(
        row["stable_centre_distance_median"] / row["rod_centre_distance_median"])
    assert len(res["restarts"]) >= 1
    rs = res["restarts"][0]
    rt = pyrod.open(tmp_path / rs["file"])
    assert int(rt["rod"].ds.attrs["restart_at"]) == rs["k0"]


def test_rod_adam_map_tiny(tmp_path):
    s = run_experiment("rod-adam-map", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "rod-adam-map")
    res = s["results"]
    assert res["n_points"] == 2 and res["n_restarted"] == 2, res      # one map point + the MLP paper setting
    row = next(r for r in res["points"] if r["kind"] == "map")
    k0, w = row["k0"], s["params"]["window"]
    assert k0 % 2 == 0 and k0 >= row["aeos_onset"] + s["params"]["restart_after"]
    tree = pyrod.open(tmp_path / "restarts" / f"{row['name']}.nc")
    assert int(tree["rod"].ds.attrs["restart_at"]) == k0 and set(tree.children) == {"discrete", "stable", "rod"}
    sel = lambda da: da.sel(t=slice(k0 + 0.5, k0 + w)).values   # noqa: E731  (k0, k0 + window]
    h = float(np.mean(sel(tree["rod"].ds.discrete_half_length)))
    for run in ("rod", "stable"):
        cd = sel(tree[run].ds.centre_distance)
        assert len(cd) == w
        assert row[f"{run}_mean"] == pytest.approx(np.mean(cd) / h)
        assert row[f"{run}_end"] == pytest.approx(np.mean(cd[-s["params"]["end_steps"]:]) / h)
    assert row["ratio_mean"] == pytest.approx(row["stable_mean"] / row["rod_mean"])
    assert row["discrete_nu_variation_max"] == pytest.approx(np.mean(sel(tree["discrete"].ds.nu_variation_max)))
    assert row["discrete_nu_variation_max_peak"] == pytest.approx(np.max(sel(tree["discrete"].ds.nu_variation_max)))
    with pytest.raises(ExperimentError, match="end_steps=50 must not exceed window"):
        resolve_params(get_experiment("rod-adam-map"), "tiny", {"end_steps": "50"})


def test_muon_experiments_tiny(tmp_path):
    s = run_experiment("muon-curvature", scale="tiny", out=tmp_path / "c", progress=False)
    _check_outputs(tmp_path / "c", s, "muon-curvature")
    tree = pyrod.open(tmp_path / "c" / "muon_curvature.nc")
    assert set(tree.children) == {"adam", "muon"}
    for g in ("adam", "muon"):
        ds = tree[g].ds
        # C = ½‖Δw‖²·NDS and within + cross = ΔwᵀHΔw, stored per analysed step
        np.testing.assert_allclose(ds["curvature"], 0.5 * ds["update_norm_sq"] * ds["nds"], rtol=1e-10)
        np.testing.assert_allclose(ds["within_nds"] + ds["cross_nds"], ds["nds"], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(ds["block_within_nds"].sum("block"), ds["within_nds"], rtol=1e-8, atol=1e-12)
        bm = ds["block_matrix_nds"].values                  # tensor pairs: diagonal = within, total = NDS
        np.testing.assert_allclose(np.diagonal(bm, axis1=1, axis2=2), ds["block_within_nds"], rtol=1e-12)
        np.testing.assert_allclose(bm.sum(axis=(1, 2)), ds["nds"], rtol=1e-8, atol=1e-12)
    z = run_experiment("muon-zipf", scale="tiny", out=tmp_path / "z", progress=False)
    _check_outputs(tmp_path / "z", z, "muon-zipf")
    assert set(z["results"]["per_alpha"]) == {f"{a:g}" for a in z["params"]["alphas"]}


def test_central_flow_tiny(tmp_path):
    s = run_experiment("central-flow", scale="tiny", out=tmp_path, progress=False)
    _check_outputs(tmp_path, s, "central-flow")
    for name in s["params"]["optimizers"]:
        tree = pyrod.open(tmp_path / f"runs/central_{name}.nc")
        assert "central" in tree.children
        assert math.isfinite(s["results"][name]["discrete_late_effective_sharpness"])
