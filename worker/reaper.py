"""The reaper: every worker runs one on a timer; each round, one of them (a database lock) does the work.

It is what makes a job end without a person when a message was lost:
- a running batch whose lease expired (its worker died, or the database was
  away longer than the lease) is re-sent;
- when the broker's queue is empty, batches queued longer than a lease and
  jobs never planned are lost messages (a broker restart without persistence,
  a crash between commit and send): they are re-sent;
- an active job with nothing pending gets a finalize task;
- stored files of an upload that never became a job (the API died mid-upload)
  are removed once older than ``orphan_seconds``.
It runs in the worker's main process and never loads the model.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery

from db import leases
from db.engine import Database
from db.models import utcnow
from pipeline.settings import Settings
from pipeline.storage import ImageStore
from worker.lease import worker_identity
from worker.names import CLASSIFY_BATCH, FINALIZE_JOB, START_JOB

log = logging.getLogger(__name__)


@dataclass
class Round:
    """What one reaper round did (for logs and tests)."""

    won: bool = False
    started: list[str] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


def reap(db: Database, settings: Settings, send: Callable[[str, list], None], queue_depth: Callable[[], int | None],
         store: ImageStore | None = None) -> Round:
    """One round: if this process wins the lock, re-send lost work, finalize finished jobs, sweep orphan uploads."""
    result = Round()
    now = utcnow()
    grace = now - timedelta(seconds=settings.lease_seconds)
    with db.session() as session, session.begin():
        if not leases.acquire_lock(session, "reaper", worker_identity(), settings.reaper_interval * 0.8):
            return result
        result.won = True
        idle = queue_depth() == 0  # unknown (broker down) counts as busy: nothing queued is presumed lost
        unplanned, finished = leases.jobs_needing_attention(session, grace)
        lost = leases.batches_to_send(session, None, grace if idle else None)
        leases.mark_sent(session, [b for _, b in lost])
        if store is not None:
            candidates = store.job_folders_older_than(settings.orphan_seconds)
            result.orphans = sorted(set(candidates) - leases.existing_jobs(session, candidates))
    for job_id in result.orphans:
        store.delete_job(job_id)
    result.started = unplanned if idle else []
    for job_id in result.started:
        send(START_JOB, [job_id])
    for job_id, batch_id in lost:
        send(CLASSIFY_BATCH, [job_id, batch_id])
        result.resent.append(batch_id)
    for job_id in finished:
        send(FINALIZE_JOB, [job_id])
        result.finalized.append(job_id)
    if result.started or result.resent or result.finalized or result.orphans:
        log.warning("reaper: started %s, re-sent batches %s, finalizing %s, removed orphan uploads %s", result.started, result.resent,
                    result.finalized, result.orphans)
    return result


def broker_queue_depth(app: Celery, queue: str) -> int | None:
    """Messages waiting in ``queue`` (Redis, SQLAlchemy and memory transports), or None if the broker is away."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            return conn.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count
    except Exception as exc:  # any broker trouble: say so and let the next round try
        log.warning("reaper: broker queue depth unknown (%s)", exc.__class__.__name__)
        return None


class ReaperThread(threading.Thread):
    """Runs ``reap`` every ``reaper_interval`` seconds (with jitter) until stopped."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        super().__init__(name="hematovision-reaper", daemon=True)
        self.app, self.settings = app, settings
        self.stopped = threading.Event()

    def run(self) -> None:
        db = Database(self.settings.resolved_database_url)
        store = ImageStore(self.settings.resolved_storage_root)
        queue = self.settings.queue

        def send(name: str, args: list) -> None:
            self.app.send_task(name, args=args, queue=queue)

        try:
            while not self.stopped.wait(self.settings.reaper_interval * random.uniform(0.8, 1.0)):
                try:
                    reap(db, self.settings, send, lambda: broker_queue_depth(self.app, queue), store)
                except Exception as exc:  # database or broker away: the next round tries again
                    log.warning("reaper round failed: %s", exc.__class__.__name__)
        finally:
            db.dispose()
