"""Reading pyrod files: :func:`open_tree` (the whole file as an ``xarray.DataTree``), :func:`stored_config` (the run
configuration), :func:`json_attr` (an attribute, JSON-decoded), with clear errors for a missing, foreign, truncated
or damaged file (:class:`DamagedFileError`, :func:`hdf5_sizes`).

A file being written is read through the writer's sidecar lock (a snapshot between two writes; see
:mod:`pyrod.io.lock`). What a crash leaves is read as far as it can be: within a flush the writer writes the ``t``
coordinate last, so trailing rows with ``t`` = NaN (an interrupted flush) are dropped with a warning, and trailing
HDF5 chunks that cannot be read ("NetCDF: HDF error", a writer killed inside a flush) are dropped too
(:func:`_salvage`; damage inside the file blanks the unreadable values and keeps everything else).
"""
from __future__ import annotations

import errno
import json
import os
import warnings
from pathlib import Path

import netCDF4
import numpy as np

from .layout import _JSON_MARKER
from .lock import _read_consistent, os_error


def open_tree(path) -> "xarray.DataTree":  # noqa: F821
    """Load the whole file into memory as an ``xarray.DataTree`` (one child per run group) and close it.

    Root attrs include ``pyrod_config`` (JSON string; see :func:`stored_config`) and ``pyrod_status``.
    JSON-encoded attrs stay strings; decode them with :func:`json_attr`. After a crash inside a flush, the
    rows of that flush are dropped with a ``RuntimeWarning``: trailing rows whose ``t`` (or snapshot
    coordinate) is NaN, and trailing HDF5 chunks that cannot be read ("NetCDF: HDF error").
    While a live RunWriter writes the file: reads a snapshot of every synced row, with a ``RuntimeWarning``
    (:class:`~pyrod.io.lock.FileBusyError` if the file never stays still for a read; see :mod:`pyrod.io.lock`).
    ``ValueError`` for a file that is not NetCDF4 or not written by pyrod (no root ``pyrod_config``).
    """
    shown = os.fspath(path)
    return _read_consistent(shown, lambda src: _load_tree(src, shown))


class DamagedFileError(OSError):
    """A NetCDF-4 file whose HDF5 structure cannot be read (truncated, or overwritten in its index)."""


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def hdf5_sizes(src) -> tuple[int, int | None]:
    """``(bytes on disk, bytes the HDF5 superblock says the file has)`` of a path or bytes (second None when the
    superblock cannot be read). A file shorter than its superblock's end-of-file address was truncated."""
    head = src[:128] if isinstance(src, bytes) else Path(src).open("rb").read(128)
    size = len(src) if isinstance(src, bytes) else os.path.getsize(src)
    if len(head) < 16 or not head.startswith(_HDF5_SIGNATURE):
        return size, None
    version = head[8]
    if version in (2, 3):            # sig, version, offset size, length size, flags, base, ext, EOF, ...
        width, at = head[9], 12
    elif version in (0, 1):          # sig, 5 version bytes, offset size, length size, reserved, 2+2 K, 4 flags
        width, at = head[13], 24 + (4 if version == 1 else 0)
    else:
        return size, None
    eof_at = at + 2 * width          # after the base address and the extension / free-space address
    if width not in (4, 8) or len(head) < eof_at + width:
        return size, None
    return size, int.from_bytes(head[eof_at:eof_at + width], "little")


def _damaged(src, shown, err) -> DamagedFileError:
    try:
        size, eof = hdf5_sizes(src)
    except OSError:
        size, eof = None, None
    if eof is not None and size is not None and size < eof:
        what = (f"it is truncated: {size} of its {eof} bytes are there, and NetCDF-4 (HDF5) keeps the index of the "
                f"data at the end of the file, so none of it can be located")
    else:
        what = (f"its HDF5 structure is damaged ({err}); if another program has it open for writing (HDF5 locks it), "
                f"wait for it to finish or read a copy")
    return os_error(DamagedFileError, errno.EIO, f"{shown} cannot be read: {what}")


