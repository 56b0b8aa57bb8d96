"""The report a person sees: the stored differential, recounted over reviewed labels, with flags and warnings.

The worker stores the model's report when a job finishes. Reviews never
change that row: the report is rebuilt from the cells' current labels (the
newest review, else the model's) with the same functions, so a reviewed
report and a model report can never be computed two different ways.
"""

from __future__ import annotations

from pipeline.reference import Interval, reference_block, warnings_for
from pipeline.report import ERYTHROBLAST, PLATELET, CellPrediction, build_report
from pipeline.slides import build_fields_report


def classes_of(summary: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(all classes, white-cell classes) as far as the stored report tells (it lists every white class)."""
    white = tuple(row["cell_type"] for row in summary["differential"])
    extra = tuple(name for name, key in ((ERYTHROBLAST, "erythroblasts"), (PLATELET, "platelets")) if summary.get(key) is not None)
    return white + extra, white


def recount(summary: dict, cells: list[tuple[str, int | None, str, float, bool]], failed: dict[str, str], paths: list[str]) -> dict:
    """The stored summary with every count rebuilt from ``(path, cell index or None, label, confidence, cell found)`` rows.

    Reviews change labels, not images: the stored domain checks (computed from
    the model's per-image scores, which the rows here do not carry) are kept,
    the job's and each slide's.
    """
    classes, white = classes_of(summary)
    model, threshold = summary["model"], summary["low_confidence_threshold"]
    if summary.get("kind") == "fields":
        body = build_fields_report(paths, [(p, i, label, conf, None) for p, i, label, conf, _ in cells], failed, classes, white, model,
                                   threshold)
        stored = {s["slide"]: s["domain_check"] for s in summary.get("slides", []) if "domain_check" in s}
        body["slides"] = [{**s, "domain_check": stored.get(s["slide"], s["domain_check"])} for s in body["slides"]]
    else:
        preds = [CellPrediction(p, label, conf, cell_found=found) for p, _, label, conf, found in cells]
        body = build_report(preds + [CellPrediction(p, None, None, e) for p, e in failed.items()], classes, white, model, threshold).to_dict()
    kept = {key: summary[key] for key in ("domain_check",) if key in summary}
    return {**summary, **body, **kept}


def annotate(summary: dict, n_reviewed: int, n_changed: int, signoff: dict | None, intervals: dict[str, Interval], source: str) -> dict:
    """Add the review counts, the sign-off, reference intervals with flags and warnings (per slide too)."""
    out = {**summary, "review": {"n_reviewed": n_reviewed, "n_changed": n_changed}, "signoff": signoff,
           "reference_intervals": reference_block(summary["differential"], intervals, source), "warnings": warnings_for(summary)}
    if "slides" in summary:
        out["slides"] = [{**s, "reference_intervals": reference_block(s["differential"], intervals, source), "warnings": warnings_for(s)}
                         for s in summary["slides"]]
    return out
