"""Cost and accuracy of the flows per unit of time (= per optimizer step), as ratios to the discrete run.

    python benchmarks/flows_cost.py [--steps 300] [--restart 200] [--width 32]

Problem: the digits MLP (4 classes, 300 points, tanh 2×width), float64, at the edge of stability for GD
(η = 1.0, oscillating steadily from step ~50) and Adam (η = 0.01). For each optimizer the flows are restarted from the discrete state at
``--restart`` (inside the EoS) and run for the remaining steps; we report gradient evaluations and wall time
per unit time, each as a ratio to the discrete run, and the median centre distance to the discrete run
(rod_flows.md §6.3 metric), at the default tolerances (rtol 1e-6, atol 1e-9) and tight ones (1e-9, 1e-12).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import pyrod


def run(prob, opt, steps, runs, restart, **kw):
    t0 = time.perf_counter()
    tree = pyrod.simulate(prob, opt, steps=steps, runs=runs, eigs=1, eig_every=10**6, restart_at=restart,
                          progress=False, **kw)
    return tree, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--restart", type=int, default=200)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args(argv)
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=300, seed=0,
                         model_kwargs={"width": args.width, "depth": 2})
    n_flow = args.steps - args.restart
    rows = []
    for opt in (pyrod.optimizers.GD(lr=1.0), pyrod.optimizers.Adam(lr=0.01)):
        disc, t_disc = run(prob, opt, args.steps, ["discrete"], None)
        g_disc = disc["discrete"].attrs["n_grad"] / args.steps
        w_disc = t_disc / args.steps
        for label, extra in (("stable", {}), ("rod", {}), ("rod+BEA", {"bea": True})):
            name = "rod" if label.startswith("rod") else label
            for tol_label, rtol, atol in (("default", 1e-6, 1e-9), ("tight", 1e-9, 1e-12)):
                tree, wall = run(prob, opt, args.steps, ["discrete", name], args.restart, rtol=rtol, atol=atol,
                                 **extra)
                ds = tree[name].ds
                grads = (tree[name].attrs["n_grad"]) / n_flow
                wall_flow = (wall - t_disc) / n_flow
                cd = ds["centre_distance"].values
                rows.append((opt.name, label, tol_label, grads / g_disc, wall_flow / w_disc,
                             float(np.nanmedian(cd)), int(tree[name].attrs["n_rhs"]) / n_flow))
    print(f"digits MLP width {args.width}, d = {prob.dim}; flows restarted at step {args.restart}, "
          f"{n_flow} steps; ratios to the discrete run per unit time")
    print(f"{'optimizer':9s} {'flow':8s} {'tol':8s} {'grads/disc':>10s} {'wall/disc':>10s} {'RHS/step':>9s} "
          f"{'median centre dist':>19s}")
    for r in rows:
        print(f"{r[0]:9s} {r[1]:8s} {r[2]:8s} {r[3]:10.1f} {r[4]:10.1f} {r[6]:9.1f} {r[5]:19.3e}")


if __name__ == "__main__":
    main()
