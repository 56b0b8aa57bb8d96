"""Is this job's stain like the training laboratories'? A check that reads pixels, not features.

Why: the feature alarm (``pipeline.domain``) asks whether the network's pooled
features look familiar. From model 2.3 the network is trained to *ignore*
stain (MixStyle mixes feature statistics between images), so a doubled stain
or a rotated hue barely moves its features: on whole BCCD fields the feature
alarm fired on 7 % of 50-field jobs under a doubled stain that cost accuracy
below 85 % (2.2: 33 %). An alarm that reads only what the network was taught
to ignore cannot be the whole answer; this one reads the pixels.

The ruler is the red cells, as for scale (``pipeline.cellcrop``) and for the
stain-normalisation study (``pipeline.stainnorm``): they are in nearly every
smear image and take the eosin the same way everywhere, so their colour says
how a laboratory stains, independent of which white cell is in the image.
Per image, the signature is the median optical density (R, G, B) of the
red-cell pixels of the white-balanced model crop (``stainnorm.red_cell_od``;
None where a tight crop shows too few red cells). A lamp or camera cast is
removed by the white balance first, so it does not count as a stain shift.

Per laboratory of the training data: the mean and covariance of
``log(OD + EPS)`` over its validation images. An image's distance to a
laboratory is the Mahalanobis distance of its signature; a job's statistic
is the mean distance of its measured images to each laboratory, and the job
is flagged when it exceeds that laboratory's threshold for *every*
laboratory (a job is one laboratory's slides: like either training
laboratory is fine). A laboratory's job threshold is the larger of (1) the
job mean that random 50-image validation jobs exceed 2 % of the time,
widened for the few source photographs behind the validation images
(``pipeline.domain.mean_job_threshold``), and (2) the 95th percentile of
its validation images' own distances. Why (2) (rule S2 in the model card):
with (1) alone, jobs from held-out halves of PBC's validation images
alarmed 13-18 % of the time in two of three halvings; PBC's images come from
many patients and slides whose stains differ, so its images are not
independent draws of one stain and (1) is far too tight; with (2) a job is
flagged only when its typical image is as far out as the 1-in-20 in-domain
image. Smaller jobs widen as 1/sqrt(n), as the feature alarm's mean
statistic does (``pipeline.domain.sized_mean_thresholds``). Fitted by
``python -m training.stain_check --fit`` and stored with the domain model
(``ood.npz``); models without it skip the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.domain import JOB_SIZE, mean_job_threshold, sized_mean_thresholds
from pipeline.stainnorm import red_cell_od

#: added to the optical density before the logarithm, so that a faint channel's noise does not dominate
EPS = 0.05
#: fewer images with a measured signature than this and the check says nothing (the feature check still runs)
MIN_MEASURED = 10
#: a job threshold is at least this quantile of the laboratory's per-image distances (rule S2, model card)
IMAGE_QUANTILE = 0.95

Signature = tuple[float, float, float]
#: the stain signature and the red cells' diameter in the image's own pixels (the red-cell check, cell images)
RedCellSignature = tuple[float, float, float, float]


def stain_signature(rgb: np.ndarray) -> Signature | None:
    """Median red-cell optical density (R, G, B) of a white-balanced square RGB model crop, or None."""
    od = red_cell_od(rgb)
    return None if od is None else (round(float(od[0]), 4), round(float(od[1]), 4), round(float(od[2]), 4))


def red_cell_signature(stain: Signature | None, diameter_px: float | None) -> RedCellSignature | None:
    """The stain signature with the red cells' diameter (px) appended; None unless both were measured.

    Why: the crop is rescaled by the red-cell ruler, so another magnification or camera resolution leaves
    the network's features near home, and the stain does not change with it; the diameter in the image's
    own pixels does. Alone it cannot say "unlike both laboratories" (one laboratory's images magnified
    1.5x measure between the two laboratories' sizes); together with the stain it can (rule in the card).
    """
    if stain is None or diameter_px is None or len(stain) != 3:
        return None
    return (*stain, round(float(diameter_px), 2))  # type: ignore[return-value]


def _log_signatures(signatures: Sequence[Sequence[float] | None] | np.ndarray, dims: int = 3) -> np.ndarray:
    """(n, dims) ``log(value + EPS)`` of the measured signatures (None and malformed rows dropped)."""
    rows = [s for s in signatures if s is not None and len(s) == dims]
    if not rows:
        return np.zeros((0, dims))
    return np.log(np.maximum(np.asarray(rows, np.float64), 0.0) + EPS)


@dataclass(frozen=True)
class StainReference:
    """Per training laboratory: the red-cell signature's mean and spread, and the job thresholds.

    The signature is the stain (3 values) or, for the red-cell check, the stain and the diameter (4 values,
    ``red_cell_signature``); the arithmetic is the same, ``dims`` tells which."""

    labs: tuple[str, ...]
    means: np.ndarray  # (L, 3) mean log(OD + EPS)
    precisions: np.ndarray  # (L, 3, 3) inverse covariance
    centres: np.ndarray  # (L,) mean per-image distance of the laboratory's validation images
    thresholds: np.ndarray  # (L,) the 50-image job mean distance above which a job is unlike the laboratory
    #: the job statistic: False, each laboratory's mean distance over the job (the stain check: a job is one
    #: laboratory's); True, each image's distance to its nearest laboratory relative to that laboratory's threshold,
    #: averaged (the red-cell check: a job mixing both laboratories' familiar images is not flagged, model card)
    per_image: bool = False

    @property
    def dims(self) -> int:
        return int(self.means.shape[1])

    def distances(self, signatures: Sequence[Sequence[float] | None] | np.ndarray) -> np.ndarray:
        """(n, L) distance of each measured signature to each laboratory."""
        x = _log_signatures(signatures, self.dims)
        d = x[:, None, :] - self.means[None, :, :]
        return np.sqrt(np.maximum(np.einsum("nli,lij,nlj->nl", d, self.precisions, d), 0.0))

    def image_distances(self, signatures: Sequence[Sequence[float] | None]) -> np.ndarray:
        """(n,) each image's distance to the nearest laboratory, NaN where its signature was not measured
        (aligned with ``signatures``, unlike :meth:`distances`, which drops those rows)."""
        out = np.full(len(signatures), np.nan)
        measured = [i for i, s in enumerate(signatures) if s is not None and len(s) == self.dims]
        if measured:
            out[measured] = self.distances([signatures[i] for i in measured]).min(axis=1)
        return out

    def job_thresholds(self, n: int) -> np.ndarray:
        """(L,) job mean distances above which an ``n``-image job is unlike each laboratory."""
        return sized_mean_thresholds(self.centres, self.thresholds, n)

    def measure(self, signatures: Sequence[Sequence[float] | None]) -> dict | None:
        """The job's stain against the nearest training laboratory (relative to its threshold), for the report's
        ``domain_check.stain``: distance, laboratory, threshold, images measured and whether it is unlike every
        laboratory; None where fewer than ``MIN_MEASURED`` images were measured."""
        d = self.distances(signatures)
        if len(d) < MIN_MEASURED:
            return None
        limits = self.job_thresholds(len(d))
        if self.per_image:  # in units of the threshold: flagged above 1
            ratios = d / limits[None, :]
            score = float(ratios.min(axis=1).mean())
            majority = int(np.bincount(ratios.argmin(axis=1), minlength=len(self.labs)).argmax())
            return {"distance": round(score, 3), "laboratory": self.labs[majority], "threshold": 1.0, "measured": len(d),
                    "unlike_all": score > 1.0}
        means = d.mean(axis=0)
        nearest = int(np.argmin(means / limits))
        return {"distance": round(float(means[nearest]), 3), "laboratory": self.labs[nearest],
                "threshold": round(float(limits[nearest]), 3), "measured": len(d), "unlike_all": bool(np.all(means > limits))}

    def reason(self, signatures: Sequence[Sequence[float] | None], unit: str = "images") -> str | None:
        """Why the job's stain is unlike every training laboratory's, or None (also where too few are measured)."""
        return describe_stain(self.measure(signatures), unit)

    def arrays(self, prefix: str = "stain") -> dict[str, np.ndarray]:
        """The arrays ``DomainModel.save`` stores (``stain_*`` keys of ``ood.npz``; ``rbc_*`` for the red-cell check)."""
        return {f"{prefix}_labs": np.array(self.labs), f"{prefix}_means": self.means, f"{prefix}_precisions": self.precisions,
                f"{prefix}_thresholds": np.stack([self.centres, self.thresholds], axis=1), f"{prefix}_per_image": np.array(self.per_image)}

    @classmethod
    def from_arrays(cls, data, prefix: str = "stain") -> StainReference | None:
        """From an opened ``ood.npz``; None where it has no such reference (stain: models before 2.3.1)."""
        if f"{prefix}_means" not in data.files:
            return None
        thresholds = np.asarray(data[f"{prefix}_thresholds"], np.float64)
        per_image = bool(data[f"{prefix}_per_image"]) if f"{prefix}_per_image" in data.files else False
        return cls(tuple(str(v) for v in data[f"{prefix}_labs"]), np.asarray(data[f"{prefix}_means"], np.float64),
                   np.asarray(data[f"{prefix}_precisions"], np.float64), thresholds[:, 0], thresholds[:, 1], per_image)

    def summary(self) -> dict:
        """The manifest's record of the reference (what ``training.stain_check --fit`` wrote)."""
        return {"laboratories": list(self.labs), "mean_log_od_rgb": np.round(self.means, 4).tolist(),
                "centres": np.round(self.centres, 4).tolist(), "job_thresholds": np.round(self.thresholds, 4).tolist(),
                "job_size": JOB_SIZE, "statistic": "per-image nearest laboratory" if self.per_image else "job mean per laboratory"}


def describe_stain(measured: dict | None, unit: str = "images") -> str | None:
    """The domain check's reason for a ``StainReference.measure`` result that is unlike every laboratory, else None."""
    if measured is None or not measured["unlike_all"]:
        return None
    return (f"the red cells' stain is unlike the training laboratories' (stain distance {measured['distance']:.2f} to the "
            f"nearest, {measured['laboratory']}; alarm above {measured['threshold']:.2f}; {measured['measured']} {unit} measured): "
            f"another stain, stain strength or hue; review cells before trusting the count")


def describe_red_cells(measured: dict | None, unit: str = "images") -> str | None:
    """The reason for a red-cell check (stain and size, ``red_cell_signature``) unlike every laboratory, else None."""
    if measured is None or not measured["unlike_all"]:
        return None
    return (f"the red cells' stain and size together are unlike the training laboratories' (red-cell distance "
            f"{measured['distance']:.2f} of the alarm distance of each image's nearest laboratory, mostly {measured['laboratory']}; "
            f"alarm above {measured['threshold']:.2f}; {measured['measured']} {unit} measured): another magnification or camera "
            f"resolution for this stain; the crops are rescaled by the red cells, but review cells before trusting the count")


def laboratory_threshold(values: np.ndarray, rng: np.random.Generator, clusters: int | None,
                         image_quantile: float | None = IMAGE_QUANTILE) -> float:
    """One laboratory's 50-image job threshold on the mean of per-image ``values`` (rule S2): the job mean random
    validation jobs exceed ``FALSE_ALARM`` of the time (widened for ``clusters`` source photographs), floored at the
    ``image_quantile`` of the values themselves (None: no floor, rule S)."""
    threshold = mean_job_threshold(values, rng, clusters)
    return threshold if image_quantile is None else max(threshold, float(np.quantile(values, image_quantile)))


def fit_stain_reference(signatures: dict[str, Sequence[Sequence[float] | None]], sources: dict[str, Sequence[str] | None] | None = None,
                        seed: int = 0, image_quantile: float | None = IMAGE_QUANTILE, per_image: bool = False) -> StainReference:
    """Fit the reference on each laboratory's validation signatures.

    ``sources`` (optional, per laboratory) names each signature's source photograph where several images are
    copies of one (Kaggle): the thresholds then allow for how few independent cells are behind them.
    ``image_quantile`` (None: rule S's job-mean threshold alone) floors each threshold at that quantile of the
    laboratory's per-image distances.
    """
    rng = np.random.default_rng(seed)
    labs, means, precisions, centres, thresholds = [], [], [], [], []
    for lab in sorted(signatures):
        sigs = list(signatures[lab])
        dims = next((len(s) for s in sigs if s is not None), 3)
        keep = [i for i, s in enumerate(sigs) if s is not None and len(s) == dims]
        x = _log_signatures([sigs[i] for i in keep], dims)
        if len(x) < 2 * JOB_SIZE:
            raise ValueError(f"laboratory {lab!r} has {len(x)} images with measured red cells; the fit needs {2 * JOB_SIZE}")
        mean = x.mean(axis=0)
        cov = np.cov(x.T) + np.eye(dims) * 1e-6
        precision = np.linalg.inv(cov)
        d = x - mean
        dist = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, precision, d), 0.0))
        lab_sources = (sources or {}).get(lab)
        clusters = len({lab_sources[i] for i in keep}) if lab_sources is not None else None
        labs.append(lab)
        means.append(mean)
        precisions.append(precision)
        centres.append(float(dist.mean()))
        thresholds.append(laboratory_threshold(dist, rng, clusters, image_quantile))
    return StainReference(tuple(labs), np.stack(means), np.stack(precisions), np.array(centres), np.array(thresholds), per_image)
