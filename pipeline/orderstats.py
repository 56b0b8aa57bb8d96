"""Exact, cheaper stand-ins for NumPy's order statistics, used by the cell-centred crop (``pipeline.cellcrop``).

Why a module of their own: each returns NumPy's own value bit for bit (``np.median`` over uint8
channels, ``np.percentile`` and ``np.median`` over float32) at a fraction of its cost, and the crop's
outputs are frozen (``tests/fixtures/cellcrop_frozen.json``), so these are numerical tools with their
own identity tests (``tests/unit/test_cellcrop_identities.py``), apart from the crop's logic.
"""

from __future__ import annotations

import cv2
import numpy as np


def channel_histograms(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(3, 256) pixel counts per channel of a 3-channel uint8 image, of the pixels where ``mask`` is non-zero.

    ``cv2.calcHist`` counts exactly (float32 holds every count below 2**24) at a fifth of the cost of
    ``np.bincount`` over a strided column, and takes a mask instead of a gathered copy of the pixels;
    on split planes it costs half as much as picking a channel of the 3-channel image.
    """
    return np.stack([cv2.calcHist([plane], [0], mask, [256], [0, 256]).reshape(256)
                     for plane in cv2.split(image)]).astype(np.int64)


def median_of_histograms(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-channel ``np.median`` (float32) of ``n`` uint8 values given as (3, 256) histograms."""
    cumulative = counts.cumsum(axis=1)
    lower = (cumulative <= (n - 1) // 2).sum(axis=1)  # the k-th smallest is the first value whose count passes k
    upper = (cumulative <= n // 2).sum(axis=1)
    return ((lower + upper) / 2.0).astype(np.float32)


def percentile_float32(values: np.ndarray, q: int) -> np.float32:
    """``np.percentile(values, q)`` (default 'linear' method, whole-number ``q``) of a 1-D float32 array, exactly.

    Why: ``np.percentile`` copies the array and partitions it around four positions (both ends, for
    its NaN check, and the two neighbours of the percentile); one partition around the lower
    neighbour and a minimum over what lies above it find the same two values at half the cost and
    without the call's overhead. They are then interpolated with NumPy's own arithmetic (the index
    ``(n - 1) * q / 100`` in float64, its fraction as a weak float, so float32 steps, and from the
    upper value down where the fraction is at least 0.5); ``test_cellcrop_identities`` compares the
    two on thousands of arrays. The values must not contain NaN (luminance and distances never do).
    """
    n = len(values)
    position = (n - 1) * (q / 100)
    lower = int(np.floor(position))
    if lower >= n - 1:  # the largest value (NumPy's "above bounds" case)
        return values.max()
    part = np.partition(values, lower)
    a, b = part[lower], part[lower + 1 :].min()
    t = float(position - lower)
    diff = b - a
    return b - diff * np.float32(1 - t) if t >= 0.5 else a + diff * np.float32(t)


def median_float32(values: np.ndarray) -> np.float32:
    """``np.median`` of a non-empty 1-D float32 array, exactly: the middle value, or the float32 mean
    of the two middle ones (their float32 sum halved), without ``np.median``'s overhead."""
    n = len(values)
    half = n // 2
    part = np.partition(values, half)
    if n % 2:
        return part[half]
    return (part[:half].max() + part[half]) / np.float32(2)
