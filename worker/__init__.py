"""Celery workers: thin task shells around ``worker.jobs`` (logic) and ``db``."""
