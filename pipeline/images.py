"""Safe decoding of untrusted image bytes.

Dimensions are read from the header (Pillow, lazy) and checked *before* any
pixel is decoded, so a decompression bomb costs nothing. Truncated JPEGs are
refused rather than classified half-grey.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

#: Formats a client may send, keyed by Pillow's format name; value = stored suffix.
ACCEPTED_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif"}


class ImageRejected(ValueError):
    """The bytes are not an image HematoVision will classify; the message says why."""


def sniff_format(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Return (format, width, height) from the header alone, or raise ImageRejected."""
    fmt, width, height, _ = _sniff(data, max_pixels, exif=False)
    return fmt, width, height


def _sniff(data: bytes, max_pixels: int, exif: bool) -> tuple[str, int, int, bool]:
    """``sniff_format`` and, with ``exif``, whether a JPEG's EXIF orientation turns it by 90 degrees:
    from one opening of the header (opening it twice cost a tenth of a small JPEG's decode)."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # our own pixel limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
                transposes = exif and fmt == "JPEG" and _exif_transposes(img)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"image dimensions are over the limit ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageRejected("not a recognised image (JPEG, PNG, BMP or TIFF expected)") from None
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRejected(f"unsupported image format {fmt}")
    if width < 8 or height < 8:
        raise ImageRejected(f"image is too small ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    return fmt, width, height, transposes


def _exif_transposes(img: Image.Image) -> bool:
    """True when the EXIF orientation (5-8) turns the image by 90 degrees; OpenCV applies it while decoding."""
    try:
        return img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: treat as upright, the decoder decides
        return False


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode to an OpenCV BGR uint8 array after the header checks, turned upright by its EXIF orientation."""
    fmt, width, height, transposes = _sniff(data, max_pixels, exif=True)
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise ImageRejected("truncated JPEG (no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    expected = (width, height) if transposes else (height, width)
    if bgr is None or bgr.shape[:2] != expected:
        raise ImageRejected("corrupt image data (decoder failed)")
    return bgr
