"""The import layers of pyrod/ hold (import-linter contracts in pyproject.toml, [tool.importlinter]): the maths
(flows, runs, optimizers, problems, integrators, eigen-solvers, SDCP) imports neither the writer, the run loop nor
the spec, the declarations below them (schema, central_options, checks, keys, run_kinds) are stdlib only, and no
two sibling modules or packages of pyrod import each other, directly or through others (acyclic_siblings)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_kept():
    pytest.importorskip("importlinter", reason="import-linter is part of the test extra: pip install pyrod[test]")
    p = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "3 kept, 0 broken" in p.stdout, p.stdout[-2000:]
