"""The differential-count report of one job, as analysers present it.

The differential (percentages) is over white cells only. Erythroblasts
(nucleated red cells) are given per 100 white cells and platelets apart, when
the model knows those classes. Intervals are exact Clopper-Pearson 95 %
intervals from the raw counts, so small counts get honest, wide intervals.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from scipy.special import betaincinv  # beta.ppf itself: scipy.stats costs ~1 s of every process's start-up

from pipeline.domain import SHIFTED, UNAVAILABLE, DomainCheck, DomainModel, check_job
from pipeline.focus_check import MAX_LISTED
from pipeline.stain_check import red_cell_signature

ERYTHROBLAST = "erythroblast"
PLATELET = "platelet"


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial confidence interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    alpha = 1.0 - level
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - alpha / 2))
    return (low, high)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A client-supplied text cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP's advice)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


@dataclass(frozen=True)
class CellPrediction:
    """What the report needs of one image's result."""

    path: str
    label: str | None
    confidence: float | None
    error: str | None = None
    cell_found: bool | None = True
    ood_score: float | None = None
    #: red-cell stain signature (R, G, B optical density, ``pipeline.stain_check``); None where not measured
    stain_od: tuple | list | None = None
    #: the red cells' diameter in the image's own pixels (cell images; the red-cell check); None where not measured
    red_cell_px: float | None = None
    #: the model crop's blur effect (cell images; the focus check, ``pipeline.focus_check``); None where not measured
    focus: float | None = None


@dataclass(frozen=True)
class ClassCount:
    cell_type: str
    count: int
    percent: float
    ci95_low: float
    ci95_high: float


@dataclass
class DifferentialReport:
    """Counts, percentages with 95 % CIs, and the cells a reviewer should look at."""

    model: str
    n_images: int
    n_classified: int
    n_failed: int
    white_cell_total: int
    differential: list[ClassCount]
    erythroblasts: dict | None
    platelets: dict | None
    low_confidence_threshold: float
    n_low_confidence: int
    low_confidence_cells: list[dict] = field(default_factory=list)
    #: images in which no white cell was found: counted in the job, not in the differential
    n_no_cell_found: int = 0
    no_cell_found: list[str] = field(default_factory=list)
    #: is the job's data like the training laboratories' (``pipeline.domain``)
    domain_check: dict = field(default_factory=lambda: DomainCheck(UNAVAILABLE, None, ["not computed"]).to_dict())
    #: how the images were read (networks, views; ``pipeline.classifier.describe``), "" where not recorded (before 2.4.3)
    serving: str = ""

    def to_dict(self) -> dict:
        """Plain data (shallow: the low-confidence list is not deep-copied; a 2,000-image report is rebuilt per page view)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["differential"] = [asdict(row) for row in self.differential]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DifferentialReport:
        """Rebuild from :meth:`to_dict` output (extra keys such as ``job_id`` ignored)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["differential"] = [ClassCount(**row) for row in values["differential"]]
        return cls(**values)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["section", "cell_type", "count", "percent", "ci95_low_percent", "ci95_high_percent"])
        for row in self.differential:
            writer.writerow(["differential", row.cell_type, row.count, f"{row.percent:.2f}", f"{row.ci95_low:.2f}", f"{row.ci95_high:.2f}"])
        if self.erythroblasts is not None:
            writer.writerow(["per_100_wbc", ERYTHROBLAST, self.erythroblasts["count"], f"{self.erythroblasts['per_100_wbc']:.2f}", "", ""])
        if self.platelets is not None:
            writer.writerow(["separate", PLATELET, self.platelets["count"], "", "", ""])
        writer.writerow(["summary", "white_cell_total", self.white_cell_total, "", "", ""])
        writer.writerow(["summary", "images_total", self.n_images, "", "", ""])
        writer.writerow(["summary", "images_failed", self.n_failed, "", "", ""])
        writer.writerow(["summary", f"low_confidence_below_{self.low_confidence_threshold:g}", self.n_low_confidence, "", "", ""])
        writer.writerow(["summary", "no_white_cell_found", self.n_no_cell_found, "", "", ""])
        check = self.domain_check
        writer.writerow(["domain_check", check["status"], "" if check["score"] is None else check["score"], "; ".join(check["reasons"]), "", ""])
        if check.get("mean_distance") is not None:
            writer.writerow(["domain_mean_distance", check["mean_distance"], "", "", "", ""])
        if check.get("stain") is not None:
            stain = check["stain"]
            writer.writerow(["domain_stain_distance", stain["distance"], stain["laboratory"], stain["threshold"], stain["measured"], ""])
        if check.get("red_cells") is not None:
            red = check["red_cells"]
            writer.writerow(["domain_red_cell_distance", red["distance"], red["laboratory"], red["threshold"], red["measured"], ""])
        if check.get("focus") is not None:
            focus = check["focus"]
            writer.writerow(["domain_blur_deficit", focus["deficit"], focus["laboratory"], focus["threshold"], focus["measured"],
                             focus["blur_effect"]])
            for image in focus.get("blurriest", []):
                writer.writerow(["domain_blurry_image", spreadsheet_safe(image["path"]), image["blur_effect"], "", "", ""])
        writer.writerow(["model", spreadsheet_safe(self.model), spreadsheet_safe(self.serving), "", "", ""])
        return out.getvalue()

    def to_table(self) -> str:
        """Fixed-width text table for terminals."""
        lines = [f"{'cell type':<14}{'count':>7}{'%':>8}   95% CI", "-" * 44]
        for row in self.differential:
            lines.append(f"{row.cell_type:<14}{row.count:>7}{row.percent:>8.1f}   {row.ci95_low:5.1f} - {row.ci95_high:5.1f}")
        lines.append("-" * 44)
        lines.append(f"{'white cells':<14}{self.white_cell_total:>7}")
        if self.erythroblasts is not None:
            lines.append(f"erythroblasts  {self.erythroblasts['count']:>6}  ({self.erythroblasts['per_100_wbc']:.1f} per 100 WBC)")
        if self.platelets is not None:
            lines.append(f"platelets      {self.platelets['count']:>6}")
        lines.append(f"model {self.model}" + (f" ({self.serving})" if self.serving else ""))
        lines.append(f"images {self.n_images}, failed {self.n_failed}, low confidence (<{self.low_confidence_threshold:g}) "
                     f"{self.n_low_confidence}, no white cell found {self.n_no_cell_found}")
        check = self.domain_check
        detail = [f"score {check['score']}"] if check["score"] is not None else []
        if check.get("mean_distance") is not None:
            detail.append(f"mean distance {check['mean_distance']}")
        if check.get("stain") is not None:
            detail.append(f"stain distance {check['stain']['distance']} to {check['stain']['laboratory']} "
                          f"(alarm above {check['stain']['threshold']})")
        if check.get("red_cells") is not None:
            detail.append(f"red-cell distance {check['red_cells']['distance']} to {check['red_cells']['laboratory']} "
                          f"(alarm above {check['red_cells']['threshold']})")
        if check.get("focus") is not None:
            detail.append(f"blur deficit {check['focus']['deficit']} to {check['focus']['laboratory']} "
                          f"(alarm above {check['focus']['threshold']})")
        lines.append(f"domain check: {check['status']}" + (f" ({', '.join(detail)})" if detail else ""))
        lines.extend(f"  ! {reason}" for reason in check["reasons"] if check["status"] == SHIFTED)
        blurry = (check.get("focus") or {}).get("blurriest") or []
        if blurry:
            shown = ", ".join(f"{b['path']} ({b['blur_effect']:.3f})" for b in blurry[:5])
            lines.append(f"  blurry images ({check['focus']['n_blurry']}, blurriest first): {shown}"
                         + (", ..." if check["focus"]["n_blurry"] > 5 else ""))
        return "\n".join(lines)


