"""Classify a batch of stored images with one model call.

Images that cannot be decoded become per-image error results; the rest of the
batch is still classified, in one forward pass (GPU-friendly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.classifier import Classifier, prepare_cells
from pipeline.images import ImageRejected, decode_image


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
        batch, found = prepare_cells([img for _, img in decoded], manifest)
        probs, features = classifier.predict_with_features(batch)
        domain = getattr(classifier, "domain", None)
        scores = domain.score(features) if domain is not None and features is not None else [None] * len(decoded)
        for (key, _), row, has_cell, score in zip(decoded, probs, found, scores, strict=True):
            best = int(np.argmax(row))
            results[key] = ImageResult(
                key,
                label=manifest.classes[best],
                confidence=float(row[best]),
                probabilities={c: round(float(p), 6) for c, p in zip(manifest.classes, row, strict=True)},
                cell_found=has_cell,
                ood_score=None if score is None else round(float(score), 4),
            )
    return [results[key] for key, _ in items]
