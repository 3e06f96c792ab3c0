"""Sweeps: one run per point of a hyperparameter grid, run in parallel on Dask, resumable, one xarray back.

::

    base = pyrod.RunSpec(problem={"toy": "quadratic"}, optimizer={"name": "HeavyBall", "lr": 0.1, "beta": 0.5},
                         stop={"steps": 200})
    res = pyrod.sweep(base, grid={"optimizer.lr": [0.05, 0.1], "optimizer.beta": [0.0, 0.5],
                                  "problem.seed": [0, 1]}, out="sweeps/hb")
    sw = pyrod.open_sweep("sweeps/hb")            # DataTree: sw["discrete"].ds.loss has dims (lr, beta, seed, t)

The grid
    ``grid`` maps dotted spec keys (:meth:`pyrod.RunSpec.replace`) to lists of values; the points are the
    Cartesian product of the axes, in the grid's order. **Paired keys** (one axis, values changing together)
    are written with a tuple key and tuples of values, ``{("optimizer.lr", "stop.steps"): [(0.1, 100),
    (0.2, 50)]}``, or, equivalently, with ``zip=[("optimizer.lr", "stop.steps")]`` over two equal-length lists
    of ``grid``. A whole section or config can be a value too (``{"optimizer": [{"name": "GD", "lr": 0.1},
    ...]}``).

Files
    One NetCDF file per point under ``out``, named from the point's values (``lr=0.05_beta=0.5_seed=1.nc``;
    the short name of a key is its last component, the whole key with ``_`` where two keys share it; floats in
    their shortest exact form) or ``point-<sha1 of the values>.nc`` when that name would be longer than 100
    characters or need characters other than letters, digits and ``._+-=``. ``name=`` (a function of the
    point's ``{key: value}`` dict) replaces the naming. Next to them ``out/sweep.json``: the base spec, the
    grid and every point's ``status`` (``pending``, ``running``, ``complete``, ``stopped`` (early, with its
    ``stop_reason``), ``failed`` (with its ``error`` traceback)), written atomically by the client process
    only.

Execution
    Each point is one pure task :func:`run_point` (spec dict in, summary dict out) that simulates the point,
    resumes it from its checkpoint (``pyrod.resume``) or finds it already done. Tasks run on Dask
    (``dask.distributed``): by default a ``LocalCluster`` of ``jobs`` (default: the number of cores)
    single-threaded worker processes; ``client="tcp://host:8786"`` or a ``distributed.Client`` uses an
    existing cluster; ``jobs=1`` runs the points one after the other in this process (no Dask). Results are
    gathered as they complete (``as_completed``) and the manifest is rewritten each time.

Faults and reruns
    A point that raises is recorded as ``failed`` with its traceback and the sweep goes on. Calling
    :func:`sweep` again with the same arguments skips finished points and resumes the others from their
    checkpoints (a larger ``stop.steps`` extends finished points). A worker process that dies mid-task loses
    at most that point's steps since its last checkpoint: the scheduler reruns the task on another worker,
    which resumes the point, bit-identically to an uninterrupted run (same torch build, one thread).

One time unit = one optimizer step everywhere.

Why one module of ~750 lines: the grid expansion, the manifest, the Dask submission with skip/resume and the
reader of the results all read and write the same manifest format (``sweep.json``), which is kept in one place.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
import os
import secrets
import socket
import sys
import time
import traceback
import types
from datetime import datetime, timezone

__all__ = ["sweep", "open_sweep", "run_point", "expand_grid", "local_cluster", "read_manifest", "SweepError",
           "SweepResult", "MANIFEST"]

#: the manifest's file name inside the sweep folder
MANIFEST = "sweep.json"
MANIFEST_FORMAT = 1
#: longest readable file stem; longer names fall back to ``point-<hash>``
NAME_MAX = 100
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-=")
#: dimension names of pyrod's output that a grid dimension must not take
_RESERVED_DIMS = ("t", "eig", "t_snap", "param", "point")
STATUSES = ("pending", "running", "complete", "stopped", "failed")


class SweepError(ValueError):
    """A bad grid, base or sweep folder (the message names the bad key or value)."""


# ----------------------------------------------------------------------------------------- the grid
def _as_spec(base):
    from .spec import RunSpec

    if isinstance(base, RunSpec):
        spec = base
    elif isinstance(base, dict):
        fields = set(RunSpec.__dataclass_fields__) | {"spec_version"}
        if set(base) <= fields and "optimizer" in base:
            spec = RunSpec.from_dict(base)
        else:
            kw = dict(base)
            if "problem" not in kw or "optimizer" not in kw:
                raise SweepError(f"base={sorted(base)!r}: a dict base needs 'problem' and 'optimizer' (the keyword "
                                 f"form of pyrod.simulate) or must be a RunSpec dict")
            spec = RunSpec.from_call(kw.pop("problem"), kw.pop("optimizer"), **kw)
    else:
        raise SweepError(f"base must be a pyrod.RunSpec or a dict of simulate keywords, got {type(base).__name__}")
    if spec.problem is None:
        raise SweepError("base.problem is None: a sweep ships specs to worker processes, so the problem needs a "
                         "replay config (pyrod.problem(...) or Problem.from_factory, not Problem.from_module)")
    return spec


def _axes(grid, zip_) -> list:
    """``[(keys tuple, [values tuple, ...]), ...]``: the grid's axes in order, paired keys as one axis."""
    if grid is None:
        grid = {}
    if not isinstance(grid, dict):
        raise SweepError(f"grid must be a dict {{dotted key: list of values}}, got {type(grid).__name__}")
    axes = []
    for key, values in grid.items():
        keys = key if isinstance(key, tuple) else (key,)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise SweepError(f"grid key {key!r} must be a dotted spec key (str) or a tuple of them")
        if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
            raise SweepError(f"grid[{key!r}]={values!r} must be a list of values")
        values = list(values)
        if not values:
            raise SweepError(f"grid[{key!r}] is empty: a sweep over no value has no point")
        if isinstance(key, tuple):
            rows = []
            for v in values:
                if not isinstance(v, (tuple, list)) or len(v) != len(keys):
                    raise SweepError(f"grid[{key!r}]: value {v!r} must be a tuple of {len(keys)} values (one per key)")
                rows.append(tuple(v))
        else:
            rows = [(v,) for v in values]
        axes.append((keys, rows))
    for group in zip_ or ():
        group = tuple(group)
        if len(group) < 2:
            raise SweepError(f"zip entry {group!r} must name at least two grid keys")
        idx = []
        for k in group:
            hit = [i for i, (keys, _) in enumerate(axes) if keys == (k,)]
            if not hit:
                raise SweepError(f"zip entry {group!r}: {k!r} is not a single-key axis of grid "
                                 f"(axes: {[a[0] for a in axes]})")
            idx.append(hit[0])
        lens = {len(axes[i][1]) for i in idx}
        if len(lens) != 1:
            raise SweepError(f"zip entry {group!r}: the lists have different lengths "
                             f"{[len(axes[i][1]) for i in idx]}")
        rows = [tuple(axes[i][1][j][0] for i in idx) for j in range(lens.pop())]
        first = min(idx)
        axes[first] = (group, rows)
        axes = [a for i, a in enumerate(axes) if i == first or i not in idx]
    seen = set()
    for keys, rows in axes:
        for k in keys:
            if k in seen:
                raise SweepError(f"grid key {k!r} appears on two axes")
            seen.add(k)
        canon = [_canon(r) for r in rows]
        if len(set(canon)) != len(canon):
            dup = next(r for r, c in zip(rows, canon, strict=True) if canon.count(c) > 1)
            raise SweepError(f"grid axis {keys!r} lists the value {dup!r} twice")
    return axes


