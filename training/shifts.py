"""Controlled domain shifts of cell images, one family at a time (NumPy/OpenCV only).

The robustness suite (``training.stress``) applies each shift to the decoded
BGR uint8 image *before* the serving path's own preprocessing, so a shift
stands in for another laboratory's stain, camera, magnification or cropping
habit, not for a change of our own recipe. Every function is deterministic:
the only randomness (the direction a cell is moved off-centre) comes from the
``numpy.random.Generator`` passed in, which the suite seeds per image.

``FAMILIES`` maps a family name to its ``(strength_name, shift)`` list, mildest
first; ``shift(bgr, rng) -> bgr``. Shifts may change the image size (tight
crop, wide context, black padding) as other laboratories' crops do.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import cv2
import numpy as np

from pipeline.cellcrop import background_color, cell_crop

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]

#: Ruifrok & Johnston (2001) haematoxylin, eosin, DAB optical-density vectors (RGB rows),
#: the matrix of skimage's ``rgb2hed``. Romanowsky stains are not H&E, but the violet /
#: pink split of this basis separates nucleus-like from cytoplasm-like stain well enough
#: to shift their balance.
_HED_FROM_RGB_OD = np.linalg.inv(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]))
_RGB_OD_FROM_HED = np.linalg.inv(_HED_FROM_RGB_OD)

#: Per-channel gains (B, G, R) at full strength. Yellow/brown: blue absorbed, a little
#: green (rapid stains, old slides, warm lamps). Blue/grey: red absorbed (cold LED light,
#: under-stained films), plus desaturation (``_GREY_AT_FULL``).
_YELLOW_GAINS = np.array([0.55, 0.88, 1.0])
_BLUE_GAINS = np.array([1.0, 0.92, 0.72])
_GREY_AT_FULL = 0.5


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def background_colour(bgr: np.ndarray) -> tuple[int, int, int]:
    """The smear's glass colour, by the serving recipe's own rule (``pipeline.cellcrop.background_color``).

    Padding with it (instead of black or white) keeps the padded area looking
    like empty smear under the same stain and lamp; one rule for the suite and
    the recipe means the suite's padding is exactly what the recipe calls glass.
    """
    return tuple(int(round(float(v))) for v in background_color(bgr))


def colour_cast(bgr: np.ndarray, rng: np.random.Generator, gains: np.ndarray, strength: float, grey: float = 0.0) -> np.ndarray:
    """Multiply channels towards ``gains`` (and mix towards grey) by ``strength`` in [0, 1]."""
    image = bgr.astype(np.float32)
    if grey:
        luminance = image.mean(axis=2, keepdims=True)
        image = image + strength * grey * (luminance - image)
    return _to_uint8(image * (1.0 + strength * (gains - 1.0)).astype(np.float32))


def optical_density(bgr: np.ndarray) -> np.ndarray:
    """Beer-Lambert optical density per channel (white glass = 0)."""
    return -np.log((bgr.astype(np.float64) + 1.0) / 256.0)


def from_optical_density(od: np.ndarray) -> np.ndarray:
    return _to_uint8(256.0 * np.exp(-od) - 1.0)


def stain_intensity(bgr: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Scale the amount of stain (optical density) by ``factor``: < 1 lighter, > 1 darker; glass stays white."""
    return from_optical_density(optical_density(bgr) * factor)


def to_hed(bgr: np.ndarray) -> np.ndarray:
    """Colour deconvolution: per-pixel haematoxylin, eosin, DAB concentrations (H, W, 3)."""
    od_rgb = optical_density(bgr)[..., ::-1]
    return od_rgb @ _HED_FROM_RGB_OD


def from_hed(hed: np.ndarray) -> np.ndarray:
    return from_optical_density((hed @ _RGB_OD_FROM_HED)[..., ::-1])


def stain_balance(bgr: np.ndarray, rng: np.random.Generator, h_factor: float, e_factor: float) -> np.ndarray:
    """Scale the haematoxylin-like (violet) and eosin-like (pink) stain separately."""
    hed = to_hed(bgr)
    hed[..., 0] *= h_factor
    hed[..., 1] *= e_factor
    return from_hed(hed)


def hue_rotation(bgr: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Rotate every pixel's hue by ``degrees`` (saturation and value unchanged)."""
    hsv = cv2.cvtColor(bgr.astype(np.float32) / 255.0, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + degrees, 360.0)
    return _to_uint8(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR) * 255.0)


