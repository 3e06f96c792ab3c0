"""pyrod vs the reference central-flows code, side by side on one identical problem, in one run.

    python benchmarks/vs_reference.py --reference PATH [--steps 80] [--steady 40] [--opts gd,rmsprop]
                                      [--dtypes float32,float64] [--width 32] [--n 200]

``PATH`` is a local checkout of the reference implementation of central flows (public repository
mahyarjn80/centralflows, commit 1f074fb). It has no license file, so nothing of it is copied here: it is imported
from ``PATH`` at run time, unmodified, and needs ``cvxpy`` with the ``CVXOPT`` solver (``pip install cvxpy cvxopt``,
e.g. in a separate virtual environment that also sees pyrod). At import time this script stubs the HuggingFace
``datasets`` module (no download) and turns ``.cuda()`` into a no-op (the reference calls it unconditionally); the
reference's processes (``DiscreteProcess``, ``CentralFlow``) are then driven directly, step by step.

Problem (identical on both sides): the reference's MLP (Flatten, Linear(3072, w), GELU, Linear(w, w), GELU,
Linear(w, 4)) with the same initial weights (``torch.manual_seed(0)`` then default ``nn.Linear`` init), ``--n``
synthetic CIFAR-shaped points of 4 classes (inputs with a power-law spectrum: smooth random images, fixed seeds;
this gives an edge of stability within tens of steps), MSE (½·mean over points of the squared error on one-hot
targets). GD η = 0.037; RMSProp η = 5e-5, β2 = 0.99, ε = 1e-7, bias correction, flows started after 5 warm-up
steps (the reference's ``warm_start``; pyrod's ``restart_at=5`` with the reference's ν rate ``(1−β2)/β2`` and its step
counter ``counter_rate="1/beta2"``).
Both integrate the central flow with Euler, 4 substeps per step; eigenvalues every step (the reference's LOBPCG
``frequency=1``, 2 initial eigenvalues; pyrod ``eig_every=1``, ``eigs=2``); one CPU thread each.

Eigen accuracy: the reference's LOBPCG stops at ``‖Ax − θx‖ < tol·10·n·(‖Ax‖ + θ)`` with ``tol = 1e-10`` and ``n`` the
dimension, i.e. at a relative residual ≈ ``20·n·1e-10`` (2e-4 at d = 99k, 8e-4 at width 128), 200× looser than
pyrod's default ``eig.tol = 1e-6``. ``--eig-tols default,ref`` runs pyrod at both: its own default and the
reference's effective tolerance (equal accuracy); both columns are printed. The same work is timed on both sides:
the reference computes RMSProp's raw λmax(H) in a logger, outside its timed work, so pyrod runs with
``eig_raw=False`` unless ``--raw-sharpness`` is given.

Timing: CPU seconds (``time.process_time``; one thread, so on an idle machine the same as wall seconds, and far
less disturbed by other processes on a shared one) per unit time (= per optimizer step) of each run's own work, median over the steady window
(steps ≥ ``--steady``, inside the EoS): the reference's ``prepare() + step()`` of the process; pyrod's
``DiscreteRun.run_chunk`` (discrete step + its eigen-solve) and ``FlowRun.advance`` (integration + read-out with
the diagnostics), per chunk of ``--chunk`` steps, divided by the chunk's steps.

Agreement (pyrod minus reference, central flow): median relative difference of the predicted loss (reference:
``L(w) + tr X`` at the process's step; pyrod: ``predicted_loss``), median and max of the central flow's effective
sharpness (λ(P⁻¹H)/threshold; the reference's ``eff_eigs[0]/2``), first step with a non-empty critical set.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # this checkout's pyrod

CLASSES = 4
GD_LR = 0.037
RMS = dict(lr=5e-5, beta2=0.99, eps=1e-7)
RMS_WARM = 5
REF_EIG_TOL = 1e-10      # the reference's EigConfig default (used here)


# ------------------------------------------------------------------------------------------------ problem
def make_data(n: int, seed: int = 0, alpha: float = 1.0, noise: float = 0.05, rank: int = 256):
    """``n`` CIFAR-shaped points ``(n, 3, 32, 32)`` float32 and labels ``(n,)`` (n/4 per class, random order).

    Inputs ``x = √D Σ_j j^(-alpha) c_j b_j + noise·N(0, I)``, ``b_j`` orthonormal smooth random images (8×8 noise
    upsampled to 32×32), ``c_j ~ N(0, 1)``; channels standardised. Labels are independent of the inputs."""
    if n % CLASSES:
        raise ValueError(f"n={n} must be a multiple of {CLASSES}")
    D = 3 * 32 * 32
    g = torch.Generator().manual_seed(1234 + seed)
    B = torch.nn.functional.interpolate(torch.randn(rank, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear",
                                        align_corners=False).reshape(rank, D)
    B, _ = torch.linalg.qr(B.T)
    s = torch.arange(1, rank + 1, dtype=torch.float32) ** (-alpha)
    g2 = torch.Generator().manual_seed(seed + n)
    y = torch.arange(CLASSES).repeat_interleave(n // CLASSES)
    y = y[torch.randperm(n, generator=g2)]
    C = torch.randn(n, rank, generator=g2)
    X = ((C * s) @ B.T * D ** 0.5 + noise * torch.randn(n, D, generator=g2)).reshape(n, 3, 32, 32)
    X = (X - X.mean(dim=(0, 2, 3), keepdim=True)) / X.std(dim=(0, 2, 3), keepdim=True)
    return X.float().contiguous(), y.long()


def make_mlp(width: int) -> torch.nn.Sequential:
    """The reference's MLP layout, initialised with ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, width), torch.nn.GELU(),
                               torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, CLASSES))