def _canon(v) -> str:
    return json.dumps(_jsonable(v), sort_keys=True, separators=(",", ":"))


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            return v.item()
        except (TypeError, ValueError):
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _short_names(keys) -> dict:
    """dotted key -> short name (last component; the key with ``_`` where the short name is shared or reserved)."""
    last = {k: k.split(".")[-1] for k in keys}
    count = {}
    for s in last.values():
        count[s] = count.get(s, 0) + 1
    return {k: (s if count[s] == 1 and s not in _RESERVED_DIMS else k.replace(".", "_")) for k, s in last.items()}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    if isinstance(v, str):
        return v
    return _canon(v)


def point_name(point: dict, short: dict) -> str:
    """The default file stem of a point ``{dotted key: value}`` (see the module docstring)."""
    if not point:
        return "base"
    stem = "_".join(f"{short[k]}={_fmt(v)}" for k, v in point.items())
    if len(stem) <= NAME_MAX and set(stem) <= _SAFE and not stem.startswith("."):
        return stem
    return "point-" + hashlib.sha1(_canon(point).encode()).hexdigest()[:16]


def expand_grid(base, grid=None, *, zip=None, out=".", name=None) -> list:  # noqa: A002 - the documented keyword
    """The points of a sweep, without running anything: ``[{"name", "file", "params", "index", "spec"}, ...]``
    (``params``: ``{dotted key: value}``; ``index``: position on each axis; ``spec``: the point's RunSpec, writing
    ``out/name.nc``)."""
    spec = _as_spec(base)
    axes = _axes(grid, zip)
    short = _short_names([k for keys, _ in axes for k in keys])
    out = os.path.abspath(os.fspath(out))
    points, names = [], {}
    for index in itertools.product(*[range(len(rows)) for _, rows in axes]):
        params = {}
        for (keys, rows), i in zip_builtin(axes, index):
            params.update(dict(zip_builtin(keys, rows[i])))
        stem = name(dict(params)) if name is not None else point_name(params, short)
        if not isinstance(stem, str) or not stem or os.sep in stem or stem in (".", ".."):
            raise SweepError(f"point name {stem!r} for {params!r} must be a non-empty file stem")
        if stem in names:
            raise SweepError(f"points {names[stem]!r} and {params!r} get the same name {stem!r}")
        names[stem] = params
        changes = {k: v for k, v in params.items()}
        path = os.path.join(out, stem + ".nc")
        try:
            pspec = spec.replace({**changes, "output.path": path, "output.overwrite": False})
        except (TypeError, ValueError) as e:
            raise SweepError(f"grid point {params!r}: {e}") from None
        points.append({"name": stem, "file": stem + ".nc", "params": params, "index": list(index), "spec": pspec})
    return points


