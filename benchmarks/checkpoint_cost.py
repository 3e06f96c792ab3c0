"""Checkpoint size and cost as a ratio to the cost of a step (ratios measured in one run).

    python benchmarks/checkpoint_cost.py            # default digits MLP and a ~1M-parameter MLP

For each model: ``pyrod.simulate`` with the discrete run and a rod flow (Euler, 4 substeps), eigenvalues every
10 steps, ``chunk=10`` and ``checkpoint_every=10``; ``pyrod.checkpoint.save`` is wrapped to time each call and
record its size. Prints the checkpoint size, the mean time per checkpoint, the mean time per step (wall time of
the run / steps, checkpoints excluded) and their ratio.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

import pyrod
from pyrod import checkpoint


def measure(name, problem, steps, runs):
    calls = []
    orig = checkpoint.save

    def timed(path, payload):
        t0 = time.perf_counter()
        size = orig(path, payload)
        calls.append((time.perf_counter() - t0, size))
        return size

    checkpoint.save = timed
    try:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            pyrod.simulate(problem, pyrod.optimizers.Adam(lr=1e-3), steps=steps, runs=runs, eigs=1, eig_every=10,
                           chunk=10, checkpoint_every=10, method="euler", substeps=4, path=os.path.join(d, "r.nc"))
            wall = time.perf_counter() - t0
    finally:
        checkpoint.save = orig
    t_ck = sum(c[0] for c in calls)
    per_step = (wall - t_ck) / steps
    mean_ck = t_ck / len(calls)
    size = calls[-1][1]
    print(f"{name:<28} d={problem.dim:>8}  runs={'+'.join(runs):<14} checkpoint {size / 2**20:7.2f} MiB  "
          f"{mean_ck * 1e3:8.1f} ms/checkpoint  {per_step * 1e3:8.1f} ms/step  "
          f"checkpoint/step = {mean_ck / per_step:5.2f}  (every 10 steps: {100 * mean_ck / (10 * per_step):4.1f}% "
          f"overhead)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    default = pyrod.problem()       # the default problem: tanh MLP on digits (4 classes)
    measure("default MLP", default, args.steps, ["discrete", "rod"])
    big = pyrod.problem(model="mlp", data="digits", classes=10, n=500, model_kwargs={"width": 700, "depth": 2})
    measure("MLP width 700 (~0.55M)", big, args.steps, ["discrete", "rod"])
    big2 = pyrod.problem(model="mlp", data="digits", classes=10, n=500, model_kwargs={"width": 1000, "depth": 2})
    measure("MLP width 1000 (~1.1M)", big2, args.steps, ["discrete", "rod"])


if __name__ == "__main__":
    main()
