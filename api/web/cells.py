"""Cell gallery, review and sign-off pages, and the images they show."""

from __future__ import annotations

import mimetypes
from urllib.parse import urlencode

from flask import Response, abort, jsonify, redirect, render_template, request, url_for

from api import reporting
from api.reviews import refused
from api.state import state
from api.web.gallery import CellFilter, select_cells, slides_of, top_classes
from api.web.routes import bp, job_or_404, local_url, wants_json
from db import reviews as rv
from db.models import JobStatus
from pipeline.overlay import draw_box

CELLS_PER_PAGE = 48
REVIEWER_COOKIE = "hv_reviewer"


def _float_arg(name: str, default: float) -> float:
    value = request.args.get(name, type=float)
    return default if value is None else min(max(value, 0.0), 1.0)


def _cells_page(job_id: str, review: bool):
    st = state()
    flt = CellFilter(label=request.args.get("label", ""), slide=request.args.get("slide", ""),
                     max_confidence=_float_arg("max", 1.0), min_confidence=_float_arg("min", 0.0), review_order=review)
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    with st.db.session() as session:
        job = job_or_404(session, job_id)
        if job.status != JobStatus.SUCCEEDED:
            return redirect(url_for("web.job_page", job_id=job_id))
        outcomes = rv.reviewed_outcomes(session, job_id, job.kind)
        report = reporting.current_report(session, job, st.settings, outcomes)
        classes = reporting.job_classes(session, job)
        cells = outcomes.cells
        kind, name = job.kind, job.name
    chosen = select_cells(cells, flt, classes)
    pages = max(1, -(-len(chosen) // CELLS_PER_PAGE))
    shown = chosen[(page - 1) * CELLS_PER_PAGE : page * CELLS_PER_PAGE]
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("cells.html", job_id=job_id, job_name=name, kind=kind, review=review, report=report, classes=classes,
                           cells=[(c, top_classes(c)) for c in shown], total=len(chosen), page=page, pages=pages, flt=flt,
                           slides=slides_of(cells), query=urlencode(args), reviewer=request.cookies.get(REVIEWER_COOKIE, ""),
                           locked=report.get("signoff") is not None)


@bp.get("/jobs/<job_id>/cells")
def gallery(job_id: str):
    return _cells_page(job_id, review=False)


@bp.get("/jobs/<job_id>/review")
def review_page(job_id: str):
    return _cells_page(job_id, review=True)


def _answer(job_id: str, reviewer: str, back: str, payload: dict | None = None, error: str | None = None, status: int = 200):
    """JSON for the page's script; otherwise back to the page (PRG), carrying an error message if any."""
    if wants_json():
        body = {"error": {"message": error}} if error else payload
        response = jsonify(body)
        response.status_code = status
    else:
        back = local_url(back, url_for("web.job_page", job_id=job_id))
        if error:
            back += ("&" if "?" in back else "?") + urlencode({"error": error})
        response = redirect(back, 303)
    if reviewer and not error:
        response.set_cookie(REVIEWER_COOKIE, reviewer, max_age=30 * 86400, httponly=True, samesite="Lax")
    return response


@bp.post("/jobs/<job_id>/review")
def review(job_id: str):
    """Form fields ``seq``, ``cell`` (index in a field, or empty), ``label``, ``reviewer``."""
    st = state()
    reviewer, back = request.form.get("reviewer", "").strip(), request.form.get("back", "")
    seq = request.form.get("seq", type=int)
    cell = request.form.get("cell", type=int)
    if seq is None:
        return _answer(job_id, reviewer, back, error="the form names no cell", status=400)
    try:
        with st.db.session() as session, session.begin():
            job = job_or_404(session, job_id)
            row = reporting.review(session, job, seq, cell, request.form.get("label", ""), reviewer)
            old, new = row.old_label, row.new_label
        with st.db.session() as session:
            report = reporting.current_report(session, job_or_404(session, job_id), st.settings)
    except (reporting.ReportNotReady, reporting.ReviewRefused, rv.ReviewError) as exc:
        err = refused(exc)
        return _answer(job_id, reviewer, back, error=err.message, status=err.http_status)
    payload = {"seq": seq, "cell": cell, "old_label": old, "label": new, "review": report["review"],
               "white_cell_total": report["white_cell_total"],
               "differential": {r["cell_type"]: {"count": r["count"], "percent": round(r["percent"], 1)} for r in report["differential"]}}
    return _answer(job_id, reviewer, back, payload)


@bp.post("/jobs/<job_id>/signoff")
def signoff(job_id: str):
    st = state()
    reviewer = request.form.get("reviewer", "").strip()
    back = url_for("web.job_page", job_id=job_id)
    try:
        with st.db.session() as session, session.begin():
            reporting.sign_off(session, job_or_404(session, job_id), reviewer)
    except (reporting.ReportNotReady, reporting.ReviewRefused, rv.ReviewError) as exc:
        err = refused(exc)
        return _answer(job_id, reviewer, back, error=err.message, status=err.http_status)
    return _answer(job_id, reviewer, back, {"signed_off": True})


def _stored(key: str | None) -> bytes:
    if key is None:
        abort(404, "no such image in this job")
    try:
        return state().store.get(key)
    except (OSError, ValueError):
        abort(404, "the image file is missing from storage")


@bp.get("/jobs/<job_id>/images/<int:seq>")
def image(job_id: str, seq: int):
    """A stored cell or field image; ``?box=<cell index>`` outlines that cell on its field."""
    with state().db.session() as session:
        job_or_404(session, job_id)
        key = rv.image_key(session, job_id, seq)
        box_idx = request.args.get("box", type=int)
        box = rv.cell_box(session, job_id, seq, box_idx) if box_idx is not None else None
    data = _stored(key)
    if box_idx is not None:
        if box is None:
            abort(404, f"image {seq} has no cell {box_idx}")
        return Response(draw_box(data, box), mimetype="image/jpeg")
    mime = mimetypes.guess_type(key or "")[0] or "application/octet-stream"
    return Response(data, mimetype=mime, headers={"Cache-Control": "private, max-age=3600"})


@bp.get("/jobs/<job_id>/images/<int:seq>/cells/<int:idx>.jpg")
def cell_thumbnail(job_id: str, seq: int, idx: int):
    from db import repository as repo

    with state().db.session() as session:
        job_or_404(session, job_id)
        key = repo.cell_thumbnail_key(session, job_id, seq, idx)
    return Response(_stored(key), mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