zip_builtin = zip


# ----------------------------------------------------------------------------------------- one point
def _file_state(path) -> dict | None:
    """Root attributes of a pyrod file that say where it stands (None: no file; ``{"unreadable": msg}``)."""
    if not os.path.exists(path):
        return None
    try:
        import netCDF4

        with netCDF4.Dataset(path, "r") as ds:
            a = {k: ds.getncattr(k) for k in ds.ncattrs()}
    except Exception as e:  # noqa: BLE001 - a half-written header is as good as no file
        return {"unreadable": f"{type(e).__name__}: {e}"}
    steps = a.get("steps_completed")
    return {"status": str(a.get("pyrod_status", "")), "stop_reason": a.get("stop_reason"),
            "steps_completed": int(steps) if steps is not None else None,
            "spec": json.loads(a["pyrod_config"]) if "pyrod_config" in a else None}


def _comparable(spec_dict: dict) -> dict:
    from .spec import MiniBatchSpec

    d = json.loads(json.dumps(spec_dict))
    d.setdefault("minibatch", MiniBatchSpec().to_dict())   # a file written before mini-batch runs: full batch
    d.get("output", {}).pop("path", None)
    d.get("output", {}).pop("overwrite", None)
    d.get("stop", {}).pop("steps", None)
    d.pop("threads", None)          # the speed of a run, not its experiment
    return d