def _open_nc(src, shown) -> "netCDF4.Dataset":
    """Open ``src`` (a path, or the bytes of a file) for reading, with errors that name ``shown``: missing, a
    folder, not NetCDF, truncated or damaged (:class:`DamagedFileError`)."""
    try:
        if isinstance(src, bytes):
            return netCDF4.Dataset(shown, "r", memory=src)
        return netCDF4.Dataset(src, "r")
    except FileNotFoundError:
        raise os_error(FileNotFoundError, errno.ENOENT, f"{shown}: no such file") from None
    except (OSError, RuntimeError) as err:
        if os.path.isdir(shown):
            raise ValueError(f"{shown} is a directory, not a NetCDF file") from None
        if "Unknown file format" in str(err):
            kind = "an HDF5 file that is not NetCDF-4" if _is_hdf5(src) else "not a NetCDF4/HDF5 file"
            raise ValueError(f"{shown} is {kind}: pyrod writes NetCDF-4 files (pyrod.open, pyrod.resume)") from None
        if "HDF error" in str(err) or isinstance(err, OSError):
            raise _damaged(src, shown, err) from None
        raise


def _is_hdf5(src) -> bool:
    try:
        head = src[:8] if isinstance(src, bytes) else Path(src).open("rb").read(8)
    except OSError:
        return False
    return head == _HDF5_SIGNATURE


def _check_pyrod(nc, shown) -> None:
    if "pyrod_config" not in nc.ncattrs():
        raise ValueError(f"{shown} is not a pyrod output file: no root attribute 'pyrod_config' (found groups "
                         f"{sorted(nc.groups)}, root variables {sorted(nc.variables)}, root attributes "
                         f"{sorted(nc.ncattrs())}); read it with xarray.open_datatree instead")


def _load_tree(src, shown):
    import xarray as xr

    with _open_nc(src, shown) as nc:
        _check_pyrod(nc, shown)
    try:
        tree = xr.load_datatree(src, engine="netcdf4")
    except (RuntimeError, OSError) as err:  # "NetCDF: HDF error": a chunk of an interrupted flush
        if "HDF error" not in str(err):
            raise
        try:
            tree = _salvage(src, shown)
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
            warnings.warn(f"{shown}: group {node.path!r}: dropped incomplete trailing rows "
                          f"{ {d: ds.sizes[d] - s.stop for d, s in trim.items()} } (NaN coordinate: "
                          "the writer was stopped during a flush)", RuntimeWarning, stacklevel=5)
            node.dataset = ds.isel(trim)
    return tree


def _salvage(src, shown: str):
    """Load a file (path or bytes) some of whose HDF5 chunks cannot be read, keeping every value that can be:

    * trailing chunks along an unlimited dim with any unreadable variable are dropped (a writer killed inside a
      flush leaves exactly that);
    * inside the file, rows whose coordinate is unreadable are dropped and unreadable chunks of other variables
      read as NaN (damage on disk); variables that cannot be read at all are left out.

    Warns with what was dropped or blanked."""
    import xarray as xr

    # no default indexes: building the index of `t` would read all of it, unreadable chunk included
    lazy = xr.open_datatree(src, engine="netcdf4", create_default_indexes=False)
    try:
        out, dropped, blanked, lost = {}, {}, {}, []
        for node in lazy.subtree:
            ds = node.to_dataset(inherit=False)
            for d in sorted(ds.encoding.get("unlimited_dims", ()) or ()):
                ds = _salvage_dim(ds, d, f"{node.path}:{d}", dropped, blanked)
            for name in list(ds.data_vars):
                try:
                    ds[name].load()
                except (RuntimeError, OSError):
                    lost.append(f"{node.path}/{name}")
                    ds = ds.drop_vars(name)
            ds = ds.load()
            for d in ds.dims:
                if d in ds.coords and ds[d].dims == (d,) and d not in ds.xindexes:
                    ds = ds.set_xindex(d)
            out[node.path] = ds
        tree = xr.DataTree.from_dict(out)
    finally:
        lazy.close()
    parts = []
    if dropped:
        parts.append(f"unreadable trailing rows dropped {dropped} (a writer killed during a flush leaves these; every "
                     f"earlier synced chunk was read)")
    if blanked:
        parts.append(f"damaged chunks inside the file: {blanked} (rows without a readable coordinate dropped, other "
                     f"unreadable values set to NaN; everything else was read)")
    if lost:
        parts.append(f"unreadable variables left out: {lost}")
    warnings.warn(f"{shown}: " + "; ".join(parts or ["read with the HDF5 salvage path"]), RuntimeWarning,
                  stacklevel=6)
    return tree


def _readable(da) -> np.ndarray | None:
    try:
        return np.asarray(da.values)
    except (RuntimeError, OSError):
        return None


