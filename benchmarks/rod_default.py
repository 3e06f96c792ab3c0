"""Rod flow at its default integrator vs a tight reference, inside the EoS (the flows_cost set-up): gradients per
unit time and median centre distance relative to DOP853 at rtol 1e-9. ``python benchmarks/rod_default.py``."""
import numpy as np
import torch

import pyrod

torch.set_num_threads(1)
prob = pyrod.problem(model="mlp", data="digits", classes=4, n=300, seed=0,
                     model_kwargs={"width": 32, "depth": 2, "activation": "gelu"})
W = 60
cases = {"GD": (pyrod.optimizers.GD(lr=1.2), 200), "Adam": (pyrod.optimizers.Adam(lr=1e-2, beta2=0.99), 400),
         "RMSProp": (pyrod.optimizers.RMSProp(lr=3e-3, beta2=0.99), 200)}
for key, (opt, restart) in cases.items():
    res = {}
    for label, kw in (("tight", dict(rtol=1e-9, atol=1e-12)), ("default", {})):
        tree = pyrod.simulate(prob, opt, steps=restart + W, runs=["discrete", "rod"], restart_at=restart, eigs=1,
                              eig_every=1000, **kw)
        a = tree["rod"].attrs
        cd = float(np.nanmedian(tree["rod"].ds["centre_distance"].values))
        res[label] = (a["n_grad"] / W, cd, a["method"], a["rtol"])
    g, cd, m, r = res["default"]
    print(f"{key:8s} default {m} rtol {r}: {g:.1f} grads/unit, median centre distance {cd:.3e} "
          f"= {cd / res['tight'][1]:.3f}x tight ({res['tight'][1]:.3e}; tight costs {res['tight'][0]:.1f} grads/unit)",
          flush=True)
