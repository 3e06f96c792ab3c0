"""Copying a pyrod file up to a cut, for :meth:`RunWriter.resume <pyrod.io.writer.RunWriter.resume>`.

The resumed writer takes the lock, copies the rows of each group with ``t < cut[group]`` (and snapshot rows whose
coordinate is ``< cut[group]``) with every dimension, variable, attribute and dtype unchanged into a temporary
file, ``os.replace``-s it onto the path, and continues as if the original writer had never stopped. The old file
stays in place until that replace. Rows an interrupted flush left unreadable are not copied (with a warning).
"""
from __future__ import annotations

import errno
import json
import math
import warnings
from typing import Mapping

import numpy as np

from .._version import __version__
from ..schema import Var
from .layout import _BASE_ROOT, _JSON_MARKER, _chunksizes, _flat_config, _Group, _utc_now
from .lock import os_error
from .reader import DamagedFileError


def cut_times(cut) -> dict[str, float]:
    """``cut`` of :meth:`RunWriter.resume <pyrod.io.writer.RunWriter.resume>` checked: group -> time (optimizer
    steps) as floats; ``TypeError`` / ``ValueError`` for a non-mapping, a non-number or NaN."""
    if not isinstance(cut, Mapping):
        raise TypeError(f"cut must be a mapping group -> time (optimizer steps), got {type(cut).__name__}")
    cuts = {}
    for name, c in cut.items():
        try:
            c = float(c)
        except (TypeError, ValueError):
            raise TypeError(f"cut[{name!r}] must be a time in optimizer steps, got {c!r}") from None
        if math.isnan(c):
            raise ValueError(f"cut[{name!r}] is NaN")
        cuts[name] = c
    return cuts


def file_chunk(src) -> int:
    """The chunk of the writer that wrote the open file ``src``: the HDF5 chunk length of ``t`` (50 if none)."""
    lengths = [g.variables["t"].chunking() for g in src.groups.values() if "t" in g.variables]
    return next((c[0] for c in lengths if isinstance(c, list)), 50)


def resumed_root_attrs(ra: dict, config, config_json, extra: dict, cuts) -> dict:
    """The root attributes of the resumed file, from ``ra`` (the old file's raw root attributes without
    ``pyrod_json_attrs``; changed in place): ``pyrod_status`` "running"; with ``config``, ``pyrod_config`` =
    ``config_json`` and its flat copies instead of the old ones; a "resumed ..." line added to ``history`` (the
    history given in ``extra`` replaces the old one; it is popped from ``extra``)."""
    ra["pyrod_status"] = "running"
    if config is not None:
        try:
            old = json.loads(ra.get("pyrod_config", "{}"))
        except ValueError:
            old = {}
        for k, v in _flat_config(old if isinstance(old, dict) else {}, {}, {}).items():
            if k in ra and k not in _BASE_ROOT and isinstance(ra[k], str) == isinstance(v, str) \
                    and np.array_equal(np.asarray(ra[k]), np.asarray(v)):
                del ra[k]  # a flat copy of the old config
        ra["pyrod_config"] = config_json
        ra.update(_flat_config(config, ra, extra))
    history = extra.pop("history", ra.get("history", ""))
    # names pyrod.output.RunWriter.resume, as files resumed before the move to pyrod.io do
    line = (f"{_utc_now()}: resumed by pyrod {__version__} (pyrod.output.RunWriter.resume, "
            f"cut={json.dumps(cuts, sort_keys=True)})")
    ra["history"] = f"{history}\n{line}" if history else line
    return ra


def copy_up_to_cut(src, dst, cuts: dict[str, float], chunk: int, shown: str,
                   expect_rows=None) -> tuple[dict[str, _Group], dict[str, set[str]]]:
    """Copy the open pyrod file ``src`` into the new, open file ``dst``: the root's dims and variables (not its
    attributes: :func:`resumed_root_attrs` makes those), and every group with its rows along an unlimited dim whose
    coordinate is ``< cuts[group]`` (groups not named: whole), the ``t``-variables re-chunked to ``chunk`` rows.
    Returns the writer's records of the groups and the names of each group's JSON-encoded attributes.
    ``expect_rows``: group -> rows along ``t`` that must survive the cut; fewer raise
    :class:`~pyrod.io.reader.DamagedFileError`."""
    _copy_node(src, dst, math.inf, None, shown, whole=False)
    groups, json_names = {}, {}
    for name, sg in src.groups.items():
        dg = dst.createGroup(name)
        groups[name] = _copy_node(sg, dg, cuts.get(name, math.inf), chunk, shown)
        marker = sg.getncattr(_JSON_MARKER) if _JSON_MARKER in sg.ncattrs() else "[]"
        json_names[name] = set(json.loads(marker))
    short = {g: (groups[g].n_t, int(n)) for g, n in (expect_rows or {}).items()
             if g in groups and groups[g].n_t < int(n)}
    if short:
        raise os_error(DamagedFileError, errno.EIO, f"cannot resume {shown}: rows written before its "
                       f"checkpoint are unreadable (group: rows readable / rows expected: {short}); the "
                       f"file is damaged and left as it was; pyrod.open reads what is left of it")
    return groups, json_names


