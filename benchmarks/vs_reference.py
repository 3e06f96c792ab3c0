"""pyrod vs the reference central-flows code, side by side on one identical problem, in one run.

    python benchmarks/vs_reference.py --reference PATH [--device cpu|cuda] [--widths 32,512,2048] [--n 200]
                                      [--opts gd,rmsprop] [--dtypes float32] [--lr auto] [--steps 40]
                                      [--steady 10] [--eig-tols ref]

``PATH`` is a local checkout of the reference implementation of central flows (public repository
mahyarjn80/centralflows, commit 1f074fb). It has no license file, so nothing of it is copied here: it is imported
from ``PATH`` at run time, unmodified, and needs ``cvxpy`` with the ``CVXOPT`` solver (``pip install cvxpy cvxopt``,
e.g. in a separate virtual environment that also sees pyrod). At import time this script stubs the HuggingFace
``datasets`` module (no download) and, on ``--device cpu`` only, turns ``.cuda()`` into a no-op (the reference calls
it unconditionally); the reference's processes (``DiscreteProcess``, ``CentralFlow``) are then driven directly, step
by step. On ``--device cuda`` data, model and pyrod's problem live on the GPU and the reference's own ``.cuda()`` calls
are real.

Problem (identical on both sides): the reference's MLP (Flatten, Linear(3072, w), GELU, Linear(w, w), GELU,
Linear(w, 4)) with the same initial weights (``torch.manual_seed(0)`` then default ``nn.Linear`` init), ``--n``
synthetic CIFAR-shaped points of 4 classes (inputs with a power-law spectrum: smooth random images, fixed seeds),
MSE (½·mean over points of the squared error on one-hot targets). Parameters: 99k (width 32), 427k (128), 1.84M
(512), 10.5M (2048).

Learning rate and restart (``--lr auto``, the default): every row must time the edge of stability, so η is set from
the problem — GD: ``η = 1.9/λ0`` (effective sharpness 0.95 at initialisation, λ0 = λmax(H(w0)), the harness's
``probe_scale.py`` rule); RMSProp (β2 = 0.99, ε = 1e-7, bias correction): the first η of ``--rms-lrs``
(5e-5, 1e-4, 2e-4) whose discrete run reaches the edge of stability within ``--probe-steps``. A discrete probe run
finds the onset (the first step with effective sharpness ≥ 1; RMSProp: from step 5 on) and both implementations
start their flows ``--lead`` (3) steps before it (the reference's
``warm_start``; pyrod's ``restart_at``), and run ``--steps`` steps from there; the steady timing window is the steps
from ``--steady`` after the restart on. The table says, per row, whether the central flow's critical set is non-empty
on every step of the steady window (``in EoS``). ``--lr 0.037`` (a number) fixes η for GD instead (RMSProp keeps 5e-5
and its 5-step warm-up): the setting this benchmark used before (width 32 reaches the EoS at step 26 there);
``--restart K`` with it restarts both flows at step ``K`` instead, so a row whose η and restart an earlier
``--lr auto`` run printed is repeated without its probe (width 512: ``--lr 0.091 --restart 6``, which saves the
probe's ~10 minutes on one CPU thread).
RMSProp flows use the reference's ν rate ``(1−β2)/β2`` and step counter ``counter_rate="1/beta2"``.
Both integrate the central flow with Euler, 4 substeps per step; eigenvalues every step (the reference's LOBPCG
``frequency=1``, 2 initial eigenvalues; pyrod ``eig_every=1``, ``eigs=2``).

Eigen accuracy: the reference's LOBPCG stops at ``‖Ax − θx‖ < tol·10·n·(‖Ax‖ + θ)`` with ``tol = 1e-10`` and ``n`` the
dimension, i.e. at a relative residual ≈ ``20·n·1e-10`` (2e-4 at d = 99k), 200× looser than pyrod's default
``eig.tol = 1e-6``. ``--eig-tols ref`` (default) runs pyrod at the reference's effective tolerance (equal accuracy),
``default`` at its own, or numbers. The same work is timed on both sides: the reference computes RMSProp's raw
λmax(H) in a logger, outside its timed work, so pyrod runs with ``eig_raw=False`` unless ``--raw-sharpness``.

Timing, seconds per unit time (= per optimizer step) of each run's own work, median over the steady window: the
reference's ``prepare() + step()`` of the process; pyrod's ``DiscreteRun.run_chunk`` (discrete step + its
eigen-solve) and ``FlowRun.advance`` (integration + read-out with the diagnostics), per chunk of ``--chunk`` steps.
On the CPU: CPU seconds (``time.process_time``; one thread, so on an idle machine the same as wall seconds, and far
less disturbed by other processes); on CUDA: wall seconds with ``torch.cuda.synchronize()`` before and after each
timed piece.

Agreement (pyrod minus reference, central flow): median and max relative difference of the predicted loss
(reference: ``L(w) + tr X`` at the process's step; pyrod: ``predicted_loss``), median and max of the central flow's
effective sharpness (λ(P⁻¹H)/threshold; the reference's ``eff_eigs[0]/2``), first step with a non-empty critical set.
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
from _timing import chunk_times, device_clock  # noqa: E402

CLASSES = 4
GD_LR = 0.037
RMS = dict(beta2=0.99, eps=1e-7)
RMS_LR = 5e-5
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


def n_params(width: int) -> int:
    return sum(p.numel() for p in make_mlp(width).parameters())


# ------------------------------------------------------------------------------------------------ reference
def import_reference(path: str, device: str):
    """Import the reference's modules from ``path`` (stubs: HF ``datasets``; on the CPU ``.cuda()`` a no-op)."""
    if not os.path.isfile(os.path.join(path, "src", "processes.py")):
        raise FileNotFoundError(f"--reference {path!r} is not a checkout of the reference (no src/processes.py)")
    try:                    # its SDCP solves with cvxpy's CVXOPT: fail now, not after its first critical step
        import cvxpy
        solvers = cvxpy.installed_solvers()
    except ImportError:
        solvers = None
    if solvers is None or "CVXOPT" not in solvers:
        have = "cvxpy is not installed" if solvers is None else "installed solvers: " + ", ".join(solvers)
        raise RuntimeError(f"--reference {path!r}: the reference needs cvxpy with the CVXOPT solver ({have}); "
                           f"pip install cvxpy cvxopt")
    ds = types.ModuleType("datasets")

    def no_download(*a, **k):
        raise RuntimeError("datasets.load_dataset is stubbed in this benchmark")

    ds.load_dataset = no_download
    sys.modules.setdefault("datasets", ds)
    if not str(device).startswith("cuda"):
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


