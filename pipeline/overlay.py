"""A field image with one cell's box drawn on it, for a reviewer who wants the cell's surroundings."""

from __future__ import annotations

import cv2
import numpy as np


def draw_box(image_bytes: bytes, box: tuple[int, int, int, int], max_side: int = 1600) -> bytes:
    """JPEG of the image with ``box`` (x0, y0, x1, y1) outlined, scaled down to ``max_side`` for the browser."""
    img = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("the stored field image cannot be decoded")
    thickness = max(2, round(max(img.shape[:2]) / 300))
    cv2.rectangle(img, (box[0], box[1]), (box[2], box[3]), (0, 200, 255), thickness)
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ValueError("the field image could not be encoded")
    return buf.tobytes()
