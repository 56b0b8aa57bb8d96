"""Is this job's data like the data the model was trained on? A domain-shift alarm.

Why: a classifier's probabilities are calibrated only on data like its
validation split. On another laboratory's slides it can be confidently wrong,
so the report must say when the images look unlike the training laboratories
instead of printing a confident count.

Per image: the Mahalanobis distance of the model's pooled features to the
nearest class centre (shared covariance, in a PCA subspace of the training
features; Lee et al., NeurIPS 2018). Per job: the fraction of images whose
distance is above the in-domain 95th percentile. Both thresholds are set on
the validation split at export (``training.domain_fit``), never on test data,
and stored with the model (``ood.npz`` + the manifest's ``ood`` key).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

OK = "ok"
SHIFTED = "shifted"
UNAVAILABLE = "unavailable"
#: fewer scored images than this and the job check says nothing
MIN_IMAGES = 10


@dataclass(frozen=True)
class DomainModel:
    """Gaussian model of the training features and the alarm's thresholds."""

    mean: np.ndarray  # (D,) feature mean
    components: np.ndarray  # (D, P) PCA basis
    class_means: np.ndarray  # (K, P) class centres in the PCA space
    precision: np.ndarray  # (P, P) inverse of the shared within-class covariance
    image_threshold: float  # per-image distance: in-domain validation 95th percentile
    job_threshold: float  # fraction of unusual images above which a job is "shifted"
    expected_fraction: float  # that fraction's in-domain mean, for the message

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to its nearest class centre (larger = less familiar)."""
        z = (np.asarray(features, np.float64) - self.mean) @ self.components
        d = z[:, None, :] - self.class_means[None, :, :]
        m = ((d @ self.precision) * d).sum(axis=-1)  # the quadratic form per image and class (5x faster than einsum)
        return np.sqrt(np.maximum(m.min(axis=1), 0.0)).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components, class_means=self.class_means, precision=self.precision,
                 thresholds=np.array([self.image_threshold, self.job_threshold, self.expected_fraction]))

    @classmethod
    def load(cls, path: Path) -> DomainModel:
        with np.load(path) as data:
            image_t, job_t, expected = (float(v) for v in data["thresholds"])
            return cls(data["mean"], data["components"], data["class_means"], data["precision"], image_t, job_t, expected)


def fit_domain_model(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, job_size: int = 50,
                     components: int = 64, false_alarm: float = 0.025, seed: int = 0) -> DomainModel:
    """Fit the Gaussian on training features; set both thresholds on validation features.

    The job threshold is the ``1 - false_alarm`` quantile of the unusual-image
    fraction over random in-domain validation jobs of ``job_size`` images.
    """
    x = np.asarray(train_features, np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[: min(components, vt.shape[0])].T
    z = (x - mean) @ basis
    classes = np.unique(train_labels)
    centres = np.stack([z[train_labels == c].mean(axis=0) for c in classes])
    resid = z - centres[np.searchsorted(classes, train_labels)]
    cov = resid.T @ resid / max(1, len(z) - len(classes))
    cov += np.eye(len(cov)) * 1e-3 * np.trace(cov) / len(cov)  # shrinkage: a few hundred images per class
    model = DomainModel(mean, basis, centres, np.linalg.inv(cov), 0.0, 0.0, 0.0)
    val_scores = model.score(val_features)
    image_threshold = float(np.percentile(val_scores, 95))
    unusual = val_scores > image_threshold
    rng = np.random.default_rng(seed)
    n = min(job_size, len(unusual))
    fractions = np.array([unusual[rng.choice(len(unusual), n, replace=False)].mean() for _ in range(2000)])
    job_threshold = float(np.quantile(fractions, 1.0 - false_alarm))
    return DomainModel(mean, basis, centres, model.precision, image_threshold, job_threshold, float(unusual.mean()))


@dataclass(frozen=True)
class DomainCheck:
    """The report's ``domain_check`` block."""

    status: str
    score: float | None
    reasons: list[str]

    def to_dict(self) -> dict:
        return {"status": self.status, "score": self.score, "reasons": self.reasons}


def check_job(scores: list[float | None], model: DomainModel | None, n_no_cell: int = 0, n_images: int = 0,
              unit: str = "images") -> DomainCheck:
    """Compare one job's per-image distances (None where not scored) with the in-domain thresholds.

    ``unit`` names what was scored in the messages: "images" for cell jobs, "cells" for field jobs.
    """
    known = np.array([s for s in scores if s is not None], np.float64)
    if model is None:
        return DomainCheck(UNAVAILABLE, None, ["the model ships no domain model (exported before 2.0)"])
    if len(known) < MIN_IMAGES:
        return DomainCheck(UNAVAILABLE, None, [f"only {len(known)} scored {unit}; the check needs {MIN_IMAGES}"])
    fraction = float((known > model.image_threshold).mean())
    reasons = []
    if fraction > model.job_threshold:
        reasons.append(f"{fraction:.0%} of {unit} look unlike the training laboratories (in-domain about "
                       f"{model.expected_fraction:.0%}, alarm above {model.job_threshold:.0%}): stain, camera or "
                       f"magnification differ; review cells before trusting the count")
    if n_images and n_no_cell / n_images > 0.2:
        reasons.append(f"no white cell found in {n_no_cell} of {n_images} images: crops may not be single-cell images "
                       f"at a usual magnification")
    return DomainCheck(SHIFTED if reasons else OK, round(fraction, 4), reasons)
