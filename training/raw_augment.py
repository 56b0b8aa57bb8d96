"""Laboratory habits applied to the *raw* image, before the serving crop (NumPy/OpenCV only).

Why: ``training.augment`` transforms the model's 160 px crop, after
``pipeline.cellcrop`` has already found the cell, measured the red cells and
white-balanced the glass. It cannot show the model what that code produces
when its own assumptions break: a tight crop with no whole red cell (the
nucleus-size fallback sets the scale and the "glass" is cytoplasm), a higher
magnification, a cell near the edge, a lamp cast the white balance only half
removes. Model 2.0 lost most where those happen (robustness suite: tight
crop 50 % -> 53.5 % on Kaggle). Here those habits are drawn at random on the
decoded image and the result goes through the serving recipe
(``pipeline.preprocess.model_crop``), so training sees exactly what serving
will make of such an image.

Strengths are drawn from continuous ranges with random positions, not the
fixed settings of ``training.shifts`` (the robustness suite); still, a model
trained with this sees the suite's geometric families, so its figures there
measure invariance to transforms it trained on (said in the model card).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from pipeline.cellcrop import apply_gains, background_color

RawShift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _resize_side(bgr: np.ndarray, side: int) -> np.ndarray:
    h, w = bgr.shape[:2]
    scale = side / max(h, w)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(bgr, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=interpolation)


def tight(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square of 40-80 % of the short side near the centre, saved at 96-360 px: the cell fills a small image."""
    h, w = bgr.shape[:2]
    side = max(8, round(min(h, w) * rng.uniform(0.4, 0.8)))
    jitter = 0.08 * min(h, w)
    y0 = int(np.clip((h - side) / 2 + rng.uniform(-jitter, jitter), 0, h - side))
    x0 = int(np.clip((w - side) / 2 + rng.uniform(-jitter, jitter), 0, w - side))
    return _resize_side(bgr[y0 : y0 + side, x0 : x0 + side], int(rng.integers(96, 361)))


def magnify(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Higher magnification (1.2-2.2x) at the same image size: fewer, larger red cells."""
    h, w = bgr.shape[:2]
    factor = rng.uniform(1.2, 2.2)
    ch, cw = max(8, round(h / factor)), max(8, round(w / factor))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(bgr[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def shrink(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lower magnification or camera resolution: the whole image at 35-80 % of its size."""
    h, w = bgr.shape[:2]
    return _resize_side(bgr, max(48, round(max(h, w) * rng.uniform(0.35, 0.8))))


def shift(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Move the content 10-40 % of the extent in a random direction; the strip left is glass-coloured."""
    h, w = bgr.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    amount = rng.uniform(0.1, 0.4)
    matrix = np.float32([[1, 0, amount * w * np.cos(angle)], [0, 1, amount * h * np.sin(angle)]])
    fill = tuple(float(v) for v in background_color(bgr))
    return cv2.warpAffine(bgr, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def lamp_cast(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gains of 0.55-1.15 (yellow, blue, green or brown light and camera balance)."""
    gains = rng.uniform(0.55, 1.15, size=3).astype(np.float32)
    gains /= max(float(gains.max()), 1e-3) / rng.uniform(0.9, 1.05)
    return apply_gains(bgr, gains)


#: (name, probability, shift); each applies independently, geometry first
HABITS: tuple[tuple[str, float, RawShift], ...] = (
    ("tight", 0.22, tight),
    ("magnify", 0.12, magnify),
    ("shrink", 0.12, shrink),
    ("shift", 0.15, shift),
    ("lamp_cast", 0.3, lamp_cast),
)


def lab_habits(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply each habit with its probability; at most one of the scale-changing ones (tight, magnify, shrink)."""
    scaled = False
    for name, probability, fn in HABITS:
        if rng.random() >= probability:
            continue
        if name in ("tight", "magnify", "shrink"):
            if scaled:
                continue
            scaled = True
        bgr = fn(bgr, rng)
    return bgr


RAW_AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {"lab-habits": lab_habits}


def raw_augmentation(name: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    if name not in RAW_AUGMENTATIONS:
        raise ValueError(f"unknown raw augmentation {name!r}; choose one of {sorted(RAW_AUGMENTATIONS)}")
    return RAW_AUGMENTATIONS[name]
