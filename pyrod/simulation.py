"""``pyrod.simulate`` and ``pyrod.resume``: run the discrete optimizer and any flows side by side, write one
NetCDF file, checkpoint the complete run state, continue a run bit-identically.

All runs start from the same initialisation and are advanced together in chunks of steps, so every run is
compared with the same discrete trajectory. After each chunk the rows are written (and synced every ``chunk``
rows) and, when due, the complete state of every run is saved to ``PATH.ckpt`` (:mod:`pyrod.checkpoint`).
The result is an ``xarray.DataTree`` with one child per run; ``t`` is in optimizer steps.

What a run is: a :class:`pyrod.spec.RunSpec` (typed, JSON-able, stored in the file). The keyword form of
:func:`simulate` builds one. What a run has done: the file (rows) + the checkpoint (state). :func:`resume`
continues from the checkpoint and gives, for the same spec, the same bits as a run that was never stopped
(same machine, same torch build and thread count; see the README's "Resume" section for the exact scope).
"""
from __future__ import annotations

import numbers
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from . import optimizers as _optimizers
from . import threads as _threads
from .io.reader import open_tree
from .io.writer import RunWriter
from .problems import Problem
from .run_kinds import BUILTIN_RUNS, run_kind
from .run_stops import (  # noqa: F401  (pyrod.simulation.RunInterrupted etc., as before)
    NOT_REPRODUCIBLE,
    InterruptFlag,
    NotReproducible,
    RunInterrupted,
    RunOutOfMemory,
    explain_failure,
)
from .runs.discrete import DiscreteRun
from .runs.measure import Measurer
from .schema import Var
from .spec import (
    RunSpec,
    check_placement,
    problem_config,  # noqa: F401  (simulation.problem_config, as before)
    stored_spec,
)

__all__ = ["simulate", "resume", "spec_of", "config_of", "RunInterrupted", "build_problem",
           "NotReproducible", "RunOutOfMemory", "prepare_flows", "FlowSpec"]

#: default wall-time spacing of automatic checkpoints (``checkpoint_every=None``)
AUTO_CHECKPOINT_SECONDS = 60.0
#: eigen measurement beyond this many eigenpairs is refused (a full spectrum belongs to ``Problem.hessian``)
MAX_EIGS = 1024


