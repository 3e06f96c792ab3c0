"""Shared machinery of the experiments: parameters (scales, ``--set``), the run context, plotting, summaries.

An experiment is a module with

* ``NAME`` (CLI name), ``TITLE`` (one line), ``PAPER`` (which figure/table it reproduces), ``RUNTIME`` (rough
  wall time of ``--scale small`` on a 2-core CPU);
* ``DEFAULTS = {"tiny": {...}, "small": {...}, "paper": {...}}``: every parameter with its default per scale (the
  same keys at these three scales; the type of the default decides how a ``--set key=value`` string is parsed); an
  experiment may add a ``"medium"`` scale (``muon-zipf``, ``muon-curvature``: mini-batch training on a stream) with
  keys of its own;
* optionally ``PRESETS = {key: {value: {param: default, ...}}}``: a parameter that selects a set of defaults
  (``--set size=gpu``); the preset is applied before the other ``--set`` values, which override it;
* ``run(ctx) -> dict``: does the work, writes its files through ``ctx`` and returns the ``results`` part of
  ``summary.json``, computed from the files it wrote (:func:`pyrod.open` on them), never typed in.

:func:`run_experiment` resolves the parameters, creates the output folder, calls ``run`` and writes
``summary.json`` = ``{experiment, title, paper, scale, params, results, files, wall_time_s, ...}``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# the parameters (scales, shared defaults and help, overrides, checks) are pyrod.experiments.params; the names stay
# importable from here
from .params import (  # noqa: F401
    COMMON_DEFAULTS,
    PARAM_HELP,
    SCALES,
    ExperimentError,
    _deep_merge,
    require_positive,
    resolve_params,
)

__all__ = ["ExperimentError", "COMMON_DEFAULTS", "SCALES", "Context", "resolve_params",
           "run_experiment", "figure", "threshold_line", "colors", "savefig", "finite", "jsonable"]



# --------------------------------------------------------------------------------------------- context
@dataclass
class Context:
    """What an experiment's ``run`` gets: parameters, output folder, progress flag, file bookkeeping."""

    name: str
    scale: str
    params: dict
    out: Path
    progress: bool = False
    jobs: int | None = 1            # sweeps: worker processes (None: one per core; 1: in this process)
    scheduler: str | None = None    # sweeps: address of an existing Dask scheduler (then jobs is not used)
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    _client: object = field(default=None, repr=False)     # one LocalCluster shared by the experiment's sweeps

    @property
    def in_process(self) -> bool:
        """Whether sweeps and :meth:`map` run in this process (``jobs == 1`` and no scheduler)."""
        return self.scheduler is None and self.jobs == 1

    @property
    def p(self) -> dict:
        return self.params

    def path(self, filename: str) -> Path:
        """``out/filename`` (sub-folders created), recorded in the summary's ``files``."""
        path = self.out / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        rel = str(path.relative_to(self.out))
        if rel not in self.files:
            self.files.append(rel)
        return path

    def log(self, msg: str) -> None:
        if self.progress:
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)

    def note(self, msg: str) -> None:
        """A remark that goes into summary.json (e.g. a skipped optimizer and why)."""
        self.notes.append(msg)
        self.log(msg)

    def problem(self, **kw):
        """``pyrod.problem`` with this experiment's seed/dtype/device/data_path filled in."""
        import pyrod

        p = self.params
        kw.setdefault("seed", p["seed"])
        kw.setdefault("dtype", p["dtype"])
        kw.setdefault("device", None if p["device"] == "auto" else p["device"])
        if kw.get("data") == "cifar10":
            kw.setdefault("data_path", p.get("data_path"))
        try:
            return pyrod.problem(**kw)
        except (ValueError, FileNotFoundError) as e:     # bad sizes/options: say which, no traceback
            raise ExperimentError(f"cannot build the problem {kw.get('model')}/{kw.get('data')}: {e}") from None

    def simulate(self, problem, optimizer, filename: str, **kw):
        """``pyrod.simulate`` writing ``out/filename`` (overwritten), with this run's progress setting."""
        import pyrod

        kw.setdefault("progress", self.progress)
        kw.setdefault("eig_tol", float(self.params.get("eig_tol", 1e-8)))
        kw.setdefault("threads", int(self.params.get("threads", 1)))     # the experiment's --threads, per run
        return pyrod.simulate(problem, optimizer, path=self.path(filename), overwrite=True, **kw)

    def spec(self, problem, optimizer, **kw):
        """The :class:`pyrod.RunSpec` of ``ctx.simulate(problem, optimizer, ..., **kw)`` (for :meth:`sweep`)."""
        from pyrod.spec import RunSpec

        kw.setdefault("eig_tol", float(self.params.get("eig_tol", 1e-8)))
        kw.setdefault("threads", int(self.params.get("threads", 1)))     # the experiment's --threads, per run
        return RunSpec.from_call(problem, optimizer, **kw)

    def sweep(self, base, grid, folder: str, *, name=None, zip=None):  # noqa: A002
        """``pyrod.sweep`` into ``out/folder`` with this run's ``--jobs``/``--scheduler``: finished points are
        kept (a rerun resumes), points whose spec changed are recomputed; the files go into the summary.
        Raises ExperimentError naming the failed points (the others are kept)."""
        import pyrod

        client = None if self.in_process else self._dask_client()
        res = pyrod.sweep(base, grid, self.out / folder, zip=zip, name=name, client=client, jobs=self.jobs,
                          rerun_changed=True, progress=self.progress)
        for rel in [f"{folder}/{p['file']}" for p in res.points] + [f"{folder}/sweep.json"]:
            if rel not in self.files:
                self.files.append(rel)
        if res.failed:
            first = res.failed[0]
            raise ExperimentError(f"{len(res.failed)} of {len(res.points)} runs failed (see "
                                  f"{self.out / folder / 'sweep.json'}; rerunning resumes the others); first, "
                                  f"{first['name']}:\n{first['error']}")
        return res

    def map(self, fn, items, desc: str) -> list:
        """``[fn(x) for x in items]``, in the order of ``items``, on this run's ``--jobs``/``--scheduler``.

        For an experiment's own points (custom per-step analysis that :meth:`sweep` cannot express). With
        ``jobs == 1`` and no scheduler: one after the other in this process, with :meth:`iterate`'s progress
        bar. Otherwise each item is one Dask task (``client.submit``) on the context's client, the same one
        :meth:`sweep` uses (a ``LocalCluster`` of ``jobs`` single-threaded workers, or the ``--scheduler``
        cluster), with one progress bar over the finished items.

        ``fn``: a module-level function (Dask pickles it by reference) of one item, plain data in and out
        (numbers, strings, lists, dicts, numpy arrays): it runs in a worker process that shares nothing with
        this one, so it must build its problem from the parameters it is given, set the torch thread count
        it needs (``params["threads"]``, as in this process) and write its files to absolute paths
        (:meth:`path` them here first, so that they go into the summary). ``functools.partial(fn, params)``
        binds fixed arguments. Nothing is resumed: every item runs each time. The first item that raises cancels the
        others and its exception is raised here (with the worker's traceback).
        """
        items = list(items)
        if self.in_process:
            return [fn(x) for x in self.iterate(items, desc)]
        if not items:
            return []
        from distributed import as_completed

        client = self._dask_client()
        futures = [client.submit(fn, x, pure=False) for x in items]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(items), desc=f"[{self.name}] {desc}", unit="run", leave=True)
        try:
            for fut in as_completed(futures):
                if fut.status != "finished":
                    fut.result()                 # raises the task's exception, with its remote traceback
                if bar is not None:
                    bar.update(1)
            return client.gather(futures)
        finally:
            left = [f for f in futures if not f.done()]
            if left:                             # after an error or an interrupt: free the workers
                client.cancel(left)
            if bar is not None:
                bar.close()

    def _dask_client(self):
        """The one Dask client of this run's :meth:`sweep` and :meth:`map` calls (made at first use): the
        ``--scheduler`` cluster, or a ``LocalCluster`` of ``jobs`` single-threaded workers."""
        if self._client is None:
            from distributed import Client

            import pyrod

            self._client = Client(self.scheduler) if self.scheduler is not None else \
                Client(pyrod.sweep.local_cluster(self.jobs))
        return self._client

    def close(self) -> None:
        """Close the sweeps' LocalCluster, if one was started."""
        if self._client is not None:
            cluster = self._client.cluster
            self._client.close()
            if cluster is not None:
                cluster.close()
            self._client = None

    def iterate(self, items, desc: str):
        """``items`` with a progress bar (tqdm) when progress is on."""
        items = list(items)
        if not self.progress:
            return items
        from tqdm.auto import tqdm
        return tqdm(items, desc=f"[{self.name}] {desc}", unit="run", leave=True)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    return repr(x)


