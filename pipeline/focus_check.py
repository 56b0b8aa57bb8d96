"""Is this job in focus like the training laboratories' images? A check that reads pixels, not features.

Why: an out-of-focus camera is the commonest quality fault of a microscope station, and it costs accuracy
(the robustness suite's blur sigma 4: Kaggle 88.5 % with model 2.4.0). The feature alarm (``pipeline.domain``)
notices it only as "further from the training data", among other causes; a reviewer needs to be told which
fault to fix. Rule F in the model card chose the measure and the thresholds before they were run.

Per image, the measure is the no-reference *blur effect* of Crete-Roffet, Dolmiere, Ladret and Nicolas
(2007, "The blur effect: perception and estimation with a new no-reference perceptual blur metric"): blur the
grey image again with a 9-pixel box and ask how much of its neighbour-to-neighbour variation that removes.
A sharp image loses most of it (value near 0); an already blurred one loses little (near 1). It is a ratio,
so stain strength and contrast cancel; it is taken on the model crop, which ``pipeline.cellcrop`` rescales
to a fixed number of red-cell diameters, so a camera's magnification does not change it. The larger of the
two directions is kept (motion blur is one-directional).

Per training laboratory: the mean and standard deviation of the blur effect on its validation images. An
image's *deficit* is its z-score, signed so that blurrier is positive (rule F's "one-sided": only a job whose
mean is blurrier than the laboratory's can alarm; sharper images lower the mean, so a job half of whose images
are blurred needs those to be about twice the threshold out). A job is
flagged when its mean deficit exceeds that laboratory's threshold for *every* laboratory, as the stain check
does (``pipeline.stain_check``); the thresholds are rule S2's: the larger of the job mean that random
50-image validation jobs exceed 2 % of the time (widened for the few source photographs behind Kaggle's
images) and the 95th percentile of the laboratory's image deficits, widened as 1/sqrt(n) for smaller jobs.
Sharper than usual never alarms. Fitted by ``python -m training.stain_check --focus --fit``; stored with the
domain model (``focus_*`` in ``ood.npz``); models without it skip the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.domain import JOB_SIZE, sized_mean_thresholds
from pipeline.stain_check import IMAGE_QUANTILE, MIN_MEASURED, laboratory_threshold

#: the re-blur's box length in pixels of the model crop (Crete-Roffet et al.'s 9)
REBLUR = 9
#: an image is listed among a job's blurry images above this deficit (one-sided 5 % of a normal spread)
IMAGE_DEFICIT = 1.645
#: at most this many of them are listed (blurriest first)
MAX_LISTED = 10


def blur_effect(rgb: np.ndarray, reblur: int = REBLUR) -> float | None:
    """Crete-Roffet blur effect of an RGB (or grey) image in [0, 1]: 0 sharp, 1 no detail left; the larger
    direction. None for an image without any variation (blank or saturated): it has no focus to measure, and
    counting it as fully blurred would let a few empty crops raise the "out of focus" reason."""
    image = np.asarray(rgb)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:  # in the crop's own dtype: uint8 crops get OpenCV's rounded grey, as the reference was fitted
        colour = image[:, :, :3] if image.dtype in (np.uint8, np.uint16, np.float32) else image[:, :, :3].astype(np.float32)
        image = cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_RGB2GRAY)
    grey = image.astype(np.float32)
    effects = []
    for axis, kernel in ((0, np.full((reblur, 1), 1.0 / reblur, np.float32)), (1, np.full((1, reblur), 1.0 / reblur, np.float32))):
        variation = np.abs(np.diff(grey, axis=axis))
        total = float(variation.sum())
        if total <= 0.0:  # nothing varies this way: the direction says nothing about focus
            continue
        reblurred = cv2.filter2D(grey, -1, kernel, borderType=cv2.BORDER_REFLECT)
        kept = np.abs(np.diff(reblurred, axis=axis))
        removed = float(np.maximum(variation - kept, 0.0).sum())
        effects.append((total - removed) / total)
    return round(max(effects), 5) if effects else None


def _measured(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and np.isfinite(v)], np.float64)


@dataclass(frozen=True)
class FocusReference:
    """Per training laboratory: the blur effect's mean and spread, and the job thresholds on the mean deficit."""

    labs: tuple[str, ...]
    means: np.ndarray  # (L,) mean blur effect of the laboratory's validation images
    spreads: np.ndarray  # (L,) their standard deviation
    centres: np.ndarray  # (L,) mean deficit of those images (0 by construction; kept for the widening)
    thresholds: np.ndarray  # (L,) the 50-image job mean deficit above which a job is blurrier than the laboratory's

    def deficits(self, values: Sequence[float | None]) -> np.ndarray:
        """(n, L) z-score of each measured image against each laboratory, blurrier positive (None, NaN dropped)."""
        x = _measured(values)
        return (x[:, None] - self.means[None, :]) / self.spreads[None, :]

    def measure(self, values: Sequence[float | None]) -> dict | None:
        """The job's focus against the laboratory it is least unlike, for the report's ``domain_check.focus``;
        None where fewer than ``MIN_MEASURED`` images were measured."""
        x = _measured(values)
        if len(x) < MIN_MEASURED:
            return None
        means = self.deficits(x).mean(axis=0)
        limits = sized_mean_thresholds(self.centres, self.thresholds, len(x))
        nearest = int(np.argmin(means / limits))
        return {"blur_effect": round(float(np.median(x)), 4), "deficit": round(float(means[nearest]), 3),
                "laboratory": self.labs[nearest], "threshold": round(float(limits[nearest]), 3), "measured": len(x),
                "unlike_all": bool(np.all(means > limits))}

    def blurriest(self, values: Sequence[float | None], names: Sequence[str], laboratory: str) -> list[dict]:
        """Every image blurrier than about 1 in 20 of ``laboratory``'s (deficit above ``IMAGE_DEFICIT``), blurriest
        first: which ones to retake, whether or not the job as a whole is flagged."""
        scored = [(float(v), name) for v, name in zip(values, names, strict=True) if v is not None and np.isfinite(v)]
        deficits = self.deficits([v for v, _ in scored])[:, self.labs.index(laboratory)]
        listed = sorted((item for item, d in zip(scored, deficits, strict=True) if d > IMAGE_DEFICIT), reverse=True)
        return [{"path": name, "blur_effect": round(v, 4)} for v, name in listed]

    def reason(self, values: Sequence[float | None], unit: str = "images") -> str | None:
        """Why the job is blurrier than every training laboratory's images, or None."""
        return describe_focus(self.measure(values), unit)

    def arrays(self, prefix: str = "focus") -> dict[str, np.ndarray]:
        """The arrays ``DomainModel.save`` stores (``focus_*`` keys of ``ood.npz``)."""
        return {f"{prefix}_labs": np.array(self.labs),
                f"{prefix}_stats": np.stack([self.means, self.spreads, self.centres, self.thresholds], axis=1)}

    @classmethod
    def from_arrays(cls, data, prefix: str = "focus") -> FocusReference | None:
        """From an opened ``ood.npz``; None where it has none (models before 2.4.2)."""
        if f"{prefix}_stats" not in data.files:
            return None
        stats = np.asarray(data[f"{prefix}_stats"], np.float64)
        return cls(tuple(str(v) for v in data[f"{prefix}_labs"]), *(stats[:, k] for k in range(4)))

    def summary(self) -> dict:
        """The manifest's record of the reference (what ``training.stain_check --focus --fit`` wrote)."""
        return {"laboratories": list(self.labs), "mean_blur_effect": np.round(self.means, 4).tolist(),
                "spread": np.round(self.spreads, 4).tolist(), "job_thresholds": np.round(self.thresholds, 4).tolist(),
                "job_size": JOB_SIZE, "statistic": "job mean z-score of the blur effect per laboratory (blurrier positive); alarm above the "
                "threshold only"}


