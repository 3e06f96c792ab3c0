"""The papers pyrod's experiments reproduce, cited by title and arXiv number wherever pyrod shows them.

``cite("muon-curvature", "Figs. 1, 2")`` -> ``'"Why Muon Outperforms Adam: A Curvature Perspective" (arXiv
2606.04662), Figs. 1, 2'``. The docs' reference page (docs/papers.md) lists the same.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Paper", "PAPERS", "cite"]


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    arxiv: str | None = None

    def __str__(self) -> str:
        where = f"arXiv {self.arxiv}" if self.arxiv else str(self.year)
        return f"{self.authors}, \"{self.title}\" ({where})" if self.authors else f"\"{self.title}\" ({where})"


PAPERS = {
    "aeos": Paper("Adaptive Gradient Methods at the Edge of Stability", "Cohen et al.", 2022, "2207.14484"),
    "rod-flow-adam": Paper("A Rod Flow Model for Adam at the Edge of Stability", "Regis & Chewi", 2026, "2605.06821"),
    "central-flows": Paper("Understanding Optimization in Deep Learning with Central Flows", "Cohen, Damian et al.",
                           2025, "2410.24206"),
    "central-flows-adaptive": Paper("Understanding Adaptive Optimizers with Central Flows (talk)", "Damian", 2026),
    "muon-curvature": Paper("Why Muon Outperforms Adam: A Curvature Perspective", "", 2026, "2606.04662"),
}


def cite(key: str, where: str = "") -> str:
    """The citation of paper ``key`` (title, authors, arXiv number), followed by ``where`` (figures, sections)."""
    return f"{PAPERS[key]}, {where}" if where else str(PAPERS[key])
