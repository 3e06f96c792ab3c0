"""The Julia backend: laziness, the no-Julia path, the static gate on julia/, and (where Julia exists) the
cross-backend comparison with SciPy.

Never ``importorskip("juliacall")``: importing juliacall resolves Julia packages and, without a configured
Julia, tries the network (URLError).  Whether Julia is here is decided by the file-system probe
:func:`pyrod.integrate.julia_probe.probe_julia`, and the Julia tests are skipped with its reason.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib

from pyrod.integrate import julia_backend, julia_probe
from pyrod.integrate.base import BackendUnavailable, Event, FlowProblem

ROOT = Path(__file__).resolve().parents[1]
JULIA_DIR = ROOT / "julia"
JULIAPKG_JSON = ROOT / "pyrod" / "juliapkg.json"
LN2 = math.log(2.0)

# every variable through which juliacall/juliapkg could find a Julia
_JULIA_VARS = ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE",
               "PYTHON_JULIAPKG_PROJECT", "PYTHON_JULIAPKG_OFFLINE", "JULIA_DEPOT_PATH", "CONDA_PREFIX")

_PROBE = julia_probe.probe_julia()
needs_julia = pytest.mark.skipif(not _PROBE.ok, reason=f"no usable local Julia: {_PROBE.reason}")


def _fake_exe(path: Path) -> Path:
    """An executable file called like Julia; the probe only stats it, never runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 1\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_julia_env(monkeypatch, tmp_path):
    """An environment with no way to find Julia: empty PATH, empty depot and juliapkg project."""
    for v in _JULIA_VARS:
        monkeypatch.delenv(v, raising=False)
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("JULIA_DEPOT_PATH", str(tmp_path / "depot"))
    monkeypatch.setenv("PYTHON_JULIAPKG_PROJECT", str(tmp_path / "julia_env"))
    monkeypatch.setattr(julia_backend, "_STATE", {"module": None, "error": None})
    return tmp_path


def _decay_problem(**kw) -> FlowProblem:
    return FlowProblem(rhs=lambda t, y: -y, n=1, **kw)


