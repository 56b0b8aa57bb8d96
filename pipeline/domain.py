"""Is this job's data like the data the model was trained on? A domain-shift alarm.

Why: a classifier's probabilities are calibrated only on data like its
validation split. On another laboratory's slides it can be confidently wrong,
so the report must say when the images look unlike the training laboratories
instead of printing a confident count.

Per image: the Mahalanobis distance of the model's pooled features to the
nearest class centre (shared covariance, in a PCA subspace of the training
features; Lee et al., NeurIPS 2018). Per job, two statistics, either of which
calls the job shifted:

- the fraction of images whose distance is above the in-domain 95th
  percentile (a shift that makes some images very unusual), and
- from model 2.1.1, the job's mean distance (a moderate shift that moves
  every image a little: blur, a higher magnification, cells off-centre).

Both job thresholds are set on the validation split at export
(``training.export`` / ``training.refit_domain``), never on test data, for
*one laboratory at a time* (a laboratory's job holds its own images, not a
mix of two), each at a 2 % false-alarm rate, the larger laboratory's
threshold kept. The share's threshold is the beta-binomial predictive of the
count of unusual images in a job of the job's own size, from the
laboratory's validation counts. The mean's threshold comes from random
50-image validation jobs, widened for what resampling a few hundred
validation images cannot show (``predictive_widening``); for jobs smaller
than 50 images it widens as 1/sqrt(n) (a mean of fewer images varies more),
for larger jobs it stays at the 50-image value, so that a large job from a
familiar laboratory is not flagged for a difference too small to matter.
Cells cut from field images have thresholds of their own where fitted
(``field_thresholds``, ``training.field_alarm --fit``). ``training.alarm_study``
and ``training.domain_fit_study`` compare the choices. Stored with the model
(``ood.npz`` + the manifest's ``ood`` key).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pipeline.stain_check builds on this module's job thresholds; it is imported where a file is loaded
    from pipeline.focus_check import FocusReference
    from pipeline.stain_check import RedCellSignature, Signature, StainReference

OK = "ok"
SHIFTED = "shifted"
UNAVAILABLE = "unavailable"
#: fewer scored images than this and the job check says nothing
MIN_IMAGES = 10


#: the job size the job thresholds are set for
JOB_SIZE = 50
#: false-alarm rate of each job statistic on in-domain validation jobs (two statistics: at most about 4 % together).
#: 2 % and not 2.5 %: on three random halvings of the validation images (``training.alarm_study``'s protocol)
#: 2.5 % let one laboratory's held-out jobs alarm 6.2 % of the time at worst, 2 % at most 4.8 %
FALSE_ALARM = 0.02


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
    #: per validation laboratory: mean distance of its images and the 50-image job mean it exceeds 2 % of the
    #: time (None for models exported before 2.1.1: the mean statistic is then not used)
    mean_centres: np.ndarray | None = None
    mean_thresholds: np.ndarray | None = None
    #: for cells cut from field images (their crops sit further from the training crops than cell images do):
    #: share threshold, mean centre and 50-cell mean threshold, fitted on in-domain fields (``training.field_alarm
    #: --fit``); None: field jobs use the cell-image thresholds
    field_thresholds: np.ndarray | None = None
    #: per validation laboratory: unusual images and images (effective counts) behind the share statistic, so
    #: that a job of any size gets its own threshold (None: ``job_threshold`` for every size)
    share_counts: np.ndarray | None = None
    #: the red cells' stain per training laboratory (``pipeline.stain_check``, ``training.stain_check --fit``); None:
    #: no stain check (models before 2.3.1)
    stain: StainReference | None = None
    #: the red cells' stain and size together per training laboratory (``pipeline.stain_check.red_cell_signature``,
    #: ``training.stain_check --fit --size``), checked on cell-image jobs; None: no such check (models before 2.3.2)
    red_cells: StainReference | None = None
    #: the images' blur effect per training laboratory (``pipeline.focus_check``, ``training.stain_check --focus
    #: --fit``), checked on cell images and on the cells cut from fields; None: no focus check (models before 2.4.2)
    focus: FocusReference | None = None

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each feature row to its nearest class centre (larger = less familiar)."""
        z = (np.asarray(features, np.float64) - self.mean) @ self.components
        d = z[:, None, :] - self.class_means[None, :, :]
        m = ((d @ self.precision) * d).sum(axis=-1)  # the quadratic form per image and class (5x faster than einsum)
        return np.sqrt(np.maximum(m.min(axis=1), 0.0)).astype(np.float32)

    def mean_threshold(self, n: int) -> float | None:
        """The job mean distance above which a job of ``n`` images is shifted (None where not fitted)."""
        if self.mean_centres is None or self.mean_thresholds is None:
            return None
        return float(np.max(sized_mean_thresholds(self.mean_centres, self.mean_thresholds, n)))

    def share_threshold(self, n: int) -> float:
        """The share of unusual images above which a job of ``n`` scored images is shifted.

        From the validation counts where stored (for 2.1.1 a 10-image job needs 4 unusual images, a 50-image job
        8, for the same false-alarm rate), else the 50-image threshold for every size (models before 2.1.1)."""
        if self.share_counts is None:
            return self.job_threshold
        return max(share_threshold_from_counts(k, total, max(1, n)) for k, total in self.share_counts)

    def for_fields(self) -> DomainModel:
        """The model with the field-image thresholds in place of the cell-image ones, where they were fitted."""
        if self.field_thresholds is None:
            return self
        share, centre, mean50, unusual, cells = (float(v) for v in self.field_thresholds)
        return dataclasses.replace(self, job_threshold=share, mean_centres=np.array([centre]), mean_thresholds=np.array([mean50]),
                                   share_counts=np.array([[unusual, cells]]))

    def save(self, path: Path) -> None:
        extra = {} if self.mean_centres is None else {"mean_centres": self.mean_centres, "mean_thresholds": self.mean_thresholds}
        if self.field_thresholds is not None:
            extra["field_thresholds"] = self.field_thresholds
        if self.share_counts is not None:
            extra["share_counts"] = self.share_counts
        if self.stain is not None:
            extra.update(self.stain.arrays())
        if self.red_cells is not None:
            extra.update(self.red_cells.arrays("rbc"))
        if self.focus is not None:
            extra.update(self.focus.arrays())
        np.savez(path, mean=self.mean, components=self.components, class_means=self.class_means, precision=self.precision,
                 thresholds=np.array([self.image_threshold, self.job_threshold, self.expected_fraction]), **extra)

    @classmethod
    def load(cls, path: Path) -> DomainModel:
        from pipeline.focus_check import FocusReference
        from pipeline.stain_check import StainReference

        with np.load(path) as data:
            image_t, job_t, expected = (float(v) for v in data["thresholds"])
            centres = data["mean_centres"] if "mean_centres" in data.files else None
            thresholds = data["mean_thresholds"] if "mean_thresholds" in data.files else None
            fields = data["field_thresholds"] if "field_thresholds" in data.files else None
            counts = data["share_counts"] if "share_counts" in data.files else None
            return cls(data["mean"], data["components"], data["class_means"], data["precision"], image_t, job_t, expected,
                       centres, thresholds, fields, counts, StainReference.from_arrays(data), StainReference.from_arrays(data, "rbc"),
                       FocusReference.from_arrays(data))


