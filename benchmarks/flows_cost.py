"""Cost and accuracy of the stable and rod flows per unit of time (= per optimizer step), as ratios to the discrete run.

    python benchmarks/flows_cost.py [--window 100] [--width 32] [--n 300] [--threads 1] [--optimizers GD,Adam]

Problem: the digits MLP (4 classes, ``--n`` points, GELU 2×width, MSE), float64, at the edge of stability:
GD η = 1.2 (sustained period-2 oscillation from step ~80; flows restarted at step 200) and Adam η = 1e-2, β2 = 0.99
(at the EoS by step ~300; flows restarted at step 400). Each flow is restarted from the discrete state (the fair
accuracy test inside the EoS; docs/theory/stable_and_rod_flows.md)
and integrated for ``--window`` steps. Per unit time we report gradient
evaluations and wall time, each as a ratio to the discrete run (flow wall time = time in its own ``FlowRun.advance``,
integration + read-out; see _timing.py), RHS evaluations, and the median centre distance to the discrete centre
(w_k + w_{k+1})/2, for DOP853 at the default tolerances (rtol 1e-6, atol 1e-9) and tight ones (1e-9, 1e-12).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import run

import pyrod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimizers", default="GD,Adam", help="comma-separated subset of GD,Adam")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=args.n, seed=0,
                         model_kwargs={"width": args.width, "depth": 2, "activation": "gelu"})
    print(f"digits MLP (GELU, width {args.width}, n = {args.n}), d = {prob.dim}, float64, "
          f"{torch.get_num_threads()} thread(s); flows restarted inside the EoS for {args.window} steps; "
          f"per unit time, ratios to the discrete run", flush=True)
    print(f"{'optimizer':9s} {'flow':8s} {'tol':8s} {'grads/disc':>10s} {'wall/disc':>10s} {'RHS/step':>9s} "
          f"{'median centre dist':>19s}", flush=True)
    cases = {"GD": (pyrod.optimizers.GD(lr=1.2), 200), "Adam": (pyrod.optimizers.Adam(lr=1e-2, beta2=0.99), 400)}
    for key in args.optimizers.split(","):
        opt, restart = cases[key.strip()]
        steps = restart + args.window
        run(prob, opt, 20, ["discrete"], None)                       # warm-up (first-call overheads)
        disc, t_disc, _ = run(prob, opt, steps, ["discrete"], None)
        g_disc = disc["discrete"].attrs["n_grad"] / steps
        w_disc = t_disc / steps
        for label, extra in (("stable", {}), ("rod", {}), ("rod+BEA", {"bea": True})):
            name = "rod" if label.startswith("rod") else label
            for tol_label, rtol, atol in (("default", 1e-6, 1e-9), ("tight", 1e-9, 1e-12)):
                tree, _, t_flow = run(prob, opt, steps, ["discrete", name], restart, rtol=rtol, atol=atol, **extra)
                a = tree[name].attrs
                cd = float(np.nanmedian(tree[name].ds["centre_distance"].values))
                print(f"{opt.name:9s} {label:8s} {tol_label:8s} {a['n_grad'] / args.window / g_disc:10.1f} "
                      f"{t_flow / args.window / w_disc:10.1f} {a['n_rhs'] / args.window:9.1f} {cd:19.3e}",
                      flush=True)


if __name__ == "__main__":
    main()
