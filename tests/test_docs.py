"""Every Markdown file cited in the repository exists in the repository.

A citation is any token ``[\\w/]+\\.md`` (optionally preceded by ``../`` segments) in a ``.py`` or ``.md`` file. It
resolves if it names a file relative to the repository root, to ``docs/``, or to the citing file's own folder
(relative links inside ``docs/``). Folders skipped: hidden ones (``.venv``, ``.git``, caches), ``results``,
``build``, ``dist``, ``*.egg-info``.
"""
from __future__ import annotations

import re
from pathlib import Path

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
