"""A leased batch's database writes overlap the next model batch's inference, without changing a
prediction, and canceling or failing still stops every thread the batch started."""

from __future__ import annotations

import threading

import pytest

from api.state import AppState
from api.submission import accept_job
from db import TransientDatabaseError
from db import repository as repo
from db.models import JobStatus
from pipeline.batch import classify_batch
from pipeline.settings import Settings
from tests.conftest import jpeg_bytes
from worker import jobs
from worker.context import WorkerContext

MODEL_BATCH = 2


@pytest.fixture
def env(migrated_url, tmp_path, model_dir):
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://", storage_root=str(tmp_path / "storage"),
                        model_dir=str(model_dir), queue="hv-overlap", task_batches=6)  # a leased batch = 6 model batches of 2
    st, ctx = AppState.create(settings), WorkerContext(settings)
    yield st, ctx
    ctx.db.dispose()
    st.db.dispose()


def _one_leased_batch(env, files: dict[str, bytes]) -> tuple[str, int]:
    st, ctx = env
    job_id = accept_job(st, iter(files.items()), "upload", None, MODEL_BATCH, "cells")
    batches: list[int] = []
    jobs.start_job(ctx, job_id, batches.append)
    assert len(batches) == 1
    return job_id, batches[0]


def _counting_model(ctx: WorkerContext, monkeypatch) -> list[threading.Event]:
    """Wrap the model call; event k is set when model batch k (from 0) starts."""
    started = [threading.Event() for _ in range(64)]
    calls = [0]
    inner = ctx.classifier.scored

    def scored(batch, stains=None):
        started[calls[0]].set()
        calls[0] += 1
        return inner(batch)

    monkeypatch.setattr(ctx.classifier, "scored", scored)
    return started


def test_the_next_batch_is_classified_while_the_current_one_is_written(env, monkeypatch):
    st, ctx = env
    files = {f"{i}.jpg": jpeg_bytes(i) for i in range(12)}
    job_id, batch_id = _one_leased_batch(env, files)
    started = _counting_model(ctx, monkeypatch)
    overlapped: list[bool] = []
    record = repo.record_results

    def slow_write(session, job_id_, rows, version):
        # the first write waits for the second model batch: it only comes if the model runs meanwhile
        if not overlapped:
            overlapped.append(started[1].wait(timeout=20))
            assert "hematovision-classify" in {t.name for t in threading.enumerate()}  # named for py-spy profiles
        record(session, job_id_, rows, version)

    monkeypatch.setattr(jobs.repo, "record_results", slow_write)
    before = threading.active_count()
    assert jobs.run_batch(ctx, job_id, batch_id) == 12
    assert overlapped == [True]
    assert threading.active_count() == before

    expected = classify_batch(ctx.classifier, [(i, data) for i, data in enumerate(files.values())], 10**8)
    with ctx.db.session() as s:
        job = repo.get_job(s, job_id)
        stored = {img.path: (p.label, p.confidence, p.probabilities) for img, p in repo.results_page(s, job_id, 20, 0)}
    assert job.status == JobStatus.SUCCEEDED
    assert stored == {name: (r.label, r.confidence, r.probabilities) for name, r in zip(files, expected, strict=True)}


def test_canceling_stops_the_classification_ahead_and_its_threads(env, monkeypatch):
    st, ctx = env
    job_id, batch_id = _one_leased_batch(env, {f"{i}.jpg": jpeg_bytes(i) for i in range(12)})
    started = _counting_model(ctx, monkeypatch)
    status, checks = repo.job_status, [0]

    def canceled_after_the_first_write(session, job_id_):
        checks[0] += 1
        if checks[0] == 2:  # in the second write's transaction, as a user's cancel would land between writes
            repo.cancel_job(session, job_id_)
        return status(session, job_id_)

    monkeypatch.setattr(jobs.repo, "job_status", canceled_after_the_first_write)
    before = threading.active_count()
    assert jobs.run_batch(ctx, job_id, batch_id) == MODEL_BATCH  # the first write only
    assert threading.active_count() == before
    # written, handed over, queued, being classified: at most 4 of the 6 model batches ran
    assert not started[4].is_set()
    with ctx.db.session() as s:
        assert repo.job_status(s, job_id) == JobStatus.CANCELED


def test_a_failed_write_stops_the_classification_ahead_and_its_threads(env, monkeypatch):
    st, ctx = env
    job_id, batch_id = _one_leased_batch(env, {f"{i}.jpg": jpeg_bytes(i) for i in range(12)})
    started = _counting_model(ctx, monkeypatch)

    def database_away(session, job_id_, rows, version):
        raise TransientDatabaseError("INSERT ...", None, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(jobs.repo, "record_results", database_away)
    before = threading.active_count()
    with pytest.raises(TransientDatabaseError):
        jobs.run_batch(ctx, job_id, batch_id)
    assert threading.active_count() == before
    assert not started[4].is_set()