def build_report(
    predictions: list[CellPrediction],
    classes: tuple[str, ...],
    white_cells: tuple[str, ...],
    model: str,
    low_confidence: float,
    max_listed: int = 1000,
    domain: DomainModel | None = None,
    scored_unit: str = "images",
    other_reasons: Sequence[str] = (),
) -> DifferentialReport:
    """Aggregate per-image predictions into a :class:`DifferentialReport`.

    Images without a white cell are left out of every count but listed; the
    domain check compares the job's per-image distances, and the same images'
    stain signatures, red-cell signatures (cell images) and blur effects, with
    the model's in-domain thresholds.
    """
    processed = [p for p in predictions if p.error is None and p.label is not None]
    classified = [p for p in processed if p.cell_found is not False]
    no_cell = [p.path for p in processed if p.cell_found is False]
    counts = Counter(p.label for p in classified)
    wbc_total = sum(counts[c] for c in white_cells)
    differential = []
    for cell_type in white_cells:
        k = counts[cell_type]
        low, high = clopper_pearson(k, wbc_total)
        pct = 100.0 * k / wbc_total if wbc_total else 0.0
        differential.append(ClassCount(cell_type, k, pct, 100.0 * low, 100.0 * high))
    ery = None
    if ERYTHROBLAST in classes:
        ery = {"count": counts[ERYTHROBLAST], "per_100_wbc": 100.0 * counts[ERYTHROBLAST] / wbc_total if wbc_total else 0.0}
    plt = {"count": counts[PLATELET]} if PLATELET in classes else None
    low = sorted((p for p in classified if (p.confidence or 0.0) < low_confidence), key=lambda p: p.confidence or 0.0)
    return DifferentialReport(
        model=model,
        n_images=len(predictions),
        n_classified=len(classified),
        n_failed=len(predictions) - len(processed),
        white_cell_total=wbc_total,
        differential=differential,
        erythroblasts=ery,
        platelets=plt,
        low_confidence_threshold=low_confidence,
        n_low_confidence=len(low),
        low_confidence_cells=[{"path": p.path, "label": p.label, "confidence": round(p.confidence or 0.0, 4)} for p in low[:max_listed]],
        n_no_cell_found=len(no_cell),
        no_cell_found=no_cell[:max_listed],
        domain_check=_with_blurriest(check_job([p.ood_score for p in processed], domain, len(no_cell), len(processed),
                                               scored_unit, other_reasons, stains=[p.stain_od for p in processed],
                                               red_cells=[red_cell_signature(p.stain_od, p.red_cell_px) for p in processed]
                                               if scored_unit == "images" else None,
                                               focus=[p.focus for p in processed]).to_dict(), domain, processed),
    )


def _with_blurriest(check: dict, domain: DomainModel | None, processed: list[CellPrediction]) -> dict:
    """``domain_check.focus`` gains the blurriest images (``FocusReference.blurriest``) against the laboratory the
    job's focus was measured against, so a laboratory knows which images to retake."""
    if check.get("focus") is None or domain is None or domain.focus is None:
        return check
    listed = domain.focus.blurriest([p.focus for p in processed], [p.path for p in processed], check["focus"]["laboratory"])
    return {**check, "focus": {**check["focus"], "n_blurry": len(listed), "blurriest": listed[:MAX_LISTED]}}
