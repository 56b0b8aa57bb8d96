"""Classify a batch of stored images with one model call.

Images that cannot be decoded become per-image error results; the rest of the
batch is still classified, in one forward pass (GPU-friendly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.classifier import Classifier, prepare_batch
from pipeline.images import ImageRejected, decode_image


@dataclass(frozen=True)
class ImageResult:
    """Outcome for one image: a prediction, or an error a user can act on."""

    key: int
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None


def classify_batch(classifier: Classifier, items: list[tuple[int, bytes]], max_pixels: int) -> list[ImageResult]:
    """Decode, preprocess and classify ``(key, image bytes)`` pairs."""
    manifest = classifier.manifest
    decoded: list[tuple[int, np.ndarray]] = []
    results: dict[int, ImageResult] = {}
    for key, data in items:
        try:
            decoded.append((key, decode_image(data, max_pixels)))
        except ImageRejected as exc:
            results[key] = ImageResult(key, error=str(exc))
    if decoded:
        probs = classifier.predict(prepare_batch([img for _, img in decoded], manifest.input_size))
        for (key, _), row in zip(decoded, probs, strict=True):
            best = int(np.argmax(row))
            results[key] = ImageResult(
                key,
                label=manifest.classes[best],
                confidence=float(row[best]),
                probabilities={c: round(float(p), 6) for c, p in zip(manifest.classes, row, strict=True)},
            )
    return [results[key] for key, _ in items]