def _read_rows(variables, n: int) -> tuple[int, dict[str, np.ndarray]]:
    """Raw rows ``[:n]`` of ``variables`` (all along one unlimited dim); on an unreadable HDF5 chunk (a writer
    killed in a flush) step back one chunk at a time until all read."""
    steps = [v.chunking()[0] for v in variables if isinstance(v.chunking(), list)]
    step = max(1, min(steps, default=1))
    while True:
        try:
            return n, {v.name: np.asarray(v[:n]) for v in variables}
        except (RuntimeError, OSError):
            if n == 0:
                raise
            n = ((n - 1) // step) * step


def _copy_node(src, dst, cut: float, chunk: int | None, shown: str, whole: bool = True) -> _Group:
    """Copy dims, variables (raw values; along an unlimited dim only the rows whose coordinate is ``< cut``)
    of the netCDF group ``src`` into the empty group ``dst``, and (``whole``) its attributes and subgroups,
    recursively. ``chunk``: re-chunk variables along ``t`` to ``chunk`` rows (None: keep the HDF5 chunks).
    Returns the writer's record of ``dst``."""
    for v in src.variables.values():
        v.set_auto_maskandscale(False)
        if not isinstance(v.dtype, np.dtype) or v.dtype.kind not in "iuf":
            raise ValueError(f"{shown}: variable {v.name!r} of type {v.dtype} cannot be resumed (numeric only)")
        if any(src.dimensions[d].isunlimited() for d in v.dimensions[1:]):
            raise ValueError(f"{shown}: variable {v.name!r} {v.dimensions}: unlimited dim not leading")
    kept, rows = {}, {}
    for d, dim in src.dimensions.items():
        if not dim.isunlimited():
            continue
        along = [v for v in src.variables.values() if v.dimensions and v.dimensions[0] == d]
        want = n_all = len(dim)
        lost = False
        coord = src.variables.get(d)
        if coord is not None and coord.dimensions == (d,) and coord.dtype.kind == "f":
            n_read, c = _read_rows([coord], n_all)
            stop = ~(c[d] < cut)  # NaN (an interrupted flush) stops too
            want = int(np.argmax(stop)) if stop.any() else n_read
            lost = not stop.any() and n_read < n_all  # unreadable rows, maybe before the cut
        n, rows[d] = _read_rows(along, want)
        if lost or n < want:
            warnings.warn(f"{shown}: group {src.path!r}: unreadable trailing rows along {d!r} not copied (a "
                          f"writer was killed during a flush); kept {n}", RuntimeWarning, stacklevel=5)
        kept[d] = n
    for d, dim in src.dimensions.items():
        dst.createDimension(d, None if dim.isunlimited() else len(dim))
    dims = {d: (None if dim.isunlimited() else len(dim)) for d, dim in src.dimensions.items()}
    record = _Group(nc=dst, vars={}, dims=dims, n_t=kept.get("t", 0),
                    n_snap={d: n for d, n in kept.items() if d != "t"})
    for v in src.variables.values():
        f = v.filters() or {}
        comp = [c for c in ("zlib", "zstd", "bzip2", "szip") if f.get(c)]
        if any(k.startswith("blosc") and f.get(k) for k in f):
            raise ValueError(f"{shown}: variable {v.name!r}: blosc compression cannot be resumed")
        chunks = v.chunking()
        if chunk is not None and v.dimensions and v.dimensions[0] == "t":
            chunks = list(_chunksizes(v.shape[1:], v.dtype.itemsize, chunk))
        attrs = {k: v.getncattr(k) for k in v.ncattrs()}
        fill = attrs.pop("_FillValue", None)
        out = dst.createVariable(v.name, v.dtype, v.dimensions, compression=comp[0] if comp else None,
                                 complevel=f.get("complevel") or 4, shuffle=bool(f.get("shuffle")),
                                 fletcher32=bool(f.get("fletcher32")), endian=v.endian(),
                                 chunksizes=None if chunks == "contiguous" else chunks,
                                 contiguous=chunks == "contiguous", fill_value=fill)
        out.set_auto_maskandscale(False)
        for k, val in attrs.items():
            out.setncattr(k, val)
        lead = v.dimensions[0] if v.dimensions else None
        if lead in rows:
            a = rows[lead][v.name]
            if a.shape[0]:
                out[:a.shape[0]] = a
        else:
            out[...] = v[...]
        extra = {k: val for k, val in attrs.items() if k not in ("long_name", "units")}
        record.vars[v.name] = Var(v.name, tuple(v.dimensions), str(attrs.get("long_name", "")),
                                  str(attrs.get("units", "")), f"{v.dtype.kind}{v.dtype.itemsize}", extra)
    if whole:
        for k in src.ncattrs():
            dst.setncattr(k, src.getncattr(k))
        for name, sg in src.groups.items():
            _copy_node(sg, dst.createGroup(name), cut, chunk, shown)
    return record
