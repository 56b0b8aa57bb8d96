"""Worker entry point: ``celery -A worker.make_celery worker``."""

from worker.celery_app import make_celery

celery_app = make_celery()