def _salvage_dim(ds, d, where, dropped, blanked):
    """``ds`` with the damage along the unlimited dim ``d`` handled as :func:`_salvage` says."""
    names = [v for v in ds.variables if d in ds[v].dims]
    n = ds.sizes[d]
    step = max(1, int((ds[d].encoding.get("chunksizes") or (1,))[0])) if d in ds.variables else 1
    starts = range(0, n, step)
    parts = {v: [_readable(ds[v].isel({d: slice(c, c + step)})) for c in starts] for v in names}
    n_ok = n
    while n_ok > 0 and any(parts[v][(n_ok - 1) // step] is None for v in names):
        n_ok = ((n_ok - 1) // step) * step
    if n_ok < n:
        dropped[where] = n - n_ok
    keep = np.ones(n_ok, bool)
    values, bad = {}, {}
    for v in names:
        da = ds[v]
        chunks = parts[v][:-(-n_ok // step) or None] if n_ok else []
        if all(c is not None for c in chunks):
            values[v] = np.concatenate(chunks) if chunks else np.asarray(da.isel({d: slice(0, 0)}).values)
            continue
        kind = da.dtype if da.dtype.kind == "f" else np.float64
        shape = (n_ok, *[ds.sizes[x] for x in da.dims[1:]])
        arr = np.full(shape, np.nan, dtype=kind)
        for i, c in enumerate(chunks):
            rows = slice(i * step, min((i + 1) * step, n_ok))
            if c is not None:
                arr[rows] = c[:rows.stop - rows.start]
            elif v == d:
                keep[rows] = False
            else:
                bad.setdefault(f"rows {rows.start}-{rows.stop - 1}", []).append(v)
        values[v] = arr
    if not keep.all():
        bad["rows without a readable coordinate (dropped)"] = [str(int((~keep).sum()))]
    if bad:
        blanked[where] = {k: ", ".join(v) for k, v in bad.items()}
    new = ds.isel({d: slice(0, n_ok)})
    new = new.assign({v: (new[v].dims, values[v], new[v].attrs) for v in names if v != d and v in new.data_vars})
    coords = {v: (new[v].dims, values[v], new[v].attrs) for v in names if v in new.coords}
    new = new.assign_coords(coords)
    return new.isel({d: np.flatnonzero(keep)}) if not keep.all() else new


def stored_config(path_or_tree) -> dict:
    """The run configuration as stored (root attr ``pyrod_config``, the JSON spec) as a dict (``pyrod.config_of``
    turns it into ``simulate`` keywords; ``pyrod.spec_of`` into a RunSpec).

    Accepts a file path (read as :func:`open_tree` does, also while a writer has it open), or an already
    opened DataTree / Dataset. ``ValueError`` if there is no ``pyrod_config`` (not written by pyrod)."""
    if hasattr(path_or_tree, "attrs"):
        attrs = path_or_tree.attrs
        if hasattr(path_or_tree, "root"):
            attrs = path_or_tree.root.attrs
        if "pyrod_config" not in attrs:
            raise ValueError(f"{type(path_or_tree).__name__} has no root attribute 'pyrod_config' (not written "
                             f"by pyrod?; attributes: {sorted(attrs)})")
        return json.loads(attrs["pyrod_config"])
    return json_attr(root_attrs(path_or_tree), "pyrod_config")


def root_attrs(path) -> dict:
    """The root attributes of the pyrod file ``path`` as stored (decode one with :func:`json_attr`), read without
    loading any data (as :func:`open_tree` reads, also while a writer has the file open). ``ValueError`` for a file
    not written by pyrod."""
    shown = os.fspath(path)

    def read(src):
        with _open_nc(src, shown) as nc:
            _check_pyrod(nc, shown)
            return {k: nc.getncattr(k) for k in nc.ncattrs()}

    return _read_consistent(shown, read)


def json_attr(ds_or_node, name: str):
    """Attribute ``name`` of a Dataset / DataTree node / DataArray (or of a dict of attributes, as
    :func:`root_attrs` gives), decoded.

    Attributes that the writer JSON-encoded (listed in the node's ``pyrod_json_attrs``) are
    ``json.loads``-ed (dict, list, None, ...); other values are returned as Python scalars or lists
    (NumPy scalars/arrays converted). A bool written by the writer reads back as 0/1.
    """
    attrs = ds_or_node if isinstance(ds_or_node, dict) else ds_or_node.attrs
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