def _job_quantile(values: np.ndarray, statistic, rng: np.random.Generator, jobs: int = 2000) -> float:
    """The ``1 - FALSE_ALARM`` quantile of ``statistic`` over random ``JOB_SIZE``-image jobs drawn from ``values``."""
    n = min(JOB_SIZE, len(values))
    return float(np.quantile([statistic(values[rng.choice(len(values), n, replace=False)]) for _ in range(jobs)], 1.0 - FALSE_ALARM))


def sized_mean_thresholds(centres: np.ndarray, thresholds: np.ndarray, n: int) -> np.ndarray:
    """Job-mean thresholds set for ``JOB_SIZE``-image jobs (``thresholds``, around the in-domain ``centres``), for a
    job of ``n`` images: a mean of fewer images varies more, so it widens as 1/sqrt(n); larger jobs keep the
    50-image value, so that a large job from a familiar laboratory is not flagged for a difference too small to
    matter."""
    widen = np.sqrt(JOB_SIZE / max(1, min(n, JOB_SIZE)))
    return centres + (thresholds - centres) * widen


def predictive_widening(pool: int, n: int = JOB_SIZE, clusters: int | None = None) -> float:
    """How much wider a new job's mean varies than the means of jobs resampled from ``pool`` validation images.

    Resampled jobs share the pool's images (without replacement: variance times (N - n) / (N - 1)) and its
    mean, which is itself off the laboratory's: by about 1/sqrt(N) for independent images, by about
    1/sqrt(C) when the pool holds copies of only C source photographs (Kaggle: 800 validation images of 41
    cells). A new job's mean then differs from the pool's by variance (1/n + 1/C) in units of one image's.
    Without this, thresholds from a few hundred validation images false-alarmed on up to 15 % of another
    random half's jobs (three halvings, 2.1's features).
    """
    if pool <= n:
        return 1.0
    return float(np.sqrt((1 + n / (clusters or pool)) * (pool - 1) / (pool - n)))