def _diff(a, b, prefix="") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _plan(spec, state, rerun_changed: bool) -> str:
    """What to do for a point: ``skip``, ``resume`` (from the checkpoint, up to the spec's steps) or ``run``."""
    from .checkpoint import path_for

    if state is None or "unreadable" in state or state.get("spec") is None:
        return "run"
    want = spec.to_dict()
    diff = _diff(_comparable(state["spec"]), _comparable(want))
    done = state.get("steps_completed") or 0
    reason = str(state.get("stop_reason") or "")
    if not diff and done > spec.stop.steps:
        # a longer run of the same spec (extended with ``pyrod resume``): its first steps are this point's run
        # (resume is bit-identical), so it is kept; recomputing it would throw the extension away
        if state["status"] == "complete" and reason.startswith("steps"):
            return "skip"
        diff = [f"stop.steps (the file has {done} steps, the sweep asks for {spec.stop.steps})"]
    if diff:
        if rerun_changed:
            return "run"
        raise SweepError(f"{spec.output.path!r} exists with a different spec ({', '.join(diff)}); use another "
                         f"sweep folder, or rerun_changed=True to recompute such points")
    if state["status"] == "complete" and (done == spec.stop.steps or not reason.startswith("steps")):
        return "skip"
    return "resume" if os.path.exists(path_for(spec.output.path)) else "run"


def _classify(state, steps: int) -> tuple[str, str | None]:
    if state is None or "unreadable" in state:
        return "failed", "no readable output file"
    reason = str(state.get("stop_reason") or "")
    if state["status"] != "complete":
        return "failed", f"file status {state['status']!r}: {reason}"
    if reason.startswith("steps") and (state.get("steps_completed") or 0) >= steps:
        return "complete", None
    return "stopped", None


