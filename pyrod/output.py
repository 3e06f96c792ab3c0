"""Incremental, crash-safe NetCDF4 output: one file, one group per run, and the readers.

Layout (docs/architecture.md, "Output schema")::

    /                      root attrs: pyrod_version, created, Conventions="CF-1.11", history, pyrod_status,
                           pyrod_config (JSON of the full config) + flat copies of top-level scalar config items
    /<run>                 one group per run ("discrete", "midpoint", "stable", "rod", "central", ...)
        t(t)               float64, unlimited, long_name "time", units "optimizer steps", axis "T"
        loss(t), eigs(t, eig), ...            rows appended with RunWriter.append (NaN where not measured)
        t_snap(t_snap), w(t_snap, param)      optional snapshot dims appended with RunWriter.append_snapshot
        w0(param)                             optional static variables written once with RunWriter.write_static

Writing::

    with RunWriter("run.nc", config=cfg) as out:
        out.add_group("discrete", [Var("loss", ("t",), "training loss", "1"),
                                   Var("eigs", ("t", "eig"), "top Hessian eigenvalues", "1")],
                      dims={"eig": 3})
        for k in range(steps):
            out.append("discrete", k, {"loss": loss, "eigs": eigs})   # floats, arrays or torch tensors
        out.set_attrs("discrete", {"events": [ev.as_dict() for ev in events]})

    tree = open_tree("run.nc")          # xarray.DataTree, in memory, file closed
    cfg = config_of("run.nc")           # dict: pyrod.simulate(**cfg) reproduces the run
    events = json_attr(tree["discrete"], "events")

Crash safety (tested in tests/test_output.py by SIGKILL of a writing process): rows are buffered in memory
and written whenever a group's row count reaches a multiple of ``chunk``, each write followed by ``sync()``
(HDF5 flush). A killed process leaves a valid file holding every synced chunk (whole chunks, consecutive
``t``, exact data) and nothing of the unsynced buffer; root attr ``pyrod_status`` stays ``"running"``
(``"complete"`` after :meth:`RunWriter.close`, ``"failed: ..."`` when the ``with`` block raised).
Metadata (root/group attrs, add_group) is synced at once.

Why the HDF5 chunks of ``t``-variables hold exactly ``chunk`` rows (or a divisor, for wide rows): a flush
then only ever writes *new* HDF5 chunks and never rewrites a synced one. Measured with random-time SIGKILLs
(most land inside a flush, which takes ~96% of the writer's time in that test):

* 4096-row HDF5 chunks, re-compressed and rewritten by every flush: 10 of 20 kills left *synced* rows
  unreadable ("NetCDF: HDF error"; HDF5 moves a rewritten compressed chunk and may reuse the freed space
  before the chunk index on disk is updated).
* aligned chunks: in 550 kills no synced row was lost or wrong; in 3 of them the chunk being written was
  unreadable: :func:`open_tree` then drops that trailing chunk with a warning (``_salvage``).
* aligned, but ``flush()`` every 7 rows (chunk 10): 18 of 60 kills lost synced rows of the partial chunk
  being rewritten, 1 of them silently wrong values. So call :meth:`flush` mid-run only when needed: it
  writes a partial HDF5 chunk that the next flush rewrites once (the next automatic flush re-aligns).

Within a flush the ``t`` coordinate is written last; trailing rows with ``t`` = NaN (an interrupted flush)
are dropped by :func:`open_tree` with a warning.

Design notes (tested facts, /work/shared/science/ecosystem.md §5):

* Every float variable has ``_FillValue = NaN`` (without it unwritten cells read as 9.97e36); integer
  variables get the netCDF default fill as an explicit ``_FillValue`` so xarray masks them to NaN.
* A variable has at most ONE unlimited dimension (its leading one): libnetcdf 4.10 returns zeros, not the
  fill value, when a variable with two unlimited dims is read beyond its own extent (verified here; see
  Unidata/netcdf-c#1567). So trailing dims are fixed; give a maximum size (e.g. ``eig: k_max``) and append
  shorter arrays: the rest stays NaN.
* netCDF attributes cannot hold bool, None, dict or nested/mixed lists. :meth:`RunWriter.set_attrs` stores
  bools as 0/1 ints and dict/list/tuple/None as JSON strings, and records the JSON-encoded names in the
  node attr ``pyrod_json_attrs``, so :func:`json_attr` decodes exactly those.
* zlib complevel 4; HDF5 chunks along the unlimited dim are at most ~1 MiB.
* HDF5 locks the file while a writer has it open: read it (open_tree) after close or after the writer died.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import netCDF4
import numpy as np

from ._version import __version__

__all__ = ["Var", "RunWriter", "open_tree", "config_of", "json_attr", "TIME_UNITS"]

TIME_UNITS = "optimizer steps"
_JSON_MARKER = "pyrod_json_attrs"
_RESERVED_ROOT = ("pyrod_version", "created", "Conventions", "pyrod_config", "pyrod_status", _JSON_MARKER)
_CHUNK_BYTES = 1 << 20  # target HDF5 chunk size


@dataclass
class Var:
    """A variable of a run group.

    ``dims``: the leading dim decides how it is written. ``"t"`` -> one row per :meth:`RunWriter.append`;
    another unlimited dim (declared ``None`` in ``add_group(dims=...)``) -> one row per
    :meth:`RunWriter.append_snapshot`; all dims fixed -> written once with :meth:`RunWriter.write_static`.
    ``long_name`` and ``units`` (CF; ``"1"`` for dimensionless) are required. ``dtype``: NumPy code
    (``"f8"``, ``"f4"``, ``"i8"``, ...). ``attrs``: extra variable attributes (e.g. ``comment``).
    A Var named like an unlimited snapshot dim, with ``dims=(dim,)``, overrides that coordinate's metadata.
    """

    name: str
    dims: tuple[str, ...]
    long_name: str
    units: str
    dtype: str = "f8"
    attrs: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers
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


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu()
        try:
            return np.asarray(x.numpy())
        except TypeError:  # bfloat16 and friends
            return np.asarray(x.double().numpy())
    return np.asarray(x)


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
    nc: Any  # netCDF4.Group
    vars: dict[str, Var]
    dims: dict[str, int | None]
    rows: list[dict[str, np.ndarray]] = field(default_factory=list)  # buffered rows along t
    times: list[float] = field(default_factory=list)
    n_t: int = 0  # rows on file
    n_snap: dict[str, int] = field(default_factory=dict)  # snapshot dim -> rows on file

    def leading(self, dim: str) -> list[Var]:
        return [v for v in self.vars.values() if v.dims and v.dims[0] == dim and v.name != dim]


# --------------------------------------------------------------------------------------------- writer
class RunWriter:
    """Incremental writer of one NetCDF4 file with one group per run (see the module docstring).

    path : the file; ``FileExistsError`` if it exists and ``overwrite`` is False. Parent dirs are created.
    config : the full run configuration; stored as root attr ``pyrod_config = json.dumps(config,
        sort_keys=True)`` (NumPy scalars/arrays and tensors become numbers/lists), plus flat copies of its
        top-level str/int/float/bool items (bools as 0/1) unless they clash with a reserved root attr.
    attrs : extra root attributes (converted as in :meth:`set_attrs`); a given ``history`` is prepended
        to pyrod's history line.
    chunk : rows per group between writes+syncs: at most this many rows are lost in a crash. Also the
        HDF5 chunk length along ``t`` (for slow rows, e.g. central flows, pick a small chunk).
    """

    def __init__(self, path, *, config: dict, attrs: dict | None = None, overwrite: bool = False,
                 chunk: int = 50):
        if int(chunk) < 1:
            raise ValueError(f"chunk must be a positive number of rows, got {chunk!r}")
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self.path = Path(path)
        self.chunk = int(chunk)
        self._groups: dict[str, _Group] = {}
        self._json_names: dict[str | None, set[str]] = {None: set()}
        self._closed = True
        config_json = _dumps(dict(config), "config")  # fail before touching the file
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._nc = netCDF4.Dataset(self.path, "w", format="NETCDF4", clobber=bool(overwrite))
        except OSError as e:
            if not overwrite and self.path.exists():
                raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it") from e
            raise
        self._closed = False
        try:
            created = _utc_now()
            root = {"pyrod_version": __version__, "created": created, "Conventions": "CF-1.11",
                    "pyrod_status": "running"}
            extra = dict(attrs or {})
            bad = sorted(set(extra) & set(_RESERVED_ROOT))
            if bad:
                raise ValueError(f"root attrs {bad} are reserved (set by RunWriter)")
            history = f"{created}: written by pyrod {__version__} (pyrod.output.RunWriter)"
            if "history" in extra:
                history = f"{extra.pop('history')}\n{history}"
            root["history"] = history
            for k, v in config.items():  # flat, browsable copies of scalar config items
                if isinstance(k, str) and k not in root and k not in _RESERVED_ROOT and k not in extra \
                        and isinstance(v, (str, int, float, bool, np.integer, np.floating, np.bool_)):
                    root[k] = int(v) if isinstance(v, (bool, np.bool_)) else v
            self._nc.setncatts(root)
            self._nc.setncattr("pyrod_config", config_json)
            self._json_names[None].add("pyrod_config")
            self._set_attrs_nosync(self._nc, None, extra)
            self._write_marker(self._nc, None)
            self._nc.sync()
        except BaseException:
            self._nc.close()
            self._closed = True
            raise

    # ------------------------------------------------------------------ structure
    def add_group(self, group: str, variables: list[Var], *, dims: dict[str, int | None] | None = None,
                  attrs: dict | None = None) -> None:
        """Create run group ``group`` with ``variables``.

        ``dims``: fixed sizes (``{"eig": k, "param": d}``) or ``None`` for an unlimited snapshot dim
        (``{"t_snap": None}``). ``"t"`` (unlimited float64 coordinate, long_name "time", units "optimizer
        steps", axis "T") is always created and must not be given a size. Snapshot dims get a float64
        coordinate variable (default long_name "time of snapshot", units "optimizer steps"; declare a Var
        with the dim's name to override). Every variable gets long_name, units and a NaN (floats) or
        default (ints) ``_FillValue``; zlib complevel 4.
        """
        self._check_open()
        if not group or "/" in group or group in self._groups:
            raise ValueError(f"group name {group!r} is empty, contains '/', or already exists")
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
        snap_dims = [d for d, n in dims.items() if n is None and d != "t"]

        g = self._nc.createGroup(group)
        for d, n in dims.items():
            g.createDimension(d, n)
        state = _Group(nc=g, vars={}, dims=dims)
        coords = [Var("t", ("t",), "time", TIME_UNITS, "f8", {"axis": "T"})]
        coords += [coord_over.get(d, Var(d, (d,), "time of snapshot", TIME_UNITS, "f8")) for d in snap_dims]
        for v in coords + [v for v in variables if v.name not in coord_over]:
            dt = np.dtype(v.dtype)
            shape = tuple(dims[d] if dims[d] is not None else 0 for d in v.dims)
            if v.dims[0] == "t":  # HDF5 chunks = writer chunks: synced chunks are never rewritten
                chunks = _chunksizes(shape[1:], dt.itemsize, self.chunk)
            elif dims[v.dims[0]] is None:  # snapshots: one HDF5 chunk (or more) per snapshot
                chunks = _chunksizes(shape[1:], dt.itemsize, 1)
            else:  # static
                chunks = _chunksizes(shape[1:], dt.itemsize, shape[0], aligned=False)
            var = g.createVariable(v.name, dt, v.dims, zlib=True, complevel=4, chunksizes=chunks,
                                   fill_value=_fill_for(dt))
            var.setncatts({"long_name": v.long_name, "units": v.units})
            self._set_attrs_nosync(var, None, dict(v.attrs), marker=False)
            state.vars[v.name] = v
        state.n_snap = {d: 0 for d in snap_dims}
        self._groups[group] = state
        self._json_names[group] = set()
        if attrs:
            self._set_attrs_nosync(g, group, attrs)
        self._nc.sync()

    # ------------------------------------------------------------------ data
    def append(self, group: str, t: float, values: Mapping[str, Any]) -> None:
        """Buffer one row at time ``t`` (optimizer steps) of the ``t``-variables of ``group``.

        ``values``: name -> float / array / torch tensor (copied now). Variables left out stay NaN in
        this row; arrays may be shorter than a fixed dim (the rest stays NaN). Every ``chunk`` buffered rows
        of the group are written and synced.
        """
        g = self._group(group)
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"t must be finite, got {t}")
        row = {}
        for name, x in values.items():
            v = g.vars.get(name)
            if v is None or v.dims[0] != "t":
                known = sorted(n for n, u in g.vars.items() if u.dims[0] == "t" and n != "t")
                raise KeyError(f"group {group!r}: {name!r} is not a variable along 't' (known: {known})")
            row[name] = self._value(group, v, x, g.dims, leading=True)
        g.rows.append(row)
        g.times.append(t)
        if (g.n_t + len(g.rows)) % self.chunk == 0:  # at a chunk boundary (re-aligns after a flush())
            self._flush_group(g)
            self._sync()

    def append_snapshot(self, group: str, dim: str, coord_value: float, values: Mapping[str, Any]) -> int:
        """Write one row along the unlimited snapshot dim ``dim`` (e.g. ``"t_snap"``) at once, and sync.

        ``coord_value`` is the coordinate (e.g. the time of the snapshot in optimizer steps); ``values``
        holds the variables whose leading dim is ``dim`` (e.g. ``w (t_snap, param)``), missing ones stay
        NaN. The coordinate is written last (an interrupted write leaves NaN, which open_tree drops).
        Snapshots are written immediately (no buffering): they are rare and large. Returns the row index.
        """
        g = self._group(group)
        if dim not in g.n_snap:
            raise KeyError(f"group {group!r}: {dim!r} is not an unlimited snapshot dim "
                           f"(snapshot dims: {sorted(g.n_snap)})")
        c = float(coord_value)
        if not math.isfinite(c):
            raise ValueError(f"coord_value must be finite, got {c}")
        arrays = {}
        for name, x in values.items():
            v = g.vars.get(name)
            if v is None or v.dims[0] != dim or name == dim:
                known = sorted(v.name for v in g.leading(dim))
                raise KeyError(f"group {group!r}: {name!r} is not a variable along {dim!r} (known: {known})")
            arrays[name] = self._value(group, v, x, g.dims, leading=True)
        i = g.n_snap[dim]
        for name, a in arrays.items():
            g.nc[name][(i, *(slice(0, n) for n in a.shape))] = a
        g.nc[dim][i] = c
        g.n_snap[dim] = i + 1
        self._sync()
        return i

    def write_static(self, group: str, name: str, values: Any) -> None:
        """Write a variable whose dims are all fixed (e.g. ``w0 (param,)``) at once, and sync."""
        g = self._group(group)
        v = g.vars.get(name)
        if v is None or any(g.dims[d] is None for d in v.dims):
            known = sorted(n for n, u in g.vars.items() if all(g.dims[d] is not None for d in u.dims))
            raise KeyError(f"group {group!r}: {name!r} is not a static (all fixed dims) variable "
                           f"(known: {known})")
        a = self._value(group, v, values, g.dims, leading=False)
        g.nc[name][tuple(slice(0, n) for n in a.shape)] = a
        self._sync()

    def n_written(self, group: str, dim: str = "t") -> int:
        """Rows of ``group`` along ``dim`` already written and synced to the file (excludes the buffer)."""
        g = self._group(group)
        return g.n_t if dim == "t" else g.n_snap[dim]

    # ------------------------------------------------------------------ attributes
    def set_attrs(self, group: str | None, attrs: Mapping[str, Any]) -> None:
        """Set attributes of ``group`` (``None``: the root) and sync.

        str/int/float and 1-D numeric arrays are stored as they are, bools as 0/1, and None, dict, list,
        tuple as JSON strings (decode with :func:`json_attr`).
        """
        self._check_open()
        if group is None:
            bad = sorted(set(attrs) & set(_RESERVED_ROOT))
            if bad:
                raise ValueError(f"root attrs {bad} are reserved (set by RunWriter)")
            node = self._nc
        else:
            node = self._group(group).nc
        self._set_attrs_nosync(node, group, attrs)
        self._sync()

    def _set_attrs_nosync(self, node, group, attrs: Mapping[str, Any], marker: bool = True) -> None:
        names = self._json_names.setdefault(group, set())
        for k, val in attrs.items():
            if not isinstance(k, str) or not k or k == _JSON_MARKER:
                raise ValueError(f"invalid attribute name {k!r}")
            stored, is_json = _attr_value(val)
            node.setncattr(k, stored)
            if marker:  # variable attrs (marker=False) may be JSON text too, but are not listed
                (names.add if is_json else names.discard)(k)
        if marker and attrs:
            self._write_marker(node, group)

    def _write_marker(self, node, group) -> None:
        names = sorted(self._json_names.get(group, ()))
        if names:
            node.setncattr(_JSON_MARKER, json.dumps(names))
        elif _JSON_MARKER in node.ncattrs():
            node.delncattr(_JSON_MARKER)

    # ------------------------------------------------------------------ flushing / closing
    def flush(self) -> None:
        """Write all buffered rows of all groups and ``sync()`` the file.

        Rarely needed: automatic flushes and :meth:`close` cover normal use. Mid-run, rows not on a
        ``chunk`` boundary go into a partial HDF5 chunk that the next flush rewrites, and a crash during that
        rewrite can lose those rows (see the module docstring); automatic flushes never rewrite.
        """
        self._check_open()
        for g in self._groups.values():
            self._flush_group(g)
        self._sync()

    def close(self, status: str = "complete") -> None:
        """Flush, set root attr ``pyrod_status`` (default ``"complete"``), close. Idempotent."""
        if self._closed:
            return
        try:
            try:
                for g in self._groups.values():
                    self._flush_group(g)
            finally:
                self._nc.setncattr("pyrod_status", status)
        finally:
            self._closed = True
            self._nc.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep everything appended before the error; the file stays valid
            self.close(status=f"failed: {exc_type.__name__}: {exc}"[:1000])

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"RunWriter({self.path}) is closed")

    def _group(self, group: str) -> _Group:
        self._check_open()
        try:
            return self._groups[group]
        except KeyError:
            raise KeyError(f"no group {group!r} (groups: {sorted(self._groups)}); call add_group first") \
                from None

    def _sync(self) -> None:
        self._nc.sync()

    @staticmethod
    def _value(group, v: Var, x, dims, leading: bool) -> np.ndarray:
        a = _to_numpy(x)
        shape = tuple(dims[d] for d in (v.dims[1:] if leading else v.dims))
        if a.ndim != len(shape) and a.size == 1 and not shape:
            a = a.reshape(())
        if a.ndim != len(shape) or any(m > n for m, n in zip(a.shape, shape)):
            raise ValueError(f"group {group!r}, variable {v.name!r}: got shape {a.shape}, expected "
                             f"{shape} (or smaller along each axis) for dims {v.dims}")
        dt = np.dtype(v.dtype)
        if dt.kind in "iu" and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(f"group {group!r}, variable {v.name!r}: non-finite value for integer dtype")
        return np.array(a, dtype=dt, copy=True)

    def _flush_group(self, g: _Group) -> None:
        if not g.rows:
            return
        n, r0 = len(g.rows), g.n_t
        for name, v in g.vars.items():
            if name == "t" or v.dims[0] != "t":
                continue
            idx = [i for i, row in enumerate(g.rows) if name in row]
            if not idx:
                continue  # stays _FillValue (read back as NaN)
            dt = np.dtype(v.dtype)
            trailing = tuple(g.dims[d] for d in v.dims[1:])
            block = np.full((n, *trailing), _fill_for(dt), dtype=dt)
            for i in idx:
                a = g.rows[i][name]
                block[(i, *(slice(0, m) for m in a.shape))] = a
            g.nc[name][r0:r0 + n] = block
        g.nc["t"][r0:r0 + n] = np.asarray(g.times, dtype="f8")  # last: the commit marker of this chunk
        g.n_t = r0 + n
        g.rows.clear()
        g.times.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RunWriter({str(self.path)!r}, groups={sorted(self._groups)}, chunk={self.chunk}, {state})"


# --------------------------------------------------------------------------------------------- readers
def open_tree(path) -> "xarray.DataTree":  # noqa: F821
    """Load the whole file into memory as an ``xarray.DataTree`` (one child per run group) and close it.

    Root attrs include ``pyrod_config`` (JSON string; see :func:`config_of`) and ``pyrod_status``.
    JSON-encoded attrs stay strings; decode them with :func:`json_attr`. After a crash inside a flush, the
    rows of that flush are dropped with a ``RuntimeWarning``: trailing rows whose ``t`` (or snapshot
    coordinate) is NaN, and trailing HDF5 chunks that cannot be read ("NetCDF: HDF error").
    Fails (HDF5 file lock) while a live writer has the file open.
    """
    import xarray as xr

    path = os.fspath(path)
    try:
        tree = xr.load_datatree(path, engine="netcdf4")
    except (RuntimeError, OSError) as err:  # "NetCDF: HDF error": a chunk of an interrupted flush
        if not os.path.exists(path) or "HDF error" not in str(err):
            raise
        try:
            tree = _salvage(path)
        except Exception as err2:
            raise err from err2
    for node in tree.subtree:
        ds = node.to_dataset(inherit=False)
        trim = {}
        for d in ds.encoding.get("unlimited_dims", ()) or ():
            if d in ds.variables and ds[d].ndim == 1 and ds[d].dtype.kind == "f" and ds.sizes[d]:
                c = ds[d].values
                ok = np.flatnonzero(~np.isnan(c))
                keep = int(ok[-1]) + 1 if ok.size else 0
                if keep < c.size:
                    trim[d] = slice(0, keep)
        if trim:
            warnings.warn(f"{path}: group {node.path!r}: dropped incomplete trailing rows "
                          f"{ {d: ds.sizes[d] - s.stop for d, s in trim.items()} } (NaN coordinate: "
                          "the writer was stopped during a flush)", RuntimeWarning, stacklevel=2)
            node.dataset = ds.isel(trim)
    return tree


def _salvage(path: str):
    """Load a file whose last rows along an unlimited dim cannot be read (a writer killed inside a flush):
    per group and unlimited dim, step back one HDF5 chunk at a time until all its variables read."""
    import xarray as xr

    # no default indexes: building the index of `t` would read all of it, unreadable chunk included
    lazy = xr.open_datatree(path, engine="netcdf4", create_default_indexes=False)
    try:
        out, dropped = {}, {}
        for node in lazy.subtree:
            ds = node.to_dataset(inherit=False)
            for d in sorted(ds.encoding.get("unlimited_dims", ()) or ()):
                names = [v for v in ds.variables if d in ds[v].dims]
                n = n_ok = ds.sizes[d]
                step = max(1, int((ds[d].encoding.get("chunksizes") or (1,))[0])) if d in ds.variables else 1
                while True:
                    try:
                        ds[names].isel({d: slice(0, n_ok)}).load()
                        break
                    except (RuntimeError, OSError):
                        if n_ok == 0:
                            raise
                        n_ok = ((n_ok - 1) // step) * step
                if n_ok < n:
                    ds = ds.isel({d: slice(0, n_ok)})
                    dropped[f"{node.path}:{d}"] = n - n_ok
            ds = ds.load()
            for d in ds.dims:
                if d in ds.coords and ds[d].dims == (d,) and d not in ds.xindexes:
                    ds = ds.set_xindex(d)
            out[node.path] = ds
        tree = xr.DataTree.from_dict(out)
    finally:
        lazy.close()
    warnings.warn(f"{path}: unreadable trailing rows dropped {dropped} (the writer was killed during a "
                  "flush; every earlier synced chunk was read)", RuntimeWarning, stacklevel=3)
    return tree


def config_of(path_or_tree) -> dict:
    """The run configuration (root attr ``pyrod_config``) as a dict: ``pyrod.simulate(**config_of(p))``.

    Accepts a file path, or an already opened DataTree / Dataset."""
    if hasattr(path_or_tree, "attrs"):
        attrs = path_or_tree.attrs
        if hasattr(path_or_tree, "root"):
            attrs = path_or_tree.root.attrs
    else:
        with netCDF4.Dataset(os.fspath(path_or_tree), "r") as nc:
            attrs = {"pyrod_config": nc.getncattr("pyrod_config")} if "pyrod_config" in nc.ncattrs() else {}
    if "pyrod_config" not in attrs:
        raise KeyError(f"{path_or_tree!r}: no root attribute 'pyrod_config' (not written by pyrod?)")
    return json.loads(attrs["pyrod_config"])


def json_attr(ds_or_node, name: str):
    """Attribute ``name`` of a Dataset / DataTree node / DataArray, decoded.

    Attributes that the writer JSON-encoded (listed in the node's ``pyrod_json_attrs``) are
    ``json.loads``-ed (dict, list, None, ...); other values are returned as Python scalars or lists
    (NumPy scalars/arrays converted). A bool written by the writer reads back as 0/1.
    """
    attrs = ds_or_node.attrs
    if name not in attrs:
        raise KeyError(f"no attribute {name!r} (attributes: {sorted(attrs)})")
    value = attrs[name]
    encoded = set(json.loads(attrs[_JSON_MARKER])) if _JSON_MARKER in attrs else set()
    if name in encoded or name == "pyrod_config":
        return json.loads(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