# ------------------------------------------------------------------------------------ (1) laziness
def test_import_pyrod_never_imports_juliacall():
    code = textwrap.dedent("""
        import sys
        import pyrod
        assert 'juliacall' not in sys.modules, 'import pyrod'
        import pyrod.integrate, pyrod.integrate.julia_backend, pyrod.integrate.julia_probe
        import pyrod.simulation
        pyrod.simulate                      # the lazy attribute
        from pyrod.integrate import julia_probe
        julia_probe.julia_available(); julia_probe.select_backend('auto')
        try:
            julia_probe.select_backend('julia')
        except Exception:
            pass
        bad = [m for m in sys.modules if m.split('.')[0] in ('juliacall', 'juliapkg')]
        assert not bad, bad
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


# -------------------------------------------------------------------------------- (2) without Julia
_RECIPE_NAMES = ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE",
                 "PYTHON_JULIAPKG_PROJECT", "PYTHON_JULIAPKG_OFFLINE", "JULIA_DEPOT_PATH", "JULIA_PKG_OFFLINE")


def test_julia_backend_without_julia_raises_fast_with_recipe(no_julia_env):
    fp = _decay_problem(events=[Event("half", lambda t, y: y[0] - 0.5)])
    t = time.perf_counter()
    with pytest.raises(BackendUnavailable) as e:
        julia_backend.integrate_segment(fp, 0.0, np.ones(1), 1.0, [1.0])
    elapsed = time.perf_counter() - t
    assert elapsed < 1.0, elapsed
    msg = str(e.value)
    for name in _RECIPE_NAMES:
        assert name in msg, name
    assert "no local Julia found" in msg
    assert "juliacall" not in sys.modules or julia_backend._STATE["module"] is None

    t = time.perf_counter()
    with pytest.raises(BackendUnavailable):
        julia_probe.select_backend("julia")
    with pytest.raises(BackendUnavailable):
        julia_backend.check_available()
    assert time.perf_counter() - t < 1.0
    assert not julia_backend.available()


def test_auto_selects_scipy_without_julia(no_julia_env):
    ok, reason = julia_probe.julia_available()
    assert not ok and "no local Julia found" in reason
    assert julia_probe.select_backend("auto") == "scipy"
    assert julia_probe.select_backend("scipy") == "scipy"
    assert julia_probe.select_backend("SUNDIALS") == "sundials"
    assert julia_probe.select_backend(None) == "scipy"
    with pytest.raises(ValueError, match="valid backends"):
        julia_probe.select_backend("fortran")


def test_registry_julia_without_julia(no_julia_env):
    """Through the backend registry (pyrod.integrate.get_backend) the same fast error comes back."""
    import pyrod.integrate as pi

    assert pi.get_backend("auto") is pi.get_backend("scipy")
    ok, _ = pi.julia_available()
    assert not ok
    t = time.perf_counter()
    with pytest.raises(BackendUnavailable, match="PYTHON_JULIACALL_EXE"):
        fn = pi.get_backend("julia")               # may already raise, or return the lazy callable
        fn(_decay_problem(), 0.0, np.ones(1), 1.0, [1.0])
    assert time.perf_counter() - t < 1.0


def test_no_julia_subprocess_does_not_touch_juliacall(tmp_path):
    """In a fresh interpreter with no way to find Julia: fast BackendUnavailable, juliacall never imported."""
    env = {k: v for k, v in os.environ.items() if k not in _JULIA_VARS}
    (tmp_path / "bin").mkdir()
    env.update(PATH=str(tmp_path / "bin"), JULIA_DEPOT_PATH=str(tmp_path / "depot"),
               PYTHON_JULIAPKG_PROJECT=str(tmp_path / "env"))
    code = textwrap.dedent("""
        import sys, time
        import numpy as np
        from pyrod.integrate import julia_backend
        from pyrod.integrate.base import BackendUnavailable, FlowProblem
        t = time.perf_counter()
        try:
            julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: -y, n=1), 0.0, np.ones(1), 1.0, [1.0])
        except BackendUnavailable as e:
            dt = time.perf_counter() - t
            assert dt < 1.0, dt
            assert 'PYTHON_JULIACALL_EXE' in str(e)
        else:
            raise SystemExit('no BackendUnavailable')
        assert 'juliacall' not in sys.modules and 'juliapkg' not in sys.modules
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=env)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------------------- the probe's branches
def test_probe_juliacall_exe_needs_project(no_julia_env, monkeypatch):
    exe = _fake_exe(no_julia_env / "jl" / "bin" / "julia")
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", str(exe))
    p = julia_probe.probe_julia()
    assert not p.ok and "both or neither" in p.reason
    monkeypatch.setenv("PYTHON_JULIACALL_PROJECT", str(no_julia_env / "missing"))
    p = julia_probe.probe_julia()
    assert not p.ok and "not a directory" in p.reason
    (no_julia_env / "proj").mkdir()
    monkeypatch.setenv("PYTHON_JULIACALL_PROJECT", str(no_julia_env / "proj"))
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: False)
    p = julia_probe.probe_julia()
    assert not p.ok and "juliacall is not installed" in p.reason and p.exe == str(exe)
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    p = julia_probe.probe_julia()
    assert p.ok and p.mode == "juliacall" and p.ready_offline and p.exe == str(exe)
    assert julia_probe.select_backend("auto") == "julia"
    assert julia_probe.select_backend("julia") == "julia"


def test_probe_juliacall_exe_not_executable(no_julia_env, monkeypatch):
    (no_julia_env / "proj").mkdir()
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", str(no_julia_env / "nope" / "julia"))
    monkeypatch.setenv("PYTHON_JULIACALL_PROJECT", str(no_julia_env / "proj"))
    p = julia_probe.probe_julia()
    assert not p.ok and "not an executable" in p.reason


