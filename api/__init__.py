"""Flask API: ``create_app`` is the only place an app is built."""

from __future__ import annotations

from typing import Any

from flask import Flask

from api.state import AppState
from pipeline.settings import Settings


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None, bind_host: str = "127.0.0.1") -> Flask:
    """Build the API from settings (default: ``HEMATOVISION_*`` environment variables).

    ``bind_host`` is where it will be served: beyond this machine, tokens are required (``api.auth``).
    """
    import api.reviews  # noqa: F401  (adds the review and sign-off routes to the jobs blueprint)
    from api.auth import check_exposure
    from api.errors import register_error_handlers
    from api.health import bp as health_bp
    from api.jobs import bp as jobs_bp
    from api.openapi import bp as openapi_bp
    from api.web import bp as web_bp

    settings = settings or Settings.from_env()
    check_exposure(settings, bind_host)
    app = Flask(__name__)
    # Werkzeug refuses multipart bodies of more than MAX_FORM_PARTS parts (default 1000): a job
    # may hold up to max_images_per_job files, plus a few form fields.
    app.config.update(MAX_CONTENT_LENGTH=settings.max_upload_bytes, MAX_FORM_PARTS=settings.max_images_per_job + 16)
    app.json.sort_keys = False  # keep documents in their logical order
    if test_config:
        app.config.update(test_config)
    app.extensions["hematovision"] = AppState.create(settings)
    register_error_handlers(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(web_bp)
    return app


__all__ = ["create_app"]
