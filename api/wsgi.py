"""WSGI entry point for production servers: ``gunicorn api.wsgi:app``."""

from api import create_app
from pipeline.heap import settle_after_startup

app = create_app(bind_host="0.0.0.0")  # production servers listen beyond localhost: tokens required
settle_after_startup()  # the app's start-up objects stay out of full collections (``pipeline.heap``)