def test_probe_julia_on_path_needs_offline_setup_for_auto(no_julia_env, monkeypatch):
    _fake_exe(no_julia_env / "empty_bin" / "julia")
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    p = julia_probe.probe_julia()
    assert p.ok and p.source == "julia on PATH" and p.mode == "juliapkg"
    assert not p.ready_offline                      # first use would let juliapkg download packages
    assert julia_probe.select_backend("julia") == "julia"
    assert julia_probe.select_backend("auto") == "scipy"
    monkeypatch.setenv("PYTHON_JULIAPKG_OFFLINE", "yes")
    assert julia_probe.probe_julia().ready_offline
    assert julia_probe.select_backend("auto") == "julia"


def test_probe_juliapkg_exe_and_resolved_meta(no_julia_env, monkeypatch):
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(no_julia_env / "missing_julia"))
    p = julia_probe.probe_julia()
    assert not p.ok and "PYTHON_JULIAPKG_EXE" in p.reason
    exe = _fake_exe(no_julia_env / "opt" / "julia")
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(exe))
    p = julia_probe.probe_julia()
    assert p.ok and p.exe == str(exe) and not p.ready_offline
    # a juliapkg environment resolved for the current juliapkg.json files: ready without network
    meta_dir = no_julia_env / "julia_env" / "pyjuliapkg"
    meta_dir.mkdir(parents=True)
    ours = str(julia_probe.juliapkg_json_path())
    import hashlib

    meta = {"meta_version": 5, "executable": str(exe), "version": "1.11.0",
            "deps_files": {ours: {"timestamp": os.path.getmtime(ours),
                                  "hash_sha256": hashlib.sha256(Path(ours).read_bytes()).hexdigest()}}}
    (meta_dir / "meta.json").write_text(json.dumps(meta))
    assert julia_probe.probe_julia().ready_offline
    # a stale record (the dependency file changed since): juliapkg would resolve again -> not ready
    meta["deps_files"][ours] = {"timestamp": 0.0, "hash_sha256": "0" * 64}
    (meta_dir / "meta.json").write_text(json.dumps(meta))
    assert not julia_probe.probe_julia().ready_offline
    # without PYTHON_JULIAPKG_EXE the recorded executable is found
    monkeypatch.delenv("PYTHON_JULIAPKG_EXE")
    p = julia_probe.probe_julia()
    assert p.ok and p.exe == str(exe) and "meta.json" in p.source


def test_probe_juliaup_installed_version(no_julia_env, monkeypatch):
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    _fake_exe(no_julia_env / "empty_bin" / "juliaup")
    judir = no_julia_env / "depot" / "juliaup"
    p = julia_probe.probe_julia()
    assert not p.ok                                  # juliaup without an installed Julia would download one
    exe = _fake_exe(judir / "julia-1.11.0+0.x64.linux.gnu" / "bin" / "julia")
    (judir / "juliaup.json").write_text(json.dumps(
        {"InstalledVersions": {"1.11.0+0.x64.linux.gnu": {"Path": "julia-1.11.0+0.x64.linux.gnu"}}}))
    p = julia_probe.probe_julia()
    assert p.ok and p.source == "juliaup" and p.exe == str(exe)


def test_probe_is_fast(no_julia_env):
    t = time.perf_counter()
    for _ in range(20):
        julia_probe.probe_julia()
    assert (time.perf_counter() - t) / 20 < 0.1


