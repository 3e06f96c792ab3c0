"""Does the central flow need its 4 Euler substeps? Cost and answers of the central flow at several ``substeps``.

    python benchmarks/central_substeps.py --models cnn,vit --substeps 2,4,8 --steps 24 --n 200 --threads 1
    python benchmarks/central_substeps.py --models cnn --substeps 2,4 --steps 3 --n 4       # smoke test

The central flow's default integrator is Euler with ``substeps`` = 4 per unit time and the complementarity
relaxation time ``τ = 1/substeps`` (docs/central_flows.md §4): every right-hand side pays one graph of ∇L, a
Rayleigh–Ritz and the third-derivative pairs, so its cost per unit time is about proportional to ``substeps``.
This benchmark runs the same problem at each ``--substeps`` value and prints what halving or doubling them buys.

Problems (``--models``), float32, the discrete run beside the central flow, ``--steps`` steps, ``chunk`` 4:

* ``mlp``, ``cnn``, ``vit``: the CIFAR-shaped models of ``benchmarks/gpu.py`` on ``--n`` synthetic images, GD at
  ``η = 2.05/λ0`` (its ``eos`` regime: the run starts just past the edge of stability, and the question is how
  the flow leaves or keeps its first critical direction);
* ``ref-mlp``: the reference's MLP (width 32, 99k parameters) on ``benchmarks/vs_reference.py``'s data (``--n``
  points), GD at its ``η = 0.037`` from step 0: the sharpness rises to the threshold (step ~25 at n = 200) and the
  run stays at the edge of stability, where directions join the critical set one by one (the steady regime, as
  ``python benchmarks/central_substeps.py --models ref-mlp --substeps 2,4,8,16 --steps 200``); with ``--opt
  rmsprop``, the reference's RMSProp (β2 = 0.99, ε = 1e-7, bias correction, its ν rate and step counter) at
  ``η = 1e-4`` instead, whose preconditioned sharpness reaches the threshold within a few steps.

Per model and ``substeps`` one markdown row:

* ``CPU s``: process CPU seconds of the whole ``pyrod.simulate`` call (set-up, discrete run and flow; with
  ``--threads 1`` little disturbed by other jobs);
* gradients and HVPs per unit time of the flow over its last 8 steps (the run's ``n_grad`` / ``n_hvp``);
* the critical-set history: the steps at which ``n_critical`` changes, as ``step:count`` (which directions the
  flow holds at the threshold, the central flow's qualitative answer);
* predicted loss against the discrete run's two-step average ``(L_k + L_{k+1})/2`` (the time average the central
  flow predicts), relative, median and max over steps ≥ 4;
* predicted loss against the run with the most substeps (the finest discretisation), relative, median and max.
"""
from __future__ import annotations

import argparse
import time

import gpu
import numpy as np
import torch
import vs_reference  # here, not in setup(): its import sets one torch thread, which main's --threads then overrides

import pyrod

#: the ``--models`` name of the reference's MLP in its steady regime (see the module docstring)
REF_MLP = "ref-mlp"
#: RMSProp's η on ``ref-mlp`` (``--opt rmsprop``): the middle of ``vs_reference.py``'s ``--rms-lrs``
REF_RMS_LR = 1e-4
OPTS = ("gd", "rmsprop")


def setup(model: str, n: int, opt: str = "gd"):
    """``(problem, optimizer, the central flow's options)`` of ``--models`` entry ``model`` and ``--opt`` ``opt``
    (see the module docstring)."""
    if model == REF_MLP:
        X, y = vs_reference.make_data(n)
        prob = vs_reference._problem(X, y, 32, torch.float32, "cpu")
        lr = REF_RMS_LR if opt == "rmsprop" else vs_reference.GD_LR   # RMSProp: its ν rate and step counter
        return prob, vs_reference._optimizer(opt, lr), vs_reference.flow_options(opt)
    prob = gpu._problem(model, n, "cpu", "float32", None)
    return prob, pyrod.optimizers.GD(lr=2.05 / gpu._sharpness(prob)[0]), {}


def run(prob, steps: int, substeps: int, optimizer, flow_options=None):
    """One discrete + central run of the problem ``prob`` at ``substeps`` with ``optimizer`` (and the central
    flow's ``flow_options``); returns ``(process CPU seconds, central Dataset, discrete Dataset)``."""
    t0 = time.process_time()
    tree = pyrod.simulate(prob, optimizer, steps=steps, runs=["discrete", "central"],
                          eigs=1, eig_every=10 ** 6, chunk=4, threads=torch.get_num_threads(), progress=False,
                          substeps=substeps, **(flow_options or {}))
    return time.process_time() - t0, tree["central"].ds, tree["discrete"].ds


