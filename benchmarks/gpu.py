"""GPU throughput and the cost of each run kind at CIFAR-5k scale (one command; needs a CUDA GPU, or ``--device cpu``).

    python benchmarks/gpu.py [--n 5000] [--models mlp,cnn,vit] [--dtype float32] [--batch-size 1000]
                             [--cpu-n 500] [--regimes eos,start] [--flows rod,central] [--flow-steps 6] [--chunk 2]
                             [--backend torch] [--project-n N] [--threads 16] [--third-derivative autograd]
                             [--tracking-hvp autograd] [--warmup 2]
    python benchmarks/gpu.py --device cpu --n 200 --cpu-n 0 --regimes eos --flows stable,rod,central \
                             --backend default --flow-steps 12 --chunk 4 --project-n 5000 --threads 1
                                                                    # the CPU rows of docs/howto/cost.md

Data: synthetic CIFAR-shaped images ``X (n, 3, 32, 32)`` standard normal, 10 classes, MSE (no download). Models: the
registry's MLP (2×256 GELU), CNN (channels 32, 64) and ViT (patch 4, dim 64, depth 2). For each model:

* derivative throughput on the GPU over all ``--n`` images: gradients/s, HVPs/s (single vectors) and third-derivative
  rows/s (``d3(w, u, v)``), with the problem's HVP mode; with ``--cpu-n`` > 0 the same on the CPU over ``--cpu-n``
  images scaled to ``--n`` (per-image cost is linear in n), with the GPU/CPU speed-up;
* one sharpness measurement: seconds of one cold top-eigenvalue solve at ``w0`` (LOBPCG, ``k = 1``, tol 1e-4,
  no warm start): an indication of what measuring λmax costs. A run measures with a warm-started tracker at
  ``eig_tol`` (1e-8 by default), whose cost per solve differs (fewer iterations once warm, more at the tighter
  tolerance), so read this column as a scale, not a price per ``eig_every``;
* flow cost per unit time (one optimizer step): seconds per unit time of each flow of ``--flows`` (the
  registry's flows, ``pyrod.run_kinds.flow_names()``: ``stable``, ``rod``, ``central`` and any registered flow), on
  the torch backend or, with ``--backend default``, on the one pyrod picks for the device (SciPy on the CPU), each
  run beside the discrete GD run, timed with ``torch.cuda.synchronize()`` around each chunk's integration and
  read-out, over the chunks after the first (the first pays one-time set-up: the central flow's
  first eigen-solve) or, with ``--warmup W``, over those from step ``W`` on, and as a ratio central / rod. A central
  flow's first few units watch every tracked pair (its plan needs two whole checks' rates before it lets a pair
  go unwatched): a run of thousands of steps costs what the later units cost, so time those (``--warmup 6``);
* with ``rod`` and ``central`` in ``--flows``, in the ``eos`` rows, the central flow's floor: the least derivative
  work of a central flow with one critical direction on its default integrator (Euler ×4), per right-hand side the
  graph of ∇L at the new point, one HVP and one third-derivative pair (or their differences of gradients with
  ``--third-derivative`` / ``--tracking-hvp difference``), timed at ``w0`` (:func:`_central_rhs_floor`),
  and floor / rod: no change to the tracking (Rayleigh–Ritz of other directions, basis checks) can bring central /
  rod below it inside the EoS;
* for the central flow, what its HVPs went to per unit time over the same chunks (:func:`work_breakdown`): the
  Rayleigh–Ritz on the tracked basis, its Davidson expansions, LOBPCG refreshes, refinements, and the
  third-derivative pairs (two backward passes each in the HVP count; the parts add up to it), with the right-hand
  sides per unit time.
  Regimes (``--regimes``):

  - ``eos``: GD at ``η = 2.05/λ0`` (λ0 = λmax(H(w0))): effective sharpness 1.025 at the start, so the central flow's
    critical set is non-empty from the first step (the regime the central flow exists for); each flow on its own
    default integrator (rod: bosh3 at rtol 1e-3; central: Euler, 4 substeps);
  - ``start``: the setting of the issue-22 table: GD at η = 0.05 from step 0 (below the edge of stability), both
    flows on Dormand–Prince 5(4) (torch dopri5, SciPy RK45) at rtol 1e-5, atol 1e-8.

``--batch-size``: micro-batches of the full-batch values (exact; bounds GPU memory). Prints one table: per model and
regime the discrete run's seconds per step (without eigenvalues), each flow's seconds per unit time, central / rod,
and what 1,000 steps of the discrete run beside the central flow take (the two columns' sum × 1,000, eigenvalues
not included). ``--project-n N`` adds that last column scaled
linearly from ``--n`` images to ``N`` (per-image cost is linear in n; an extrapolation, labelled as such). Each
model's rows are also printed when that model is done, each line prefixed ``[model]``, so that a run stopped at a
time limit keeps them.
On the CPU the seconds are process CPU seconds (``time.process_time``: with ``--threads 1``, little disturbed by
other jobs); on CUDA wall seconds.
"""
from __future__ import annotations

