"""pyrod experiments: the headline figures of the papers pyrod reproduces (pyrod.papers), from the command line.

    python -m pyrod experiments list
    python -m pyrod experiments run NAME [--scale tiny|small|paper] [--out DIR] [--set key=value ...]

Each experiment writes NetCDF file(s) (one per simulation, pyrod's schema), PNG plots and ``summary.json``
(its key numbers, computed from the NetCDF files). From Python::

    from pyrod.experiments import run_experiment
    summary = run_experiment("aeos", scale="tiny", out="results/aeos", overrides={"steps": "200"})
"""
from __future__ import annotations

import importlib

__all__ = ["EXPERIMENTS", "get_experiment", "run_experiment", "ExperimentError"]

#: CLI name -> module (inside this package), in the order `list` shows them
EXPERIMENTS = {
    "aeos": "aeos",
    "aeos-optimizers": "aeos_optimizers",
    "frozen-adam": "frozen_adam",
    "rod-tracking": "rod_tracking",
    "rod-adam-map": "rod_adam_map",
    "central-flow": "central_flow",
    "muon-curvature": "muon_curvature",
    "muon-zipf": "muon_zipf",
    "nds-quadratic": "nds_quadratic",
}


def get_experiment(name: str):
    """The experiment module for ``name`` (``-`` or ``_`` both accepted); ExperimentError when unknown."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in EXPERIMENTS:
        from .common import ExperimentError

        raise ExperimentError(f"unknown experiment {name!r}; valid names: {', '.join(EXPERIMENTS)} "
                              f"(python -m pyrod experiments list)")
    return importlib.import_module(f".{EXPERIMENTS[key]}", __name__)


def __getattr__(name):  # lazy: `python -m pyrod experiments --help` answers before numpy and torch are loaded
    if name in ("run_experiment", "ExperimentError"):
        from . import common
        return getattr(common, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