def run_point(spec_dict: dict, *, rerun_changed: bool = False, threads: int | None = 1) -> dict:
    """Bring one point to its spec's end: simulate it, resume it from its checkpoint, or find it done.

    ``spec_dict``: ``RunSpec.to_dict()`` with ``output.path`` set. ``threads``: torch threads of a point whose spec
    does not name them (None: the spec's rule, :mod:`pyrod.threads`; Dask workers pass 1: one thread per worker).
    Pure and idempotent (a rerun after a crash continues from the file's checkpoint), so a
    scheduler may run it again anywhere. Never raises for a failing run: returns
    ``{"name", "file", "status": "complete"|"stopped"|"failed", "action": "skip"|"resume"|"run",
    "stop_reason", "steps_completed", "error" (traceback or None), "wall_time_s", "host", "pid"}``.
    """
    t0 = time.perf_counter()
    out = {"file": None, "status": "failed", "action": None, "stop_reason": None, "steps_completed": None,
           "error": None, "host": socket.gethostname(), "pid": os.getpid()}
    try:
        from . import simulation
        from .checkpoint import path_for
        from .spec import RunSpec

        spec = RunSpec.from_dict(spec_dict)
        path = spec.output.path
        if path is None:
            raise SweepError("run_point needs a spec with output.path")
        out["file"] = path
        action = _plan(spec, _file_state(path), rerun_changed)
        out["action"] = action
        if spec.threads is None and threads:
            spec = spec.replace({"threads": int(threads)})
        if action == "resume":
            simulation.resume(path, steps=spec.stop.steps, progress=False, threads=spec.threads)
        elif action == "run":
            ckpt = path_for(path)
            if os.path.exists(ckpt):       # a stale checkpoint must never be resumed into a new run
                os.remove(ckpt)
            simulation.simulate(spec.replace({"output.overwrite": True}), progress=False)
        state = _file_state(path)
        status, why = _classify(state, spec.stop.steps)
        out.update(status=status, stop_reason=state.get("stop_reason") if state else None,
                   steps_completed=state.get("steps_completed") if state else None)
        if why:
            out["error"] = why
    except BaseException:  # noqa: BLE001 - recorded, the sweep goes on
        out["status"] = "failed"
        out["error"] = traceback.format_exc()
    out["wall_time_s"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------------------- the manifest
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json_atomic(path, data) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(out) -> dict:
    """``out/sweep.json`` as a dict (SweepError when it is missing)."""
    path = os.path.join(os.fspath(out), MANIFEST)
    if not os.path.exists(path):
        raise SweepError(f"{os.fspath(out)!r} is not a sweep folder: it has no {MANIFEST}")
    with open(path) as fh:
        return json.load(fh)


class SweepResult:
    """What :func:`sweep` returns: the folder, the manifest and each point's record."""

    def __init__(self, out: str, manifest: dict):
        self.out = out
        self.manifest = manifest

    @property
    def points(self) -> list:
        return self.manifest["points"]

    def counts(self) -> dict:
        c = dict.fromkeys(STATUSES, 0)
        for p in self.points:
            c[p["status"]] += 1
        return c

    @property
    def failed(self) -> list:
        return [p for p in self.points if p["status"] == "failed"]

    def path(self, point_name: str) -> str:
        return os.path.join(self.out, point_name + ".nc")

    def open(self):
        return open_sweep(self.out)

    def __repr__(self) -> str:
        c = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return f"SweepResult({self.out!r}: {len(self.points)} points; {c})"


# ----------------------------------------------------------------------------------------- the sweep
def sweep(base, grid=None, out=None, *, zip=None, client=None, jobs: int | None = None,  # noqa: A002
          retries: int = 1, name=None, rerun_changed: bool = False, progress: bool | None = None) -> SweepResult:
    """Run ``base`` at every point of ``grid``, one NetCDF file per point under ``out`` (see the module doc).

    base : a :class:`pyrod.RunSpec` or a dict of :func:`pyrod.simulate` keywords with ``problem`` and
        ``optimizer`` (objects or config dicts).
    grid : ``{dotted key: [values]}`` (Cartesian product), ``{(key1, key2): [(v1, v2), ...]}`` for paired keys.
    out : the sweep folder (created). zip : lists of single-key axes of ``grid`` to pair instead of cross.
    client : None (a ``LocalCluster`` of ``jobs`` single-threaded worker processes, closed at the end), a
        scheduler address ``"tcp://host:8786"`` or a ``distributed.Client``. ``jobs=1`` without a client: run
        in this process, no Dask.
    retries : Dask reruns of a task that raised outside the run itself (a run that raises is recorded as failed
        and not retried; a task whose worker died is rerun by the scheduler anyway).
    name : ``f(point) -> file stem`` replacing the default names. rerun_changed : recompute a point whose file
        exists with a different spec (default: record it as failed, naming the differing keys).
    progress : one progress bar over the points (default: when stderr is a terminal).

    Returns a :class:`SweepResult`; ``pyrod.open_sweep(out)`` gives the data.
    """
    if out is None:
        raise SweepError("out=DIR is required: the folder of the sweep's files and sweep.json")
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise SweepError(f"out={out!r} exists and is not a folder")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise SweepError(f"jobs={jobs!r} must be an int >= 1 (or None: one per core)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SweepError(f"retries={retries!r} must be an int >= 0")
    spec = _as_spec(base)
    axes = _axes(grid, zip)
    points = expand_grid(spec, grid, zip=zip, out=out, name=name)
    os.makedirs(out, exist_ok=True)
    short = _short_names([k for keys, _ in axes for k in keys])
    manifest = {
        "format": MANIFEST_FORMAT, "created": _now(), "updated": _now(),
        "base": spec.to_dict(),
        "grid": [{"keys": list(keys), "dims": [short[k] for k in keys], "values": [list(_jsonable(r)) for r in rows]}
                 for keys, rows in axes],
        "points": [{"name": p["name"], "file": p["file"], "index": p["index"], "params": _jsonable(p["params"]),
                    "status": "pending", "stop_reason": None, "steps_completed": None, "error": None,
                    "action": None, "wall_time_s": None} for p in points],
    }
    mpath = os.path.join(out, MANIFEST)
    records = {r["name"]: r for r in manifest["points"]}
    specs = {p["name"]: p["spec"] for p in points}

    def save():
        manifest["updated"] = _now()
        _write_json_atomic(mpath, manifest)

    def record(name_, summary):
        r = records[name_]
        for k in ("status", "stop_reason", "steps_completed", "error", "action", "wall_time_s"):
            r[k] = summary.get(k)
        r["worker"] = f"{summary.get('host')}:{summary.get('pid')}" if summary.get("pid") else None

    # points already finished are not shipped anywhere (their earlier record is kept)
    try:
        before = {r["name"]: r for r in read_manifest(out).get("points", [])}
    except (SweepError, ValueError, OSError, KeyError):
        before = {}
    todo = []
    for p in points:
        try:
            state = _file_state(p["spec"].output.path)
            if _plan(p["spec"], state, rerun_changed) == "skip":
                status, _ = _classify(state, p["spec"].stop.steps)
                old = before.get(p["name"], {})
                record(p["name"], {"status": status, "stop_reason": state.get("stop_reason"),
                                   "steps_completed": state.get("steps_completed"), "action": "skip",
                                   "wall_time_s": 0.0})
                records[p["name"]]["worker"] = old.get("worker")
                if old.get("wall_time_s"):
                    records[p["name"]]["previous_wall_time_s"] = old.get("previous_wall_time_s") or old["wall_time_s"]
                continue
        except SweepError:
            pass            # recorded by run_point (differing spec), where the user sees it per point
        todo.append(p["name"])
    save()
    bar = _Bar(len(points), sum(r["status"] != "pending" for r in records.values()), progress, out)
    try:
        if not todo:
            pass
        elif client is None and jobs == 1:
            for n in todo:
                records[n]["status"] = "running"
                save()
                bar.update(records, n_running=1)
                record(n, run_point(specs[n].to_dict(), rerun_changed=rerun_changed, threads=None))
                save()
                bar.update(records, n_running=0, done=1)
        else:
            _run_dask(todo, specs, records, record, save, bar, client, jobs, retries, rerun_changed)
    except BaseException:
        for r in records.values():
            if r["status"] == "running":
                r["status"] = "pending"
        save()
        raise
    finally:
        bar.close()
    save()
    return SweepResult(out, manifest)


def _run_dask(todo, specs, records, record, save, bar, client, jobs, retries, rerun_changed):
    from distributed import Client, as_completed

    own_cluster = own_client = None
    if client is None:
        own_cluster = local_cluster(jobs)
        client = own_client = Client(own_cluster)
    elif isinstance(client, str):
        client = own_client = Client(client)
    elif not isinstance(client, Client):
        raise SweepError(f"client={client!r} must be None, a scheduler address or a distributed.Client")
    try:
        if _has_bokeh() and client.dashboard_link:
            print(f"pyrod sweep: Dask dashboard at {client.dashboard_link}", file=sys.stderr, flush=True)
        token = secrets.token_hex(4)
        futures = {}
        for n in todo:
            fut = client.submit(run_point, specs[n].to_dict(), rerun_changed=rerun_changed, threads=1,
                                key=f"pyrod-point-{n}-{token}", pure=False, retries=retries)
            futures[fut.key] = (n, fut)
        keys = set(futures)

        def refresh():
            try:
                busy = {k for ks in client.processing().values() for k in ks} & keys
            except Exception:  # noqa: BLE001 - only the progress display depends on it
                busy = set()
            for k, (n, _) in futures.items():
                if records[n]["status"] in ("pending", "running"):
                    records[n]["status"] = "running" if k in busy else "pending"
            return len(busy)

        bar.update(records, n_running=refresh())
        save()
        for fut in as_completed([f for _, f in futures.values()]):
            n, _ = futures[fut.key]
            keys.discard(fut.key)
            if fut.status == "finished":
                record(n, fut.result())
            else:
                exc = fut.exception()
                tb = "".join(traceback.format_exception(type(exc), exc, fut.traceback()))
                record(n, {"status": "failed", "error": f"Dask task failed: {tb}"})
            running = refresh()
            save()
            bar.update(records, n_running=running, done=1)
    except BaseException:
        for _, f in futures.values() if "futures" in locals() else ():
            f.cancel()
        raise
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()


def local_cluster(jobs: int | None = None):
    """The ``distributed.LocalCluster`` a sweep starts: ``jobs`` (default: one per core) worker processes of one
    thread each, with OMP/MKL/OpenBLAS at one thread (``Client(local_cluster(4))`` to share one between sweeps;
    close both when done)."""
    import dask
    from distributed import LocalCluster

    n = jobs or os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    # Dask's nannies set MALLOC_TRIM_THRESHOLD_=65536 in their workers by default, which makes glibc return memory
    # to the system after nearly every free: our many mid-sized torch temporaries then cost page faults, and a run
    # took 2.1x longer in a worker than in-process (41 s vs 19.5 s for one aeos point; 11.3 s vs 6.3 s with that
    # variable set in a plain process). Unset it for our workers (None removes a pre-spawn variable). A nanny started
    # earlier in this process (any LocalCluster) leaves Dask's value in os.environ, which nannies copy into their
    # workers and which overrides the config: remove that one too (only Dask's own value, not a user's choice).
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536":
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env, dashboard_address=":0",
                            silence_logs=40)


def _has_bokeh() -> bool:
    import importlib.util

    return importlib.util.find_spec("bokeh") is not None


class _Bar:
    """One tqdm bar over the points, with done / running / failed in the postfix."""

    def __init__(self, total, initial, progress, out):
        show = sys.stderr.isatty() if progress is None else bool(progress)
        self.bar = None
        if show:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=f"sweep {os.path.basename(out)}", unit="point")

    def update(self, records, n_running=0, done=0):
        if self.bar is None:
            return
        c = dict.fromkeys(STATUSES, 0)
        for r in records.values():
            c[r["status"]] += 1
        if done:
            self.bar.update(done)
        self.bar.set_postfix(done=c["complete"] + c["stopped"], running=n_running, failed=c["failed"])

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------- reading back
def _coord_value(v):
    v = _jsonable(v)
    if isinstance(v, (bool, int, float, str)):
        return v
    return _canon(v)


