"""Batches with leases: the bookkeeping that lets every job end without a person.

A job's pending images are grouped into batch rows once (``plan_batches``). A
worker *claims* a batch before working on it: the claim records who holds it
("host:pid") and until when (the lease, renewed by a heartbeat). A claim that
finds the batch held by a live lease is refused, so a duplicate message costs
one read and no work. A claim of a batch whose previous holder died (lease
expired, or its process is gone on this host) counts a delivery; after
``max_deliveries`` the batch is "poison" and its images are failed. Every
decision is a conditional UPDATE on the row's seen state: one winner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from db.models import Batch, BatchStatus, Image, ImageStatus, Job, JobStatus, Lock, utcnow
from db.repository import fail_pending_images  # the one place that moves images out of pending


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive (they were stored as UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def plan_batches(session: Session, job_id: str, batch_size: int) -> list[int]:
    """Group pending images that have no batch yet into new batches; returns the new batch ids (idempotent)."""
    loose = list(session.scalars(select(Image.id).where(Image.job_id == job_id, Image.status == ImageStatus.PENDING,
                                                        Image.batch_id.is_(None)).order_by(Image.seq)))
    created = []
    for start in range(0, len(loose), batch_size):
        batch = Batch(job_id=job_id, status=BatchStatus.QUEUED, deliveries=0, queued_at=utcnow())
        session.add(batch)
        session.flush()
        session.execute(update(Image).where(Image.id.in_(loose[start:start + batch_size])).values(batch_id=batch.id))
        created.append(batch.id)
    return created


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a batch: ``claimed``, ``busy`` (live holder), ``closed`` or ``poison``."""

    outcome: str
    deliveries: int = 0


def _holder_is_dead(holder: str | None, me: str) -> bool:
    """True when the holder was a process on this host that no longer exists (a SIGKILLed pool process)."""
    if not holder or ":" not in holder:
        return False
    host, _, pid = holder.rpartition(":")
    if host != me.rpartition(":")[0] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_batch(session: Session, batch_id: int, holder: str, lease_seconds: int, max_deliveries: int) -> Claim:
    """Take ``batch_id`` for ``lease_seconds`` unless someone alive holds it; count unclean deliveries."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status not in BatchStatus.OPEN:
        return Claim("closed")
    now = utcnow()
    lease = _aware(batch.lease_until)
    mine = batch.holder == holder  # this process's earlier run of the batch ended (one task at a time per process)
    if batch.status == BatchStatus.RUNNING and lease is not None and lease > now and not mine and not _holder_is_dead(batch.holder, holder):
        return Claim("busy", batch.deliveries)
    deliveries = batch.deliveries + (0 if mine else 1)
    if deliveries > max_deliveries:
        return Claim("poison", batch.deliveries)
    won = session.execute(
        update(Batch).where(Batch.id == batch_id, Batch.deliveries == batch.deliveries, Batch.status == batch.status,
                            Batch.holder.is_(None) if batch.holder is None else Batch.holder == batch.holder)
        .values(status=BatchStatus.RUNNING, holder=holder, deliveries=deliveries, lease_until=now + timedelta(seconds=lease_seconds))
    ).rowcount
    return Claim("claimed", deliveries) if won == 1 else Claim("busy", batch.deliveries)


def renew_lease(session: Session, batch_id: int, holder: str, lease_seconds: int) -> bool:
    return session.execute(update(Batch).where(Batch.id == batch_id, Batch.holder == holder, Batch.status == BatchStatus.RUNNING)
                           .values(lease_until=utcnow() + timedelta(seconds=lease_seconds))).rowcount == 1


def release_batch(session: Session, batch_id: int, holder: str) -> None:
    """Give a batch back after a transient error: queued again, and this delivery does not count."""
    session.execute(update(Batch).where(Batch.id == batch_id, Batch.holder == holder, Batch.status == BatchStatus.RUNNING)
                    .values(status=BatchStatus.QUEUED, holder=None, lease_until=None, queued_at=utcnow(),
                            deliveries=case((Batch.deliveries > 0, Batch.deliveries - 1), else_=0)))


def close_batch(session: Session, batch_id: int, status: str = BatchStatus.DONE) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id, Batch.status.in_(BatchStatus.OPEN))
                    .values(status=status, lease_until=None))


def fail_batch_images(session: Session, batch_id: int, code: str, message: str) -> int:
    """Mark the still-pending images of a batch failed with a reason code, and close the batch; returns how many."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return 0
    n = fail_pending_images(session, batch.job_id, batch_image_ids(session, batch_id), message, code)
    close_batch(session, batch_id, BatchStatus.FAILED)
    return n


def batch_image_ids(session: Session, batch_id: int) -> list[int]:
    return list(session.scalars(select(Image.id).where(Image.batch_id == batch_id).order_by(Image.seq)))


def batches_to_send(session: Session, job_id: str | None, queued_before: datetime | None) -> list[tuple[str, int]]:
    """(job, batch) pairs not in flight: running with an expired lease, or queued before ``queued_before``.

    ``queued_before=None`` leaves queued batches out (their message may still be in the broker).
    """
    now = utcnow()
    lost = (Batch.status == BatchStatus.RUNNING) & (Batch.lease_until < now)
    if queued_before is not None:
        lost = lost | ((Batch.status == BatchStatus.QUEUED) & (Batch.queued_at <= queued_before))
    stmt = select(Batch.job_id, Batch.id).join(Job, Job.id == Batch.job_id).where(lost, Job.status.in_(JobStatus.ACTIVE))
    if job_id is not None:
        stmt = stmt.where(Batch.job_id == job_id)
    return [(j, b) for j, b in session.execute(stmt.order_by(Batch.id)).all()]


def mark_sent(session: Session, batch_ids: list[int]) -> None:
    """The batches were (re-)sent: queued again from now (an expired holder loses the batch)."""
    if batch_ids:
        session.execute(update(Batch).where(Batch.id.in_(batch_ids), Batch.status.in_(BatchStatus.OPEN))
                        .values(status=BatchStatus.QUEUED, queued_at=utcnow(), lease_until=None))


def jobs_needing_attention(session: Session, started_before: datetime) -> tuple[list[str], list[str]]:
    """(jobs with pending images that no batch covers, created before ``started_before``; active jobs with nothing pending)."""
    unplanned = session.scalars(select(Image.job_id).join(Job, Job.id == Image.job_id)
                                .where(Job.status.in_(JobStatus.ACTIVE), Job.created_at <= started_before,
                                       Image.status == ImageStatus.PENDING, Image.batch_id.is_(None)).distinct()).all()
    pending = select(Image.id).where(Image.job_id == Job.id, Image.status == ImageStatus.PENDING).exists()
    finished = session.scalars(select(Job.id).where(Job.status.in_(JobStatus.ACTIVE), ~pending)).all()
    return list(unplanned), list(finished)


def existing_jobs(session: Session, job_ids: list[str]) -> set[str]:
    return set(session.scalars(select(Job.id).where(Job.id.in_(job_ids)))) if job_ids else set()


def acquire_lock(session: Session, name: str, holder: str, seconds: float) -> bool:
    """Take the named lock for ``seconds`` if it is free or expired: one winner per round among all workers."""
    now = utcnow()
    if session.get(Lock, name) is None:
        session.add(Lock(name=name, holder=None, until=datetime(2000, 1, 1, tzinfo=UTC)))
        session.flush()
    return session.execute(update(Lock).where(Lock.name == name, Lock.until <= now)
                           .values(holder=holder, until=now + timedelta(seconds=seconds))).rowcount == 1
