"""Cost of the central flow vs the rod flow vs the discrete run, per unit of time (= per optimizer step).

    python benchmarks/central_vs_rod.py [--steps 300] [--restart 200] [--width 32] [--n 300] [--threads 1]

Problem: the digits MLP (4 classes, ``--n`` points, GELU 2×width, MSE), float64, at the edge of stability for
GD (η = 1.2) and RMSProp (η = 3e-3, β2 = 0.99). The discrete run goes ``--steps`` steps; each flow is restarted
from the discrete state at ``--restart`` (inside the EoS) and integrated for the remaining steps. Per unit time of
the flow we report gradients, HVPs (``Problem.n_hvp``: a third-derivative row ∇(uᵀHv) counts 2), third-derivative
rows (T3), SDCP solves and their time, eigen-tracking time, RHS evaluations and wall time (for a flow: the time
spent in its ``FlowRun.advance``, integration and read-out; for the discrete run: the whole run). Eigenvalue
diagnostics are off (``eig_every`` larger than the run) so only the dynamics are timed. Central flow: explicit
Euler with 4 substeps (the reference's scheme, ``method="euler", substeps=4``)
and adaptive RK45 (rtol 1e-4); rod flow: DOP853 at rtol 1e-6 (the default), RK45 at rtol 1e-4, Euler×4.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _timing import run

import pyrod


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--restart", type=int, default=200)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=args.n, seed=0,
                         model_kwargs={"width": args.width, "depth": 2, "activation": "gelu"})
    n_flow = args.steps - args.restart
    variants = [("rod", "DOP853 1e-6", dict(method="DOP853", rtol=1e-6, atol=1e-9)),
                ("rod", "RK45 1e-4", dict(method="RK45", rtol=1e-4, atol=1e-7)),
                ("central", "RK45 1e-4", dict(method="RK45", rtol=1e-4, atol=1e-7)),
                ("rod", "euler x4", dict(method="euler", substeps=4)),
                ("central", "euler x4", dict(method="euler", substeps=4))]
    rows = []
    for opt in (pyrod.optimizers.GD(lr=1.2), pyrod.optimizers.RMSProp(lr=3e-3, beta2=0.99)):
        run(prob, opt, 20, ["discrete"], None)                      # warm-up (imports, first-call overheads)
        disc, t_disc, _ = run(prob, opt, args.steps, ["discrete"], None)
        rows.append((opt.name, "discrete", "-", disc["discrete"].attrs["n_grad"] / args.steps,
                     disc["discrete"].attrs["n_hvp"] / args.steps, 0.0, 0.0, 0.0, 0.0, 1.0, t_disc / args.steps,
                     float("nan")))
        for name, label, kw in variants:
            tree, wall, t_flow = run(prob, opt, args.steps, ["discrete", name], args.restart, **kw)
            a = tree[name].attrs
            cd = float(np.nanmedian(tree[name].ds["centre_distance"].values))
            rows.append((opt.name, name, label, a["n_grad"] / n_flow, a["n_hvp"] / n_flow,
                         a.get("central_n_t3", 0) / n_flow, a.get("central_n_sdcp", 0) / n_flow,
                         a.get("central_t_sdcp", 0.0) / n_flow, a.get("central_t_eig", 0.0) / n_flow,
                         a["n_rhs"] / n_flow, t_flow / n_flow, cd))
    print(f"digits MLP (GELU, width {args.width}, n = {args.n}), d = {prob.dim}, float64, "
          f"{torch.get_num_threads()} thread(s); flows restarted at step {args.restart}, {n_flow} steps; "
          f"per unit time (= per optimizer step)")
    hdr = (f"{'optimizer':8s} {'run':8s} {'integrator':12s} {'grads':>7s} {'HVPs':>8s} {'T3 rows':>8s} "
           f"{'SDCPs':>6s} {'SDCP s':>8s} {'eig s':>7s} {'RHS':>6s} {'wall s':>8s} {'med centre dist':>16s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r[0]:8s} {r[1]:8s} {r[2]:12s} {r[3]:7.1f} {r[4]:8.1f} {r[5]:8.1f} {r[6]:6.1f} {r[7]:8.4f} "
              f"{r[8]:7.3f} {r[9]:6.1f} {r[10]:8.4f} {r[11]:16.3e}")


if __name__ == "__main__":
    main()