# ------------------------------------------------------------------- the declared Julia dependencies
def test_project_toml_and_juliapkg_json_agree():
    proj = tomllib.loads((JULIA_DIR / "Project.toml").read_text())
    spec = json.loads(JULIAPKG_JSON.read_text())
    assert proj["name"] == "PyrodFlows" and proj["compat"]["julia"] == "1.10"
    assert spec["julia"] == "1.10"
    pk = spec["packages"]
    ours = pk.pop("PyrodFlows")
    assert ours["uuid"] == proj["uuid"] and ours.get("dev") is True
    assert (JULIAPKG_JSON.parent / ours["path"]).resolve() == JULIA_DIR.resolve()
    assert set(pk) == set(proj["deps"])
    for name, entry in pk.items():
        assert entry["uuid"] == proj["deps"][name], name
        assert entry["version"] == proj["compat"][name], name
    for name in ("OrdinaryDiffEq", "DiffEqCallbacks", "LinearSolve", "SciMLBase"):
        assert name in proj["deps"]
    known = {"OrdinaryDiffEq": "1dea7af3-3e70-54e6-95c3-0bf5283fa5ed",
             "DiffEqCallbacks": "459566f4-90b8-5000-8ac3-15dfb0a30def",
             "SciMLBase": "0bca4576-84f4-4d90-8ffe-ffa030f20462",
             "LinearSolve": "7ed4a6bd-45f5-4d41-b270-4a48e9bafcae"}
    for name, uuid in known.items():
        assert proj["deps"][name] == uuid
    assert proj["extras"]["Test"] == "8dfed614-e22c-5e08-85e1-65c5234f0b40"
    assert (JULIA_DIR / "test" / "runtests.jl").is_file() and (JULIA_DIR / "src" / "PyrodFlows.jl").is_file()
    assert julia_probe.julia_source_dir() == JULIA_DIR.resolve()


