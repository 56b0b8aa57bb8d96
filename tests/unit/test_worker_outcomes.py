"""Every batch ends in a recorded outcome: storage trouble is retried, an error fails only its batch,
and a job in which nothing could be processed fails with a code (the one rule for "nothing usable")."""

from __future__ import annotations

import shutil

import pytest

from api.analyze import worker_environment
from api.state import AppState
from api.submission import accept_job
from db import repository as repo
from db.models import ErrorCode, ImageStatus, JobStatus
from pipeline.settings import Settings
from pipeline.storage import StorageUnavailable
from tests.conftest import jpeg_bytes
from worker import jobs
from worker.context import WorkerContext, reset_context
from worker.faults import VARIABLE


@pytest.fixture
def env(migrated_url, tmp_path, model_dir):
    settings = Settings(var_dir=str(tmp_path), database_url=migrated_url, broker_url="memory://", storage_root=str(tmp_path / "storage"),
                        model_dir=str(model_dir), queue="hv-outcomes", task_batches=1)  # a leased batch = one model batch here
    st, ctx = AppState.create(settings), WorkerContext(settings)
    yield st, ctx
    ctx.db.dispose()
    st.db.dispose()


def _submit(env, files: dict[str, bytes], batch_size: int = 2, kind: str = "cells") -> tuple[str, list[int]]:
    st, ctx = env
    job_id = accept_job(st, iter(files.items()), "upload", None, batch_size, kind)
    batches: list[int] = []
    jobs.start_job(ctx, job_id, batches.append)
    return job_id, batches


def _job(ctx: WorkerContext, job_id: str):
    with ctx.db.session() as s:
        return repo.get_job(s, job_id), repo.progress(s, job_id), repo.failure_codes(s, job_id)


def test_unmounted_storage_is_transient_not_a_bad_image(env, tmp_path):
    st, ctx = env
    job_id, batches = _submit(env, {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2)})
    shutil.move(tmp_path / "storage", tmp_path / "elsewhere")  # the volume is not mounted
    with pytest.raises(StorageUnavailable):
        jobs.run_batch(ctx, job_id, batches[0])
    jobs.release(ctx, batches[0])
    assert _job(ctx, job_id)[1].pending == 2  # nothing was marked failed
    shutil.move(tmp_path / "elsewhere", tmp_path / "storage")
    assert jobs.run_batch(ctx, job_id, batches[0]) == 2
    job, progress, _ = _job(ctx, job_id)
    assert job.status == JobStatus.SUCCEEDED and progress.done == 2


def test_one_missing_file_is_a_per_image_failure(env, tmp_path):
    st, ctx = env
    job_id, batches = _submit(env, {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2)})
    next((tmp_path / "storage" / "jobs" / job_id).glob("0000001.*")).unlink()
    jobs.run_batch(ctx, job_id, batches[0])
    job, progress, codes = _job(ctx, job_id)
    assert job.status == JobStatus.SUCCEEDED and (progress.done, codes) == (1, {ErrorCode.MISSING_FILE: 1})