def run_reference(ref, opt_name, X, y, width, steps, which, lr, warm, clock, device):
    """Drive the reference's ``which`` process ("discrete" or "central") for ``steps`` steps after ``warm`` discrete
    steps of its own update rule (its ``warm_start``). Returns per-step dicts (global step index k): seconds, loss,
    effective sharpness, predicted loss, n critical."""
    model = make_mlp(width).to(device)
    w, model_fn = ref.FunctionalModel.make_functional(model)
    loss_fn = ref.SupervisedLossFunction(model_fn=model_fn, criterion=ref.mse,
                                         batches=[ref.Examples(X.to(device), y.to(device))])
    if opt_name == "gd":
        opt = ref.rules.GradientDescent(lr=lr)
    else:
        opt = ref.rules.RMSProp(lr=lr, beta2=RMS["beta2"], eps=RMS["eps"], bias_correction=True)
    state = opt.initialize_state(w)
    for _ in range(warm):
        w, state = opt.update(w, state, loss_fn.D(w))
    eig = ref.proc.EigConfig(frequency=1, initial_neigs=2)
    kw = dict(loss_fn=loss_fn, w=w, state=state, opt=opt, eig_config=eig)
    if which == "discrete":
        p = ref.proc.DiscreteProcess(**kw, config=ref.proc.DiscreteProcessConfig())
    else:
        p = ref.proc.CentralFlow(**kw, config=ref.proc.CentralFlowConfig(nsubsteps=4))
    rows = []
    for i in range(steps):
        t0 = clock()
        p.prepare()
        p.step()
        sec = clock() - t0
        row = dict(k=warm + i, loss=float(p.loss), es=float(p.eff_eigs[0]) / 2.0, s=sec)
        if which == "central":
            row["pred"] = float(p.loss + p.X.sum())
            row["kc"] = int(p.X.numel())
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ pyrod
def ref_eig_tol(dim: int, tol: float = REF_EIG_TOL) -> float:
    """The reference LOBPCG's convergence test as a relative residual: it stops when ``‖Ax − θx‖ <
    tol·10·n·(‖Ax‖ + θ)`` (n = dim), i.e. at ``‖r‖/θ ≈ 20·n·tol`` for a converged top pair (2e-4 at d = 99k)."""
    return 20.0 * dim * tol


