"""Test-time augmentation: reading each image in its 8 rotations/flips, always or only where one view is unsure.

Why a module of its own: cells have no orientation, so the 8 dihedral views are equally valid inputs, and how
they are read (which images, in what chunks, which features the temperature and the alarm read) is a concern
of its own beside the backends that compute one view (``pipeline.classifier``). Pure NumPy around any
``Classifier``; ``pipeline.classifier.load_classifier`` wraps a backend in these by ``HEMATOVISION_TTA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.manifest import ModelManifest
from pipeline.temperature import CalibratedOutputs

if TYPE_CHECKING:
    from pipeline.classifier import Classifier
    from pipeline.stain_check import Signature


#: which features' distance the temperature of a TTA answer reads (manifest ``tta.temperature_distance``): the
#: 8 views' mean features (every model up to 2.4.3) or the image as given (the identity view, which the alarm reads)
VIEWS_MEAN, AS_GIVEN = "views-mean", "as-given"


def tta_temperature_distance(manifest: ModelManifest) -> str:
    """The manifest's ``tta.temperature_distance``, ``VIEWS_MEAN`` where it names none (rule G2, model card)."""
    value = (manifest.extra.get("tta") or {}).get("temperature_distance", VIEWS_MEAN)
    if value not in (VIEWS_MEAN, AS_GIVEN):
        raise ValueError(f"tta.temperature_distance is {VIEWS_MEAN!r} or {AS_GIVEN!r}, not {value!r}")
    return value


