"""``python -m pyrod demo``: the built-in default job (and the dispatch of ``python -m pyrod COMMAND``).

Full-batch GD (η = 1.2) on a GELU MLP (2×32) over 300 of scikit-learn's digits (classes 0–3, MSE, float64)
reaches the edge of stability (EoS) within ~20 steps: its effective sharpness ηλmax(H)/2 rises to 1 and hovers
there while the loss keeps falling non-monotonically. At step ``restart_at`` (default 100, inside the EoS) the
three flows start from the discrete state and run side by side with it: the **stable flow** (the smooth flow
of the update, which knows nothing of the oscillation: its sharpness passes 1 and it drifts away), the **rod
flow** (the oscillating pair of iterates as a rod: its centre stays on the discrete run's centre) and the
**central flow** (the time-averaged trajectory: sharpness held at 1, its predicted loss on the running mean
of the discrete loss). All flows use explicit Euler with 4 substeps per step (the central-flow reference's
scheme, the fast choice). Writes ``demo.nc`` and ``demo.png`` into ``--out`` and prints a summary. One time
unit = one optimizer step. ~1.5 min on a 2-core CPU at the defaults.
"""
from __future__ import annotations

import json
import os
import sys
import time

FLOWS = ("stable", "rod", "central")


def demo(out: str = "results/demo", steps: int = 600, lr: float = 1.2, *, restart_at: int | None = None,
         n: int = 300, width: int = 32, eig_every: int = 5, window: int = 20, overwrite: bool = True,
         progress: bool | None = None, threads: int | None = None) -> dict:
    """Run the demo; write ``out/demo.nc`` and ``out/demo.png``; return the summary dict.

    ``steps``: optimizer steps of the discrete run; ``lr``: GD step size η; ``restart_at``: step at which the
    flows start from the discrete state (default ``min(100, steps // 3)``); ``n``: digits used; ``width``: MLP
    width; ``eig_every``: steps between λmax measurements; ``window``: steps of the running mean that the
    central flow's predicted loss is compared with; ``threads``: CPU threads (default: pyrod's rule, one thread for
    this small problem; :mod:`pyrod.threads`). Summary values are numbers (``None`` for an EoS onset that never
    happened), except the two file paths.
    """
    import pyrod
    from pyrod.plotting import plot_flows

    if restart_at is None:
        restart_at = min(100, steps // 3)
    if not 0 <= restart_at < steps:
        raise ValueError(f"restart_at={restart_at} must be in [0, steps={steps})")
    os.makedirs(out, exist_ok=True)
    nc, png = os.path.join(out, "demo.nc"), os.path.join(out, "demo.png")
    t0 = time.perf_counter()
    prob = pyrod.problem(model="mlp", data="digits", classes=4, n=n, loss="mse", dtype="float64", seed=0,
                         model_kwargs={"width": width, "depth": 2, "activation": "gelu"})
    opt = pyrod.optimizers.GD(lr=lr)
    tree = pyrod.simulate(prob, opt, steps=steps, runs=["discrete", *FLOWS], eigs=1, eig_every=eig_every,
                          restart_at=restart_at, method="euler", substeps=4, path=nc, overwrite=overwrite,
                          progress=progress, threads=threads)
    summary = flows_summary(tree, window=window, restart_at=restart_at)
    fig = plot_flows(tree, png, window=window, restart_at=restart_at,
                     title=(f"GD (η={lr:g}) on a GELU MLP over {n} digits: the discrete run and its stable, rod "
                            f"and central flows,\nstarted from the discrete state at step {restart_at} "
                            f"(EoS onset: step {summary['eos_onset_step']})"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    summary.update({"lr": lr, "threshold_2_over_lr": 2 / lr, "restart_at": restart_at, "steps": steps,
                    "dim": prob.dim, "wall_time_s": round(time.perf_counter() - t0, 1), "netcdf": nc, "plot": png})
    return summary


def _finite(ds, name):
    import numpy as np

    v = ds[name]
    keep = np.isfinite(v.values)
    return ds["t"].values[keep], v.values[keep]


def flows_summary(tree, window: int = 20, restart_at: int | None = None) -> dict:
    """Numbers of a discrete run with flows (all in optimizer steps / loss units).

    * ``eos_onset_step``: first measured step with discrete effective sharpness ≥ 1 (None if never);
    * ``initial_effective_sharpness``, ``max_effective_sharpness`` (discrete, whole run);
    * ``{run}_es_min`` / ``{run}_es_max``: effective-sharpness range of each run from the onset on (for the
      flows: of all their measurements at or after the onset); ``discrete_es_min/max_after_restart``: the
      discrete range from ``restart_at`` on (when given);
    * ``{flow}_median_centre_distance`` (and ``_final``), ``{flow}_median_relative_centre_distance``;
    * ``{run}_final_loss``; ``central_final_predicted_loss``; ``discrete_final_mean_loss`` (last complete
      ``window``-step mean); ``central_predicted_loss_median_rel_error``: median of |predicted − running mean|
      / running mean over the central flow's times where the mean is defined.
    """
    import numpy as np

    from pyrod.plotting import running_mean

    d = tree["discrete"].ds
    t, es = _finite(d, "effective_sharpness")
    hit = np.nonzero(es >= 1.0)[0]
    onset = int(t[hit[0]]) if len(hit) else None
    out = {"eos_onset_step": onset,
           "initial_effective_sharpness": float(es[0]) if len(es) else float("nan"),
           "max_effective_sharpness": float(es.max()) if len(es) else float("nan")}
    for name in tree.children:
        ds = tree[name].ds
        t, es = _finite(ds, "effective_sharpness")
        after = es[t >= onset] if onset is not None else es[:0]
        out[f"{name}_es_min"] = float(after.min()) if len(after) else float("nan")
        out[f"{name}_es_max"] = float(after.max()) if len(after) else float("nan")
        if name == "discrete" and restart_at is not None:  # the interval the flows cover
            late = es[t >= restart_at]
            out["discrete_es_min_after_restart"] = float(late.min()) if len(late) else float("nan")
            out["discrete_es_max_after_restart"] = float(late.max()) if len(late) else float("nan")
        tl, loss = _finite(ds, "loss")
        out[f"{name}_final_loss"] = float(loss[-1]) if len(loss) else float("nan")
        if "centre_distance" in ds:
            _, cd = _finite(ds, "centre_distance")
            _, rcd = _finite(ds, "relative_centre_distance")
            out[f"{name}_median_centre_distance"] = float(np.median(cd)) if len(cd) else float("nan")
            out[f"{name}_final_centre_distance"] = float(cd[-1]) if len(cd) else float("nan")
            out[f"{name}_median_relative_centre_distance"] = float(np.median(rcd)) if len(rcd) else float("nan")
    tl, loss = _finite(d, "loss")
    tm, m = running_mean(tl, loss, window)
    out["discrete_final_mean_loss"] = float(m[-1]) if len(m) else float("nan")
    if "central" in tree.children and "predicted_loss" in tree["central"].ds:
        tp, p = _finite(tree["central"].ds, "predicted_loss")
        out["central_final_predicted_loss"] = float(p[-1]) if len(p) else float("nan")
        both = (tp >= tm[0]) & (tp <= tm[-1]) if len(tm) else np.zeros(len(tp), bool)
        if both.any():  # the mean sits at half-integer times for an even window: interpolate
            mm = np.interp(tp[both], tm, m)
            out["central_predicted_loss_median_rel_error"] = float(np.median(np.abs(p[both] - mm) / mm))
        else:
            out["central_predicted_loss_median_rel_error"] = float("nan")
    return out


DESCRIPTION = """\
pyrod runs full-batch optimizers and their continuous-time models (stable, rod and central flows) side by side,
measures sharpness, losses and distances, and writes one NetCDF file per run. One time unit = one optimizer step.

commands:
  demo         GD on a digits MLP at the edge of stability with its stable, rod and central flows (~1.5 min on
               2 cores); writes results/demo/demo.nc and demo.png and prints a summary
  run          one simulation; every option of the run specification is a flag (python -m pyrod run --help)
  resume FILE  continue a run from its checkpoint, or extend a finished one (python -m pyrod resume --help)
  experiments  reproduce the papers' figures (python -m pyrod experiments list)
"""

EPILOG = """\
examples:
  python -m pyrod demo --steps 300
  python -m pyrod run --problem '{"toy": "quartic"}' --runs discrete rod --stop.steps 200 --output.path q.nc
  python -m pyrod resume q.nc --steps 400
  python -m pyrod experiments run aeos --scale tiny
"""


def _positive(kind):
    def parse(text):
        import argparse

        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def _non_negative_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _parser():
    from .cli_errors import ArgumentParser

    p = ArgumentParser(prog="python -m pyrod", description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{demo,run,resume,experiments}")
    d = sub.add_parser("demo", help="GD on a digits MLP at the edge of stability with its three flows",
                       description="GD (η = 1.2) on a GELU MLP (2×32) over 300 digits, with the stable, rod and "
                                   "central flows started from the discrete state at --restart-at; writes "
                                   "OUT/demo.nc and OUT/demo.png and prints a summary (JSON).")
    d.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    d.add_argument("--steps", type=_positive(int), default=600, help="optimizer steps (default: 600)")
    d.add_argument("--lr", type=_positive(float), default=1.2, help="GD step size η (default: 1.2)")
    d.add_argument("--restart-at", type=_non_negative_int, default=None,
                   help="step at which the flows start from the discrete state (default: min(100, steps // 3))")
    d.add_argument("--threads", type=_positive(int), default=None,
                   help="CPU threads (default: one for this small problem; see docs/howto/threads.md)")
    d.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no progress bar (default: a bar when stderr is a terminal)")
    sub.add_parser("run", help="one simulation; every option of the run specification is a flag", add_help=False)
    sub.add_parser("resume", help="continue a run from its checkpoint: resume FILE [--steps N]", add_help=False)
    sub.add_parser("experiments", help="reproduce the papers' figures: experiments list | run NAME", add_help=False)
    return p


def main(argv=None) -> int:
    """``python -m pyrod COMMAND ...``: returns the exit code (0; 2 for bad input, one ``error:`` line; 130 after
    Ctrl-C, with the command that continues the run when it can be continued)."""
    from .cli_errors import CommandLineError, fail

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("run", "resume"):   # command lines generated from the typed run spec (tyro)
        from .cli import resume_main, run_main
        return (run_main if argv[0] == "run" else resume_main)(argv[1:])
    if argv and argv[0] == "experiments":
        from .experiments.__main__ import main as experiments_main
        return experiments_main(argv[1:], prog="python -m pyrod experiments")
    try:
        args = _parser().parse_args(argv)
    except CommandLineError as e:
        return fail(e)
    return _run_demo(args)


def _run_demo(args) -> int:
    from .cli_errors import fail, user_errors

    try:
        import pyrod
        summary = demo(args.out, args.steps, args.lr, restart_at=args.restart_at, threads=args.threads,
                       progress=args.progress)
    except KeyboardInterrupt as e:
        if isinstance(e, pyrod.RunInterrupted):
            print(e.message("cli"), file=sys.stderr)
        return 130
    except user_errors() as e:
        return fail(e)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
