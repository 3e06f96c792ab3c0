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

    out = RunWriter.resume("run.nc", cut={"discrete": 500.0})   # keep rows t < 500, append from there

One writer per path (issue 10; tested in tests/test_output_safety.py with real processes): before anything
is touched, :class:`RunWriter` takes an exclusive ``fcntl.flock`` on the sidecar file ``<dir>/.<name>.lock``
and writes its pid, host and start time into it. A second writer of the same path (another process, or
another RunWriter in this process) is refused at once with :class:`FileBusyError` naming the holder. The
lock is held for the writer's life and released (lock file removed) by :meth:`RunWriter.close`; the kernel
releases it when the process dies, so a lock file left by a killed writer blocks nobody. (flock is local to
one machine; on NFS, Linux maps it to NFS byte-range locks.)

Atomic creation and overwrite: the writer creates the file under a temporary name in the same folder
(``.<name>.pyrod-XXXXXXXX.tmp``), writes the root attributes, syncs, and only then ``os.replace``-s it onto
``path``, inside the constructor. A writer killed before that point leaves the old file (or no file)
untouched, plus a temporary file that the next writer of that path deletes; from the end of the
constructor on, ``path`` is the new run (root attrs, ``pyrod_status = "running"``, no groups yet) and the
old file is gone. Without an old file the user sees no difference.

Reading a file while it is written: HDF5 itself locks a file open for writing, so a plain
``xarray.open_datatree`` fails with "NetCDF: HDF error" (and the HDF5_USE_FILE_LOCKING environment variable
only counts at library start-up). :func:`open_tree` and :func:`config_of` therefore look at the sidecar lock:
when a live writer holds it they read the file's bytes into memory between two of the writer's writes (the
writer bumps a sequence number in the lock file before and after every write+sync, a seqlock) and open that
exact snapshot, with a ``RuntimeWarning`` saying so: every synced row, nothing half-written. If the file
changes during every attempt for ``_READ_PATIENCE_S`` seconds they raise :class:`FileBusyError`.

Resume: :meth:`RunWriter.resume` takes the lock, copies the rows of each group with ``t < cut[group]`` (and
snapshot rows whose coordinate is ``< cut[group]``) with every dimension, variable, attribute and dtype
unchanged into a temporary file, ``os.replace``-s it onto the path, and returns a writer that continues as
if the original one had never stopped. The old file stays in place until that replace.

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
  writes a partial HDF5 chunk that the next flush rewrites once (the next automatic flush re-aligns). A
  resume whose cut is not on a chunk boundary leaves such a partial chunk too.

Within a flush the ``t`` coordinate is written last; trailing rows with ``t`` = NaN (an interrupted flush)
are dropped by :func:`open_tree` with a warning.

Design notes (tested facts):

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
* HDF5 locks the file while a writer has it open (see "Reading a file while it is written" above).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import secrets
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import netCDF4
import numpy as np

from ._version import __version__
from .schema import PARAMETER_UNITS, TIME_UNITS, Var  # Var & units live in pyrod.schema (re-exported)

__all__ = ["Var", "RunWriter", "FileBusyError", "DamagedFileError", "open_tree", "config_of", "json_attr",
           "TIME_UNITS", "PARAMETER_UNITS", "ensure_space", "hdf5_sizes"]

_JSON_MARKER = "pyrod_json_attrs"
_RESERVED_ROOT = ("pyrod_version", "created", "Conventions", "pyrod_config", "pyrod_status", _JSON_MARKER)
_CHUNK_BYTES = 1 << 20  # target HDF5 chunk size
_READ_PATIENCE_S = 10.0  # readers of a file being written retry this long for a write-free moment
#: bytes a writer leaves free on the device beyond the data of a write (HDF5 metadata, attributes, the close)
SPACE_RESERVE = 512 * 1024
_BASE_ROOT = ("pyrod_version", "created", "Conventions", "pyrod_status", "history")


class FileBusyError(RuntimeError):
    """The output path is held by a live writer (sidecar lock ``<dir>/.<name>.lock``).

    Attributes: ``path``, ``pid`` (int or None), ``host`` (str or None)."""

    def __init__(self, message: str, path, pid=None, host=None):
        super().__init__(message)
        self.path, self.pid, self.host = path, pid, host


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


