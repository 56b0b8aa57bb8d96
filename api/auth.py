"""Who is calling: bearer tokens, stored hashed, each with a name recorded as the owner of the jobs it submits.

Tokens come from settings: ``HEMATOVISION_API_TOKENS="name:sha256hex[:admin],..."``
(``hematovision token NAME`` makes one) and, for a single deployment-wide
token, ``HEMATOVISION_API_TOKEN`` (plain, named "admin", sees every job). A
token sees only its own jobs; an admin token sees all. With no token
configured the API is anonymous: allowed only on a local bind, or with
``HEMATOVISION_ALLOW_ANONYMOUS=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from flask import g, request

from pipeline.settings import PREFIX, Settings


class InsecureConfiguration(RuntimeError):
    """Serving beyond this machine without any API token (and without explicitly allowing it)."""


class NotAuthenticated(Exception):
    """No token, or a token that matches none configured."""


@dataclass(frozen=True)
class Caller:
    name: str | None  # None: anonymous (no tokens configured)
    admin: bool

    def may_see(self, owner: str | None) -> bool:
        return self.admin or owner == self.name


ANONYMOUS = Caller(None, True)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(name: str, admin: bool = False) -> tuple[str, str]:
    """A fresh random token and its ``HEMATOVISION_API_TOKENS`` entry (only the hash is stored)."""
    if not name or any(c in name for c in ":,") or len(name) > 64:
        raise ValueError("a token name is 1-64 characters without ':' or ','")
    token = secrets.token_urlsafe(32)
    return token, f"{name}:{token_hash(token)}" + (":admin" if admin else "")


@dataclass(frozen=True)
class TokenTable:
    entries: tuple[tuple[str, str, bool], ...]  # (name, sha256 hex, admin)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenTable:
        entries = []
        for raw in filter(None, (part.strip() for part in settings.api_tokens.split(","))):
            name, _, rest = raw.partition(":")
            digest, _, role = rest.partition(":")
            if not name or len(digest) != 64 or role not in ("", "admin"):
                raise ValueError(f"{PREFIX}API_TOKENS entry {name or raw[:20]!r} must look like name:sha256hex[:admin]")
            entries.append((name, digest.lower(), role == "admin"))
        if settings.api_token:
            entries.append(("admin", token_hash(settings.api_token), True))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def caller(self, authorization: str) -> Caller:
        if not self.entries:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated()
        digest = token_hash(token.strip())
        found = None
        for name, expected, admin in self.entries:  # compare with every entry: timing does not reveal which matched
            if hmac.compare_digest(digest, expected):
                found = Caller(name, admin)
        if found is None:
            raise NotAuthenticated()
        return found


def is_local(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to serve ``host`` beyond this machine without tokens, unless anonymous access is explicitly allowed."""
    if is_local(host) or settings.allow_anonymous or TokenTable.from_settings(settings):
        return
    raise InsecureConfiguration(f"refusing to serve on {host} without an API token: set {PREFIX}API_TOKEN or {PREFIX}API_TOKENS "
                                f"(`hematovision token NAME`), or {PREFIX}ALLOW_ANONYMOUS=1 to serve everyone")


def authenticate(tokens: TokenTable) -> Caller:
    """The caller of the current request, kept on ``g`` for the routes."""
    g.caller = tokens.caller(request.headers.get("Authorization", ""))
    return g.caller


def caller() -> Caller:
    return g.get("caller", ANONYMOUS)
