"""Choosing and ordering the cells a gallery or review page shows (no Flask, no SQL)."""

from __future__ import annotations

from dataclasses import dataclass

from db.reviews import CellItem
from pipeline.slides import slide_of


@dataclass(frozen=True)
class CellFilter:
    label: str = ""  # current (reviewed) label; "" = all
    slide: str = ""
    max_confidence: float = 1.0
    min_confidence: float = 0.0
    review_order: bool = False  # lowest confidence first, across classes

    def keep(self, cell: CellItem) -> bool:
        return ((not self.label or cell.label == self.label) and (not self.slide or slide_of(cell.path) == self.slide)
                and self.min_confidence <= cell.confidence <= self.max_confidence)


def select_cells(cells: list[CellItem], flt: CellFilter, classes: tuple[str, ...]) -> list[CellItem]:
    """Filter, then order: by class (in the model's order), least confident first within a class; or least confident first overall."""
    kept = [c for c in cells if flt.keep(c)]
    if flt.review_order:
        return sorted(kept, key=lambda c: (c.confidence, c.seq, c.idx or 0))
    rank = {name: i for i, name in enumerate(classes)}
    return sorted(kept, key=lambda c: (rank.get(c.label, len(rank)), c.confidence, c.seq, c.idx or 0))


def top_classes(cell: CellItem, k: int = 3) -> list[tuple[str, float]]:
    return sorted(cell.probabilities.items(), key=lambda kv: -kv[1])[:k]


def slides_of(cells: list[CellItem]) -> list[str]:
    return sorted({slide_of(c.path) for c in cells})
