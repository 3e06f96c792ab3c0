"""``pyrod.simulate``: run the discrete optimizer and any flows side by side, write one NetCDF file.

All runs start from the same initialisation and are advanced together in chunks of steps, so every run
is compared with the same discrete trajectory and a killed run leaves a valid file with every completed
chunk. The result is an ``xarray.DataTree`` with one child per run; ``t`` is in optimizer steps.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import torch

from . import optimizers as _optimizers
from ._version import __version__
from .output import RunWriter, Var, open_tree
from .problems import Problem, problem as _make_problem
from .runs.discrete import DiscreteRun, MidpointRun
from .runs.measure import Measurer

__all__ = ["simulate", "RUNS"]

#: run name -> factory(problem, optimizer, measurer, options) ; flows register themselves in pyrod.flows
RUNS: dict = {}
_DISCRETE_RUNS = ("discrete", "midpoint")


def _flow_runs() -> dict:
    try:
        from .flows import FLOW_RUNS
    except ImportError:  # pragma: no cover - flows not available
        return {}
    return FLOW_RUNS


def _valid_runs() -> list:
    return sorted(set(_DISCRETE_RUNS) | set(_flow_runs()))


def _check_int(name, v, lo=1):
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name}={v!r} must be an int >= {lo}")


def simulate(problem, optimizer, steps: int, runs=("discrete",), *, eigs: int = 1, eig_every: int = 10,
             path: str | os.PathLike | None = None, overwrite: bool = False, loss_target: float | None = None,
             divergence_factor: float = 1e6, chunk: int = 50, progress: bool | None = None,
             snapshot_every: int | None = None, eig_tol: float = 1e-6, eig_max_iter: int = 200,
             restart_at: int | None = None, **flow_options):
    """Run ``optimizer`` on ``problem`` for ``steps`` steps, with the requested runs side by side.

    Parameters
    ----------
    problem : a :class:`pyrod.Problem` or its ``config`` dict (``pyrod.problem(**config)``).
    optimizer : a :mod:`pyrod.optimizers` instance or its ``config()`` dict.
    steps : number of optimizer steps (= time units).
    runs : any of ``"discrete"``, ``"midpoint"``, ``"stable"``, ``"rod"``, ``"central"``.
    eigs : number of top eigenvalues of P⁻¹H recorded (``eigs``); eig_every : every this many steps.
    path : NetCDF file written incrementally (one group per run); refused if it exists unless ``overwrite``.
    loss_target : stop when the discrete loss falls below it. divergence_factor : stop when the loss exceeds
        this multiple of the initial loss, or is not finite (``stop_reason`` records why).
    chunk : steps per write (and per integration segment of the flows).
    eig_tol : relative residual ‖Su − λu‖/|λ| at which eigenpairs are accepted (eigenvalue errors are of the
        order of its square); eig_max_iter : LOBPCG iteration cap (non-convergence is reported in
        ``eig_residual``, never silent).
    progress : show a progress bar (default: only when stderr is a terminal).
    snapshot_every : also store the discrete parameters every this many steps (variable ``w``).
    restart_at : flows start from the discrete state at this step (the local accuracy test, rod_flows.md §6.3).
    flow_options : options of the flows (``backend``, ``rtol``, ``atol``, ``method``, ``events``, …).

    Returns
    -------
    xarray.DataTree with children named as ``runs``; root attributes hold ``pyrod_config`` (JSON), so
    ``pyrod.simulate(**pyrod.config_of(path))`` reproduces the run.
    """
    # ------------------------------------------------------------------ validation (before any work)
    if isinstance(problem, dict):
        problem = _make_problem(**problem)
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a pyrod.Problem or a config dict, got {type(problem).__name__}")
    if isinstance(optimizer, dict):
        optimizer = _optimizers.from_config(optimizer)
    if not isinstance(optimizer, _optimizers.Optimizer):
        raise TypeError(f"optimizer must be a pyrod.optimizers.Optimizer or a config dict, "
                        f"got {type(optimizer).__name__}")
    optimizer = optimizer.bind(problem)  # block shapes for Muon / Adafactor; a no-op for the others
    _check_int("steps", steps)
    _check_int("eigs", eigs)
    _check_int("eig_every", eig_every)
    _check_int("chunk", chunk)
    if snapshot_every is not None:
        _check_int("snapshot_every", snapshot_every)
    if isinstance(runs, str):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("runs=[] is empty; valid names: %s" % _valid_runs())
    for r in runs:
        if r not in _valid_runs():
            raise ValueError(f"run {r!r} is unknown; valid names: {_valid_runs()}")
    if len(set(runs)) != len(runs):
        raise ValueError(f"runs={runs!r} lists a run twice")
    if loss_target is not None and not (isinstance(loss_target, (int, float)) and math.isfinite(loss_target)):
        raise ValueError(f"loss_target={loss_target!r} must be a finite number")
    if not (isinstance(divergence_factor, (int, float)) and divergence_factor > 1):
        raise ValueError(f"divergence_factor={divergence_factor!r} must be a number > 1")
    if not (isinstance(eig_tol, float) and 0 < eig_tol < 1):
        raise ValueError(f"eig_tol={eig_tol!r} must be a float in (0, 1)")
    if restart_at is not None:
        _check_int("restart_at", restart_at, lo=0)
        if restart_at >= steps:
            raise ValueError(f"restart_at={restart_at} must be < steps={steps}")
    eigs = min(eigs, problem.dim)
    flows = [r for r in runs if r not in _DISCRETE_RUNS]
    flow_specs = {}
    if flows:
        from .flows import prepare_flows
        flow_specs = prepare_flows(problem, optimizer, flows, restart_at=restart_at, **flow_options)
    elif flow_options:
        raise TypeError(f"unexpected keyword arguments {sorted(flow_options)} (they apply to flow runs: "
                        f"{sorted(_flow_runs())})")
    if path is not None:
        path = os.fspath(path)
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"path={path!r} exists; pass overwrite=True to replace it")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"path={path!r}: directory {parent!r} does not exist")

    config = {
        "problem": problem.config or None, "optimizer": optimizer.config(), "steps": steps, "runs": runs,
        "eigs": eigs, "eig_every": eig_every, "loss_target": loss_target, "divergence_factor": divergence_factor,
        "chunk": chunk, "snapshot_every": snapshot_every, "eig_tol": eig_tol, "eig_max_iter": eig_max_iter,
        "restart_at": restart_at, **{k: _jsonable(v) for k, v in flow_options.items()},
    }
    attrs = {"problem": problem.name, "optimizer": optimizer.name, "lr": optimizer.lr, "dim": problem.dim,
             "dtype": str(problem.dtype).replace("torch.", ""), "device": str(problem.device),
             "threshold": float(optimizer.threshold())}

    tmpdir = None
    if path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="pyrod-")
        out_path = os.path.join(tmpdir.name, "run.nc")
    else:
        out_path = path
    try:
        _run(problem, optimizer, steps, runs, flows, flow_specs, eigs, eig_every, out_path, overwrite,
             loss_target, divergence_factor, chunk, progress, snapshot_every, eig_tol, eig_max_iter,
             restart_at, config, attrs)
        return open_tree(out_path)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return repr(v)


def _run(problem, optimizer, steps, runs, flows, flow_specs, eigs, eig_every, out_path, overwrite,
         loss_target, divergence_factor, chunk, progress, snapshot_every, eig_tol, eig_max_iter, restart_at,
         config, attrs):
    def measurer():
        return Measurer(problem, optimizer, eigs, eig_every, eig_tol=eig_tol, eig_max_iter=eig_max_iter)

    discrete = DiscreteRun(problem, optimizer, measurer(), loss_target=loss_target,
                           divergence_factor=divergence_factor)
    others = []
    if "midpoint" in runs:
        others.append(MidpointRun(problem, optimizer, measurer()))
    for name in flows:
        others.append(flow_specs[name].build(measurer()))

    wall0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=f"pyrod {optimizer.name}", unit="step", leave=False)

    with RunWriter(out_path, config=config, attrs=attrs, overwrite=overwrite, chunk=chunk) as writer:
        groups = {}
        if "discrete" in runs:
            dvars = discrete.variables()
            if snapshot_every:
                dvars = dvars + [Var("w", ("t_snap", "param"), "discrete parameters w_k", "1")]
            writer.add_group("discrete", dvars, dims={"eig": eigs, **({"t_snap": None, "param": problem.dim}
                                                                      if snapshot_every else {})},
                             attrs={"run": "discrete"})
            groups["discrete"] = discrete
        for run in others:
            writer.add_group(run.name, run.variables(), dims={"eig": eigs}, attrs=getattr(run, "attrs", dict)())
            groups[run.name] = run
        counters = {name: [0, 0] for name in groups}
        if "discrete" in counters:
            counters["discrete"][0] = 1  # the gradient at w_0 taken to initialise the state
        k = 0
        stop_reason = f"steps: completed {steps} steps"
        try:
            while k < steps:
                n = min(chunk, steps - k)
                g0, h0 = problem.n_grad, problem.n_hvp
                records, ck = discrete.run_chunk(n)
                _count(counters, "discrete", problem, g0, h0)
                if "discrete" in runs:
                    for t, values in records:
                        writer.append("discrete", t, values)
                    if snapshot_every:
                        for s in ck.states[:ck.n_steps]:
                            if s.k % snapshot_every == 0:
                                writer.append_snapshot("discrete", "t_snap", float(s.k), {"w": s.w})
                for run in others:
                    g0, h0 = problem.n_grad, problem.n_hvp
                    for t, values in run.advance(ck):
                        writer.append(run.name, t, values)
                    _count(counters, run.name, problem, g0, h0)
                # rows are written and synced by the writer every `chunk` rows per group (whole storage
                # chunks); an extra mid-run flush could leave partial chunks that a later kill corrupts
                k += ck.n_steps
                if bar is not None:
                    bar.update(ck.n_steps)
                if discrete.stop_reason:
                    stop_reason = discrete.stop_reason
                    break
        except KeyboardInterrupt:
            stop_reason = f"interrupted at step {k}"
            raise
        finally:
            if bar is not None:
                bar.close()
            wall = time.perf_counter() - wall0
            for name, run in groups.items():
                extra = run.final_attrs() if hasattr(run, "final_attrs") else {}
                writer.set_attrs(name, {"stop_reason": stop_reason, "steps_completed": k,
                                        "n_grad": counters[name][0], "n_hvp": counters[name][1], **extra})
            writer.set_attrs(None, {"stop_reason": stop_reason, "steps_completed": k, "wall_time_s": wall})


def _count(counters, name, problem, g0, h0):
    if name in counters:
        counters[name][0] += problem.n_grad - g0
        counters[name][1] += problem.n_hvp - h0
