"""What a run's variables are, independent of how they are written: :class:`Var` (name, dims, CF long name and
units, dtype) and the shared units. Runs and flows declare their variables with these; the NetCDF writer
(:mod:`pyrod.io.writer`) writes them. Stdlib only, so the maths never loads netCDF4."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Var", "TIME_UNITS", "PARAMETER_UNITS"]

#: units of the time coordinate ``t`` (one time unit = one optimizer step)
TIME_UNITS = "optimizer steps"
#: units of a distance or norm in parameter space (the model's parameters carry no physical unit of their own)
PARAMETER_UNITS = "parameter units (Euclidean norm in w-space)"


@dataclass
class Var:
    """A variable of a run group.

    ``dims``: the leading dim decides how it is written. ``"t"`` -> one row per ``RunWriter.append``;
    another unlimited dim (declared ``None`` in ``add_group(dims=...)``) -> one row per
    ``RunWriter.append_snapshot``; all dims fixed -> written once with ``RunWriter.write_static``
    (:mod:`pyrod.io.writer`). ``long_name`` and ``units`` (CF; ``"1"`` for dimensionless) are required. ``dtype``:
    NumPy code (``"f8"``, ``"f4"``, ``"i8"``, ...). ``attrs``: extra variable attributes (e.g. ``comment``).
    A Var named like an unlimited snapshot dim, with ``dims=(dim,)``, overrides that coordinate's metadata.
    """

    name: str
    dims: tuple[str, ...]
    long_name: str
    units: str
    dtype: str = "f8"
    attrs: dict = field(default_factory=dict)
