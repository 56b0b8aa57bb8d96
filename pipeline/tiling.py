"""Large smear images: localise in overlapping tiles, merge duplicates in slide coordinates.

Working memory per step is bounded by the tile size (the localiser's masks and
distance maps are built per tile). The overlap is at least one cell diameter,
so every cell lies whole inside some tile; the copies found in neighbouring
tiles are merged by non-maximum suppression in slide coordinates.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.localize import Detection, LocaliserConfig, localise


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of ``tile`` overlapping by ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError("tile size must be larger than the overlap")
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of each tile."""
    for y in tile_origins(height, tile, overlap):
        for x in tile_origins(width, tile, overlap):
            yield x, y, min(width, x + tile), min(height, y + tile)


def _intersection(a: Detection, b: Detection) -> int:
    return max(0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0, min(a.y1, b.y1) - max(a.y0, b.y0))


def iou(a: Detection, b: Detection) -> float:
    inter = _intersection(a, b)
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def _contains_most_of(a: Detection, b: Detection) -> bool:
    """True when ``a`` covers at least 70 % of ``b`` (a cell cut by a tile edge inside a whole one)."""
    return _intersection(a, b) >= 0.7 * (b.x1 - b.x0) * (b.y1 - b.y0)


def non_max_suppression(detections: list[Detection], threshold: float = 0.3) -> list[Detection]:
    """Keep one box per group of overlapping boxes: the largest (a whole cell beats a fragment), then the best scored."""
    order = sorted(detections, key=lambda d: ((d.x1 - d.x0) * (d.y1 - d.y0), d.score), reverse=True)
    kept: list[Detection] = []
    for det in order:
        if all(iou(det, k) < threshold and not _contains_most_of(k, det) for k in kept):
            kept.append(det)
    return sorted(kept, key=lambda d: (d.y0, d.x0))


def localise_large(bgr: np.ndarray, config: LocaliserConfig | None = None, tile: int = 1024) -> list[Detection]:
    """Localise white cells in an image of any size, tile by tile."""
    config = config or LocaliserConfig()
    h, w = bgr.shape[:2]
    overlap = int(1.5 * config.cell_diameter_px)
    tile = max(tile, 2 * overlap)
    if h <= tile and w <= tile:
        return localise(bgr, config)
    found: list[Detection] = []
    for x0, y0, x1, y1 in tiles(h, w, tile, overlap):
        found.extend(d.shifted(x0, y0) for d in _interior(localise(bgr[y0:y1, x0:x1], config), x0, y0, x1, y1, w, h))
    return non_max_suppression(found)


def _interior(dets: list[Detection], x0: int, y0: int, x1: int, y1: int, w: int, h: int) -> list[Detection]:
    """Drop boxes touching a tile edge that is not an image edge: a neighbour tile sees that cell whole."""
    out = []
    for d in dets:
        cut = (d.x0 <= 0 < x0) or (d.y0 <= 0 < y0) or (d.x1 >= x1 - x0 and x1 < w) or (d.y1 >= y1 - y0 and y1 < h)
        if not cut:
            out.append(d)
    return out
