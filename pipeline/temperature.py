"""Calibration: the softmax temperature of a model's logits, and the rules that raise it for unfamiliar images.

Why a module of its own: the backends (``pipeline.classifier``) and the views (``pipeline.views``) decide how
an image is read; this decides how sure the answer may say it is. ``CalibratedOutputs`` is the step every
backend, view setting and network pair inherits: the one place logits become probabilities. Training studies (``training.calibration``,
``training.distance_temperature``, ``training.stain_temperature``) fit these rules on the same functions
serving applies, so a fitted figure is a served one. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipeline.manifest import ModelManifest

if TYPE_CHECKING:
    from pipeline.stain_check import Signature


def calibrated_softmax(logits: np.ndarray, temperature: float | np.ndarray) -> np.ndarray:
    """Softmax of ``logits / temperature``; ``temperature`` is one number or one per row (image)."""
    t = np.asarray(temperature, dtype=np.float64)
    z = logits.astype(np.float64) / (t[:, None] if t.ndim == 1 else t)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class DistanceTemperature:
    """A temperature that grows with the image's distance to the training data (``pipeline.domain``).

    Why: one temperature fitted on in-domain validation images leaves the model
    as sure of an image from another laboratory as of its own (the issue's
    "probabilities stay confident when wrong"). The distance the domain alarm
    already computes says how unfamiliar each image is; beyond ``reference``
    (an in-domain quantile of that distance) the temperature rises as
    ``(distance / reference) ** power``, so unfamiliar images get honest, lower
    confidence and land among the low-confidence cells for review. Images at
    or below ``reference`` keep the fitted temperature exactly. The answer
    (argmax) never changes. Fitted by ``training.distance_temperature``.
    """

    reference: float
    power: float

    def temperatures(self, base: float, distances: np.ndarray) -> np.ndarray:
        ratio = np.maximum(1.0, np.asarray(distances, dtype=np.float64) / self.reference)
        return base * ratio**self.power

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> DistanceTemperature | None:
        """The manifest's rule (``temperature_distance``), None for models that carry none (before 2.1.2)."""
        rule = manifest.extra.get("temperature_distance")
        return cls(float(rule["reference"]), float(rule["power"])) if rule else None


@dataclass(frozen=True)
class StainTemperature:
    """A second temperature factor that grows with the image's red-cell stain distance (``pipeline.stain_check``).

    Why: the distance-aware temperature reads the network's features, and from
    2.3 the network is trained (MixStyle) to ignore stain, so an image stained
    unlike both training laboratories keeps near-home confidence. The stain
    check already measures, per image, how far its red cells' stain lies from
    the nearest training laboratory; beyond ``reference`` (an in-domain
    quantile of that distance) the temperature is multiplied by
    ``(distance / reference) ** power``. Images without a measured stain (a
    tight crop with too few red cells) keep a factor of 1. The argmax never
    changes. Chosen by ``training.stain_temperature`` (rule TS, model card).
    """

    reference: float
    power: float

    def factors(self, stain_distances: np.ndarray) -> np.ndarray:
        d = np.asarray(stain_distances, dtype=np.float64)
        ratio = np.where(np.isfinite(d), np.maximum(1.0, np.nan_to_num(d, nan=0.0) / self.reference), 1.0)
        return ratio**self.power

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> StainTemperature | None:
        """The manifest's rule (``temperature_stain``), None for models that carry none (before 2.3.2)."""
        rule = manifest.extra.get("temperature_stain")
        return cls(float(rule["reference"]), float(rule["power"])) if rule else None


class CalibratedOutputs:
    """Logits, calibrated probabilities and features from one ``outputs(batch)`` (shared by every backend)."""

    manifest: ModelManifest

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch)[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.scored(batch)[0]

    def predict_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        probs, features, _ = self.scored(batch)
        return probs, features

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        logits, features = self.outputs(batch)
        probs, distances = self.calibrated(logits, features, stains)
        return probs, features, distances

    def calibrated(self, logits: np.ndarray, features: np.ndarray | None, stains: Sequence[Signature | None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities of ``logits`` whose distance-aware temperature reads ``features``, and those
        features' distances (None without a domain model or features): the one place every setting calibrates."""
        domain = getattr(self, "domain", None)
        distances = domain.score(features) if domain is not None and features is not None else None
        return calibrated_softmax(logits, self.temperatures(distances, stains, len(logits))), distances

    def temperatures(self, distances: np.ndarray | None, stains: Sequence[Signature | None] | None = None,
                     n: int | None = None) -> float | np.ndarray:
        """The manifest's temperature, per image where the model carries a distance rule and distances exist,
        times the stain factor where the model carries a stain rule, a stain reference and ``stains``."""
        temperature: float | np.ndarray = self.manifest.temperature
        rule = DistanceTemperature.from_manifest(self.manifest)
        if rule is not None and distances is not None:
            temperature = rule.temperatures(self.manifest.temperature, distances)
        stain_rule = StainTemperature.from_manifest(self.manifest)
        domain = getattr(self, "domain", None)
        if stain_rule is not None and stains is not None and domain is not None and domain.stain is not None:
            if n is not None and len(stains) != n:
                raise ValueError(f"{len(stains)} stain signatures for a batch of {n} images")
            temperature = temperature * stain_rule.factors(domain.stain.image_distances(stains))
        return temperature
