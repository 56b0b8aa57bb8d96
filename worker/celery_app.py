"""The worker's Celery app, built from the same settings as the Flask API."""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from pipeline.settings import Settings, celery_config
from worker.context import reset_context


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("hematovision", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.update(task_soft_time_limit=settings.task_time_limit, task_time_limit=settings.task_time_limit + 30)
    from worker import tasks  # noqa: F401  (registers the tasks on this app)

    tasks.register(app)
    return app


@worker_process_init.connect
def _fresh_resources_after_fork(**_kwargs) -> None:
    """A forked child must not reuse the parent's DB connections."""
    reset_context()
