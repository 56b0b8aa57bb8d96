"""Classify stored images in model batches, preparing the next batches while the current one runs.

Reading, decoding and preprocessing (OpenCV, which releases the GIL) run on a
small ordered thread pool (``pipeline.parallel.ordered_map``, as many threads
as the process' thread budget) fed by one bounded prefetch thread that
assembles the batches; the model call runs in the caller's thread, so on a CPU
host preparation and inference overlap instead of taking turns, and
preparation uses every core the model leaves idle. Each image is shrunk to
the model's input (the model's own preprocessing recipe) right after it is
decoded, so memory holds one full-size image per preparing thread, not a
batch of them; the pool runs at most two images per thread ahead of the
batch being assembled, and a batch also closes at a budget of decoded source
pixels, which bounds the time and memory one batch of huge images can take.

Images that cannot be read or decoded become per-image error results; the rest
of the batch is still classified in one forward pass (GPU-friendly). The pixels
are exactly those of ``pipeline.classifier.prepare_batch`` (same functions),
and the batches are the same whatever the number of threads (they are
assembled in input order), so batching, prefetching and the pool never change
a prediction (nor the domain score).

Each image's red-cell stain signature (``pipeline.stain_check``) is measured
on its model crop right after the crop is made, in the same preparing thread,
and travels with the image to its result for the job's stain check (only for
models that carry a stain reference, ``ModelManifest.checks_stain``); so is its
blur effect for the focus check (``pipeline.focus_check``, ``checks_focus``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np

from pipeline.classifier import Classifier, predict_scored
from pipeline.focus_check import blur_effect
from pipeline.images import ImageRejected, decode_image
from pipeline.manifest import ModelManifest
from pipeline.parallel import ordered_map, prefetched
from pipeline.preprocess import model_crop, scale_for_mobilenet
from pipeline.stain_check import Signature, stain_signature
from pipeline.storage import StorageUnavailable

__all__ = ["BatchLimits", "ImageResult", "PreparedBatch", "PreparedImage", "apply_thread_budget", "classify_batch",
           "classify_stream", "prefetched", "prepare_batches", "prepare_image"]


@dataclass(frozen=True)
class ImageResult:
    """Outcome for one image: a prediction, or an error a user can act on."""

    key: int
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    #: False when the preprocessing found no white cell: kept, listed for review, not counted
    cell_found: bool = True
    #: distance to the training data (``pipeline.domain``); None when the model has no domain model
    ood_score: float | None = None
    #: the stored file could not be read (the error is about the file, not the image)
    unreadable: bool = False
    #: median red-cell optical density (R, G, B) of the model crop (``pipeline.stain_check``); None where not measured
    stain_od: Signature | None = None
    #: the red cells' diameter in the image's own pixels (the crop's ruler); None where no ruler was found
    red_cell_px: float | None = None
    #: the model crop's blur effect (``pipeline.focus_check``); None where the model carries no focus check
    focus: float | None = None


@dataclass(frozen=True)
class BatchLimits:
    """How big one model call may get: images, and decoded source pixels (at least one image)."""

    size: int = 64
    pixels: int = 256_000_000
    max_image_pixels: int = 40_000_000  # per image, checked from the header before decoding


@dataclass
class PreparedBatch:
    """Model-ready pixels of the images that decoded, and the errors of those that did not."""

    keys: list[int] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)  # uint8 RGB, input_size x input_size
    found: list[bool] = field(default_factory=list)  # the recipe found a cell in the image
    stains: list[Signature | None] = field(default_factory=list)  # the crop's red-cell stain signature, or None
    red_cells: list[float | None] = field(default_factory=list)  # the red cells' diameter (px) the crop measured, or None
    focus: list[float | None] = field(default_factory=list)  # the crop's blur effect, or None
    errors: list[ImageResult] = field(default_factory=list)
    source_pixels: int = 0


#: OpenCV's own threads per call: the preparing pool already runs the budget's threads side by side
OPENCV_THREADS = 1


def apply_thread_budget(threads: int) -> None:
    """Set OpenCV's threads for a process whose budget is ``threads`` (the model backend gets ``threads`` at load).

    Why not ``threads`` for OpenCV too: images are prepared ``threads`` at a time on the pool
    (``ordered_map``), and each call inside also splitting its rows over OpenCV's own pool put
    2 × 2 OpenCV threads beside the model's 2 on 2 cores; measured (``classify_stream`` on 640 cell
    images, 2 LiteRT threads, a pool of 2, 5 alternated pairs in two runs on a loaded machine), the
    process spent a median 9.7 ms of CPU per image with OpenCV's pool and 8.7 ms without (less in
    4 of the 5 pairs). The pixels do not depend on it (tested).
    """
    if threads < 1:
        raise ValueError(f"a thread budget is at least 1, not {threads}")
    cv2.setNumThreads(OPENCV_THREADS)


@dataclass(frozen=True)
class PreparedImage:
    """One image shrunk to the model's input, or the error that stopped it."""

    key: int
    pixels: np.ndarray | None = None  # uint8 RGB, input_size x input_size
    found: bool = False
    source_pixels: int = 0
    error: ImageResult | None = None
    stain: Signature | None = None  # red-cell stain signature of the crop (``pipeline.stain_check``), None where not measured
    red_cell_px: float | None = None  # the red cells' diameter in the image's pixels (the crop's ruler), None if none
    focus: float | None = None  # the crop's blur effect (``pipeline.focus_check``), None where the model does not check it


