"""GPU throughput at CIFAR-5k scale, ratios to the CPU in one run (one command; needs a CUDA GPU).

    python benchmarks/gpu.py [--n 5000] [--models mlp,cnn,vit] [--dtype float32] [--batch-size 1000]
                             [--cpu-n 500] [--flow-steps 4] [--threads 16]

Data: synthetic CIFAR-shaped images ``X (n, 3, 32, 32)`` standard normal, 10 classes, MSE (no download). Models: the
registry's MLP (2×256 GELU), CNN (channels 32, 64) and ViT (patch 4, dim 64, depth 2). For each model:

* derivative throughput on the GPU over all ``--n`` images: gradients/s, HVPs/s (single vectors) and third-derivative
  rows/s (``d3(w, u, v)``), and the same on the CPU over ``--cpu-n`` images scaled to ``--n`` (per-image cost is
  linear in n), with the GPU/CPU speed-up;
* flow cost per unit time (one optimizer step) on the GPU: wall seconds per step of the rod and central flows
  (torch backend, dopri5, rtol 1e-5, from step 0 of GD at η = 0.05 for ``--flow-steps`` steps), and as a ratio to one
  discrete GD step on the GPU.

``--batch-size``: micro-batches of the full-batch values (exact; bounds GPU memory). Prints one table.
"""
from __future__ import annotations

import argparse
import time

import torch

import pyrod
from pyrod.problems.models import MODELS

MODEL_KW = {"mlp": {"width": 256, "depth": 2, "activation": "gelu"}, "cnn": {"channels": (32, 64)},
            "vit": {"patch_size": 4, "dim": 64, "depth": 2}}


def _problem(model, n, device, dtype, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, 32, 32, generator=g)
    Y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(seed)
    net = MODELS[model](in_shape=(3, 32, 32), out_dim=10, **MODEL_KW[model])
    return pyrod.Problem.from_module(net, X, Y, "mse", dtype=dtype, device=device, batch_size=batch_size)


def _rate(fn, device, min_time=1.0, max_reps=50):
    """Calls per second of ``fn`` (one warm-up call; synchronised on CUDA)."""
    fn()
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    sync()
    reps, t0 = 0, time.perf_counter()
    while reps < max_reps and (reps < 2 or time.perf_counter() - t0 < min_time):
        fn()
        reps += 1
    sync()
    return reps / (time.perf_counter() - t0)


def _derivative_rates(prob, device):
    w = prob.w0
    g = torch.Generator(device="cpu").manual_seed(1)
    u = torch.randn(prob.dim, generator=g).to(device=device, dtype=prob.dtype)
    v = torch.randn(prob.dim, generator=g).to(device=device, dtype=prob.dtype)
    return (_rate(lambda: prob.grad(w), device), _rate(lambda: prob.hvp(w, u), device),
            _rate(lambda: prob.d3(w, u, v), device))


def _flow_cost(prob, steps, flow):
    from pyrod.flows.run import FlowRun
    spent = {}
    orig = FlowRun.advance

    def advance(self, chunk):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            return orig(self, chunk)
        finally:
            torch.cuda.synchronize()
            spent[self.name] = spent.get(self.name, 0.0) + time.perf_counter() - t0
    FlowRun.advance = advance
    try:
        t0 = time.perf_counter()
        tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.05), steps=steps, runs=["discrete", flow], eigs=1,
                              eig_every=10 ** 6, backend="torch", rtol=1e-5, atol=1e-8, progress=False)
        total = time.perf_counter() - t0
    finally:
        FlowRun.advance = orig
    return spent.get(flow, float("nan")) / steps, (total - spent.get(flow, 0.0)) / steps, \
        tree[flow].ds.attrs["flow_status"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--cpu-n", type=int, default=500)
    ap.add_argument("--models", default="mlp,cnn,vit")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--flow-steps", type=int, default=4)
    ap.add_argument("--flows", default="rod,central")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.cuda.get_device_name(0)}; CPU {torch.get_num_threads()} threads; synthetic CIFAR-shaped data, "
          f"n = {args.n} (CPU rates measured on {args.cpu_n} images, scaled to n), {args.dtype}, "
          f"batch_size = {args.batch_size}", flush=True)
    print(f"{'model':5s} {'d':>9s} {'what':22s} {'GPU /s':>10s} {'CPU /s':>10s} {'GPU/CPU':>8s}", flush=True)
    for model in args.models.split(","):
        gpu = _problem(model, args.n, "cuda", args.dtype, args.batch_size)
        cpu = _problem(model, args.cpu_n, "cpu", args.dtype, args.batch_size)
        rg, rc = _derivative_rates(gpu, "cuda"), _derivative_rates(cpu, "cpu")
        scale = args.cpu_n / args.n
        for what, a, b in zip(("gradients", "HVPs", "third-derivative rows"), rg, rc, strict=True):
            print(f"{model:5s} {gpu.dim:9d} {what:22s} {a:10.2f} {b * scale:10.3f} {a / (b * scale):8.1f}",
                  flush=True)
        for flow in args.flows.split(","):
            per_step, disc, status = _flow_cost(gpu, args.flow_steps, flow)
            print(f"{model:5s} {gpu.dim:9d} {flow + ' s/unit time':22s} {per_step:10.3f} {'':>10s} "
                  f"{per_step / max(disc, 1e-12):8.1f}x discrete step ({status})", flush=True)
        del gpu, cpu
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
