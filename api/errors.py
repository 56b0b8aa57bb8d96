"""Every error leaves the API as JSON: ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error with an HTTP status and a message the client can act on."""

    def __init__(self, http_status: int, message: str, **details: Any) -> None:
        super().__init__(message)
        self.http_status, self.message, self.details = http_status, message, details


def error_response(http_status: int, code: str, message: str, **details: Any):
    response = jsonify({"error": {"code": code, "message": message, **details}})
    response.status_code = http_status
    return response


def register_error_handlers(app: Flask) -> None:
    """Domain errors become HTTP here and only here; anything unexpected is a JSON 500 without details."""
    from api.submission import BrokerUnavailable, NothingUsable
    from pipeline.intake import FolderNotAllowed, IntakeError

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.http_status, _code(exc.http_status), exc.message, **exc.details)

    @app.errorhandler(IntakeError)
    def _intake_error(exc: IntakeError):
        if isinstance(exc, NothingUsable):
            return error_response(422, _code(422), str(exc), files=exc.files)
        status = 403 if isinstance(exc, FolderNotAllowed) else 400
        return error_response(status, _code(status), str(exc))

    @app.errorhandler(BrokerUnavailable)
    def _broker_unavailable(exc: BrokerUnavailable):
        return error_response(503, _code(503), str(exc), job_id=exc.job_id)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error (details are in the server log)")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        message = exc.description or exc.name
        limit = app.config["MAX_CONTENT_LENGTH"]
        if exc.code == 413 and request.content_length and limit and request.content_length > limit:
            message = f"upload is larger than the limit of {limit} bytes"
        return error_response(exc.code or 500, _code(exc.code or 500), message)


def _code(status: int) -> str:
    return {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict", 413: "too_large",
            422: "unprocessable", 503: "unavailable"}.get(status, "error")
