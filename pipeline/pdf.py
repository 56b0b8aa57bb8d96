"""A one-page PDF of a job's report that a laboratory can file (ReportLab, pure Python).

Takes the same annotated summary the report page shows and draws the same
chart shapes (:mod:`pipeline.chart`), so paper and screen agree. Long lists
(slides) are cut to fit the page and say so: the page count is always one.
"""

from __future__ import annotations

import io

from reportlab.lib.pagesizes import A4
from reportlab.pdfgen.canvas import Canvas

from pipeline.chart import Chart, chart_shapes

MARGIN = 42.0
_FILL = {"bar": (0.23, 0.43, 0.65), "bar flag": (0.71, 0.28, 0.18), "ref": (0.86, 0.94, 0.86)}
_STROKE = {"grid": (0.89, 0.89, 0.89), "axis": (0.33, 0.33, 0.33)}


def _draw_chart(c: Canvas, chart: Chart, left: float, top: float, scale: float) -> float:
    """Draw at (left, top) in PDF points; returns the height used."""
    def px(v: float) -> float:
        return left + v * scale

    def py(v: float) -> float:
        return top - v * scale

    for s in chart.shapes:
        if s.kind == "rect":
            c.setFillColorRGB(*_FILL.get(s.css, (0.5, 0.5, 0.5)))
            c.rect(px(s.x), py(s.y + s.y2), max(s.x2, 0) * scale, s.y2 * scale, stroke=0, fill=1)
        elif s.kind == "line":
            c.setStrokeColorRGB(*_STROKE.get(s.css, (0.07, 0.07, 0.07)))
            c.setLineWidth(1.2 if s.css == "whisker" else 0.6)
            c.line(px(s.x), py(s.y), px(s.x2), py(s.y2))
        else:
            c.setFillColorRGB(0.1, 0.1, 0.1)
            c.setFont("Helvetica", 8.5)
            draw = {"start": c.drawString, "middle": c.drawCentredString, "end": c.drawRightString}[s.anchor]
            draw(px(s.x), py(s.y), s.text)
    return chart.height * scale


def _fmt_interval(ref: dict) -> str:
    return f"{ref['low']:g}-{ref['high']:g}" if ref.get("low") is not None else "-"


def report_pdf(job: dict, report: dict) -> bytes:
    """``job``: id, name, created/finished times, images; ``report``: the annotated summary."""
    buf = io.BytesIO()
    width, height = A4
    c = Canvas(buf, pagesize=A4, pageCompression=1)
    c.setTitle(f"HematoVision report {job['id']}")
    y = height - MARGIN

    def line(text: str, size: float = 9.5, bold: bool = False, gap: float = 13.0, x: float = MARGIN) -> None:
        nonlocal y
        c.setFillColorRGB(0, 0, 0)
        c.setFont("Helvetica-Bold" if bold else "Helvetica", size)
        c.drawString(x, y, text)
        y -= gap

    line("HematoVision: white-cell differential", 16, True, 22)
    line(f"Job {job['id']}" + (f"  ({job['name']})" if job.get("name") else ""), 10, True)
    line(f"Created {job.get('created_at') or '-'}   finished {job.get('finished_at') or '-'}   kind {report.get('kind', 'cells')}")
    line(f"Model {report['model']}   images {report['n_images']}, classified {report['n_classified']}, failed {report['n_failed']}")
    if report.get("serving"):
        line(f"Read as: {report['serving']}", 9)
    review = report.get("review") or {"n_reviewed": 0, "n_changed": 0}
    line(f"White cells counted {report['white_cell_total']}   low confidence (< {report['low_confidence_threshold']:g}) "
         f"{report['n_low_confidence']}   reviewed {review['n_reviewed']}, changed by review {review['n_changed']}")
    check = report.get("domain_check") or {}
    if check:
        line(f"Domain check {check.get('status')}" + (f": {'; '.join(check.get('reasons') or [])}"[:120] if check.get("status") == "shifted" else "")
             + (f"   no white cell found in {report['n_no_cell_found']} images" if report.get("n_no_cell_found") else ""))
    for warning in report.get("warnings", []):
        c.setFillColorRGB(0.6, 0.1, 0.0)
        line(f"Warning: {warning}", 9.5, True)
    y -= 6
    cols = [MARGIN, MARGIN + 120, MARGIN + 175, MARGIN + 230, MARGIN + 330, MARGIN + 420]
    refs = (report.get("reference_intervals") or {}).get("by_type", {})
    c.setFont("Helvetica-Bold", 9.5)
    for x, head in zip(cols, ("cell type", "count", "%", "95 % CI (%)", "reference (%)", "flag"), strict=True):
        c.drawString(x, y, head)
    y -= 4
    c.line(MARGIN, y, width - MARGIN, y)
    y -= 12
    c.setFont("Helvetica", 9.5)
    for row in report["differential"]:
        ref = refs.get(row["cell_type"], {})
        values = (row["cell_type"], str(row["count"]), f"{row['percent']:.1f}", f"{row['ci95_low']:.1f} - {row['ci95_high']:.1f}",
                  _fmt_interval(ref), (ref.get("flag") or "").upper())
        for x, value in zip(cols, values, strict=True):
            c.drawString(x, y, value)
        y -= 13
    if report.get("erythroblasts") is not None:
        line(f"Erythroblasts (nucleated red cells): {report['erythroblasts']['count']} "
             f"({report['erythroblasts']['per_100_wbc']:.1f} per 100 white cells)")
    if report.get("platelets") is not None:
        line(f"Platelets (counted apart): {report['platelets']['count']}")
    y -= 4
    chart = chart_shapes(report["differential"], refs)
    scale = (width - 2 * MARGIN) / chart.width
    y -= _draw_chart(c, chart, MARGIN, y, scale) + 8
    slides = report.get("slides") or []
    if slides:
        line("Per slide: white cells counted, then % neutrophil / lymphocyte / monocyte / eosinophil", 9.5, True)
        fit = max(0, int((y - MARGIN - 70) // 12))
        for s in slides[:fit]:
            pct = {r["cell_type"]: r["percent"] for r in s["differential"]}
            shifted = (s.get("domain_check") or {}).get("status") == "shifted"
            line(f"{s['slide'][:48]}: {s['white_cell_total']} WBC; "
                 + " / ".join(f"{pct.get(k, 0):.1f}" for k in ("neutrophil", "lymphocyte", "monocyte", "eosinophil"))
                 + ("   domain shifted" if shifted else ""), 8.5, gap=12)
        if len(slides) > fit:
            line(f"... {len(slides) - fit} more slides in the CSV report", 8.5)
    y = MARGIN + 44
    signoff = report.get("signoff")
    when = signoff["signed_at"][:16].replace("T", " ") + " UTC" if signoff else ""
    line(f"Signed off by {signoff['reviewer']} at {when}" if signoff else "Not signed off: preliminary report", 10.5, True)
    source = (report.get("reference_intervals") or {}).get("source", "")
    line(f"Reference intervals: {source}"[:150], 7.5, gap=10)
    line("HematoVision is not a medical device; results need review by a qualified person.", 7.5, gap=10)
    c.showPage()
    c.save()
    return buf.getvalue()
