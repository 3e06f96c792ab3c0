"""The file layout shared by the writer (:mod:`pyrod.io.writer`), the resume copy (:mod:`pyrod.io.resume`) and the
readers (:mod:`pyrod.io.reader`): the reserved root attributes and the flat copies of the config, attributes stored as
JSON (and the node attribute ``pyrod_json_attrs`` naming them), HDF5 chunk shapes and fill values, the rules a new run
group's layout must follow (:func:`group_layout`), the writer's record of one run group, time stamps.

Design notes (tested facts):

* Every float variable has ``_FillValue = NaN`` (without it unwritten cells read as 9.97e36); integer
  variables get the netCDF default fill as an explicit ``_FillValue`` so xarray masks them to NaN.
* A variable has at most ONE unlimited dimension (its leading one): libnetcdf 4.10 returns zeros, not the
  fill value, when a variable with two unlimited dims is read beyond its own extent (verified here; see
  Unidata/netcdf-c#1567). So trailing dims are fixed; give a maximum size (e.g. ``eig: k_max``) and append
  shorter arrays: the rest stays NaN.
* netCDF attributes cannot hold bool, None, dict or nested/mixed lists. :meth:`RunWriter.set_attrs
  <pyrod.io.writer.RunWriter.set_attrs>` stores bools as 0/1 ints and dict/list/tuple/None as JSON strings, and
  records the JSON-encoded names in the node attr ``pyrod_json_attrs``, so :func:`~pyrod.io.reader.json_attr`
  decodes exactly those.
* zlib complevel 4; HDF5 chunks along the unlimited dim are at most ~1 MiB.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import netCDF4
import numpy as np

from ..schema import Var

_JSON_MARKER = "pyrod_json_attrs"
_RESERVED_ROOT = ("pyrod_version", "created", "Conventions", "pyrod_config", "pyrod_status", _JSON_MARKER)
_CHUNK_BYTES = 1 << 20  # target HDF5 chunk size
_BASE_ROOT = ("pyrod_version", "created", "Conventions", "pyrod_status", "history")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor, without importing torch
        return obj.detach().cpu().tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _dumps(value, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except TypeError as e:
        raise TypeError(f"{what}: cannot be stored as JSON ({e})") from None


def _attr_value(value) -> tuple[Any, bool]:
    """Python value -> (netCDF-storable value, is_json)."""
    if isinstance(value, (bool, np.bool_)):
        return int(value), False
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value, False
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.size > 0 and value.dtype.kind in "iuf":
        return value, False
    if value is None or isinstance(value, (dict, list, tuple, np.ndarray)) or hasattr(value, "detach"):
        return _dumps(value, "attribute value"), True
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be stored "
                    "(use str, int, float, bool, None, dict, list, tuple or a 1-D numeric array)")


def _chunksizes(trailing: tuple[int, ...], itemsize: int, rows: int, aligned: bool = True) -> tuple[int, ...]:
    """HDF5 chunk shape (r, *trailing) of at most ~_CHUNK_BYTES. ``aligned``: r is the largest divisor of
    ``rows`` that fits, so a flush of ``rows`` aligned rows fills whole HDF5 chunks and never rewrites one;
    else r = min(rows, fit)."""
    trailing = [max(1, int(n)) for n in trailing]
    while trailing and math.prod(trailing) * itemsize > _CHUNK_BYTES:
        i = int(np.argmax(trailing))
        trailing[i] = -(-trailing[i] // 2)
    cap = max(1, _CHUNK_BYTES // (math.prod(trailing) * itemsize))
    if not aligned:
        return (max(1, min(rows, cap)), *trailing)
    r = max(q for q in range(1, min(rows, cap) + 1) if rows % q == 0)
    return (r, *trailing)


def _fill_for(dtype: np.dtype):
    if dtype.kind == "f":
        return np.nan
    if dtype.kind in "iu":
        return netCDF4.default_fillvals[f"{dtype.kind}{dtype.itemsize}"]
    raise ValueError(f"dtype {dtype} not supported (use a float or integer NumPy code such as 'f8', 'i8')")


@dataclass
class _Group:
    """The writer's record of one run group: built by ``RunWriter.add_group``, or from a file by the resume copy."""
    nc: Any  # netCDF4.Group
    vars: dict[str, Var]
    dims: dict[str, int | None]
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)  # buffered rows along t
    times: list[float] = field(default_factory=list)
    n_t: int = 0  # rows on file
    n_snap: dict[str, int] = field(default_factory=dict)  # snapshot dim -> rows on file

    def leading(self, dim: str) -> list[Var]:
        return [v for v in self.vars.values() if v.dims and v.dims[0] == dim and v.name != dim]


