"""The Muon experiments' own grids on Dask (:meth:`pyrod.experiments.common.Context.map`): ``muon-zipf``'s
α × seed grid and ``muon-curvature``'s two optimizer runs give the same files, numbers and figures in worker
processes as in this process; ``Context.map`` keeps the order, runs in other processes and raises a point's error.

Comparisons are exact: every variable and attribute of every NetCDF file (except the write time ``created`` and
``history``), ``summary.json``'s results, and the PNGs byte for byte."""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from pyrod.experiments import run_experiment
from pyrod.experiments.common import Context

distributed = pytest.importorskip("distributed")

_WRITE_TIME = ("created", "history")


@pytest.fixture(scope="module")
def scheduler():
    """A 2-worker LocalCluster (pyrod's own, as ``--jobs 2`` starts it) reached by address, as ``--scheduler``."""
    from pyrod.sweep import local_cluster

    cluster = local_cluster(2)
    yield cluster.scheduler_address
    cluster.close()


def _contents(group, prefix="") -> dict:
    """``{path: value}`` of every attribute set and variable of a netCDF4 group and its subgroups."""
    out = {prefix + "@attrs": {k: group.getncattr(k) for k in group.ncattrs() if k not in _WRITE_TIME}}
    for name, var in group.variables.items():
        v = var[:]
        out[prefix + name] = np.ma.filled(v, np.nan) if np.ma.isMaskedArray(v) else np.asarray(v)
        out[prefix + name + "@attrs"] = {k: var.getncattr(k) for k in var.ncattrs()}
    for name, sub in group.groups.items():
        out.update(_contents(sub, prefix + name + "/"))
    return out


def _same(a, b) -> bool:
    if isinstance(a, dict) or isinstance(b, dict):
        return json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _differences(out_a: Path, out_b: Path) -> list:
    """What differs between two experiment folders: summary results and files list, each file's contents."""
    sa = json.loads((out_a / "summary.json").read_text())
    sb = json.loads((out_b / "summary.json").read_text())
    diff = [k for k in ("results", "files", "params", "notes") if sa[k] != sb[k]]
    for f in sa["files"]:
        if f.endswith(".nc"):
            with netCDF4.Dataset(out_a / f) as x, netCDF4.Dataset(out_b / f) as y:
                ca, cb = _contents(x), _contents(y)
            diff += [f"{f}:{k}" for k in sorted(set(ca) | set(cb)) if k not in ca or k not in cb
                     or not _same(ca[k], cb[k])]
        elif f.endswith(".png") and (out_a / f).read_bytes() != (out_b / f).read_bytes():
            diff.append(f)
    return diff


def test_muon_zipf_jobs_2_equals_jobs_1(tmp_path):
    s1 = run_experiment("muon-zipf", scale="tiny", out=tmp_path / "j1", progress=False, jobs=1)
    run_experiment("muon-zipf", scale="tiny", out=tmp_path / "j2", progress=False, jobs=2)
    p = s1["params"]
    runs = sorted(f for f in s1["files"] if f.endswith(".nc"))
    assert runs == sorted(f"runs/zipf_alpha{a:g}_seed{s}.nc" for a in p["alphas"] for s in p["seeds"])
    assert len(runs) == 4 and len(set(p["seeds"])) == 2          # a real α × seed grid
    assert "muon_zipf.png" in s1["files"]
    assert _differences(tmp_path / "j1", tmp_path / "j2") == []
    # the comparison sees a change in one number of one run (the check above can fail)
    shutil.copytree(tmp_path / "j2", tmp_path / "j3")
    with netCDF4.Dataset(tmp_path / "j3" / runs[-1], "a") as nc:
        v = nc["muon"].variables["nds"]
        v[len(v) - 1] = np.nextafter(v[len(v) - 1], np.inf)
    assert _differences(tmp_path / "j1", tmp_path / "j3") == [f"{runs[-1]}:muon/nds"]
    # different seeds give different files (the points are not all the same run)
    with netCDF4.Dataset(tmp_path / "j1" / runs[0]) as a, netCDF4.Dataset(tmp_path / "j1" / runs[1]) as b:
        assert not np.array_equal(a["adam"].variables["loss"][:], b["adam"].variables["loss"][:])


def test_muon_curvature_on_a_scheduler_equals_in_process(tmp_path, scheduler):
    run_experiment("muon-curvature", scale="tiny", out=tmp_path / "j1", progress=False, jobs=1)
    run_experiment("muon-curvature", scale="tiny", out=tmp_path / "sch", progress=False, scheduler=scheduler)
    assert _differences(tmp_path / "j1", tmp_path / "sch") == []


def _pid_and_square(x):
    return os.getpid(), x * x


def test_context_map_order_processes_and_errors(tmp_path, scheduler):
    serial = Context(name="t", scale="tiny", params={}, out=tmp_path, jobs=1)
    assert serial.map(_pid_and_square, range(5), "squares") == [(os.getpid(), x * x) for x in range(5)]
    ctx = Context(name="t", scale="tiny", params={}, out=tmp_path, progress=True, scheduler=scheduler)
    try:
        got = ctx.map(_pid_and_square, range(7), "squares")
        assert [sq for _, sq in got] == [x * x for x in range(7)]                   # in the order of the items
        assert os.getpid() not in {pid for pid, _ in got}                           # in worker processes
        assert ctx.map(functools.partial(math.pow, 2.0), [3, 0.5], "powers") == [8.0, math.sqrt(2.0)]
        assert ctx.map(_pid_and_square, [], "nothing") == []
        with pytest.raises(ValueError, match="math domain error"):                 # a point's own exception
            ctx.map(math.sqrt, [4.0, -1.0, 9.0], "roots")
        assert ctx.map(math.sqrt, [16.0], "roots") == [4.0]                         # the client still works
    finally:
        ctx.close()
