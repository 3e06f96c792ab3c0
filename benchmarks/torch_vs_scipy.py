"""Cost of the ``"torch"`` integration backend against SciPy at equal accuracy, rod and central flows, GD and Adam.

    python benchmarks/torch_vs_scipy.py [--window 30] [--n 300] [--width 32] [--threads 1] [--device cpu]
                                        [--optimizers GD,Adam] [--flows rod,central]

Problem: the digits MLP (4 classes, ``--n`` points, GELU 2×width, MSE), float64, inside the edge of stability (GD
η = 1.2, flows restarted at step 150; Adam η = 1e-2, β2 = 0.99, restarted at step 400), each flow integrated for
``--window`` steps. Integrators: SciPy DOP853 (the default) and RK45, torch dopri5 (the same Dormand–Prince 5(4)
pair as RK45), all at rtol 1e-6 / atol 1e-9. Accuracy: the largest deviation of the flow's centre-distance curve
from a reference run (SciPy DOP853 at ``--ref-rtol`` 1e-9, atol 1e-3·rtol), relative to that curve's largest value. Cost: wall
seconds inside the flow's own ``FlowRun.advance`` (integration + read-out), and right-hand sides per unit time.
The last column is the wall-time ratio torch / SciPy-DOP853 (< 1: torch is faster). One command, ratios in one run.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import run

import pyrod

INTEGRATORS = (("scipy", "DOP853"), ("scipy", "RK45"), ("torch", "dopri5"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--optimizers", default="GD,Adam")
    ap.add_argument("--flows", default="rod,central")
    ap.add_argument("--ref-rtol", type=float, default=1e-9, help="rtol of the SciPy DOP853 reference run")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=args.n, seed=0, device=args.device,
                         model_kwargs={"width": args.width, "depth": 2, "activation": "gelu"})
    print(f"digits MLP (GELU, width {args.width}, n = {args.n}), d = {prob.dim}, float64, {args.device}, "
          f"{torch.get_num_threads()} thread(s); flows restarted inside the EoS for {args.window} steps", flush=True)
    print(f"{'optimizer':9s} {'flow':8s} {'integrator':14s} {'rel. error':>10s} {'RHS/step':>9s} {'wall s':>8s} "
          f"{'wall/DOP853':>11s}", flush=True)
    cases = {"GD": (pyrod.optimizers.GD(lr=1.2), 150),
             "Adam": (pyrod.optimizers.Adam(lr=1e-2, beta2=0.99), 400)}
    for key in args.optimizers.split(","):
        opt, restart = cases[key.strip()]
        steps = restart + args.window
        for flow in args.flows.split(","):
            flow = flow.strip()
            ref, _, _ = run(prob, opt, steps, ["discrete", flow], restart, backend="scipy", method="DOP853",
                            rtol=args.ref_rtol, atol=args.ref_rtol * 1e-3)
            cd_ref = ref[flow].ds["centre_distance"].values
            base = None
            for backend, method in INTEGRATORS:
                tree, _, t_flow = run(prob, opt, steps, ["discrete", flow], restart, backend=backend, method=method,
                                      rtol=1e-6, atol=1e-9)
                a = tree[flow].attrs
                cd = tree[flow].ds["centre_distance"].values
                err = float(np.nanmax(np.abs(cd - cd_ref)) / np.nanmax(np.abs(cd_ref)))
                base = t_flow if base is None else base
                status = "" if a.get("flow_status", "ok") == "ok" else f"  ({a['flow_status'][:60]})"
                print(f"{opt.name:9s} {flow:8s} {backend + ' ' + method:14s} {err:10.1e} "
                      f"{a['n_rhs'] / args.window:9.1f} {t_flow:8.2f} {t_flow / base:11.2f}{status}", flush=True)


if __name__ == "__main__":
    main()
