"""Start-up objects leave the garbage collector's full passes (``pipeline.heap``)."""

from __future__ import annotations

import gc

import pytest

from pipeline.heap import settle_after_startup
from pipeline.settings import Settings
from worker.context import WorkerContext


@pytest.fixture
def unfrozen():
    gc.unfreeze()  # earlier tests in this process may have frozen their own start-up
    yield
    gc.unfreeze()


def test_frozen_objects_are_no_longer_walked_by_full_collections(unfrozen):
    long_lived = [{"row": i} for i in range(20_000)]  # dicts of constants: tracked by the collector
    walked_before = len(gc.get_objects())
    frozen = settle_after_startup()
    assert frozen >= len(long_lived)
    assert len(gc.get_objects()) < walked_before - len(long_lived)
    assert long_lived[-1] == {"row": 19_999}  # frozen, not freed


def test_a_worker_settles_once_its_model_is_loaded(unfrozen, tmp_path, model_dir):
    ctx = WorkerContext(Settings(var_dir=str(tmp_path), model_dir=str(model_dir)))
    assert gc.get_freeze_count() == 0
    assert ctx.classifier.manifest.classes
    assert gc.get_freeze_count() > 0
