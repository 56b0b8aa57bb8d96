"""Cell-centred, scale-normalised, white-balanced crops of single-cell images.

Why: a classifier trained on two laboratories learns their shortcuts: the
colour of the background and stain, how large a cell is in pixels, and that
the cell sits in the middle. Other laboratories break all three. This module
removes them before the network sees the image:

1. White balance on the background. The brightest non-black pixels of a smear
   image are bare glass; scaling each channel so they become neutral grey
   cancels the camera's white balance and the lamp's colour (a yellow or blue
   cast) without touching the stain contrast.
2. Find the cell: the most prominent violet (nucleus-stained) object, bigger
   objects and objects near the centre preferred. An image with no such
   object is reported as "no white cell found" instead of being classified.
3. Measure the scale: red cells are about 7.5 um across in every smear, so
   their diameter in pixels is a ruler. Red cells are the non-violet,
   non-background blobs; the peaks of their distance transform are their
   radii. Where too few are visible, or the "red cells" are much smaller
   than the white cell (fragments at the edge of a tight crop), the stained
   object's own size stands in.
4. Crop a square of ``CROP_RBC_DIAMETERS`` red-cell diameters (about 30 um)
   centred on the cell, padding with background colour where the square
   leaves the image, and resize it to the model's input.

Everything is computed on a copy shrunk to ``WORK_SIDE`` pixels, so the cost
is the same for a 120 px crop and a 4000 px field tile.

Models are trained on exactly these crops, so the outputs are frozen
(``tests/fixtures/cellcrop_frozen.json``, checked by ``test_cellcrop_frozen``):
the code is tuned for speed (uint8 histograms instead of float sorts, OpenCV
planes instead of NumPy reductions over the channel axis, one 3-channel lookup
for the gains, NumPy's percentile and median from one partition, HSV saturation
as a lookup of the brightest channel) only where it gives bit-identical pixels
and equal floats (``pipeline.orderstats``; ``test_cellcrop_identities`` checks the replaced steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.orderstats import channel_histograms, median_float32, median_of_histograms, percentile_float32

#: side of the square crop, in red-cell diameters (7.5 um each: about 30 um)
CROP_RBC_DIAMETERS = 4.0
#: median ratio of the stained object's bounding box to the red-cell diameter, in both
#: training laboratories (1.71 PBC, 1.78 Kaggle); it converts the cell's own size into a ruler
CELL_BOX_RBC = 1.75
#: without red cells: crop side as a multiple of the stained object's bounding box
CROP_NUCLEUS_SIDES = CROP_RBC_DIAMETERS / CELL_BOX_RBC
#: a "red cell" smaller than 1/3 of the stained object is a fragment of a cell cut by a tight
#: crop (2-4 % of normal images exceed this ratio, 46 % of PBC images cropped to half)
MAX_CELL_BOX_RBC = 3.0
#: analysis happens on a copy whose long side is this many pixels
WORK_SIDE = 160
#: background grey that white balance maps the glass to
BACKGROUND_LEVEL = 232.0
#: fewest red-cell radius peaks that make a trusted scale measurement
MIN_RBC_PEAKS = 3
#: smallest stained object that counts as a cell, as a fraction of the work image area
MIN_OBJECT_FRACTION = 0.0015


@dataclass(frozen=True)
class CellCrop:
    """A model-ready crop and what was found on the way (for reports and tests)."""

    pixels: np.ndarray  # (size, size, 3) RGB uint8
    found: bool  # a stained object (white cell, erythroblast or platelet) was found
    center: tuple[float, float]  # cell centre in the input image's pixels (x, y)
    rbc_diameter_px: float | None  # measured red-cell diameter in input pixels, None if not measured
    side_px: float  # side of the square crop in input pixels
    gains: tuple[float, float, float]  # white-balance gains applied to B, G, R
    cell_box_px: float | None = None  # side of the stained object's bounding box in input pixels, None if none found
    ruler_px: float | None = None  # red-cell diameter as measured, before the fragment guard (``MAX_CELL_BOX_RBC``)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Three-channel BGR from a decoded grey, BGR or BGRA image."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


#: BT.601 luminance weights in BGR order (float32, as the background selection has always used)
_LUMINANCE_BGR = np.array([0.114, 0.587, 0.299], np.float32)


def _lowest_channel(bgr: np.ndarray) -> np.ndarray:
    """Per-pixel minimum of B, G and R (uint8), on contiguous planes: a NumPy reduce over an
    axis of length 3 costs ten times as much."""
    b, g, r = cv2.split(bgr)
    return cv2.min(cv2.min(b, g), r)


def _median_uint8(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=0)`` of an (n, 3) uint8 array, as float32, from per-channel histograms.

    Exactly np.median's result: the middle order statistic, or the mean of the two middle
    ones (a half-integer, exact in float32), without sorting n floats per channel.
    """
    return median_of_histograms(channel_histograms(np.ascontiguousarray(values).reshape(-1, 1, 3)), len(values))


