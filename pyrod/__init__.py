"""pyrod: discrete optimizers, stable, rod and central flows at the edge of stability.

Public API::

    prob = pyrod.problem(model="mlp", data="digits", ...)      # a Problem (flat-parameter view)
    opt  = pyrod.optimizers.Adam(lr=1e-3)                       # one definition per optimizer
    tree = pyrod.simulate(prob, opt, steps=..., runs=[...])     # xarray.DataTree, one child per run
    tree = pyrod.open("run.nc")                                 # the same tree, from the file
    pyrod.simulate(**pyrod.config_of("run.nc"))                 # reproduce a run

One time unit = one optimizer step everywhere.
"""
from __future__ import annotations

from ._version import __version__
from . import optimizers
from .problems import Problem, problem

__all__ = ["__version__", "optimizers", "Problem", "problem", "simulate", "open", "config_of"]


def __getattr__(name):  # lazy: keep `import pyrod` light (no xarray/netCDF4/juliacall until needed)
    if name == "simulate":
        from .simulation import simulate
        globals()["simulate"] = simulate
        return simulate
    if name in ("open", "config_of"):
        from . import output
        value = getattr(output, "open_tree" if name == "open" else "config_of")
        globals()[name] = value
        return value
    if name in ("spectra", "analysis", "flows", "integrate", "output", "plotting"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pyrod' has no attribute {name!r}")
