"""Cost of the warm eigen-solves a discrete run makes: HVPs, iterations, host transfers and CPU time per call.

    python benchmarks/eig_solves.py [--widths 32,128] [--steps 80] [--tols ref,1e-6] [--compare OLD_SPECTRA.py]
                                    [--flow-init] [--device cpu|cuda] [--no-count]

The problem of ``benchmarks/vs_reference.py`` (its ``make_data`` / ``make_mlp``: CIFAR-shaped power-law inputs, the
reference's MLP, MSE, ``--n`` points), float32, one CPU thread. A GD run (η = 0.037, ``--steps`` steps) is taken
once; along it an :class:`pyrod.spectra.EigTracker` (k = 2, warm-started from its previous call, as the discrete
run's measurement does) solves at every step, at each tolerance of ``--tols`` (``ref``: the reference's effective
relative residual, ``vs_reference.ref_eig_tol(dim)``).

``--compare PATH`` loads a second version of ``pyrod/spectra.py`` from ``PATH`` (e.g.
``git show 9482b88:pyrod/spectra.py > /tmp/spectra_old.py``) and runs it on the same points, interleaved call by
call (the order alternating) so both see the same machine load; each version has its own Problem (the HVP graph
cached per point is not shared). Per call: HVPs, Rayleigh–Ritz iterations, CPU seconds (``time.process_time``) and
*host transfers*: the points where the solver would synchronise a GPU (``.cpu()``, ``.item()``, ``.tolist()``,
``bool/float/int`` of a tensor, boolean-mask indexing, ``torch.linalg.eigh/eigvalsh/svd/cholesky``), counted by
wrapping those operations for calls made from the spectra module itself (a second, untimed pass; HVP internals are
not counted; ``--no-count`` skips that pass). Means are over the warm calls (the first, cold call excluded).
``--flow-init`` adds solves given what a central flow holds at each point (its tracked eigenvectors ``U`` and
``HU``) as ``init``, with and without ``init_AX=HU``. ``--device cuda``: the problem on the GPU, wall seconds with
``torch.cuda.synchronize()`` around each call instead of CPU seconds.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import vs_reference as vr  # noqa: E402
from _timing import device_clock  # noqa: E402

import pyrod  # noqa: E402
from pyrod import spectra  # noqa: E402

GD_LR = vr.GD_LR


def load_spectra(path: str):
    """Another version of pyrod/spectra.py as a module (it may import only numpy, scipy, torch)."""
    spec = importlib.util.spec_from_file_location("spectra_compare", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["spectra_compare"] = mod
    spec.loader.exec_module(mod)
    return mod


class SyncCounter:
    """Counts operations that synchronise a GPU when called from the module named ``module`` (see the docstring)."""

    TENSOR = ("cpu", "item", "tolist", "__bool__", "__float__", "__int__", "__index__")
    LINALG = ("eigh", "eigvalsh", "svd", "cholesky")

    def __init__(self, module: str):
        self.module, self.n, self._saved = module, 0, []

    def _mine(self) -> bool:
        return sys._getframe(2).f_globals.get("__name__") == self.module

    def _wrap(self, owner, name, fn, test=None):
        counter = self

        def wrapped(*a, **k):
            if counter._mine() and (test is None or test(*a, **k)):
                counter.n += 1
            return fn(*a, **k)
        self._saved.append((owner, name, owner.__dict__.get(name, None)))
        setattr(owner, name, wrapped)

    def __enter__(self):
        for name in self.TENSOR:
            self._wrap(torch.Tensor, name, getattr(torch.Tensor, name))

        def bool_index(self_, idx):
            items = idx if isinstance(idx, tuple) else (idx,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)
        self._wrap(torch.Tensor, "__getitem__", torch.Tensor.__getitem__, bool_index)
        for name in self.LINALG:
            self._wrap(torch.linalg, name, getattr(torch.linalg, name))
        return self

    def __exit__(self, *exc):
        for owner, name, old in reversed(self._saved):
            if old is None:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        self._saved.clear()


DEVICE = "cpu"


def clock() -> float:
    """Seconds on ``DEVICE`` (``_timing.device_clock``: CPU seconds on the CPU, synchronised wall seconds on CUDA)."""
    return device_clock(DEVICE)()


def make_problem(data, width):
    X, y = data
    return pyrod.Problem.from_module(vr.make_mlp(width), X, y, "mse", dtype="float32", device=DEVICE)


def trajectory(width: int, n: int, steps: int):
    X, y = vr.make_data(n)
    prob = make_problem((X, y), width)
    w, ws = prob.w0.clone(), []
    for _ in range(steps):
        ws.append(w.clone())
        _, g = prob.loss_and_grad(w)
        w = w - GD_LR * g
    return (X, y), prob.dim, ws


def flow_vectors(data, width, ws, tol):
    """What a central flow holds at each point: its tracked eigenvectors ``U`` and ``HU`` there (here: one
    Rayleigh–Ritz step at ``w_t`` on the eigenvectors of a tracker at ``w_{t-1}``; k HVPs, not counted)."""
    prob = make_problem(data, width)
    tr = spectra.EigTracker(2, tol=tol, warn=False)
    out, prev = [], None
    for w in ws:
        if prev is None:
            out.append((None, None))
        else:
            HY = prob.hvp(w, prev)
            e, Z = np.linalg.eigh((prev.T @ HY).double().cpu().numpy())
            Z = torch.from_numpy(Z[:, ::-1].copy()).to(dtype=prev.dtype, device=prev.device)
            out.append((prev @ Z, HY @ Z))
        _, prev, _ = tr(prob, w)
    return out


def run(mods: dict, data, width, ws, tol, count: bool, flow=None):
    """Per version: list of (n_hvp, iterations, transfers, seconds, evals) per call. ``flow``: per step (U, HU) to
    pass as ``init`` (versions named ``*+AX`` also get ``init_AX=HU``)."""
    probs = {name: make_problem(data, width) for name in mods}
    trackers = {name: mod.EigTracker(2, tol=tol, warn=False) for name, mod in mods.items()}
    out = {name: [] for name in mods}
    names = list(mods)
    for i, w in enumerate(ws):
        for name in (names if i % 2 == 0 else names[::-1]):
            ctr = SyncCounter(mods[name].__name__) if count else None
            kw = {}
            if flow is not None and flow[i][0] is not None:
                kw["init"] = flow[i][0]
                if name.endswith("+AX"):
                    kw["init_AX"] = flow[i][1]
            t0 = clock()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if ctr is not None:
                    with ctr:
                        ev, _, rep = trackers[name](probs[name], w, **kw)
                else:
                    ev, _, rep = trackers[name](probs[name], w, **kw)
            dt = clock() - t0
            out[name].append((rep.n_hvp, rep.iterations, ctr.n if ctr else np.nan, dt, ev.double().cpu().numpy()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="32,128")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--tols", default="ref,1e-6")
    ap.add_argument("--compare", default=None, help="another pyrod/spectra.py to run on the same points")
    ap.add_argument("--flow-init", action="store_true",
                    help="also: solves given a flow's eigenvectors as init, with and without init_AX (their HVPs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-count", action="store_true", help="skip the (untimed) pass that counts host transfers")
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    mods = {"this": spectra}
    if args.compare:
        mods = {"compare": load_spectra(args.compare), "this": spectra}
    print(f"GD η = {GD_LR}, n = {args.n}, {args.steps} steps, float32, EigTracker k = 2 warm, {DEVICE}, "
          f"{torch.get_num_threads()} thread; load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for width in [int(s) for s in args.widths.split(",")]:
        data, dim, ws = trajectory(width, args.n, args.steps)
        for t in [s.strip() for s in args.tols.split(",")]:
            tol = vr.ref_eig_tol(dim) if t == "ref" else float(t)
            timed = run(mods, data, width, ws, tol, count=False)
            counted = timed if args.no_count else run(mods, data, width, ws, tol, count=True)
            for name in mods:
                a = np.array([r[:4] for r in timed[name][1:]], dtype=float)
                c = np.array([r[2] for r in counted[name][1:]], dtype=float)
                rows.append((width, dim, tol, name, a[:, 0].mean(), a[:, 1].mean(), c.mean(), a[:, 3].mean(),
                             np.median(a[:, 3])))
            if args.flow_init:
                fl = flow_vectors(data, width, ws, tol)
                fmods = {"this, init=U": spectra, "this, init=U +AX": spectra}
                if "compare" in mods:
                    fmods = {"compare, init=U": mods["compare"], **fmods}
                ft = run(fmods, data, width, ws, tol, count=False, flow=fl)
                fc = ft if args.no_count else run(fmods, data, width, ws, tol, count=True, flow=fl)
                for name in fmods:
                    a = np.array([r[:4] for r in ft[name][1:]], dtype=float)
                    c = np.array([r[2] for r in fc[name][1:]], dtype=float)
                    rows.append((width, dim, tol, name.replace(" +AX", ", init_AX=HU"), a[:, 0].mean(),
                                 a[:, 1].mean(), c.mean(), a[:, 3].mean(), np.median(a[:, 3])))
            if len(mods) == 2:
                e0 = np.array([r[4] for r in timed["compare"]])
                e1 = np.array([r[4] for r in timed["this"]])
                t0 = np.array([r[3] for r in timed["compare"][1:]])
                t1 = np.array([r[3] for r in timed["this"][1:]])
                print(f"  width {width} tol {tol:.1e}: eigenvalues max rel diff {np.max(np.abs(e1 - e0) / np.abs(e0)):.1e};"
                      f" time this/compare: total {t1.sum() / t0.sum():.3f}, median of per-call ratios "
                      f"{np.median(t1 / t0):.3f}; load {os.getloadavg()[0]:.2f}", flush=True)
    print("\n| width (d) | tol | version | HVPs / call | iterations / call | host transfers / call | ms / call "
          f"({'CPU' if DEVICE == 'cpu' else 'wall'}; mean, median) |")
    print("|---|---|---|---|---|---|---|")
    for width, dim, tol, name, h, it, tr, tm, tmed in rows:
        print(f"| {width} ({dim}) | {tol:.1e} | {name} | {h:.2f} | {it:.2f} | {tr:.1f} | {1e3 * tm:.1f}, "
              f"{1e3 * tmed:.1f} |")


if __name__ == "__main__":
    main()