def background_color(bgr: np.ndarray) -> np.ndarray:
    """Median BGR colour (float32) of the brightest non-black pixels (bare glass) of a uint8 BGR image.

    The brightest are the top 15 % by luminance (float32, ``np.percentile``, ``percentile_float32``). Pixels
    are selected as packed 4-byte words (one gather instead of a copy per 3-byte
    row) and the median comes from histograms (``_median_uint8``).
    """
    if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"background_color needs a uint8 BGR image, not {bgr.dtype} {bgr.shape}")
    packed = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA).reshape(-1).view(np.uint32)
    not_black = packed[_lowest_channel(bgr).ravel() > 24]
    if len(not_black) < 16:
        return np.array([BACKGROUND_LEVEL] * 3, np.float32)
    luminance = _unpacked(not_black).astype(np.float32) @ _LUMINANCE_BGR
    return _median_uint8(_unpacked(not_black[luminance >= percentile_float32(luminance, 85)]))


def _unpacked(packed: np.ndarray) -> np.ndarray:
    """(n, 3) contiguous uint8 BGR rows of n packed BGRA words (OpenCV drops the fourth byte
    far faster than NumPy copies a 3-of-4-byte view)."""
    return cv2.cvtColor(packed.view(np.uint8).reshape(-1, 1, 4), cv2.COLOR_BGRA2BGR).reshape(-1, 3)


def white_balance_gains(bgr: np.ndarray) -> np.ndarray:
    """Per-channel gains that make the background neutral grey, bounded to plausible casts."""
    return np.clip(BACKGROUND_LEVEL / np.maximum(background_color(bgr), 1.0), 0.6, 2.5).astype(np.float32)


def gain_lut(gains: np.ndarray) -> np.ndarray:
    """The (256, 1, 3) lookup table of ``gains`` that ``cv2.LUT`` applies to all three channels at once."""
    lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gains[None, :], 0, 255).astype(np.uint8)
    return lut.reshape(256, 1, 3)


