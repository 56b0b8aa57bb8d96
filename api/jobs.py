"""Job routes under ``/api/v1``: submit, list, status, results, report, cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request, url_for

from api import reporting
from api.auth import NotAuthenticated, authenticate, caller
from api.errors import ApiError
from api.state import state
from api.submission import accept_job
from api.views import job_json, result_json
from db import repository as repo
from db.models import JobStatus
from pipeline.intake import IntakeError, Limits, check_text, clean_relative_path, iter_folder, iter_zip, resolve_allowed_folder
from pipeline.settings import MAX_BATCH_SIZE
from pipeline.slides import summary_csv

bp = Blueprint("jobs", __name__, url_prefix="/api/v1")


@bp.before_request
def require_token():
    """With tokens configured, every job route needs ``Authorization: Bearer <token>``; the caller is kept for the route."""
    try:
        authenticate(state().tokens)
    except NotAuthenticated:
        raise ApiError(401, "missing or wrong API token (send 'Authorization: Bearer <token>')") from None


def _limits() -> Limits:
    s = state().settings
    return Limits(max_total_bytes=s.max_upload_bytes, max_file_bytes=s.max_image_bytes, max_files=s.max_images_per_job)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"query parameter {name!r} must be between {low} and {high}")
    return value


def _uploaded_items() -> Iterator[tuple[str, bytes]]:
    """Files from a multipart upload; a lone .zip is expanded safely."""
    files = request.files.getlist("files") + request.files.getlist("file")
    limits = _limits()
    if len(files) == 1 and (files[0].filename or "").lower().endswith(".zip"):
        yield from iter_zip(files[0].stream, limits)
        return
    for storage in files:
        relpath = clean_relative_path(storage.filename or "")
        data = storage.stream.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:
            raise IntakeError(f"{relpath} is over the per-image limit of {limits.max_file_bytes} bytes")
        yield relpath, data


def _batch_size(raw) -> int | None:
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, "batch_size must be an integer") from None
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise ApiError(400, f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
    return value


def _json_body() -> dict:
    """The JSON body, size-capped before reading and parsed without letting deep nesting reach the server's stack."""
    limit = state().settings.max_json_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"JSON body is larger than the limit of {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"JSON body is larger than the limit of {limit} bytes")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "JSON body is nested too deeply") from None
    except ValueError:
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("folder"), str):
        raise ApiError(400, 'JSON submissions must look like {"folder": "relative/or/absolute/path"}')
    return body


def _name(raw) -> str | None:
    if raw in (None, ""):
        return None
    if not isinstance(raw, str):
        raise ApiError(400, "name must be a string")
    return check_text("name", raw, state().settings.max_name_length)


@bp.post("/jobs")
def submit_job():
    st = state()
    if request.is_json:
        body = _json_body()
        source, name, batch, kind = "folder", body.get("name"), body.get("batch_size"), body.get("kind") or "auto"
    elif request.files:
        source, name, batch, kind = "upload", request.form.get("name"), request.form.get("batch_size"), request.form.get("kind") or "auto"
    else:
        raise ApiError(400, "send files as multipart 'files' (or one .zip), or JSON {\"folder\": ...}")
    if not isinstance(kind, str):
        raise ApiError(400, "kind must be a string")
    name, batch = _name(name), _batch_size(batch)
    if source == "folder":
        items = iter_folder(resolve_allowed_folder(body["folder"], st.settings.allowed_folder_root), _limits())
    else:
        items = _uploaded_items()
    job_id = accept_job(st, items, source, name, batch, kind, owner=caller().name)
    with st.db.session() as session:
        body = job_json(repo.get_job(session, job_id), repo.progress(session, job_id))
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return response


def _job_or_404(session, job_id: str):
    """The job, if it exists and the caller may see it (another owner's job is as good as absent)."""
    job = repo.get_job(session, job_id)
    if job is None or not caller().may_see(job.owner):
        raise ApiError(404, f"no job with id {job_id!r}")
    return job


