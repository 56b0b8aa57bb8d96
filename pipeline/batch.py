"""Classify stored images in model batches, decoding the next batch while the current one runs.

Reading, decoding and preprocessing (OpenCV, which releases the GIL) run in
one bounded prefetch thread; the model call runs in the caller's thread, so
on a CPU host the two overlap instead of taking turns. Each image is shrunk to
the model's input (the model's own preprocessing recipe) right after it is
decoded, so memory holds one full-size image per decoding thread, not a batch of them; a batch also closes at a
budget of decoded source pixels, which bounds the time and memory one batch
of huge images can take.

Images that cannot be read or decoded become per-image error results; the rest
of the batch is still classified in one forward pass (GPU-friendly). The pixels
are exactly those of ``pipeline.classifier.prepare_batch`` (same functions),
so batching and prefetching never change a prediction (nor the domain score).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TypeVar

import cv2
import numpy as np

from pipeline.classifier import Classifier, predict_scored
from pipeline.images import ImageRejected, decode_image
from pipeline.manifest import ModelManifest
from pipeline.preprocess import model_crop, scale_for_mobilenet
from pipeline.storage import StorageUnavailable

T = TypeVar("T")


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
    errors: list[ImageResult] = field(default_factory=list)
    source_pixels: int = 0


def apply_thread_budget(threads: int) -> None:
    """OpenCV's worker threads for this process (the model backend gets the same number at load)."""
    cv2.setNumThreads(threads)


def prepare_batches(items: Iterable[tuple[int, Callable[[], bytes]]], manifest: ModelManifest, limits: BatchLimits) -> Iterator[PreparedBatch]:
    """Read, decode and shrink ``(key, read)`` items into batches within ``limits``, in order."""
    batch = PreparedBatch()
    for key, read in items:
        try:
            data = read()
        except StorageUnavailable:
            raise  # the store is away, not this file: the caller retries the whole batch
        except (OSError, ValueError) as exc:
            batch.errors.append(ImageResult(key, error=f"stored file unreadable: {exc.__class__.__name__}", unreadable=True))
            continue
        try:
            bgr = decode_image(data, limits.max_image_pixels)
        except ImageRejected as exc:
            batch.errors.append(ImageResult(key, error=str(exc)))
            continue
        source = bgr.shape[0] * bgr.shape[1]
        if batch.keys and (len(batch.keys) >= limits.size or batch.source_pixels + source > limits.pixels):
            yield batch
            batch = PreparedBatch()
        crop = model_crop(bgr, manifest.input_size, manifest.preprocessing)
        batch.keys.append(key)
        batch.pixels.append(crop.pixels)
        batch.found.append(crop.found)
        batch.source_pixels += source
        del bgr, data, crop  # only the shrunk pixels live on
    if batch.keys or batch.errors:
        yield batch


def prefetched(source: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run ``source`` in a background thread at most ``depth`` items ahead of the consumer.

    Closing the returned generator stops the thread after the item it is working on.
    """
    if depth < 1:
        yield from source
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                slots.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in source:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, name="hematovision-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = slots.get()
            if kind == "end":
                return
            if kind == "error":
                raise payload  # type: ignore[misc]
            yield payload  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def _scaled(batch: PreparedBatch) -> tuple[PreparedBatch, np.ndarray | None]:
    """The float batch the model takes (done in the prefetch thread too)."""
    return batch, scale_for_mobilenet(np.stack(batch.pixels)) if batch.pixels else None


def _classify(classifier: Classifier, batch: PreparedBatch, scaled: np.ndarray | None) -> list[ImageResult]:
    manifest = classifier.manifest
    results = list(batch.errors)
    if scaled is not None:
        probs, scores = predict_scored(classifier, scaled)
        for key, row, has_cell, score in zip(batch.keys, probs, batch.found, scores, strict=True):
            best = int(np.argmax(row))
            results.append(ImageResult(
                key,
                label=manifest.classes[best],
                confidence=float(row[best]),
                probabilities={c: round(float(p), 6) for c, p in zip(manifest.classes, row, strict=True)},
                cell_found=has_cell,
                ood_score=score,
            ))
    return results


def classify_stream(classifier: Classifier, items: Iterable[tuple[int, Callable[[], bytes]]], limits: BatchLimits,
                    prefetch: int = 1) -> Iterator[list[ImageResult]]:
    """Classify ``(key, read)`` items batch by batch; yields each batch's results (errors included).

    With ``prefetch`` >= 1 the next batch is read, decoded and scaled in a background
    thread while the model runs on the current one; 0 does everything in the caller's thread.
    Close the generator (or use ``contextlib.closing``) when stopping early.
    """
    ready = (_scaled(b) for b in prepare_batches(items, classifier.manifest, limits))
    with closing(prefetched(ready, prefetch)) as batches:
        for batch, scaled in batches:
            yield _classify(classifier, batch, scaled)


def classify_batch(classifier: Classifier, items: list[tuple[int, bytes]], max_pixels: int) -> list[ImageResult]:
    """Decode, preprocess and classify ``(key, image bytes)`` pairs in one model call; results in input order."""
    limits = BatchLimits(size=max(1, len(items)), pixels=2**62, max_image_pixels=max_pixels)
    readers = [(key, (lambda data=data: data)) for key, data in items]
    by_key = {r.key: r for results in classify_stream(classifier, readers, limits, prefetch=0) for r in results}
    return [by_key[key] for key, _ in items]
