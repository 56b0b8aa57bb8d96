"""What a running API holds: settings, database, image store, task producer."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app

from api.auth import TokenTable
from db.engine import Database
from pipeline.settings import Settings, celery_config
from pipeline.storage import ImageStore
from worker.names import START_JOB  # the API sends by name only, never importing the worker's code


@dataclass
class AppState:
    settings: Settings
    db: Database
    store: ImageStore
    celery: Celery
    tokens: TokenTable

    @classmethod
    def create(cls, settings: Settings) -> AppState:
        celery = Celery("hematovision-api", set_as_current=False)
        celery.conf.update(celery_config(settings))
        return cls(settings, Database(settings.resolved_database_url), ImageStore(settings.resolved_storage_root), celery,
                   TokenTable.from_settings(settings))

    def enqueue_job(self, job_id: str, resend_queued: bool = False) -> None:
        """Send the job to the workers; ``resend_queued`` also re-sends its batches still queued (never those running)."""
        self.celery.send_task(START_JOB, args=[job_id, resend_queued])


def state() -> AppState:
    return current_app.extensions["hematovision"]
