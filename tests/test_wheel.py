"""The wheel installs whole: build sdist -> wheel from a copy of the checkout, install it into a fresh venv and
use it from a folder outside the tree.

What is checked in the installed package (not the checkout): ``pyrod.simulate`` on a diagonal quadratic matches
the closed form of GD, the NetCDF round trip works, the Julia package (``pyrod/_julia``: Project.toml,
src/PyrodFlows.jl) is installed and found by ``julia_probe.julia_source_dir`` and by the wheel's
``juliapkg.json``, the console script ``pyrod-experiments list`` runs, and there is no top-level ``experiments``.

No download: the venv is made without pip and sees the current environment's site-packages through a ``.pth``
file (plain paths, so the current environment's editable-install finder is *not* activated there); the wheel
is installed with ``--no-deps --no-index``.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a fresh clone would not have (or must not ship)
IGNORE = shutil.ignore_patterns(".git", ".venv", "venv", "build", "dist", "results", "*.egg-info", "__pycache__",
                                "*.pyc", "*.nc", ".pytest_cache", ".ruff_cache", ".whl", ".gl")


def _run(cmd, cwd, env=None, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\nstdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"
    return r


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    env.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", **extra)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel, timings): sdist from a copy of the checkout, wheel from the unpacked sdist (as
    ``python -m build`` does), both with the current environment's setuptools (no build isolation)."""
    import setuptools

    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) < (70, 1):
        pytest.fail(f"setuptools {setuptools.__version__} cannot build the wheel without the 'wheel' package: "
                    "pip install 'setuptools>=70.1' (bash scripts/setup.sh test does)")
    tmp = tmp_path_factory.mktemp("wheel")
    t0 = time.perf_counter()
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    sd = tmp / "sdist"
    sd.mkdir()
    _run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(sd)!r})"], cwd=src,
         env=_clean_env())
    (sdist,) = sd.glob("pyrod-*.tar.gz")
    with tarfile.open(sdist) as tf:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tf.extractall(tmp / "unpacked", **kw)
    (unpacked,) = (tmp / "unpacked").iterdir()
    wd = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", wd, unpacked], cwd=tmp, env=_clean_env())
    (wheel,) = wd.glob("pyrod-*.whl")
    return sdist, wheel, {"build_s": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A fresh venv with the wheel installed; the rest (torch, numpy, …) from the current environment."""
    _, wheel, timings = built
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root, env=_clean_env())
    py = env_dir / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=root, env=_clean_env()).stdout.strip())
    parents = [p for p in dict.fromkeys([*site.getsitepackages(), *sys.path])
               if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (purelib / "_pyrod_test_parent_env.pth").write_text("\n".join(parents) + "\n")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel],
         cwd=root, env=_clean_env())
    timings["install_s"] = time.perf_counter() - t0
    work = root / "elsewhere"            # outside the checkout: the checkout must not be importable
    work.mkdir()
    return env_dir, purelib, work, timings


def test_sdist_carries_the_julia_package(built):
    sdist, _, _ = built
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for need in ("julia/Project.toml", "julia/src/PyrodFlows.jl", "setup.py", "MANIFEST.in",
                 "pyrod/juliapkg.json", "pyrod/experiments/__main__.py"):
        assert need in names, need


def test_wheel_contents(built):
    _, wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        spec = json.loads(zf.read("pyrod/juliapkg.json"))
        top = zf.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
        eps = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert top == ["pyrod"]
    assert not any(n.startswith("experiments/") for n in names)
    assert "pyrod/experiments/__main__.py" in names
    assert "pyrod-experiments = pyrod.experiments.__main__:main" in eps
    # every Python file and subpackage of the checkout is in the wheel
    ours = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pyrod").rglob("*.py") if "__pycache__" not in p.parts}
    assert ours <= names, sorted(ours - names)
    # the Julia package, bundled; the wheel's juliapkg.json points at it
    jl = {p.relative_to(ROOT / "julia").as_posix() for p in (ROOT / "julia").rglob("*") if p.is_file()}
    assert {"Project.toml", "src/PyrodFlows.jl"} <= jl
    assert {f"pyrod/_julia/{n}" for n in jl} <= names, sorted({f"pyrod/_julia/{n}" for n in jl} - names)
    assert spec["packages"]["PyrodFlows"]["path"] == "_julia"
    # ... while the checkout's file still points at the top-level julia/ (the build never writes there)
    here = json.loads((ROOT / "pyrod" / "juliapkg.json").read_text())
    assert (ROOT / "pyrod" / here["packages"]["PyrodFlows"]["path"]).resolve() == (ROOT / "julia").resolve()
    assert {k: v for k, v in spec.items() if k != "packages"} == {k: v for k, v in here.items() if k != "packages"}
    assert set(spec["packages"]) == set(here["packages"])


SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    from pathlib import Path
    import pyrod
    from pyrod.integrate import julia_probe

    purelib = Path(sys.argv[1]).resolve()
    pkg = Path(pyrod.__file__).resolve().parent
    assert pkg == purelib / "pyrod", (pyrod.__file__, purelib)
    assert importlib.util.find_spec("experiments") is None, importlib.util.find_spec("experiments")
    try:
        import experiments  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("a top-level experiments package is importable: " + experiments.__file__)

    # the Julia package: installed, found by the probe and by the installed juliapkg.json
    jdir = julia_probe.julia_source_dir()
    assert jdir is not None and jdir.resolve() == pkg / "_julia", jdir
    assert (jdir / "Project.toml").is_file() and (jdir / "src" / "PyrodFlows.jl").is_file()
    spec = json.loads(julia_probe.juliapkg_json_path().read_text())
    assert (julia_probe.juliapkg_json_path().parent / spec["packages"]["PyrodFlows"]["path"]).resolve() == jdir
    print("probe:", julia_probe.probe_julia().reason)

    # a run: GD on L = 1/2 sum_i lam_i w_i^2 (A diagonal); closed form w_k = (1 - lr lam)^k w_0
    lam, lr, steps = [4.0, 1.0], 0.1, 12
    prob = pyrod.problem(toy="quadratic", spectrum=lam, rotate=False, w0=1.0, w_star=0.0)
    out = Path("run.nc")
    tree = pyrod.simulate(prob, pyrod.optimizers.GD(lr=lr), steps=steps, runs=["discrete"], eigs=1,
                          eig_every=4, path=out, progress=False)
    ds = pyrod.open(out)["discrete"].ds
    assert len(ds.t) >= steps and tree["discrete"].ds.sizes == ds.sizes, (ds.sizes, tree["discrete"].ds.sizes)
    for t, loss in zip(ds.t.values, ds.loss.values, strict=True):
        want = 0.5 * sum(l * (1 - lr * l) ** (2 * t) for l in lam)
        assert abs(loss - want) <= 1e-12 * want, (t, loss, want)
    sharp = ds.sharpness.values[~(ds.sharpness.isnull().values)]
    assert len(sharp) >= 3 and abs(sharp - 4.0).max() < 1e-6, sharp
    print("ok", len(ds.t), pyrod.__version__)
""")


def test_installed_wheel_works_outside_the_tree(venv):
    env_dir, purelib, work, timings = venv
    t0 = time.perf_counter()
    py = env_dir / "bin" / "python"
    (work / "check.py").write_text(SCRIPT)
    r = _run([py, "check.py", purelib], cwd=work, env=_clean_env(), timeout=600)
    assert r.stdout.strip().splitlines()[-1].startswith("ok "), r.stdout
    r = _run([env_dir / "bin" / "pyrod-experiments", "list"], cwd=work, env=_clean_env(), timeout=600)
    assert "reproduces:" in r.stdout and "aeos" in r.stdout, r.stdout
    timings["use_s"] = time.perf_counter() - t0
    print("\n[wheel] timings (s): " + ", ".join(f"{k}={v:.1f}" for k, v in timings.items()))