def _flat_config(config: Mapping, root: Mapping, extra: Mapping) -> dict:
    """Flat, browsable root copies of the top-level scalar config items (bools as 0/1), skipping names that
    are reserved or already taken by ``root`` / ``extra`` attributes."""
    out = {}
    for k, v in config.items():
        if isinstance(k, str) and k not in root and k not in _RESERVED_ROOT and k not in extra \
                and isinstance(v, (str, int, float, bool, np.integer, np.floating, np.bool_)):
            out[k] = int(v) if isinstance(v, (bool, np.bool_)) else v
    return out


def group_layout(group: str, variables: list[Var], dims: dict[str, int | None] | None,
                 coords: Mapping[str, tuple] | None) -> tuple[dict, dict, dict, list]:
    """The layout of a new run group ``group`` (:meth:`RunWriter.add_group <pyrod.io.writer.RunWriter.add_group>`),
    checked: ``(dims, coord_over, fixed, snap_dims)``: every dim with ``"t"`` unlimited; the Vars that override the
    coordinate of a snapshot dim; ``{dim: (Var, values)}`` of the coordinates given for fixed dims; the unlimited
    snapshot dims. ``ValueError`` / ``TypeError`` for what the layout does not allow (a sized ``t``, an unlimited
    trailing dim, no long_name or units, an unsupported dtype, ...)."""
    dims = dict(dims or {})
    if "t" in dims and dims["t"] is not None:
        raise ValueError("dim 't' is always unlimited; do not give it a size")
    dims["t"] = None
    for d, n in dims.items():
        if n is not None and (not isinstance(n, (int, np.integer)) or n < 1):
            raise ValueError(f"dim {d!r}: size must be a positive int or None (unlimited), got {n!r}")
    names = [v.name for v in variables]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"group {group!r}: duplicate variable names {dup}")
    coord_over = {}
    for v in variables:
        if not isinstance(v, Var):
            raise TypeError(f"variables must be Var instances, got {type(v).__name__}")
        if v.name == "t":
            raise ValueError("'t' is the time coordinate and is created automatically")
        if not v.dims:
            raise ValueError(f"variable {v.name!r}: needs at least one dim")
        missing = [d for d in v.dims if d not in dims]
        if missing:
            raise ValueError(f"variable {v.name!r}: dims {missing} not declared in dims={dims}")
        if any(dims[d] is None for d in v.dims[1:]):
            raise ValueError(f"variable {v.name!r} {v.dims}: only the leading dim may be unlimited "
                             "(libnetcdf reads zeros beyond a multi-unlimited variable's extent); give "
                             "trailing dims a fixed maximum size and append shorter arrays")
        if not v.long_name or v.units is None:
            raise ValueError(f"variable {v.name!r}: long_name and units are required (units '1' if "
                             "dimensionless)")
        if v.name in dims:
            if dims[v.name] is None and v.dims == (v.name,):
                coord_over[v.name] = v
            else:
                raise ValueError(f"variable {v.name!r} has the name of a dim; only unlimited snapshot "
                                 "dims may be overridden this way, with dims=(name,)")
        _fill_for(np.dtype(v.dtype))  # validates dtype
    fixed = {}
    for d, (values, long_name, units) in (coords or {}).items():
        if dims.get(d) is None or d in {v.name for v in variables}:
            raise ValueError(f"coords[{d!r}]: {d!r} is not a fixed dim of group {group!r} without a variable")
        values = np.asarray(values)
        if values.shape != (dims[d],):
            raise ValueError(f"coords[{d!r}]: {values.shape[0] if values.ndim else 0} values for a dim of "
                             f"size {dims[d]}")
        fixed[d] = (Var(d, (d,), long_name, units, values.dtype.str[1:]), values)
    snap_dims = [d for d, n in dims.items() if n is None and d != "t"]
    return dims, coord_over, fixed, snap_dims
