"""Is a local Julia usable for the ``"julia"`` backend?  Answered from the file system alone.

Nothing here imports ``juliacall`` or ``juliapkg`` (``import juliacall`` resolves Julia packages and,
without a configured Julia, tries to download one: it raises ``URLError`` after a network attempt rather
than ``ImportError``), runs Julia, or touches the network; :func:`probe_julia` costs a few ``stat`` calls
(well under a second).

It mirrors the order in which juliacall/juliapkg look for Julia:

1. ``PYTHON_JULIACALL_EXE`` + ``PYTHON_JULIACALL_PROJECT`` (or ``-X juliacall-exe=``/``-X juliacall-project=``):
   juliapkg is bypassed; both must be set and exist;
2. ``PYTHON_JULIAPKG_EXE`` (or ``-X juliapkg-exe=``);
3. a Julia that juliapkg installed earlier into ``<project>/pyjuliapkg/install``, or recorded in its
   ``<project>/pyjuliapkg/meta.json``;
4. ``juliaup`` on ``PATH`` *with an installed Julia* (``<depot>/juliaup/juliaup.json``);
5. ``julia`` on ``PATH``.

``juliacall`` must also be installed (``pip install pyrod[julia]``; located with ``importlib.util.find_spec``,
not imported).

Public API (names the backend registry uses):

* :func:`probe_julia` ``-> JuliaProbe`` (all the details);
* :func:`julia_available` ``-> (ok, reason)``: can ``backend="julia"`` run here;
* :func:`select_backend` ``(name) -> str``: the concrete backend name for ``"scipy"``, ``"sundials"``,
  ``"julia"`` or ``"auto"``; ``"julia"`` raises :class:`~pyrod.integrate.base.BackendUnavailable` (with the
  offline recipe) when the probe fails; ``"auto"`` is ``"julia"`` only when the probe succeeds *and* the
  Julia side is set up so that starting it needs no download (``JuliaProbe.ready_offline``), else
  ``"scipy"``;
* :func:`require_julia` raises :class:`BackendUnavailable` unless :func:`julia_available`;
* :data:`OFFLINE_RECIPE` / :func:`unavailable_message`: how to point pyrod at an existing Julia.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .base import BackendUnavailable

__all__ = ["JuliaProbe", "probe_julia", "julia_available", "select_backend", "require_julia",
           "unavailable_message", "julia_source_dir", "juliapkg_json_path", "OFFLINE_RECIPE", "BACKEND_NAMES"]

BACKEND_NAMES = ("scipy", "sundials", "julia", "auto")
JULIACALL_VERSION = "0.9.37"          # pin of pyrod[julia]; the Julia project must hold the same PythonCall

OFFLINE_RECIPE = f"""\
pyrod never downloads Julia. To use an existing Julia (>= 1.10) without network:

  pip install 'pyrod[julia]'        # juliacall=={JULIACALL_VERSION}

  # once, on a machine of the same OS/architecture that has network, build a project P and a depot D:
  export JULIA_DEPOT_PATH=D
  julia --project=P -e 'using Pkg; Pkg.add(name="PythonCall", version="{JULIACALL_VERSION}");
      Pkg.develop(path="<pyrod checkout>/julia"); Pkg.precompile()'

  # then, where pyrod runs (copy P and D there if needed):
  export JULIA_DEPOT_PATH=D JULIA_PKG_OFFLINE=true
  export PYTHON_JULIACALL_EXE=$(which julia) PYTHON_JULIACALL_PROJECT=P     # bypasses juliapkg
  # or, letting juliapkg use that Julia and project without resolving anything:
  #   export PYTHON_JULIAPKG_EXE=$(which julia) PYTHON_JULIAPKG_PROJECT=P PYTHON_JULIAPKG_OFFLINE=yes