# ----------------------------------------------------------------------------------------- public API
def simulate(problem=None, optimizer=None, steps=None, runs=None, *, progress: bool | None = None, **options):
    """Run ``optimizer`` on ``problem`` for ``steps`` steps with the requested runs side by side.

    Two forms:

    * ``simulate(spec)`` with a :class:`pyrod.spec.RunSpec` (or its dict form);
    * the keyword form ``simulate(problem, optimizer, steps, runs=("discrete",), **options)`` — ``problem`` a
      :class:`pyrod.Problem` or its config dict, ``optimizer`` a :mod:`pyrod.optimizers` instance or its
      ``config()`` dict; ``options`` are the flat keywords of :data:`pyrod.spec.FLAT_KEYWORDS` (``eigs``,
      ``eig_every``, ``eig_tol``, ``eig_max_iter``, ``path``, ``overwrite``, ``chunk``, ``checkpoint_every``,
      ``snapshot_every``, ``loss_target``, ``divergence_factor``, ``restart_at``, ``events``, ``backend``,
      ``method``, ``rtol``, ``atol``, ``max_step``, ``substeps``, ``min_step``, ``max_rhs_per_unit``, ``bea``,
      the central flow's ``sdcp_threshold``, ``track_threshold``, ``tau``, ``max_track``, ``sdcp_tol``,
      ``refresh_tol``, ``watch_margin``, ``counter_rate``, ``third_derivative``, ``tracking_hvp``), ``threads``
      (CPU threads; default: one for a small problem, every core for a large one: :mod:`pyrod.threads`), backend options
      (``jac``, ``max_steps``, ``linsolver``, …) and whole sections (``eig=``, ``integrator=``, ``stable=``,
      ``rod=``, ``central=``, ``stop=``, ``output=``; a spec section or a dict). An unknown keyword fails at once with
      the closest valid name.

    ``progress``: show a progress bar (default: when stderr is a terminal); not part of the spec.

    Returns an ``xarray.DataTree`` with one child per run. The file's root attribute ``pyrod_config`` holds
    the spec (``pyrod.spec_of(path)``); ``PATH.ckpt`` holds the latest checkpoint (``pyrod.resume(path)``).
    Ctrl-C once finishes the current chunk, saves a checkpoint and raises :class:`RunInterrupted` (twice: stop
    now; the previous checkpoint stays).
    """
    if isinstance(problem, (RunSpec, dict)) and optimizer is None and steps is None and runs is None \
            and not options and (isinstance(problem, RunSpec) or "optimizer" in problem and "problem" in problem
                                 and "stop" in problem):
        spec = RunSpec.from_dict(problem)
        prob = build_problem(spec.problem)
        opt = _optimizers.from_config(spec.optimizer)
        return _execute(spec, prob, opt, progress)
    if problem is None:
        raise TypeError("simulate() needs a RunSpec, or a problem and an optimizer")
    if optimizer is None:
        raise TypeError("simulate(problem, optimizer, steps, ...): optimizer is missing")
    prob = build_problem(problem) if isinstance(problem, dict) else problem
    if not isinstance(prob, Problem):
        raise TypeError(f"problem must be a pyrod.Problem, its config dict or a RunSpec, got {type(problem).__name__}")
    opt = _optimizers.from_config(optimizer) if isinstance(optimizer, dict) else optimizer
    if not isinstance(opt, _optimizers.Optimizer):
        raise TypeError(f"optimizer must be a pyrod.optimizers.Optimizer or a config dict, got "
                        f"{type(optimizer).__name__}")
    if steps is None and "steps" not in (options.get("stop") or {}) and not hasattr(options.get("stop"), "steps"):
        raise TypeError("simulate(problem, optimizer, steps, ...): steps is missing")
    spec = RunSpec.from_call(prob, opt, steps, runs, **options)
    check_placement(spec)   # keyword form: an option for a run that is not asked for is a mistake
    return _execute(spec, prob, opt, progress)


def resume(path, steps: int | None = None, *, progress: bool | None = None, problem=None, threads: int | None = None):
    """Continue the run written to ``path`` from its checkpoint ``PATH.ckpt``.

    Works for a run that was killed (even SIGKILL: rows written after the checkpoint are dropped and
    recomputed), interrupted (Ctrl-C) or finished. ``steps``: the new total number of steps (default: the
    spec's); a finished run is extended by giving more. ``problem``: the Problem, needed only when the run's
    problem has no replay config (``Problem.from_module``). For the same spec the resumed file is
    bit-identical, variable by variable, to a run that was never stopped (flows of a finished run extended
    past a step count that is not a multiple of ``chunk`` are the exception: their integration segments are
    cut elsewhere, same accuracy, not the same bits). ``threads``: CPU threads (default: the count the run was
    started with, which bit-identity needs).
    """
    path = os.fspath(path)
    payload = _checkpoint_of(path)
    _require_run_kinds(path, payload["spec"].get("runs") or ())
    spec = RunSpec.from_dict(stored_spec(payload["spec"]))
    done = int(payload["k"])
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise ValueError(f"steps={steps!r} must be an int (the new total number of steps)")
        steps = int(steps)
        if steps < done:
            raise ValueError(f"steps={steps} is fewer than the {done} steps already done in {path!r} "
                             f"(steps is the new total)")
        spec = spec.replace({"stop.steps": steps})
    spec = spec.replace({"output.path": path, "output.overwrite": True})
    if threads is not None:
        spec = spec.replace({"threads": threads})
    if problem is None:
        if spec.problem is None:
            raise NotReproducible(f"cannot resume {path!r}: {NOT_REPRODUCIBLE}")
        problem = build_problem(spec.problem)
    opt = _optimizers.from_config(spec.optimizer)
    return _execute(spec, problem, opt, progress, payload=payload)