def scale_content(bgr: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Magnify the content by ``factor`` keeping the image size.

    > 1: centre crop of 1/factor and enlarge (higher magnification). < 1: shrink and
    centre on the image's own background colour (lower magnification: cells look
    smaller, with more, empty, context around them).
    """
    h, w = bgr.shape[:2]
    if factor >= 1.0:
        ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return cv2.resize(bgr[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    small = cv2.resize(bgr, (sw, sh), interpolation=cv2.INTER_AREA)
    canvas = np.empty_like(bgr)
    canvas[:] = background_colour(bgr)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    canvas[y0 : y0 + sh, x0 : x0 + sw] = small
    return canvas


def tight_crop(bgr: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Central square of ``fraction`` of the short side at native resolution: the cell fills a small image."""
    h, w = bgr.shape[:2]
    side = max(8, round(min(h, w) * fraction))
    y0, x0 = (h - side) // 2, (w - side) // 2
    return bgr[y0 : y0 + side, x0 : x0 + side].copy()


def wide_context(bgr: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """Grow the field of view to ``factor`` times each side with reflected smear around the cell.

    Reflection is done in steps of at most a quarter of the current side, so the
    new context is mirrored from the outer band (red cells, glass) and never
    contains a mirrored copy of the centred white cell.
    """
    h, w = bgr.shape[:2]
    py, px = round(h * (factor - 1.0) / 2), round(w * (factor - 1.0) / 2)
    while py or px:
        sy, sx = min(py, h // 4), min(px, w // 4)
        bgr = cv2.copyMakeBorder(bgr, sy, sy, sx, sx, cv2.BORDER_REFLECT_101)
        py, px = py - sy, px - sx
        h, w = bgr.shape[:2]
    return bgr


def off_centre(bgr: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Move the content by ``fraction`` of the image extent, left, right, up or down (drawn from ``rng``).

    A horizontal move is ``fraction`` of the width, a vertical one of the height;
    the uncovered strip is filled with the background colour.
    """
    h, w = bgr.shape[:2]
    direction = int(rng.integers(4))
    dx = (round(fraction * w), -round(fraction * w), 0, 0)[direction]
    dy = (0, 0, round(fraction * h), -round(fraction * h))[direction]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(bgr, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=background_colour(bgr))


def black_padding(bgr: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Black borders of ``fraction`` of the height (top, bottom) and width (left, right) on each side."""
    h, w = bgr.shape[:2]
    py, px = round(fraction * h), round(fraction * w)
    return cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def gaussian_blur(bgr: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Defocus: Gaussian blur of ``sigma`` pixels at the image's own resolution."""
    return cv2.GaussianBlur(bgr, (0, 0), sigmaX=sigma, sigmaY=sigma)


def jpeg(bgr: np.ndarray, rng: np.random.Generator, quality: int) -> np.ndarray:
    """Re-encode as JPEG at ``quality`` (the camera or export setting of another lab)."""
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not JPEG-encode the image")
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)


def tight_yellow_small(bgr: np.ndarray, rng: np.random.Generator, fraction: float) -> np.ndarray:
    """Three habits at once, as a rapid-stain laboratory might crop: a central square of ``fraction``,
    a yellow cast of strength 0.75, and the result saved at 120x120 pixels."""
    image = colour_cast(tight_crop(bgr, rng, fraction), rng, _YELLOW_GAINS, 0.75)
    return cv2.resize(image, (120, 120), interpolation=cv2.INTER_AREA)


#: where the clean image has no stained object to centre on, a cell-filled crop takes the central square of this
#: fraction of the short side (``tight_crop``'s middle strength)
UNFOUND_CELL_FRACTION = 0.5


def _cell_centre_and_size(bgr: np.ndarray) -> tuple[tuple[float, float], float] | None:
    """Where the serving recipe finds the cell in a clean image, and its stained object's box side, or None."""
    found = cell_crop(bgr, 32)
    return (found.center, found.cell_box_px) if found.found and found.cell_box_px else None


def _window_at(centre: tuple[float, float], width: int, height: int, w: int, h: int) -> tuple[int, int]:
    """Top-left corner of a ``width`` x ``height`` window centred on ``centre``, moved inwards to stay in the image
    (a window no larger than the image: ``np.clip`` would return a negative corner for a larger one)."""
    if width > w or height > h:
        raise ValueError(f"a {width}x{height} window does not fit a {w}x{h} image")
    x0 = int(np.clip(round(centre[0] - width / 2), 0, w - width))
    y0 = int(np.clip(round(centre[1] - height / 2), 0, h - height))
    return x0, y0


def cell_magnified(bgr: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """``scale_content``'s magnification by ``factor`` (> 1), about the cell instead of the image centre.

    Why: a camera at higher magnification that centres its cells (a CellaVision, the fifth source of "Trustworthy
    differentials on other laboratories' slides") shows the cell larger with fewer red cells around it. About the
    image centre, Kaggle's off-centre cells are cut or pushed out, so ``scale``'s ×2 row measures that too. The
    cell is found as in ``cell_filled``; without one this is ``scale_content``'s magnification.
    """
    if factor <= 1.0:
        raise ValueError(f"cell_magnified magnifies: factor > 1, not {factor}")
    cell = _cell_centre_and_size(bgr)
    if cell is None:
        return scale_content(bgr, rng, factor)
    h, w = bgr.shape[:2]
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    x0, y0 = _window_at(cell[0], cw, ch, w, h)
    return cv2.resize(bgr[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def cell_filled(bgr: np.ndarray, rng: np.random.Generator, margin: float) -> np.ndarray:
    """A square of ``margin`` times the cell's own size, centred on the cell, at native resolution.

    Why beside ``tight_crop``: a laboratory whose software crops each cell tightly centres the crop on the
    cell. ``tight_crop``'s central square does not, and in the Kaggle images, whose cells were shifted when
    the copies were made, it often cuts into or misses the cell (Kaggle validation, central half: a cell found
    in 83.5 % of images, 73 % accurate; the same model on crops of 1.2 times the cell centred on it: 99.8 %
    and 95 %, model card, "Tight crops centred on the cell"). This family measures tightness alone.

    The cell is where the serving recipe finds it in the clean image (``pipeline.cellcrop.cell_crop``; the
    bounding box of its violet-stained object is the cell's size, so a neutrophil's or monocyte's pale cytoplasm
    may reach past a tight square); the square is moved inwards where it would leave the image and cut to the
    image's short side where it is larger. Without a stained object it falls back to the
    central square of ``UNFOUND_CELL_FRACTION``.
    """
    h, w = bgr.shape[:2]
    cell = _cell_centre_and_size(bgr)
    if cell is None:
        return tight_crop(bgr, rng, UNFOUND_CELL_FRACTION)
    side = min(h, w, max(8, round(margin * cell[1])))
    x0, y0 = _window_at(cell[0], side, side, w, h)
    return bgr[y0 : y0 + side, x0 : x0 + side].copy()


def cell_filled_yellow_small(bgr: np.ndarray, rng: np.random.Generator, margin: float) -> np.ndarray:
    """``tight_yellow_small``'s habits on a cell-centred crop: ``cell_filled`` of ``margin``, a yellow cast of
    strength 0.75, saved at 120x120 pixels (the rapid-stain laboratory of "Trustworthy differentials on other
    laboratories' slides": "crops 120 px with the cell filling them")."""
    image = colour_cast(cell_filled(bgr, rng, margin), rng, _YELLOW_GAINS, 0.75)
    return cv2.resize(image, (120, 120), interpolation=cv2.INTER_AREA)


def _family(fn: Callable[..., np.ndarray], name_format: str, values: list, keyword: str) -> list[tuple[str, Shift]]:
    return [(name_format.format(v), partial(fn, **{keyword: v})) for v in values]


FAMILIES: dict[str, list[tuple[str, Shift]]] = {
    "yellow_cast": _family(partial(colour_cast, gains=_YELLOW_GAINS), "{:g}", [0.25, 0.5, 0.75, 1.0], "strength"),
    "blue_grey_cast": _family(partial(colour_cast, gains=_BLUE_GAINS, grey=_GREY_AT_FULL), "{:g}", [0.25, 0.5, 0.75, 1.0], "strength"),
    "stain_intensity": _family(stain_intensity, "x{:g}", [0.5, 0.75, 1.5, 2.0], "factor"),
    "stain_balance": [
        ("H+40%,E-30%", partial(stain_balance, h_factor=1.4, e_factor=0.7)),
        ("H-30%,E+40%", partial(stain_balance, h_factor=0.7, e_factor=1.4)),
    ],
    "hue_rotation": _family(hue_rotation, "{:+g}deg", [-30, -15, 15, 30], "degrees"),
    "scale": _family(scale_content, "x{:g}", [0.5, 0.75, 1.5, 2.0], "factor"),
    "tight_crop": _family(tight_crop, "{:.0%}", [0.7, 0.6, 0.5], "fraction"),
    "wide_context": _family(wide_context, "x{:g}", [1.5, 2.0], "factor"),
    "off_centre": _family(off_centre, "{:.0%}", [0.1, 0.2, 0.3, 0.4], "fraction"),
    "black_padding": _family(black_padding, "{:.0%}", [0.1, 0.2, 0.3], "fraction"),
    "blur": _family(gaussian_blur, "sigma{:g}", [1.0, 2.0, 4.0], "sigma"),
    "jpeg": _family(jpeg, "q{:d}", [90, 50, 20], "quality"),
    "tight_yellow": _family(tight_yellow_small, "{:.0%}", [0.8, 0.65, 0.5], "fraction"),
    "cell_magnified": _family(cell_magnified, "x{:g}", [1.5, 2.0], "factor"),
    "cell_filled": _family(cell_filled, "cell x{:g}", [2.0, 1.5, 1.2], "margin"),
    "cell_filled_yellow": _family(cell_filled_yellow_small, "cell x{:g}", [1.5, 1.2], "margin"),
}