# ------------------------------------------------------------------------------------------------ reference
def import_reference(path: str):
    """Import the reference's modules from ``path`` (stubs: HF ``datasets``; ``.cuda()`` a no-op)."""
    if not os.path.isfile(os.path.join(path, "src", "processes.py")):
        raise FileNotFoundError(f"--reference {path!r} is not a checkout of the reference (no src/processes.py)")
    ds = types.ModuleType("datasets")

    def no_download(*a, **k):
        raise RuntimeError("datasets.load_dataset is stubbed in this benchmark")

    ds.load_dataset = no_download
    sys.modules.setdefault("datasets", ds)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, os.path.abspath(path))
    import src.processes as proc  # noqa: F401
    from src import update_rules
    from src.datasets import Examples
    from src.functional import FunctionalModel
    from src.loss_criterion import mse_categorical_loss
    from src.loss_function import SupervisedLossFunction
    return types.SimpleNamespace(proc=proc, rules=update_rules, Examples=Examples, FunctionalModel=FunctionalModel,
                                 SupervisedLossFunction=SupervisedLossFunction, mse=mse_categorical_loss)


def run_reference(ref, opt_name, X, y, width, steps, which):
    """Drive the reference's ``which`` process ("discrete" or "central") for ``steps`` steps.
    Returns per-step dicts (global step index k): seconds, loss, effective sharpness, predicted loss, n critical."""
    model = make_mlp(width)
    w, model_fn = ref.FunctionalModel.make_functional(model)
    loss_fn = ref.SupervisedLossFunction(model_fn=model_fn, criterion=ref.mse, batches=[ref.Examples(X, y)])
    k0 = 0
    if opt_name == "gd":
        opt = ref.rules.GradientDescent(lr=GD_LR)
    else:
        opt = ref.rules.RMSProp(lr=RMS["lr"], beta2=RMS["beta2"], eps=RMS["eps"], bias_correction=True)
    state = opt.initialize_state(w)
    if opt_name == "rmsprop":
        for _ in range(RMS_WARM):
            w, state = opt.update(w, state, loss_fn.D(w))
        k0 = RMS_WARM
    eig = ref.proc.EigConfig(frequency=1, initial_neigs=2)
    kw = dict(loss_fn=loss_fn, w=w, state=state, opt=opt, eig_config=eig)
    if which == "discrete":
        p = ref.proc.DiscreteProcess(**kw, config=ref.proc.DiscreteProcessConfig())
    else:
        p = ref.proc.CentralFlow(**kw, config=ref.proc.CentralFlowConfig(nsubsteps=4))
    rows = []
    for i in range(steps):
        t0 = time.process_time()
        p.prepare()
        row = dict(k=k0 + i, loss=float(p.loss), es=float(p.eff_eigs[0]) / 2.0)
        if which == "central":
            row["pred"] = float(p.loss + p.X.sum())
            row["kc"] = int(p.X.numel())
        p.step()
        row["s"] = time.process_time() - t0
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ pyrod
def ref_eig_tol(dim: int, tol: float = REF_EIG_TOL) -> float:
    """The reference LOBPCG's convergence test as a relative residual: it stops when ``‖Ax − θx‖ <
    tol·10·n·(‖Ax‖ + θ)`` (n = dim), i.e. at ``‖r‖/θ ≈ 20·n·tol`` for a converged top pair (2e-4 at d = 99k)."""
    return 20.0 * dim * tol