def apply_gains(bgr: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return cv2.LUT(bgr, gain_lut(gains))


#: square and elliptic structuring elements, made once
_SQUARE3, _SQUARE5 = np.ones((3, 3), np.uint8), np.ones((5, 5), np.uint8)
_ELLIPSE7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_ELLIPSE9 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
#: stained matter is more saturated than the glass: HSV saturation above this
MATTER_SATURATION = 40


def _saturation_limits(above: int = MATTER_SATURATION) -> np.ndarray:
    """Per brightest channel v: the largest spread v - min(B, G, R) whose OpenCV HSV saturation is at most ``above``.

    OpenCV's 8-bit saturation is a function of the brightest and the darkest channel only, rising
    with their difference, so ``saturation > above`` is ``spread > limit[v]``: a lookup and a
    comparison instead of a full HSV conversion (hue included), which was 40 % of the matter mask's
    cost. Measured from ``cv2.cvtColor`` itself on every (v, spread) pair; ``test_cellcrop_identities``
    checks the rule on all 2**24 colours.
    """
    v, spread = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    low = np.maximum(v - spread, 0).astype(np.uint8)
    pixels = np.stack([v.astype(np.uint8), low, low], axis=-1)
    saturation = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[..., 1]
    return (((saturation <= above) & (spread <= v)).sum(axis=1) - 1).astype(np.uint8)


_SATURATION_LIMIT = _saturation_limits()


def _violet_score(b: np.ndarray, g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-pixel violet (nucleus stain) score, uint8, of the B, G and R planes, before blurring."""
    b, g, r = b.astype(np.int16), g.astype(np.int16), r.astype(np.int16)
    # floor divisions as shifts (the same for negative numbers)
    violet = (b - g) + ((b - r) >> 1) + ((255 - g) >> 2) - 40
    return np.clip(violet, 0, 255).astype(np.uint8)


def _matter_mask(bgr: np.ndarray, b: np.ndarray, g: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Non-background matter (uint8 0/1) of a white-balanced uint8 BGR image and its planes: visibly darker
    (``BACKGROUND_LEVEL`` - grey > 22) or more saturated than the glass, and not black."""
    high, low = np.maximum(np.maximum(b, g), r), np.minimum(np.minimum(b, g), r)
    saturated = (high - low) > cv2.LUT(high, _SATURATION_LIMIT)  # HSV saturation > MATTER_SATURATION
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return (((gray < int(BACKGROUND_LEVEL) - 22) | saturated) & (low > 12)).view(np.uint8)


def matter_mask(bgr: np.ndarray) -> np.ndarray:
    """Non-background matter (uint8 0/1) of a white-balanced uint8 BGR image (see ``stain_maps``)."""
    return _matter_mask(bgr, *cv2.split(bgr))


def stain_maps(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of nucleus-stained (violet/dark blue) pixels and of any non-background matter."""
    b, g, r = cv2.split(bgr)  # once for both maps
    violet = cv2.GaussianBlur(_violet_score(b, g, r), (5, 5), 0)
    otsu, _ = cv2.threshold(violet, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    nucleus = (violet > max(float(otsu), 45.0)).astype(np.uint8)
    nucleus = cv2.morphologyEx(nucleus, cv2.MORPH_OPEN, _SQUARE3)
    # matter: visibly darker (BACKGROUND_LEVEL - grey > 22) or more saturated than the (white-balanced) glass
    return nucleus, _matter_mask(bgr, b, g, r)


def _most_prominent(n: int, stats: np.ndarray, centroids: np.ndarray, h: int, w: int) -> tuple[int | None, bool]:
    """Label of the highest-scoring object (the first such in label order) and whether another scores the same."""
    best, best_score, tied = None, 0.0, False
    for i in range(1, n):
        area = float(stats[i, cv2.CC_STAT_AREA])
        if area < MIN_OBJECT_FRACTION * h * w:
            continue
        cx, cy = centroids[i]
        d = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
        score = area * float(np.exp(-((d / 0.45) ** 2)))
        if score > best_score:
            best, best_score, tied = i, score, False
        elif score == best_score and best is not None:
            tied = True
    return best, tied


def find_cell(nucleus: np.ndarray) -> tuple[tuple[float, float], float] | None:
    """Centre (x, y) and bounding-box side of the most prominent stained object, or None.

    Prominence is area times a mild preference for the centre, so a cell
    shifted to the edge is still found while a big cell beats a platelet.
    The objects are labelled with 16-bit labels (a third of the cost; the work
    image has fewer than 65,536 pixels); their statistics do not depend on the
    labelling, only the order does, which matters only to break an exact tie,
    and then OpenCV's default labelling decides, as it always has.
    """
    h, w = nucleus.shape
    closed = cv2.morphologyEx(nucleus, cv2.MORPH_CLOSE, _ELLIPSE9)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(closed, connectivity=8, ltype=cv2.CV_16U)
    best, tied = _most_prominent(n, stats, centroids, h, w)
    if tied:
        n, _, stats, centroids = cv2.connectedComponentsWithStats(closed)
        best, _ = _most_prominent(n, stats, centroids, h, w)
    if best is None:
        return None
    side = float(max(stats[best, cv2.CC_STAT_WIDTH], stats[best, cv2.CC_STAT_HEIGHT]))
    x0, y0 = stats[best, cv2.CC_STAT_LEFT], stats[best, cv2.CC_STAT_TOP]
    return (x0 + stats[best, cv2.CC_STAT_WIDTH] / 2, y0 + stats[best, cv2.CC_STAT_HEIGHT] / 2), side


def fill_small_holes(mask: np.ndarray, max_fraction: float = 0.04) -> np.ndarray:
    """Fill holes smaller than ``max_fraction`` of the image: red cells' central pallor,
    not the glass enclosed by a ring of touching cells."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    out = mask.copy()
    limit = max_fraction * mask.shape[0] * mask.shape[1]
    # inner contours (with a parent) in their order, found with one comparison instead of a loop over the rows
    inner = np.flatnonzero(hierarchy[0][:, 3] >= 0).tolist()
    holes = [contours[i] for i in inner if cv2.contourArea(contours[i]) < limit]
    cv2.drawContours(out, holes, -1, 1, thickness=cv2.FILLED)
    return out


def red_cell_diameter(matter: np.ndarray, nucleus: np.ndarray) -> float | None:
    """Typical red-cell diameter (work pixels) from distance-transform peaks, or None if too few.

    Every red cell, alone or in a cluster of touching ones, is a local maximum
    of the distance to the glass equal to its radius. Small maxima come from
    debris and ragged edges, so only peaks above half the 90th percentile
    vote; the median of those is the radius.
    """
    mask = fill_small_holes(matter)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _SQUARE3)
    # keep away from stained objects: their blobs are not red cells
    grown = cv2.dilate(nucleus, _ELLIPSE7)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    peaks = (dist >= cv2.dilate(dist, _SQUARE5)) & (dist >= 2.0) & (grown == 0)
    radii = dist[peaks]
    if len(radii) < MIN_RBC_PEAKS:
        return None
    radii = radii[radii >= 0.5 * percentile_float32(radii, 90)]
    if len(radii) < MIN_RBC_PEAKS:
        return None
    h, w = mask.shape
    diameter = 2.0 * float(median_float32(radii)) + 1.0
    return diameter if 0.03 * min(h, w) <= diameter <= 0.6 * min(h, w) else None


@dataclass(frozen=True)
class Resampling:
    """How a recipe resamples: the analysis copy, the final crop, and where the white balance is applied.

    Why two: ``EXACT`` is what models up to 2.2 were trained on (area averaging everywhere, balance at
    full resolution). On a 360-px CellaVision image its three full-resolution passes (area-shrunk work
    copy, balanced square, area-shrunk crop) are more than half of the preparation time, which runs on
    the same cores as the network. ``FAST`` shrinks the work copy bilinearly (it only feeds thresholded
    masks), cuts and shrinks the square bilinearly first and balances the 160-px result: the same
    cell, a crop side within about 4 % and pixels about 3 levels apart, for 0.55 of the time on
    CellaVision images and 0.8 on Kaggle's (``python -m bench.recipes``). A model is trained on one
    of them (its recipe name says which; ``pipeline.preprocess``).
    """

    work_interpolation: int = cv2.INTER_AREA
    #: interpolation of the final crop when it shrinks (enlarging is always bilinear)
    shrink_interpolation: int = cv2.INTER_AREA
    #: apply the gains to the model-sized crop instead of the full-resolution square
    balance_after_resize: bool = False
    #: measure the glass colour on every n-th row and column of the work copy (a median of thousands
    #: of glass pixels does not need all of them)
    gain_stride: int = 1


EXACT = Resampling()
FAST = Resampling(work_interpolation=cv2.INTER_LINEAR, shrink_interpolation=cv2.INTER_LINEAR, balance_after_resize=True,
                  gain_stride=2)


def padded_square(bgr: np.ndarray, center: tuple[float, float], side: float, fill: tuple[float, float, float]) -> np.ndarray:
    """The ``side``-pixel square centred on ``center`` (a view when it lies inside the image), padded with ``fill``
    (``cv2.copyMakeBorder``: a NumPy fill of 3-byte pixels costs several times as much)."""
    x0, y0, s = _square_at(center, side)
    h, w = bgr.shape[:2]
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + s), min(h, y0 + s)
    colour = [int(v) for v in np.clip(np.array(fill), 0, 255).astype(np.uint8)]
    if sx1 <= sx0 or sy1 <= sy0:
        return np.full((s, s, 3), colour, np.uint8)
    if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + s, y0 + s):
        return bgr[y0 : y0 + s, x0 : x0 + s]
    return cv2.copyMakeBorder(bgr[sy0:sy1, sx0:sx1], sy0 - y0, y0 + s - sy1, sx0 - x0, x0 + s - sx1,
                              cv2.BORDER_CONSTANT, value=colour)


