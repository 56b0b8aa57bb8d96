"""All reads and writes the API and workers need, as plain functions over a Session.

Writes that a retried task may repeat are idempotent: predictions are upserted
on (job, image), and a job is finalized by a conditional UPDATE that only one
worker can win.

Progress is counters on the job row: every function that moves images out of
``pending`` adds exactly the number of rows its UPDATE moved, in the caller's
transaction, so status, the jobs list and finalisation read one row whatever
the size of the job. Nothing else may change ``Image.status``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Cell, ErrorCode, Image, ImageStatus, Job, JobStatus, JobSummary, Prediction, utcnow


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

    @classmethod
    def of(cls, job: Job) -> Progress:
        """The job's counters, already loaded with the job row (no query)."""
        return cls(total=job.images_total, done=job.images_done, failed=job.images_failed)


@dataclass(frozen=True)
class ResultRow:
    """One image's outcome, as written by a worker."""

    image_id: int
    label: str | None
    confidence: float | None
    probabilities: dict | None
    error: str | None
    cell_found: bool = True
    ood_score: float | None = None
    code: str | None = None  # reason code of a failure (default ErrorCode.BAD_IMAGE)
    stain_od: tuple[float, float, float] | None = None  # red-cell stain signature (pipeline.stain_check)
    red_cell_px: float | None = None  # the red cells' diameter in the image's pixels (pipeline.stain_check.red_cell_signature)
    focus: float | None = None  # the model crop's blur effect (pipeline.focus_check)


def create_job(session: Session, job_id: str, source: str, name: str | None, batch_size: int, images: list[NewImage],
               kind: str = "cells", kind_source: str = "client", owner: str | None = None) -> Job:
    job = Job(id=job_id, status=JobStatus.QUEUED, kind=kind, kind_source=kind_source, source=source, name=name,
              images_total=len(images), images_done=0, images_failed=sum(1 for i in images if i.error),
              batch_size=batch_size, created_at=utcnow(), owner=owner)
    session.add(job)
    session.flush()
    session.add_all(
        Image(job_id=job_id, seq=i.seq, path=i.path, storage_key=i.storage_key,
              status=ImageStatus.FAILED if i.error else ImageStatus.PENDING, error=i.error,
              error_code=ErrorCode.BAD_IMAGE if i.error else None)
        for i in images
    )
    return job


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(session: Session, limit: int, offset: int, owner: str | None = None) -> tuple[list[Job], int]:
    """A page of jobs, newest first (only ``owner``'s when given), and how many there are, in one query
    (progress is on each row)."""
    where = [Job.owner == owner] if owner is not None else []
    stmt = select(Job, func.count().over()).where(*where).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
    rows = session.execute(stmt).all()
    if rows:
        return [job for job, _ in rows], rows[0][1]
    if offset == 0:
        return [], 0
    return [], session.scalar(select(func.count()).select_from(Job).where(*where)) or 0  # a page past the end: the only second query


def progress(session: Session, job_id: str) -> Progress:
    """The job's counters (one primary-key read); a job that does not exist has none."""
    row = session.execute(select(Job.images_total, Job.images_done, Job.images_failed).where(Job.id == job_id)).one_or_none()
    return Progress(*row) if row else Progress(0, 0, 0)


def counted_progress(session: Session, job_id: str) -> Progress:
    """Progress recounted from the image rows: what the counters must always equal (tests, audits)."""
    counts = dict(session.execute(select(Image.status, func.count()).where(Image.job_id == job_id).group_by(Image.status)).all())
    return Progress(total=sum(counts.values()), done=counts.get(ImageStatus.DONE, 0), failed=counts.get(ImageStatus.FAILED, 0))


def pending_image_ids(session: Session, job_id: str) -> list[int]:
    stmt = select(Image.id).where(Image.job_id == job_id, Image.status == ImageStatus.PENDING).order_by(Image.seq)
    return list(session.scalars(stmt))


