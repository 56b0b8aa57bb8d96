"""Field and slide images: localise every white cell, crop it as the classifier expects, classify in batches.

Each detected cell is cut as a square window centred on the detection
(reflect-padded at image edges) and then goes through exactly the same
preprocessing as any cell image. The window side, 2.5 expected cell
diameters, was chosen on the even-numbered BCCD fields with
``training.evaluate_fields``: tighter windows (1.0-1.7 d, closer to a
literal 320x240 cut) classified worse. For the 1.x recipe (centre square)
2.2 d was best; the 2.0 recipe re-centres the cell and measures red cells
inside the window, which a wider window shows more of (even fields: 2.5 d
0.882, 2.2 d 0.875).

Fields are decoded, localised and cropped on an ordered thread pool (the
process' thread budget; OpenCV releases the GIL) while the model classifies
the crops gathered so far, a model batch at a time. Each cell's model crop
also gives its red-cell stain signature (``pipeline.stain_check``), for the
job's stain check.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from pipeline.cellcrop import red_cell_ruler
from pipeline.classifier import Classifier, predict_scored
from pipeline.focus_check import blur_effect
from pipeline.images import ImageRejected, decode_image
from pipeline.localize import Detection, LocaliserConfig
from pipeline.manifest import ModelManifest
from pipeline.parallel import ordered_map
from pipeline.preprocess import model_crop, scale_for_mobilenet
from pipeline.stain_check import Signature, stain_signature
from pipeline.tiling import localise_large

#: crop window (width, height) as multiples of the expected cell diameter
CROP_SCALE = (2.5, 2.5)
THUMBNAIL_SIDE = 96


@dataclass(frozen=True)
class FieldSettings:
    localiser: LocaliserConfig = LocaliserConfig()
    crop_scale: tuple[float, float] = CROP_SCALE
    tile: int = 1024
    max_pixels: int = 200_000_000


@dataclass(frozen=True)
class FoundCell:
    """A classified white cell inside a field, in the field's pixel coordinates."""

    index: int
    box: tuple[int, int, int, int]
    score: float
    label: str
    confidence: float
    probabilities: dict[str, float]
    thumbnail_jpeg: bytes
    #: distance of the crop's features to the training data (``pipeline.domain``); None without a domain model
    ood_score: float | None = None
    #: median red-cell optical density (R, G, B) of the cell's model crop (``pipeline.stain_check``); None where not measured
    stain_od: Signature | None = None
    #: the blur effect of the cell's model crop (``pipeline.focus_check``); None where the model does not check it
    focus: float | None = None


@dataclass(frozen=True)
class FieldResult:
    key: int
    cells: list[FoundCell]
    error: str | None = None
    #: the field's red-cell diameter in pixels (``pipeline.cellcrop.red_cell_ruler``), None where not measurable
    red_cell_px: float | None = None