def open_sweep(out):
    """The sweep in ``out`` as one ``xarray.DataTree``.

    Root: per point ``status``, ``stop_reason``, ``steps_completed``, ``file`` on the grid dimensions (one per
    axis, named by the short name of its first key; the other keys of a paired axis are coordinates along it).
    One child per run group (``discrete``, ``rod``, …): every variable of that group with the grid dimensions in
    front (``loss`` of dims ``(lr, beta1, seed, t)``), on the union of the points' ``t`` (optimizer steps); NaN
    where a point has no value (stopped early, shorter run, failed), plus the group's own ``stop_reason`` per
    point. Values are those of the single files (``sw["discrete"].ds.sel(lr=0.1, seed=0)`` holds the file's
    numbers at its times).
    """
    import numpy as np
    import xarray as xr

    from .io.reader import open_tree

    out = os.path.abspath(os.fspath(out))
    man = read_manifest(out)
    dims = [ax["dims"][0] for ax in man["grid"]]
    shape = tuple(len(ax["values"]) for ax in man["grid"])
    coords = {}
    for ax, dim in zip_builtin(man["grid"], dims):
        for j, (key, short) in enumerate(zip_builtin(ax["keys"], ax["dims"])):
            coords[short] = ((dim,), [_coord_value(row[j]) for row in ax["values"]], {"sweep_key": key})

    def blank(dtype=float):
        return np.full(shape, np.nan) if dtype is float else np.full(shape, "", dtype=object)

    root = {"status": blank(str), "stop_reason": blank(str), "file": blank(str), "steps_completed": blank()}
    trees = {}
    for p in man["points"]:
        idx = tuple(p["index"])
        root["status"][idx] = p["status"]
        root["stop_reason"][idx] = p.get("stop_reason") or ""
        root["file"][idx] = p["file"]
        if p.get("steps_completed") is not None:
            root["steps_completed"][idx] = p["steps_completed"]
        path = os.path.join(out, p["file"])
        if p["status"] in ("complete", "stopped") and os.path.exists(path):
            trees[idx] = open_tree(path)
    root_ds = xr.Dataset({k: (dims, v.astype(str) if v.dtype == object else v) for k, v in root.items()},
                         coords=coords)
    root_ds.attrs.update({"sweep_dir": out, "pyrod_sweep_base": json.dumps(man["base"], sort_keys=True),
                          "pyrod_sweep_grid": json.dumps(man["grid"])})
    groups = {}
    for tree in trees.values():
        for g in tree.children:
            if g not in groups:
                groups[g] = None
    nodes = {"/": root_ds}
    for g in groups:
        per = {idx: tree[g].to_dataset().load() for idx, tree in trees.items() if g in tree.children}
        nodes[f"/{g}"] = _stack_group(per, dims, shape, coords, xr, np)
    return xr.DataTree.from_dict(nodes)