def mean_job_threshold(distances: np.ndarray, rng: np.random.Generator, clusters: int | None = None) -> float:
    """The job mean distance a new ``JOB_SIZE``-image job of this laboratory exceeds with probability ``FALSE_ALARM``."""
    centre = float(distances.mean())
    return centre + (_job_quantile(distances, np.mean, rng) - centre) * predictive_widening(len(distances), clusters=clusters)


def share_counts(unusual: np.ndarray, clusters: int | None = None) -> tuple[float, float]:
    """(unusual, total) images of one laboratory's validation, as effective counts: with ``clusters`` source
    photographs behind the images, the evidence counts as that many images."""
    total = len(unusual)
    scale = min(1.0, (clusters or total) / max(1, total))
    return float(np.sum(unusual)) * scale, total * scale


def share_threshold_from_counts(unusual: float, total: float, n: int = JOB_SIZE) -> float:
    """The share of unusual images a new ``n``-image job exceeds with probability at most ``FALSE_ALARM``: the
    beta-binomial predictive of its count from the laboratory's ``unusual`` of ``total`` (Jeffreys prior)."""
    a, b = unusual + 0.5, total - unusual + 0.5
    # the pmf from P(0) and the ratios P(x+1)/P(x) = (n-x)/(x+1) * (x+a)/(n-x-1+b), in NumPy: the threshold is
    # computed when a report is built, so its cost must not grow with the job (a Python loop over n+1 counts
    # took 30 ms for a 10,000-image job)
    x = np.arange(n, dtype=np.float64)
    log_first = math.lgamma(n + b) + math.lgamma(a + b) - math.lgamma(n + a + b) - math.lgamma(b)
    log_ratio = np.log(n - x) - np.log(x + 1) + np.log(x + a) - np.log(n - x - 1 + b)
    log_pmf = np.concatenate([[log_first], log_first + np.cumsum(log_ratio)])
    survival = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # P(count >= x)
    first = int(np.argmax(survival <= FALSE_ALARM)) if np.any(survival <= FALSE_ALARM) else n + 1
    return (first - 1) / n  # alarm when the share is above this, i.e. at ``first`` or more unusual images


