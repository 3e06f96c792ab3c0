"""Cost of Hessian-vector products and third-derivative columns in each ``hvp_mode``, as ratios to a gradient.

    python benchmarks/hvp_modes.py --device cuda                     # CIFAR-shaped n = 5000 (~1 min on an H200)
    python benchmarks/hvp_modes.py --device cpu --n 128 --ref-n 200  # one CPU thread (process_time)
    python benchmarks/hvp_modes.py --device cpu --n 8 --ref-n 8 --models mlp,cnn --ks 1,2 --ms 1   # smoke test

Models: the MLP (2×256 GELU), CNN (channels 32, 64) and ViT (patch 4, dim 64, depth 2) of ``benchmarks/gpu.py`` on
``--n`` synthetic CIFAR-shaped images (standard normal, 10 classes, MSE), and the MLP of
``benchmarks/vs_reference.py`` at widths 32 and 512 (``ref32``, ``ref512``) on its ``--ref-n`` points, 4 classes.

For each model it times at one point ``w``: a gradient (``Problem.grad``); building the cached graph of ∇L
(``build``: what the "graph" and "batched" modes pay once per new point, on top of their per-call cost); and, for
each mode of ``pyrod.problems.problem.HVP_MODES``, one ``hvp(w, V)`` with ``V`` of ``k`` columns (``--ks``) and one
``d3(w, U, V)`` with ``m`` paired columns (``--ms``), and ``d3_pairs(w, U, iu, ju)`` over the upper triangle
``i ≤ j`` of a basis of ``k`` columns (``--pair-ks``; ``m = k(k+1)/2`` pairs, the central flow's third derivatives;
the graph modes share one first backward pass per column), at a point whose graph is cached (for "forward" nothing
is cached: every call pays its whole cost). Each cell is the ratio to one gradient, then seconds per call. ``d3``
and ``d3_pairs`` in "batched" mode are the "graph" computation (torch has no batched double backward), so they are
not repeated. The last column is what ``hvp_mode="auto"`` picks on this device (``AUTO_HVP_MODES``); ``max rel
diff`` is the largest relative difference (max norm) of a mode's result to the "graph" mode's (exactness check).

The whole CUDA run (five models, n = 5000 and 200, float32) is sized for about a minute on an H200 (estimated from
benchmarks/gpu.py's rates; ``--ks``, ``--ms``, ``--pair-ks``, ``--max-reps`` shrink it). A cell that runs out of GPU
memory says so (with the peak reached) and the run goes on. The "forward" mode holds the activations (with tangents
and cotangents) of all ``k`` columns or ``m`` pairs at once: measured on the CPU at n = 128, float32, memory added by
one call: CNN d3 m = 6 2.4 GB ("graph" 0.44 GB), ViT d3 m = 6 10.3 GB ("graph" 1.25 GB), ViT hvp k = 8 3.6 GB
("batched" 1.5 GB, "graph" 0.22 GB); growing linearly in n, the ViT's forward cells cannot fit at n = 5000 on one GPU.

Timing: one warm-up call, then repeated calls until ``--min-time`` seconds or ``--max-reps`` calls (at least one),
best call kept. CPU: ``time.process_time`` (CPU seconds; with ``--threads 1`` little disturbed by other processes).
CUDA: ``time.perf_counter`` with ``torch.cuda.synchronize()`` before and after each call, and each cell also gives the
peak GPU memory allocated during it (``torch.cuda.max_memory_allocated``). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's pyrod
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import device_clock  # noqa: E402

import pyrod  # noqa: E402
from pyrod.problems.models import MODELS  # noqa: E402
from pyrod.problems.problem import HVP_MODES, auto_hvp_mode, check_hvp_mode  # noqa: E402

CIFAR_KW = {"mlp": {"width": 256, "depth": 2, "activation": "gelu"}, "cnn": {"channels": (32, 64)},
            "vit": {"patch_size": 4, "dim": 64, "depth": 2}}
MODES = tuple(m for m in HVP_MODES if m != "auto")


def make_problem(model: str, n: int, ref_n: int, device: str, dtype: str, hvp_mode: str = "auto"):
    """The benchmark's problem ``model`` (a key of CIFAR_KW, or ``ref<width>``) with the given ``hvp_mode``."""
    if model.startswith("ref"):
        from vs_reference import make_data, make_mlp
        X, y = make_data(ref_n)
        return pyrod.Problem.from_module(make_mlp(int(model[3:])), X, y, "mse", dtype=dtype, device=device,
                                         hvp_mode=hvp_mode)
    if model not in CIFAR_KW:
        raise SystemExit(f"--models: {model!r} is unknown; valid: {sorted(CIFAR_KW)} or ref<width>")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, 32, 32, generator=g)
    Y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    net = MODELS[model](in_shape=(3, 32, 32), out_dim=10, **CIFAR_KW[model])
    return pyrod.Problem.from_module(net, X, Y, "mse", dtype=dtype, device=device, hvp_mode=hvp_mode)


