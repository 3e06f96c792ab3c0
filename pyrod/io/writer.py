"""The incremental, crash-safe NetCDF4 writer :class:`RunWriter`: one file, one group per run.

Atomic creation and overwrite: the writer creates the file under a temporary name in the same folder
(``.<name>.pyrod-XXXXXXXX.tmp``), writes the root attributes, syncs, and only then ``os.replace``-s it onto
``path``, inside the constructor. A writer killed before that point leaves the old file (or no file)
untouched, plus a temporary file that the next writer of that path deletes; from the end of the
constructor on, ``path`` is the new run (root attrs, ``pyrod_status = "running"``, no groups yet) and the
old file is gone. Without an old file the user sees no difference. One writer per path: the sidecar lock
(:mod:`pyrod.io.lock`). Resume: :meth:`RunWriter.resume` (the copy is :mod:`pyrod.io.resume`).

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
  unreadable: :func:`~pyrod.io.reader.open_tree` then drops that trailing chunk with a warning (``_salvage``).
* aligned, but ``flush()`` every 7 rows (chunk 10): 18 of 60 kills lost synced rows of the partial chunk
  being rewritten, 1 of them silently wrong values. So call :meth:`flush` mid-run only when needed: it
  writes a partial HDF5 chunk that the next flush rewrites once (the next automatic flush re-aligns). A
  resume whose cut is not on a chunk boundary leaves such a partial chunk too.

Within a flush the ``t`` coordinate is written last; trailing rows with ``t`` = NaN (an interrupted flush)
are dropped by :func:`~pyrod.io.reader.open_tree` with a warning.

The file layout (fill values, one unlimited dim per variable, attributes as JSON, chunk sizes):
:mod:`pyrod.io.layout`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import netCDF4
import numpy as np

from .._version import __version__
from ..schema import TIME_UNITS, Var
from .layout import (
    _JSON_MARKER,
    _RESERVED_ROOT,
    _attr_value,
    _chunksizes,
    _dumps,
    _fill_for,
    _flat_config,
    _Group,
    _utc_now,
    group_layout,
)
from .lock import _Lock, _target, _tmp_path, _writing_to, ensure_space
from .reader import _check_pyrod, _open_nc
from .resume import copy_up_to_cut, cut_times, file_chunk, resumed_root_attrs


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu()
        try:
            return np.asarray(x.numpy())
        except TypeError:  # bfloat16 and friends
            return np.asarray(x.double().numpy())
    return np.asarray(x)


class RunWriter:
    """Incremental writer of one NetCDF4 file with one group per run (see the module docstring).

    path : the file; ``FileExistsError`` if it exists and ``overwrite`` is False, ``ValueError`` if it is
        empty or a directory, :class:`~pyrod.io.lock.FileBusyError` (naming pid and host) while another writer holds it.
        Parent dirs are created. The new file is built under a temporary name and replaces ``path`` at the
        end of the constructor (an old file survives a crash before that; see the module docstring).
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
        self._init_state(path, chunk)
        config_json = _dumps(dict(config), "config")  # fail before touching the file
        extra = dict(attrs or {})
        bad = sorted(set(extra) & set(_RESERVED_ROOT))
        if bad:
            raise ValueError(f"root attrs {bad} are reserved (set by RunWriter)")
        for v in extra.values():
            _attr_value(v)  # type errors before touching the file
        target = self._target
        with _writing_to(self.path, target):
            target.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _Lock.acquire(target, self.path)  # refuses a second writer before anything is touched
        tmp = None
        try:
            if target.exists() and not overwrite:
                raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
            with _writing_to(self.path, target), self._lock.writing():
                tmp = _tmp_path(target)
                self._nc = netCDF4.Dataset(tmp, "w", format="NETCDF4", clobber=False)
                self._closed = False
                created = _utc_now()
                root = {"pyrod_version": __version__, "created": created, "Conventions": "CF-1.11",
                        "pyrod_status": "running"}
                # the history line names pyrod.output.RunWriter, as files written before the move to pyrod.io do
                history = f"{created}: written by pyrod {__version__} (pyrod.output.RunWriter)"
                if "history" in extra:
                    history = f"{extra.pop('history')}\n{history}"
                root["history"] = history
                root.update(_flat_config(config, root, extra))
                self._nc.setncatts(root)
                self._nc.setncattr("pyrod_config", config_json)
                self._json_names[None].add("pyrod_config")
                self._set_attrs_nosync(self._nc, None, extra)
                self._write_marker(self._nc, None)
                self._nc.sync()
                os.replace(tmp, target)  # the old file (if any) stays complete until here
                tmp = None
        except BaseException:
            self._abandon(tmp)
            raise

    def _abandon(self, tmp) -> None:
        """Undo a failed open (constructor or :meth:`resume`): close the file, delete the temporary file not yet
        renamed into place (the old file is untouched), release the lock."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._nc.close()
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._lock.release()

    def _init_state(self, path, chunk) -> None:
        shown = os.fspath(path)
        if isinstance(shown, bytes):
            shown = os.fsdecode(shown)
        if not shown.strip():
            raise ValueError(f"path {shown!r} is empty; give a file name such as 'run.nc'")
        if shown.endswith(("/", os.sep)) or os.path.isdir(shown):
            raise ValueError(f"path {shown!r} is a directory; give a file name such as "
                             f"{os.path.join(shown, 'run.nc')!r}")
        self.path = Path(shown)
        self._target = _target(shown)
        self.chunk = int(chunk)
        self._groups: dict[str, _Group] = {}
        self._json_names: dict[str | None, set[str]] = {None: set()}
        self._closed = True
        self._lock: _Lock | None = None

    @classmethod
    def resume(cls, path, *, cut: Mapping[str, float], config: dict | None = None, attrs: dict | None = None,
               chunk: int | None = None, expect_rows: Mapping[str, int] | None = None) -> "RunWriter":
        """Reopen the pyrod file ``path`` to continue a run: keep each group's rows with ``t < cut[group]``
        and return a writer in append mode.

        cut : group -> time (optimizer steps). In that group, rows along ``t`` and along every snapshot dim
            (e.g. ``t_snap``) are kept while their coordinate is ``< cut[group]``; groups not named are kept
            whole. Rows that an interrupted flush left without a coordinate (NaN) or unreadable are dropped
            too (the latter with a ``RuntimeWarning``).
        config : replaces root ``pyrod_config`` and its flat copies (the old flat copies are removed).
        attrs : root attributes to set (as :meth:`set_attrs`); a given ``history`` replaces the old one.
            Root ``pyrod_status`` becomes ``"running"``, and a line "resumed ..." is added to ``history``.
        chunk : rows between writes for the continued run; default: the file's (the HDF5 chunk length of
            ``t``). The ``t``-variables are re-chunked to it.
        expect_rows : group -> rows along ``t`` that must survive the cut (a checkpoint knows them). Fewer (rows
            before the cut are unreadable: a damaged file) raise :class:`~pyrod.io.reader.DamagedFileError` and
            leave the file as it was, instead of continuing with a gap.

        Every kept dimension, variable (dtype, fill value, compression), variable attribute and group/root
        attribute is copied exactly (raw values, bit for bit) into a temporary file in the same folder, which
        then replaces ``path`` (``os.replace``): killed at any moment, the old file is still there, whole,
        until that replace. The groups' records (variables, dims, rows written) are rebuilt from the file,
        so :meth:`append`, :meth:`append_snapshot`, :meth:`set_attrs` and :meth:`close` continue as if the
        original writer had never stopped. The lock is taken first (:class:`~pyrod.io.lock.FileBusyError` if
        held). All kept rows of one unlimited dim of one group are held in memory at once while copying
        (:mod:`pyrod.io.resume`).
        """
        cuts = cut_times(cut)
        if chunk is not None and int(chunk) < 1:
            raise ValueError(f"chunk must be a positive number of rows, got {chunk!r}")
        config_json = None
        if config is not None:
            if not isinstance(config, Mapping):
                raise TypeError(f"config must be a dict, got {type(config).__name__}")
            config_json = _dumps(dict(config), "config")
        extra = dict(attrs or {})
        bad = sorted(set(extra) & set(_RESERVED_ROOT))
        if bad:
            raise ValueError(f"root attrs {bad} are reserved (set by RunWriter)")
        for v in extra.values():
            _attr_value(v)
        self = cls.__new__(cls)
        self._init_state(path, chunk or 1)
        target = self._target
        if not target.exists():
            raise FileNotFoundError(f"{self.path}: no such file to resume")
        self._lock = _Lock.acquire(target, self.path)
        tmp = None
        try:
            with _open_nc(os.fspath(target), os.fspath(self.path)) as src, _writing_to(self.path, target), \
                    self._lock.writing():
                _check_pyrod(src, self.path)
                unknown = sorted(set(cuts) - set(src.groups))
                if unknown:
                    raise ValueError(f"cut names groups {unknown} that {self.path} does not have "
                                     f"(groups: {sorted(src.groups)})")
                self.chunk = int(chunk) if chunk is not None else file_chunk(src)
                tmp = _tmp_path(target)
                self._nc = netCDF4.Dataset(tmp, "w", format="NETCDF4", clobber=False)
                self._closed = False
                self._resume_root_attrs(src, config, config_json, extra, cuts)
                groups, json_names = copy_up_to_cut(src, self._nc, cuts, self.chunk, os.fspath(self.path),
                                                    expect_rows)
                self._groups.update(groups)
                self._json_names.update(json_names)
                self._nc.sync()
            with _writing_to(self.path, target):
                os.replace(tmp, target)  # the old file stays whole until here
            tmp = None
        except BaseException:
            self._abandon(tmp)
            raise
        return self

    def _resume_root_attrs(self, src, config, config_json, extra, cuts) -> None:
        ra = {k: src.getncattr(k) for k in src.ncattrs()}
        marker = ra.pop(_JSON_MARKER, "[]")
        self._json_names[None] = set(json.loads(marker)) | {"pyrod_config"}
        for k, v in resumed_root_attrs(ra, config, config_json, extra, cuts).items():
            self._nc.setncattr(k, v)
        self._set_attrs_nosync(self._nc, None, extra)
        self._write_marker(self._nc, None)

    # ------------------------------------------------------------------ structure
    def add_group(self, group: str, variables: list[Var], *, dims: dict[str, int | None] | None = None,
                  attrs: dict | None = None, coords: Mapping[str, tuple] | None = None) -> None:
        """Create run group ``group`` with ``variables``.

        ``dims``: fixed sizes (``{"eig": k, "param": d}``) or ``None`` for an unlimited snapshot dim
        (``{"t_snap": None}``). ``"t"`` (unlimited float64 coordinate, long_name "time", units "optimizer
        steps", axis "T") is always created and must not be given a size. Snapshot dims get a float64
        coordinate variable (default long_name "time of snapshot", units "optimizer steps"; declare a Var
        with the dim's name to override). Every variable gets long_name, units and a NaN (floats) or
        default (ints) ``_FillValue``; zlib complevel 4. ``coords``: values of fixed dims, ``{dim: (values,
        long_name, units)}`` (e.g. the rank 1..k of the ``eig`` dim), written as coordinate variables.
        """
        self._check_open()
        if not group or "/" in group or group in self._groups:
            raise ValueError(f"group name {group!r} is empty, contains '/', or already exists")
        dims, coord_over, fixed, snap_dims = group_layout(group, variables, dims, coords)
        with self._lock.writing():
            self._create_group(group, variables + [v for v, _ in fixed.values()], dims, coord_over, snap_dims,
                               attrs)
            for d, (_, values) in fixed.items():
                self._groups[group].nc[d][:] = values
            self._nc.sync()

    def _create_group(self, group, variables, dims, coord_over, snap_dims, attrs) -> None:
        g = self._nc.createGroup(group)
        for d, n in dims.items():
            g.createDimension(d, n)
        state = _Group(nc=g, vars={}, dims=dims)
        coords = [Var("t", ("t",), "time", TIME_UNITS, "f8", {"axis": "T"})]
        coords += [coord_over.get(d, Var(d, (d,), "time of snapshot", TIME_UNITS, "f8")) for d in snap_dims]
        for v in coords + [v for v in variables if v.name not in coord_over]:
            self._create_variable(state, v)
        state.n_snap = {d: 0 for d in snap_dims}
        self._groups[group] = state
        self._json_names[group] = set()
        if attrs:
            self._set_attrs_nosync(g, group, attrs)
        self._nc.sync()

    def _create_variable(self, state: _Group, v: Var) -> None:
        dims = state.dims
        dt = np.dtype(v.dtype)
        shape = tuple(dims[d] if dims[d] is not None else 0 for d in v.dims)
        if v.dims[0] == "t":  # HDF5 chunks = writer chunks: synced chunks are never rewritten
            chunks = _chunksizes(shape[1:], dt.itemsize, self.chunk)
        elif dims[v.dims[0]] is None:  # snapshots: one HDF5 chunk (or more) per snapshot
            chunks = _chunksizes(shape[1:], dt.itemsize, 1)
        else:  # static
            chunks = _chunksizes(shape[1:], dt.itemsize, shape[0], aligned=False)
        fixed_coord = v.dims == (v.name,) and dims.get(v.name) is not None   # written whole, never missing
        var = state.nc.createVariable(v.name, dt, v.dims, zlib=True, complevel=4, chunksizes=chunks,
                                      fill_value=False if fixed_coord else _fill_for(dt))
        var.setncatts({"long_name": v.long_name, "units": v.units})
        self._set_attrs_nosync(var, None, dict(v.attrs), marker=False)
        state.vars[v.name] = v

    def add_missing_variables(self, group: str, variables: list[Var]) -> list[str]:
        """Create the variables of ``variables`` that ``group`` does not have yet (a file written by an older pyrod,
        continued by :meth:`resume`); rows already on file read as the fill value (NaN). Variables along ``t``
        only, on dims the group has. Returns the names created."""
        g = self._group(group)
        new = [v for v in variables if v.name not in g.vars]
        for v in new:
            if not isinstance(v, Var) or not v.dims or v.dims[0] != "t" or any(d not in g.dims for d in v.dims):
                raise ValueError(f"group {group!r}: cannot add {v!r}: only variables along 't' on the group's dims "
                                 f"{sorted(g.dims)}")
            if not v.long_name or v.units is None:
                raise ValueError(f"variable {v.name!r}: long_name and units are required")
        if new:
            with self._lock.writing():
                for v in new:
                    self._create_variable(g, v)
                self._sync()
        return [v.name for v in new]

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
            self._ensure_space(self._rows_bytes(g), "rows")
            with self._lock.writing():
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
        self._ensure_space(sum(a.nbytes for a in arrays.values()) + 8, "snapshot")
        with self._lock.writing():
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
        self._ensure_space(a.nbytes, "variable")
        with self._lock.writing():
            g.nc[name][tuple(slice(0, n) for n in a.shape)] = a
            self._sync()

    def pending(self) -> dict:
        """Rows appended but not yet written, per group: ``{group: {"times": [...], "rows": [{var: array}],
        "n_t": rows on file}}`` (copies). A checkpoint stores them; after :meth:`resume` they are appended again,
        so the writer continues exactly as if it had never stopped."""
        self._check_open()
        return {name: {"times": list(g.times), "rows": [dict(r) for r in g.rows], "n_t": int(g.n_t)}
                for name, g in self._groups.items()}

    def n_written(self, group: str, dim: str = "t") -> int:
        """Rows of ``group`` along ``dim`` already written and synced to the file (excludes the buffer)."""
        g = self._group(group)
        return g.n_t if dim == "t" else g.n_snap[dim]

    # ------------------------------------------------------------------ attributes
    def set_attrs(self, group: str | None, attrs: Mapping[str, Any]) -> None:
        """Set attributes of ``group`` (``None``: the root) and sync.

        str/int/float and 1-D numeric arrays are stored as they are, bools as 0/1, and None, dict, list,
        tuple as JSON strings (decode with :func:`~pyrod.io.reader.json_attr`).
        """
        self._check_open()
        if group is None:
            bad = sorted(set(attrs) & set(_RESERVED_ROOT))
            if bad:
                raise ValueError(f"root attrs {bad} are reserved (set by RunWriter)")
            node = self._nc
        else:
            node = self._group(group).nc
        for v in attrs.values():
            _attr_value(v)  # type errors before writing anything
        with self._lock.writing():
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
        self._ensure_space(sum(self._rows_bytes(g) for g in self._groups.values()), "rows")
        with self._lock.writing():
            for g in self._groups.values():
                self._flush_group(g)
            self._sync()

    def close(self, status: str = "complete") -> None:
        """Flush, set root attr ``pyrod_status`` (default ``"complete"``), close, release the lock.
        Idempotent."""
        if self._closed:
            return
        try:
            with self._lock.writing():
                try:
                    try:
                        self._ensure_space(sum(self._rows_bytes(g) for g in self._groups.values()), "rows")
                        for g in self._groups.values():
                            self._flush_group(g)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        status = f"{status}; rows not yet written dropped: {e}"[:1000]   # the file stays valid
                    finally:
                        self._nc.setncattr("pyrod_status", status)
                finally:
                    self._closed = True
                    self._nc.close()
        finally:
            self._lock.release()

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

    def _ensure_space(self, nbytes: int, what: str) -> None:
        ensure_space(self._target, nbytes, shown=self.path, what=f"write of {what}")

    @staticmethod
    def _rows_bytes(g: _Group) -> int:
        """Bytes the buffered rows of ``g`` take when written (every variable along ``t``, uncompressed)."""
        n = len(g.rows)
        if not n:
            return 0
        return sum(n * math.prod(g.dims[d] for d in v.dims[1:]) * np.dtype(v.dtype).itemsize
                   for v in g.vars.values() if v.dims and v.dims[0] == "t")

    @staticmethod
    def _value(group, v: Var, x, dims, leading: bool) -> np.ndarray:
        a = _to_numpy(x)
        shape = tuple(dims[d] for d in (v.dims[1:] if leading else v.dims))
        if a.ndim != len(shape) and a.size == 1 and not shape:
            a = a.reshape(())
        if a.ndim != len(shape) or any(m > n for m, n in zip(a.shape, shape, strict=True)):
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
