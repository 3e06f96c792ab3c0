"""pyrod.output: one writer per path (sidecar flock), atomic overwrite, reading a file being written, clear
errors for foreign files and bad paths, and RunWriter.resume (issue 10). Real processes where it matters."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import netCDF4
import numpy as np
import pytest
import xarray as xr

from pyrod.io import lock
from pyrod.output import FileBusyError, RunWriter, config_of, json_attr, open_tree

REPO = Path(__file__).resolve().parents[1]

# Shared by the test process and the child writers: deterministic rows of a multi-group file.
ROWS = r"""
import numpy as np
from pyrod.output import RunWriter, Var

VARS = [Var("loss", ("t",), "training loss", "1"),
        Var("eigs", ("t", "eig"), "top Hessian eigenvalues", "1", attrs={"comment": "NaN where not measured"}),
        Var("nfev", ("t",), "gradient evaluations", "1", dtype="i8"),
        Var("w", ("t_snap", "param"), "parameters", "1", dtype="f4"),
        Var("w0", ("param",), "initial parameters", "1")]


def make(path, chunk=4, config=None, overwrite=False):
    w = RunWriter(path, config=config or {"lr": 0.1, "steps": 40, "opt": {"name": "gd"}},
                  attrs={"title": "safety", "tags": ["a", "b"]}, overwrite=overwrite, chunk=chunk)
    w.add_group("discrete", VARS, dims={"eig": 3, "param": 5, "t_snap": None}, attrs={"kind": "gd"})
    w.add_group("stable", VARS[:3], dims={"eig": 3})
    w.add_group("rod", VARS[:1], dims={}, attrs={"events": [{"t": 2.5, "kind": "eos"}]})
    w.write_static("discrete", "w0", np.linspace(0, 1, 5))
    return w


def rows(w, lo, hi):
    for i in range(lo, hi):
        eig = {"eigs": np.array([i, -i, 0.5 * i][: 1 + i % 3], float)} if i % 2 == 0 else {}
        w.append("discrete", i, {"loss": np.exp(-i / 9), "nfev": 2 * i, **eig})
        if i % 5 == 0:
            w.append_snapshot("discrete", "t_snap", i, {"w": np.sin(np.arange(5) + i)})
        w.append("stable", i + 0.5, {"loss": 1.0 / (1 + i), "eigs": np.cos(np.arange(3) * i)})
        w.append("rod", i + 0.5, {"loss": float(i) ** 0.5})
"""
_ns: dict = {}
exec(ROWS, _ns)
make, rows, VARS = _ns["make"], _ns["rows"], _ns["VARS"]


def _spawn(tmp_path, body: str) -> subprocess.Popen:
    script = tmp_path / f"child_{abs(hash(body)) % 10**8}.py"
    script.write_text(ROWS + "\nimport sys, os, time\n" + body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_line(proc, prefix: str, timeout: float = 60.0) -> str:
    import selectors
    import time

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line:
                break
    proc.kill()
    pytest.fail(f"child never printed {prefix!r}: {proc.stderr.read()[-3000:]}")


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=20) == -signal.SIGKILL


def _cleanup(proc) -> None:
    """Kill the child if still alive and close its pipes (no ResourceWarning later)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _groups_equal(a, b, groups=("discrete", "stable", "rod")):
    for g in groups:
        xr.testing.assert_identical(a[g].to_dataset(), b[g].to_dataset())
    ra = {k: v for k, v in a.attrs.items() if k not in ("created", "history")}
    rb = {k: v for k, v in b.attrs.items() if k not in ("created", "history")}
    assert ra.keys() == rb.keys()
    for k in ra:
        np.testing.assert_array_equal(ra[k], rb[k], err_msg=k)


