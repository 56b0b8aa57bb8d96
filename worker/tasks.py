"""Celery task shells: ids in, ``worker.jobs`` does the work, every ending is recorded.

Tasks are idempotent (a batch is claimed under a lease before any work), so
``acks_late`` redelivery is safe. Transient errors (database, storage) are
retried with capped back-off for about two minutes, then left to the reaper;
a batch over its soft time limit, or one that raises, has its images failed
with a reason code and the job goes on.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from db import TransientDatabaseError
from db.models import ErrorCode
from pipeline.storage import StorageUnavailable
from worker import jobs
from worker.context import get_context
from worker.names import CLASSIFY_BATCH, FINALIZE_JOB, START_JOB

log = logging.getLogger(__name__)
TRANSIENT = (TransientDatabaseError, StorageUnavailable)
MAX_RETRIES = 8  # capped back-off 1, 2, 4, 8, 16, 30, 30, 30 s: about two minutes


def _retry_or_give_up(task, exc: Exception) -> None:
    """Raise Celery's Retry with capped back-off, or return when the retries are used up."""
    if task.request.retries >= MAX_RETRIES:
        return
    raise task.retry(exc=exc, countdown=min(2**task.request.retries, 30), max_retries=MAX_RETRIES)


def register(app: Celery) -> None:
    """Attach the tasks to ``app`` (one app per process, built by ``make_celery``)."""

    @app.task(name=CLASSIFY_BATCH, bind=True, acks_late=True, shared=False)
    def classify_batch(self, job_id: str, batch_id: int) -> int:
        ctx = get_context()
        try:
            return jobs.run_batch(ctx, job_id, batch_id)
        except SoftTimeLimitExceeded:
            log.error("batch %s of job %s ran past the time limit", batch_id, job_id)
            jobs.fail_batch(ctx, job_id, batch_id, ErrorCode.TIMEOUT,
                            f"its batch ran past the time limit of {ctx.settings.task_time_limit} s")
        except TRANSIENT as exc:
            jobs.release(ctx, batch_id)
            _retry_or_give_up(self, exc)
            log.error("batch %s of job %s: %s persisted through %d retries", batch_id, job_id, exc, MAX_RETRIES)
            if isinstance(exc, StorageUnavailable):
                jobs.fail_batch(ctx, job_id, batch_id, ErrorCode.STORAGE, "the stored file stayed unreadable (storage unavailable)")
            # a database still away: the batch's lease expires and the reaper re-sends it
        except Exception:
            log.exception("batch %s of job %s failed", batch_id, job_id)
            jobs.fail_batch(ctx, job_id, batch_id, ErrorCode.INTERNAL, "an internal error stopped this image's batch (see the worker log)")
        return 0

    @app.task(name=START_JOB, bind=True, acks_late=True, shared=False)
    def start_job(self, job_id: str, resend_queued: bool = False) -> int:
        ctx = get_context()
        try:
            return jobs.start_job(ctx, job_id, lambda batch_id: classify_batch.delay(job_id, batch_id), resend_queued)
        except TransientDatabaseError as exc:
            _retry_or_give_up(self, exc)
            log.error("job %s could not start: database unavailable; the reaper will start it", job_id)
        except Exception:
            log.exception("job %s could not start", job_id)
            jobs.fail(ctx, job_id, ErrorCode.INTERNAL, "the job could not start (see the worker log)")
        return 0

    @app.task(name=FINALIZE_JOB, acks_late=True, shared=False)
    def finalize_job(job_id: str) -> bool:
        return jobs.finalize(get_context(), job_id)