(JULIA_PROJECT is not read by juliacall; PYTHON_JULIACALL_PROJECT / PYTHON_JULIAPKG_PROJECT are. Both
PYTHON_JULIACALL_EXE and PYTHON_JULIACALL_PROJECT must be set, or neither. With a connected machine,
having `julia` on PATH is enough: juliapkg installs the packages from pyrod/juliapkg.json on first use.)
Otherwise use backend="scipy" (default) or "sundials"."""


@dataclass(frozen=True)
class JuliaProbe:
    """What :func:`probe_julia` found.

    ``ok``: the Julia backend can be started (a Julia executable and juliacall are present and the
    configuration is consistent). ``exe``/``source``: the executable and where it came from (env var,
    ``PATH``, …). ``mode``: ``"juliacall"`` (PYTHON_JULIACALL_EXE/PROJECT, juliapkg bypassed) or
    ``"juliapkg"``. ``ready_offline``: starting Julia needs no download (juliacall mode, juliapkg offline
    mode, or a juliapkg environment already resolved for the current dependency files); ``"auto"``
    selects Julia only then. ``reason``: one line for messages and skip reasons.
    """

    ok: bool
    reason: str
    exe: str | None = None
    source: str | None = None
    mode: str | None = None
    project: str | None = None
    juliacall_installed: bool = False
    ready_offline: bool = False


# ------------------------------------------------------------------------------------------- config
def _config(name: str, prefix: str) -> tuple[str | None, str]:
    """juliacall/juliapkg configuration: ``-X <prefix>-<name>=`` first, then ``PYTHON_<PREFIX>_<NAME>``."""
    key = f"{prefix}-{name}".lower().replace("_", "-")
    value = sys._xoptions.get(key)
    if isinstance(value, str) and value:
        return value, f"-X {key}"
    env = f"PYTHON_{prefix.upper()}_{name.upper()}"
    value = os.environ.get(env)
    if value:
        return value, env
    return None, env


def _is_yes(value: str | None) -> bool:
    return str(value).strip().lower() in ("yes", "true", "1", "y", "on")


def _executable(path: str | None) -> str | None:
    """The absolute path if ``path`` is an executable file (or a command on PATH)."""
    if not path:
        return None
    found = shutil.which(path)
    if found:
        return os.path.abspath(found)
    return None


def _depot() -> Path:
    dp = os.environ.get("JULIA_DEPOT_PATH")
    if dp:
        first = dp.split(";" if os.name == "nt" else ":")[0]
        if first:
            return Path(first).expanduser().absolute()
    return Path.home() / ".julia"


def _juliapkg_project() -> Path:
    project, _ = _config("project", "juliapkg")
    if project:
        return Path(project)
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "julia_env"
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        return Path(conda) / "julia_env"
    return _depot() / "environments" / "pyjuliapkg"


def juliapkg_json_path() -> Path:
    """pyrod's ``juliapkg.json`` (declares the Julia dependencies; juliapkg finds it on ``sys.path``)."""
    return Path(__file__).resolve().parents[1] / "juliapkg.json"


def julia_source_dir() -> Path | None:
    """Directory of the bundled Julia package (``Project.toml`` + ``src/PyrodFlows.jl``): the checkout's
    ``julia/`` or an installed copy at ``pyrod/_julia``; None if neither exists."""
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "julia", here.parents[1] / "_julia"):
        if (cand / "src" / "PyrodFlows.jl").is_file():
            return cand
    return None


def _meta(project: Path) -> dict | None:
    fn = project / "pyjuliapkg" / "meta.json"
    try:
        with open(fn) as fp:
            meta = json.load(fp)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _meta_current(meta: dict) -> bool:
    """juliapkg would skip resolving (no Pkg operations, no network): every recorded dependency file is
    unchanged and pyrod's own juliapkg.json is among them (a cheap version of ``can_skip_resolve``)."""
    files = meta.get("deps_files")
    if not isinstance(files, dict):
        return False
    ours = os.path.normcase(os.path.normpath(str(juliapkg_json_path())))
    if ours not in {os.path.normcase(os.path.normpath(f)) for f in files}:
        return False
    for fn, info in files.items():
        try:
            if os.path.getmtime(fn) > float(info["timestamp"]):
                with open(fn, "rb") as fp:
                    if hashlib.sha256(fp.read()).hexdigest() != info["hash_sha256"]:
                        return False
        except (OSError, KeyError, TypeError, ValueError):
            return False
    return True


def _juliaup_exe() -> str | None:
    """A Julia installed by juliaup (read from its json; ``juliaup`` itself is not run)."""
    if not shutil.which("juliaup"):
        return None
    judir = _depot() / "juliaup"
    try:
        with open(judir / "juliaup.json") as fp:
            meta = json.load(fp)
    except (OSError, ValueError):
        return None
    ext = ".exe" if os.name == "nt" else ""
    for info in (meta.get("InstalledVersions") or {}).values():
        if isinstance(info, dict) and "Path" in info:
            exe = _executable(str(judir / info["Path"] / "bin" / f"julia{ext}"))
            if exe:
                return exe
    return None


def _juliacall_installed() -> bool:
    """juliacall can be imported (located with ``find_spec``; importing it would start Julia)."""
    if "juliacall" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("juliacall") is not None
    except (ImportError, ValueError):
        return False


