"""Per-slide and per-job differentials for "fields" jobs.

A slide is the folder a field image sits in (fields at the top of the job
form one slide). Each slide gets the same :class:`DifferentialReport` as a
cell job, computed over the white cells found in its fields, domain check
included: each found cell is scored like a cell image, and the job and each
slide are checked with the same thresholds as a cell job.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from pipeline.domain import DomainModel
from pipeline.fields import magnification_reason
from pipeline.report import CellPrediction, DifferentialReport, build_report, spreadsheet_safe

ROOT_SLIDE = "(job root)"


def slide_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ROOT_SLIDE


def build_fields_report(
    fields: list[str],
    cells: list[tuple[str, int, str, float, float | None] | tuple[str, int, str, float, float | None, tuple | list | None]],
    failed: dict[str, str],
    classes: tuple[str, ...],
    white_cells: tuple[str, ...],
    model: str,
    low_confidence: float,
    domain: DomainModel | None = None,
    red_cells: dict[str, float | None] | None = None,
    cell_diameter_px: float | None = None,
) -> dict:
    """The job-level report plus one report per slide; counts are of cells found in fields.

    ``cells``: (field path, cell index, label, confidence, domain score or None[, stain signature or None[, blur effect
    or None]]: the stain check of ``pipeline.stain_check`` and the focus check of ``pipeline.focus_check``, where the
    tuple carries them). ``red_cells`` (field path ->
    measured red-cell diameter) and ``cell_diameter_px`` (the configured magnification) add the magnification
    check to each section's ``domain_check`` (``pipeline.fields.magnification_reason``).
    """
    per_slide: dict[str, list[CellPrediction]] = defaultdict(list)
    fields_per_slide: dict[str, list[str]] = defaultdict(list)
    for path in fields:
        fields_per_slide[slide_of(path)].append(path)
    for path, idx, label, conf, ood, *measured in cells:
        per_slide[slide_of(path)].append(CellPrediction(f"{path}#cell{idx}", label, conf, ood_score=ood,
                                                        stain_od=measured[0] if measured else None,
                                                        focus=measured[1] if len(measured) > 1 else None))
    for path, error in failed.items():
        per_slide[slide_of(path)].append(CellPrediction(path, None, None, error))
    with_cells = {path for path, *_ in cells}

    def section(paths: list[str], preds: list[CellPrediction]) -> dict:
        reason = magnification_reason([red_cells.get(p) for p in paths], cell_diameter_px) if red_cells and cell_diameter_px else None
        report = build_report(preds, classes, white_cells, model, low_confidence, domain=domain, scored_unit="cells",
                              other_reasons=[reason] if reason else ())
        return {
            **report.to_dict(),
            "n_fields": len(paths),
            "n_fields_failed": sum(p in failed for p in paths),
            "n_fields_without_wbc": sum(p not in with_cells and p not in failed for p in paths),
        }

    everything = [p for preds in per_slide.values() for p in preds]
    return {
        "kind": "fields",
        **section(fields, everything),
        "slides": [{"slide": slide, **section(paths, per_slide[slide])} for slide, paths in sorted(fields_per_slide.items())],
    }



def fields_report_csv(summary: dict) -> str:
    """CSV with a leading ``slide`` column: the whole job first ("ALL"), then each slide."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["slide", "section", "cell_type", "count", "percent", "ci95_low_percent", "ci95_high_percent"])
    for name, part in [("ALL", summary), *((s["slide"], s) for s in summary["slides"])]:
        for row in csv.reader(io.StringIO(DifferentialReport.from_dict(part).to_csv())):
            if row and row[0] != "section":
                writer.writerow([spreadsheet_safe(name), *row])
        writer.writerow([spreadsheet_safe(name), "summary", "fields", part["n_fields"], "", "", ""])
        writer.writerow([spreadsheet_safe(name), "summary", "fields_without_wbc", part["n_fields_without_wbc"], "", "", ""])
    return out.getvalue()


def summary_csv(summary: dict) -> str:
    """The CSV of a stored job summary, whichever kind of job it came from."""
    return fields_report_csv(summary) if summary.get("kind") == "fields" else DifferentialReport.from_dict(summary).to_csv()
