"""The worker's Celery app, built from the same settings as the Flask API."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import celeryd_init, worker_process_init, worker_ready, worker_shutdown

from pipeline.settings import Settings, celery_config
from worker.context import reset_context

_reapers: list = []


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
    reset_context(close=False)


@worker_ready.connect
def _start_reaper(sender=None, **_kwargs) -> None:
    """Every worker runs a reaper timer in its main process; the database picks one per round."""
    from worker.reaper import ReaperThread

    reaper = ReaperThread(sender.app, Settings.from_env())
    reaper.start()
    _reapers.append(reaper)


@worker_shutdown.connect
def _stop_reaper(**_kwargs) -> None:
    for reaper in _reapers:
        reaper.stopped.set()


@celeryd_init.connect
def _share_cores_between_processes(options=None, conf=None, **_kwargs) -> None:
    """Tell the pool processes (forked after this) how many of them share the host, so each
    takes cores / processes threads by default (``Settings.thread_budget``)."""
    for value in ((options or {}).get("concurrency"), getattr(conf, "worker_concurrency", None)):
        try:
            concurrency = int(value)
        except (TypeError, ValueError):
            continue  # unset or "auto": Celery then starts one process per core
        if concurrency > 0:
            break
    else:
        concurrency = os.cpu_count() or 1
    if int(os.environ.get("HEMATOVISION_WORKER_PROCESSES") or 0) <= 0:  # 0 = not said: this worker's own pool size
        os.environ["HEMATOVISION_WORKER_PROCESSES"] = str(concurrency)
    lower_priority(Settings.from_env().worker_nice)


def lower_priority(increment: int) -> None:
    """Make this worker (and the pool processes and threads it starts later, which inherit it) nicer.

    Why: classification is batch work that keeps every core busy; an API or web
    page on the same host answers a person waiting, and a nicer worker lets the
    scheduler serve the API first while an idle host still gives the worker all
    of it. Off by default: in the one benchmark run with nice 5 the status p99
    during a job did not improve (README, Performance). Only ever raises
    niceness (lowering it would need privileges).
    """
    if increment > 0:
        os.nice(increment)
