"""Find white blood cells in a stained smear field with classical OpenCV.

Why this works: in Romanowsky-type stains the WBC nucleus is the only large
dark violet object. Red cells are pink (red > blue), background is pale, and
platelets are violet but small. So a "violet-ness" map (blue minus green,
darkness-weighted) thresholded per field, closed to merge the lobes of one
nucleus, and filtered by area separates nuclei; a distance-transform
watershed splits touching nuclei. A box around the nucleus, grown by the
typical cytoplasm margin, is returned for each cell.

Sizes are expressed relative to ``cell_diameter_px`` (the expected WBC
diameter at the image's magnification), so the same code works at another
scale by changing one number.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LocaliserConfig:
    """Tunables of the localiser; defaults fit 640x480 BCCD-like fields (100x objective)."""

    cell_diameter_px: float = 190.0
    #: violet-ness threshold floor (0-255 scale); Otsu is used when it is higher
    min_violet: float = 40.0
    #: smallest nucleus area kept, as a fraction of the expected cell area
    min_area_fraction: float = 0.08
    #: nucleus box grown on every side by this fraction of its own size (cytoplasm rim)...
    margin_fraction: float = 0.16
    #: ...but by at least this fraction of the expected cell diameter
    min_margin_fraction: float = 0.04
    #: a nucleus touching the image border smaller than this fraction of the expected
    #: cell area is a cell cut by the field edge: not counted, as analysers do
    border_area_fraction: float = 0.2
    #: nuclei closer than this fraction of the diameter are lobes of one cell
    merge_fraction: float = 0.12


@dataclass(frozen=True)
class Detection:
    """One white cell: box (x0, y0, x1, y1) in image pixels, centre and a score in [0, 1]."""

    x0: int
    y0: int
    x1: int
    y1: int
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def shifted(self, dx: int, dy: int) -> Detection:
        return Detection(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy, self.score)


def violet_map(bgr: np.ndarray) -> np.ndarray:
    """Per-pixel violet-ness: blue above green, and darker counts more (uint8)."""
    b, g, r = (bgr[..., i].astype(np.int16) for i in range(3))
    violet = (b - g) + (b - r) // 2 + (255 - g) // 4 - 40
    return np.clip(violet, 0, 255).astype(np.uint8)


def nucleus_mask(bgr: np.ndarray, config: LocaliserConfig) -> np.ndarray:
    v = cv2.GaussianBlur(violet_map(bgr), (5, 5), 0)
    otsu, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    _, mask = cv2.threshold(v, max(float(otsu), config.min_violet), 255, cv2.THRESH_BINARY)
    k = max(3, int(config.cell_diameter_px * config.merge_fraction) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)


def _split_touching(component: np.ndarray, config: LocaliserConfig) -> list[np.ndarray]:
    """Watershed on the distance transform when one blob holds several nuclei."""
    dist = cv2.distanceTransform(component, cv2.DIST_L2, 5)
    peak_min = 0.22 * config.cell_diameter_px
    _, peaks = cv2.threshold(dist, peak_min, 255, cv2.THRESH_BINARY)
    peaks = peaks.astype(np.uint8)
    n, markers = cv2.connectedComponents(peaks)
    if n <= 2:
        return [component]
    markers = markers + 1
    markers[(component > 0) & (peaks == 0)] = 0
    color = cv2.cvtColor(component, cv2.COLOR_GRAY2BGR)
    markers = cv2.watershed(color, markers.astype(np.int32))
    return [((markers == label) & (component > 0)).astype(np.uint8) * 255 for label in range(2, n + 1)]


def localise(bgr: np.ndarray, config: LocaliserConfig | None = None) -> list[Detection]:
    """Boxes of the white cells in one field image (BGR uint8)."""
    config = config or LocaliserConfig()
    h, w = bgr.shape[:2]
    mask = nucleus_mask(bgr, config)
    expected = np.pi * (config.cell_diameter_px / 2) ** 2
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    detections = []
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA]
        if area < config.min_area_fraction * expected:
            continue
        parts = [labels == i]
        if area > 0.9 * expected:  # bigger than one nucleus can be: try to split
            parts = [p > 0 for p in _split_touching((labels == i).astype(np.uint8) * 255, config)]
        for part in parts:
            ys, xs = np.nonzero(part)
            if len(xs) < config.min_area_fraction * expected:
                continue
            touches = xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1
            if touches and len(xs) < config.border_area_fraction * expected:
                continue
            side = max(xs.max() - xs.min(), ys.max() - ys.min())
            margin = max(config.margin_fraction * side, config.min_margin_fraction * config.cell_diameter_px)
            x0, x1 = max(0, int(xs.min() - margin)), min(w, int(xs.max() + margin))
            y0, y1 = max(0, int(ys.min() - margin)), min(h, int(ys.max() + margin))
            score = float(min(1.0, len(xs) / (0.3 * expected)))
            detections.append(Detection(x0, y0, x1, y1, score))
    return detections
