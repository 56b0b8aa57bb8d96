"""Persistence: the only package that knows SQL."""

from sqlalchemy.exc import OperationalError as TransientDatabaseError

__all__ = ["TransientDatabaseError"]