def _lock_file(path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.lock")


# ------------------------------------------------------------------------------------------- two writers
def test_second_writer_refused_while_first_writes_and_reader_gets_snapshot(tmp_path, monkeypatch):
    """A child process writes (chunk 4, 10 rows), then waits on stdin holding the file. In this process:
    a second writer (overwrite or not) and a resume are refused at once, naming the child's pid, and the
    file is not touched; open_tree reads the synced rows with a warning. While the child is inside a write,
    readers wait and give up with FileBusyError. Then the child finishes: its file is complete and intact,
    and the lock file is gone."""
    path = tmp_path / "run.nc"
    child = _spawn(tmp_path, f"""
w = make({str(path)!r})
rows(w, 0, 10)
print("ready", os.getpid(), w.n_written("discrete"), flush=True)
sys.stdin.readline()
with w._lock.writing():  # as if stuck inside a long flush
    print("writing", flush=True)
    sys.stdin.readline()
rows(w, 10, 20)
w.close()
print("done", flush=True)
""")
    try:
        line = _wait_line(child, "ready")
        pid, synced = int(line.split()[1]), int(line.split()[2])
        assert pid == child.pid and synced == 8
        size = path.stat().st_size
        for attempt in (lambda: RunWriter(path, config={}, overwrite=True),
                        lambda: RunWriter(path, config={}),
                        lambda: RunWriter.resume(path, cut={"discrete": 3.0})):
            with pytest.raises(FileBusyError, match=rf"run.nc is being written by pid {pid} on host ") as e:
                attempt()
            assert e.value.pid == pid and "second writer is refused" in str(e.value)
        assert path.stat().st_size == size and not list(tmp_path.glob(".run.nc.pyrod-*.tmp"))
        assert json.loads(_lock_file(path).read_text().split("\npid ")[1].split()[0]) == pid
        with pytest.warns(RuntimeWarning, match=rf"being written by pid {pid}.*snapshot of the rows synced"):
            live = open_tree(path)
        assert live["discrete"].sizes["t"] == 8 and live.attrs["pyrod_status"] == "running"
        np.testing.assert_array_equal(live["discrete"]["t"].values, np.arange(8.0))
        with pytest.warns(RuntimeWarning, match="being written"):
            assert config_of(path)["lr"] == 0.1
        child.stdin.write("go\n")
        child.stdin.flush()
        _wait_line(child, "writing")  # a reader never reads during a write (the seqlock)
        monkeypatch.setattr(lock, "_READ_PATIENCE_S", 0.3)
        with pytest.raises(FileBusyError, match=rf"pid {pid} .*changed during each of \d+ read attempts in "
                                                r"0.3 s; wait for it or copy the file"):
            open_tree(path)
        child.stdin.write("go\n")
        child.stdin.flush()
        _wait_line(child, "done")
        assert child.wait(timeout=20) == 0
    finally:
        _cleanup(child)
    assert not _lock_file(path).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "being written" or salvage warnings now
        tree = open_tree(path)
    ref_path = tmp_path / "ref.nc"
    with make(ref_path) as ref:
        rows(ref, 0, 20)
    _groups_equal(tree, open_tree(ref_path))
    assert tree.attrs["pyrod_status"] == "complete"


def test_reads_while_a_child_appends_are_consistent_prefixes(tmp_path):
    """The child syncs every group after every row (chunk 1), 2 ms of "compute" between rows; every
    open_tree in between returns a consistent prefix (consecutive t, exact values, growing), never a
    half-written flush. (Measured outside the suite: reading the bytes without the seqlock while a child
    syncs with no pause at all gave 6 bad reads of 80 — HDF error, salvaged or NaN-trimmed rows; with
    2 ms pauses 0 of 100, so this test checks the snapshot path, and the seqlock itself is checked by the
    "writing" step of the test above. A writer that never pauses gets FileBusyError after
    _READ_PATIENCE_S.)"""
    path = tmp_path / "run.nc"
    child = _spawn(tmp_path, f"""
w = make({str(path)!r}, chunk=1)
print("ready", flush=True)
i = 0
while i < 100000:
    rows(w, i, i + 1)
    i += 1
    time.sleep(0.002)
""")
    try:
        _wait_line(child, "ready")
        sizes = []
        for _ in range(12):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                tree = open_tree(path)
            msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
            assert msgs and all("being written" in m for m in msgs), msgs
            ds = tree["discrete"].to_dataset()
            n = ds.sizes["t"]
            np.testing.assert_array_equal(ds.t.values, np.arange(n, dtype=float))
            np.testing.assert_array_equal(ds.loss.values, np.exp(-np.arange(n) / 9))
            np.testing.assert_array_equal(ds.nfev.values, 2 * np.arange(n))
            m = tree["rod"].sizes["t"]
            assert m in (n, n - 1)  # rod is appended after discrete within a row
            np.testing.assert_array_equal(tree["rod"]["loss"].values, np.arange(m) ** 0.5)
            sizes.append(n)
        assert child.poll() is None, child.stderr.read()[-2000:]
    finally:
        if child.poll() is None:
            _kill(child)
        _cleanup(child)
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0], sizes
    assert len(open_tree(path)["discrete"]["t"]) >= sizes[-1]  # the dead writer's lock blocks nobody