def run_pyrod(opt_name, X, y, width, steps, dtype, chunk, flow_opts=None, eig_tol=None, raw=False):
    """pyrod on the same problem: discrete + central (Euler ×4), eigenvalues every step (measured to ``eig_tol``;
    None: pyrod's default). Returns (tree, {run: [(k0, n, seconds)]})."""
    import pyrod
    from pyrod.flows.run import FlowRun
    from pyrod.runs.discrete import DiscreteRun

    chunks = {"discrete": [], "central": []}
    orig_chunk, orig_adv = DiscreteRun.run_chunk, FlowRun.advance

    def run_chunk(self, n):
        k0, t0 = self.state.k, time.process_time()
        out = orig_chunk(self, n)
        chunks["discrete"].append((k0, out[1].n_steps, time.process_time() - t0))
        return out

    def advance(self, ck):
        t0 = time.process_time()
        out = orig_adv(self, ck)
        chunks.setdefault(self.name, []).append((ck.k0, ck.n_steps, time.process_time() - t0))
        return out

    DiscreteRun.run_chunk, FlowRun.advance = run_chunk, advance
    try:
        prob = pyrod.Problem.from_module(make_mlp(width), X, y, "mse", dtype=dtype, device="cpu")
        restart = None
        if opt_name == "gd":
            opt = pyrod.optimizers.GD(lr=GD_LR)
        else:
            opt = pyrod.optimizers.RMSProp(**RMS, bias_correction=True, nu_rate="(1-beta2)/beta2")
            restart, steps = RMS_WARM, steps + RMS_WARM
            flow_opts = {"counter_rate": "1/beta2", **(flow_opts or {})}   # the reference's step counter
        opts = dict(method="euler", substeps=4, eig_raw=raw)
        if eig_tol is not None:
            opts["eig_tol"] = eig_tol
        opts.update(flow_opts or {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = pyrod.simulate(prob, opt, steps=steps, runs=["discrete", "central"], eigs=2, eig_every=1,
                                  chunk=chunk, restart_at=restart, progress=False, **opts)
    finally:
        DiscreteRun.run_chunk, FlowRun.advance = orig_chunk, orig_adv
    return tree, chunks


def steady_pyrod(chunks, steady):
    per = [s / n for k0, n, s in chunks if k0 >= steady and n > 0]
    if not per:   # the window starts inside a chunk: use the chunks that end after it
        per = [s / n for k0, n, s in chunks if k0 + n > steady and n > 0]
    return float(np.median(per)) if per else float("nan")


def steady_ref(rows, steady):
    return float(np.median([r["s"] for r in rows if r["k"] >= steady]))


def agreement(ref_rows, tree):
    ds = tree["central"].ds
    t = ds["t"].values
    pred = dict(zip(t.astype(int), ds["predicted_loss"].values, strict=True))
    es = dict(zip(t.astype(int), ds["effective_sharpness"].values, strict=True))
    ncrit = dict(zip(t.astype(int), ds["n_critical"].values, strict=True))
    rel = [abs(pred[r["k"]] - r["pred"]) / abs(r["pred"]) for r in ref_rows if r["k"] in pred]
    es_p = np.array([es[r["k"]] for r in ref_rows if r["k"] in es and r["kc"] > 0])
    es_r = np.array([r["es"] for r in ref_rows if r["k"] in es and r["kc"] > 0])
    enter_r = next((r["k"] for r in ref_rows if r["kc"] > 0), None)
    enter_p = next((int(k) for k in sorted(ncrit) if ncrit[k] > 0), None)
    return dict(pred_rel_median=float(np.median(rel)), pred_rel_max=float(np.max(rel)),
                es_pyrod_median=float(np.nanmedian(es_p)) if es_p.size else float("nan"),
                es_ref_median=float(np.median(es_r)) if es_r.size else float("nan"),
                es_pyrod_max=float(np.nanmax(es_p)) if es_p.size else float("nan"),
                es_ref_max=float(np.max(es_r)) if es_r.size else float("nan"),
                enter_ref=enter_r, enter_pyrod=enter_p)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="local checkout of the reference code (commit 1f074fb)")
    ap.add_argument("--steps", type=int, default=80, help="optimizer steps per run (after the RMSProp warm-up)")
    ap.add_argument("--steady", type=int, default=40, help="first step of the steady timing window (in the EoS)")
    ap.add_argument("--chunk", type=int, default=10, help="pyrod chunk length (timing granularity)")
    ap.add_argument("--opts", default="gd,rmsprop")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eig-tols", default="default,ref",
                    help="pyrod's measurement tolerance per column: 'default' (eig.tol 1e-6, float32 floor 5e-5), "
                         "'ref' (the reference's own effective relative residual, see ref_eig_tol) or numbers")
    ap.add_argument("--raw-sharpness", action="store_true",
                    help="pyrod also measures RMSProp's raw λmax(H) each step (eig.raw; off by default here because "
                         "the reference computes it in a logger, outside its timed work)")
    ap.add_argument("--skip-reference", action="store_true", help="pyrod columns only (no agreement numbers)")
    args = ap.parse_args(argv)
    if args.steady >= args.steps:
        raise ValueError(f"--steady={args.steady} must be below --steps={args.steps}")
    X, y = make_data(args.n)
    ref = None if args.skip_reference else import_reference(args.reference)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    print(f"MLP width {args.width}, n = {args.n}, 4 classes, MSE; Euler x4, eigenvalues every step; "
          f"{torch.get_num_threads()} thread; {args.steps} steps, steady window k >= {args.steady}", flush=True)
    table, agree = [], []
    for opt_name in [o.strip() for o in args.opts.split(",") if o.strip()]:
        steady = args.steady + (RMS_WARM if opt_name == "rmsprop" else 0)
        cols = {}
        ref_c = None
        if ref is not None:
            t0 = time.process_time()
            ref_d = run_reference(ref, opt_name, X, y, args.width, args.steps, "discrete")
            ref_c = run_reference(ref, opt_name, X, y, args.width, args.steps, "central")
            cols["reference"] = (steady_ref(ref_d, steady), steady_ref(ref_c, steady))
            print(f"  [{opt_name}] reference done in {time.process_time() - t0:.0f} CPU s", flush=True)
        for dt, tol_name in [(d, t.strip()) for d in dtypes for t in args.eig_tols.split(",") if t.strip()]:
            t0 = time.process_time()
            dim = sum(p.numel() for p in make_mlp(args.width).parameters())
            eig_tol = None if tol_name == "default" else (ref_eig_tol(dim) if tol_name == "ref" else float(tol_name))
            tree, chunks = run_pyrod(opt_name, X, y, args.width, args.steps, dt, args.chunk, eig_tol=eig_tol,
                                     raw=args.raw_sharpness)
            col = f"pyrod {dt}" + ("" if eig_tol is None else f" tol {eig_tol:.0e}")
            cols[col] = (steady_pyrod(chunks["discrete"], steady), steady_pyrod(chunks["central"], steady))
            a = tree["central"].attrs
            print(f"  [{opt_name}] {col} done in {time.process_time() - t0:.0f} CPU s; central: "
                  f"{a['n_rhs'] / args.steps:.1f} RHS, {a['central_rr_hvp'] / args.steps:.1f} RR HVPs, "
                  f"{a['central_expand_hvp'] / args.steps:.1f} expand HVPs, "
                  f"{a['central_refresh_hvp'] / args.steps:.1f} refresh HVPs, "
                  f"{a['central_n_t3'] / args.steps:.1f} d3 rows per unit time", flush=True)
            if ref_c is not None:
                agree.append((opt_name, col[6:], agreement(ref_c, tree)))
        table.append((opt_name, cols))
    names = list(table[0][1])
    print("\nCPU seconds per unit time (steady state)\n")
    print("| run | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for opt_name, cols in table:
        label = "GD" if opt_name == "gd" else "RMSProp"
        for j, what in enumerate(("discrete + eigs", "central")):
            print(f"| {label} {what} | " + " | ".join(f"{cols[n][j]:.3f}" for n in names) + " |")
    if "reference" in names:
        print("\nspeed-up over the reference (reference time / pyrod time)\n")
        for opt_name, cols in table:
            r = cols["reference"]
            print(f"  {opt_name:8s} " + "; ".join(f"{n}: discrete {r[0] / cols[n][0]:.2f}x, central "
                                                 f"{r[1] / cols[n][1]:.2f}x" for n in names if n != "reference"))
    if agree:
        print("\nagreement (central flow, pyrod vs reference)\n")
        print("| optimizer | dtype | predicted loss rel. diff (median / max) | eff. sharpness median pyrod / ref "
              "| max pyrod / ref | critical entry step pyrod / ref |")
        print("|---|---|---|---|---|---|")
        for opt_name, dt, g in agree:
            print(f"| {opt_name} | {dt} | {g['pred_rel_median']:.2e} / {g['pred_rel_max']:.2e} | "
                  f"1{g['es_pyrod_median'] - 1:+.1e} / 1{g['es_ref_median'] - 1:+.1e} | "
                  f"1{g['es_pyrod_max'] - 1:+.1e} / 1{g['es_ref_max'] - 1:+.1e} | "
                  f"{g['enter_pyrod']} / {g['enter_ref']} |")


if __name__ == "__main__":
    main()