@bp.get("/jobs")
def list_jobs():
    limit = _int_arg("limit", 20, 1, 200)
    offset = _int_arg("offset", 0, 0, 10**9)
    with state().db.session() as session:
        who = caller()
        jobs, total = repo.list_jobs(session, limit, offset, owner=None if who.admin else who.name)
        items = [job_json(j, repo.Progress.of(j)) for j in jobs]
    return jsonify({"items": items, "total": total, "limit": limit, "offset": offset})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    with state().db.session() as session:
        job = _job_or_404(session, job_id)
        return jsonify(job_json(job, repo.Progress.of(job)))


@bp.get("/jobs/<job_id>/results")
def get_results(job_id: str):
    limit = _int_arg("limit", state().settings.page_size, 1, 1000)
    offset = _int_arg("offset", 0, 0, 10**9)
    with state().db.session() as session:
        job = _job_or_404(session, job_id)
        rows = repo.results_page(session, job_id, limit, offset)
        cells = repo.cells_of_images(session, job_id, [img.id for img, _ in rows]) if job.kind == "fields" else None
        items = [result_json(img, pred, cells[img.id] if cells is not None else None) for img, pred in rows]
        total = job.images_total
    return jsonify({"items": items, "total": total, "limit": limit, "offset": offset})


@bp.get("/jobs/<job_id>/report")
def get_report(job_id: str):
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv", "pdf"):
        raise ApiError(400, "format must be 'json', 'csv' or 'pdf'")
    st = state()
    with st.db.session() as session:
        job = _job_or_404(session, job_id)
        try:  # the differential over reviewed labels, with review counts, sign-off and reference flags
            summary = reporting.current_report(session, job, st.settings)
            pdf = reporting.pdf_of(job, summary) if fmt == "pdf" else None
        except reporting.ReportNotReady as exc:
            raise ApiError(409, str(exc), status=exc.status) from None
    if fmt == "json":
        return jsonify(summary)
    if pdf is not None:
        return Response(pdf, mimetype="application/pdf",
                        headers={"Content-Disposition": f'attachment; filename="hematovision-{job_id}.pdf"'})
    return Response(summary_csv(summary), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="hematovision-{job_id}.csv"'})


@bp.get("/jobs/<job_id>/images/<int:seq>/cells/<int:idx>/thumbnail.jpg")
def cell_thumbnail(job_id: str, seq: int, idx: int):
    """The crop thumbnail of one white cell found in a field image ("fields" jobs)."""
    st = state()
    with st.db.session() as session:
        _job_or_404(session, job_id)
        key = repo.cell_thumbnail_key(session, job_id, seq, idx)
    if key is None:
        raise ApiError(404, f"no cell {idx} in image {seq} of job {job_id}")
    try:
        data = st.store.get(key)
    except OSError:
        raise ApiError(404, "the thumbnail file is missing from storage") from None
    return Response(data, mimetype="image/jpeg")


@bp.post("/jobs/<job_id>/enqueue")
def enqueue(job_id: str):
    """Send an active job to the workers again (after a 503 at submission, or a broker that lost its messages).

    Only batches not in flight are re-sent: a batch held by a live worker's lease is left alone, and a
    duplicate of a queued batch is refused at its claim. The reaper does the same on its own.
    """
    st = state()
    with st.db.session() as session:
        job = _job_or_404(session, job_id)
        if job.status not in JobStatus.ACTIVE:
            raise ApiError(409, f"job is already {job.status}", status=job.status)
    try:
        st.enqueue_job(job_id, resend_queued=True)
    except Exception as exc:
        raise ApiError(503, f"the broker is unreachable: {exc.__class__.__name__}", job_id=job_id) from None
    with st.db.session() as session:
        body = job_json(repo.get_job(session, job_id), repo.progress(session, job_id))
    return jsonify(body), 202


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    with state().db.session() as session, session.begin():
        job = _job_or_404(session, job_id)
        if not repo.cancel_job(session, job_id):
            raise ApiError(409, f"job is already {job.status}", status=job.status)
    with state().db.session() as session:
        return jsonify(job_json(repo.get_job(session, job_id), repo.progress(session, job_id)))

