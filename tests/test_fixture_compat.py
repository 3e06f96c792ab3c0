"""Files written before a change still open, replay and resume: tests/fixtures/compat_v1.nc (+ .ckpt) was written by
the pyrod of 2026-12-04 (tests/fixtures/make_compat_fixture.py: discrete + rod + central on the quartic toy, 12 steps,
checkpoint at step 12). Opening it, rebuilding the run from its stored config, and resuming it must work unchanged
and reproduce its numbers."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import pyrod

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "compat_v1.nc"
GROUPS = ("discrete", "rod", "central")


def _copy(tmp_path) -> Path:
    dst = tmp_path / FIXTURE.name
    shutil.copyfile(FIXTURE, dst)
    shutil.copyfile(FIXTURE.with_name(FIXTURE.name + ".ckpt"), tmp_path / (FIXTURE.name + ".ckpt"))
    return dst


def _assert_same(a, b, rows=None):
    """Every variable of every group equal (NaN where NaN), to 1e-9 relative (the same arithmetic on another BLAS)."""
    for g in GROUPS:
        da, db = a[g].to_dataset(), b[g].to_dataset()
        assert set(da.data_vars) <= set(db.data_vars), (g, set(da.data_vars) - set(db.data_vars))
        for v in da.data_vars:
            x, y = np.asarray(da[v].values, dtype=float), np.asarray(db[v].values, dtype=float)
            if rows is not None:
                x, y = x[:rows], y[:rows]
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{g}/{v}")


def test_old_file_opens():
    tree = pyrod.open(FIXTURE)
    assert sorted(tree.children) == sorted(GROUPS)
    assert tree["central"].sizes["t"] == 12 and tree.attrs["pyrod_status"] == "complete"
    spec = pyrod.spec_of(FIXTURE)
    assert spec.runs == GROUPS and spec.stop.steps == 12 and spec.central.max_track == 8


def test_old_file_replays(tmp_path):
    again = pyrod.simulate(**pyrod.config_of(FIXTURE), path=str(tmp_path / "again.nc"), progress=False)
    _assert_same(pyrod.open(FIXTURE), again)


def test_old_file_resumes(tmp_path):
    path = _copy(tmp_path)
    resumed = pyrod.resume(path, steps=16, progress=False)
    assert resumed["central"].sizes["t"] == 16
    full = pyrod.simulate(**{**pyrod.config_of(FIXTURE), "steps": 16}, progress=False)
    _assert_same(pyrod.open(FIXTURE), resumed, rows=12)
    _assert_same(full, resumed)


def test_old_file_spec_round_trip():
    spec = pyrod.spec_of(FIXTURE)
    assert pyrod.RunSpec.from_dict(spec.to_dict()) == spec
