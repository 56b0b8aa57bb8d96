"""Repository behaviour on both SQLite and the real Postgres."""

from sqlalchemy import inspect, select

from db import repository as repo
from db.engine import Database
from db.migrate import downgrade, heads, upgrade
from db.models import Job, JobStatus, Prediction


def test_migrations_have_one_head():
    assert len(heads()) == 1


def test_upgrade_on_empty_database_creates_schema_and_downgrade_removes_it(database_url):
    upgrade(database_url)
    db = Database(database_url)
    assert {"jobs", "images", "predictions", "job_summaries"} <= set(inspect(db.engine).get_table_names())
    downgrade(database_url)
    assert "jobs" not in inspect(db.engine).get_table_names()
    db.dispose()


def _job(db: Database, n: int = 3) -> tuple[str, list[int]]:
    images = [repo.NewImage(i, f"s/{i}.jpg", f"jobs/{'a' * 32}/{i:07d}.jpg") for i in range(1, n + 1)]
    images.append(repo.NewImage(n + 1, "bad.txt", None, "not a recognised image"))
    with db.session() as s, s.begin():
        repo.create_job(s, "a" * 32, "upload", "t", 2, images, None, None)
    with db.session() as s:
        return "a" * 32, repo.pending_image_ids(s, "a" * 32)


def _rows(ids, label="neutrophil"):
    return [repo.ResultRow(i, label, 0.9, {label: 0.9}, None) for i in ids]


def test_results_upsert_is_idempotent(migrated_url):
    db = Database(migrated_url)
    job_id, ids = _job(db)
    for label in ("neutrophil", "lymphocyte"):  # a redelivered batch writes again
        with db.session() as s, s.begin():
            repo.record_results(s, job_id, _rows(ids[:2], label), "1")
    with db.session() as s:
        preds = s.scalars(select(Prediction).where(Prediction.job_id == job_id)).all()
        assert len(preds) == 2 and {p.label for p in preds} == {"lymphocyte"}
        prog = repo.progress(s, job_id)
        assert (prog.total, prog.done, prog.failed, prog.pending) == (4, 2, 1, 1)
    db.dispose()


def test_finalize_has_exactly_one_winner(migrated_url):
    db = Database(migrated_url)
    job_id, ids = _job(db)
    with db.session() as s, s.begin():
        repo.mark_running(s, job_id)
        repo.record_results(s, job_id, _rows(ids[:2]), "1")
    with db.session() as s, s.begin():
        assert repo.finalize_if_complete(s, job_id, lambda: {"x": 1}) is False  # one image pending
    with db.session() as s, s.begin():
        repo.record_results(s, job_id, [repo.ResultRow(ids[2], None, None, None, "truncated JPEG")], "1")
    wins = []
    for _ in range(2):
        with db.session() as s, s.begin():
            wins.append(repo.finalize_if_complete(s, job_id, lambda: {"x": 1}))
    assert wins == [True, False]
    with db.session() as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.SUCCEEDED and job.finished_at is not None
        assert repo.get_summary(s, job_id) == {"x": 1}
        assert repo.progress(s, job_id).failed == 2
    db.dispose()


def test_cancel_only_active_jobs(migrated_url):
    db = Database(migrated_url)
    job_id, _ = _job(db)
    with db.session() as s, s.begin():
        assert repo.cancel_job(s, job_id) is True
    with db.session() as s, s.begin():
        assert repo.cancel_job(s, job_id) is False
        assert repo.job_status(s, job_id) == JobStatus.CANCELED
    db.dispose()
