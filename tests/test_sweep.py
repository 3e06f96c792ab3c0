"""Sweeps over hyperparameters on Dask (pyrod.sweep, pyrod.open_sweep): grid expansion and names, the manifest,
skipping and resuming, failed points, worker death, reading back, a scheduler started as subprocesses.

The Dask tests share one 2-worker LocalCluster (module fixture): starting worker processes costs seconds."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import xarray as xr

import pyrod
from pyrod.sweep import SweepError, expand_grid, point_name, read_manifest, run_point

distributed = pytest.importorskip("distributed")


def _base(steps=12, **out):
    return pyrod.RunSpec(problem={"toy": "quadratic"}, optimizer={"name": "HeavyBall", "lr": 0.05, "beta": 0.5},
                         stop={"steps": steps}, eig={"k": 1, "every": 4}, output={"chunk": 4, **out})


def _serial(spec, path):
    """The same point run alone, in this process (the reference of the sweep's files)."""
    return pyrod.simulate(spec.replace({"output.path": str(path)}), progress=False)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=40)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


# ------------------------------------------------------------------ the grid (no Dask)
def test_grid_product_zip_and_names(tmp_path):
    base = _base()
    pts = expand_grid(base, {"optimizer.lr": [0.01, 0.02], "optimizer.beta": [0.0, 0.9], "problem.seed": [0, 1, 2]},
                      out=tmp_path)
    assert len(pts) == 12
    assert pts[0]["name"] == "lr=0.01_beta=0.0_seed=0" and pts[-1]["name"] == "lr=0.02_beta=0.9_seed=2"
    assert pts[5]["index"] == [0, 1, 2] and pts[5]["spec"].get("optimizer.beta") == 0.9
    assert pts[5]["spec"].output.path == str(tmp_path / (pts[5]["name"] + ".nc"))
    # paired keys: a tuple key, or zip= over two lists, give the same points
    a = expand_grid(base, {("optimizer.lr", "stop.steps"): [(0.1, 10), (0.2, 20)], "problem.seed": [0, 1]},
                    out=tmp_path)
    b = expand_grid(base, {"optimizer.lr": [0.1, 0.2], "stop.steps": [10, 20], "problem.seed": [0, 1]},
                    zip=[("optimizer.lr", "stop.steps")], out=tmp_path)
    assert [p["name"] for p in a] == [p["name"] for p in b] == [
        "lr=0.1_steps=10_seed=0", "lr=0.1_steps=10_seed=1", "lr=0.2_steps=20_seed=0", "lr=0.2_steps=20_seed=1"]
    assert a[3]["spec"].steps == 20 and a[3]["spec"].get("optimizer.lr") == 0.2
    # shared short names take the whole key; long or odd names fall back to a hash, deterministically
    short = {"optimizer.lr": "lr", "problem.seed": "seed"}
    assert point_name({"optimizer.lr": 1e-05, "problem.seed": 3}, short) == "lr=1e-05_seed=3"
    odd = expand_grid(base, {"problem.spectrum": [[3.0, 1.0], [5.0, 1.0]]}, out=tmp_path)
    assert odd[0]["name"].startswith("point-") and odd[0]["name"] != odd[1]["name"]
    assert odd[0]["name"] == expand_grid(base, {"problem.spectrum": [[3.0, 1.0]]}, out=tmp_path)[0]["name"]


def test_grid_errors_name_the_bad_key(tmp_path):
    base = _base()
    with pytest.raises(SweepError, match="optimizer.lr.*empty"):
        expand_grid(base, {"optimizer.lr": []}, out=tmp_path)
    with pytest.raises(SweepError, match="twice"):
        expand_grid(base, {"optimizer.lr": [0.1, 0.1]}, out=tmp_path)
    with pytest.raises(SweepError, match="different lengths"):
        expand_grid(base, {"optimizer.lr": [0.1, 0.2], "stop.steps": [5]}, zip=[("optimizer.lr", "stop.steps")],
                    out=tmp_path)
    with pytest.raises(SweepError, match="stop.stesp"):
        expand_grid(base, {"stop.stesp": [5]}, out=tmp_path)
    with pytest.raises(SweepError, match="list of values"):
        expand_grid(base, {"optimizer.lr": 0.1}, out=tmp_path)
    with pytest.raises(SweepError, match="out=DIR"):
        pyrod.sweep(base, {"optimizer.lr": [0.1]})


