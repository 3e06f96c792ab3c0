"""``python -m pyrod demo``: the built-in default job.

Full-batch GD on a tanh MLP over scikit-learn's digits (4 classes, 1000 points, MSE, float64): the
sharpness λmax(H) rises to 2/η and hovers there (the edge of stability). Writes ``demo.nc`` and
``demo.png`` into ``--out`` and prints a summary of the effective sharpness after the EoS onset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def demo(out: str = "results/demo", steps: int = 1000, lr: float = 0.6, overwrite: bool = True,
         progress: bool | None = None) -> dict:
    import pyrod
    from pyrod.plotting import plot_runs

    os.makedirs(out, exist_ok=True)
    nc, png = os.path.join(out, "demo.nc"), os.path.join(out, "demo.png")
    t0 = time.perf_counter()
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=1000, loss="mse", dtype="float64", seed=0,
                         model_kwargs={"width": 64, "depth": 2, "activation": "tanh"})
    opt = pyrod.optimizers.GD(lr=lr)
    tree = pyrod.simulate(prob, opt, steps=steps, runs=["discrete"], eigs=1, eig_every=10, path=nc,
                          overwrite=overwrite, progress=progress)
    plot_runs(tree, png, title=f"GD, lr={lr}, MLP on digits: sharpness rises to 2/lr and hovers")
    summary = eos_summary(tree["discrete"].ds)
    summary.update({"netcdf": nc, "plot": png, "wall_time_s": round(time.perf_counter() - t0, 1),
                    "threshold_2_over_lr": 2 / lr})
    return summary


def eos_summary(ds, settle: int = 100) -> dict:
    """EoS onset (first measured effective sharpness ≥ 1) and the effective-sharpness range after it:
    over everything after the onset (this includes the first overshoot of progressive sharpening) and
    after ``settle`` more steps."""
    es = ds["effective_sharpness"]
    t = ds["t"].values[np.isfinite(es.values)]
    v = es.values[np.isfinite(es.values)]
    hit = np.nonzero(v >= 1.0)[0]
    out = {"initial_effective_sharpness": float(v[0]) if len(v) else float("nan"),
           "max_effective_sharpness": float(v.max()) if len(v) else float("nan"),
           "final_loss": float(ds["loss"].values[np.isfinite(ds["loss"].values)][-1])}
    if len(hit):
        onset = int(t[hit[0]])
        after = v[hit[0]:]
        late = v[t >= onset + settle]
        out.update({"eos_onset_step": onset,
                    "after_onset_min": float(after.min()), "after_onset_max": float(after.max()),
                    "after_onset_mean": float(after.mean()),
                    f"from_onset_plus_{settle}_min": float(late.min()) if len(late) else float("nan"),
                    f"from_onset_plus_{settle}_max": float(late.max()) if len(late) else float("nan")})
    else:
        out["eos_onset_step"] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyrod", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="GD on the digits MLP reaching the edge of stability")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--steps", type=int, default=1000)
    d.add_argument("--lr", type=float, default=0.6)
    args = p.parse_args(argv)
    summary = demo(args.out, args.steps, args.lr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