def _stack_group(per: dict, dims, shape, coords, xr, np):
    """One Dataset from the per-point Datasets of one run group: grid dims in front, other dims unioned."""
    inner = {}
    for ds in per.values():
        for d, n in ds.sizes.items():
            if d in ds.coords and ds[d].dims == (d,):
                inner.setdefault(d, set()).update(ds[d].values.tolist())
            else:
                inner[d] = max(inner.get(d, 0), n) if isinstance(inner.get(d, 0), int) else inner[d]
    index = {d: (np.array(sorted(v)) if isinstance(v, set) else None) for d, v in inner.items()}
    sizes = {d: (len(index[d]) if index[d] is not None else inner[d]) for d in inner}
    data, attrs, vdims = {}, {}, {}
    for idx, ds in per.items():
        for d, ix in index.items():
            if ix is not None and d in ds.dims:
                ds = ds.reindex({d: ix})
        for name, var in ds.data_vars.items():
            if name not in data:
                full = tuple(sizes[d] for d in var.dims)
                numeric = np.issubdtype(var.dtype, np.number) or var.dtype == bool
                data[name] = np.full(shape + full, np.nan) if numeric else np.full(shape + full, "", dtype=object)
                attrs[name], vdims[name] = dict(var.attrs), var.dims
            sl = idx + tuple(slice(0, var.sizes[d]) for d in var.dims)
            data[name][sl] = var.values
    out = {}
    for name, arr in data.items():
        out[name] = (tuple(dims) + tuple(vdims[name]), arr.astype(str) if arr.dtype == object else arr, attrs[name])
    reasons = np.full(shape, "", dtype=object)
    steps = np.full(shape, np.nan)
    for idx, ds in per.items():
        reasons[idx] = str(ds.attrs.get("stop_reason", ""))
        if "steps_completed" in ds.attrs:
            steps[idx] = float(ds.attrs["steps_completed"])
    out["stop_reason"] = (tuple(dims), reasons.astype(str), {"long_name": "why this run of the point stopped"})
    out["steps_completed"] = (tuple(dims), steps, {"units": "optimizer steps"})
    c = dict(coords)
    for d, ix in index.items():
        if ix is not None:
            first = next(ds for ds in per.values() if d in ds.coords)
            c[d] = ((d,), ix, dict(first[d].attrs))
    return xr.Dataset(out, coords=c)


# ----------------------------------------------------------------------------------------- pyrod.sweep(...)
class _CallableModule(types.ModuleType):
    """``pyrod.sweep`` is this module and, called, :func:`sweep` (so ``pyrod.sweep(...)`` and
    ``pyrod.sweep.run_point`` both work)."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