def test_keyword_base_and_serial_sweep_skips_complete(tmp_path):
    prob = pyrod.problem(toy="quadratic")
    base = {"problem": prob, "optimizer": pyrod.optimizers.GD(lr=0.05), "steps": 8, "eigs": 1, "eig_every": 4}
    r = pyrod.sweep(base, {"optimizer.lr": [0.05, 0.1]}, out=tmp_path, jobs=1)
    assert r.counts()["complete"] == 2 and [p["action"] for p in r.points] == ["run", "run"]
    man = read_manifest(tmp_path)
    assert man["base"]["optimizer"] == {"name": "GD", "lr": 0.05} and man["grid"][0]["keys"] == ["optimizer.lr"]
    mtime = os.path.getmtime(tmp_path / "lr=0.1.nc")
    r2 = pyrod.sweep(base, {"optimizer.lr": [0.05, 0.1]}, out=tmp_path, jobs=1)
    assert [p["action"] for p in r2.points] == ["skip", "skip"]
    assert os.path.getmtime(tmp_path / "lr=0.1.nc") == mtime
    # more steps: the finished points are extended from their checkpoints, equal to a run of 16 steps
    r3 = pyrod.sweep({**base, "steps": 16}, {"optimizer.lr": [0.05, 0.1]}, out=tmp_path, jobs=1)
    assert [p["action"] for p in r3.points] == ["resume", "resume"]
    ref = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.1), steps=16, eigs=1, eig_every=4, progress=False)
    got = pyrod.open(tmp_path / "lr=0.1.nc")
    np.testing.assert_array_equal(got["discrete"].ds.loss.values, ref["discrete"].ds.loss.values)
    # fewer steps than a file holds (a point extended with `pyrod resume`): the longer run is kept, not recomputed
    mtime = os.path.getmtime(tmp_path / "lr=0.1.nc")
    for rerun_changed in (False, True):
        r5 = pyrod.sweep(base, {"optimizer.lr": [0.05, 0.1]}, out=tmp_path, jobs=1, rerun_changed=rerun_changed)
        assert [p["action"] for p in r5.points] == ["skip", "skip"]
        assert [p["status"] for p in r5.points] == ["complete", "complete"]
        assert [p["steps_completed"] for p in r5.points] == [16, 16]
    assert os.path.getmtime(tmp_path / "lr=0.1.nc") == mtime
    # a different spec in the same folder is refused per point, naming the differing key
    r4 = pyrod.sweep({**base, "eig_every": 2}, {"optimizer.lr": [0.05]}, out=tmp_path, jobs=1)
    assert r4.points[0]["status"] == "failed" and "eig.every" in r4.points[0]["error"]


def test_run_point_is_idempotent_and_never_raises(tmp_path):
    spec = _base().replace({"output.path": str(tmp_path / "a.nc")}).to_dict()
    s1 = run_point(spec)
    s2 = run_point(spec)
    assert (s1["status"], s1["action"]) == ("complete", "run") and (s2["status"], s2["action"]) == ("complete", "skip")
    bad = _base().replace({"output.path": str(tmp_path / "nope" / "b.nc")}).to_dict()
    s3 = run_point(bad)
    assert s3["status"] == "failed" and "does not exist" in s3["error"] and "Traceback" in s3["error"]


# ------------------------------------------------------------------ on Dask
def test_2x2_grid_on_local_cluster_equals_single_runs(tmp_path, client):
    base = _base(steps=12)
    grid = {"optimizer.lr": [0.05, 0.1], "problem.seed": [0, 1]}
    r = pyrod.sweep(base, grid, out=tmp_path / "sw", client=client, progress=False)
    assert r.counts()["complete"] == 4, r.points
    assert len({p["worker"] for p in r.points}) >= 1
    man = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [p["status"] for p in man["points"]] == ["complete"] * 4
    sw = pyrod.open_sweep(tmp_path / "sw")
    loss = sw["discrete"].ds["loss"]
    assert loss.dims == ("lr", "seed", "t") and loss.shape == (2, 2, 12)
    for p in expand_grid(base, grid, out=tmp_path / "sw"):
        ref = _serial(p["spec"], tmp_path / f"ref_{p['name']}.nc")["discrete"].to_dataset()
        sel = sw["discrete"].ds[list(ref.data_vars)].sel(lr=p["params"]["optimizer.lr"],
                                                         seed=p["params"]["problem.seed"]).drop_vars(["lr", "seed"])
        xr.testing.assert_equal(sel, ref)
    assert sw.ds["status"].sel(lr=0.1, seed=1).item() == "complete"


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path, client):
    base = _base(steps=8)
    # more eigenvalues than the problem has dimensions: that point's run raises, the other one completes
    r = pyrod.sweep(base, {"eig.k": [1, 10**5]}, out=tmp_path, client=client, progress=False,
                    name=lambda p: f"k{p['eig.k']}")
    st = {p["name"]: p for p in r.points}
    assert st["k1"]["status"] == "complete"
    assert st["k100000"]["status"] == "failed" and "eigs=100000" in st["k100000"]["error"] \
        and "Traceback" in st["k100000"]["error"]
    assert read_manifest(tmp_path)["points"][1]["status"] == "failed"


