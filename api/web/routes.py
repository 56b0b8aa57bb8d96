"""Page routes: upload, jobs list, job page with its report, downloads, login. Cells and reviews are in ``cells``."""

from __future__ import annotations

import csv
import io
import json

from flask import Blueprint, Response, abort, g, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from api import reporting
from api.auth import caller
from api.errors import ApiError, _code, error_response
from api.jobs import _batch_size, _name, _uploaded_items
from api.state import state
from api.submission import BrokerUnavailable, NothingUsable, accept_job
from api.views import job_json
from api.web import auth
from db import repository as repo
from db.models import JobStatus
from pipeline.chart import chart_shapes, to_svg
from pipeline.intake import IntakeError
from pipeline.slides import summary_csv

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static/web")
JOBS_PER_PAGE = 20


@bp.record_once
def _setup(setup_state) -> None:
    auth.configure(setup_state.app, setup_state.app.extensions["hematovision"].settings)


@bp.before_request
def _guard():
    tokens = state().tokens
    if request.endpoint not in auth.OPEN_ENDPOINTS and not auth.logged_in(tokens):
        if wants_json():
            raise ApiError(401, "log in first")
        return redirect(url_for("web.login", next=request.full_path.rstrip("?")))
    auth.check_csrf(tokens)
    g.caller = auth.session_caller(tokens)  # the pages see what this token's API calls would see
    return None


@bp.app_context_processor
def _globals() -> dict:
    tokens = state().tokens
    return {"csrf_token": auth.csrf_token(tokens), "login_enabled": bool(tokens),
            "chart_svg": lambda rows, ref: to_svg(chart_shapes(rows, ref))}


@bp.errorhandler(HTTPException)
def _page_error(exc: HTTPException):
    message = exc.description or exc.name
    if exc.code == 413:
        message = f"the upload is larger than the limit of {state().settings.max_upload_bytes // (1024 * 1024)} MB: split it into several jobs"
    if wants_json():
        return error_response(exc.code or 500, _code(exc.code or 500), message)
    return render_template("error.html", code=exc.code, message=message), exc.code or 500


def local_url(target: str | None, default: str) -> str:
    """``target`` when it is a path on this site, else ``default``: form fields never redirect elsewhere."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json" or request.headers.get("X-Requested-With") == "fetch"


def job_or_404(session, job_id: str):
    job = repo.get_job(session, job_id)
    if job is None or not caller().may_see(job.owner):
        abort(404, f"there is no job {job_id}")
    return job


@bp.route("/login", methods=["GET", "POST"])
def login():
    tokens = state().tokens
    target = local_url(request.values.get("next"), url_for("web.upload_page"))
    if not tokens:
        return redirect(target)
    error = None
    if request.method == "POST":
        who = auth.token_caller(tokens, request.form.get("token", ""))
        if who is not None:
            auth.log_in(who)
            return redirect(target, 303)
        error = "That token is not right."
    return render_template("login.html", error=error, next=target), 401 if error else 200


@bp.post("/logout")
def logout():
    from flask import session

    session.clear()
    return redirect(url_for("web.login"), 303)


@bp.get("/")
def upload_page():
    return render_template("upload.html", limits=state().settings, error=None)


@bp.post("/upload")
def upload():
    """The upload form (multipart ``files`` with relative paths, or one .zip); JSON for the page's script, else a redirect."""
    st = state()
    try:
        if not request.files:
            raise ApiError(400, "choose a folder, some images or a .zip first")
        job_id = accept_job(st, _uploaded_items(), "upload", _name(request.form.get("name")), _batch_size(request.form.get("batch_size")),
                            request.form.get("kind") or "auto", owner=caller().name)
    except NothingUsable as exc:
        error = ApiError(422, str(exc), files=exc.files)
    except IntakeError as exc:
        error = ApiError(400, str(exc))
    except BrokerUnavailable as exc:
        error = ApiError(503, str(exc), job_id=exc.job_id)
    except ApiError as exc:
        error = exc
    else:
        location = url_for("web.job_page", job_id=job_id)
        return (jsonify({"job_id": job_id, "location": location}), 201) if wants_json() else redirect(location, 303)
    if wants_json():
        raise error
    return render_template("upload.html", limits=st.settings, error=error.message), error.http_status


def _job_rows(page: int) -> tuple[list[dict], int]:
    with state().db.session() as session:
        who = caller()
        jobs, total = repo.list_jobs(session, JOBS_PER_PAGE, (page - 1) * JOBS_PER_PAGE, owner=None if who.admin else who.name)
        return [job_json(j, repo.Progress.of(j)) for j in jobs], total


@bp.get("/jobs")
def jobs_page():
    page = request.args.get("page", 1, type=int) or 1
    page = max(page, 1)
    rows, total = _job_rows(page)
    pages = max(1, -(-total // JOBS_PER_PAGE))
    template = "_job_rows.html" if request.args.get("fragment") else "jobs.html"
    return render_template(template, jobs=rows, page=page, pages=pages, total=total, active=JobStatus.ACTIVE)


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    with state().db.session() as session, session.begin():
        job_or_404(session, job_id)
        repo.cancel_job(session, job_id)
    return redirect(local_url(request.form.get("back"), url_for("web.job_page", job_id=job_id)), 303)


@bp.get("/jobs/<job_id>/progress.json")
def job_progress(job_id: str):
    with state().db.session() as session:
        job = job_or_404(session, job_id)
        return jsonify(job_json(job, repo.Progress.of(job)))


def _report_or_none(session, job) -> dict | None:
    try:
        return reporting.current_report(session, job, state().settings)
    except reporting.ReportNotReady:
        return None


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    with state().db.session() as session:
        job = job_or_404(session, job_id)
        info = job_json(job, repo.Progress.of(job))
        report = _report_or_none(session, job)
    return render_template("job.html", job=info, report=report, active=JobStatus.ACTIVE)


@bp.get("/jobs/<job_id>/report.<fmt>")
def download(job_id: str, fmt: str):
    """report.json, report.csv and report.pdf of the reviewed report (the API's report, reachable with the page's session)."""
    st = state()
    with st.db.session() as session:
        job = job_or_404(session, job_id)
        report = _report_or_none(session, job)
        if report is None:
            abort(409, f"job is {job.status}: its report exists once it has succeeded")
        if fmt == "json":
            body, mime = json.dumps(report, indent=2), "application/json"
        elif fmt == "csv":
            body, mime = summary_csv(report), "text/csv"
        elif fmt == "pdf":
            body, mime = reporting.pdf_of(job, report), "application/pdf"
        else:
            abort(404, "downloads are report.json, report.csv, report.pdf and results.csv")
    name = f"hematovision-{job_id}.{fmt}"
    return Response(body, mimetype=mime, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/jobs/<job_id>/results.csv")
def results_csv(job_id: str):
    """One row per classified cell (model label, reviewed label, confidence) and per failed image."""
    from db import reviews as rv

    with state().db.session() as session:
        job = job_or_404(session, job_id)
        out = rv.reviewed_outcomes(session, job_id, job.kind)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["seq", "path", "cell", "model_label", "label", "reviewed", "confidence", "white_cell_found", "error"])
    for c in out.cells:
        writer.writerow([c.seq, c.path, "" if c.idx is None else c.idx, c.model_label, c.label, int(c.reviewed), f"{c.confidence:.4f}",
                         int(c.cell_found), ""])
    for path, error in out.failed.items():
        writer.writerow(["", path, "", "", "", "", "", "", error])
    return Response(buf.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="hematovision-{job_id}-results.csv"'})


from api.web import cells  # noqa: E402,F401  (registers the gallery and review routes on bp)