def describe_focus(measured: dict | None, unit: str = "images") -> str | None:
    """The domain check's reason for a ``FocusReference.measure`` result blurrier than every laboratory, else None."""
    if measured is None or not measured["unlike_all"]:
        return None
    return (f"the {unit} are blurrier than the training laboratories' (blur deficit {measured['deficit']:.2f} against "
            f"{measured['laboratory']}; alarm above {measured['threshold']:.2f}; median blur effect "
            f"{measured['blur_effect']:.3f}; {measured['measured']} {unit} measured): out of focus, motion or a "
            f"low-resolution camera; refocus, or review cells before trusting the count")


def fit_focus_reference(values: dict[str, Sequence[float | None]], sources: dict[str, Sequence[str] | None] | None = None,
                        seed: int = 0, image_quantile: float | None = IMAGE_QUANTILE) -> FocusReference:
    """Fit the reference on each laboratory's validation blur effects (``sources``: each image's source
    photograph, where several images are copies of one, as for ``pipeline.stain_check.fit_stain_reference``)."""
    rng = np.random.default_rng(seed)
    labs, means, spreads, centres, thresholds = [], [], [], [], []
    for lab in sorted(values):
        kept = [i for i, v in enumerate(values[lab]) if v is not None and np.isfinite(v)]
        x = np.array([values[lab][i] for i in kept], np.float64)
        if len(x) < 2 * JOB_SIZE:
            raise ValueError(f"laboratory {lab!r} has {len(x)} measured images; the fit needs {2 * JOB_SIZE}")
        mean, spread = float(x.mean()), float(max(x.std(ddof=1), 1e-6))
        deficit = (x - mean) / spread
        lab_sources = (sources or {}).get(lab)
        clusters = len({lab_sources[i] for i in kept}) if lab_sources is not None else None
        labs.append(lab)
        means.append(mean)
        spreads.append(spread)
        centres.append(float(deficit.mean()))
        thresholds.append(laboratory_threshold(deficit, rng, clusters, image_quantile))
    return FocusReference(tuple(labs), np.array(means), np.array(spreads), np.array(centres), np.array(thresholds))