def _square_at(center: tuple[float, float], side: float) -> tuple[int, int, int]:
    """Top-left corner and side, in whole pixels, of the square of ``side`` centred on ``center``."""
    half = side / 2.0
    return int(round(center[0] - half)), int(round(center[1] - half)), max(1, int(round(side)))


def _analysed(image: np.ndarray, resampling: Resampling = EXACT) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
    """The BGR image, the work copy's scale, white-balance gains and the work copy's nucleus and matter masks."""
    bgr = as_bgr(image)
    h, w = bgr.shape[:2]
    scale = WORK_SIDE / max(h, w)
    small = (cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=resampling.work_interpolation)
             if scale < 1 else bgr)
    k = resampling.gain_stride
    gains = white_balance_gains(np.ascontiguousarray(small[::k, ::k]) if k > 1 else small)
    nucleus, matter = stain_maps(apply_gains(small, gains))
    return bgr, min(scale, 1.0), gains, nucleus, matter


def red_cell_ruler(image: np.ndarray) -> float | None:
    """The typical red-cell diameter of an image (a field, say) in its own pixels, or None where too few are seen.

    Why for fields: the localiser and the crop window assume a configured magnification
    (``HEMATOVISION_CELL_DIAMETER_PX``); red cells, about 7.5 um in every smear, tell
    whether the job's images were taken at it (``pipeline.fields.magnification_reason``).
    """
    _, scale, _, nucleus, matter = _analysed(image)
    ruler = red_cell_diameter(matter, nucleus)
    return ruler / scale if ruler else None


