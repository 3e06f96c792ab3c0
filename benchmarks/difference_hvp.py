"""Hessian-vector products of the central flow's tracked basis: autograd against one-sided differences of gradients,
accuracy and cost.

    python benchmarks/difference_hvp.py [--models mlp,cnn,vit] [--n 200] [--threads 1]

For each model of ``benchmarks/gpu.py`` (synthetic CIFAR-shaped data, ``n`` images, MSE) at its initialisation
``w0``, with ``V`` eight unit columns: the top six Hessian eigenvectors (float64 LOBPCG, tol 1e-3: what a tracked
basis looks like) and two random directions:

* **accuracy**: the relative error ``|Hv − (Hv)_exact| / |(Hv)_exact|`` per column, ``(Hv)_exact`` autograd's
  ``Problem.hvp`` in float64, for autograd in float32, for :func:`pyrod.flows.difference_hvp.hvp_by_difference` in
  float64 at its default step ``√ε``, and for the difference in float32 at the best of the steps 1e-4, 3e-4, 1e-3,
  3e-3 and 1e-2 for that column (chosen knowing the exact answer, which a run cannot: a bound on what float32 could
  do); the table gives the largest error over the eigenvectors and over the random directions;
* **cost** of the eight products, process CPU seconds of one thread (one warm-up call, then the mean of 3), in
  float64 and float32: autograd at a new point (the graph of ∇L built, then the products in the problem's HVP mode)
  against the gradient at that point and one more gradient per column (the difference).

Prints one table per part. docs/central_flows.md ("Hessian-vector products of the tracked basis") quotes its output.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import _problem  # noqa: E402  (the same models and data as the cost table)
from third_derivatives import _rel, _seconds, benchmark_args  # noqa: E402  (the same error, timing and options)

from pyrod.flows.difference_hvp import hvp_by_difference  # noqa: E402
from pyrod.spectra import hessian_operator, top_eigs  # noqa: E402

F32_STEPS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
N_EIG, N_RANDOM = 6, 2


def _directions(prob):
    """``(d, 8)`` float64 unit columns: the top six eigenvectors at ``w0`` and two random directions."""
    V = top_eigs(hessian_operator(prob, prob.w0), prob.dim, N_EIG, dtype=torch.float64, device=prob.device,
                 tol=1e-3)[1]
    R = torch.randn(prob.dim, N_RANDOM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    V = torch.cat([V, R], dim=1)
    return V / V.norm(dim=0)


def _split(errs):
    """``[largest over the eigenvectors, largest over the random directions]``."""
    return [float(errs[:N_EIG].max()), float(errs[N_EIG:].max())]


def accuracy(model, n):
    """``(d, {method: [error along eigenvectors, error along random directions]})`` for one model."""
    p64, p32 = _problem(model, n, "cpu", "float64", None), _problem(model, n, "cpu", "float32", None)
    V = _directions(p64)
    w64, w32, V32 = p64.w0, p32.w0, V.float()
    exact = p64.hvp(w64.clone(), V)
    out = {"autograd float32": _split(_rel(p32.hvp(w32.clone(), V32), exact)),
           "difference float64 (h = √ε)": _split(_rel(hvp_by_difference(p64.grad, w64, p64.grad(w64), V), exact))}
    g32 = p32.grad(w32)
    errs = torch.stack([_rel(hvp_by_difference(p32.grad, w32, g32, V32, h=h), exact) for h in F32_STEPS])
    out["difference float32, best step per column"] = _split(errs.min(dim=0).values)
    return p64.dim, out


def cost(model, n, dtype):
    """``(autograd s, difference s, gradient s)`` for the eight products at a new point, one model and dtype."""
    prob = _problem(model, n, "cpu", dtype, None)
    w = prob.w0
    V = torch.randn(prob.dim, N_EIG + N_RANDOM, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64).to(prob.dtype)
    V /= V.norm(dim=0)

    def autograd():
        prob.hvp(w.clone(), V)           # a new point: the graph of ∇L is built again

    def difference():
        ww = w.clone()
        hvp_by_difference(prob.grad, ww, prob.grad(ww), V)
    return (_seconds(autograd, reps=3), _seconds(difference, reps=3),
            _seconds(lambda: prob.grad(w.clone()), reps=3))


def main(argv=None):
    args, models = benchmark_args(argv, __doc__)
    print(f"torch {torch.__version__}, {args.threads} thread(s), n = {args.n}; relative error of Hv against autograd "
          f"in float64, largest over the top {N_EIG} Hessian eigenvectors at w0 and over {N_RANDOM} random "
          f"directions\n")
    print("| model | d | method | eigenvectors | random |\n|---|---:|---|---:|---:|")
    for model in models:
        d, acc = accuracy(model, args.n)
        for method, (e, r) in acc.items():
            print(f"| {model} | {d} | {method} | {e:.1e} | {r:.1e} |", flush=True)
    print(f"\nprocess CPU seconds for {N_EIG + N_RANDOM} products at a new point (one warm-up, mean of 3)\n")
    print("| model | dtype | gradient | autograd | difference | autograd / difference |\n"
          "|---|---|---:|---:|---:|---:|")
    for model in models:
        for dtype in ("float64", "float32"):
            a, b, g = cost(model, args.n, dtype)
            print(f"| {model} | {dtype} | {g:.3f} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