# --------------------------------------------------------------------------------- (3) the fatou gate
def _fatou() -> str:
    exe = shutil.which("fatou") or shutil.which("fatou", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the fatou executable is not installed (pip install fatou==0.24.0)")
    return exe


def _lint(*args, cwd=ROOT):
    return subprocess.run([_fatou(), "lint", "--color", "never", "--output", "concise", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_fatou_lint_passes_on_the_julia_package():
    r = _lint("julia/")                                     # what scripts/test.sh runs
    assert r.returncode == 0, r.stdout + r.stderr
    r = _lint("--config", "julia/fatou.toml", "julia/")     # plus undefined-name
    assert r.returncode == 0, r.stdout + r.stderr


BROKEN = {
    "unclosed_paren.jl": "function g(x)\n    return (x + 1\nend\n",
    "missing_end.jl": "function f(x)\n    y = x +\n    if y > 0\n        return y\nend\n",
    "stray_end.jl": "function f(x)\n    x\nend\nend\n",
    "double_comma.jl": "x = [1, 2,, 3]\n",
    "duplicate_argument.jl": "function k(x, x)\n    return x\nend\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_fatou_gate_fails_on_a_broken_file(tmp_path, name):
    pkg = tmp_path / "julia"
    shutil.copytree(JULIA_DIR, pkg)
    assert _lint(str(pkg)).returncode == 0
    (pkg / "src" / name).write_text(BROKEN[name])
    r = _lint(str(pkg))
    assert r.returncode != 0, r.stdout + r.stderr
    assert name in r.stdout + r.stderr


def test_fatou_gate_catches_a_broken_edit_and_a_typo(tmp_path):
    pkg = tmp_path / "julia"
    shutil.copytree(JULIA_DIR, pkg)
    src = pkg / "src" / "PyrodFlows.jl"
    good = src.read_text()
    src.write_text(good.replace("return nothing\nend", "return nothing\n", 1))   # drop one `end`
    r = _lint(str(pkg))
    assert r.returncode != 0 and "PyrodFlows.jl" in r.stdout + r.stderr
    # a misspelt DiffEq name: the import it should use becomes unused (default rules), and with
    # julia/fatou.toml the misspelling itself is an undefined name
    src.write_text(good.replace("terminate!(integ)", "terminat!(integ)"))
    r = _lint(str(pkg))
    assert r.returncode != 0 and "terminate!" in r.stdout + r.stderr
    r = _lint("--config", str(pkg / "fatou.toml"), str(pkg))
    assert r.returncode != 0 and "terminat!` is not defined" in r.stdout + r.stderr
    # a misspelt local variable: only undefined-name (julia/fatou.toml) catches it
    assert "push!(accepted, i)" in good
    src.write_text(good.replace("push!(accepted, i)", "push!(acepted, i)"))
    assert _lint(str(pkg)).returncode == 0
    r = _lint("--config", str(pkg / "fatou.toml"), str(pkg))
    assert r.returncode != 0 and "acepted" in r.stdout + r.stderr


# ------------------------------------------------------------- (4) cross-backend, where Julia exists
def _both(problem, t0, y0, t1, t_save):
    from pyrod.integrate.scipy_backend import integrate_segment as scipy_segment

    jl = julia_backend.integrate_segment(problem, t0, y0, t1, t_save)
    problem.method = None
    sp = scipy_segment(problem, t0, y0, t1, t_save)
    return sp, jl


@pytest.mark.julia
@needs_julia
def test_cross_backend_linear_decay_with_event():
    """y' = -y, y(0) = 1, saved at integer steps, non-terminal event y = 0.5 at t = ln 2."""
    ev = Event("half", lambda t, y: y[0] - 0.5, direction=-1, kind="loss_target")
    fp = FlowProblem(rhs=lambda t, y: -y, n=1, events=[ev], rtol=1e-9, atol=1e-12, method="Tsit5")
    sp, jl = _both(fp, 0.0, np.ones(1), 3.0, [1.0, 2.0, 3.0])
    assert sp.status == jl.status == "ok"
    np.testing.assert_array_equal(jl.t_save, sp.t_save)
    np.testing.assert_allclose(jl.y_save, sp.y_save, rtol=1e-6)
    np.testing.assert_allclose(jl.y_save[:, 0], np.exp(-np.array([1.0, 2.0, 3.0])), rtol=1e-6)
    assert [(e.name, e.kind) for e in jl.events] == [(e.name, e.kind) for e in sp.events] == [("half", "loss_target")]
    assert abs(jl.events[0].t - sp.events[0].t) < 1e-6 and abs(jl.events[0].t - LN2) < 1e-7
    assert jl.events[0].value <= 0 and sp.events[0].value <= 0    # both on the far side of the crossing
    assert jl.t_end == sp.t_end == 3.0
    np.testing.assert_allclose(jl.y_end, sp.y_end, rtol=1e-6)
    assert jl.n_rhs > 0 and jl.n_steps > 0 and jl.h_last is not None


@pytest.mark.julia
@needs_julia
def test_cross_backend_terminal_event_and_direction():
    down = Event("half", lambda t, y: y[0] - 0.5, direction=-1, terminal=True)
    up = Event("never", lambda t, y: y[0] - 0.5, direction=+1, terminal=True)   # wrong direction: ignored
    seen = []
    fp = FlowProblem(rhs=lambda t, y: -y, n=1, events=[up, down], rtol=1e-9, atol=1e-12,
                     on_accept=lambda t, y: seen.append(t))
    sp, jl = _both(fp, 0.0, np.ones(1), 3.0, [0.5, 1.0, 2.0])
    assert sp.status == jl.status == "event"
    assert abs(jl.t_end - LN2) < 1e-7 and abs(sp.t_end - LN2) < 1e-6
    np.testing.assert_allclose(jl.y_end, [0.5], atol=1e-7)
    np.testing.assert_array_equal(jl.t_save, [0.5])
    np.testing.assert_allclose(jl.y_save, sp.y_save, rtol=1e-6)
    assert [e.name for e in jl.events] == [e.name for e in sp.events] == ["half"]
    assert "half" in jl.message
    assert seen and max(seen) == pytest.approx(LN2, abs=1e-6)


@pytest.mark.julia
@needs_julia
@pytest.mark.parametrize("method", ["FBDF", "KenCarp47"])
def test_cross_backend_stiff_with_jvp(method):
    lam = np.array([-1.0, -300.0])
    fp = FlowProblem(rhs=lambda t, y: lam * y, jvp=lambda t, y, v: lam * v, n=2, rtol=1e-7, atol=1e-10,
                     method=method)
    jl = julia_backend.integrate_segment(fp, 0.0, np.ones(2), 2.0, [1.0, 2.0])
    fp.method = "Radau"
    from pyrod.integrate.scipy_backend import integrate_segment as scipy_segment

    sp = scipy_segment(fp, 0.0, np.ones(2), 2.0, [1.0, 2.0])
    assert jl.status == sp.status == "ok"
    np.testing.assert_allclose(jl.y_save[:, 0], sp.y_save[:, 0], rtol=1e-4)
    np.testing.assert_allclose(jl.y_save[:, 0], np.exp(-np.array([1.0, 2.0])), rtol=1e-4)
    assert np.all(np.abs(jl.y_save[:, 1]) < 1e-6)
    assert jl.n_jvp > 0


@pytest.mark.julia
@needs_julia
def test_cross_backend_projection():
    fp = FlowProblem(rhs=lambda t, y: -y, n=1, project=lambda t, y: np.maximum(y, 0.6), rtol=1e-8,
                     atol=1e-10, max_step=0.05)
    sp, jl = _both(fp, 0.0, np.ones(1), 2.0, [0.25, 1.0, 2.0])
    assert jl.status == sp.status == "ok"
    np.testing.assert_allclose(jl.y_save, sp.y_save, rtol=1e-6)
    assert jl.y_end[0] == sp.y_end[0] == 0.6


@pytest.mark.julia
@needs_julia
def test_julia_numeric_error_in_rhs_is_a_failed_segment():
    def rhs(t, y):
        if t > 1.0:
            raise FloatingPointError("overflow in the gradient")
        return -y

    seg = julia_backend.integrate_segment(FlowProblem(rhs=rhs, n=1), 0.0, np.ones(1), 2.0, [0.5, 1.0, 1.5])
    assert seg.status == "failed" and "FloatingPointError" in seg.message
    assert seg.t_end <= 1.0 and np.all(seg.t_save <= seg.t_end)
    with pytest.raises(KeyError):
        julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: {}["x"], n=1), 0.0, np.ones(1), 1.0, [])


@pytest.mark.julia
@needs_julia
def test_julia_package_tests_pass():
    """``Pkg.test()`` of julia/ (pure Julia, closed forms); uses the probed Julia and its depot."""
    env = dict(os.environ, JULIA_PKG_OFFLINE=os.environ.get("JULIA_PKG_OFFLINE", "true"))
    r = subprocess.run([_PROBE.exe, "--startup-file=no", f"--project={JULIA_DIR}", "-e",
                        "using Pkg; Pkg.test()"], capture_output=True, text=True, timeout=3600, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


# ------------------------------------------- the Python side of the bridge, against a fake PyrodFlows
class _FakePyrodFlows:
    """Stands in for the Julia module: same call signature and result fields as
    ``PyrodFlows.integrate_segment``, integrating with SciPy and calling the callbacks in place exactly as
    the Julia code does (state/outputs as float64 buffers, 1-based event indices, ``y_save`` as n x m)."""

    def __init__(self):
        self.kwargs = None

    def integrate_segment(self, rhs, jvp, y0, t0, t1, ts, **kw):
        from types import SimpleNamespace

        from scipy.integrate import solve_ivp

        self.kwargs = dict(kw, jvp=jvp)
        y0, ts, n = np.array(y0, dtype=float), np.array(ts, dtype=float), len(y0)
        nev = kw["nevents"]
        counts = {"rhs": 0, "jvp": 0}

        def f(t, y):
            counts["rhs"] += 1
            du = np.zeros(n)
            rhs(du, y.copy(), t)
            if jvp is not None:
                jv = np.zeros(n)
                jvp(jv, y.copy(), np.ones(n), t)
                counts["jvp"] += 1
            return du

        evs = []
        for i in range(nev):
            def g(t, y, i=i):
                out = np.zeros(nev)
                kw["events"](out, y.copy(), t)
                return out[i]
            g.direction, g.terminal = int(kw["directions"][i]), bool(kw["terminal"][i])
            evs.append(g)
        base = dict(ev_t=np.zeros(0), ev_index=np.zeros(0, dtype=np.int64), ev_value=np.zeros(0),
                    terminal_index=0, retcode="Success", n_rhs=0, n_jvp=0, n_steps=0, h_last=float("nan"))
        try:
            sol = solve_ivp(f, (t0, t1), y0, t_eval=ts, events=evs or None, rtol=kw["rtol"], atol=kw["atol"])
        except Exception as e:  # noqa: BLE001 - the Julia side catches everything
            return SimpleNamespace(**base, t_save=np.zeros(0), y_save=np.zeros((n, 0)), t_end=t0, y_end=y0,
                                   status="failed", message=f"PyException: {e}", error=True)
        ev_t, ev_i = [], []
        for i in range(nev):
            for t_e in sol.t_events[i]:
                ev_t.append(float(t_e))
                ev_i.append(i + 1)
        term = next((i for i in ev_i if kw["terminal"][i - 1]), 0)
        if kw["on_accept"] is not None:
            kw["on_accept"](sol.y[:, -1].copy(), float(sol.t[-1]) if not term else ev_t[-1])
        base.update(ev_t=np.array(ev_t), ev_index=np.array(ev_i, dtype=np.int64), ev_value=np.zeros(len(ev_t)),
                    terminal_index=term, n_rhs=counts["rhs"], n_jvp=counts["jvp"], n_steps=len(sol.t),
                    h_last=0.1)
        t_end = ev_t[-1] if term else t1
        y_end = sol.y_events[term - 1][-1] if term else sol.sol(t1) if sol.sol else sol.y[:, -1]
        return SimpleNamespace(**base, t_save=sol.t, y_save=np.asfortranarray(sol.y), t_end=t_end,
                               y_end=np.asarray(y_end), status="event" if term else "ok", message="",
                               error=False)


@pytest.fixture
def fake_julia(monkeypatch):
    fake = _FakePyrodFlows()
    monkeypatch.setattr(julia_backend, "_STATE", {"module": fake, "error": None})
    return fake


def test_bridge_arguments_and_result_conversion(fake_julia):
    ev = Event("half", lambda t, y: y[0] - 0.5, direction=-1, terminal=True, kind="loss_target")
    accepted = []
    fp = FlowProblem(rhs=lambda t, y: -y, jvp=lambda t, y, v: -v, n=2, events=[ev], method="kencarp47",
                     rtol=1e-9, atol=1e-12, max_step=0.5, first_step=0.01,
                     on_accept=lambda t, y: accepted.append((t, y)), options={"max_steps": 1000})
    seg = julia_backend.integrate_segment(fp, 0.0, [1.0, 2.0], 3.0, [3.0, 0.5, -1.0, 1.0])
    kw = fake_julia.kwargs
    assert kw["alg"] == "KenCarp47" and kw["linsolve"] == "gmres"
    assert kw["maxstep"] == 0.5 and kw["dt"] == 0.01 and kw["maxiters"] == 1000
    assert kw["nevents"] == 1 and list(kw["directions"]) == [-1] and list(kw["terminal"]) == [True]
    assert kw["project"] is None and kw["jvp"] is not None
    assert seg.status == "event" and "half" in seg.message
    assert abs(seg.t_end - LN2) < 1e-6
    np.testing.assert_array_equal(seg.t_save, [0.5])              # sorted, inside (t0, t1], before the event
    assert seg.y_save.shape == (1, 2)
    np.testing.assert_allclose(seg.y_save[0], [np.exp(-0.5), 2 * np.exp(-0.5)], rtol=1e-6)
    assert [(e.name, e.kind) for e in seg.events] == [("half", "loss_target")]
    assert seg.n_rhs > 0 and seg.n_jvp > 0 and seg.h_last == 0.1
    assert accepted and isinstance(accepted[-1][1], np.ndarray)


def test_bridge_views_are_read_only_and_outputs_written_in_place(fake_julia):
    def rhs(t, y):
        assert not y.flags.writeable            # the solver's state must not be modified by the RHS
        return -y

    seg = julia_backend.integrate_segment(FlowProblem(rhs=rhs, n=3), 0.0, np.ones(3), 1.0, [1.0])
    assert seg.status == "ok"
    np.testing.assert_allclose(seg.y_save[0], np.exp(-1.0) * np.ones(3), rtol=1e-4)
    with pytest.raises(ValueError, match="returned shape"):
        julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: np.zeros(2), n=3), 0.0, np.ones(3), 1.0, [])


def test_bridge_exceptions(fake_julia):
    def overflow(t, y):
        if t > 0.5:
            raise FloatingPointError("overflow")
        return -y

    seg = julia_backend.integrate_segment(FlowProblem(rhs=overflow, n=1), 0.0, np.ones(1), 1.0, [0.25, 1.0])
    assert seg.status == "failed" and "FloatingPointError" in seg.message
    with pytest.raises(KeyError):                     # a bug in user code is re-raised as itself
        julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: {}["x"], n=1), 0.0, np.ones(1), 1.0, [])
    with pytest.raises(ValueError, match="not supported by this backend"):
        julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: -y, n=1, method="DOP853"), 0.0,
                                        np.ones(1), 1.0, [])
    with pytest.raises(ValueError, match="julia_linsolve"):
        julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: -y, n=1, options={"julia_linsolve": "lu"}),
                                        0.0, np.ones(1), 1.0, [])
    seg = julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: -y, n=1), 0.0, [np.nan], 1.0, [])
    assert seg.status == "failed"
    seg = julia_backend.integrate_segment(FlowProblem(rhs=lambda t, y: -y, n=1), 1.0, [2.0], 1.0, [])
    assert seg.status == "ok" and seg.t_end == 1.0 and seg.y_end[0] == 2.0