def _problem(X, y, width, dtype, device):
    import pyrod
    return pyrod.Problem.from_module(make_mlp(width), X, y, "mse", dtype=dtype, device=device)


def _optimizer(opt_name, lr):
    import pyrod
    if opt_name == "gd":
        return pyrod.optimizers.GD(lr=lr)
    return pyrod.optimizers.RMSProp(lr=lr, **RMS, bias_correction=True, nu_rate="(1-beta2)/beta2")


def flow_options(opt_name) -> dict:
    """The central flow's options that match the reference's for ``opt_name``: RMSProp's step counter."""
    return {"counter_rate": "1/beta2"} if opt_name == "rmsprop" else {}


def auto_lr(X, y, width, dtype, device) -> float:
    """GD's ``1.9/λ0`` (λ0 = λmax(H(w0))) to 3 significant digits: effective sharpness 0.95 at the start."""
    from pyrod.spectra import hessian_operator, top_eigs
    prob = _problem(X, y, width, dtype, device)
    lam0 = float(top_eigs(hessian_operator(prob, prob.w0), prob.dim, 1, dtype=prob.dtype, device=prob.device,
                          tol=1e-4)[0][0])
    return float(f"{1.9 / lam0:.3g}")


def find_onset(opt_name, X, y, width, dtype, device, lr, steps) -> int | None:
    """First step of a discrete run (η = ``lr``) whose effective sharpness is ≥ 1, or None within ``steps``."""
    import pyrod
    prob = _problem(X, y, width, dtype, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pyrod.simulate(prob, _optimizer(opt_name, lr), steps=steps, runs=["discrete"], eigs=1, eig_every=1,
                            eig_tol=1e-4, eig_raw=False, progress=False)["discrete"].ds
    es = np.nan_to_num(ds["effective_sharpness"].values)
    first = 0 if opt_name == "gd" else RMS_WARM
    idx = np.where(es[first:] >= 1.0)[0]
    return int(idx[0]) + first if len(idx) else None


def run_pyrod(opt_name, X, y, width, steps, dtype, chunk, lr, restart, device, eig_tol=None, raw=False,
              flow_opts=None):
    """pyrod on the same problem: discrete + central (Euler ×4) from ``restart``, ``steps`` steps after it,
    eigenvalues every step (measured to ``eig_tol``; None: pyrod's default). Returns (tree, {run: [(k0, n, s,
    gradients, HVPs)]}: ``_timing.chunk_times``)."""
    import pyrod

    with chunk_times(device) as chunks:
        prob = _problem(X, y, width, dtype, device)
        opt = _optimizer(opt_name, lr)
        flow_opts = {**flow_options(opt_name), **(flow_opts or {})}    # the reference's step counter
        opts = dict(method="euler", substeps=4, eig_raw=raw)
        if eig_tol is not None:
            opts["eig_tol"] = eig_tol
        opts.update(flow_opts or {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = pyrod.simulate(prob, opt, steps=restart + steps, runs=["discrete", "central"], eigs=2,
                                  eig_every=1, chunk=chunk, restart_at=restart or None, progress=False, **opts)
    return tree, chunks


def steady_pyrod(chunks, steady):
    per = [s / n for k0, n, s, *_ in chunks if k0 >= steady and n > 0]
    if not per:   # the window starts inside a chunk: use the chunks that end after it
        per = [s / n for k0, n, s, *_ in chunks if k0 + n > steady and n > 0]
    return float(np.median(per)) if per else float("nan")


def steady_ref(rows, steady):
    return float(np.median([r["s"] for r in rows if r["k"] >= steady]))


def agreement(ref_rows, tree, steady):
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
                enter_ref=enter_r, enter_pyrod=enter_p,
                eos_ref=all(r["kc"] > 0 for r in ref_rows if r["k"] >= steady),
                eos_pyrod=all(ncrit[k] > 0 for k in ncrit if k >= steady))


def pyrod_eos(tree, steady) -> bool:
    ds = tree["central"].ds
    return bool(np.all(ds["n_critical"].values[ds["t"].values >= steady] > 0))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="local checkout of the reference code (commit 1f074fb)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (data, model and both implementations there)")
    ap.add_argument("--widths", default="32", help="comma-separated MLP widths (32: 99k, 512: 1.84M, 2048: 10.5M)")
    ap.add_argument("--width", type=int, help="one width (same as --widths W)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--opts", default="gd,rmsprop")
    ap.add_argument("--dtypes", default="float32")
    ap.add_argument("--lr", default="auto", help="'auto' (1.9/λ0 and a restart before the onset) or GD's η")
    ap.add_argument("--steps", type=int, default=40, help="steps timed after the restart")
    ap.add_argument("--steady", type=int, default=10, help="the steady window starts this many steps after the "
                                                           "restart")
    ap.add_argument("--restart", type=int, default=None,
                    help="with a numeric --lr: restart both flows at this step (default 0; RMSProp: its warm-up)")
    ap.add_argument("--lead", type=int, default=3, help="--lr auto: restart this many steps before the onset")
    ap.add_argument("--rms-lrs", default="5e-5,1e-4,2e-4",
                    help="--lr auto: RMSProp's η, the first of these whose run reaches the EoS within --probe-steps")
    ap.add_argument("--probe-steps", type=int, default=120, help="--lr auto: discrete steps searched for the onset")
    ap.add_argument("--chunk", type=int, default=5, help="pyrod chunk length (timing granularity)")
    ap.add_argument("--eig-tols", default="ref",
                    help="pyrod's measurement tolerance per column: 'default' (eig.tol 1e-6, float32 floor 5e-5), "
                         "'ref' (the reference's own effective relative residual, see ref_eig_tol) or numbers")
    ap.add_argument("--raw-sharpness", action="store_true",
                    help="pyrod also measures RMSProp's raw λmax(H) each step (eig.raw; off by default here because "
                         "the reference computes it in a logger, outside its timed work)")
    ap.add_argument("--skip-reference", action="store_true", help="pyrod columns only (no agreement numbers)")
    args = ap.parse_args(argv)
    if args.steady >= args.steps:
        raise ValueError(f"--steady={args.steady} must be below --steps={args.steps}")
    if args.restart is not None and (args.lr == "auto" or args.restart < 0):
        ap.error(f"--restart {args.restart}: needs a numeric --lr (auto finds the restart itself) and a step >= 0")
    if not args.skip_reference and not args.reference:
        ap.error("--reference PATH is required (or --skip-reference)")
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {device}: torch.cuda.is_available() is False")
    clock = device_clock(device)
    widths = [args.width] if args.width else [int(w) for w in args.widths.split(",") if w.strip()]
    X, y = make_data(args.n)
    ref = None if args.skip_reference else import_reference(args.reference, device)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unit = "wall s (CUDA, synchronised)" if device.startswith("cuda") else "CPU s"
    print(f"device {device}, n = {args.n}, 4 classes, MSE; Euler x4, eigenvalues every step; "
          f"{torch.get_num_threads()} thread(s); {args.steps} steps after the restart, steady window from +"
          f"{args.steady}; {unit} per unit time", flush=True)
    table = []
    for width in widths:
        dim = n_params(width)
        for opt_name in [o.strip() for o in args.opts.split(",") if o.strip()]:
            t_row = time.perf_counter()
            if args.lr == "auto":
                lrs = [auto_lr(X, y, width, dtypes[0], device)] if opt_name == "gd" else \
                    [float(v) for v in args.rms_lrs.split(",")]
                for lr in lrs:
                    onset = find_onset(opt_name, X, y, width, dtypes[0], device, lr, args.probe_steps)
                    if onset is not None:
                        break
                if onset is None:
                    print(f"  [w{width} {opt_name}] η in {lrs}: no EoS within {args.probe_steps} steps; skipped",
                          flush=True)
                    continue
                restart = max(onset - args.lead, RMS_WARM if opt_name == "rmsprop" else 0)
            else:
                lr = float(args.lr) if opt_name == "gd" else RMS_LR
                onset, restart = None, (RMS_WARM if opt_name == "rmsprop" else 0)
                if args.restart is not None:
                    restart = args.restart
            steady = restart + args.steady
            row = dict(width=width, dim=dim, opt=opt_name, lr=lr, onset=onset, restart=restart)
            if ref is not None:
                t0 = time.perf_counter()
                ref_d = run_reference(ref, opt_name, X, y, width, args.steps, "discrete", lr, restart, clock, device)
                ref_c = run_reference(ref, opt_name, X, y, width, args.steps, "central", lr, restart, clock, device)
                row["reference"] = (steady_ref(ref_d, steady), steady_ref(ref_c, steady))
                print(f"  [w{width} {opt_name}] η = {lr:.3g}, onset {onset}, restart {restart}: reference done in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
            for dt, tol_name in [(d, t.strip()) for d in dtypes for t in args.eig_tols.split(",") if t.strip()]:
                t0 = time.perf_counter()
                eig_tol = None if tol_name == "default" else (ref_eig_tol(dim) if tol_name == "ref"
                                                              else float(tol_name))
                tree, chunks = run_pyrod(opt_name, X, y, width, args.steps, dt, args.chunk, lr, restart, device,
                                         eig_tol=eig_tol, raw=args.raw_sharpness)
                col = f"pyrod {dt}" + ("" if eig_tol is None else f" tol {eig_tol:.0e}")
                a = tree["central"].attrs
                entry = dict(times=(steady_pyrod(chunks["discrete"], steady),
                                    steady_pyrod(chunks["central"], steady)),
                             eos=pyrod_eos(tree, steady))
                if ref is not None:
                    entry["agree"] = agreement(ref_c, tree, steady)
                row[col] = entry
                print(f"  [w{width} {opt_name}] {col} done in {time.perf_counter() - t0:.0f} s; central: "
                      f"{a['n_rhs'] / args.steps:.1f} RHS, {a['central_rr_hvp'] / args.steps:.1f} RR HVPs, "
                      f"{a['central_expand_hvp'] / args.steps:.1f} expand HVPs, "
                      f"{a['central_refresh_hvp'] / args.steps:.1f} refresh HVPs, "
                      f"{a['central_n_t3'] / args.steps:.1f} d3 rows, n_hvp {a['n_hvp'] / (restart + args.steps):.1f}"
                      f" per unit time; row {time.perf_counter() - t_row:.0f} s", flush=True)
            table.append(row)
            for line in table_rows(row):      # at once too: a run stopped at a time limit keeps its finished rows
                print(f"  [w{width} {opt_name}] row {line}", flush=True)
    print(f"\n{unit} per unit time (steady window), speed-up = reference / pyrod\n")
    print(TABLE_HEADER)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        for line in table_rows(row):
            print(line)


TABLE_HEADER = ("| width (d) | optimizer | η | onset / restart | column | discrete + eigs: ref / pyrod / speed-up "
                "| central: ref / pyrod / speed-up | in EoS (pyrod / ref) | predicted loss rel. diff median / max "
                "| critical entry pyrod / ref |")


def table_rows(row: dict) -> list[str]:
    """The markdown rows of the table (:data:`TABLE_HEADER`) for one width and optimizer, one per pyrod column."""
    out = []
    r = row.get("reference")
    for col, e in ((c, v) for c, v in row.items() if c.startswith("pyrod")):
        d_p, c_p = e["times"]
        if r is not None:
            g = e["agree"]
            disc = f"{r[0]:.4f} / {d_p:.4f} / {r[0] / d_p:.2f}x"
            cen = f"{r[1]:.4f} / {c_p:.4f} / {r[1] / c_p:.2f}x"
            eos = f"{'yes' if g['eos_pyrod'] else 'NO'} / {'yes' if g['eos_ref'] else 'NO'}"
            agr = f"{g['pred_rel_median']:.2e} / {g['pred_rel_max']:.2e}"
            ent = f"{g['enter_pyrod']} / {g['enter_ref']}"
        else:
            disc, cen = f"- / {d_p:.4f} / -", f"- / {c_p:.4f} / -"
            eos, agr, ent = f"{'yes' if e['eos'] else 'NO'} / -", "-", "-"
        out.append(f"| {row['width']} ({row['dim'] / 1e6:.3g}M) | {row['opt']} | {row['lr']:.3g} | "
                   f"{row['onset']} / {row['restart']} | {col[6:]} | {disc} | {cen} | {eos} | {agr} | {ent} |")
    return out


if __name__ == "__main__":
    main()
