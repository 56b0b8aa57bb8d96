"""Per-process resources of a worker: settings, database, image store, model.

Everything is created lazily on first use inside the worker process (never at
import, never in the prefork parent), so each child has its own DB connection
pool and loads the model exactly once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from db.engine import Database
from pipeline.batch import apply_thread_budget
from pipeline.classifier import Classifier, load_classifier
from pipeline.heap import settle_after_startup
from pipeline.manifest import ModelManifest
from pipeline.settings import Settings
from pipeline.storage import ImageStore


@dataclass
class WorkerContext:
    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.resolved_database_url)

    @cached_property
    def store(self) -> ImageStore:
        return ImageStore(self.settings.resolved_storage_root)

    @cached_property
    def classifier(self) -> Classifier:
        """The model, with this process's thread budget for the backend (OpenCV: one thread per call).

        Loading the model is the end of the process's start-up: what exists then is frozen out of
        the garbage collector's full passes (``pipeline.heap``)."""
        with self._lock:
            threads = self.settings.thread_budget
            apply_thread_budget(threads)
            classifier = load_classifier(self.settings.model_dir, self.settings.backend, self.settings.tta, threads=threads,
                                         ensemble=bool(self.settings.ensemble))
            settle_after_startup()
            return classifier

    @property
    def manifest(self) -> ModelManifest:
        return self.classifier.manifest


_context: WorkerContext | None = None


def get_context() -> WorkerContext:
    global _context
    if _context is None:
        _context = WorkerContext(Settings.from_env())
    return _context


def reset_context(close: bool = True) -> None:
    """Forget per-process resources: after fork (``close=False``: the parent's connections stay the parent's) and in tests."""
    global _context
    if _context is not None and "db" in _context.__dict__:
        _context.db.engine.dispose(close=close)
    _context = None