def test_overwrite_killed_before_replace_keeps_old_file(tmp_path):
    """overwrite=True: a writer SIGKILLed inside its constructor, after its first sync but before the
    os.replace, leaves the old file byte for byte; the next writer removes its temporary file. A writer
    killed after the constructor has replaced the old file by the new, empty run (status "running")."""
    path = tmp_path / "run.nc"
    with make(path) as w:
        rows(w, 0, 6)
    old_bytes, old_tree = path.read_bytes(), open_tree(path)
    child = _spawn(tmp_path, f"""
def stuck(*a, **k):
    print("replacing", flush=True)
    time.sleep(600)
os.replace = stuck
make({str(path)!r}, config={{"lr": 0.5}}, overwrite=True)
""")
    try:
        _wait_line(child, "replacing")
        assert len(list(tmp_path.glob(".run.nc.pyrod-*.tmp"))) == 1
        _kill(child)
    finally:
        _cleanup(child)
    assert path.read_bytes() == old_bytes
    _groups_equal(open_tree(path), old_tree)
    assert config_of(path)["lr"] == 0.1

    child = _spawn(tmp_path, f"""
w = RunWriter({str(path)!r}, config={{"lr": 0.5}}, overwrite=True)
print("constructed", flush=True)
time.sleep(600)
""")
    try:
        _wait_line(child, "constructed")
        assert not list(tmp_path.glob(".run.nc.pyrod-*.tmp"))  # the stale one was removed
        _kill(child)
    finally:
        _cleanup(child)
    tree = open_tree(path)
    assert config_of(path) == {"lr": 0.5} and tree.attrs["pyrod_status"] == "running"
    assert not tree.children


def test_same_process_second_writer_and_stale_lock(tmp_path):
    path = tmp_path / "run.nc"
    w = RunWriter(path, config={})
    with pytest.raises(FileBusyError, match=rf"pid {os.getpid()} on host \S+ \(this process\).*close\(\) its RunWriter"):
        RunWriter(path, config={}, overwrite=True)
    w.close()
    assert not _lock_file(path).exists()
    # a lock file left by a dead writer (not flocked) blocks nobody and is taken over
    _lock_file(path).write_text("pid 999999\nhost elsewhere\nseq 00000000000000000001\n")
    with RunWriter(path, config={"v": 2}, overwrite=True) as w:
        assert f"pid {os.getpid()}\n" in _lock_file(path).read_text()
    assert config_of(path) == {"v": 2} and not _lock_file(path).exists()