def _history(n_critical) -> str:
    """``step:count`` at step 0 and wherever the count changes."""
    c = np.asarray(n_critical).astype(int)
    return " ".join(f"{k}:{c[k]}" for k in range(len(c)) if k == 0 or c[k] != c[k - 1])


def _rel(a, b, skip=4):
    """(median, max) of |a − b| / |b| over entries ≥ ``skip`` (all of them when there are fewer)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    r = np.abs(a - b) / np.abs(b)
    r = r[skip:] if r.size > skip else r
    return float(np.median(r)), float(r.max())


def rows(model: str, n: int, steps: int, substeps: list[int], opt: str = "gd") -> list[dict]:
    """One dict per ``substeps`` value (see the module docstring); the finest is the reference of the last
    columns."""
    prob, optimizer, flow_options = setup(model, n, opt)   # one problem and one η for every substeps value
    out = {s: run(prob, steps, s, optimizer, flow_options) for s in substeps}
    finest = out[max(substeps)][1]["predicted_loss"].values
    result = []
    for s in substeps:
        cpu, c, d = out[s]
        pl, dl = c["predicted_loss"].values, d["loss"].values
        k = min(len(pl), len(dl) - 1)
        last = slice(-min(8, len(pl) - 1) - 1, None)
        units = len(pl[last]) - 1
        result.append({"model": model if opt == "gd" else f"{model} ({opt})", "substeps": s, "cpu_s": cpu,
                       "grads": float(np.diff(c["n_grad"].values[last]).sum() / units),
                       "hvps": float(np.diff(c["n_hvp"].values[last]).sum() / units),
                       "history": _history(c["n_critical"].values),
                       "vs_discrete": _rel(pl[:k], 0.5 * (dl[:k] + dl[1:k + 1])),
                       "vs_finest": _rel(pl, finest[:len(pl)])})
    return result


def table(all_rows: list[dict]) -> str:
    """The markdown table of :func:`rows`' dicts."""
    head = ["model", "substeps", "CPU s", "gradients + HVPs per unit time (last 8 steps)",
            "critical set (step:count)", "predicted loss vs discrete 2-step average: median / max",
            "predicted loss vs the most substeps: median / max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in all_rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["substeps"]), f"{r['cpu_s']:.0f}", f"{r['grads']:.1f} + {r['hvps']:.1f}", r["history"],
            "{:.2g} / {:.2g}".format(*r["vs_discrete"]), "{:.2g} / {:.2g}".format(*r["vs_finest"])]) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn,vit")
    ap.add_argument("--substeps", default="2,4,8")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--opt", default="gd", choices=OPTS,
                    help=f"the optimizer (rmsprop: only with --models {REF_MLP}, at η = {REF_RMS_LR:g})")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    valid = sorted(gpu.MODEL_KW) + [REF_MLP]
    bad = [m for m in models if m not in valid]
    if bad:
        raise SystemExit(f"--models: unknown {bad}; valid: {valid}")
    if args.opt != "gd" and models != [REF_MLP]:      # checked before any run, not after the first model's
        raise SystemExit(f"--opt {args.opt}: only with --models {REF_MLP} alone (the CIFAR-shaped models run GD at "
                         f"2.05/λ0), got --models {args.models}")
    if REF_MLP in models and args.n % 4:
        raise SystemExit(f"--n {args.n}: {REF_MLP}'s data has 4 classes of n/4 points; give a multiple of 4")
    try:
        subs = sorted({int(s) for s in args.substeps.split(",")})
    except ValueError:
        raise SystemExit(f"--substeps {args.substeps!r}: expected comma-separated integers >= 1") from None
    if subs[0] < 1:
        raise SystemExit(f"--substeps {args.substeps!r}: expected comma-separated integers >= 1")
    if args.steps < 2:
        raise SystemExit(f"--steps {args.steps}: at least 2")
    torch.set_num_threads(args.threads)
    all_rows = []
    for model in models:
        all_rows += rows(model, args.n, args.steps, subs, args.opt)
    print(table(all_rows))


if __name__ == "__main__":
    main()
