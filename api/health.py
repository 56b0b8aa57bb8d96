"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when the database answers and the broker accepts a connection."""
    checks: dict[str, str] = {}
    st = state()
    try:
        st.db.ping()
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        with st.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), 200 if ready else 503