def test_stopped_early_is_nan_after_the_stop(tmp_path, client):
    base = _base(steps=20)
    r = pyrod.sweep(base, {"optimizer.lr": [0.05, 2.0]}, out=tmp_path, client=client, progress=False)
    st = {p["params"]["optimizer.lr"]: p for p in r.points}
    assert st[0.05]["status"] == "complete"
    assert st[2.0]["status"] == "stopped" and st[2.0]["stop_reason"].startswith("diverged")
    sw = pyrod.open_sweep(tmp_path)
    loss = sw["discrete"].ds["loss"]
    k = int(st[2.0]["steps_completed"])
    assert k < 20 and np.isnan(loss.sel(lr=2.0).values[k:]).all() and np.isfinite(loss.sel(lr=2.0).values[:k]).all()
    assert sw.ds["stop_reason"].sel(lr=2.0).item().startswith("diverged")
    assert sw["discrete"].ds["stop_reason"].sel(lr=0.05).item().startswith("steps")


def _kill_one_worker_mid_run(client, out, names, timeout=180.0):
    """SIGKILL the worker process that is running a point which has written a checkpoint. Returns its name."""
    pids = client.run(os.getpid)        # asked before: a worker busy in a run answers late
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = client.processing()      # the scheduler's view, no round trip to the workers
        for addr, keys in busy.items():
            for key in keys:
                n = next((n for n in names if str(key).startswith(f"pyrod-point-{n}-")), None)
                if n is not None and os.path.exists(out / f"{n}.nc.ckpt"):
                    os.kill(pids[addr], signal.SIGKILL)
                    return n
        time.sleep(0.02)
    raise AssertionError("no point reached a checkpoint while running")


@pytest.mark.slow   # ~20 s on a 2-core machine: worker processes start and import torch
def test_killed_worker_loses_only_steps_since_checkpoint_and_sweep_is_bit_identical(tmp_path):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=50)
    c = Client(cluster)
    c.run(__import__, "pyrod.simulation")           # workers warm: the kill lands in a run, not in imports
    try:
        # a few seconds per point: 600 steps in chunks of 5, a checkpoint every 5 steps
        base = _base(steps=600, chunk=5, checkpoint_every=5)
        grid = {"optimizer.lr": [0.05, 0.06]}
        names = [p["name"] for p in expand_grid(base, grid, out=tmp_path / "sw")]
        box = {}
        th = threading.Thread(target=lambda: box.update(r=pyrod.sweep(base, grid, out=tmp_path / "sw", client=c,
                                                                      progress=False)))
        th.start()
        try:
            killed = _kill_one_worker_mid_run(c, tmp_path / "sw", names)
        finally:
            th.join(timeout=300)
        assert not th.is_alive()
        r = box["r"]
        assert r.counts()["complete"] == 2, [(p["status"], p["error"]) for p in r.points]
        rec = {p["name"]: p for p in r.points}
        assert rec[killed]["action"] == "resume"          # the rerun continued from the checkpoint
    finally:
        c.close()
        cluster.close()
    sw = pyrod.open_sweep(tmp_path / "sw")
    for p in expand_grid(base, grid, out=tmp_path / "sw"):
        ref = _serial(p["spec"], tmp_path / f"ref_{p['name']}.nc")["discrete"].to_dataset()
        got = pyrod.open(tmp_path / "sw" / p["file"])["discrete"].to_dataset()
        for v in ref.data_vars:
            xr.testing.assert_identical(got[v], ref[v])
        sel = sw["discrete"].ds[list(ref.data_vars)].sel(lr=p["params"]["optimizer.lr"]).drop_vars("lr")
        xr.testing.assert_equal(sel, ref)


@pytest.mark.slow   # ~20 s on a 2-core machine: worker processes start and import torch
def test_client_address_of_a_scheduler_and_worker_started_as_subprocesses(tmp_path):
    dask = os.path.join(os.path.dirname(sys.executable), "dask")
    if not os.path.exists(dask):
        pytest.skip("the dask command line is not installed next to this python")
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    try:
        procs.append(subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(sched_file)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen([dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                                       "--nworkers", "1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        r = pyrod.sweep(_base(steps=8), {"optimizer.lr": [0.05, 0.1]}, out=tmp_path / "sw", client=address,
                        progress=False)
        assert r.counts()["complete"] == 2, [(p["status"], p["error"]) for p in r.points]
        assert all(p["worker"].split(":")[1] != str(os.getpid()) for p in r.points)   # ran in the worker
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_local_cluster_workers_do_not_trim_malloc_after_every_free():
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 made a pyrod point 2.1x slower in a worker (README, Sweeps):
    the sweep's own LocalCluster removes it from its workers' environment, and keeps them single-threaded."""
    import os

    from distributed import Client, LocalCluster

    from pyrod.sweep import local_cluster

    LocalCluster(n_workers=1, processes=True, dashboard_address=":0", silence_logs=40).close()  # leaves Dask's value
    with local_cluster(1) as cluster, Client(cluster) as c:
        env = c.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert list(env.values()) == [(None, "1")], env