def images_for_batch(session: Session, job_id: str, image_ids: Iterable[int]) -> list[Image]:
    """The still-pending images of a batch (a retried batch skips what is done)."""
    stmt = select(Image).where(Image.job_id == job_id, Image.id.in_(list(image_ids)), Image.status == ImageStatus.PENDING)
    return list(session.scalars(stmt.order_by(Image.seq)))


def mark_running(session: Session, job_id: str, model_name: str | None = None, model_version: str | None = None) -> None:
    """queued -> running (once), and record which model serves the job."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(status=JobStatus.RUNNING, started_at=utcnow()))
    if model_name:
        session.execute(update(Job).where(Job.id == job_id).values(model_name=model_name, model_version=model_version))


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _json_od(od: tuple[float, float, float] | None) -> list[float] | None:
    """A stain signature as its JSON column stores it (a list)."""
    return None if od is None else [float(v) for v in od]


def _stored_od(value: list | None) -> tuple[float, float, float] | None:
    """A stored stain signature as the tuple ``pipeline.stain_check`` writes; None where not measured."""
    return None if value is None else tuple(value)  # type: ignore[return-value]


def _leave_pending(session: Session, job_id: str, image_ids: list[int], status: str, error: str | None, code: str | None = None) -> int:
    """Move still-pending images to ``status``; returns how many really moved (0 for a repeat)."""
    if not image_ids:
        return 0
    stmt = (update(Image).where(Image.job_id == job_id, Image.id.in_(image_ids), Image.status == ImageStatus.PENDING)
            .values(status=status, error=error, error_code=code))
    return session.execute(stmt).rowcount


def _count(session: Session, job_id: str, done: int, failed: int) -> None:
    """Add to the job's counters; last in a transaction, since it locks the job row until commit."""
    if done or failed:
        session.execute(update(Job).where(Job.id == job_id)
                        .values(images_done=Job.images_done + done, images_failed=Job.images_failed + failed))


def record_results(session: Session, job_id: str, rows: list[ResultRow], model_version: str) -> None:
    """Write one batch: every prediction in one INSERT ... ON CONFLICT upsert keyed by (job, image),
    image statuses in one UPDATE (plus one per distinct error), the job's counters in one UPDATE."""
    ok = [r for r in rows if r.error is None]
    if ok:
        insert = _insert(session)
        stmt = insert(Prediction).values([
            {"job_id": job_id, "image_id": r.image_id, "label": r.label, "confidence": r.confidence,
             "probabilities": r.probabilities, "model_version": model_version, "created_at": utcnow(),
             "cell_found": r.cell_found, "ood_score": r.ood_score, "stain_od": _json_od(r.stain_od),
             "red_cell_px": r.red_cell_px, "focus": r.focus}
            for r in ok
        ])
        stmt = stmt.on_conflict_do_update(
            index_elements=["job_id", "image_id"],
            set_={"label": stmt.excluded.label, "confidence": stmt.excluded.confidence,
                  "probabilities": stmt.excluded.probabilities, "model_version": stmt.excluded.model_version,
                  "cell_found": stmt.excluded.cell_found, "ood_score": stmt.excluded.ood_score,
                  "stain_od": stmt.excluded.stain_od, "red_cell_px": stmt.excluded.red_cell_px,
                  "focus": stmt.excluded.focus},
        )
        session.execute(stmt)
    done = _leave_pending(session, job_id, [r.image_id for r in ok], ImageStatus.DONE, None)
    by_error: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in rows:
        if r.error is not None:
            by_error[(r.error, r.code or ErrorCode.BAD_IMAGE)].append(r.image_id)
    failed = sum(_leave_pending(session, job_id, ids, ImageStatus.FAILED, error, code) for (error, code), ids in by_error.items())
    _count(session, job_id, done, failed)