# --------------------------------------------------------------------------------------------- locking
def _target(path) -> Path:
    """The file that ``path`` names, symlinks resolved (the lock, temp file and replace act on it)."""
    return Path(os.path.realpath(os.fspath(path)))


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.pyrod-{secrets.token_hex(4)}.tmp")


def cannot_write(err: OSError, shown, target: Path) -> OSError:
    """``err`` (raised while creating the lock, temporary or data file next to ``target``) as an error of the same
    class that names the user's path ``shown`` and what is wrong with it, never pyrod's hidden side files."""
    folder = os.fspath(target.parent)
    reason = {errno.EACCES: f"the folder {folder} is not writable", errno.EPERM: f"the folder {folder} is not writable",
              errno.EROFS: f"the folder {folder} is on a read-only file system",
              errno.ENOENT: f"the folder {folder} does not accept new files (a virtual file system such as /proc?)",
              errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}.get(
        err.errno, err.strerror or str(err))
    return os_error(type(err), err.errno, f"cannot write {os.fspath(shown)}: {reason}")


@contextlib.contextmanager
def _writing_to(shown, target: Path):
    """Turn OS errors of the block into :func:`cannot_write` errors naming ``shown``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (FileExistsError, IsADirectoryError)) or getattr(e, "_pyrod_named", False):
            raise
        err = cannot_write(e, shown, target)
        err._pyrod_named = True
        raise err from None


def ensure_space(path, nbytes: int, shown=None, what: str = "write") -> None:
    """Raise ``OSError(ENOSPC)`` naming ``shown`` (default ``path``) when the device of ``path`` has less than
    ``nbytes`` + :data:`SPACE_RESERVE` bytes free. Checked before every write: HDF5 does not survive a write
    that fails for lack of space (the file becomes unreadable), so pyrod stops before it, with the file valid."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path))) or "."
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < nbytes + SPACE_RESERVE:
        raise os_error(OSError, errno.ENOSPC,
                       f"no space left on the device of {os.fspath(shown if shown is not None else path)}: the next "
                       f"{what} needs ~{_kib(nbytes)} and {_kib(free)} are free ({_kib(SPACE_RESERVE)} are kept for "
                       f"the file's own bookkeeping)")


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _parse_lock(text: bytes) -> dict[str, str]:
    info = {}
    for line in text.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(" ")
        if key:
            info[key] = value
    return info


def _holder_text(path, info: dict[str, str]) -> str:
    pid, host = info.get("pid", "?"), info.get("host", "?")
    who = f"pid {pid} on host {host}"
    if pid == str(os.getpid()) and host == socket.gethostname():
        who += " (this process)"
    since = f", since {info['since']}" if "since" in info else ""
    return f"{os.fspath(path)} is being written by {who} (pyrod_status 'running'{since})"


def _busy(path, info, tail: str) -> FileBusyError:
    pid = info.get("pid")
    return FileBusyError(f"{_holder_text(path, info)}; {tail}", os.fspath(path),
                         int(pid) if pid and pid.isdigit() else None, info.get("host"))


class _Lock:
    """Exclusive ``flock`` on ``<dir>/.<name>.lock``, held by one writer of ``target``.

    The lock file holds ``pid``, ``host``, ``since`` and a fixed-width sequence number ``seq`` that the writer
    makes odd before and even after each write+sync of the data file (:meth:`writing`), so that
    readers can tell a write-free moment (a seqlock)."""

    def __init__(self, target: Path, fd: int):
        self.target, self.path, self.fd = target, _lock_path(target), fd
        self.seq, self._depth = 0, 0
        self._head = (f"pyrod RunWriter lock of {target}\npid {os.getpid()}\nhost {socket.gethostname()}\n"
                      f"since {_utc_now()}\n").encode()

    @classmethod
    def acquire(cls, target: Path, shown) -> "_Lock":
        """Take the lock or raise :class:`FileBusyError` naming the holder. ``shown``: the path in messages."""
        lock_path = _lock_path(target)
        while True:
            with _writing_to(shown, target):
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    info = _parse_lock(os.pread(fd, 4096, 0))
                finally:
                    os.close(fd)
                raise _busy(shown, info, "a second writer is refused (it would destroy both results). Wait "
                                         "for that run to finish (or close() its RunWriter), or write to "
                                         "another path.") from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder may have removed the lock file between our open and flock: then retry
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        lock = cls(target, fd)
        os.ftruncate(fd, 0)
        lock._write()
        for stale in target.parent.glob(f".{glob.escape(target.name)}.pyrod-*.tmp"):  # of killed writers
            with contextlib.suppress(OSError):
                stale.unlink()
        return lock

    def _write(self) -> None:
        os.pwrite(self.fd, self._head + f"seq {self.seq:020d}\n".encode(), 0)

    @contextlib.contextmanager
    def writing(self):
        """Mark a write of the data file (seq odd inside, even after; nestable)."""
        if self._depth == 0 and self.fd is not None:
            self.seq += 1
            self._write()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self.fd is not None:
                self.seq += 1
                self._write()

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:  # remove our lock file while still holding it (acquire() re-checks the inode)
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the flock

    def __del__(self):  # a writer dropped without close(): do not hold the path until the process exits
        with contextlib.suppress(Exception):
            self.release()