def _checkpoint_of(path: str) -> dict:
    """The checkpoint of the pyrod file ``path``, or an error that says what is wrong with ``path`` itself: missing,
    a folder, not NetCDF, not written by pyrod, damaged, written without checkpoints, stopped before its first
    checkpoint, or a checkpoint that belongs to another run."""
    from . import checkpoint as _ckpt
    from .io.reader import stored_config as _raw_config

    if not os.path.exists(path):
        raise FileNotFoundError(f"cannot resume {path}: no such file")
    try:
        cfg = _raw_config(path)
    except (OSError, ValueError) as e:
        e.args = (f"cannot resume: {e}",)
        raise
    ckpt = _ckpt.path_for(path)
    if not os.path.exists(ckpt):
        every = (cfg.get("output") or {}).get("checkpoint_every") if "spec_version" in cfg else None
        if every == 0:
            why = "the run was written without checkpoints (checkpoint_every=0)"
        else:
            chunk = (cfg.get("output") or {}).get("chunk", "chunk")
            why = (f"the run stopped before the end of its first chunk (step {chunk}), or the checkpoint was moved "
                   f"or deleted; start it again with "
                   f"pyrod.simulate(pyrod.spec_of({path!r}).replace({{'output.overwrite': True}}))")
        raise _ckpt.CheckpointError(f"cannot resume {path}: no checkpoint {ckpt}: {why}")
    payload = _ckpt.load(ckpt)
    if "spec_version" in cfg and _experiment(payload["spec"]) != _experiment(cfg):
        raise _ckpt.CheckpointError(f"cannot resume {path}: its checkpoint {ckpt} belongs to another run (problem, "
                                    f"optimizer or runs differ from the file's); delete it and start the run again")
    return payload


def _require_run_kinds(path: str, runs) -> None:
    """Every run of the file ``path`` is a registered kind, or an error that names the module which defined the
    missing one when the file was written (root attribute ``run_kind_modules``). Nothing is imported because the
    file names it: the user loads the plug-in (``import``, ``--plugin``)."""
    from .run_kinds import is_registered

    missing = [r for r in runs if not is_registered(r)]
    if not missing:
        return
    from .io.reader import json_attr, root_attrs

    try:
        modules = json_attr(root_attrs(path), "run_kind_modules")
    except (KeyError, OSError, ValueError):
        modules = {}
    where = []
    for name in missing:
        module = modules.get(name) if isinstance(modules, dict) else None
        if module and module != "__main__":
            where.append(f"{name!r} (defined in module {module!r} when the file was written: `import {module}` "
                         f"first, or `python -m pyrod resume {path} --plugin {module}`)")
        elif module == "__main__":
            where.append(f"{name!r} (registered by the script that wrote the file: register it again, then call "
                         f"pyrod.resume)")
        else:
            where.append(f"{name!r}")
    raise ValueError(f"cannot resume {path}: run kind {', '.join(where)} is not registered in this process")


def _experiment(spec_dict: dict) -> tuple:
    """What identifies a run's experiment in its spec (for matching a checkpoint to its file)."""
    import json

    return tuple(json.dumps(spec_dict.get(k), sort_keys=True, default=str) for k in ("problem", "optimizer", "runs",
                                                                                      "restart_at"))


def spec_of(path_or_tree) -> RunSpec:
    """The :class:`RunSpec` of a pyrod file (``pyrod.simulate(pyrod.spec_of(path).replace({"output.path":
    "copy.nc"}))`` reproduces it)."""
    from .io.reader import stored_config as _raw_config

    cfg = _raw_config(path_or_tree)
    if "spec_version" not in cfg:
        raise ValueError(f"{path_or_tree!r} was written by a pyrod without run specs; "
                         f"use pyrod.config_of() and the keyword form")
    return RunSpec.from_dict(stored_spec(cfg))


