"""pyrod: discrete optimizers, stable, rod and central flows at the edge of stability.

Public API::

    prob = pyrod.problem(model="mlp", data="digits", ...)      # a Problem (flat-parameter view)
    opt  = pyrod.optimizers.Adam(lr=1e-3)                       # one definition per optimizer
    tree = pyrod.simulate(prob, opt, steps=..., runs=[...])     # xarray.DataTree, one child per run
    tree = pyrod.open("run.nc")                                 # the same tree, from the file
    pyrod.simulate(**pyrod.config_of("run.nc"))                 # reproduce a run
    pyrod.resume("run.nc", steps=2000)                          # continue it from its checkpoint
    spec = pyrod.spec_of("run.nc")                              # the run as typed data (pyrod.RunSpec)

One time unit = one optimizer step everywhere.
"""
from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "optimizers", "Problem", "problem", "simulate", "resume", "open", "config_of", "spec_of",
           "RunSpec", "spec", "sweep", "open_sweep", "RunKind", "register_run_kind"]


def __getattr__(name):  # lazy: `import pyrod` loads no torch, xarray, netCDF4, dask or juliacall until needed
    if name in ("problem", "Problem"):
        from . import problems
        value = getattr(problems, name)
        globals()[name] = value
        return value
    if name in ("simulate", "resume", "config_of", "spec_of", "RunInterrupted"):
        from . import simulation
        value = getattr(simulation, name)
        globals()[name] = value
        return value
    if name in ("RunKind", "register_run_kind"):   # run kinds of your own (pyrod.run_kinds)
        from . import run_kinds
        value = getattr(run_kinds, name)
        globals()[name] = value
        return value
    if name == "RunSpec":
        from .spec import RunSpec
        globals()["RunSpec"] = RunSpec
        return RunSpec
    if name in ("sweep", "open_sweep"):   # pyrod.sweep is a module that is also callable: pyrod.sweep(...)
        import importlib
        mod = importlib.import_module(".sweep", __name__)
        value = mod if name == "sweep" else mod.open_sweep
        globals()[name] = value
        return value
    if name == "open":
        from .io.reader import open_tree
        globals()["open"] = open_tree
        return open_tree
    if name in ("optimizers", "spec", "checkpoint", "spectra", "analysis", "flows", "integrate", "output", "plotting",
                "threads", "experiments"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyrod' has no attribute {name!r}")
