"""Plug-ins (pyrod.plugins): a run kind from outside pyrod reaches the command line (``--plugin``, ``--run-options``),
an installed package's entry point registers it without being named, ``resume`` of a file whose kind is missing
names the module that defined it, and bad plug-ins fail with clear messages. Every command runs in a fresh
subprocess, where nothing is registered until a plug-in is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import toy_flow

import pyrod
from pyrod import plugins, run_kinds
from pyrod.io.reader import json_attr

TESTS = Path(__file__).resolve().parent
QUAD = {"toy": "quadratic", "spectrum": [3.0, 1.0, 0.2], "rotate": True, "seed": 1}
GD = {"name": "GD", "lr": 0.1}


def _env(*paths) -> dict:
    """The environment of a subprocess whose Python path has ``paths`` (tests/ for toy_flow) and nothing else of
    ours: it starts with no plug-in loaded."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return env


def _pyrod(args, cwd, *paths):
    return subprocess.run([sys.executable, "-m", "pyrod", *args], cwd=cwd, env=_env(*paths), capture_output=True,
                          text=True, timeout=180)


def _run_args(path, *more):
    return ["run", "--problem", json.dumps(QUAD), "--optimizer", json.dumps(GD), "--stop.steps", "20",
            "--eig.k", "1", "--eig.every", "5", "--output.chunk", "5", "--output.checkpoint-every", "5",
            "--integrator.method", "DOP853", "--integrator.rtol", "1e-10", "--integrator.atol", "1e-12",
            "--output.path", str(path), "--no-progress", *more]


def _same_as_python(path, steps=20, scale=0.5):
    """The file ``path`` holds what pyrod.simulate computes in this process for the same run."""
    ref = pyrod.simulate(problem=QUAD, optimizer=GD, steps=steps, runs=["discrete", "scaled_gd"],
                         scaled_gd={"scale": scale}, eigs=1, eig_every=5, chunk=5, method="DOP853", rtol=1e-10,
                         atol=1e-12)
    got = pyrod.open(path)
    for group in ("discrete", "scaled_gd"):
        for v in ("loss", "grad_norm"):
            np.testing.assert_allclose(got[group][v].values, ref[group][v].values, rtol=1e-9, err_msg=f"{group}/{v}")
    return got


def test_cli_runs_a_registered_flow_with_its_options(tmp_path):
    p = _pyrod(_run_args(tmp_path / "a.nc", "--plugin", "toy_flow", "--runs", "discrete", "scaled_gd",
                         "--run-options", '{"scaled_gd": {"scale": 0.5}}'), tmp_path, TESTS)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["runs"] == ["discrete", "scaled_gd"]
    got = _same_as_python(tmp_path / "a.nc")
    assert got["scaled_gd"].attrs["scale"] == 0.5
    assert pyrod.spec_of(tmp_path / "a.nc").run_options == {"scaled_gd": {"scale": 0.5}}
    # the file records which module defined the kind (for resume's message; never imported because of it)
    assert json_attr(got, "run_kind_modules") == {"scaled_gd": "toy_flow"}
    # --help with the plug-in offers its kind
    h = _pyrod(["run", "--plugin", "toy_flow", "--help"], tmp_path, TESTS)
    assert h.returncode == 0 and "scaled_gd" in h.stdout and "--run-options" in h.stdout


def test_cli_without_the_plugin_says_how_to_load_it(tmp_path):
    p = _pyrod(_run_args(tmp_path / "a.nc", "--runs", "discrete", "scaled_gd"), tmp_path, TESTS)
    assert p.returncode == 2 and "run 'scaled_gd' is unknown" in p.stderr and "--plugin MODULE" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    bad = _pyrod(_run_args(tmp_path / "a.nc", "--plugin", "no_such_plugin_module"), tmp_path, TESTS)
    assert bad.returncode == 2 and "plugin 'no_such_plugin_module': cannot import" in bad.stderr
    opts = _pyrod(_run_args(tmp_path / "a.nc", "--plugin", "toy_flow", "--runs", "discrete", "scaled_gd",
                            "--run-options", '{"scaled_gd": {"scael": 2}}'), tmp_path, TESTS)
    assert opts.returncode == 2 and "scael" in opts.stderr and "scale" in opts.stderr
    assert not (tmp_path / "a.nc").exists()