def config_of(path_or_tree) -> dict:
    """Keyword arguments that reproduce the run in memory: ``pyrod.simulate(**pyrod.config_of(path))`` (add
    ``path=`` to write a file). Refuses runs whose problem has no replay config (built in memory:
    ``Problem.from_module``, ``Problem(loss_fn=...)``)."""
    from .io.reader import stored_config as _raw_config

    cfg = _raw_config(path_or_tree)
    if "spec_version" not in cfg:  # files from before run specs: the flat keyword form as stored
        return cfg
    if cfg.get("problem") is None:
        raise NotReproducible(f"{path_or_tree!r}: {NOT_REPRODUCIBLE}")
    cfg = stored_spec(cfg)
    cfg.pop("spec_version")
    out = dict(cfg.get("output") or {})
    out.pop("path", None)
    out.pop("overwrite", None)
    cfg["output"] = out
    stop = dict(cfg.get("stop") or {})
    cfg["steps"] = stop.pop("steps")
    cfg["stop"] = stop
    return cfg


def build_problem(config):
    """A Problem from its replay config (``pyrod.problem(**config)``, or a factory config)."""
    if config is None:
        raise NotReproducible(NOT_REPRODUCIBLE)
    if isinstance(config, Problem):
        return config
    from .problems import problem as _make_problem
    return _make_problem(**config)


# ----------------------------------------------------------------------------------------- validation
def _validate(spec: RunSpec, problem, optimizer):
    """Checks that need the Problem and Optimizer objects. (Misplaced options are refused in the keyword form only:
    a spec given as data, or read back from a file, may carry sections for runs it does not ask for.)"""
    if spec.eig.k > problem.dim:
        raise ValueError(f"eigs={spec.eig.k} is more than the problem's dimension d={problem.dim}")
    if spec.eig.k > MAX_EIGS:
        raise ValueError(f"eigs={spec.eig.k} is more than {MAX_EIGS} eigenpairs per measurement; use "
                         f"Problem.hessian(w) for a full spectrum of a small problem")
    if spec.flows:
        if not optimizer.supports_flows:
            ok = sorted(n for n, c in _optimizers.REGISTRY.items() if c.supports_flows)
            raise ValueError(f"optimizer={optimizer.name!r} has no smooth increment D (flows are defined for {ok})")
        spec.integrator.validate(problem.device)
    for name in spec.runs:      # checks a run kind declares beyond its options' own (central: the substeps)
        kind = run_kind(name)
        if kind.check is not None:
            kind.checker()(kind.options_of(spec), spec)
    path = spec.output.path
    if path is not None:
        if os.path.isdir(path):
            raise IsADirectoryError(f"path={path!r} is a directory; give a file name such as "
                                    f"{os.path.join(path, 'run.nc')!r}")
        if os.path.exists(path) and not spec.output.overwrite:
            raise FileExistsError(f"path={path!r} exists; pass overwrite=True to replace it "
                                  f"(or pyrod.resume({path!r}) to continue it)")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"path={path!r}: directory {parent!r} does not exist")


def _flow_run(kind, spec: RunSpec, problem, optimizer, measurer):
    """The :class:`pyrod.flows.FlowRun` of the flow kind ``kind`` (:class:`pyrod.run_kinds.RunKind`): its model
    built with its options, integrated with the spec's integrator section, events and restart."""
    from .flows import FlowRun

    model = kind.model_class()(problem, optimizer, **kind.model_kwargs(kind.options_of(spec), spec))
    if model.name != kind.name:   # the group, the checkpoint and the progress bar know the run by its kind's name
        model.name = kind.name
    ig = spec.integrator
    return FlowRun(model, measurer, backend=ig.backend, method=ig.method, rtol=ig.rtol, atol=ig.atol,
                   max_step=ig.max_step, events=list(spec.events), restart_at=spec.restart_at,
                   divergence_factor=spec.stop.divergence_factor, substeps=ig.substeps, min_step=ig.min_step,
                   max_rhs_per_unit=ig.max_rhs_per_unit, options=ig.options)


