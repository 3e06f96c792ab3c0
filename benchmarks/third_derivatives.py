"""The central flow's third derivatives: autograd against second differences of gradients, accuracy and cost.

    python benchmarks/third_derivatives.py [--models mlp,cnn,vit] [--n 200] [--threads 1]

For each model of ``benchmarks/gpu.py`` (synthetic CIFAR-shaped data, ``n`` images, MSE) at its initialisation
``w0``, with ``U`` the top two Hessian eigenvectors (float64 LOBPCG, tol 1e-8) and the three pairs
``T_00, T_01, T_11`` (``T_ij = ∇(u_iᵀHu_j)``):

* **accuracy**: the relative error ``|T − T_exact| / |T_exact|`` of each pair, ``T_exact`` autograd's
  ``Problem.d3_pairs`` in float64, for autograd in float32, for ``d3_pairs_by_difference`` in float64 at its
  default step ``ε^(1/4)``, and for the differences in float32 at the best of the steps 1e-3, 3e-3, 1e-2, 3e-2 and
  0.1 for that pair (chosen knowing the exact answer, which a run cannot: a bound on what float32 could do);
* **cost** per call, process CPU seconds of one thread (one warm-up call, then the mean of 4), in float64 and
  float32: one gradient; the graph of ∇L at a new point with one HVP on it; the same with the pair ``T_00`` from
  autograd; the same with ``T_00`` from two more gradients. The last two are one right-hand side of a central flow
  with one critical direction (``benchmarks/gpu.py``'s floor).

Prints one table per part. docs/central_flows.md ("Third derivatives") quotes its output.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu import _problem  # noqa: E402  (the same models and data as the cost table)

from pyrod.flows.third_derivatives import d3_pairs_by_difference  # noqa: E402
from pyrod.spectra import hessian_operator, top_eigs  # noqa: E402

PAIRS = ([0, 0, 1], [0, 1, 1])
F32_STEPS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _rel(a, b):
    return (a.double() - b).norm(dim=0) / b.norm(dim=0)


def benchmark_args(argv, doc):
    """The command line this benchmark and ``benchmarks/difference_hvp.py`` share: ``--models`` (comma-separated),
    ``--n`` images and ``--threads`` (set here); returns ``(args, [model names])``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp,cnn,vit")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args, args.models.split(",")


def accuracy(model, n):
    """``{method: [err T00, err T01, err T11]}`` for one model (module docstring)."""
    p64, p32 = _problem(model, n, "cpu", "float64", None), _problem(model, n, "cpu", "float32", None)
    U = top_eigs(hessian_operator(p64, p64.w0), p64.dim, 2, dtype=torch.float64, device=p64.device, tol=1e-8)[1]
    U = U / U.norm(dim=0)
    w64, w32, U32 = p64.w0, p32.w0, U.float()
    exact = p64.d3_pairs(w64.clone(), U, *PAIRS)
    out = {"autograd float32": _rel(p32.d3_pairs(w32.clone(), U32, *PAIRS), exact),
           "difference float64 (h = ε^(1/4))": _rel(d3_pairs_by_difference(p64.grad, w64, p64.grad(w64), U, *PAIRS),
                                                    exact)}
    g32 = p32.grad(w32)
    errs = torch.stack([_rel(d3_pairs_by_difference(p32.grad, w32, g32, U32, *PAIRS, h=h), exact)
                        for h in F32_STEPS])
    out["difference float32, best step per pair"] = errs.min(dim=0).values
    out["  (that step)"] = torch.tensor([F32_STEPS[i] for i in errs.argmin(dim=0).tolist()])
    return p64.dim, {k: v.tolist() for k, v in out.items()}


def _seconds(fn, reps=4):
    fn()
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - t0) / reps


def cost(model, n, dtype):
    """Seconds per call (module docstring) for one model and dtype."""
    prob = _problem(model, n, "cpu", dtype, None)
    w = prob.w0
    u = torch.randn(prob.dim, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(prob.dtype)
    u /= u.norm()

    def graph_hvp():
        ww = w.clone()
        prob.hvp(ww, u[:, 0])
        return ww

    def with_autograd():
        prob.d3_pairs(graph_hvp(), u, [0], [0])

    def with_difference():
        ww = graph_hvp()
        d3_pairs_by_difference(prob.grad, ww, prob.graph_grad(ww), u, [0], [0])
    return {"gradient": _seconds(lambda: prob.grad(w.clone())), "graph + HVP": _seconds(graph_hvp),
            "graph + HVP + pair (autograd)": _seconds(with_autograd),
            "graph + HVP + pair (difference)": _seconds(with_difference)}


def main(argv=None):
    args, models = benchmark_args(argv, __doc__)
    print(f"torch {torch.__version__}, {args.threads} thread(s), n = {args.n}; relative error against autograd in "
          f"float64 of T_00, T_01, T_11 (top two Hessian eigenvectors at w0)\n")
    print("| model | d | method | T_00 | T_01 | T_11 |\n|---|---:|---|---:|---:|---:|")
    for model in models:
        d, acc = accuracy(model, args.n)
        for method, errs in acc.items():
            fmt = "{:.0e}" if method.startswith("  ") else "{:.1e}"
            print(f"| {model} | {d} | {method} | " + " | ".join(fmt.format(e) for e in errs) + " |", flush=True)
    print("\nprocess CPU seconds per call (one warm-up, mean of 4)\n")
    print("| model | dtype | gradient | graph + HVP | + pair (autograd) | + pair (difference) | "
          "autograd / difference |\n|---|---|---:|---:|---:|---:|---:|")
    for model in models:
        for dtype in ("float64", "float32"):
            c = cost(model, args.n, dtype)
            a, b = c["graph + HVP + pair (autograd)"], c["graph + HVP + pair (difference)"]
            print(f"| {model} | {dtype} | " + " | ".join(f"{v:.3f}" for v in c.values()) + f" | {a / b:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
