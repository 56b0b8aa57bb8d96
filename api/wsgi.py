"""WSGI entry point for production servers: ``gunicorn api.wsgi:app``."""

from api import create_app

app = create_app(bind_host="0.0.0.0")  # production servers listen beyond localhost: tokens required