# ----------------------------------------------------------------------------------------- execution
def _execute(spec: RunSpec, problem, optimizer, progress, payload=None):
    optimizer = optimizer.bind(problem)   # block shapes for Muon / Adafactor; a no-op for the others
    _validate(spec, problem, optimizer)
    tmpdir = None
    if spec.output.path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="pyrod-")
        out_path, checkpoints = os.path.join(tmpdir.name, "run.nc"), False
    else:
        out_path, checkpoints = spec.output.path, spec.output.checkpoint_every != 0
    count, why = _threads_for(spec, problem, payload)
    try:
        with _threads.using(count) as used:
            _loop(spec, problem, optimizer, out_path, checkpoints, progress, payload,
                  threads={"threads": used, "threads_rule": why})
        return open_tree(out_path)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:   # before the loop (the first gradient): no file yet
        if isinstance(e, RunOutOfMemory):
            raise
        raise explain_failure(e, path=None, k=None, problem=problem, ckpt_k=None) from e
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


def _threads_for(spec, problem, payload):
    """The thread count of this run (:func:`pyrod.threads.choose`); a resumed run uses the count it was started
    with unless the spec names one (bit-identical resume needs the same count)."""
    if spec.threads is None and payload is not None and payload.get("threads"):
        return int(payload["threads"]), "the count the run was started with"
    return _threads.choose(spec.threads, problem)


def _build_runs(spec, problem, optimizer):
    def measurer(every=spec.eig.every, on=problem):
        return Measurer(on, optimizer, spec.eig.k, every, eig_tol=spec.eig.tol,
                        eig_max_iter=spec.eig.max_iter, raw=spec.eig.raw)

    mb = spec.minibatch
    if mb.active:      # a mini-batch run: the same optimizer step on mini-batch gradients (pyrod.runs.minibatch)
        from .runs.minibatch import MiniBatchRun
        from .runs.sampling import MiniBatchData

        data = MiniBatchData(problem, mb)
        return {"discrete": MiniBatchRun(problem, optimizer, measurer(on=data.measure_problem), data,
                                         nds_every=spec.eig.every if mb.nds_every is None else mb.nds_every, heldout_every=mb.heldout_every,
                                         sharpness_batches=mb.batch_sharpness, loss_target=spec.stop.loss_target,
                                         divergence_factor=spec.stop.divergence_factor)}
    runs = {"discrete": DiscreteRun(problem, optimizer, measurer(), loss_target=spec.stop.loss_target,
                                    divergence_factor=spec.stop.divergence_factor)}
    flow_every = spec.eig.flow_every or spec.eig.every
    followers = [run_kind(n) for n in spec.runs if not run_kind(n).leads]
    for kind in sorted(followers, key=lambda kind: kind.flow):   # runs that are not flows first (midpoint), as before
        if kind.flow:
            runs[kind.name] = _flow_run(kind, spec, problem, optimizer, measurer(flow_every))
        else:
            runs[kind.name] = kind.builder()(problem, optimizer, measurer(), spec)
    return runs


def _root_attrs(spec, problem, optimizer) -> dict:
    attrs = {"problem": problem.name, "optimizer": optimizer.name, "lr": optimizer.lr, "dim": problem.dim,
             "dtype": str(problem.dtype).replace("torch.", ""), "device": str(problem.device),
             "threshold": float(optimizer.threshold())}
    registered = {k.name: k.origin for k in map(run_kind, spec.runs) if k not in BUILTIN_RUNS}
    if registered:      # which module defined each run kind from outside pyrod: resume names it when it is missing
        attrs["run_kind_modules"] = registered
    return attrs