def test_cli_resume_names_the_missing_plugin_then_continues_with_it(tmp_path):
    path = tmp_path / "a.nc"
    p = _pyrod(_run_args(path, "--plugin", "toy_flow", "--runs", "discrete", "scaled_gd",
                         "--run-options", '{"scaled_gd": {"scale": 0.5}}'), tmp_path, TESTS)
    assert p.returncode == 0, p.stderr
    rows = pyrod.open(path)["scaled_gd"].sizes["t"]
    r = _pyrod(["resume", str(path), "--steps", "30", "--no-progress"], tmp_path, TESTS)
    assert r.returncode == 2
    assert "run kind 'scaled_gd'" in r.stderr and "'toy_flow'" in r.stderr and "--plugin toy_flow" in r.stderr
    assert pyrod.open(path)["scaled_gd"].sizes["t"] == rows > 0      # nothing written was lost
    r = _pyrod(["resume", str(path), "--steps", "30", "--no-progress", "--plugin", "toy_flow"], tmp_path, TESTS)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps_completed"] == 30
    _same_as_python(path, steps=30)


def test_spec_file_with_run_options(tmp_path):
    spec = pyrod.RunSpec(problem=QUAD, optimizer=GD, runs=("discrete", "scaled_gd"), stop={"steps": 20},
                         eig={"k": 1, "every": 5}, output={"chunk": 5, "path": str(tmp_path / "s.nc")},
                         integrator={"method": "DOP853", "rtol": 1e-10, "atol": 1e-12},
                         run_options={"scaled_gd": {"scale": 0.5}})
    (tmp_path / "s.json").write_text(spec.to_json())
    p = _pyrod(["run", "--plugin", "toy_flow", "--spec", "s.json", "--no-progress"], tmp_path, TESTS)
    assert p.returncode == 0, p.stderr
    _same_as_python(tmp_path / "s.nc")


def _installed(tmp_path, entry: str) -> Path:
    """A site directory holding one installed distribution whose entry point (group pyrod.plugins) is ``entry``:
    what ``pip install`` of a package with ``[project.entry-points."pyrod.plugins"]`` leaves behind."""
    site = tmp_path / "site"
    info = site / "toyplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pyrod.plugins]\n{entry}\n")
    return site


@pytest.mark.parametrize("entry", ["scaled = toy_flow", "scaled = toy_flow:KIND"])
def test_an_installed_plugin_is_found_without_being_named(tmp_path, entry):
    site = _installed(tmp_path, entry)
    code = textwrap.dedent(f"""
        import sys, pyrod
        assert "toy_flow" not in sys.modules
        spec = pyrod.RunSpec(problem={QUAD!r}, runs=("discrete", "scaled_gd"), stop={{"steps": 4}})
        assert "toy_flow" in sys.modules and spec.flows == ("scaled_gd",)
        print("ok")
    """)
    p = subprocess.run([sys.executable, "-c", code], env=_env(site, TESTS), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    c = _pyrod(_run_args(tmp_path / "a.nc", "--runs", "discrete", "scaled_gd", "--run-options",
                         '{"scaled_gd": {"scale": 0.5}}'), tmp_path, site, TESTS)
    assert c.returncode == 0, c.stderr
    _same_as_python(tmp_path / "a.nc")


def test_a_broken_installed_plugin_warns_and_is_named_in_errors(tmp_path):
    site = _installed(tmp_path, "broken = no_such_module_of_toyplug")
    code = textwrap.dedent(f"""
        import warnings, pyrod
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            spec = pyrod.RunSpec(problem={QUAD!r}, runs=("discrete", "rod"), stop={{"steps": 4}})   # still runs
            try:
                pyrod.RunSpec(problem={QUAD!r}, runs=("discrete", "scaled_gd"))
            except ValueError as e:
                print(e)
        assert any("no_such_module_of_toyplug" in str(x.message) for x in w), [str(x.message) for x in w]
    """)
    p = subprocess.run([sys.executable, "-c", code], env=_env(site, TESTS), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "run 'scaled_gd' is unknown" in p.stdout
    assert "failed to load: broken = no_such_module_of_toyplug (package toyplug)" in p.stdout


def test_load_plugins_errors_and_forms():
    for bad in ("a:b:c", ":x", ""):
        with pytest.raises(plugins.PluginError, match="must be a module name"):
            plugins.load_plugins([bad], installed=False)
    with pytest.raises(plugins.PluginError, match="no_attribute"):
        plugins.load_plugins(["toy_flow:no_attribute"], installed=False)
    # a module already imported is a no-op; a RunKind named by module:attribute is registered once
    plugins.load_plugins(["toy_flow", "toy_flow:KIND"], installed=False)
    assert run_kinds.run_kind("scaled_gd") is toy_flow.KIND


def test_origin_names_the_module_to_import():
    assert toy_flow.KIND.origin == "toy_flow"
    assert run_kinds.run_kind("central").origin == "pyrod.flows.central"
    assert run_kinds.run_kind("midpoint").origin == "pyrod.runs.discrete"