def test_init_julia_turns_any_juliacall_failure_into_backend_unavailable(no_julia_env, monkeypatch):
    exe = _fake_exe(no_julia_env / "empty_bin" / "julia")
    assert exe.exists()
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "juliacall", None)        # `import juliacall` raises ImportError
    with pytest.raises(BackendUnavailable, match="could not start juliacall") as e:
        julia_backend.init_julia()
    assert "PYTHON_JULIACALL_EXE" in str(e.value)
    with pytest.raises(BackendUnavailable, match="could not start juliacall"):   # cached: no second attempt
        julia_backend.init_julia()


def test_init_julia_loads_pyrodflows_or_includes_the_source(no_julia_env, monkeypatch):
    import types

    _fake_exe(no_julia_env / "empty_bin" / "julia")
    monkeypatch.setattr(julia_probe, "_juliacall_installed", lambda: True)
    calls = []

    class Main:
        def seval(self, code):
            calls.append(code)
            if code == "import PyrodFlows":
                raise RuntimeError("ArgumentError: Package PyrodFlows not found in current path")
            return "module-object"

    monkeypatch.setitem(sys.modules, "juliacall", types.SimpleNamespace(Main=Main()))
    assert julia_backend.init_julia() == "module-object"
    inc = [c for c in calls if c.startswith("Base.include(Main, ")]
    assert inc and str(JULIA_DIR / "src" / "PyrodFlows.jl") in inc[0]
    assert julia_backend.init_julia() == "module-object"      # cached
