"""Celery task shells: ids in, ``worker.jobs`` does the work.

Names are explicit (the API sends ``hematovision.start_job`` by name without
importing this module). Tasks are idempotent, so ``acks_late`` redelivery is
safe; transient database errors are retried with back-off.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from db import TransientDatabaseError
from worker import jobs
from worker.context import get_context

START_JOB = "hematovision.start_job"
CLASSIFY_BATCH = "hematovision.classify_batch"
log = logging.getLogger(__name__)
RETRY = {"autoretry_for": (TransientDatabaseError,), "retry_backoff": True, "max_retries": 5}


def register(app: Celery) -> None:
    """Attach the tasks to ``app`` (one app per process, built by ``make_celery``)."""

    @app.task(name=CLASSIFY_BATCH, acks_late=True, **RETRY)
    def classify_batch(job_id: str, image_ids: list[int]) -> int:
        ctx = get_context()
        try:
            return jobs.run_batch(ctx, job_id, image_ids)
        except (TransientDatabaseError, SoftTimeLimitExceeded):
            raise
        except Exception as exc:
            log.exception("batch of job %s failed", job_id)
            jobs.fail(ctx, job_id, f"classification failed: {exc}")
            raise

    @app.task(name=START_JOB, acks_late=True, **RETRY)
    def start_job(job_id: str) -> int:
        ctx = get_context()
        try:
            return jobs.start_job(ctx, job_id, lambda ids: classify_batch.delay(job_id, ids))
        except TransientDatabaseError:
            raise
        except Exception as exc:
            log.exception("job %s could not start", job_id)
            jobs.fail(ctx, job_id, f"job could not start: {exc}")
            raise
