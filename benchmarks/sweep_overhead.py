"""Dask overhead of pyrod.sweep per point, on a tiny problem (quadratic toy, 20 steps; the run itself is ~0.1 s).

Compares, for the same 8 points: 8 serial ``pyrod.simulate`` calls in this process; ``pyrod.sweep(jobs=1)``
(serial, with the manifest and file checks); ``pyrod.sweep`` on an already-running 2-worker LocalCluster (warm:
workers have imported pyrod); and ``pyrod.sweep(jobs=2)`` starting and closing its own cluster (cold). Prints
the wall times and the overhead per point relative to the serial calls.

    python benchmarks/sweep_overhead.py
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

import pyrod


def main():
    torch.set_num_threads(1)
    base = pyrod.RunSpec(problem={"toy": "quadratic"}, optimizer={"name": "GD", "lr": 0.05},
                         stop={"steps": 20}, eig={"k": 1, "every": 10})
    grid = {"optimizer.lr": [0.01, 0.02, 0.03, 0.04], "problem.seed": [0, 1]}
    pts = pyrod.sweep.expand_grid(base, grid, out="unused")
    n = len(pts)
    with tempfile.TemporaryDirectory() as d:
        pyrod.simulate(base.replace({"output.path": os.path.join(d, "warm.nc")}), progress=False)  # imports
        t = time.perf_counter()
        for p in pts:
            pyrod.simulate(p["spec"].replace({"output.path": os.path.join(d, "serial_" + p["file"])}),
                           progress=False)
        serial = time.perf_counter() - t

        t = time.perf_counter()
        pyrod.sweep(base, grid, out=os.path.join(d, "s1"), jobs=1, progress=False)
        inproc = time.perf_counter() - t

        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=40)
        client = Client(cluster)
        client.run(__import__, "pyrod.simulation")
        pyrod.sweep(base, {"optimizer.lr": [0.5, 0.6]}, out=os.path.join(d, "w0"), client=client, progress=False)
        t = time.perf_counter()
        pyrod.sweep(base, grid, out=os.path.join(d, "s2"), client=client, progress=False)
        warm = time.perf_counter() - t
        client.close()
        cluster.close()

        t = time.perf_counter()
        pyrod.sweep(base, grid, out=os.path.join(d, "s3"), jobs=2, progress=False)
        cold = time.perf_counter() - t
    print(f"{n} points, quadratic toy, 20 steps each (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")
    for label, w in [("serial pyrod.simulate", serial), ("pyrod.sweep(jobs=1)", inproc),
                     ("pyrod.sweep on a warm 2-worker LocalCluster", warm),
                     ("pyrod.sweep(jobs=2), cluster started and closed", cold)]:
        print(f"  {label:<50s} {w:7.2f} s   {w / n:6.3f} s/point   overhead {(w - serial) / n:+.3f} s/point")


if __name__ == "__main__":
    main()