# -------------------------------------------------------------------------------------------- probe
def probe_julia() -> JuliaProbe:
    """Look for a usable local Julia without importing juliacall, running Julia or using the network."""
    has_jc = _juliacall_installed()
    no_jc = f"juliacall is not installed (pip install 'pyrod[julia]', which pins juliacall=={JULIACALL_VERSION})"

    # 1. juliacall's own executable + project: juliapkg is bypassed entirely
    jc_exe, jc_exe_key = _config("exe", "juliacall")
    jc_proj, jc_proj_key = _config("project", "juliacall")
    if jc_exe or jc_proj:
        if not (jc_exe and jc_proj):
            missing = jc_proj_key if jc_exe else jc_exe_key
            return JuliaProbe(False, f"{jc_exe_key if jc_exe else jc_proj_key} is set but {missing} is not: "
                              "juliacall needs both or neither", juliacall_installed=has_jc)
        exe = _executable(jc_exe)
        if exe is None:
            return JuliaProbe(False, f"{jc_exe_key}={jc_exe} is not an executable file", juliacall_installed=has_jc)
        if not Path(jc_proj).is_dir():
            return JuliaProbe(False, f"{jc_proj_key}={jc_proj} is not a directory", exe=exe, source=jc_exe_key,
                              juliacall_installed=has_jc)
        if not has_jc:
            return JuliaProbe(False, f"Julia found ({jc_exe_key}={exe}) but {no_jc}", exe=exe, source=jc_exe_key,
                              mode="juliacall", project=jc_proj)
        return JuliaProbe(True, f"Julia {exe} (from {jc_exe_key}) with project {jc_proj} ({jc_proj_key})",
                          exe=exe, source=jc_exe_key, mode="juliacall", project=str(jc_proj),
                          juliacall_installed=True, ready_offline=True)

    # 2.-5. the juliapkg route
    offline_val, offline_key = _config("offline", "juliapkg")
    offline = _is_yes(offline_val)
    project = _juliapkg_project()
    meta = _meta(project)
    exe, source = None, None
    pk_exe, pk_key = _config("exe", "juliapkg")
    if pk_exe:
        exe, source = _executable(pk_exe), pk_key
        if exe is None:
            return JuliaProbe(False, f"{pk_key}={pk_exe} is not an executable file", juliacall_installed=has_jc)
    if exe is None:
        ext = ".exe" if os.name == "nt" else ""
        exe = _executable(str(project / "pyjuliapkg" / "install" / "bin" / f"julia{ext}"))
        source = "a Julia installed by juliapkg" if exe else None
    if exe is None and meta and isinstance(meta.get("executable"), str):
        exe = _executable(meta["executable"])
        source = f"juliapkg's record ({project / 'pyjuliapkg' / 'meta.json'})" if exe else None
    if exe is None:
        exe = _juliaup_exe()
        source = "juliaup" if exe else None
    if exe is None:
        exe = _executable("julia")
        source = "julia on PATH" if exe else None
    if exe is None:
        return JuliaProbe(False, "no local Julia found (checked PYTHON_JULIACALL_EXE, PYTHON_JULIAPKG_EXE, "
                          f"juliapkg's environment {project}, juliaup, `julia` on PATH)", juliacall_installed=has_jc)
    if not has_jc:
        return JuliaProbe(False, f"Julia found ({exe}, {source}) but {no_jc}", exe=exe, source=source,
                          mode="juliapkg", project=str(project))
    resolved = bool(meta) and _meta_current(meta)
    ready = offline or resolved
    how = (f"{offline_key}=yes" if offline else "juliapkg environment already resolved" if resolved
           else "first use lets juliapkg install the Julia packages (needs network)")
    return JuliaProbe(True, f"Julia {exe} ({source}); juliapkg project {project}; {how}", exe=exe, source=source,
                      mode="juliapkg", project=str(project), juliacall_installed=True, ready_offline=ready)


def julia_available() -> tuple[bool, str]:
    """``(ok, reason)``: whether ``backend="julia"`` can start here (no network, no juliacall import)."""
    p = probe_julia()
    return p.ok, p.reason


def unavailable_message(reason: str) -> str:
    """The error text for a missing Julia: the probe's reason, then :data:`OFFLINE_RECIPE`."""
    return f"the 'julia' backend cannot run here: {reason}.\n{OFFLINE_RECIPE}"


def require_julia() -> JuliaProbe:
    """The probe if it succeeded; else :class:`BackendUnavailable` with the offline recipe (fast)."""
    p = probe_julia()
    if not p.ok:
        raise BackendUnavailable(unavailable_message(p.reason))
    return p


def select_backend(name: str | None = "scipy") -> str:
    """The concrete backend for ``name``: ``"scipy"``/``"sundials"`` as given; ``"julia"`` after the probe
    (:class:`BackendUnavailable` with the offline recipe otherwise); ``"auto"`` -> ``"julia"`` only when the
    probe succeeds and Julia can start without any download (``ready_offline``), else ``"scipy"``.
    Unknown names raise ValueError.  Never imports juliacall."""
    if name is None:
        return "scipy"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is unknown; valid backends: {list(BACKEND_NAMES)}")
    name = name.lower()
    if name == "julia":
        require_julia()
        return "julia"
    if name == "auto":
        p = probe_julia()
        return "julia" if (p.ok and p.ready_offline) else "scipy"
    return name