def cell_crop(image: np.ndarray, size: int, resampling: Resampling = EXACT) -> CellCrop:
    """Locate, scale-normalise and white-balance one single-cell image (BGR) into an RGB ``size`` crop."""
    bgr, scale, gains, nucleus, matter = _analysed(image, resampling)
    h, w = bgr.shape[:2]
    cell = find_cell(nucleus)
    ruler = red_cell_diameter(matter, nucleus)
    rbc = ruler
    if rbc and cell is not None and cell[1] > MAX_CELL_BOX_RBC * rbc:
        rbc = None  # fragments at the edge of a tight crop, not whole red cells
    rbc_px = rbc / scale if rbc else None
    if cell is None:
        center, side = (w / 2.0, h / 2.0), float(min(h, w))
    else:
        center = (cell[0][0] / scale, cell[0][1] / scale)
        fallback = float(np.clip(CROP_NUCLEUS_SIDES * cell[1] / scale, min(h, w), 3.0 * min(h, w)))
        side = CROP_RBC_DIAMETERS * rbc_px if rbc_px else fallback
    fill = tuple(float(v) for v in BACKGROUND_LEVEL / gains)  # glass colour before balance
    # the gains are a per-channel lookup: the same pixels whether the fill is balanced before or after padding
    square = padded_square(bgr, center, side, fill)
    if not resampling.balance_after_resize:
        square = apply_gains(square, gains)
    shrink = resampling.shrink_interpolation if square.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(square, (size, size), interpolation=shrink)
    if resampling.balance_after_resize:
        resized = apply_gains(resized, gains)
    rgb = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    return CellCrop(rgb, cell is not None, center, rbc_px, side, (float(gains[0]), float(gains[1]), float(gains[2])),
                    cell[1] / scale if cell is not None else None, ruler / scale if ruler else None)
