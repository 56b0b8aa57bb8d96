"""All reads and writes the API and workers need, as plain functions over a Session.

Writes that a retried task may repeat are idempotent: predictions are upserted
on (job, image), and a job is finalized by a conditional UPDATE that only one
worker can win.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Image, ImageStatus, Job, JobStatus, JobSummary, Prediction, utcnow


@dataclass(frozen=True)
class NewImage:
    """An accepted file: where it is stored, or why it was refused at intake."""

    seq: int
    path: str
    storage_key: str | None
    error: str | None = None


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed


@dataclass(frozen=True)
class ResultRow:
    """One image's outcome, as written by a worker."""

    image_id: int
    label: str | None
    confidence: float | None
    probabilities: dict | None
    error: str | None


def create_job(session: Session, job_id: str, source: str, name: str | None, batch_size: int, images: list[NewImage],
               model_name: str | None, model_version: str | None) -> Job:
    job = Job(id=job_id, status=JobStatus.QUEUED, kind="cells", source=source, name=name, images_total=len(images),
              batch_size=batch_size, model_name=model_name, model_version=model_version, created_at=utcnow())
    session.add(job)
    session.flush()
    session.add_all(
        Image(job_id=job_id, seq=i.seq, path=i.path, storage_key=i.storage_key,
              status=ImageStatus.FAILED if i.error else ImageStatus.PENDING, error=i.error)
        for i in images
    )
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, limit: int, offset: int) -> tuple[list[Job], int]:
    total = session.scalar(select(func.count()).select_from(Job)) or 0
    jobs = session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(jobs), total


def progress(session: Session, job_id: str) -> Progress:
    rows = session.execute(select(Image.status, func.count()).where(Image.job_id == job_id).group_by(Image.status)).all()
    counts = dict(rows)
    total = sum(counts.values())
    return Progress(total=total, done=counts.get(ImageStatus.DONE, 0), failed=counts.get(ImageStatus.FAILED, 0))


def pending_image_ids(session: Session, job_id: str) -> list[int]:
    stmt = select(Image.id).where(Image.job_id == job_id, Image.status == ImageStatus.PENDING).order_by(Image.seq)
    return list(session.scalars(stmt))


def images_for_batch(session: Session, job_id: str, image_ids: Iterable[int]) -> list[Image]:
    """The still-pending images of a batch (a retried batch skips what is done)."""
    stmt = select(Image).where(Image.job_id == job_id, Image.id.in_(list(image_ids)), Image.status == ImageStatus.PENDING)
    return list(session.scalars(stmt.order_by(Image.seq)))


def mark_running(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(status=JobStatus.RUNNING, started_at=utcnow()))


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def record_results(session: Session, job_id: str, rows: list[ResultRow], model_version: str) -> None:
    """Upsert predictions keyed by (job, image) and set each image's status."""
    ok = [r for r in rows if r.error is None]
    if ok:
        insert = _insert(session)
        stmt = insert(Prediction).values([
            {"job_id": job_id, "image_id": r.image_id, "label": r.label, "confidence": r.confidence,
             "probabilities": r.probabilities, "model_version": model_version, "created_at": utcnow()}
            for r in ok
        ])
        stmt = stmt.on_conflict_do_update(
            index_elements=["job_id", "image_id"],
            set_={"label": stmt.excluded.label, "confidence": stmt.excluded.confidence,
                  "probabilities": stmt.excluded.probabilities, "model_version": stmt.excluded.model_version},
        )
        session.execute(stmt)
        session.execute(update(Image).where(Image.job_id == job_id, Image.id.in_([r.image_id for r in ok]))
                        .values(status=ImageStatus.DONE, error=None))
    for r in rows:
        if r.error is not None:
            session.execute(update(Image).where(Image.job_id == job_id, Image.id == r.image_id)
                            .values(status=ImageStatus.FAILED, error=r.error))


def finalize_if_complete(session: Session, job_id: str, build_summary: Callable[[], dict]) -> bool:
    """If no image is pending, mark the job succeeded and store its summary; True for the one winner."""
    if progress(session, job_id).pending:
        return False
    won = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE)).values(status=JobStatus.SUCCEEDED, finished_at=utcnow())
    ).rowcount
    if won != 1:
        return False
    session.merge(JobSummary(job_id=job_id, report=build_summary(), created_at=utcnow()))
    return True


def fail_job(session: Session, job_id: str, error: str) -> None:
    session.execute(update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE))
                    .values(status=JobStatus.FAILED, error=error, finished_at=utcnow()))


def cancel_job(session: Session, job_id: str) -> bool:
    return session.execute(update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE))
                           .values(status=JobStatus.CANCELED, finished_at=utcnow())).rowcount == 1


def job_status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def results_page(session: Session, job_id: str, limit: int, offset: int) -> list[tuple[Image, Prediction | None]]:
    stmt = (select(Image, Prediction).outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.job_id == job_id))
            .where(Image.job_id == job_id).order_by(Image.seq).limit(limit).offset(offset))
    return [(img, pred) for img, pred in session.execute(stmt).all()]


def all_outcomes(session: Session, job_id: str) -> list[tuple[str, str | None, float | None, str | None]]:
    """(path, label, confidence, error) of every image of a job, for the report."""
    stmt = (select(Image.path, Prediction.label, Prediction.confidence, Image.error)
            .outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.job_id == job_id))
            .where(Image.job_id == job_id).order_by(Image.seq))
    return [tuple(r) for r in session.execute(stmt).all()]


def get_summary(session: Session, job_id: str) -> dict | None:
    summary = session.get(JobSummary, job_id)
    return summary.report if summary else None
