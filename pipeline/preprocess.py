"""Image preprocessing shared by training and serving.

Training (``training.data``) and inference (``pipeline.classifier``) both call
these functions, so the pixels a served model sees are produced by exactly the
code that produced its training pixels. The recipe is recorded in each model's
manifest (``preprocessing`` key) and checked on load.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Name of the only preprocessing recipe models are trained with. Stored in
#: ``manifest.json``; a model asking for another recipe is refused on load.
RECIPE = "rgb-center-square-area-resize-mobilenet-v2-scale"


def center_square(image: np.ndarray) -> np.ndarray:
    """Crop the largest centred square.

    Cell crops are centred on the white cell (Kaggle 320x240, PBC 360x363);
    a centred square keeps the cell and its near context without distorting
    the aspect ratio, which would change nucleus shape features.
    """
    h, w = image.shape[:2]
    side = min(h, w)
    y0 = (h - side) // 2
    x0 = (w - side) // 2
    return image[y0 : y0 + side, x0 : x0 + side]


def to_model_pixels(bgr: np.ndarray, size: int) -> np.ndarray:
    """Turn a decoded OpenCV BGR image into a ``size x size`` RGB uint8 array."""
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    rgb = cv2.cvtColor(center_square(bgr), cv2.COLOR_BGR2RGB)
    interpolation = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


def scale_for_mobilenet(pixels: np.ndarray) -> np.ndarray:
    """Map uint8 RGB [0, 255] to float32 [-1, 1], as MobileNetV2 was trained."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
