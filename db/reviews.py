"""Reviews and sign-off: a person's reclassifications stored beside, never over, the model's predictions.

Each review is its own row (cell, old label, new label, reviewer, time); the
label a report counts is the newest review of a cell, else the model's. A
sign-off locks the job: no review is accepted after it. Both writes lock the
job row first (``FOR UPDATE`` on Postgres; SQLite serializes writers), so a
review cannot slip in beside a concurrent sign-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Cell, Image, ImageStatus, Job, Prediction, Review, Signoff, utcnow


class ReviewError(Exception):
    """A review or sign-off that the job's state does not allow."""


class JobSignedOff(ReviewError):
    pass


class CellNotFound(ReviewError):
    pass


@dataclass(frozen=True)
class CellItem:
    """One classified cell (a cell image, or a white cell found in a field) with its effective label."""

    seq: int
    idx: int | None  # index in its field; None for a cell image
    path: str
    model_label: str
    label: str  # newest review's label, else the model's
    confidence: float  # the model's
    probabilities: dict
    reviewed: bool
    cell_found: bool = True  # False: the model found no white cell in the image (a reviewed image counts as found)

    @property
    def changed(self) -> bool:
        return self.label != self.model_label


@dataclass(frozen=True)
class ReviewedOutcomes:
    """Everything a report over reviewed labels needs: cells, failed images, every image path in job order."""

    cells: list[CellItem]
    failed: dict[str, str]  # path -> error
    paths: list[str]


def _latest_labels(session: Session, job_id: str) -> dict[tuple[int, int | None], str]:
    rows = session.execute(select(Review.image_id, Review.cell_idx, Review.new_label).where(Review.job_id == job_id).order_by(Review.id))
    return {(image_id, idx): label for image_id, idx, label in rows}


def cell_items(session: Session, job_id: str, kind: str, probabilities: bool = True) -> list[CellItem]:
    """Every classified cell of a job in job order, with the newest review applied (``probabilities=False``: not loaded)."""
    latest = _latest_labels(session, job_id)
    if kind == "fields":
        probs = Cell.probabilities if probabilities else None
        stmt = (select(Image.id, Image.seq, Image.path, Cell.idx, Cell.label, Cell.confidence, probs, true())
                .join(Cell, Cell.image_id == Image.id).where(Image.job_id == job_id).order_by(Image.seq, Cell.idx))
    else:
        probs = Prediction.probabilities if probabilities else None
        stmt = (select(Image.id, Image.seq, Image.path, None, Prediction.label, Prediction.confidence, probs, Prediction.cell_found)
                .join(Prediction, (Prediction.image_id == Image.id) & (Prediction.job_id == job_id))
                .where(Image.job_id == job_id).order_by(Image.seq))
    items = []
    for image_id, seq, path, idx, label, conf, probs, found in session.execute(stmt):
        override = latest.get((image_id, idx))
        items.append(CellItem(seq, idx, path, label, override or label, conf, probs or {}, override is not None,
                              override is not None or found is not False))
    return items


def reviewed_outcomes(session: Session, job_id: str, kind: str, probabilities: bool = True) -> ReviewedOutcomes:
    failed = session.execute(select(Image.path, Image.error).where(Image.job_id == job_id, Image.status == ImageStatus.FAILED)).all()
    paths = session.scalars(select(Image.path).where(Image.job_id == job_id).order_by(Image.seq)).all()
    return ReviewedOutcomes(cell_items(session, job_id, kind, probabilities), {p: e or "failed" for p, e in failed}, list(paths))


def _lock_job(session: Session, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id).with_for_update())


def add_review(session: Session, job_id: str, seq: int, idx: int | None, new_label: str, reviewer: str) -> Review:
    """Record one review; the old label is the cell's label before it (the newest review's, else the model's)."""
    if _lock_job(session, job_id) is None:
        raise CellNotFound(f"no job with id {job_id!r}")
    if session.get(Signoff, job_id) is not None:
        raise JobSignedOff(f"job {job_id} is signed off: its report is locked")
    image_id = session.scalar(select(Image.id).where(Image.job_id == job_id, Image.seq == seq))
    if idx is None:
        model_label = session.scalar(select(Prediction.label).where(Prediction.job_id == job_id, Prediction.image_id == image_id))
    else:
        model_label = session.scalar(select(Cell.label).where(Cell.job_id == job_id, Cell.image_id == image_id, Cell.idx == idx))
    if image_id is None or model_label is None:
        where = f"image {seq}" if idx is None else f"cell {idx} of image {seq}"
        raise CellNotFound(f"job {job_id} has no classified {where}")
    same_cell = Review.cell_idx.is_(None) if idx is None else Review.cell_idx == idx
    old = session.scalar(select(Review.new_label).where(Review.job_id == job_id, Review.image_id == image_id, same_cell)
                         .order_by(Review.id.desc()).limit(1))
    review = Review(job_id=job_id, image_id=image_id, cell_idx=idx, old_label=old or model_label, new_label=new_label,
                    reviewer=reviewer, created_at=utcnow())
    session.add(review)
    session.flush()
    return review


@dataclass(frozen=True)
class ReviewRow:
    id: int
    seq: int
    idx: int | None
    path: str
    old_label: str
    new_label: str
    reviewer: str
    created_at: datetime


def list_reviews(session: Session, job_id: str) -> list[ReviewRow]:
    stmt = (select(Review.id, Image.seq, Review.cell_idx, Image.path, Review.old_label, Review.new_label, Review.reviewer, Review.created_at)
            .join(Image, Image.id == Review.image_id).where(Review.job_id == job_id).order_by(Review.id))
    return [ReviewRow(*row) for row in session.execute(stmt)]


def sign_off(session: Session, job_id: str, reviewer: str) -> Signoff:
    """Lock the job's report; a second sign-off raises :class:`JobSignedOff`."""
    if _lock_job(session, job_id) is None:
        raise CellNotFound(f"no job with id {job_id!r}")
    if session.get(Signoff, job_id) is not None:
        raise JobSignedOff(f"job {job_id} is already signed off")
    signoff = Signoff(job_id=job_id, reviewer=reviewer, signed_at=utcnow())
    try:
        with session.begin_nested():
            session.add(signoff)
    except IntegrityError:  # a concurrent sign-off won the primary key
        raise JobSignedOff(f"job {job_id} is already signed off") from None
    return signoff


def get_signoff(session: Session, job_id: str) -> Signoff | None:
    return session.get(Signoff, job_id)


def image_key(session: Session, job_id: str, seq: int) -> str | None:
    """Storage key of image ``seq`` of a job (None when refused at intake or unknown)."""
    return session.scalar(select(Image.storage_key).where(Image.job_id == job_id, Image.seq == seq))


def cell_box(session: Session, job_id: str, seq: int, idx: int) -> tuple[int, int, int, int] | None:
    row = session.execute(select(Cell.x0, Cell.y0, Cell.x1, Cell.y1).join(Image, Image.id == Cell.image_id)
                          .where(Cell.job_id == job_id, Image.seq == seq, Cell.idx == idx)).first()
    return tuple(row) if row else None


def has_reviews(session: Session, job_id: str) -> bool:
    return session.scalar(select(Review.id).where(Review.job_id == job_id).limit(1)) is not None
