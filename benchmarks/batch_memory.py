"""Peak memory and time of one Hessian-vector product vs ``batch_size`` (micro-batched exact full-batch HVPs).

The ``cnn`` model (default channels 16, 32; tanh; avg pooling) on ``n`` CIFAR-shaped synthetic images
``(n, 3, 32, 32)`` drawn from a fixed torch generator (nothing is downloaded), MSE on 10 classes, on the CPU.
Each batch size runs in a fresh subprocess so that its peak resident memory (``resource.getrusage`` max RSS) is
its own. Reported per batch size:

* ``base_MB``: max RSS after building the problem (Python, torch, data, model) — before any HVP;
* ``peak_MB``: max RSS after the HVPs; ``hvp_MB = peak_MB − base_MB`` is what the HVP itself added;
* ``s_per_hvp``: mean wall seconds of ``--reps`` HVPs after one warm-up;
* ``rel_err``: ‖Hv − Hv_ref‖/‖Hv_ref‖ against the smallest-memory run's vector is printed by the parent
  (all runs use the same ``v``), so the table also shows the batched values agree.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/batch_memory.py                   # n=5000, batch sizes None 1000 250
    python benchmarks/batch_memory.py --n 1000 --batch-sizes None 250 --dtype float32
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def child(n: int, batch_size, dtype: str, reps: int, out: str) -> None:
    import torch

    from pyrod.problems import MODELS, Problem

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, 32, 32, generator=gen, dtype=torch.float64)
    Y = torch.randint(0, 10, (n,), generator=gen)
    torch.manual_seed(0)
    model = MODELS["cnn"](in_shape=(3, 32, 32), out_dim=10)
    prob = Problem.from_module(model, X, Y, "mse", dtype=dtype, device="cpu", batch_size=batch_size)
    del model, X
    v = torch.randn(prob.dim, generator=torch.Generator().manual_seed(1), dtype=prob.dtype)
    base = _rss_mb()
    hv = prob.hvp(prob.w0, v)                       # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        hv = prob.hvp(prob.w0, v)
    secs = (time.perf_counter() - t0) / reps
    torch.save(hv, out + ".pt")
    with open(out, "w") as fh:
        json.dump({"batch_size": batch_size, "base_MB": base, "peak_MB": _rss_mb(), "s_per_hvp": secs,
                   "dim": prob.dim}, fh)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--batch-sizes", nargs="+", default=["None", "1000", "250"])
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("BATCH_SIZE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    parse = lambda s: None if s == "None" else int(s)          # noqa: E731
    if a.child:
        child(a.n, parse(a.child[0]), a.dtype, a.reps, a.child[1])
        return
    import tempfile

    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bs in a.batch_sizes:
            out = os.path.join(tmp, f"bs{bs}.json")
            subprocess.run([sys.executable, __file__, "--n", str(a.n), "--dtype", a.dtype, "--reps", str(a.reps),
                            "--child", bs, out], check=True)
            with open(out) as fh:
                row = json.load(fh)
            row["hv"] = torch.load(out + ".pt")
            rows.append(row)
    ref = rows[-1]["hv"]
    print(f"cnn (channels 16, 32) on n={a.n} synthetic 3x32x32 images, {a.dtype}, d={rows[0]['dim']}, CPU, "
          f"{os.environ.get('OMP_NUM_THREADS', '1')} thread(s)")
    print(f"{'batch_size':>10} {'base_MB':>8} {'peak_MB':>8} {'hvp_MB':>8} {'s_per_hvp':>9} {'rel_diff':>9}")
    for r in rows:
        diff = float((r["hv"] - ref).norm() / ref.norm())
        print(f"{str(r['batch_size']):>10} {r['base_MB']:8.0f} {r['peak_MB']:8.0f} {r['peak_MB'] - r['base_MB']:8.0f} "
              f"{r['s_per_hvp']:9.2f} {diff:9.1e}")


if __name__ == "__main__":
    main()
