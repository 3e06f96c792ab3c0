"""Faults, nothing lost: a full disk, a truncated or damaged file, reading while another process writes, and
running out of (CUDA) memory. Each leaves a valid file of the steps done and a clear error."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrod
from pyrod.checkpoint import path_for
from pyrod.io import lock, writer
from pyrod.output import DamagedFileError

ROOT = Path(__file__).resolve().parents[1]
MLP = dict(model="mlp", data="digits", classes=2, n=40, model_kwargs={"width": 8})


def _run(path, steps=30, **kw):
    return pyrod.simulate(pyrod.problem(**MLP), pyrod.optimizers.GD(lr=0.5), steps=steps, eigs=1, eig_every=5,
                          chunk=5, path=path, overwrite=True, **kw)


def _same(a, b):
    for v in a.data_vars:
        x, y = a[v].values, b[v].values
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), v


# ------------------------------------------------------------------------------------------------ disk full
def test_disk_full_stops_before_the_write_with_a_valid_file_and_resumes(tmp_path, monkeypatch):
    """The device reports too little free space from the 4th chunk on: the run stops before writing it, with an
    ENOSPC error naming the file, the step and how to continue; the file holds the chunks before and is valid;
    once there is space again, resume gives the same run as one never stopped."""
    path = tmp_path / "full.nc"
    real, calls = shutil.disk_usage, []

    def usage(p):
        calls.append(p)
        u = real(p)
        return u._replace(free=1024) if len(calls) > 3 else u

    monkeypatch.setattr(lock.shutil, "disk_usage", usage)
    with pytest.raises(OSError) as e:
        _run(path)
    assert e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert f"no space left on the device of {path}" in msg and "the run stopped at step" in msg
    assert f"free some space, then continue with pyrod.resume({str(path)!r})" in msg
    assert ".lock" not in msg and ".tmp" not in msg
    monkeypatch.setattr(lock.shutil, "disk_usage", real)
    tree = pyrod.open(path)
    assert tree.attrs["pyrod_status"].startswith("failed: OSError: no space left")
    done = tree["discrete"].ds.sizes["t"]
    assert 0 < done < 30 and done % 5 == 0
    np.testing.assert_array_equal(tree["discrete"].ds.t.values, np.arange(done))
    resumed = pyrod.resume(path)
    _same(resumed["discrete"].ds, _run(tmp_path / "ref.nc")["discrete"].ds)


def test_a_write_that_fails_mid_flush_leaves_the_earlier_rows(tmp_path, monkeypatch):
    """A write that raises ENOSPC inside a flush (after some variables of the chunk were written, before its
    coordinate): the file stays valid with every earlier chunk, and the error is clear."""
    path = tmp_path / "mid.nc"
    orig, n = writer.RunWriter._flush_group, []

    def flaky(self, g):
        n.append(1)
        if len(n) == 4:
            name = next(v for v in g.vars if v != "t" and g.vars[v].dims[0] == "t")
            g.nc[name][g.n_t:g.n_t + len(g.rows)] = np.zeros(len(g.rows))   # half a flush on disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, g)

    monkeypatch.setattr(writer.RunWriter, "_flush_group", flaky)
    with pytest.raises(OSError, match=r"No space left on device.*the run stopped at step 15.*holds the steps before"):
        _run(path)
    monkeypatch.setattr(writer.RunWriter, "_flush_group", orig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # a half-written chunk (no coordinate) would be dropped
        ds = pyrod.open(path)["discrete"].ds
    n = ds.sizes["t"]                         # closing the file writes the failed chunk again when it can
    assert n in (15, 20)
    np.testing.assert_array_equal(ds.t.values, np.arange(n))
    _same(ds, _run(tmp_path / "ref.nc", steps=n)["discrete"].ds)


def _can_mount_tmpfs(where: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True).returncode == 0


def test_a_real_full_disk(tmp_path):
    """On a 2 MiB tmpfs (where this process may mount one): parameter snapshots fill it; the run stops with
    ENOSPC before HDF5 ever sees a failed write, the file opens with every synced row, and after the file system
    grows the run resumes to its end."""
    fs = tmp_path / "small"
    if not _can_mount_tmpfs(fs):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); the patched tests above cover the logic")
    try:
        path = fs / "r.nc"
        with pytest.raises(OSError) as e:
            pyrod.simulate(pyrod.problem(model="mlp", data="digits", classes=4, n=100, model_kwargs={"width": 32}),
                           pyrod.optimizers.GD(lr=0.5), steps=150, chunk=5, snapshot_every=1, path=path)
        assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)
        tree = pyrod.open(path)
        done = tree["discrete"].ds.sizes["t"]
        assert done > 0 and tree["discrete"].ds.sizes["t_snap"] >= done - 5
        subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)
        assert pyrod.resume(path).attrs["steps_completed"] == 150
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)


# ------------------------------------------------------------------------------------------------ damaged files
def test_a_truncated_file_is_a_clear_error_on_open_and_resume(tmp_path):
    path = tmp_path / "t.nc"
    _run(path, steps=20)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2)
    ckpt = Path(path_for(path)).read_bytes()
    with pytest.raises(DamagedFileError, match=rf"{path} cannot be read: it is truncated: {size // 2} of its "
                                               rf"{size} bytes"):
        pyrod.open(path)
    with pytest.raises(DamagedFileError, match=rf"cannot resume: {path} cannot be read: it is truncated"):
        pyrod.resume(path)
    assert path.stat().st_size == size // 2 and Path(path_for(path)).read_bytes() == ckpt    # nothing touched


def _chunk_offset(path, values):
    """Byte offset of the zlib stream of one HDF5 chunk of a float64 variable (shuffle + zlib level 4)."""
    import zlib
    raw = np.frombuffer(np.asarray(values, "<f8").tobytes(), np.uint8)
    packed = zlib.compress(raw.reshape(len(values), 8).T.tobytes(), 4)
    data = path.read_bytes()
    return (data.find(packed), len(packed)) if data.count(packed) == 1 else (None, None)


def test_a_damaged_chunk_inside_the_file(tmp_path):
    """An HDF5 chunk of ``loss`` in the middle of the file overwritten (a disk error): open reads every other
    value (that chunk's rows NaN, with a warning saying so); resume refuses with a clear error and leaves the file
    as it was instead of continuing with a gap."""
    path = tmp_path / "d.nc"
    ref = _run(path, steps=40)["discrete"].ds
    at, n = _chunk_offset(path, ref.loss.values[10:15])
    if at is None:
        pytest.skip("cannot locate the chunk bytes (different zlib build)")
    data = bytearray(path.read_bytes())
    data[at:at + n] = bytes(n)
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"damaged chunks inside the file: .*rows 10-14': 'loss'"):
        tree = pyrod.open(path)
    ds = tree["discrete"].ds
    assert np.isnan(ds.loss.values[10:15]).all()
    np.testing.assert_array_equal(np.delete(ds.loss.values, range(10, 15)), np.delete(ref.loss.values, range(10, 15)))
    np.testing.assert_array_equal(ds.grad_norm.values, ref.grad_norm.values)
    before = path.read_bytes()
    with pytest.raises(DamagedFileError, match=r"cannot resume .*rows written before its checkpoint are unreadable"):
        pyrod.resume(path, steps=50)
    assert path.read_bytes() == before


def test_files_that_are_not_pyrod_runs(tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=rf"{text} is not a NetCDF4/HDF5 file"):
        pyrod.open(text)
    with pytest.raises(ValueError, match=rf"cannot resume: {text} is not a NetCDF4/HDF5 file"):
        pyrod.resume(text)
    with pytest.raises(FileNotFoundError, match=rf"cannot resume {tmp_path / 'gone.nc'}: no such file"):
        pyrod.resume(tmp_path / "gone.nc")
    with pytest.raises(ValueError, match=rf"{tmp_path} is a directory"):
        pyrod.open(tmp_path)


def test_unwritable_places_are_named_by_the_users_path(tmp_path):
    for bad in ("/proc/pyrod-test.nc", "/sys/pyrod-test.nc"):
        if not os.path.isdir(os.path.dirname(bad)):
            continue
        with pytest.raises(OSError) as e:
            _run(bad, steps=2)
        assert str(e.value).startswith(f"cannot write {bad}: ") and ".lock" not in str(e.value), str(e.value)


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    a, b = tmp_path / "a.nc", tmp_path / "b.nc"
    _run(a, steps=10)
    pyrod.simulate(pyrod.problem(toy="quartic"), pyrod.optimizers.GD(lr=0.1), steps=10, chunk=5, path=b)
    shutil.copy(path_for(a), path_for(b))
    with pytest.raises(FileNotFoundError, match=r"its checkpoint .* belongs to another run"):
        pyrod.resume(b, steps=20)


# ------------------------------------------------------------------------------------------------ reading while written
def test_reading_a_run_while_another_process_writes_it(tmp_path):
    """A simulation runs in another process; every pyrod.open meanwhile gives a consistent prefix: whole chunks,
    consecutive steps, the same numbers as the finished file."""
    path = tmp_path / "live.nc"
    script = textwrap.dedent(f"""
        import pyrod
        pyrod.simulate(pyrod.problem(**{MLP!r}), pyrod.optimizers.GD(lr=0.5), steps=100000, eigs=1, eig_every=1,
                       chunk=5, path={str(path)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    seen = []
    try:
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 120 and len(seen) < 5:
            if not path.exists():
                time.sleep(0.05)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = pyrod.open(path)
            if "discrete" in tree.children and tree["discrete"].ds.sizes["t"]:
                seen.append(tree["discrete"].ds.load())
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    finally:
        proc.kill()                 # a killed writer leaves a valid file of its synced chunks
        proc.communicate()
    final = pyrod.open(path)["discrete"].ds
    assert len(seen) == 5
    for ds in seen:
        n = ds.sizes["t"]
        assert n % 5 == 0
        np.testing.assert_array_equal(ds.t.values, np.arange(n))
        _same(ds, final.isel(t=slice(0, n)))
    assert [d.sizes["t"] for d in seen] == sorted(d.sizes["t"] for d in seen)


# ------------------------------------------------------------------------------------------------ out of memory
def test_cuda_out_of_memory_names_batch_size_and_keeps_the_run(tmp_path, monkeypatch):
    """torch.cuda.OutOfMemoryError injected on the CPU at step 15 (what a too-large problem on a GPU raises): a
    RunOutOfMemory (still a torch.cuda.OutOfMemoryError) that names batch_size, the step and the kept file; the
    run resumes from its checkpoint."""
    path = tmp_path / "oom.nc"
    prob = pyrod.problem(**MLP)
    orig, calls = type(prob).loss_and_grad, []

    def alloc(self, w):
        calls.append(1)
        if len(calls) == 17:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB "
                                              "total capacity)")
        return orig(self, w)

    monkeypatch.setattr(type(prob), "loss_and_grad", alloc)
    with pytest.raises(torch.cuda.OutOfMemoryError) as e:
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), steps=40, chunk=5, path=path)
    assert isinstance(e.value, pyrod.simulation.RunOutOfMemory)
    msg = str(e.value)
    assert "out of memory" in msg and "batch_size" in msg and "CUDA out of memory. Tried to allocate 2.00 GiB" in msg
    assert f"continue with pyrod.resume({str(path)!r})" in msg
    monkeypatch.setattr(type(prob), "loss_and_grad", orig)
    assert pyrod.open(path)["discrete"].ds.sizes["t"] == 15
    assert pyrod.resume(path).attrs["steps_completed"] == 40


def test_out_of_memory_at_the_first_gradient(monkeypatch, tmp_path):
    """Out of memory before the first step (the gradient that starts the run) names batch_size too."""
    prob = pyrod.problem(**MLP)

    def alloc(self, w):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(type(prob), "loss_and_grad", alloc)
    with pytest.raises(pyrod.simulation.RunOutOfMemory, match=r"while setting the run up .*batch_size"):
        pyrod.simulate(prob, pyrod.optimizers.GD(lr=0.5), steps=4, path=tmp_path / "x.nc")