class DihedralTTA(CalibratedOutputs):
    """Test-time augmentation: the mean logits of the 8 rotations/flips of each image, calibrated by the distance
    of the views' mean features; the domain check reads the distance of the image as given (the identity view).

    Cells have no orientation, so the 8 views are equally valid inputs; their
    mean is a little more accurate at 8 times the model's cost (model card).
    The views of a batch go through the model as one batch (GPU-friendly).
    Why two distances: the alarm's thresholds were fitted on one view's features, and a mean of 8 views lies
    nearer the class centres, so with the mean's distance (until 2.4.2) the alarm went quiet under shift
    (Kaggle tight crop 60 %, 80 % accurate: 84.5 % of 50-image jobs flagged instead of 100 %; tight crop 70 %:
    22 % instead of 92 %; ``training.stress --tta``, model card). The temperature keeps the mean's distance:
    the averaged logits are already softer than one view's, and with the identity view's larger distance on top
    the suite's ECE rose (wide context x2 5.4 -> 7.7 %), so TTA's probabilities are those measured before.
    A manifest may say otherwise (``tta.temperature_distance`` = ``AS_GIVEN``, rule G2): then the temperature
    reads the image as given too.
    """

    def __init__(self, inner: Classifier) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.domain = inner.domain
        self.temperature_distance = tta_temperature_distance(inner.manifest)

    @property
    def as_given(self) -> bool:
        return self.temperature_distance == AS_GIVEN

    def temperature_features(self, as_given: np.ndarray, views_mean: np.ndarray, form: str | None = None) -> np.ndarray:
        """The features whose distance calibrates a TTA answer: by the manifest's ``tta.temperature_distance``, or by
        ``form`` where a study compares the two on one model (``training.tta_gate``, rule G2)."""
        return as_given if (form or self.temperature_distance) == AS_GIVEN else views_mean

    @staticmethod
    def views(batch: np.ndarray) -> np.ndarray:
        rotations = [np.rot90(batch, k, axes=(1, 2)) for k in range(4)]
        return np.concatenate(rotations + [r[:, :, ::-1] for r in rotations])

    def views_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Every view's logits (8, N, classes) and features (8, N, D), identity view first, in one model call."""
        logits, features = self.inner.outputs(np.ascontiguousarray(self.views(batch)))
        n = len(batch)
        return logits.reshape(8, n, -1), None if features is None else features.reshape(8, n, -1)

    def _views_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The mean logits (N, classes) and every view's features (8, N, D), identity view first."""
        logits, features = self.views_outputs(batch)
        return logits.mean(axis=0), features

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The views' mean logits and the identity view's features (what the domain check reads). Not always a matched
        pair for the temperature: ``scored`` calibrates with the features ``temperature_features`` names."""
        mean, views = self._views_outputs(batch)
        return mean, None if views is None else views[0]

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        mean, views = self._views_outputs(batch)
        if views is None:
            return self.calibrated(mean, None, stains)[0], None, None
        probs, _ = self.calibrated(mean, self.temperature_features(views[0], views.mean(axis=0)), stains)
        return probs, views[0], None if self.domain is None else self.domain.score(views[0])

class UnsureTTA(DihedralTTA):
    """Test-time augmentation only where the model is unsure (``HEMATOVISION_TTA=2``, rule G in the model card).

    Why: the 8-view mean is the largest in-domain gain left, but at 8 times the
    classifier's cost; most images are read with near-certain confidence, and
    the views can only change the answer where one view is unsure. Every image
    is read once as given; those whose calibrated top probability is below
    ``gate`` (the manifest's ``tta.gate``, chosen on validation images) are read
    in the other 7 views too, and their answer and probabilities are exactly
    full TTA's (the 8 views' mean logits, the temperature from the distance of
    the features ``DihedralTTA.temperature_features`` names). The domain check reads the image as given, as
    under every setting. ``images`` and ``reread`` count what was read, for the
    cost figures.
    """

    def __init__(self, inner: Classifier, gate: float) -> None:
        super().__init__(inner)
        if not 0.0 < gate <= 1.0:
            raise ValueError(f"a TTA gate is a probability in (0, 1], not {gate}")
        self.gate = float(gate)
        self.images = 0
        self.reread = 0

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Not defined: which images take the other views depends on calibrated probabilities; use ``scored``."""
        raise NotImplementedError("UnsureTTA answers through scored(); its logits depend on each image's confidence")

    def _other_views(self, unsure: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The 7 further views' logits and features (view-major, as ``views`` orders them) of the ``unsure`` images,
        through the networks ``chunk`` images at a time: a batch's re-read never asks a network for more images
        than the batch itself (7 x 64 views in one call would grow each interpreter's memory for good)."""
        views = self.views(unsure)[len(unsure):]
        parts = [self.inner.outputs(np.ascontiguousarray(views[i : i + chunk])) for i in range(0, len(views), chunk)]
        features = None if parts[0][1] is None else np.concatenate([f for _, f in parts])
        return np.concatenate([lg for lg, _ in parts]), features

    def scored(self, batch: np.ndarray, stains: Sequence[Signature | None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        logits, features = self.inner.outputs(batch)
        probs, distances = self.calibrated(logits, features, stains)
        unsure = np.flatnonzero(probs.max(axis=1) < self.gate)
        self.images += len(batch)
        self.reread += len(unsure)
        if len(unsure):
            k = len(unsure)
            more_logits, more_features = self._other_views(batch[unsure], len(batch))
            mean = (logits[unsure].astype(np.float64) + more_logits.reshape(7, k, -1).sum(axis=0)) / 8
            read_by = None
            if features is not None and more_features is not None:
                mean_features = ((features[unsure] + more_features.reshape(7, k, -1).sum(axis=0)) / 8).astype(np.float32)
                read_by = self.temperature_features(features[unsure], mean_features)
            some = None if stains is None else [stains[i] for i in unsure]
            probs[unsure] = self.calibrated(mean.astype(np.float32), read_by, some)[0]
        return probs, features, distances


def tta_gate(manifest: ModelManifest) -> float | None:
    """The manifest's gate for ``HEMATOVISION_TTA=2`` (``tta.gate``), None for models that carry none (before 2.4.3)."""
    gate = (manifest.extra.get("tta") or {}).get("gate")
    return None if gate is None else float(gate)
