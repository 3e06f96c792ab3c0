"""The documentation: every Markdown file cited in the repository exists in the repository; the docs site builds
with ``mkdocs build --strict`` (broken links and unparseable docstrings fail); user-facing text cites papers.

A citation is any token ``[\\w/]+\\.md`` (optionally preceded by ``../`` segments) in a ``.py`` or ``.md`` file. It
resolves if it names a file relative to the repository root, to ``docs/``, or to the citing file's own folder
(relative links inside ``docs/``). Folders skipped: hidden ones (``.venv``, ``.git``, caches), ``results``,
``build``, ``dist``, ``*.egg-info``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"(?<![\w./-])((?:\.\./)*[\w/]+\.md)(?![\w])")
SKIP_DIRS = {"results", "build", "dist", "node_modules", "__pycache__"}


def _files(root: Path):
    for path in root.rglob("*"):
        if path.suffix not in (".py", ".md") or not path.is_file():
            continue
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        yield path


def missing_citations(root: Path, exclude=()) -> list[str]:
    """``"file:line: token"`` for every cited ``.md`` file that does not exist under ``root`` (files in ``exclude``
    are not scanned)."""
    skip = {Path(p).resolve() for p in exclude}
    out = []
    for path in _files(root):
        if path.resolve() in skip:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for m in TOKEN.finditer(line):
                tok = m.group(1)
                bare = tok.lstrip("./")
                candidates = [path.parent / tok, root / bare, root / "docs" / bare]
                if not any(c.is_file() and root in c.resolve().parents for c in candidates):
                    out.append(f"{path.relative_to(root)}:{lineno}: {tok}")
    return out


def test_every_cited_markdown_file_exists():
    bad = missing_citations(ROOT, exclude=[__file__])  # this file's examples are fixtures
    assert not bad, "citations of .md files that are not in the repository:\n" + "\n".join(bad)


def test_checker_flags_a_missing_file_and_accepts_existing_ones(tmp_path):
    (tmp_path / "docs" / "theory").mkdir(parents=True)
    (tmp_path / "docs" / "theory" / "a.md").write_text("see [b](b.md) and [up](../guide.md)\n")
    (tmp_path / "docs" / "theory" / "b.md").write_text("x\n")
    (tmp_path / "docs" / "guide.md").write_text("see docs/theory/a.md and theory/b.md\n")
    (tmp_path / "README.md").write_text("guide.md, docs/guide.md\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text('"""Spec: notes_only.md §4.2, and docs/theory/a.md."""\n')
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "x.py").write_text("# gone.md\n")
    assert missing_citations(tmp_path) == ["pkg/mod.py:1: notes_only.md"]


# ------------------------------------------------------------------------------------------------ the docs site
def _mkdocs_build(config: Path, site: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=600, env=env)


needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or
                                  importlib.util.find_spec("mkdocstrings") is None,
                                  reason="mkdocs-material and mkdocstrings[python] are not installed (the test extra "
                                         "has them: pip install -e '.[test]')")


@needs_mkdocs
def test_docs_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page in the nav or a docstring the API reference cannot
    parse fails the build (and this test)."""
    p = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert p.returncode == 0, p.stderr[-4000:]
    gallery = (tmp_path / "site" / "gallery" / "index.html").read_text()
    from pyrod.experiments import EXPERIMENTS
    for name in EXPERIMENTS:                                   # every experiment has its gallery section
        assert f'id="{name}"' in gallery, name
    api = (tmp_path / "site" / "api" / "spec" / "index.html").read_text()
    assert "number of top eigenvalues of P⁻¹H measured" in api  # field docstrings reach the API reference


@needs_mkdocs
def test_docs_build_fails_on_a_broken_link(tmp_path):
    """The gate itself: the site's own validation settings turn a link to a missing page into a failed build."""
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\nsee [the missing page](missing.md)\n")
    small = {"site_name": "t", "docs_dir": "docs", "strict": True, "validation": cfg["validation"],
             "nav": [{"Home": "index.md"}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(small))
    p = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert p.returncode != 0 and "missing.md" in p.stderr, p.stderr[-2000:]


def test_every_gallery_figure_exists():
    import json

    made = json.loads((ROOT / "docs" / "gallery" / "gallery.json").read_text())
    for name, entry in made.items():
        for fig in entry["figures"]:
            assert (ROOT / "docs" / "gallery" / fig).is_file(), f"{name}: {fig}"
        assert entry["command"].startswith(("python -m pyrod", "bash scripts/")), entry["command"]


def test_user_facing_text_cites_papers_not_seed_numbers():
    """Users never see the project's private notes: "seed 003" and "the seeds' figures" must not appear in what a
    user reads (README, docs, the package's text); papers are cited by title and arXiv number (pyrod.papers)."""
    bad = []
    for path in [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("pyrod/**/*.py"),
                 *ROOT.glob("experiments/*.py")]:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bseed 0\d\d\b|\bseeds' (headline )?figures", line):
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:100]}")
    assert not bad, "\n".join(bad)