def crop_around(bgr: np.ndarray, det: Detection, size: tuple[int, int]) -> np.ndarray:
    """A ``size`` = (width, height) window centred on the detection, reflect-padded at edges."""
    cw, ch = size
    cx, cy = det.center
    x0, y0 = int(round(cx - cw / 2)), int(round(cy - ch / 2))
    h, w = bgr.shape[:2]
    pad = max(0, -x0, -y0, x0 + cw - w, y0 + ch - h)
    if pad:
        bgr = cv2.copyMakeBorder(bgr, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
        x0, y0 = x0 + pad, y0 + pad
    return bgr[y0 : y0 + ch, x0 : x0 + cw]


def thumbnail(bgr: np.ndarray, det: Detection) -> bytes:
    crop = bgr[det.y0 : det.y1, det.x0 : det.x1]
    scale = THUMBNAIL_SIDE / max(crop.shape[:2])
    small = cv2.resize(crop, (max(1, int(crop.shape[1] * scale)), max(1, int(crop.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes() if ok else b""


@dataclass(frozen=True)
class PreparedField:
    """The model-ready crops of one field's detected cells (with thumbnails, stain signatures and blur effects), or why
    there are none."""

    key: int
    crops: list[tuple[Detection, np.ndarray, bytes, Signature | None, float | None]]
    error: str | None = None
    red_cell_px: float | None = None


#: red-cell diameter per expected white-cell diameter (the localiser's ``cell_diameter_px``): the median
#: over the even BCCD fields (88.8 px at the default 190 px), the half that chose the localiser's settings
RED_CELL_PER_CELL_DIAMETER = 0.467
#: a job's median red-cell diameter outside this range of the expected one means another magnification:
#: 10-field in-domain jobs stay within 0.95-1.08 (BCCD, both halves); 0.75x and 1.5x magnified jobs fall
#: at 0.68-0.77 and mostly above 1.25 (``python -m training.field_alarm --shift scale/x1.5``: 99.7-100 % of jobs
#: flagged, none in-domain); a much paler stain also shrinks the measured red cells (stain x0.5: 30-48 %)
MAGNIFICATION_RANGE = (0.8, 1.25)
#: fields with a measured red cell that a job needs before its magnification is judged
MIN_RULED_FIELDS = 5


def magnification_reason(rulers: list[float | None], cell_diameter_px: float) -> str | None:
    """Why a field job's magnification differs from the configured one, or None.

    Why: the localiser and the crop window are sized for ``cell_diameter_px``; at another
    magnification they cut cells into pieces or crop several at once, and the crops then look
    *closer* to the training data, so the feature-distance alarm stays quiet (model card). Red
    cells are a ruler present in every smear: their median size over the job says so directly.
    """
    measured = [r for r in rulers if r is not None]
    if len(measured) < MIN_RULED_FIELDS:
        return None
    expected = RED_CELL_PER_CELL_DIAMETER * cell_diameter_px
    median = float(np.median(measured))
    ratio = median / expected
    if MAGNIFICATION_RANGE[0] <= ratio <= MAGNIFICATION_RANGE[1]:
        return None
    return (f"red cells measure {median:.0f} px across in these fields, {ratio:.2f} times the {expected:.0f} px "
            f"expected at the configured magnification (cell diameter {cell_diameter_px:.0f} px): the fields were taken at "
            f"another magnification, and cells are then cut or merged at the wrong scale, or the stain is too pale or dark to "
            f"measure red cells by; if the magnification differs, set HEMATOVISION_CELL_DIAMETER_PX to about "
            f"{cell_diameter_px * ratio:.0f} and run the job again")


def _cell_crop(bgr: np.ndarray, det: Detection, size: tuple[int, int],
               manifest: ModelManifest) -> tuple[Detection, np.ndarray, bytes, Signature | None, float | None]:
    """One detected cell: the model's input pixels, its thumbnail, and the red-cell stain signature and blur effect of
    those pixels (each only for models that check it)."""
    pixels = model_crop(crop_around(bgr, det, size), manifest.input_size, manifest.preprocessing).pixels
    return (det, pixels, thumbnail(bgr, det), stain_signature(pixels) if manifest.checks_stain else None,
            blur_effect(pixels) if manifest.checks_focus else None)


def prepare_field(item: tuple[int, bytes], settings: FieldSettings, manifest: ModelManifest) -> PreparedField:
    """Decode one field, localise its cells and shrink each crop to the model's input at once,
    so no crop (a view, or a reflect-padded copy of the whole field at an edge) keeps the field alive."""
    key, data = item
    try:
        bgr = decode_image(data, settings.max_pixels)
    except ImageRejected as exc:
        return PreparedField(key, [], str(exc))
    if bgr.shape[0] < 64 or bgr.shape[1] < 64:
        return PreparedField(key, [], f"image is too small for a field ({bgr.shape[1]}x{bgr.shape[0]})")
    diameter = settings.localiser.cell_diameter_px
    size = (int(round(settings.crop_scale[0] * diameter)), int(round(settings.crop_scale[1] * diameter)))
    crops = [_cell_crop(bgr, det, size, manifest) for det in localise_large(bgr, settings.localiser, settings.tile)]
    ruler = red_cell_ruler(bgr)
    return PreparedField(key, crops, red_cell_px=round(ruler, 2) if ruler else None)


def analyze_fields(classifier: Classifier, items: list[tuple[int, bytes]], settings: FieldSettings, batch_size: int = 64,
                   threads: int = 1) -> list[FieldResult]:
    """Localise and classify the cells of each field; all crops go through the model in batches.

    The fields are prepared on ``threads`` threads (``prepare_field``, at most two per
    thread ahead), and every ``batch_size`` crops gathered are classified meanwhile:
    the same model batches, in the same order, as classifying all crops at the end.
    Each crop gets the same domain score as a cell image (one model call gives
    probabilities and features), so a field job carries a domain check too.
    """
    manifest = classifier.manifest
    pending: list[tuple[int, Detection, np.ndarray, bytes, Signature | None, float | None]] = []
    results: dict[int, FieldResult] = {}
    counters: dict[int, int] = {}

    def classify(chunk: list[tuple[int, Detection, np.ndarray, bytes, Signature | None, float | None]]) -> None:
        probs, scores = predict_scored(classifier, scale_for_mobilenet(np.stack([c[2] for c in chunk])), [c[4] for c in chunk])
        for (key, det, _, thumb, stain, focus), row, score in zip(chunk, probs, scores, strict=True):
            best = int(np.argmax(row))
            index = counters.get(key, 0)
            counters[key] = index + 1
            results[key].cells.append(FoundCell(
                index, (det.x0, det.y0, det.x1, det.y1), round(det.score, 4), manifest.classes[best], float(row[best]),
                {c: round(float(p), 6) for c, p in zip(manifest.classes, row, strict=True)}, thumb, score, stain, focus,
            ))

    prepare = partial(prepare_field, settings=settings, manifest=manifest)
    with closing(ordered_map(prepare, items, threads)) as fields:
        for field in fields:
            results[field.key] = FieldResult(field.key, [], field.error, field.red_cell_px)
            pending.extend((field.key, *crop) for crop in field.crops)
            while len(pending) >= batch_size:
                classify(pending[:batch_size])
                del pending[:batch_size]
    if pending:
        classify(pending)
    return [results[key] for key, _ in items]


def looks_like_fields(dimensions: list[tuple[int, int]]) -> bool:
    """Auto-detect a job's kind from image sizes: single-cell crops are small (Kaggle 320x240,
    PBC 360x363, CellaVision ~363); microscope fields are 640x480 and up."""
    if not dimensions:
        return False
    longest = sorted(max(w, h) for w, h in dimensions)
    return longest[len(longest) // 2] >= 560