def share_job_threshold(unusual: np.ndarray, n: int = JOB_SIZE, clusters: int | None = None) -> float:
    """The share of unusual images a new ``n``-image job of this laboratory exceeds with probability at most
    ``FALSE_ALARM`` (``unusual``: one flag per validation image).

    Why not resample jobs from the validation images: with a few hundred images the share's quantile is a
    step of 2 % (one image in 50) that sampling moves by a step or two; on random halvings of 2.1.1's
    validation images that gave held-out false alarms from 0.1 to 8 %.
    """
    return share_threshold_from_counts(*share_counts(unusual, clusters), n)


def field_thresholds(cell_scores: np.ndarray, image_threshold: float, seed: int = 0) -> np.ndarray:
    """``DomainModel.field_thresholds`` from the distances of the cells of in-domain field images: the same two
    statistics and rules as for cell images, on cells instead of images."""
    scores = np.asarray(cell_scores, np.float64)
    counts = share_counts(scores > image_threshold)
    return np.array([share_threshold_from_counts(*counts), scores.mean(), mean_job_threshold(scores, np.random.default_rng(seed)),
                     *counts])


def fit_domain_model(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                     val_groups: np.ndarray | None = None, components: int = 64, seed: int = 0,
                     val_sources: np.ndarray | None = None) -> DomainModel:
    """Fit the Gaussian on training features; set the thresholds on validation features.

    ``val_groups`` names each validation image's laboratory: jobs are drawn within one laboratory and each
    statistic's job threshold is the largest over laboratories (one group when not given). ``val_sources``
    names each image's source photograph where several images are copies of one (Kaggle): the thresholds
    then allow for how few independent cells the laboratory's validation images are.
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
    val_scores = model.score(val_features).astype(np.float64)
    groups = np.zeros(len(val_scores), int) if val_groups is None else np.asarray(val_groups)
    image_threshold = float(np.percentile(val_scores, 95))
    rng = np.random.default_rng(seed)
    labs = np.unique(groups)
    per_group = [val_scores[groups == g] for g in labs]
    sources = [None if val_sources is None else len(np.unique(np.asarray(val_sources)[groups == g])) for g in labs]
    counts = np.array([share_counts(d > image_threshold, c) for d, c in zip(per_group, sources, strict=True)])
    job_threshold = max(share_threshold_from_counts(k, total) for k, total in counts)
    mean_centres = np.array([d.mean() for d in per_group])
    mean_thresholds = np.array([mean_job_threshold(d, rng, c) for d, c in zip(per_group, sources, strict=True)])
    return DomainModel(mean, basis, centres, model.precision, image_threshold, job_threshold,
                       float((val_scores > image_threshold).mean()), mean_centres, mean_thresholds, share_counts=counts)


@dataclass(frozen=True)
class DomainCheck:
    """The report's ``domain_check`` block."""

    status: str
    score: float | None  # the share of unusual images
    reasons: list[str]
    mean_distance: float | None = None  # the job's mean distance (models from 2.1.1)
    #: the red cells' stain against the nearest training laboratory (``StainReference.measure``; models from 2.3.1)
    stain: dict | None = None
    #: the red cells' stain and size against the nearest laboratory (the red-cell check; cell jobs, models from 2.3.2)
    red_cells: dict | None = None
    #: the crops' blur effect against the nearest laboratory (``FocusReference.measure``; models from 2.4.2)
    focus: dict | None = None

    def to_dict(self) -> dict:
        out = {"status": self.status, "score": self.score, "reasons": self.reasons}
        if self.mean_distance is not None:
            out["mean_distance"] = self.mean_distance
        if self.stain is not None:
            out["stain"] = self.stain
        if self.red_cells is not None:
            out["red_cells"] = self.red_cells
        if self.focus is not None:
            out["focus"] = self.focus
        return out