import argparse

import torch
from _timing import chunk_times, device_clock

import pyrod
from pyrod.central_options import THIRD_DERIVATIVES, TRACKING_HVPS
from pyrod.integrate.fixed_step import DEFAULT_SUBSTEPS
from pyrod.problems.models import MODELS
from pyrod.run_kinds import flow_names

REGIMES = ("eos", "start")     # see the module docstring; _flow_cost: "eos", else "start"
#: the cost-table column of :func:`_central_rhs_floor` (a key of a row's cost dict beside the flows; eos rows)
FLOOR = "central floor (1 critical direction, derivatives only)"
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
    """Calls per second of ``fn`` (one warm-up call; ``_timing.device_clock``: synchronised wall seconds on CUDA,
    process CPU seconds on the CPU)."""
    fn()
    now = device_clock(device)
    reps, t0 = 0, now()
    while reps < max_reps and (reps < 2 or now() - t0 < min_time):
        fn()
        reps += 1
    return reps / (now() - t0)


def _derivative_rates(prob, device):
    w = prob.w0
    g = torch.Generator(device="cpu").manual_seed(1)
    u = torch.randn(prob.dim, generator=g).to(device=device, dtype=prob.dtype)
    v = torch.randn(prob.dim, generator=g).to(device=device, dtype=prob.dtype)
    return (_rate(lambda: prob.grad(w), device), _rate(lambda: prob.hvp(w, u), device),
            _rate(lambda: prob.d3(w, u, v), device))


def _central_rhs_floor(prob, device, substeps=DEFAULT_SUBSTEPS, third_derivative="autograd",
                       tracking_hvp="autograd"):
    """Seconds per unit time of the least derivative work a central flow with one critical direction does at its
    default integrator (Euler, ``substeps`` right-hand sides per unit time): per right-hand side the graph of ∇L
    at a new point (its gradient), one HVP ``Hu`` (the critical pair's Rayleigh–Ritz; with
    ``tracking_hvp="difference"`` a plain gradient and one more gradient, :func:`pyrod.flows.difference_hvp
    .hvp_by_difference`) and the third-derivative pair ``∇(uᵀHu)`` (with ``third_derivative="difference"``: from
    two more gradients, :func:`pyrod.flows.third_derivatives.d3_pairs_by_difference`), nothing else (no other
    tracked directions, no basis checks, no read-out). A lower bound of the central flow's cost inside the EoS,
    measured at ``w0`` with a new tensor per call (so every call builds the graph, as every right-hand side
    does)."""
    from pyrod.flows.difference_hvp import hvp_by_difference
    from pyrod.flows.third_derivatives import d3_pairs_by_difference
    w = prob.w0
    g = torch.Generator(device="cpu").manual_seed(2)
    u = torch.randn(prob.dim, 1, generator=g).to(device=device, dtype=prob.dtype)
    u /= torch.linalg.vector_norm(u)

    def rhs_work():
        ww = w.clone()                       # a new point: the cached graph of ∇L is built again
        if tracking_hvp == "difference":
            gw = prob.grad(ww)
            hvp_by_difference(prob.grad, ww, gw, u)
        else:
            prob.hvp(ww, u[:, 0])
            gw = prob.graph_grad(ww)
        if third_derivative == "difference":
            d3_pairs_by_difference(prob.grad, ww, gw, u, [0], [0])
        else:
            prob.d3_pairs(ww, u, [0], [0])
    return substeps / _rate(rhs_work, device)