def fail_pending_images(session: Session, job_id: str, image_ids: list[int], message: str, code: str) -> int:
    """Fail those of ``image_ids`` still pending (a timed-out or poison batch); returns how many moved."""
    moved = _leave_pending(session, job_id, image_ids, ImageStatus.FAILED, message, code)
    _count(session, job_id, 0, moved)
    return moved


def finalize_if_complete(session: Session, job_id: str, build_summary: Callable[[], dict]) -> bool:
    """If no image is pending, mark the job succeeded and store its summary; True for the one winner.

    The check reads the counters in the same conditional UPDATE, so it costs one
    row whatever the job's size; only the winner builds the summary (once per job).
    """
    complete = Job.images_done + Job.images_failed >= Job.images_total
    won = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE), complete).values(status=JobStatus.SUCCEEDED, finished_at=utcnow())
    ).rowcount
    if won != 1:
        return False
    session.merge(JobSummary(job_id=job_id, report=build_summary(), created_at=utcnow()))
    return True


def fail_job(session: Session, job_id: str, error: str, code: str = ErrorCode.INTERNAL) -> bool:
    """Mark an active job failed with a reason code and a safe message; True for the one winner."""
    return session.execute(update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE))
                           .values(status=JobStatus.FAILED, error=error, error_code=code, finished_at=utcnow())).rowcount == 1


def failure_codes(session: Session, job_id: str) -> dict[str, int]:
    """How many images of a job failed, per reason code."""
    stmt = (select(Image.error_code, func.count()).where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)
            .group_by(Image.error_code))
    return {code or ErrorCode.BAD_IMAGE: n for code, n in session.execute(stmt).all()}


def cancel_job(session: Session, job_id: str) -> bool:
    return session.execute(update(Job).where(Job.id == job_id, Job.status.in_(JobStatus.ACTIVE))
                           .values(status=JobStatus.CANCELED, finished_at=utcnow())).rowcount == 1


def job_status(session: Session, job_id: str) -> str | None:
    return session.scalar(select(Job.status).where(Job.id == job_id))


def results_page(session: Session, job_id: str, limit: int, offset: int) -> list[tuple[Image, Prediction | None]]:
    stmt = (select(Image, Prediction).outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.job_id == job_id))
            .where(Image.job_id == job_id).order_by(Image.seq).limit(limit).offset(offset))
    return [(img, pred) for img, pred in session.execute(stmt).all()]


def all_outcomes(session: Session, job_id: str) -> list[tuple[str, str | None, float | None, str | None, bool | None, float | None,
                                                             tuple[float, float, float] | None, float | None, float | None]]:
    """(path, label, confidence, error, cell_found, ood_score, stain_od, red_cell_px, focus) of every image of a job, for the
    report (the fields of ``pipeline.report.CellPrediction`` in order)."""
    stmt = (select(Image.path, Prediction.label, Prediction.confidence, Image.error, Prediction.cell_found, Prediction.ood_score,
                   Prediction.stain_od, Prediction.red_cell_px, Prediction.focus)
            .outerjoin(Prediction, (Prediction.image_id == Image.id) & (Prediction.job_id == job_id))
            .where(Image.job_id == job_id).order_by(Image.seq))
    return [(*r[:-3], _stored_od(r[-3]), r[-2], r[-1]) for r in session.execute(stmt).all()]


def get_summary(session: Session, job_id: str) -> dict | None:
    summary = session.get(JobSummary, job_id)
    return summary.report if summary else None


@dataclass(frozen=True)
class CellRow:
    """One white cell found in a field, as written by a worker."""

    idx: int
    box: tuple[int, int, int, int]
    score: float
    label: str
    confidence: float
    probabilities: dict
    thumbnail_key: str | None
    ood_score: float | None = None
    stain_od: tuple[float, float, float] | None = None  # red-cell stain signature of the cell's crop (pipeline.stain_check)
    focus: float | None = None  # the blur effect of the cell's crop (pipeline.focus_check)


