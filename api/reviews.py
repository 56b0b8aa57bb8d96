"""Review and sign-off routes under ``/api/v1/jobs/<id>`` (registered on the jobs blueprint, behind its token check)."""

from __future__ import annotations

from flask import jsonify, request

from api import reporting
from api.errors import ApiError
from api.jobs import _job_or_404, bp
from api.state import state
from db import reviews as rv


def review_json(row: rv.ReviewRow) -> dict:
    return {"id": row.id, "seq": row.seq, "cell": row.idx, "path": row.path, "old_label": row.old_label, "new_label": row.new_label,
            "reviewer": row.reviewer, "created_at": row.created_at.isoformat()}


def refused(exc: Exception) -> ApiError:
    """The one mapping of review errors to HTTP, shared with the pages' JSON answers."""
    if isinstance(exc, reporting.ReportNotReady):
        return ApiError(409, str(exc), status=exc.status)
    if isinstance(exc, rv.JobSignedOff):
        return ApiError(409, str(exc))
    if isinstance(exc, rv.CellNotFound):
        return ApiError(404, str(exc))
    return ApiError(400, str(exc))


@bp.get("/jobs/<job_id>/reviews")
def list_reviews(job_id: str):
    with state().db.session() as session:
        _job_or_404(session, job_id)
        items = [review_json(r) for r in rv.list_reviews(session, job_id)]
        signoff = rv.get_signoff(session, job_id)
    return jsonify({"items": items, "signoff": {"reviewer": signoff.reviewer, "signed_at": signoff.signed_at.isoformat()} if signoff else None})


def _int_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{name} must be an integer")
    return value


@bp.post("/jobs/<job_id>/reviews")
def add_review(job_id: str):
    """Body ``{"seq": 12, "cell": null, "label": "lymphocyte", "reviewer": "A. Smith"}`` (``cell``: index in a field)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or _int_or_none(body.get("seq"), "seq") is None:
        raise ApiError(400, 'send JSON {"seq": <image number>, "cell": <index in a field or null>, "label": ..., "reviewer": ...}')
    st = state()
    with st.db.session() as session, session.begin():
        job = _job_or_404(session, job_id)
        try:
            row = reporting.review(session, job, body["seq"], _int_or_none(body.get("cell"), "cell"), str(body.get("label", "")),
                                   str(body.get("reviewer", "")))
        except (reporting.ReportNotReady, reporting.ReviewRefused, rv.ReviewError) as exc:
            raise refused(exc) from None
        review_id = row.id
    with st.db.session() as session:
        created = next(r for r in rv.list_reviews(session, job_id) if r.id == review_id)
    return jsonify(review_json(created)), 201


@bp.post("/jobs/<job_id>/signoff")
def sign_off(job_id: str):
    """Body ``{"reviewer": "A. Smith"}``; locks the report (409 on a second sign-off)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'send JSON {"reviewer": "<name>"}')
    st = state()
    with st.db.session() as session, session.begin():
        job = _job_or_404(session, job_id)
        try:
            signoff = reporting.sign_off(session, job, str(body.get("reviewer", "")))
        except (reporting.ReportNotReady, reporting.ReviewRefused, rv.ReviewError) as exc:
            raise refused(exc) from None
        out = {"job_id": job_id, "reviewer": signoff.reviewer, "signed_at": signoff.signed_at.isoformat()}
    return jsonify(out), 201

