"""Build glue that pyproject.toml cannot express: bundle the Julia package into the wheel.

The Julia package lives at the top level of the repository (``julia/``), and ``pyrod/juliapkg.json`` points
juliapkg at it as ``../julia`` (relative to the JSON file). An installed wheel has no ``julia/`` next to
``pyrod/``, so a non-editable build copies ``julia/`` to ``pyrod/_julia/`` in the build tree and writes the
wheel's ``juliapkg.json`` with ``"path": "_julia"``. The checkout itself is never modified, and editable
installs keep reading ``julia/`` directly. Everything else (metadata, dependencies, package discovery) is in
pyproject.toml; ``MANIFEST.in`` puts ``julia/`` into the sdist so that a wheel built from it is complete too.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py

HERE = Path(__file__).resolve().parent
JULIA_SRC = HERE / "julia"
BUNDLED = "_julia"                       # pyrod/_julia in the wheel; julia_probe.julia_source_dir looks there


def _julia_files(root: Path) -> list[Path]:
    """Files of the Julia package to ship (relative paths): no hidden files, no machine-local Manifest."""
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.name != "Manifest.toml":
            out.append(rel)
    return out


class build_py(_build_py):
    """``build_py`` that also bundles ``julia/`` as ``pyrod/_julia`` and repoints the built juliapkg.json."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return                       # editable: pyrod/juliapkg.json's ../julia is the checkout's julia/
        if not (JULIA_SRC / "src" / "PyrodFlows.jl").is_file():
            raise FileNotFoundError(f"cannot bundle the Julia package: {JULIA_SRC / 'src' / 'PyrodFlows.jl'} "
                                    "is missing (build from a checkout or from pyrod's sdist)")
        dest = Path(self.build_lib) / "pyrod" / BUNDLED
        if dest.exists():
            shutil.rmtree(dest)          # no stale files from an earlier build
        for rel in _julia_files(JULIA_SRC):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(JULIA_SRC / rel, target)
        spec_fn = Path(self.build_lib) / "pyrod" / "juliapkg.json"
        spec = json.loads(spec_fn.read_text())
        spec["packages"]["PyrodFlows"]["path"] = BUNDLED
        spec_fn.unlink()                 # may be a hard link to the checkout's file: never write through it
        spec_fn.write_text(json.dumps(spec, indent=4) + "\n")


setup(cmdclass={"build_py": build_py})