class Timer:
    def __init__(self, device: str, min_time: float, max_reps: int):
        self.cuda = device.startswith("cuda")
        self.min_time, self.max_reps = min_time, max_reps
        self.now = device_clock(device)

    def __call__(self, fn):
        """``(best seconds per call, last result)``."""
        out = fn()                                     # warm-up
        best, spent, reps = float("inf"), 0.0, 0
        while reps < 1 or (reps < self.max_reps and spent < self.min_time):
            t0 = self.now()
            out = fn()
            dt = self.now() - t0
            best, spent, reps = min(best, dt), spent + dt, reps + 1
        return best, out


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def bench_model(model, args, timer):
    """Markdown rows for one model (one problem; its ``hvp_mode`` is switched between the modes)."""
    p = make_problem(model, args.n, args.ref_n, args.device, args.dtype, "graph")
    w = p.w0
    gen = torch.Generator().manual_seed(1)
    kmax, mmax = max(args.ks), max(args.ms + args.pair_ks)
    V = torch.randn(p.dim, max(kmax, mmax), generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
    U = torch.randn(p.dim, mmax, generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
    t_grad, _ = timer(lambda: p.grad(w))

    def build():
        p._hcache.entry = None
        return p._hessian_graph(w)
    t_build, _ = timer(build)
    n = args.ref_n if model.startswith("ref") else args.n
    head = f"| {model} | {p.dim} | {n} | {t_grad:.3g} | {t_build / t_grad:.2f} |"
    rows = []
    for op, sizes in (("hvp", args.ks), ("d3", args.ms), ("d3_pairs", args.pair_ks)):
        for k in sizes:
            cells, results = [], {}
            for mode in MODES:
                if op != "hvp" and mode == "batched":
                    cells.append("= graph")
                    continue
                p.hvp_mode = check_hvp_mode(mode)
                if timer.cuda:
                    torch.cuda.reset_peak_memory_stats()
                try:
                    if op == "hvp":
                        Vk = V[:, 0] if k == 1 else V[:, :k]
                        t, out = timer(lambda Vk=Vk: p.hvp(w, Vk))
                    elif op == "d3":
                        Uk, Vk = (U[:, 0], V[:, 0]) if k == 1 else (U[:, :k], V[:, :k])
                        t, out = timer(lambda Uk=Uk, Vk=Vk: p.d3(w, Uk, Vk))
                    else:
                        iu, ju = torch.triu_indices(k, k)
                        t, out = timer(lambda k=k, iu=iu, ju=ju: p.d3_pairs(w, U[:, :k], iu, ju))
                except torch.OutOfMemoryError:
                    out = None
                    if timer.cuda:
                        torch.cuda.empty_cache()
                        mem = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.0f}"
                        cells.append(f"out of memory (> {mem} GiB)")
                    else:
                        cells.append("out of memory")
                    continue
                results[mode] = out
                mem = f", {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB" if timer.cuda else ""
                cells.append(f"{t / t_grad:.2f} ({t:.3g} s{mem})")
            diff = max((rel_diff(out, results["graph"]) for out in results.values()), default=float("nan")) \
                if "graph" in results else float("nan")
            opname = ("hvp" if k == 1 else "hvp_block") if op == "hvp" else "d3"
            size = f"{k} (m = {k * (k + 1) // 2})" if op == "d3_pairs" else k
            rows.append(f"{head} {op} | {size} | " + " | ".join(cells)
                        + f" | {auto_hvp_mode(w.device.type, opname)} | {diff:.1e} |")
            head = "| | | | | |"
    p._hcache.entry = None
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--models", default="mlp,cnn,vit,ref32,ref512")
    ap.add_argument("--n", type=int, default=5000, help="CIFAR-shaped images for mlp, cnn, vit (default 5000)")
    ap.add_argument("--ref-n", type=int, default=200, help="points for the ref<width> MLPs, a multiple of 4 (default 200)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--ks", default="1,2,4,8", help="HVP column counts")
    ap.add_argument("--ms", default="1,3,6", help="d3 pair counts")
    ap.add_argument("--pair-ks", default="2,3", help="d3_pairs basis sizes k (all m = k(k+1)/2 pairs i <= j)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds of timed calls per cell, at least")
    ap.add_argument("--max-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    args = ap.parse_args(argv)
    args.ks = [int(x) for x in args.ks.split(",")]
    args.ms = [int(x) for x in args.ms.split(",")]
    args.pair_ks = [int(x) for x in args.pair_ks.split(",")] if args.pair_ks else []
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False")
    torch.set_num_threads(args.threads)
    timer = Timer(args.device, args.min_time, args.max_reps)
    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    t0 = time.perf_counter()
    print(f"hvp_modes: {where}; torch {torch.__version__}; {args.dtype}; synthetic CIFAR-shaped n = {args.n}, "
          f"ref MLPs n = {args.ref_n}; cells: cost / one gradient (seconds per call), at a point whose graph is "
          f"cached; graph and batched pay `build` once more per new point\n", flush=True)
    print("| model | d | n | grad s | build / grad | op | k | " + " | ".join(MODES) + " | auto | max rel diff |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(MODES) + "---|---|", flush=True)
    for model in args.models.split(","):
        for row in bench_model(model, args, timer):
            print(row, flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"\n({time.perf_counter() - t0:.0f} s wall in all)", flush=True)


if __name__ == "__main__":
    main()
