"""MkDocs hooks of the docs site (mkdocs.yml ``hooks:``): pages that are generated from pyrod itself, so that they
cannot fall behind it.

* ``gallery.md``: ``<!-- gallery -->`` becomes one section per experiment of ``pyrod.experiments.EXPERIMENTS``
  (title, the paper it reproduces, the figure files listed for it in ``docs/gallery/gallery.json`` with the
  command that made them, the scale and how long it took). An experiment without figures yet gets the command
  that makes them, so a new experiment never breaks the build.
* ``papers.md``: ``<!-- papers -->`` becomes the list of ``pyrod.papers.PAPERS``.
"""
from __future__ import annotations

import json
from pathlib import Path

GALLERY = Path(__file__).resolve().parents[1] / "docs" / "gallery" / "gallery.json"


def gallery_markdown() -> str:
    from pyrod.experiments import EXPERIMENTS, get_experiment

    made = json.loads(GALLERY.read_text()) if GALLERY.exists() else {}
    out = []
    if "demo" in made:
        out.append("## demo\n\nThe built-in demo (`python -m pyrod demo`, `bash scripts/demo.sh`): GD on a digits MLP at "
                   "the edge of stability with its stable, rod and central flows.\n")
        out += [f"![demo](gallery/{fig})\n" for fig in made["demo"]["figures"]]
        out.append(f"Made with\n\n```bash\n{made['demo']['command']}\n```\n\n{made['demo']['note']}\n")
    for name in EXPERIMENTS:
        mod = get_experiment(name)
        entry = made.get(name)
        out.append(f"## {name}\n\n{mod.TITLE}.\n\nReproduces: {mod.PAPER}. Small scale: {mod.RUNTIME}.\n")
        if not entry:
            out.append(f"No figure committed yet; make one with\n\n```bash\npython -m pyrod experiments run {name} "
                       f"--scale tiny\n```\n")
            continue
        for fig in entry["figures"]:
            out.append(f"![{name}: {Path(fig).stem}](gallery/{fig})\n")
        out.append(f"Made with\n\n```bash\n{entry['command']}\n```\n\n{entry['note']}\n")
    return "\n".join(out)


def papers_markdown() -> str:
    from pyrod.papers import PAPERS

    lines = []
    for key, p in PAPERS.items():
        where = f"[arXiv {p.arxiv}](https://arxiv.org/abs/{p.arxiv})" if p.arxiv else str(p.year)
        who = f"{p.authors}, " if p.authors else ""
        lines.append(f"* **{p.title}** — {who}{where} (`{key}`)")
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "gallery.md":
        return markdown.replace("<!-- gallery -->", gallery_markdown())
    if page.file.src_uri == "papers.md":
        return markdown.replace("<!-- papers -->", papers_markdown())
    return markdown
