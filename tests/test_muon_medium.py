"""The medium scale of ``muon-zipf`` and ``muon-curvature`` (mini-batches from the Zipf-PCFG stream, matched on
held-out loss, rates chosen on a tuning seed), run at a toy size: the summary's numbers come from the files, the
choice rule picks what it says, the runs are what the specification says, a rerun resumes (nothing recomputed)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import pyrod
from pyrod.experiments import muon_stream as ms
from pyrod.experiments import run_experiment
from pyrod.experiments.common import ExperimentError, resolve_params

TOY = {"steps": 30, "width": 8, "depth": 1, "heads": 2, "mlp_ratio": 2, "grammar": {"context": 8, "n_terminals": 12},
       "batch_size": 4, "heldout": 16, "measure_size": 8, "heldout_every": 5, "levels": 4, "select_last": 2,
       "adam_lrs": [1e-3, 3e-3], "muon_lrs": [0.01, 0.03]}


@pytest.fixture(scope="module")
def zipf_medium(tmp_path_factory):
    out = tmp_path_factory.mktemp("mz")
    s = run_experiment("muon-zipf", scale="medium", out=out, progress=False, jobs=1,
                       overrides={**TOY, "alphas": [0.0, 2.0], "seeds": [0, 1]})
    return out, s


def test_zipf_medium_runs_are_the_specified_minibatch_stream_runs(zipf_medium):
    out, s = zipf_medium
    p = s["params"]
    path = out / "runs" / f"alpha2_muon_lr{s['results']['tuning']['2']['muon']:g}_seed1.nc"
    spec = pyrod.spec_of(path)
    mb = spec.minibatch
    assert (mb.size, mb.source, mb.heldout, mb.measure_size, mb.heldout_every, mb.nds_every) == (4, "stream", 16, 8,
                                                                                                    5, 5)
    assert spec.problem["data_kwargs"]["alpha"] == 2.0 and spec.problem["seed"] == 1 and spec.eig.every == 0
    assert spec.optimizer["name"] == "Muon" and spec.stop.steps == 30 and p["dtype"] == "float32"
    ds = pyrod.open(path)["discrete"].ds
    assert ds.attrs["measured_on"] == "heldout" and ds.attrs["minibatch_source"] == "stream"


def test_zipf_medium_rates_follow_the_choice_rule(zipf_medium):
    out, s = zipf_medium
    tuning = s["results"]["tuning"]
    for a in ("0", "2"):
        for kind, grid in (("adam", [1e-3, 3e-3]), ("muon", [0.01, 0.03])):
            scores = {}
            for lr in grid:
                ds = pyrod.open(out / "tune" / f"alpha{a}_{kind}_lr{lr:g}.nc")["discrete"].ds
                h = ds.heldout_loss.dropna("t").values
                scores[lr] = float(np.mean(h[-2:]))
                assert tuning[a]["scores"][kind][f"{lr:g}"] == pytest.approx(scores[lr], rel=1e-12)
            assert tuning[a][kind] == min(scores, key=scores.get)
            assert pyrod.spec_of(out / "tune" / f"alpha{a}_{kind}_lr{grid[0]:g}.nc").problem["seed"] == 100


def test_zipf_medium_summary_is_computed_from_the_files(zipf_medium):
    out, s = zipf_medium
    r = s["results"]
    ratios = np.full((2, 2), np.nan)
    for i, seed in enumerate((0, 1)):
        for j, a in enumerate((0.0, 2.0)):
            t = r["tuning"][f"{a:g}"]
            A = ms.load_group(out / "runs" / f"alpha{a:g}_adam_lr{t['adam']:g}_seed{seed}.nc")
            M = ms.load_group(out / "runs" / f"alpha{a:g}_muon_lr{t['muon']:g}_seed{seed}.nc")
            mt = ms.matched_on_heldout(A, M, 4, 3, 5)
            row = r["per_run"][f"alpha{a:g}_seed{seed}"]
            assert row["adam_over_muon_nds_median"] == pytest.approx(mt["nds_ratio_median"], rel=1e-12)
            ratios[i, j] = mt["nds_ratio_median"]
            # the NDS at a matched level is the NDS of the runs' own rows there (first held-out eval at or below)
            lv = mt["levels"][1]
            a_ok = A[["heldout_loss", "nds"]].dropna("t")
            k = int(np.flatnonzero(a_ok.heldout_loss.values <= lv)[0])
            assert mt["adam_nds"][1] == pytest.approx(float(a_ok.nds.values[k:k + 3].mean()), rel=1e-12)
    for j, a in enumerate(("0", "2")):
        ci = r["per_alpha"][a]["nds_ratio"]
        assert ci["mean"] == pytest.approx(float(ratios[:, j].mean()), rel=1e-12)
        assert ci["lo"] < ci["mean"] < ci["hi"] and ci["n"] == 2
    slopes = [(row[1] - row[0]) / 2.0 for row in ratios]
    assert r["nds_ratio_slope_vs_alpha_per_seed"] == pytest.approx(slopes, rel=1e-9)
    sens = r["tuning_seed_ratio_by_rates"]["2"]          # every rate pair on the tuning seed
    A = ms.load_group(out / "tune" / "alpha2_adam_lr0.001.nc")
    M = ms.load_group(out / "tune" / "alpha2_muon_lr0.03.nc")
    assert sens["0.001 / 0.03"] == pytest.approx(ms.matched_on_heldout(A, M, 4, 3, 5)["nds_ratio_median"], rel=1e-12)
    assert len(sens) == 4
    assert r["verdict"].split(":")[0] in ("reproduces", "does not reproduce", "cannot tell at this power")
    assert r["memorisation_check_passed"] == (r["memorisation_gap_max"] <= 0.05)


def test_zipf_medium_rerun_resumes_and_recomputes_nothing(zipf_medium, tmp_path):
    out, s = zipf_medium
    before = {f: f.stat().st_mtime_ns for f in (out / "runs").glob("*.nc")}
    s2 = run_experiment("muon-zipf", scale="medium", out=out, progress=False, jobs=1,
                        overrides={**TOY, "alphas": [0.0, 2.0], "seeds": [0, 1]})
    assert {f: f.stat().st_mtime_ns for f in (out / "runs").glob("*.nc")} == before
    assert s2["results"]["per_alpha"] == s["results"]["per_alpha"]


def test_t_interval_and_memorisation_by_hand():
    ci = ms.t_interval([1.0, 2.0, 3.0, float("nan")])
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302652729749464
    assert ci["mean"] == 2.0 and ci["sd"] == 1.0 and ci["n"] == 3
    assert ci["half_width"] == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-12)
    assert ms.t_interval([5.0])["lo"] is None
    import xarray as xr

    t = np.arange(20.0)
    loss = np.full(20, 2.0)
    held = np.full(20, np.nan)
    held[[0, 5, 10, 15]] = [3.0, 2.1, 2.0, 1.9]
    ds = xr.Dataset({"loss": ("t", loss), "heldout_loss": ("t", held)}, coords={"t": t})
    gaps = ms.memorisation(ds, [2.5, 2.05, 1.95], 5)
    np.testing.assert_allclose(gaps, [2.1 / 2.0 - 1, 0.0, 1.9 / 2.0 - 1])


def test_medium_presets_and_checks():
    from pyrod.experiments import get_experiment

    mod = get_experiment("muon-zipf")
    gpu = resolve_params(mod, "medium", {"size": "gpu", "steps": "7"})
    assert gpu["width"] == 128 and gpu["batch_size"] == 64 and gpu["grammar"]["context"] == 64 and gpu["steps"] == 7
    assert resolve_params(mod, "medium", {})["width"] == 32
    with pytest.raises(ExperimentError, match=r"size='huge': choose one of \['cpu', 'gpu'\]"):
        resolve_params(mod, "medium", {"size": "huge"})
    with pytest.raises(ExperimentError, match=r"measure_size=200 is more than heldout=128"):
        resolve_params(mod, "medium", {"measure_size": "200"})
    with pytest.raises(ExperimentError, match=r"tune_seed=0 is one of seeds"):
        run_experiment("muon-zipf", scale="medium", out="/tmp/never", progress=False, jobs=1,
                       overrides={**TOY, "alphas": [0.0], "seeds": [0, 1], "tune_seed": 0})


def test_curvature_medium_matches_on_heldout_loss(tmp_path):
    s = run_experiment("muon-curvature", scale="medium", out=tmp_path, progress=False, jobs=1,
                       overrides={**TOY, "analyze_every": 5})
    r = s["results"]
    tree = pyrod.open(tmp_path / "muon_curvature.nc")
    A = tree["adam"].ds
    assert A["loss"].attrs["long_name"] == "held-out loss" and "train_loss" in A and "measure_loss" in A
    assert tree.attrs["matched_on"] == "held-out loss"
    assert r["tuning"]["adam"] in (1e-3, 3e-3) and r["choice_rule"].startswith("per optimizer")
    # the held-out loss in the file is the model's loss on the held-out stream sample at the analysed step
    assert np.isfinite(A["loss"].values).all() and np.all(np.abs(A["loss"].values - A["train_loss"].values)
                                                          [np.isfinite(A["train_loss"].values)] < 1.0)
    assert r["memorisation_check_passed"] == (r["memorisation_gap_max"] <= 0.05)
    assert r["n_levels"] == 4