jsonable = _jsonable


def run_experiment(name: str, scale: str = "small", out: str | os.PathLike | None = None,
                   overrides: dict | None = None, progress: bool | None = None, jobs: int | None = 1,
                   scheduler: str | None = None) -> dict:
    """Run experiment ``name`` at ``scale`` into ``out`` (default ``results/experiments/<name>``).

    ``overrides``: ``{key: value}`` (strings are parsed like ``--set``). ``jobs``: worker processes of the
    experiment's sweeps (1, the default here: in this process; None: one per core); ``scheduler``: a Dask
    scheduler address to run them on instead. Returns the summary dict that is also
    written to ``out/summary.json``. Raises :class:`ExperimentError` for bad names, keys or values.
    """
    from . import get_experiment

    module = get_experiment(name)
    params = resolve_params(module, scale, overrides)
    out = Path(out if out is not None else os.path.join("results", "experiments", module.NAME))
    out.mkdir(parents=True, exist_ok=True)
    if progress is None:
        progress = sys.stderr.isatty()
    import torch

    old_threads = torch.get_num_threads()
    torch.set_num_threads(params["threads"])
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ExperimentError(f"--jobs {jobs!r} must be an integer >= 1")
    ctx = Context(name=module.NAME, scale=scale, params=params, out=out, progress=bool(progress), jobs=jobs,
                  scheduler=scheduler)
    t0 = time.perf_counter()
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        results = module.run(ctx)
    finally:
        ctx.close()
        torch.set_num_threads(old_threads)
    wall = time.perf_counter() - t0
    import pyrod

    summary = {
        "experiment": module.NAME, "title": module.TITLE, "paper": module.PAPER, "scale": scale,
        "params": params, "results": results, "notes": ctx.notes,
        "files": sorted(ctx.files) + ["summary.json"], "wall_time_s": round(wall, 1),
        "pyrod_version": pyrod.__version__, "torch_threads": params["threads"],
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    summary = _jsonable(summary)
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    return summary


# --------------------------------------------------------------------------------------------- plotting
def figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.2, height: float = 3.3, squeeze: bool = False,
           **kw):
    """A constrained-layout figure (Agg backend) and a 2-D array of axes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), constrained_layout=True,
                             squeeze=squeeze, **kw)
    return fig, axes


def threshold_line(ax, value: float, color="k", label: str | None = None, **kw):
    """A dashed horizontal line at a stability threshold."""
    if value is not None and math.isfinite(value):
        ax.axhline(value, color=color, ls="--", lw=1.0, label=label, **kw)


def colors(n: int, cmap: str = "viridis"):
    """``n`` colours spread over a colormap (the papers' one-colour-per-setting style)."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return [cm(x) for x in (np.linspace(0.05, 0.9, n) if n > 1 else [0.3])]


def savefig(ctx: Context, fig, filename: str, dpi: int = 110) -> Path:
    import matplotlib.pyplot as plt

    path = ctx.path(filename)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def finite(da, time_dim: str = "t"):
    """``(t, y)`` numpy arrays of the finite values of a 1-D DataArray."""
    t = np.asarray(da[time_dim].values, dtype=float)
    y = np.asarray(da.values, dtype=float)
    keep = np.isfinite(y) & np.isfinite(t)
    return t[keep], y[keep]


def fmt(x: float) -> str:
    """Short number for labels (3 significant digits)."""
    return f"{x:.3g}"


# --------------------------------------------------------------------------------------------- statistics
def eos_stats(ds, late_fraction: float = 0.25, skip: int = 10, level: float = 0.95) -> dict:
    """Edge-of-stability numbers of one run group (a Dataset with pyrod's standard variables).

    ``eos_onset``: first step ≥ ``skip`` with effective sharpness ≥ ``level`` (None if never; the first ``skip``
    steps are ignored because of bias-correction transients); ``late_ratio``: mean of λmax(P⁻¹H)/threshold over
    the last ``late_fraction`` of the run (the AEoS papers' equilibrium value, 1 = at the threshold);
    ``late_preconditioned_sharpness``, ``threshold``; raw sharpness λmax(H) at the onset and at the end and their
    ratio ``raw_sharpness_growth`` (> 1: still rising at the AEoS); final loss; ``stop_reason``.
    """
    from pyrod.analysis import late_mean

    es = ds["effective_sharpness"]
    t, v = finite(es)
    keep = t >= skip
    t, v = t[keep], v[keep]
    hit = np.flatnonzero(v >= level)
    onset = float(t[hit[0]]) if len(hit) else None
    thr_t, thr = finite(ds["threshold"])
    out = {
        "threshold": float(np.median(thr)) if len(thr) else math.nan,
        "eos_onset": onset,
        "late_ratio": late_mean(es, late_fraction),
        "late_ratio_median": late_mean(es, late_fraction, stat="median"),
        "late_preconditioned_sharpness": late_mean(ds["preconditioned_sharpness"], late_fraction),
        "max_ratio_after_skip": float(v.max()) if len(v) else math.nan,
    }
    ts, s = finite(ds["sharpness"])
    if len(s):
        out["raw_sharpness_start"] = float(s[0])
        out["raw_sharpness_end"] = late_mean(ds["sharpness"], 0.05)
        if onset is not None:
            i = int(np.searchsorted(ts, onset))
            s_on = float(s[min(i, len(s) - 1)])
            out["raw_sharpness_at_onset"] = s_on
            out["raw_sharpness_growth"] = out["raw_sharpness_end"] / s_on if s_on > 0 else math.nan
    tl, loss = finite(ds["loss"])
    out["final_loss"] = float(loss[-1]) if len(loss) else math.nan
    out["steps_completed"] = int(ds.attrs.get("steps_completed", len(tl)))
    out["stop_reason"] = str(ds.attrs.get("stop_reason", ""))
    out["diverged"] = out["stop_reason"].startswith("diverged")
    return out


def auto_ylim(ax, series, extra=(), skip: float = 10.0, pad: float = 1.6) -> None:
    """Log-axis limits from the values after step ``skip`` (early transients, e.g. Adam's bias-correction spike
    at step 0, would otherwise squash the plot) and the ``extra`` values (thresholds)."""
    vals = []
    for t, y in series:
        t, y = np.asarray(t, float), np.asarray(y, float)
        sel = (t >= skip) & np.isfinite(y) & (y > 0)
        vals.extend(y[sel].tolist())
    vals.extend(v for v in extra if v is not None and math.isfinite(v) and v > 0)
    if vals:
        ax.set_ylim(min(vals) / pad, max(vals) * pad)