def _floor_words(third_derivative, tracking_hvp) -> str:
    """What :func:`_central_rhs_floor` counts per right-hand side, in words."""
    hvp = "gradient + 1 more for Hu" if tracking_hvp == "difference" else "gradient graph + 1 HVP"
    pair = "2 gradients for the pair" if third_derivative == "difference" else "1 third-derivative pair"
    return f"{hvp} + {pair}"


def _sharpness(prob):
    """(λ0 = λmax(H(w0)), seconds of that one LOBPCG solve: k = 1, tol 1e-4)."""
    from pyrod.spectra import hessian_operator, top_eigs
    now = device_clock(prob.device)
    t0 = now()
    lam0 = float(top_eigs(hessian_operator(prob, prob.w0), prob.dim, 1, dtype=prob.dtype, device=prob.device,
                          tol=1e-4)[0][0])
    return lam0, now() - t0


def _timed_totals(chunks, warmup=1):
    """Totals ``(steps ≥ 1, seconds, gradients, HVPs)`` of the chunks of ``_timing.chunk_times`` that start at step
    ``warmup`` or later (default: every chunk after the first)."""
    timed = [c[1:] for c in chunks if c[0] >= max(warmup, 1)]
    steps, secs, grads, hvps = (sum(col) for col in zip(*timed, strict=True)) if timed else (0, 0.0, 0, 0)
    return max(steps, 1), secs, grads, hvps


#: the central flow's counters (``CentralFlow.stats``) that :func:`work_breakdown` reports per unit time: HVPs of the
#: Rayleigh–Ritz on the tracked basis, of its Davidson expansions, of the LOBPCG refreshes and of the refinements for
#: a measurement, and the third-derivative pairs ∇(uᵢᵀHuⱼ) (in the run's HVP count one backward pass per pair and one
#: per critical direction, shared by its pairs: two per pair with one critical direction, 156 for 126 pairs on the
#: memorising MLP; with ``--third-derivative difference`` two gradients per pair in its gradient count instead; with
#: ``--tracking-hvp difference`` the Rayleigh–Ritz and expansion products are one gradient each, in the gradient count)
WORK_COUNTERS = {"rr_hvp": "Rayleigh-Ritz HVPs", "expand_hvp": "expansion HVPs", "refresh_hvp": "refresh HVPs",
                 "refine_hvp": "refine HVPs", "n_t3": "third-derivative pairs", "n_rhs": "right-hand sides"}


def work_breakdown(stats_rows, warmup=1) -> dict | None:
    """Per unit time over the timed chunks (those that start at step ``warmup`` or later; default: after the first),
    what the central flow's derivative work went to: ``{counter: count per unit time}`` for :data:`WORK_COUNTERS`,
    from ``stats_rows`` (``chunk_times``'s ``chunks.stats[name]``: ``(step at the chunk's end, counters)``). None
    without a timed chunk, and for a flow that does not keep all of these (a plug-in flow that counts other things:
    no line of zeros)."""
    if not stats_rows:
        return None
    before = [row for row in stats_rows if row[0] <= max(warmup, stats_rows[0][0])]
    if before[-1] is stats_rows[-1]:             # (the first row is always in before)
        return None
    (k0, first), (k1, last) = before[-1], stats_rows[-1]
    if not all(key in last for key in WORK_COUNTERS):
        return None
    return {key: (last.get(key, 0) - first.get(key, 0)) / (k1 - k0) for key in WORK_COUNTERS}