def check_job(scores: list[float | None], model: DomainModel | None, n_no_cell: int = 0, n_images: int = 0,
              unit: str = "images", other_reasons: Sequence[str] = (),
              stains: Sequence[Signature | None] | None = None,
              red_cells: Sequence[RedCellSignature | None] | None = None,
              focus: Sequence[float | None] | None = None) -> DomainCheck:
    """Compare one job's per-image distances (None where not scored) with the in-domain thresholds.

    ``unit`` names what was scored: "images" for cell jobs, "cells" for field jobs (which use the field
    thresholds where the model has them). ``stains`` are the images' red-cell stain signatures
    (``pipeline.stain_check``; None where not measured), checked where the model carries a stain reference;
    ``red_cells`` the cell images' stain-and-diameter signatures (``red_cell_signature``), checked where the model
    carries a red-cell reference (cell jobs only: field jobs have their own magnification check); ``focus`` the crops'
    blur effects (``pipeline.focus_check``; cell images or field cells), checked where the model carries a focus
    reference.
    ``other_reasons`` are shifts found without the model (a field job's magnification,
    ``pipeline.fields.magnification_reason``). The stain's and the other reasons each make the job shifted,
    after the feature distances' own reasons, even where the distances cannot be checked.
    """
    from pipeline.focus_check import describe_focus
    from pipeline.stain_check import describe_red_cells, describe_stain

    check = _check_distances(scores, model, n_no_cell, n_images, unit)
    pixel_reasons = []
    if model is not None and model.stain is not None and stains:
        measured = model.stain.measure(stains)
        check = dataclasses.replace(check, stain=measured)
        pixel_reasons.append(describe_stain(measured, unit))
    if model is not None and model.red_cells is not None and red_cells:
        measured = model.red_cells.measure(red_cells)
        check = dataclasses.replace(check, red_cells=measured)
        pixel_reasons.append(describe_red_cells(measured, unit))
    if model is not None and model.focus is not None and focus:
        measured = model.focus.measure(focus)
        check = dataclasses.replace(check, focus=measured)
        pixel_reasons.append(describe_focus(measured, unit))
    other_reasons = [*(r for r in pixel_reasons if r), *other_reasons]
    if not other_reasons:
        return check
    return dataclasses.replace(check, status=SHIFTED, reasons=[*check.reasons, *other_reasons])


def _check_distances(scores: list[float | None], model: DomainModel | None, n_no_cell: int, n_images: int,
                     unit: str) -> DomainCheck:
    known = np.array([s for s in scores if s is not None], np.float64)
    if model is None:
        return DomainCheck(UNAVAILABLE, None, ["the model ships no domain model (exported before 2.0)"])
    if unit == "cells":
        model = model.for_fields()
    if len(known) < MIN_IMAGES:
        return DomainCheck(UNAVAILABLE, None, [f"only {len(known)} scored {unit}; the check needs {MIN_IMAGES}"])
    fraction = float((known > model.image_threshold).mean())
    mean_distance = float(known.mean())
    mean_threshold = model.mean_threshold(len(known))
    reasons = []
    share_threshold = model.share_threshold(len(known))
    if fraction > share_threshold:
        reasons.append(f"{fraction:.0%} of {unit} look unlike the training laboratories (in-domain about "
                       f"{model.expected_fraction:.0%}, alarm above {share_threshold:.0%}): stain, camera or "
                       f"magnification differ; review cells before trusting the count")
    if mean_threshold is not None and mean_distance > mean_threshold:
        reasons.append(f"the {unit} are on average further from the training data than in ordinary jobs (mean distance "
                       f"{mean_distance:.2f}, alarm above {mean_threshold:.2f}): a moderate shift such as blur, another "
                       f"magnification or off-centre cells; review cells before trusting the count")
    if n_images and n_no_cell / n_images > 0.2:
        reasons.append(f"no white cell found in {n_no_cell} of {n_images} images: crops may not be single-cell images "
                       f"at a usual magnification")
    return DomainCheck(SHIFTED if reasons else OK, round(fraction, 4), reasons,
                       round(mean_distance, 4) if mean_threshold is not None else None)
