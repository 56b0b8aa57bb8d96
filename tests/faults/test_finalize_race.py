"""Two workers finishing the last two batches of a job at the same moment: exactly one summary, 200 times."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from db import leases
from db import repository as repo
from db.migrate import upgrade
from db.models import JobStatus, JobSummary
from pipeline.settings import Settings
from worker import jobs
from worker.context import WorkerContext

pytestmark = pytest.mark.faults
REPETITIONS = 200


@pytest.fixture(params=["postgres", "sqlite"])
def ctx(request, postgres, tmp_path, model_dir):
    url = postgres.create_database() if request.param == "postgres" else f"sqlite:///{tmp_path / 'race.sqlite'}"
    upgrade(url)
    context = WorkerContext(Settings(var_dir=str(tmp_path), database_url=url, model_dir=str(model_dir)))
    context.manifest  # load the model once, outside the race  # noqa: B018
    yield context
    context.db.dispose()


def _finish_batch(ctx: WorkerContext, job_id: str, batch_id: int, image_id: int, start: threading.Barrier, won: list) -> None:
    start.wait()
    with ctx.db.session() as s, s.begin():
        repo.record_results(s, job_id, [repo.ResultRow(image_id, "neutrophil", 0.9, {"neutrophil": 0.9}, None)], "1")
        leases.close_batch(s, batch_id)
    won.append(jobs.finalize(ctx, job_id))


def test_exactly_one_summary_when_two_workers_finish_together(ctx):
    for rep in range(REPETITIONS):
        job_id = f"{rep:032x}"
        with ctx.db.session() as s, s.begin():
            repo.create_job(s, job_id, "upload", None, 1, [repo.NewImage(i, f"{i}.jpg", f"jobs/{job_id}/{i:07d}.jpg") for i in (1, 2)])
            repo.mark_running(s, job_id)
            batches = leases.plan_batches(s, job_id, 1)
            images = repo.pending_image_ids(s, job_id)
        start, won = threading.Barrier(2), []
        threads = [threading.Thread(target=_finish_batch, args=(ctx, job_id, b, i, start, won)) for b, i in zip(batches, images, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with ctx.db.session() as s:
            summaries = s.scalar(select(func.count()).select_from(JobSummary).where(JobSummary.job_id == job_id))
            assert (sorted(won), summaries, repo.job_status(s, job_id)) == ([False, True], 1, JobStatus.SUCCEEDED), rep
