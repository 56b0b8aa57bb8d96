"""Login and CSRF for the pages when API tokens are configured (``api.auth``).

The login form takes any token the API accepts; a signed session cookie
(HttpOnly, SameSite=Lax) then stands for its name (the owner of the jobs it
submits; it sees only those unless it is an admin token). Every form and
script POST sends the session's CSRF token. Without tokens the pages are open
like the API, and no session is used (CSRF protection guards an identity that
does not exist).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Flask, abort, request, session

from api.auth import ANONYMOUS, Caller, NotAuthenticated, TokenTable
from pipeline.settings import Settings

OPEN_ENDPOINTS = {"web.login", "web.static"}


def configure(app: Flask, settings: Settings) -> None:
    """Sign the session with HEMATOVISION_SECRET_KEY, else a key derived from the tokens (the same in every process)."""
    configured = settings.api_token + "|" + settings.api_tokens
    if settings.secret_key or configured != "|":
        app.secret_key = settings.secret_key or hashlib.sha256(b"hematovision-web-session:" + configured.encode()).hexdigest()
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")


def token_caller(tokens: TokenTable, sent: str) -> Caller | None:
    """Who the login form's token belongs to, or None."""
    if not tokens or not sent:
        return None
    try:
        return tokens.caller(f"Bearer {sent}")
    except NotAuthenticated:
        return None


def logged_in(tokens: TokenTable) -> bool:
    return not tokens or session.get("auth") is True


def log_in(who: Caller) -> None:
    session.clear()
    session["auth"] = True
    session["who"], session["admin"] = who.name, who.admin
    session["csrf"] = secrets.token_urlsafe(24)


def session_caller(tokens: TokenTable) -> Caller:
    return Caller(session.get("who"), bool(session.get("admin"))) if tokens else ANONYMOUS


def csrf_token(tokens: TokenTable) -> str:
    return session.get("csrf", "") if tokens else ""


def check_csrf(tokens: TokenTable) -> None:
    """Refuse a state-changing request without the session's CSRF token (form field or X-CSRF-Token header)."""
    if not tokens or request.method in ("GET", "HEAD", "OPTIONS") or request.endpoint == "web.login":
        return
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form has expired or did not come from this site: reload the page and try again")
