"""The report a person reads, and the reviews and sign-off that change it; shared by the API routes and the pages.

Raises domain errors (:class:`ReportNotReady`, :class:`ReviewRefused` and
``db.reviews``' errors); the routes map them to HTTP statuses or page messages.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db import repository as repo
from db import reviews as rv
from db.models import Job, JobStatus
from pipeline.pdf import report_pdf
from pipeline.reference import DEFAULT_INTERVALS, DEFAULT_SOURCE, parse_intervals
from pipeline.review import annotate, classes_of, recount
from pipeline.settings import Settings

MAX_REVIEWER = 128


class ReportNotReady(Exception):
    """The job has no report (yet): it has not succeeded, or its summary is missing."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class ReviewRefused(ValueError):
    """A review or sign-off with bad content (unknown class, no reviewer name)."""


def _stored(session: Session, job: Job) -> dict:
    if job.status != JobStatus.SUCCEEDED:
        raise ReportNotReady(f"job is {job.status}; the report exists once it has succeeded", job.status)
    summary = repo.get_summary(session, job.id)
    if summary is None:
        raise ReportNotReady("job has no stored summary", job.status)
    return summary


def current_report(session: Session, job: Job, settings: Settings, outcomes: rv.ReviewedOutcomes | None = None) -> dict:
    """The stored differential recounted over reviewed labels, with review counts, sign-off, reference flags and warnings.

    ``outcomes``: the job's reviewed outcomes when the caller has them already (the gallery does).
    """
    summary = _stored(session, job)
    n_reviewed = n_changed = 0
    if rv.has_reviews(session, job.id):
        out = outcomes or rv.reviewed_outcomes(session, job.id, job.kind, probabilities=False)
        summary = recount(summary, [(c.path, c.idx, c.label, c.confidence, c.cell_found) for c in out.cells], out.failed, out.paths)
        n_reviewed = sum(c.reviewed for c in out.cells)
        n_changed = sum(c.changed for c in out.cells)
    signoff = rv.get_signoff(session, job.id)
    signed = {"reviewer": signoff.reviewer, "signed_at": signoff.signed_at.isoformat()} if signoff else None
    intervals = parse_intervals(settings.reference_intervals or DEFAULT_INTERVALS)
    return annotate(summary, n_reviewed, n_changed, signed, intervals, settings.reference_source or DEFAULT_SOURCE)


def job_classes(session: Session, job: Job) -> tuple[str, ...]:
    """Every class a reviewer may choose for this job's cells (those its model reported)."""
    return classes_of(_stored(session, job))[0]


def review(session: Session, job: Job, seq: int, idx: int | None, label: str, reviewer: str) -> rv.Review:
    """Record a review after checking the label and the reviewer; raises ReviewRefused, ReportNotReady or db errors."""
    classes = job_classes(session, job)
    if label not in classes:
        raise ReviewRefused(f"label must be one of {', '.join(classes)}")
    return rv.add_review(session, job.id, seq, idx, label, _reviewer(reviewer))


def sign_off(session: Session, job: Job, reviewer: str) -> rv.Signoff:
    _stored(session, job)
    return rv.sign_off(session, job.id, _reviewer(reviewer))


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_REVIEWER:
        raise ReviewRefused(f"give the reviewer's name (1 to {MAX_REVIEWER} characters)")
    return name


def pdf_of(job: Job, report: dict) -> bytes:
    """The one-page PDF of ``report`` (from :func:`current_report`)."""
    created = job.created_at.strftime("%Y-%m-%d %H:%M UTC") if job.created_at else None
    finished = job.finished_at.strftime("%Y-%m-%d %H:%M UTC") if job.finished_at else None
    return report_pdf({"id": job.id, "name": job.name, "created_at": created, "finished_at": finished}, report)