def record_field(session: Session, job_id: str, image_id: int, cells: list[CellRow], error: str | None,
                 red_cell_px: float | None = None, code: str | None = None) -> None:
    """Upsert the cells of one field on (job, image, index), drop cells past the new count, set the field's status
    and keep its measured red-cell diameter. A failed field's reason ``code`` defaults to a bad image.

    Two deliveries of the same batch may write at once (a lease that expired while its worker was
    alive): upserts never collide on the unique constraint, and the last writer's cells stand.
    """
    if cells:
        insert = _insert(session)
        stmt = insert(Cell).values([
            {"job_id": job_id, "image_id": image_id, "idx": c.idx, "x0": c.box[0], "y0": c.box[1], "x1": c.box[2], "y1": c.box[3],
             "score": c.score, "label": c.label, "confidence": c.confidence, "probabilities": c.probabilities,
             "thumbnail_key": c.thumbnail_key, "ood_score": c.ood_score, "stain_od": _json_od(c.stain_od), "focus": c.focus}
            for c in cells
        ])
        stmt = stmt.on_conflict_do_update(index_elements=["job_id", "image_id", "idx"],
                                          set_={k: stmt.excluded[k] for k in ("x0", "y0", "x1", "y1", "score", "label", "confidence",
                                                                              "probabilities", "thumbnail_key", "ood_score",
                                                                              "stain_od", "focus")})
        session.execute(stmt)
    session.execute(delete(Cell).where(Cell.job_id == job_id, Cell.image_id == image_id, Cell.idx >= len(cells)))
    if red_cell_px is not None:
        session.execute(update(Image).where(Image.id == image_id, Image.job_id == job_id).values(red_cell_px=red_cell_px))
    moved = _leave_pending(session, job_id, [image_id], ImageStatus.FAILED if error else ImageStatus.DONE, error,
                           (code or ErrorCode.BAD_IMAGE) if error else None)
    _count(session, job_id, 0 if error else moved, moved if error else 0)


@dataclass(frozen=True)
class FieldOutcomes:
    """Everything the per-slide report of a "fields" job needs."""

    fields: list[str]  # every field's path, in job order
    #: (field path, cell index, label, confidence, ood score, stain signature, blur effect)
    cells: list[tuple[str, int, str, float, float | None, tuple[float, float, float] | None, float | None]]
    failed: dict[str, str]  # field path -> error
    red_cells: dict[str, float | None] = field(default_factory=dict)  # field path -> red-cell diameter (px)


def field_outcomes(session: Session, job_id: str) -> FieldOutcomes:
    cells = session.execute(select(Image.path, Cell.idx, Cell.label, Cell.confidence, Cell.ood_score, Cell.stain_od, Cell.focus)
                            .join(Cell, Cell.image_id == Image.id).where(Image.job_id == job_id).order_by(Image.seq, Cell.idx)).all()
    failed = session.execute(select(Image.path, Image.error).where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)).all()
    rows = session.execute(select(Image.path, Image.red_cell_px).where(Image.job_id == job_id).order_by(Image.seq)).all()
    return FieldOutcomes([p for p, _ in rows], [(*c[:-2], _stored_od(c[-2]), c[-1]) for c in cells], {p: e or "failed" for p, e in failed},
                         {p: r for p, r in rows})


def cells_of_images(session: Session, job_id: str, image_ids: list[int]) -> dict[int, list[Cell]]:
    out: dict[int, list[Cell]] = {i: [] for i in image_ids}
    for cell in session.scalars(select(Cell).where(Cell.job_id == job_id, Cell.image_id.in_(image_ids)).order_by(Cell.image_id, Cell.idx)):
        out[cell.image_id].append(cell)
    return out


def cell_thumbnail_key(session: Session, job_id: str, seq: int, idx: int) -> str | None:
    stmt = (select(Cell.thumbnail_key).join(Image, Image.id == Cell.image_id)
            .where(Cell.job_id == job_id, Image.seq == seq, Cell.idx == idx))
    return session.scalar(stmt)
