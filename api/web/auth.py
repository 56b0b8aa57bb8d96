"""Login and CSRF for the pages when ``HEMATOVISION_API_TOKEN`` is set.

The login form takes the same token the API wants; a signed session cookie
(HttpOnly, SameSite=Lax) then stands for it. Every form and script POST sends
the session's CSRF token. Without a token the pages are open like the API, and
no session is used (CSRF protection guards an identity that does not exist).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, abort, request, session

from pipeline.settings import Settings

OPEN_ENDPOINTS = {"web.login", "web.static"}


def configure(app: Flask, settings: Settings) -> None:
    """Sign the session with HEMATOVISION_SECRET_KEY, else a key derived from the token (the same in every process)."""
    if settings.secret_key or settings.api_token:
        app.secret_key = settings.secret_key or hashlib.sha256(b"hematovision-web-session:" + settings.api_token.encode()).hexdigest()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")


def token_matches(settings: Settings, sent: str) -> bool:
    return bool(settings.api_token) and hmac.compare_digest(sent.encode(), settings.api_token.encode())


def logged_in(settings: Settings) -> bool:
    return not settings.api_token or session.get("auth") is True


def log_in() -> None:
    session.clear()
    session["auth"] = True
    session["csrf"] = secrets.token_urlsafe(24)


def csrf_token(settings: Settings) -> str:
    return session.get("csrf", "") if settings.api_token else ""


def check_csrf(settings: Settings) -> None:
    """Refuse a state-changing request without the session's CSRF token (form field or X-CSRF-Token header)."""
    if not settings.api_token or request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint == "web.login":
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form has expired or did not come from this site: reload the page and try again")
