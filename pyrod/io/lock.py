"""One writer per path, and reading a path while it is written: the sidecar lock, the temporary file of an
atomic replace, free-space checks, and the errors that name the user's path (:class:`FileBusyError`,
:func:`cannot_write`, :func:`os_error`).

One writer per path (issue 10; tested in tests/test_output_safety.py with real processes): before anything
is touched, :class:`~pyrod.io.writer.RunWriter` takes an exclusive ``fcntl.flock`` on the sidecar file
``<dir>/.<name>.lock`` and writes its pid, host and start time into it. A second writer of the same path (another
process, or another RunWriter in this process) is refused at once with :class:`FileBusyError` naming the holder.
The lock is held for the writer's life and released (lock file removed) by ``RunWriter.close``; the kernel
releases it when the process dies, so a lock file left by a killed writer blocks nobody. (flock is local to
one machine; on NFS, Linux maps it to NFS byte-range locks.)

Reading a file while it is written: HDF5 itself locks a file open for writing, so a plain
``xarray.open_datatree`` fails with "NetCDF: HDF error" (and the HDF5_USE_FILE_LOCKING environment variable
only counts at library start-up). The readers (:func:`~pyrod.io.reader.open_tree`,
:func:`~pyrod.io.reader.stored_config`) therefore look at the sidecar lock (:func:`_read_consistent`): when a live
writer holds it they read the file's bytes into memory between two of the writer's writes (the writer bumps a
sequence number in the lock file before and after every write+sync, a seqlock) and open that exact snapshot,
with a ``RuntimeWarning`` saying so: every synced row, nothing half-written. If the file changes during every
attempt for ``_READ_PATIENCE_S`` seconds they raise :class:`FileBusyError`.

Free space (:func:`ensure_space`): checked before every write, because HDF5 does not survive a write that fails
for lack of space.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import secrets
import shutil
import socket
import time
import warnings
from pathlib import Path

from .layout import _utc_now

_READ_PATIENCE_S = 10.0  # readers of a file being written retry this long for a write-free moment
#: bytes a writer leaves free on the device beyond the data of a write (HDF5 metadata, attributes, the close)
SPACE_RESERVE = 512 * 1024


class FileBusyError(RuntimeError):
    """The output path is held by a live writer (sidecar lock ``<dir>/.<name>.lock``).

    Attributes: ``path``, ``pid`` (int or None), ``host`` (str or None)."""

    def __init__(self, message: str, path, pid=None, host=None):
        super().__init__(message)
        self.path, self.pid, self.host = path, pid, host


def os_error(cls, code: int, message: str) -> OSError:
    """An ``OSError`` subclass instance with ``errno`` set whose text is just ``message`` (no "[Errno N]")."""
    err = cls(message)
    err.errno = code
    return err


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

