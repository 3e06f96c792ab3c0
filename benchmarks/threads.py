"""Threads vs problem size: where more torch threads start to pay (ratios measured in one run).

    python benchmarks/threads.py                    # the sizes below, threads 1 and every core, 2 repeats
    python benchmarks/threads.py --load 2           # the same with 2 busy processes running beside it

For each problem (MLPs from the README's digits MLP to ~1M parameters × 4000 samples): the one-thread CPU time of
one gradient (what :func:`pyrod.threads.choose` measures), then the same discrete run (Adam, λmax every 5 steps,
as many steps as take ~3 s on one thread) with ``threads=1`` and ``threads=cores``, interleaved, ``--repeats``
times each; the best wall time per step of each and their ratio. ``uptime``'s load averages are printed before and after.
``--load N`` starts N processes that spin on the CPU for the whole measurement (a shared machine) and stops them.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import warnings

import pyrod
from pyrod import threads as pt

# name, problem config
SIZES = [
    ("digits MLP 2x32, n=300", dict(model="mlp", data="digits", classes=4, n=300, model_kwargs={"width": 32})),
    ("digits MLP 2x128, n=720", dict(model="mlp", data="digits", classes=4, n=720, model_kwargs={"width": 128})),
    ("synthetic MLP 2x256, dim 64, n=1000", dict(model="mlp", data="synthetic_classification", classes=10, n=1000,
                                                 data_kwargs={"dim": 64}, model_kwargs={"width": 256})),
    ("synthetic MLP 2x512, dim 128, n=2000", dict(model="mlp", data="synthetic_classification", classes=10, n=2000,
                                                  data_kwargs={"dim": 128}, model_kwargs={"width": 512})),
    ("synthetic MLP 3x1024, dim 256, n=4000", dict(model="mlp", data="synthetic_classification", classes=10,
                                                   n=4000, data_kwargs={"dim": 256},
                                                   model_kwargs={"width": 1024, "depth": 3})),
]
#: one-thread seconds per run to aim at (the step count follows from the calibration gradient)
TARGET_S = 3.0


def _spin(stop):
    while not stop.is_set():
        pass


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(cfg, counts, repeats):
    prob = pyrod.problem(**cfg, device="cpu")
    grad_s = pt.gradient_cpu_seconds(prob)
    # a step costs a gradient, and every 5th step an eigen-solve of ~40 HVPs (~2 gradients each): ~17 gradients
    steps = int(min(60, max(5, TARGET_S / (17 * grad_s))))
    best = {c: float("inf") for c in counts}
    for _ in range(repeats):
        for c in counts:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pyrod.simulate(prob, pyrod.optimizers.Adam(lr=1e-3), steps=steps, eigs=1, eig_every=5,
                               threads=c, progress=False)
            best[c] = min(best[c], (time.perf_counter() - t0) / steps)
    return prob.dim, grad_s * 1e3, steps, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="runs per thread count (the best is kept)")
    ap.add_argument("--load", type=int, default=0, help="busy processes to run beside the measurement")
    ap.add_argument("--sizes", type=int, nargs="*", default=None, help="indices into SIZES (default: all)")
    args = ap.parse_args(argv)
    cores = pt.available_cores()
    counts = (1, cores) if cores > 1 else (1,)
    stop, spinners = mp.Event(), []
    for _ in range(args.load):
        p = mp.Process(target=_spin, args=(stop,), daemon=True)
        p.start()
        spinners.append(p)
    try:
        if spinners:
            time.sleep(5)          # let the load average see them
        print(f"cores {cores}; busy processes beside: {args.load}; load average before: {_load()}")
        print(f"{'problem':40s} {'d':>9s} {'grad ms (1 thr CPU)':>20s} {'steps':>6s} "
              + " ".join(f"{f's/step @{c}':>11s}" for c in counts) + f" {'ratio ' + str(counts[-1]) + '/1':>10s}")
        for i, (name, cfg) in enumerate(SIZES):
            if args.sizes is not None and i not in args.sizes:
                continue
            d, g, steps, best = measure(cfg, counts, args.repeats)
            ratio = best[counts[-1]] / best[1]
            print(f"{name:40s} {d:9d} {g:20.3g} {steps:6d} " + " ".join(f"{best[c]:11.4f}" for c in counts)
                  + f" {ratio:10.2f}", flush=True)
        print(f"load average after: {_load()}")
    finally:
        stop.set()
        for p in spinners:
            p.join(5)


if __name__ == "__main__":
    main()