def _add_groups(writer, spec, runs, problem):
    k = spec.eig.k
    if "discrete" in spec.runs:
        dvars = runs["discrete"].variables()
        dims = {"eig": k}
        if spec.output.snapshot_every:
            dvars = dvars + [Var("w", ("t_snap", "param"), "discrete parameters w_k", "1")]
            dims.update({"t_snap": None, "param": problem.dim})
        writer.add_group("discrete", dvars, dims=dims, attrs=runs["discrete"].attrs(), coords=_index_coords(dims))
    for name, run in runs.items():
        if name == "discrete":
            continue
        dims = {"eig": k, **run.dims()}
        writer.add_group(name, run.variables(), dims=dims, attrs=run.attrs(), coords=_index_coords(dims))


#: dims of the run groups whose positions are ranks: their coordinate values are 1, 2, … (long name, units)
INDEX_DIMS = {"eig": "rank of the eigenvalue (1 = the largest)",
              "track": "rank of the tracked eigen-direction (1 = the largest eigenvalue)"}


def _index_coords(dims: dict) -> dict:
    import numpy as np

    return {d: (np.arange(1, n + 1, dtype="i4"), INDEX_DIMS[d], "1") for d, n in dims.items()
            if d in INDEX_DIMS and n is not None}


def _loop(spec, problem, optimizer, out_path, checkpoints, progress, payload, threads=None):
    from . import checkpoint as _ckpt

    runs = _build_runs(spec, problem, optimizer)
    groups = [n for n in runs if n != "discrete" or "discrete" in spec.runs]
    steps, chunk = spec.stop.steps, spec.output.chunk
    config, attrs = spec.to_dict(), {**_root_attrs(spec, problem, optimizer), **(threads or {})}
    counters = {name: [0, 0] for name in runs}
    counters["discrete"][0] = 1  # the gradient at w_0 taken to initialise the state
    k, wall_before, stop_reason = 0, 0.0, None
    ckpt_path = _ckpt.path_for(out_path)

    if payload is None:
        writer = RunWriter(out_path, config=config, attrs=attrs, overwrite=spec.output.overwrite, chunk=chunk)
        try:
            _add_groups(writer, spec, runs, problem)
            _ckpt.remove_stale(ckpt_path)   # a checkpoint of the file this run replaced must never be resumed
        except BaseException:
            writer.close(status="failed: could not create the groups")
            raise
    else:
        k = int(payload["k"])
        for name, run in runs.items():
            run.load_state_dict(payload["runs"][name])
        counters = {n: list(v) for n, v in payload["counters"].items()}
        wall_before = float(payload.get("wall_time_s", 0.0))
        if payload.get("rng") is not None:
            torch.set_rng_state(payload["rng"])
        pending = payload["pending"]
        cut = {g: (pending[g]["times"][0] if pending.get(g, {}).get("times") else float(k)) for g in groups}
        expect = {g: int(pending[g]["n_t"]) for g in groups if "n_t" in pending.get(g, {})}
        writer = RunWriter.resume(out_path, cut=cut, config=config, attrs=attrs, chunk=chunk, expect_rows=expect)
        for g in groups:   # a file from an older pyrod: variables added since then start here (NaN before)
            writer.add_missing_variables(g, [v for v in runs[g].variables() if v.dims[0] == "t"])
        for g in groups:
            for t, row in zip(pending[g]["times"], pending[g]["rows"], strict=False):
                writer.append(g, t, row)
        # a run that had stopped early (divergence, loss target) stays stopped
        stop_reason = payload.get("stop_reason")

    discrete = runs["discrete"]
    if stop_reason is None and discrete.stop_reason:
        stop_reason = discrete.stop_reason
    others = [r for n, r in runs.items() if n != "discrete"]
    wall0 = time.perf_counter()
    last_ckpt = time.perf_counter()
    ckpt_k = k if payload is not None else None    # the step of the latest checkpoint of this run
    bar = _Progress(sys.stderr.isatty() if progress is None else bool(progress), steps, k, list(runs),
                    f"pyrod {optimizer.name}")
    discrete.on_step = lambda step: bar.reached("discrete", step + 1)
    for run in others:
        run.progress = lambda t, name=run.name: bar.reached(name, t)

    def save_checkpoint(reason=None):
        nonlocal ckpt_k
        ckpt_k = k
        _ckpt.save(ckpt_path, {
            "spec": config, "k": k, "runs": {n: r.state_dict() for n, r in runs.items()},
            "pending": writer.pending(), "counters": counters, "rng": torch.get_rng_state(),
            "wall_time_s": wall_before + time.perf_counter() - wall0, "stop_reason": reason,
            "threads": (threads or {}).get("threads")})

    def due() -> bool:
        every = spec.output.checkpoint_every
        if not checkpoints:
            return False
        if ckpt_k is None:      # the first chunk end: from then on a kill or Ctrl-C leaves a run to resume
            return True
        if every is None:
            return time.perf_counter() - last_ckpt >= AUTO_CHECKPOINT_SECONDS
        return (k // every) > (k_prev // every)

    status = "complete"
    interrupted = None
    k_prev = k
    try:
        with InterruptFlag(checkpoints) as flag:
            try:
                while k < steps and stop_reason is None:
                    n = min(chunk, steps - k)
                    k_prev = k
                    g0, h0 = problem.n_grad, problem.n_hvp
                    records, ck = discrete.run_chunk(n)
                    _count(counters, "discrete", problem, g0, h0)
                    if "discrete" in spec.runs:
                        for t, values in records:
                            writer.append("discrete", t, values)
                        if spec.output.snapshot_every:
                            for s in ck.states[:ck.n_steps]:
                                if s.k % spec.output.snapshot_every == 0:
                                    writer.append_snapshot("discrete", "t_snap", float(s.k), {"w": s.w})
                        if discrete.stop_reason:   # its rows are on disk before any flow runs on
                            writer.flush()
                    for run in others:
                        g0, h0 = problem.n_grad, problem.n_hvp
                        for t, values in run.advance(ck):
                            writer.append(run.name, t, values)
                        _count(counters, run.name, problem, g0, h0)
                    k += ck.n_steps
                    bar.chunk_done(k)
                    if discrete.stop_reason:
                        stop_reason = discrete.stop_reason
                    if flag.requested:
                        interrupted = f"interrupted at step {k}"
                        break
                    if stop_reason is None and k < steps and due():
                        save_checkpoint()
                        last_ckpt = time.perf_counter()
            except KeyboardInterrupt:
                interrupted = f"stopped at once at step {k}, inside a chunk"
                if ckpt_k is not None:
                    interrupted += f" (the checkpoint of step {ckpt_k} is kept)"
                status = "interrupted"
                raise
        if checkpoints:   # at the end, at a stop and after a first Ctrl-C: the state after the last chunk
            save_checkpoint(stop_reason)
    except KeyboardInterrupt:
        pass
    except BaseException as e:
        explained = explain_failure(e, path=out_path if spec.output.path is not None else None, k=k,
                                     problem=problem, ckpt_k=ckpt_k if os.path.exists(ckpt_path) else None)
        shown = explained or e
        status = f"failed: {type(shown).__name__}: {shown}"[:1000]
        try:
            _finish(writer, runs, groups, counters, stop_reason or status, k,
                    wall_before + time.perf_counter() - wall0, status, bar)
        except Exception as close_error:  # noqa: BLE001 - never hide the error that stopped the run
            shown.add_note(f"pyrod: closing {out_path} also failed: {type(close_error).__name__}: {close_error}")
        if explained is not None:
            raise explained from e
        raise
    final = interrupted or stop_reason or f"steps: completed {k} steps"
    _finish(writer, runs, groups, counters, final, k, wall_before + time.perf_counter() - wall0,
            "interrupted" if interrupted else "complete", bar)
    if interrupted:
        if not checkpoints:
            why = ("it was written without checkpoints (checkpoint_every=0)" if spec.output.path is not None
                   else "it was run without a path (nothing is kept)")
        else:
            why = (f"no checkpoint had been written yet (the first is written at the end of the first chunk, "
                   f"step {min(chunk, steps)}); start the run again")
        raise RunInterrupted(interrupted, path=out_path, step=k,
                             resumable=checkpoints and ckpt_k is not None and os.path.exists(ckpt_path),
                             why_not=why)


class _Progress:
    """The progress bar of a run: its position is the mean over the runs of how far each has got (in optimizer
    steps), so it moves with every discrete step and every accepted step of a flow's integration, not only at
    chunk ends."""

    def __init__(self, show: bool, total: int, start: int, names, desc: str):
        self.bar, self.total = None, total
        self.at = dict.fromkeys(names, float(start))
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", leave=False,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}]")

    def reached(self, name: str, position: float) -> None:
        if self.bar is None or name not in self.at or position <= self.at[name]:
            return
        self.at[name] = min(float(position), self.total)
        mean = sum(self.at.values()) / len(self.at)
        if mean > self.bar.n:
            self.bar.update(mean - self.bar.n)

    def chunk_done(self, k: int) -> None:
        for name in self.at:
            self.reached(name, k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _finish(writer, runs, groups, counters, reason, k, wall, status, bar):
    bar.close()
    try:
        for name in groups:
            run = runs[name]
            extra = run.final_attrs()
            own = extra.get("flow_status")
            run_reason = reason if own in (None, "ok") else f"{own} (discrete: {reason})"
            writer.set_attrs(name, {"stop_reason": run_reason, "steps_completed": k,
                                    "n_grad": counters[name][0], "n_hvp": counters[name][1], **extra})
        writer.set_attrs(None, {"stop_reason": reason, "steps_completed": k, "wall_time_s": wall})
    finally:
        writer.close(status=status)


def _count(counters, name, problem, g0, h0):
    if name in counters:
        counters[name][0] += problem.n_grad - g0
        counters[name][1] += problem.n_hvp - h0


# ----------------------------------------------------------------------------------- flows without a run
@dataclass
class FlowSpec:
    """One flow of a validated run specification; ``build(measurer)`` makes its :class:`FlowRun` (the same way
    ``pyrod.simulate`` does)."""

    name: str
    spec: object       # pyrod.spec.RunSpec
    problem: object
    optimizer: object

    def build(self, measurer):
        return _flow_run(run_kind(self.name), self.spec, self.problem, self.optimizer, measurer)


def prepare_flows(problem, optimizer, flows, *, options: dict | None = None, **kwargs) -> dict:
    """Validate flow options exactly as :func:`pyrod.simulate` does — through the run specification — and return
    ``{name: FlowSpec}`` (nothing is computed).

    ``kwargs``: ``simulate``'s keywords for flows (:data:`pyrod.spec.FLAT_KEYWORDS`: ``backend``, ``method``,
    ``rtol``, ``atol``, ``max_step``, ``substeps``, ``min_step``, ``max_rhs_per_unit``, ``events``, ``bea``,
    ``restart_at``, ``divergence_factor``, the central flow's options, or whole sections such as ``central=``);
    ``options``: the backend's own options (``integrator.options``). An unknown or misplaced option fails with the
    same message as in ``simulate``.
    """
    kw = dict(kwargs)
    if options:
        kw["integrator"] = {**dict(kw.get("integrator") or {}), "options": dict(options)}
    kw.setdefault("steps", (kw.get("restart_at") or 0) + 1)   # the spec needs a length; flows do not use it
    spec = RunSpec.from_call(problem, optimizer, runs=["discrete", *flows], **kw)
    check_placement(spec)
    _validate(spec, problem, optimizer)
    return {name: FlowSpec(name, spec, problem, optimizer) for name in spec.flows}
