"""Checkout convenience: ``python -m experiments ...`` from the repository root runs
``pyrod.experiments`` (the installed package; also the console script ``pyrod-experiments``)."""
from pyrod.experiments import *  # noqa: F401,F403
from pyrod.experiments import __all__  # noqa: F401
