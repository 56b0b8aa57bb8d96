"""SQLAlchemy 2 ORM models: jobs, their images, predictions and summaries.

Progress is kept as counters on the job row (``images_done``,
``images_failed``), moved only by the repository functions that move an image
out of ``pending`` in the same transaction, and only by the number of rows that
really left ``pending``: a retried (at-least-once) task can never double-count,
and status, list and finalisation cost the same for 100 or 100,000 images.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import true


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ACTIVE = (QUEUED, RUNNING)
    FINISHED = (SUCCEEDED, FAILED, CANCELED)


class ImageStatus:
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class ErrorCode:
    """Why an image or a job failed: stable codes for clients; the message says it in words."""

    BAD_IMAGE = "bad_image"  # refused at intake or by the decoder
    TIMEOUT = "timeout"  # its batch ran past HEMATOVISION_TASK_TIME_LIMIT
    POISON = "poison"  # its batch's worker died HEMATOVISION_MAX_DELIVERIES times
    STORAGE = "storage"  # the stored file stayed unreadable through every retry
    MISSING_FILE = "missing_file"  # the stored file is gone although the job's folder exists
    INTERNAL = "internal"  # an unexpected error in the worker (details in its log)
    NOTHING_USABLE = "nothing_usable"  # job: no image could be processed


class BatchStatus:
    QUEUED = "queued"  # sent (or to be re-sent) to the broker
    RUNNING = "running"  # claimed by a worker whose lease is renewed while it works
    DONE = "done"
    FAILED = "failed"
    OPEN = (QUEUED, RUNNING)


class Batch(Base):
    """A unit of work with a lease: who holds it, until when, and how often it was delivered."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_job_status", "job_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.QUEUED)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)  # claims that did not end cleanly
    holder: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of the claiming worker process
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Lock(Base):
    """Named time-limited locks (the reaper's: one worker wins each round)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    kind: Mapped[str] = mapped_column(String(16), default="cells")  # cells | fields
    kind_source: Mapped[str] = mapped_column(String(16), default="client")  # client | auto
    source: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(255))
    images_total: Mapped[int] = mapped_column(Integer, default=0)
    images_done: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    images_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    batch_size: Mapped[int] = mapped_column(Integer)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)  # a safe message; details are in the worker log
    error_code: Mapped[str | None] = mapped_column(String(32))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)  # name of the API token that submitted it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_images_job_seq"), Index("ix_images_job_status", "job_id", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # the client's relative path: a label, never opened
    storage_key: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ImageStatus.PENDING)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(32))  # see ErrorCode
    batch_id: Mapped[int | None] = mapped_column(ForeignKey("batches.id", ondelete="SET NULL"), index=True)
    #: a field's red-cell diameter in pixels (the magnification check of "fields" jobs); None elsewhere
    red_cell_px: Mapped[float | None] = mapped_column(Float)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("job_id", "image_id", name="uq_predictions_job_image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: False: the preprocessing found no white cell; kept and listed, not counted in the differential
    cell_found: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    #: distance of the image's features to the training data (pipeline.domain); None for older models
    ood_score: Mapped[float | None] = mapped_column(Float)
    #: median red-cell optical density [R, G, B] of the model crop (pipeline.stain_check); None where not measured
    stain_od: Mapped[list[float] | None] = mapped_column(JSON(none_as_null=True))  # None: SQL NULL, not JSON null
    #: the red cells' diameter in the image's own pixels (the crop's ruler, for the red-cell check); None: no ruler
    red_cell_px: Mapped[float | None] = mapped_column(Float)
    #: the model crop's blur effect (pipeline.focus_check, the focus check); None for models without one
    focus: Mapped[float | None] = mapped_column(Float)


class JobSummary(Base):
    __tablename__ = "job_summaries"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    report: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Cell(Base):
    """A white cell found in a field image ("fields" jobs), with its box and prediction."""

    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("job_id", "image_id", "idx", name="uq_cells_job_image_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(32))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict] = mapped_column(JSON)
    thumbnail_key: Mapped[str | None] = mapped_column(String(80))
    #: distance of the cell's crop to the training data (pipeline.domain); None for older rows and models
    ood_score: Mapped[float | None] = mapped_column(Float)
    #: median red-cell optical density [R, G, B] of the cell's model crop (pipeline.stain_check); None where not measured
    stain_od: Mapped[list[float] | None] = mapped_column(JSON(none_as_null=True))  # None: SQL NULL, not JSON null
    #: the blur effect of the cell's model crop (pipeline.focus_check, the focus check); None for models without one
    focus: Mapped[float | None] = mapped_column(Float)


class Review(Base):
    """One person's (re)classification of one cell: a new row per review, the prediction is never overwritten.

    ``cell_idx`` is None for a cell image ("cells" jobs) and the cell's index in its field for "fields" jobs.
    """

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_job_target", "job_id", "image_id", "cell_idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    cell_idx: Mapped[int | None] = mapped_column(Integer)
    old_label: Mapped[str] = mapped_column(String(32))
    new_label: Mapped[str] = mapped_column(String(32))
    reviewer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Signoff(Base):
    """The sign-off that locks a job's report: at most one per job (the primary key says so)."""

    __tablename__ = "signoffs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