def _flow_cost(prob, steps, flow, regime, chunk=2, lam0=None, backend="torch", third_derivative="autograd",
               tracking_hvp="autograd", warmup=None):
    """Seconds per unit time of ``flow`` (integration + read-out, the chunks from step ``warmup`` on) beside the
    discrete run, in ``regime`` (see the module docstring; ``lam0`` from :func:`_sharpness`, computed when not given) on
    ``backend`` (``"default"``: pyrod's choice for the device); returns ``(s per unit time, flow status,
    critical-set share, s per discrete step without eigenvalues, (gradients, HVPs) per unit time, work)``: the run's
    own counters over the timed chunks, third derivatives counted as their backward passes: ``pyrod.flows.cost``;
    ``work``: :func:`work_breakdown` for a flow that keeps counters, else None). ``third_derivative``,
    ``tracking_hvp``: the central flow's options of those names. ``warmup``: the steps not timed at the start (a
    multiple of ``chunk``; default: the first chunk)."""
    warmup = chunk if warmup is None else warmup
    if regime == "eos":
        lam0 = _sharpness(prob)[0] if lam0 is None else lam0
        kw = dict(lr=2.05 / lam0, integ={})
    else:
        # Dormand–Prince 5(4): "dopri5" on the torch backend, the same pair as SciPy's "RK45" (the CPU default)
        torch_backend = backend == "torch" or prob.device.type == "cuda"
        kw = dict(lr=0.05, integ=dict(method="dopri5" if torch_backend else "RK45", rtol=1e-5, atol=1e-8))
    with chunk_times(prob.device) as chunks:
        # threads: this process's torch setting (--threads), not the run's own choice (pyrod.threads), which may
        # take every core for a large problem and would make the CPU seconds of different rows incomparable
        tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=kw["lr"]), steps=steps, runs=["discrete", flow], eigs=1,
                              eig_every=10 ** 6, backend=None if backend == "default" else backend, chunk=chunk,
                              threads=torch.get_num_threads(), progress=False, **kw["integ"],
                              **({"third_derivative": third_derivative, "tracking_hvp": tracking_hvp}
                                 if flow == "central" else {}))
    units, secs, grads, hvps = _timed_totals(chunks[flow], warmup)
    d_steps, d_secs, _, _ = _timed_totals(chunks["discrete"], warmup)
    per, counts, per_disc = secs / units, (grads / units, hvps / units), d_secs / d_steps
    ds = tree[flow].ds
    crit = float((ds["n_critical"].values > 0).mean()) if "n_critical" in ds else float("nan")
    return per, ds.attrs["flow_status"], crit, per_disc, counts, work_breakdown(chunks.stats.get(flow), warmup)