def test_new_path_unchanged_for_the_user(tmp_path):
    path = tmp_path / "sub" / "dir" / "new.nc"
    with RunWriter(path, config={"a": 1}) as w:
        assert path.exists()  # in place after the constructor
        with pytest.warns(RuntimeWarning, match=r"being written by pid \d+ on host \S+ \(this process\)"):
            assert open_tree(path).attrs["pyrod_status"] == "running"
        w.add_group("g", VARS[:1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["new.nc"]  # no lock or temp file left


# ------------------------------------------------------------------------------------------- clear errors
def test_foreign_files_and_bad_paths(tmp_path):
    foreign = tmp_path / "foreign.nc"
    with netCDF4.Dataset(foreign, "w") as nc:
        nc.createDimension("x", 3)
        nc.createVariable("temperature", "f8", ("x",))[:] = 1.0
        nc.createGroup("ocean")
        nc.title = "not pyrod"
    msg = r"foreign.nc is not a pyrod output file: no root attribute 'pyrod_config' \(found groups \['ocean'\]"
    with pytest.raises(ValueError, match=msg) as e:
        open_tree(foreign)
    assert "'temperature'" in str(e.value) and "'title'" in str(e.value)
    with pytest.raises(ValueError, match="not a pyrod output file"):
        config_of(foreign)
    import pyrod

    with pytest.raises(ValueError, match="not a pyrod output file"):
        pyrod.open(foreign)
    text = tmp_path / "notes.nc"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.nc is not a NetCDF4/HDF5 file"):
        open_tree(text)
    with pytest.raises(ValueError, match="is a directory"):
        open_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        open_tree(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match=r"path '' is empty"):
        RunWriter("", config={})
    with pytest.raises(ValueError, match=rf"path {str(tmp_path)!r} is a directory.*run.nc"):
        RunWriter(tmp_path, config={})
    with pytest.raises(ValueError, match=r"path 'newdir/' is a directory"):
        RunWriter("newdir/", config={})
    assert not Path("newdir").exists()


# ------------------------------------------------------------------------------------------- resume
def test_resume_after_sigkill_equals_one_go(tmp_path):
    """A child writes rows 0..16 (chunk 4: 16 rows synced, snapshots at 0, 5, 10, 15) and is SIGKILLed.
    resume(cut=11 for every group) keeps t < 11 (and t_snap < 11), the continued writer appends rows
    11..22 and closes: every group is identical (values, dtypes, attrs, JSON attrs) to a file written in one
    go, and so is the root apart from created/history; on disk the dtypes, fill values, compression and
    HDF5 chunks match too."""
    path = tmp_path / "run.nc"
    child = _spawn(tmp_path, f"""
w = make({str(path)!r})
rows(w, 0, 17)
print("ready", w.n_written("discrete"), w.n_written("discrete", "t_snap"), flush=True)
time.sleep(600)
""")
    try:
        line = _wait_line(child, "ready")
        assert line.split()[1:] == ["16", "4"]
        _kill(child)
    finally:
        _cleanup(child)
    killed = open_tree(path)
    assert killed["discrete"].sizes["t"] == 16 and killed.attrs["pyrod_status"] == "running"

    cut = {"discrete": 11, "stable": 11, "rod": 11}
    w = RunWriter.resume(path, cut=cut)
    assert (w.n_written("discrete"), w.n_written("discrete", "t_snap"), w.n_written("rod")) == (11, 3, 11)
    assert w.chunk == 4
    rows(w, 11, 23)
    w.set_attrs("rod", {"events": [{"t": 2.5, "kind": "eos"}, {"t": 20.5, "kind": "loss<1"}]})
    w.close()

    ref = tmp_path / "ref.nc"
    with make(ref) as r:
        rows(r, 0, 23)
        r.set_attrs("rod", {"events": [{"t": 2.5, "kind": "eos"}, {"t": 20.5, "kind": "loss<1"}]})
    a, b = open_tree(path), open_tree(ref)
    _groups_equal(a, b)
    assert a.attrs["pyrod_status"] == "complete" and "resumed by pyrod" in a.attrs["history"]
    assert a.attrs["created"] == killed.attrs["created"]
    assert json_attr(a["rod"], "events")[1]["kind"] == "loss<1" and json_attr(a, "tags") == ["a", "b"]
    with netCDF4.Dataset(path) as na, netCDF4.Dataset(ref) as nb:
        for g in ("discrete", "stable", "rod"):
            ga, gb = na[g], nb[g]
            assert list(ga.dimensions) == list(gb.dimensions) and list(ga.variables) == list(gb.variables)
            for name, va in ga.variables.items():
                vb = gb[name]
                assert va.dtype == vb.dtype and va.dimensions == vb.dimensions, name
                assert va.chunking() == vb.chunking() and va.filters() == vb.filters(), name
                assert va.ncattrs() == vb.ncattrs(), name
                np.testing.assert_array_equal(va._FillValue, vb._FillValue)
                va.set_auto_mask(False)
                vb.set_auto_mask(False)
                assert va[...].tobytes() == vb[...].tobytes(), name  # bit for bit, NaN cells included


def test_resume_with_new_config_partial_cut_and_attrs(tmp_path):
    """Cuts differ per group, one group is not cut (kept whole); config= replaces pyrod_config and its flat
    copies, attrs= adds a root attribute; a chunk= change re-chunks t-variables only in the encoding."""
    path, ref = tmp_path / "run.nc", tmp_path / "ref.nc"
    with make(path) as w:
        rows(w, 0, 14)
    new_cfg = {"lr": 0.2, "momentum": 0.9, "opt": {"name": "hb"}}
    w = RunWriter.resume(path, cut={"discrete": 9.0, "stable": 6.5}, config=new_cfg,
                         attrs={"note": "resumed", "flags": {"x": True}}, chunk=5)
    assert (w.n_written("discrete"), w.n_written("stable"), w.n_written("rod")) == (9, 6, 14)
    assert w.n_written("discrete", "t_snap") == 2 and w.chunk == 5
    for i in range(9, 14):
        w.append("discrete", i, {"loss": np.exp(-i / 9), "nfev": 2 * i,
                                 **({"eigs": np.array([i, -i, 0.5 * i][: 1 + i % 3], float)} if i % 2 == 0 else {})})
        if i % 5 == 0:
            w.append_snapshot("discrete", "t_snap", i, {"w": np.sin(np.arange(5) + i)})
    for i in range(6, 14):
        w.append("stable", i + 0.5, {"loss": 1.0 / (1 + i), "eigs": np.cos(np.arange(3) * i)})
    w.close()
    with make(ref, config=new_cfg) as r:
        rows(r, 0, 14)
        r.set_attrs(None, {"note": "resumed", "flags": {"x": True}})
    a, b = open_tree(path), open_tree(ref)
    _groups_equal(a, b)
    assert config_of(path) == new_cfg and a.attrs["momentum"] == 0.9 and "steps" not in a.attrs
    assert json_attr(a, "flags") == {"x": True}
    with netCDF4.Dataset(path) as nc:
        assert nc["discrete"]["loss"].chunking() == [5] and nc["discrete"]["w"].chunking()[0] == 1


def test_resume_killed_midway_leaves_old_file_and_errors(tmp_path):
    path = tmp_path / "run.nc"
    with make(path) as w:
        rows(w, 0, 9)
    before = path.read_bytes()
    child = _spawn(tmp_path, f"""
def stuck(*a, **k):
    print("replacing", flush=True)
    time.sleep(600)
os.replace = stuck
RunWriter.resume({str(path)!r}, cut={{"discrete": 3}})
""")
    try:
        _wait_line(child, "replacing")
        _kill(child)
    finally:
        _cleanup(child)
    assert path.read_bytes() == before  # untouched; the temporary copy is the next writer's to remove
    with pytest.raises(ValueError, match=r"cut names groups \['central'\].*groups: \['discrete', 'rod'"):
        RunWriter.resume(path, cut={"central": 1.0})
    with pytest.raises(ValueError, match="NaN"):
        RunWriter.resume(path, cut={"rod": float("nan")})
    with pytest.raises(FileNotFoundError, match="nope.nc"):
        RunWriter.resume(tmp_path / "nope.nc", cut={})
    assert path.read_bytes() == before and not list(tmp_path.glob(".run.nc.*"))
    with RunWriter.resume(path, cut={}) as w:  # nothing cut: the same rows, continued
        rows(w, 9, 12)
    ref = tmp_path / "ref.nc"
    with make(ref) as r:
        rows(r, 0, 12)
    _groups_equal(open_tree(path), open_tree(ref))


def test_resume_drops_unreadable_trailing_chunk(tmp_path):
    """A file whose last HDF5 chunk of loss cannot be read (what a kill inside a flush can leave, emulated
    by zeroing its bytes as in test_output.py): resume warns, keeps the 20 readable rows, and continues."""
    import zlib

    path = tmp_path / "run.nc"
    with RunWriter(path, config={}, chunk=10) as w:
        w.add_group("g", VARS[:1])
        for i in range(30):
            w.append("g", i, {"loss": 1000.0 + i**2})
    last = 1000.0 + np.arange(20, 30) ** 2
    packed = zlib.compress(np.frombuffer(last.astype("<f8").tobytes(), np.uint8).reshape(10, 8).T.tobytes(), 4)
    data = bytearray(path.read_bytes())
    if data.count(packed) != 1:
        pytest.skip("cannot locate the chunk bytes (different zlib build)")
    at = data.find(packed)
    data[at:at + len(packed)] = bytes(len(packed))
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=r"unreadable trailing rows along 't' not copied.*kept 20"):
        w = RunWriter.resume(path, cut={})
    for i in range(20, 25):
        w.append("g", i, {"loss": -float(i)})
    w.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_tree(path)["g"].to_dataset()
    np.testing.assert_array_equal(ds.loss.values, np.r_[1000.0 + np.arange(20) ** 2, -np.arange(20.0, 25)])