class _Watch:
    """A reader's view of the sidecar lock of ``target`` while a live writer holds it (see :func:`_watch`)."""

    def __init__(self, fd: int):
        self.fd = fd

    def info(self) -> dict[str, str] | None:
        """The holder's lock record, or None once no live writer holds the lock."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_lock(os.pread(self.fd, 4096, 0))
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return None

    def close(self) -> None:
        os.close(self.fd)


def _watch(target: Path) -> _Watch | None:
    """A :class:`_Watch` if a live writer holds the lock of ``target``, else None (no lock file, or one left
    by a dead writer). Never creates the lock file."""
    try:
        fd = os.open(_lock_path(target), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    w = _Watch(fd)
    if w.info() is None:
        w.close()
        return None
    return w


def _read_consistent(path, load):
    """``load(src)`` with ``src`` = the path, or — while a live writer holds the path's lock — the bytes of the
    file read at a moment without a write in progress (seq even and unchanged around the read); warns then.
    Raises :class:`FileBusyError` if no such moment comes within ``_READ_PATIENCE_S`` seconds."""
    path = os.fspath(path)
    target = _target(path)
    watch = _watch(target)
    if watch is None:
        return load(path)
    try:
        deadline, tries = time.monotonic() + _READ_PATIENCE_S, 0
        while True:
            info = watch.info()
            if info is None:  # the writer finished meanwhile
                return load(path)
            seq = info.get("seq", "1")
            if seq.isdigit() and int(seq) % 2 == 0:
                data = target.read_bytes()
                after = watch.info()
                if after is None:
                    return load(path)
                if after.get("seq") == seq:
                    warnings.warn(f"{_holder_text(path, info)}: read a snapshot of the rows synced so far",
                                  RuntimeWarning, stacklevel=3)
                    return load(data)
            tries += 1
            if time.monotonic() > deadline:
                raise _busy(path, info, f"it changed during each of {tries} read attempts in "
                                        f"{_READ_PATIENCE_S:g} s; wait for it or copy the file")
            time.sleep(min(0.002 * 2 ** min(tries, 8), 0.2))
    finally:
        watch.close()


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


def _flat_config(config: Mapping, root: Mapping, extra: Mapping) -> dict:
    """Flat, browsable root copies of the top-level scalar config items (bools as 0/1), skipping names that
    are reserved or already taken by ``root`` / ``extra`` attributes."""
    out = {}
    for k, v in config.items():
        if isinstance(k, str) and k not in root and k not in _RESERVED_ROOT and k not in extra \
                and isinstance(v, (str, int, float, bool, np.integer, np.floating, np.bool_)):
            out[k] = int(v) if isinstance(v, (bool, np.bool_)) else v
    return out


# --------------------------------------------------------------------------------------------- writer
class RunWriter:
    """Incremental writer of one NetCDF4 file with one group per run (see the module docstring).

    path : the file; ``FileExistsError`` if it exists and ``overwrite`` is False, ``ValueError`` if it is
        empty or a directory, :class:`FileBusyError` (naming pid and host) while another writer holds it.
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
            before the cut are unreadable: a damaged file) raise :class:`DamagedFileError` and leave the file as
            it was, instead of continuing with a gap.

        Every kept dimension, variable (dtype, fill value, compression), variable attribute and group/root
        attribute is copied exactly (raw values, bit for bit) into a temporary file in the same folder, which
        then replaces ``path`` (``os.replace``): killed at any moment, the old file is still there, whole,
        until that replace. The groups' records (variables, dims, rows written) are rebuilt from the file,
        so :meth:`append`, :meth:`append_snapshot`, :meth:`set_attrs` and :meth:`close` continue as if the
        original writer had never stopped. The lock is taken first (:class:`FileBusyError` if held). All
        kept rows of one unlimited dim of one group are held in memory at once while copying.
        """
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
                if chunk is None:  # the writer's chunk = the HDF5 chunk length of t
                    lengths = [g.variables["t"].chunking() for g in src.groups.values() if "t" in g.variables]
                    chunk = next((c[0] for c in lengths if isinstance(c, list)), 50)
                self.chunk = int(chunk)
                tmp = _tmp_path(target)
                self._nc = netCDF4.Dataset(tmp, "w", format="NETCDF4", clobber=False)
                self._closed = False
                self._resume_root_attrs(src, config, config_json, extra, cuts)
                _copy_node(src, self._nc, math.inf, None, os.fspath(self.path), whole=False)
                for name, sg in src.groups.items():
                    dg = self._nc.createGroup(name)
                    self._groups[name] = _copy_node(sg, dg, cuts.get(name, math.inf), self.chunk,
                                                    os.fspath(self.path))
                    marker = sg.getncattr(_JSON_MARKER) if _JSON_MARKER in sg.ncattrs() else "[]"
                    self._json_names[name] = set(json.loads(marker))
                short = {g: (self._groups[g].n_t, int(n)) for g, n in (expect_rows or {}).items()
                         if g in self._groups and self._groups[g].n_t < int(n)}
                if short:
                    raise os_error(DamagedFileError, errno.EIO, f"cannot resume {self.path}: rows written before its "
                                   f"checkpoint are unreadable (group: rows readable / rows expected: {short}); the "
                                   f"file is damaged and left as it was; pyrod.open reads what is left of it")
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
        line = (f"{_utc_now()}: resumed by pyrod {__version__} (pyrod.output.RunWriter.resume, "
                f"cut={json.dumps(cuts, sort_keys=True)})")
        ra["history"] = f"{history}\n{line}" if history else line
        for k, v in ra.items():
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


# --------------------------------------------------------------------------------------------- resume copy
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
                          f"writer was killed during a flush); kept {n}", RuntimeWarning, stacklevel=4)
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


# --------------------------------------------------------------------------------------------- readers
def open_tree(path) -> "xarray.DataTree":  # noqa: F821
    """Load the whole file into memory as an ``xarray.DataTree`` (one child per run group) and close it.

    Root attrs include ``pyrod_config`` (JSON string; see :func:`config_of`) and ``pyrod_status``.
    JSON-encoded attrs stay strings; decode them with :func:`json_attr`. After a crash inside a flush, the
    rows of that flush are dropped with a ``RuntimeWarning``: trailing rows whose ``t`` (or snapshot
    coordinate) is NaN, and trailing HDF5 chunks that cannot be read ("NetCDF: HDF error").
    While a live RunWriter writes the file: reads a snapshot of every synced row, with a ``RuntimeWarning``
    (:class:`FileBusyError` if the file never stays still for a read; see the module docstring).
    ``ValueError`` for a file that is not NetCDF4 or not written by pyrod (no root ``pyrod_config``).
    """
    shown = os.fspath(path)
    return _read_consistent(shown, lambda src: _load_tree(src, shown))


class DamagedFileError(OSError):
    """A NetCDF-4 file whose HDF5 structure cannot be read (truncated, or overwritten in its index)."""


def os_error(cls, code: int, message: str) -> OSError:
    """An ``OSError`` subclass instance with ``errno`` set whose text is just ``message`` (no "[Errno N]")."""
    err = cls(message)
    err.errno = code
    return err


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


def config_of(path_or_tree) -> dict:
    """The run configuration (root attr ``pyrod_config``) as a dict: ``pyrod.simulate(**config_of(p))``.

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
    shown = os.fspath(path_or_tree)

    def read(src):
        with _open_nc(src, shown) as nc:
            _check_pyrod(nc, shown)
            return nc.getncattr("pyrod_config")

    return json.loads(_read_consistent(shown, read))


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