def prepare_image(item: tuple[int, Callable[[], bytes]], manifest: ModelManifest, limits: BatchLimits) -> PreparedImage:
    """Read, decode and shrink one ``(key, read)`` item; only the shrunk pixels outlive the call.

    ``StorageUnavailable`` is raised, not turned into an error row: the store is away,
    not this file, and the caller retries the whole batch.
    """
    key, read = item
    try:
        data = read()
    except StorageUnavailable:
        raise
    except (OSError, ValueError) as exc:
        return PreparedImage(key, error=ImageResult(key, error=f"stored file unreadable: {exc.__class__.__name__}", unreadable=True))
    try:
        bgr = decode_image(data, limits.max_image_pixels)
    except ImageRejected as exc:
        return PreparedImage(key, error=ImageResult(key, error=str(exc)))
    crop = model_crop(bgr, manifest.input_size, manifest.preprocessing)
    stain = stain_signature(crop.pixels) if manifest.checks_stain else None
    red_cell_px = round(crop.rbc_diameter_px, 2) if crop.rbc_diameter_px else None
    focus = blur_effect(crop.pixels) if manifest.checks_focus else None
    return PreparedImage(key, crop.pixels, crop.found, bgr.shape[0] * bgr.shape[1], stain=stain, red_cell_px=red_cell_px,
                         focus=focus)


def prepare_batches(items: Iterable[tuple[int, Callable[[], bytes]]], manifest: ModelManifest, limits: BatchLimits,
                    threads: int = 1) -> Iterator[PreparedBatch]:
    """Read, decode and shrink ``(key, read)`` items into batches within ``limits``, in order.

    ``threads`` > 1 prepares the images on an ordered pool (``ordered_map``); the
    batches, their order and their errors are the same as with one thread.
    """
    batch = PreparedBatch()
    with closing(ordered_map(partial(prepare_image, manifest=manifest, limits=limits), items, threads)) as images:
        for image in images:
            if image.error is not None:
                batch.errors.append(image.error)
                continue
            if batch.keys and (len(batch.keys) >= limits.size or batch.source_pixels + image.source_pixels > limits.pixels):
                yield batch
                batch = PreparedBatch()
            batch.keys.append(image.key)
            batch.pixels.append(image.pixels)  # type: ignore[arg-type]  # set when error is None
            batch.found.append(image.found)
            batch.stains.append(image.stain)
            batch.red_cells.append(image.red_cell_px)
            batch.focus.append(image.focus)
            batch.source_pixels += image.source_pixels
    if batch.keys or batch.errors:
        yield batch


def _scaled(batches: Iterator[PreparedBatch]) -> Iterator[tuple[PreparedBatch, np.ndarray | None]]:
    """Each batch with the float array the model takes (made in the prefetch thread too)."""
    with closing(batches):  # type: ignore[type-var]  # a generator
        for batch in batches:
            yield batch, scale_for_mobilenet(np.stack(batch.pixels)) if batch.pixels else None


def _classify(classifier: Classifier, batch: PreparedBatch, scaled: np.ndarray | None) -> list[ImageResult]:
    manifest = classifier.manifest
    results = list(batch.errors)
    if scaled is not None:
        probs, scores = predict_scored(classifier, scaled, batch.stains)
        for key, row, has_cell, score, stain, red_cell_px, focus in zip(batch.keys, probs, batch.found, scores, batch.stains,
                                                                         batch.red_cells, batch.focus, strict=True):
            best = int(np.argmax(row))
            results.append(ImageResult(
                key,
                label=manifest.classes[best],
                confidence=float(row[best]),
                probabilities={c: round(float(p), 6) for c, p in zip(manifest.classes, row, strict=True)},
                cell_found=has_cell,
                ood_score=score,
                stain_od=stain,
                red_cell_px=red_cell_px,
                focus=focus,
            ))
    return results


def classify_stream(classifier: Classifier, items: Iterable[tuple[int, Callable[[], bytes]]], limits: BatchLimits,
                    prefetch: int = 1, threads: int = 1) -> Iterator[list[ImageResult]]:
    """Classify ``(key, read)`` items batch by batch; yields each batch's results (errors included).

    With ``prefetch`` >= 1 up to that many next batches are read, decoded and scaled in
    the background while the model runs on the current one, the images on a pool of
    ``threads`` threads (the process' thread budget); ``prefetch`` 0 and ``threads`` 1
    do everything in the caller's thread. Close the generator (or use
    ``contextlib.closing``) when stopping early: that stops the threads too.
    """
    ready = _scaled(prepare_batches(items, classifier.manifest, limits, threads))
    with closing(prefetched(ready, prefetch)) as batches:
        for batch, scaled in batches:
            yield _classify(classifier, batch, scaled)


def classify_batch(classifier: Classifier, items: list[tuple[int, bytes]], max_pixels: int) -> list[ImageResult]:
    """Decode, preprocess and classify ``(key, image bytes)`` pairs in one model call; results in input order."""
    limits = BatchLimits(size=max(1, len(items)), pixels=2**62, max_image_pixels=max_pixels)
    readers = [(key, (lambda data=data: data)) for key, data in items]
    by_key = {r.key: r for results in classify_stream(classifier, readers, limits, prefetch=0) for r in results}
    return [by_key[key] for key, _ in items]
