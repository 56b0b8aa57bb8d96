"""Stain normalisation with the red cells as the colour ruler.

Why: white balance (``pipeline.cellcrop``) removes the lamp's and camera's
colour, but not the stain's: a laboratory with a stronger, weaker or more
yellow eosin stains every cell differently, and a classifier trained on two
laboratories reads that as a class cue (warm neutrophils called eosinophils).
Red cells are in nearly every smear image and take the same stain in every
laboratory, so, like their diameter is the scale ruler, their colour is the
stain ruler.

The method (a per-channel version of Reinhard's colour transfer, done in
optical density so that bare glass stays glass): on a white-balanced crop,
the optical density of channel c is ``OD_c = -ln(I_c / glass)``. The median
OD of the red-cell pixels (stained matter outside the nucleus and away from
the centred white cell) is mapped onto a fixed target by scaling each
channel's OD: ``OD'_c = OD_c * target_c / median_c``, i.e. the lookup
``I' = glass * (I / glass) ** k_c``. Pixels brighter than the glass are left
as they are. With too few red-cell pixels (tight crops) the crop is returned
unchanged. The cost is one small analysis of the 160 px crop and one lookup.

The target is the mean of the two training laboratories' median red-cell OD
(``python -m training.stain_target`` measures it on training images; the
figures are frozen here because models are trained on them).
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.cellcrop import BACKGROUND_LEVEL, stain_maps
from pipeline.orderstats import channel_histograms, median_of_histograms

#: median red-cell optical density per channel (R, G, B) that every crop is mapped onto
#: (``python -m training.stain_target --config training/configs/mnv2_cc_160_habits.json --per-lab 600``:
#: Kaggle 0.133, 0.253, 0.173; PBC 0.209, 0.315, 0.188; their mean)
TARGET_OD_RGB = np.array([0.171, 0.284, 0.181], np.float32)
#: red-cell pixels needed to trust the measurement, as a fraction of the crop
MIN_RBC_FRACTION = 0.03
#: the centred white cell is excluded within this radius, as a fraction of the crop side
#: (the stained object's box is about 1.75 / 4 of the side, see ``cellcrop.CELL_BOX_RBC``)
CELL_RADIUS = 0.25
#: the red cells are measured on a copy of the crop this many pixels wide (a quarter of the work of 160 px)
WORK_SIDE = 80
#: bounds of the per-channel OD scaling (a stain at most twice as strong or as weak as the target)
MIN_GAIN, MAX_GAIN = 0.5, 2.0

_GLASS = float(BACKGROUND_LEVEL)


def _ring_mask(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    return ((xx - c) ** 2 + (yy - c) ** 2 > (CELL_RADIUS * size) ** 2).astype(np.uint8)


_RINGS: dict[int, np.ndarray] = {}
_SQUARE3 = np.ones((3, 3), np.uint8)


def red_cell_od(rgb: np.ndarray) -> np.ndarray | None:
    """Median optical density (R, G, B) of the red-cell pixels of a white-balanced square RGB crop, or None."""
    if rgb.ndim != 3 or rgb.shape[0] != rgb.shape[1] or rgb.dtype != np.uint8:
        raise ValueError(f"red_cell_od needs a square uint8 RGB crop, not {rgb.dtype} {rgb.shape}")
    small = cv2.resize(rgb, (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_AREA) if rgb.shape[0] > WORK_SIDE else rgb
    size = small.shape[0]
    ring = _RINGS.get(size)
    if ring is None:
        ring = _RINGS[size] = _ring_mask(size)
    nucleus, matter = stain_maps(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    near_nucleus = cv2.dilate(nucleus, _SQUARE3)
    red = matter & (1 - near_nucleus) & ring  # 0/1
    n = cv2.countNonZero(red)
    if n < MIN_RBC_FRACTION * size * size:
        return None
    # the median from histograms of the masked pixels (no gathered copy of them)
    values = median_of_histograms(channel_histograms(small, red), n)
    return -np.log(np.clip(values + 1.0, 1.0, _GLASS + 1.0) / (_GLASS + 1.0)).astype(np.float32)


def od_gains(od: np.ndarray) -> np.ndarray:
    """Per-channel OD scaling that maps the measured red-cell OD onto the target, bounded."""
    return np.clip(TARGET_OD_RGB / np.maximum(od, 1e-3), MIN_GAIN, MAX_GAIN).astype(np.float32)


def od_lut(gains: np.ndarray) -> np.ndarray:
    """(256, 1, 3) lookup ``I' = glass * (I / glass) ** k`` per RGB channel; pixels brighter than glass unchanged."""
    levels = np.arange(256, dtype=np.float32)[:, None]
    ratio = (levels + 1.0) / (_GLASS + 1.0)
    mapped = (_GLASS + 1.0) * ratio ** gains[None, :] - 1.0
    out = np.where(levels >= _GLASS, levels, mapped)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(256, 1, 3)


def normalise_stain(rgb: np.ndarray) -> np.ndarray:
    """The crop with its red cells' stain mapped onto the training laboratories' (unchanged without red cells)."""
    od = red_cell_od(rgb)
    if od is None:
        return rgb
    return cv2.LUT(rgb, od_lut(od_gains(od)))
