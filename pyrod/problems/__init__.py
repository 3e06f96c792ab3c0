"""Problems: models + data + loss as a flat-parameter functional view (see :mod:`.problem`)."""
from __future__ import annotations

from .problem import Block, Problem, make_loss, resolve_device, resolve_dtype
from .registry import DATASETS, MODELS, TOYS, problem

__all__ = ["Problem", "Block", "problem", "make_loss", "resolve_device", "resolve_dtype", "MODELS", "DATASETS", "TOYS"]