def _duration(seconds: float) -> str:
    """``seconds`` as a short human duration (s, min or h)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def summary_table(rows, flows, project_n=None) -> str:
    """The markdown cost table. ``rows``: ``(model, d, n, regime, sharpness s, discrete s/step, {flow: s/unit})``;
    ``flows``: the flow columns in order. With ``rod`` and ``central`` measured, their ratio; where a row's dict
    also has ``FLOOR`` (:func:`_central_rhs_floor`; the ``eos`` rows), that floor and floor / rod ("–" in the other
    rows); with ``central``, 1,000 steps of discrete + central (and, with ``project_n``, that scaled linearly in n
    to ``project_n``)."""
    head = ["model", "d", "n", "regime", "1 cold λmax solve s", "discrete s/step (no eigs)"]
    head += [f"{f} s/unit time" for f in flows]
    both = "rod" in flows and "central" in flows
    floor = both and any(FLOOR in r[6] for r in rows)
    head += ["central / rod"] if both else []
    head += [f"{FLOOR} s/unit time", "floor / rod"] if floor else []
    head += ["1,000 steps discrete + central"] if "central" in flows else []
    head += [f"the same at n = {project_n} (linear in n, extrapolated)"] if "central" in flows and project_n else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, d, n, regime, sharp, dis, cost in rows:
        cells = [model, str(d), str(n), regime, f"{sharp:.3g}", f"{dis:.4g}"]
        cells += [f"{cost[f]:.4g}" for f in flows]
        cells += [f"{cost['central'] / cost['rod']:.2f}"] if both else []
        if floor:
            cells += [f"{cost[FLOOR]:.4g}", f"{cost[FLOOR] / cost['rod']:.2f}"] if FLOOR in cost else ["–", "–"]
        if "central" in flows:
            total = 1000 * (dis + cost["central"])
            cells.append(_duration(total))
            cells += [_duration(total * project_n / n)] if project_n else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    valid_flows = flow_names()     # read when called: a plug-in flow registered after import counts
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--cpu-n", type=int, default=500, help="images for the CPU rates (0: skip the CPU)")
    ap.add_argument("--models", default="mlp,cnn,vit")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--flow-steps", type=int, default=6, help="steps per flow run (the first --warmup untimed)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="steps not timed at the start of each flow run, a multiple of --chunk (default: one chunk); "
                         "a larger one times a central flow past its start, once its checks watch only the pairs "
                         "near the threshold (docs/howto/cost.md)")
    ap.add_argument("--chunk", type=int, default=2,
                    help="steps per chunk (an adaptive integrator starts a new segment at each chunk end; a run's "
                         "default chunk is 50)")
    ap.add_argument("--flows", default="rod,central",
                    help=f"comma-separated subset of {','.join(valid_flows)} (the run kinds that are flows)")
    ap.add_argument("--regimes", default="eos,start")
    ap.add_argument("--backend", default="torch", choices=["torch", "default"],
                    help="the flows' integrator backend (default: pyrod's choice for the device)")
    ap.add_argument("--project-n", type=int, default=None,
                    help="also give 1,000 steps of discrete + central scaled linearly to this many images")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--third-derivative", default="autograd", choices=THIRD_DERIVATIVES,
                    help="the central flow's third_derivative option (and its floor's); difference: float64 only")
    ap.add_argument("--tracking-hvp", default="autograd", choices=TRACKING_HVPS,
                    help="the central flow's tracking_hvp option (and its floor's); difference: float64 only")
    args = ap.parse_args(argv)
    for flag, value in (("--third-derivative", args.third_derivative), ("--tracking-hvp", args.tracking_hvp)):
        if value == "difference" and args.dtype != "float64":
            raise SystemExit(f"{flag} difference needs --dtype float64 (the central flow refuses it in float32)")
    if not 1 <= args.chunk < args.flow_steps:
        raise SystemExit(f"--chunk {args.chunk}: must be >= 1 and below --flow-steps {args.flow_steps} (the first "
                         "chunk is not timed)")
    warmup = args.chunk if args.warmup is None else args.warmup
    if warmup < args.chunk or warmup % args.chunk or warmup >= args.flow_steps:
        raise SystemExit(f"--warmup {warmup}: must be a multiple of --chunk {args.chunk} (at least one chunk) and "
                         f"below --flow-steps {args.flow_steps}")
    flows = args.flows.split(",")
    bad = [f for f in flows if f not in valid_flows]
    if bad:
        raise SystemExit(f"--flows: not flows: {bad}; the flows (pyrod.run_kinds.flow_names()): {list(valid_flows)}")
    regimes = args.regimes.split(",")
    bad = [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"--regimes: unknown {bad}; valid: {list(REGIMES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False; --device cpu "
                         "runs the same code on the CPU)")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU (process CPU seconds)"
    print(f"{name}; CPU {torch.get_num_threads()} threads; torch {torch.__version__}; synthetic CIFAR-shaped data, "
          f"n = {args.n} (CPU rates measured on {args.cpu_n} images, scaled to n), {args.dtype}, "
          f"batch_size = {args.batch_size}, backend {args.backend}, central third_derivative "
          f"{args.third_derivative}, tracking_hvp {args.tracking_hvp}", flush=True)
    print(f"{'model':5s} {'d':>9s} {'what':26s} {'device':>10s} {'CPU':>10s} {'dev/CPU':>8s}", flush=True)
    summary = []
    for model in args.models.split(","):
        gpu = _problem(model, args.n, args.device, args.dtype, args.batch_size)
        rg = _derivative_rates(gpu, args.device)
        rc = _derivative_rates(_problem(model, args.cpu_n, "cpu", args.dtype, args.batch_size), "cpu") \
            if args.cpu_n > 0 else (float("nan"),) * 3
        scale = args.cpu_n / args.n
        for what, a, b in zip(("gradients/s", "HVPs/s", "third-derivative rows/s"), rg, rc, strict=True):
            cpu = f"{b * scale:10.3f} {a / (b * scale):8.1f}" if args.cpu_n > 0 else f"{'-':>10s} {'-':>8s}"
            print(f"{model:5s} {gpu.dim:9d} {what:26s} {a:10.2f} {cpu}", flush=True)
        _sharpness(gpu)                      # warm-up (first-call set-up), then the timed solve
        lam0, sharp = _sharpness(gpu)
        print(f"{model:5s} {gpu.dim:9d} {'1 cold λmax solve s':26s} {sharp:10.3f}   (λ0 = {lam0:.4g})", flush=True)
        floor = None
        if "central" in flows and "rod" in flows and "eos" in regimes:
            floor = _central_rhs_floor(gpu, args.device, third_derivative=args.third_derivative,
                                       tracking_hvp=args.tracking_hvp)
            print(f"{model:5s} {gpu.dim:9d} {'central floor s/unit time':26s} {floor:10.3f}   ({DEFAULT_SUBSTEPS} × "
                  f"({_floor_words(args.third_derivative, args.tracking_hvp)}))", flush=True)
        for regime in regimes:
            cost = {FLOOR: floor} if floor is not None and regime == "eos" else {}
            for flow in flows:
                per, status, crit, per_disc, (grads, hvps), work = _flow_cost(
                    gpu, args.flow_steps, flow, regime, chunk=args.chunk, lam0=lam0, backend=args.backend,
                    third_derivative=args.third_derivative, tracking_hvp=args.tracking_hvp, warmup=warmup)
                cost[flow], cost["discrete"] = per, per_disc
                extra = f" critical {crit:.0%} of steps" if flow == "central" else ""
                print(f"{model:5s} {gpu.dim:9d} {regime + ' ' + flow + ' s/unit time':26s} {per:10.3f} "
                      f"{'':>10s} {'':>8s} ({status}){extra}; per unit time {grads:.1f} gradients, "
                      f"{hvps:.1f} HVPs", flush=True)
                if work is not None:
                    print(f"{'':5s} {'':9s} {'  of which, per unit time':26s} "
                          + ", ".join(f"{WORK_COUNTERS[k]} {v:.1f}" for k, v in work.items()), flush=True)
            summary.append((model, gpu.dim, args.n, regime, sharp, cost.pop("discrete"), cost))
        # at once too: a run stopped at a time limit (benchmarks/gpu_checks.sh) keeps each finished model's table
        for line in summary_table(summary[-len(regimes):], flows, args.project_n).splitlines():
            print(f"[{model}] {line}", flush=True)
        del gpu
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print()
    print(summary_table(summary, flows, args.project_n))


if __name__ == "__main__":
    main()
