"""Per-step cost of the medium scale of ``muon-zipf`` / ``muon-curvature`` (mini-batch runs on a Zipf-PCFG stream),
and the wall time of the whole medium sweep projected from it.

For ``--size`` (``cpu``: the medium scale's default model; ``gpu``: its ``size=gpu`` preset; ``tiny``: a toy size for
checking this script) it builds the experiment's own run specifications (:func:`pyrod.experiments.muon_stream.run_spec`,
α = 1, the middle rate of each grid) on ``--device`` and, for Adam and Muon:

1. times the pieces of one step directly (after a warm-up): drawing a mini-batch from the stream (CPU, Python), the
   mini-batch loss and gradient, the optimizer step, and the measurements taken every ``heldout_every`` steps (the
   held-out loss and one HVP on the measurement batch for the NDS of the update);
2. runs ``--steps`` steps of the real thing, ``pyrod.simulate`` on that spec (writing a temporary NetCDF file), and
   reports its wall time per step (this is the number the projection uses).

CUDA work is synchronised before every clock read. The projection: runs of the sweep (tuning: α × both grids;
evaluation: α × 2 optimizers × seeds) × the preset's steps × seconds per step, divided by the number of parallel
runs (``--jobs``; on one GPU several processes share it, so that division is optimistic there). CPU time per step
(``time.process_time``, this process) is printed too: on a shared machine the wall time is not the cost.

Needs only torch, numpy, xarray and netCDF4 besides pyrod (no scipy, matplotlib, dask). Usage::

    PYTHONPATH=. python3 benchmarks/minibatch_cost.py --device cuda --size gpu --threads 16   # the GPU check (< 90 s)
    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/minibatch_cost.py --device cpu --size cpu --steps 200
    OMP_NUM_THREADS=1 PYTHONPATH=. python3 benchmarks/minibatch_cost.py --device cpu --size tiny --steps 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = {"grammar": {"context": 8, "n_terminals": 12}, "width": 8, "depth": 1, "heads": 2, "mlp_ratio": 2,
        "batch_size": 4, "heldout": 16, "measure_size": 8, "heldout_every": 5, "steps": 40}


def params(size: str, device: str) -> dict:
    from pyrod.experiments import get_experiment
    from pyrod.experiments.common import resolve_params

    mod = get_experiment("muon-zipf")
    over = {"device": device, "size": "cpu" if size == "tiny" else size}
    if size == "tiny":
        over.update(TINY)
    return resolve_params(mod, "medium", over)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(fn, device, reps: int) -> float:
    """Mean wall seconds of ``fn()`` over ``reps`` calls (one warm-up call first)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def pieces(spec, reps: int) -> dict:
    """Seconds of each piece of one step (module docstring, 1)."""
    import pyrod
    from pyrod.runs.sampling import MiniBatchData, update_nds
    from pyrod.simulation import build_problem

    prob = build_problem(spec.problem)
    opt = pyrod.optimizers.from_config(spec.optimizer).bind(prob)
    data = MiniBatchData(prob, spec.minibatch)
    dev = prob.device
    w = prob.w0
    _, g = data.next_batch().loss_and_grad(w)
    state = opt.init_state(w, g)
    batch = data.next_batch()
    out = {
        "draw_batch_s": clock(lambda: data.sampler.next_batch(), dev, reps),
        "batch_loss_and_grad_s": clock(lambda: batch.loss_and_grad(w), dev, reps),
        "optimizer_step_s": clock(lambda: opt.step(state, g), dev, reps),
        "heldout_loss_s": clock(lambda: data.heldout_problem.loss(w), dev, max(1, reps // 4)),
    }
    dw = opt.step(state, g)[0].w - w

    calls = [0]

    def nds():                                             # a new point each time, as in a run (no cached graph)
        calls[0] += 1
        return update_nds(data.measure_problem, w + 1e-6 * calls[0], dw)

    out["nds_hvp_s"] = clock(nds, dev, max(1, reps // 4))
    every = spec.minibatch.heldout_every
    out["per_step_from_pieces_s"] = (out["draw_batch_s"] + out["batch_loss_and_grad_s"] + out["optimizer_step_s"]
                                     + (out["heldout_loss_s"] + out["nds_hvp_s"]) / every)
    return out


def simulate_per_step(spec, steps: int) -> dict:
    """``pyrod.simulate`` of ``steps`` steps of ``spec`` (after a 2-chunk warm-up run): wall and CPU s per step."""
    import pyrod

    pyrod.simulate(spec.replace({"stop.steps": 2 * spec.minibatch.heldout_every}), progress=False)   # warm-up
    dev = torch.device(spec.problem["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    tree = pyrod.simulate(spec.replace({"stop.steps": steps}), progress=False)
    sync(dev)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ds = tree["discrete"].ds
    held = ds["heldout_loss"].dropna("t").values
    return {"steps": steps, "wall_s_per_step": wall / steps, "cpu_s_per_step": cpu / steps,
            "heldout_loss_first_last": [float(held[0]), float(held[-1])], "stop_reason": tree.attrs["stop_reason"],
            "nds_measured": int(ds["nds"].notnull().sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--size", default="gpu", choices=["tiny", "cpu", "gpu"])
    ap.add_argument("--steps", type=int, default=None,
                    help="simulated steps per optimizer (default: 10 measurement rounds, 10 × heldout_every)")
    ap.add_argument("--reps", type=int, default=20, help="repetitions of each timed piece")
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs assumed by the projection")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget", type=float, default=75.0,
                    help="seconds for the simulated steps of both optimizers together: --steps is lowered (not below "
                         "heldout_every) when the timed pieces say they would take longer")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pyrod.experiments import muon_stream as ms

    p = params(args.size, args.device)
    t_start = time.perf_counter()
    report = {"device": args.device, "size": args.size, "torch": torch.__version__, "python": platform.python_version(),
              "torch_threads": torch.get_num_threads(), "dtype": p["dtype"],
              "model": {k: p[k] for k in ("width", "depth", "heads", "mlp_ratio")}, "grammar": p["grammar"],
              "batch_size": p["batch_size"], "heldout": p["heldout"], "measure_size": p["measure_size"],
              "heldout_every": p["heldout_every"], "preset_steps": p["steps"]}
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    per = {}
    for kind, grid in (("adam", p["adam_lrs"]), ("muon", p["muon_lrs"])):
        lr = grid[len(grid) // 2]
        spec = ms.run_spec(p, 1.0, p["seeds"][0], ms.optimizer_config(p, kind, lr))
        steps = args.steps or 10 * spec.minibatch.heldout_every
        parts = pieces(spec, args.reps)
        h = spec.minibatch.heldout_every
        fit = int(args.budget / 2 / max(parts["per_step_from_pieces_s"], 1e-9)) - 2 * h     # minus the warm-up
        if fit < steps:
            steps = max(h, fit)
        from pyrod.simulation import build_problem
        per[kind] = {"lr": lr, "dim": build_problem(spec.problem).dim, **parts, **simulate_per_step(spec, steps)}
    report["per_optimizer"] = per
    step_s = sum(v["wall_s_per_step"] for v in per.values()) / len(per)
    n_runs = len(p["alphas"]) * (len(p["adam_lrs"]) + len(p["muon_lrs"])) + len(p["alphas"]) * 2 * len(p["seeds"])
    report["projection"] = {"runs": n_runs, "steps_per_run": p["steps"], "mean_wall_s_per_step": step_s,
                            "jobs": args.jobs, "sweep_wall_h": n_runs * p["steps"] * step_s / args.jobs / 3600}
    report["benchmark_wall_s"] = time.perf_counter() - t_start
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