def test_one_missing_field_is_a_per_image_failure(env, tmp_path):
    """The same in a fields job: the other field of the batch is still analysed and the code says why."""
    st, ctx = env
    job_id, batches = _submit(env, {"a.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2)}, kind="fields")
    next((tmp_path / "storage" / "jobs" / job_id).glob("0000001.*")).unlink()
    jobs.run_batch(ctx, job_id, batches[0])
    job, progress, codes = _job(ctx, job_id)
    assert job.status == JobStatus.SUCCEEDED and (progress.done, codes) == (1, {ErrorCode.MISSING_FILE: 1})


def test_a_batch_that_raises_fails_its_images_and_the_job_goes_on(env, monkeypatch):
    """The real task code, run eagerly by Celery in this process."""
    from worker.celery_app import make_celery
    from worker.names import CLASSIFY_BATCH

    st, ctx = env
    app = make_celery(st.settings)
    job_id, batches = _submit(env, {"boom.jpg": jpeg_bytes(1), "b.jpg": jpeg_bytes(2), "c.jpg": jpeg_bytes(3), "d.jpg": jpeg_bytes(4)})
    for name, value in {**worker_environment(st.settings), VARIABLE: "raise:boom"}.items():
        monkeypatch.setenv(name, value)
    try:
        for batch_id in batches:
            app.tasks[CLASSIFY_BATCH].apply(args=[job_id, batch_id])
    finally:
        reset_context()
    job, progress, codes = _job(ctx, job_id)
    assert job.status == JobStatus.SUCCEEDED and progress.done == 2 and codes == {ErrorCode.INTERNAL: 2}
    with ctx.db.session() as s:
        errors = {img.path: img.error for img, _ in repo.results_page(s, job_id, 10, 0)}
    assert "internal error" in errors["boom.jpg"] and "Injected" not in errors["boom.jpg"]  # a safe message, details in the log


def test_a_job_with_nothing_usable_fails_with_a_code(env):
    """A truncated JPEG passes the header check at intake but cannot be decoded: the job fails, it does not 'succeed' empty."""
    st, ctx = env
    job_id, batches = _submit(env, {"cut.jpg": jpeg_bytes()[:1500]})
    jobs.run_batch(ctx, job_id, batches[0])
    job, progress, codes = _job(ctx, job_id)
    assert (job.status, job.error_code, progress.failed, codes) == (JobStatus.FAILED, ErrorCode.NOTHING_USABLE, 1, {ErrorCode.BAD_IMAGE: 1})
    assert "none of the 1 images could be processed" in job.error
    with ctx.db.session() as s:
        assert repo.get_summary(s, job_id) is None and repo.results_page(s, job_id, 1, 0)[0][0].status == ImageStatus.FAILED


def test_the_worker_stores_each_images_and_each_field_cells_stain_signature(env, sample_folder):
    """The worker's rows carry the serving path's stain signatures into the database, for the report's stain check:
    per cell image (None where the image shows no red cells) and per cell found in a field; and each cell image's
    red-cell diameter and blur effect (the red-cell and focus checks)."""
    import numpy as np

    from tests.conftest import bccd_fields, encode_jpeg

    st, ctx = env
    samples = sorted(sample_folder.rglob("*.jp*g"))[:3]
    plain = encode_jpeg(np.full((300, 300, 3), 200, np.uint8))
    job_id, batches = _submit(env, {**{p.name: p.read_bytes() for p in samples}, "plain.jpg": plain})
    for batch_id in batches:
        jobs.run_batch(ctx, job_id, batch_id)
    with ctx.db.session() as s:
        stored = {path: out for path, *out in repo.all_outcomes(s, job_id)}
    stains = {path: out[-3] for path, out in stored.items()}
    assert stains["plain.jpg"] is None and len(stains) == 4
    assert all(len(stains[p.name]) == 3 and min(stains[p.name]) > 0 for p in samples)
    # the red-cell diameter each crop measured (the red-cell check): the samples show red cells, the plain image none
    assert stored["plain.jpg"][-2] is None and all(stored[p.name][-2] > 5 for p in samples)
    # the blur effect of every crop (the focus check, 2.4.2): a flat grey image has none to measure
    if ctx.classifier.manifest.checks_focus:
        assert stored["plain.jpg"][-1] is None and all(0.0 < stored[p.name][-1] < 0.8 for p in samples)

    field_job, batches = _submit(env, bccd_fields(2), kind="fields")
    for batch_id in batches:
        jobs.run_batch(ctx, field_job, batch_id)
    with ctx.db.session() as s:
        cells = repo.field_outcomes(s, field_job).cells
    assert len(cells) >= 2 and all(c[-2] is not None and len(c[-2]) == 3 for c in cells)
    if ctx.classifier.manifest.checks_focus:  # and each field cell's blur effect (the focus check, 2.4.2)
        assert all(0.0 < c[-1] < 1.0 for c in cells)
