"""GPU throughput and flow costs at CIFAR-5k scale (one command; needs a CUDA GPU).

    python benchmarks/gpu.py [--n 5000] [--models mlp,cnn,vit] [--dtype float32] [--batch-size 1000]
                             [--cpu-n 500] [--regimes eos,start] [--flow-steps 6] [--threads 16]

Data: synthetic CIFAR-shaped images ``X (n, 3, 32, 32)`` standard normal, 10 classes, MSE (no download). Models: the
registry's MLP (2×256 GELU), CNN (channels 32, 64) and ViT (patch 4, dim 64, depth 2). For each model:

* derivative throughput on the GPU over all ``--n`` images: gradients/s, HVPs/s (single vectors) and third-derivative
  rows/s (``d3(w, u, v)``), with the problem's HVP mode; with ``--cpu-n`` > 0 the same on the CPU over ``--cpu-n``
  images scaled to ``--n`` (per-image cost is linear in n), with the GPU/CPU speed-up;
* flow cost per unit time (one optimizer step): wall seconds per unit time of the rod and the central flow
  (torch backend), each run beside the discrete GD run, timed with ``torch.cuda.synchronize()`` around each chunk's
  integration and read-out, over the chunks after the first (the first pays one-time set-up: the central flow's
  first eigen-solve), and as a ratio central / rod. Regimes (``--regimes``):

  - ``eos``: GD at ``η = 2.05/λ0`` (λ0 = λmax(H(w0))): effective sharpness 1.025 at the start, so the central flow's
    critical set is non-empty from the first step (the regime the central flow exists for); each flow on its own
    default integrator (rod: bosh3 at rtol 1e-3; central: Euler, 4 substeps);
  - ``start``: the setting of the issue-22 table: GD at η = 0.05 from step 0 (below the edge of stability), both
    flows on dopri5 at rtol 1e-5, atol 1e-8.

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


def _flow_cost(prob, steps, flow, regime, chunk=2):
    """Seconds per unit time of ``flow`` (integration + read-out, chunks after the first) beside the discrete run,
    in ``regime`` (see the module docstring); returns ``(s per unit time, flow status, critical-set share, s per
    discrete step without eigenvalues)``."""
    from pyrod.flows.run import FlowRun
    from pyrod.spectra import hessian_operator, top_eigs
    spent = []
    orig = FlowRun.advance

    sync = torch.cuda.synchronize if prob.device.type == "cuda" else (lambda: None)

    def advance(self, ck):
        sync()
        t0 = time.perf_counter()
        try:
            return orig(self, ck)
        finally:
            sync()
            if self.name == flow:
                spent.append((ck.k0, ck.n_steps, time.perf_counter() - t0))
    if regime == "eos":
        lam0 = float(top_eigs(hessian_operator(prob, prob.w0), prob.dim, 1, dtype=prob.dtype, device=prob.device,
                              tol=1e-4)[0][0])
        kw = dict(lr=2.05 / lam0, integ={})
    else:
        kw = dict(lr=0.05, integ=dict(method="dopri5", rtol=1e-5, atol=1e-8))
    from pyrod.runs.discrete import DiscreteRun
    disc = []
    orig_chunk = DiscreteRun.run_chunk

    def run_chunk(self, n):
        sync()
        t0 = time.perf_counter()
        try:
            return orig_chunk(self, n)
        finally:
            sync()
            disc.append((self.state.k, n, time.perf_counter() - t0))
    FlowRun.advance, DiscreteRun.run_chunk = advance, run_chunk
    try:
        tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=kw["lr"]), steps=steps, runs=["discrete", flow], eigs=1,
                              eig_every=10 ** 6, backend="torch", chunk=chunk, progress=False, **kw["integ"])
    finally:
        FlowRun.advance, DiscreteRun.run_chunk = orig, orig_chunk
    timed = [(n, s) for k0, n, s in spent if k0 > 0]
    per = sum(s for _, s in timed) / max(sum(n for n, _ in timed), 1)
    d_timed = [(n, s) for k, n, s in disc if k - n > 0]
    per_disc = sum(s for _, s in d_timed) / max(sum(n for n, _ in d_timed), 1)
    ds = tree[flow].ds
    crit = float((ds["n_critical"].values > 0).mean()) if "n_critical" in ds else float("nan")
    return per, ds.attrs["flow_status"], crit, per_disc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--cpu-n", type=int, default=500, help="images for the CPU rates (0: skip the CPU)")
    ap.add_argument("--models", default="mlp,cnn,vit")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--flow-steps", type=int, default=6, help="steps per flow run (the first chunk of 2 untimed)")
    ap.add_argument("--flows", default="rod,central")
    ap.add_argument("--regimes", default="eos,start")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test of this script")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False; --device cpu "
                         "runs the same code on the CPU, for a smoke test)")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU only (smoke test)"
    print(f"{name}; CPU {torch.get_num_threads()} threads; synthetic CIFAR-shaped data, "
          f"n = {args.n} (CPU rates measured on {args.cpu_n} images, scaled to n), {args.dtype}, "
          f"batch_size = {args.batch_size}", flush=True)
    print(f"{'model':5s} {'d':>9s} {'what':26s} {'GPU':>10s} {'CPU':>10s} {'GPU/CPU':>8s}", flush=True)
    summary = []
    for model in args.models.split(","):
        gpu = _problem(model, args.n, args.device, args.dtype, args.batch_size)
        rg = _derivative_rates(gpu, args.device)
        rc = _derivative_rates(_problem(model, args.cpu_n, "cpu", args.dtype, args.batch_size), "cpu") \
            if args.cpu_n > 0 else (float("nan"),) * 3
        scale = args.cpu_n / args.n
        for what, a, b in zip(("gradients/s", "HVPs/s", "third-derivative rows/s"), rg, rc, strict=True):
            print(f"{model:5s} {gpu.dim:9d} {what:26s} {a:10.2f} {b * scale:10.3f} {a / (b * scale):8.1f}",
                  flush=True)
        for regime in args.regimes.split(","):
            cost = {}
            for flow in args.flows.split(","):
                per, status, crit, per_disc = _flow_cost(gpu, args.flow_steps, flow, regime)
                cost[flow], cost["discrete"] = per, per_disc
                extra = f" critical {crit:.0%} of steps" if flow == "central" else ""
                print(f"{model:5s} {gpu.dim:9d} {regime + ' ' + flow + ' s/unit time':26s} {per:10.3f} "
                      f"{'':>10s} {'':>8s} ({status}){extra}", flush=True)
            if "rod" in cost and "central" in cost:
                summary.append((model, gpu.dim, regime, cost["discrete"], cost["rod"], cost["central"]))
        del gpu
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print("\n| model | d | regime | discrete s/step (no eigs) | rod s/unit time | central s/unit time | central / rod "
          "|")
    print("|---|---|---|---|---|---|---|")
    for model, d, regime, dis, rod, cen in summary:
        print(f"| {model} | {d} | {regime} | {dis:.4f} | {rod:.3f} | {cen:.3f} | {cen / rod:.2f} |")


if __name__ == "__main__":
    main()
